"""The per-point terms of the local-error estimator (see :mod:`smdlab.local_error` for the estimator,
what it guarantees, and why it is built this way).

At a batch of points x_t with exact posterior q(x_s | x_t) and a kernel's step distribution p:
:class:`Strata` draws x_s stratified over the posterior's components; :func:`point_terms` picks,
per x_t and from x_t alone, the ratio route (terms u - 1 - log u, u = p/q, where the closed-form
:func:`ratio_moment_bound` on E_q[(p/q)^4] is small) or the cross-entropy route (closed-form
E_q[-log p] minus a control-variated entropy); :func:`kl_at_points` is the mean KL at given points
(what :class:`smdlab.local_error.StepScorer` scores along a chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributions import Gaussian, LatentMixture
from .exact import MixturePosterior


def cross_entropy(dist, post: MixturePosterior) -> torch.Tensor | None:
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


class Strata:
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
    """log int N(x; mu_p, v_p I)^4 N(x; mu_q, diag-in-U_q(lam_q))^-3 dx; inf if divergent.

    Closed form per eigen-direction (a Renyi divergence of order 4): with s = 4 lam - 3 v,
    6 z^2 / s - log(s)/2 - 3/2 log v + 2 log lam, z the mean offset in the direction.  Either
    one component (mu (N, D), v_p (N,), lam_q (D,), U_q (D, D) -> (N,)) or k of them, the
    offsets broadcasting to (N, k, ..., D), lam_q to them, U_q (k, D, D) -> (N, k, ...)."""
    z = mu_p - mu_q
    if not aligned:
        z = z @ U_q if z.ndim == 2 else _rotate(z, U_q)
    s = 4 * lam_q - 3 * v_p[..., None]                                     # (..., D)
    ok = (s > 0).all(-1)
    s = s.clamp_min(1e-300)
    val = (6 * z * z / s - 0.5 * s.log() - 1.5 * v_p.log()[..., None] + 2 * lam_q.log()).sum(-1)
    return torch.where(ok, val, torch.full_like(val, math.inf))


def _rotate(z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """z @ U_k per component: z (N, k, ..., D), U (k, D, D) -> (N, k, ..., D), by one batched
    matmul over the components (a broadcast matmul would copy U for every point)."""
    N, k, D = z.shape[0], z.shape[1], z.shape[-1]
    rest = z.shape[2:-1]
    out = torch.bmm(z.movedim(1, 0).reshape(k, -1, D), U)
    return out.reshape(k, N, *rest, D).movedim(0, 1)


def _log_int_p4_q3_full(mu_p, S_p, mu_q, C_q, logdet_p=None):
    """The same for a full covariance: mu_p (N, 1, D), S_p (N, 1, D, D), mu_q (N, k, D) and
    C_q (k, D, D) -> (N, k) (or unbatched: (N, D), (N, D, D), (N, D), (D, D) -> (N,));
    logdet_p: log det S_p when already known."""
    Sa = 4 * C_q - 3 * S_p
    L, info = torch.linalg.cholesky_ex(Sa)
    ok = info == 0
    L = torch.where(ok[..., None, None], L, torch.eye(S_p.shape[-1], dtype=S_p.dtype).expand_as(L))
    d = (mu_p - mu_q)[..., None]
    z = torch.linalg.solve_triangular(L, d, upper=False)[..., 0]
    logdet_a = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    if logdet_p is None:
        logdet_p = torch.linalg.slogdet(S_p)[1]
    val = (6 * (z * z).sum(-1) - 0.5 * logdet_a - 1.5 * logdet_p
           + 2 * torch.linalg.slogdet(C_q)[1])
    return torch.where(ok, val, torch.full_like(val, math.inf))


#: Elements of the (N, components, latent draws, D[, D]) intermediates of ratio_moment_bound per
#: block of posterior components.
_RATIO_BLOCK = 1 << 16     # (1 << 18 was up to 2x slower than one component at a time at D = 8)


def ratio_moment_bound(dist, post: MixturePosterior) -> torch.Tensor:
    """log of an upper bound on E_{q(x_s|x_t)}[(p/q)^4] per point (N,); +inf when none is known.

    q >= r_k N_k for every component, so E_q[(p/q)^4] <= r_k^-3 int p^4 N_k^-3, and by convexity
    of 1/x^3 also <= sum_k r_k int p^4 N_k^-3; both in closed form for Gaussian p; for a mixture
    p = mean_l N_l, p^4 <= mean_l N_l^4 (convexity).  The bound depends
    on x_t only (never on the x_s draws), so choosing an estimator with it keeps it unbiased.
    """
    N, D = post.N, post.D
    best = torch.full((N,), math.inf, dtype=post.x_t.dtype)
    if isinstance(dist, Gaussian) and not dist.isotropic and D > 16:
        return best
    if not isinstance(dist, (Gaussian, LatentMixture)):
        return best
    means, lw = post.means, post.log_weights
    aa = post.axis_aligned
    # All components at once, in blocks of components (the values are those of one component
    # at a time: the same elementwise operations, broadcast).
    per = N * D * (dist.L if isinstance(dist, LatentMixture) else D if not dist.isotropic else 1)
    step = max(1, _RATIO_BLOCK // max(1, per))
    li_all = []
    if isinstance(dist, Gaussian) and not dist.isotropic:
        S_p = dist.covariance[:, None]
        logdet_p = torch.linalg.slogdet(S_p)[1]
        covs = post.covariances
    for k0 in range(0, post.K, step):
        ks = slice(k0, min(post.K, k0 + step))
        lam, U = post.eigvals[ks], post.eigvecs[ks]
        if isinstance(dist, Gaussian) and dist.isotropic:
            li = _log_int_p4_q3_iso(dist.mean()[:, None], dist.variance[:, None], means[:, ks],
                                    lam, U, aa)
        elif isinstance(dist, Gaussian):
            li = _log_int_p4_q3_full(dist.mean()[:, None], S_p, means[:, ks], covs[ks],
                                     logdet_p=logdet_p)
        else:
            # p^4 = (sum_l w_l N_l)^4 <= sum_l w_l N_l^4 (convexity), equal or unequal weights
            per_l = _log_int_p4_q3_iso(dist.means[:, None], dist.variances[:, None],
                                       means[:, ks, None], lam[:, None], U, aa)
            li = (torch.logsumexp(per_l + dist.log_weights[:, None], -1) if dist.weighted
                  else torch.logsumexp(per_l, -1) - math.log(dist.L))         # (N, k)
        li_all.append(li)
    li = torch.cat(li_all, -1)                                              # (N, K)
    best = (li - 3 * lw).amin(-1)
    # Also 1/q^3 = (sum_k r_k N_k)^-3 <= sum_k r_k N_k^-3 (convexity): tight when components overlap.
    return torch.minimum(best, torch.logsumexp(li + lw, -1))


@dataclass
class PointTerms:
    """Per-point KL estimates and how they were obtained.

    value = y - beta * B on the cross-entropy route (beta: cross-fitted coefficient, B: the
    component variate of :class:`Strata`), the ratio-route value elsewhere; ratio: bool (N,).
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


