"""E9: every few-step reverse-kernel family on one exact axis, and the paper's global claim.

Part A (issue 12, items 1-3).  For each target (two 1-D modes, the 7 x 7 grid, an unequal-weight
anisotropic 2-D mixture, an 8-D product mixture) and each number of steps S of a respaced linear
chain, every family's oracle member (:func:`smdlab.families.oracle_families`) is scored by
  * the local error summed over the chain, sum of M_{t->s} (:mod:`smdlab.local_error`, common
    random numbers across the kernels), and
  * the global error KL(q(x_0) || p(x_0)) as the tightest importance-weighted upper bound B_K
    (:mod:`smdlab.path_kl`, exact forward process as proposal; B_1 is the chain-rule bound,
    B_K decreases to the KL; the table keeps the gap B_{K/2} - B_K so convergence is visible);
    deterministic DDIM (eta = 0) by the change of variables instead
    (:func:`smdlab.families.ddim_pushforward_kl`; its local error is +inf, no density).
The verdict "L5" answers "how many components does a step need": the smallest top-k truncation
of the exact posterior whose summed local error is below a tolerance, per target and S.

Part B (item 5).  Theorem 3.2 of the paper ("unbounded global error"): the perfect DDPM (exact
mean, beta-tilde variance) at a FIXED number of steps, along three families of targets:
dimension D (products of the 1-D two-mode mixture), separation of two modes, and component width.
Verdict row "C3 (global)".

Learned models (issue 12).  On the grid target the trained DDPM and SMD models of the toy zoo
(``cfg.zoo``: the same value, hence the same cached models, as E6-E8's) are scored beside the
oracles (:mod:`.e9_learned`): the full-chain model (seed 0) on every S, the few-step models on
their own chains (every seed, mean +- sd), each with its convergence status.  They sit in their
own block of the result (``targets.grid.learned``), so the oracle rows and verdicts are untouched;
``learned_kinds=()`` leaves them out.  ``run(cfg, out, extra_kernels=...)`` accepts other kernels:
``extra_kernels`` maps a target name to a callable ``(mixture, root) -> list of kernels`` on the
root schedule, scored beside the oracles on the same chains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..families import DDIMKernel, ddim_pushforward_kl, oracle_families
from ..global_error import grid_global_error
from ..gms import GMSKernel
from ..kernels import BestGaussianKernel
from ..local_error import local_errors
from ..mixture import GaussianMixture
from ..path_kl import iw_global_kl
from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from .base import ExperimentResult, Outputs, register, save_result
from .e9_learned import learned_rows
from .e9_report import part_b_figure, summary_of, target_figure
from .toy_config import ToyEval, ToyZoo

TARGET_NAMES = ("two_modes", "grid", "anisotropic", "product8")


def make_target(name: str) -> GaussianMixture:
    """E9's targets: "two_modes" (1-D, +-1, std 0.1), "grid" (7 x 7, spacing 0.5, std 0.05),
    "anisotropic" (E5's three rotated elongated components, weights 0.4/0.35/0.25), "product8"
    (8-D product of the 1-D mixture 0.5 N(-1, 0.1^2) + 0.5 N(1, 0.1^2): 256 components)."""
    if name == "two_modes":
        return GaussianMixture.two_modes(2.0, 0.1)
    if name == "grid":
        return GaussianMixture.grid(7, 0.5, 0.05)
    if name == "anisotropic":
        from ..targets import anisotropic_target
        return anisotropic_target()
    if name == "product8":
        return GaussianMixture.product([0.5, 0.5], [-1.0, 1.0], [0.01, 0.01], 8)
    raise ValueError(f"unknown E9 target {name!r}; choose one of {TARGET_NAMES}")


@dataclass
class E9Config:
    """Targets, chains (numbers of steps S of linear(T)), estimator sizes (per target:
    ``n_points``/``iw_points`` x_t / x_0 draws, ``Ks`` the importance counts), the top-k list,
    the "needs k components" tolerance on the summed local error, and part B's sweeps."""

    seed: int = 0
    T: int = 1000
    targets: tuple = TARGET_NAMES
    steps: tuple = (2, 4, 10, 25, 100)
    steps_product8: tuple = (2, 4, 10, 25)
    topk: tuple = (1, 2, 4, 8, 16)
    n_points: int = 256
    # 64 (was 128): product8's local errors are ~90% of its cost, and every verdict there has a
    # margin of > 20 se at 128 points (top-16's summed local error 0.38 +- 0.01 against 0.05)
    n_points_product8: int = 64
    iw_points: int = 48
    iw_points_product8: int = 24
    Ks: tuple = (1, 8, 32)
    Ks_product8: tuple = (1, 4, 16)
    ddim_grid_2d: int = 128
    grid_1d: int = 1024
    ddim_samples_hd: int = 2048
    analytic_points: int = 2048
    needs_tol: float = 0.05
    # part B: the perfect DDPM at a fixed number of steps
    b_steps: int = 10
    b_dims: tuple = (1, 2, 4, 8)
    b_separations: tuple = (2.0, 8.0, 32.0, 128.0, 512.0)
    b_stds: tuple = (0.1, 1e-2, 1e-3, 1e-4)
    b_points: int = 64
    b_Ks: tuple = (1, 16, 64)
    b_local_points: int = 512
    b_grid: int = 4096
    needs_tol_global: float = 0.1
    # learned models (grid target only): the toy zoo of E6-E8 (same values, same cached models),
    # the kinds scored, SMD's latent draws (local error: per x_t; IW: per step and path), and the
    # largest S with the grid route as a cross-check (E8's evaluation, stored beside the models)
    zoo: ToyZoo = field(default_factory=ToyZoo)
    eval: ToyEval = field(default_factory=ToyEval)
    learned_kinds: tuple = ("ddpm", "smd-jensen", "smd-energy")
    learned_n_points: int = 128
    learned_n_latent_local: int = 8
    learned_n_latent_iw: int = 1
    learned_grid_max_steps: int = 25

    @classmethod
    def quick(cls) -> E9Config:
        return cls(targets=("two_modes", "anisotropic"), steps=(2, 4), topk=(1, 2),
                   n_points=64, iw_points=16, Ks=(1, 8), ddim_grid_2d=48, analytic_points=256,
                   grid_1d=512, b_steps=4, b_dims=(1, 2), b_separations=(2.0, 32.0),
                   b_stds=(0.1, 1e-3), b_points=16, b_Ks=(1, 4), b_local_points=64,
                   b_grid=256, zoo=ToyZoo.quick(), eval=ToyEval.quick(),
                   learned_n_points=64, learned_n_latent_local=4)


def _sizes(cfg: E9Config, tname: str):
    if tname == "product8":
        return cfg.steps_product8, cfg.n_points_product8, cfg.iw_points_product8, cfg.Ks_product8
    return cfg.steps, cfg.n_points, cfg.iw_points, cfg.Ks


def _has_density(k) -> bool:
    return not (isinstance(k, DDIMKernel) and k.eta == 0)


def _score_target(mix, kernels, root, steps, n_points, iw_points, Ks, cfg, g) -> dict:
    """{kernel: {S: {"local", "local_se", "kl", "kl_se", "K", "bounds", "gap", "method"}}}."""
    out = {k.name: {} for k in kernels}
    timings = {}
    for S in steps:
        t_start = time.time()
        chain = root.respace(S)
        pairs = chain_steps(kernels[0], chain)
        # Every kernel with a density, through the one estimator (stratified draws, a route
        # chosen per point; common random numbers across the kernels).
        cv = [k for k in kernels if _has_density(k)]
        sums = {k.name: [0.0, 0.0] for k in kernels}
        for t, s in pairs:
            for k, r in zip(cv, local_errors(mix, cv, t, s, n_points, 1, None, g)):
                sums[k.name][0] += r.mean
                sums[k.name][1] += r.se ** 2
        for k in kernels:
            row = {}
            if isinstance(k, DDIMKernel) and k.eta == 0:
                row.update(local=None, local_se=None)       # +inf: a point mass has no density
                if mix.D <= 2:
                    r = ddim_pushforward_kl(mix, k, chain, n_grid=cfg.ddim_grid_2d if mix.D == 2
                                            else None, jacobian="tweedie")
                else:
                    r = ddim_pushforward_kl(mix, k, chain, n_samples=cfg.ddim_samples_hd,
                                            generator=g, jacobian="tweedie")
                row.update(kl=None if math.isinf(r["kl"]) else r["kl"], kl_se=r["se"],
                           q_mass=r["q_mass"], unreached=r["unreached"], method=r["method"])
            else:
                row.update(local=sums[k.name][0], local_se=math.sqrt(sums[k.name][1]))
                r = iw_global_kl(mix, k, chain, iw_points, Ks, g)
                gap = (r["bound"][-2] - r["bound"][-1]) if len(Ks) > 1 else 0.0
                row.update(kl=r["bound"][-1], kl_se=r["se"][-1], K=r["K"], bounds=r["bound"],
                           bound_se=r["se"], gap=gap,
                           converged=bool(gap < max(2 * r["se"][-1], 0.05 * abs(r["bound"][-1])
                                                    + 0.01)),
                           method=f"IW bound K={r['K'][-1]}, {iw_points} x_0")
                if mix.D == 1 and not isinstance(k, GMSKernel):
                    # the deterministic 1-D cross-check (the grid pushes Gaussian and mixture
                    # steps only, so not GMS's product mixture)
                    row["grid_kl"] = grid_global_error(mix, k, chain, n_grid=cfg.grid_1d,
                                                       n_latent=None)["kl"]
            out[k.name][S] = row
        timings[S] = time.time() - t_start
    return out, timings


def _needs(rows: dict, mix: GaussianMixture, steps, topk, tol, tol_global) -> dict:
    """Per S: {"local": k, "global": k}, the smallest top-k truncation whose summed local error is
    below ``tol`` (within 2 se), and whose global KL upper bound is below ``tol_global``.  K means
    only the full mixture qualifies; ">k" that the largest truncation tried does not."""
    def first(ok):
        for k in sorted(topk):
            if k >= mix.K:
                return mix.K
            row = rows.get(f"topk-{k}", {}).get(S)
            if row is not None and ok(row):
                return k
        return mix.K if max(topk) >= mix.K else f">{max(topk)}"

    out = {}
    for S in steps:
        out[S] = {"local": first(lambda r: r["local"] is not None
                                 and r["local"] + 2 * r["local_se"] < tol),
                  "global": first(lambda r: r["kl"] is not None and r["kl"] < tol_global)}
    return out


# ---------------------------------------------------------------------- part B
def _part_b(cfg: E9Config, root: NoiseSchedule, g) -> dict:
    chain = root.respace(cfg.b_steps)
    pairs = chain_steps(BestGaussianKernel(GaussianMixture.two_modes(), root), chain)
    inner = [(t, s) for t, s in pairs if s > 0]
    snr = root.alpha_bars / root.one_minus_alpha_bars
    # the any-data bound on the inner jumps telescopes: (D/2) log(SNR_{t_1} / SNR_T) per dimension
    inner_bound_1d = 0.5 * math.log(snr[inner[-1][1]].item() / snr[inner[0][0]].item()) \
        if inner else 0.0

    def one(mix):
        k = BestGaussianKernel(mix, root, "beta_tilde")
        r = iw_global_kl(mix, k, chain, cfg.b_points, cfg.b_Ks, g)
        row = {"K": r["K"], "bounds": r["bound"], "se": r["se"], "kl": r["bound"][-1],
               "kl_se": r["se"][-1], "joint": r["bound"][0], "joint_se": r["se"][0]}
        # where the chain-rule bound's local part sits: the jumps to s >= 1 against the last one
        ms = [local_errors(mix, [k], t, s, cfg.b_local_points, 1, None, g)[0] for t, s in pairs]
        row["sum_M_inner"] = float(sum(m.mean for m, (_, s) in zip(ms, pairs) if s > 0))
        row["M_final"] = float(ms[-1].mean)
        sd = mix.eigvals.min().sqrt().item()
        span = (mix.means.max() - mix.means.min()).item() + 14 * sd
        # the grid cross-check only where its nodes resolve the narrowest component
        row["grid"] = grid_global_error(mix, k, chain, n_grid=cfg.b_grid)["kl"] \
            if mix.D == 1 and span / cfg.b_grid < sd / 4 else None
        return row

    out = {"steps": cfg.b_steps, "inner_bound_per_dim": inner_bound_1d,
           "dims": {}, "separations": {}, "stds": {}}
    for D in cfg.b_dims:
        mix = GaussianMixture.product([0.5, 0.5], [-1.0, 1.0], [0.01, 0.01], D)
        out["dims"][D] = one(mix)
    for sep in cfg.b_separations:
        out["separations"][sep] = one(GaussianMixture.two_modes(sep, 0.1))
    for sd in cfg.b_stds:
        out["stds"][sd] = one(GaussianMixture.two_modes(2.0, sd))
    return out


# ---------------------------------------------------------------------- run
@register("e9", "Kernel-family bench: every few-step reverse-kernel family's oracle on one exact "
          "axis (local and global error vs steps), and the global unboundedness claim", E9Config)
def run(cfg: E9Config, out: Outputs, extra_kernels: dict | None = None) -> ExperimentResult:
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    root = NoiseSchedule.linear(cfg.T)
    data = {"targets": {}, "needs": {}}
    for tname in cfg.targets:
        mix = make_target(tname)
        steps, n_points, iw_points, Ks = _sizes(cfg, tname)
        kernels = list(oracle_families(mix, root, cfg.topk, analytic_points=cfg.analytic_points)
                       .values())
        if extra_kernels and tname in extra_kernels:
            kernels += list(extra_kernels[tname](mix, root))
        rows, secs = _score_target(mix, kernels, root, steps, n_points, iw_points, Ks, cfg, g)
        data["targets"][tname] = {"K": mix.K, "D": mix.D, "steps": list(steps), "rows": rows,
                                  "seconds": secs}
        if tname == "grid" and cfg.learned_kinds:
            t_l = time.time()
            data["targets"][tname]["learned"] = learned_rows(cfg, mix, root, steps, out, g)
            data["targets"][tname]["learned_seconds"] = time.time() - t_l
        data["needs"][tname] = _needs(rows, mix, steps, cfg.topk, cfg.needs_tol,
                                       cfg.needs_tol_global)
    data["part_b"] = _part_b(cfg, root, g)
    data["seconds"] = time.time() - t0
    json_path = save_result("e9", cfg, data, out)
    figs = [target_figure(tname, data["targets"][tname], out) for tname in data["targets"]]
    figs.append(part_b_figure(data["part_b"], out))
    summary, verdicts, headline = summary_of(data, cfg)
    return ExperimentResult("e9", data, json_path, figs, summary, verdicts, headline)
