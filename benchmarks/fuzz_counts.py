"""Fuzz counts for issue 9: run the fuzz catalogue (tests/fuzz_cases.py) and count the outcomes.

    python benchmarks/fuzz_counts.py [--api 10000] [--data 300] [--seed 0] [--code DIR]

``--code DIR`` imports smdlab from DIR instead (e.g. an older commit unpacked with
``git archive <commit> smdlab | tar -x -C DIR``) to count the same catalogue against it.

Prints a table of outcomes (clear errors, bad crashes, silent NaN/inf, invalid inputs accepted,
data lost) for API inputs and bad data files, beside the counts the issue reported before the
fixes, and the cases that still fail; saves benchmarks/results/fuzz_counts.json.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if "--code" in sys.argv:   # before any smdlab import
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--code") + 1]).resolve()))

from smdlab.provenance import run_metadata, write_json  # noqa: E402
from tests.fuzz_cases import (  # noqa: E402
    ACCEPTED,
    API_FACTORIES,
    CLEAR,
    CRASH,
    GOOD,
    LOST,
    NAN,
    OK,
    SKIPPED,
    UNNAMED,
    classify,
    data_case_in_tempdir,
)

# issue 9, "before" (printed as the "issue" rows): 9,309 API inputs (38 + 325 bad crashes,
# 55 silent NaN/inf, 12 invalid accepted); 68 bad data files (19 bad crashes, 3 silent accepts).
# Other outcomes were not reported.
BEFORE = {
    "api": {"inputs": 9309, CRASH: 38 + 325, NAN: 55, ACCEPTED: 12},
    "data": {"inputs": 68, CRASH: 19, ACCEPTED: 3},
}
COLUMNS = [CLEAR, OK, SKIPPED, UNNAMED, CRASH, NAN, ACCEPTED, LOST]


def run_api(n: int, rng) -> tuple[collections.Counter, dict]:
    counts, failures = collections.Counter(), {}
    for i in range(n):
        case = API_FACTORIES[i % len(API_FACTORIES)](rng)
        outcome, err = classify(case)
        counts[outcome] += 1
        if outcome not in GOOD:
            key = f"{case.label} -> {outcome}"
            failures.setdefault(key, {"count": 0, "example": f"{case.detail} {err!r}"[:300]})
            failures[key]["count"] += 1
    return counts, failures


def run_data(n: int, rng) -> tuple[collections.Counter, dict]:
    counts, failures = collections.Counter(), {}
    for _ in range(n):
        tmp, case = data_case_in_tempdir(rng)
        with tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome, err = classify(case)
        counts[outcome] += 1
        if outcome not in GOOD:
            key = f"{case.label} -> {outcome}"
            failures.setdefault(key, {"count": 0, "example": repr(err)[:300]})
            failures[key]["count"] += 1
    return counts, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", type=int, default=10000, help="API inputs to try")
    ap.add_argument("--data", type=int, default=300, help="bad data files to try")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code", default=None, help="import smdlab from this folder instead")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_counts.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    api, api_fail = run_api(args.api, rng)
    data, data_fail = run_data(args.data, rng)
    seconds = time.perf_counter() - t0

    head = f"{'':14s}{'inputs':>8s}" + "".join(f"{c[:16]:>18s}" for c in COLUMNS)
    print(head)
    for name, counts in (("API", api), ("data files", data)):
        print(f"{name + ' run':14s}{sum(counts.values()):8d}"
              + "".join(f"{counts.get(c, 0):18d}" for c in COLUMNS))
        before = BEFORE["api" if name == "API" else "data"]
        print(f"{name + ' issue':14s}{before['inputs']:8d}"
              + "".join(f"{before[c] if c in before else '-':>18}" for c in COLUMNS))
    for title, fails in (("API", api_fail), ("data", data_fail)):
        for key, v in sorted(fails.items(), key=lambda kv: -kv[1]["count"]):
            print(f"  {title} failing: {v['count']:5d}  {key}: {v['example']}")
    import smdlab
    print(f"{seconds:.1f} s; smdlab from {Path(smdlab.__file__).parent}")
    result = {
        "meta": run_metadata(vars(args), args.seed),
        "seconds": seconds,
        "smdlab_path": str(Path(__import__("smdlab").__file__).parent),
        "api": {"inputs": sum(api.values()), **{c: api.get(c, 0) for c in COLUMNS},
                "failures": api_fail},
        "data": {"inputs": sum(data.values()), **{c: data.get(c, 0) for c in COLUMNS},
                 "failures": data_fail},
        "before": BEFORE,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    bad = sum(api.get(c, 0) + data.get(c, 0) for c in (UNNAMED, CRASH, NAN, ACCEPTED, LOST))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
