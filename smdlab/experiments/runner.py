"""Run several experiments of the lab at once, each in its own process.

``python -m smdlab`` is CPU-bound and most experiments are single-threaded, so on a 2-core machine
two experiments side by side take about half the wall time of one after the other.  The order of
work:

1. :func:`prepare_shared` trains the shared toy models first (every zoo's in one pool of
   ``zoo.workers`` processes of one thread each, see :mod:`smdlab.experiments.toy_zoo`; E10's
   mixture kernels beside the zoo of E6-E9), and the same workers score each
   model as E6 and E8 will ask (:func:`evaluation_plans`; the scores are stored beside the
   models, :mod:`smdlab.experiments.toy_eval`), so that the experiments that use the models (E6,
   E7, E8, E9, E10) only reload them and their scores, and no two processes ever train or score
   the same model;
2. :func:`run_experiments` runs the chosen experiments, ``jobs`` at a time, the longest first
   (:data:`EXPECTED_SECONDS`), each in its own task: what E6-E9 share now lies on disk, so they
   no longer need one process (their in-process leftovers, reference chains and reloads, cost
   ~15 s each, measured).
   Each experiment runs in a fresh process (``max_tasks_per_child=1``) after the global random
   states are reset, and the same reset precedes every experiment of a sequential run
   (``jobs=1``): what an experiment computes does not depend on what ran before it or beside it.

Results come back in the order they finish; the caller writes the summaries and the report (one
writer, in the parent process).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
import torch

from .base import REGISTRY, Outputs

# Wall seconds of each experiment in the last full run (one thread, toy models, their scores and
# the reference chains' scores computed by the first phase): the longest start first so the
# processes finish together.  Unknown ones count as 60 s.
EXPECTED_SECONDS = {"e9": 172, "e2": 109, "e10": 95, "e7": 79, "e3": 73, "e4": 42, "e6": 35,
                    "e5": 22, "e8": 10, "e1": 2}


def tasks(names) -> list[tuple[str, ...]]:
    """The chosen experiments as tasks of a side-by-side run, one each, longest first."""
    return sorted([(n,) for n in names], key=lambda t: -sum(EXPECTED_SECONDS.get(n, 60)
                                                             for n in t))


def default_jobs() -> int:
    """The number of cores this process may use, at most 2 (the lab's measured machine)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:      # (not on Linux)
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def reset_random_state(seed: int = 0) -> None:
    """The global random states every experiment starts from (its own generators aside)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global state is what unseeded code uses)
    torch.manual_seed(seed)


def evaluation_plans(names, cfgs: dict) -> dict:
    """{(repr(zoo), seed): {(kind, S, seed index): requests}}: the zoo evaluations the chosen
    experiments will ask for (those with an ``evaluation_plan``: E6, E8), merged per zoo."""
    from . import e6_toy, e8_few_steps

    planners = {"e6": e6_toy.evaluation_plan, "e8": e8_few_steps.evaluation_plan}
    plans: dict = {}
    for name in names:
        if name not in planners:
            continue
        cfg = cfgs[name]
        merged = plans.setdefault((repr(cfg.zoo), getattr(cfg, "seed", 0)), {})
        for member, reqs in planners[name](cfg).items():
            have = merged.setdefault(member, [])
            have.extend(r for r in reqs if r not in have)
    return plans


def reference_plans(names, cfgs: dict) -> list:
    """The reference scores the chosen experiments will ask for (those with a
    ``reference_plan``: E6, E8, E10), each once, for the first phase's pool."""
    from . import e6_toy, e8_few_steps, e10_mixture
    from .toy_eval import reference_request_key

    planners = {"e6": e6_toy.reference_plan, "e8": e8_few_steps.reference_plan,
                "e10": e10_mixture.reference_plan}
    seen, plan = set(), []
    for name in names:
        if name in planners:
            for req in planners[name](cfgs[name]):
                key = reference_request_key(req)
                if key not in seen:
                    seen.add(key)
                    plan.append(req)
    return plan


def prepare_shared(names, cfgs: dict, out: Outputs) -> None:
    """Train (or reload) the toy models that the chosen experiments share, once, and compute the
    evaluations E6 and E8 will ask for (:func:`evaluation_plans`), by the zoo's worker
    processes; the experiments then read both from the models' folders."""
    from .toy_config import ToyZoo
    from .toy_zoo import toy_zoos

    plans = evaluation_plans(names, cfgs)
    requests, done = [], set()
    for name in names:
        cfg = cfgs[name]
        zoo = getattr(cfg, "zoo", None)
        if not isinstance(zoo, ToyZoo):
            continue
        key = (repr(zoo), getattr(cfg, "seed", 0))
        if key not in done:
            done.add(key)
            requests.append((zoo, getattr(cfg, "seed", 0), plans.get(key)))
    if requests:            # one pool for all of them (E10's mixture zoo beside E6-E9's)
        toy_zoos(requests, out, reference_plans(names, cfgs))


def run_one(name: str, cfg, out: Outputs):
    """(result, wall seconds) of one experiment, from the reset random state."""
    reset_random_state()
    t0 = time.perf_counter()
    result = REGISTRY[name].run(cfg, out)
    return result, time.perf_counter() - t0


def _run_in_child(task, cfgs: dict, out: Outputs, threads: int):
    torch.set_num_threads(threads)
    from .. import experiments  # noqa: F401  (fills the registry in the spawned process)
    return [(name, *run_one(name, cfgs[name], out)) for name in task]


def run_experiments(names, cfgs: dict, out: Outputs, jobs: int = 1, threads: int = 1):
    """Yield (name, result, seconds) for each experiment in ``names`` as it finishes.

    jobs=1 runs them here in the given order; jobs > 1 runs that many tasks (:func:`tasks`) at
    once in spawned processes with ``threads`` torch threads each, longest first.  An experiment that fails
    stops the rest (those already finished keep their outputs) and its error is raised here.
    """
    if jobs <= 1 or len(names) <= 1:
        for name in names:
            result, seconds = run_one(name, cfgs[name], out)
            yield name, result, seconds
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        pending = {pool.submit(_run_in_child, task, {n: cfgs[n] for n in task}, out, threads): task
                   for task in tasks(names)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.pop(fut)
                    yield from fut.result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
