"""The general local-error bound M_{t->s} <= (D/2) log(SNR_s / SNR_t) (smdlab.bounds), step by
step, on mixtures the older equal-variance bound did not cover: unequal weights, anisotropic and
unequal full covariances."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from smdlab import BestGaussianKernel, GaussianMixture, NoiseSchedule
from smdlab.bounds import equal_variance_bound, general_bound, snr_ratio
from smdlab.exact import best_gaussian_of, diffused_mixture, posterior_from_log_alpha_bars
from smdlab.local_error import local_error
from smdlab.quadrature import point_kl_quadrature
from smdlab.targets import anisotropic_target

ROOT = NoiseSchedule.linear(1000)


def _mixture(seed, K, D):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture.random(K, D, generator=g, scale=2.0, min_var=0.002, max_var=0.3,
                                  kind="full")


def _jump(seed, S):
    steps = ROOT.respace(S).original_steps.tolist()
    i = 2 + seed % (len(steps) - 2)          # a jump t -> s with s >= 1
    return steps[i], steps[i - 1]


def _abar(t):
    return ROOT.alpha_bars[t].item()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 2), st.sampled_from([4, 10, 50]))
def test_pointwise_kl_is_below_the_entropy_step(seed, K, D, S):
    """Step (3): at every x_t, KL(q(x_s|x_t) || N(mu, v I)) <= (D/2) log(v / beta~), with the
    isotropic best Gaussian; the moment-matched one is at least as good."""
    mix = _mixture(seed, K, D)
    t, s = _jump(seed, S)
    lt, ls = ROOT.log_alpha_bars[t].item(), ROOT.log_alpha_bars[s].item()
    w2 = ROOT.kernel_variance(t, s, "beta_tilde")
    x_t = diffused_mixture(mix, lt).sample(3, torch.Generator().manual_seed(seed))
    for x in x_t:
        post = posterior_from_log_alpha_bars(mix, x[None], lt, ls)
        v = post.covariance_trace().item() / D
        cap = 0.5 * D * math.log(v / w2)
        for kind in ("isotropic", "moment"):
            kl, err = point_kl_quadrature(mix, lt, ls, x, lambda p, k=kind: best_gaussian_of(
                p, ROOT, t, s, k), n_nodes=32)
            assert kl <= cap + 10 * err + 1e-9, (kind, kl, cap, err)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_expected_posterior_variance_is_below_the_naive_estimate_error(seed, D):
    """Step (5): E tr Cov(x_s | x_t) / D <= b / a^2, the error of the estimate x_t / a."""
    mix = _mixture(seed, 3, D)
    t, s = _jump(seed, 4)
    lt, ls = ROOT.log_alpha_bars[t].item(), ROOT.log_alpha_bars[s].item()
    x_t = diffused_mixture(mix, lt).sample(4000, torch.Generator().manual_seed(seed + 1))
    v = posterior_from_log_alpha_bars(mix, x_t, lt, ls).covariance_trace() / D
    a2 = _abar(t) / _abar(s)
    assert v.mean().item() - 4 * v.std().item() / math.sqrt(v.numel()) <= (1 - a2) / a2


@pytest.mark.parametrize("seed", range(6))
def test_local_error_is_below_the_general_bound_on_unequal_anisotropic_mixtures(seed):
    mix = anisotropic_target() if seed == 0 else _mixture(seed, 2 + seed % 3, 1 + seed % 3)
    for S in (2, 4, 10):
        steps = ROOT.respace(S).original_steps.tolist()
        for i in range(2, len(steps)):
            t, s = steps[i], steps[i - 1]
            cap = general_bound(ROOT, t, s, mix.D)
            for kind in ("moment", "isotropic"):
                r = local_error(mix, BestGaussianKernel(mix, ROOT, kind), t, s, n_points=512,
                                generator=torch.Generator().manual_seed(seed))
                assert r.mean <= cap + 4 * r.se + 1e-9, (S, t, s, kind, r, cap)


def test_general_bound_is_the_equal_variance_bound_at_zero_width_and_telescopes():
    for t, s in [(1000, 500), (300, 299), (20, 3)]:
        for D in (1, 3):
            assert general_bound(ROOT, t, s, D) == pytest.approx(
                equal_variance_bound(ROOT, t, s, 0.0, D), rel=1e-10)
    steps = ROOT.respace(10).original_steps.tolist()
    total = sum(general_bound(ROOT, steps[i], steps[i - 1], 2) for i in range(2, len(steps)))
    assert total == pytest.approx(math.log(snr_ratio(ROOT, steps[-1], steps[1])), rel=1e-10)
    assert general_bound(ROOT, 10, 0, 1) == math.inf


def test_general_bound_rejects_bad_arguments():
    with pytest.raises(ValueError, match="D"):
        general_bound(ROOT, 10, 5, 0)
    with pytest.raises(ValueError, match="s < t"):
        general_bound(ROOT, 5, 10, 1)
    with pytest.raises(TypeError):
        general_bound(ROOT, 5.5, 1, 1)
