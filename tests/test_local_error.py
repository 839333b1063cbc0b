"""Local denoising error M_t: sign, zero for the exact kernel, agreement with 1-D quadrature,
monotone in the step size, standard errors that mean what they say."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smdlab import BestGaussianKernel, ExactKernel, GaussianMixture, NoiseSchedule, ancestral_sample
from smdlab.distributions import LatentMixture
from smdlab.kernels import ReverseKernel
from smdlab.local_error import (
    StepScorer,
    local_error,
    local_error_curve,
    local_errors,
)
from smdlab.quadrature import local_error_quadrature

SCHED = NoiseSchedule.linear(1000)
TWO = GaussianMixture.two_modes(2.0, 0.1)
SKEW = GaussianMixture([0.3, 0.7], [[-1.0], [0.5]], [0.04, 0.2])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class JitterKernel(ReverseKernel):
    """A latent kernel: the exact posterior's component means, each moved by a latent offset."""

    def __init__(self, mixture, schedule, offset):
        self.mixture, self.schedule, self.offset = mixture, schedule, offset
        self.dim, self.name = mixture.D, f"jitter{offset}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        post = ExactKernel(self.mixture, self.schedule).distribution(x_t, t, s)
        L = n_latent or 1
        k = torch.multinomial(post.weights, L, replacement=True, generator=generator)
        mu = torch.gather(post.means, 1, k[..., None].expand(-1, -1, post.D)) + self.offset
        return LatentMixture(mu, post.eigvals[0, 0].item())


@pytest.mark.parametrize("kind", ["moment", "isotropic", "beta_tilde", "beta"])
@pytest.mark.parametrize("mix", [TWO, SKEW], ids=["two", "skew"])
def test_matches_quadrature_within_error(kind, mix):
    ch = SCHED.respace(10)
    k = BestGaussianKernel(mix, SCHED, kind)
    for t, s in [(400, 300), (200, 100), (100, 0)]:
        assert int(t) in ch.original_steps.tolist()
        quad = local_error_quadrature(mix, k, t, s)
        mc = local_error(mix, k, t, s, n_points=4096, generator=gen(t))
        assert quad.se < 1e-3 * quad.mean + 1e-12
        assert abs(mc.mean - quad.mean) <= 4.5 * mc.se + 1e-3 * quad.mean, (kind, t, mc, quad)


def test_exact_kernel_is_zero():
    for mix in [TWO, GaussianMixture.grid(3)]:
        r = local_error(mix, ExactKernel(mix, SCHED), 500, 400, n_points=64, generator=gen())
        assert r.mean == 0.0 and r.se == 0.0
        q = local_error_quadrature(TWO, ExactKernel(TWO, SCHED), 300, 200)
        assert abs(q.mean) < 1e-12


@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), t=st.integers(2, 1000), kind=st.sampled_from(
    ["moment", "isotropic", "beta_tilde", "beta"]))
def test_nonnegative_up_to_error(seed, t, kind):
    mix = GaussianMixture.random(3, 2, generator=gen(seed), kind="full")
    s = int(torch.randint(0, t, (1,), generator=gen(seed + 1)))
    r = local_error(mix, BestGaussianKernel(mix, SCHED, kind), t, s, n_points=256,
                    generator=gen(seed))
    assert math.isfinite(r.mean) and r.se >= 0
    assert r.mean >= -4 * r.se - 1e-12


