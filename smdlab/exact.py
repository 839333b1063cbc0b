"""Exact diffusion quantities of a Gaussian-mixture target.

For q(x_0) = sum_k w_k N(m_k, C_k) with C_k = U_k diag(l_k) U_k^T and a jump s < t with
a^2 = abar_t / abar_s and b = 1 - abar_t / abar_s, everything is diagonal in each component's
eigenbasis (SMD.md, "Gaussian-mixture targets"):

  q(x_t)        = sum_k w_k N(sqrt(abar_t) m_k, U_k diag(q_k) U_k^T),   q_k = abar_t l_k + 1 - abar_t
  q(x_s | x_t)  = sum_k r_k(x_t) N(mean_k(x_t), U_k diag(b p_k / q_k) U_k^T),
                  p_k = abar_s l_k + 1 - abar_s (component variance at time s; note q_k = a^2 p_k + b),
                  mean_k(x_t) = sqrt(abar_s) m_k + U_k diag(a p_k / q_k) U_k^T (x_t - sqrt(abar_t) m_k),
                  r_k(x_t) = softmax_k(log w_k + log N(x_t; sqrt(abar_t) m_k, U_k diag(q_k) U_k^T)).

The covariance is written b p / q rather than P - a^2 P Q^-1 P, so it never cancels catastrophically
when the step is small; responsibilities are softmaxes of log-densities, so widely separated modes
(1e4) and tiny component variances (1e-8) stay finite.  All work is batched over points; the only
Python loop is over components, when sampling with full covariances.
"""

from __future__ import annotations

import math

import torch

from . import fastmath
from .distributions import LOG_2PI, Gaussian
from .mixture import GaussianMixture, check_points
from .parameterization import check_root_step, eps_from_score, root_jump
from .schedules import NoiseSchedule, as_integer

BEST_GAUSSIAN_KINDS = ("moment", "isotropic", "beta_tilde", "beta")


def marginal(mixture: GaussianMixture, schedule: NoiseSchedule, t: int) -> GaussianMixture:
    """q(x_t) as a GaussianMixture; t is a ROOT step (a kept step of ``schedule``; 0 gives the
    target)."""
    _check_mixture(mixture)
    t = check_root_step(schedule, t, "marginal")
    return diffused_mixture(mixture, schedule.root.log_alpha_bars[t].item())


def diffused_mixture(mixture: GaussianMixture, log_ab: float, extra: float = 0.0) -> GaussianMixture:
    """q(x_t) for log abar_t = ``log_ab``: every component N(sqrt(abar) m_k, abar C_k + (1 - abar) I),
    with ``extra`` added to the isotropic part (an importance proposal's widening)."""
    ab, add = math.exp(log_ab), -math.expm1(log_ab) + extra
    cov = ab * mixture.compact_covariances()
    if mixture.kind == "full":
        cov = cov + add * torch.eye(mixture.D, dtype=mixture.dtype, device=mixture.device)
    else:
        cov = cov + add
    return GaussianMixture(mixture.weights, math.sqrt(ab) * mixture.means, cov,
                           covariance_type=mixture.kind, dtype=mixture.dtype, device=mixture.device)


