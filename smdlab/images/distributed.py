"""torch.distributed for image training: one process per device (torchrun), DDP, rank-0 writes.

Launch with ``torchrun --nproc_per_node N -m smdlab.images ...`` (or several nodes with
``--nnodes``/``--rdzv-endpoint``): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous,
and :func:`init_distributed` joins the group with ``nccl`` on CUDA and ``gloo`` on the CPU.  Without
those variables everything runs in one process and nothing changes.  Only the main process (rank
0) writes checkpoints, samples, figures and results; the others train and wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """rank, world_size, local_rank, device, and whether this process writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device.

    device: "cpu", "cuda" or None (CUDA when available).  With CUDA each process takes the GPU
    of its LOCAL_RANK.  backend defaults to nccl on CUDA, gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device == "cuda") or (device is None and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", local % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return DistInfo(rank, world, local, dev)


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """The model on its device, DDP-wrapped when running distributed."""
    model = model.to(info.device)
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
