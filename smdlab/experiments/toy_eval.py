"""Scoring toy models: sample metrics and the grid global KL, the reference chains, and helpers.

Evaluations are memoised by content: a trained model's key (:func:`toy_zoo.model_key`), whether
its latent is frozen, the chain's steps, the evaluation sizes, the sample seed and the target.  The
sample seed is a function of what is evaluated (:func:`sample_seed`), so E6 and E8 score the same
draws of the same model without having to agree on numbers.

A model's evaluations are also kept on disk beside its checkpoint (``<run_dir>/evals/``, in the
checksummed envelope of :mod:`smdlab.checkpoints`), keyed by the same content plus
:func:`estimator_fingerprint` (:data:`EVAL_VERSION` and the grid route's constants), so that the
worker processes that train the zoo can score each model right after training it
(:func:`run_plan`, planned by the experiments that will ask, :func:`.e6_toy.evaluation_plan` and
:func:`.e8_few_steps.evaluation_plan`) and E6 and E8 then read the scores; a change of the
estimator's settings (or of EVAL_VERSION, bumped with its code) never reuses an older score.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..denoisers import GaussianDenoiser
from ..global_error import grid_global_error
from ..kernels import BestGaussianKernel, ExactKernel
from ..metrics import sample_metrics
from ..nets import OracleNet
from ..path_kl import iw_global_kl
from ..sampling import ancestral_sample
from ..schedules import NoiseSchedule
from .toy_config import ToyEval, ToyZoo
from .toy_zoo import TrainedModel

REFERENCES = ("exact", "oracle_ddpm", "oracle_ddpm-smd_variance", "gaussian-beta_tilde")
REFERENCE_SEED = 7      # the reference chains' samples (one fixed draw for every experiment)


def kernel_dim(kernel) -> int:
    return kernel.dim if isinstance(kernel.dim, int) else int(np.prod(kernel.dim))


#: Paths per chunk when a draw diverges (see :func:`draw_samples`).
DIVERGE_CHUNK = 50


def draw_samples(kernel, chain: NoiseSchedule, n: int, seed: int) -> torch.Tensor:
    """n ancestral samples (n, D) of ``kernel`` on ``chain`` from a generator seeded ``seed``.

    A chain that diverges (a step meets non-finite values: a model sampled far from what it was
    trained on, or one heavy-tailed latent draw) is rerun from the same x_T in chunks of
    DIVERGE_CHUNK paths (one generator, seeded anew), and only the chunks that diverge again are
    NaN; :func:`score` counts their paths as misses (measured: a 1000-step SMD-energy model whose
    learning curve reads 0.87 in the modes lost a whole draw of 1000 to one such path).  A draw
    that does not diverge is unchanged."""
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, kernel_dim(kernel), generator=g, dtype=torch.float64)
    after_x_T = g.get_state()
    whole = _sample_or_none(kernel, x_T, chain, g)
    if whole is not None:
        return whole
    g.set_state(after_x_T)                  # the stream a non-diverging draw would have used
    out = torch.full_like(x_T, math.nan)
    for i in range(0, n, DIVERGE_CHUNK):
        part = _sample_or_none(kernel, x_T[i:i + DIVERGE_CHUNK], chain, g)
        if part is not None:
            out[i:i + DIVERGE_CHUNK] = part
    return out


def _sample_or_none(kernel, x_T, chain, g):
    """ancestral_sample, or None when the chain meets non-finite values (other errors raise)."""
    try:
        return ancestral_sample(kernel, x_T, chain, generator=g)
    except ValueError as e:
        if "finite" not in str(e):
            raise
        return None


def sample_seed(model: TrainedModel, sample_S: int) -> int:
    """The seed of a model's evaluation samples: ``100 + its training seed`` on its own training
    chain, ``200 + its training seed`` on another (respaced) chain."""
    return (100 if sample_S == model.S else 200) + model.seed


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) or (hasattr(v, "ndim") and v.ndim == 0)


def score(mix, kernel, chain: NoiseSchedule, sizes: ToyEval, seed: int, grid: bool = True,
          samples: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """(metrics, samples) of ``kernel`` sampled on ``chain``: :func:`smdlab.metrics.sample_metrics`
    of ``sizes.n_eval`` samples (seed ``seed``) and, when ``grid``, the grid global KL (seed + 1)
    with its flag ``kl_resolved`` (False: the grid did not resolve the chain; not a value).
    An infinite KL means the chain put (almost) no mass where the target lives."""
    if samples is None:
        samples = draw_samples(kernel, chain, sizes.n_eval, seed)
    ok = torch.isfinite(samples).reshape(samples.shape[0], -1).all(-1)
    if not ok.any():
        # The chain diverged: no sample lands anywhere, and no density can be pushed through it
        # (its kernel means leave the floats); both read as "nothing where q lives".
        return {"diverged": 1.0, "in_mode_share": 0.0, "kl": math.inf, "kl_resolved": True,
                "mass_lost": 1.0}, samples
    row = {k: float(v) for k, v in sample_metrics(mix, samples[ok],
                                                  generator=torch.Generator().manual_seed(seed)
                                                  ).items() if _is_number(v)}
    if not ok.all():
        # Some paths diverged (draw_samples): they land in no mode; the other sample metrics
        # are those of the finite paths.
        share = float(ok.double().mean())
        row["in_mode_share"] *= share
        row["diverged"] = 1.0 - share
    if grid:
        g = torch.Generator().manual_seed(seed + 1)
        res = grid_global_error(mix, kernel, chain, n_grid=sizes.n_grid, n_latent=sizes.n_latent,
                                generator=g)
        row["kl"], row["mass_lost"] = float(res["kl"]), float(res["mass_lost"])
        row["kl_resolved"] = bool(res.get("resolved", True))
        if "kl_se" in res:                      # random latent draws: the jackknife's s.e.
            row["kl_se"] = float(res["kl_se"])
        if not row["kl_resolved"] and chain.T <= CHECK_MAX_STEPS:
            _finer_grid_check(row, mix, kernel, chain, sizes, seed)
        if not math.isfinite(row["kl"]):
            row["kl"] = math.inf
    return row, samples


#: Short chains on which an unresolved KL of random latent draws is checked on a finer grid.
CHECK_MAX_STEPS = 10
#: Replicate pushes of random latent draws on the check's grid (the evaluation's grid uses
#: smdlab.global_error.LATENT_REPLICATES = 8): the check costs 1.5^2 x 4/8 = 1.1 evaluations
#: instead of 2.25; its larger standard error enters the agreement test.  (Measured on the cold
#: lab run with 8: 37 of the 75 E6 rows were checked, 34 agreed, and the checks were ~650 of
#: the run's ~1900 CPU seconds of training and scoring.)
CHECK_REPLICATES = 4


def grids_agree(a: float, b: float, se_a: float = 0.0, se_b: float = 0.0) -> bool:
    """Two grid KLs of one chain agree: within 5% (and 0.02 nats) plus twice their combined
    standard error (random latent draws; 0 for deterministic kernels)."""
    return math.isfinite(a) and math.isfinite(b) and \
        abs(a - b) <= max(0.05 * abs(b), 0.02) + 2 * math.hypot(se_a, se_b)


def _finer_grid_check(row: dict, mix, kernel, chain, sizes: ToyEval, seed: int) -> None:
    """An unresolved KL of a short chain is recomputed on a grid 1.5 times as fine per axis (with
    fresh draws for latent kernels); when the two agree (:func:`grids_agree`) the row counts as
    resolved by that check (``kl_checked``: both grids and KLs).  The node-rule estimate is
    conservative (it bounds the aliasing from the spread of neighbouring nodes' kernel means)
    and, for random latent draws, stays inflated by the draws' noise (it reads the draws' mean
    map); agreement between two grids is the direct test.  Every seed's row is checked (E8's
    seed-0 check on a 96^2 grid, which nested a second check at 144^2, was folded in here)."""
    fine = int(1.5 * sizes.n_grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = grid_global_error(mix, kernel, chain, n_grid=fine, n_latent=sizes.n_latent,
                                generator=torch.Generator().manual_seed(seed + 2), refine=False,
                                latent_replicates=CHECK_REPLICATES)
    b, se_b = float(res["kl"]), float(res.get("kl_se", 0.0))
    se_a = row.get("kl_se", 0.0)
    row["kl_check"] = {"n_grid": [sizes.n_grid, fine], "kl": [row["kl"], b], "kl_se": [se_a, se_b]}
    if grids_agree(row["kl"], b, se_a, se_b):
        row["kl_resolved"], row["kl_checked"] = True, True


_EVAL: dict = {}

#: The version of what a scored evaluation computes: bump it with any change to the scoring or
#: estimator code, so that scores cached on disk by an older version are recomputed.
EVAL_VERSION = 2      # 2: a partly diverged draw keeps its finite paths (draw_samples)


def estimator_fingerprint() -> str:
    """A hash of EVAL_VERSION and the settings of the grid route and of the finer-grid check:
    part of every cached score's key."""
    import hashlib
    import json

    from .. import global_error as ge

    names = ("GRID_TOL", "MAX_GRID", "WORK_BUDGET", "REFINE_WORK_FACTOR", "BOX_TRIM", "BOX_CAP",
             "LATENT_REPLICATES", "LATENT_ALIAS_SHARE", "LATENT_ALIAS_MAX")
    d = {"version": EVAL_VERSION, "check_max_steps": CHECK_MAX_STEPS,
         "check_replicates": CHECK_REPLICATES,
         **{n: getattr(ge, n) for n in names}}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _disk_path(model: TrainedModel, tag: str, key: tuple, fingerprint: str | None = None):
    import hashlib

    if model.run_dir is None:
        return None
    fp = estimator_fingerprint() if fingerprint is None else fingerprint
    h = hashlib.sha1(f"{key!r}|{fp}".encode()).hexdigest()[:16]
    return Path(model.run_dir) / "evals" / f"{tag}-{h}.pt"