def point_terms(st: Strata, dist) -> PointTerms:
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
    ce = cross_entropy(dist, post)
    if ce is None:
        ce = st.weighted_mean([-lp for lp in log_p])
    use_ratio = ratio_moment_bound(dist, post) <= math.log(RATIO_MOMENT_BOUND)
    y = torch.where(use_ratio, ratio_val, ce - st.A)
    B = torch.where(use_ratio, torch.zeros_like(y), st.B)
    return PointTerms(y, B, use_ratio)


def kl_at_points(post: MixturePosterior, dist, n_mc: int, generator) -> tuple[float, float]:
    """Mean over the posterior's points of KL(post || dist), with its standard error."""
    terms = point_terms(Strata(post, n_mc, generator), dist).values(
        torch.ones(post.N, dtype=post.x_t.dtype))
    N = terms.numel()
    se = (terms.std() / math.sqrt(N)).item() if N > 1 else math.inf
    return terms.mean().item(), se


def stratified_se(contrib: torch.Tensor, n_first: int) -> float:
    """Standard error of contrib.mean() when contrib[:n_first] and contrib[n_first:] are two
    independent samples of fixed sizes (one of them possibly empty)."""
    n = contrib.numel()
    var = 0.0
    for part in (contrib[:n_first], contrib[n_first:]):
        if part.numel() >= 2:
            var += (part.numel() / n) ** 2 * part.var().item() / part.numel()
    return math.sqrt(var)
