"""Image samplers: ancestral = the kernel's own step, DDIM(eta=1) = ancestral, DDIM(0) is
deterministic, respaced chains visit the right root steps, a point mass is recovered exactly."""

import pytest
import torch
from torch import nn

from smdlab.denoisers import GaussianDenoiser
from smdlab.images.models import ModelSpec, build_model
from smdlab.images.sampling import generate, reverse_step, sample_chain, save_grid
from smdlab.images.unet import UNet, UNetConfig
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


@pytest.mark.parametrize("t,s", [(100, 60), (37, 36), (10, 0)])
def test_ancestral_step_is_the_kernels_step(ddpm, t, s):
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    dist = ddpm.distribution(x, t, s)
    got = reverse_step(ddpm, x, t, s, "ancestral", clip=False,
                       generator=torch.Generator().manual_seed(1))
    if s == 0:  # the last jump returns its mean
        want = dist.mean
    else:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
        want = dist.mean + dist.variance.sqrt()[:, None] * noise.flatten(1)
    torch.testing.assert_close(got.flatten(1), want, rtol=1e-5, atol=1e-6)


def test_ddim_eta_one_equals_ancestral_and_eta_zero_is_deterministic(ddpm):
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    a = reverse_step(ddpm, x, 80, 50, "ancestral", generator=torch.Generator().manual_seed(2))
    d = reverse_step(ddpm, x, 80, 50, "ddim", ddim_eta=1.0,
                     generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-8)
    d0 = [reverse_step(ddpm, x, 80, 50, "ddim", 0.0, generator=torch.Generator().manual_seed(k))
          for k in (3, 4)]
    torch.testing.assert_close(d0[0], d0[1])
    with pytest.raises(ValueError, match="unknown sampler"):
        reverse_step(ddpm, x, 80, 50, "euler")


def test_respaced_chain_visits_root_steps(ddpm):
    chain = ddpm.schedule.respace(7, "linspace")
    seen = []
    sample_chain(ddpm, torch.randn(2, *SHAPE), chain, callback=lambda i, t, s, x: seen.append(t))
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
    target = torch.rand(SHAPE) * 2 - 1
    model = GaussianDenoiser(PointMass(target), NoiseSchedule.linear(50), SHAPE, "x0")
    x = generate(model, 5, model.schedule.respace(steps), method, batch_size=2, seed=0)
    torch.testing.assert_close(x, target.expand(5, *SHAPE))


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