def _stored(model: TrainedModel, tag: str, key: tuple, compute):
    """compute() -> (value, samples) of one evaluation of ``model``, kept in its run folder
    (:func:`_cached`)."""
    fp = estimator_fingerprint()
    return _cached(_disk_path(model, tag, key, fp), key, fp, compute)


def _cached(path, key: tuple, fp: str, compute):
    """compute() -> (value, samples), read from ``path`` when an earlier call (in this process
    or another) stored it there under the same key and estimator fingerprint ``fp``, else
    computed and stored (atomically, checksummed); None: not stored.  A stored file that fails
    its checksum, or holds another key, is recomputed and replaced."""
    from ..checkpoints import CheckpointError, load_checkpoint, save_checkpoint

    if path is not None and path.exists():
        try:
            got = load_checkpoint(path)
            if got["config"].get("evaluation") == repr(key) and \
                    got["config"].get("estimator") == fp:
                return got["config"]["value"], got["model"].get("samples")
        except (CheckpointError, KeyError, AttributeError) as e:
            warnings.warn(f"cached score {path} is unreadable ({e}); recomputing it",
                          RuntimeWarning, stacklevel=4)
    value, samples = compute()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {"step": 0, "model": {"samples": samples},
                               "config": {"evaluation": repr(key), "value": value,
                                          "estimator": fp}})
    return value, samples


