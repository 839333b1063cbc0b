"""Exact posterior parameters and log-densities: smdlab's batched engine against a straightforward
per-component scipy.stats implementation of the same quantities, in one process on one thread.

For N points x_t and paired x_s it computes the responsibilities r_k(x_t), the component means
(N, K, D) of q(x_s | x_t) and log q(x_s | x_t).  Run: python benchmarks/bench_exact.py [--n N]
Prints a table (points/s and the speed ratio) and writes benchmarks/results/bench_exact.json.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from smdlab import GaussianMixture, NoiseSchedule, marginal, posterior  # noqa: E402
from smdlab.provenance import run_metadata, write_json  # noqa: E402


def reference(m: GaussianMixture, ab_t, ab_s, x_t: np.ndarray, x_s: np.ndarray):
    """Per-component textbook Gaussian conditioning with scipy.stats (loops over components)."""
    D = m.D
    a2 = ab_t / ab_s
    eye = np.eye(D)
    log_r, means, comp = [], [], []
    for k in range(m.K):
        mk, Ck = m.means[k].numpy(), m.covariances[k].numpy()
        P = ab_s * Ck + (1 - ab_s) * eye
        Q = ab_t * Ck + (1 - ab_t) * eye
        log_r.append(np.log(m.weights[k].item())
                     + stats.multivariate_normal(np.sqrt(ab_t) * mk, Q).logpdf(x_t).reshape(-1))
        gain = np.sqrt(a2) * np.linalg.solve(Q, P).T          # a P Q^-1 (P, Q symmetric)
        mean = np.sqrt(ab_s) * mk + (x_t - np.sqrt(ab_t) * mk) @ gain.T
        cov = P - np.sqrt(a2) * gain @ P
        cov = 0.5 * (cov + cov.T)
        means.append(mean)
        comp.append(stats.multivariate_normal(np.zeros(D), cov).logpdf(x_s - mean).reshape(-1))
    log_r = np.stack(log_r, 1)
    log_r -= logsumexp(log_r, axis=1, keepdims=True)
    log_q = logsumexp(log_r + np.stack(comp, 1), axis=1)
    return np.exp(log_r), np.stack(means, 1), log_q


def ours(m, sched, x_t, x_s, t, s):
    post = posterior(m, sched, x_t, t, s)
    return post.weights, post.means, post.log_prob(x_s)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of points (default 100000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "bench_exact.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    sched = NoiseSchedule.linear(1000)
    t, s = 300, 200
    cases = {
        "grid K=49 D=2 (isotropic)": GaussianMixture.grid(7),
        "random K=16 D=64 (full cov)": GaussianMixture.random(16, 64, generator=g, kind="full"),
        "random K=16 D=64 (diagonal)": GaussianMixture.random(16, 64, generator=g, kind="diagonal"),
    }
    rows = []
    for name, m in cases.items():
        x_t = marginal(m, sched, t).sample(args.n, g)
        x_s = posterior(m, sched, x_t, t, s).sample(g)
        ab_t, ab_s = sched.alpha_bars[t].item(), sched.alpha_bars[s].item()
        t_ours, (w, mu, lq) = timed(lambda m=m, a=x_t, b=x_s: ours(m, sched, a, b, t, s), args.repeats)
        a_np, b_np = x_t.numpy(), x_s.numpy()
        t_ref, (w_r, mu_r, lq_r) = timed(
            lambda m=m, a=a_np, b=b_np, u=ab_t, v=ab_s: reference(m, u, v, a, b), args.repeats)
        err = max(np.abs(w.numpy() - w_r).max(), np.abs(mu.numpy() - mu_r).max(),
                  np.abs(lq.numpy() - lq_r).max() / max(1.0, np.abs(lq_r).max()))
        rows.append({"case": name, "N": args.n, "K": m.K, "D": m.D,
                     "smdlab_s": t_ours, "scipy_s": t_ref,
                     "smdlab_points_per_s": args.n / t_ours, "scipy_points_per_s": args.n / t_ref,
                     "speedup": t_ref / t_ours, "max_abs_diff": float(err)})
    head = (f"{'case':30s} {'N':>8s} {'smdlab pts/s':>14s} {'scipy pts/s':>13s} {'ratio':>7s} "
            f"{'max diff':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:30s} {r['N']:8d} {r['smdlab_points_per_s']:14.3g} "
              f"{r['scipy_points_per_s']:13.3g} {r['speedup']:6.1f}x {r['max_abs_diff']:9.1e}")
    assert all(math.isfinite(r["speedup"]) for r in rows)
    write_json(args.out, {"benchmark": "bench_exact", **run_metadata({"n": args.n, "t": t, "s": s,
               "repeats": args.repeats, "threads": 1}, seed=0), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
