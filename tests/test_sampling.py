"""Sampler step bookkeeping on respaced chains: the kernel sees root step indices, every jump of
the sub-chain is taken once in order, the last lands on 0, and the callback reports it all."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab import (
    BestGaussianKernel,
    ExactKernel,
    GaussianMixture,
    NoiseSchedule,
    ancestral_sample,
    chain_steps,
)
from smdlab.kernels import ReverseKernel

MIX = GaussianMixture.two_modes()


class Recorder(ReverseKernel):
    """Wraps a kernel and records the (t, s) it is called with."""

    def __init__(self, inner):
        self.inner, self.schedule, self.dim, self.name = inner, inner.schedule, inner.dim, "rec"
        self.calls = []

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        self.calls.append((int(t), int(s)))
        return self.inner.distribution(x_t, t, s, generator, n_latent)


@given(T=st.sampled_from([10, 100, 1000]), S=st.integers(1, 10),
       spacing=st.sampled_from(["linspace", "trailing", "quadratic"]),
       name=st.sampled_from(["linear", "cosine"]))
def test_kernel_sees_root_steps(T, S, spacing, name):
    root = NoiseSchedule.from_name(name, T)
    ch = root.respace(min(S, T), spacing)
    rec = Recorder(BestGaussianKernel(MIX, root, "beta_tilde"))
    seen = []
    ancestral_sample(rec, torch.zeros(3, 1, dtype=torch.float64), ch,
                     generator=torch.Generator().manual_seed(0),
                     callback=lambda info: seen.append((info.index, info.t, info.s)))
    kept = ch.original_steps.tolist()
    expected = [(kept[i], kept[i - 1]) for i in range(len(kept) - 1, 0, -1)]
    assert rec.calls == expected == chain_steps(rec, ch)
    assert expected[0][0] == T and expected[-1][1] == 0
    assert [i for i, _, _ in seen] == list(range(ch.T, 0, -1))
    assert [(t, s) for _, t, s in seen] == expected
    # Each jump's variance is the root's 1 - abar_t / abar_s (the respaced beta).
    for i, (t, s) in enumerate(expected):
        assert root.jump_beta(t, s) == pytest.approx(ch.betas[ch.T - 1 - i].item(), rel=1e-9)


def test_respaced_of_respaced_keeps_root_indices():
    root = NoiseSchedule.linear(1000)
    ch = root.respace(100).respace(10)
    steps = [t for t, _ in chain_steps(ExactKernel(MIX, root), ch)]
    assert steps[0] == 1000 and all(t % 10 == 0 for t in steps)


def test_exact_chain_reproduces_the_target():
    root = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(ExactKernel(MIX, root), torch.randn(4000, 1, generator=g,
                                                             dtype=torch.float64),
                         root.respace(4), generator=g)
    assert abs((x > 0).double().mean().item() - 0.5) < 0.03
    assert abs(x.abs().mean().item() - 1.0) < 0.02


def test_foreign_schedule_rejected():
    k = ExactKernel(MIX, NoiseSchedule.linear(100))
    with pytest.raises(ValueError, match="respacing"):
        ancestral_sample(k, torch.zeros(2, 1), NoiseSchedule.cosine(100).respace(5))


def test_ancestral_sample_is_the_chain_of_kernel_steps():
    # The sampler adds nothing of its own: it is the loop of kernel.sample over the chain's jumps
    # (same generator stream), for a learned kernel as for an oracle.
    from smdlab.denoisers import SMDDenoiser
    from smdlab.nets import VectorLatentGenerator, VectorMLP

    root = NoiseSchedule.linear(100)
    torch.manual_seed(0)
    smd = SMDDenoiser(VectorMLP(1, 16, 1, time_dim=8, T=100, latent_dim=4, inner_dim=4),
                      VectorLatentGenerator(1, 2, 4, hidden=8, T=100), root, 1, 2, "v")
    for k in (smd, ExactKernel(MIX, root)):
        x = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        chain = root.respace(4)
        got = ancestral_sample(k, x, chain, generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        for t, s in chain_steps(k, chain):
            x = k.sample(x, t, s, g)
        assert torch.equal(got, x)


def test_step_scorer_does_not_evaluate_the_network_again():
    from torch import nn

    from smdlab.denoisers import GaussianDenoiser
    from smdlab.local_error import StepScorer
    from smdlab.nets import OracleNet

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x, t, z=None):
            self.calls += 1
            return self.inner(x, t)

    root = NoiseSchedule.linear(100)
    net = Counting(OracleNet(MIX, root, "eps"))
    den = GaussianDenoiser(net, root, 1, "eps", final_variance="clipped")
    scorer = StepScorer(MIX, n_mc=4, generator=torch.Generator().manual_seed(0))
    chain = root.respace(5)
    ancestral_sample(den, torch.randn(64, 1, dtype=torch.float64), chain,
                     generator=torch.Generator().manual_seed(1), callback=scorer)
    assert net.calls == chain.T == len(scorer.rows)
    rows = scorer.as_dict()
    # The oracle DDPM's mean is exact, so its mean gap is ~0 at every step; its KL is positive.
    assert max(rows["mean_gap"]) < 1e-8 and min(rows["kl_t"]) > 0


@pytest.mark.parametrize("c", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("S", [1, 4, 25])
def test_ddim_with_the_exact_denoiser_of_a_gaussian_is_the_closed_form_affine_map(c, S):
    # For q(x_0) = N(m, c), E[x_0 | x_t] is affine, so DDIM(eta=0) is an affine map of x_T.  With
    # d_t = x_t - sqrt(abar_t) m and v_t = abar_t c + 1 - abar_t, one jump multiplies d by
    # k = (sqrt(abar_s abar_t) c + sqrt((1 - abar_s)(1 - abar_t))) / v_t (parameterization (7)).
    # By Cauchy-Schwarz k^2 v_t <= v_s: a coarse deterministic chain shrinks the variance.
    from smdlab import ddim_sample

    m = 0.7
    root = NoiseSchedule.linear(1000)
    chain = root.respace(S)
    gauss = GaussianMixture([1.0], [[m]], [c])
    k = ExactKernel(gauss, root)
    x_T = torch.tensor([[-1.3], [0.4], [2.2]], dtype=torch.float64)
    got = ddim_sample(k, x_T, chain, eta=0.0)
    ab = root.alpha_bars
    gain, shrink = 1.0, 1.0
    for t, s in chain_steps(k, chain):
        v_t, v_s = ab[t] * c + 1 - ab[t], ab[s] * c + 1 - ab[s]
        step = ((ab[s] * ab[t]).sqrt() * c + ((1 - ab[s]) * (1 - ab[t])).sqrt()) / v_t
        gain *= step.item()
        shrink = min(shrink, (step ** 2 * v_t / v_s).item())
    want = m + gain * (x_T - ab[1000].sqrt() * m)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert shrink <= 1 + 1e-12
