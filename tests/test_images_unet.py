"""U-Net shapes, latent conditioning, the image latent generator and capacity matching."""

import pytest
import torch

from smdlab.images.unet import (
    CONDITIONINGS,
    LatentGenerator,
    UNet,
    UNetConfig,
    capacity_matched_config,
    count_parameters,
)


def small(**kw):
    base = dict(in_channels=1, image_size=8, base_channels=16, channel_mults=(1, 2),
                attn_resolutions=(4,))
    base.update(kw)
    return UNetConfig(**base)


@pytest.mark.parametrize("size,mults,channels", [(8, (1, 2), 1), (28, (1, 2, 2), 1),
                                                 (12, (1, 2, 2), 3), (7, (1, 2), 3)])
def test_shapes_any_size(size, mults, channels):
    net = UNet(small(in_channels=channels, image_size=size, channel_mults=mults,
                     attn_resolutions=(size,), num_res_blocks=2))
    x = torch.randn(3, channels, size, size)
    assert net(x, torch.tensor([0, 500, 999])).shape == x.shape
    assert net(x, torch.tensor(7)).shape == x.shape  # a scalar step broadcasts


@pytest.mark.parametrize("kind", [c for c in CONDITIONINGS if c != "none"])
def test_latent_changes_output_and_is_required(kind):
    torch.manual_seed(0)
    net = UNet(small(conditioning=kind, latent_dim=4, inner_dim=12))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    z1, z2 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    y1, y2 = net(x, t, z1), net(x, t, z2)
    assert y1.shape == x.shape and not torch.allclose(y1, y2)
    # the latent acts per pixel: changing z at one pixel changes the output near that pixel first
    z3 = z1.clone()
    z3[:, :, 0, 0] += 3.0
    assert not torch.allclose(net(x, t, z3), y1)
    with pytest.raises(ValueError, match="needs a latent"):
        net(x, t)
    with pytest.raises(ValueError, match="no latent"):
        UNet(small())(x, t, z1)


def test_hyper_equals_naive_in_the_unet():
    torch.manual_seed(1)
    fast = UNet(small(conditioning="hyper", latent_dim=4, inner_dim=10))
    naive = UNet(small(conditioning="hyper_naive", latent_dim=4, inner_dim=10))
    naive.load_state_dict(fast.state_dict())
    x, t, z = torch.randn(2, 1, 8, 8), torch.tensor([3, 300]), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(fast(x, t, z), naive(x, t, z), rtol=1e-4, atol=1e-5)


def test_time_changes_output():
    net = UNet(small())
    with torch.no_grad():  # residual branches start at zero (DDPM init); give them weights
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([1, 1])), net(x, torch.tensor([900, 900])))


def test_latent_generator_shape_and_noise_dependence():
    g = LatentGenerator(3, latent_dim=5, image_size=8, base_channels=8)
    x = torch.randn(2, 3, 8, 8)
    z1, z2 = g(x, torch.randn_like(x), torch.tensor([5, 5])), g(x, torch.randn_like(x),
                                                                  torch.tensor([5, 5]))
    assert z1.shape == (2, 5, 8, 8) and not torch.allclose(z1, z2)


def test_capacity_matching_within_five_percent():
    cfg = small(conditioning="hyper", latent_dim=8)
    target = count_parameters(UNet(cfg)) + count_parameters(LatentGenerator(1, 8, 8, 4))
    matched = capacity_matched_config(target, cfg)
    assert matched.conditioning == "none"
    assert abs(count_parameters(UNet(matched)) / target - 1) <= 0.05
    with pytest.raises(ValueError, match="no plain U-Net"):
        capacity_matched_config(10, cfg)


def test_published_configuration_builds():
    # width 128, multipliers 1,2,2,2, attention at 16, latent 100 per pixel, 2 hyper layers:
    # the published CIFAR-10 configuration; about 35.7M parameters for the plain DDPM U-Net.
    cfg = UNetConfig(in_channels=3, image_size=32, base_channels=128, channel_mults=(1, 2, 2, 2),
                     num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    plain = count_parameters(UNet(cfg))
    assert 35e6 < plain < 36.5e6
    smd = count_parameters(UNet(cfg, conditioning="hyper", latent_dim=100))
    assert 0 < smd - plain < 0.01 * plain


def test_bad_config():
    with pytest.raises(ValueError, match="unknown conditioning"):
        UNetConfig(conditioning="matrix")
    with pytest.raises(ValueError, match="latent_dim"):
        UNetConfig(conditioning="film")
