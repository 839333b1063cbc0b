"""Training speed of the toy zoo: per-model steps/s of each kind (float32, one thread, the recipe
of smdlab.fit), and two models trained one after the other in this process vs by two
single-threaded worker processes (the zoo's ``workers=2``).  Table to stdout, JSON to
``benchmarks/results/bench_zoo_speed.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_zoo_speed.py --steps 300

torch.func vmap ensembling of same-architecture models is not part of the zoo (not measured
here; the probe of issue 10 found ~1.5x per model at K = 8 on one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from smdlab.experiments.toy_config import KINDS, ToyZoo, replace_train
from smdlab.experiments.toy_zoo import train_one, train_parallel
from smdlab.provenance import write_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/bench_zoo_speed.json")
    ap.add_argument("--kinds", nargs="*", default=list(KINDS),
                    help="kinds to time one by one (none: only the loop vs workers comparison)")
    ap.add_argument("--models", type=int, default=2, help="models in the loop vs workers test")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    zoo = replace_train(dataclasses.replace(ToyZoo(), n_evals=0), steps=a.steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.kinds:
            tm = train_one(zoo, kind, 1000, 0, Path(tmp) / "loop")
            rows.append({"kind": kind, "steps_per_s": a.steps / tm.seconds,
                         "ms_per_step": 1000 * tm.seconds / a.steps, "params": tm.params})
            print(rows[-1], flush=True)
        jobs = [("smd-jensen", 1000, 1 + i) for i in range(a.models)]
        t0 = time.perf_counter()
        for k, S, s in jobs:
            train_one(zoo, k, S, s, Path(tmp) / "seq")
        seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_parallel(zoo, jobs, Path(tmp) / "par", workers=2)
        par = time.perf_counter() - t0
    res = {"steps": a.steps, "per_kind": rows,
           "loop_vs_workers": {"models": a.models, "sequential_s": seq, "two_workers_s": par,
                               "speedup": seq / par}}
    print(f"\n{a.steps} steps per model, batch {zoo.batch_size}, float32, one thread\n")
    print("| kind | ms/step | steps/s | params |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['ms_per_step']:.2f} | {r['steps_per_s']:.0f} | {r['params']} |")
    print(f"\n{a.models} SMD-jensen models: one after the other {seq:.1f} s, two workers {par:.1f} s "
          f"(speed-up {seq / par:.2f}x, including process start-up)")
    write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
