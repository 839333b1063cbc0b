"""The reverse-kernel interface, and the oracle kernels of a Gaussian-mixture target.

A reverse kernel is p(x_s | x_t) for any pair of steps s < t of its schedule's *root* chain.
Samplers hand it root-step indices (a respaced chain translates its steps through
``NoiseSchedule.original_steps``), so a network trained on the T-step indices always sees the
index it was trained on, whichever sub-chain it is sampled on.

Contract (what every kernel, oracle or learned, provides):
  * ``schedule``: the NoiseSchedule whose root indexes t and s;
  * ``dim``: the data dimension D (or an image shape for image kernels);
  * ``sample(x_t, t, s, generator=None) -> x_s``: one reverse step for a batch x_t (N, D);
  * ``distribution(x_t, t, s, generator=None, n_latent=None)``: the step distribution, an object
    with ``log_prob(x_s) -> (N,)`` and ``sample(generator) -> (N, D)``: a
    :class:`~smdlab.distributions.Gaussian` for Gaussian kernels, a
    :class:`~smdlab.exact.MixturePosterior` for the exact kernel, a
    :class:`~smdlab.distributions.LatentMixture` (over ``n_latent`` latent draws) for latent kernels.
  * ``is_gaussian``: True when ``distribution`` is a Gaussian (its local error is then closed form).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .exact import BEST_GAUSSIAN_KINDS, best_gaussian_of, posterior_from_log_alpha_bars
from .mixture import GaussianMixture
from .schedules import NoiseSchedule, check_jump


class ReverseKernel(ABC):
    """Base class of reverse kernels p(x_s | x_t); see the module docstring for the contract."""

    schedule: NoiseSchedule
    is_gaussian: bool = False
    name: str = "kernel"

    @abstractmethod
    def distribution(self, x_t: torch.Tensor, t: int, s: int,
                     generator: torch.Generator | None = None, n_latent: int | None = None):
        """The distribution of x_s given x_t (N, D) for root steps s < t."""

    def sample(self, x_t: torch.Tensor, t: int, s: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_s."""
        return self.distribution(x_t, t, s, generator=generator, n_latent=1).sample(generator)

    def _log_alpha_bars(self, t: int, s: int) -> tuple[float, float]:
        root = self.schedule.root
        t, s = check_jump(t, s, root.T)   # integers with 0 <= s < t <= T (root steps)
        return root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()


class ExactKernel(ReverseKernel):
    """The exact reverse transition q(x_s | x_t) of a mixture target: zero local error."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture, self.schedule = mixture, schedule
        self.dim = mixture.D
        self.name = "exact"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        lt, ls = self._log_alpha_bars(t, s)
        return posterior_from_log_alpha_bars(self.mixture, x_t, lt, ls)


class BestGaussianKernel(ReverseKernel):
    """The best single Gaussian for each step (see :func:`smdlab.exact.best_gaussian`).

    With ``kind="beta_tilde"`` or ``"beta"`` this is exactly what a perfectly trained DDPM with that
    fixed variance samples from: its mean is E[x_s | x_t].
    """

    is_gaussian = True

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, kind: str = "moment"):
        if kind not in BEST_GAUSSIAN_KINDS:
            raise ValueError(f"unknown best-Gaussian kind {kind!r}; choose one of {BEST_GAUSSIAN_KINDS}")
        self.mixture, self.schedule, self.kind = mixture, schedule, kind
        self.dim = mixture.D
        self.name = f"gaussian-{kind}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        lt, ls = self._log_alpha_bars(t, s)
        post = posterior_from_log_alpha_bars(self.mixture, x_t, lt, ls)
        return best_gaussian_of(post, self.schedule.root, int(t), int(s), self.kind)
