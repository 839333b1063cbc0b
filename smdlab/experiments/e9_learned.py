"""E9's learned rows: the trained DDPM and SMD models of the toy zoo beside the oracle families.

The models are those of E6-E8 (:func:`smdlab.experiments.toy_zoo.toy_zoo`, the same cached
weights: E9 holds the same ``zoo`` value), trained on the 7 x 7 grid, which is also E9's "grid"
target.  Two groups per kind:
  * the model trained on the full chain (T = 1000 steps, seed 0), sampled on every respaced chain
    of E9's steps;
  * the models trained and sampled on a few-step chain (the zoo's chains < T that are among E9's
    steps), every seed, reported as mean +- sd over the seeds (and per seed).
Each (model, S) is scored like the oracles:
  * the local error summed over the chain (:func:`smdlab.local_error.local_errors`; SMD's step
    density by a log-mean-exp over ``n_latent_local`` latent draws, which biases M HIGH);
  * the importance-weighted upper bound B_K on the global KL (:func:`smdlab.path_kl.iw_global_kl`;
    SMD with ``n_latent_iw`` latent draws per step and path: a pseudo-marginal weight, still an
    upper bound, see that module);
  * where S <= ``learned_grid_max_steps``, the grid route (:func:`.toy_eval.evaluate`, the evaluation of
    E6/E8 with the same sizes and seeds: read from the model's folder where the zoo's workers
    stored it for E8's plan, on the chains below E8's ``iw_from`` steps; computed here on the
    others), with its "resolved" flag.
Every number keeps its flags: the model's convergence (its learning curve, ``tm.converged``),
clamped local errors and bounds, an IW bound still falling in K, an unresolved grid.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..local_error import local_errors
from ..path_kl import iw_global_kl
from ..sampling import chain_steps
from .toy_config import LABELS, ToyEval, ToyZoo
from .toy_eval import evaluate
from .toy_zoo import toy_zoo


def same_target(zc: ToyZoo, mix) -> bool:
    """True when the zoo's target is the mixture ``mix`` (E9's grid): the models were trained on
    it, so their errors against it mean something."""
    z = zc.target.mixture()
    return (z.K == mix.K and z.D == mix.D and torch.allclose(z.means, mix.means)
            and torch.allclose(z.covariances, mix.covariances) and torch.allclose(z.weights, mix.weights))


def _iw_converged(bounds, ses) -> bool:
    """E9's rule: the last tightening of B_K is within 2 se (or 5% + 0.01 nats)."""
    gap = bounds[-2] - bounds[-1] if len(bounds) > 1 else 0.0
    return bool(gap < max(2 * ses[-1], 0.05 * abs(bounds[-1]) + 0.01))


def score_model(mix, tm, zc: ToyZoo, sizes: ToyEval, S: int, lc, g) -> dict:
    """One trained model on the S-step chain: local error summed over the chain, the IW bound
    and (S <= lc.learned_grid_max_steps) the grid KL, with every flag.  ``lc`` holds the sizes
    (:class:`~.e9_families.E9Config` fields ``learned_*``)."""
    t0 = time.time()
    kernel = tm.kernel
    chain = kernel.schedule if tm.S == S else zc.chain(S)
    latent = getattr(kernel, "has_latent", False)
    L_loc = lc.learned_n_latent_local if latent else None
    L_iw = lc.learned_n_latent_iw if latent else None
    tot, var, flags = 0.0, 0.0, set()
    with torch.no_grad():
        for t, s in chain_steps(kernel, chain):
            r = local_errors(mix, [kernel], t, s, lc.learned_n_points, 1, L_loc, g)[0]
            tot, var = tot + r.mean, var + r.se ** 2
            flags.update(r.flags)
        iw = iw_global_kl(mix, kernel, chain, lc.iw_points, lc.Ks, g, n_latent=L_iw)
    b, se = iw["bound"], iw["se"]
    row = {"local": tot, "local_se": math.sqrt(var), "local_flags": sorted(flags),
           "n_latent_local": L_loc, "n_points_local": lc.learned_n_points, "kl": b[-1],
           "kl_se": se[-1], "K": iw["K"], "bounds": b,
           "bound_se": se, "bound_raw": iw["bound_raw"], "clamped": bool(iw["clamped"][-1]),
           "gap": b[-2] - b[-1] if len(b) > 1 else 0.0, "converged": _iw_converged(b, se),
           "n_latent_iw": L_iw,
           "method": f"IW bound K={iw['K'][-1]}, {lc.iw_points} x_0"
                     + (f", {L_iw} latent draw(s) per step" if latent else "")}
    row["score_seconds"] = time.time() - t0
    if S <= lc.learned_grid_max_steps:
        ev, _ = evaluate(tm, zc, S, sizes, grid=True)
        row["grid_kl"] = ev.get("kl")
        row["grid_resolved"] = bool(ev.get("kl_resolved", True))
        row["in_mode_share"] = ev.get("in_mode_share")
    row["seconds"] = time.time() - t0
    return row


