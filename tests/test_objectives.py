"""Training objectives: K = 1 multisample equals jensen, the bound tightens with K, the energy score
prefers a sampler of q(x_0 | x_t) while the jensen loss prefers the collapsed mean, any data shape,
and the headline hypothesis on a 1-D two-mode target with 2 steps."""

import pytest
import torch
from torch import nn

from smdlab import GaussianMixture, NoiseSchedule, ancestral_sample
from smdlab.denoisers import GaussianDenoiser, SMDDenoiser
from smdlab.nets import VectorLatentGenerator, VectorMLP
from smdlab.objectives import Objective
from smdlab.training import TrainConfig, train

ROOT = NoiseSchedule.linear(1000)


def _smd(chain, D=2, param="v"):
    torch.manual_seed(0)
    return SMDDenoiser(VectorMLP(D, 32, 1, latent_dim=8, inner_dim=8),
                       VectorLatentGenerator(D, 3, 8, hidden=16), chain, D, 3, param)


@pytest.mark.parametrize("chain", [ROOT, ROOT.respace(4)])
def test_multisample_with_one_sample_equals_jensen(chain):
    smd = _smd(chain)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a, _ = Objective("jensen", chain, weighting="likelihood")(
        smd, x0, torch.Generator().manual_seed(5))
    b, _ = Objective("multisample", chain, n_samples=1)(smd, x0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c, _ = Objective("multisample", chain, n_samples=4)(smd, x0, torch.Generator().manual_seed(5))
    assert not torch.equal(a, c)


class _Sign(nn.Module):
    """x0 prediction sign(z) or the mean 0: a sampler of the two-mode q(x_0 | x_T) vs its mean."""

    def __init__(self, collapsed):
        super().__init__()
        self.collapsed = collapsed
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, z):
        out = torch.zeros_like(x) if self.collapsed else torch.sign(z[:, :1]).expand_as(x)
        return out + 0 * self.dummy


class _Id(nn.Module):
    def forward(self, x, eta, t):
        return eta


def test_energy_prefers_sampler_and_jensen_prefers_the_mean():
    # At t = T, q(x_0 | x_T) is nearly the data: two modes at +-1.  A latent model that samples the
    # modes beats the collapsed mean under the energy score; the jensen loss ranks them the other
    # way round (its minimiser is E[x0 | x_t]): the objective problem of SMD.md in miniature.
    chain = ROOT.respace(1)
    mix = GaussianMixture.two_modes(2.0, 0.01)
    x0 = mix.sample(20000, torch.Generator().manual_seed(0)).float()
    losses = {}
    for collapsed in (True, False):
        m = SMDDenoiser(_Sign(collapsed), _Id(), chain, 1, 1, "x0")
        losses["energy", collapsed] = Objective("energy", chain, n_samples=4)(
            m, x0, torch.Generator().manual_seed(1))[0].item()
        losses["jensen", collapsed] = Objective("jensen", chain)(
            m, x0, torch.Generator().manual_seed(1))[0].item()
    assert losses["energy", False] < losses["energy", True] - 0.2
    assert losses["jensen", True] < losses["jensen", False] - 0.5


def test_multisample_bound_tightens_with_K():
    # E[-log (1/K) sum_k p_k] decreases with K (the importance bound increases to log p): a latent
    # model that picks one of two modes at random is rewarded more often with more draws.
    chain = ROOT.respace(2)
    mix = GaussianMixture.two_modes(2.0, 0.01)
    x0 = mix.sample(4096, torch.Generator().manual_seed(1)).float()
    m = SMDDenoiser(_Sign(False), _Id(), chain, 1, 1, "x0")
    with torch.no_grad():
        losses = [Objective("multisample", chain, n_samples=K)(
            m, x0, torch.Generator().manual_seed(2))[0].item() for K in (1, 4, 16)]
    assert losses[0] > losses[1] > losses[2]


