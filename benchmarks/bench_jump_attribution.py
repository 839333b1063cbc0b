"""Where a learned few-step chain loses: its global KL attributed to its jumps.

For each learned toy model on its own S-step chain (the lab's zoo, E6-E9: trained here if not
cached under results/models), the grid global KL of
  * the learned chain;
  * "alone at j": the exact chain with the learned kernel on jump j only (that jump's error);
  * "fixed at j": the learned chain with the exact kernel on jump j (what fixing it would gain);
beside the same for the best beta-tilde Gaussian (clipped last step), the lab's Gaussian floor.
Kernels with random latent draws get the jackknifed KL of smdlab.global_error (± s.e.).
Table to stdout, JSON to ``benchmarks/results/bench_jump_attribution.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_jump_attribution.py --S 4
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from smdlab.experiments.toy_config import ToyZoo
from smdlab.experiments.toy_eval import reference_kernel
from smdlab.experiments.toy_zoo import train_one
from smdlab.global_error import grid_global_error
from smdlab.kernels import ExactKernel, SplicedKernel
from smdlab.provenance import run_metadata, write_json
from smdlab.sampling import chain_steps


def _kl(mix, kernel, chain, n_grid, n_latent, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = grid_global_error(mix, kernel, chain, n_grid=n_grid, n_latent=n_latent, refine=False,
                              generator=torch.Generator().manual_seed(seed))
    return {"kl": r["kl"], "kl_se": r.get("kl_se", 0.0), "resolved": bool(r["resolved"])}


def attribute(mix, kernel, chain, n_grid, n_latent, seed=0) -> dict:
    """The learned chain's KL, and per jump the 'alone' and 'fixed' splices (see the docstring)."""
    exact = ExactKernel(mix, kernel.schedule)
    jumps = chain_steps(kernel, chain)
    out = {"jumps": jumps, "whole": _kl(mix, kernel, chain, n_grid, n_latent, seed),
           "alone": [], "fixed": []}
    for j in jumps:
        out["alone"].append(_kl(mix, SplicedKernel(exact, kernel, [j]), chain, n_grid, n_latent, seed))
        out["fixed"].append(_kl(mix, SplicedKernel(kernel, exact, [j]), chain, n_grid, n_latent, seed))
    return out


def _cell(r) -> str:
    se = f" ± {r['kl_se']:.2f}" if r["kl_se"] else ""
    return f"{r['kl']:.3g}{se}" + ("" if r["resolved"] else "*")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--S", type=int, default=4, help="the models' own chain (a zoo chain)")
    ap.add_argument("--kinds", nargs="*", default=["ddpm", "smd-jensen", "smd-multisample",
                                                     "smd-energy"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--n-grid", type=int, default=64)
    ap.add_argument("--n-latent", type=int, default=2, help="latent draws per node and push")
    ap.add_argument("--models", default="results/models", help="the zoo's model cache")
    ap.add_argument("--out", default="benchmarks/results/bench_jump_attribution.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    zoo = ToyZoo()
    if a.S not in zoo.chains:
        ap.error(f"--S must be one of the zoo's chains {zoo.chains}; got {a.S}")
    chain, mix = zoo.chain(a.S), zoo.target.mixture()
    t0 = time.perf_counter()
    rows = []
    floor = reference_kernel("gaussian-beta_tilde", mix, zoo, chain)
    rows.append({"model": "best beta-tilde Gaussian", "seed": None,
                 **attribute(mix, floor, chain, a.n_grid, a.n_latent)})
    for kind in a.kinds:
        for seed in a.seeds:
            tm = train_one(zoo, kind, a.S, seed, Path(a.models))
            rows.append({"model": kind, "seed": seed, "converged": tm.converged,
                         **attribute(mix, tm.kernel, chain, a.n_grid, a.n_latent, seed)})
    jumps = rows[0]["jumps"]
    head = " | ".join(f"alone {t}->{s}" for t, s in jumps) + " | " + \
        " | ".join(f"fixed {t}->{s}" for t, s in jumps)
    print(f"| model | seed | whole | {head} |")
    print("|---|---|---|" + "---|" * (2 * len(jumps)))
    for r in rows:
        cells = [_cell(x) for x in r["alone"]] + [_cell(x) for x in r["fixed"]]
        print(f"| {r['model']} | {r['seed']} | {_cell(r['whole'])} | " + " | ".join(cells) + " |")
    print("(nats; * the node-rule estimate flags the grid unresolved)")
    write_json(Path(a.out), {**run_metadata(vars(a)), "S": a.S, "rows": rows,
                             "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