def test_decreases_as_the_step_shrinks():
    k = BestGaussianKernel(TWO, SCHED, "moment")
    t = 300
    vals = [local_error_quadrature(TWO, k, t, s).mean for s in (0, 100, 200, 280, 299)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    mc = [local_error(TWO, k, t, s, n_points=2048, generator=gen(s)) for s in (0, 200, 299)]
    assert mc[0].mean - 4 * mc[0].se > mc[1].mean + 4 * mc[1].se
    assert mc[1].mean - 4 * mc[1].se > mc[2].mean


def test_shared_draws_and_methods():
    ks = [BestGaussianKernel(TWO, SCHED, "beta"), ExactKernel(TWO, SCHED),
          JitterKernel(TWO, SCHED, 0.0)]
    rs = local_errors(TWO, ks, 200, 100, n_points=512, n_latent=32, generator=gen())
    assert [r.method for r in rs] == ["gaussian-cv", "mc", "latent-mc"]
    assert rs[2].n_latent == 32 and rs[0].n_latent is None
    assert [r.kernel for r in rs] == [k.name for k in ks]


def test_latent_kernel_bias_shrinks_with_latent_draws_and_offset_costs():
    k0, k1 = JitterKernel(TWO, SCHED, 0.0), JitterKernel(TWO, SCHED, 0.3)
    few = local_error(TWO, k0, 100, 0, n_points=1024, n_latent=2, generator=gen())
    many = local_error(TWO, k0, 100, 0, n_points=1024, n_latent=256, generator=gen())
    assert few.mean > many.mean + 3 * (few.se + many.se)    # log-mean-exp bias is upward
    assert many.mean < 0.05
    off = local_error(TWO, k1, 100, 0, n_points=1024, n_latent=256, generator=gen())
    assert off.mean > 10 * many.mean + 0.1


def test_curve_over_a_respaced_chain():
    ch = SCHED.respace(8, "trailing")
    c = local_error_curve(TWO, BestGaussianKernel(TWO, SCHED, "beta_tilde"), ch, n_points=256,
                          generator=gen())
    steps = ch.original_steps.tolist()
    assert c.t.tolist() == steps[::-1][:-1] and c.s.tolist() == steps[::-1][1:]
    assert c.total == pytest.approx(c.mean.sum()) and c.max == c.mean.max()
    assert set(c.as_dict()) >= {"t", "s", "mean", "se", "sum", "max"}


def test_bad_input():
    k = BestGaussianKernel(TWO, SCHED, "moment")
    with pytest.raises(ValueError, match="s < t"):
        local_error(TWO, k, 10, 10)
    with pytest.raises(ValueError, match="n_points"):
        local_error(TWO, k, 10, 5, n_points=1)
    with pytest.raises(ValueError, match="1-D"):
        g = GaussianMixture.grid(2)
        local_error_quadrature(g, BestGaussianKernel(g, SCHED), 10, 5)
    with pytest.raises(ValueError, match="dim"):
        local_error(GaussianMixture.grid(2), k, 10, 5)


def test_step_scorer_on_a_chain():
    ch = SCHED.respace(5)
    k = BestGaussianKernel(TWO, SCHED, "beta_tilde")
    scorer = StepScorer(TWO, n_mc=4, generator=gen())
    ancestral_sample(k, torch.randn(200, 1, generator=gen(), dtype=torch.float64), ch,
                     generator=gen(), callback=scorer)
    d = scorer.as_dict()
    assert d["t"] == ch.original_steps.tolist()[::-1][:-1]
    assert max(d["mean_gap"]) < 1e-9      # the best Gaussians' means are exact
    assert all(k > -4 * se - 1e-9 for k, se in zip(d["kl_t"], d["kl_t_se"]))


def test_smd_construction_exact_below_lambda_min_and_sampled_latents_converge():
    from smdlab.kernels import MixtureConstructionKernel

    mix = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01])
    t, s = 300, 200
    exact = local_error(mix, MixtureConstructionKernel(mix, SCHED, 1.0), t, s, n_points=256,
                        n_latent=None, generator=gen())
    assert exact.mean == 0.0
    floor = local_error(mix, MixtureConstructionKernel(mix, SCHED, 4.0), t, s, n_points=1024,
                        n_latent=None, generator=gen())
    assert floor.mean > 4 * floor.se
    few, many = (local_error(mix, MixtureConstructionKernel(mix, SCHED, 1.0), t, s,
                             n_points=1024, n_latent=L, generator=gen()) for L in (2, 512))
    assert many.mean < few.mean and many.mean < 0.02
    with pytest.raises(ValueError, match="ratio"):
        MixtureConstructionKernel(mix, SCHED, -1.0)
