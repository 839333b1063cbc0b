"""Global denoising error KL(q(x_0) || p(x_0)) of a whole sampling chain, on a grid (1-D and 2-D).

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
grid resolves the narrowest density) and the truncation to the boxes.  The node rule's error is
estimated at every step from the kernel means of neighbouring nodes and the kernel's width
(:func:`_step_aliasing`); when the chain's total exceeds ``tol`` the push is rerun on a grid twice
as fine, within a work budget, and a grid that stays too coarse is refused (``strict``) or
flagged ``resolved=False`` with a warning, never silently returned.  The KL is a node sum
sum_j Q_j log(Q_j / P_j) >= -log(sum_j P_j), so it is >= 0 unless the node rule gained mass,
which the same check catches.  :func:`grid_convergence` shows the estimate settling on fixed
grids.

The grids and the push itself are in :mod:`smdlab.grid_push`.  The chain-rule bound
KL(q(x_0) || p(x_0)) <= KL(q(x_T) || N(0, I)) + sum over jumps of M_{t->s} is
:func:`smdlab.bounds.kl_bound`; in any dimension, :mod:`smdlab.path_kl` bounds the KL itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from tqdm import tqdm  # the plain bar: tqdm.auto warns in kernels without ipywidgets

from .distributions import LOG_2PI, Gaussian, LatentMixture
from .exact import MixturePosterior
from .grid_push import cell_volume, grid_points, kernel_box, make_grid, push_density, pushable, step_box
from .kernels import ReverseKernel
from .local_error import mixture_log_prob
from .mixture import GaussianMixture
from .sampling import chain_steps
from .schedules import NoiseSchedule

# ---------------------------------------------------------------------- global error on a grid
#: Default bound on the estimated node-rule (aliasing) error of the whole push, in units of mass
#: (the KL moves by about as much).  A Gaussian bump of width sigma summed at spacing d has
#: relative error ~ 2 exp(-2 pi^2 sigma^2 / d^2): measured on the 1000-step two-mode chain, a
#: last-step spacing 1.27 sigma gave an estimate of 7e-6, a mass gain of 6.9e-6 and a KL 0.57 %
#: low; at 0.63 sigma everything agreed with a 4x finer grid to 1e-9.
GRID_TOL = 1e-7
#: Largest grids refinement may reach per axis (1-D, 2-D); beyond them the route refuses.
MAX_GRID = {1: 16384, 2: 768}
#: Refinement stops when the next grid's push would cost more than this many kernel evaluations
#: (steps x source nodes x target nodes; about 1e9 per 5-20 s on one core), or more than
#: REFINE_WORK_FACTOR times the push the caller asked for (one doubling in 1-D, none in 2-D,
#: where each doubling costs 16x: callers choose their 2-D grids, the result says if it is enough).
WORK_BUDGET = 5e9
REFINE_WORK_FACTOR = 4.0
#: Share of the pushed mass an intermediate box may leave out to keep far tail components (a
#: latent kernel's tail draws) from stretching the grid (:func:`smdlab.grid_push.kernel_box`).
BOX_TRIM = 1e-6
#: ... and, after the trim, the widest an intermediate box of random latent draws may grow, per
#: axis, in multiples of the true marginal's box (centred on it); what lands beyond is dropped
#: and counted in "mass_lost" (the KL of the rest is an upper bound).  A 10-step SMD-energy model
#: sends ~1e-4 of its mass to means of 230, 370, ... 3e11 over its last jumps: with the trim
#: alone the boxes followed (-41..8, -140..7, -1309..-3) until no mass was left on any node and
#: the KL read inf, where its samples sit in the modes as often as its sibling seeds'.
BOX_CAP = 2.0
#: Independent pushes of a kernel with random latent draws (the jackknife of _replicated_push).
LATENT_REPLICATES = 8
#: ... and the node-rule error such a KL may carry, as a share of its standard error.
LATENT_ALIAS_SHARE = 0.25
#: ... but never more than this (a KL that is merely imprecise must not excuse the node rule).
LATENT_ALIAS_MAX = 0.01
#: Work (Gaussian evaluations) above which the full-covariance push warns and shows progress.
SLOW_WORK = 3e9


class UnderResolvedGrid(ValueError):
    """The grid cannot resolve the chain's narrowest kernel within the allowed size."""


