"""GMS's reverse kernel (Guo et al., NeurIPS 2023) as an oracle: a two-component Gaussian mixture
per step and per dimension, fitted to the first three raw moments of the exact posterior's marginal
in that dimension.

As in GMS's public code, the first weight is fixed at GMS_WEIGHT = 1/3, the two means are free and
one shared variance scale multiplies a reference variance; the fit is a few dozen damped
Gauss-Newton iterations on the squared mismatch of raw moments 1-3 (:func:`gms_fit`;
:func:`gms_exact` is the closed-form answer where it exists).  It is one of the families of
:mod:`smdlab.families`.
"""

from __future__ import annotations

import math

import torch

from .distributions import LOG_2PI
from .exact import MixturePosterior
from .kernels import _MixtureOracle
from .mixture import GaussianMixture
from .schedules import NoiseSchedule

GMS_WEIGHT = 1.0 / 3.0


def posterior_raw_moments(post: MixturePosterior) -> torch.Tensor:
    """Per-dimension raw moments E[x^j | x_t], j = 1, 2, 3, of a mixture posterior: (3, N, D).

    Component k's marginal in dimension d is N(m_nkd, S_kdd): E x^2 = m^2 + S, E x^3 = m^3 + 3 m S.
    """
    m = post.means                                                    # (N, K, D)
    var = torch.diagonal(post.covariances, dim1=-2, dim2=-1)          # (K, D)
    w = post.weights[..., None]                                       # (N, K, 1)
    return torch.stack([(w * m).sum(1), (w * (m * m + var)).sum(1),
                        (w * (m ** 3 + 3 * m * var)).sum(1)])


def _mixture_moments(u1, u2, c, w1=GMS_WEIGHT):
    """Raw moments 1-3 of w1 N(u1, c) + (1 - w1) N(u2, c), and their derivatives in (u1, u2, c)."""
    w2 = 1 - w1
    m1 = w1 * u1 + w2 * u2
    m2 = w1 * u1 ** 2 + w2 * u2 ** 2 + c
    m3 = w1 * (u1 ** 3 + 3 * u1 * c) + w2 * (u2 ** 3 + 3 * u2 * c)
    one = torch.ones_like(u1)
    J = torch.stack([torch.stack([w1 * one, w2 * one, 0 * one], -1),
                     torch.stack([2 * w1 * u1, 2 * w2 * u2, one], -1),
                     torch.stack([3 * w1 * (u1 ** 2 + c), 3 * w2 * (u2 ** 2 + c), 3 * m1], -1)], -2)
    return torch.stack([m1, m2, m3], -1), J


