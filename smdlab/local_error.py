"""Local denoising error M_t of any reverse kernel for a Gaussian-mixture target.

    M_{t->s} = E_{x_t ~ q(x_t)} KL( q(x_s | x_t) || p(x_s | x_t) )        (true kernel first)

(SMD.md, "Local and global denoising error"; s = t - 1 for single steps, the previous kept step for
the jumps of a respaced chain).  t and s are ROOT steps, as kernels take them.

Estimator.  x_t are drawn from q(x_t) (half of them, when the target has several modes, from a
widened copy, with importance weights at most 2: :func:`joint_sample`).  The inner expectation
over x_s is STRATIFIED over the posterior's components: ``n_mc`` draws from every component k,
averaged with its weight r_k(x_t), so a component of weight 1e-4 is scored at every x_t instead of
once in 1e4 pairs.  Per x_t one of two routes is taken, decided from x_t alone (never from the x_s
draws, so the choice adds no bias):

  * ratio route, where a closed-form bound on E_q[(p/q)^4] is at most RATIO_MOMENT_BOUND
    (:func:`ratio_moment_bound`): terms u - 1 - log u, u = p/q (u - 1 has mean 0 since p is
    normalised).  Each term is >= 0 and of order (u - 1)^2, so the tiny errors of fine chains keep
    a small relative error, and the bound keeps the terms' variance finite;
  * cross-entropy route elsewhere (p far from q, or wider than q's components, as for badly
    fitted kernels): KL = E_q[-log p] - H(q), with the closed-form cross-entropy for Gaussian p
    (a Monte Carlo mean over the same draws otherwise, whose tails are Gaussian) and H(q) from the
    stratified draws plus the zero-mean component variate log N_k(x_s) + H_k, whose coefficient
    is cross-fitted (fitted on half of the points, applied to the other half).

Why the previous estimator lied on badly fitted kernels: it fitted least-squares coefficients for
the ratio variate p/q - 1 on all points.  When p is far from q (an untrained network, a variance
100x off), p/q is astronomically heavy-tailed (its moments are finite but of size exp(d^2/v));
a few draws set the coefficient, which then subtracted huge values from the other points:
-1.5e5 +- 9.2e3 nats for a kernel whose error is 46.6.  The ratio now enters only with coefficient
1 and only where its fourth moment is provably small.

What the result guarantees.  The per-point estimates are unbiased for KL(q(x_s|x_t) || p(x_s|x_t))
(latent kernels: for the L-draw mixture, see below); ``se`` is the standard error of their mean
over the independent x_t (treating the two fixed-size proposal halves as strata), and the tests
check that it is calibrated (z-scores of mean ~0, spread ~1) on badly fitted Gaussian and latent
kernels against quadrature.  The reported ``mean`` is never negative: ratio-route terms are >= 0
by construction; if the total is still below 0 (only possible when the truth is within noise of
0), mean is set to 0, ``raw_mean`` keeps the unclamped value and ``flags`` says "clamped": read
it as "M <= mean + 2 se", not as a value.  ``flags`` also says "dominated" when one point carries
more than DOMINANCE_LIMIT of the total (its se is then unreliable: use more points).

Latent kernels (``distribution`` returns a LatentMixture over ``n_latent`` draws) are scored with
log p estimated by a log-mean-exp over the draws.  That estimate is biased low, so M_t is biased
HIGH by an amount that shrinks as n_latent grows; the sample count is part of the result.

A deterministic 1-D route, :func:`local_error_quadrature` (a trapezoid rule over x_t that
resolves the layer between modes, Gauss-Hermite over x_s per posterior component), is the
reference the tests check the Monte Carlo against; :func:`point_kl_quadrature` gives the KL at a
single x_t in 1-D or 2-D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm  # the plain bar: tqdm.auto warns in kernels without ipywidgets

from .distributions import Gaussian, LatentMixture, as_gaussian, step_mean
from .exact import (
    MixturePosterior,
    best_gaussian_of,
    diffused_mixture,
    marginal,
    posterior_from_log_alpha_bars,
)
from .kernels import BestGaussianKernel, ExactKernel, ReverseKernel
from .mixture import GaussianMixture
from .sampling import chain_steps
from .schedules import NoiseSchedule


@dataclass
class LocalError:
    """One estimate of M_{t->s} in nats.

    mean, se: the estimate and its standard error; n_points: number of x_t ~ q(x_t); n_mc: draws of
    x_s per x_t; n_latent: latent draws per x_t for latent kernels (None otherwise); method: how it
    was computed ("gaussian-cv", "latent-mc", "mc", "quadrature"); t, s: the root steps; kernel:
    the kernel's name.  Monte Carlo diagnostics: n_ratio, the points scored on the ratio route;
    raw_mean, the unclamped estimate (mean = max(raw_mean, 0)); flags: "clamped" when raw_mean
    was negative (the truth is then within a few se of 0: report it as an upper bound
    mean + 2 se, not as a value), "dominated" when one point carries more than DOMINANCE_LIMIT of
    the estimate (its standard error is then unreliable).
    For quadrature, se is an error estimate of the rule (refinement changes), not a statistical one.
    """

    mean: float
    se: float
    n_points: int
    n_mc: int
    n_latent: int | None
    method: str
    t: int = -1
    s: int = -1
    kernel: str = ""
    n_ratio: int = 0
    raw_mean: float | None = None
    flags: tuple = ()

    @property
    def reliable(self) -> bool:
        """False when a diagnostic says the standard error may understate the error."""
        return not self.flags

    @property
    def rel_se(self) -> float:
        return self.se / abs(self.mean) if self.mean != 0 else (0.0 if self.se == 0 else math.inf)


@dataclass
class LocalErrorCurve:
    """M over every jump of a chain, noisiest first.  Arrays are numpy (S,)."""

    kernel: str
    t: np.ndarray
    s: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    method: str
    n_points: int
    n_mc: int
    n_latent: int | None
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        """sum over jumps of M (the local-error part of the global bound)."""
        return float(self.mean.sum())

    @property
    def total_se(self) -> float:
        return float(np.sqrt((self.se ** 2).sum()))

    @property
    def max(self) -> float:
        return float(self.mean.max())

    @property
    def argmax_t(self) -> int:
        return int(self.t[int(np.argmax(self.mean))])

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "t": self.t.tolist(), "s": self.s.tolist(),
                "mean": self.mean.tolist(), "se": self.se.tolist(), "sum": self.total,
                "sum_se": self.total_se, "max": self.max, "argmax_t": self.argmax_t,
                "method": self.method, "n_points": self.n_points, "n_mc": self.n_mc,
                "n_latent": self.n_latent, **self.extra}


# ---------------------------------------------------------------------- sampling the joint
def joint_sample(mixture: GaussianMixture, log_ab_t: float, log_ab_s: float, n_points: int,
                 n_mc: int, generator: torch.Generator | None = None, importance: bool = True):
    """Points x_t (n_points, D) with importance weights (n_points,), the exact posterior at x_t, and
    n_mc draws x_s ~ q(x_s | x_t) (n_mc, n_points, D).

    With ``importance`` (and K > 1), half of the x_t come from q(x_t) and half from a copy of it
    whose components are widened so that the regions between neighbouring modes are visited:
    at small t the error lives almost entirely there (where the posterior is bimodal), in a mass
    of 1e-5 or less that plain sampling would almost never see.  The weights q / g, with g the
    50/50 defensive mixture, are at most 2, so the estimate stays unbiased and never much worse
    than plain sampling.  Without it the weights are all 1.
    """
    q_t = diffused_mixture(mixture, log_ab_t)
    wide = _widened(mixture, log_ab_t) if importance else None
    if wide is None:
        x_t = q_t.sample(n_points, generator)
        w = torch.ones(n_points, dtype=x_t.dtype)
    else:
        n1 = n_points // 2
        x_t = torch.cat([q_t.sample(n1, generator), wide.sample(n_points - n1, generator)])
        lq = mixture_log_prob(q_t, x_t)
        lg = torch.logaddexp(lq, mixture_log_prob(wide, x_t)) - math.log(2.0)
        w = (lq - lg).exp()
    post = posterior_from_log_alpha_bars(mixture, x_t, log_ab_t, log_ab_s)
    x_s, _ = _sample_with_components(post, n_mc, generator)
    return x_t, w, post, x_s


def _sample_with_components(post: MixturePosterior, n_mc: int, generator):
    """n_mc draws (n_mc, N, D) and the component each came from (n_mc, N)."""
    if n_mc == 0:
        return post.x_t.new_empty(0, post.N, post.D), torch.empty(0, post.N, dtype=torch.long)
    draws = [post.sample(generator, return_components=True) for _ in range(n_mc)]
    return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])


def mixture_log_prob(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """log q(x) (N,) through the eigenbasis (faster than torch.distributions for many components)."""
    return torch.logsumexp(mixture.component_log_prob(x) + mixture.weights.log(), -1)


def _widened(mixture: GaussianMixture, log_ab: float):
    """The importance proposal's wide copy of q(x_t), or None when it would not help.

    Component standard deviations are raised to a third of the distance to the nearest other
    component mean (so a midpoint lies 1.5 widened standard deviations away).
    """
    if mixture.K < 2:
        return None
    ab, om = math.exp(log_ab), -math.expm1(log_ab)
    m = math.sqrt(ab) * mixture.means
    d2 = torch.cdist(m, m).fill_diagonal_(math.inf).amin(-1)           # (K,) nearest neighbour
    target = (d2.min() / 3.0) ** 2
    smallest = (ab * mixture.eigvals + om).min()
    extra = (target - smallest).item()
    if extra <= 0.05 * smallest.item():
        return None
    return diffused_mixture(mixture, log_ab, extra)


def _check_jump(kernel: ReverseKernel, t: int, s: int) -> tuple[int, int, float, float]:
    # Root steps that must be kept steps of the kernel's schedule (the one convention, kernels.py).
    return kernel.jump(t, s)


def _check_sizes(n_points: int, n_mc: int, n_latent: int | None):
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2 (for a standard error); "
                         f"got {n_points!r}")
    if isinstance(n_mc, bool) or not isinstance(n_mc, int) or n_mc < 1:
        raise ValueError(f"n_mc must be a positive integer; got {n_mc!r}")
    if n_latent is not None and (isinstance(n_latent, bool) or not isinstance(n_latent, int)
                                 or n_latent < 1):
        raise ValueError(f"n_latent must be a positive integer or None; got {n_latent!r}")


def _kernel_distribution(kernel, post: MixturePosterior, x_t, t, s, generator, n_latent,
                         mixture: GaussianMixture, root: NoiseSchedule):
    """kernel.distribution(x_t, t, s), reusing the exact posterior for this target's oracles."""
    if isinstance(kernel, BestGaussianKernel) and kernel.mixture is mixture and \
            kernel.schedule.root is root:
        return best_gaussian_of(post, root, t, s, kernel.kind)
    if isinstance(kernel, ExactKernel) and kernel.mixture is mixture and \
            kernel.schedule.root is root:
        return post
    # A torch Gaussian (Independent(Normal), MultivariateNormal) is scored as a Gaussian: closed form.
    return as_gaussian(kernel.distribution(x_t, t, s, generator=generator, n_latent=n_latent))


