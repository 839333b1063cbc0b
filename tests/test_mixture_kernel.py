"""The discrete-latent mixture kernel (smdlab.mixture_kernel) and the weighted LatentMixture it
returns: an oracle network that outputs the exact clean-point posterior makes every step the
exact reverse transition; the exact-likelihood objective trains it; bad weights are refused."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab import GaussianMixture, NoiseSchedule, ancestral_sample, posterior
from smdlab.convergence import LearningCurve
from smdlab.denoisers import GaussianDenoiser
from smdlab.distributions import LatentMixture
from smdlab.global_error import grid_global_error
from smdlab.local_error import local_error
from smdlab.mixture_kernel import (
    LOG_VAR_OFFSET,
    VAR_FLOOR,
    MixtureDenoiser,
    build_mixture_mlp,
    posterior_nll,
)
from smdlab.nets import VectorMLP
from smdlab.objectives import Objective

ROOT = NoiseSchedule.linear(100)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class OracleHead(torch.nn.Module):
    """net(x_t, t) -> the head whose mixture (1) is exactly q(x_0 | x_t) (x0 parameterisation)."""

    def __init__(self, mix: GaussianMixture, sched: NoiseSchedule):
        super().__init__()
        self.mix, self.sched = mix, sched
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t, t):
        t0 = int(t[0])
        assert (t == t0).all()
        post = posterior(self.mix, self.sched.root, x_t.to(torch.float64), t0, 0)
        var = post.eigvals[:, 0]                        # isotropic components: one per k
        raw = torch.log(var - VAR_FLOOR) - LOG_VAR_OFFSET
        N, K = post.log_weights.shape
        h = torch.cat([post.means, post.log_weights[..., None],
                       raw.expand(N, K)[..., None]], -1)
        return h.reshape(N, -1).to(x_t.dtype) + 0 * self.anchor


def _oracle(mix, chain):
    return MixtureDenoiser(OracleHead(mix, chain), chain, mix.D, mix.K, "x0").eval()


MIX2 = GaussianMixture.grid(3, spacing=1.0, std=0.15)
MIX1 = GaussianMixture.two_modes()


@pytest.mark.parametrize("mix", [MIX1, MIX2], ids=["1d", "2d"])
@pytest.mark.parametrize("t,s", [(100, 60), (40, 39), (30, 0)])
def test_oracle_head_gives_the_exact_reverse_transition(mix, t, s):
    k = _oracle(mix, ROOT)
    x = torch.randn(64, mix.D, dtype=torch.float64, generator=_gen(0)) * 1.5
    dist = k.distribution(x, t, s)
    q = posterior(mix, ROOT, x, t, s)
    y = q.sample(_gen(1))
    assert isinstance(dist, LatentMixture) and dist.weighted
    torch.testing.assert_close(dist.log_prob(y), q.log_prob(y), rtol=0, atol=1e-8)
    torch.testing.assert_close(dist.mean(), q.mean(), rtol=0, atol=1e-9)
    torch.testing.assert_close(k.denoise(x, t), posterior(mix, ROOT, x, t, 0).mean(),
                               rtol=0, atol=1e-9)


def test_oracle_has_zero_local_error_and_matches_the_exact_global_kl():
    mix = MIX2
    chain = ROOT.respace(4)
    k = _oracle(mix, chain)
    le = local_error(mix, k, 50, 25, n_points=512, generator=_gen(0))
    assert le.method == "mc" and abs(le.raw_mean) < 1e-9
    g = grid_global_error(mix, k, n_grid=96, progress=False)
    # The exact chain started at N(0, I) differs from q only by its prior's KL (tiny at T=100).
    from smdlab import ExactKernel
    ref = grid_global_error(mix, ExactKernel(mix, chain), n_grid=96, progress=False)
    assert abs(g["kl"] - ref["kl"]) < 1e-3


def test_step_refuses_x0_hook_and_denoise_at_zero():
    k = _oracle(MIX1, ROOT)
    x = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="x0_hook"):
        k.step(x, 50, 49, x0_hook=lambda x0: x0)
    with pytest.raises(ValueError, match="t >= 1"):
        k.denoise(x, 0)


def test_wrong_head_width_is_a_clear_error():
    k = MixtureDenoiser(VectorMLP(2, 16, 1, time_dim=8, T=100), ROOT, 2, 3)
    with pytest.raises(ValueError, match=r"K \* \(D \+ 2\)"):
        k.distribution(torch.zeros(4, 2), 50, 40)


@pytest.mark.parametrize("bad", [dict(dim=0), dict(n_components=0), dict(n_components=2.5)])
def test_bad_constructor_arguments(bad):
    kw = {"dim": 2, "n_components": 3, **bad}
    with pytest.raises(ValueError):
        MixtureDenoiser(VectorMLP(2, 16, 1, time_dim=8, T=100, out_dim=12), ROOT, **kw)


def test_vector_mlp_out_dim_is_validated():
    assert VectorMLP(2, 8, 1, time_dim=4, T=10, out_dim=7)(torch.zeros(3, 2),
                                                              torch.ones(3, dtype=torch.long)).shape == (3, 7)
    with pytest.raises(ValueError, match="out_dim"):
        VectorMLP(2, 8, 1, time_dim=4, T=10, out_dim=0)


def test_initial_mixture_is_broad_and_even():
    torch.manual_seed(0)
    k = MixtureDenoiser(build_mixture_mlp(2, 5, hidden=16, depth=1, time_dim=8, T=100), ROOT, 2, 5)
    log_w, m, v = k.components(torch.randn(6, 2), torch.full((6,), 50))
    torch.testing.assert_close(log_w.exp(), torch.full((6, 5), 0.2))
    torch.testing.assert_close(v, torch.full((6, 5), VAR_FLOOR + math.exp(LOG_VAR_OFFSET)))


def test_nll_objective_trains_and_refuses_other_denoisers():
    torch.manual_seed(0)
    mix = MIX1.to(dtype=torch.float32)
    k = MixtureDenoiser(build_mixture_mlp(1, 4, hidden=32, depth=1, time_dim=8, T=100), ROOT, 1, 4)
    obj = Objective("nll", ROOT)
    opt = torch.optim.Adam(k.parameters(), lr=3e-3)
    g = _gen(0)
    x0 = mix.sample(512, generator=g)
    first = last = None
    for _ in range(150):
        loss, metrics = obj(k, x0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < first - 0.3 and 1.0 <= metrics["components_used"] <= 4.0
    ddpm = GaussianDenoiser(VectorMLP(1, 8, 1, time_dim=8, T=100), ROOT, 1, "v")
    with pytest.raises(ValueError, match="MixtureDenoiser"):
        obj(ddpm, x0, g)


def test_posterior_nll_of_the_oracle_is_the_exact_conditional_nll():
    mix = MIX2
    k = _oracle(mix, ROOT)
    g = _gen(3)
    x0 = mix.sample(200, generator=g)
    t = 30
    lt = ROOT.log_alpha_bars[t].item()
    x_t = math.exp(0.5 * lt) * x0 + math.sqrt(-math.expm1(lt)) * torch.randn(x0.shape, generator=g,
                                                                              dtype=x0.dtype)
    nll, _ = posterior_nll(k.net, k, x0, x_t, torch.full((200,), t))
    want = -posterior(mix, ROOT, x_t, t, 0).log_prob(x0).mean() / mix.D
    assert abs(nll.item() - want.item()) < 1e-8


def test_a_sampled_chain_of_the_oracle_lands_in_the_modes():
    mix = MIX2
    k = _oracle(mix, ROOT.respace(4))
    x = ancestral_sample(k, torch.randn(400, 2, dtype=torch.float64, generator=_gen(0)),
                         generator=_gen(1))
    d = torch.cdist(x, mix.means).min(1).values
    assert (d < 3 * 0.15).double().mean() > 0.95


# --- the weighted LatentMixture ------------------------------------------------------------------

@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_weighted_mixture_density_is_the_weighted_sum(L, D, seed):
    g = _gen(seed)
    means = torch.randn(5, L, D, dtype=torch.float64, generator=g)
    var = torch.rand(5, L, dtype=torch.float64, generator=g) + 0.1
    lw = torch.log_softmax(torch.randn(5, L, dtype=torch.float64, generator=g), -1)
    x = torch.randn(5, D, dtype=torch.float64, generator=g)
    got = LatentMixture(means, var, lw).log_prob(x)
    dens = sum(lw[:, l].exp() * torch.exp(-0.5 * ((x - means[:, l]) ** 2).sum(-1) / var[:, l])
               / (2 * math.pi * var[:, l]) ** (D / 2) for l in range(L))
    torch.testing.assert_close(got, dens.log(), rtol=1e-10, atol=1e-10)


def test_weighted_sampling_follows_the_weights_and_the_mean():
    w = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).expand(20000, 3)
    means = torch.tensor([[[-5.0], [0.0], [5.0]]], dtype=torch.float64).expand(20000, 3, 1)
    lm = LatentMixture(means, torch.full((20000, 3), 0.01, dtype=torch.float64), w.log())
    x = lm.sample(_gen(0))[:, 0]
    share = torch.stack([(x < -2.5).double().mean(), (x.abs() < 2.5).double().mean(),
                         (x > 2.5).double().mean()])
    se = (w[0] * (1 - w[0]) / 20000).sqrt()
    assert ((share - w[0]).abs() < 5 * se).all()
    torch.testing.assert_close(lm.mean()[0, 0], torch.tensor(-3.0, dtype=torch.float64))


def test_unweighted_mixture_is_unchanged_by_the_weights_option():
    g = _gen(0)
    means = torch.randn(4, 3, 2, dtype=torch.float64, generator=g)
    x = torch.randn(4, 2, dtype=torch.float64, generator=g)
    plain = LatentMixture(means, 0.3)
    even = LatentMixture(means, 0.3, torch.full((4, 3), -math.log(3), dtype=torch.float64))
    assert not plain.weighted and plain.variance is not None
    torch.testing.assert_close(plain.log_prob(x), even.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(plain.mean(), even.mean())


@pytest.mark.parametrize("lw,match", [
    (torch.zeros(2, 3), "normalised"),
    (torch.full((2, 3), float("nan")), "NaN"),
    (torch.zeros(2, 2), r"\(N, L\)"),
])
def test_bad_weights_are_refused(lw, match):
    with pytest.raises(ValueError, match=match):
        LatentMixture(torch.zeros(2, 3, 1), 1.0, lw)


def test_bad_per_component_variance_is_refused():
    with pytest.raises(ValueError, match="positive"):
        LatentMixture(torch.zeros(2, 3, 1), torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        LatentMixture(torch.zeros(2, 3, 1), torch.ones(2, 2))


def test_learning_curve_keeps_its_absolute_tolerance():
    c = LearningCurve("kl", rel_tol=0.05, abs_tol=0.02)
    for i, v in enumerate([1.0, 0.3, 0.06, 0.05, 0.065]):
        c.add(100 * (i + 1), {"kl": v})
    back = LearningCurve.from_dict(c.to_dict())
    assert back.abs_tol == 0.02 and back.converged() == c.converged()
    assert c.converged()                           # 0.05 vs 0.065: within the 0.02-nat floor
    assert not LearningCurve("kl", c.points, rel_tol=0.05).converged()


def test_a_step_evaluates_the_network_once_and_agrees_with_its_parts():
    torch.manual_seed(0)
    k = MixtureDenoiser(build_mixture_mlp(2, 3, hidden=16, depth=1, time_dim=8, T=100), ROOT, 2,
                        3).eval()
    calls = []
    k.net.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(5, 2, dtype=torch.float64, generator=_gen(0))
    dist, x0 = k.step(x, 60, 40)
    assert len(calls) == 1
    y = dist.sample(_gen(1))
    assert torch.equal(dist.log_prob(y), k.distribution(x, 60, 40).log_prob(y))
    assert torch.equal(x0, k.denoise(x, 60))
