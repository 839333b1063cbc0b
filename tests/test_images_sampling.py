"""Image sampling goes through the same samplers as vectors: DDIM(eta=1) = ancestral for a
beta-tilde kernel, DDIM(0) is deterministic, respaced chains visit the right root steps, the last
jump samples the kernel's final variance, a point mass is recovered exactly."""

import pytest
import torch
from torch import nn

from smdlab.denoisers import GaussianDenoiser
from smdlab.images.models import ModelSpec, build_model
from smdlab.images.sampling import clip_to_data_range, generate, save_grid
from smdlab.images.unet import UNet, UNetConfig
from smdlab.sampling import ancestral_sample, ddim_sample
from smdlab.schedules import NoiseSchedule

SHAPE = (1, 8, 8)


def unet():
    return UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                      latent_dim=2, inner_dim=4)


@pytest.fixture(scope="module")
def ddpm():
    torch.manual_seed(0)
    model = GaussianDenoiser(UNet(unet()), NoiseSchedule.linear(100), SHAPE, "v")
    with torch.no_grad():  # residual branches start at zero; give the net a non-trivial output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_ancestral_steps_are_the_kernels_steps(ddpm):
    # What the sampler draws from at every jump (the callback's distribution) is the kernel's own
    # step distribution, the last jump included, and x_s is a draw of it.
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    infos = []
    ancestral_sample(ddpm, x, ddpm.schedule.respace(3), generator=torch.Generator().manual_seed(1),
                     callback=infos.append)
    assert [(i.t, i.s) for i in infos] == [(100, 67), (67, 33), (33, 0)]
    for info in infos:
        want = ddpm.distribution(info.x_t, info.t, info.s)
        torch.testing.assert_close(info.distribution.mean(), want.mean())
        torch.testing.assert_close(info.distribution.variance, want.variance)
        assert info.x_s.shape == info.x_t.shape == x.shape and info.x0_hat.shape == x.shape
        torch.testing.assert_close(info.x0_hat, ddpm.denoise(info.x_t, info.t))
    assert infos[-1].distribution.variance.unique().item() == pytest.approx(
        ddpm.final_jump_variance(33))


def test_ddim_eta_one_equals_ancestral_and_eta_zero_is_deterministic(ddpm):
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    chain = ddpm.schedule.respace(5)
    a = ancestral_sample(ddpm, x, chain, generator=torch.Generator().manual_seed(2),
                         x0_hook=clip_to_data_range)
    d = ddim_sample(ddpm, x, chain, eta=1.0, generator=torch.Generator().manual_seed(2),
                    x0_hook=clip_to_data_range)
    torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-8)
    d0 = [ddim_sample(ddpm, x, chain, 0.0, generator=torch.Generator().manual_seed(k))
          for k in (3, 4)]
    torch.testing.assert_close(d0[0], d0[1])
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(ddpm, 2, chain, "euler")
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(ddpm, x, chain, eta=1.5)


def test_respaced_chain_visits_root_steps(ddpm):
    chain = ddpm.schedule.respace(7, "linspace")
    seen = []
    ancestral_sample(ddpm, torch.randn(2, *SHAPE), chain, callback=lambda i: seen.append(i.t))
    assert seen == chain.original_steps[1:].flip(0).tolist()


class PointMass(nn.Module):
    """An x0-network that always predicts the same image: the exact denoiser of a point mass."""

    def __init__(self, image):
        super().__init__()
        self.image = nn.Parameter(image)

    def forward(self, x, t, z=None):
        return self.image.expand_as(x)


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
@pytest.mark.parametrize("steps", [1, 3, 50])
def test_point_mass_recovered_exactly(method, steps):
    # Every jump lands on the point's posterior mean; the last one adds the kernel's final
    # variance, here negligible (1e-16), so the images are the point to float32 precision.
    target = torch.rand(SHAPE) * 2 - 1
    model = GaussianDenoiser(PointMass(target), NoiseSchedule.linear(50), SHAPE, "x0",
                             final_variance=1e-16)
    x = generate(model, 5, model.schedule.respace(steps), method, batch_size=2, seed=0)
    torch.testing.assert_close(x, target.expand(5, *SHAPE))


def test_final_jump_samples_the_final_variance():
    # The one final-jump rule: the jump to 0 draws N(x0_hat, final_variance I) for ancestral
    # sampling and DDIM(eta=1), and lands on x0_hat for DDIM(eta=0).
    target = torch.zeros(SHAPE, dtype=torch.float64)
    model = GaussianDenoiser(PointMass(target), NoiseSchedule.linear(50), SHAPE, "x0",
                             final_variance=0.04).double()
    x = torch.randn(4000, *SHAPE, dtype=torch.float64)
    for sampler, sd in [(ancestral_sample, 0.2), (lambda *a, **k: ddim_sample(*a, eta=1.0, **k), 0.2),
                        (lambda *a, **k: ddim_sample(*a, eta=0.0, **k), 0.0)]:
        x0 = sampler(model, x, model.schedule.respace(2), generator=torch.Generator().manual_seed(0))
        assert x0.std().item() == pytest.approx(sd, abs=2e-3)
        assert abs(x0.mean().item()) < 5 * 0.2 / (4000 * 64) ** 0.5 + 1e-12


def test_generate_smd_reproducible_and_frozen(tmp_path):
    torch.manual_seed(0)
    smd = build_model(ModelSpec("smd", "smd", latent_dim=2), unet(), NoiseSchedule.linear(20))
    a = generate(smd, 6, smd.schedule.respace(4), batch_size=4, seed=3)
    b = generate(smd, 6, smd.schedule.respace(4), batch_size=4, seed=3)
    assert a.shape == (6, *SHAPE) and a.dtype == torch.float32 and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    frozen = generate(smd.with_frozen_eta(), 6, smd.schedule.respace(4), "ddim", batch_size=6)
    assert frozen.shape == a.shape
    path = save_grid(a, tmp_path / "grid.png", nrow=3)
    from PIL import Image

    assert Image.open(path).size == ((3 * 9 + 1) * 4, (2 * 9 + 1) * 4)


def test_latent_spread_zero_iff_latent_ignored():
    from smdlab.images.models import latent_spread

    torch.manual_seed(0)
    smd = build_model(ModelSpec("smd", "smd", latent_dim=2), unet(), NoiseSchedule.linear(20))
    x0 = torch.rand(6, *SHAPE) * 2 - 1
    fresh = latent_spread(smd, x0, steps=(5, 20), n_eta=4)
    frozen = latent_spread(smd.with_frozen_eta(), x0, steps=(5, 20), n_eta=4)
    for t in (5, 20):
        assert fresh[t]["eta_std"] > 0 and fresh[t]["ratio"] > 0
        assert frozen[t]["eta_std"] == 0 and frozen[t]["data_std"] > 0
