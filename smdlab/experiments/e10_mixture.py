"""E10: a latent reverse kernel that works at few steps: the discrete-latent mixture kernel
trained by exact likelihood (:mod:`smdlab.mixture_kernel`), against every Gaussian kernel.

E6-E8 find that SMD with the paper's objective collapses to a Gaussian kernel and that the
multisample and energy objectives do not take it below the Gaussian floor on the 4-step grid
chain (issue 10: energy's whole error sits in the last jump, its clean points 0.21 from the mode
centres).  The question this experiment answers: is that a limit of latent reverse kernels or of
those objectives?  Its kernel has a discrete latent (K components with learned weights, the
clean point's posterior as a Gaussian mixture), so its likelihood is exact and it trains by
maximum likelihood, which bounds every local error (data processing); everything else (target,
backbone width and depth, input features, t-sampling, optimiser, seeds, learning curves and the
convergence rule) is the zoo's (:mod:`.toy_zoo`).

Models: trained on the full 1000-step chain (sampled on respaced chains of 2 ... 100 steps and on
the full chain) and on the 10- and 4-step chains (sampled on their own chain), 3 seeds each.
The KL of the mixture kernel is its importance-weighted upper bound (:mod:`smdlab.path_kl`,
:data:`.toy_eval.CURVE_IW` sizes with more x_0 points): the grid route's node rule cannot resolve
the narrow last-jump components a 10-step model learns (it returned 48 nats for a model whose
bound is 0.03 +- 0.015), and an upper bound below the Gaussian floor settles the comparison.
The Gaussian references (the best beta-tilde Gaussian and the oracle DDPM, the best any DDPM of
the lab's family can do) come from the grid route, which resolves them.

Verdict row (L6): "a latent reverse kernel trained by exact likelihood beats every Gaussian
kernel at few steps": at each S <= 10 the mixture kernel's KL bound plus twice its spread over
seeds lies below half of the Gaussian floor (the better of the two Gaussian references);
"unconverged" when a model fails its convergence rule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..provenance import save_figure
from .base import ExperimentResult, Outputs, Verdict, gate_on_convergence, register, save_result
from .toy_config import COLORS, LABELS, ToyEval, ToyZoo, sweep_steps
from .toy_eval import (
    IWSizes,
    draw_samples,
    evaluate,
    fmt,
    iw_score,
    mean_spread,
    reference_kernel,
    references,
)
from .toy_zoo import toy_zoo

KIND = "mixture"


def _zoo() -> ToyZoo:
    return ToyZoo(kinds=(KIND,))


@dataclass
class MixtureConfig:
    """E10: the mixture kernels (``zoo``: the shared zoo's settings with kinds = ("mixture",)),
    evaluation sizes (``eval``, as E6's), the sweep of sampling steps (the full chain is added)
    and the IW sizes of the kernel's KL (``iw_points`` x_0 draws, paths ``iw_Ks``)."""

    seed: int = 0
    zoo: ToyZoo = field(default_factory=_zoo)
    eval: ToyEval = field(default_factory=ToyEval)
    sweep: tuple[int, ...] = (2, 4, 10, 25, 100)
    iw_points: int = 256
    iw_Ks: tuple[int, ...] = (1, 4, 16, 64)

    @classmethod
    def quick(cls) -> MixtureConfig:
        return cls(zoo=dataclasses.replace(ToyZoo.quick(), kinds=(KIND,)), eval=ToyEval.quick(),
                   sweep=(2, 4), iw_points=16, iw_Ks=(1, 4))


def _kl(tm, zc: ToyZoo, S: int, iw: IWSizes) -> dict:
    r = iw_score(zc.target.mixture(), tm.kernel, zc.chain(S), iw, 500 + tm.seed)
    return {"kl": r["kl"], "kl_se": r["kl_se"], "kl_gap": r["gap"], "kl_converged": r["converged"]}


def _row(tm, zc: ToyZoo, S: int, sizes: ToyEval, iw: IWSizes) -> dict:
    row = evaluate(tm, zc, S, sizes, grid=False)[0]
    if S <= 100:
        row.update(_kl(tm, zc, S, iw))
    return row


def _aggregate(rows: list[dict]) -> dict:
    out = {m: mean_spread([r[m] for r in rows]) for m in ("kl", "kl_se", "in_mode_share", "mmd")
           if all(m in r for r in rows)}
    out["n_seeds"] = len(rows)
    if all("kl_converged" in r for r in rows):
        out["kl_converged"] = all(r["kl_converged"] for r in rows)
    return out


def reference_plan(cfg: MixtureConfig) -> list:
    """The reference scores :func:`run` asks for (see :func:`.e6_toy.reference_plan`)."""
    return [("refs", cfg.zoo, cfg.eval, S, 101) for S in sweep_steps(cfg.zoo, cfg.sweep)]


@register("e10", "A latent kernel that works at few steps: the mixture kernel trained by exact "
          "likelihood against every Gaussian kernel", MixtureConfig)
def run(cfg: MixtureConfig, out: Outputs) -> ExperimentResult:
    t0 = time.perf_counter()
    zc, sizes = cfg.zoo, cfg.eval
    iw = IWSizes(min_steps=zc.T, n_points=cfg.iw_points, Ks=tuple(cfg.iw_Ks))
    models = toy_zoo(zc, out, cfg.seed)
    all_S = sweep_steps(cfg.zoo, cfg.sweep)
    refs = references(zc, sizes, all_S, models_dir=out.results / "models")
    respaced, own = {}, {}
    if zc.T in zc.chains:
        seeds = sorted(i for (k, S, i) in models if S == zc.T)
        for S in all_S:
            respaced[S] = _aggregate([_row(models[KIND, zc.T, i], zc, S, sizes, iw)
                                      for i in seeds])
    for S in zc.chains:
        if S < zc.T:
            seeds = sorted(i for (k, s_, i) in models if s_ == S)
            own[S] = _aggregate([_row(models[KIND, S, i], zc, S, sizes, iw) for i in seeds])
    curves = {f"S={tm.S} seed {i}": {"S": tm.S, "seed": i, "steps": tm.steps,
                                     "converged": tm.converged,
                                     "curve": tm.curve.to_dict() if tm.curve else None,
                                     "train_seconds": tm.seconds}
              for (k, S, i), tm in sorted(models.items())}
    unconverged = [f"{LABELS[KIND]} S={tm.S} seed {i}" for (k, S, i), tm in sorted(models.items())
                   if not tm.converged]
    data = {"sweep": all_S, "references": refs, "respaced": respaced, "own_chain": own,
            "models": curves, "iw": dataclasses.asdict(iw), "unconverged": unconverged,
            "seconds": time.perf_counter() - t0}
    json_path = save_result("e10", cfg, data, out)
    figs = [_figure(zc, sizes, data, models, out)]
    summary, verdicts, headline = _summary(data, zc)
    verdicts = [gate_on_convergence(v, unconverged) for v in verdicts]
    return ExperimentResult("e10", data, json_path, figs, summary, verdicts, headline)


def gaussian_floor(refs: dict, S: int) -> float:
    """The better of the two Gaussian references' grid KL at S (nan when neither has one)."""
    vals = [refs[n][S]["kl"] for n in ("gaussian-beta_tilde", "oracle_ddpm")
            if "kl" in refs[n].get(S, {}) and math.isfinite(refs[n][S]["kl"])]
    return min(vals) if vals else math.nan


def l6_status(entries: list[tuple[float, float, float]]) -> str:
    """L6 from (mean KL bound, its spread over seeds, Gaussian floor) at each S <= 10: "holds"
    when mean + 2 spread < floor / 2 everywhere, "holds with qualification" when it does
    somewhere, else "does not hold as stated"."""
    wins = [m + 2 * sd < f / 2 for m, sd, f in entries if math.isfinite(f)]
    if not wins:
        return "not tested"
    return "holds" if all(wins) else "holds with qualification" if any(wins) else \
        "does not hold as stated"


def _summary(data: dict, zc: ToyZoo):
    refs, resp, own = data["references"], data["respaced"], data["own_chain"]
    lines = ["The discrete-latent mixture kernel (K = "
             f"{zc.model.n_components} components, exact likelihood; `smdlab.mixture_kernel`) "
             "on the 7 x 7 grid, against the Gaussian references and the exact chain. KL: the "
             "mixture kernel's importance-weighted upper bound (mean ± sd over seeds); the "
             "references' grid KL. In-mode share: the share of samples within 3 std of a mode.", "",
             "| S | mixture, trained on 1000, respaced: KL bound | in-mode | mixture, trained on S: "
             "KL bound | in-mode | best beta-tilde Gaussian KL | oracle DDPM KL | exact chain "
             "in-mode |", "|---|---|---|---|---|---|---|---|"]
    entries, headline = [], {}
    for S in data["sweep"]:
        r, o = resp.get(S, {}), own.get(S, {})
        bt, od = refs["gaussian-beta_tilde"][S], refs["oracle_ddpm"][S]
        lines.append(f"| {S} | {fmt(*r['kl']) if 'kl' in r else '-'} | "
                     f"{fmt(*r['in_mode_share']) if 'in_mode_share' in r else '-'} | "
                     f"{fmt(*o['kl']) if 'kl' in o else '-'} | "
                     f"{fmt(*o['in_mode_share']) if 'in_mode_share' in o else '-'} | "
                     f"{fmt(bt.get('kl'))} | {fmt(od.get('kl'))} | "
                     f"{fmt(refs['exact'][S].get('in_mode_share'))} |")
        floor = gaussian_floor(refs, S)
        if S <= 10:
            for src in (r, o):
                if "kl" in src:
                    entries.append((src["kl"][0], src["kl"][1], floor))
        for tag, src in (("respaced", r), ("own", o)):
            if "kl" in src:
                headline[f"kl_{tag}_S{S}"] = round(src["kl"][0], 4)
        if math.isfinite(floor):
            headline[f"gaussian_floor_S{S}"] = round(floor, 4)
    T = zc.T
    if T in resp:
        headline["in_mode_S1000"] = round(resp[T]["in_mode_share"][0], 4)
    n_conv = sum(m["converged"] for m in data["models"].values())
    lines += ["", f"Convergence: {n_conv} of {len(data['models'])} models pass the rule "
              "(`smdlab.convergence`; primary metric: the KL bound on few-step chains, with "
              "its standard error, 5% and 0.02 nats; in-mode share on the full chain)"
              + (f"; unconverged: {', '.join(data['unconverged'])}" if data["unconverged"] else "")
              + "."]
    ev = []
    for S in (4, 10):
        o, r = own.get(S), resp.get(S)
        floor = gaussian_floor(refs, S)
        if o and "kl" in o:
            ev.append(f"S={S}: trained on S {fmt(*o['kl'])}, trained on 1000 and respaced "
                      f"{fmt(*r['kl']) if r and 'kl' in r else '-'} nats against the Gaussian "
                      f"floor {fmt(floor)} (exact chain 0)")
    status = l6_status(entries)
    if status == "not tested":
        return "\n".join(lines), [], headline
    goal = own.get(4, {}).get("kl")
    tail = (f"; the issue's goal of <= 1 nat at 4 steps is {'met' if goal[0] <= 1 else 'not met'}"
            if goal else "")
    verdict = Verdict("L6: a latent reverse kernel trained by exact likelihood beats every "
                      "Gaussian kernel at few steps", status,
                      "; ".join(ev) + tail + ". The latent kernel is not what failed in E7/E8: "
                      "their objectives (Jensen, K-sample bound, energy score) are.",
                      "figures/e10_mixture.png")
    return "\n".join(lines), [verdict], headline


def _figure(zc: ToyZoo, sizes: ToyEval, data: dict, models: dict, out: Outputs):
    import matplotlib.pyplot as plt

    refs, resp, own = data["references"], data["respaced"], data["own_chain"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    S_kl = [S for S in data["sweep"] if S <= 100]
    for name, style in (("gaussian-beta_tilde", "--"), ("oracle_ddpm", ":")):
        ax.plot(S_kl, [refs[name][S].get("kl", np.nan) for S in S_kl], style, color=COLORS[name],
                label=LABELS[name] + " (grid KL)")
    if resp:
        m = [resp[S]["kl"][0] if "kl" in resp[S] else np.nan for S in S_kl]
        sd = [resp[S]["kl"][1] if "kl" in resp[S] else np.nan for S in S_kl]
        ax.errorbar(S_kl, m, yerr=[2 * v for v in sd], fmt="-o", color=COLORS[KIND],
                    label="mixture kernel, trained on 1000 steps, respaced (IW bound)")
    if own:
        Ss = sorted(own)
        ax.errorbar(Ss, [own[S]["kl"][0] for S in Ss], yerr=[2 * own[S]["kl"][1] for S in Ss],
                    fmt="s", color="black", mfc="none", ms=9,
                    label="mixture kernel, trained on that chain (IW bound)")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps S",
           ylabel="global KL(q(x_0) || p(x_0)) (nats)",
           title="Few steps: the latent kernel against every Gaussian kernel")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax = axes[1]
    for (_k, S, i), tm in sorted(models.items()):
        if tm.curve is None or S >= zc.T:
            continue
        steps, v, _ = tm.curve.series("kl")
        ax.plot(steps, v, "-o", ms=3, color="tab:purple" if S == 4 else "tab:olive",
                alpha=0.8, label=f"S={S} seed {i}" + ("" if tm.converged else " (unconverged)"))
    ax.set(yscale="log", xlabel="training step", ylabel="KL upper bound (nats)",
           title="Learning curves (EMA weights, exact target)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    S = 4 if 4 in own else (min(own) if own else None)
    if S is not None:
        chain = zc.chain(S)
        mix = zc.target.mixture()
        g = draw_samples(reference_kernel("oracle_ddpm", mix, zc, chain), chain, 1000, 7)
        x = evaluate(models[KIND, S, 0], zc, S, sizes, grid=False)[1]
        ax.scatter(g[:, 0], g[:, 1], s=2, color="gray", alpha=0.5, label=f"oracle DDPM, S={S}")
        ax.scatter(x[:, 0], x[:, 1], s=2, color=COLORS[KIND], label=f"mixture kernel, S={S}")
        c = mix.means
        ax.scatter(c[:, 0], c[:, 1], marker="x", color="black", s=15, label="mode centres")
        ax.set(xlabel="x_1", ylabel="x_2", aspect="equal",
               title=f"Samples, {S} steps (seed 0)")
        ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    path = save_figure(fig, out.figure("e10_mixture"))
    plt.close(fig)
    return path
