"""The toy model zoo shared by E6, E7 and E8: build, train (once), cache and reload every model.

Models (one backbone, :class:`smdlab.nets.VectorMLP`; v-parameterisation, beta-tilde variance):
  * ``ddpm``: the Gaussian kernel, trained with the simple loss;
  * ``ddpm-matched``: the same with a wider backbone whose parameter count is within 5% of SMD's;
  * ``smd-jensen``: SMD with the paper's objective (one eta per example, regression loss);
  * ``smd-multisample``: SMD with the K-sample likelihood bound;
  * ``smd-energy``: SMD with the energy score on clean-point predictions.

:func:`toy_zoo` trains each model of a :class:`~.toy_config.ToyZoo` once and caches its checkpoint
(and EMA snapshots during training) under ``results/models/<kind>-S<S>-seed<seed>-<key>``, where
the key hashes exactly the settings that define the model (:func:`model_key`); later calls, in this
process or another, reload or resume them (see :mod:`smdlab.training`).  Training time is
recorded beside the checkpoint at the end of the training that produced it, so a reload reports
the original time, not the reload's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..denoisers import GaussianDenoiser, SMDDenoiser
from ..nets import VectorLatentGenerator, VectorMLP, count_parameters, matched_width
from ..objectives import Objective
from ..provenance import atomic_write_bytes, write_json
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


def _smd_parts(zoo: ToyZoo):
    m, D = zoo.model, zoo.target.dim
    net = VectorMLP(D, m.hidden, m.depth, time_dim=m.time_dim, T=zoo.T, latent_dim=m.latent_dim,
                    conditioning=m.conditioning, inner_dim=m.inner_dim)
    gen = VectorLatentGenerator(D, m.noise_dim, m.latent_dim, hidden=m.gen_hidden,
                                time_dim=max(m.time_dim // 2, 2), T=zoo.T)
    return net, gen


def matched_hidden(zoo: ToyZoo) -> int:
    """Backbone width of the capacity-matched DDPM (parameters within 5% of the SMD model's)."""
    m = zoo.model
    target_params = count_parameters(*_smd_parts(zoo))
    return matched_width(target_params, lambda w: VectorMLP(zoo.target.dim, w, m.depth,
                                                             time_dim=m.time_dim, T=zoo.T))


def build(zoo: ToyZoo, kind: str, chain: NoiseSchedule):
    """(model, objective) of a kind on a training chain."""
    m = zoo.model
    p, fv, D = m.parameterization, zoo.final_variance(), zoo.target.dim
    if kind in ("ddpm", "ddpm-matched"):
        width = m.hidden if kind == "ddpm" else matched_hidden(zoo)
        model = GaussianDenoiser(VectorMLP(D, width, m.depth, time_dim=m.time_dim, T=zoo.T),
                                 chain, D, p, name=kind, final_variance=fv)
        return model, Objective("jensen", chain)
    if kind.startswith("smd-"):
        net, gen = _smd_parts(zoo)
        model = SMDDenoiser(net, gen, chain, D, m.noise_dim, p, name=kind, final_variance=fv)
        obj = kind.removeprefix("smd-")
        n = {"jensen": 1, "multisample": m.n_multisample, "energy": m.n_energy}[obj]
        return model, Objective(obj, chain, n_samples=n)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")


# TrainConfig fields that do not change the trained weights (or are set per model).
_NOT_DEFINING = ("seed", "progress", "keep_checkpoints", "checkpoint_every")


def model_fields(zoo: ToyZoo) -> dict:
    """The settings that define a trained model of ``zoo`` (its chains, kinds and seed counts
    only say which models exist, so they stay out)."""
    d = dataclasses.asdict(zoo)
    for k in ("chains", "kinds", "n_seeds", "seed_chains"):
        d.pop(k)
    for k in _NOT_DEFINING:
        d["train"].pop(k)
    return d


def model_key(zoo: ToyZoo, kind: str, S: int, seed: int) -> str:
    """A content key of one model: a hash of :func:`model_fields`, the kind, chain and seed."""
    blob = json.dumps({"model": model_fields(zoo), "kind": kind, "S": S, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def model_seed(kind: str, S: int, seed: int) -> int:
    """The training seed of one model (distinct per kind, chain and seed)."""
    return 1000 * seed + KINDS.index(kind) * 17 + S


def train_one(zoo: ToyZoo, kind: str, S: int, seed: int, models_dir: Path) -> TrainedModel:
    """Train (or reload from the cache) one model; EMA snapshots are saved during training."""
    chain = zoo.chain(S)
    mix = zoo.target.mixture()
    key = model_key(zoo, kind, S, seed)
    run_dir = Path(models_dir) / f"{kind}-S{S}-seed{seed}-{key}"
    tseed = model_seed(kind, S, seed)
    torch.manual_seed(tseed)
    model, objective = build(zoo, kind, chain)
    steps = zoo.train.steps
    snap_steps = sorted({max(1, round(f * steps)) for f in zoo.snapshots})

    def data(step, g):
        return mix.sample(zoo.batch_size, g).float()

    def on_step(step, m, ema):
        if step in snap_steps:
            buf = io.BytesIO()
            torch.save(ema.state_dict(), buf)
            atomic_write_bytes(run_dir / f"snap_{step:08d}.pt", buf.getvalue())

    tc = dataclasses.replace(zoo.train, seed=tseed)
    res = train(model, objective, data, tc, run_dir=run_dir, callback=on_step,
                extra_config={"model": model_fields(zoo), "kind": kind, "S": S},
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
            k.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            k.eval()
            snaps[step] = k
    return TrainedModel(kind, S, seed, kernel, key, snaps, res.log, count_parameters(kernel),
                        seconds, res.resumed_from == steps, run_dir)


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


def toy_zoo(zoo: ToyZoo, out: Outputs, seed: int = 0) -> dict:
    """Every model of ``zoo`` with base seed ``seed``: {(kind, S, seed_index): TrainedModel},
    trained once and cached (in memory for this process, on disk under results/models/)."""
    models_dir = out.results / "models"
    found = {}
    for S in zoo.chains:
        seeds = range(zoo.n_seeds) if S in zoo.seed_chains else range(1)
        for i in seeds:
            for kind in zoo.kinds:
                mkey = (str(models_dir), model_key(zoo, kind, S, seed + i))
                if mkey not in _MEMORY:
                    _MEMORY[mkey] = train_one(zoo, kind, S, seed + i, models_dir)
                found[kind, S, i] = _MEMORY[mkey]
    return found
