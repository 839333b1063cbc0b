"""Per-point reverse-step distributions that are not finite Gaussian mixtures with shared
covariances: a batch of Gaussians (what a DDPM kernel is) and an equally weighted mixture over
latent draws (what an SMD kernel is, estimated with L latent samples).

Every step distribution in smdlab offers ``log_prob(x) -> (N,)``, ``sample(generator) -> (N, D)``
and ``mean() -> (N, D)``;
the exact posterior (:class:`smdlab.exact.MixturePosterior`) follows the same contract.

A kernel may also return a ``torch.distributions`` object (or anything with its signatures:
``sample(sample_shape=torch.Size())``, ``rsample``, ``log_prob``, a ``mean`` property) whose batch
shape is (N,) and event shape (D,), e.g. ``Independent(Normal(loc, scale), 1)`` with loc (N, D) or
``MultivariateNormal(loc, covariance)``.  Three helpers make both kinds interchangeable:

  * :func:`sample_step` draws x_s from either kind.  torch.distributions take no generator: when
    one is given, a seed is drawn from it and the sample is taken inside
    ``torch.random.fork_rng`` seeded with it, so a run is reproducible from the generator alone
    and the global RNG is left untouched; with ``generator=None`` they draw from the global RNG
    (make such runs reproducible with ``torch.manual_seed``).
  * :func:`step_mean` gives the (N, D) mean of either kind (a method here, a property there).
  * :func:`as_gaussian` turns torch's Gaussians (``Independent(Normal, 1)``,
    ``MultivariateNormal``) into a :class:`Gaussian` (float64), which the closed-form local error
    and the grid push of the global error need; other objects come back unchanged.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import distributions as td

from . import fastmath

LOG_2PI = math.log(2 * math.pi)


class Gaussian:
    """A batch of N Gaussians in D dimensions.

    Args:
        mean: (N, D), kept as ``loc`` (``mean()`` returns it).
        covariance: (N, D, D) or (D, D) full covariance; or
        variance: isotropic variance, a float or an (N,) tensor.
    """

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor | None = None,
                 variance: float | torch.Tensor | None = None):
        _check_tensor(mean, "mean", 2, "(N, D)")
        if (covariance is None) == (variance is None):
            raise ValueError("give exactly one of covariance (full) or variance (isotropic)")
        self.loc = mean
        N, D = mean.shape
        self.D = D
        if covariance is not None:
            if not isinstance(covariance, torch.Tensor):
                raise TypeError(f"covariance must be a tensor; got {type(covariance).__name__}")
            cov = covariance.to(mean)
            if cov.ndim not in (2, 3) or cov.shape[-2:] != (D, D) or \
                    (cov.ndim == 3 and cov.shape[0] not in (1, N)):
                raise ValueError(f"covariance must be (N, D, D) or (D, D); got {tuple(cov.shape)}")
            if not fastmath.all_finite(cov):
                raise ValueError("covariance must be finite; got NaN or inf")
            self.covariance = cov.expand(N, D, D)
            self.variance = None
            self._chol = None
        else:
            self.variance = _check_variance(variance, mean, N)
            self.covariance = None

    def mean(self) -> torch.Tensor:
        """(N, D) means (a method, as on every step distribution; the tensor is ``loc``)."""
        return self.loc

    @property
    def isotropic(self) -> bool:
        return self.variance is not None

    def chol(self) -> torch.Tensor:
        if self._chol is None:
            L, info = torch.linalg.cholesky_ex(self.covariance)
            if (info != 0).any():
                # A moment-matched covariance can be numerically singular at tiny steps; jitter it.
                eps = 1e-12 * torch.diagonal(self.covariance, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
                L = torch.linalg.cholesky(self.covariance + eps[:, None, None] * torch.eye(
                    self.D, dtype=self.loc.dtype, device=self.loc.device))
            self._chol = L
        return self._chol

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d = x - self.loc
        if self.isotropic:
            v = self.variance
            return -0.5 * ((d * d).sum(-1) / v + self.D * (LOG_2PI + v.log()))
        L = self.chol()
        z = torch.linalg.solve_triangular(L, d[..., None], upper=False)[..., 0]
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * ((z * z).sum(-1) + logdet + self.D * LOG_2PI)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.loc.shape, dtype=self.loc.dtype, device=self.loc.device,
                          generator=generator)
        if self.isotropic:
            return self.loc + self.variance.sqrt()[:, None] * eps
        return self.loc + (self.chol() @ eps[..., None])[..., 0]

    def entropy(self) -> torch.Tensor:
        if self.isotropic:
            return 0.5 * self.D * (1 + LOG_2PI + self.variance.log())
        logdet = 2 * torch.diagonal(self.chol(), dim1=-2, dim2=-1).log().sum(-1)
        return 0.5 * (self.D * (1 + LOG_2PI) + logdet)

    def cross_entropy(self, q_mean: torch.Tensor, q_cov: torch.Tensor | None = None,
                      q_trace: torch.Tensor | None = None) -> torch.Tensor:
        """E_{x ~ q}[-log p(x)] for any q with mean (N, D) and covariance (N, D, D), in closed form.

        For an isotropic p only the trace of q's covariance is needed (pass q_trace to skip the
        full matrix).  With KL(q || p) = cross_entropy - H(q), this is how the local error of any
        Gaussian kernel is computed.
        """
        d = q_mean - self.loc
        if self.isotropic:
            tr = q_trace if q_trace is not None else torch.diagonal(q_cov, dim1=-2, dim2=-1).sum(-1)
            v = self.variance
            return 0.5 * (self.D * (LOG_2PI + v.log()) + (tr + (d * d).sum(-1)) / v)
        L = self.chol()
        z = torch.linalg.solve_triangular(L, d[..., None], upper=False)[..., 0]
        M = torch.linalg.solve_triangular(L, q_cov, upper=False)
        # tr(S^-1 C) = ||L^-1 C^{1/2}||_F^2; with M = L^-1 C, tr(L^-T M) = tr(S^-1 C).
        Linv_T_M = torch.linalg.solve_triangular(L.transpose(-1, -2), M, upper=True)
        tr = torch.diagonal(Linv_T_M, dim1=-2, dim2=-1).sum(-1)
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        return 0.5 * (self.D * LOG_2PI + logdet + tr + (z * z).sum(-1))


class LatentMixture:
    """p(x) = sum_l w_l N(x; means[:, l], variances[:, l] I): a latent-variable kernel seen through
    L latent draws (equal weights 1/L, one variance per point: an SMD kernel), or a finite
    Gaussian mixture with weights and a variance per component (a discrete-latent kernel, e.g.
    :class:`smdlab.mixture_kernel.MixtureDenoiser`, whose density is then exact).

    For latent draws ``log_prob`` is a log-mean-exp over the draws, a consistent estimate of the
    true log-density that is biased low for finite L (so a KL estimate built on it is biased high).

    Args:
        means: (N, L, D) kernel means, one per latent draw or component.
        variance: isotropic variance, a float, an (N,) tensor (shared by the L components) or an
            (N, L) tensor (one per component).
        log_weights: (N, L) log mixture weights (each row normalised: logsumexp 0), or None for
            equal weights 1/L.
    Attributes: ``variances`` (N, L) always; ``variance`` (N,) when the components share it,
    else None; ``log_weights`` (N, L) always; ``weighted``: whether weights were given.
    """

    def __init__(self, means: torch.Tensor, variance: float | torch.Tensor,
                 log_weights: torch.Tensor | None = None):
        _check_tensor(means, "means", 3, "(N, L, D)")
        self.means = means
        N, self.L, self.D = means.shape
        if self.L < 1:
            raise ValueError("means must hold at least one latent draw (L >= 1)")
        if isinstance(variance, torch.Tensor) and variance.ndim == 2:
            if tuple(variance.shape) != (N, self.L):
                raise ValueError(f"a per-component variance must be (N, L) = ({N}, {self.L}); got "
                                 f"{tuple(variance.shape)}")
            var = variance.to(means)
            if not fastmath.all_finite(var) or (var.numel() and var.amin() <= 0):
                raise ValueError("variance must be finite and positive")
            self.variance, self.variances = None, var
        else:
            self.variance = _check_variance(variance, means, N)
            self.variances = self.variance[:, None].expand(N, self.L)
        self.weighted = log_weights is not None
        if log_weights is None:
            self.log_weights = torch.full((N, self.L), -math.log(self.L), dtype=means.dtype,
                                          device=means.device)
        else:
            if not isinstance(log_weights, torch.Tensor) or tuple(log_weights.shape) != (N, self.L):
                raise ValueError(f"log_weights must be an (N, L) = ({N}, {self.L}) tensor; got "
                                 f"{getattr(log_weights, 'shape', type(log_weights).__name__)}")
            lw = log_weights.to(means)
            if torch.isnan(lw).any() or (lw == math.inf).any():
                raise ValueError("log_weights must not be NaN or +inf")
            norm = torch.logsumexp(lw, -1)
            if not torch.isfinite(norm).all() or (norm.abs() > 1e-6).any():
                raise ValueError("log_weights must be normalised per point (logsumexp 0)")
            self.log_weights = lw

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, None, :] - self.means
        v = self.variances
        comp = -0.5 * ((d * d).sum(-1) / v + self.D * (LOG_2PI + v.log()))
        if not self.weighted:
            return fastmath.logsumexp(comp, -1) - math.log(self.L)
        return fastmath.logsumexp(comp + self.log_weights, -1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        N = self.means.shape[0]
        dev = self.means.device
        if self.weighted:
            idx = torch.multinomial(self.log_weights.exp().to(torch.float64), 1,
                                    generator=generator)[:, 0]
        else:
            idx = torch.randint(self.L, (N,), generator=generator, device=dev)
        rows = torch.arange(N, device=dev)
        mu = self.means[rows, idx]
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        return mu + self.variances[rows, idx].sqrt()[:, None] * eps

    def mean(self) -> torch.Tensor:
        if not self.weighted:
            return self.means.mean(1)
        return (self.log_weights.exp()[..., None] * self.means).sum(1)


def _check_tensor(x, name: str, ndim: int, shape: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}; got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {shape}; got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one dimension D >= 1; got shape {tuple(x.shape)}")
    if not fastmath.all_finite(x):
        raise ValueError(f"{name} must be finite; got NaN or inf")


def _check_variance(variance, like: torch.Tensor, N: int) -> torch.Tensor:
    """An isotropic variance (a number or (N,) values) as an (N,) tensor: finite and positive."""
    try:
        var = torch.as_tensor(variance, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"variance must be a number or an (N,) tensor: {e}") from e
    if var.ndim != 0 and var.numel() != N:
        raise ValueError(f"variance must be a number or have N={N} values; got shape "
                         f"{tuple(var.shape)}")
    if not torch.isfinite(var).all() or (var <= 0).any():
        raise ValueError("variance must be finite and positive")
    return var.expand(N) if var.ndim == 0 else var.reshape(N)


# ---------------------------------------------------------------------- torch.distributions
def is_torch_style(dist) -> bool:
    """True for a torch.distributions object, or one whose ``sample`` takes ``sample_shape``."""
    if isinstance(dist, td.Distribution):
        return True
    try:
        params = list(inspect.signature(dist.sample).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return bool(params) and params[0] == "sample_shape"


def sample_step(dist, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw x_s (N, D) of a step distribution: smdlab's (``sample(generator)``) or torch's.

    A torch-style distribution takes no generator: with one, a 62-bit seed is drawn from it and
    ``dist.sample()`` runs inside ``torch.random.fork_rng`` seeded with it (reproducible from the
    generator; the global RNG state is restored afterwards); without one it uses the global RNG.
    """
    if not is_torch_style(dist):
        return dist.sample(generator)
    if generator is None:
        return dist.sample()
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return dist.sample()


