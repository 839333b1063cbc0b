"""A generic, resumable training loop (any model, any loss, any data source).

    result = train(model, loss_fn, data, TrainConfig(steps=2000, seed=0), run_dir="runs/ddpm")

* ``loss_fn(model, batch, generator) -> loss`` (a scalar tensor) or ``(loss, {name: float})``;
  ``model`` is what was passed in (possibly DistributedDataParallel-wrapped).
* ``data(step, generator) -> batch``: a callable that draws the batch for ``step`` using only the
  given generator (so that saving the generator state is enough to resume it), or an iterator-like
  object with ``next_batch(step, generator)`` and ``state_dict()/load_state_dict()`` (its state is
  checkpointed too).
* One ``torch.Generator`` (on ``device``, seeded from ``config.seed + rank``) is threaded through
  data and loss; the global torch RNG state is saved too (dropout and friends).
* AdamW, linear warm-up, gradient clipping by global norm, an EMA of the weights through
  ``torch.optim.swa_utils.AveragedModel`` (buffers averaged too).
* Periodic checkpoints ``run_dir/ckpt_<step>.pt`` written atomically (temporary name + rename),
  holding model, optimizer, scheduler, EMA, generator and RNG states, the data state and the loss
  log, and a SHA-256 checksum of all of it that is verified on every load: a flipped bit anywhere
  in the file is a :class:`CheckpointError` naming the file, never a silently different run.
  Orphan temporary files of a killed run are removed when the next run starts.  A later call
  with the same ``run_dir`` resumes from the latest checkpoint automatically; the resumed run is
  bitwise identical to an uninterrupted one on CPU.
* What is compared on resume: every setting that changes the computation (the TrainConfig
  fields except ``steps``, ``progress``, ``checkpoint_every``, ``keep_checkpoints`` and
  ``log_every``), ``extra_config`` and ``data_fingerprint``.  A difference is a clear error.
  Raising ``steps`` extends a finished run under a constant learning rate: 30 steps then 40
  gives the weights of a straight 40-step run, bit for bit.  Under ``lr_schedule="cosine"`` the
  lr of every step depends on ``steps``, so a different ``steps`` on resume is refused (a
  :class:`CheckpointError` saying so); the same ``steps`` resumes bit-identically.
  Checkpoints load with ``torch.load(weights_only=True)`` only.
* Data a run trains on is identified by ``data_fingerprint``, e.g. ``fingerprint(images)``; any
  other setting that changes training but is not a TrainConfig field (a flip augmentation, the
  model's hyperparameters) goes in ``extra_config``::

      train(model, loss, data, config, run_dir=run_dir,
            extra_config={"flip": cfg.flip, "model": model_fields},
            data_fingerprint=fingerprint(train_images))

* A NaN/inf guard: a non-finite loss or gradient stops training with :class:`NonFiniteLossError`
  naming the step and the last good checkpoint: the newest file whose checksum verifies at that
  moment (never a corrupt one), which is never overwritten by bad weights.
* ``run_dir/log.json``: the loss log (mean loss per ``log_every`` steps), written with each
  checkpoint.
* For DistributedDataParallel: pass the wrapped model, ``rank`` (seeds differ per rank) and
  ``is_main_process`` (only it writes files); ``bf16=True`` autocasts the forward pass on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm  # the plain bar: tqdm.auto warns in kernels without ipywidgets

from .checkpoints import (  # noqa: F401  (CheckpointError, fingerprint: part of this API)
    CheckpointError,
    checkpoint_paths,
    clean_orphans,
    fingerprint,
    last_good_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .provenance import write_json

# Config fields that may change between an interrupted run and its resumption: none of them
# changes the weights (log_every only groups the loss log; images derive it from steps).
# ``steps`` is resumable only under a constant learning rate: a schedule that depends on the
# total (cosine) gives every step another lr when it changes (see :func:`resumable_changes`).
RESUMABLE_CHANGES = ("steps", "progress", "checkpoint_every", "keep_checkpoints", "log_every")
LR_SCHEDULES = ("constant", "cosine")
# Fields added after checkpoints were first written: a checkpoint without one was written with
# this value (so older runs still resume when the new field keeps its default).
_FIELD_DEFAULTS = {"lr_schedule": "constant", "lr_final": 0.1, "fused": False}
# (flush_denormal needs no entry: it is left out of the recorded config when off.)


def resumable_changes(config: dict) -> tuple[str, ...]:
    """The config fields that may differ on resume for a run with settings ``config``: all of
    :data:`RESUMABLE_CHANGES` under a constant lr; without ``steps`` under a schedule that
    depends on the total number of steps."""
    if config.get("lr_schedule", "constant") == "constant":
        return RESUMABLE_CHANGES
    return tuple(k for k in RESUMABLE_CHANGES if k != "steps")


def lr_factor(k: int, config: TrainConfig) -> float:
    """The learning-rate multiplier after ``k`` optimizer steps (LambdaLR's argument): a linear
    warm-up over ``warmup_steps``, then 1 (``"constant"``) or a cosine from 1 down to
    ``lr_final`` at step ``steps`` (``"cosine"``)."""
    warm = max(config.warmup_steps, 0)
    if warm > 0 and k < warm:
        return (k + 1) / warm
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.steps - warm, 1)
    frac = min(max(k + 1 - warm, 0) / span, 1.0)
    return config.lr_final + (1.0 - config.lr_final) * 0.5 * (1.0 + math.cos(math.pi * frac))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint was kept."""


@dataclass
class TrainConfig:
    """Optimisation settings (everything here is recorded in each checkpoint).

    steps: total optimizer steps; lr, weight_decay, adam_betas: AdamW; warmup_steps: linear
    warm-up of the learning rate; lr_schedule: ``"constant"`` (lr after the warm-up) or
    ``"cosine"`` (a cosine decay from lr to ``lr_final * lr`` at the last step; it depends on
    ``steps``, so a cosine run cannot be extended or resumed with other ``steps``); lr_final:
    the cosine's final lr as a fraction of lr; fused: torch's fused AdamW kernel (one kernel for
    all parameters: on CPU the optimizer step of the toy's MLP takes 0.5 ms instead of 1.9;
    the same update up to rounding, so it is part of the config); grad_clip: max global grad
    norm (None: no clipping);
    ema_decay: EMA decay per step; checkpoint_every: steps between checkpoints (0: only at the
    end); keep_checkpoints: how many recent checkpoints to keep; log_every: steps per log entry;
    seed: seeds the generator (and the global RNG); progress: show a tqdm bar; bf16: autocast the
    forward pass to bfloat16 on CUDA; flush_denormal: on CPU, flush subnormal floats to zero
    during each optimisation step (``torch.set_flush_denormal``; the learning-curve callback
    and checkpoint writes run with it off).  Subnormal numbers take a slow path on x86 CPUs:
    measured on the toy's SMD-multisample (batch 256, one thread), a step took 12 ms for the
    first 100 steps and 32 ms from step 200 on, and 12 ms throughout with the flush.  It changes
    the arithmetic (subnormals become 0), so it is part of the config (recorded only when on, so
    that runs started before it existed resume unchanged).  torch sets the flag for the calling
    thread only: with more intra-op threads the others keep subnormals (the lab's workers run
    one thread each); after train() the flag is off, whatever it was before.
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    progress: bool = False
    bf16: bool = False
    lr_schedule: str = "constant"
    lr_final: float = 0.1
    fused: bool = False
    flush_denormal: bool = False

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; got {self.lr_schedule!r}")
        if not 0 <= self.lr_final <= 1:
            raise ValueError(f"lr_final (a fraction of lr) must lie in [0, 1]; got {self.lr_final}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay}")
        if self.log_every < 1 or self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("need log_every >= 1, checkpoint_every >= 0, keep_checkpoints >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None; got {self.grad_clip}")
        self.adam_betas = tuple(self.adam_betas)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    model: the trained model (unwrapped from DDP); ema: the EMA copy (an nn.Module of the same
    class); log: list of {"step", "loss", ...} entries; step: the final step; resumed_from: the
    step the run resumed from (0 for a fresh run); run_dir; seconds: wall time of this call;
    steps_per_second: of this call.
    """

    model: nn.Module
    ema: nn.Module
    log: list[dict] = field(default_factory=list)
    step: int = 0
    resumed_from: int = 0
    run_dir: Path | None = None
    seconds: float = 0.0
    steps_per_second: float = 0.0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """The EMA of a model's parameters and buffers (the one EMA implementation of smdlab)."""
    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _config_dict(config: TrainConfig, extra: dict | None, data_fingerprint: str | None) -> dict:
    d = dataclasses.asdict(config)
    d["adam_betas"] = list(d["adam_betas"])
    if not d["flush_denormal"]:         # (off: the config of runs from before the option)
        d.pop("flush_denormal")
    if extra:
        d["extra"] = _plain(extra)
    if data_fingerprint is not None:
        d["data_fingerprint"] = str(data_fingerprint)
    return d


def _plain(x):
    """Config values as plain JSON-like Python (tuples -> lists), for comparison and storage."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    return str(x)


def _config_mismatch(saved: dict, current: dict) -> list[str]:
    saved = {**_FIELD_DEFAULTS, **saved}
    keys = sorted(set(saved) | set(current))
    free = resumable_changes(current)
    bad = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
           for k in keys if k not in free and saved.get(k) != current.get(k)]
    if "steps" not in free and saved.get("steps") != current.get("steps"):
        bad = [b if not b.startswith("steps:") else
               b + f" (lr_schedule={current.get('lr_schedule')!r} depends on the total number "
                   f"of steps: a run under it cannot be extended or shortened)" for b in bad]
    return bad


# ---------------------------------------------------------------------------- the loop
def train(model: nn.Module, loss_fn: Callable, data, config: TrainConfig, *,
          run_dir=None, device=None, rank: int = 0, is_main_process: bool = True,
          extra_config: dict | None = None, data_fingerprint: str | None = None,
          callback: Callable | None = None, desc: str = "train") -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps (resuming from run_dir if possible).

    Args:
        model: the module to train (may already be DDP-wrapped and on ``device``).
        loss_fn: ``loss_fn(model, batch, generator)`` -> loss or (loss, metrics dict).
        data: ``data(step, generator) -> batch`` or an object with ``next_batch``/``state_dict``/
            ``load_state_dict`` (see the module docstring).
        config: a :class:`TrainConfig`.
        run_dir: folder for checkpoints and log.json (None: nothing is written, no resume).
        device: where the model and generator live (default: the model's device).
        rank: process rank (offsets the seed); is_main_process: only then are files written.
        extra_config: every other setting that changes training (model and loss
            hyperparameters, augmentations such as a flip flag); stored in checkpoints and
            compared on resume.
        data_fingerprint: identifies the training data (:func:`fingerprint` of the loaded
            tensor); stored and compared on resume like extra_config.
        callback: called as ``callback(step, model, ema)`` after every optimizer step; it may
            raise (e.g. KeyboardInterrupt) to stop training, checkpoints already written stay.
        desc: the progress bar's label.
    """
    base = unwrap(model)
    if device is None:
        p = next(base.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if extra_config is not None and not isinstance(extra_config, dict):
        raise TypeError(f"extra_config must be a dict or None; got {type(extra_config).__name__}")
    if data_fingerprint is not None and not isinstance(data_fingerprint, str):
        raise TypeError(f"data_fingerprint must be a string (see fingerprint()); got "
                        f"{type(data_fingerprint).__name__}")
    cfg = _config_dict(config, extra_config, data_fingerprint)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and is_main_process:
        clean_orphans(run_dir)

    torch.manual_seed(config.seed + rank)
    gen = torch.Generator(device=device).manual_seed(config.seed + rank)
    opt = torch.optim.AdamW(base.parameters(), lr=config.lr, betas=config.adam_betas,
                            weight_decay=config.weight_decay,
                            **({"fused": True} if config.fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, config))
    ema = make_ema(model, config.ema_decay)
    log: list[dict] = []
    pending: list[float] = []       # losses of the current, not yet logged interval
    pending_metrics: dict[str, list[float]] = {}
    step = 0
    resumed_from = 0

    ckpt_path = latest_checkpoint(run_dir) if run_dir is not None else None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        bad = _config_mismatch(ckpt["config"], cfg)
        if bad:
            note = " (the training data differ)" if any(b.startswith("data_fingerprint")
                                                        for b in bad) else ""
            raise CheckpointError(f"cannot resume from {ckpt_path}: the config differs{note} "
                                  f"({'; '.join(bad)}); use another run_dir or the same config")
        if int(ckpt["step"]) > config.steps:
            raise CheckpointError(f"cannot resume from {ckpt_path}: it is at step {ckpt['step']}, "
                                  f"beyond steps={config.steps}; use another run_dir or "
                                  f"steps >= {ckpt['step']}")
        base.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["generator"].to(gen.get_state().device))
        # RNG states must be CPU byte tensors, whatever map_location moved them to.
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), device)
        if ckpt.get("data") is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(ckpt["data"])
        log = list(ckpt["log"])
        pending = list(ckpt["pending"])
        pending_metrics = {k: list(v) for k, v in ckpt.get("pending_metrics", {}).items()}
        step = resumed_from = int(ckpt["step"])

    def write(step_now: int):
        if run_dir is None or not is_main_process:
            return
        state = {
            "step": step_now, "config": cfg, "model": base.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": ema.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "data": data.state_dict() if hasattr(data, "state_dict") else None,
            "log": log, "pending": pending, "pending_metrics": pending_metrics,
        }
        save_checkpoint(run_dir / f"ckpt_{step_now:08d}.pt", state)
        for old in checkpoint_paths(run_dir)[:-config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        write_json(run_dir / "log.json", {"config": cfg, "step": step_now, "log": log})

    next_batch = data.next_batch if hasattr(data, "next_batch") else data
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if config.bf16 and device.type == "cuda" else contextlib.nullcontext())
    model.train()
    flush = config.flush_denormal and device.type == "cpu"
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, disable=not config.progress, desc=desc,
               leave=False)
    try:
        while step < config.steps:
            if flush:
                torch.set_flush_denormal(True)
            batch = next_batch(step, gen)
            with autocast:
                out = loss_fn(model, batch, gen)
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                _non_finite(f"loss is {loss_value}", step, run_dir)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in opt.param_groups[0]["params"] if p.grad is not None]
            if config.grad_clip is not None:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            else:
                gnorm = float(torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))) \
                    if params else 0.0
            if not math.isfinite(gnorm):
                _non_finite(f"gradient norm is {gnorm}", step, run_dir)
            opt.step()
            sched.step()
            ema.update_parameters(base)
            if flush:
                torch.set_flush_denormal(False)
            step += 1
            pending.append(loss_value)
            for k, v in metrics.items():
                pending_metrics.setdefault(k, []).append(float(v))
            if step % config.log_every == 0 or step == config.steps:
                entry = {"step": step, "loss": sum(pending) / len(pending),
                         "lr": sched.get_last_lr()[0]}
                entry.update({k: sum(v) / len(v) for k, v in pending_metrics.items()})
                log.append(entry)
                pending, pending_metrics = [], {}
                bar.set_postfix(loss=f"{entry['loss']:.4g}")
            bar.update(1)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) \
                    or step == config.steps:
                write(step)
            if callback is not None:
                callback(step, model, ema.module)
    finally:
        if flush:       # (an exception inside a step leaves it on otherwise)
            torch.set_flush_denormal(False)
        bar.close()
    if step == resumed_from and run_dir is not None and latest_checkpoint(run_dir) is None:
        write(step)   # a zero-step run still leaves a checkpoint of its initial state
    seconds = time.perf_counter() - t0
    model.eval()
    return TrainResult(base, ema.module, log, step, resumed_from, run_dir, seconds,
                       (step - resumed_from) / seconds if seconds > 0 else float("nan"))


def _non_finite(what: str, step: int, run_dir: Path | None):
    # Verified at the moment of failure: a file corrupted on disk since it was written is never
    # named as good.
    good = last_good_checkpoint(run_dir)
    if good is not None:
        where = f"the last good (verified) checkpoint is {good}"
    elif run_dir is not None and checkpoint_paths(run_dir):
        where = f"no checkpoint in {run_dir} verifies (all are corrupt)"
    else:
        where = "no checkpoint was written before it"
    raise NonFiniteLossError(f"training stopped at step {step + 1}: {what}; {where} "
                             f"(lower the learning rate, or clip gradients)")
