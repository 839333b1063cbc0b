"""The cheap latent generator (``ModelSpec.generator="shared"``): it reuses the U-Net's stem
(weights and the computed features), keeps the SMD kernel contract (z depends on x_t, t and eta),
trains, samples, resumes bit-identically, and an energy-trained model still uses its latent."""

import pytest
import torch

from smdlab.images.models import ModelSpec, build_model, latent_spread
from smdlab.images.sampling import generate
from smdlab.images.unet import SharedLatentGenerator, UNetConfig
from smdlab.objectives import Objective
from smdlab.schedules import NoiseSchedule

from .test_images_training import UNET, _run, images


def shared(objective="energy", n=2, conditioning="hyper"):
    return ModelSpec("smd", "smd", objective, n, latent_dim=2, generator="shared",
                     conditioning=conditioning)


def build(spec, unet=UNET):
    torch.manual_seed(0)
    return build_model(spec, unet, NoiseSchedule.linear(50))


def test_builds_on_the_unets_own_stem():
    m = build(shared())
    assert isinstance(m.gen, SharedLatentGenerator) and m.gen.unet is m.net
    sep = build(ModelSpec("smd", "smd", "energy", 2, latent_dim=2))
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in sep.parameters())
    # the U-Net is not registered twice: its weights appear once, under net.
    keys = m.state_dict().keys()
    assert not any(k.startswith("gen.unet") or k.startswith("gen._trunk") for k in keys)
    assert {k.split(".")[1] for k in keys if k.startswith("gen.")} == {"eta_in", "block", "norm",
                                                                       "out"}
    with pytest.raises(ValueError, match="unknown latent generator"):
        ModelSpec("smd", "smd", generator="shard")
    # the published default keeps its old spec dict (so its checkpoints still resume)
    assert "generator" not in sep.net.config.to_dict() and "generator" not in \
        ModelSpec("smd", "smd").to_dict() and shared().to_dict()["generator"] == "shared"


def test_stem_is_computed_once_and_the_cache_changes_nothing():
    m = build(shared()).eval()
    calls = []
    h = m.net.conv_in.register_forward_hook(lambda *a: calls.append(1))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([3, 20, 49])
    eta = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        out = m(x, t, eta)
        assert len(calls) == 1 and m.net._stem_cache is None      # consumed by the U-Net
        z = m.gen(x, eta, t)
        m.net._stem_cache = None                                  # force a recomputation
        again = m.net(x, t, z)
    h.remove()
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    # another x (a different object, even with equal values) never takes the cached stem
    with torch.no_grad():
        m.gen(x, eta, t)
        other = m.net(x + 1, t, z)
        m.net._stem_cache = None
        torch.testing.assert_close(other, m.net(x + 1, t, z), rtol=0, atol=0)


def test_latent_depends_on_eta_x_and_t():
    m = build(shared()).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    eta = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        z = m.gen(x, eta, t)
        assert z.shape == (2, 2, 8, 8)
        assert not torch.allclose(z, m.gen(x, torch.randn_like(eta), t))
        assert not torch.allclose(z, m.gen(x + 0.5, eta, t))
        # t enters through the residual block, whose last conv starts at zero (as every
        # ResBlock's): give it weights to see the time dependence
        m.gen.block.conv2.weight.normal_(0, 0.3)
        z = m.gen(x, eta, t)
        assert not torch.allclose(z, m.gen(x, eta, torch.tensor([40, 40])))
        m.net._stem_cache = None
        y = m(x, t, eta)
        assert not torch.allclose(y, m(x, t, torch.randn_like(eta)))


def test_trains_samples_and_resumes_bit_identically(tmp_path):
    spec = shared()
    full = _run(tmp_path / "full", 6, spec)
    _run(tmp_path / "part", 4, spec)
    resumed = _run(tmp_path / "part", 6, spec)
    assert resumed.result.resumed_from == 4 and resumed.result.step == 6
    for a, b in ((full.result.model, resumed.result.model), (full.result.ema, resumed.result.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    # the EMA copy's generator is built on the EMA U-Net, not on the training one
    ema = full.result.ema
    assert ema.gen.unet is ema.net and ema.gen.unet is not full.result.model.net
    x = generate(ema.eval(), 6, ema.schedule.respace(3), batch_size=6, seed=1)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    again = generate(ema, 6, ema.schedule.respace(3), batch_size=6, seed=1)
    assert torch.equal(x, again)


@pytest.mark.parametrize("conditioning", ["hyper", "film"])
def test_energy_trained_shared_model_uses_its_latent(conditioning):
    """The step mean moves with eta (spread over eta > 0) after energy training, and by far more
    than after jensen training (which collapses the kernel to a Gaussian); also with FiLM
    conditioning (the cheap SMD of benchmarks/bench_unet.py)."""
    unet = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                      inner_dim=8)
    x = images(128, seed=4)
    ratios = {}
    for objective, n in (("energy", 2), ("jensen", 1)):
        torch.manual_seed(0)
        schedule = NoiseSchedule.linear(100)
        model = build_model(shared(objective, n, conditioning), unet, schedule)
        chain = schedule.respace(3)
        from smdlab.images.train import train_image_model
        from smdlab.training import TrainConfig

        res = train_image_model(model, Objective(objective, chain, n_samples=n), x,
                                TrainConfig(steps=40, lr=2e-3, ema_decay=0.0, seed=0),
                                batch_size=16)
        net = res.result.model.eval()
        ratios[objective] = latent_spread(net, x[:32], [100], n_eta=6)[100]["ratio"]
        d = net.distribution(net.diffuse(x[:8], torch.randn(8, 1, 8, 8), torch.full((8,), 100)),
                             100, 67, generator=torch.Generator().manual_seed(0), n_latent=6)
        spread = d.means.std(1).mean().item()
        if objective == "energy":
            assert spread > 1e-3
    assert ratios["energy"] > 0.05 and ratios["energy"] > 3 * ratios["jensen"], ratios


# The lab's kernel contract (tests/test_kernel_contract.py), run on the shared-generator kernel.
from . import test_kernel_contract as _contract  # noqa: E402


@pytest.fixture(scope="module")
def kernel():
    torch.manual_seed(0)
    return _contract._perturbed(build_model(shared("jensen", 1), _contract.UNET, _contract.ROOT))


test_contract_shapes_and_dtype = _contract.test_shapes_and_dtype
test_contract_seeded_chain = _contract.test_seeded_generator_makes_the_chain_reproducible
test_contract_samples_centred = _contract.test_samples_are_centred_on_the_mean
test_contract_final_jump = _contract.test_final_jump
test_contract_denoise = _contract.test_denoise
test_contract_x0_hook = _contract.test_x0_hook
test_contract_bad_steps = _contract.test_bad_steps_raise