def _cross_entropy(dist, post: MixturePosterior) -> torch.Tensor | None:
    """Closed-form E_q[-log p] for a Gaussian p, else None."""
    if not isinstance(dist, Gaussian):
        return None
    if dist.isotropic:
        return dist.cross_entropy(post.mean(), q_trace=post.covariance_trace())
    return dist.cross_entropy(post.mean(), q_cov=post.covariance())


# ---------------------------------------------------------------------- the per-point estimator
#: The ratio route is taken at x_t only when a closed-form bound on E_q[(p/q)^4] is at most this.
RATIO_MOMENT_BOUND = 10.0
#: Posterior components lighter than this at every point are not drawn (their share of M is below
#: this weight times the per-component term, far under any standard error).
MIN_STRATUM_WEIGHT = 1e-14


class _Strata:
    """Stratified draws from q(x_s | x_t): ``n_mc`` draws from EVERY posterior component k (of
    non-negligible weight), to be averaged with weights r_k(x_t).  Stratifying makes components
    of weight 1e-4 count with their exact weight instead of being drawn once in 1e4 pairs.

    Per stratum it keeps the draws (n_mc, N, D), log q at them and the component variate
    c_k = log N_k(x_s) + H_k, whose mean under stratum k is exactly 0 (H_k: the component's
    entropy).  ``A`` = sum_k r_k mean(-log q) estimates H(q); ``B`` = sum_k r_k mean(c_k) has
    conditional mean 0 and removes most of A's noise: with coefficient 1, A - B is
    H(r) + sum_k r_k H_k - E[-log rho_k], exact up to the (small) overlap of the components.
    """

    def __init__(self, post: MixturePosterior, n_mc: int, generator):
        self.post, self.n_mc = post, n_mc
        w = post.weights
        self.comps = [k for k in range(post.K) if w[:, k].max().item() >= MIN_STRATUM_WEIGHT]
        means = post.means
        self.x, self.log_q, cvs = [], [], []
        for k in self.comps:
            eps = torch.randn(n_mc, post.N, post.D, dtype=post.x_t.dtype, generator=generator)
            noise = post.eigvals[k].sqrt() * eps
            if not post.axis_aligned:
                noise = noise @ post.eigvecs[k].T
            x = means[:, k] + noise
            self.x.append(x)
            self.log_q.append(torch.stack([post.log_prob(xm) for xm in x]))
            # log N_k(x) + H_k = -|eps|^2 / 2 + D / 2 exactly, whatever the component.
            cvs.append(0.5 * (post.D - (eps * eps).sum(-1)))
        self.A = self.weighted_mean([-lq for lq in self.log_q])
        self.B = self.weighted_mean(cvs)

    def weighted_mean(self, per_stratum: list[torch.Tensor]) -> torch.Tensor:
        """sum_k r_k * (mean over the n_mc draws of stratum k): (N,)."""
        w = self.post.weights
        return sum(w[:, k] * v.mean(0) for k, v in zip(self.comps, per_stratum))