class _ConvNet(nn.Module):
    def __init__(self, latent=False):
        super().__init__()
        self.conv = nn.Conv2d(1 + latent, 1, 3, padding=1)
        self.latent = latent

    def forward(self, x, t, z=None):
        h = x if z is None else torch.cat([x, z], 1)
        return self.conv(h) + t.float()[:, None, None, None] * 1e-3


class _ConvGen(nn.Module):
    def forward(self, x, eta, t):
        return x + eta


@pytest.mark.parametrize("kind,n", [("jensen", 1), ("multisample", 3), ("energy", 2)])
def test_objectives_work_for_images(kind, n):
    chain = ROOT.respace(5)
    smd = SMDDenoiser(_ConvNet(True), _ConvGen(), chain, (1, 4, 4), (1, 4, 4), "eps")
    x0 = torch.randn(6, 1, 4, 4)
    loss, _ = Objective(kind, chain, n_samples=n)(smd, x0, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert smd.net.conv.weight.grad.abs().sum() > 0
    x = smd.sample(torch.randn(2, 1, 4, 4, dtype=torch.float64), 1000, 800)
    assert x.shape == (2, 1, 4, 4)
    ddpm = GaussianDenoiser(_ConvNet(False), chain, (1, 4, 4), "v")
    loss, _ = Objective("jensen", chain)(ddpm, x0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match="energy"):
        Objective("energy", ROOT, n_samples=1)
    with pytest.raises(ValueError, match="unknown objective"):
        Objective("elbo", ROOT)
    with pytest.raises(ValueError, match="weighting"):
        Objective("jensen", ROOT, weighting="snr")
    other = NoiseSchedule.cosine(1000)
    with pytest.raises(ValueError, match="respacing"):
        Objective("jensen", other)(_smd(ROOT), torch.zeros(4, 2), None)


def _between_mass(kind, seed, chain, mix, steps=250):
    torch.manual_seed(seed)
    if kind == "ddpm":
        model = GaussianDenoiser(VectorMLP(1, 64, 2, time_dim=32), chain, 1, "v")
        obj = Objective("jensen", chain)
    else:
        model = SMDDenoiser(VectorMLP(1, 64, 2, time_dim=32, latent_dim=8, inner_dim=16),
                            VectorLatentGenerator(1, 2, 8, hidden=32, time_dim=16), chain, 1, 2,
                            "v")
        obj = Objective(kind, chain, n_samples=4)

    def data(step, g):
        return mix.sample(256, g).float()
    res = train(model, obj, data, TrainConfig(steps=steps, lr=3e-3, ema_decay=0.95, seed=seed))
    g = torch.Generator().manual_seed(100 + seed)
    x = ancestral_sample(res.ema, torch.randn(4000, 1, generator=g, dtype=torch.float64),
                         generator=g)
    return (x.abs() < 0.7).double().mean().item()


def _check_hypothesis(seeds):
    # Two modes at +-1 (std 0.1) have 0.3% of their mass in |x| < 0.7.  With 2 steps the DDPM
    # kernel cannot split the modes (it puts ~99% there); the objectives that reward using the
    # latent do.  Measured (seeds 0-2, 250 steps): DDPM 0.989-0.993, multisample 0.31-0.38,
    # energy 0.10-0.18; the margin 0.3 is far outside that seed spread.
    chain = ROOT.respace(2)
    mix = GaussianMixture.two_modes(2.0, 0.1)
    for seed in seeds:
        ddpm = _between_mass("ddpm", seed, chain, mix)
        for kind in ("multisample", "energy"):
            assert _between_mass(kind, seed, chain, mix) < ddpm - 0.3, (kind, seed)


def test_latent_objectives_separate_two_modes_with_two_steps():
    _check_hypothesis([0])


@pytest.mark.slow
def test_latent_objectives_separate_two_modes_more_seeds():
    _check_hypothesis([1, 2])


def test_energy_in_kernel_space_adds_the_final_variance_only_on_the_jump_to_0():
    chain = ROOT.respace(4)
    smd = _smd(chain)
    smd.final_variance = 0.01
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))

    def loss(space, only_last):
        obj = Objective("energy", chain, n_samples=2, energy_space=space)
        if only_last is not None:       # every drawn jump is the last one / none is
            obj._probs = torch.zeros(4, dtype=torch.float64)
            obj._probs[0 if only_last else 3] = 1.0
            obj.t_sampling = "lognormal"
        return obj(smd, x0, torch.Generator().manual_seed(3))[0]

    # above the last jump both spaces draw the same numbers and score the same predictions
    assert torch.equal(loss("x0", False), loss("kernel", False))
    # on the jump to 0 the kernel's samples carry sqrt(final variance) noise: another loss,
    # which tends to the x0-space one as that variance vanishes
    assert not torch.allclose(loss("kernel", True), loss("x0", True), atol=1e-3)
    smd.final_variance = 1e-14
    assert torch.allclose(loss("kernel", True), loss("x0", True), atol=1e-5)
    with pytest.raises(ValueError, match="energy_space"):
        Objective("energy", chain, n_samples=2, energy_space="x_s")