class MixturePosterior:
    """A batch of N Gaussian mixtures with per-point weights and means and shared covariances.

    Represents q(x_s | x_t) (or q(x_0 | x_t)) for N points x_t.  The component means are affine in
    x_t: in component k's eigenbasis, mean_nk = gain_k * (U_k^T x_t)_n + offset_k.  They are only
    materialised on request (``eig_means``, ``means``); ``log_prob`` works block by block from the
    affine form, so the (N, K, D) intermediates stay in cache.

    Attributes:
        log_weights, weights: (N, K) responsibilities r_k(x_t).
        eigvals: (K, D) eigenvalues of the component covariances; eigvecs: (K, D, D).
        gain, offset: (K, D) the affine map from x_t to the means, in each eigenbasis.
        covariances: (K, D, D).
    """

    def __init__(self, x_t, log_weights, gain, offset, eigvals, eigvecs, axis_aligned: bool):
        self.x_t = x_t
        self.log_weights = log_weights
        self.gain, self.offset = gain, offset
        self.eigvals = eigvals
        self.eigvecs = eigvecs
        self.axis_aligned = axis_aligned
        self.N, self.D = x_t.shape
        self.K = eigvals.shape[0]
        self._eig_means = None
        self._means = None

    @property
    def eig_means(self) -> torch.Tensor:
        """(N, K, D) component means in each component's eigenbasis."""
        if self._eig_means is None:
            u_x = _project(self.x_t, self.eigvecs, self.axis_aligned)
            self._eig_means = self.gain * u_x + self.offset
        return self._eig_means

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    @property
    def means(self) -> torch.Tensor:
        """(N, K, D) component means in the original coordinates."""
        if self._means is None:
            self._means = _rotate_back(self.eig_means, self.eigvecs, self.axis_aligned)
        return self._means

    @property
    def covariances(self) -> torch.Tensor:
        """(K, D, D) component covariances (shared by all points)."""
        return (self.eigvecs * self.eigvals[:, None, :]) @ self.eigvecs.transpose(-1, -2)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x_n; mean_nk, Sigma_k) as (N, K) for x of shape (N, D)."""
        self._check(x)
        U, aa, inv_e = self.eigvecs, self.axis_aligned, 1.0 / self.eigvals
        const = self.eigvals.log().sum(-1) + self.D * LOG_2PI

        def block(xb, xtb):
            return -0.5 * (self._maha(xb, xtb, U, aa, inv_e) + const)

        return _blockwise(block, x, self.x_t, width=self.K * self.D)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x_s | x_t) for paired batches: x (N, D) -> (N,)."""
        self._check(x)
        U, aa, inv_e = self.eigvecs, self.axis_aligned, 1.0 / self.eigvals
        const = self.eigvals.log().sum(-1) + self.D * LOG_2PI

        def block(xb, xtb, lwb):
            return fastmath.logsumexp(lwb - 0.5 * (self._maha(xb, xtb, U, aa, inv_e) + const), -1)

        return _blockwise(block, x, self.x_t, self.log_weights, width=self.K * self.D)

    def _maha(self, xb, xtb, U, aa, inv_e):
        """(n, K) squared Mahalanobis distances of x_s to the means for a block of points."""
        if aa and self.D <= PER_DIM_MAX_D:
            return _aligned_maha(xb, self.offset, inv_e, xtb, self.gain)
        z = _project(xb, U, aa) - self.gain * _project(xtb, U, aa) - self.offset
        return (z * z * inv_e).sum(-1)

    def _check(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor (N, D) = ({self.N}, {self.D}); got "
                            f"{type(x).__name__}")
        if x.shape != (self.N, self.D):
            raise ValueError(f"x must have shape (N, D) = ({self.N}, {self.D}); got {tuple(x.shape)}")
        if not fastmath.all_finite(x):
            raise ValueError("x must be finite; got NaN or inf")

    def sample(self, generator: torch.Generator | None = None, return_components: bool = False):
        """One draw x_s ~ q(x_s | x_t) per point: (N, D)."""
        k = torch.multinomial(self.weights, 1, generator=generator)[:, 0]
        eps = torch.randn(self.N, self.D, dtype=self.x_t.dtype, device=k.device, generator=generator)
        noise = self.eigvals[k].sqrt() * eps           # in the chosen component's eigenbasis
        if self.axis_aligned:
            x = self.gain[k] * self.x_t + self.offset[k] + noise
        else:
            x = torch.empty_like(noise)
            for j in torch.unique(k).tolist():  # loop over components, never over points
                sel, Uj = k == j, self.eigvecs[j]
                x[sel] = (self.gain[j] * (self.x_t[sel] @ Uj) + self.offset[j] + noise[sel]) @ Uj.T
        return (x, k) if return_components else x

    def mean(self) -> torch.Tensor:
        """(N, D) mean of each point's mixture."""
        return torch.einsum("nk,nkd->nd", self.weights, self.means)

    def covariance(self) -> torch.Tensor:
        """(N, D, D) covariance of each point's mixture (law of total covariance)."""
        w = self.weights
        mu = self.mean()
        dev = self.means - mu[:, None, :]
        within = torch.einsum("nk,kij->nij", w, self.covariances)
        between = torch.einsum("nk,nki,nkj->nij", w, dev, dev)
        return within + between

    def covariance_trace(self) -> torch.Tensor:
        """(N,) trace of each point's mixture covariance, without forming the matrices."""
        w = self.weights
        dev = self.means - self.mean()[:, None, :]
        return w @ self.eigvals.sum(-1) + (w * (dev * dev).sum(-1)).sum(-1)

    def entropy_mc(self, n_samples: int, generator: torch.Generator | None = None):
        """Monte Carlo entropy H(q(. | x_t)) per point: (mean (N,), standard error (N,))."""
        n_samples = as_integer(n_samples, "n_samples")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        vals = torch.stack([-self.log_prob(self.sample(generator)) for _ in range(n_samples)])
        se = vals.std(0) / math.sqrt(n_samples) if n_samples > 1 else torch.full_like(vals[0], math.inf)
        return vals.mean(0), se


