"""``python -m smdlab.images``: DDPM against SMD on images (default: digits 8 x 8 on the CPU).

Examples:
    python -m smdlab.images                       # the default comparison (<= 15 min, CPU)
    python -m smdlab.images --preset smoke        # the same pipeline in under 2 minutes
    python -m smdlab.images --out /tmp/run        # every output under /tmp/run
    python -m smdlab.images --preset fashion-mnist --data-root /usr/share/datasets/fashion-mnist
    torchrun --nproc_per_node 2 -m smdlab.images --preset smoke --device cpu   # DDP (gloo)
Checkpoints go to OUT/runs/images/; running the same command again resumes from them (a changed
configuration is an error: use another --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .presets import PRESETS


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smdlab.images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="named configuration (see smdlab/images/presets.py)")
    p.add_argument("--out", type=Path, default=None,
                   help="output root (default: the repository): figures/images, results/images, "
                        "runs/images, REPORT-images.md")
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist", "cifar10", "folder"])
    p.add_argument("--data-root", help="folder holding the dataset's files")
    p.add_argument("--image-size", type=int, help="resize and centre-crop to this size")
    p.add_argument("--channels", type=int, choices=[1, 3])
    p.add_argument("--n-train", type=int, help="use a random subset of the training split")
    p.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    p.add_argument("--train-steps", type=int, help="steps of the T-step models")
    p.add_argument("--short-train-steps", type=int, help="steps of the short-chain models")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--base-channels", type=int)
    p.add_argument("--channel-mults", type=_ints, help="e.g. 1,2,2,2")
    p.add_argument("--attn-resolutions", type=_ints, help="e.g. 16")
    p.add_argument("--conditioning", choices=["hyper", "hyper_naive", "film"])
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--best-objective", choices=["multisample", "energy"])
    p.add_argument("--short-chain", type=int, help="steps of the short training chain")
    p.add_argument("--sample-steps", type=_ints, help="e.g. 1000,100,50,20,10")
    p.add_argument("--ddim-steps", type=_ints, help="e.g. 100,20,10")
    p.add_argument("--n-samples", type=int, help="generated images per evaluation")
    p.add_argument("--raw-weights", action="store_true",
                   help="sample from the raw weights instead of the EMA")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA if available")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: on a shared 2-core machine small ops "
                        "slow down badly with 2)")
    p.add_argument("--inception-weights", type=Path,
                   help="FID Inception weights file: also report Inception FID (torch-fidelity)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import init_distributed, shutdown
    from .experiment import ImageOutputs, ImagesConfig, format_command, run_images

    fields = ("dataset", "data_root", "image_size", "channels", "n_train", "flip", "train_steps",
              "short_train_steps", "batch_size", "lr", "base_channels", "channel_mults",
              "attn_resolutions", "conditioning", "latent_dim", "best_objective", "short_chain",
              "sample_steps", "ddim_steps", "n_samples", "seed", "device")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.raw_weights:
        overrides["use_ema"] = False
    try:
        cfg = ImagesConfig.from_preset(args.preset, **overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.inception_weights is not None and not args.inception_weights.is_file():
        print(f"error: Inception weights file {args.inception_weights} not found", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    info = init_distributed(cfg.device)
    from ..provenance import REPO_ROOT

    root = args.out if args.out is not None else (
        REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd())
    out = ImageOutputs(Path(root))
    log = print if info.is_main else (lambda *a, **k: None)
    try:
        run_images(cfg, out, info, command=format_command(argv), log=log,
                   inception_weights=args.inception_weights)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown(info)
    if info.is_main:
        print(f"wrote {out.report}, {out.results / 'images.json'} and figures in {out.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
