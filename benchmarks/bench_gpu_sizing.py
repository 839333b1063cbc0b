"""How long a GPU preset of ``python -m smdlab.images`` will take, from FLOP counts (issue 11).

For every model of the preset (``--preset``, default ``gpu-fashion``) this counts, with
``torch.utils.flop_counter.FlopCounterMode`` on the CPU and the experiment's own code, the FLOPs
of one train step at the preset's batch (forward + backward of the objective) and of one network
evaluation per sampled image; it multiplies them by the run's training steps, learning-curve
evaluations and final evaluations (every sampler and chain, ``eval.n_samples`` images each), and
converts the total into minutes at a range of *achieved* throughputs.  The counter sees matrix
products and convolutions only (elementwise work, normalisation and memory traffic are left out),
so the achieved fraction of the GPU's peak is the assumption that matters; the CPU's own achieved
FLOP/s on the same code (one thread, measured here at a small batch) is printed beside it.

    python benchmarks/bench_gpu_sizing.py                        # gpu-fashion on one H200
    python benchmarks/bench_gpu_sizing.py --preset default       # the CPU default, as a check

Prints a table per model and the totals; writes benchmarks/results/bench_gpu_sizing.json.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# dense bf16 tensor-core peak of one H200 SXM (NVIDIA's data sheet: 1,979 TFLOP/s with 2:4
# sparsity, half of it dense)
H200_BF16_DENSE_TFLOPS = 989.0
CPU_REPEATS = 5      # timed train steps per model (the best counts), after one warm-up step
NATIVE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                 "cifar10": (3, 32, 32)}


def _shape(cfg):
    if cfg.data.dataset not in NATIVE_SHAPES:
        raise SystemExit(f"dataset {cfg.data.dataset}: give a preset with a known native shape")
    C, H, W = NATIVE_SHAPES[cfg.data.dataset]
    C = cfg.data.channels or C
    H = W = cfg.data.image_size or H
    return C, H, W


def _train_step(model, objective, x0, g):
    loss = objective(model, x0, g)
    if isinstance(loss, tuple):
        loss = loss[0]
    loss.backward()


def train_flops(model, objective, shape, batch):
    """FLOPs of one train step (forward + backward) at ``batch``."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch, *shape), generator=g) * 2 - 1
    with FlopCounterMode(display=False) as fc:
        _train_step(model, objective, x0, g)
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def eval_flops(model, n=4):
    """FLOPs of one network evaluation of one image (a 1-step chain)."""
    from smdlab.images.sampling import generate

    with FlopCounterMode(display=False) as fc:
        generate(model, n, model.schedule.respace(1), "ancestral", batch_size=n, seed=0)
    return fc.get_total_flops() / n


