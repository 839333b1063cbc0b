"""The reverse-kernel contract (smdlab.kernels), checked on every kernel class the same way:
shapes and dtype, determinism under a seeded generator, root steps on respaced chains, samples
against the step distribution's mean and normalisation, the final jump, denoise, bad steps."""

import math

import pytest
import torch

from smdlab import (
    BestGaussianKernel,
    ExactKernel,
    GaussianMixture,
    MixtureConstructionKernel,
    NoiseSchedule,
    ancestral_sample,
    ddim_sample,
    expected_x0,
    posterior,
)
from smdlab.denoisers import GaussianDenoiser, SMDDenoiser
from smdlab.distributions import Gaussian
from smdlab.images.models import ModelSpec, build_model
from smdlab.images.unet import UNetConfig
from smdlab.local_error import local_error
from smdlab.mixture_kernel import MixtureDenoiser, build_mixture_mlp
from smdlab.nets import VectorLatentGenerator, VectorMLP

ROOT = NoiseSchedule.linear(100)
MIX = GaussianMixture.two_modes()
UNET = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                  latent_dim=2, inner_dim=4)


def _perturbed(model):
    # Residual branches start at zero; a perturbation gives every part of the net an effect.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _vec_ddpm(sched):
    torch.manual_seed(0)
    return GaussianDenoiser(VectorMLP(1, 16, 1, time_dim=8, T=100), sched, 1, "v").eval()


def _vec_smd(sched):
    torch.manual_seed(0)
    return SMDDenoiser(VectorMLP(1, 16, 1, time_dim=8, T=100, latent_dim=4, inner_dim=4),
                       VectorLatentGenerator(1, 2, 4, hidden=8, T=100), sched, 1, 2, "v").eval()


def _vec_mixture(sched):
    torch.manual_seed(0)
    return _perturbed(MixtureDenoiser(build_mixture_mlp(1, 3, hidden=16, depth=1, time_dim=8,
                                                        T=100), sched, 1, 3, "v"))


def _img(kind):
    def make(sched):
        torch.manual_seed(0)
        spec = ModelSpec(kind, kind, latent_dim=2) if kind == "smd" else ModelSpec(kind, kind)
        return _perturbed(build_model(spec, UNET, sched))
    return make


KERNELS = {
    "exact": lambda s: ExactKernel(MIX, s),
    **{f"gaussian-{k}": (lambda s, k=k: BestGaussianKernel(MIX, s, k))
       for k in ("moment", "isotropic", "beta_tilde", "beta")},
    "smd-construction": lambda s: MixtureConstructionKernel(MIX, s),
    "ddpm-vector": _vec_ddpm,
    "smd-vector": _vec_smd,
    "mixture-vector": _vec_mixture,
    "ddpm-image": _img("ddpm"),
    "smd-image": _img("smd"),
}
NAMES = list(KERNELS)
VECTOR = [n for n in NAMES if not n.endswith("image")]


@pytest.fixture(scope="module", params=NAMES)
def kernel(request):
    return KERNELS[request.param](ROOT)


def _shape(k):
    return (k.dim,) if isinstance(k.dim, int) else tuple(k.dim)