def evaluate(model: TrainedModel, zoo: ToyZoo, sample_S: int, sizes: ToyEval,
             grid: bool = True, frozen: bool = False) -> tuple[dict, torch.Tensor]:
    """(metrics, samples) of a trained model sampled on the ``sample_S``-step chain (its own
    chain or a respacing of the root), memoised by content for this process and on disk
    (:func:`_stored`)."""
    chain = zoo.chain(sample_S)
    seed = sample_seed(model, sample_S)
    key = (model.key, frozen, tuple(chain.original_steps.tolist()), sizes, seed, grid,
           repr(zoo.target))
    if key not in _EVAL:
        def compute():
            kernel = model.kernel.with_frozen_eta() if frozen else model.kernel
            return score(zoo.target.mixture(), kernel, chain, sizes, seed, grid)

        _EVAL[key] = _stored(model, "eval", key, compute)
    row, samples = _EVAL[key]
    return dict(row), samples


def reference_kernel(name: str, mix, zoo: ToyZoo, chain: NoiseSchedule):
    """The reference chains: ``exact`` (zero local error), ``oracle_ddpm`` (the exact mean with the
    learned kernels' variances: the best any DDPM of this family can do per step) and
    ``oracle_ddpm-smd_variance`` (the same exact mean with the SMD kinds' variance on the jump
    to 0: the best a Gaussian kernel with SMD's variances can do), ``gaussian-beta_tilde`` (the
    lab's best beta-tilde Gaussian, improved-DDPM clip on the jump to
    0, see :mod:`smdlab.denoisers`)."""
    root = chain.root
    p = zoo.model.parameterization
    if name == "exact":
        return ExactKernel(mix, root)
    if name == "oracle_ddpm-smd_variance":     # the same with the SMD kinds' last-jump variance
        return GaussianDenoiser(OracleNet(mix, root, p), chain, mix.D, p, name=name,
                                final_variance=zoo.final_variance("smd-jensen"))
    if name == "oracle_ddpm":
        return GaussianDenoiser(OracleNet(mix, root, p), chain, mix.D, p, name="oracle_ddpm",
                                final_variance=zoo.final_variance())
    if name == "gaussian-beta_tilde":
        return BestGaussianKernel(mix, root, "beta_tilde")
    raise ValueError(f"unknown reference {name!r}; choose one of {REFERENCES}")