def _log_int_p4_q3_iso(mu_p, v_p, mu_q, lam_q, U_q, aligned):
    """log int N(x; mu_p, v_p I)^4 N(x; mu_q, diag-in-U_q(lam_q))^-3 dx (N,); inf if divergent.

    Closed form per eigen-direction (a Renyi divergence of order 4): with s = 4 lam - 3 v,
    6 z^2 / s - log(s)/2 - 3/2 log v + 2 log lam, z the mean offset in the direction."""
    z = mu_p - mu_q
    if not aligned:
        z = z @ U_q
    s = 4 * lam_q - 3 * v_p[:, None]                                       # (N, D)
    ok = (s > 0).all(-1)
    s = s.clamp_min(1e-300)
    val = (6 * z * z / s - 0.5 * s.log() - 1.5 * v_p.log()[:, None] + 2 * lam_q.log()).sum(-1)
    return torch.where(ok, val, torch.full_like(val, math.inf))


def _log_int_p4_q3_full(mu_p, S_p, mu_q, C_q):
    """The same for a full covariance S_p (N, D, D) and C_q (D, D)."""
    Sa = 4 * C_q - 3 * S_p
    L, info = torch.linalg.cholesky_ex(Sa)
    ok = info == 0
    L = torch.where(ok[:, None, None], L, torch.eye(S_p.shape[-1], dtype=S_p.dtype).expand_as(L))
    d = (mu_p - mu_q)[..., None]
    z = torch.linalg.solve_triangular(L, d, upper=False)[..., 0]
    logdet_a = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    val = (6 * (z * z).sum(-1) - 0.5 * logdet_a - 1.5 * torch.linalg.slogdet(S_p)[1]
           + 2 * torch.linalg.slogdet(C_q)[1])
    return torch.where(ok, val, torch.full_like(val, math.inf))