def step_mean(dist) -> torch.Tensor:
    """The (N, D) mean of a step distribution (``mean()`` method or ``mean`` property)."""
    m = dist.mean
    return m() if callable(m) else m


def as_gaussian(dist):
    """A torch Gaussian step distribution as a float64 :class:`Gaussian`; anything else unchanged.

    Accepted: ``Independent(Normal(loc, scale), 1)`` (loc (N, D): a diagonal Gaussian, isotropic
    when every point's scales are equal) and ``MultivariateNormal`` with batch shape (N,).  A bare
    ``Normal`` with loc (N, D) has per-coordinate log-densities (N, D), not the (N,) of a step
    distribution: it raises a ValueError asking for ``Independent(Normal(...), 1)``.
    """
    if isinstance(dist, td.Independent) and isinstance(dist.base_dist, td.Normal) \
            and dist.reinterpreted_batch_ndims == 1:
        loc = dist.base_dist.loc.to(torch.float64)
        scale = dist.base_dist.scale.to(torch.float64).expand_as(loc)
        if loc.ndim != 2:
            raise ValueError(f"Independent(Normal) step distribution must have batch shape (N,) and "
                             f"event shape (D,); got loc of shape {tuple(loc.shape)}")
        var = scale * scale
        if bool((var == var[:, :1]).all()):
            return Gaussian(loc, variance=var[:, 0])
        return Gaussian(loc, covariance=torch.diag_embed(var))
    if isinstance(dist, td.MultivariateNormal):
        loc = dist.loc.to(torch.float64)
        if loc.ndim != 2:
            raise ValueError(f"MultivariateNormal step distribution must have batch shape (N,); "
                             f"got loc of shape {tuple(loc.shape)}")
        return Gaussian(loc, covariance=dist.covariance_matrix.to(torch.float64).expand(
            loc.shape[0], -1, -1))
    if isinstance(dist, td.Normal):
        raise ValueError(f"a bare Normal with loc of shape {tuple(dist.loc.shape)} is D independent "
                         "coordinates, not one step distribution over (N, D): wrap it as "
                         "torch.distributions.Independent(Normal(loc, scale), 1)")
    return dist
