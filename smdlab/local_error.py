"""Local denoising error M_t of any reverse kernel for a Gaussian-mixture target.

    M_{t->s} = E_{x_t ~ q(x_t)} KL( q(x_s | x_t) || p(x_s | x_t) )        (true kernel first)

(SMD.md, "Local and global denoising error"; s = t - 1 for single steps, the previous kept step for
the jumps of a respaced chain).  t and s are ROOT steps, as kernels take them.

Estimator.  Pairs (x_t, x_s) are drawn from the exact joint q(x_t) q(x_s | x_t): x_t from the
marginal, then ``n_mc`` draws of x_s from the exact posterior per x_t.  The basic term is the log
ratio l = log q(x_s | x_t) - log p(x_s | x_t).  Its variance is about 2 KL, so its relative error
explodes for the tiny errors of fine chains (1e-6 nats needs ~1e10 samples for 1 %).  Two control
variates with known conditional mean zero remove that:

  * c_ratio = p(x_s | x_t) / q(x_s | x_t) - 1 (mean 0 under q because p is normalised).  With
    coefficient 1 the term becomes log r + 1/r - 1 >= 0, r = q/p, which is O((r - 1)^2): its
    relative error no longer depends on the size of the KL;
  * c_ce = -log p(x_s | x_t) - CE(x_t) for Gaussian kernels, where CE is the closed-form Gaussian
    cross-entropy E_q[-log p] (``Gaussian.cross_entropy``).  With coefficient 1 the estimate is
    exactly "closed-form cross-entropy minus Monte Carlo entropy of the true mixture".

The coefficients are fitted by least squares on all pairs (classic regression control variates; the
O(1/n) bias this adds is far below the standard error).  The standard error is the spread of the
per-x_t averages of the adjusted terms over the ``n_points`` independent x_t.

Latent kernels (``distribution`` returns a LatentMixture over ``n_latent`` draws) are scored with
log p estimated by a log-mean-exp over the draws.  That estimate is biased low, so M_t is biased
HIGH by an amount that shrinks as n_latent grows; the sample count is part of the result.

A deterministic 1-D route, :func:`local_error_quadrature` (Gauss-Hermite over x_t per marginal
component and over x_s per posterior component), cross-checks the Monte Carlo in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributions import Gaussian, LatentMixture
from .exact import MixturePosterior, best_gaussian_of, marginal, posterior_from_log_alpha_bars
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
    the kernel's name.
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
    ab_t, om_t = math.exp(log_ab_t), -math.expm1(log_ab_t)
    q_t = _diffused_mixture(mixture, ab_t, om_t, 0.0)
    wide = _widened(mixture, ab_t, om_t) if importance else None
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


def _component_cv(post: MixturePosterior, x_s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log r_k + log N_k(x_s) minus its conditional mean -H(r) - sum_j r_j H(N_j): (n_mc, N).

    log q(x_s) = log r_k + log N_k(x_s) - log rho_k(x_s), with rho_k the responsibility of the
    sampled component k at x_s.  When the posterior's components are well apart (a bimodal step,
    where the error lives at small t) rho_k is ~1, so this variate carries almost all of the
    fluctuation of log q: removing it leaves the estimate nearly noiseless.
    """
    lw = post.log_weights
    h_r = -(lw.exp() * lw).sum(-1)                                           # (N,)
    h_comp = 0.5 * (post.eigvals.log().sum(-1) + post.D * (1 + math.log(2 * math.pi)))  # (K,)
    mean = -h_r - lw.exp() @ h_comp                                          # (N,)
    out = []
    for x, kk in zip(x_s, k):
        clp = post.component_log_prob(x)                                     # (N, K)
        sel = torch.gather(clp + lw, 1, kk[:, None])[:, 0]
        out.append(sel - mean)
    return torch.stack(out)


