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

Deterministic references live in :mod:`smdlab.quadrature`: ``local_error_quadrature`` (1-D: a
trapezoid rule over x_t that resolves the layer between modes, Gauss-Hermite over x_s per
posterior component), which the tests check the Monte Carlo against, and ``point_kl_quadrature``
(the KL at a single x_t in 1-D or 2-D).  The per-point terms are in :mod:`smdlab.kl_terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm  # the plain bar: tqdm.auto warns in kernels without ipywidgets

from . import fastmath
from .distributions import Gaussian, LatentMixture, as_gaussian, step_mean
from .exact import (
    MixturePosterior,
    best_gaussian_of,
    diffused_mixture,
    marginal,
    posterior_from_log_alpha_bars,
)
from .kernels import BestGaussianKernel, ExactKernel, ReverseKernel
from .kl_terms import Strata, cross_entropy, kl_at_points, point_terms, stratified_se  # noqa: F401
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
    return fastmath.logsumexp(mixture.component_log_prob(x) + mixture.weights.log(), -1)


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


def check_jump(kernel: ReverseKernel, t: int, s: int) -> tuple[int, int, float, float]:
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
    t, s, lt, ls = check_jump(kernels[0], t, s)
    x_t, w, post, _ = joint_sample(mixture, lt, ls, n_points, 0, generator, importance)
    strata = Strata(post, n_mc, generator)
    # joint_sample draws exactly the first n_points // 2 points from q and the rest from the wide
    # copy (when it uses one): the standard error must treat them as two strata.
    n_first = n_points // 2 if bool((w != 1).any()) else n_points
    out = []
    for kernel in kernels:
        dist = _kernel_distribution(kernel, post, x_t, t, s, generator, n_latent, mixture, root)
        latent = isinstance(dist, LatentMixture) and not dist.weighted   # draws, not components
        method = "gaussian-cv" if isinstance(dist, Gaussian) else ("latent-mc" if latent else "mc")
        if dist is post:   # the exact kernel: the log ratio is identically zero
            out.append(LocalError(0.0, 0.0, n_points, n_mc, None, method, t, s, kernel.name,
                                  n_ratio=n_points, raw_mean=0.0))
            continue
        terms = point_terms(strata, dist)
        contrib = w * terms.values(w)
        raw = contrib.mean().item()
        se = stratified_se(contrib, n_first)
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
            row["kl_t"], row["kl_t_se"] = kl_at_points(post, dist, self.n_mc, self.generator)
        self.rows.append(row)

    def as_dict(self) -> dict[str, list]:
        keys = sorted({k for r in self.rows for k in r})
        return {k: [r.get(k, float("nan")) for r in self.rows] for k in keys}