_REFS: dict = {}


def _stored_reference(models_dir, tag: str, key: tuple, compute):
    """compute() of a reference chain's score, kept under ``models_dir/references/``
    (:func:`_cached`; None: not stored).  The references are deterministic (REFERENCE_SEED), so
    who computes one does not change it; E6, E8 and E10 ask for the same ones, and the lab's
    first phase computes them once in its worker pool."""
    import hashlib

    fp = estimator_fingerprint()
    path = None
    if models_dir is not None:
        h = hashlib.sha1(f"{key!r}|{fp}".encode()).hexdigest()[:16]
        path = Path(models_dir) / "references" / f"{tag}-{h}.pt"
    return _cached(path, key, fp, lambda: (compute(), None))[0]


def _reference_key(name, zoo: ToyZoo, sizes: ToyEval, S: int, grid: bool) -> tuple:
    """What a reference chain's score depends on (name None: the request for all of them)."""
    return (name, repr(zoo.target), zoo.T, S, sizes, zoo.model.parameterization,
            zoo.model.final_variance, zoo.model.smd_final_variance, grid)


def _reference_iw_key(name, zoo: ToyZoo, iw, S: int) -> tuple:
    return (name, repr(zoo.target), zoo.T, S, _iw_key(iw), zoo.model.parameterization,
            zoo.model.final_variance, zoo.model.smd_final_variance)


def reference_request_key(request) -> tuple:
    """The scores a :func:`run_reference_plan` request computes, as one key: two requests of
    the same key (E6's, E8's and E10's differ in their zoo's kinds or their grid_below, not in
    what they compute) are planned once."""
    if request[0] == "refs":
        _, zoo, sizes, S, grid_below = request
        return ("refs", *_reference_key(None, zoo, sizes, S, S < min(grid_below, 101)))
    _, zoo, iw, S = request
    return ("iw", *_reference_iw_key(None, zoo, iw, S))


