"""Image samplers for the learned kernels: respaced ancestral (DDPM) and DDIM with eta.

Both are short transcriptions of their papers over any sub-chain 0 = t_0 < ... < t_S = T of the
model's root schedule (``schedule.original_steps``; the network always sees root indices).  At
every jump t -> s the model predicts the clean point x0_hat (through its parameterisation; an SMD
model draws a fresh latent noise eta for the jump, or uses its frozen eta), optionally clipped to
the data range [-1, 1] (what image DDPM samplers do), and then:

* ``ancestral`` (Ho et al. 2020, on the respaced chain): x_s ~ N(c0 x0_hat + ct x_t, sigma^2 I)
  with the coefficients and variance (beta-tilde or beta of the jump) of
  :meth:`smdlab.denoisers._Denoiser.step_coefficients`, so without clipping this is exactly the
  kernel's own ``distribution`` (tested);
* ``ddim`` (Song et al. 2021, eq. 12): eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t),
  sigma^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s),
  x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma xi.  eta = 0 is the
  deterministic DDIM; eta = 1 has the ancestral sampler's beta-tilde step (same mean, tested).

The last jump (s = 0) returns its mean, as DDPM's reference sampler does (no noise is added to
the final image).  :func:`generate` runs a sampler in batches with a seed and returns float32 images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from ..training import unwrap

SAMPLERS = ("ancestral", "ddim")


def _col(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(-1, *([1] * (ndim - 1)))


@torch.no_grad()
def predict_x0(model, x_t: torch.Tensor, t: int, generator: torch.Generator | None = None,
               clip: bool = True) -> torch.Tensor:
    """x0_hat (N, C, H, W) in float64 at root step t; an SMD model draws one eta per image."""
    den = unwrap(model)
    p = next(den.parameters())
    N = x_t.shape[0]
    tv = torch.full((N,), int(t), dtype=torch.long, device=p.device)
    eta = (den.draw_eta(N, generator, dtype=p.dtype, device=p.device)
           if getattr(den, "has_latent", False) else None)
    out = den(x_t.to(p.dtype), tv, eta)
    x0 = den.x0_from_output(out.to(torch.float64), x_t.to(torch.float64), tv)
    return x0.clamp(-1, 1) if clip else x0


@torch.no_grad()
def reverse_step(model, x_t: torch.Tensor, t: int, s: int, method: str = "ancestral",
                 ddim_eta: float = 0.0, clip: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One jump t -> s (root steps) of ``method``; x_t float64 (N, C, H, W) -> x_s float64."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    den = unwrap(model)
    x_t = x_t.to(torch.float64)
    x0 = predict_x0(den, x_t, t, generator, clip)
    N, nd = x_t.shape[0], x_t.ndim
    dev = x_t.device
    tv = torch.full((N,), int(t), dtype=torch.long, device=dev)
    sv = torch.full((N,), int(s), dtype=torch.long, device=dev)
    if method == "ancestral":
        c0, ct, var = den.step_coefficients(tv, sv)
        mean = _col(c0, nd) * x0 + _col(ct, nd) * x_t
        std = _col(var.sqrt(), nd)
    else:
        if ddim_eta < 0:
            raise ValueError(f"DDIM eta must be >= 0; got {ddim_eta}")
        ab_t, ab_s = den.abar(tv), den.abar(sv)
        eps = (x_t - _col(ab_t.sqrt(), nd) * x0) / _col((1 - ab_t).sqrt(), nd)
        var = ddim_eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        mean = _col(ab_s.sqrt(), nd) * x0 + _col((1 - ab_s - var).clamp_min(0).sqrt(), nd) * eps
        std = _col(var.sqrt(), nd)
    if int(s) == 0:
        return mean
    noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=dev)
    return mean + std * noise


@torch.no_grad()
def sample_chain(model, x_T: torch.Tensor, schedule: NoiseSchedule | None = None,
                 method: str = "ancestral", ddim_eta: float = 0.0, clip: bool = True,
                 generator: torch.Generator | None = None,
                 callback: Callable[[int, int, int, torch.Tensor], None] | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Run x_T (N, C, H, W) down the chain of ``schedule`` (a respacing of the model's schedule;
    default the model's own) with ``method``; ``callback(index, t, s, x_s)`` after each jump."""
    den = unwrap(model)
    pairs = chain_steps(den, schedule)
    x = x_T.to(torch.float64)
    for i, (t, s) in enumerate(tqdm(pairs, disable=not progress, leave=False,
                                    desc=f"{method} {len(pairs)} steps")):
        x = reverse_step(den, x, t, s, method, ddim_eta, clip, generator)
        if callback is not None:
            callback(len(pairs) - i, t, s, x)
    return x


@torch.no_grad()
def generate(model, n: int, schedule: NoiseSchedule | None = None, method: str = "ancestral",
             ddim_eta: float = 0.0, clip: bool = True, batch_size: int = 500, seed: int = 0,
             device=None, progress: bool = False) -> torch.Tensor:
    """n images (n, C, H, W), float32 on the CPU, in [-1, 1] (clipped), drawn in batches.

    The batches use one generator seeded with ``seed`` (on the model's device), so a call is
    reproducible for a given batch size.
    """
    den = unwrap(model)
    was_training = den.training
    den.eval()
    p = next(den.parameters())
    device = torch.device(device) if device is not None else p.device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in tqdm(range(0, n, batch_size), disable=not progress, leave=False, desc="batches"):
        b = min(batch_size, n - i)
        x_T = torch.randn((b, *den.shape), generator=g, dtype=torch.float64, device=device)
        x = sample_chain(den, x_T, schedule, method, ddim_eta, clip, g)
        out.append(x.clamp(-1, 1).float().cpu())
    den.train(was_training)
    return torch.cat(out)


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int = 4):
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid (nearest-neighbour upscaled)."""
    import io
    import math

    from PIL import Image

    from ..provenance import atomic_write_bytes
    from .data import to_uint8

    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    a = to_uint8(images)                      # (N, H, W, C)
    H, W, C = a.shape[1:]
    pad = 1
    grid = torch.full((ncol * (H + pad) + pad, nrow * (W + pad) + pad, C), 255,
                      dtype=torch.uint8).numpy()
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H,
             pad + c * (W + pad): pad + c * (W + pad) + W] = a[k]
    im = Image.fromarray(grid[..., 0] if C == 1 else grid)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