_AGG = ("local", "kl", "grid_kl", "in_mode_share")


def _aggregate(per_seed: list[dict]) -> dict:
    """mean +- sd over seeds of the scored numbers; flags: any seed's."""
    out = {"n_seeds": len(per_seed), "per_seed": per_seed}
    for key in _AGG:
        vals = [r[key] for r in per_seed if r.get(key) is not None]
        if len(vals) == len(per_seed) and vals:
            a = np.asarray(vals, dtype=float)
            out[key] = float(a.mean())
            out[key + "_sd"] = float(a.std(ddof=1)) if a.size > 1 else 0.0
    one = per_seed[0]
    if len(per_seed) == 1:
        out.update({k: v for k, v in one.items() if k not in out})
        out["local_sd"] = out["kl_sd"] = 0.0
    else:
        out["local_se"] = float(np.sqrt(np.mean([r["local_se"] ** 2 for r in per_seed])))
        out["kl_se"] = float(np.sqrt(np.mean([r["kl_se"] ** 2 for r in per_seed])))
        out["local_flags"] = sorted({f for r in per_seed for f in r["local_flags"]})
        out["clamped"] = any(r["clamped"] for r in per_seed)
        out["converged"] = all(r["converged"] for r in per_seed)
        out["gap"] = max(r["gap"] for r in per_seed)
        if "grid_resolved" in one:
            out["grid_resolved"] = all(r["grid_resolved"] for r in per_seed)
        out["method"] = one["method"] + f"; mean ± sd over {len(per_seed)} seeds"
    return out


def learned_rows(cfg, mix, root, steps, out, g) -> dict:
    """{label: {"kind", "train_S", "own_chain", "seeds", "converged", "rows": {S: cell}}} for the
    learned models on E9's grid target, or {"skipped": reason} when they cannot be scored on it."""
    zc = cfg.zoo
    if not same_target(zc, mix):
        return {"skipped": f"the zoo's target ({zc.target}) is not E9's grid target"}
    if zc.T != root.T:
        return {"skipped": f"the zoo's chain (T={zc.T}) is not E9's root chain (T={root.T})"}
    kinds = [k for k in cfg.learned_kinds if k in zc.kinds]
    if not kinds:
        return {"skipped": "no learned kinds among the zoo's kinds"}
    zoo = toy_zoo(zc, out, cfg.seed)
    res = {}
    for kind in kinds:
        if zc.T in zc.chains:
            tm = zoo[kind, zc.T, 0]
            rows = {S: _aggregate([score_model(mix, tm, zc, cfg.eval, S, cfg, g)])
                    for S in steps}
            res[f"learned {LABELS[kind]} (T={zc.T}, seed 0)"] = {
                "kind": kind, "train_S": zc.T, "own_chain": False, "seeds": [0],
                "converged": [tm.converged], "rows": rows}
        for S in sorted(S for S in zc.chains if S < zc.T and S in steps):
            seeds = sorted(i for (k, s_, i) in zoo if k == kind and s_ == S)
            per = [score_model(mix, zoo[kind, S, i], zc, cfg.eval, S, cfg, g) for i in seeds]
            res[f"learned {LABELS[kind]} (own {S}-step chain, {len(seeds)} seed"
                f"{'s' if len(seeds) > 1 else ''})"] = {
                "kind": kind, "train_S": S, "own_chain": True, "seeds": seeds,
                "converged": [zoo[kind, S, i].converged for i in seeds],
                "rows": {S: _aggregate(per)}}
    return res
