"""Image sampling for the learned kernels: the samplers of :mod:`smdlab.sampling` in batches.

There is one reverse-step path for vectors and images: :func:`generate` runs
:func:`smdlab.sampling.ancestral_sample` (DDPM ancestral on any respaced sub-chain of the model's
root schedule) or :func:`smdlab.sampling.ddim_sample` (DDIM with eta in [0, 1]) over image batches
(N, C, H, W), with the clean-point prediction clipped to the data range [-1, 1] before every step
(:func:`clip_to_data_range`, what image DDPM samplers do).  The last jump follows the samplers'
final-jump rule: it samples the kernel's own final variance (``final_variance`` of the denoiser;
the default, beta_1, is a standard deviation of 0.01 on [-1, 1] images).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..sampling import ancestral_sample, ddim_sample
from ..schedules import NoiseSchedule
from ..training import unwrap

SAMPLERS = ("ancestral", "ddim")


def clip_to_data_range(x0: torch.Tensor) -> torch.Tensor:
    """The x0 hook of image sampling: x0_hat clipped to the data range [-1, 1]."""
    return x0.clamp(-1, 1)


@torch.no_grad()
def generate(model, n: int, schedule: NoiseSchedule | None = None, method: str = "ancestral",
             ddim_eta: float = 0.0, clip: bool = True, batch_size: int = 500, seed: int = 0,
             device=None, progress: bool = False) -> torch.Tensor:
    """n images (n, C, H, W), float32 on the CPU, in [-1, 1] (clipped), drawn in batches.

    ``schedule``: a respacing of the model's schedule (default its own); ``method``: "ancestral"
    or "ddim" (with ``ddim_eta``); ``clip``: clip x0_hat to [-1, 1] before every step.  The
    batches use one generator seeded with ``seed`` (on the model's device), so a call is
    reproducible for a given batch size.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    den = unwrap(model)
    was_training = den.training
    den.eval()
    p = next(den.parameters())
    device = torch.device(device) if device is not None else p.device
    g = torch.Generator(device=device).manual_seed(seed)
    hook = clip_to_data_range if clip else None
    out = []
    for i in tqdm(range(0, n, batch_size), disable=not progress, leave=False, desc="batches"):
        b = min(batch_size, n - i)
        x_T = torch.randn((b, *den.shape), generator=g, dtype=torch.float64, device=device)
        if method == "ancestral":
            x = ancestral_sample(den, x_T, schedule, generator=g, x0_hook=hook)
        else:
            x = ddim_sample(den, x_T, schedule, eta=ddim_eta, generator=g, x0_hook=hook)
        out.append(x.clamp(-1, 1).float().cpu())
    den.train(was_training)
    return torch.cat(out)


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int = 4,
              title: str | None = None):
    """Save images (N, C, H, W) in [-1, 1] as one PNG grid (nearest-neighbour upscaled), with
    ``title`` written in a white band above it."""
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
    if title:
        im = _with_title(im, title)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _with_title(im, title: str):
    """``im`` below a white band holding ``title`` (PIL's built-in font, wrapped to the width)."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    per_line = max(8, im.width // 6)          # the built-in font is about 6 pixels per character
    lines = textwrap.wrap(title, per_line) or [""]
    band = 4 + 12 * len(lines)
    mode = im.mode
    out = Image.new(mode, (im.width, im.height + band), 255 if mode == "L" else (255, 255, 255))
    out.paste(im, (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((2, 2 + 12 * i), line, fill=0 if mode == "L" else (0, 0, 0), font=font)
    return out
