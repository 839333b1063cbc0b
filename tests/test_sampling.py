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