def gms_fit(moments: torch.Tensor, iterations: int = 30, min_scale: float = 1e-3,
            weight: float = GMS_WEIGHT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GMS's per-dimension moment fit of weight N(mu_1, v) + (1 - weight) N(mu_2, v).

    Args:
        moments: (3, ...) target raw moments E x, E x^2, E x^3 (any batch shape, e.g. (3, N, D)).
        iterations: damped Gauss-Newton (Levenberg-Marquardt) iterations on the squared mismatch
            of the three raw moments (GMS's public code uses a few dozen first-order steps).
        min_scale: the shared variance is v = c * v_ref with v_ref the target's variance
            E x^2 - (E x)^2 and c in [min_scale, 1] (GMS's "variance scale times a reference").
    Returns (means (2, ...), variance (...), residual (...)): the two means, the shared
    variance and the final root-squared mismatch of the (standardised) moments.

    The fit runs on the standardised variable z = (x - E x) / sd (target moments 0, 1, skew
    gamma): one damping schedule then suits every step and dimension, and the loss is the raw-
    moment mismatch of z, a rescaling of the raw-moment mismatch of x.

    What the fixed weight 1/3 does: three moments, three free numbers (two means, one scale), so
    every target with |gamma| < 1/sqrt(2) is matched exactly, in closed form (:func:`gms_exact`):
    delta = mu_1 - mu_2 = -(27 gamma / 2)^(1/3) sd, v = Var - (2/9) delta^2.  It CANNOT represent:
    (i) a symmetric bimodal step (gamma = 0 gives delta = 0: a single Gaussian with the moment-
    matched variance, however far apart the two modes are); (ii) any step with |gamma| >= 1/sqrt(2)
    (the fit hits the variance floor and leaves a moment mismatch); (iii) kurtosis, more than two
    modes per axis, and every dependence between dimensions (the kernel is a product over them).
    """
    if moments.shape[0] != 3:
        raise ValueError(f"moments must be (3, ...) raw moments 1-3; got shape {tuple(moments.shape)}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer; got {iterations!r}")
    if not 0 < min_scale < 1:
        raise ValueError(f"min_scale must be in (0, 1); got {min_scale!r}")
    if not 0 < weight < 1 or weight == 0.5:
        raise ValueError(f"weight must be in (0, 1) and not 1/2 (then no skewness can be fitted); "
                         f"got {weight!r}")
    m1, m2, m3 = moments
    var = (m2 - m1 * m1).clamp_min(1e-300)
    sd = var.sqrt()
    k3 = m3 - 3 * m1 * m2 + 2 * m1 ** 3                  # third central moment
    gamma = k3 / sd ** 3
    target = torch.stack([torch.zeros_like(m1), torch.ones_like(m1), gamma], -1)
    # Start from a small split against the sign of the skew (delta = 0 is a saddle of the loss).
    a = -0.3 * torch.where(gamma < 0, -torch.ones_like(gamma), torch.ones_like(gamma))
    w1, w2 = weight, 1 - weight
    u1, u2 = -w2 / w1 * a, a
    c = (1 - w2 / w1 * a * a).clamp(min_scale, 1.0)      # total variance 1
    lam = torch.full_like(m1, 1e-3)
    eye = torch.eye(3, dtype=m1.dtype, device=m1.device)

    def loss(u1, u2, c):
        r = _mixture_moments(u1, u2, c, weight)[0] - target
        return (r * r).sum(-1)

    cur = loss(u1, u2, c)
    for _ in range(iterations):
        f, J = _mixture_moments(u1, u2, c, weight)
        r = f - target
        JtJ = J.transpose(-1, -2) @ J
        step = torch.linalg.solve(JtJ + lam[..., None, None] * (eye + torch.diag_embed(
            torch.diagonal(JtJ, dim1=-2, dim2=-1))), (J.transpose(-1, -2) @ r[..., None]))[..., 0]
        n1, n2 = u1 - step[..., 0], u2 - step[..., 1]
        nc = (c - step[..., 2]).clamp(min_scale, 1.0)
        new = loss(n1, n2, nc)
        better = new < cur
        u1, u2, c = (torch.where(better, n1, u1), torch.where(better, n2, u2),
                     torch.where(better, nc, c))
        cur = torch.where(better, new, cur)
        lam = torch.where(better, lam * 0.3, lam * 10).clamp(1e-12, 1e12)
    means = torch.stack([m1 + sd * u1, m1 + sd * u2])
    return means, c * var, cur.sqrt()


def gms_exact(mean: torch.Tensor, var: torch.Tensor, k3: torch.Tensor,
              weight: float = GMS_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form solution of :func:`gms_fit` when it exists: (means (2, ...), variance).

    With weights (w1, w2) and a shared variance, the third central moment is
    w1 w2 (w2 - w1) delta^3 (delta = mu_1 - mu_2) and the variance v + w1 w2 delta^2; so delta is
    a cube root and v = Var - w1 w2 delta^2, which is positive iff the skewness is small enough
    (|gamma| < 1/sqrt(2) for w1 = 1/3).  The returned variance is negative where no solution exists.
    """
    w1, w2 = weight, 1 - weight
    x = k3 / (w1 * w2 * (w2 - w1))
    delta = torch.sign(x) * x.abs() ** (1.0 / 3.0)
    mu2 = mean - w1 * delta
    return torch.stack([mu2 + delta, mu2]), var - w1 * w2 * delta ** 2


class ProductTwoMixture:
    """A product over D dimensions of two-component 1-D mixtures (GMS's kernel): the step
    distribution of N points.

    Args:
        means: (2, N, D) the two means per point and dimension; variance: (N, D) shared by both;
        weight: the first component's weight.
    Offers the step-distribution contract: ``log_prob(x) (N, D) -> (N,)``, ``sample``, ``mean``.
    """

    def __init__(self, means: torch.Tensor, variance: torch.Tensor, weight: float = GMS_WEIGHT):
        if means.ndim != 3 or means.shape[0] != 2 or variance.shape != means.shape[1:]:
            raise ValueError(f"need means (2, N, D) and variance (N, D); got {tuple(means.shape)} "
                             f"and {tuple(variance.shape)}")
        self.means, self.variance, self.weight = means, variance, weight
        self.N, self.D = variance.shape

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lw = torch.tensor([math.log(self.weight), math.log1p(-self.weight)],
                          dtype=x.dtype, device=x.device)[:, None, None]
        d = x[None] - self.means
        comp = -0.5 * (d * d / self.variance + LOG_2PI + self.variance.log())
        return torch.logsumexp(comp + lw, 0).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.N, self.D, dtype=self.variance.dtype, generator=generator,
                       device=self.variance.device)
        mu = torch.where(u < self.weight, self.means[0], self.means[1])
        eps = torch.randn(mu.shape, dtype=mu.dtype, generator=generator, device=mu.device)
        return mu + self.variance.sqrt() * eps

    def mean(self) -> torch.Tensor:
        return self.weight * self.means[0] + (1 - self.weight) * self.means[1]


class GMSKernel(_MixtureOracle):
    """GMS's two-component per-dimension kernel fitted to the exact posterior's moments 1-3.

    ``distribution`` returns a :class:`ProductTwoMixture`; ``last_residual`` holds the (N, D)
    standardised moment mismatch of the latest fit (0 where the moments are representable).
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, iterations: int = 30,
                 min_scale: float = 1e-3):
        super().__init__(mixture, schedule)
        self.iterations, self.min_scale = iterations, min_scale
        self.name = "gms"
        self.last_residual = None

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        t, s, post = self.exact_step(x_t, t, s)
        means, var, res = gms_fit(posterior_raw_moments(post), self.iterations, self.min_scale)
        self.last_residual = res
        return ProductTwoMixture(means, var)
