"""Analytic bounds on the local denoising error of the best single Gaussian.

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

from .schedules import NoiseSchedule


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
