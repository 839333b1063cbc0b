"""Invariants of the exact diffusion quantities of Gaussian-mixture targets."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab import (
    BEST_GAUSSIAN_KINDS,
    BestGaussianKernel,
    ExactKernel,
    Gaussian,
    GaussianMixture,
    NoiseSchedule,
    ancestral_sample,
    best_gaussian,
    expected_eps,
    expected_x0,
    marginal,
    posterior,
    prior_sample,
    score,
)

from .strategies import mixtures, schedules, step_pairs


def forward_log_prob(schedule, x_t, x_s, t, s):
    """log q(x_t | x_s) = log N(x_t; sqrt(abar_t / abar_s) x_s, (1 - abar_t / abar_s) I)."""
    a = math.sqrt(schedule.alpha_bars[t].item() / schedule.alpha_bars[s].item())
    b = schedule.jump_beta(t, s)
    return Gaussian(a * x_s, variance=b).log_prob(x_t)


@given(m=mixtures(), sched=schedules(), data=st.data())
def test_bayes_rule_pointwise(m, sched, data):
    t, s = data.draw(step_pairs(sched, allow_zero=False))
    g = torch.Generator().manual_seed(0)
    x_t = marginal(m, sched, t).sample(8, g)
    post = posterior(m, sched, x_t, t, s)
    x_s = post.sample(g)
    lhs = post.log_prob(x_s)
    rhs = (marginal(m, sched, s).log_prob(x_s) + forward_log_prob(sched, x_t, x_s, t, s)
           - marginal(m, sched, t).log_prob(x_t))
    torch.testing.assert_close(lhs, rhs, rtol=1e-7, atol=1e-7)


@given(m=mixtures(max_K=4, max_D=3), data=st.data())
def test_chain_consistency_reproduces_marginal_moments(m, data):
    sched = NoiseSchedule.linear(100)
    t, s = data.draw(step_pairs(sched))
    n = 40_000
    g = torch.Generator().manual_seed(1)
    x_t = marginal(m, sched, t).sample(n, g)
    x_s = posterior(m, sched, x_t, t, s).sample(g)
    target = marginal(m, sched, s)
    var = torch.diagonal(target.covariance())
    assert ((x_s.mean(0) - target.mean()).abs() < 5 * (var / n).sqrt() + 1e-9).all()
    # sample covariance: standard error of each entry is at most about sqrt(2 var_i var_j / n)
    tol = 6 * (2 * torch.outer(var, var) / n).sqrt() + 1e-9
    assert ((torch.cov(x_s.T).reshape(m.D, m.D) - target.covariance()).abs() < tol).all()


@given(m=mixtures(), sched=schedules(), data=st.data())
def test_score_is_gradient_of_log_density_and_tweedie(m, sched, data):
    t = data.draw(st.integers(1, sched.T))
    x = marginal(m, sched, t).sample(8, torch.Generator().manual_seed(2)).requires_grad_(True)
    (grad,) = torch.autograd.grad(marginal(m, sched, t).log_prob(x).sum(), x)
    x = x.detach()
    sc = score(m, sched, x, t)
    torch.testing.assert_close(sc, grad, rtol=1e-7, atol=1e-7)
    # Tweedie: E[x_0 | x_t] = (x_t + (1 - abar_t) score) / sqrt(abar_t), against the posterior mean
    ab, omab = sched.alpha_bars[t].item(), sched.one_minus_alpha_bars[t].item()
    tweedie = (x + omab * sc) / math.sqrt(ab)
    torch.testing.assert_close(expected_x0(m, sched, x, t), tweedie, rtol=1e-6,
                               atol=1e-6 / math.sqrt(ab))
    eps = expected_eps(m, sched, x, t)
    torch.testing.assert_close(x, math.sqrt(ab) * expected_x0(m, sched, x, t) + math.sqrt(omab) * eps,
                               rtol=1e-6, atol=1e-6)


@given(m=mixtures(max_K=1), sched=schedules(), data=st.data())
def test_single_component_gives_closed_form_gaussian_posterior(m, sched, data):
    t, s = data.draw(step_pairs(sched))
    x_t = marginal(m, sched, t).sample(5, torch.Generator().manual_seed(3))
    post = posterior(m, sched, x_t, t, s)
    ab_t, ab_s = sched.alpha_bars[t].item(), sched.alpha_bars[s].item()
    a2, b = ab_t / ab_s, sched.jump_beta(t, s)
    eye = torch.eye(m.D, dtype=torch.float64)
    P = ab_s * m.covariances[0] + (1 - ab_s) * eye
    # the textbook Gaussian conditioning (SMD.md): cov' = (P^-1 + a^2/b I)^-1,
    # mean' = cov' (P^-1 sqrt(abar_s) m + (a/b) x_t)
    cov = torch.linalg.inv(torch.linalg.inv(P) + a2 / b * eye)
    mean = (cov @ (torch.linalg.solve(P, math.sqrt(ab_s) * m.means[0])[:, None]
                   + math.sqrt(a2) / b * x_t.T)).T
    torch.testing.assert_close(post.covariances[0], cov, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(post.mean(), mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(post.weights, torch.ones(5, 1, dtype=torch.float64))


@given(m=mixtures(), sched=schedules(), data=st.data())
def test_jump_equals_ddpm_posterior_averaged_over_clean_posterior(m, sched, data):
    """q(x_s | x_t) = int q(x_s | x_t, x_0) q(x_0 | x_t) dx_0, component by component: the DDPM
    posterior is affine in x_0, so means map affinely and covariances gain beta-tilde I."""
    t, s = data.draw(step_pairs(sched, allow_zero=False))
    x_t = marginal(m, sched, t).sample(6, torch.Generator().manual_seed(4))
    direct = posterior(m, sched, x_t, t, s)
    clean = posterior(m, sched, x_t, t, 0)
    ab_t, ab_s = sched.alpha_bars[t].item(), sched.alpha_bars[s].item()
    om_t, om_s = 1 - ab_t, 1 - ab_s
    b = sched.jump_beta(t, s)
    c0 = math.sqrt(ab_s) * b / om_t            # coefficient of x_0 in the DDPM posterior mean
    ct = math.sqrt(ab_t / ab_s) * om_s / om_t  # coefficient of x_t
    bt = sched.posterior_variance(t, s)
    torch.testing.assert_close(direct.weights, clean.weights, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(direct.means, c0 * clean.means + ct * x_t[:, None, :],
                               rtol=1e-7, atol=1e-9)
    eye = torch.eye(m.D, dtype=torch.float64)
    torch.testing.assert_close(direct.covariances, c0**2 * clean.covariances + bt * eye,
                               rtol=1e-7, atol=1e-12)


@given(m=mixtures(), sched=schedules(), data=st.data())
def test_moment_matched_gaussian_beats_perturbations(m, sched, data):
    t, s = data.draw(step_pairs(sched))
    x_t = marginal(m, sched, t).sample(4, torch.Generator().manual_seed(5))
    post = posterior(m, sched, x_t, t, s)
    best = best_gaussian(m, sched, x_t, t, s, "moment")
    q_mean, q_cov = post.mean(), post.covariance()
    ce_best = best.cross_entropy(q_mean, q_cov)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    for _ in range(3):
        scale = torch.diagonal(q_cov, dim1=-2, dim2=-1).mean(-1).sqrt()[:, None]
        d_mean = 0.1 * scale * torch.randn(q_mean.shape, generator=g, dtype=torch.float64)
        A = 0.1 * torch.randn(q_cov.shape, generator=g, dtype=torch.float64)
        cov = (torch.eye(m.D, dtype=torch.float64) + A) @ q_cov @ (torch.eye(m.D, dtype=torch.float64)
                                                                    + A).transpose(-1, -2)
        other = Gaussian(q_mean + d_mean, covariance=0.5 * (cov + cov.transpose(-1, -2)))
        # KL(q || p) = CE(q, p) - H(q); the entropy is common, so compare cross-entropies
        assert (other.cross_entropy(q_mean, q_cov) >= ce_best - 1e-9).all()
    # and the isotropic / fixed-variance kernels never beat the full moment match
    for kind in ("isotropic", "beta_tilde", "beta"):
        g_kind = best_gaussian(m, sched, x_t, t, s, kind)
        assert (g_kind.cross_entropy(q_mean, q_cov) >= ce_best - 1e-9).all()


def test_cross_entropy_closed_form_matches_monte_carlo():
    m = GaussianMixture.grid(3)
    sched = NoiseSchedule.linear(1000).respace(10)
    x_t = marginal(m, sched, 500).sample(3, torch.Generator().manual_seed(0))
    post = posterior(m, sched, x_t, 500, 400)      # root steps (kept steps 5 and 4 of the chain)
    g = torch.Generator().manual_seed(1)
    for kind in BEST_GAUSSIAN_KINDS:
        p = best_gaussian(m, sched, x_t, 500, 400, kind)
        mc = torch.stack([-p.log_prob(post.sample(g)) for _ in range(4000)])
        closed = p.cross_entropy(post.mean(), post.covariance())
        assert ((mc.mean(0) - closed).abs() < 5 * mc.std(0) / math.sqrt(4000)).all(), kind


@pytest.mark.parametrize("sep, var, T", [(1e4, 1e-8, 4000), (1e4, 1.0, 10), (1.0, 1e-8, 4000)])
def test_extremes_stay_finite(sep, var, T):
    m = GaussianMixture([0.3, 0.7], [[-sep / 2, 0.0], [sep / 2, 1.0]], [var, var])
    for sched in (NoiseSchedule.linear(T), NoiseSchedule.cosine(T), NoiseSchedule.sigmoid(T)):
        g = torch.Generator().manual_seed(0)
        for t, s in [(1, 0), (T, T - 1), (T, 0), (T // 2 + 1, 1)]:
            x_t = marginal(m, sched, t).sample(64, g)
            post = posterior(m, sched, x_t, t, s)
            x_s = post.sample(g)
            for v in (post.log_prob(x_s), post.mean(), post.covariance(), score(m, sched, x_t, t),
                      expected_x0(m, sched, x_t, t), x_s, post.weights):
                assert torch.isfinite(v).all()
            for kind in BEST_GAUSSIAN_KINDS:
                p = best_gaussian(m, sched, x_t, t, s, kind)
                assert torch.isfinite(p.cross_entropy(post.mean(), post.covariance())).all()
                assert torch.isfinite(p.log_prob(x_s)).all()
        # at t = 1 from a tiny-variance mixture the posterior is the component spread, not zero
        x_1 = marginal(m, sched, 1).sample(16, g)
        assert (posterior(m, sched, x_1, 1, 0).eigvals > 0).all()


def test_posterior_rejects_bad_requests():
    m, sched = GaussianMixture.grid(), NoiseSchedule.linear(100)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="outside"):
        posterior(m, sched, x, 101)
    with pytest.raises(ValueError, match="s < t"):
        posterior(m, sched, x, 5, 5)
    with pytest.raises(ValueError, match="shape"):
        posterior(m, sched, torch.zeros(3, 3), 5)
    with pytest.raises(ValueError, match="kind"):
        best_gaussian(m, sched, x, 5, kind="median")


def test_float32_mixture_works():
    m = GaussianMixture.grid(dtype=torch.float32)
    sched = NoiseSchedule.linear(1000)
    x = marginal(m, sched, 300).sample(10)
    post = posterior(m, sched, x, 300)
    assert post.mean().dtype == torch.float32 and torch.isfinite(post.log_prob(post.sample())).all()


def test_kernels_plug_into_the_sampler():
    m = GaussianMixture.grid()
    base = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    n = 4000
    x0 = ancestral_sample(ExactKernel(m, base), prior_sample(n, 2, g), base.respace(4), generator=g)
    # the exact chain samples q(x_0) whatever the number of steps: mode occupancy matches
    k = m.responsibilities(x0).argmax(-1)
    assert (torch.bincount(k, minlength=49) / n - 1 / 49).abs().max() < 0.02
    near = (x0[:, None, :] - m.means).norm(dim=-1).min(-1).values < 3 * 0.05
    assert near.float().mean() > 0.95
    # the best single Gaussian on 4 steps blurs the modes (the expressive bottleneck)
    xg = ancestral_sample(BestGaussianKernel(m, base, "beta_tilde"), prior_sample(n, 2, g),
                          base.respace(4), generator=g)
    near_g = (xg[:, None, :] - m.means).norm(dim=-1).min(-1).values < 3 * 0.05
    assert near_g.float().mean() < 0.8


@pytest.mark.parametrize("D", [3, 12])
def test_axis_aligned_paths_agree_with_the_full_covariance_path(D):
    """Diagonal mixtures skip every rotation (per-dimension updates for small D, vectorised for
    large D); the same mixture given with full covariances goes through the eigenbasis route."""
    g = torch.Generator().manual_seed(D)
    diag = GaussianMixture.random(5, D, generator=g, kind="diagonal")
    full = GaussianMixture(diag.weights, diag.means, torch.diag_embed(diag.eigvals))
    assert diag.axis_aligned and not full.axis_aligned
    sched = NoiseSchedule.cosine(200)
    x_t = marginal(diag, sched, 120).sample(300, g)
    a, b = posterior(diag, sched, x_t, 120, 40), posterior(full, sched, x_t, 120, 40)
    x_s = a.sample(g)
    torch.testing.assert_close(a.log_prob(x_s), b.log_prob(x_s), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.mean(), b.mean(), rtol=1e-10, atol=1e-12)


def test_exact_engine_validates_steps_and_points():
    import numpy as np

    m, sched = GaussianMixture.grid(2), NoiseSchedule.linear(100)
    x = torch.zeros(3, 2, dtype=torch.float64)
    for bad in (2.7, "5", True):
        with pytest.raises(TypeError, match="t must be an integer"):
            posterior(m, sched, x, bad)
    with pytest.raises(TypeError, match="s must be an integer"):
        posterior(m, sched, x, 5, 1.5)
    ref = posterior(m, sched, x, 5, 2)
    got = posterior(m, sched, x, np.int64(5), torch.tensor(2))
    assert torch.equal(ref.log_weights, got.log_weights)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[1, 0] = bad
        with pytest.raises(ValueError, match="x_t must be finite"):
            posterior(m, sched, y, 5)
        with pytest.raises(ValueError, match="x must be finite"):
            ref.log_prob(y)
    with pytest.raises(TypeError, match="mixture must be a GaussianMixture"):
        posterior("grid", sched, x, 5)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        posterior(m, 100, x, 5)