def ratio_moment_bound(dist, post: MixturePosterior) -> torch.Tensor:
    """log of an upper bound on E_{q(x_s|x_t)}[(p/q)^4] per point (N,); +inf when none is known.

    q >= r_k N_k for every component, so E_q[(p/q)^4] <= r_k^-3 int p^4 N_k^-3, and by convexity
    of 1/x^3 also <= sum_k r_k int p^4 N_k^-3; both in closed form for Gaussian p; for a mixture
    p = mean_l N_l, p^4 <= mean_l N_l^4 (convexity).  The bound depends
    on x_t only (never on the x_s draws), so choosing an estimator with it keeps it unbiased.
    """
    N = post.N
    best = torch.full((N,), math.inf, dtype=post.x_t.dtype)
    means, lw = post.means, post.log_weights
    jensen = []
    for k in range(post.K):
        lam, U = post.eigvals[k], post.eigvecs[k]
        if isinstance(dist, Gaussian) and dist.isotropic:
            li = _log_int_p4_q3_iso(dist.mean(), dist.variance, means[:, k], lam, U, post.axis_aligned)
        elif isinstance(dist, Gaussian):
            if post.D > 16:
                return best
            li = _log_int_p4_q3_full(dist.mean(), dist.covariance, means[:, k],
                                     post.covariances[k])
        elif isinstance(dist, LatentMixture):
            per_l = torch.stack([_log_int_p4_q3_iso(dist.means[:, j], dist.variance, means[:, k],
                                                    lam, U, post.axis_aligned)
                                 for j in range(dist.L)], -1)
            li = torch.logsumexp(per_l, -1) - math.log(dist.L)
        else:
            return best
        best = torch.minimum(best, li - 3 * lw[:, k])
        jensen.append(li + lw[:, k])
    # Also 1/q^3 = (sum_k r_k N_k)^-3 <= sum_k r_k N_k^-3 (convexity): tight when components overlap.
    return torch.minimum(best, torch.logsumexp(torch.stack(jensen, -1), -1))


@dataclass
class _PointTerms:
    """Per-point KL estimates and how they were obtained.

    value = y - beta * B on the cross-entropy route (beta: cross-fitted coefficient, B: the
    component variate of :class:`_Strata`), the ratio-route value elsewhere; ratio: bool (N,).
    """

    y: torch.Tensor
    B: torch.Tensor
    ratio: torch.Tensor

    def values(self, w: torch.Tensor) -> torch.Tensor:
        """Per-point values (N,) for importance weights w (N,), with beta cross-fitted."""
        value = self.y.clone()
        ce = ~self.ratio
        idx = torch.nonzero(ce)[:, 0]
        if idx.numel() >= 8:
            # Fit beta on one half of the points and apply it to the other, and the other way
            # round: each point's coefficient is independent of its own draws, so E[beta B] = 0
            # and the estimate stays unbiased (an in-sample fit would not be).  Only the light-
            # tailed variate B is fitted; no ratio p/q enters (its tails broke the old fit).
            halves = (idx[0::2], idx[1::2])
            for fit, apply in (halves, halves[::-1]):
                yf, bf = w[fit] * self.y[fit], w[fit] * self.B[fit]
                bc = bf - bf.mean()
                den = (bc * bc).sum()
                beta = ((yf - yf.mean()) * bc).sum() / den if den > 0 else torch.zeros(())
                value[apply] = self.y[apply] - beta * self.B[apply]
        else:
            value[ce] = self.y[ce] - self.B[ce]
        return value


