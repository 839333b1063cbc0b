"""Ensembling the toy zoo's networks: K same-architecture models trained one after the other (a
loop) against the same K trained together with torch.func (stacked parameters, vmap over the
models, one AdamW over the stacks), on one thread, in one run.

Only the network part of a training step is timed (forward, regression loss, backward, AdamW),
on the toy's backbone (:class:`smdlab.nets.VectorMLP`, width 128, depth 2, 6 Fourier features,
batch 256) with precomputed inputs, so the comparison is of the ensembling itself; the zoo's
data draws and objectives come on top, at the same cost in both.  Table to stdout, JSON to
``benchmarks/results/bench_ensemble.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py --steps 200 --K 1 3 8

Measured (``--steps 150 --K 1 3 8``, one thread, machine under load from other jobs; the
committed JSON): loop / vmap per model-step 0.75x at K = 1 (vmap's overhead), 1.24x at K = 3
(1.45x in a shorter run before), 2.65x at K = 8.  The zoo trains 3 seeds per (kind, chain), so
ensembling would gain ~1.2-1.5x on the network part, on top of the two worker processes; it is
not used, because each model's random streams, checkpoints, EMA and learning curve would have
to be split out of one stacked run while keeping resume bit-identical, for less than the
workers' 1.82x.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

from smdlab.nets import VectorMLP
from smdlab.provenance import write_json


def make_models(K: int, seed: int = 0) -> list[VectorMLP]:
    torch.manual_seed(seed)
    return [VectorMLP(2, hidden=128, depth=2, time_dim=64, fourier=6) for _ in range(K)]


def batches(K: int, n: int, steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(K, n, 2, generator=g), torch.randint(1, 1001, (K, n), generator=g),
             torch.randn(K, n, 2, generator=g)) for _ in range(steps)]


def time_loop(models, data) -> float:
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    t0 = time.perf_counter()
    for x, t, y in data:
        for k, (m, opt) in enumerate(zip(models, opts)):
            loss = ((m(x[k], t[k]) - y[k]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def time_vmap(models, data) -> float:
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, x, t):
        return functional_call(base, (p, b), (x, t))

    batched = torch.vmap(one)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    t0 = time.perf_counter()
    for x, t, y in data:
        # the mean over each model's batch, summed over the models: each model's gradient is
        # that of its own loss, as in the loop
        loss = ((batched(params, buffers, x, t) - y) ** 2).mean(dim=(1, 2)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--K", type=int, nargs="+", default=[1, 3, 8])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best counts")
    ap.add_argument("--out", default="benchmarks/results/bench_ensemble.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for K in a.K:
        data = batches(K, a.batch, a.steps)
        best = {"loop": float("inf"), "vmap": float("inf")}
        for _ in range(a.rounds):
            best["loop"] = min(best["loop"], time_loop(make_models(K), data))
            best["vmap"] = min(best["vmap"], time_vmap(make_models(K), data))
        per_model = {k: 1e3 * v / (a.steps * K) for k, v in best.items()}
        rows.append({"K": K, "loop_ms_per_model_step": per_model["loop"],
                     "vmap_ms_per_model_step": per_model["vmap"],
                     "speedup": per_model["loop"] / per_model["vmap"]})
    print("| K | loop ms/model-step | vmap ms/model-step | loop / vmap |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['K']} | {r['loop_ms_per_model_step']:.2f} | {r['vmap_ms_per_model_step']:.2f} "
              f"| {r['speedup']:.2f}x |")
    write_json(Path(a.out), {"steps": a.steps, "batch": a.batch, "rounds": a.rounds,
                             "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
