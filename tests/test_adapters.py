"""Adapters (diffusers-style and k-diffusion-style models as kernels) and the diffusers schedule
conversion, against diffusers' published formulas written out here (diffusers is not installed).

diffusers' formulas used below (DDPMScheduler, ``schedulers/scheduling_ddpm.py``):
  * betas: "linear" linspace(beta_start, beta_end, T) in float32; "squaredcos_cap_v2"
    beta_i = min(1 - f((i + 1) / T) / f(i / T), 0.999), f(u) = cos((u + 0.008) / 1.008 pi / 2)^2;
    alphas_cumprod = cumprod(1 - betas);
  * set_timesteps: "leading" (i * (T // S) for i < S, reversed) + steps_offset (default 0),
    "trailing" round(arange(T, 0, -T / S)) - 1; the previous timestep of the last one is -1
    (alpha_prod = 1);
  * step, from x_t at timestep k to k_prev: a_t = alphas_cumprod[k], a_p = alphas_cumprod[k_prev]
    (1 for -1), beta = 1 - a_t / a_p; x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t) ("epsilon"),
    sqrt(a_t) x - sqrt(1 - a_t) v ("v_prediction"); mean = sqrt(a_p) beta / (1 - a_t) x0 +
    sqrt(a_t / a_p) (1 - a_p) / (1 - a_t) x; variance "fixed_small" (1 - a_p) / (1 - a_t) beta,
    "fixed_large" beta; no noise is added on the last step (timestep 0).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from smdlab import (
    BestGaussianKernel,
    GaussianMixture,
    NoiseSchedule,
    ancestral_sample,
    diffusers_kernel,
    k_diffusion_kernel,
)
from smdlab.exact import posterior_from_log_alpha_bars

MIX = GaussianMixture.two_modes(2.0, 0.1)
T = 1000


def diffusers_linear_alphas_cumprod(T=T, start=1e-4, end=0.02):
    betas = torch.linspace(start, end, T, dtype=torch.float32)
    return betas, torch.cumprod(1.0 - betas, 0)


def diffusers_cosine_betas(T):
    f = [math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(T + 1)]
    return np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)])


def diffusers_timesteps(T, S, spacing, offset=0):
    if spacing == "leading":
        return ((np.arange(0, S) * (T // S)).round()[::-1] + offset).astype(np.int64).tolist()
    if spacing == "linspace":
        return np.linspace(0, T - 1, S).round()[::-1].astype(np.int64).tolist()
    return (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1).tolist()


def diffusers_step(ac, k, k_prev, x, out, prediction="epsilon", variance="fixed_small"):
    a_t = float(ac[k])
    a_p = float(ac[k_prev]) if k_prev >= 0 else 1.0
    beta = 1 - a_t / a_p
    if prediction == "epsilon":
        x0 = (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
    elif prediction == "v_prediction":
        x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out
    else:
        x0 = out
    mean = math.sqrt(a_p) * beta / (1 - a_t) * x0 + math.sqrt(a_t / a_p) * (1 - a_p) / (1 - a_t) * x
    var = (1 - a_p) / (1 - a_t) * beta if variance == "fixed_small" else beta
    return mean, max(var, 1e-20)


class OracleUNet:
    """A diffusers-style stand-in: model(x, timestep).sample, the exact E[eps|x], E[v|x] or
    E[x0|x] of MIX at diffusers timestep k, computed from diffusers' own alphas_cumprod[k]."""

    def __init__(self, alphas_cumprod, prediction="epsilon"):
        self.ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.prediction = prediction
        self.calls = []

    def __call__(self, x, timestep):
        k = int(timestep[0])
        assert (timestep == k).all()
        self.calls.append(k)
        a = self.ac[k]
        x0 = posterior_from_log_alpha_bars(MIX, x, a.log().item(), 0.0).mean()
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}
        return SimpleNamespace(sample=out[self.prediction])


def oracle_denoiser(x, sigma):
    """A k-diffusion-style stand-in D(x, sigma) = E[x0 | x0 + sigma eps = x] of MIX."""
    assert sigma.shape == (x.shape[0],) and (sigma == sigma[0]).all()
    abar = 1.0 / (1.0 + sigma[0].item() ** 2)
    return posterior_from_log_alpha_bars(MIX, x * math.sqrt(abar), math.log(abar), 0.0).mean()


