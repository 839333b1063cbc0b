"""``python -m smdlab``: run the whole lab (or chosen experiments) and write REPORT.md."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .experiments import REGISTRY, Outputs
from .report import save_summary, write_report


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {e.name:4s} {e.title}" for e in REGISTRY.values())
    p = argparse.ArgumentParser(
        prog="python -m smdlab",
        description="Run the smdlab experiments (exact Gaussian-mixture error lab and learned DDPM/SMD "
                    "denoisers) and write figures/, results/ and REPORT.md.",
        epilog=f"experiments (run in this order):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help="experiments to run (default: all). The report keeps the sections of "
                        "experiments run earlier into the same --out.")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: the whole lab in about 2 minutes")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for figures/, results/ and REPORT.md "
                        "(default: the repository root)")
    p.add_argument("--seed", type=int, default=None, help="override every experiment's seed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: OMP_NUM_THREADS, else 1; 2 helps only on an idle machine)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for e in REGISTRY.values():
            print(f"{e.name}\t{e.title}")
        return 0
    unknown = [n for n in args.experiments if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be non-negative")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    torch.set_num_threads(threads)
    out = Outputs(args.out) if args.out is not None else Outputs.default()
    try:
        Path(out.root).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot create output folder {out.root}: {e}")
    names = args.experiments or list(REGISTRY)
    command = "python -m smdlab " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                       else sys.argv[1:]))
    start = time.perf_counter()
    bar = tqdm(names, desc="smdlab", unit="exp")
    for name in bar:
        exp = REGISTRY[name]
        bar.set_postfix_str(name)
        overrides = {"seed": args.seed} if args.seed is not None else {}
        cfg = exp.config(quick=args.quick, **overrides)
        t0 = time.perf_counter()
        result = exp.run(cfg, out)
        save_summary(result, out, time.perf_counter() - t0, args.quick)
        write_report(out, command.strip())
    total = time.perf_counter() - start
    print(f"smdlab: ran {len(names)} experiment(s) in {total:.0f} s with {threads} thread(s); "
          f"report: {out.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