def references(zoo: ToyZoo, sizes: ToyEval, S_list, grid_below: int = 101,
               models_dir=None) -> dict:
    """Reference chains at each number of steps: {name: {S: metrics}} (memoised by content, and
    on disk under ``models_dir`` when given, :func:`_stored_reference`; the grid KL only for
    S < grid_below, at most 100 steps)."""
    mix = zoo.target.mixture()
    out = {}
    for name in REFERENCES:
        out[name] = {}
        for S in S_list:
            grid = S < min(grid_below, 101)
            key = _reference_key(name, zoo, sizes, S, grid)
            if key not in _REFS:
                chain = zoo.chain(S)
                kernel = reference_kernel(name, mix, zoo, chain)
                _REFS[key] = _stored_reference(models_dir, "ref", key, functools.partial(
                    lambda *a: score(*a)[0], mix, kernel, chain, sizes, REFERENCE_SEED, grid))
            out[name][S] = dict(_REFS[key])
    return out


# ---------------------------------------------------------------------- long chains: IW bounds
@dataclass(frozen=True)
class IWSizes:
    """The global KL of long chains, where a resolved 2-D grid is out of budget (a 128^2 push of a
    1000-step chain costs ~1e9 kernel evaluations): the importance-weighted upper bounds B_K of
    :func:`smdlab.path_kl.iw_global_kl` on chains of at least ``min_steps`` steps, ``n_points``
    x_0 draws, the growing K of ``Ks`` (the gap between the last two says whether B_K still
    falls), ``n_latent`` latent draws per step and path for SMD (a pseudo-marginal weight: still
    an upper bound)."""

    min_steps: int = 1000
    n_points: int = 32
    Ks: tuple = (1, 4, 16)
    n_latent: int = 1

    @classmethod
    def quick(cls) -> IWSizes:
        return cls(n_points=8, Ks=(1, 4))


#: The IW sizes of the mixture kernel's learning-curve KL (:func:`.toy_zoo.curve_point`) and of
#: E10's few-step KLs (measured on a 4-step mixture kernel, KL ~0.05: B_16 = 0.035 +- 0.033 with
#: 32 x_0, 0.065 +- 0.021 with 64; the grid gave 0.047-0.053 on 64^2-128^2 nodes).
CURVE_IW = IWSizes(n_points=128, Ks=(1, 4, 16))


def iw_sizes(sizes: ToyEval) -> IWSizes:
    """The IW sizes that go with evaluation sizes (the quick ones with :meth:`ToyEval.quick`).
    (ToyConfig has no section for them yet; see the module docstring of :mod:`.e6_toy`.)"""
    return IWSizes.quick() if sizes == ToyEval.quick() else IWSizes()


def iw_score(mix, kernel, chain: NoiseSchedule, iw: IWSizes, seed: int) -> dict:
    """The IW bound sequence of ``kernel`` on ``chain`` (x_0 and paths from a generator seeded
    ``seed``): {"method", "K", "bounds", "se", "bound_raw", "kl" (B at the largest K: an UPPER
    bound on the KL), "kl_se", "gap" (B_{K/..} - B_K, the last tightening), "converged" (gap
    within 2 se or 5% + 0.01 nats), "clamped", "n_latent", "seconds"}."""
    import time

    t0 = time.time()
    L = iw.n_latent if getattr(kernel, "has_latent", False) else None
    with torch.no_grad():
        r = iw_global_kl(mix, kernel, chain, iw.n_points, iw.Ks,
                         torch.Generator().manual_seed(seed), n_latent=L)
    b, se = r["bound"], r["se"]
    gap = b[-2] - b[-1] if len(b) > 1 else 0.0
    return {"method": f"IW upper bound, K={r['K'][-1]}, {iw.n_points} x_0"
                      + (f", {L} latent draw(s) per step" if L else ""),
            "K": r["K"], "bounds": b, "se": se, "bound_raw": r["bound_raw"], "kl": b[-1],
            "kl_se": se[-1], "gap": gap,
            "converged": bool(gap < max(2 * se[-1], 0.05 * abs(b[-1]) + 0.01)),
            "clamped": bool(r["clamped"][-1]), "n_latent": L, "steps": r["steps"],
            "seconds": time.time() - t0}


