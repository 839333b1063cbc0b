"""E6: the paper's toy, a 7 x 7 grid of Gaussians in 2-D, learned by DDPM and by SMD.

The models are those of the shared zoo (:mod:`.toy_zoo`: ``ddpm``, ``ddpm-matched``,
``smd-jensen``, ``smd-multisample``, ``smd-energy``).  Each is trained on the full chain (T = 1000)
and on 10- and 4-step chains (trained and sampled on that chain); the 1000-step models are also
sampled on respaced 10- and 4-step chains.  Scored by :mod:`.toy_eval`; configured by
:class:`.toy_config.ToyConfig`.
"""

from __future__ import annotations

import time

from ..kernels import ExactKernel
from ..provenance import save_figure
from .base import ExperimentResult, Outputs, register, save_result
from .toy_config import KINDS, LABELS, ToyConfig
from .toy_eval import REFERENCES, draw_samples, evaluate, fmt, mean_spread, references
from .toy_zoo import matched_hidden, toy_zoo

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
    refs = references(zc, sizes, sorted(set(zc.chains)))
    # ---- snapshots over training (seed 0, each model on its own chain)
    snap_samples = {}
    for (kind, S, i), tm in zoo.items():
        if i != 0:
            continue
        for step, k in tm.snapshots.items():
            if step == zc.train.steps:     # the final EMA weights: reuse the evaluation samples
                snap_samples[kind, S, step] = samples_for_plot[kind, S, S][:sizes.n_snapshot]
            else:
                snap_samples[kind, S, step] = draw_samples(k, zc.chain(S), sizes.n_snapshot, 300)
    # ---- aggregate over seeds
    table = _aggregate(rows)
    data = {"rows": rows, "table": table, "references": refs,
            "params": {kind: zoo[kind, zc.chains[0], 0].params for kind in zc.kinds},
            "matched_hidden": matched_hidden(zc),
            "train_seconds_total": sum(tm.seconds for tm in zoo.values()),
            "wall_seconds_zoo": t_train,
            "cached_models": sum(tm.cached for tm in zoo.values()),
            "eval_seconds": time.perf_counter() - t0 - t_train,
            "cut": _cuts(cfg)}
    json_path = save_result("e6", cfg, data, out)
    # ---- figures
    figs = []
    for S in zc.chains:
        steps = sorted({st for (k, s, st) in snap_samples if s == S})
        fig, axes = plt.subplots(len(zc.kinds), len(steps) + 1,
                                 figsize=(2.4 * (len(steps) + 1), 2.4 * len(zc.kinds)),
                                 squeeze=False)
        for i, kind in enumerate(zc.kinds):
            for j, st in enumerate(steps):
                _scatter(axes[i, j], snap_samples[kind, S, st].numpy(), mix,
                         f"{LABELS[kind]}, step {st}")
            if i == 0:
                x = draw_samples(ExactKernel(mix, root), zc.chain(S), sizes.n_snapshot, 5)
                _scatter(axes[0, -1], x.numpy(), mix, f"exact chain\n{S} steps")
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
    summary, verdicts, headline = _summary(cfg, table, refs, data)
    return ExperimentResult("e6", data, json_path, figs, summary, verdicts, headline)


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["train_S"], r["sample_S"]), []).append(r)
    table = []
    for (kind, tS, sS), rs in groups.items():
        entry = {"kind": kind, "train_S": tS, "sample_S": sS, "n_seeds": len(rs)}
        for key in ("kl", "in_mode_share", "occupancy_tv", "mmd", "sw2", "nll"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                entry[key], entry[key + "_sd"] = mean_spread(vals)
        table.append(entry)
    return table


def _cuts(cfg: ToyConfig) -> str:
    zc, sizes = cfg.zoo, cfg.eval
    one_seed = [S for S in zc.chains if S not in zc.seed_chains]
    parts = []
    if zc.n_seeds > 1 and one_seed:
        parts.append(f"chains {one_seed} trained with one seed only (time budget); chains "
                     f"{list(zc.seed_chains)} with {zc.n_seeds} seeds")
    parts.append(f"{zc.train.steps} training steps of batch {zc.batch_size} per model")
    parts.append(f"grid global KL ({sizes.n_grid}^2 nodes, {sizes.n_latent} latent draws per node) "
                 f"only on chains of <= 100 steps; the {zc.T}-step chain is scored by samples")
    return "; ".join(parts)


def _lookup(table, kind, tS, sS):
    for e in table:
        if (e["kind"], e["train_S"], e["sample_S"]) == (kind, tS, sS):
            return e
    return None


def _summary(cfg, table, refs, data):
    zc = cfg.zoo
    lines = ["Models trained on the 7x7 grid (EMA weights); global KL = KL(q(x_0) || p(x_0)) "
             "on a grid (nats), in-mode = share of samples within 3 std of a mode centre. "
             f"Mean ± sd over seeds where n > 1. Cuts: {data['cut']}.", "",
             "| model | trained on | sampled on | seeds | global KL | in-mode share | MMD |",
             "|---|---|---|---|---|---|---|"]
    for e in sorted(table, key=lambda e: (-e["train_S"], -e["sample_S"], KINDS.index(e["kind"]))):
        lines.append(f"| {LABELS[e['kind']]} | {e['train_S']} | {e['sample_S']} | {e['n_seeds']} | "
                     f"{fmt(e.get('kl'), e.get('kl_sd'))} | "
                     f"{fmt(e.get('in_mode_share'), e.get('in_mode_share_sd'))} | "
                     f"{fmt(e.get('mmd'), e.get('mmd_sd'))} |")
    for name in REFERENCES:
        for S, r in refs[name].items():
            lines.append(f"| {LABELS[name]} | - | {S} | - | {fmt(r.get('kl'))} | "
                         f"{fmt(r.get('in_mode_share'))} | {fmt(r.get('mmd'))} |")
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