# ------------------------------------------------------------------------ schedules
def test_from_diffusers_alphas_cumprod_is_alpha_bars_shifted():
    betas, ac = diffusers_linear_alphas_cumprod()
    ours = NoiseSchedule.linear(T)
    conv = NoiseSchedule.from_diffusers(ac)
    assert conv.T == T and conv.alpha_bars[0] == 1
    torch.testing.assert_close(conv.alpha_bars[1:], ac.double(), rtol=1e-13, atol=0)
    torch.testing.assert_close(ours.alpha_bars[1:], ac.double(), rtol=5e-6, atol=0)
    # A scheduler object: its float32 betas are used (accurate where abar ratios are not).
    sched = SimpleNamespace(betas=betas, alphas_cumprod=ac)
    torch.testing.assert_close(NoiseSchedule.from_diffusers(sched).betas, ours.betas, rtol=1e-6,
                               atol=0)


def test_cosine_matches_squaredcos_cap_v2():
    for n in (10, 1000):
        np.testing.assert_allclose(NoiseSchedule.cosine(n).betas.numpy(), diffusers_cosine_betas(n),
                                   rtol=1e-10)


def test_to_diffusers_round_trip():
    for sched in (NoiseSchedule.linear(T), NoiseSchedule.cosine(50), NoiseSchedule.sigmoid(200)):
        kw = sched.to_diffusers()
        assert kw["num_train_timesteps"] == sched.T
        ac = np.cumprod(1 - np.array(kw["trained_betas"]))        # what diffusers computes
        np.testing.assert_allclose(ac, sched.alpha_bars[1:].numpy(), rtol=1e-12)
        back = NoiseSchedule.from_diffusers(ac)
        torch.testing.assert_close(back.log_alpha_bars, sched.log_alpha_bars, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="respaced"):
        NoiseSchedule.linear(T).respace(10).to_diffusers()


@pytest.mark.parametrize("bad", [[0.9, 0.95], [1.0, 0.5], [0.5, 0.0], [], [0.5, float("nan")]])
def test_from_diffusers_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        NoiseSchedule.from_diffusers(bad)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("S", [1, 4, 7, 10, 50, 333, 999, 1000])
def test_respace_diffusers_follows_its_timesteps(S, spacing):
    root = NoiseSchedule.linear(T)
    ch = root.respace_diffusers(S, spacing)
    assert ch.T == S and ch.root is root
    assert ch.diffusers_timesteps() == diffusers_timesteps(T, S, spacing)
    # Exact sub-chain: abar on kept steps is the root's.
    torch.testing.assert_close(ch.alpha_bars, root.alpha_bars[ch.original_steps], rtol=0, atol=0)
    if spacing == "leading":    # root step = timestep + 1; the chain ends with the jump 1 -> 0
        assert ch.original_steps[:2].tolist() == [0, 1]
    if spacing == "leading" and S == 10:
        assert ch.original_steps.tolist() == [0, 1, 101, 201, 301, 401, 501, 601, 701, 801, 901]


def test_respace_diffusers_steps_offset_and_errors():
    root = NoiseSchedule.linear(T)
    ch = root.respace_diffusers(10, "leading", steps_offset=1)     # Stable Diffusion's setting
    assert ch.diffusers_timesteps() == diffusers_timesteps(T, 10, "leading", offset=1)
    with pytest.raises(ValueError, match="leading"):
        root.respace(10, "leading")                          # respace keeps its start-at-T rule
    with pytest.raises(ValueError, match="root"):
        root.respace(10).respace_diffusers(5)
    with pytest.raises(ValueError, match="timestep_spacing"):
        root.respace_diffusers(10, "quadratic")
    with pytest.raises(ValueError, match="outside"):
        root.respace_diffusers(10, "leading", steps_offset=100)


@pytest.mark.parametrize("S", [1, 4, 10, 50, 100, 1000])
def test_trailing_spacing_is_diffusers_trailing_when_S_divides_T(S):
    assert torch.equal(NoiseSchedule.linear(T).respace(S, "trailing").original_steps,
                       NoiseSchedule.linear(T).respace_diffusers(S, "trailing").original_steps)




# ------------------------------------------------------------------------ diffusers adapter
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_diffusers_steps_agree_with_diffusers_formulas(prediction, variance):
    _, ac = diffusers_linear_alphas_cumprod()
    model = OracleUNet(ac, prediction)
    sched = NoiseSchedule.from_diffusers(ac)
    k = diffusers_kernel(model, sched, 1, prediction,
                         variance={"fixed_small": "beta_tilde", "fixed_large": "beta"}[variance])
    chain = sched.respace_diffusers(10)
    x = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)[:, None]
    steps = chain.original_steps.tolist()
    ts = diffusers_timesteps(T, 10, "leading")
    for i, kt in enumerate(ts):
        t, s = steps[len(steps) - 1 - i], steps[len(steps) - 2 - i]
        k_prev = ts[i + 1] if i + 1 < len(ts) else -1
        assert (t, s) == (kt + 1, k_prev + 1)
        out = model(x, torch.full((41,), kt)).sample
        mean, var = diffusers_step(ac, kt, k_prev, x, out, prediction, variance)
        dist = k.distribution(x, t, s)
        assert model.calls[-1] == kt               # the model saw diffusers' own timestep
        torch.testing.assert_close(dist.mean(), mean, rtol=1e-9, atol=1e-9)
        if k_prev >= 0 or variance == "fixed_large":
            torch.testing.assert_close(dist.variance, torch.full((41,), var, dtype=torch.float64),
                                       rtol=1e-9, atol=0)
        else:   # diffusers returns the mean on its last step; smdlab samples beta_1 there
            assert dist.variance[0].item() == pytest.approx(-math.expm1(sched.log_alpha_bars[1].item()))