def posterior(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: torch.Tensor, t: int,
              s: int | None = None) -> MixturePosterior:
    """The exact reverse transition q(x_s | x_t) for a batch x_t (N, D).

    t and s are ROOT steps (indices into ``schedule.root``, as everywhere in smdlab), kept steps
    of ``schedule``, 0 <= s < t <= T; s defaults to the kept step below t (t - 1 on a root
    schedule).  ``s = 0`` gives q(x_0 | x_t).
    """
    _check_mixture(mixture)
    t, s, lt, ls = root_jump(schedule, t, s, "posterior")
    return posterior_from_log_alpha_bars(mixture, x_t, lt, ls)


def posterior_from_log_alpha_bars(mixture: GaussianMixture, x_t: torch.Tensor, log_ab_t: float,
                                  log_ab_s: float) -> MixturePosterior:
    """q(x_s | x_t) given log abar_t < log abar_s <= 0 directly (see the module docstring)."""
    x_t = _check_points(mixture, x_t)
    log_ab_t, log_ab_s = float(log_ab_t), float(log_ab_s)
    if not (math.isfinite(log_ab_t) and log_ab_t < log_ab_s <= 0):
        raise ValueError(f"need abar_t < abar_s <= 1; got log abar_t={log_ab_t}, log abar_s={log_ab_s}")
    ab_t, ab_s = math.exp(log_ab_t), math.exp(log_ab_s)
    om_t, om_s = -math.expm1(log_ab_t), -math.expm1(log_ab_s)
    a = math.exp(0.5 * (log_ab_t - log_ab_s))
    b = -math.expm1(log_ab_t - log_ab_s)
    lam = mixture.eigvals                                   # (K, D)
    p = ab_s * lam + om_s                                   # variance at time s
    q = ab_t * lam + om_t                                   # variance at time t (= a^2 p + b)
    U = mixture.eigvecs
    um = _project(mixture.means, U, mixture.axis_aligned, paired=True)  # (K, D): U_k^T m_k
    inv_q, c_t = 1.0 / q, math.sqrt(ab_t) * um
    const = q.log().sum(-1) + mixture.D * LOG_2PI - 2 * mixture.weights.log()

    def block(xb):
        if mixture.axis_aligned and mixture.D <= PER_DIM_MAX_D:
            maha = _aligned_maha(xb, c_t, inv_q)
        else:
            d = _project(xb, U, False) - c_t                           # (n, K, D)
            maha = (d * d * inv_q).sum(-1)
        return torch.log_softmax(-0.5 * (maha + const), -1)

    log_w = _blockwise(block, x_t, width=mixture.K * mixture.D)
    gain = a * p / q
    offset = (math.sqrt(ab_s) - gain * math.sqrt(ab_t)) * um
    return MixturePosterior(x_t, log_w, gain, offset, b * p / q, U, mixture.axis_aligned)


