"""Samplers over any (respaced) chain with any reverse kernel, for any data shape.

In the style of k-diffusion: a sampler is a small function of (kernel, x_T, chain); the chain is
data, the kernel an opaque object, and a per-step callback is the hook for measuring (the error lab
scores every step against the exact posterior through it, from the :class:`StepInfo` it is given,
without evaluating the kernel again).  x_T is (N, D) for vectors and (N, C, H, W) for images.

* :func:`ancestral_sample`: each jump t -> s draws from the kernel's own step distribution
  (``kernel.step``); on a respaced chain this is DDPM ancestral sampling on the sub-chain.
* :func:`ddim_sample` (Song et al. 2021, eq. 12; :mod:`smdlab.parameterization` (7)): from the
  kernel's clean-point prediction x0_hat = ``kernel.denoise(x_t, t)``,
  x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma xi with
  sigma^2 = eta^2 beta~(t, s).  eta = 0 is deterministic, eta = 1 is the ancestral step of a
  beta-tilde kernel (same mean and variance).

The final-jump rule (one rule, every kernel, both samplers): the last jump t_1 -> 0 is sampled like
every other jump; what its variance is belongs to the kernel (``kernel.final_jump_variance(t)``,
the denoisers' ``final_variance``, beta-tilde being exactly 0 there), never to the sampler.  No
sampler returns "the mean" of the last step: a kernel whose last step should be nearly
deterministic says so with a tiny final variance, and then its density and its samples agree.
DDIM takes eta^2 times the kernel's final-jump variance there (0 for eta = 0: x_0 = x0_hat).

Step distributions.  A kernel's step distribution may be smdlab's own (``sample(generator)``) or a
``torch.distributions`` object (``Independent(Normal(loc, scale), 1)``, ``MultivariateNormal``, a
mixture: anything with torch's ``sample(sample_shape)`` and ``log_prob``; batch shape (N,), event
shape (D,)).  torch.distributions take no generator; the samplers then draw a seed from
``generator`` and sample inside ``torch.random.fork_rng`` seeded with it
(:func:`smdlab.distributions.sample_step`), so the same generator seed gives the same chain and the
global RNG is untouched.  With ``generator=None`` they use the global RNG: seed it with
``torch.manual_seed`` for a reproducible run.

``x0_hook`` maps x0_hat before the step (clipping images to [-1, 1]); it needs a kernel that steps
through x0_hat (the learned denoisers; every kernel that can denoise under DDIM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm  # the plain bar: tqdm.auto warns in kernels without ipywidgets

from .distributions import Gaussian, sample_step
from .kernels import ReverseKernel
from .parameterization import ddim_mean, posterior_coefficients
from .schedules import NoiseSchedule


@dataclass
class StepInfo:
    """What the callback sees after each reverse step.

    index: the step i of the sampling chain (S down to 1); t, s: the root steps of the jump;
    x_t: the state before the step; x_s: the state after it (both the data's shape);
    distribution: the step distribution x_s was drawn from (over flattened data (N, D), with
    ``log_prob`` and ``sample``; its mean: :func:`smdlab.distributions.step_mean`, a method on
    smdlab's distributions, a property on torch's); x0_hat: the clean-point prediction the step went
    through (x_t's shape; None for kernels that sample their step directly, e.g. the exact one);
    kernel, schedule: as passed (schedule: the sampling chain).
    """

    index: int
    t: int
    s: int
    x_t: torch.Tensor
    x_s: torch.Tensor
    kernel: ReverseKernel
    schedule: NoiseSchedule
    distribution: Any = None
    x0_hat: torch.Tensor | None = None


class PointMass:
    """The deterministic step of DDIM with eta = 0: x_s = loc.  ``loc``: (N, D)."""

    def __init__(self, loc: torch.Tensor):
        self.loc = loc

    def mean(self) -> torch.Tensor:
        return self.loc

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loc

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("a deterministic (eta = 0) step is a point mass: it has no density")


def chain_steps(kernel: ReverseKernel, schedule: NoiseSchedule | None = None) -> list[tuple[int, int]]:
    """The (t, s) root-step pairs of the sampling chain, from the noisiest jump to the last one.

    ``schedule`` (default: the kernel's own) must be a respacing of the kernel's schedule whose
    steps are all kept steps of it.
    """
    schedule = kernel.schedule if schedule is None else schedule
    if not schedule.is_respacing_of(kernel.schedule):
        raise ValueError(f"sampling schedule {schedule.name} is not a respacing of the kernel's "
                         f"schedule {kernel.schedule.name}")
    steps = schedule.original_steps.tolist()
    missing = sorted(set(steps) - set(kernel.schedule.original_steps.tolist()))
    if missing:
        raise ValueError(f"sampling schedule {schedule.name} is not a respacing of the kernel's "
                         f"schedule {kernel.schedule.name}: root steps {missing[:5]} are not kept "
                         f"steps of it")
    return [(steps[i], steps[i - 1]) for i in range(len(steps) - 1, 0, -1)]


def prior_sample(n: int, dim, generator: torch.Generator | None = None,
                 dtype=torch.float64, device=None) -> torch.Tensor:
    """x_T ~ N(0, I): (n, dim) for an int dim, (n, *dim) for a shape."""
    shape = (n, dim) if isinstance(dim, int) else (n, *dim)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def _run(kernel, x_T, schedule, step, generator, callback, progress, desc) -> torch.Tensor:
    """The chain loop both samplers share: ``step(x, t, s) -> (distribution, x0_hat)``."""
    pairs = chain_steps(kernel, schedule)
    sched = kernel.schedule if schedule is None else schedule
    x = x_T
    for i, (t, s) in enumerate(tqdm(pairs, disable=not progress, leave=False,
                                    desc=f"{desc} {kernel.name}")):
        dist, x0 = step(x, t, s)
        x_s = sample_step(dist, generator).reshape(x.shape).to(x.dtype)
        if callback is not None:
            callback(StepInfo(len(pairs) - i, t, s, x, x_s, kernel, sched, dist, x0))
        x = x_s
    return x


@torch.no_grad()
def ancestral_sample(kernel: ReverseKernel, x_T: torch.Tensor, schedule: NoiseSchedule | None = None,
                     generator: torch.Generator | None = None,
                     callback: Callable[[StepInfo], None] | None = None,
                     x0_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = False) -> torch.Tensor:
    """Run x_T (N, D) or (N, *shape) down the chain of ``schedule`` (default: the kernel's own)
    and return x_0 (x_T's shape and dtype).

    Each jump t -> s is one draw of ``kernel.step`` with root steps (the last lands on 0, with the
    kernel's final-jump variance); ``callback`` (if given) gets a :class:`StepInfo` after each.
    """
    def step(x, t, s):
        return kernel.step(x, t, s, generator=generator, x0_hook=x0_hook)

    return _run(kernel, x_T, schedule, step, generator, callback, progress, "ancestral")


@torch.no_grad()
def ddim_sample(kernel: ReverseKernel, x_T: torch.Tensor, schedule: NoiseSchedule | None = None,
                eta: float = 0.0, generator: torch.Generator | None = None,
                callback: Callable[[StepInfo], None] | None = None,
                x0_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
                progress: bool = False) -> torch.Tensor:
    """DDIM with ``eta`` in [0, 1] over the chain of ``schedule`` (any kernel that can denoise).

    At each jump t -> s: x0_hat = x0_hook(kernel.denoise(x_t, t)), sigma^2 = eta^2 beta~(t, s)
    (eta^2 times the kernel's final-jump variance when s = 0) and the step of
    :func:`smdlab.parameterization.ddim_mean`; a point mass when sigma = 0.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"DDIM eta must be a number in [0, 1]; got {eta!r}")
    if not getattr(kernel, "can_denoise", False):
        raise ValueError(f"DDIM needs a kernel that can denoise; {kernel.name} cannot")

    def step(x, t, s):
        t, s, lt, ls = kernel.jump(t, s)
        x0 = kernel.denoise(x, t, generator=generator)
        if x0_hook is not None:
            x0 = x0_hook(x0)
        jump_var = kernel.final_jump_variance(t) if s == 0 else \
            posterior_coefficients(lt, ls)[2].item()
        var = eta ** 2 * jump_var
        x64 = x.to(torch.float64)
        mean = ddim_mean(x64, x0.to(x64), lt, ls, var).flatten(1)
        return (Gaussian(mean, variance=var) if var > 0 else PointMass(mean)), x0

    return _run(kernel, x_T, schedule, step, generator, callback, progress, f"ddim({eta:g})")