def _step_aliasing(dist, keep: torch.Tensor, mass: torch.Tensor, n: int, D: int,
                   h: np.ndarray) -> tuple[float, float]:
    """Estimated node-rule error of one push (in units of mass) and the worst ratio r.

    The push integrates over the source nodes; for one target node the integrand is a Gaussian
    bump in the source coordinate whose width is the kernel's sd over the slope of the mean map,
    so neighbouring source nodes whose means lie r kernel sds apart sample it with relative error
    ~ 2 exp(-2 pi^2 / r^2).  Weighting by the nodes' masses gives the error of the step.  Random
    latent draws: the same for the draws' mean map and the mixture's width (the kernel sd and the
    draws' spread); weighted latent mixtures: r is the spacing over the narrowest component sd."""
    noise = None        # random latent draws: the variance of each node's draws' mean
    if isinstance(dist, Gaussian):
        mus = [dist.mean()]
        var = dist.variance if dist.isotropic else torch.linalg.eigvalsh(dist.covariance)[:, 0]
        sds = [var.sqrt()]
    elif isinstance(dist, MixturePosterior):
        sd_k = dist.eigvals.min(-1).values.sqrt()                          # (K,)
        w = dist.weights
        mus = [dist.means[:, k] for k in range(dist.K)]
        sds = [sd_k[k].expand(w.shape[0]) / w[:, k].clamp_min(1e-300) for k in range(dist.K)]
        # (dividing sd by the weight scales each component's error by its weight, roughly)
    elif isinstance(dist, LatentMixture) and not dist.weighted:
        # Random draws: each node's pushed density is an unbiased estimate of the kernel's
        # mixture, whose mean map is the draws' mean and whose width is the kernel's sd widened
        # by the draws' spread; the node rule integrates that smooth mixture (this estimate), the
        # draws add noise on top (the replicates of _replicated_push measure it).
        L = dist.means.shape[1]
        var = dist.means.var(1) if L > 1 else torch.zeros_like(dist.means[:, 0])    # (N, D)
        mus = [dist.means.mean(1)]
        sds = [(dist.variance + var.amin(-1)).sqrt()]
        noise = [var.sum(-1) / L]     # variance of the draws' mean, summed over the axes
    elif isinstance(dist, LatentMixture):
        r = float(np.max(h) / dist.variances.sqrt().min().item())
        return 2 * math.exp(-2 * math.pi ** 2 / r ** 2) if r > 0 else 0.0, r
    else:
        return 0.0, 0.0
    err, worst = 0.0, 0.0
    shape = (n,) * D
    m_full = mass.reshape(shape)
    for mu, sd, nv in zip(mus, sds, noise or [None] * len(mus)):
        full_mu = torch.full((n ** D, D), math.nan, dtype=torch.float64)
        full_sd = torch.full((n ** D,), math.nan, dtype=torch.float64)
        full_mu[keep], full_sd[keep] = mu.to(torch.float64), sd.to(torch.float64)
        full_mu, full_sd = full_mu.reshape(*shape, D), full_sd.reshape(shape)
        if nv is not None:
            full_nv = torch.zeros(n ** D, dtype=torch.float64)
            full_nv[keep] = nv.to(torch.float64)
            full_nv = full_nv.reshape(shape)
        for ax in range(D):
            dmu = torch.diff(full_mu, dim=ax).norm(dim=-1)
            if nv is not None:
                # the draws' means scatter around the mean map: remove that noise from the
                # squared neighbour difference (an unbiased correction, floored at 0)
                pair_nv = full_nv.narrow(ax, 0, n - 1) + full_nv.narrow(ax, 1, n - 1)
                dmu = (dmu * dmu - pair_nv).clamp_min(0).sqrt()
            sd_pair = torch.minimum(full_sd.narrow(ax, 0, n - 1), full_sd.narrow(ax, 1, n - 1))
            m_pair = torch.minimum(m_full.narrow(ax, 0, n - 1), m_full.narrow(ax, 1, n - 1))
            r = dmu / sd_pair
            ok = torch.isfinite(r)
            if ok.any():
                r, m_pair = r[ok], m_pair[ok]
                err += (m_pair * 2 * torch.exp(-2 * math.pi ** 2 / r.clamp_min(1e-3) ** 2)).sum().item()
                worst = max(worst, r.max().item())
    return err, worst


