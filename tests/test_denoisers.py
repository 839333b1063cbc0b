"""The learned kernels: reverse-kernel contract, parameterisations, the step formula, SMD's latent."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from smdlab import (
    BestGaussianKernel,
    GaussianMixture,
    LatentMixture,
    NoiseSchedule,
    ancestral_sample,
    expected_x0,
    posterior,
)
from smdlab.denoisers import GaussianDenoiser, SMDDenoiser
from smdlab.nets import VectorLatentGenerator, VectorMLP

ROOT = NoiseSchedule.linear(1000)


class OracleNet(nn.Module):
    """Outputs the exact regression target of a mixture (E[x0 | x_t] in the chosen parameterisation)."""

    def __init__(self, mixture, schedule, parameterization):
        super().__init__()
        self.mixture, self.schedule, self.p = mixture, schedule, parameterization
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, z=None):
        x0 = expected_x0(self.mixture, self.schedule, x, int(t[0]))
        ab = self.schedule.alpha_bars[int(t[0])]
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return {"x0": x0, "eps": eps, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.p]


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize("t,s", [(1000, 999), (1000, 750), (400, 100), (20, 3)])
def test_oracle_network_gives_the_best_beta_tilde_gaussian(param, t, s):
    # A network that outputs the exact conditional expectation makes the DDPM kernel the best
    # Gaussian with the posterior variance: the step formula and every parameterisation agree.
    mix = GaussianMixture.two_modes(2.0, 0.2)
    den = GaussianDenoiser(OracleNet(mix, ROOT, param), ROOT, 1, param)
    best = BestGaussianKernel(mix, ROOT, "beta_tilde")
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None]
    d, b = den.distribution(x, t, s), best.distribution(x, t, s)
    torch.testing.assert_close(d.mean(), b.mean(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(d.variance, b.variance)


def test_step_formula_is_the_posterior_of_a_point_mass():
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    point = GaussianMixture([1.0], x0, [1e-14])
    net = nn.Linear(2, 2).double()
    den = GaussianDenoiser(net, ROOT, 2, "x0")
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(5, 2, generator=g, dtype=torch.float64)
    for t, s in [(1000, 500), (10, 9), (300, 1)]:
        tv, sv = torch.full((5,), t), torch.full((5,), s)
        c0, ct, var = den.step_coefficients(tv, sv)
        post = posterior(point, ROOT, x_t, t, s)
        torch.testing.assert_close(c0[:, None] * x0 + ct[:, None] * x_t, post.mean())
        torch.testing.assert_close(var, post.covariance()[:, 0, 0], rtol=1e-6, atol=1e-16)


def test_last_jump_variance_is_clipped_and_beta_option():
    den = GaussianDenoiser(nn.Linear(1, 1), ROOT, 1, variance="beta_tilde")
    _, _, var = den.step_coefficients(torch.tensor([250]), torch.tensor([0]))
    assert var.item() == pytest.approx(ROOT.betas[0].item())
    den = GaussianDenoiser(nn.Linear(1, 1), ROOT, 1, variance="beta")
    _, _, var = den.step_coefficients(torch.tensor([250]), torch.tensor([100]))
    assert var.item() == pytest.approx(ROOT.jump_beta(250, 100))


@given(param=st.sampled_from(["eps", "x0", "v"]), t=st.integers(1, 1000),
       seed=st.integers(0, 10_000))
def test_parameterisations_round_trip(param, t, seed):
    den = GaussianDenoiser(nn.Linear(3, 3).double(), ROOT, 3, param)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    tv = torch.full((4,), t)
    x_t = den.diffuse(x0, eps, tv)
    rec = den.x0_from_output(den.regression_target(x0, eps, tv), x_t, tv)
    torch.testing.assert_close(rec, x0, rtol=1e-6, atol=1e-6 / den.abar(tv)[0].sqrt().item())


def _smd(freeze=False, shape=2):
    torch.manual_seed(0)
    return SMDDenoiser(VectorMLP(shape, 32, 1, latent_dim=8, inner_dim=8),
                       VectorLatentGenerator(shape, 3, 8, hidden=16), ROOT, shape, 3, "v",
                       freeze_eta=freeze)


def test_smd_distribution_and_frozen_latent():
    smd = _smd()
    x = torch.randn(6, 2, dtype=torch.float64)
    d = smd.distribution(x, 500, 250, generator=torch.Generator().manual_seed(1), n_latent=5)
    assert isinstance(d, LatentMixture) and d.means.shape == (6, 5, 2)
    assert d.means.dtype == torch.float64
    assert d.means.std(1).min() > 0          # fresh eta per draw: the latent changes the mean
    frozen = smd.with_frozen_eta()
    assert frozen.net is smd.net and not smd.freeze_eta and frozen.freeze_eta
    f = frozen.distribution(x, 500, 250, n_latent=5)
    assert (f.means - f.means[:, :1]).abs().max() == 0
    lp = d.log_prob(d.sample(torch.Generator().manual_seed(2)))
    assert lp.shape == (6,) and torch.isfinite(lp).all()


def test_samplers_run_learned_kernels_on_respaced_chains():
    chain = ROOT.respace(4)
    smd = _smd()
    smd.schedule = chain
    ddpm = GaussianDenoiser(VectorMLP(2, 32, 1), chain, 2, "eps")
    g = torch.Generator().manual_seed(0)
    for k in (smd, ddpm):
        x = ancestral_sample(k, torch.randn(7, 2, generator=g, dtype=torch.float64), generator=g)
        assert x.shape == (7, 2) and x.dtype == torch.float64 and torch.isfinite(x).all()
        x = ancestral_sample(k, torch.randn(3, 2, dtype=torch.float64), chain.respace(2))
        assert torch.isfinite(x).all()
        # A kernel on a 4-step chain asked for root steps it does not keep is an error (the
        # step-index convention, smdlab.parameterization.root_jump), not a silent extrapolation.
        with pytest.raises(ValueError, match="kept steps"):
            ancestral_sample(k, torch.randn(3, 2, dtype=torch.float64), ROOT.respace(10))


def test_fixed_generator_makes_sampling_reproducible():
    smd = _smd()
    x = torch.randn(5, 2, dtype=torch.float64)
    a = smd.sample(x, 700, 300, torch.Generator().manual_seed(3))
    b = smd.sample(x, 700, 300, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="parameterization"):
        GaussianDenoiser(nn.Linear(1, 1), ROOT, 1, "score")
    with pytest.raises(ValueError, match="variance"):
        GaussianDenoiser(nn.Linear(1, 1), ROOT, 1, variance="learned")
    smd = _smd()
    with pytest.raises(ValueError, match="s < t"):
        smd.distribution(torch.zeros(2, 2, dtype=torch.float64), 3, 5)
    with pytest.raises(ValueError, match="n_latent"):
        smd.distribution(torch.zeros(2, 2, dtype=torch.float64), 5, 3, n_latent=0)
    with pytest.raises(ValueError, match="latent"):
        VectorMLP(2, 8, 1, latent_dim=4)(torch.zeros(1, 2), torch.zeros(1))


@pytest.mark.parametrize("final", ["beta1", "clipped"])
def test_oracle_net_module_matches_best_gaussian_including_last_jump(final):
    # smdlab.nets.OracleNet inside a GaussianDenoiser is the oracle DDPM; with the "clipped" final
    # variance it is exactly the lab's best beta-tilde Gaussian on every jump of a respaced chain.
    from smdlab.nets import OracleNet
    mix = GaussianMixture.grid(3, 0.5, 0.1)
    chain = ROOT.respace(4)
    den = GaussianDenoiser(OracleNet(mix, ROOT, "v"), chain, 2, "v", final_variance=final)
    best = BestGaussianKernel(mix, ROOT, "beta_tilde")
    x = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t, s in [(1000, 750), (500, 250), (250, 0)]:
        d, b = den.distribution(x, t, s), best.distribution(x, t, s)
        torch.testing.assert_close(d.mean(), b.mean())
        if final == "clipped" or s > 0:
            torch.testing.assert_close(d.variance, b.variance)
        else:
            assert (d.variance == ROOT.betas[0]).all()
