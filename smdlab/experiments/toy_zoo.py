"""The toy model zoo shared by E6, E7 and E8: build, train (once), cache and reload every model.

Models (one backbone, :class:`smdlab.nets.VectorMLP`; v-parameterisation, beta-tilde variance):
  * ``ddpm``: the Gaussian kernel, trained with the simple loss;
  * ``ddpm-matched``: the same with a wider backbone whose parameter count is within 5% of SMD's;
  * ``smd-jensen``: SMD with the paper's objective (one eta per example, regression loss);
  * ``smd-multisample``: SMD with the K-sample likelihood bound;
  * ``smd-energy``: SMD with the energy score of the kernel's own samples (clean-point
    predictions; on the jump to 0 with the kernel's final variance added, ``energy_space=
    "kernel"`` of :class:`smdlab.objectives.Objective`).

The jump to 0 (issue 10): the Gaussian kinds use ``model.final_variance = "clipped"`` (the
improved-DDPM clip, what the lab's best beta-tilde Gaussian uses): a DDPM's last mean is
E[x_0 | x_t], which lies between the modes on a coarse chain, and the narrow "data" variance
(the modes' std^2 = 0.0025) then leaves q's modes uncovered: the oracle DDPM scores 5.92 nats
at 4 steps with it and 2.09 with the clip; learned DDPMs follow (4 steps: 4.7 with "data",
2.09-2.10 with the clip, where the curve is also flat: the KL no longer magnifies the mean's
last digits).  The SMD kinds keep ``model.smd_final_variance = "data"``, the largest final
variance under which a latent kernel can be exact.  The oracle DDPM of E6-E8 ("with the learned
kernels' variances") takes the Gaussian kinds' value (:meth:`ToyZoo.final_variance`).

:func:`toy_zoo` trains each model of a :class:`~.toy_config.ToyZoo` once and caches its checkpoint
(and EMA snapshots during training) under ``results/models/<kind>-S<S>-seed<seed>-<key>``, where
the key hashes exactly the settings that define the model (:func:`model_key`); later calls, in this
process or another, reload or resume them (see :mod:`smdlab.training`).  Training time is
recorded beside the checkpoint at the end of the training that produced it, so a reload reports
the original time, not the reload's.

Training recipe: the measured one of :mod:`smdlab.fit` (log-normal-in-sigma t-sampling mixed with
uniform t, Fourier features of the input; a cosine lr decay, :func:`~.toy_config.
toy_train_config`), float32 weights. EMA snapshots are written in the checksummed envelope of
:mod:`smdlab.checkpoints` (:func:`save_snapshot`), so a corrupt one is a CheckpointError. Each
model records a learning curve (:mod:`smdlab.convergence`) of ``zoo.n_evals`` evaluations against
the exact target during training (``curve.json`` beside its checkpoint): in-mode share and NLL
excess of ``zoo.curve_samples`` ancestral samples on its own chain, and on chains of <= 100 steps
of a 2-D target the grid global KL (64^2 nodes; SMD: 8 jackknifed pushes of 2 latent draws per
node, with a standard error the rule uses; for the SMD kinds only at
the rule's window of final evaluations, :func:`kl_evaluations`; why: :class:`~.toy_config.ToyZoo`).
The convergence rule is applied to the primary metric (in-mode share on long chains, grid KL on
few-step chains, NLL excess otherwise).

With ``zoo.workers > 1`` the models that are not cached yet are trained by that many
single-threaded worker processes (spawned; each writes its model's folder), then reloaded here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoints import load_checkpoint, save_checkpoint
from ..convergence import DEFAULT_REL_TOL, LearningCurve, evaluation_steps
from ..denoisers import GaussianDenoiser, SMDDenoiser
from ..nets import VectorLatentGenerator, VectorMLP, count_parameters, matched_width
from ..objectives import Objective
from ..provenance import write_json
from ..schedules import NoiseSchedule
from ..training import train
from .base import Outputs
from .toy_config import KINDS, ToyZoo


@dataclass
class TrainedModel:
    """One trained model: its EMA kernel, the EMA weights at snapshot steps, and its record.

    key: the content key of the model (:func:`model_key`), also used to memoise evaluations;
    seconds: wall time of the training that produced the weights (not of a reload).
    """

    kind: str
    S: int
    seed: int
    kernel: object
    key: str = ""
    snapshots: dict = field(default_factory=dict)     # step -> kernel with the EMA weights then
    log: list = field(default_factory=list)
    params: int = 0
    seconds: float = 0.0
    cached: bool = False
    run_dir: Path | None = None
    curve: LearningCurve | None = None
    steps: int = 0                                    # training steps of these weights

    @property
    def converged(self) -> bool:
        return self.curve is not None and self.curve.converged()


def _smd_parts(zoo: ToyZoo):
    m, D = zoo.model, zoo.target.dim
    net = VectorMLP(D, m.hidden, m.depth, time_dim=m.time_dim, T=zoo.T, latent_dim=m.latent_dim,
                    conditioning=m.conditioning, inner_dim=m.inner_dim, fourier=m.fourier,
                    fourier_scale=m.fourier_scale)
    gen = VectorLatentGenerator(D, m.noise_dim, m.latent_dim, hidden=m.gen_hidden,
                                time_dim=max(m.time_dim // 2, 2), T=zoo.T)
    return net, gen


_MATCHED: dict = {}


def matched_hidden(zoo: ToyZoo) -> int:
    """Backbone width of the capacity-matched DDPM (parameters within 5% of the SMD model's);
    memoised per model spec (the bisection builds ~15 networks: 0.4 s a call, measured).  The
    networks it builds draw from a forked random state, so a model's initial weights never
    depend on whether the width was already known in this process."""
    m = zoo.model
    key = (repr(m), zoo.target.dim, zoo.T)
    if key not in _MATCHED:
        with torch.random.fork_rng():
            target_params = count_parameters(*_smd_parts(zoo))
            _MATCHED[key] = matched_width(target_params, lambda w: VectorMLP(
                zoo.target.dim, w, m.depth, time_dim=m.time_dim, T=zoo.T, fourier=m.fourier))
    return _MATCHED[key]


def build(zoo: ToyZoo, kind: str, chain: NoiseSchedule):
    """(model, objective) of a kind on a training chain."""
    m = zoo.model
    p, fv, D = m.parameterization, zoo.final_variance(kind), zoo.target.dim
    ts = dict(t_sampling=m.t_sampling, p_mean=m.p_mean, p_std=m.p_std,
              uniform_share=m.uniform_share)
    if kind in ("ddpm", "ddpm-matched"):
        width = m.hidden if kind == "ddpm" else matched_hidden(zoo)
        model = GaussianDenoiser(VectorMLP(D, width, m.depth, time_dim=m.time_dim, T=zoo.T,
                                           fourier=m.fourier, fourier_scale=m.fourier_scale),
                                 chain, D, p, name=kind, final_variance=fv)
        return model, Objective("jensen", chain, **ts)
    if kind == "mixture":
        from ..mixture_kernel import MixtureDenoiser, build_mixture_mlp

        net = build_mixture_mlp(D, m.n_components, hidden=m.hidden, depth=m.depth,
                                time_dim=m.time_dim, T=zoo.T, fourier=m.fourier,
                                fourier_scale=m.fourier_scale)
        return MixtureDenoiser(net, chain, D, m.n_components, p, name=kind), \
            Objective("nll", chain, **ts)
    if kind.startswith("smd-"):
        net, gen = _smd_parts(zoo)
        model = SMDDenoiser(net, gen, chain, D, m.noise_dim, p, name=kind, final_variance=fv)
        obj = kind.removeprefix("smd-")
        n = {"jensen": 1, "multisample": m.n_multisample, "energy": m.n_energy}[obj]
        extra = {"energy_space": m.energy_space} if obj == "energy" else {}
        return model, Objective(obj, chain, n_samples=n, **ts, **extra)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")


# TrainConfig fields that do not change the trained weights (or are set per model).
_NOT_DEFINING = ("seed", "progress", "keep_checkpoints", "checkpoint_every")
# ToyZoo fields that say which models exist or how they are trained in parallel, not what they are.
_NOT_MODEL = ("chains", "kinds", "n_seeds", "seed_chains", "workers")


def model_fields(zoo: ToyZoo, kind: str | None = None, S: int | None = None) -> dict:
    """The settings that define a trained model of ``zoo`` (its chains, kinds and seed counts
    only say which models exist, so they stay out); with ``kind`` (and the chain ``S``), its own
    step count (:meth:`ToyZoo.steps_for`) replaces ``train.steps`` and ``kind_steps`` goes, so a change
    of another kind's steps keeps this kind's models."""
    d = dataclasses.asdict(zoo)
    for k in _NOT_MODEL:
        d.pop(k)
    for k in _NOT_DEFINING:
        d["train"].pop(k)
    if kind is not None:
        d.pop("kind_steps", None)
        d["train"]["steps"] = zoo.steps_for(kind, S)
        if kind != "mixture":       # only the mixture kind has components
            d["model"].pop("n_components", None)
    return d


#: Kinds whose training code changed what the same settings produce (in the key only when > 1,
#: so the other kinds' cached models stay valid): 2 = the matched DDPM's width search no longer
#: draws from the random state its initial weights are drawn from.
MODEL_VERSION = {"ddpm-matched": 2}


def model_key(zoo: ToyZoo, kind: str, S: int, seed: int) -> str:
    """A content key of one model: a hash of :func:`model_fields`, the kind, chain and seed (and
    the kind's :data:`MODEL_VERSION` when above 1)."""
    d = {"model": model_fields(zoo, kind, S), "kind": kind, "S": S, "seed": seed}
    if MODEL_VERSION.get(kind, 1) > 1:
        d["version"] = MODEL_VERSION[kind]
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def model_seed(kind: str, S: int, seed: int) -> int:
    """The training seed of one model (distinct per kind, chain and seed)."""
    return 1000 * seed + KINDS.index(kind) * 17 + S


#: The convergence rule's absolute tolerance on grid-KL curves (nats): the curve grid's node error
#: (see :class:`smdlab.convergence.LearningCurve`).
KL_ABS_TOL = 0.02


def primary_metric(zoo: ToyZoo, S: int) -> str:
    """The metric the convergence rule is applied to for a model trained on S steps."""
    if S <= 100 and zoo.target.dim == 2:
        return "kl"
    return "in_mode_share" if S > 100 else "nll_excess"


@torch.no_grad()
def curve_point(zoo: ToyZoo, kernel, chain: NoiseSchedule, seed: int, kl: bool = True,
                kl_route: str = "grid") -> dict:
    """One learning-curve evaluation of ``kernel`` against the exact target (fixed seed, its own
    generator only: the training's random streams are untouched, so resume stays bit-identical);
    ``kl=False`` leaves out the grid KL (see :func:`kl_evaluations`).
    """
    from ..global_error import grid_global_error
    from ..local_error import mixture_log_prob
    from ..metrics import mode_statistics
    from ..sampling import ancestral_sample

    mix = zoo.target.mixture()
    n = zoo.curve_samples
    g = torch.Generator().manual_seed(seed)
    x = ancestral_sample(kernel, torch.randn(n, zoo.target.dim, generator=g,
                                             dtype=torch.float64), chain, generator=g)
    share = float(mode_statistics(mix, x)["in_mode_share"])
    log_q = mixture_log_prob(mix, x)
    ref = mixture_log_prob(mix, mix.sample(n, g))
    # NLL excess = E_p[-log q] - H(q); its s.e. from both samples' spread.
    point = {"in_mode_share": share, "in_mode_share_se": math.sqrt(max(share * (1 - share), 1e-12) / n),
             "nll_excess": float(ref.mean() - log_q.mean()),
             "nll_excess_se": float(math.sqrt((log_q.var() + ref.var()) / n))}
    if kl and chain.T <= 100 and kl_route == "iw":
        # The mixture kernel's last-jump components can be far narrower than the curve grid's
        # spacing (a 10-step model: std 0.013 against 0.06), which the node rule cannot resolve;
        # its density is exact, so the importance-weighted upper bound of smdlab.path_kl is a
        # cheap, resolution-free estimate (with a standard error the rule uses).
        from .toy_eval import CURVE_IW, iw_score

        r = iw_score(mix, kernel, chain, CURVE_IW, seed)
        point.update(kl=float(r["kl"]), kl_se=float(r["kl_se"]), kl_resolved=float(r["converged"]))
    elif kl and chain.T <= 100 and zoo.target.dim == 2:
        # The evaluation's grid (curve_grid^2 nodes, curve_latent latent draws per node, no
        # refinement: a bounded cost), so that the curve follows the model, not the estimator;
        # its under-resolution warning is recorded as kl_resolved instead of printed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = grid_global_error(mix, kernel, chain, n_grid=zoo.curve_grid,
                                    n_latent=zoo.curve_latent, generator=g, refine=False)
        point["kl_resolved"] = float(bool(res.get("resolved", True)))
        point["kl"] = float(res["kl"])          # inf: no mass where q lives (never converged)
        if "kl_se" in res:                      # random latent draws: the jackknife's s.e.
            point["kl_se"] = float(res["kl_se"])
    return point


def kl_evaluations(zoo: ToyZoo, kind: str, eval_steps) -> set:
    """The evaluation steps at which the grid KL is computed: every one for the Gaussian kinds
    (a grid push of one Gaussian per node is cheap), the last ``zoo.curve_kl_last`` for the SMD
    kinds, whose push costs ``curve_latent`` Gaussians per node (the convergence rule reads only
    its window of final evaluations; 0: every evaluation)."""
    steps = sorted(eval_steps)
    if not kind.startswith("smd-") or zoo.curve_kl_last <= 0:
        return set(steps)
    return set(steps[-zoo.curve_kl_last:])


def train_one(zoo: ToyZoo, kind: str, S: int, seed: int, models_dir: Path) -> TrainedModel:
    """Train (or reload from the cache) one model; EMA snapshots and the learning curve are saved
    during training."""
    chain = zoo.chain(S)
    mix = zoo.target.mixture()
    key = model_key(zoo, kind, S, seed)
    run_dir = model_dir(zoo, kind, S, seed, models_dir)
    tseed = model_seed(kind, S, seed)
    torch.manual_seed(tseed)
    model, objective = build(zoo, kind, chain)
    steps = zoo.steps_for(kind, S)
    snap_steps = sorted({max(1, round(f * steps)) for f in zoo.snapshots})
    eval_steps = set(evaluation_steps(steps, zoo.n_evals)) if zoo.n_evals and steps else set()
    kl_steps = kl_evaluations(zoo, kind, eval_steps)
    curve_path = run_dir / "curve.json"
    primary = primary_metric(zoo, S)
    curve = LearningCurve(primary, rel_tol=0.05 if primary == "kl" else DEFAULT_REL_TOL,
                          abs_tol=KL_ABS_TOL if primary == "kl" else 0.0)
    if curve_path.exists():
        try:
            loaded = LearningCurve.from_dict(json.loads(curve_path.read_text()))
            loaded.rel_tol, loaded.abs_tol = curve.rel_tol, curve.abs_tol    # today's rule
            curve = loaded
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    mix32 = mix.to(dtype=torch.float32)

    def data(step, g):
        return mix32.sample(zoo.batch_size, g)

    def on_step(step, m, ema):
        if step in eval_steps and not any(p["step"] == step for p in curve.points):
            was = ema.training
            ema.eval()
            curve.points = [p for p in curve.points if p["step"] < step]
            curve.add(step, curve_point(zoo, ema, chain, 400 + tseed, kl=step in kl_steps,
                                        kl_route="iw" if kind == "mixture" else "grid"))
            ema.train(was)
            write_json(curve_path, curve.to_dict())
        if step in snap_steps:
            save_snapshot(run_dir / f"snap_{step:08d}.pt", ema, step)

    tc = dataclasses.replace(zoo.train, seed=tseed, steps=steps)
    res = train(model, objective, data, tc, run_dir=run_dir, callback=on_step,
                extra_config={"model": model_fields(zoo, kind, S), "kind": kind, "S": S},
                desc=f"{kind} S={S} seed={seed}")
    seconds = _training_seconds(run_dir, res)
    kernel = res.ema
    kernel.eval()
    snaps = {}
    for step in snap_steps:
        path = run_dir / f"snap_{step:08d}.pt"
        if step == steps:
            snaps[step] = kernel
        elif path.exists():
            k, _ = build(zoo, kind, chain)
            k.load_state_dict(load_snapshot(path))
            k.eval()
            snaps[step] = k
    return TrainedModel(kind, S, seed, kernel, key, snaps, res.log, count_parameters(kernel),
                        seconds, res.resumed_from == steps, run_dir, curve, steps)


def model_dir(zoo: ToyZoo, kind: str, S: int, seed: int, models_dir: Path) -> Path:
    """The run folder of one model under ``models_dir``."""
    return Path(models_dir) / f"{kind}-S{S}-seed{seed}-{model_key(zoo, kind, S, seed)}"


def trained_on_disk(zoo: ToyZoo, kind: str, S: int, seed: int, models_dir: Path) -> bool:
    """Whether the model's finished run (its last checkpoint) is in ``models_dir``: reloading
    it then needs no worker process (a damaged file is still handled, by :func:`train_one`)."""
    steps = zoo.steps_for(kind, S)
    return (model_dir(zoo, kind, S, seed, models_dir) / f"ckpt_{steps:08d}.pt").exists()


def save_snapshot(path: Path, ema, step: int) -> Path:
    """Write the EMA weights at ``step`` in the checksummed envelope of
    :mod:`smdlab.checkpoints` (atomic; verified on load)."""
    return save_checkpoint(path, {"step": int(step), "model": ema.state_dict(),
                                  "config": {"snapshot": True}})


def load_snapshot(path: Path) -> dict:
    """The EMA state dict of a snapshot; a corrupt file (or a raw torch.save of an older
    smdlab) is a :class:`~smdlab.checkpoints.CheckpointError` naming it."""
    return load_checkpoint(path)["model"]


def _training_seconds(run_dir: Path, res) -> float:
    """Wall seconds of the training behind ``res``: this call's time plus the time recorded by
    earlier calls that trained the same run (a pure reload adds nothing)."""
    path = run_dir / "timing.json"
    before = {"seconds": 0.0, "steps": 0}
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    trained = res.step - res.resumed_from
    if trained <= 0:
        return float(before.get("seconds", 0.0))
    total = {"seconds": float(before.get("seconds", 0.0)) + res.seconds,
             "steps": int(before.get("steps", 0)) + trained}
    write_json(path, total)
    return total["seconds"]


_MEMORY: dict = {}


def clear_memory_cache() -> None:
    """Forget the models held in this process (the disk cache stays)."""
    _MEMORY.clear()


def members(zoo: ToyZoo) -> list[tuple[str, int, int]]:
    """The models of ``zoo``: [(kind, S, seed index)], in the zoo's order."""
    return [(kind, S, i) for S in zoo.chains
            for i in (range(zoo.n_seeds) if S in zoo.seed_chains else range(1))
            for kind in zoo.kinds]


def toy_zoo(zoo: ToyZoo, out: Outputs, seed: int = 0, plan: dict | None = None) -> dict:
    """Every model of ``zoo`` with base seed ``seed``: {(kind, S, seed_index): TrainedModel},
    trained once and cached (in memory for this process, on disk under results/models/).

    plan: {(kind, S, seed index): evaluation requests} (:func:`.toy_eval.run_plan`): with
    ``zoo.workers > 1`` each worker scores its model right after training (or reloading) it, so
    that the experiments that ask for those evaluations later read them from the model's folder;
    the models without pending training or scores are not sent to a worker."""
    return toy_zoos([(zoo, seed, plan)], out)[0]


def toy_zoos(requests, out: Outputs, reference_requests=()) -> list[dict]:
    """:func:`toy_zoo` for several zoos at once, ``requests`` [(zoo, seed, plan)]: the models
    of all of them that need training or scores go to ONE pool of worker processes (the most
    ``workers`` any of the zoos asks for), longest first, so that the workers do not wait for
    one zoo's last model before starting the next zoo's (E10's mixture kernels train beside the
    shared zoo of E6-E9).  ``reference_requests`` (:func:`.toy_eval.run_reference_plan`) are
    scored by the same pool after the models (small jobs that fill its tail), and stored for
    the experiments that ask for them.  Returns one {(kind, S, seed_index): TrainedModel} per
    request."""
    models_dir = out.results / "models"
    jobs, plans, sent = [], {}, {}
    for zoo, seed, plan in requests:
        plan = plan or {}
        for k, S, i in members(zoo):
            mkey = (str(models_dir), model_key(zoo, k, S, seed + i))
            # To a worker: what needs training or scores; a finished run on disk is reloaded
            # here (a pool only to reload cost each experiment process ~15 s, measured).
            if (mkey not in _MEMORY and not trained_on_disk(zoo, k, S, seed + i, models_dir)) \
                    or plan.get((k, S, i)):
                reqs = plan.get((k, S, i), [])
                if mkey in sent:        # one model asked for by two zoos: one worker, both plans
                    have = plans[sent[mkey]]
                    have.extend(r for r in reqs if r not in have)
                    continue
                sent[mkey] = (repr(zoo), k, S, seed + i)
                jobs.append((zoo, k, S, seed + i))
                plans[sent[mkey]] = list(reqs)
    workers = max((zoo.workers for zoo, _, _ in requests), default=1)
    in_workers = set()
    if workers > 1 and len(jobs) > 1:
        done = _train_pool(jobs, models_dir, workers, plans, reference_requests)
        in_workers = {model_key(zoo, k, S, s) for zoo, k, S, s, trained in done if trained}
    results = []
    for zoo, seed, _ in requests:
        found = {}
        for kind, S, i in members(zoo):
            mkey = (str(models_dir), model_key(zoo, kind, S, seed + i))
            if mkey not in _MEMORY:
                _MEMORY[mkey] = train_one(zoo, kind, S, seed + i, models_dir)
                if mkey[1] in in_workers:    # trained just now, not found in the cache
                    _MEMORY[mkey].cached = False
            found[kind, S, i] = _MEMORY[mkey]
        results.append(found)
    return results


def unconverged_note(models: dict, S: int | None = None) -> str:
    """"; unconverged: ..." naming the models (of chain S, or all) whose learning curve fails the
    convergence rule, or "" when all converged: appended to every verdict built on them."""
    from .toy_config import LABELS

    bad = [f"{LABELS[tm.kind]} S={tm.S} seed {i}" for (k, s, i), tm in sorted(models.items())
           if (S is None or s == S) and not tm.converged]
    return f"; unconverged: {', '.join(bad)}" if bad else ""


def _worker_init():
    torch.set_num_threads(1)


def _pool_task(task):
    """One job of the first phase's pool: ("model", args of :func:`_train_in_worker`) or
    ("reference", (request, models_dir)) (:func:`.toy_eval.run_reference_plan`)."""
    if task[0] == "model":
        return _train_in_worker(task[1])
    from .toy_eval import run_reference_plan

    run_reference_plan(*task[1])
    return None


def _train_in_worker(args):
    zoo, kind, S, seed, models_dir, requests = args
    tm = train_one(zoo, kind, S, seed, Path(models_dir))
    if requests:
        from .toy_eval import run_plan

        run_plan(tm, zoo, requests)
    return kind, S, seed, not tm.cached


# Relative cost per step of each kind (measured, issue 10): the slowest models start first so
# that the two workers finish together.
_COST = {"ddpm": 1.0, "ddpm-matched": 1.3, "smd-jensen": 1.7, "smd-energy": 2.6,
         "smd-multisample": 4.0, "mixture": 1.6}


def _job_cost(zoo: ToyZoo, kind: str, S: int, requests) -> float:
    """A model's expected work in units of a DDPM training step (~6 ms on one thread): training
    (:data:`_COST`), then its planned scores (measured: a grid KL costs ~3 units per chain step
    of a Gaussian kernel and ~70 of a random-latent one, R = 8 pushes of 2 draws; samples of the
    1000-step chain ~700)."""
    cost = _COST.get(kind, 1.0) * (2.0 if S > 100 else 1.0) * zoo.steps_for(kind, S)
    for req in requests:
        if req[0] == "eval":
            cost += req[1] * (70 if kind.startswith("smd-") else 3) if req[3] else 700
        else:
            cost += 400
    return cost


def train_parallel(zoo: ToyZoo, jobs, models_dir: Path, workers: int,
                   plan: dict | None = None) -> list:
    """Train ``jobs`` [(kind, S, seed)] into ``models_dir`` with ``workers`` spawned processes of
    one thread each (longest first), each then scoring its model as ``plan[(kind, S, seed)]``
    asks (:func:`.toy_eval.run_plan`); returns [(kind, S, seed, trained now)]."""
    plan = plan or {}
    done = _train_pool([(zoo, k, S, s) for k, S, s in jobs], models_dir, workers,
                       {(repr(zoo), k, S, s): plan.get((k, S, s), [])
                        for k, S, s in jobs})
    return [(k, S, s, trained) for _, k, S, s, trained in done]


def _train_pool(jobs, models_dir: Path, workers: int, plans: dict,
                reference_requests=()) -> list:
    """jobs [(zoo, kind, S, seed)] (the zoos may differ), trained and scored (plans
    {(repr(zoo), kind, S, seed): requests}) by ``workers`` spawned processes, the costliest
    first (:func:`_job_cost`); returns [(zoo, kind, S, seed, trained now)], costliest first."""
    def requests(j):
        return plans.get((repr(j[0]), *j[1:]), [])

    jobs = sorted(jobs, key=lambda j: -_job_cost(j[0], j[1], j[2], requests(j)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_worker_init) as pool:
        tasks = [("model", (*j, str(models_dir), requests(j))) for j in jobs] + \
            [("reference", (r, str(models_dir))) for r in reference_requests]
        done = list(pool.map(_pool_task, tasks))[:len(jobs)]
    return [(zoo, *d) for (zoo, *_), d in zip(jobs, done)]
