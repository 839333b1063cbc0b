"""Global denoising error KL(q(x_0) || p(x_0)) of a whole sampling chain, and the chain-rule bound.

Grid route (D = 1 or 2).  The model's marginal p(x_t) is carried as masses on a grid (one box per
step, fitted to the true marginal q(x_t) with ``width`` standard deviations of margin) and pushed
through every reverse kernel of the chain:

    p(x_s = y_j) = sum_i m_i p(y_j | x_t = x_i)       (m_i: mass at source node x_i)

The source mass is moved to the kernel's means and blurred by the kernel's Gaussian; rather than
splatting onto the grid (which adds a grid-size blur at every step, fatal over 1000 steps), the
blurred density is evaluated exactly at the target nodes.  Axis-aligned Gaussians factorise over
the axes, so in 2-D the whole push is the matrix product A^T diag(m) B with A[i, j] =
N(y_j; mu_i1, v_i1) and B[i, j] = N(y_j; mu_i2, v_i2): O(N_src n^2) multiply-adds, no exp per pair.
Exact kernels push every posterior component separately (weights r_k(x_i) times the mass);
latent kernels push each of ``n_latent`` latent draws with mass m_i / n_latent (an average over
latent draws).  Full 2-D covariances (the moment-matched kernel) fall back to a direct
O(N_src n^2)-exponential sum: use them on coarse grids only.  Nodes whose mass is below
``prune`` times the largest are dropped (their total is reported in ``mass_pruned``).

The only approximations are the node rule for the integral over x_t (spectrally accurate once the
grid resolves the narrowest density) and the truncation to the boxes; :func:`grid_convergence`
shows the estimate settling as the grid refines.

Bound.  By the chain rule and data processing,
    KL(q(x_0) || p(x_0)) <= KL(q(x_T) || N(0, I)) + sum over jumps of M_{t->s},
with M the local errors of :mod:`smdlab.local_error`; :func:`kl_bound` computes the right side.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributions import Gaussian, LatentMixture
from .exact import MixturePosterior, marginal
from .kernels import ReverseKernel
from .local_error import local_error_curves, mixture_log_prob
from .mixture import GaussianMixture
from .sampling import chain_steps
from .schedules import NoiseSchedule

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- grids
def step_box(mixture: GaussianMixture, ab: float, width: float = 7.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (lo, hi) covering q(x_t) with ``width`` standard deviations of margin (and N(0, I))."""
    om = 1.0 - ab
    sd = (ab * mixture.eigvals.amax(-1) + om).sqrt()                       # (K,)
    m = math.sqrt(ab) * mixture.means
    lo = (m - width * sd[:, None]).amin(0).numpy()
    hi = (m + width * sd[:, None]).amax(0).numpy()
    return lo, hi


def make_grid(lo, hi, n: int) -> list[torch.Tensor]:
    """Per-axis node coordinates (n,) for the box [lo, hi] (node-centred cells)."""
    axes = []
    for a, b in zip(np.atleast_1d(lo), np.atleast_1d(hi)):
        h = (b - a) / n
        axes.append(torch.linspace(a + h / 2, b - h / 2, n, dtype=torch.float64))
    return axes


def grid_points(axes: list[torch.Tensor]) -> torch.Tensor:
    """All nodes as (n^D, D), the last axis fastest."""
    if len(axes) == 1:
        return axes[0][:, None]
    return torch.cartesian_prod(*axes)


def cell_volume(axes: list[torch.Tensor]) -> float:
    return float(np.prod([(a[1] - a[0]).item() for a in axes]))


