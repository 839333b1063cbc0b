"""Ancestral sampling over any (respaced) chain with any reverse kernel.

In the style of k-diffusion: the schedule is data, the kernel an opaque object that takes one
reverse step, and a per-step callback is the hook for measuring (the error lab scores every step
against the exact posterior through it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .kernels import ReverseKernel
from .schedules import NoiseSchedule


@dataclass
class StepInfo:
    """What the callback sees after each reverse step.

    index: the step i of the sampling chain (S down to 1); t, s: the root steps of the jump;
    x_t: the state before the step; x_s: the state after it; kernel, schedule: as passed.
    """

    index: int
    t: int
    s: int
    x_t: torch.Tensor
    x_s: torch.Tensor
    kernel: ReverseKernel
    schedule: NoiseSchedule


def chain_steps(kernel: ReverseKernel, schedule: NoiseSchedule | None = None) -> list[tuple[int, int]]:
    """The (t, s) root-step pairs of the sampling chain, from the noisiest jump to the last one."""
    schedule = kernel.schedule if schedule is None else schedule
    if not schedule.is_respacing_of(kernel.schedule):
        raise ValueError(f"sampling schedule {schedule.name} is not a respacing of the kernel's "
                         f"schedule {kernel.schedule.name}")
    steps = schedule.original_steps.tolist()
    return [(steps[i], steps[i - 1]) for i in range(len(steps) - 1, 0, -1)]


def prior_sample(n: int, dim, generator: torch.Generator | None = None,
                 dtype=torch.float64, device=None) -> torch.Tensor:
    """x_T ~ N(0, I): (n, dim) for an int dim, (n, *dim) for a shape."""
    shape = (n, dim) if isinstance(dim, int) else (n, *dim)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


@torch.no_grad()
def ancestral_sample(kernel: ReverseKernel, x_T: torch.Tensor, schedule: NoiseSchedule | None = None,
                     generator: torch.Generator | None = None,
                     callback: Callable[[StepInfo], None] | None = None,
                     progress: bool = False) -> torch.Tensor:
    """Run x_T down the chain of ``schedule`` (default: the kernel's own) and return x_0.

    Each jump t -> s of the chain is one ``kernel.sample`` call with root steps, the last one
    lands on step 0 (the data), and ``callback`` (if given) is called after every jump.
    """
    x = x_T
    pairs = chain_steps(kernel, schedule)
    sched = kernel.schedule if schedule is None else schedule
    for i, (t, s) in enumerate(tqdm(pairs, disable=not progress, desc=f"sampling {kernel.name}")):
        x_s = kernel.sample(x, t, s, generator=generator)
        if callback is not None:
            callback(StepInfo(len(pairs) - i, t, s, x, x_s, kernel, sched))
        x = x_s
    return x
