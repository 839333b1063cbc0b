"""Training throughput of DDPM and SMD on the 7x7 grid toy, same backbone, in one run.

Measures optimizer steps per second of :func:`smdlab.training.train` for
  * DDPM (the Gaussian kernel, simple loss),
  * SMD with the published hypernetwork conditioning computed in O(d) ("hyper"),
  * SMD with the same conditioning materialising every matrix ("hyper_naive", as the authors' code),
  * SMD with FiLM conditioning,
all with the jensen objective (one network evaluation per example, so the ratio isolates the
architecture), interleaved over repeats (median of each).  Also times the conditioning module
alone at the authors' size (inner_dim 100) for O(d) vs naive.  Prints a table and writes
benchmarks/results/bench_training.json.

    python benchmarks/bench_training.py [--steps 150] [--repeats 3] [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from smdlab import GaussianMixture, NoiseSchedule
from smdlab.conditioning import make_conditioning
from smdlab.denoisers import GaussianDenoiser, SMDDenoiser
from smdlab.nets import VectorLatentGenerator, VectorMLP, count_parameters
from smdlab.objectives import Objective
from smdlab.provenance import run_metadata, write_json
from smdlab.training import TrainConfig, train

OUT = Path(__file__).resolve().parent / "results" / "bench_training.json"


def build(variant: str, chain, hidden: int, inner: int):
    if variant == "ddpm":
        return GaussianDenoiser(VectorMLP(2, hidden, 2), chain, 2, "v")
    net = VectorMLP(2, hidden, 2, latent_dim=16, conditioning=variant, inner_dim=inner)
    return SMDDenoiser(net, VectorLatentGenerator(2, 4, 16), chain, 2, 4, "v")


def steps_per_second(variant, chain, mix, args) -> float:
    torch.manual_seed(0)
    model = build(variant, chain, args.hidden, args.inner)

    def data(step, g):
        return mix.sample(args.batch, g).float()
    res = train(model, Objective("jensen", chain), data, TrainConfig(steps=args.steps, seed=0))
    return res.steps_per_second


def module_time(kind: str, C: int, inner: int, n: int, reps: int) -> float:
    torch.manual_seed(0)
    m = make_conditioning(kind, C, 16, inner_dim=inner)
    h, z = torch.randn(n, C, requires_grad=True), torch.randn(n, 16)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        m(h, z).square().sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--inner", type=int, default=32, help="hypernetwork width in the toy model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    chain = NoiseSchedule.linear(1000)
    mix = GaussianMixture.grid()
    variants = ("ddpm", "hyper", "hyper_naive", "film")
    runs = {v: [] for v in variants}
    for _ in range(args.repeats):          # interleaved, so machine noise hits every variant
        for v in variants:
            runs[v].append(steps_per_second(v, chain, mix, args))
    sps = {v: statistics.median(r) for v, r in runs.items()}
    params = {v: count_parameters(build(v, chain, args.hidden, args.inner)) for v in variants}
    ratio = {v: sps["ddpm"] / sps[v] for v in variants}        # step-time ratio vs DDPM
    mod = {k: module_time(k, 128, 100, 4096, 5) for k in ("hyper", "hyper_naive")}
    print(f"training throughput, batch {args.batch}, hidden {args.hidden}, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"{'model':<14}{'params':>9}{'steps/s':>10}{'step time / DDPM':>18}")
    for v in variants:
        print(f"{v:<14}{params[v]:>9}{sps[v]:>10.1f}{ratio[v]:>18.2f}")
    print(f"O(d) vs naive in training: naive step time / O(d) = "
          f"{sps['hyper'] / sps['hyper_naive']:.2f}")
    print(f"conditioning module alone (C=128, inner 100, 4096 vectors, fwd+bwd): O(d) "
          f"{mod['hyper'] * 1e3:.1f} ms, naive {mod['hyper_naive'] * 1e3:.1f} ms, "
          f"ratio {mod['hyper_naive'] / mod['hyper']:.1f}x")
    write_json(args.out, {"meta": run_metadata(vars(args) | {"out": str(args.out)}),
                          "steps_per_second": sps, "all_runs": runs, "params": params,
                          "step_time_ratio_vs_ddpm": ratio,
                          "naive_over_od_step_time": sps["hyper"] / sps["hyper_naive"],
                          "module_seconds": mod,
                          "module_naive_over_od": mod["hyper_naive"] / mod["hyper"]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