# ---------------------------------------------------------------------- pushing densities
def _normal_matrix(y: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """N(y_j; mu_i, var_i) as (N_src, n)."""
    d = y[None, :] - mu[:, None]
    return torch.exp(-0.5 * (d * d / var[:, None] + LOG_2PI + var.log()[:, None]))


def _push_axis_aligned(axes, mass, mu, var, chunk: int = 8192) -> torch.Tensor:
    """sum_i mass_i prod_d N(y_d; mu_id, var_id) on the target grid; mu, var: (N, D)."""
    D = len(axes)
    out = torch.zeros(*[a.numel() for a in axes], dtype=torch.float64)
    for i in range(0, mass.numel(), chunk):
        m, u, v = mass[i:i + chunk], mu[i:i + chunk], var[i:i + chunk]
        A = _normal_matrix(axes[0], u[:, 0], v[:, 0])
        if D == 1:
            out += m @ A
        else:
            B = _normal_matrix(axes[1], u[:, 1], v[:, 1])
            out += (A * m[:, None]).T @ B
    return out


def _push_full(axes, mass, mu, cov, chunk: int = 256) -> torch.Tensor:
    """The same for full covariances (N, D, D) or (D, D): direct sum over sources (slow)."""
    y = grid_points(axes)
    out = torch.zeros(y.shape[0], dtype=torch.float64)
    cov = cov.expand(mass.numel(), *cov.shape[-2:]) if cov.ndim == 2 else cov
    for i in range(0, mass.numel(), chunk):
        L = torch.linalg.cholesky(cov[i:i + chunk])                       # (c, D, D)
        d = (y[None, :, :] - mu[i:i + chunk, None, :])                    # (c, n, D)
        z = torch.linalg.solve_triangular(L[:, None], d[..., None], upper=False)[..., 0]
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        logp = -0.5 * ((z * z).sum(-1) + logdet[:, None] + y.shape[1] * LOG_2PI)
        out += mass[i:i + chunk] @ logp.exp()
    return out.reshape(*[a.numel() for a in axes])


def push_density(dist, mass: torch.Tensor, axes: list[torch.Tensor],
                 prune: float = 1e-13) -> torch.Tensor:
    """Density of the pushed mass on the target grid (shape (n,) or (n, n)).

    dist: a kernel's step distribution at the source nodes (Gaussian, MixturePosterior or
    LatentMixture); mass: (N,) source masses.
    """
    D = len(axes)
    if isinstance(dist, Gaussian):
        if dist.isotropic:
            var = dist.variance[:, None].expand(-1, D)
            return _push_axis_aligned(axes, mass, dist.mean, var)
        cov = dist.covariance
        if D == 1:
            return _push_axis_aligned(axes, mass, dist.mean, cov[:, :, 0])
        off = cov[:, 0, 1].abs().amax()
        if off <= 1e-12 * torch.diagonal(cov, dim1=-2, dim2=-1).amax():
            return _push_axis_aligned(axes, mass, dist.mean, torch.diagonal(cov, dim1=-2, dim2=-1))
        return _push_full(axes, mass, dist.mean, cov)
    if isinstance(dist, LatentMixture):
        N, L, _ = dist.means.shape
        m = (mass[:, None] / L).expand(N, L).reshape(-1)
        var = dist.variance[:, None, None].expand(N, L, D).reshape(-1, D)
        return _push_axis_aligned(axes, m, dist.means.reshape(-1, D), var)
    if isinstance(dist, MixturePosterior):
        out = 0
        w = dist.weights
        means = dist.means
        for k in range(dist.K):
            mk = mass * w[:, k]
            keep = mk > prune * mass.max()
            if not keep.any():
                continue
            if dist.axis_aligned:
                var = dist.eigvals[k].expand(int(keep.sum()), D)
                out = out + _push_axis_aligned(axes, mk[keep], means[keep, k], var)
            else:
                out = out + _push_full(axes, mk[keep], means[keep, k], dist.covariances[k])
        return out
    raise ValueError(f"cannot push a {type(dist).__name__}: need a Gaussian, MixturePosterior or "
                     "LatentMixture step distribution")


def _kernel_box(dist, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (lo, hi) of the kernel means +- width kernel standard deviations (where the pushed
    mass can land), so that a model wider than the target loses no mass to the box."""
    if isinstance(dist, Gaussian):
        mu = dist.mean
        var = dist.variance if dist.isotropic else torch.diagonal(dist.covariance, dim1=-2,
                                                                   dim2=-1).amax(-1)
    elif isinstance(dist, LatentMixture):
        mu, var = dist.means.reshape(-1, dist.D), dist.variance.repeat_interleave(dist.L)
    elif isinstance(dist, MixturePosterior):
        mu = (dist.mean())
        var = dist.covariance_trace()
    else:
        raise ValueError(f"cannot push a {type(dist).__name__}")
    sd = var.sqrt()[:, None]
    return (mu - width * sd).amin(0).numpy(), (mu + width * sd).amax(0).numpy()


# ---------------------------------------------------------------------- global error on a grid
def grid_global_error(mixture: GaussianMixture, kernel: ReverseKernel,
                      schedule: NoiseSchedule | None = None, n_grid: int | None = None,
                      n_latent: int | None = 16, generator: torch.Generator | None = None,
                      width: float = 7.0, prune: float = 1e-13, progress: bool = False) -> dict:
    """KL(q(x_0) || p(x_0)) of the chain of ``schedule`` (default: the kernel's) started at N(0, I).

    Args:
        mixture: the target, D = 1 or 2.
        kernel: any reverse kernel on the mixture's dimension.
        n_grid: nodes per axis (default 2048 in 1-D, 256 in 2-D).
        n_latent: latent draws per node for latent kernels.
        width: box margin in standard deviations of the true marginal at each step.
        prune: drop source nodes whose mass is below prune * (largest mass).
    Returns a dict: "kl" (nats), "grid" (list of per-axis node arrays at step 0, a box around
    q(x_0)), "density" (p(x_0) on that grid), "q_density" (q(x_0) there), "mass_lost" (1 - the
    model's mass on the boxes before the last jump: truncation plus node-rule error),
    "p_mass_in_box" (p's mass on q's box at step 0), "mass_pruned",
    "n_grid", "steps".
    """
    if mixture.D not in (1, 2):
        raise ValueError(f"the grid route works in 1-D and 2-D only; the mixture has D={mixture.D} "
                         "(use smdlab.metrics.sample_metrics in higher dimensions)")
    if getattr(kernel, "dim", mixture.D) != mixture.D:
        raise ValueError(f"kernel dim {kernel.dim} does not match the mixture's D={mixture.D}")
    D = mixture.D
    n = n_grid if n_grid is not None else (2048 if D == 1 else 256)
    if not isinstance(n, int) or n < 8:
        raise ValueError(f"n_grid must be an integer >= 8; got {n!r}")
    pairs = chain_steps(kernel, schedule)
    root = kernel.schedule.root
    ab = root.alpha_bars
    # Start: N(0, I) on the box of the first step.
    t0 = pairs[0][0]
    axes = make_grid(*step_box(mixture, ab[t0].item(), width), n)
    x = grid_points(axes)
    mass = torch.exp(-0.5 * (x * x).sum(-1) - 0.5 * D * LOG_2PI) * cell_volume(axes)
    pruned = 0.0
    source_mass = 1.0
    for t, s in tqdm(pairs, disable=not progress, desc=f"grid push {kernel.name}"):
        keep = mass > prune * mass.max()
        pruned += mass[~keep].sum().item()
        source_mass = mass.sum().item()
        dist = kernel.distribution(x[keep], t, s, generator=generator, n_latent=n_latent)
        lo, hi = step_box(mixture, ab[s].item(), width)
        if s > 0:
            # Intermediate states are pushed on: the box must hold the model's mass too.
            klo, khi = _kernel_box(dist, width)
            lo, hi = np.minimum(lo, klo), np.maximum(hi, khi)
        # The last state is only evaluated where q(x_0) lives: the push gives p's density
        # exactly at the nodes, so p's mass outside q's box does not bias KL(q || p).
        axes = make_grid(lo, hi, n)
        density = push_density(dist, mass[keep], axes, prune)
        x = grid_points(axes)
        mass = density.reshape(-1) * cell_volume(axes)
    log_q = mixture_log_prob(mixture, x)
    q_w = torch.softmax(log_q, 0)                      # node-rule weights of q on its box
    log_p = density.reshape(-1).clamp_min(1e-300).log()
    kl = (q_w * (log_q - log_p)).sum().item()
    shape = [a.numel() for a in axes]
    return {"kl": kl, "grid": [a.numpy() for a in axes], "density": density.numpy(),
            "q_density": log_q.exp().reshape(shape).numpy(),
            "mass_lost": 1.0 - source_mass, "p_mass_in_box": mass.sum().item(),
            "mass_pruned": pruned, "n_grid": n, "steps": len(pairs), "kernel": kernel.name}


def grid_convergence(mixture: GaussianMixture, kernel: ReverseKernel,
                     schedule: NoiseSchedule | None = None, sizes=(32, 64, 128, 256),
                     **kw) -> dict:
    """grid_global_error at several grid sizes: {"n_grid": [...], "kl": [...]} to show convergence."""
    kls = [grid_global_error(mixture, kernel, schedule, n_grid=int(n), **kw)["kl"] for n in sizes]
    return {"n_grid": [int(n) for n in sizes], "kl": kls}


# ---------------------------------------------------------------------- prior term and bound
def prior_kl_estimate(mixture: GaussianMixture, schedule: NoiseSchedule, n: int = 50_000,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """KL(q(x_T) || N(0, I)) by Monte Carlo: (mean, se).

    Terms u - 1 - log u with u = N(x; 0, I) / q_T(x), x ~ q_T (u - 1 has mean 0): each is >= 0,
    so the estimate is never negative, and of order (u - 1)^2, so the tiny prior terms of long
    chains keep a small relative error.  q_T's component variances abar_T C + 1 - abar_T exceed
    3/4 (N(0, I)'s variance 1 is below 4/3 of theirs) whenever abar_T (1 - C) < 1/4, true for any
    usable chain: u's fourth moment is then finite and the standard error holds.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (for a standard error); got {n!r}")
    q_T = marginal(mixture, schedule.root, schedule.root.T)
    x = q_T.sample(n, generator)
    log_q = mixture_log_prob(q_T, x)
    log_p = -0.5 * (x * x).sum(-1) - 0.5 * mixture.D * LOG_2PI
    d = (log_p - log_q).clamp(max=700.0)
    terms = torch.expm1(d) - d
    return terms.mean().item(), (terms.std() / math.sqrt(n)).item()


def prior_kl(mixture: GaussianMixture, schedule: NoiseSchedule, n: int = 50_000,
             generator: torch.Generator | None = None) -> float:
    """KL(q(x_T) || N(0, I)) in nats (T: the last step of the root schedule)."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return prior_kl_estimate(mixture, schedule, n, generator)[0]


def kl_bound(mixture: GaussianMixture, kernel: ReverseKernel, schedule: NoiseSchedule | None = None,
             n_points: int = 2048, n_mc: int = 2, n_latent: int | None = 64,
             generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """The chain-rule bound KL(q(x_T) || N(0, I)) + sum of M over the chain's jumps.

    Returns {"bound", "bound_se", "prior_kl", "prior_kl_se", "sum_local", "sum_local_se",
    "curve" (the LocalErrorCurve as a dict)}.
    """
    sched = kernel.schedule if schedule is None else schedule
    curve = local_error_curves(mixture, [kernel], sched, n_points, n_mc, n_latent, generator,
                               progress)[kernel.name]
    pk, pk_se = prior_kl_estimate(mixture, kernel.schedule, generator=generator)
    se = math.sqrt(curve.total_se ** 2 + pk_se ** 2)
    return {"bound": pk + curve.total, "bound_se": se, "prior_kl": pk, "prior_kl_se": pk_se,
            "sum_local": curve.total, "sum_local_se": curve.total_se, "curve": curve.as_dict()}


def sampled_global_kl(mixture: GaussianMixture, density_result: dict, samples: torch.Tensor) -> dict:
    """A sampled cross-check of a grid result: KL estimated as the mean over samples x ~ q(x_0) of
    log q(x) - log p(x), with p(x) interpolated (multilinear) from the grid density.
    Returns {"kl", "se"}.
    """
    axes = [torch.as_tensor(a) for a in density_result["grid"]]
    dens = torch.as_tensor(density_result["density"])
    p = _interpolate(axes, dens, samples)
    ell = mixture.log_prob(samples) - p.clamp_min(1e-300).log()
    return {"kl": ell.mean().item(), "se": (ell.std() / math.sqrt(ell.numel())).item()}


def _interpolate(axes, values, x):
    """Multilinear interpolation of grid values at points x (N, D); zero outside the box."""
    D = len(axes)
    idx, frac, inside = [], [], torch.ones(x.shape[0], dtype=torch.bool)
    for d in range(D):
        a = axes[d]
        h = (a[1] - a[0]).item()
        u = (x[:, d] - a[0]) / h
        inside &= (u >= 0) & (u <= a.numel() - 1)
        i0 = u.floor().clamp(0, a.numel() - 2).long()
        idx.append(i0)
        frac.append((u - i0).clamp(0, 1))
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for corner in range(2 ** D):
        w = torch.ones(x.shape[0], dtype=torch.float64)
        ii = []
        for d in range(D):
            bit = (corner >> d) & 1
            w = w * (frac[d] if bit else 1 - frac[d])
            ii.append(idx[d] + bit)
        out += w * values[tuple(ii)]
    return torch.where(inside, out, torch.zeros_like(out))
