"""E8: few-step sweep.  Global error and sample metrics against the number of sampling steps S
for every model of the toy (the same trained models as E6, from
:func:`smdlab.experiments.toy_zoo.toy_zoo`):

  * the models trained on the full chain, sampled on respaced S-step chains;
  * the models trained on a few-step chain, sampled on that chain (all seeds);
  * reference lines: the exact chain (the best any kernel can do with S steps: only the prior term
    KL(q(x_T) || N(0, I)) remains) and two oracle Gaussian chains with the exact mean E[x_s | x_t]
    (the best mean of any fixed-variance DDPM): with the learned kernels' variances (``oracle_ddpm``)
    and with the lab's clipped beta-tilde (``gaussian-beta_tilde``).  The better of the two is
    called the Gaussian floor below.

Verdict row: C5 (SMD improves DDPM, especially with few steps), read as a trend over the number
of steps (2, 4, 10, 25, 100 and the full chain), on the models trained on the full chain (every
seed, sampled on respaced chains) and on the models trained on the short chains: at each S, the
improvement of each SMD kind over DDPM, (KL_DDPM - KL_SMD) / KL_DDPM, counts only when it exceeds
twice the larger of the two seed spreads (and 2% of DDPM's KL).  "Especially with few steps" holds
when the relative improvement at the fewest steps is at least the one at the most steps measured.
The verdict is "unconverged" when a model it rests on fails its convergence rule.  (C4, learned
side, is in E7, which has the local errors against the Gaussian floor.)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..provenance import save_figure
from .base import ExperimentResult, Outputs, Verdict, gate_on_convergence, register, save_result
from .e7_latent_use import unconverged_models
from .toy_config import COLORS, LABELS, ToyEval, ToyZoo, sweep_steps
from .toy_eval import (
    evaluate,
    evaluate_iw,
    fmt,
    iw_sizes,
    mean_spread,
    references,
    references_iw,
)
from .toy_zoo import members, toy_zoo


@dataclass
class FewStepConfig:
    """E8: the shared toy models (``zoo``, ``eval``: the same values as E6's) plus the sweep of
    sampling steps (the full chain is always added; the KL: the grid route for S < iw_from,
    :func:`smdlab.experiments.toy_eval.evaluate`, the IW upper bound from iw_from steps on,
    :func:`~smdlab.experiments.toy_eval.evaluate_iw`: a 64^2 grid left every KL of the 25- and
    100-step chains unresolved, at 40 s a 100-step SMD model, where the IW bound costs 1.5-9 s).
    An unresolved grid KL of a chain of at most
    :data:`~smdlab.experiments.toy_eval.CHECK_MAX_STEPS` steps is cross-checked on a finer grid
    for every seed, in :func:`~smdlab.experiments.toy_eval.score`."""

    seed: int = 0
    zoo: ToyZoo = field(default_factory=ToyZoo)
    eval: ToyEval = field(default_factory=ToyEval)
    sweep: tuple[int, ...] = (2, 4, 10, 25, 100)
    iw_from: int = 25
    iw_points: int = 64
    iw_Ks: tuple[int, ...] = (1, 4, 16, 64, 256)

    def __post_init__(self):
        if self.iw_from < 1 or self.iw_points < 1 or not self.iw_Ks or min(self.iw_Ks) < 1:
            raise ValueError(f"e8 needs iw_from >= 1, iw_points >= 1 and iw_Ks of positive "
                             f"sizes; got {self.iw_from}, {self.iw_points}, {self.iw_Ks}")

    @classmethod
    def quick(cls) -> FewStepConfig:
        return cls(zoo=ToyZoo.quick(), eval=ToyEval.quick(), sweep=(2, 4), iw_points=8,
                   iw_Ks=(1, 4))


def _sweep(cfg: FewStepConfig) -> list[int]:
    """Every number of sampling steps E8 scores (:func:`.toy_config.sweep_steps`)."""
    return sweep_steps(cfg.zoo, cfg.sweep)


def _iw(cfg: FewStepConfig, S: int):
    """E8's IW sizes on the S-step chain: from ``cfg.iw_from`` steps to below the full chain
    ``iw_points`` x_0 and K up to ``max(iw_Ks)`` (measured on the 1000-step models, seed 0, K =
    16, 32 x_0: every SMD bound still fell by 0.25-2.5 nats from K = 4 to 16 at S = 25 and 100;
    K = 256, 64 x_0: DDPM, SMD-jensen and SMD-multisample converged by the rule, 1.5-9 s each);
    on the full chain E6's sizes (:func:`~.toy_eval.iw_sizes`, the same scores)."""
    if S >= cfg.zoo.T:
        return iw_sizes(cfg.eval)
    return dataclasses.replace(iw_sizes(cfg.eval), min_steps=cfg.iw_from,
                               n_points=cfg.iw_points, Ks=tuple(cfg.iw_Ks))


def evaluation_plan(cfg: FewStepConfig) -> dict:
    """{(kind, S, seed index): requests}: the zoo evaluations :func:`run` asks for, in the form
    of :func:`.toy_eval.run_plan` (the zoo's workers compute them; ``run`` then reads them)."""
    zc, sizes = cfg.zoo, cfg.eval
    all_S = _sweep(cfg)
    plan = {}
    for kind, S, i in members(zc):
        if S == zc.T:
            plan[kind, S, i] = [("eval", s, sizes, s < cfg.iw_from) for s in all_S] + \
                [("iw", s, _iw(cfg, s)) for s in all_S if s >= cfg.iw_from]
        else:
            plan[kind, S, i] = [("eval", S, sizes, True)]
    return plan


def reference_plan(cfg: FewStepConfig) -> list:
    """The reference scores :func:`run` asks for (see :func:`.e6_toy.reference_plan`)."""
    all_S = _sweep(cfg)
    return [("refs", cfg.zoo, cfg.eval, S, cfg.iw_from) for S in all_S] + \
        [("iw", cfg.zoo, _iw(cfg, S), S) for S in all_S if S >= cfg.iw_from]


@register("e8", "Few-step sweep: global error and sample metrics vs sampling steps, with the "
          "oracle Gaussian floor and the exact chain", FewStepConfig)
def run(cfg: FewStepConfig, out: Outputs) -> ExperimentResult:
    t0 = time.perf_counter()
    zc, sizes = cfg.zoo, cfg.eval
    zoo = toy_zoo(zc, out, cfg.seed)
    all_S = _sweep(cfg)
    refs = references(zc, sizes, all_S, grid_below=cfg.iw_from, models_dir=out.results / "models")
    metrics = ("kl", "in_mode_share", "mmd")
    for S in (S for S in all_S if S >= cfg.iw_from):             # long chains: IW bounds
        for name, per_S in references_iw(zc, _iw(cfg, S), [S],
                                        models_dir=out.results / "models").items():
            r = per_S[S]
            refs[name][S] = {**refs[name][S], "kl": r["kl"], "kl_method": "IW upper bound",
                             "kl_resolved": r["converged"]}

    def row(tm, S):
        r = evaluate(tm, zc, S, sizes, grid=S < cfg.iw_from)[0]
        if S >= cfg.iw_from:        # a resolved grid is out of budget: the IW upper bound
            b = evaluate_iw(tm, zc, S, _iw(cfg, S))
            r.update(kl=b["kl"], kl_method="IW upper bound", kl_resolved=b["converged"])
        return r

    respaced = {}       # kind -> S -> {metric: (mean, sd over seeds)} (models trained on T steps)
    if zc.T in zc.chains:
        for kind in zc.kinds:
            seeds = sorted(sd for (k, s_, sd) in zoo if k == kind and s_ == zc.T)
            respaced[kind] = {}
            for S in all_S:
                respaced[kind][S] = _aggregate([row(zoo[kind, zc.T, sd], S) for sd in seeds],
                                               metrics)
    own = {}            # kind -> S -> the same, for the models trained on that chain
    for kind in zc.kinds:
        own[kind] = {}
        for S in zc.chains:
            if S >= zc.T:
                continue
            seeds = sorted(sd for (k, s_, sd) in zoo if k == kind and s_ == S)
            own[kind][S] = _aggregate([evaluate(zoo[kind, S, sd], zc, S, sizes, grid=True)[0]
                                       for sd in seeds], metrics)
    trend = c5_trend(respaced, own, all_S, zc.kinds)
    # The verdicts are judged on the series whose models all converged; a series resting on an
    # unconverged model is left out and named.  A verdict with nothing left to judge is
    # "unconverged" (with the reading it would have had).
    bad = {(k, s) for (k, s, _i), tm in zoo.items() if k in DDPM_AND_SMD and not tm.converged}
    names = unconverged_models(zoo, DDPM_AND_SMD)
    j_resp, j_own, j_trend = judged_series(respaced, own, trend, bad, zc.T)
    data = {"sweep": all_S, "references": refs, "respaced": respaced, "own_chain": own,
            "trend": trend, "judged": {"unconverged": names, "trend": j_trend},
            "seconds": time.perf_counter() - t0}
    json_path = save_result("e8", cfg, data, out)
    figs = [_figure(zc, refs, respaced, own, trend, all_S, out)]
    summary, verdicts, headline = _summary(cfg, refs, respaced, own, all_S, trend)
    judged = (c5_verdict(j_trend, zc.T), figure2_verdict(j_resp, j_own, refs, all_S, zc.T))
    for i, v in enumerate(verdicts):
        w = next((j for j in judged if j is not None and j.claim == v.claim), None)
        if w is None or not names:
            verdicts[i] = gate_on_convergence(v, names)
        else:
            verdicts[i] = Verdict(w.claim, w.status, w.evidence + "; left out (a model failed "
                                  f"the convergence rule): {', '.join(names)}", w.figure)
    return ExperimentResult("e8", data, json_path, figs, summary, verdicts, headline)


def judged_series(respaced: dict, own: dict, trend: dict, bad: set, T: int):
    """(respaced, own, trend) without the entries that rest on a model of ``bad`` {(kind, S)}
    (a kind trained on S with a seed that failed its convergence rule): a respaced series of a
    kind goes when that kind's or DDPM's T-step models are bad; an own-chain entry at S when
    the kind's or DDPM's S-step models are."""
    def ok(kind, S):
        return (kind, S) not in bad and ("ddpm", S) not in bad

    j_resp = {k: v for k, v in respaced.items() if ok(k, T)}
    j_own = {k: {S: r for S, r in per.items() if ok(k, S)} for k, per in own.items()}
    j_trend = {"respaced": {k: g for k, g in trend["respaced"].items() if ok(k, T)},
               "own": {k: {S: g for S, g in per.items() if ok(k, S)}
                       for k, per in trend["own"].items()}}
    return j_resp, j_own, j_trend


DDPM_AND_SMD = ("ddpm", "smd-jensen", "smd-multisample", "smd-energy")
SMD = ("smd-jensen", "smd-multisample", "smd-energy")


def _aggregate(rows: list[dict], metrics) -> dict:
    """{metric: (mean, sd over seeds)} of the metrics every row has, finite or not; n_seeds; the
    KL's method and whether every grid it came from resolved the chain."""
    out = {m: mean_spread([r[m] for r in rows]) for m in metrics if all(m in r for r in rows)}
    out["n_seeds"] = len(rows)
    if "kl" in out:
        out["kl_method"] = rows[0].get("kl_method", "grid")
        out["kl_resolved"] = all(bool(r.get("kl_resolved", True)) for r in rows)
        out["kl_checked"] = any(bool(r.get("kl_checked")) for r in rows)   # by the finer grid
    return out


def _gap(d: dict, m: dict) -> dict | None:
    """DDPM's KL minus an SMD kind's at one S (means and seed sds), relative to DDPM's, and
    whether it is clear of the seed noise; None when either KL is missing or unresolved."""
    if not d or not m or "kl" not in d or "kl" not in m:
        return None
    if not (d.get("kl_resolved", True) and m.get("kl_resolved", True)):
        return None
    (dm, dsd), (mm, msd) = d["kl"], m["kl"]
    if not (math.isfinite(dm) and math.isfinite(mm)) or dm <= 0:
        return None
    noise = 2 * max(dsd, msd, 0.02 * dm)
    return {"ddpm": dm, "smd": mm, "diff": dm - mm, "rel": (dm - mm) / dm, "noise": noise,
            "better": dm - mm > noise, "worse": mm - dm > noise}


def c5_trend(respaced: dict, own: dict, all_S, kinds) -> dict:
    """C5 as a trend: {"respaced"|"own": {smd_kind: {S: gap}}} (see :func:`_gap`)."""
    out = {"respaced": {}, "own": {}}
    for k in SMD:
        if k not in kinds or "ddpm" not in kinds:
            continue
        if k in respaced and "ddpm" in respaced:
            out["respaced"][k] = {S: g for S in all_S
                                  if (g := _gap(respaced["ddpm"].get(S), respaced[k].get(S)))}
        out["own"][k] = {S: g for S in own.get(k, {})
                         if (g := _gap(own["ddpm"].get(S), own[k].get(S)))}
    return out


def _figure(zc, refs, respaced, own, trend, all_S, out):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    kl_S = [S for S in all_S if any("kl" in respaced[k].get(S, {}) for k in respaced)] or \
        [S for S in all_S if S <= 100]
    for ax, metric, ylab in ((axes[0], "kl", "global KL(q(x_0) || p(x_0)) (nats)"),
                             (axes[1], "in_mode_share", "share of samples in a mode (3 std)")):
        xs_all = kl_S if metric == "kl" else all_S
        positive = [v for kind in respaced for S in xs_all
                    if (v := respaced[kind][S].get(metric, (np.nan,))[0]) > 0] + \
            [refs[n][S].get(metric, np.nan) for n in ("oracle_ddpm", "gaussian-beta_tilde")
             for S in xs_all]
        # the exact chain's KL is ~0 (1e-11): on the log axis it is drawn at the axis floor
        floor_y = 0.5 * np.nanmin(positive) if metric == "kl" and positive else None
        for name, style in (("exact", "-"), ("oracle_ddpm", "--"), ("oracle_ddpm-smd_variance", "-."),
                            ("gaussian-beta_tilde", ":")):
            ys = [refs[name][S].get(metric, np.nan) for S in xs_all]
            label = LABELS[name]
            if name == "exact" and floor_y is not None:
                ys, label = [floor_y] * len(xs_all), "exact chain (KL ~ 0, drawn at the floor)"
            ax.plot(xs_all, ys, style, color=COLORS[name], lw=2, label=label)
        for kind in zc.kinds:
            if kind in respaced:
                pts = [(S, *respaced[kind][S][metric]) for S in xs_all
                       if metric in respaced[kind][S]]
                if pts:
                    S_, m_, sd_ = zip(*pts)
                    ax.errorbar(S_, m_, yerr=sd_, marker=".", color=COLORS[kind], capsize=2,
                                label=f"{LABELS[kind]} (trained on {zc.T}; mean ± sd, seeds)")
            xs = [S for S in own[kind] if metric in own[kind][S]]
            if xs:
                ax.errorbar(xs, [own[kind][S][metric][0] for S in xs],
                            yerr=[own[kind][S][metric][1] for S in xs], fmt="s", ms=6,
                            color=COLORS[kind], mfc="none", capsize=3,
                            label=f"{LABELS[kind]} (trained on that chain)")
        ax.set_xscale("log")
        ax.set_xticks(xs_all, [str(S) for S in xs_all])
        ax.minorticks_off()
        if metric == "kl":
            ax.set_yscale("log")
            if floor_y is not None:
                ax.set_ylim(bottom=0.8 * floor_y)
        ax.set_xlabel("sampling steps S")
        ax.set_ylabel(ylab)
    ax = axes[2]
    for which, style in (("respaced", "-"), ("own", "none")):
        for k, per_S in trend[which].items():
            xs = sorted(per_S)
            if not xs:
                continue
            ax.errorbar(xs, [per_S[S]["rel"] for S in xs],
                        yerr=[per_S[S]["noise"] / per_S[S]["ddpm"] for S in xs],
                        marker="o" if which == "respaced" else "s", ls=style, color=COLORS[k],
                        mfc=None if which == "respaced" else "none", capsize=3,
                        label=f"{LABELS[k]} ({_where(which, zc.T)})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(kl_S, [str(S) for S in kl_S])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps S")
    ax.set_ylabel("(KL_DDPM - KL_SMD) / KL_DDPM  (> 0: SMD better)")
    ax.set_title("C5: SMD's improvement over DDPM vs steps\n(bars: 2 x the larger seed sd)",
                 fontsize=9)
    ax.legend(fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    axes[0].set_title("global error vs steps", fontsize=9)
    axes[1].set_title("mode coverage vs steps (samples)", fontsize=9)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    path = save_figure(fig, out.figure("e8_few_steps"))
    plt.close(fig)
    return path


def _cell(r: dict | None) -> str:
    if not r or "kl" not in r:
        return "-"
    iw = r.get("kl_method") == "IW upper bound"
    tag = (" (IW bound, still falling in K)" if iw and not r.get("kl_resolved", True) else
           " (unresolved)" if not r.get("kl_resolved", True) else
           " (grid-checked)" if r.get("kl_checked") else
           " (IW bound)" if iw else "")
    return fmt(*r["kl"]) + tag


def _summary(cfg, refs, respaced, own, all_S, trend):
    zc = cfg.zoo
    kl_S = [S for S in all_S if any("kl" in respaced[k].get(S, {}) for k in respaced)
            or any("kl" in refs[n].get(S, {}) for n in refs)]
    methods = sorted({respaced[k][S].get("kl_method", "grid") for k in respaced for S in kl_S
                      if "kl" in respaced[k].get(S, {})}) or ["grid"]
    lines = [f"Global KL (nats; {', '.join(methods)} route) against the number of sampling steps. "
             f"Models trained on {zc.T} steps are sampled on respaced chains; 'own' = trained "
             "and sampled on that chain; mean ± sd over seeds.", "",
             "| kernel | " + " | ".join(f"S={S}" for S in kl_S) + " |",
             "|---|" + "---|" * len(kl_S)]
    for name in ("exact", "oracle_ddpm", "oracle_ddpm-smd_variance", "gaussian-beta_tilde"):
        lines.append(f"| {LABELS[name]} | " + " | ".join(fmt(refs[name][S].get("kl"))
                                                         for S in kl_S) + " |")
    for kind in zc.kinds:
        if kind in respaced:
            lines.append(f"| {LABELS[kind]} ({zc.T}-step model) | " + " | ".join(
                _cell(respaced[kind].get(S)) for S in kl_S) + " |")
        if own[kind]:
            lines.append(f"| {LABELS[kind]} (own chain) | " + " | ".join(
                _cell(own[kind].get(S)) for S in kl_S) + " |")
    lines += ["", "Relative improvement over DDPM, (KL_DDPM - KL_SMD) / KL_DDPM, at each S "
              "(* = clear of twice the larger seed sd):", "",
              "| SMD kind | " + " | ".join(f"S={S}" for S in kl_S) + " |",
              "|---|" + "---|" * len(kl_S)]
    for which in ("respaced", "own"):
        for k, per_S in trend[which].items():
            if per_S:
                lines.append(f"| {LABELS[k]} ({_where(which, zc.T)}) | "
                             + " | ".join(f"{per_S[S]['rel']:+.2f}{'*' if per_S[S]['better'] else ''}"
                                          if S in per_S else "-" for S in kl_S) + " |")
    lines += ["", "![E8 few steps](figures/e8_few_steps.png)"]
    verdicts, headline = [], {}
    few = sorted(S for S in zc.chains if S < zc.T)
    for S in few:
        floor = min(refs["oracle_ddpm"][S].get("kl", math.nan),
                    refs["gaussian-beta_tilde"][S].get("kl", math.nan))
        headline[f"kl_exact_S{S}"] = round(refs["exact"][S].get("kl", math.nan), 4)
        headline[f"kl_gaussian_floor_S{S}"] = round(floor, 4)
        for kind in zc.kinds:
            if S in own[kind] and "kl" in own[kind][S]:
                headline[f"kl_{kind}_S{S}"] = round(own[kind][S]["kl"][0], 4)
                headline[f"kl_{kind}_S{S}_sd"] = round(own[kind][S]["kl"][1], 4)
    v = c5_verdict(trend, zc.T)
    if v is not None:
        verdicts.append(v)
    fig2 = figure2_verdict(respaced, own, refs, all_S, zc.T)
    if fig2 is not None:
        verdicts.append(fig2)
        lines += ["", "**The paper's toy figure.** " + FIGURE2_CLAIM + " Measured here: "
                  + fig2.evidence + "."]
    return "\n".join(lines), verdicts, headline


FIGURE2_CLAIM = ("The paper shows, on a 7 x 7 grid of Gaussians, DDPM samples with blurred modes "
                 "and SMD samples with separated ones (steps and training length not stated).")


def _share(r: dict | None):
    return r.get("in_mode_share") if r else None


def figure2_verdict(respaced: dict, own: dict, refs: dict, all_S, T: int) -> Verdict | None:
    """The paper's toy figure (DDPM blurred, SMD separated) in numbers: the in-mode share of the
    samples (mean ± seed sd) of DDPM and each SMD kind at every S, beside the oracle DDPM (the
    best any DDPM of this family can do) and the exact chain.  "holds" when, at the fewest steps,
    the paper's SMD (jensen) puts clearly more samples in the modes than DDPM (by more than twice
    the larger seed sd and 0.02); "holds with qualification" when only another SMD objective
    does; else "does not hold as stated".  Also says whether DDPM itself is blurred on the full
    chain (its share against the oracle's)."""
    series = [("respaced", respaced), ("own", own)]
    if "ddpm" not in respaced and "ddpm" not in own:
        return None
    parts, clear = [], {}
    for which, table in series:
        if "ddpm" not in table:
            continue
        Ss = sorted(S for S in table["ddpm"] if _share(table["ddpm"][S]))
        if not Ss:
            continue
        S0 = Ss[0]
        d = _share(table["ddpm"][S0])
        for k in SMD:
            m = _share(table.get(k, {}).get(S0))
            if m is not None:
                clear[which, k] = m[0] - d[0] > 2 * max(d[1], m[1], 0.01)
        cells = ", ".join(f"{LABELS[k]} {fmt(*_share(table[k][S0]))}" for k in ("ddpm", *SMD)
                          if k in table and _share(table[k].get(S0)))
        parts.append(f"S={S0} ({_where(which, T)}): in-mode share {cells}; oracle DDPM "
                     f"{fmt(refs['oracle_ddpm'][S0].get('in_mode_share'))}, exact chain "
                     f"{fmt(refs['exact'][S0].get('in_mode_share'))}")
    if T in respaced.get("ddpm", {}) and _share(respaced["ddpm"][T]):
        parts.append(f"on the full {T}-step chain DDPM {fmt(*_share(respaced['ddpm'][T]))} "
                     f"against the oracle DDPM's {fmt(refs['oracle_ddpm'][T].get('in_mode_share'))}"
                     + (f", SMD-jensen {fmt(*_share(respaced['smd-jensen'][T]))}"
                        if _share(respaced.get("smd-jensen", {}).get(T)) else ""))
    if not clear:
        return None
    if any(v for (w, k), v in clear.items() if k == "smd-jensen"):
        status = "holds"
    elif any(clear.values()):
        status = "holds with qualification"
        parts.append("separated modes at few steps only with "
                     + ", ".join(sorted({LABELS[k] for (w, k), v in clear.items() if v}))
                     + " (objectives beyond the paper's)")
    else:
        status = "does not hold as stated"
    return Verdict("C5 (the paper's toy figure): on a 7 x 7 grid DDPM gives blurred modes and "
                   "SMD separated ones", status, "; ".join(parts), "figures/e8_few_steps.png")


def _where(which: str, T: int) -> str:
    return f"trained on {T}, respaced" if which == "respaced" else "trained on that chain"


def _clear(gap: dict) -> str:
    return "" if gap["better"] else ", worse" if gap["worse"] else ", within noise"


def c5_verdict(trend: dict, T: int) -> Verdict | None:
    """C5 from the trend: "holds" when the paper's SMD (jensen) is clearly better than DDPM at
    the fewest steps of every series and its relative improvement there is at least the one at
    the most steps; "holds with qualification" when some SMD kind is clearly better at the fewest
    steps but not so (only the objectives beyond the paper's, or an improvement that does not
    grow toward few steps); else "does not hold as stated".  None without a measured trend."""
    series = {(which, k): per_S for which in ("respaced", "own")
              for k, per_S in trend[which].items() if per_S}
    if not series:
        return None

    def reading(per_S):
        xs = sorted(per_S)
        few, many = per_S[xs[0]], per_S[xs[-1]]
        return few["better"], few["rel"] >= many["rel"] - 1e-12 or len(xs) == 1

    parts, wins = [], {}
    for (which, k), per_S in series.items():
        better, especially = reading(per_S)
        wins[which, k] = (better, especially)
        xs = sorted(per_S)
        parts.append(f"{LABELS[k]} ({_where(which, T)}): "
                     + ", ".join(f"S={S} {per_S[S]['smd']:.3g} vs {per_S[S]['ddpm']:.3g} "
                                 f"({per_S[S]['rel']:+.0%}{_clear(per_S[S])})" for S in xs))
    paper = [wins[key] for key in wins if key[1] == "smd-jensen"]
    better = [(key, w) for key, w in wins.items() if w[0]]
    if paper and all(b and e for b, e in paper):
        status = "holds"
    elif better:
        status = "holds with qualification"
        names = sorted({LABELS[key[1]] for key, _ in better})
        if not any(key[1] == "smd-jensen" for key, _ in better):
            parts.append("better than DDPM at the fewest steps only with " + ", ".join(names)
                         + " (objectives beyond the paper's)")
        if not all(w[1] for _, w in better):
            parts.append("the relative improvement does not grow toward few steps in every "
                         "series")
    else:
        status = "does not hold as stated"
    return Verdict("C5: SMD improves DDPM, especially with few steps (learned toy)", status,
                   "global KL (nats) DDPM vs SMD, relative improvement in brackets: "
                   + "; ".join(parts), "figures/e8_few_steps.png")
