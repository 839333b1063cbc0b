"""E2: the expressive bottleneck, measured.  M_t of the best single Gaussian kernels against t.

For the 7 x 7 grid mixture and a 1-D two-mode mixture, for chains of 1000, 100, 50, 10 and 4 steps
respaced from the DDPM linear schedule and from the cosine schedule, the local error
M_{t->s} = E KL(q(x_s | x_t) || p(x_s | x_t)) of four best single Gaussians (moment-matched;
isotropic with free variance; variance fixed to beta-tilde (clipped on the last jump); variance
fixed to beta) over every jump of the chain, with standard errors (:mod:`smdlab.local_error`).
Headline numbers: max over jumps and sum over jumps (the local part of the global bound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..exact import BEST_GAUSSIAN_KINDS
from ..kernels import BestGaussianKernel
from ..local_error import LocalErrorCurve, local_error_curves, local_errors
from ..provenance import save_figure
from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from ..targets import make_target
from .base import ExperimentResult, Outputs, Verdict, register, save_result

KIND_LABELS = {"moment": "moment-matched", "isotropic": "isotropic (free variance)",
               "beta_tilde": "variance beta-tilde", "beta": "variance beta"}
KIND_COLORS = {"moment": "tab:blue", "isotropic": "tab:green", "beta_tilde": "tab:orange",
               "beta": "tab:red"}


@dataclass
class E2Config:
    """targets, schedules (root, T steps), chains (numbers of steps), kinds of best Gaussian;
    n_points per jump (n_points_long for chains of >= long_chain steps, whose sums average many
    jumps, except for the jumps from t <= boost_t, which get n_points), n_mc draws of x_s per x_t."""

    seed: int = 0
    T: int = 1000
    targets: tuple = ("grid", "two_modes")
    schedules: tuple = ("linear", "cosine")
    chains: tuple = (1000, 100, 50, 10, 4)
    kinds: tuple = BEST_GAUSSIAN_KINDS
    n_points: int = 1024
    n_points_long: int = 128
    long_chain: int = 500
    boost_t: int = 100
    n_mc: int = 1

    @classmethod
    def quick(cls):
        return cls(chains=(10, 4), schedules=("linear",), n_points=256)


def _curves(mix, kernels, chain, cfg: E2Config, g, progress=False) -> dict:
    """Local-error curves of one chain.  Long chains use n_points_long per jump, except on the
    jumps starting at t <= boost_t, where the error (rare x_t between modes) and its variance live:
    those get n_points."""
    if chain.T < cfg.long_chain:
        return local_error_curves(mix, kernels, chain, cfg.n_points, cfg.n_mc, generator=g,
                                  progress=progress)
    rows = []
    for t, s in chain_steps(kernels[0], chain):
        n = cfg.n_points if t <= cfg.boost_t else cfg.n_points_long
        rows.append(local_errors(mix, kernels, t, s, n, cfg.n_mc, generator=g))
    out = {}
    for j, k in enumerate(kernels):
        col = [r[j] for r in rows]
        out[k.name] = LocalErrorCurve(k.name, np.array([c.t for c in col]),
                                      np.array([c.s for c in col]),
                                      np.array([c.mean for c in col]),
                                      np.array([c.se for c in col]), col[0].method,
                                      cfg.n_points_long, cfg.n_mc, None,
                                      {"n_points_small_t": cfg.n_points, "boost_t": cfg.boost_t})
    return out


def sweep(cfg: E2Config, progress: bool = False) -> dict:
    """All curves: {target: {schedule: {S: {kind: LocalErrorCurve.as_dict()}}}}."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for tname in cfg.targets:
        mix = make_target(tname)
        out[tname] = {}
        for sname in cfg.schedules:
            root = NoiseSchedule.from_name(sname, cfg.T)
            kernels = [BestGaussianKernel(mix, root, k) for k in cfg.kinds]
            out[tname][sname] = {}
            for S in cfg.chains:
                curves = _curves(mix, kernels, root.respace(S), cfg, g, progress)
                out[tname][sname][S] = {k: curves[kern.name].as_dict()
                                        for k, kern in zip(cfg.kinds, kernels)}
    return out


def _table(data: dict, cfg: E2Config) -> list[dict]:
    rows = []
    for tname, by_s in data.items():
        for sname, by_S in by_s.items():
            for S, by_k in by_S.items():
                for kind, c in by_k.items():
                    rows.append({"target": tname, "schedule": sname, "steps": int(S),
                                 "kind": kind, "max": c["max"], "argmax_t": c["argmax_t"],
                                 "sum": c["sum"], "sum_se": c["sum_se"],
                                 "min": float(np.min(c["mean"]))})
    return rows


