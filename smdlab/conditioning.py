"""Latent conditioning: how a latent z changes a backbone's computation (SMD's f_phi).

Contract (vectors and images alike):
  * features ``h`` have channels at dim 1: (N, C) for vectors, (N, C, H, W) (or any trailing spatial
    dims) for images;
  * the latent ``z`` has channels at dim 1: (N, Z) or (N, Z, *spatial) (a per-pixel latent, as in
    the authors' code).  A vector latent (N, Z) with image features is broadcast over every pixel;
  * ``module(h, z) -> h'`` with h' of h's shape and dtype.  Every module is residual:
    h' = h + (something that depends on z), so it slots into any backbone.

Modules:
  * :class:`HyperConditioning`: the published form.  Per feature vector (per pixel for images),
    g_0 = P_in h (C -> inner_dim), g_l = W_l g_{l-1} with W_l = u_l u_l^T + softplus(c_l) I where
    (u_l, c_l) = A_l z + b_l (inner_dim + 1 numbers per layer), and h' = h + P_out g_L.
    W_l g = u_l (u_l . g) + softplus(c_l) g costs O(inner_dim) instead of O(inner_dim^2): the matrix
    is never built.
  * :class:`NaiveHyperConditioning`: the same module (same parameters, loadable from the same
    state dict) that materialises every W_l, as the authors' code does; for tests and benchmarks.
  * :class:`FiLM`: per-channel scale and shift, h' = h * (1 + gamma(z)) + beta(z); the cheap
    alternative.

Every module changes its output with z at initialisation (no zero init), so that the latent has a
gradient path from the first step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONDITIONING_KINDS = ("hyper", "hyper_naive", "film")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, *spatial, C); (N, C) unchanged."""
    return x if x.ndim == 2 else x.movedim(1, -1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x if x.ndim == 2 else x.movedim(-1, 1)


def _check(h: torch.Tensor, z: torch.Tensor, channels: int, latent_dim: int) -> torch.Tensor:
    """Validate shapes; return z channels-last, broadcast to h's spatial dims: (N, *spatial, Z)."""
    if h.ndim < 2 or h.shape[1] != channels:
        raise ValueError(f"features must be (N, C={channels}, ...); got shape {tuple(h.shape)}")
    if z is None:
        raise ValueError("this conditioning module needs a latent z; got None")
    if z.ndim < 2 or z.shape[0] != h.shape[0] or z.shape[1] != latent_dim:
        raise ValueError(f"latent must be (N={h.shape[0]}, Z={latent_dim}, ...); "
                         f"got {tuple(z.shape)}")
    zl = _channels_last(z)
    spatial = h.shape[2:]
    if z.ndim == 2 and spatial:
        zl = zl.reshape(z.shape[0], *([1] * len(spatial)), latent_dim).expand(
            z.shape[0], *spatial, latent_dim)
    elif z.shape[2:] != spatial:
        raise ValueError(f"latent spatial shape {tuple(z.shape[2:])} does not match the features' "
                         f"{tuple(spatial)}")
    return zl


class HyperConditioning(nn.Module):
    """The published hypernetwork conditioning, computed in O(inner_dim) per feature vector.

    Args:
        channels: C, the feature channels of the backbone at this point.
        latent_dim: Z, the latent channels.
        inner_dim: the width the features are projected to (the authors use 100).
        n_layers: how many W_l are applied in sequence (the authors use 2).
    """

    def __init__(self, channels: int, latent_dim: int, inner_dim: int = 100, n_layers: int = 2):
        super().__init__()
        if min(channels, latent_dim, inner_dim, n_layers) < 1:
            raise ValueError(f"channels, latent_dim, inner_dim, n_layers must be >= 1; got "
                             f"{channels}, {latent_dim}, {inner_dim}, {n_layers}")
        self.channels, self.latent_dim = channels, latent_dim
        self.inner_dim, self.n_layers = inner_dim, n_layers
        self.proj_in = nn.Linear(channels, inner_dim)
        # One linear map z -> (u_l, c_l) for all layers at once: n_layers * (inner_dim + 1) outputs.
        self.hyper = nn.Linear(latent_dim, n_layers * (inner_dim + 1))
        self.proj_out = nn.Linear(inner_dim, channels)
        with torch.no_grad():  # u_l of order 1/sqrt(inner) so that W_l is O(1) at initialisation
            self.hyper.weight.mul_(inner_dim ** -0.5)

    def _factors(self, zl: torch.Tensor):
        """(u, s): u (..., L, inner), s = softplus(c) (..., L, 1) from z channels-last (..., Z)."""
        uc = self.hyper(zl).unflatten(-1, (self.n_layers, self.inner_dim + 1))
        return uc[..., :-1], F.softplus(uc[..., -1:])

    def _apply_layers(self, g: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_layers):
            ui = u[..., i, :]
            # W g = (u u^T + s I) g = u (u . g) + s g
            g = ui * (ui * g).sum(-1, keepdim=True) + s[..., i, :] * g
        return g

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        zl = _check(h, z, self.channels, self.latent_dim)
        hl = _channels_last(h)
        u, s = self._factors(zl.to(h.dtype))
        g = self._apply_layers(self.proj_in(hl), u, s)
        return h + _channels_first(self.proj_out(g))


class NaiveHyperConditioning(HyperConditioning):
    """:class:`HyperConditioning` that builds every inner_dim x inner_dim matrix W_l (as the
    authors' code does): same parameters, same outputs, O(inner_dim^2) per feature vector."""

    def _apply_layers(self, g, u, s):
        eye = torch.eye(self.inner_dim, dtype=g.dtype, device=g.device)
        for i in range(self.n_layers):
            ui = u[..., i, :]
            W = ui[..., :, None] * ui[..., None, :] + s[..., i, :, None] * eye
            g = (W @ g[..., None])[..., 0]
        return g


class FiLM(nn.Module):
    """Feature-wise linear modulation: h' = h * (1 + gamma(z)) + beta(z), per channel.

    Args:
        channels: C, the feature channels.
        latent_dim: Z, the latent channels.
    """

    def __init__(self, channels: int, latent_dim: int):
        super().__init__()
        if min(channels, latent_dim) < 1:
            raise ValueError(f"channels and latent_dim must be >= 1; got {channels}, {latent_dim}")
        self.channels, self.latent_dim = channels, latent_dim
        self.to_scale_shift = nn.Linear(latent_dim, 2 * channels)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        zl = _check(h, z, self.channels, self.latent_dim)
        gamma, beta = self.to_scale_shift(zl.to(h.dtype)).chunk(2, -1)
        return h * (1 + _channels_first(gamma)) + _channels_first(beta)


def make_conditioning(kind: str, channels: int, latent_dim: int, **kwargs) -> nn.Module:
    """A conditioning module by name: ``"hyper"``, ``"hyper_naive"`` or ``"film"``."""
    if kind == "hyper":
        return HyperConditioning(channels, latent_dim, **kwargs)
    if kind == "hyper_naive":
        return NaiveHyperConditioning(channels, latent_dim, **kwargs)
    if kind == "film":
        return FiLM(channels, latent_dim)
    raise ValueError(f"unknown conditioning {kind!r}; choose one of {CONDITIONING_KINDS}")