_IW: dict = {}


def _iw_key(iw: IWSizes) -> tuple:
    """What an IW score depends on (min_steps only says where it is used)."""
    return iw.n_points, tuple(iw.Ks), iw.n_latent


def evaluate_iw(model: TrainedModel, zoo: ToyZoo, sample_S: int, iw: IWSizes) -> dict:
    """:func:`iw_score` of a trained model on the ``sample_S``-step chain (memoised by content;
    seed ``300 +`` its training seed)."""
    chain = zoo.chain(sample_S)
    key = (model.key, tuple(chain.original_steps.tolist()), _iw_key(iw), repr(zoo.target))
    if key not in _IW:
        _IW[key] = _stored(model, "iw", key, lambda: (
            iw_score(zoo.target.mixture(), model.kernel, chain, iw, 300 + model.seed), None))[0]
    return dict(_IW[key])


def run_plan(model: TrainedModel, zoo: ToyZoo, requests) -> None:
    """Compute (and store, :func:`_stored`) the planned evaluations of one model: ``requests``
    are ``("eval", sample_S, ToyEval, grid)`` and ``("iw", sample_S, IWSizes)`` tuples, as the
    experiments' ``evaluation_plan`` functions list them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # flagged in the rows, reported there
        for req in requests:
            if req[0] == "eval":
                evaluate(model, zoo, req[1], req[2], grid=req[3])
            elif req[0] == "iw":
                evaluate_iw(model, zoo, req[1], req[2])
            else:
                raise ValueError(f"unknown evaluation request {req!r}")


def run_reference_plan(request, models_dir) -> None:
    """Compute (and store under ``models_dir``) one planned reference score: ``("refs", zoo,
    sizes, S, grid_below)`` or ``("iw", zoo, IWSizes, S)``, as the experiments'
    ``reference_plan`` functions list them (the lab's first phase runs them in its pool)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if request[0] == "refs":
            _, zoo, sizes, S, grid_below = request
            references(zoo, sizes, [S], grid_below, models_dir)
        elif request[0] == "iw":
            _, zoo, iw, S = request
            references_iw(zoo, iw, [S], models_dir)
        else:
            raise ValueError(f"unknown reference request {request!r}")


def references_iw(zoo: ToyZoo, iw: IWSizes, S_list, models_dir=None) -> dict:
    """{name: {S: iw_score}} of the reference chains on the chains of >= iw.min_steps steps
    (stored under ``models_dir`` when given, as :func:`references`)."""
    mix = zoo.target.mixture()
    out = {}
    for name in REFERENCES:
        out[name] = {}
        for S in S_list:
            if S < iw.min_steps:
                continue
            key = _reference_iw_key(name, zoo, iw, S)
            if key not in _IW:
                chain = zoo.chain(S)
                kernel = reference_kernel(name, mix, zoo, chain)
                _IW[key] = _stored_reference(models_dir, "ref-iw", key, functools.partial(
                    iw_score, mix, kernel, chain, iw, REFERENCE_SEED + 300))
            out[name][S] = dict(_IW[key])
    return out


def mean_spread(values) -> tuple[float, float]:
    """(mean, standard deviation over seeds; 0 for one seed)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(m, s=None, digits=3) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:.{digits}g}" if not s else f"{m:.{digits}g} ± {s:.2g}"