def _point_terms(st: _Strata, dist) -> _PointTerms:
    """KL(q(x_s | x_t) || p(x_s | x_t)) estimated at every point from the stratified draws.

    Two routes, chosen per point from x_t alone (so the choice adds no bias):
      * ratio route, where :func:`ratio_moment_bound` <= RATIO_MOMENT_BOUND: the terms
        u - 1 - log u with u = p/q (u - 1 has mean 0 because p is normalised) are each >= 0 and of
        order (u - 1)^2, so tiny KLs get tiny absolute errors; the bound on E[u^4] keeps their
        variance finite and the standard error meaningful.
      * cross-entropy route elsewhere (p far from q, or wider): KL = E_q[-log p] - H(q), with the
        closed-form Gaussian cross-entropy for Gaussian p (else its Monte Carlo mean over the same
        draws, which has Gaussian tails) and H(q) from the stratified draws with the component
        variate.  No ratio p/q enters, so nothing heavy-tailed does.
    """
    post = st.post
    log_p = [torch.stack([dist.log_prob(xm) for xm in x]) for x in st.x]
    d = [(lp - lq).clamp(max=700.0) for lp, lq in zip(log_p, st.log_q)]
    ratio_val = st.weighted_mean([torch.expm1(v) - v for v in d])
    ce = _cross_entropy(dist, post)
    if ce is None:
        ce = st.weighted_mean([-lp for lp in log_p])
    use_ratio = ratio_moment_bound(dist, post) <= math.log(RATIO_MOMENT_BOUND)
    y = torch.where(use_ratio, ratio_val, ce - st.A)
    B = torch.where(use_ratio, torch.zeros_like(y), st.B)
    return _PointTerms(y, B, use_ratio)


def _kl_at_points(post: MixturePosterior, dist, n_mc: int, generator) -> tuple[float, float]:
    """Mean over the posterior's points of KL(post || dist), with its standard error."""
    terms = _point_terms(_Strata(post, n_mc, generator), dist).values(
        torch.ones(post.N, dtype=post.x_t.dtype))
    N = terms.numel()
    se = (terms.std() / math.sqrt(N)).item() if N > 1 else math.inf
    return terms.mean().item(), se


def _stratified_se(contrib: torch.Tensor, n_first: int) -> float:
    """Standard error of contrib.mean() when contrib[:n_first] and contrib[n_first:] are two
    independent samples of fixed sizes (one of them possibly empty)."""
    n = contrib.numel()
    var = 0.0
    for part in (contrib[:n_first], contrib[n_first:]):
        if part.numel() >= 2:
            var += (part.numel() / n) ** 2 * part.var().item() / part.numel()
    return math.sqrt(var)


#: A single point carrying more than this share of the estimate makes its standard error unreliable.
DOMINANCE_LIMIT = 0.2


# ---------------------------------------------------------------------- public estimators
def local_errors(mixture: GaussianMixture, kernels: list[ReverseKernel], t: int, s: int,
                 n_points: int = 4096, n_mc: int = 2, n_latent: int | None = 64,
                 generator: torch.Generator | None = None,
                 importance: bool = True) -> list[LocalError]:
    """M_{t->s} of several kernels on the same pairs (common random numbers).

    Args:
        mixture: the target q(x_0).
        kernels: reverse kernels sharing one root schedule; t, s: root steps, 0 <= s < t.
        n_points: number of x_t ~ q(x_t); n_mc: draws of x_s per posterior component per x_t
            (the draws are stratified over the components).
        n_latent: latent draws per x_t for latent kernels (ignored by Gaussian/exact kernels).
        importance: sample x_t from a defensive widened proposal (see :func:`joint_sample`).
    Returns one :class:`LocalError` per kernel; see the module docstring for what it guarantees.
    """
    if not isinstance(kernels, (list, tuple)) or not kernels:
        raise ValueError("kernels must be a non-empty list of reverse kernels")
    _check_sizes(n_points, n_mc, n_latent)
    root = kernels[0].schedule.root
    for k in kernels:
        if k.schedule.root is not root and not k.schedule.is_respacing_of(root):
            raise ValueError(f"kernel {k.name} does not share the root schedule {root.name}")
        if getattr(k, "dim", mixture.D) != mixture.D:
            raise ValueError(f"kernel {k.name} has dim {k.dim} but the mixture has D={mixture.D}")
    t, s, lt, ls = _check_jump(kernels[0], t, s)
    x_t, w, post, _ = joint_sample(mixture, lt, ls, n_points, 0, generator, importance)
    strata = _Strata(post, n_mc, generator)
    # joint_sample draws exactly the first n_points // 2 points from q and the rest from the wide
    # copy (when it uses one): the standard error must treat them as two strata.
    n_first = n_points // 2 if bool((w != 1).any()) else n_points
    out = []
    for kernel in kernels:
        dist = _kernel_distribution(kernel, post, x_t, t, s, generator, n_latent, mixture, root)
        latent = isinstance(dist, LatentMixture)
        method = "gaussian-cv" if isinstance(dist, Gaussian) else ("latent-mc" if latent else "mc")
        if dist is post:   # the exact kernel: the log ratio is identically zero
            out.append(LocalError(0.0, 0.0, n_points, n_mc, None, method, t, s, kernel.name,
                                  n_ratio=n_points, raw_mean=0.0))
            continue
        terms = _point_terms(strata, dist)
        contrib = w * terms.values(w)
        raw = contrib.mean().item()
        se = _stratified_se(contrib, n_first)
        if not math.isfinite(raw) or not math.isfinite(se):
            raise FloatingPointError(f"local error of {kernel.name} at t={t}, s={s} is not finite "
                                     f"({raw} +- {se}): the kernel returned a degenerate density")
        flags = []
        total = contrib.sum().item()
        if total > 0 and contrib.max().item() > DOMINANCE_LIMIT * total:
            flags.append("dominated")
        if raw < 0:
            # A KL is >= 0: a negative mean is noise around a value within a few se of 0.
            flags.append("clamped")
        out.append(LocalError(max(raw, 0.0), se, n_points, n_mc, dist.L if latent else None,
                              method, t, s, kernel.name, n_ratio=int(terms.ratio.sum()),
                              raw_mean=raw, flags=tuple(flags)))
    return out


