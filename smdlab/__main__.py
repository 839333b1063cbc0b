"""``python -m smdlab``: run the whole lab (or chosen experiments) and write REPORT.md.

Configuration: each experiment's config dataclass (see ``--help`` for every field), changed with
``--set PATH=VALUE``.  A path that starts with an experiment's name applies to that experiment
only (``--set e2.n_points=256``); any other path applies to every chosen experiment that has the
field (``--set zoo.train.steps=100`` changes the shared toy models of E6, E7 and E8 alike).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .cli import CliParser, UsageError, run_main, threads_from_env
from .config import ConfigError, add_set_argument, apply_overrides, describe_fields, has_field
from .experiments import REGISTRY, Outputs
from .experiments.base import check_writable
from .experiments.runner import default_jobs, prepare_shared, run_experiments


def _fields_epilog() -> str:
    parts = []
    for e in REGISTRY.values():
        parts.append(describe_fields(e.config(), f"{e.name} fields (--set {e.name}.PATH=VALUE)"))
    return "\n\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {e.name:6s} {e.title}" + ("" if e.in_lab else " (only when named)")
                        for e in REGISTRY.values())
    p = CliParser(
        prog="python -m smdlab",
        description="Run the smdlab experiments (exact Gaussian-mixture error lab and learned DDPM/SMD "
                    "denoisers) and write figures/, results/ and REPORT.md.",
        epilog=f"experiments (run in this order):\n{listing}\n\n{__doc__.split(chr(10), 2)[2]}\n"
               f"{_fields_epilog()}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help="experiments to run (default: all but those run only when named). The "
                        "report keeps the sections of experiments run earlier into the same --out.")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: the whole lab in about 2 minutes; its report issues no "
                        "verdicts")
    p.add_argument("--out", type=str, default=None,
                   help="output folder for figures/, results/ and REPORT.md "
                        "(default: the repository root)")
    p.add_argument("--seed", type=int, default=None, help="override every experiment's seed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: OMP_NUM_THREADS, else 1; 2 helps only on an idle machine)")
    p.add_argument("--jobs", type=int, default=None,
                   help="experiments run at once, each in its own process (default: the number "
                        "of cores, at most 2); the shared toy models are trained first, by "
                        "zoo.workers processes")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild REPORT.md from the results already under --out "
                        "(checking that each section agrees with its result)")
    add_set_argument(p)
    return p


def configs_for(names: list[str], quick: bool, seed: int | None, assignments: list[str]) -> dict:
    """Each chosen experiment's config with --seed and the --set assignments applied."""
    cfgs = {}
    for name in names:
        cfg = REGISTRY[name].config(quick=quick)
        if seed is not None:
            cfg = apply_overrides(cfg, [f"seed={seed}"]) if has_field(cfg, "seed") else cfg
        cfgs[name] = cfg
    for a in assignments:
        path = a.split("=", 1)[0].strip()
        head, _, rest = path.partition(".")
        if head in REGISTRY and rest:
            if head not in cfgs:
                raise ConfigError(f"--set {a}: experiment {head!r} is not among those run "
                                  f"({', '.join(names)})")
            cfgs[head] = apply_overrides(cfgs[head], [a.split(".", 1)[1]])
            continue
        takers = [n for n in names if has_field(cfgs[n], path)]
        if not takers:
            apply_overrides(cfgs[names[0]], [a])     # raises the unknown-field error
        for n in takers:
            cfgs[n] = apply_overrides(cfgs[n], [a])
    return cfgs


def _main(argv: list[str] | None) -> int:
    from .report import save_summary, write_report

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for e in REGISTRY.values():
            print(f"{e.name}\t{e.title}")
        return 0
    unknown = [n for n in args.experiments if n not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown experiment(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(REGISTRY)}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be non-negative; got {args.seed}")
    threads = threads_from_env(args.threads)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1; got {args.jobs}")
    names = args.experiments or [n for n, e in REGISTRY.items() if e.in_lab]
    try:
        cfgs = configs_for(names, args.quick, args.seed, args.set)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.out is not None and args.out.strip() == "":
        raise UsageError("--out must be a folder path; got an empty string")
    out = Outputs(Path(args.out)) if args.out is not None else Outputs.default()
    try:    # an unwritable output folder is found now, not after an hour of training
        for folder in (out.root, Path(out.root) / "results", Path(out.root) / "figures",
                       Path(out.root) / "results" / "models"):
            check_writable(folder, "--out")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.quick:      # every figure of this run and of its child processes says so
        import os

        from .provenance import SMOKE_ENV

        os.environ[SMOKE_ENV] = "1"
    import torch

    torch.set_num_threads(threads)
    from tqdm import tqdm

    command = "python -m smdlab " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                       else sys.argv[1:]))
    if args.report_only:
        path = write_report(out, command.strip())
        print(f"smdlab: rebuilt {path} from the results under {out.root}")
        return 0
    start = time.perf_counter()
    jobs = max(1, min(args.jobs if args.jobs is not None else default_jobs(), len(names)))
    prepare_shared(names, cfgs, out)
    bar = tqdm(total=len(names), desc="smdlab", unit="exp")
    for name, result, seconds in run_experiments(names, cfgs, out, jobs, threads):
        bar.set_postfix_str(name)
        bar.update()
        if REGISTRY[name].summarize is None:    # (the others rebuild their section from their result)
            save_summary(result, out, seconds, args.quick)
        write_report(out, command.strip())
    bar.close()
    total = time.perf_counter() - start
    print(f"smdlab: ran {len(names)} experiment(s) in {total:.0f} s with {jobs} process(es) of "
          f"{threads} thread(s); report: {out.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
