"""A user's own kernel returning torch.distributions runs through sampling, local and global error.

The kernel under test writes the best beta-tilde Gaussian (the exact posterior mean, DDPM's fixed
variance) with ``torch.distributions.Independent(Normal(...), 1)``: it is the same density as the
lab's own BestGaussianKernel("beta_tilde"), so every error measure must agree with the lab's to
rounding, and the samplers must treat its generator-less sampling reproducibly.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from smdlab import BestGaussianKernel, GaussianMixture, NoiseSchedule, ancestral_sample, posterior
from smdlab.distributions import Gaussian, as_gaussian, sample_step, step_mean
from smdlab.global_error import grid_global_error
from smdlab.kernels import ReverseKernel
from smdlab.local_error import StepScorer, local_error

ROOT = NoiseSchedule.linear(1000)
MIX = GaussianMixture.two_modes(2.0, 0.1)
CHAIN = ROOT.respace(8)


class TorchKernel(ReverseKernel):
    """What a PyTorch user writes first: the posterior mean with DDPM's fixed variance."""

    def __init__(self, mixture, schedule, form="independent"):
        self.mixture, self.schedule, self.dim = mixture, schedule, mixture.D
        self.form, self.name = form, f"torch-{form}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        mean = posterior(self.mixture, self.schedule, x_t, t, s).mean()
        var = self.schedule.kernel_variance(t, s)
        if self.form == "independent":
            return Independent(Normal(mean, math.sqrt(var) * torch.ones_like(mean)), 1)
        if self.form == "mvn":
            return MultivariateNormal(mean, var * torch.eye(mean.shape[1], dtype=mean.dtype))
        if self.form == "normal":        # the mistake: per-coordinate log-densities
            return Normal(mean, math.sqrt(var))
        # A non-Gaussian step: two equal bumps either side of the mean.
        offs = torch.tensor([-0.05, 0.05], dtype=mean.dtype)
        locs = mean[:, None, :] + offs[None, :, None]
        comp = Independent(Normal(locs, math.sqrt(var) * torch.ones_like(locs)), 1)
        return MixtureSameFamily(Categorical(torch.ones(mean.shape[0], 2, dtype=mean.dtype)), comp)


def test_ancestral_sample_reproducible_from_the_generator_and_global_rng_untouched():
    k = TorchKernel(MIX, ROOT)
    x_T = torch.randn(300, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = torch.get_rng_state()
    a = ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(5))
    b = ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(5))
    c = ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x_T.shape and a.dtype == x_T.dtype
    # 8 steps of the best beta-tilde Gaussian land near the two modes at +-1.
    assert 0.8 < a.abs().median().item() < 1.2
    # Without a generator the global RNG decides: torch.manual_seed reproduces the run.
    torch.manual_seed(1)
    d = ancestral_sample(k, x_T, CHAIN)
    torch.manual_seed(1)
    assert torch.equal(d, ancestral_sample(k, x_T, CHAIN))


