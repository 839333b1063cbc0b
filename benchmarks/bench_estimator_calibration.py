"""Calibration benchmark of the local-error estimator (one thread): for every badly fitted kernel
of tests/estimator_cases.py (wrong means, variances 0.01x-100x, untrained MLPs, latent mixtures,
a component of weight 1e-4), the z-scores (MC - quadrature) / se over many seeds, the share of
negative results and of results outside max(4 se, 3 %) of the quadrature, and the time per call.

Prints a table and writes benchmarks/results/bench_estimator_calibration.json.

Usage: python benchmarks/bench_estimator_calibration.py [--seeds 40] [--n-points 2048] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smdlab.local_error import local_error  # noqa: E402
from smdlab.provenance import run_metadata, write_json  # noqa: E402
from smdlab.quadrature import local_error_quadrature  # noqa: E402
from tests.estimator_cases import cases  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "bench_estimator_calibration.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--n-points", type=int, default=2048)
    ap.add_argument("--quick", action="store_true", help="8 seeds, 512 points")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds, n_points = (8, 512) if a.quick else (a.seeds, a.n_points)
    rows, all_z = [], []
    print(f"{'case':30s} {'quadrature':>12s} {'z mean':>7s} {'z sd':>6s} {'max|z|':>7s} "
          f"{'neg':>4s} {'out':>4s} {'rel se':>8s} {'s/call':>7s}")
    for name, mix, kernel, t, s in cases():
        ref = local_error_quadrature(mix, kernel, t, s, n_inner=160, latent_ok=True)
        z, neg, out, rel, t0 = [], 0, 0, [], time.time()
        for seed in range(seeds):
            r = local_error(mix, kernel, t, s, n_points=n_points,
                            generator=torch.Generator().manual_seed(seed))
            z.append((r.mean - ref.mean) / r.se)
            neg += r.mean < 0
            out += abs(r.mean - ref.mean) > max(4 * r.se, 0.03 * ref.mean)
            rel.append(r.se / ref.mean)
        per_call = (time.time() - t0) / seeds
        z = np.array(z)
        all_z += z.tolist()
        rows.append({"case": name, "t": t, "s": s, "quadrature": ref.mean,
                     "quadrature_error": ref.se, "z_mean": float(z.mean()),
                     "z_sd": float(z.std()), "z_max_abs": float(np.abs(z).max()),
                     "negative": int(neg), "outside_tolerance": int(out),
                     "rel_se": float(np.mean(rel)), "seconds_per_call": per_call})
        print(f"{name:30s} {ref.mean:12.5g} {z.mean():+7.2f} {z.std():6.2f} "
              f"{np.abs(z).max():7.2f} {neg:4d} {out:4d} {np.mean(rel):8.2e} {per_call:7.3f}")
    all_z = np.array(all_z)
    print(f"all {all_z.size} z-scores: mean {all_z.mean():+.3f}, sd {all_z.std():.3f}")
    write_json(a.out, {"meta": run_metadata(), "seeds": seeds, "n_points": n_points, "rows": rows,
                       "z_mean": float(all_z.mean()), "z_sd": float(all_z.std())})


if __name__ == "__main__":
    main()
