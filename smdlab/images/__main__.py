"""``python -m smdlab.images``: DDPM against SMD on images (default: digits 8 x 8 on the CPU).

Examples:
    python -m smdlab.images                       # the default comparison (<= 15 min, CPU)
    python -m smdlab.images --preset smoke        # the same pipeline in under 2 minutes
    python -m smdlab.images --out /tmp/run        # every output under /tmp/run
    python -m smdlab.images --preset fashion-mnist --data-root /usr/share/datasets/fashion-mnist
    python -m smdlab.images --set train.lr=1e-3 --set chains.sample_steps=100,10
    python -m smdlab.images --workers 1           # train the models one after another
    torchrun --nproc_per_node 2 -m smdlab.images --preset smoke --device cpu   # DDP (gloo)
Checkpoints go to OUT/runs/images/; running the same command again resumes from them (a changed
setting or dataset is an error: use another --out).  The flags below other than --preset, --out,
--threads, --inception-weights and --set are shorthands for --set PATH=VALUE (PATH shown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import CliParser, UsageError, check_device, run_main, threads_from_env
from ..config import ConfigError, add_set_argument, apply_overrides, describe_fields

# Shorthand flags (documented in the README) and the config field each one sets.
SHORTHANDS = {
    "dataset": "data.dataset", "data-root": "data.data_root", "image-size": "data.image_size",
    "channels": "data.channels", "n-train": "data.n_train", "train-steps": "train.steps",
    "short-train-steps": "short_train_steps", "batch-size": "batch_size", "lr": "train.lr",
    "base-channels": "net.base_channels", "channel-mults": "net.channel_mults",
    "attn-resolutions": "net.attn_resolutions", "conditioning": "models.conditioning",
    "latent-dim": "models.latent_dim", "best-objective": "models.best_objective",
    "short-chain": "chains.short_chain", "sample-steps": "chains.sample_steps",
    "ddim-steps": "chains.ddim_steps", "n-samples": "eval.n_samples", "seed": "seed",
    "device": "device", "workers": "workers",
}


def build_parser() -> argparse.ArgumentParser:
    from .config import ImagesConfig
    from .presets import PRESETS

    p = CliParser(prog="python -m smdlab.images", description=__doc__,
                  epilog=describe_fields(ImagesConfig.from_preset("default"),
                                         "fields of the default preset "
                                         "(--set PATH=VALUE)"),
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="named configuration (see smdlab/images/presets.py)")
    p.add_argument("--out", type=str, default=None,
                   help="output root (default: the repository): figures/images, results/images, "
                        "runs/images, REPORT-images.md")
    for flag, path in SHORTHANDS.items():
        p.add_argument(f"--{flag}", dest=f"short_{flag}", metavar="VALUE", help=f"= --set {path}")
    p.add_argument("--flip", action="store_true", help="= --set data.flip=true")
    p.add_argument("--raw-weights", action="store_true", help="= --set eval.use_ema=false")
    add_set_argument(p)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: OMP_NUM_THREADS, else 1: on a shared "
                        "2-core machine small ops slow down badly with 2)")
    p.add_argument("--inception-weights", type=Path,
                   help="FID Inception weights file: also report Inception FID (torch-fidelity)")
    return p


def config_from_args(args):
    """The preset with the shorthand flags, then the --set assignments, applied in that order."""
    from .config import ImagesConfig

    cfg = ImagesConfig.from_preset(args.preset)
    sets = [f"{path}={getattr(args, 'short_' + flag)}" for flag, path in SHORTHANDS.items()
            if getattr(args, "short_" + flag) is not None]
    if args.flip:
        sets.append("data.flip=true")
    if args.raw_weights:
        sets.append("eval.use_ema=false")
    return apply_overrides(cfg, sets + list(args.set))


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.repeated_models()
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e)) from None
    threads = threads_from_env(args.threads)
    check_device(cfg.device)
    if args.inception_weights is not None and not args.inception_weights.is_file():
        raise UsageError(f"Inception weights file {args.inception_weights} not found")
    from ..experiments.base import check_writable
    from ..provenance import REPO_ROOT

    if args.out is not None and args.out.strip() == "":
        raise UsageError("--out must be a folder path; got an empty string")
    root = Path(args.out) if args.out is not None else (
        REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd())
    try:    # every folder the run writes to, before any training
        for sub in ("", "results/images", "figures/images/grids", "runs/images"):
            check_writable(root / sub, "--out")
    except ValueError as e:
        raise UsageError(str(e)) from None
    import torch

    torch.set_num_threads(threads)
    from .distributed import init_distributed, shutdown
    from .experiment import ImageOutputs, run_images
    from .report import format_command

    info = init_distributed(cfg.device)
    out = ImageOutputs(root)
    log = print if info.is_main else (lambda *a, **k: None)
    try:
        run_images(cfg, out, info, command=format_command(argv), log=log,
                   inception_weights=args.inception_weights)
    finally:
        shutdown(info)
    if info.is_main:
        print(f"wrote {out.report}, {out.results / 'images.json'} and figures in {out.figures}")
    return 0


def main(argv=None) -> int:
    return run_main(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