def local_error(mixture: GaussianMixture, kernel: ReverseKernel, t: int, s: int,
                n_points: int = 4096, n_mc: int = 2, n_latent: int | None = 64,
                generator: torch.Generator | None = None, importance: bool = True) -> LocalError:
    """M_{t->s} = E_{q(x_t)} KL(q(x_s | x_t) || p(x_s | x_t)) for one kernel (root steps t > s).

    See the module docstring for the estimator; the result carries its standard error.
    """
    return local_errors(mixture, [kernel], t, s, n_points, n_mc, n_latent, generator,
                        importance)[0]


def local_error_curves(mixture: GaussianMixture, kernels: list[ReverseKernel],
                       schedule: NoiseSchedule | None = None, n_points: int = 4096, n_mc: int = 2,
                       n_latent: int | None = 64, generator: torch.Generator | None = None,
                       progress: bool = False) -> dict[str, LocalErrorCurve]:
    """M over every jump of the chain of ``schedule`` (default: the kernels' own), per kernel.

    Returns {kernel.name: LocalErrorCurve}, jumps ordered from the noisiest (t = T) to the last.
    """
    pairs = chain_steps(kernels[0], schedule)
    rows = []
    for t, s in tqdm(pairs, disable=not progress, desc="local error"):
        rows.append(local_errors(mixture, kernels, t, s, n_points, n_mc, n_latent, generator))
    curves = {}
    for j, kernel in enumerate(kernels):
        col = [r[j] for r in rows]
        curves[kernel.name] = LocalErrorCurve(
            kernel.name, np.array([c.t for c in col]), np.array([c.s for c in col]),
            np.array([c.mean for c in col]), np.array([c.se for c in col]), col[0].method,
            n_points, n_mc, col[0].n_latent)
    return curves


def local_error_curve(mixture: GaussianMixture, kernel: ReverseKernel,
                      schedule: NoiseSchedule | None = None, n_points: int = 4096, n_mc: int = 2,
                      n_latent: int | None = 64, generator: torch.Generator | None = None,
                      progress: bool = False) -> LocalErrorCurve:
    """M over every jump of a (respaced) chain for one kernel; see :func:`local_error_curves`."""
    return local_error_curves(mixture, [kernel], schedule, n_points, n_mc, n_latent, generator,
                              progress)[kernel.name]


# ---------------------------------------------------------------------- 1-D quadrature
#: Largest Gauss-Hermite rule offered (the eigen-solve is O(n^3); beyond this use more strata).
MAX_HERMITE_NODES = 2000


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of n-point Gauss-Hermite quadrature for E_{z ~ N(0, 1)} f(z).

    Golub-Welsch: the nodes are the eigenvalues of the Jacobi matrix of the probabilists' Hermite
    polynomials (off-diagonal sqrt(1..n-1)) and the weights the squared first components of its
    eigenvectors.  Unlike the three-term recurrence (numpy's hermegauss overflows to NaN near
    n = 150), this stays accurate for any n; the extreme weights simply underflow to 0.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_HERMITE_NODES:
        raise ValueError(f"n must be an integer in [1, {MAX_HERMITE_NODES}]; got {n!r}")
    off = np.sqrt(np.arange(1, int(n), dtype=np.float64))
    J = np.diag(off, 1) + np.diag(off, -1)
    z, V = np.linalg.eigh(J)
    w = V[0] ** 2
    z = 0.5 * (z - z[::-1])                       # exact symmetry of the rule
    w = 0.5 * (w + w[::-1])
    return torch.from_numpy(z.copy()), torch.from_numpy(w / w.sum())


