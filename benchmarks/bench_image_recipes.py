"""Image training recipes compared by their learning curves: which recipe reaches the FD plateau
inside the CPU default's budget (issue 11).

Each recipe is a list of ``--set PATH=VALUE`` changes to the ``default`` preset of
``python -m smdlab.images`` (learning-rate schedule, steps, U-Net width, batch).  For every recipe
the chosen models train with the experiment's own code (:func:`smdlab.images.experiment._run_job`:
the same batches, objective, EMA, curve recorder and plateau rule), in ``--workers`` spawned
processes of one thread each, as the default run does; each model is then scored once at the
run's n on its curve chain.  Run:

    python benchmarks/bench_image_recipes.py                         # every recipe, ddpm + smd-energy
    python benchmarks/bench_image_recipes.py --recipes cosine-w12 --models ddpm smd-jensen \
        --protocols long short

Prints a table (ms/step, train seconds, the FD curve, converged by the run's rule, final FD at
n = eval.n_samples) and writes benchmarks/results/bench_image_recipes.json.  The committed
results (benchmarks/results/bench_image_recipes.md) ran before the default's curve settings
changed: add ``--set eval.curve_n=100 --set eval.curve_rel_tol=0.05`` to repeat them.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

# --set changes to the default preset; every recipe also evaluates on one chain only (below).
# The recipes up to cosine-1500 ran when the default batch was 48; they name it, so that they
# repeat what they measured.
B48 = "batch_size=48"
RECIPES = {
    # the preset before this benchmark: constant lr after warm-up, 450 / 300 steps
    "constant-450": [B48, "train.lr_schedule=constant", "train.steps=450",
                     "short_train_steps=300"],
    "constant-1500": [B48, "train.lr_schedule=constant", "train.steps=1500",
                      "short_train_steps=1500"],
    "cosine-1000": [B48, "train.lr_schedule=cosine", "train.lr_final=0.02", "train.steps=1000",
                    "short_train_steps=1000"],
    "cosine-2000": [B48, "train.lr_schedule=cosine", "train.lr_final=0.02", "train.steps=2000",
                    "short_train_steps=2000"],
    # a narrower U-Net (width 12 instead of 16): cheaper steps
    "cosine-w12-2000": [B48, "train.lr_schedule=cosine", "train.lr_final=0.02", "train.steps=2000",
                        "short_train_steps=2000", "net.base_channels=12"],
    # a smaller batch (32 instead of 48)
    "cosine-b32-2000": [B48, "train.lr_schedule=cosine", "train.lr_final=0.02", "train.steps=2000",
                        "short_train_steps=2000", "batch_size=32"],
    "cosine-1500": [B48, "train.lr_schedule=cosine", "train.lr_final=0.02", "train.steps=1500",
                    "short_train_steps=1500"],
    # the cheap latent generator (on the U-Net's own stem) at the same budget of examples:
    # 96,000 training images per model, drawn as 2,000 x 48, 1,000 x 96 or 500 x 192
    "shared-2000": [B48, "models.generator=shared", "train.steps=2000",
                    "short_train_steps=2000"],
    "shared-b96-1000": ["models.generator=shared", "batch_size=96", "train.steps=1000",
                        "short_train_steps=1000"],
    "shared-b192-500": ["models.generator=shared", "batch_size=192", "train.steps=500",
                        "short_train_steps=500", "train.warmup_steps=25"],
    # the default since then: the published (separate) generator, 1,000 steps of 96
    "separate-b96-1000": ["models.generator=separate", "batch_size=96", "train.steps=1000",
                          "short_train_steps=1000"],
    # the same at twice the peak learning rate, and at 1,200 steps
    "separate-b96-1000-lr4e-3": ["models.generator=separate", "batch_size=96",
                                 "train.steps=1000", "short_train_steps=1000", "train.lr=4e-3"],
    "separate-b96-1200": ["models.generator=separate", "batch_size=96", "train.steps=1200",
                          "short_train_steps=1200"],
    "separate-b48-1000-lr4e-3": ["models.generator=separate", B48, "train.steps=1000",
                                 "short_train_steps=1000", "train.lr=4e-3"],
    "separate-b96-1000-lr1e-3": ["models.generator=separate", "batch_size=96",
                                 "train.steps=1000", "short_train_steps=1000", "train.lr=1e-3"],
    "separate-b48-1000-lr1e-3": ["models.generator=separate", B48, "train.steps=1000",
                                 "short_train_steps=1000", "train.lr=1e-3"],
}
ROOT = Path(__file__).resolve().parent.parent


def recipe_config(name: str, extra: list[str], workers: int):
    from smdlab.config import apply_overrides
    from smdlab.images.config import ImagesConfig

    cfg = apply_overrides(ImagesConfig.from_preset("default"), RECIPES[name] + list(extra))
    # score on the curve's chain only (the long protocol's cheapest chain, the short chain)
    S = min(cfg.chains.sample_steps)
    return apply_overrides(cfg, [f"chains.sample_steps={S}", "chains.ddim_steps=",
                                 f"workers={workers}", "train.progress=false"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES),
                    default=["constant-450", "cosine-1000", "cosine-2000", "cosine-w12-2000"])
    ap.add_argument("--models", nargs="+", default=["ddpm", "smd-energy"],
                    help="model names of the default spec (ddpm, smd-jensen, smd-energy, "
                         "ddpm-matched)")
    ap.add_argument("--protocols", nargs="+", choices=["long", "short"], default=["long"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[],
                    help="extra PATH=VALUE changes applied to every recipe")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_image_recipes.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from smdlab.images.distributed import DistInfo
    from smdlab.images.experiment import (
        ImageJob,
        ImageOutputs,
        _run_job,
        _run_jobs_parallel,
        _setup,
    )
    from smdlab.provenance import run_metadata, write_json

    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_image_recipes_"))
    t_all = time.perf_counter()
    for name in a.recipes:
        cfg = recipe_config(name, a.set, a.workers)
        specs = {s.name: s for s in cfg.models.specs()}
        unknown = [m for m in a.models if m not in specs]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(specs)}")
        steps = {"long": cfg.train.steps, "short": cfg.short_train_steps}
        jobs = [ImageJob(p, steps[p], specs[m], s, cfg.seed) for p in a.protocols
                for m in a.models for s in a.seeds]
        out = ImageOutputs(work / name)
        info = DistInfo()
        t0 = time.perf_counter()
        if a.workers > 1:
            done = _run_jobs_parallel(cfg, jobs, out, info, None, print)
        else:
            s = _setup(cfg, out, info, print, None, quiet=True)
            done = [_run_job(s, j, out, info, print, progress=False) for j in jobs]
        wall = time.perf_counter() - t0
        for job, (_label, rec, evs) in zip(jobs, done):
            pts = rec["curve"]["points"]
            ev = evs[0].metrics
            rows.append({"recipe": name, "sets": RECIPES[name] + list(a.set),
                         "model": job.spec.name, "protocol": job.protocol, "seed": job.seed,
                         "steps": rec["train_steps"], "parameters": rec["parameters"],
                         "ms_per_step": 1000 * rec["step_seconds"],
                         "train_seconds": rec["train_seconds"],
                         "curve_steps": [q["step"] for q in pts],
                         "curve_fd": [q["fd"] for q in pts],
                         "converged": bool(rec["curve"].get("converged")),
                         "final_fd": ev["fd"], "final_fd_boot_std": ev["fd_boot_std"],
                         "final_kid": ev["kid"], "final_n": cfg.eval.n_samples,
                         "latent_use": rec.get("latent_use"),
                         "eval": f"{evs[0].sampler} {evs[0].steps} steps",
                         "recipe_wall_seconds": wall})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "sets"}), flush=True)
    print(f"\n| recipe | model | protocol | seed | steps | ms/step | train s | FD curve "
          f"(n = curve_n) | converged | final FD (n = {cfg.eval.n_samples}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        curve = ", ".join(f"{v:.1f}" for v in r["curve_fd"])
        print(f"| {r['recipe']} | {r['model']} | {r['protocol']} | {r['seed']} | {r['steps']} | "
              f"{r['ms_per_step']:.0f} | {r['train_seconds']:.0f} | {curve} | "
              f"{'yes' if r['converged'] else 'no'} | {r['final_fd']:.2f} ± "
              f"{r['final_fd_boot_std']:.2f} |")
    out = Path(a.out)
    write_json(out, {**run_metadata(None), "args": vars(a),
                     "recipes": {n: RECIPES[n] for n in a.recipes}, "rows": rows,
                     "wall_seconds": time.perf_counter() - t_all})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
