"""Bounds on the denoising errors: the analytic local bound of the best single Gaussian, and the
chain-rule bound on the global error.

The chain-rule bound.  By the chain rule of KL and data processing,
KL(q(x_0) || p(x_0)) <= KL(q(x_T) || N(0, I)) + sum over the chain's jumps of M_{t->s}:
:func:`kl_bound` (the prior term by :func:`prior_kl_estimate`, the local errors by
:mod:`smdlab.local_error`), each with its standard error.

The general bound (any data distribution).  For the moment-matched and the isotropic best Gaussian
and any jump t -> s >= 1 of a DDPM chain,

    M_{t->s} <= (D/2) log(SNR_s / SNR_t),   SNR = abar / (1 - abar),

whatever q(x_0) is (no mixture, no shared covariance, no moment assumption).  Derivation, with
a^2 = abar_t / abar_s, b = 1 - a^2, x_t = a x_s + sqrt(b) xi:

  (1) Given x_0 and x_t, x_s is Gaussian with covariance w^2 I, w^2 = beta~ =
      b (1 - abar_s) / (1 - abar_t) (the DDPM posterior q(x_s | x_t, x_0)).  So q(x_s | x_t) is the
      average over q(x_0 | x_t) of Gaussians of covariance w^2 I.
  (2) Entropy is concave, H(x_s | x_t) >= H(x_s | x_t, x_0) = (D/2) log(2 pi e w^2) pointwise in x_t.
  (3) The isotropic Gaussian N(mu(x_t), v(x_t) I) with the mixture's mean and
      v = tr Cov(x_s | x_t) / D has cross-entropy (D/2) log(2 pi e v), so
      KL(q(x_s | x_t) || N) = (D/2) log(2 pi e v) - H <= (D/2) log(v(x_t) / w^2); the
      moment-matched Gaussian is the best Gaussian, so its KL is no larger.
  (4) Jensen (log is concave): M = E_{x_t} KL <= (D/2) log(E[v(x_t)] / w^2).
  (5) E[v] D = E ||x_s - E[x_s | x_t]||^2 is the minimum mean squared error of estimating x_s from
      x_t, at most the error of the estimate x_t / a, which is (b / a^2) D.
  (6) So M <= (D/2) log(b / (a^2 w^2)) = (D/2) log(abar_s (1 - abar_t) / (abar_t (1 - abar_s))).
On the last jump (s = 0) w^2 = 0 and no bound exists: there M is unbounded as q(x_0) degenerates.
Summed over the jumps with s >= 1 the bound telescopes to (D/2) log(SNR_{t_1} / SNR_T), for any
number of steps.  The bound is loose on fine steps (steps (4) and (5) are far from tight there:
E3 reports M / bound against R = SNR_s / SNR_t).  :func:`general_bound` computes it; (3) and (5)
are tested on their own and the whole bound on unequal-weight, anisotropic mixtures
(tests/test_bounds.py).

The equal-variance bound.  For a mixture whose components share one isotropic covariance lambda I
(any number of components, any means and weights), the moment-matched and isotropic kernels
satisfy, for a jump t -> s,

    M_{t->s} <= (D/2) log(1 + (abar_s - abar_t) / (abar_t (abar_s lambda + 1 - abar_s))).

Proof sketch: KL(q || N(mu, (tr C / D) I)) <= (D/2) log(tr C / (D w^2)) because the entropy of a
mixture is at least its components' entropy (w^2 = b p / q is their variance); the spread of the
component means at x_t is (abar_s)(b/q)^2 Var(m_K | x_t), and E Var(m_K | x_t) <= D q / abar_t (the
MMSE of a location observed with noise q / abar_t); Jensen moves the expectation inside the log.
For s >= 1 the right side is at most (D/2) log(SNR_s / SNR_t) with SNR = abar / (1 - abar),
whatever the mixture: only the last jump (s = 0) is unbounded in a fixed dimension, and only as
lambda -> 0 (like (D/2) log(1 / (SNR_t lambda))).  The bound also telescopes: the sum over the jumps
with s >= 1 is at most (D/2) log(SNR_{t_1} / SNR_T), for any number of steps.  E3 checks it
numerically (:mod:`smdlab.experiments.e3_unbounded`).
"""

from __future__ import annotations

import math

import torch

from .distributions import LOG_2PI
from .exact import marginal
from .kernels import ReverseKernel
from .local_error import local_error_curves, mixture_log_prob
from .mixture import GaussianMixture
from .schedules import NoiseSchedule, check_jump


