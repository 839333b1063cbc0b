"""The image models of the comparison, built from one spec: DDPM, SMD and the capacity-matched DDPM.

Every model is a kernel of :mod:`smdlab.denoisers` around a :class:`~smdlab.images.unet.UNet`:

* ``ddpm``: :class:`~smdlab.denoisers.GaussianDenoiser` with a plain U-Net;
* ``smd``: :class:`~smdlab.denoisers.SMDDenoiser` with a latent-conditioned U-Net
  (``conditioning`` "hyper" (published form, O(d)), "hyper_naive" or "film") and a
  latent generator: ``generator="separate"`` (the published form, a
  :class:`~smdlab.images.unet.LatentGenerator` U-Net of ``generator_fraction`` of the width) or
  ``"shared"`` (a :class:`~smdlab.images.unet.SharedLatentGenerator`: one residual block of that
  width on the conditioned U-Net's own stem features); eta is image-shaped, z has ``latent_dim``
  channels per pixel;
* ``ddpm-matched``: a plain U-Net whose parameter count is within 5% of the SMD model's (width
  searched by :func:`~smdlab.images.unet.capacity_matched_config`): the reviewers' control for
  "SMD only helps because it has more parameters".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..denoisers import GaussianDenoiser, SMDDenoiser
from ..schedules import NoiseSchedule
from .unet import (
    LatentGenerator,
    SharedLatentGenerator,
    UNet,
    UNetConfig,
    capacity_matched_config,
    count_parameters,
)

KINDS = ("ddpm", "smd", "ddpm-matched")
GENERATORS = ("separate", "shared")


@dataclass
class ModelSpec:
    """One model of the comparison.

    name: label in results and figures; kind: "ddpm", "smd" or "ddpm-matched";
    objective: "jensen", "multisample" or "energy" (see :mod:`smdlab.objectives`);
    n_samples: K (multisample) or M (energy) latent draws per example;
    conditioning: SMD's latent conditioning; latent_dim: z channels per pixel;
    generator_fraction: latent generator width / U-Net width; generator: "separate" (the
    published latent-generator network, default) or "shared" (built on the U-Net's own stem);
    parameterization: eps, x0 or v;
    variance: beta_tilde or beta; match_to: for ddpm-matched, the SMD spec whose size it matches.
    """

    name: str
    kind: str = "ddpm"
    objective: str = "jensen"
    n_samples: int = 1
    conditioning: str = "hyper"
    latent_dim: int = 16
    generator_fraction: float = 0.25
    parameterization: str = "v"
    variance: str = "beta_tilde"
    match_to: ModelSpec | None = None
    generator: str = "separate"

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown latent generator {self.generator!r}; choose one of "
                             f"{GENERATORS}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "ddpm-matched" and (self.match_to is None or self.match_to.kind != "smd"):
            raise ValueError("a ddpm-matched model needs match_to = an SMD spec")
        if self.kind != "smd" and self.objective != "jensen":
            raise ValueError(f"{self.name}: a Gaussian model trains with the jensen (DDPM) loss")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["match_to"] = self.match_to.name if self.match_to is not None else None
        if d["generator"] == "separate":
            del d["generator"]   # the published default: checkpoints written before it resume
        return d


def _generator(spec: ModelSpec, unet: UNetConfig, net: UNet):
    width = max(4, int(round(unet.base_channels * spec.generator_fraction)))
    if spec.generator == "shared":
        return SharedLatentGenerator(net, spec.latent_dim, width)
    return LatentGenerator(unet.in_channels, spec.latent_dim, unet.image_size, width,
                           unet.channel_mults, 1)


def build_model(spec: ModelSpec, unet: UNetConfig, schedule: NoiseSchedule):
    """The denoiser (an nn.Module and a reverse kernel) of ``spec`` on ``schedule``."""
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    if spec.kind == "smd":
        net = UNet(replace(unet, conditioning=spec.conditioning, latent_dim=spec.latent_dim))
        return SMDDenoiser(net, _generator(spec, unet, net), schedule, shape, eta_shape=shape,
                           parameterization=spec.parameterization, variance=spec.variance,
                           name=spec.name)
    if spec.kind == "ddpm-matched":
        target = count_parameters(build_model(spec.match_to, unet, schedule))
        cfg = capacity_matched_config(target, unet)
        return GaussianDenoiser(UNet(cfg), schedule, shape, spec.parameterization, spec.variance,
                                name=spec.name)
    return GaussianDenoiser(UNet(replace(unet, conditioning="none", latent_dim=0)), schedule,
                            shape, spec.parameterization, spec.variance, name=spec.name)


@torch.no_grad()
def latent_spread(model, x0: torch.Tensor, steps=(100, 500, 900), n_eta: int = 8,
                  seed: int = 0) -> dict[int, dict]:
    """Does an SMD model use its latent?  For clean images x0 (N, C, H, W) and each root step t,
    draw x_t ~ q(x_t | x0) and predict x0_hat(x_t, eta) for ``n_eta`` latent noises.

    Returns, per t: ``eta_std``, the standard deviation of x0_hat over eta (averaged over pixels
    and images), and ``data_std``, that of E_eta x0_hat over the images; their ratio is how much
    of the prediction's variation the latent controls (0: the kernel collapsed to a Gaussian).
    """
    den = model
    p = next(den.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    x0 = x0.to(p.device, p.dtype)
    N = x0.shape[0]
    out = {}
    for t in steps:
        tv = torch.full((N,), int(t), dtype=torch.long, device=p.device)
        eps = torch.randn(x0.shape, generator=g, device=p.device, dtype=p.dtype)
        x_t = den.diffuse(x0, eps, tv)
        preds = []
        for _ in range(n_eta):
            eta = den.draw_eta(N, g, dtype=p.dtype, device=p.device)
            preds.append(den.x0_from_output(den(x_t, tv, eta), x_t, tv))
        pr = torch.stack(preds)                              # (n_eta, N, C, H, W)
        eta_std = pr.std(0).mean().item()
        data_std = pr.mean(0).std(0).mean().item()
        out[int(t)] = {"eta_std": eta_std, "data_std": data_std,
                       "ratio": eta_std / max(data_std, 1e-12)}
    return out