def mixture_log_prob(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """log q(x) (N,) through the eigenbasis (faster than torch.distributions for many components)."""
    return torch.logsumexp(mixture.component_log_prob(x) + mixture.weights.log(), -1)


def _diffused_mixture(mixture: GaussianMixture, ab: float, om: float, extra: float):
    """q(x_t) with an extra isotropic variance added to every component."""
    cov = ab * mixture.compact_covariances()
    add = om + extra
    if mixture.kind == "full":
        cov = cov + add * torch.eye(mixture.D, dtype=mixture.dtype)
    else:
        cov = cov + add
    return GaussianMixture(mixture.weights, math.sqrt(ab) * mixture.means, cov)


def _widened(mixture: GaussianMixture, ab: float, om: float):
    """The importance proposal's wide copy of q(x_t), or None when it would not help.

    Component standard deviations are raised to a third of the distance to the nearest other
    component mean (so a midpoint lies 1.5 widened standard deviations away).
    """
    if mixture.K < 2:
        return None
    m = math.sqrt(ab) * mixture.means
    d2 = torch.cdist(m, m).fill_diagonal_(math.inf).amin(-1)           # (K,) nearest neighbour
    target = (d2.min() / 3.0) ** 2
    smallest = (ab * mixture.eigvals + om).min()
    extra = (target - smallest).item()
    if extra <= 0.05 * smallest.item():
        return None
    return _diffused_mixture(mixture, ab, om, extra)


def _check_jump(kernel: ReverseKernel, t: int, s: int) -> tuple[int, int, float, float]:
    # Root steps that must be kept steps of the kernel's schedule (the one convention, kernels.py).
    return kernel.jump(t, s)


def _check_sizes(n_points: int, n_mc: int, n_latent: int | None):
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2 (for a standard error); "
                         f"got {n_points!r}")
    if not isinstance(n_mc, int) or n_mc < 1:
        raise ValueError(f"n_mc must be a positive integer; got {n_mc!r}")
    if n_latent is not None and (not isinstance(n_latent, int) or n_latent < 1):
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
    return kernel.distribution(x_t, t, s, generator=generator, n_latent=n_latent)


def _cross_entropy(dist, post: MixturePosterior) -> torch.Tensor | None:
    """Closed-form E_q[-log p] for a Gaussian p, else None."""
    if not isinstance(dist, Gaussian):
        return None
    if dist.isotropic:
        return dist.cross_entropy(post.mean(), q_trace=post.covariance_trace())
    return dist.cross_entropy(post.mean(), q_cov=post.covariance())


def _ratio_cv_mask(dist, post: MixturePosterior, factor: float = 4.0 / 3.0,
                   min_weight: float = 0.01) -> torch.Tensor:
    """(N,) 0/1: where the ratio control variate p/q - 1 has light tails.

    E_q[(p/q)^k] is finite when every covariance of p is below k/(k-1) times the covariance of some
    posterior component of weight >= min_weight (q >= r_k N_k bounds the ratio).  With factor 4/3
    its fourth moment is finite, so its fitted coefficient and the standard error are reliable.
    The mask depends on x_t only, so the masked variate keeps conditional mean zero.
    """
    if isinstance(dist, Gaussian):
        if dist.isotropic:
            p_max = dist.variance
        else:
            p_max = torch.linalg.eigvalsh(dist.covariance)[:, -1]
    elif isinstance(dist, LatentMixture):
        p_max = dist.variance
    elif isinstance(dist, MixturePosterior):
        p_max = dist.eigvals.max().expand(post.N)
    else:
        return torch.ones(post.N, dtype=post.x_t.dtype)
    q_min = post.eigvals.min(-1).values                                    # (K,)
    ok = torch.where(post.weights >= min_weight, q_min, torch.zeros_like(q_min)).amax(-1)
    return (p_max < factor * ok).to(post.x_t.dtype)


def _regression_estimate(ell: torch.Tensor, cvs: list[torch.Tensor]) -> tuple[float, float]:
    """Mean of ell (n_mc, N) adjusted by zero-mean control variates, and its standard error.

    Coefficients by least squares, cross-fitted: fitted on the even points and applied to the odd
    ones, and the other way round.  Fitting them on the very pairs they adjust cancels part of
    the rare large terms that carry a small KL (between-mode x_t) and biases the estimate low,
    even below zero; with cross-fitting every point's adjustment is independent of it, so the
    estimate stays unbiased.  The standard error comes from the per-point averages.
    """
    N = ell.shape[1]
    adjusted = ell
    cvs = [c for c in cvs if torch.isfinite(c).all() and c.std() > 0]
    if cvs and N >= 4:
        C = torch.stack(cvs, -1)                                      # (n_mc, N, J)
        halves = (torch.arange(N) % 2 == 0, torch.arange(N) % 2 == 1)
        adjusted = ell.clone()
        for fit, apply in (halves, halves[::-1]):
            beta = _cv_coefficients(ell[:, fit].flatten(), C[:, fit].reshape(-1, C.shape[-1]))
            if beta is not None:
                adjusted[:, apply] = ell[:, apply] - C[:, apply] @ beta
    per_point = adjusted.mean(0)
    mean = per_point.mean().item()
    se = (per_point.std() / math.sqrt(N)).item()
    return mean, se


