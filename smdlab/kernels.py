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
from .schedules import NoiseSchedule


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
        t, s = int(t), int(s)
        if not 0 <= s < t <= root.T:
            raise ValueError(f"{self.name}: need 0 <= s < t <= T={root.T} (root steps); got t={t}, s={s}")
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


# ---------------------------------------------------------------------------- SMD's construction
# (Appended as one block, with its own imports, so that it stays separate from the kernel
# contract above.)
from .distributions import LatentMixture  # noqa: E402
from .exact import MixturePosterior  # noqa: E402


class MixtureConstructionKernel(ReverseKernel):
    """SMD's expressivity construction (paper, Prop. 4.1) as a latent reverse kernel.

    A latent z = (u, xi): u ~ U(0, 1) picks component k by the inverse CDF of the
    responsibilities r_k(x_t), xi ~ N(0, I) adds an offset with covariance
    (Sigma_k - sigma^2 I)_+ (the positive part, in Sigma_k's eigenbasis), and the step is
    N(mean_k(x_t) + offset, sigma^2 I).  Integrated over z this is the mixture of N(mean_k,
    Sigma_k with eigenvalues raised to at least sigma^2): the exact posterior whenever
    sigma^2 <= the smallest eigenvalue of every posterior component covariance, a floor
    otherwise (E5 measures both sides; see :mod:`smdlab.experiments.e5_smd_expressivity`).

    Args:
        mixture, schedule: the target and the root schedule.
        variance: the isotropic step variance sigma^2: ``"beta_tilde"`` or ``"beta"`` (the DDPM
            choices, :meth:`NoiseSchedule.kernel_variance`), or a float rho meaning
            rho x (smallest eigenvalue of the jump's posterior component covariances).
    ``distribution(..., n_latent=None)`` integrates the latent exactly (a mixture with floored
    eigenvalues); ``n_latent=L`` draws L latents per point (u stratified, xi Gaussian) and returns
    a LatentMixture, which is what any sampled latent kernel offers.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, variance="beta_tilde"):
        if not (variance in ("beta_tilde", "beta") or isinstance(variance, (int, float))):
            raise ValueError(f"variance must be 'beta_tilde', 'beta' or a positive ratio; got "
                             f"{variance!r}")
        if isinstance(variance, (int, float)) and variance <= 0:
            raise ValueError(f"variance ratio must be positive; got {variance}")
        self.mixture, self.schedule, self.variance = mixture, schedule, variance
        self.dim = mixture.D
        self.name = f"smd-construction({variance})"

    def step_variance(self, post: MixturePosterior, t: int, s: int) -> float:
        if isinstance(self.variance, str):
            return self.schedule.root.kernel_variance(t, s, self.variance)
        return float(self.variance) * post.eigvals.min().item()

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        lt, ls = self._log_alpha_bars(t, s)
        post = posterior_from_log_alpha_bars(self.mixture, x_t, lt, ls)
        var = self.step_variance(post, int(t), int(s))
        floored = post.eigvals.clamp_min(var)
        if n_latent is None:
            return MixturePosterior(post.x_t, post.log_weights, post.gain, post.offset, floored,
                                    post.eigvecs, post.axis_aligned)
        N, L, D = post.N, int(n_latent), post.D
        # u stratified over [0, 1): (l + U) / L, then k = inverse CDF of r(x_t).
        u = (torch.arange(L, dtype=x_t.dtype) + torch.rand(N, 1, dtype=x_t.dtype,
                                                            generator=generator)) / L
        cdf = post.weights.cumsum(-1)
        k = torch.searchsorted(cdf, u.contiguous()).clamp_max(post.K - 1)           # (N, L)
        extra = (post.eigvals - var).clamp_min(0.0).sqrt()                          # (K, D)
        xi = torch.randn(N, L, D, dtype=x_t.dtype, generator=generator) * extra[k]
        if not post.axis_aligned:
            xi = torch.einsum("nlij,nlj->nli", post.eigvecs[k], xi)
        means = torch.gather(post.means, 1, k[..., None].expand(N, L, D)) + xi
        return LatentMixture(means, var)
