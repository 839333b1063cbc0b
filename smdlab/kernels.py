"""The reverse-kernel interface, and the oracle kernels of a Gaussian-mixture target.

A reverse kernel is p(x_s | x_t) for any pair of kept steps s < t of its schedule.

Step indices.  Every step in smdlab is a ROOT step: an index into ``schedule.root`` (the chain a
network is trained on), whatever sub-chain is being sampled.  A respaced schedule only says which
root steps are kept (``NoiseSchedule.original_steps``).  A kernel on a respaced schedule asked for a
jump between steps it does not keep is an error (:func:`smdlab.parameterization.root_jump`), so a
coarse chain's own index 5 can never be taken for root step 5.

Contract (what every kernel, oracle or learned, provides; tests/test_kernel_contract.py checks it):
  * ``schedule``: the NoiseSchedule whose kept steps t and s must be; ``dim``: the data dimension
    D (an int) or the data shape of image kernels; ``name``; ``is_gaussian``: True when
    ``distribution`` is a Gaussian (its local error is then closed form);
  * ``distribution(x_t, t, s, generator=None, n_latent=None)``: the step distribution of a batch
    x_t (N, D) (or (N, *shape)), an object with ``log_prob(x_s) -> (N,)``, ``sample(generator) ->
    (N, D)`` and ``mean() -> (N, D)`` over the flattened data: a
    :class:`~smdlab.distributions.Gaussian` for Gaussian kernels, a
    :class:`~smdlab.exact.MixturePosterior` for the exact kernel, a
    :class:`~smdlab.distributions.LatentMixture` (over ``n_latent`` latent draws) for latent kernels;
    or a ``torch.distributions`` object with batch shape (N,) and event shape (D,), e.g.
    ``Independent(Normal(loc, scale), 1)`` (see :mod:`smdlab.distributions` for what each
    operation needs of it);
  * ``step(x_t, t, s, generator=None, x0_hook=None) -> (distribution, x0_hat)``: what a sampler
    takes, the step distribution for one latent draw and the clean-point prediction it went through
    (None for kernels that do not step through one; ``x0_hook`` is then refused);
  * ``sample(x_t, t, s, generator=None) -> x_s``: one draw of ``step``'s distribution, x_t's shape
    and dtype;
  * ``denoise(x_t, t, eta=None, generator=None) -> x0_hat`` (x_t's shape, float64), where
    ``can_denoise``: the clean-point prediction D(x_t) (E[x_0 | x_t] for the oracles), what DDIM
    needs;
  * ``final_jump_variance(t)``: the variance the kernel uses on the jump t -> 0 (see the samplers'
    final-jump rule in :mod:`smdlab.sampling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .distributions import LatentMixture, sample_step
from .exact import BEST_GAUSSIAN_KINDS, MixturePosterior, best_gaussian_of, posterior_from_log_alpha_bars
from .mixture import GaussianMixture
from .parameterization import check_root_step, root_jump
from .schedules import NoiseSchedule


class ReverseKernel(ABC):
    """Base class of reverse kernels p(x_s | x_t); see the module docstring for the contract."""

    schedule: NoiseSchedule
    is_gaussian: bool = False
    can_denoise: bool = False
    name: str = "kernel"

    @abstractmethod
    def distribution(self, x_t: torch.Tensor, t: int, s: int,
                     generator: torch.Generator | None = None, n_latent: int | None = None):
        """The distribution of x_s given x_t (N, D) for root steps s < t."""

    def step(self, x_t: torch.Tensor, t: int, s: int, generator: torch.Generator | None = None,
             x0_hook=None):
        """(step distribution, x0_hat) of one reverse step; this default has no x0_hat."""
        if x0_hook is not None:
            raise ValueError(f"{self.name}: x0_hook needs a kernel that steps through a clean-point "
                             f"prediction (a learned denoiser); this one samples its step directly")
        return self.distribution(x_t, t, s, generator=generator, n_latent=1), None

    def sample(self, x_t: torch.Tensor, t: int, s: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_s (x_t's shape and dtype)."""
        dist, _ = self.step(x_t, t, s, generator)
        return sample_step(dist, generator).reshape(x_t.shape).to(x_t.dtype)

    def denoise(self, x_t: torch.Tensor, t: int, eta=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x0_hat = D(x_t) at root step t (x_t's shape, float64)."""
        raise NotImplementedError(f"{self.name} has no clean-point prediction (can_denoise is False)")

    def final_jump_variance(self, t: int) -> float:
        """The variance of the jump t -> 0 under the beta-tilde rule: the lab's clipped one
        (:meth:`NoiseSchedule.kernel_variance`); learned denoisers override it."""
        t = check_root_step(self.schedule, t, self.name)
        return self.schedule.root.kernel_variance(t, 0, "beta_tilde")

    def jump(self, t: int, s: int) -> tuple[int, int, float, float]:
        """(t, s, log abar_t, log abar_s) of a jump between kept ROOT steps (else ValueError)."""
        return root_jump(self.schedule, t, s, self.name)


class _MixtureOracle(ReverseKernel):
    """What the oracle kernels of a mixture share: the target and E[x_0 | x_t]."""

    can_denoise = True

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture, self.schedule = mixture, schedule
        self.dim = mixture.D

    def denoise(self, x_t, t, eta=None, generator=None):
        """E[x_0 | x_t] of the target (the Bayes-optimal clean-point prediction); eta is ignored."""
        t = check_root_step(self.schedule, t, self.name)
        if t == 0:
            raise ValueError(f"{self.name}: denoise needs a root step t >= 1; got t=0")
        x = x_t.reshape(x_t.shape[0], -1).to(self.mixture.dtype)
        lt = self.schedule.root.log_alpha_bars[t].item()
        return posterior_from_log_alpha_bars(self.mixture, x, lt, 0.0).mean().reshape(x_t.shape)

    def exact_step(self, x_t, t, s):
        """(t, s, q(x_s | x_t)): the validated root jump and the target's exact posterior at x_t,
        which every oracle kernel builds its step from."""
        t, s, lt, ls = self.jump(t, s)
        return t, s, posterior_from_log_alpha_bars(self.mixture, x_t, lt, ls)


class ExactKernel(_MixtureOracle):
    """The exact reverse transition q(x_s | x_t) of a mixture target: zero local error."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__(mixture, schedule)
        self.name = "exact"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        return self.exact_step(x_t, t, s)[2]


class BestGaussianKernel(_MixtureOracle):
    """The best single Gaussian for each step (see :func:`smdlab.exact.best_gaussian`).

    With ``kind="beta_tilde"`` or ``"beta"`` this is exactly what a perfectly trained DDPM with that
    fixed variance samples from: its mean is E[x_s | x_t].
    """

    is_gaussian = True

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, kind: str = "moment"):
        if kind not in BEST_GAUSSIAN_KINDS:
            raise ValueError(f"unknown best-Gaussian kind {kind!r}; choose one of {BEST_GAUSSIAN_KINDS}")
        super().__init__(mixture, schedule)
        self.kind = kind
        self.name = f"gaussian-{kind}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        t, s, post = self.exact_step(x_t, t, s)
        return best_gaussian_of(post, self.schedule.root, t, s, self.kind)


# ---------------------------------------------------------------------------- SMD's construction


class MixtureConstructionKernel(_MixtureOracle):
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
        super().__init__(mixture, schedule)
        self.variance = variance
        self.name = f"smd-construction({variance})"

    def step_variance(self, post: MixturePosterior, t: int, s: int) -> float:
        if isinstance(self.variance, str):
            return self.schedule.root.kernel_variance(t, s, self.variance)
        return float(self.variance) * post.eigvals.min().item()

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        t, s, post = self.exact_step(x_t, t, s)
        var = self.step_variance(post, t, s)
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


class SplicedKernel(ReverseKernel):
    """``base`` on every jump of its chain except those in ``jumps``, where ``other`` steps.

    A tool for attributing a chain's global error to its jumps: splice the exact kernel into a
    learned chain on one jump (what fixing that jump would gain), or a learned kernel into the
    exact chain (that jump's error alone).  ``jumps``: (t, s) pairs of root steps; both kernels
    must share the chain (``base.schedule``'s kept steps) and the data dimension.  The spliced
    kernel samples and reports its final-jump variance through whichever kernel takes the jump;
    it has no single clean-point prediction (``can_denoise`` False).
    """

    def __init__(self, base: ReverseKernel, other: ReverseKernel, jumps):
        jumps = {(int(t), int(s)) for t, s in jumps}
        if base.dim != other.dim:
            raise ValueError(f"spliced kernels must share the data dimension; got {base.dim} "
                             f"and {other.dim}")
        for t, s in jumps:           # both kernels must know every replaced jump
            base.jump(t, s)
            other.jump(t, s)
        self.base, self.other, self.jumps = base, other, jumps
        self.schedule, self.dim = base.schedule, base.dim
        self.name = f"{base.name} with {other.name} on {sorted(jumps, reverse=True)}"
        self.is_gaussian = base.is_gaussian and other.is_gaussian

    def _at(self, t: int, s: int) -> ReverseKernel:
        return self.other if (int(t), int(s)) in self.jumps else self.base

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        return self._at(t, s).distribution(x_t, t, s, generator=generator, n_latent=n_latent)

    def step(self, x_t, t, s, generator=None, x0_hook=None):
        return self._at(t, s).step(x_t, t, s, generator=generator, x0_hook=x0_hook)

    def sample(self, x_t, t, s, generator=None):
        return self._at(t, s).sample(x_t, t, s, generator=generator)

    def final_jump_variance(self, t: int) -> float:
        return self._at(t, 0).final_jump_variance(t)
