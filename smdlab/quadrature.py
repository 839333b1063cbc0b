"""Deterministic references for the local error: 1-D quadrature of M_{t->s} and the KL at one point.

:func:`local_error_quadrature` is the reference the Monte Carlo estimator of
:mod:`smdlab.local_error` is checked against (tests/test_estimator_calibration.py);
:func:`point_kl_quadrature` gives the KL at a single x_t in 1-D or 2-D (E1's panels);
:func:`gauss_hermite` is the rule both use.  Their ``se`` / error values are error estimates of
the rules, not statistical errors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distributions import LatentMixture
from .exact import diffused_mixture, posterior_from_log_alpha_bars
from .kernels import ReverseKernel
from .kl_terms import MIN_STRATUM_WEIGHT
from .local_error import LocalError, check_jump, mixture_log_prob
from .mixture import GaussianMixture

#: Largest Gauss-Hermite rule offered (the eigen-solve is O(n^3); beyond this use more strata).
MAX_HERMITE_NODES = 2000


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of n-point Gauss-Hermite quadrature for E_{z ~ N(0, 1)} f(z).

    Golub-Welsch: the nodes are the eigenvalues of the Jacobi matrix of the probabilists' Hermite
    polynomials (off-diagonal sqrt(1..n-1)) and the weights the squared first components of its
    eigenvectors.  Unlike the three-term recurrence (numpy's hermegauss overflows to NaN near
    n = 150), this stays accurate for any n; the extreme weights simply underflow to 0.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_HERMITE_NODES:
        raise ValueError(f"n must be an integer in [1, {MAX_HERMITE_NODES}]; got {n!r}")
    off = np.sqrt(np.arange(1, int(n), dtype=np.float64))
    J = np.diag(off, 1) + np.diag(off, -1)
    z, V = np.linalg.eigh(J)
    w = V[0] ** 2
    z = 0.5 * (z - z[::-1])                       # exact symmetry of the rule
    w = 0.5 * (w + w[::-1])
    return torch.from_numpy(z.copy()), torch.from_numpy(w / w.sum())


#: The ratio form u - 1 - log u is used at an x_t when the inner rule integrates p to 1 within this.
QUAD_MASS_TOL = 1e-9
#: Most outer nodes the quadrature route accepts.
MAX_OUTER_NODES = 200_000


def local_error_quadrature(mixture: GaussianMixture, kernel: ReverseKernel, t: int, s: int,
                           n_outer: int = 96, n_inner: int = 48,
                           latent_ok: bool = False) -> LocalError:
    """Deterministic M_{t->s} in 1-D.

    Outer integral over x_t: trapezoid rule on a uniform grid covering every marginal component
    +- 12 standard deviations, with a spacing that resolves both the narrowest component (sd / 8)
    and the width sd^2 / separation over which the responsibilities r_k(x_t) switch (the error of
    small steps lives in that thin layer between modes, which per-component Gauss-Hermite nodes
    miss); at least ``n_outer`` nodes.  Inner integral over x_s: ``n_inner``-point Gauss-Hermite
    per posterior component.  The integrand is u - 1 - log u (u = p/q, each term >= 0, of order
    (u - 1)^2, so KLs of 1e-19 come out right and never negative) wherever the inner rule
    integrates p to 1 within QUAD_MASS_TOL; where it does not (p much wider than q) it is the log
    ratio log q - log p, which the rule integrates exactly for Gaussian p.

    Kernels need an exact ``log_prob`` (Gaussian, exact); a kernel returning a LatentMixture is
    refused unless ``latent_ok`` (then the KL is against the L-component mixture it returns, exact
    only when that mixture is deterministic).  ``se`` is an error estimate of the rules, not a
    statistical error: |change with half the inner nodes| + |change with twice the outer spacing|.
    """
    if mixture.D != 1:
        raise ValueError(f"quadrature route is 1-D only; the mixture has D={mixture.D}")
    for name, v in (("n_outer", n_outer), ("n_inner", n_inner)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 4:
            raise ValueError(f"{name} must be an integer >= 4; got {v!r}")
    t, s, lt, ls = check_jump(kernel, t, s)
    ab_t, om_t = math.exp(lt), -math.expm1(lt)
    sd = (ab_t * mixture.eigvals[:, 0] + om_t).sqrt()                         # (K,)
    m = math.sqrt(ab_t) * mixture.means[:, 0]
    lo, hi = (m - 12 * sd).min().item(), (m + 12 * sd).max().item()
    h = sd.min().item() / 8
    sep = (m.max() - m.min()).item()
    if sep > 0:
        h = min(h, sd.min().item() ** 2 / sep / 4)
    n_nodes = max(n_outer, int(math.ceil((hi - lo) / h)) + 1)
    if n_nodes > MAX_OUTER_NODES:
        raise ValueError(f"the quadrature route would need {n_nodes} outer nodes (components of "
                         f"sd {sd.min().item():.3g} over a range of {hi - lo:.3g}); use Monte Carlo")
    x_t = torch.linspace(lo, hi, n_nodes, dtype=torch.float64)[:, None]
    h = (hi - lo) / (n_nodes - 1)
    w_t = mixture_log_prob(diffused_mixture(mixture, lt), x_t).exp() * h
    post = posterior_from_log_alpha_bars(mixture, x_t, lt, ls)
    dist = kernel.distribution(x_t, t, s, n_latent=None)
    if isinstance(dist, LatentMixture) and not latent_ok:
        raise ValueError("the quadrature route needs an exact log-density; latent kernels are "
                         "scored by Monte Carlo (pass latent_ok=True for a deterministic mixture)")
    sd_post = post.eigvals[:, 0].sqrt()                                        # (K,)
    means, weights = post.means[:, :, 0], post.weights

    def kl_at(n_in):
        zi, hi_ = gauss_hermite(n_in)
        direct = torch.zeros(x_t.shape[0], dtype=x_t.dtype)
        ratio, mass = torch.zeros_like(direct), torch.zeros_like(direct)
        for k in range(post.K):
            for zl, hl in zip(zi.tolist(), hi_.tolist()):
                if hl == 0.0:
                    continue
                x_s = (means[:, k] + sd_post[k] * zl)[:, None]
                d = (dist.log_prob(x_s) - post.log_prob(x_s)).clamp(max=700.0)
                c = weights[:, k] * hl
                direct -= c * d
                ratio += c * (torch.expm1(d) - d)
                mass += c * d.exp()
        return torch.where((mass - 1).abs() <= QUAD_MASS_TOL, ratio, direct)

    kl = kl_at(n_inner)
    full = (w_t * kl).sum().item()
    coarse = (2 * w_t[::2] * kl[::2]).sum().item()
    half = (w_t * kl_at(max(n_inner // 2, 2))).sum().item()
    err = abs(full - half) + abs(full - coarse)
    return LocalError(full, err, x_t.shape[0], n_inner, None, "quadrature", t, s, kernel.name)


def point_kl_quadrature(mixture: GaussianMixture, log_ab_t: float, log_ab_s: float,
                        x_t: torch.Tensor, dist_of, n_nodes: int = 48) -> tuple[float, float]:
    """KL(q(x_s | x_t) || p(x_s | x_t)) at ONE point x_t (D,), D <= 2, by product Gauss-Hermite
    quadrature in every posterior component's eigenbasis: (kl, error estimate).

    ``dist_of(post)`` returns p for a MixturePosterior of n_nodes^D copies of x_t (e.g. the
    moment-matched Gaussian).  The integrand is u - 1 - log u (>= 0; see
    :func:`local_error_quadrature`) where the rule integrates p to 1 within QUAD_MASS_TOL, else
    the log ratio.  The error estimate is the change against a rule with half the nodes per axis;
    it is an error bar of the rule, not a statistical one.
    """
    x_t = torch.as_tensor(x_t, dtype=mixture.dtype).reshape(-1)
    D = x_t.numel()
    if D != mixture.D or D > 2:
        raise ValueError(f"x_t must have the mixture's dimension D={mixture.D} <= 2; got {D}")
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or not 4 <= n_nodes <= 256:
        raise ValueError(f"n_nodes must be an integer in [4, 256]; got {n_nodes!r}")

    def rule(n):
        z, h = gauss_hermite(n)
        if D == 1:
            nodes, wts = z[:, None], h
        else:
            nodes = torch.cartesian_prod(z, z)
            wts = (h[:, None] * h[None, :]).reshape(-1)
        M = nodes.shape[0]
        post = posterior_from_log_alpha_bars(mixture, x_t[None].expand(M, D).contiguous(),
                                             log_ab_t, log_ab_s)
        dist = dist_of(post)
        direct = ratio = mass = 0.0
        for k in range(post.K):
            r_k = post.weights[0, k].item()
            if r_k < MIN_STRATUM_WEIGHT:
                continue
            off = post.eigvals[k].sqrt() * nodes
            if not post.axis_aligned:
                off = off @ post.eigvecs[k].T
            x = post.means[:, k] + off
            d = (dist.log_prob(x) - post.log_prob(x)).clamp(max=700.0)
            direct -= r_k * (wts * d).sum().item()
            ratio += r_k * (wts * (torch.expm1(d) - d)).sum().item()
            mass += r_k * (wts * d.exp()).sum().item()
        return ratio if abs(mass - 1) <= QUAD_MASS_TOL else direct

    full, half = rule(n_nodes), rule(max(n_nodes // 2, 2))
    return full, abs(full - half)