def grid_global_error(mixture: GaussianMixture, kernel: ReverseKernel,
                      schedule: NoiseSchedule | None = None, n_grid: int | None = None,
                      n_latent: int | None = 16, generator: torch.Generator | None = None,
                      width: float = 7.0, prune: float = 1e-13, progress: bool | None = None,
                      refine: bool = True, max_grid: int | None = None,
                      tol: float = GRID_TOL, strict: bool = False,
                      box_trim: float = BOX_TRIM, latent_replicates: int = LATENT_REPLICATES
                      ) -> dict:
    """KL(q(x_0) || p(x_0)) of the chain of ``schedule`` (default: the kernel's) started at N(0, I).

    Args:
        mixture: the target, D = 1 or 2.
        kernel: any reverse kernel on the mixture's dimension.
        n_grid: nodes per axis to start from (default 2048 in 1-D, 256 in 2-D).
        n_latent: latent draws per node for latent kernels.
        width: box margin in standard deviations of the true marginal at each step.
        prune: drop source nodes whose mass is below prune * (largest mass).
        progress: show a progress bar over the steps; None: only when the run looks slow.
        refine, tol: when the estimated node-rule error of the chain (see :func:`_step_aliasing`)
            exceeds ``tol`` or the node rule gains mass, rerun on a grid twice as fine (up to
            ``max_grid``, default MAX_GRID[D], and while the push stays within WORK_BUDGET and
            REFINE_WORK_FACTOR times the first one).
        box_trim: for random latent draws, the share of the mass an intermediate step's box may
            leave out (per axis and side trim / (2 D)): far tail draws would otherwise stretch
            the grid; what is left out counts in "mass_lost" and makes the KL an upper bound for
            it.  0: the box holds every draw.  Deterministic kernels are never trimmed.
        latent_replicates: for kernels with random latent draws (an equal-weight
            :class:`LatentMixture` whose draws differ), the number R of independent pushes; the
            KL is the jackknife over them (see :func:`_replicated_push`), with "kl_se".
        strict: if the grid stays under-resolved, raise :class:`UnderResolvedGrid`; otherwise
            (default) return the result with "resolved": False and a RuntimeWarning that names
            the error estimate: such a KL is not to be quoted as a value.
    Returns a dict: "kl" (nats, >= 0), "kl_raw" (the node sum before the last safeguard: it can be
    below 0 only by rounding), "grid" (list of per-axis node arrays at step 0, a box around
    q(x_0)), "density" (p(x_0) on that grid), "q_density" (q(x_0) there), "mass_lost" (1 - the
    model's mass on the boxes before the last jump: truncation plus node-rule error),
    "p_mass_in_box" (p's mass on q's box at step 0), "mass_pruned", "n_grid" (the grid used),
    "n_grid_requested", "grid_error" (the estimated node-rule error), "resolved" (grid_error <=
    tol, or for random latent draws <= min(LATENT_ALIAS_SHARE x kl_se, LATENT_ALIAS_MAX), no
    unstable jackknife, and no mass gained),
    "resolution" (worst neighbour mean shift / kernel sd over the chain), "steps"; for random
    latent draws also "kl_se" (jackknife standard error over the R replicates), "kl_pooled"
    (the KL of their pooled density, before the bias correction), "kl_replicates" (each
    replicate's KL), "replicates" (R) and "jackknife_unstable" (the correction fell below 0:
    "kl" is then the pooled KL, and the result is not resolved).
    """
    if mixture.D not in (1, 2):
        raise ValueError(f"the grid route works in 1-D and 2-D only; the mixture has D={mixture.D} "
                         "(use smdlab.metrics.sample_metrics in higher dimensions)")
    if getattr(kernel, "dim", mixture.D) != mixture.D:
        raise ValueError(f"kernel dim {kernel.dim} does not match the mixture's D={mixture.D}")
    D = mixture.D
    n = n_grid if n_grid is not None else (2048 if D == 1 else 256)
    if isinstance(n, bool) or not isinstance(n, int) or n < 8:
        raise ValueError(f"n_grid must be an integer >= 8; got {n!r}")
    cap = MAX_GRID[D] if max_grid is None else max_grid
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < n:
        raise ValueError(f"max_grid must be an integer >= n_grid={n}; got {cap!r}")
    pairs = chain_steps(kernel, schedule)
    requested, first_work = n, None
    while True:
        res = _replicated_push(mixture, kernel, pairs, n, n_latent, generator, width, prune,
                               progress, box_trim, latent_replicates)
        gained = res["mass_lost"] < -10 * tol or res["p_mass_in_box"] > 1 + 10 * tol
        # Random latent draws: the node-rule error is judged against the statistical error of
        # the jackknife (the estimate itself is inflated by the draws' noise: on a 4-step
        # SMD-energy model it fell 1.9e-2, 2.1e-3, 7.8e-4, 4.9e-5 at L = 8, 16, 32, 64).
        allowed = max(tol, min(LATENT_ALIAS_SHARE * res["kl_se"], LATENT_ALIAS_MAX)) \
            if "kl_se" in res else tol
        res["resolved"] = res["grid_error"] <= allowed and not gained and \
            not res.get("jackknife_unstable", False)
        if res["resolved"]:
            break
        why = (f"the node rule gained mass (mass_lost {res['mass_lost']:.2e}, p's mass on q's "
               f"box {res['p_mass_in_box']:.8f})" if gained else
               f"the {res['replicates']} pushes with fresh latent draws disagree too much for the "
               f"jackknife (KLs {min(res['kl_replicates']):.3g} to {max(res['kl_replicates']):.3g};"
               " the pooled KL is returned)" if res.get("jackknife_unstable") else
               f"estimated node-rule error {res['grid_error']:.1e} > tol={tol:g} (neighbouring "
               f"nodes push kernel means up to {res['resolution']:.2f} kernel sds apart)")
        need = 2 * n
        work = res["work"] * 2 ** (2 * D)
        if first_work is None:
            first_work = res["work"]
        budget = min(WORK_BUDGET, REFINE_WORK_FACTOR * first_work)
        if refine and need <= cap and work <= budget:
            n = need
            continue
        stop = ("refine=False" if not refine else f"{need} nodes per axis exceed max_grid={cap}"
                if need > cap else f"{need} nodes per axis would cost ~{work:.1e} kernel "
                                   f"evaluations (budget {budget:.1e}): pass a larger n_grid")
        msg = f"grid of {n} nodes per axis is too coarse for {kernel.name}: {why}; {stop}"
        if strict:
            raise UnderResolvedGrid(msg)
        warnings.warn(msg + "; the KL returned is flagged resolved=False", RuntimeWarning,
                      stacklevel=2)
        break
    res["n_grid_requested"] = requested
    res["kernel"] = kernel.name
    return res


