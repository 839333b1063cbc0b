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
  log.  A later call with the same ``run_dir`` resumes from the latest checkpoint automatically; the
  resumed run is bitwise identical to an uninterrupted one on CPU.  Resuming with a different
  config (``steps`` and ``progress`` may change) is a clear error; so is a corrupt checkpoint.
  Checkpoints load with ``torch.load(weights_only=True)``.
* A NaN/inf guard: a non-finite loss or gradient stops training with :class:`NonFiniteLossError`
  naming the step and the last good checkpoint, which is never overwritten by bad weights.
* ``run_dir/log.json``: the loss log (mean loss per ``log_every`` steps), written with each
  checkpoint.
* For DistributedDataParallel: pass the wrapped model, ``rank`` (seeds differ per rank) and
  ``is_main_process`` (only it writes files); ``bf16=True`` autocasts the forward pass on CUDA.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .provenance import atomic_write_bytes, write_json

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
# Config fields that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("steps", "progress", "checkpoint_every", "keep_checkpoints")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint was kept."""


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not belong to this run."""


@dataclass
class TrainConfig:
    """Optimisation settings (everything here is recorded in each checkpoint).

    steps: total optimizer steps; lr, weight_decay, adam_betas: AdamW; warmup_steps: linear
    warm-up of the learning rate; grad_clip: max global grad norm (None: no clipping);
    ema_decay: EMA decay per step; checkpoint_every: steps between checkpoints (0: only at the
    end); keep_checkpoints: how many recent checkpoints to keep; log_every: steps per log entry;
    seed: seeds the generator (and the global RNG); progress: show a tqdm bar; bf16: autocast the
    forward pass to bfloat16 on CUDA.
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

    def __post_init__(self):
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


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_paths(run_dir) -> list[Path]:
    """Checkpoints in run_dir, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    paths = checkpoint_paths(run_dir)
    return paths[-1] if paths else None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint (``weights_only=True``); a corrupt file is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable "
                              f"({type(e).__name__}: {e}); delete it to resume from an earlier "
                              f"one or start afresh") from e
    if not isinstance(ckpt, dict) or not {"step", "model", "config"} <= set(ckpt):
        raise CheckpointError(f"checkpoint {path} is not an smdlab training checkpoint")
    return ckpt


def save_checkpoint(path, state: dict) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _config_dict(config: TrainConfig, extra: dict | None) -> dict:
    d = dataclasses.asdict(config)
    d["adam_betas"] = list(d["adam_betas"])
    if extra:
        d["extra"] = _plain(extra)
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
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
            for k in keys if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


# ---------------------------------------------------------------------------- the loop
def train(model: nn.Module, loss_fn: Callable, data, config: TrainConfig, *,
          run_dir=None, device=None, rank: int = 0, is_main_process: bool = True,
          extra_config: dict | None = None, callback: Callable | None = None,
          desc: str = "train") -> TrainResult:
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
        extra_config: anything else defining the run (model and loss hyperparameters); stored in
            checkpoints and compared on resume.
        callback: called as ``callback(step, model, ema)`` after every optimizer step; it may
            raise (e.g. KeyboardInterrupt) to stop training, checkpoints already written stay.
        desc: the progress bar's label.
    """
    base = unwrap(model)
    if device is None:
        p = next(base.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    cfg = _config_dict(config, extra_config)
    run_dir = Path(run_dir) if run_dir is not None else None

    torch.manual_seed(config.seed + rank)
    gen = torch.Generator(device=device).manual_seed(config.seed + rank)
    opt = torch.optim.AdamW(base.parameters(), lr=config.lr, betas=config.adam_betas,
                            weight_decay=config.weight_decay)
    warm = max(config.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) if warm > 0 else 1.0)
    ema = make_ema(model, config.ema_decay)
    log: list[dict] = []
    pending: list[float] = []       # losses of the current, not yet logged interval
    pending_metrics: dict[str, list[float]] = {}
    step = 0
    resumed_from = 0
    last_good: Path | None = None

    ckpt_path = latest_checkpoint(run_dir) if run_dir is not None else None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        bad = _config_mismatch(ckpt["config"], cfg)
        if bad:
            raise CheckpointError(f"cannot resume from {ckpt_path}: the config differs "
                                  f"({'; '.join(bad)}); use another run_dir or the same config")
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
        last_good = ckpt_path

    def write(step_now: int):
        nonlocal last_good
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
        last_good = save_checkpoint(run_dir / f"ckpt_{step_now:08d}.pt", state)
        for old in checkpoint_paths(run_dir)[:-config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        write_json(run_dir / "log.json", {"config": cfg, "step": step_now, "log": log})

    next_batch = data.next_batch if hasattr(data, "next_batch") else data
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if config.bf16 and device.type == "cuda" else contextlib.nullcontext())
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, disable=not config.progress, desc=desc,
               leave=False)
    try:
        while step < config.steps:
            batch = next_batch(step, gen)
            with autocast:
                out = loss_fn(model, batch, gen)
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                _non_finite(f"loss is {loss_value}", step, last_good)
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
                _non_finite(f"gradient norm is {gnorm}", step, last_good)
            opt.step()
            sched.step()
            ema.update_parameters(base)
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
        bar.close()
    if step == resumed_from and run_dir is not None and latest_checkpoint(run_dir) is None:
        write(step)   # a zero-step run still leaves a checkpoint of its initial state
    seconds = time.perf_counter() - t0
    model.eval()
    return TrainResult(base, ema.module, log, step, resumed_from, run_dir, seconds,
                       (step - resumed_from) / seconds if seconds > 0 else float("nan"))


def _non_finite(what: str, step: int, last_good: Path | None):
    where = f"the last good checkpoint is {last_good}" if last_good else \
        "no checkpoint was written before it"
    raise NonFiniteLossError(f"training stopped at step {step + 1}: {what}; {where} "
                             f"(lower the learning rate, or clip gradients)")


def snapshot(model: nn.Module) -> nn.Module:
    """A deep copy of a module in eval mode (for evaluation snapshots during training)."""
    m = copy.deepcopy(unwrap(model))
    m.eval()
    return m