class _Scaled(nn.Module):
    """x0 prediction a * z: with z ~ N(0, 1), a sampler of N(0, a^2)."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))

    def forward(self, x, t, z):
        return self.a * z[:, :1]


@pytest.mark.parametrize("beta,bandwidths", [(0.5, None), (1.0, None), (1.5, None),
                                             (1.0, (0.3, 1.0, 3.0))])
def test_energy_score_of_any_exponent_is_smallest_at_the_true_spread(beta, bandwidths):
    # At t = T, q(x_0 | x_T) is the data N(0, 1): among samplers N(0, a^2) the (strictly proper)
    # energy score of exponent beta is smallest at a = 1, on both sides; a wrong weight of the
    # spread term moves that minimum (e.g. without the 1/2 the narrowest sampler wins).  The same
    # for the Gaussian-kernel score that can replace the distance.
    chain = ROOT.respace(1)
    x0 = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0))
    losses = {}
    for a in (0.6, 1.0, 1.6):
        m = SMDDenoiser(_Scaled(a), _Id(), chain, 1, 1, "x0")
        with torch.no_grad():
            losses[a] = Objective("energy", chain, n_samples=4, energy_beta=beta,
                                  energy_bandwidths=bandwidths)(
                m, x0, torch.Generator().manual_seed(1))[0].item()
    assert losses[1.0] < losses[0.6] and losses[1.0] < losses[1.6], losses


def test_energy_exponent_one_is_the_published_score_and_bad_exponents_are_refused():
    chain = ROOT.respace(4)
    smd = _smd(chain)
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    a = Objective("energy", chain, n_samples=2)(smd, x0, torch.Generator().manual_seed(3))[0]
    b = Objective("energy", chain, n_samples=2, energy_beta=1.0)(
        smd, x0, torch.Generator().manual_seed(3))[0]
    c = Objective("energy", chain, n_samples=2, energy_beta=0.5)(
        smd, x0, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert "energy_beta" not in Objective("energy", chain, n_samples=2).describe()
    assert Objective("energy", chain, n_samples=2, energy_beta=0.5).describe()[
        "energy_beta"] == 0.5
    for bad in (0.0, 2.0, -1.0):
        with pytest.raises(ValueError, match="energy_beta"):
            Objective("energy", chain, n_samples=2, energy_beta=bad)
    for bad in ((), (0.1, 0.0), (-1.0,)):
        with pytest.raises(ValueError, match="energy_bandwidths"):
            Objective("energy", chain, n_samples=2, energy_bandwidths=bad)
    with pytest.raises(ValueError, match="alternatives"):
        Objective("energy", chain, n_samples=2, energy_beta=0.5, energy_bandwidths=(0.1,))
