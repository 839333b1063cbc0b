"""Compare training recipes for the toy's learned DDPM (and SMD) on the 7 x 7 grid.

For each recipe (t-sampling x input features) and seed: train with :func:`smdlab.fit.fit` for
``--steps`` steps, sample ``--n`` points on the training chain, report the in-mode share and the
NLL excess under q (and the grid global KL on chains of <= 100 steps).  Writes a markdown table
to stdout and ``benchmarks/results/bench_recipes.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_recipes.py --steps 2000 --seeds 2

``--zoo NAME ...`` instead trains the toy zoo's own models (:func:`smdlab.experiments.toy_zoo.
train_one`: its learning curve and convergence rule included) under named zoo recipes
(:data:`ZOO_RECIPES`) for ``--kinds`` (zoo names) x ``--chains`` x ``--seeds``, one thread, and
reports per model the training seconds (curve evaluations included), whether the curve passed
the rule, and the final score: the grid KL on 64^2 nodes with 32 latent draws (chains of <= 100
steps) or the in-mode share of 1000 samples::

    OMP_NUM_THREADS=1 python benchmarks/bench_recipes.py --zoo chosen --kinds all \
        --chains 4 10 1000 --seeds 1 --out benchmarks/results/bench_zoo_recipe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from smdlab.fit import Recipe, fit
from smdlab.global_error import grid_global_error
from smdlab.metrics import sample_metrics
from smdlab.mixture import GaussianMixture
from smdlab.provenance import write_json
from smdlab.sampling import ancestral_sample
from smdlab.schedules import NoiseSchedule

RECIPES = {
    "uniform, raw x": Recipe.baseline(),
    "uniform, Fourier x": Recipe(t_sampling="uniform"),
    "lognormal t, raw x": Recipe(fourier=0),
    "lognormal t, Fourier x (chosen)": Recipe(),
}


# Zoo recipes: changes to ToyZoo (``train`` changes its TrainConfig, ``model`` its ToyModelSpec).
ZOO_RECIPES = {
    "chosen": {},
    "old (constant lr, 2000 steps, data final variance)": {
        "train": {"steps": 2000, "lr_schedule": "constant", "fused": False},
        "model": {"final_variance": "data", "energy_space": "x0"}},
    "cosine 1000": {"train": {"steps": 1000}},
    "cosine 600": {"train": {"steps": 600}},
    # The mixture kernel (E10): its step count (kind_steps factor of train.steps = 800) and K.
    "mixture 3000 steps": {"zoo": {"kind_steps": ("mixture=3.75",)}},
    "mixture K=16": {"model": {"n_components": 16}},
}


def zoo_main(a):
    import tempfile
    import warnings

    from smdlab.experiments import toy_zoo
    from smdlab.experiments.toy_config import ZOO_KINDS, ToyZoo
    from smdlab.experiments.toy_eval import IWSizes, iw_score
    from smdlab.metrics import mode_statistics

    kinds = list(ZOO_KINDS) if a.kinds == ["all"] else a.kinds
    rows = []
    for name in a.zoo:
        rec = ZOO_RECIPES[name]
        base = ToyZoo()
        zoo = dataclasses.replace(
            base, **rec.get("zoo", {}),
            train=dataclasses.replace(base.train, **rec.get("train", {})),
            model=dataclasses.replace(base.model, **rec.get("model", {})))
        models = Path(tempfile.mkdtemp(prefix="bench_zoo_"))
        for S in a.chains:
            for kind in kinds:
                for seed in range(a.seeds):
                    tm = toy_zoo.train_one(zoo, kind, S, seed, models)
                    mix, chain = zoo.target.mixture(), zoo.chain(S)
                    _, v, _ = tm.curve.series(tm.curve.primary)
                    row = {"recipe": name, "kind": kind, "S": S, "seed": seed,
                           "steps": zoo.steps_for(kind, S), "batch": zoo.batch_size,
                           "train_seconds": tm.seconds, "converged": tm.converged,
                           "primary": tm.curve.primary, "curve": v}
                    g = torch.Generator().manual_seed(7 + seed)
                    if S <= 100 and kind == "mixture":
                        # its narrow last-jump components defeat the grid: the IW upper bound
                        r = iw_score(mix, tm.kernel, chain, IWSizes(n_points=256, Ks=(1, 4, 16, 64)),
                                     7 + seed)
                        row["kl"], row["kl_se"] = float(r["kl"]), float(r["kl_se"])
                    elif S <= 100:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)
                            r = grid_global_error(mix, tm.kernel, chain, n_grid=64,
                                                  n_latent=32, generator=g, refine=False)
                        row["kl"] = float(r["kl"])
                    else:
                        x = ancestral_sample(tm.kernel, torch.randn(a.n, 2, generator=g,
                                                                    dtype=torch.float64),
                                             chain, generator=g)
                        row["in_mode_share"] = float(mode_statistics(mix, x)["in_mode_share"])
                    rows.append(row)
                    print({k: v for k, v in row.items() if k != "curve"}, flush=True)
    print("\n| recipe | kind | chain | seed | train s | converged | final score |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        score = (f"KL {r['kl']:.3f}" + (f" ± {r['kl_se']:.3f} (IW bound)" if "kl_se" in r else "")
                 if "kl" in r else f"in-mode {r['in_mode_share']:.3f}")
        print(f"| {r['recipe']} | {r['kind']} | {r['S']} | {r['seed']} | "
              f"{r['train_seconds']:.1f} | {'yes' if r['converged'] else 'no'} | {score} |")
    total = {}
    for r in rows:
        total[r["recipe"]] = total.get(r["recipe"], 0.0) + r["train_seconds"]
    print("\nsum of train seconds per recipe:", {k: round(v, 1) for k, v in total.items()})
    out = Path(a.out)
    write_json(out, {"args": vars(a), "zoo_recipes": {n: ZOO_RECIPES[n] for n in a.zoo},
                     "rows": rows, "train_seconds_total": total})
    print(f"\nwrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chains", type=int, nargs="+", default=[1000])
    ap.add_argument("--kinds", nargs="+", default=["ddpm"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--out", default="benchmarks/results/bench_recipes.json")
    ap.add_argument("--zoo", nargs="+", choices=list(ZOO_RECIPES), default=None,
                    help="train the zoo's models (toy_zoo.train_one) under these zoo recipes")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.zoo:
        return zoo_main(a)
    q = GaussianMixture.grid(7, 0.5, 0.05)
    root = NoiseSchedule.linear(1000)
    rows = []
    for S in a.chains:
        chain = root if S == root.T else root.respace(S)
        for kind in a.kinds:
            for name in a.recipes:
                for seed in range(a.seeds):
                    t0 = time.perf_counter()
                    k = fit(q, kind, chain, steps=a.steps, seed=seed, recipe=RECIPES[name])
                    secs = time.perf_counter() - t0
                    g = torch.Generator().manual_seed(100 + seed)
                    x = ancestral_sample(k, torch.randn(a.n, 2, generator=g, dtype=torch.float64),
                                         chain, generator=g)
                    m = sample_metrics(q, x, generator=g)
                    row = {"S": S, "kind": kind, "recipe": name, "seed": seed, "steps": a.steps,
                           "in_mode_share": m["in_mode_share"], "nll_excess": m["nll_excess"],
                           "train_seconds": secs}
                    if S <= 100:
                        row["kl"] = float(grid_global_error(q, k, chain, n_grid=48, n_latent=4,
                                                            generator=g)["kl"])
                    rows.append(row)
                    print(row, flush=True)
    table = []
    for S in a.chains:
        for kind in a.kinds:
            for name in a.recipes:
                rs = [r for r in rows if (r["S"], r["kind"], r["recipe"]) == (S, kind, name)]
                e = {"S": S, "kind": kind, "recipe": name, "n_seeds": len(rs)}
                for key in ("in_mode_share", "nll_excess", "kl", "train_seconds"):
                    v = [r[key] for r in rs if key in r]
                    if v:
                        e[key] = float(np.mean(v))
                        e[key + "_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                table.append(e)
    print(f"\n{a.steps} steps, {a.seeds} seeds, {a.n} samples on the training chain\n")
    print("| chain | kind | recipe | in-mode share | NLL excess | grid KL | train s |")
    print("|---|---|---|---|---|---|---|")
    for e in table:
        kl = f"{e['kl']:.3f} ± {e['kl_sd']:.2g}" if "kl" in e else "-"
        print(f"| {e['S']} | {e['kind']} | {e['recipe']} | {e['in_mode_share']:.3f} ± "
              f"{e['in_mode_share_sd']:.2g} | {e['nll_excess']:.3f} ± {e['nll_excess_sd']:.2g} | "
              f"{kl} | {e['train_seconds']:.1f} |")
    out = Path(a.out)
    write_json(out, {"args": vars(a), "recipes": {n: dataclasses.asdict(RECIPES[n])
                                                  for n in a.recipes},
                     "rows": rows, "table": table})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
