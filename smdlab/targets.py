"""The lab's named Gaussian-mixture targets (the data every error experiment is run on).

Each is a :class:`~smdlab.mixture.GaussianMixture` built by name, so that experiments, tests and
notebooks agree on what "grid" or "two_modes" means.
"""

from __future__ import annotations

import torch

from .mixture import GaussianMixture

TARGETS = ("grid", "two_modes", "anisotropic")


def make_target(name: str) -> GaussianMixture:
    """The lab's named targets: "grid" (7 x 7, spacing 0.5, std 0.05), "two_modes" (1-D, +-1,
    std 0.1) and "anisotropic" (three elongated, rotated 2-D components)."""
    if name == "grid":
        return GaussianMixture.grid(7, 0.5, 0.05)
    if name == "two_modes":
        return GaussianMixture.two_modes(2.0, 0.1)
    if name == "anisotropic":
        return anisotropic_target()
    raise ValueError(f"unknown target {name!r}; choose one of {TARGETS}")


def anisotropic_target() -> GaussianMixture:
    """Three elongated, rotated 2-D components (so the smallest eigenvalue matters)."""
    ang = torch.tensor([0.0, 1.0, 2.2], dtype=torch.float64)
    R = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1),
                     torch.stack([ang.sin(), ang.cos()], -1)], -2)
    lam = torch.tensor([[0.3, 0.004], [0.2, 0.01], [0.1, 0.002]], dtype=torch.float64)
    cov = R @ torch.diag_embed(lam) @ R.transpose(-1, -2)
    return GaussianMixture([0.4, 0.35, 0.25], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], cov)
