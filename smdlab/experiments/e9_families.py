"""E9: every few-step reverse-kernel family on one exact axis, and the paper's global claim.

Part A (issue 12, items 1-3).  For each target (two 1-D modes, the 7 x 7 grid, an unequal-weight
anisotropic 2-D mixture, an 8-D product mixture) and each number of steps S of a respaced linear
chain, every family's oracle member (:func:`smdlab.families.oracle_families`) is scored by
  * the local error summed over the chain, sum of M_{t->s} (:mod:`smdlab.local_error`, common
    random numbers across the kernels; GMS by plain Monte Carlo, see ``_plain_local``), and
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

Learned models are not part of this run; ``run(cfg, out, extra_kernels=...)`` accepts them:
``extra_kernels`` maps a target name to a callable ``(mixture, root) -> list of kernels`` on the
root schedule, scored beside the oracles on the same chains.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..families import DDIMKernel, GMSKernel, ddim_pushforward_kl, oracle_families
from ..global_error import grid_global_error
from ..kernels import BestGaussianKernel, ExactKernel
from ..local_error import joint_sample, local_errors
from ..mixture import GaussianMixture
from ..path_kl import iw_global_kl
from ..provenance import save_figure
from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from .base import ExperimentResult, Outputs, Verdict, register, save_result

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
        from .e5_smd_expressivity import anisotropic_target
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
    n_points_product8: int = 128
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

    @classmethod
    def quick(cls) -> E9Config:
        return cls(targets=("two_modes", "anisotropic"), steps=(2, 4), topk=(1, 2),
                   n_points=64, iw_points=16, Ks=(1, 8), ddim_grid_2d=48, analytic_points=256,
                   grid_1d=512, b_steps=4, b_dims=(1, 2), b_separations=(2.0, 32.0),
                   b_stds=(0.1, 1e-3), b_points=16, b_Ks=(1, 4), b_local_points=64,
                   b_grid=256)


def _sizes(cfg: E9Config, tname: str):
    if tname == "product8":
        return cfg.steps_product8, cfg.n_points_product8, cfg.iw_points_product8, cfg.Ks_product8
    return cfg.steps, cfg.n_points, cfg.iw_points, cfg.Ks


def _has_density(k) -> bool:
    return not (isinstance(k, DDIMKernel) and k.eta == 0)


def _cv_ok(k) -> bool:
    """Kernels scored by the control-variate estimator of :mod:`smdlab.local_error`: Gaussians
    and the mixtures whose components are the exact posterior's (possibly widened).  GMS and
    the top-k truncations get the plain mean (``_plain_local``)."""
    return _has_density(k) and (k.is_gaussian or isinstance(k, ExactKernel)
                                or k.name == "smd-construction")


def _plain_local(mix, kernel, t, s, n_points, g) -> tuple[float, float]:
    """M_{t->s} by plain Monte Carlo: the mean of log q(x_s | x_t) - log p(x_s | x_t) over
    x_t ~ q(x_t), x_s ~ q(x_s | x_t), with its standard error.  Used for GMS and the top-k
    truncations, where the ratio p/q is heavy-tailed (GMS's variance floor on unrepresentable
    steps; the truncated kernel's missing modes): the fitted control-variate coefficients of
    :mod:`smdlab.local_error` were then unstable (-3e9 nats for GMS on the 8-D target, -6e7 for
    top-2 on the anisotropic one), while the plain mean stays unbiased with an honest error."""
    root = kernel.schedule.root
    lt, ls = root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()
    x_t, w, post, x_s = joint_sample(mix, lt, ls, n_points, 1, g, importance=True)
    ell = w * (post.log_prob(x_s[0]) - kernel.distribution(x_t, t, s).log_prob(x_s[0]))
    return ell.mean().item(), (ell.std() / math.sqrt(n_points)).item()


def _score_target(mix, kernels, root, steps, n_points, iw_points, Ks, cfg, g) -> dict:
    """{kernel: {S: {"local", "local_se", "kl", "kl_se", "K", "bounds", "gap", "method"}}}."""
    out = {k.name: {} for k in kernels}
    timings = {}
    for S in steps:
        t_start = time.time()
        chain = root.respace(S)
        pairs = chain_steps(kernels[0], chain)
        cv = [k for k in kernels if _cv_ok(k)]
        plain = [k for k in kernels if not _cv_ok(k) and _has_density(k)]
        sums = {k.name: [0.0, 0.0] for k in kernels}
        for t, s in pairs:
            for k, r in zip(cv, local_errors(mix, cv, t, s, n_points, 1, None, g)):
                sums[k.name][0] += r.mean
                sums[k.name][1] += r.se ** 2
            for k in plain:
                m, se = _plain_local(mix, k, t, s, n_points, g)
                sums[k.name][0] += m
                sums[k.name][1] += se ** 2
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
        data["needs"][tname] = _needs(rows, mix, steps, cfg.topk, cfg.needs_tol,
                                       cfg.needs_tol_global)
    data["part_b"] = _part_b(cfg, root, g)
    data["seconds"] = time.time() - t0
    json_path = save_result("e9", cfg, data, out)
    figs = [_target_figure(tname, data["targets"][tname], out) for tname in data["targets"]]
    figs.append(_part_b_figure(data["part_b"], out))
    summary, verdicts, headline = _summary(data, cfg)
    return ExperimentResult("e9", data, json_path, figs, summary, verdicts, headline)


# ---------------------------------------------------------------------- figures and text
def _style(name):
    if name.startswith("topk"):
        return dict(ls="--", marker="s", ms=3)
    if name.startswith("ddim"):
        return dict(ls=":", marker="^", ms=4)
    if name in ("exact", "smd-construction", "gms"):
        return dict(ls="-", marker="o", ms=4, lw=2)
    return dict(ls="-", marker=".", ms=5)


def _global_value(row):
    """The global KL drawn in the figure: the 1-D grid value where there is one, else the IW
    bound, else a resolved push-forward value (None otherwise)."""
    if row.get("grid_kl") is not None:
        return row["grid_kl"], 0.0
    if row.get("bounds") is None and (row.get("kl") is None or row["q_mass"] < 0.99):
        return None, None
    return row.get("kl"), row.get("kl_se") or 0.0


def _target_figure(tname, td, out, floor: float = 1e-3):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    steps = td["steps"]
    colors = plt.get_cmap("tab20").colors
    for i, (name, rows) in enumerate(td["rows"].items()):
        for ax, key in ((axes[0], "local"), (axes[1], "kl")):
            pts = [(S, *((rows[S]["local"], rows[S]["local_se"]) if key == "local"
                         else _global_value(rows[S]))) for S in steps]
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            xs, ys, se = zip(*pts)
            # values at or below the floor (zero, or noise around it) are drawn on the floor
            y = np.maximum(ys, floor)
            lo = np.minimum(2 * np.asarray(se), y - floor)
            ax.errorbar(xs, y, yerr=[lo, 2 * np.asarray(se)], label=name, capsize=2,
                        color=colors[(2 * i) % 20 if i < 10 else (2 * (i - 10) + 1) % 20],
                        **_style(name))
    for ax, lab in ((axes[0], "sum over the chain of local error M (nats)"),
                    (axes[1], "global KL(q(x_0) || p(x_0)) (nats)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7 * floor)
        ax.set_xticks(steps, [str(S) for S in steps])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps S")
        ax.set_ylabel(lab + f"; <= {floor:g} drawn at {floor:g}")
    axes[0].set_title(f"{tname} (K={td['K']}, D={td['D']}): local error (DDIM eta=0: +inf)",
                      fontsize=9)
    axes[1].set_title("global error: " + ("grid route (1-D)" if td["D"] == 1 else
                                          "IW upper bound") + "; DDIM eta=0 by change of variables",
                      fontsize=9)
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = save_figure(fig, out.figure(f"e9_families_{tname}"))
    plt.close(fig)
    return path


def _part_b_figure(pb, out):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for ax, key, xlab in ((axes[0], "dims", "dimension D (product of two modes)"),
                          (axes[1], "separations", "separation of two modes (std 0.1)"),
                          (axes[2], "stds", "component std (two modes at +-1)")):
        xs = [float(x) for x in pb[key]]
        rows = list(pb[key].values())
        ax.errorbar(xs, [r["kl"] for r in rows], yerr=[2 * r["kl_se"] for r in rows], fmt="-o",
                    label=f"IW bound K={rows[0]['K'][-1]}")
        ax.errorbar(xs, [r["joint"] for r in rows], yerr=[2 * r["joint_se"] for r in rows],
                    fmt="--.", label="K=1 (chain-rule bound)")
        g = [(x, r["grid"]) for x, r in zip(xs, rows) if r.get("grid") is not None]
        if g and key != "dims":
            ax.plot(*zip(*g), "kx", label="grid route (1-D)")
        # linear KL axis: growth linear in D, and in log(std), reads as a straight line
        ax.set(xscale="linear" if key == "dims" else "log", xlabel=xlab,
               ylabel="global KL (nats)")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"perfect DDPM (exact mean, beta-tilde), {pb['steps']} steps: global error "
                 "along three target families", fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out.figure("e9_global_claim"))
    plt.close(fig)
    return path


def _cell(row):
    loc = "inf" if row.get("local") is None else f"{row['local']:.3g}"
    if row.get("bounds") is None:                   # deterministic DDIM: change of variables
        if row.get("kl") is None:
            kl = f"inf ({row['unreached']:.1e} of q beyond the map's image)"
        elif row["q_mass"] < 0.99:
            kl = f"n/r (reaches {row['q_mass']:.2f} of q)"
        else:
            kl = f"{row['kl']:.3g}"
        return f"{loc} / {kl}"
    kl = f"{row['kl']:.3g}±{row['kl_se']:.1g}" + ("" if row["converged"] else "†")
    if row.get("grid_kl") is not None:
        kl += f" [grid {row['grid_kl']:.3g}]"
    return f"{loc} / {kl}"


def _summary(data, cfg):
    lines = ["Every family's oracle member (built from the exact posterior; `smdlab.families`) on "
             "respaced linear chains. Each cell: **sum over the chain of the local error M / global "
             "KL(q(x_0) || p(x_0))** in nats. The global value is the tightest importance-weighted "
             "upper bound B_K (`smdlab.path_kl`, ± its standard error; B_1 is the chain-rule bound; "
             "† marks bounds still falling between the last two K, i.e. loose upper bounds, "
             "typically kernels far narrower than the forward jump, for which the forward process "
             "is a poor proposal); in 1-D [grid] is the deterministic grid route. DDIM eta = 0 "
             "has no step density (local error inf) and gets its push-forward density by the "
             "change of variables (n/r: the quadrature does not reach all of q's mass, not "
             "resolved). "
             "GMS: per-dimension two-component moment fit, weight 1/3 (it cannot split a "
             "symmetric bimodal step and floors its variance where |skewness| >= 1/sqrt(2)).", ""]
    for tname, td in data["targets"].items():
        steps = td["steps"]
        lines += [f"**{tname}** (K = {td['K']}, D = {td['D']})", "",
                  "| family | " + " | ".join(f"S={S}" for S in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for name, rows in td["rows"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(rows[S]) for S in steps) + " |")
        lines += ["", f"![E9 {tname}](figures/e9_families_{tname}.png)", ""]
    # L5: how many components does a step need
    needs = data["needs"]
    parts = []
    for tname, per in needs.items():
        td = data["targets"][tname]
        mom, bt = td["rows"]["gaussian-moment"], td["rows"]["gaussian-beta_tilde"]
        parts.append(f"{tname} (K={td['K']}): " + ", ".join(
            f"S={S}: {_k(per[S]['local'])} local / {_k(per[S]['global'])} global (best Gaussian "
            f"{_num(mom[S]['local'])} / {_num(mom[S]['kl'])}, DDPM {_num(bt[S]['kl'])})"
            for S in td["steps"]))
    lines += [f"Components a step needs: the smallest top-k truncation of the exact posterior "
              f"with summed local error < {cfg.needs_tol:g} nats (local) and with global KL "
              f"bound < {cfg.needs_tol_global:g} nats (global); in brackets the moment-matched "
              "Gaussian's local / global error and the perfect DDPM's global error: "
              + "; ".join(parts) + ".", ""]
    def as_int(v):
        return int(v[1:]) + 1 if isinstance(v, str) else int(v)
    pairs_lg = [(as_int(per[S]["local"]), as_int(per[S]["global"]))
                for per in needs.values() for S in per]
    fewer = sum(g < loc for loc, g in pairs_lg)
    tail = (f" Globally fewer components than locally suffice in {fewer} of {len(pairs_lg)} "
            "(target, S) cases: a truncated chain still picks each mode with about the right "
            "frequency, and its large local error sits on draws the truncated kernel never makes."
            if fewer else " Globally as many components are needed as locally.")
    verdicts = [Verdict(
        "L5: how many mixture components does a reverse step need?", "holds with qualification",
        "Top-k truncations of the exact posterior: " + "; ".join(parts) + "." + tail,
        f"figures/e9_families_{'grid' if 'grid' in needs else next(iter(needs))}.png")]
    headline = {}
    for tname, td in data["targets"].items():
        S = min(td["steps"])
        for name in ("gaussian-moment", "gaussian-beta_tilde", "gms", "topk-1", "smd-construction"):
            if name in td["rows"] and td["rows"][name][S].get("kl") is not None:
                headline[f"{tname}_kl_{name}_S{S}"] = round(td["rows"][name][S]["kl"], 4)
    # part B
    pb = data["part_b"]
    lines += [f"**Global error of the perfect DDPM (exact mean, beta-tilde variance) at "
              f"S = {pb['steps']} steps** (IW bound at the largest K ± se; K = 1 is the chain-rule "
              f"bound; grid = the 1-D grid route where its nodes resolve the components; sum of M "
              f"over the jumps to s >= 1 and M of the final jump). The any-data local bound gives "
              f"at most {pb['inner_bound_per_dim']:.3g} nats per dimension over the jumps to s >= 1.",
              "",
              "| family of targets | value | global KL (IW) | K=1 bound | grid (1-D) | KL / D | "
              "sum M (s >= 1) | M final jump |",
              "|---|---|---|---|---|---|---|---|"]
    for key, lab in (("dims", "dimension D"), ("separations", "separation"), ("stds", "std")):
        for x, r in pb[key].items():
            D = int(x) if key == "dims" else 1
            lines.append(f"| {lab} | {x} | {r['kl']:.3g} ± {r['kl_se']:.1g} | {r['joint']:.3g} | "
                         f"{_num(r.get('grid'))} | {r['kl'] / D:.3g} | {r['sum_M_inner']:.3g} | "
                         f"{r['M_final']:.3g} |")
    lines += ["", "![E9 global claim](figures/e9_global_claim.png)"]
    ev, status, per_dim = _c3_evidence(pb)
    verdicts.append(Verdict("C3 (global side): diffusion models have unbounded global error",
                            status, ev, "figures/e9_global_claim.png"))
    headline["global_kl_per_dim"] = [round(v, 4) for v in per_dim]
    return "\n".join(lines), verdicts, headline


def _k(v) -> str:
    return f"k{v}" if isinstance(v, str) else f"k={v}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _c3_evidence(pb) -> tuple[str, str, list]:
    """The C3 (global) verdict from part B's numbers: how the perfect DDPM's global KL grows
    along dimension (per-dimension ratio), separation and width (nats per decade of std)."""
    dims, seps, stds = pb["dims"], pb["separations"], pb["stds"]
    per_dim = [r["kl"] / int(D) for D, r in dims.items()]
    linear_D = len(per_dim) > 1 and max(per_dim) < 1.6 * min(per_dim)
    sep_vals = [r["kl"] for r in seps.values()]
    sep_growth = sep_vals[-1] / max(sep_vals[0], 1e-12) if sep_vals else float("nan")
    sk = sorted(stds, key=float)
    decades = math.log10(float(sk[-1]) / float(sk[0])) if len(sk) > 1 else 0.0
    slope = (stds[sk[0]]["kl"] - stds[sk[-1]]["kl"]) / decades if decades else float("nan")
    final_share = [r["M_final"] / max(r["M_final"] + r["sum_M_inner"], 1e-12)
                   for r in (stds[sk[0]],)]
    ev = (f"Perfect DDPM, S = {pb['steps']} steps. Dimension: KL/D = "
          + ", ".join(f"{v:.3g}" for v in per_dim) + " for D = " + ", ".join(str(D) for D in dims)
          + (" (linear growth: unbounded in D, constant per dimension)" if linear_D else "")
          + ". Separation: KL = " + ", ".join(f"{v:.3g}" for v in sep_vals) + " nats for "
          + ", ".join(f"{float(x):g}" for x in seps) + f" (x{sep_growth:.2g} over the sweep). "
          "Width: KL = " + ", ".join(f"std {float(x):g}: {stds[x]['kl']:.3g}" for x in sk)
          + f" nats, {slope:.2g} nats per decade of std (log 10 = 2.3 is the rate of a fixed "
          "final variance against a component of variance std^2), the final jump carrying "
          f"{100 * final_share[0]:.0f}% of the local errors at the narrowest width. The jumps to "
          f"s >= 1 are bounded for any data by {pb['inner_bound_per_dim']:.3g} nats per dimension "
          "in total.")
    unbounded = linear_D or slope > 1.0
    status = "holds with qualification" if unbounded else "does not hold as stated"
    if unbounded:
        ev += (" So the global error is unbounded over targets, but through "
               + " and ".join(w for w, ok in (("the dimension", linear_D),
                                              ("the last jump's variance floor on ever narrower "
                                               "components", slope > 1.0)) if ok)
               + ("; the separation of the modes at fixed dimension and width moves it by a "
                  f"factor {sep_growth:.2g} only." if sep_growth < 3 else
                  f"; the separation also raises it (x{sep_growth:.2g})."))
    else:
        ev += " No sweep shows growth without bound."
    return ev, status, per_dim