def test_callback_sees_the_torch_distribution_and_the_trace_reads_it():
    trace = StepScorer(MIX, n_mc=4, generator=torch.Generator().manual_seed(0))
    seen = []

    def callback(info):
        seen.append(type(info.distribution).__name__)
        trace(info)

    x_T = torch.randn(200, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ancestral_sample(TorchKernel(MIX, ROOT), x_T, CHAIN, generator=torch.Generator().manual_seed(2),
                     callback=callback)
    assert seen == ["Independent"] * CHAIN.T
    rows = trace.as_dict()
    # Its mean is the exact posterior mean: no gap; its KL is measured (it is read as a Gaussian).
    assert max(rows["mean_gap"]) < 1e-12
    assert all(math.isfinite(v) and v >= -1e-9 for v in rows["kl_t"])


@pytest.mark.parametrize("form", ["independent", "mvn"])
def test_local_error_matches_the_lab_kernel(form):
    mine, lab = TorchKernel(MIX, ROOT, form), BestGaussianKernel(MIX, ROOT, "beta_tilde")
    for t, s in [(1000, 875), (125, 0)]:
        a = local_error(MIX, mine, t, s, n_points=512, generator=torch.Generator().manual_seed(3))
        b = local_error(MIX, lab, t, s, n_points=512, generator=torch.Generator().manual_seed(3))
        assert a.method == b.method == "gaussian-cv"
        assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-15)
        assert a.se == pytest.approx(b.se, rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("form", ["independent", "mvn"])
def test_grid_global_error_matches_the_lab_kernel(form):
    mine, lab = TorchKernel(MIX, ROOT, form), BestGaussianKernel(MIX, ROOT, "beta_tilde")
    a = grid_global_error(MIX, mine, CHAIN, n_grid=256)
    b = grid_global_error(MIX, lab, CHAIN, n_grid=256)
    assert a["kl"] > 0.01                                   # 8 Gaussian steps miss two modes
    assert a["kl"] == pytest.approx(b["kl"], rel=1e-9)


def test_non_gaussian_torch_step_samples_and_scores_but_cannot_be_pushed():
    k = TorchKernel(MIX, ROOT, "mixture")
    x_T = torch.randn(100, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(1))
    assert x0.shape == x_T.shape and torch.isfinite(x0).all()
    r = local_error(MIX, k, 1000, 875, n_points=256, generator=torch.Generator().manual_seed(2))
    assert r.method == "mc" and math.isfinite(r.mean) and r.mean >= 0
    with pytest.raises(ValueError, match=r"cannot push a MixtureSameFamily.*Independent\(Normal"):
        grid_global_error(MIX, k, CHAIN, n_grid=128)


def test_bare_normal_is_refused_with_the_fix_named():
    with pytest.raises(ValueError, match=r"Independent\(Normal\(loc, scale\), 1\)"):
        grid_global_error(MIX, TorchKernel(MIX, ROOT, "normal"), CHAIN, n_grid=128)


@given(n=st.integers(1, 5), d=st.integers(1, 4), seed=st.integers(0, 2 ** 31 - 1),
       iso=st.booleans())
def test_as_gaussian_keeps_the_density(n, d, seed, iso):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = torch.rand(n, 1 if iso else d, generator=g, dtype=torch.float64) + 0.1
    dist = Independent(Normal(loc, scale.expand(n, d)), 1)
    gauss = as_gaussian(dist)
    assert isinstance(gauss, Gaussian) and gauss.isotropic == (iso or d == 1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gauss.log_prob(x), dist.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step_mean(dist), step_mean(gauss))
    # Sampling from the generator is reproducible, and its draws have the right scale.
    big = Independent(Normal(torch.zeros(4000, d, dtype=torch.float64), 2.0), 1)
    a = sample_step(big, torch.Generator().manual_seed(seed))
    assert torch.equal(a, sample_step(big, torch.Generator().manual_seed(seed)))
    assert abs(a.std().item() - 2.0) < 0.1


class DuckNormal:
    """Not a torch Distribution, but with its signatures: sample(sample_shape), log_prob, mean."""

    def __init__(self, loc, sd):
        self.loc, self.sd = loc, sd

    @property
    def mean(self):
        return self.loc

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.loc.shape
        return self.loc + self.sd * torch.randn(shape, dtype=self.loc.dtype)

    def log_prob(self, x):
        return Independent(Normal(self.loc, self.sd), 1).log_prob(x)


class DuckKernel(TorchKernel):
    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        mean = posterior(self.mixture, self.schedule, x_t, t, s).mean()
        return DuckNormal(mean, math.sqrt(self.schedule.kernel_variance(t, s)))


def test_torch_style_object_samples_from_the_generator_and_is_scored():
    k = DuckKernel(MIX, ROOT)
    x_T = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, ancestral_sample(k, x_T, CHAIN, generator=torch.Generator().manual_seed(3)))
    r = local_error(MIX, k, 1000, 875, n_points=256, generator=torch.Generator().manual_seed(2))
    ref = local_error(MIX, BestGaussianKernel(MIX, ROOT, "beta_tilde"), 1000, 875, n_points=256,
                      generator=torch.Generator().manual_seed(2))
    assert r.method == "mc" and abs(r.mean - ref.mean) < 4 * math.hypot(r.se, ref.se) + 1e-9
    with pytest.raises(ValueError, match="cannot push a DuckNormal"):
        grid_global_error(MIX, k, CHAIN, n_grid=128)
