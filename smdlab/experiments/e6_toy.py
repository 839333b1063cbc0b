"""E6: the paper's toy, a 7 x 7 grid of Gaussians in 2-D, learned by DDPM and by SMD.

The models are those of the shared zoo (:mod:`.toy_zoo`: ``ddpm``, ``ddpm-matched``,
``smd-jensen``, ``smd-multisample``, ``smd-energy``).  Each is trained on the full chain (T = 1000)
and on 10- and 4-step chains (trained and sampled on that chain); the 1000-step models are also
sampled on respaced 10- and 4-step chains.  Scored by :mod:`.toy_eval`; configured by
:class:`.toy_config.ToyConfig`.

Global KL.  On chains of <= 100 steps: the grid route (flagged when the grid does not resolve
the chain: such a number is shown as "n/r", not as a value).  On the 1000-step chain a resolved
2-D grid is out of budget, so the global KL there is the importance-weighted upper bound B_K of
:func:`smdlab.path_kl.iw_global_kl` over growing K (:class:`.toy_eval.IWSizes`), for seed 0 of
every kind trained on the full chain and for the reference chains (exact, oracle DDPM, best
beta-tilde Gaussian); the table names the method and keeps the B_K sequence, se and the gap.
(The IW sizes follow ``eval``: :func:`.toy_eval.iw_sizes`; ToyConfig has no section for them.)
"""

from __future__ import annotations

import dataclasses
import math
import time

from ..kernels import ExactKernel
from ..provenance import save_figure
from .base import ExperimentResult, Outputs, register, save_result
from .toy_config import COLORS, KINDS, LABELS, ToyConfig
from .toy_eval import (
    REFERENCES,
    draw_samples,
    evaluate,
    evaluate_iw,
    fmt,
    iw_sizes,
    mean_spread,
    reference_kernel,
    references,
    references_iw,
)
from .toy_zoo import matched_hidden, members, primary_metric, toy_zoo

__all__ = ["ToyConfig", "run"]


def _scatter(ax, x, mix, title):
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4, color="tab:blue", rasterized=True)
    m = mix.means.numpy()
    ax.scatter(m[:, 0], m[:, 1], s=6, color="red", marker="x", linewidths=0.6)
    lim = mix.means.abs().max().item() + 0.6
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=6)


def evaluation_plan(cfg: ToyConfig) -> dict:
    """{(kind, S, seed index): requests}: the zoo evaluations :func:`run` asks for, in the form
    of :func:`.toy_eval.run_plan` (the zoo's workers compute them; ``run`` then reads them)."""
    zc, sizes = cfg.zoo, cfg.eval
    few = [S for S in zc.chains if S < zc.T]
    iw = iw_sizes(sizes)
    plan = {}
    for kind, S, i in members(zc):
        plan[kind, S, i] = [("eval", Sf, sizes, Sf < zc.T)
                            for Sf in [S] + (few if S == zc.T else [])]
        if i == 0 and S >= iw.min_steps:
            plan[kind, S, i].append(("iw", S, iw))
    return plan


def reference_plan(cfg: ToyConfig) -> list:
    """The reference scores :func:`run` asks for, in the form of
    :func:`.toy_eval.run_reference_plan` (the lab's first phase computes and stores them)."""
    zc, iw = cfg.zoo, iw_sizes(cfg.eval)
    chains = sorted(set(zc.chains))
    return [("refs", zc, cfg.eval, S, 101) for S in chains] + \
        [("iw", zc, iw, S) for S in chains if S >= iw.min_steps]


@register("e6", "Toy reproduction: 7x7 grid, DDPM vs SMD (three objectives), few-step chains",
          ToyConfig)