def snr_ratio(schedule: NoiseSchedule, t: int, s: int) -> float:
    """R = SNR_s / SNR_t >= 1 of the jump t -> s (root steps), SNR = abar / (1 - abar); inf for s = 0."""
    root = schedule.root
    t, s = check_jump(t, s, root.T)
    if s == 0:
        return math.inf
    lt, ls = root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()
    # log SNR = log abar - log(1 - abar), with 1 - abar = -expm1(log abar) (no cancellation).
    return math.exp((ls - math.log(-math.expm1(ls))) - (lt - math.log(-math.expm1(lt))))


def general_bound(schedule: NoiseSchedule, t: int, s: int, D: int) -> float:
    """(D/2) log(SNR_s / SNR_t): the bound above on M_{t->s} of the moment-matched and isotropic
    best Gaussians for ANY data distribution in dimension D (root steps t > s; inf for s = 0)."""
    if not (isinstance(D, int) and not isinstance(D, bool) and D >= 1):
        raise ValueError(f"D must be a positive integer; got {D!r}")
    t, s = check_jump(t, s, schedule.root.T)
    return 0.5 * D * math.log(snr_ratio(schedule, t, s)) if s > 0 else math.inf


def equal_variance_bound(schedule: NoiseSchedule, t: int, s: int, lam: float, D: int) -> float:
    """The bound above on M_{t->s} (root steps t > s) for mixtures whose components share the
    covariance lam I in dimension D (lam = 0 gives the bound for any such mixture as lam -> 0;
    inf where it does not exist)."""
    root = schedule.root
    ab_t, ab_s = root.alpha_bars[t].item(), root.alpha_bars[s].item()
    om_s = root.one_minus_alpha_bars[s].item()
    denom = ab_t * (ab_s * lam + om_s)
    if denom <= 0:
        return math.inf
    return 0.5 * D * math.log1p((ab_s - ab_t) / denom)


# ---------------------------------------------------------------------- the chain-rule bound (global)
def prior_kl_estimate(mixture: GaussianMixture, schedule: NoiseSchedule, n: int = 50_000,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """KL(q(x_T) || N(0, I)) by Monte Carlo: (mean, se).

    Terms u - 1 - log u with u = N(x; 0, I) / q_T(x), x ~ q_T (u - 1 has mean 0): each is >= 0,
    so the estimate is never negative, and of order (u - 1)^2, so the tiny prior terms of long
    chains keep a small relative error.  q_T's component variances abar_T C + 1 - abar_T exceed
    3/4 (N(0, I)'s variance 1 is below 4/3 of theirs) whenever abar_T (1 - C) < 1/4, true for any
    usable chain: u's fourth moment is then finite and the standard error holds.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (for a standard error); got {n!r}")
    q_T = marginal(mixture, schedule.root, schedule.root.T)
    x = q_T.sample(n, generator)
    log_q = mixture_log_prob(q_T, x)
    log_p = -0.5 * (x * x).sum(-1) - 0.5 * mixture.D * LOG_2PI
    d = (log_p - log_q).clamp(max=700.0)
    terms = torch.expm1(d) - d
    return terms.mean().item(), (terms.std() / math.sqrt(n)).item()


def prior_kl(mixture: GaussianMixture, schedule: NoiseSchedule, n: int = 50_000,
             generator: torch.Generator | None = None) -> float:
    """KL(q(x_T) || N(0, I)) in nats (T: the last step of the root schedule)."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return prior_kl_estimate(mixture, schedule, n, generator)[0]


def kl_bound(mixture: GaussianMixture, kernel: ReverseKernel, schedule: NoiseSchedule | None = None,
             n_points: int = 2048, n_mc: int = 2, n_latent: int | None = 64,
             generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """The chain-rule bound KL(q(x_T) || N(0, I)) + sum of M over the chain's jumps.

    Returns {"bound", "bound_se", "prior_kl", "prior_kl_se", "sum_local", "sum_local_se",
    "curve" (the LocalErrorCurve as a dict)}.
    """
    sched = kernel.schedule if schedule is None else schedule
    curve = local_error_curves(mixture, [kernel], sched, n_points, n_mc, n_latent, generator,
                               progress)[kernel.name]
    pk, pk_se = prior_kl_estimate(mixture, kernel.schedule, generator=generator)
    se = math.sqrt(curve.total_se ** 2 + pk_se ** 2)
    return {"bound": pk + curve.total, "bound_se": se, "prior_kl": pk, "prior_kl_se": pk_se,
            "sum_local": curve.total, "sum_local_se": curve.total_se, "curve": curve.as_dict()}
