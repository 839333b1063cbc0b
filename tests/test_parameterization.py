"""The parameterisation module: conversions invert each other on any data shape, the score is
Tweedie's, the step coefficients are the posterior of a point mass, DDIM(1) is the ancestral step,
and the root-step check refuses what cannot be meant."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab import GaussianMixture, NoiseSchedule, posterior, score
from smdlab import parameterization as P

ROOT = NoiseSchedule.linear(1000)


@given(t=st.integers(1, 1000), seed=st.integers(0, 10_000),
       shape=st.sampled_from([(3,), (2, 4, 4), (1, 8, 8)]))
def test_conversions_invert_each_other(t, seed, shape):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    la = ROOT.log_alpha_bars[torch.full((5,), t)]            # per-point (N,) log abar
    x_t = P.diffuse(x0, eps, la)
    tol = 1e-9 / math.exp(0.5 * la[0].item())
    torch.testing.assert_close(P.eps_from_x0(x_t, x0, la), eps, rtol=0, atol=tol)
    torch.testing.assert_close(P.x0_from_eps(x_t, eps, la), x0, rtol=0, atol=tol)
    v = P.v_from(x0, eps, la)
    torch.testing.assert_close(P.x0_from_v(x_t, v, la), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(P.eps_from_v(x_t, v, la), eps, rtol=0, atol=1e-9)
    for kind in P.PARAMETERIZATIONS:
        rec = P.to_x0(kind, P.target(kind, x0, eps, la), x_t, la)
        torch.testing.assert_close(rec, x0, rtol=0, atol=tol)
    # v is a rotation of (x0, eps): it preserves the norm of the pair.
    torch.testing.assert_close(x_t.square() + v.square(), x0.square() + eps.square())


def test_score_from_eps_is_the_exact_score():
    mix = GaussianMixture.grid(3, 1.0, 0.2)
    t = 200
    la = ROOT.log_alpha_bars[t].item()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = posterior(mix, ROOT, x, t, 0).mean()                 # E[x0 | x_t]
    sc = P.score_from_eps(P.eps_from_x0(x, x0, la), la)       # Tweedie
    torch.testing.assert_close(sc, score(mix, ROOT, x, t))
    torch.testing.assert_close(P.eps_from_score(sc, la), P.eps_from_x0(x, x0, la))


@pytest.mark.parametrize("t,s", [(1000, 999), (700, 300), (10, 0)])
def test_posterior_coefficients_are_the_posterior_of_a_point_mass(t, s):
    x0 = torch.tensor([[0.4, -0.7]], dtype=torch.float64)
    point = GaussianMixture([1.0], x0, [1e-14])
    x_t = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c0, ct, bt, beta = P.posterior_coefficients(ROOT.log_alpha_bars[t], ROOT.log_alpha_bars[s])
    post = posterior(point, ROOT, x_t, t, s)
    torch.testing.assert_close(c0 * x0 + ct * x_t, post.mean())
    assert bt.item() == pytest.approx(ROOT.posterior_variance(t, s), rel=1e-12, abs=1e-300)
    assert beta.item() == pytest.approx(ROOT.jump_beta(t, s), rel=1e-12)
    # DDIM with sigma^2 = beta-tilde has the same mean (derivation (7)).
    ddim = P.ddim_mean(x_t, x0.expand(4, 2), ROOT.log_alpha_bars[t], ROOT.log_alpha_bars[s], bt)
    torch.testing.assert_close(ddim, c0 * x0 + ct * x_t)
    with pytest.raises(ValueError, match="s < t"):
        P.posterior_coefficients(ROOT.log_alpha_bars[s], ROOT.log_alpha_bars[t])


def test_broadcast_over_images():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    c = P.broadcast(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float32
    assert P.broadcast(2.0, x).ndim == 0
    with pytest.raises(ValueError, match="parameterization"):
        P.to_x0("score", x, x, 0.0)


def test_root_jump():
    coarse = ROOT.respace(10)
    assert P.root_jump(coarse, 500)[:2] == (500, 400)        # default s: the kept step below
    assert P.root_jump(ROOT, 500)[:2] == (500, 499)
    t, s, lt, ls = P.root_jump(coarse, 1000, 0)
    assert (lt, ls) == (ROOT.log_alpha_bars[1000].item(), 0.0)
    for bad in [(5, 4), (500, 450), (1001, 0), (500, 500), (0, None)]:
        with pytest.raises(ValueError):
            P.root_jump(coarse, *bad)
    with pytest.raises(TypeError, match="integer"):
        P.root_jump(ROOT, 2.5, 1)
    assert P.check_root_step(coarse, 0) == 0
    with pytest.raises(ValueError, match="kept step"):
        P.check_root_step(coarse, 7)