def run(cfg: ToyConfig, out: Outputs) -> ExperimentResult:
    import matplotlib.pyplot as plt

    zc, sizes = cfg.zoo, cfg.eval
    if zc.target.dim != 2:
        raise ValueError("E6 scatters 2-D samples: use zoo.target.name='grid'")
    t0 = time.perf_counter()
    mix = zc.target.mixture()
    root = zc.root()
    zoo = toy_zoo(zc, out, cfg.seed)
    t_train = time.perf_counter() - t0
    few = [S for S in zc.chains if S < zc.T]
    # ---- metrics: every model on its own chain (all seeds), 1000-step models respaced (seed 0)
    rows = []
    samples_for_plot = {}
    for (kind, S, i), tm in zoo.items():
        for Sf in [S] + (few if S == zc.T else []):
            r, x = evaluate(tm, zc, Sf, sizes, grid=Sf < zc.T)
            if i == 0:
                samples_for_plot[kind, S, Sf] = x
            rows.append({"kind": kind, "train_S": S, "sample_S": Sf, "seed": i, **r,
                         "params": tm.params, "train_seconds": tm.seconds})
    refs = references(zc, sizes, sorted(set(zc.chains)), models_dir=out.results / "models")
    # ---- the global KL of the long chains: IW upper bounds (seed 0 of each full-chain model)
    iw = iw_sizes(sizes)
    t_iw = time.perf_counter()
    # "converged": the IW bound's (its last tightening within the rule); "model_converged":
    # the model's learning curve (smdlab.convergence)
    iw_rows = [{"kind": kind, "train_S": S, "sample_S": S, "seed": i,
                **evaluate_iw(tm, zc, S, iw), "model_converged": tm.converged}
               for (kind, S, i), tm in zoo.items() if i == 0 and S >= iw.min_steps]
    iw_refs = references_iw(zc, iw, sorted(set(zc.chains)), models_dir=out.results / "models")
    iw_seconds = time.perf_counter() - t_iw
    # ---- snapshots over training (seed 0, each model on its own chain)
    snap_samples = {}
    for (kind, S, i), tm in zoo.items():
        if i != 0:
            continue
        for step, k in tm.snapshots.items():
            if step == tm.steps:     # the final EMA weights: reuse the evaluation samples
                snap_samples[kind, S, step] = samples_for_plot[kind, S, S][:sizes.n_snapshot]
            else:
                snap_samples[kind, S, step] = draw_samples(k, zc.chain(S), sizes.n_snapshot, 300)
    # ---- aggregate over seeds
    table = _aggregate(rows)
    models = [{"kind": kind, "train_S": S, "seed": i, "converged": tm.converged,
               "curve": tm.curve.to_dict() if tm.curve is not None else None,
               "train_seconds": tm.seconds} for (kind, S, i), tm in zoo.items()]
    data = {"rows": rows, "table": table, "references": refs, "models": models,
            "params": {kind: zoo[kind, zc.chains[0], 0].params for kind in zc.kinds},
            "matched_hidden": matched_hidden(zc),
            "train_seconds_total": sum(tm.seconds for tm in zoo.values()),
            "wall_seconds_zoo": t_train,
            "cached_models": sum(tm.cached for tm in zoo.values()),
            "iw": {"sizes": dataclasses.asdict(iw), "models": iw_rows, "references": iw_refs,
                   "seconds": iw_seconds},
            "eval_seconds": time.perf_counter() - t0 - t_train,
            "cut": _cuts(cfg)}
    json_path = save_result("e6", cfg, data, out)
    # ---- figures
    figs = []
    for S in zc.chains:
        # one column per snapshot fraction: each kind at its own steps (zoo.kind_steps)
        own_steps = {kind: sorted(st for (k, s, st) in snap_samples if s == S and k == kind)
                     for kind in zc.kinds}
        n_cols = max(len(v) for v in own_steps.values())
        fig, axes = plt.subplots(len(zc.kinds), n_cols + 1,
                                 figsize=(2.4 * (n_cols + 1), 2.4 * len(zc.kinds)),
                                 squeeze=False)
        for i, kind in enumerate(zc.kinds):
            done = zoo[kind, S, 0].converged
            for j, st in enumerate(own_steps[kind]):
                tag = ("" if done else " (unconverged)") if st == zoo[kind, S, 0].steps else ""
                _scatter(axes[i, j], snap_samples[kind, S, st].numpy(), mix,
                         f"{LABELS[kind]}, step {st}{tag}")
            if i == 0:
                x = draw_samples(ExactKernel(mix, root), zc.chain(S), sizes.n_snapshot, 5)
                _scatter(axes[0, -1], x.numpy(), mix, f"exact chain\n{S} steps")
            elif i == 1:     # the best any DDPM of this family can do: the exact-mean oracle
                chain = zc.chain(S)
                x = draw_samples(reference_kernel("oracle_ddpm", mix, zc, chain), chain,
                                 sizes.n_snapshot, 6)
                _scatter(axes[1, -1], x.numpy(), mix, f"oracle DDPM (exact mean)\n{S} steps")
            else:
                axes[i, -1].axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("x1")
        for ax in axes[:, 0]:
            ax.set_ylabel("x2")
        fig.suptitle(f"E6: samples during training, trained and sampled on {S} steps "
                     f"(EMA weights; red x = mode centres)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        figs.append(save_figure(fig, out.figure(f"e6_scatter_S{S}")))
        plt.close(fig)
    if zc.T in zc.chains and few:
        fig, axes = plt.subplots(len(few) + 1, len(zc.kinds), squeeze=False,
                                 figsize=(2.4 * len(zc.kinds), 2.4 * (len(few) + 1)))
        for j, kind in enumerate(zc.kinds):
            for i, Sf in enumerate([zc.T, *few]):
                _scatter(axes[i, j], samples_for_plot[kind, zc.T, Sf].numpy(), mix,
                         f"{LABELS[kind]}, {Sf} steps")
            axes[-1, j].set_xlabel("x1")
        for ax in axes[:, 0]:
            ax.set_ylabel("x2")
        fig.suptitle(f"E6: models trained on {zc.T} steps, sampled on respaced chains",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        figs.append(save_figure(fig, out.figure("e6_scatter_respaced")))
        plt.close(fig)
    if zc.n_evals:
        figs.append(_curves_figure(zc, zoo, refs, out, plt))
    summary, verdicts, headline = _summary(cfg, table, refs, data)
    return ExperimentResult("e6", data, json_path, figs, summary, verdicts, headline)


METRIC_LABELS = {"in_mode_share": "in-mode share", "kl": "grid global KL (nats)",
                 "nll_excess": "NLL excess under q (nats)"}


def _curves_figure(zc, zoo, refs, out, plt):
    """Learning curves: the primary metric of every model against training steps, one panel per
    chain, the oracle DDPM and the exact chain as horizontal references."""
    fig, axes = plt.subplots(1, len(zc.chains), figsize=(4.2 * len(zc.chains), 3.4),
                             squeeze=False)
    for ax, S in zip(axes[0], zc.chains):
        metric = primary_metric(zc, S)
        for (kind, s, i), tm in zoo.items():
            if s != S or tm.curve is None:
                continue
            steps, v, se = tm.curve.series(metric)
            ax.errorbar(steps, v, yerr=[e or 0 for e in se], color=COLORS[kind], lw=1.2 if i == 0
                        else 0.6, alpha=1 if i == 0 else 0.5, marker="o", ms=2.5,
                        label=LABELS[kind] + ("" if tm.converged else " (unconverged)")
                        if i == 0 else None)
        for name in ("oracle_ddpm", "exact", "gaussian-beta_tilde"):
            val = refs.get(name, {}).get(S, {}).get(metric)
            if val is not None:
                ax.axhline(val, color=COLORS[name], ls="--", lw=0.8, label=LABELS[name])
        ax.set_title(f"trained and sampled on {S} steps", fontsize=8)
        ax.set_xlabel("training step", fontsize=7)
        ax.set_ylabel(METRIC_LABELS[metric], fontsize=7)
        if metric == "kl":      # linear: the exact chain's KL is 0 (a log axis would hide it)
            ax.set_ylim(bottom=-0.1)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    fig.suptitle("E6: learning curves against the exact target (EMA weights; thin = other seeds)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = save_figure(fig, out.figure("e6_learning_curves"))
    plt.close(fig)
    return path


def _models_table(data) -> list[str]:
    lines = ["Convergence (rule of smdlab.convergence: the last 3 of the evaluations during "
             "training agree with the final one within 2 s.e. + 2%; 5% for the grid KL, which "
             "has no s.e.):", "",
             "| model | trained on | metric | final value per seed | converged |",
             "|---|---|---|---|---|"]
    groups: dict = {}
    for m in data["models"]:
        groups.setdefault((m["kind"], m["train_S"]), []).append(m)
    for (kind, S), ms in sorted(groups.items(), key=lambda kv: (-kv[0][1], KINDS.index(kv[0][0]))):
        if ms[0]["curve"] is None or not ms[0]["curve"]["points"]:
            continue
        metric = ms[0]["curve"]["primary"]
        finals = ", ".join(fmt(m["curve"]["points"][-1].get(metric)) for m in ms)
        conv = "yes" if all(m["converged"] for m in ms) else \
            f"no ({sum(m['converged'] for m in ms)}/{len(ms)} seeds)"
        lines.append(f"| {LABELS[kind]} | {S} | {METRIC_LABELS[metric]} | {finals} | {conv} |")
    return lines


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["train_S"], r["sample_S"]), []).append(r)
    table = []
    for (kind, tS, sS), rs in groups.items():
        entry = {"kind": kind, "train_S": tS, "sample_S": sS, "n_seeds": len(rs)}
        for key in ("kl", "in_mode_share", "occupancy_tv", "mmd", "sw2", "nll", "nll_excess"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                entry[key], entry[key + "_sd"] = mean_spread(vals)
        ses = [r["kl_se"] for r in rs if "kl_se" in r]
        if ses:                 # random latent draws: s.e. of the seed mean from the jackknives
            entry["kl_se"] = math.sqrt(sum(x * x for x in ses)) / len(ses)
        if any("kl_resolved" in r for r in rs):
            entry["kl_resolved"] = all(r.get("kl_resolved", True) for r in rs)
        table.append(entry)
    return table


def _cuts(cfg: ToyConfig) -> str:
    zc, sizes = cfg.zoo, cfg.eval
    one_seed = [S for S in zc.chains if S not in zc.seed_chains]
    parts = []
    if zc.n_seeds > 1 and one_seed:
        parts.append(f"chains {one_seed} trained with one seed only (time budget); chains "
                     f"{list(zc.seed_chains)} with {zc.n_seeds} seeds")
    parts.append(f"{zc.train.steps} training steps of batch {zc.batch_size} per model"
                 + (f" ({', '.join(zc.kind_steps)})" if zc.kind_steps else ""))
    iw = iw_sizes(sizes)
    parts.append(f"grid global KL ({sizes.n_grid}^2 nodes, {sizes.n_latent} latent draws per node "
                 f"and push) "
                 f"only on chains of <= 100 steps; on the {zc.T}-step chain an importance-weighted "
                 f"upper bound (K up to {max(iw.Ks)}, {iw.n_points} x_0, seed 0 of each kind)")
    return "; ".join(parts)


def _kl_cell(e, iw_row) -> str:
    """The global-KL cell: the grid value (n/r when unresolved), or the IW upper bound."""
    if iw_row is not None:
        return (f"<= {iw_row['kl']:.3g} ± {iw_row['kl_se']:.2g} (IW, K={iw_row['K'][-1]})"
                + ("" if iw_row["converged"] else "†"))
    if e.get("kl") is None:
        return "-"
    se = f", s.e. {e['kl_se']:.1g}" if e.get("kl_se") is not None else ""
    if not e.get("kl_resolved", True):
        return f"n/r (grid {fmt(e['kl'])}{se}, unresolved)"
    return fmt(e.get("kl"), e.get("kl_sd"))


def _iw_table(iw) -> list[str]:
    """The IW bound sequences of the long chain: B_K for each K, se, gap, convergence."""
    rows = [(LABELS[r["kind"]] + ("" if r.get("model_converged", True) else " (unconverged)"), r)
            for r in iw["models"]]
    rows += [(LABELS[name], r) for name, per in iw["references"].items() for r in per.values()]
    if not rows:
        return []
    Ks = iw["sizes"]["Ks"]
    lines = [f"Global KL of the long chain, importance-weighted upper bounds "
             f"(smdlab.path_kl.iw_global_kl; forward process as proposal, {iw['sizes']['n_points']} "
             f"x_0; SMD: {iw['sizes']['n_latent']} latent draw(s) per step and path, a "
             "pseudo-marginal weight that keeps the bound an upper bound). B_1 is the chain-rule "
             "bound; B_K falls to the KL as K grows; gap = the last tightening (bounds still "
             f"falling by more than 2 se are marked †). {iw['seconds']:.0f} s.", "",
             "| chain | steps | " + " | ".join(f"B_{K}" for K in Ks) + " | gap |",
             "|---|---|" + "---|" * (len(Ks) + 1)]
    for lab, r in rows:
        lines.append(f"| {lab} | {r['steps']} | "
                     + " | ".join(f"{b:.3g} ± {se:.2g}" for b, se in zip(r["bounds"], r["se"]))
                     + f" | {r['gap']:.2g}{'' if r['converged'] else '†'} |")
    return lines


def _lookup(table, kind, tS, sS):
    for e in table:
        if (e["kind"], e["train_S"], e["sample_S"]) == (kind, tS, sS):
            return e
    return None


def _summary(cfg, table, refs, data):
    zc = cfg.zoo
    iw = data["iw"]
    iw_models = {(r["kind"], r["train_S"], r["sample_S"]): r for r in iw["models"]}
    lines = ["Models trained on the 7x7 grid (EMA weights); global KL = KL(q(x_0) || p(x_0)) "
             "in nats: on chains of <= 100 steps by the grid route (n/r: the grid did not "
             "resolve the chain, no value; SMD kinds: the jackknife of 8 pushes with fresh latent "
             "draws, s.e. of the seed mean given), on the long chain the importance-weighted upper "
             "bound (<= B_K ± se at the largest K, seed 0; † still falling in K: a loose bound; "
             "sequence below); in-mode = share of samples within 3 std of a mode centre; NLL "
             "excess = E_p[-log q] - H(q) of the same samples (nats; 0 for samples of q, +- its "
             "sampling noise). "
             f"Mean ± sd over seeds where n > 1. Cuts: {data['cut']}.", "",
             "| model | trained on | sampled on | seeds | global KL | in-mode share | NLL excess "
             "| MMD |",
             "|---|---|---|---|---|---|---|---|"]
    for e in sorted(table, key=lambda e: (-e["train_S"], -e["sample_S"], KINDS.index(e["kind"]))):
        kl = _kl_cell(e, iw_models.get((e["kind"], e["train_S"], e["sample_S"])))
        lines.append(f"| {LABELS[e['kind']]} | {e['train_S']} | {e['sample_S']} | {e['n_seeds']} | "
                     f"{kl} | {fmt(e.get('in_mode_share'), e.get('in_mode_share_sd'))} | "
                     f"{fmt(e.get('nll_excess'), e.get('nll_excess_sd'))} | "
                     f"{fmt(e.get('mmd'), e.get('mmd_sd'))} |")
    for name in REFERENCES:
        for S, r in refs[name].items():
            kl = _kl_cell(r, iw["references"].get(name, {}).get(S))
            lines.append(f"| {LABELS[name]} | - | {S} | - | {kl} | "
                         f"{fmt(r.get('in_mode_share'))} | {fmt(r.get('nll_excess'))} | "
                         f"{fmt(r.get('mmd'))} |")
    lines += [""] + _iw_table(iw)
    if any(m["curve"] for m in data["models"]):
        lines += [""] + _models_table(data) + ["", "![E6 learning curves]"
                                                  "(figures/e6_learning_curves.png)"]
    lines += ["", "![E6 samples, 4 steps](figures/e6_scatter_S4.png)" if 4 in zc.chains else "",
              f"![E6 samples, {zc.T} steps](figures/e6_scatter_S{zc.T}.png)",
              "![E6 respaced](figures/e6_scatter_respaced.png)"]
    headline, verdicts = {}, []
    Smin = min(zc.chains)
    best = {k: _lookup(table, k, Smin, Smin) for k in zc.kinds}
    if best.get("ddpm") and best.get("smd-energy") and "kl" in best["ddpm"]:
        for k, e in best.items():
            if e and "kl" in e:
                headline[f"kl_{k}_S{Smin}"] = round(e["kl"], 4)
                headline[f"in_mode_{k}_S{Smin}"] = round(e.get("in_mode_share", float("nan")), 4)
    return "\n".join(lines), verdicts, headline