def cpu_seconds_per_step(model, objective, shape, batch, repeats=CPU_REPEATS):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((batch, *shape), generator=g) * 2 - 1
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.process_time()
        _train_step(model, objective, x0, g)
        best = min(best, time.process_time() - t0)
        model.zero_grad(set_to_none=True)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu-fashion")
    ap.add_argument("--set", action="append", default=[], help="PATH=VALUE changes")
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2],
                    help="achieved fractions of the peak to convert FLOPs into time at")
    ap.add_argument("--cpu-batch", type=int, default=16,
                    help="batch of the CPU timing (the CPU's achieved FLOP/s; 0: the preset's "
                         "batch, and the training time of the preset on this CPU is "
                         "extrapolated from it)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_gpu_sizing.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from smdlab.config import apply_overrides
    from smdlab.images.config import ImagesConfig
    from smdlab.images.experiment import _curve_chain, _sampler_runs, image_jobs
    from smdlab.images.models import build_model
    from smdlab.objectives import Objective
    from smdlab.provenance import run_metadata, write_json
    from smdlab.schedules import NoiseSchedule

    cfg = apply_overrides(ImagesConfig.from_preset(a.preset), a.set)
    shape = _shape(cfg)
    unet = cfg.net.unet(shape)
    root = NoiseSchedule.from_name(cfg.chains.schedule, cfg.chains.T)
    short = root.respace(cfg.chains.short_chain, cfg.chains.spacing)
    cpu_batch = a.cpu_batch or cfg.batch_size
    per_spec = {}
    for spec in cfg.models.specs():
        torch.manual_seed(0)
        model = build_model(spec, unet, root)
        obj = Objective(spec.objective, root, n_samples=spec.n_samples)
        train, evalf = train_flops(model, obj, shape, cfg.batch_size), eval_flops(model)
        cpu_s = cpu_seconds_per_step(model, obj, shape, cpu_batch, CPU_REPEATS)
        cpu_flops = train if cpu_batch == cfg.batch_size else train_flops(model, obj, shape,
                                                                             cpu_batch)
        per_spec[spec.name] = {"parameters": sum(p.numel() for p in model.parameters()),
                               "train_flops_per_step": train, "eval_flops_per_image": evalf,
                               "cpu_batch": cpu_batch, "cpu_seconds_per_step": cpu_s,
                               "cpu_gflops_achieved": cpu_flops / cpu_s / 1e9}
        print(f"{spec.name}: {per_spec[spec.name]}", flush=True)

    jobs = []
    for job in image_jobs(cfg):
        f = per_spec[job.spec.name]
        S_curve, _ = _curve_chain(cfg, job.protocol, root, short)
        n_curve = min(cfg.eval.curve_points, max(job.steps, 0))
        curve = n_curve * cfg.eval.curve_n * S_curve * f["eval_flops_per_image"]
        runs = _sampler_runs(cfg, job.protocol, job.spec.kind == "smd", job.seed != cfg.seed)
        final = sum(cfg.eval.n_samples * S for _, S, _ in runs) * f["eval_flops_per_image"]
        jobs.append({"label": job.label, "label_spec": job.spec.name, "steps": job.steps,
                     "train_flops": job.steps * f["train_flops_per_step"],
                     "curve_flops": curve, "eval_flops": final})
    total = sum(j["train_flops"] + j["curve_flops"] + j["eval_flops"] for j in jobs)
    peak = a.peak_tflops * 1e12
    print(f"\npreset {a.preset}: batch {cfg.batch_size}, shape {shape}, {len(jobs)} models\n")
    print("| model | steps | train TFLOP | curve TFLOP | final evaluations TFLOP |")
    print("|---|---|---|---|---|")
    for j in jobs:
        print(f"| {j['label']} | {j['steps']} | {j['train_flops'] / 1e12:.1f} | "
              f"{j['curve_flops'] / 1e12:.2f} | {j['eval_flops'] / 1e12:.2f} |")
    print(f"\ntotal {total / 1e12:.1f} TFLOP (matrix products and convolutions)")
    minutes = {str(fr): total / (fr * peak) / 60 for fr in a.fractions}
    print("| achieved fraction of peak | TFLOP/s | minutes |")
    print("|---|---|---|")
    for fr in a.fractions:
        print(f"| {fr:.0%} | {fr * a.peak_tflops:.0f} | {minutes[str(fr)]:.1f} |")
    cpu = {k: round(v["cpu_gflops_achieved"], 2) for k, v in per_spec.items()}
    print(f"\nCPU (1 thread, batch {cpu_batch}) achieved GFLOP/s on the same code: {cpu}")
    cpu_train_minutes = None
    if cpu_batch == cfg.batch_size:    # the preset's training time on this CPU, extrapolated
        cpu_s = sum(j["steps"] * per_spec[j["label_spec"]]["cpu_seconds_per_step"] for j in jobs)
        cpu_train_minutes = cpu_s / max(cfg.workers, 1) / 60
        print(f"training on this CPU (1 thread per worker, {cfg.workers} worker(s), best of "
              f"{CPU_REPEATS} steps per model, evaluations left out): {cpu_train_minutes:.0f} minutes")
    write_json(Path(a.out), {**run_metadata(cfg), "args": vars(a), "shape": list(shape),
                             "per_model": per_spec, "jobs": jobs, "total_flops": total,
                             "peak_tflops": a.peak_tflops, "minutes_at_fraction": minutes,
                             "cpu_train_minutes_extrapolated": cpu_train_minutes})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
