"""Error-lab benchmark (one thread): the E2 sweep of the 7 x 7 grid at 1000 steps, and the 2-D grid
global error of a 10-step chain at 256 x 256.

Prints a table and writes benchmarks/results/bench_error_lab.json.  Side by side in one run:
the control-variate estimator of :mod:`smdlab.local_error` against the plain "closed-form
cross-entropy minus Monte Carlo entropy" estimator on the same jumps (variance ratio, i.e. how many
times more samples the plain one needs), and the grid push for the DDPM kernel against the exact
mixture kernel.

Usage: python benchmarks/bench_error_lab.py [--n-points 1024] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from smdlab import BEST_GAUSSIAN_KINDS, BestGaussianKernel, ExactKernel, GaussianMixture, NoiseSchedule
from smdlab.exact import best_gaussian_of
from smdlab.global_error import grid_global_error
from smdlab.kl_terms import cross_entropy
from smdlab.local_error import joint_sample, local_error_curves
from smdlab.provenance import run_metadata, write_json

OUT = Path(__file__).resolve().parent / "results" / "bench_error_lab.json"


def plain_estimate(mix, root, t, s, kind, n, g):
    """Closed-form cross-entropy minus plain Monte Carlo entropy, x_t ~ q(x_t): (mean, se)."""
    lt, ls = root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()
    _, _, post, x_s = joint_sample(mix, lt, ls, n, 1, g, importance=False)
    gauss = best_gaussian_of(post, root, t, s, kind)
    kl = cross_entropy(gauss, post) + post.log_prob(x_s[0])
    return kl.mean().item(), (kl.std() / math.sqrt(n)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-points", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="100-step chain, 64 x 64 grid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture.grid()
    root = NoiseSchedule.linear(1000)
    S = 100 if args.quick else 1000
    n_grid = 64 if args.quick else 256
    kernels = [BestGaussianKernel(mix, root, k) for k in BEST_GAUSSIAN_KINDS]
    res = {"n_points": args.n_points, "steps": S, "n_grid": n_grid}

    # 1. The full sweep: every jump, four kinds, shared draws.
    t0 = time.perf_counter()
    curves = local_error_curves(mix, kernels, root.respace(S), args.n_points, 1, generator=g)
    res["sweep_seconds"] = time.perf_counter() - t0
    res["kinds"] = {}
    for k in BEST_GAUSSIAN_KINDS:
        c = curves[f"gaussian-{k}"]
        rel = c.se / np.maximum(np.abs(c.mean), 1e-300)
        rel_sum = c.total_se / abs(c.total)
        res["kinds"][k] = {
            "sum": c.total, "sum_se": c.total_se, "rel_se_sum": rel_sum,
            "median_rel_se_per_jump": float(np.median(rel)),
            "share_jumps_rel_se_below_1pct": float(np.mean(rel < 0.01)),
            "n_points_for_1pct_on_sum": int(math.ceil(args.n_points * (rel_sum / 0.01) ** 2))}

    # 2. Side by side on every 10th jump: plain estimator vs the control-variate one.
    c_bt = curves["gaussian-beta_tilde"]
    idx = list(range(0, len(c_bt.t), 10))
    ratios = {}
    t0 = time.perf_counter()
    for k in ("moment", "beta_tilde"):
        c = curves[f"gaussian-{k}"]
        r = []
        for i in idx:
            m, se = plain_estimate(mix, root, int(c.t[i]), int(c.s[i]), k, args.n_points, g)
            if c.se[i] > 0:
                r.append((se / c.se[i]) ** 2)
        ratios[k] = float(np.median(r))
    res["plain_seconds_subset"] = time.perf_counter() - t0
    res["variance_ratio_plain_over_cv_median"] = ratios

    # 3. 2-D grid global error of a 10-step chain.
    ch = root.respace(10)
    res["grid"] = {}
    for k in (BestGaussianKernel(mix, root, "beta_tilde"), BestGaussianKernel(mix, root, "isotropic"),
              ExactKernel(mix, root)):
        n = n_grid if k.name != "exact" else min(n_grid, 96)
        t0 = time.perf_counter()
        r = grid_global_error(mix, k, ch, n_grid=n)
        res["grid"][k.name] = {"seconds": time.perf_counter() - t0, "kl": r["kl"], "n_grid": n}

    print(f"E2 sweep, 7x7 grid, {S} steps, 4 kinds, n_points={args.n_points}: "
          f"{res['sweep_seconds']:.1f} s (1 thread)")
    print(f"{'kind':12s} {'sum M':>10s} {'rel se(sum)':>12s} {'median rel se':>14s} "
          f"{'jumps <1%':>10s} {'n for 1% sum':>13s}")
    for k, v in res["kinds"].items():
        print(f"{k:12s} {v['sum']:10.4g} {v['rel_se_sum']:12.3%} {v['median_rel_se_per_jump']:14.3g} "
              f"{v['share_jumps_rel_se_below_1pct']:10.1%} {v['n_points_for_1pct_on_sum']:13d}")
    print("variance of the plain estimator / control-variate estimator (median over jumps):",
          {k: f"{v:.3g}" for k, v in ratios.items()})
    for name, v in res["grid"].items():
        print(f"grid global error, 10 steps, {v['n_grid']}x{v['n_grid']}, {name}: "
              f"{v['seconds']:.2f} s, KL = {v['kl']:.4g}")
    res["meta"] = run_metadata({"n_points": args.n_points, "quick": args.quick}, seed=0)
    write_json(OUT if not args.quick else OUT.with_name("bench_error_lab_quick.json"), res)


if __name__ == "__main__":
    main()