def _replicated_push(mixture, kernel, pairs, n, n_latent, generator, width, prune, progress,
                     box_trim, R) -> dict:
    """The grid push, repeated R times with fresh latent draws when the kernel's draws are random.

    With random draws each push's final density p_r is an unbiased estimate of the grid's p, so
    its KL is biased HIGH (Jensen), by about half the relative variance of p_r under q: O(1/L)
    for L draws per node (measured on a 4-step SMD-energy model, 64^2 nodes, 4 latent seeds:
    KL 2.02, 1.87, 1.83, 1.80 at L = 4, 8, 16, 32).  The R pushes are pooled (R L draws) and
    the bias of the pooled KL is removed by the jackknife over replicates (the bias is ~ c / R
    in the number of replicates): KL_J = R KL(all) - (R - 1) mean_r KL(all but r), with the
    jackknife standard error (R - 1 degrees of freedom).  Calibration against a deterministic
    reference (a latent kernel whose mixture is exactly a Gaussian kernel, 3 x 3 grid, 4 steps,
    96^2 nodes, 12 seeds; tests/test_global_error_latent.py): z-scores of mean 0.76 and spread
    1.16 at R = 8, L = 4 (t with 7 degrees of freedom: spread 1.18), mean 0.9 and spread 1.5 at
    R = 4, L = 8: the correction leaves a bias of under one standard error, upward.
    Deterministic kernels (Gaussian, exact or weighted mixtures, frozen latents) are pushed
    once."""
    res = _grid_push(mixture, kernel, pairs, n, n_latent, generator, width, prune, progress,
                     box_trim)
    if not res.get("random_latent") or R < 2 or res.get("no_mass"):
        return res
    runs = [res] + [_grid_push(mixture, kernel, pairs, n, n_latent, generator, width, prune,
                               progress, box_trim) for _ in range(R - 1)]
    if any(r.get("no_mass") for r in runs):
        return next(r for r in runs if r.get("no_mass"))
    dens = np.stack([r["density"] for r in runs])           # same final grid: q's box at step 0
    log_q = np.log(np.maximum(res["q_density"], 1e-300)).reshape(-1)
    q_w = torch.softmax(torch.as_tensor(log_q), 0).numpy()
    total = dens.sum(0)

    def kl(d):
        return float((q_w * (log_q - np.log(np.maximum(d.reshape(-1), 1e-300)))).sum())

    k_all = kl(total / R)
    k_loo = np.array([kl((total - d) / (R - 1)) for d in dens])
    k_j = R * k_all - (R - 1) * k_loo.mean()
    se = math.sqrt((R - 1) / R * ((k_loo - k_loo.mean()) ** 2).sum())
    # Replicates that disagree wildly (a chain that loses its mass in some pushes) can drive the
    # correction below 0: the jackknife is then noise, and the pooled KL (biased high) is kept,
    # flagged unstable (never resolved).
    unstable = not (math.isfinite(k_j) and k_j >= 0)
    out = dict(res)
    out.update(kl=max(k_all if unstable else k_j, 0.0), kl_raw=k_j, kl_se=se, kl_pooled=k_all,
               jackknife_unstable=unstable, replicates=R,
               kl_replicates=[r["kl_raw"] for r in runs], density=total / R,
               mass_lost=max(r["mass_lost"] for r in runs),
               p_mass_in_box=float(np.mean([r["p_mass_in_box"] for r in runs])),
               mass_pruned=max(r["mass_pruned"] for r in runs),
               grid_error=max(r["grid_error"] for r in runs),
               resolution=max(r["resolution"] for r in runs),
               work=sum(r["work"] for r in runs))
    return out