def test_diffusers_oracle_is_the_best_beta_tilde_kernel():
    _, ac = diffusers_linear_alphas_cumprod()
    sched = NoiseSchedule.from_diffusers(ac)
    best = BestGaussianKernel(MIX, sched, "beta_tilde")
    x = torch.linspace(-3, 3, 25, dtype=torch.float64)[:, None]
    for pred in ("epsilon", "v_prediction", "sample"):
        k = diffusers_kernel(OracleUNet(ac, pred), SimpleNamespace(
            betas=None, alphas_cumprod=ac, config=SimpleNamespace(prediction_type=pred)), 1)
        assert k.parameterization == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[pred]
        for t, s in [(1000, 900), (300, 299), (40, 20)]:
            torch.testing.assert_close(k.distribution(x, t, s).mean(), best.distribution(x, t, s).mean(),
                                       rtol=1e-9, atol=1e-9)


class TinyUNet(nn.Module):
    """A diffusers-shaped module with float32 parameters, returning a tuple (return_dict=False)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.seen = None

    def forward(self, x, timestep):
        self.seen = (x.dtype, timestep.clone())
        return (self.conv(x) * 0.1,)


def test_diffusers_module_on_images_runs_through_the_sampler():
    net = TinyUNet()
    k = diffusers_kernel(net, NoiseSchedule.linear(100), (1, 4, 4))
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x0 = ancestral_sample(k, x_T, k.schedule.respace_diffusers(5),
                          generator=torch.Generator().manual_seed(1))
    assert x0.shape == x_T.shape and x0.dtype == x_T.dtype and torch.isfinite(x0).all()
    dtype, timestep = net.seen
    assert dtype == torch.float32 and timestep.tolist() == [0, 0, 0]     # the last jump, 1 -> 0


def test_diffusers_adapter_refuses_bad_models():
    sched = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusers_kernel(OracleUNet(sched.alpha_bars[1:]), sched, 1, "eps")
    with pytest.raises(TypeError, match="callable"):
        diffusers_kernel(42, sched, 1)
    with pytest.raises(TypeError, match="schedule"):
        diffusers_kernel(OracleUNet(sched.alpha_bars[1:]), "linear", 1)
    k = diffusers_kernel(lambda x, t: SimpleNamespace(sample=x[:, :0]), sched, 1)
    with pytest.raises(ValueError, match="shape"):
        k.denoise(torch.zeros(2, 1, dtype=torch.float64), 5)


# ------------------------------------------------------------------------ k-diffusion adapter
def test_k_diffusion_oracle_is_the_best_beta_tilde_kernel():
    sched = NoiseSchedule.cosine(T)
    k = k_diffusion_kernel(oracle_denoiser, sched, 1)
    best = BestGaussianKernel(MIX, sched, "beta_tilde")
    x = torch.linspace(-3, 3, 25, dtype=torch.float64)[:, None]
    for t, s in [(1000, 900), (500, 499), (10, 0)]:
        a, b = k.distribution(x, t, s), best.distribution(x, t, s)
        torch.testing.assert_close(a.mean(), b.mean(), rtol=1e-9, atol=1e-9)
        if s > 0:
            torch.testing.assert_close(a.variance, b.variance)
    torch.testing.assert_close(k.denoise(x, 700), best.denoise(x, 700), rtol=1e-9, atol=1e-9)


def test_k_diffusion_sees_sigma_of_the_step():
    sched = NoiseSchedule.linear(T)
    seen = []

    def D(x, sigma):
        seen.append((x.clone(), sigma.clone()))
        return torch.zeros_like(x)

    k = k_diffusion_kernel(D, sched, 2)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k.denoise(x, 250)
    ab = sched.alpha_bars[250]
    xs, sigma = seen[-1]
    torch.testing.assert_close(sigma, torch.full((4,), ((1 - ab) / ab).sqrt().item(), dtype=torch.float64))
    torch.testing.assert_close(xs, x / ab.sqrt())
    with pytest.raises(ValueError, match="shape"):
        k_diffusion_kernel(lambda x, s: x[:, :1], sched, 2).denoise(x, 3)
