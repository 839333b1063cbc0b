"""Training an image model: the batches, the call into :func:`smdlab.training.train`, timing.

:func:`smdlab.training.train` does the optimisation (AdamW, EMA, clipping, atomic checkpoints and
resume, NaN guard, JSON log); this module supplies what is specific to images and to
DistributedDataParallel:

* :class:`ImageBatches` draws each step's batch (and, by reseeding the training generator, all of
  the step's noise) from a seed that is a function of (seed, rank, step) only.  So every rank sees
  different data, and a resumed run, on any rank, repeats exactly what the uninterrupted run would
  have done (the training loop checkpoints only rank 0's generator, which is then not needed).
* :func:`train_image_model` wraps the model in DDP when distributed (rank 0 writes), runs the loop
  and measures the median train step time (and peak CUDA memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..training import TrainConfig, TrainResult, train
from .distributed import DistInfo, barrier, wrap

_MIX = 0x9E3779B97F4A7C15


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (seed, rank, step), well spread (so neighbouring steps are unrelated)."""
    h = (seed * 1_000_003 + rank) * _MIX + step * 0xBF58476D1CE4E5B9
    h ^= h >> 31
    return (h * 0x94D049BB133111EB) & ((1 << 63) - 1)


@dataclass
class ImageBatches:
    """``batches(step, generator) -> (B, C, H, W)``: a uniform random batch (with replacement) of
    ``images`` (on the training device), each image flipped left-right with probability 1/2 when
    ``flip``; reseeds ``generator`` from (seed, rank, step) first."""

    images: torch.Tensor
    batch_size: int
    seed: int = 0
    rank: int = 0
    flip: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")

    def __call__(self, step: int, generator: torch.Generator) -> torch.Tensor:
        generator.manual_seed(step_seed(self.seed, self.rank, step))
        dev = self.images.device
        idx = torch.randint(self.images.shape[0], (self.batch_size,), generator=generator,
                            device=dev)
        x = self.images[idx]
        # channels-last storage (and not also plain-contiguous, as one-channel images are): keep it
        if self.images.dim() == 4 and not self.images.is_contiguous() and \
                self.images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        if self.flip:
            flip = torch.rand(self.batch_size, generator=generator, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


@dataclass
class ImageTrainResult:
    """The training loop's result plus measured cost: median seconds per train step (after
    warm-up), peak CUDA memory in MiB (None on the CPU), and the parameter count."""

    result: TrainResult
    step_seconds: float
    peak_memory_mib: float | None
    parameters: int


def train_image_model(model: nn.Module, objective, images: torch.Tensor, config: TrainConfig, *,
                      batch_size: int = 64, flip: bool = False, run_dir=None,
                      info: DistInfo | None = None, extra_config: dict | None = None,
                      desc: str = "train", callback=None) -> ImageTrainResult:
    """Train ``model`` (a denoiser) with ``objective`` on ``images`` (N, C, H, W).

    The per-process batch is ``batch_size`` (the global batch is batch_size x world size).  With
    ``info.distributed`` the model is DDP-wrapped; only rank 0 writes checkpoints to ``run_dir``.
    ``callback(step, model, ema)`` runs after every step (e.g. a learning-curve evaluation); its
    time is left out of the measured step time.
    """
    info = info or DistInfo()
    net = wrap(model, info)
    data = ImageBatches(images.to(info.device), batch_size, config.seed, info.rank, flip)
    stamps: list[float] = []
    paused = [0.0]     # seconds spent in ``callback``, not training

    def clock(step, m, ema):
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        stamps.append(time.perf_counter() - paused[0])
        if callback is not None:
            t0 = time.perf_counter()
            callback(step, m, ema)
            paused[0] += time.perf_counter() - t0

    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    res = train(net, objective, data, config, run_dir=run_dir, device=info.device, rank=info.rank,
                is_main_process=info.is_main, extra_config=extra_config, callback=clock,
                desc=desc)
    barrier(info)
    diffs = sorted(b - a for a, b in zip(stamps[2:], stamps[3:]))
    step_s = diffs[len(diffs) // 2] if diffs else (res.seconds / max(res.step - res.resumed_from,
                                                                     1))
    peak = (torch.cuda.max_memory_allocated(info.device) / 2 ** 20
            if info.device.type == "cuda" else None)
    n_params = sum(p.numel() for p in res.model.parameters())
    return ImageTrainResult(res, step_s, peak, n_params)
