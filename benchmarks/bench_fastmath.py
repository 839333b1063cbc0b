"""smdlab.fastmath against torch on the arrays the exact half meets: exp of arguments that
underflow (the grid route's normal matrices), logsumexp over many components most of which lie
far below the largest (E3's 256-component posteriors), and the finiteness check of the step
distributions.  Each pair is timed side by side in one run (one thread, float64, best of 5
repeats of ``--reps`` calls), and the values are compared bit for bit.  Table to stdout, JSON
to ``benchmarks/results/bench_fastmath.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_fastmath.py
"""

from __future__ import annotations

import argparse
import time

import torch

from smdlab import fastmath
from smdlab.distributions import LOG_2PI
from smdlab.provenance import write_json


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e3


def cases(g: torch.Generator) -> list[tuple]:
    """(name, torch callable, fastmath callable) on fixed random arrays."""
    out = []
    # The grid push's normal matrix: 8192 sources x 128 nodes, narrow components.
    y = torch.linspace(-3, 3, 128, dtype=torch.float64)
    mu = torch.randn(8192, generator=g, dtype=torch.float64) * 3
    var = torch.rand(8192, generator=g, dtype=torch.float64) * 0.01 + 1e-4
    arg = -0.5 * ((y[None] - mu[:, None]) ** 2 / var[:, None] + LOG_2PI + var.log()[:, None])
    out.append(("exp, normal matrix 8192 x 128", lambda: torch.exp(arg),
                lambda: fastmath.exp(arg)))
    wide = -torch.rand(512, 4096, generator=g, dtype=torch.float64) * 2000
    out.append(("exp, arguments in [-2000, 0]", lambda: torch.exp(wide),
                lambda: fastmath.exp(wide)))
    # logsumexp over 256 components (rows of 256 points), spread as in E3's dimension sweep.
    for scale in (1.0, 1e4):
        x = torch.randn(256, 256, generator=g, dtype=torch.float64) * scale
        out.append((f"logsumexp 256 x 256, scale {scale:g}", lambda x=x: torch.logsumexp(x, -1),
                    lambda x=x: fastmath.logsumexp(x, -1)))
    x = torch.randn(256, 256, generator=g, dtype=torch.float64) - 720
    x[:, 0] = 0
    out.append(("logsumexp 256 x 256, terms ~720 below", lambda: torch.logsumexp(x, -1),
                lambda: fastmath.logsumexp(x, -1)))
    m = torch.randn(65536, 2, generator=g, dtype=torch.float64)
    out.append(("all finite, 65536 x 2", lambda: bool(torch.isfinite(m).all()),
                lambda: fastmath.all_finite(m)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/bench_fastmath.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, slow, fast in cases(g):
        t_torch, t_fast = _best(slow, a.reps), _best(fast, a.reps)
        same = slow() == fast() if isinstance(slow(), bool) else torch.equal(slow(), fast())
        rows.append({"case": name, "torch_ms": t_torch, "fastmath_ms": t_fast,
                     "speedup": t_torch / t_fast, "bit_identical": bool(same)})
    print(f"{'case':42s} {'torch ms':>9s} {'fastmath ms':>12s} {'speed-up':>9s}  same values")
    for r in rows:
        print(f"{r['case']:42s} {r['torch_ms']:9.3f} {r['fastmath_ms']:12.3f} "
              f"{r['speedup']:8.1f}x  {r['bit_identical']}")
    write_json(a.out, {"reps": a.reps, "threads": 1, "rows": rows})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