#: The ratio form u - 1 - log u is used at an x_t when the inner rule integrates p to 1 within this.
QUAD_MASS_TOL = 1e-9
#: Most outer nodes the quadrature route accepts.
MAX_OUTER_NODES = 200_000


def local_error_quadrature(mixture: GaussianMixture, kernel: ReverseKernel, t: int, s: int,
                           n_outer: int = 96, n_inner: int = 48,
                           latent_ok: bool = False) -> LocalError:
    """Deterministic M_{t->s} in 1-D.

    Outer integral over x_t: trapezoid rule on a uniform grid covering every marginal component
    +- 12 standard deviations, with a spacing that resolves both the narrowest component (sd / 8)
    and the width sd^2 / separation over which the responsibilities r_k(x_t) switch (the error of
    small steps lives in that thin layer between modes, which per-component Gauss-Hermite nodes
    miss); at least ``n_outer`` nodes.  Inner integral over x_s: ``n_inner``-point Gauss-Hermite
    per posterior component.  The integrand is u - 1 - log u (u = p/q, each term >= 0, of order
    (u - 1)^2, so KLs of 1e-19 come out right and never negative) wherever the inner rule
    integrates p to 1 within QUAD_MASS_TOL; where it does not (p much wider than q) it is the log
    ratio log q - log p, which the rule integrates exactly for Gaussian p.

    Kernels need an exact ``log_prob`` (Gaussian, exact); a kernel returning a LatentMixture is
    refused unless ``latent_ok`` (then the KL is against the L-component mixture it returns, exact
    only when that mixture is deterministic).  ``se`` is an error estimate of the rules, not a
    statistical error: |change with half the inner nodes| + |change with twice the outer spacing|.
    """
    if mixture.D != 1:
        raise ValueError(f"quadrature route is 1-D only; the mixture has D={mixture.D}")
    for name, v in (("n_outer", n_outer), ("n_inner", n_inner)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 4:
            raise ValueError(f"{name} must be an integer >= 4; got {v!r}")
    t, s, lt, ls = _check_jump(kernel, t, s)
    ab_t, om_t = math.exp(lt), -math.expm1(lt)
    sd = (ab_t * mixture.eigvals[:, 0] + om_t).sqrt()                         # (K,)
    m = math.sqrt(ab_t) * mixture.means[:, 0]
    lo, hi = (m - 12 * sd).min().item(), (m + 12 * sd).max().item()
    h = sd.min().item() / 8
    sep = (m.max() - m.min()).item()
    if sep > 0:
        h = min(h, sd.min().item() ** 2 / sep / 4)
    n_nodes = max(n_outer, int(math.ceil((hi - lo) / h)) + 1)
    if n_nodes > MAX_OUTER_NODES:
        raise ValueError(f"the quadrature route would need {n_nodes} outer nodes (components of "
                         f"sd {sd.min().item():.3g} over a range of {hi - lo:.3g}); use Monte Carlo")
    x_t = torch.linspace(lo, hi, n_nodes, dtype=torch.float64)[:, None]
    h = (hi - lo) / (n_nodes - 1)
    w_t = mixture_log_prob(diffused_mixture(mixture, lt), x_t).exp() * h
    post = posterior_from_log_alpha_bars(mixture, x_t, lt, ls)
    dist = kernel.distribution(x_t, t, s, n_latent=None)
    if isinstance(dist, LatentMixture) and not latent_ok:
        raise ValueError("the quadrature route needs an exact log-density; latent kernels are "
                         "scored by Monte Carlo (pass latent_ok=True for a deterministic mixture)")
    sd_post = post.eigvals[:, 0].sqrt()                                        # (K,)
    means, weights = post.means[:, :, 0], post.weights

    def kl_at(n_in):
        zi, hi_ = gauss_hermite(n_in)
        direct = torch.zeros(x_t.shape[0], dtype=x_t.dtype)
        ratio, mass = torch.zeros_like(direct), torch.zeros_like(direct)
        for k in range(post.K):
            for zl, hl in zip(zi.tolist(), hi_.tolist()):
                if hl == 0.0:
                    continue
                x_s = (means[:, k] + sd_post[k] * zl)[:, None]
                d = (dist.log_prob(x_s) - post.log_prob(x_s)).clamp(max=700.0)
                c = weights[:, k] * hl
                direct -= c * d
                ratio += c * (torch.expm1(d) - d)
                mass += c * d.exp()
        return torch.where((mass - 1).abs() <= QUAD_MASS_TOL, ratio, direct)

    kl = kl_at(n_inner)
    full = (w_t * kl).sum().item()
    coarse = (2 * w_t[::2] * kl[::2]).sum().item()
    half = (w_t * kl_at(max(n_inner // 2, 2))).sum().item()
    err = abs(full - half) + abs(full - coarse)
    return LocalError(full, err, x_t.shape[0], n_inner, None, "quadrature", t, s, kernel.name)


def point_kl_quadrature(mixture: GaussianMixture, log_ab_t: float, log_ab_s: float,
                        x_t: torch.Tensor, dist_of, n_nodes: int = 48) -> tuple[float, float]:
    """KL(q(x_s | x_t) || p(x_s | x_t)) at ONE point x_t (D,), D <= 2, by product Gauss-Hermite
    quadrature in every posterior component's eigenbasis: (kl, error estimate).

    ``dist_of(post)`` returns p for a MixturePosterior of n_nodes^D copies of x_t (e.g. the
    moment-matched Gaussian).  The integrand is u - 1 - log u (>= 0; see
    :func:`local_error_quadrature`) where the rule integrates p to 1 within QUAD_MASS_TOL, else
    the log ratio.  The error estimate is the change against a rule with half the nodes per axis;
    it is an error bar of the rule, not a statistical one.
    """
    x_t = torch.as_tensor(x_t, dtype=mixture.dtype).reshape(-1)
    D = x_t.numel()
    if D != mixture.D or D > 2:
        raise ValueError(f"x_t must have the mixture's dimension D={mixture.D} <= 2; got {D}")
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or not 4 <= n_nodes <= 256:
        raise ValueError(f"n_nodes must be an integer in [4, 256]; got {n_nodes!r}")

    def rule(n):
        z, h = gauss_hermite(n)
        if D == 1:
            nodes, wts = z[:, None], h
        else:
            nodes = torch.cartesian_prod(z, z)
            wts = (h[:, None] * h[None, :]).reshape(-1)
        M = nodes.shape[0]
        post = posterior_from_log_alpha_bars(mixture, x_t[None].expand(M, D).contiguous(),
                                             log_ab_t, log_ab_s)
        dist = dist_of(post)
        direct = ratio = mass = 0.0
        for k in range(post.K):
            r_k = post.weights[0, k].item()
            if r_k < MIN_STRATUM_WEIGHT:
                continue
            off = post.eigvals[k].sqrt() * nodes
            if not post.axis_aligned:
                off = off @ post.eigvecs[k].T
            x = post.means[:, k] + off
            d = (dist.log_prob(x) - post.log_prob(x)).clamp(max=700.0)
            direct -= r_k * (wts * d).sum().item()
            ratio += r_k * (wts * (torch.expm1(d) - d)).sum().item()
            mass += r_k * (wts * d.exp()).sum().item()
        return ratio if abs(mass - 1) <= QUAD_MASS_TOL else direct

    full, half = rule(n_nodes), rule(max(n_nodes // 2, 2))
    return full, abs(full - half)


# ---------------------------------------------------------------------- on-trajectory scoring
class StepScorer:
    """A sampler callback (see :func:`smdlab.sampling.ancestral_sample`) that scores every step of
    a chain against the exact mixture.

    At each jump t -> s it records, averaged over the chain's own states x_t (which follow the
    MODEL's marginal, not q's):
      * ``nll_t``: mean -log q(x_t) under the true marginal at t (how far the chain has drifted),
      * ``mean_gap``: mean ||E_p[x_s | x_t] - E_q[x_s | x_t]|| of the step distribution the sampler
        drew from (zero for every best-Gaussian kernel: their means are exact; for a latent kernel
        it is the mean of the one latent draw the sampler took),
      * ``kl_t`` (and ``kl_t_se``): mean KL(q(x_s | x_t) || p(x_s | x_t)) at the chain's states
        (the control-variate estimator of this module with ``n_mc`` draws; Gaussian kernels).
    The step distribution comes with the callback's info, so the kernel (a network) is not
    evaluated a second time.
    """

    def __init__(self, mixture: GaussianMixture, n_mc: int = 8,
                 generator: torch.Generator | None = None):
        self.mixture, self.n_mc, self.generator = mixture, n_mc, generator
        self.rows: list[dict] = []

    def __call__(self, info) -> None:
        root = info.kernel.schedule.root
        lt, ls = root.log_alpha_bars[info.t].item(), root.log_alpha_bars[info.s].item()
        q_t = marginal(self.mixture, root, info.t)
        x_t = info.x_t.reshape(info.x_t.shape[0], -1).to(self.mixture.dtype)
        post = posterior_from_log_alpha_bars(self.mixture, x_t, lt, ls)
        dist = as_gaussian(info.distribution)
        row = {"index": info.index, "t": info.t, "s": info.s,
               "nll_t": -q_t.log_prob(x_t).mean().item()}
        if hasattr(dist, "mean"):
            row["mean_gap"] = (step_mean(dist).to(post.x_t) - post.mean()).norm(dim=-1).mean().item()
        if isinstance(dist, Gaussian):
            row["kl_t"], row["kl_t_se"] = _kl_at_points(post, dist, self.n_mc, self.generator)
        self.rows.append(row)

    def as_dict(self) -> dict[str, list]:
        keys = sorted({k for r in self.rows for k in r})
        return {k: [r.get(k, float("nan")) for r in self.rows] for k in keys}