def score(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """grad_x log q(x_t) for x_t (N, D) -> (N, D)."""
    return mixture_score(marginal(mixture, schedule, t), x_t)


def mixture_score(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """grad_x log q(x) of a Gaussian mixture: -sum_k r_k(x) C_k^{-1} (x - m_k)."""
    x = _check_points(mixture, x)
    U = mixture.eigvecs
    d = _project(x, U, mixture.axis_aligned) - _project(mixture.means, U, mixture.axis_aligned,
                                                        paired=True)
    comp = -0.5 * ((d * d / mixture.eigvals).sum(-1) + mixture.eigvals.log().sum(-1))
    r = torch.softmax(comp + mixture.weights.log(), -1)          # (N, K)
    g = _rotate_back(d / mixture.eigvals, U, mixture.axis_aligned)  # (N, K, D): C_k^-1 (x - m_k)
    return -torch.einsum("nk,nkd->nd", r, g)


def expected_x0(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: torch.Tensor, t: int):
    """E[x_0 | x_t] (the mean of q(x_0 | x_t)): (N, D); t a ROOT step."""
    return posterior(mixture, schedule, x_t, t, 0).mean()


def expected_eps(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: torch.Tensor, t: int):
    """E[eps | x_t] = (x_t - sqrt(abar_t) E[x_0 | x_t]) / sqrt(1 - abar_t) = -sqrt(1 - abar_t) score."""
    t = check_root_step(schedule, t, "expected_eps")
    return eps_from_score(score(mixture, schedule, x_t, t), schedule.root.log_alpha_bars[t].item())


def best_gaussian(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: torch.Tensor, t: int,
                  s: int | None = None, kind: str = "moment") -> Gaussian:
    """The best single Gaussian for the step t -> s (forward KL, true kernel first).

    kinds:
      * ``"moment"``: mean and full covariance of q(x_s | x_t) (minimises KL over all Gaussians);
      * ``"isotropic"``: the mixture mean with variance trace(Cov)/D (best N(mu, v I));
      * ``"beta_tilde"``: the mixture mean with the step's posterior variance (best with that
        variance; clipped on the final jump to 0, see ``NoiseSchedule.kernel_variance``);
      * ``"beta"``: the mixture mean with variance 1 - abar_t / abar_s.
    """
    if kind not in BEST_GAUSSIAN_KINDS:
        raise ValueError(f"unknown best-Gaussian kind {kind!r}; choose one of {BEST_GAUSSIAN_KINDS}")
    t, s, lt, ls = root_jump(schedule, t, s, "best_gaussian")
    post = posterior_from_log_alpha_bars(mixture, x_t, lt, ls)
    return best_gaussian_of(post, schedule.root, t, s, kind)


def best_gaussian_of(post: MixturePosterior, schedule: NoiseSchedule, t: int, s: int,
                     kind: str) -> Gaussian:
    """The best single Gaussian of an already computed posterior (see :func:`best_gaussian`);
    t, s are steps of ``schedule`` (pass the root schedule with root steps)."""
    if kind == "moment":
        return Gaussian(post.mean(), covariance=post.covariance())
    if kind == "isotropic":
        return Gaussian(post.mean(), variance=post.covariance_trace() / post.D)
    if kind in ("beta_tilde", "beta"):
        return Gaussian(post.mean(), variance=schedule.kernel_variance(t, s, kind))
    raise ValueError(f"unknown best-Gaussian kind {kind!r}; choose one of {BEST_GAUSSIAN_KINDS}")


# ---------------------------------------------------------------------- helpers
def _project(x, U, axis_aligned, paired=False):
    """Coordinates of x in every component's eigenbasis.

    x (N, D) -> (N, K, D) with [n, k] = U_k^T x_n; with paired=True x is (K, D) -> (K, D).
    One GEMM against all K bases at once (no loop over components or points).
    """
    K, D, _ = U.shape
    if axis_aligned:
        return x if paired else x[:, None, :].expand(x.shape[0], K, D)
    if paired:
        return torch.einsum("kij,ki->kj", U, x)
    return (x @ U.permute(1, 0, 2).reshape(D, K * D)).reshape(x.shape[0], K, D)


BLOCK_ELEMENTS = 1 << 16
PER_DIM_MAX_D = 8   # axis-aligned mixtures up to this D use the per-dimension in-place updates


def _blockwise(fn, *tensors, width: int):
    """fn applied to row blocks of the tensors (same N rows), results concatenated along dim 0.

    Blocks hold about BLOCK_ELEMENTS elements of the (n, K, D) intermediates, so these stay in
    cache: several times faster than one pass over (N, K, D) arrays that do not fit in it.
    """
    N = tensors[0].shape[0]
    rows = max(64, BLOCK_ELEMENTS // max(1, width))
    if N <= rows:
        return fn(*tensors)
    return torch.cat([fn(*(t[i:i + rows] for t in tensors)) for i in range(0, N, rows)])


def _aligned_maha(y, offset, inv_e, w=None, gain=None):
    """sum_d (y_d - gain_kd w_d - offset_kd)^2 inv_e_kd as (n, K), for axis-aligned components.

    One (n, K) slice per dimension, updated in place: far fewer passes over memory than forming
    the (n, K, D) differences when D is small; for larger D the per-dimension Python loop costs
    more than it saves, so callers use it only up to PER_DIM_MAX_D.
    """
    acc = None
    for d in range(y.shape[1]):
        if w is None:
            z = y[:, d, None] - offset[:, d]
        else:
            z = torch.addcmul(-offset[:, d], w[:, d, None], -gain[:, d]).add_(y[:, d, None])
        z.square_()
        acc = z.mul_(inv_e[:, d]) if acc is None else acc.addcmul_(z, inv_e[:, d])
    return acc


def _rotate_back(v, U, axis_aligned):
    """(N, K, D) eigen-coordinates -> original coordinates: [n, k] = U_k v_nk."""
    if axis_aligned:
        return v
    return torch.einsum("kij,nkj->nki", U, v)




def _check_mixture(mixture) -> None:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture; got {type(mixture).__name__}")


def _check_points(mixture: GaussianMixture, x, name: str = "x_t") -> torch.Tensor:
    """x as (N, D) points of the mixture's dtype: finite, within the engine's range."""
    _check_mixture(mixture)
    return check_points(x, name, mixture.D, mixture.dtype, mixture.device)