def _cv_coefficients(y: torch.Tensor, C: torch.Tensor) -> torch.Tensor | None:
    """Least-squares coefficients of y on the centred columns of C (P, J), or None if unusable."""
    Cc = C - C.mean(0)
    yc = y - y.mean()
    # Scale columns so that the solve is well conditioned whatever their magnitudes.
    scale = Cc.std(0).clamp_min(1e-300)
    beta = torch.linalg.lstsq(Cc / scale, yc[:, None]).solution[:, 0] / scale
    return beta if torch.isfinite(beta).all() else None


def _kl_at_points(post: MixturePosterior, dist, n_mc: int, generator) -> tuple[float, float]:
    """Mean over the posterior's points of KL(post || dist), with its standard error."""
    x_s, comp = _sample_with_components(post, n_mc, generator)
    log_q = torch.stack([post.log_prob(x) for x in x_s])
    log_p = torch.stack([dist.log_prob(x) for x in x_s])
    cvs = [_ratio_cv_mask(dist, post) * torch.expm1((log_p - log_q).clamp(max=700.0)),
           _component_cv(post, x_s, comp)]
    ce = _cross_entropy(dist, post)
    if ce is not None:
        cvs.append(-log_p - ce)
    return _regression_estimate(log_q - log_p, cvs)


# ---------------------------------------------------------------------- public estimators
def local_errors(mixture: GaussianMixture, kernels: list[ReverseKernel], t: int, s: int,
                 n_points: int = 4096, n_mc: int = 2, n_latent: int | None = 64,
                 generator: torch.Generator | None = None,
                 importance: bool = True) -> list[LocalError]:
    """M_{t->s} of several kernels on the same pairs (common random numbers).

    Args:
        mixture: the target q(x_0).
        kernels: reverse kernels sharing one root schedule; t, s: root steps, 0 <= s < t.
        n_points: number of x_t ~ q(x_t); n_mc: draws of x_s ~ q(x_s | x_t) per x_t.
        n_latent: latent draws per x_t for latent kernels (ignored by Gaussian/exact kernels).
        importance: sample x_t from a defensive widened proposal (see :func:`joint_sample`).
    Returns one :class:`LocalError` per kernel.
    """
    if not kernels:
        raise ValueError("give at least one kernel")
    _check_sizes(n_points, n_mc, n_latent)
    root = kernels[0].schedule.root
    for k in kernels:
        if k.schedule.root is not root and not k.schedule.is_respacing_of(root):
            raise ValueError(f"kernel {k.name} does not share the root schedule {root.name}")
        if getattr(k, "dim", mixture.D) != mixture.D:
            raise ValueError(f"kernel {k.name} has dim {k.dim} but the mixture has D={mixture.D}")
    t, s, lt, ls = _check_jump(kernels[0], t, s)
    x_t, w, post, _ = joint_sample(mixture, lt, ls, n_points, 0, generator, importance)
    x_s, comp = _sample_with_components(post, n_mc, generator)
    log_q = torch.stack([post.log_prob(x) for x in x_s])              # (n_mc, N)
    c_comp = _component_cv(post, x_s, comp)
    out = []
    for kernel in kernels:
        dist = _kernel_distribution(kernel, post, x_t, t, s, generator, n_latent, mixture, root)
        log_p = torch.stack([dist.log_prob(x) for x in x_s])
        ell = log_q - log_p
        mask = _ratio_cv_mask(dist, post)
        cvs = [mask * torch.expm1((log_p - log_q).clamp(max=700.0)), c_comp]
        ce = _cross_entropy(dist, post)
        latent = isinstance(dist, LatentMixture)
        if ce is not None:
            cvs.append(-log_p - ce)
            method = "gaussian-cv"
        else:
            method = "latent-mc" if latent else "mc"
        if dist is post:   # the exact kernel: the log ratio is identically zero
            mean, se = 0.0, 0.0
        else:
            mean, se = _regression_estimate(w * ell, [w * c for c in cvs])
        out.append(LocalError(mean, se, n_points, n_mc, dist.L if latent else None, method, t, s,
                              kernel.name))
    return out


