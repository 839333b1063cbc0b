"""E7: does SMD use its latent?

For each SMD objective (jensen, multisample, energy), on the few-step chain of the toy (the same
trained models as E6, from :func:`smdlab.experiments.toy_zoo.toy_zoo`):

  * latent spread: at fixed x_t ~ q(x_t), the RMS spread over eta of the predicted step mean,
    sqrt(E_x E_eta ||mu(x_t, z(eta)) - E_eta mu||^2), against the spread of the true posterior's
    component means, sqrt(E_x sum_k r_k ||mean_k - mean||^2), at every jump and at several points of
    training.  A kernel that ignores its latent has spread 0; the exact kernel's mixture structure
    has the true spread.
  * local error M_{t->s} of the learned kernels (fresh eta per step) against the best-Gaussian floor
    (the oracle DDPM kernel with the same variance: no Gaussian kernel can go below it) and against
    0 (the exact kernel); the DDPM model of the same chain for comparison.
  * the frozen-eta ablation: the same weights with one eta held fixed (a deterministic latent):
    its M and global KL.  A model that does not use its latent loses nothing when eta is frozen.

Verdict rows: L1 (the paper's jensen objective collapses SMD to a Gaussian kernel) and L2 (the
multisample and energy objectives escape the bottleneck), with the numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..diagnostics import latent_spread
from ..global_error import grid_global_error
from ..kernels import BestGaussianKernel
from ..local_error import local_errors
from ..provenance import save_figure
from ..sampling import chain_steps
from .base import ExperimentResult, Outputs, Verdict, gate_on_convergence, register, save_result
from .toy_config import COLORS, LABELS, ToyEval, ToyModelSpec, ToyTarget, ToyZoo, toy_train_config
from .toy_eval import fmt, mean_spread
from .toy_zoo import toy_zoo, unconverged_note

SMD_KINDS = ("smd-jensen", "smd-multisample", "smd-energy")


def unconverged_models(models: dict, kinds=None, chains=None) -> list[str]:
    """Names ("SMD-energy S=4 seed 1") of the models of ``kinds`` on ``chains`` (None: all) in a
    zoo {(kind, S, seed_index): TrainedModel} that fail their convergence rule."""
    return [f"{LABELS[k]} S={s} seed {i}" for (k, s, i), tm in sorted(models.items())
            if (kinds is None or k in kinds) and (chains is None or s in chains)
            and not tm.converged]


@dataclass
class LatentUseConfig:
    """E7: the shared toy models (``zoo``, ``eval``: the same values as E6's) plus E7's sizes.

    study_S: the chain studied (the smallest few-step chain by default); n_points: x_t per jump
    for the spread; n_eta: latent draws per x_t; n_points_local, n_mc, n_latent_local: sizes of
    the local-error estimator (see :func:`smdlab.local_error.local_errors`); two_modes: also run
    the 1-D two-mode study (:func:`two_modes_zoo`), its models trained for two_modes_steps.
    """

    seed: int = 0
    zoo: ToyZoo = field(default_factory=ToyZoo)
    eval: ToyEval = field(default_factory=ToyEval)
    study_S: int = 4
    n_points: int = 512
    n_eta: int = 32
    n_points_local: int = 1024
    n_mc: int = 2
    n_latent_local: int = 32
    two_modes: bool = True
    two_modes_steps: int = 250

    @classmethod
    def quick(cls) -> LatentUseConfig:
        return cls(zoo=ToyZoo.quick(), eval=ToyEval.quick(), n_points=128, n_eta=8,
                   n_points_local=256, n_latent_local=8, two_modes_steps=30)


def two_modes_zoo(cfg: LatentUseConfig) -> tuple[ToyZoo, ToyEval]:
    """The second study: 1-D modes at +-1 (std 0.1) with a 2-step chain, small networks that train
    in seconds (the setting of the objectives test), the zoo's seed count."""
    zoo = ToyZoo(T=cfg.zoo.T, target=ToyTarget("two_modes", spacing=2.0, std=0.1),
                 model=ToyModelSpec(hidden=64, time_dim=32, gen_hidden=32, latent_dim=8,
                                    noise_dim=2, inner_dim=16, n_multisample=4, n_energy=4,
                                    fourier=0, t_sampling="uniform"),
                 train=toy_train_config(steps=cfg.two_modes_steps, lr=3e-3, ema_decay=0.95,
                                        warmup_steps=0, progress=cfg.zoo.train.progress),
                 batch_size=256, chains=(2,), kinds=("ddpm", *SMD_KINDS),
                 n_seeds=cfg.zoo.n_seeds, seed_chains=(2,), snapshots=(0.2, 0.5, 1.0),
                 workers=cfg.zoo.workers, kind_steps=())
    return zoo, ToyEval(n_eval=cfg.eval.n_eval, n_grid=512, n_latent=cfg.eval.n_latent)


@register("e7", "Does SMD use its latent? Spread over eta, local error vs the Gaussian floor, "
          "frozen-eta ablation", LatentUseConfig)
def run(cfg: LatentUseConfig, out: Outputs) -> ExperimentResult:
    t0 = time.perf_counter()
    zc = cfg.zoo
    studies = [("grid", (zc, cfg.eval), cfg.study_S if cfg.study_S in zc.chains else min(zc.chains))]
    if cfg.two_modes:
        studies.append(("two_modes", two_modes_zoo(cfg), 2))
    data, figs, sections, rows_by = {}, [], [], {}
    for tag, (tzoo, tsizes), S in studies:
        d, rows, fig = _study(tag, tzoo, tsizes, cfg, S, out)
        data[tag], rows_by[tag] = d, rows
        figs.append(fig)
        sections.append(_table(tag, S, rows, d["seeds"]))
    data["seconds"] = time.perf_counter() - t0
    json_path = save_result("e7", cfg, data, out)
    verdicts, headline = _verdicts(rows_by, {tag: S for tag, _, S in studies})
    # A verdict computed from unconverged models is not issued: only the models it rests on count.
    uses = {"L1": ("smd-jensen",), "L2": ("smd-multisample", "smd-energy"), "C4": SMD_KINDS}
    for i, v in enumerate(verdicts):
        kinds = uses[v.claim.split(":")[0].split(" ")[0]]
        bad = [f"{tag}: {name}" for tag in rows_by for k in kinds
               for name in data[tag]["unconverged_models"].get(k, [])]
        verdicts[i] = gate_on_convergence(v, bad)
    intro = ("Spread ratio = learned / true RMS spread of the step means over eta (0: the latent is "
             "ignored; 1: as much as the exact kernel). Sum M = local errors summed over the chain's "
             "jumps (nats; latent kernels use a log-mean-exp over a finite latent sample, biased "
             "high). Floor = the moment-matched Gaussian per step (no Gaussian kernel has a smaller "
             "M). Frozen = the same weights with eta held fixed (deterministic latent).")
    summary = intro + "\n\n" + "\n\n".join(sections)
    return ExperimentResult("e7", data, json_path, figs, summary, verdicts, headline)


def _study(tag, tzoo: ToyZoo, sizes: ToyEval, cfg: LatentUseConfig, S: int, out: Outputs):
    """Every measurement on one target: returns (data, summary rows, figure path)."""
    import matplotlib.pyplot as plt

    mix = tzoo.target.mixture()
    root = tzoo.root()
    chain = tzoo.chain(S)
    zoo = toy_zoo(tzoo, out, cfg.seed)
    kinds = [k for k in SMD_KINDS if k in tzoo.kinds]
    seeds = sorted({sd for (k, s_, sd) in zoo if s_ == S})
    pairs = chain_steps(zoo[kinds[0], S, 0].kernel, chain)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    # ---- spread over training (seed 0) and at the end (all seeds)
    spread_training = {}
    for kind in kinds:
        spread_training[kind] = {}
        for step, k in sorted(zoo[kind, S, 0].snapshots.items()):
            vals = [latent_spread(k, mix, root, t, s, cfg.n_points, cfg.n_eta, g)
                    for t, s in pairs]
            spread_training[kind][step] = {"learned": [v[0] for v in vals],
                                           "true": [v[1] for v in vals]}
    ratio = {}
    for kind in kinds:
        ratio[kind] = []
        for sd in seeds:
            vals = [latent_spread(zoo[kind, S, sd].kernel, mix, root, t, s, cfg.n_points,
                                  cfg.n_eta, g) for t, s in pairs]
            ratio[kind].append(sum(v[0] for v in vals) / max(sum(v[1] for v in vals), 1e-12))
    # ---- local errors (fresh and frozen eta, DDPM, the moment-matched floor) and global KL
    floor = BestGaussianKernel(mix, root, "moment")
    local, gkl = {}, {}
    for sd in seeds:
        kernels = [floor]
        if ("ddpm", S, sd) in zoo:
            kernels.append(zoo["ddpm", S, sd].kernel)
        for kind in kinds:
            k = zoo[kind, S, sd].kernel
            kernels += [k, k.with_frozen_eta()]
        for j, (t, s) in enumerate(pairs):
            res = local_errors(mix, kernels, t, s, n_points=cfg.n_points_local, n_mc=cfg.n_mc,
                               n_latent=cfg.n_latent_local, generator=g)
            for k, r in zip(kernels, res):
                local.setdefault(k.name, {}).setdefault(sd, [None] * len(pairs))[j] = \
                    (r.mean, r.se)
        for k in kernels[1:]:
            r = grid_global_error(mix, k, chain, n_grid=sizes.n_grid, n_latent=sizes.n_latent,
                                  generator=g)
            gkl.setdefault(k.name, {})[sd] = r["kl"] if math.isfinite(r["kl"]) else math.inf
    rows = {}
    for name, per_seed in local.items():
        totals = [sum(m for m, _ in v) for v in per_seed.values()]
        m, sdv = mean_spread(totals)
        gm = mean_spread(list(gkl[name].values())) if name in gkl else (float("nan"), 0.0)
        rows[name] = {"sum_M": m, "sum_M_sd": sdv, "global_kl": gm[0], "global_kl_sd": gm[1],
                      "n_seeds": len(totals)}
    for kind in kinds:
        rows[kind]["spread_ratio"], rows[kind]["spread_ratio_sd"] = mean_spread(ratio[kind])
    rows["floor"] = rows.pop(floor.name)
    data = {"target": tag, "chain_steps": S, "jumps": pairs, "seeds": seeds,
            "unconverged": unconverged_note(zoo, S),
            "unconverged_models": {k: unconverged_models(zoo, [k], [S]) for k in tzoo.kinds},
            "spread_training": spread_training, "spread_ratio": ratio, "local_error": local,
            "global_kl": gkl, "summary": rows,
            "estimator": {"n_points": cfg.n_points_local, "n_mc": cfg.n_mc,
                          "n_latent": cfg.n_latent_local}}
    # ---- figure: spread per jump (final), spread ratio over training, M per jump
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    xs = np.arange(len(pairs))
    labels = [f"{t}->{s}" for t, s in pairs]
    ax = axes[0]
    ax.plot(xs, spread_training[kinds[0]][zoo[kinds[0], S, 0].steps]["true"], "k--", marker="o",
            label="true posterior (component means)")
    for kind in kinds:
        ax.plot(xs, spread_training[kind][zoo[kind, S, 0].steps]["learned"], marker="o", color=COLORS[kind],
                label=LABELS[kind])
    ax.set_xticks(xs, labels)
    ax.set_xlabel("jump t -> s (root steps)")
    ax.set_ylabel("RMS spread of the step mean over eta")
    ax.set_title(f"{tag}: latent use after training ({S}-step chain, seed 0)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    for kind in kinds:
        st = sorted(spread_training[kind])
        r = [sum(spread_training[kind][k]["learned"])
             / max(sum(spread_training[kind][k]["true"]), 1e-12) for k in st]
        ax.plot(st, r, marker="o", color=COLORS[kind], label=LABELS[kind])
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="exact kernel")
    ax.set_xlabel("training step")
    ax.set_ylabel("learned / true spread (summed over jumps)")
    ax.set_title(f"{tag}: latent use over training", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    names = [floor.name] + (["ddpm"] if "ddpm" in local else []) + \
        [n for kind in kinds for n in (kind, f"{kind}-frozen")]
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        m = np.array([v[0] for v in local[name][seeds[0]]])
        se = np.array([v[1] for v in local[name][seeds[0]]])
        base = name.removesuffix("-frozen")
        ax.bar(xs + (i - len(names) / 2 + 0.5) * w, np.clip(m, 1e-4, None), w, yerr=se,
               color=COLORS.get(base, "gray"), hatch="//" if name.endswith("-frozen") else None,
               label=LABELS.get(name, LABELS.get(base, name) + " (frozen eta)"))
    ax.set_yscale("log")
    ax.set_xticks(xs, labels)
    ax.set_xlabel("jump t -> s (root steps)")
    ax.set_ylabel("local error M (nats, log scale)")
    ax.set_title(f"{tag}: local error vs the Gaussian floor (0 = exact)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    name = "e7_latent_use" if tag == "grid" else f"e7_latent_use_{tag}"
    path = save_figure(fig, out.figure(name))
    plt.close(fig)
    return data, rows, path


def _table(tag, S, rows, seeds):
    title = {"grid": "7x7 grid", "two_modes": "1-D two modes"}.get(tag, tag)
    lines = [f"**{title}, {S}-step chain, seeds {seeds}.**", "",
             "| kernel | spread ratio | sum M | global KL |", "|---|---|---|---|"]
    order = ["floor", "ddpm"] + [n for k in SMD_KINDS for n in (k, f"{k}-frozen")]
    for name in order:
        if name not in rows:
            continue
        r = rows[name]
        base = name.removesuffix("-frozen")
        label = "best Gaussian (floor)" if name == "floor" else \
            LABELS.get(name, LABELS.get(base, name) + " (frozen eta)")
        lines.append(f"| {label} | {fmt(r.get('spread_ratio'), r.get('spread_ratio_sd'))} | "
                     f"{fmt(r['sum_M'], r['sum_M_sd'])} | "
                     f"{fmt(r.get('global_kl'), r.get('global_kl_sd'))} |")
    fig = "e7_latent_use" if tag == "grid" else f"e7_latent_use_{tag}"
    lines += ["", f"![E7 latent use, {title}](figures/{fig}.png)"]
    return "\n".join(lines)


def _verdicts(rows_by: dict, steps: dict):
    verdicts, headline = [], {}
    for tag, rows in rows_by.items():
        headline[f"{tag}_floor_sum_M"] = round(rows["floor"]["sum_M"], 4)
        for k in SMD_KINDS:
            if k in rows:
                headline[f"{tag}_spread_ratio_{k}"] = round(rows[k]["spread_ratio"], 4)
                headline[f"{tag}_sum_M_{k}"] = round(rows[k]["sum_M"], 4)
    fig = "figures/e7_latent_use.png"

    def collapsed(rows):
        r = rows["smd-jensen"]
        return r["spread_ratio"] < 0.1

    def escaped(rows, k):
        return k in rows and rows[k]["spread_ratio"] > 0.3 and rows[k]["sum_M"] < rows["floor"]["sum_M"]

    def ev_j(tag, rows):
        r, fr = rows["smd-jensen"], rows["smd-jensen-frozen"]
        return (f"{tag} ({steps[tag]} steps): spread ratio {fmt(r['spread_ratio'], r['spread_ratio_sd'])}, "
                f"sum M {fmt(r['sum_M'])} vs floor {fmt(rows['floor']['sum_M'])}, global KL "
                f"{fmt(r['global_kl'])} (frozen eta {fmt(fr['global_kl'])})")
    tags = [t for t in rows_by if "smd-jensen" in rows_by[t]]
    if tags:
        n_coll = sum(collapsed(rows_by[t]) for t in tags)
        status = ("holds" if n_coll == len(tags) else
                  "holds with qualification" if n_coll else "does not hold as stated")
        verdicts.append(Verdict("L1: the paper's jensen objective collapses SMD to a Gaussian kernel",
                                status, "; ".join(ev_j(t, rows_by[t]) for t in tags), fig))
    alt = ("smd-multisample", "smd-energy")
    parts, wins, total = [], 0, 0
    for tag, rows in rows_by.items():
        for k in alt:
            if k not in rows:
                continue
            total += 1
            wins += escaped(rows, k)
            parts.append(f"{tag} {LABELS[k]}: spread ratio {fmt(rows[k]['spread_ratio'])}, sum M "
                         f"{fmt(rows[k]['sum_M'])} (floor {fmt(rows['floor']['sum_M'])}), global KL "
                         f"{fmt(rows[k]['global_kl'])} (frozen {fmt(rows[k + '-frozen']['global_kl'])})")
    if total:
        status = ("holds" if wins == total else "holds with qualification" if wins
                  else "does not hold as stated")
        verdicts.append(Verdict("L2: the multisample and energy objectives make SMD use its latent "
                                "and go below the Gaussian floor", status, "; ".join(parts), fig))
    # C4, learned side: does a trained SMD kernel go below every Gaussian kernel (sum M < floor)?
    below = {tag: [k for k in SMD_KINDS if k in rows and rows[k]["sum_M"] < rows["floor"]["sum_M"]]
             for tag, rows in rows_by.items()}
    if rows_by:
        ev = "; ".join(
            f"{tag} ({steps[tag]} steps): floor {fmt(rows['floor']['sum_M'])}, "
            + (", ".join(f"{LABELS[k]} {fmt(rows[k]['sum_M'])}" for k in below[tag])
               + " below it" if below[tag] else "no trained SMD below it")
            for tag, rows in rows_by.items())
        n_below = sum(bool(b) for b in below.values())
        status = ("holds" if n_below == len(below) else
                  "holds with qualification" if n_below else "does not hold as stated")
        verdicts.append(Verdict("C4 (learned side): a trained SMD kernel has less local error than "
                                "any Gaussian kernel", status, ev + " (sum of M over the chain, nats)",
                                fig))
    return verdicts, headline