def _grid_push(mixture, kernel, pairs, n, n_latent, generator, width, prune, progress,
               box_trim=0.0) -> dict:
    """One run of the grid push on n nodes per axis (see :func:`grid_global_error`)."""
    D = mixture.D
    root = kernel.schedule.root
    ab = root.alpha_bars
    # Start: N(0, I) on the box of the first step.
    t0 = pairs[0][0]
    axes = make_grid(*step_box(mixture, ab[t0].item(), width), n)
    x = grid_points(axes)
    mass = torch.exp(-0.5 * (x * x).sum(-1) - 0.5 * D * LOG_2PI) * cell_volume(axes)
    pruned = 0.0
    source_mass = 1.0
    worst, alias, total_work = 0.0, 0.0, 0.0
    random_latent = False
    bar = None
    for i, (t, s) in enumerate(pairs):
        if not (torch.isfinite(mass).all() and (mass > 0).any()):
            return _no_mass(mixture, ab, width, n, pairs, pruned, worst, alias, total_work)
        keep = mass > prune * mass.max()
        pruned += mass[~keep].sum().item()
        source_mass = mass.sum().item()
        dist = pushable(kernel.distribution(x[keep], t, s, generator=generator, n_latent=n_latent),
                         kernel)
        if isinstance(dist, LatentMixture) and not dist.weighted:
            # draws that differ (or a single draw, which cannot be told apart) are random
            random_latent = random_latent or dist.means.shape[1] == 1 or bool(
                (dist.means - dist.means[:, :1]).abs().amax() > 0)
        h = np.array([(a[1] - a[0]).item() for a in axes])
        total_work += float(keep.sum()) * n ** D
        e, r = _step_aliasing(dist, keep, mass, n, D, h)
        alias += e
        worst = max(worst, r)
        if i == 0:
            work = _push_work(dist, int(keep.sum()), n, D) * len(pairs)
            slow = work > SLOW_WORK
            if slow:
                warnings.warn(f"grid push of {kernel.name}: about {work:.1e} Gaussian evaluations "
                              f"({len(pairs)} steps, {n}^{D} nodes, full covariances); this can "
                              "take many minutes", RuntimeWarning, stacklevel=3)
            show = progress if progress is not None else slow
            bar = tqdm(total=len(pairs), disable=not show, desc=f"grid push {kernel.name}")
        lo, hi = step_box(mixture, ab[s].item(), width)
        if s > 0:
            # Intermediate states are pushed on: the box must hold the model's mass too.
            # Only random latent draws are trimmed: their tail draws can land anywhere;
            # deterministic kernels keep every component (and their numbers bit for bit).
            trim = box_trim if isinstance(dist, LatentMixture) and not dist.weighted else 0.0
            klo, khi = kernel_box(dist, width, mass[keep], trim)
            if trim > 0:
                mid, half = (lo + hi) / 2, BOX_CAP * (hi - lo) / 2
                klo, khi = np.maximum(klo, mid - half), np.minimum(khi, mid + half)
            lo, hi = np.minimum(lo, klo), np.maximum(hi, khi)
        # The last state is only evaluated where q(x_0) lives: the push gives p's density
        # exactly at the nodes, so p's mass outside q's box does not bias KL(q || p).
        axes = make_grid(lo, hi, n)
        density = push_density(dist, mass[keep], axes, prune)
        x = grid_points(axes)
        mass = density.reshape(-1) * cell_volume(axes)
        bar.update(1)
    bar.close()
    log_q = mixture_log_prob(mixture, x)
    q_w = torch.softmax(log_q, 0)                      # node-rule weights of q on its box
    log_p = density.reshape(-1).clamp_min(1e-300).log()
    # sum_j Q_j log(Q_j / P_j) >= -log(sum_j P_j): below 0 only if the node rule gained mass,
    # which the caller refines away; what remains is rounding.
    kl_raw = (q_w * (log_q - log_p)).sum().item()
    shape = [a.numel() for a in axes]
    return {"kl": max(kl_raw, 0.0), "kl_raw": kl_raw, "grid": [a.numpy() for a in axes],
            "density": density.numpy(), "q_density": log_q.exp().reshape(shape).numpy(),
            "mass_lost": 1.0 - source_mass, "p_mass_in_box": mass.sum().item(),
            "mass_pruned": pruned, "n_grid": n, "steps": len(pairs), "resolution": worst,
            "grid_error": alias, "work": total_work, "random_latent": random_latent}