def local_error(mixture: GaussianMixture, kernel: ReverseKernel, t: int, s: int,
                n_points: int = 4096, n_mc: int = 2, n_latent: int | None = 64,
                generator: torch.Generator | None = None) -> LocalError:
    """M_{t->s} = E_{q(x_t)} KL(q(x_s | x_t) || p(x_s | x_t)) for one kernel (root steps t > s).

    See the module docstring for the estimator; the result carries its standard error.
    """
    return local_errors(mixture, [kernel], t, s, n_points, n_mc, n_latent, generator)[0]


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
def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of n-point Gauss-Hermite quadrature for E_{z ~ N(0, 1)} f(z)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(z), torch.from_numpy(w / w.sum())


def local_error_quadrature(mixture: GaussianMixture, kernel: ReverseKernel, t: int, s: int,
                           n_outer: int = 96, n_inner: int = 48) -> LocalError:
    """Deterministic M_{t->s} in 1-D: Gauss-Hermite over x_t per marginal component, and over x_s
    per posterior component.  For kernels whose ``distribution`` has an exact ``log_prob``
    (Gaussian and exact kernels); ``se`` is the change against half the inner nodes (a
    convergence indicator, not a statistical error).
    """
    if mixture.D != 1:
        raise ValueError(f"quadrature route is 1-D only; the mixture has D={mixture.D}")
    t, s, lt, ls = _check_jump(kernel, t, s)
    ab_t, om_t = math.exp(lt), -math.expm1(lt)
    z, h = gauss_hermite(n_outer)
    # x_t nodes: component j of q(x_t) = N(sqrt(ab_t) m_j, ab_t l_j + 1 - ab_t).
    sd = (ab_t * mixture.eigvals[:, 0] + om_t).sqrt()                         # (K,)
    x_t = (math.sqrt(ab_t) * mixture.means[:, 0:1] + sd[:, None] * z).reshape(-1, 1)
    w_t = (mixture.weights[:, None] * h).reshape(-1)

    def kl_at(n_in):
        zi, hi = gauss_hermite(n_in)
        post = posterior_from_log_alpha_bars(mixture, x_t, lt, ls)
        dist = kernel.distribution(x_t, t, s, n_latent=None)
        if isinstance(dist, LatentMixture):
            raise ValueError("the quadrature route needs an exact log-density; latent kernels are "
                             "scored by Monte Carlo")
        kl = torch.zeros(x_t.shape[0], dtype=x_t.dtype)
        sd_post = post.eigvals[:, 0].sqrt()                                    # (K,)
        for k in range(post.K):
            for zl, hl in zip(zi.tolist(), hi.tolist()):
                x_s = post.means[:, k, :] + sd_post[k] * zl
                kl = kl + post.weights[:, k] * hl * (post.log_prob(x_s) - dist.log_prob(x_s))
        return (w_t * kl).sum().item()

    full = kl_at(n_inner)
    half = kl_at(max(n_inner // 2, 2))
    return LocalError(full, abs(full - half), x_t.shape[0], n_inner, None, "quadrature", t, s,
                      kernel.name)


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
        dist = info.distribution
        row = {"index": info.index, "t": info.t, "s": info.s,
               "nll_t": -q_t.log_prob(x_t).mean().item()}
        if hasattr(dist, "mean"):
            row["mean_gap"] = (dist.mean().to(post.x_t) - post.mean()).norm(dim=-1).mean().item()
        if isinstance(dist, Gaussian):
            row["kl_t"], row["kl_t_se"] = _kl_at_points(post, dist, self.n_mc, self.generator)
        self.rows.append(row)

    def as_dict(self) -> dict[str, list]:
        keys = sorted({k for r in self.rows for k in r})
        return {k: [r.get(k, float("nan")) for r in self.rows] for k in keys}
