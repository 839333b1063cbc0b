"""SplicedKernel: one kernel on chosen jumps of another's chain (per-jump error attribution)."""

import pytest
import torch

from smdlab import (
    BestGaussianKernel,
    ExactKernel,
    GaussianMixture,
    NoiseSchedule,
    SplicedKernel,
    ancestral_sample,
    chain_steps,
)
from smdlab.global_error import grid_global_error

torch.set_num_threads(1)

ROOT = NoiseSchedule.linear(1000)
CHAIN = ROOT.respace(4)
TWO = GaussianMixture.two_modes(2.0, 0.1)


def _kernels():
    return ExactKernel(TWO, CHAIN), BestGaussianKernel(TWO, CHAIN, "beta_tilde")


def _kl(k):
    return grid_global_error(TWO, k, CHAIN, n_grid=512)["kl"]


def test_splicing_every_jump_is_the_other_kernel_and_no_jump_the_base():
    exact, gauss = _kernels()
    jumps = chain_steps(exact, CHAIN)
    assert _kl(SplicedKernel(exact, gauss, jumps)) == pytest.approx(_kl(gauss), rel=1e-12)
    assert _kl(SplicedKernel(gauss, exact, [])) == pytest.approx(_kl(gauss), rel=1e-12)
    assert _kl(SplicedKernel(gauss, exact, jumps)) < 1e-9      # the exact chain


def test_the_exact_kernel_on_every_jump_but_one_leaves_that_jumps_error():
    """Each single Gaussian jump in the exact chain costs KL >= 0, and on this coarse chain
    the last jump (the bimodal one) costs the most."""
    exact, gauss = _kernels()
    jumps = chain_steps(exact, CHAIN)
    alone = [_kl(SplicedKernel(exact, gauss, [j])) for j in jumps]
    assert all(a >= 0 for a in alone)
    assert max(alone) == alone[-1] and alone[-1] > 0.1


def test_a_spliced_chain_samples_and_bad_splices_are_refused():
    exact, gauss = _kernels()
    k = SplicedKernel(exact, gauss, [chain_steps(exact, CHAIN)[-1]])
    x = ancestral_sample(k, torch.randn(64, 1, dtype=torch.float64), CHAIN,
                         generator=torch.Generator().manual_seed(0))
    assert x.shape == (64, 1) and torch.isfinite(x).all()
    with pytest.raises(ValueError):
        SplicedKernel(exact, gauss, [(999, 998)])               # not a jump of the 4-step chain
    grid = GaussianMixture.grid(3, 1.0, 0.2)
    with pytest.raises(ValueError, match="dimension"):
        SplicedKernel(exact, BestGaussianKernel(grid, CHAIN, "beta_tilde"), [])