def _figures(data: dict, cfg: E2Config, out: Outputs) -> list:
    import matplotlib.pyplot as plt

    figs = []
    targets, scheds = list(data), list(cfg.schedules)
    # 1. M_t against t for every chain (moment-matched and beta-tilde kernels).
    for kind in ("moment", "beta_tilde"):
        if kind not in cfg.kinds:
            continue
        fig, axes = plt.subplots(len(targets), len(scheds), figsize=(5.2 * len(scheds),
                                 3.8 * len(targets)), squeeze=False)
        cmap = plt.get_cmap("viridis")
        for i, tname in enumerate(targets):
            for j, sname in enumerate(scheds):
                ax = axes[i, j]
                for c_i, S in enumerate(cfg.chains):
                    c = data[tname][sname][S][kind]
                    m = np.clip(np.asarray(c["mean"]), 1e-12, None)
                    ax.plot(c["t"], m, "-o" if S <= 50 else "-", ms=3, lw=1,
                            color=cmap(c_i / max(len(cfg.chains) - 1, 1)), label=f"{S} steps")
                ax.set_yscale("log")
                ax.set_xlabel("step t (root index of the jump's start)")
                ax.set_ylabel("M_t (nats, clipped at 1e-12)")
                ax.set_title(f"{tname}, {sname} schedule")
                ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        fig.suptitle(f"Local error of the best single Gaussian ({KIND_LABELS[kind]})")
        fig.tight_layout()
        figs.append(save_figure(fig, out.figure(f"e2_local_error_{kind}")))
        plt.close(fig)
    # 2. sum and max over the chain against the number of steps, every kind.
    fig, axes = plt.subplots(2, len(targets), figsize=(5.2 * len(targets), 7.2), squeeze=False)
    for i, tname in enumerate(targets):
        for kind in cfg.kinds:
            for sname, ls in zip(scheds, ("-", "--")):
                Ss = list(cfg.chains)
                sums = [data[tname][sname][S][kind]["sum"] for S in Ss]
                maxs = [data[tname][sname][S][kind]["max"] for S in Ss]
                lab = f"{KIND_LABELS[kind]}, {sname}"
                axes[0, i].plot(Ss, np.clip(sums, 1e-12, None), ls, marker="o", ms=3,
                                color=KIND_COLORS[kind], label=lab)
                axes[1, i].plot(Ss, np.clip(maxs, 1e-12, None), ls, marker="o", ms=3,
                                color=KIND_COLORS[kind], label=lab)
        for r, what in enumerate(("sum over jumps of M_t", "max over jumps of M_t")):
            ax = axes[r, i]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("number of sampling steps S")
            ax.set_ylabel(f"{what} (nats)")
            ax.set_title(tname)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    figs.append(save_figure(fig, out.figure("e2_sum_max_vs_steps")))
    plt.close(fig)
    return figs


@register("e2", "The bottleneck: local error of the best single Gaussian against t and steps",
          E2Config)
def run(cfg: E2Config, out: Outputs) -> ExperimentResult:
    t0 = time.time()
    data = sweep(cfg)
    rows = _table(data, cfg)
    payload = {"curves": {t: {s: {str(S): v for S, v in d2.items()} for s, d2 in d1.items()}
                          for t, d1 in data.items()},
               "table": rows, "seconds": time.time() - t0}
    json_path = save_result("e2", cfg, payload, out)
    figs = _figures(data, cfg, out)
    return ExperimentResult("e2", payload, json_path, figs, *_summary(rows, cfg))


def _pick(rows, **kw):
    for r in rows:
        if all(r[k] == v for k, v in kw.items()):
            return r
    return None


def _summary(rows: list[dict], cfg: E2Config):
    sched = cfg.schedules[0]
    Smax, Smin = max(cfg.chains), min(cfg.chains)
    lines = ["Local error M_t of the best single Gaussian per step (nats; sum and max over the "
             f"jumps of each chain, {sched} schedule; standard errors in the JSON).", "",
             "| target | kernel | steps | max_t M_t | sum_t M_t (± se) |", "|---|---|---|---|---|"]
    for tname in cfg.targets:
        for kind in cfg.kinds:
            for S in cfg.chains:
                r = _pick(rows, target=tname, schedule=sched, steps=S, kind=kind)
                if S in (Smax, 10, Smin) or len(cfg.chains) <= 3:
                    lines.append(f"| {tname} | {kind} | {S} | {r['max']:.3g} | {r['sum']:.3g} ± "
                                 f"{r['sum_se']:.2g} |")
    lines += ["", "![local error](figures/e2_local_error_moment.png)",
              "![sum and max](figures/e2_sum_max_vs_steps.png)"]
    headline, verdicts = {}, []
    tname = cfg.targets[0]
    fine = _pick(rows, target=tname, schedule=sched, steps=Smax, kind="moment")
    coarse = _pick(rows, target=tname, schedule=sched, steps=Smin, kind="moment")
    bt_fine = _pick(rows, target=tname, schedule=sched, steps=Smax, kind="beta_tilde")
    bt_coarse = _pick(rows, target=tname, schedule=sched, steps=Smin, kind="beta_tilde")
    if fine and coarse:
        headline = {f"{tname}_moment_sum_S{Smax}": round(fine["sum"], 5),
                    f"{tname}_moment_sum_S{Smin}": round(coarse["sum"], 4),
                    f"{tname}_moment_max_S{Smin}": round(coarse["max"], 4)}
        verdicts.append(Verdict(
            "C1", "holds with qualification",
            f"The best single Gaussian (moment-matched, the best any Gaussian step can do) has "
            f"sum_t M_t = {coarse['sum']:.3g} ± {coarse['sum_se']:.1g} nats on the {Smin}-step chain "
            f"for the {tname} target (max {coarse['max']:.3g} at t={coarse['argmax_t']}) but only "
            f"{fine['sum']:.2g} ± {fine['sum_se']:.1g} over {Smax} steps (max {fine['max']:.2g}): "
            "the bottleneck is real, and it bites at "
            "coarse steps; at fine steps the true reverse kernel is nearly Gaussian.",
            "figures/e2_sum_max_vs_steps.png"))
    if bt_fine and bt_coarse:
        verdicts.append(Verdict(
            "C2", "does not hold as stated",
            f"A perfectly trained DDPM has the exact mean, hence zero score error: the "
            f"bounded-score-error assumption is met with epsilon = 0.  Its remaining local error "
            f"is discretisation error: sum_t M_t = {bt_fine['sum']:.3g} nats over {Smax} steps, "
            f"{bt_coarse['sum']:.3g} over {Smin} (variance beta-tilde, {tname}), which is the step-"
            "size term that existing guarantees already carry; the assumption is not what fails.",
            "figures/e2_local_error_beta_tilde.png"))
    return "\n".join(lines), verdicts, headline