def _points(k, n, seed=0, dtype=torch.float64):
    return torch.randn((n, *_shape(k)), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_dtype(kernel):
    D = math.prod(_shape(kernel))
    for dtype in (torch.float64, torch.float32):
        x = _points(kernel, 5, dtype=dtype)
        for t, s in [(100, 60), (30, 0)]:
            x_s = kernel.sample(x, t, s, _gen(1))
            assert x_s.shape == x.shape and x_s.dtype == dtype and torch.isfinite(x_s).all()
    x = _points(kernel, 5)
    dist = kernel.distribution(x, 60, 40, _gen(2))
    draw = dist.sample(_gen(3))
    assert dist.mean().shape == draw.shape == (5, D)
    lp = dist.log_prob(draw)
    assert lp.shape == (5,) and torch.isfinite(lp).all()


def test_seeded_generator_makes_the_chain_reproducible(kernel):
    x = _points(kernel, 4)
    chain = ROOT.respace(5)
    a, b, c = (ancestral_sample(kernel, x, chain, generator=_gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x0_a, x0_b = (kernel.sample(x, 40, 20, _gen(9)) for _ in range(2))
    assert torch.equal(x0_a, x0_b)


@pytest.mark.parametrize("name", NAMES)
def test_root_steps_on_a_respaced_chain(name):
    # A kernel on a 4-step chain takes ROOT steps 100, 75, 50, 25, 0, and nothing else.
    chain = ROOT.respace(4)
    k = KERNELS[name](chain)
    x = _points(k, 3)
    seen = []
    ancestral_sample(k, x, generator=_gen(0), callback=lambda i: seen.append((i.t, i.s)))
    assert seen == [(100, 75), (75, 50), (50, 25), (25, 0)]
    k.sample(x, 75, 25, _gen(1))                    # kept steps, skipping one: fine
    for t, s in [(4, 3), (60, 25), (75, 30)]:       # own indices or steps the chain does not keep
        with pytest.raises(ValueError, match="kept step"):
            k.sample(x, t, s, _gen(1))
    with pytest.raises(ValueError, match="kept step"):
        k.denoise(x, 30)
    with pytest.raises(ValueError, match="respacing"):
        ancestral_sample(k, x, ROOT.respace(10))


def test_local_error_and_posterior_refuse_coarse_indices():
    # The example: on a 10-step respacing, (5, 4) must not silently mean root jump 5 -> 4.
    coarse = ROOT.respace(10)
    with pytest.raises(ValueError, match="kept step"):
        local_error(MIX, BestGaussianKernel(MIX, coarse), 5, 4, n_points=8)
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    with pytest.raises(ValueError, match="kept step"):
        posterior(MIX, coarse, x, 5, 4)
    a, b = posterior(MIX, coarse, x, 50), posterior(MIX, ROOT, x, 50, 40)   # s: the kept step below
    torch.testing.assert_close(a.mean(), b.mean())
    torch.testing.assert_close(a.covariance(), b.covariance())


@pytest.mark.parametrize("t,s", [(60, 40), (30, 0)])
def test_samples_are_centred_on_the_mean(kernel, t, s):
    # x_s - mean() has mean 0 (and, for isotropic Gaussians, the kernel's variance) at every jump.
    n = 4000 if kernel.dim == 1 else 200
    x = _points(kernel, 1, seed=4).expand(n, *_shape(kernel)).clone()
    dist, _ = kernel.step(x, t, s, _gen(5))
    r = dist.sample(_gen(6)) - dist.mean()
    se = r.std(0) / math.sqrt(n)
    assert (r.mean(0).abs() < 5 * se + 1e-12).all()
    if isinstance(dist, Gaussian) and dist.isotropic:
        var = dist.variance[0].item()
        assert r.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / r.numel()) + 1e-9)


@pytest.mark.parametrize("name", VECTOR)
@pytest.mark.parametrize("t,s", [(60, 40), (30, 0)])
def test_log_prob_is_normalised(name, t, s):
    k = KERNELS[name](ROOT)
    x = torch.tensor([[-1.5], [0.2], [1.3]], dtype=torch.float64)
    dist = k.distribution(x, t, s, _gen(0), n_latent=3)
    grid = torch.linspace(-8, 8, 8001, dtype=torch.float64)
    dens = torch.stack([dist.log_prob(g.expand(3, 1)).exp() for g in grid])
    mass = torch.trapezoid(dens, grid, dim=0)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    mean = torch.trapezoid(dens * grid[:, None], grid, dim=0)
    torch.testing.assert_close(mean, dist.mean()[:, 0], atol=1e-6, rtol=0)


def test_final_jump(kernel):
    # The last jump samples the kernel's own step distribution; a beta-tilde kernel's variance
    # there is its final_jump_variance; DDIM(eta=0) lands on the clean-point prediction.
    x = _points(kernel, 3)
    last = []
    ancestral_sample(kernel, x, ROOT.respace(3), generator=_gen(0), callback=last.append)
    info = last[-1]
    assert (info.t, info.s) == (33, 0) and info.x_s.shape == x.shape
    beta_tilde = getattr(kernel, "variance", getattr(kernel, "kind", None)) == "beta_tilde"
    if beta_tilde:
        var = info.distribution.variance
        torch.testing.assert_close(var, torch.full_like(var, kernel.final_jump_variance(33)))
    ddim = []
    ddim_sample(kernel, x, ROOT.respace(3), eta=0.0, generator=_gen(0), callback=ddim.append)
    torch.testing.assert_close(ddim[-1].x_s, ddim[-1].x0_hat.to(x.dtype))


def test_denoise(kernel):
    x = _points(kernel, 6)
    x0 = kernel.denoise(x, 40, generator=_gen(0))
    assert x0.shape == x.shape and x0.dtype == torch.float64 and torch.isfinite(x0).all()
    if isinstance(kernel, (ExactKernel, BestGaussianKernel)):
        torch.testing.assert_close(x0, expected_x0(MIX, ROOT, x, 40))
    with pytest.raises(ValueError, match="t >= 1"):
        kernel.denoise(x, 0)


def test_x0_hook(kernel):
    x = _points(kernel, 4)
    hook = torch.zeros_like
    if not isinstance(kernel, (GaussianDenoiser, SMDDenoiser)):
        with pytest.raises(ValueError, match="x0_hook"):
            kernel.step(x, 60, 40, x0_hook=hook)
        return
    dist, x0 = kernel.step(x, 60, 40, _gen(0), x0_hook=hook)
    _, ct, _ = kernel.step_coefficients(torch.tensor([60]), torch.tensor([40]))
    assert (x0 == 0).all()
    torch.testing.assert_close(dist.mean(), ct.item() * x.flatten(1))


@pytest.mark.parametrize("t,s,err", [(101, 0, ValueError), (50, 50, ValueError),
                                     (40, 60, ValueError), (50, -1, ValueError),
                                     (0, 0, ValueError), (50.5, 0, TypeError)])
def test_bad_steps_raise(kernel, t, s, err):
    x = _points(kernel, 2)
    with pytest.raises(err):
        kernel.sample(x, t, s)
    with pytest.raises(err):
        kernel.distribution(x, t, s)
