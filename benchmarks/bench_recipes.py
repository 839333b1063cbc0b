"""Compare training recipes for the toy's learned DDPM (and SMD) on the 7 x 7 grid.

For each recipe (t-sampling x input features) and seed: train with :func:`smdlab.fit.fit` for
``--steps`` steps, sample ``--n`` points on the training chain, report the in-mode share and the
NLL excess under q (and the grid global KL on chains of <= 100 steps).  Writes a markdown table
to stdout and ``benchmarks/results/bench_recipes.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_recipes.py --steps 2000 --seeds 2
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chains", type=int, nargs="+", default=[1000])
    ap.add_argument("--kinds", nargs="+", default=["ddpm"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--out", default="benchmarks/results/bench_recipes.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
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