def _no_mass(mixture, ab, width, n, pairs, pruned, worst, alias, work) -> dict:
    """The result of a push in which the model's mass left every box (or became NaN): p has no
    mass where q lives, so the KL is infinite, and no finer grid changes that (resolved)."""
    axes = make_grid(*step_box(mixture, ab[0].item(), width), n)
    log_q = mixture_log_prob(mixture, grid_points(axes))
    shape = [a.numel() for a in axes]
    return {"kl": math.inf, "kl_raw": math.inf, "grid": [a.numpy() for a in axes],
            "density": np.zeros(shape), "q_density": log_q.exp().reshape(shape).numpy(),
            "mass_lost": 1.0, "p_mass_in_box": 0.0, "mass_pruned": pruned, "n_grid": n,
            "steps": len(pairs), "resolution": worst, "grid_error": alias, "work": work,
            "no_mass": True}


def _push_work(dist, n_src: int, n: int, D: int) -> float:
    """Gaussian evaluations of one push with full covariances (0 for the fast factorised push)."""
    full = False
    if isinstance(dist, Gaussian) and not dist.isotropic and D == 2:
        full = dist.covariance[:, 0, 1].abs().amax() > 1e-12 * torch.diagonal(
            dist.covariance, dim1=-2, dim2=-1).amax()
    elif isinstance(dist, MixturePosterior) and not dist.axis_aligned:
        full = True
        n_src *= dist.K
    return float(n_src) * n ** D if full else 0.0


def grid_convergence(mixture: GaussianMixture, kernel: ReverseKernel,
                     schedule: NoiseSchedule | None = None, sizes=(32, 64, 128, 256),
                     **kw) -> dict:
    """The grid push at several fixed grid sizes, without refinement, to show convergence:
    {"n_grid": [...], "kl": [...], "grid_error": [...] (the node-rule error estimates)}."""
    if mixture.D not in (1, 2):
        raise ValueError(f"the grid route works in 1-D and 2-D only; the mixture has D={mixture.D}")
    opts = {"n_latent": 16, "generator": None, "width": 7.0, "prune": 1e-13, "progress": False}
    unknown = set(kw) - set(opts)
    if unknown:
        raise TypeError(f"unknown options for grid_convergence: {sorted(unknown)}")
    opts.update(kw)
    pairs = chain_steps(kernel, schedule)
    runs = []
    for n in sizes:
        if isinstance(n, bool) or int(n) != n or n < 8:
            raise ValueError(f"sizes must be integers >= 8; got {n!r}")
        runs.append(_grid_push(mixture, kernel, pairs, int(n), opts["n_latent"],
                               opts["generator"], opts["width"], opts["prune"], opts["progress"]))
    return {"n_grid": [int(n) for n in sizes], "kl": [r["kl"] for r in runs],
            "grid_error": [r["grid_error"] for r in runs]}


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
