"""The grid route on kernels with random latent draws: the jackknife over replicate pushes, its
standard error, and the box that tail draws must not stretch.

The reference is exact by construction: a latent kernel whose draws are N(mu(x) + s eta, v - s^2)
with eta ~ N(0, 1) is, as a mixture over eta, exactly the Gaussian kernel N(mu(x), v), so its
grid KL must agree with that deterministic kernel's up to the draws' noise."""

import math

import pytest
import torch

from smdlab import BestGaussianKernel, GaussianMixture, NoiseSchedule
from smdlab.distributions import LatentMixture
from smdlab.global_error import LATENT_REPLICATES, grid_global_error
from smdlab.kernels import ReverseKernel

torch.set_num_threads(1)

SCHED = NoiseSchedule.linear(1000)
TWO = GaussianMixture.two_modes(2.0, 0.1)
CHAIN = SCHED.respace(4)


class Jitter(ReverseKernel):
    """Random draws whose mixture over eta is the inner Gaussian kernel exactly; draws from
    source points beyond |x| > far_from (a share of the mass below the box trim) are thrown to
    +1e4, as tail latents of a learned SMD generator can be."""

    def __init__(self, inner, share=0.5, far_from=math.inf):
        self.inner, self.schedule, self.dim = inner, inner.schedule, inner.dim
        self.name, self.share, self.far_from = "jitter", share, far_from

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        g = self.inner.distribution(x_t, t, s)
        L = n_latent or 1
        var = g.variance * torch.ones(x_t.shape[0], dtype=x_t.dtype)
        sd = (self.share * var).sqrt()
        eta = torch.randn(x_t.shape[0], L, self.dim, generator=generator, dtype=x_t.dtype)
        means = g.loc[:, None, :] + sd[:, None, None] * eta
        far = x_t.abs().amax(-1) > self.far_from
        means[far] = 1e4
        return LatentMixture(means, (1 - self.share) * var)


def _ref():
    k = BestGaussianKernel(TWO, SCHED, "beta")
    return k, grid_global_error(TWO, k, CHAIN, n_grid=256, refine=False)["kl"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jackknife_kl_agrees_with_the_gaussian_kernel_the_draws_average_to(seed):
    k, ref = _ref()
    r = grid_global_error(TWO, Jitter(k), CHAIN, n_grid=256, n_latent=4, refine=False,
                          generator=torch.Generator().manual_seed(seed))
    assert r["replicates"] == LATENT_REPLICATES and len(r["kl_replicates"]) == LATENT_REPLICATES
    assert r["kl_se"] > 0 and r["resolved"]
    assert abs(r["kl"] - ref) < 4 * r["kl_se"] + 1e-4
    assert r["kl"] >= 0


def test_few_draws_bias_the_kl_up_and_the_jackknife_removes_most_of_it():
    """KL(q || p_hat) of one push is biased HIGH (Jensen: p_hat is unbiased for p); pooling the
    replicates and the jackknife take most of that bias away."""
    k, ref = _ref()
    single, jack = [], []
    for seed in range(4):
        r = grid_global_error(TWO, Jitter(k, share=0.9), CHAIN, n_grid=256, n_latent=1,
                              refine=False, generator=torch.Generator().manual_seed(seed))
        single.append(sum(r["kl_replicates"]) / len(r["kl_replicates"]) - ref)
        jack.append(r["kl"] - ref)
    bias_single, bias_jack = sum(single) / 4, sum(jack) / 4
    assert bias_single > 0
    assert abs(bias_jack) < 0.5 * bias_single


def test_deterministic_draws_are_pushed_once():
    """Identical draws (a frozen latent) carry no noise: one push, no jackknife fields."""
    k, ref = _ref()
    r = grid_global_error(TWO, Jitter(k, share=0.0), CHAIN, n_grid=256, n_latent=3, refine=False)
    assert "kl_se" not in r and "replicates" not in r
    assert r["kl"] == pytest.approx(ref, rel=1e-9)


def test_tail_draws_of_negligible_mass_do_not_stretch_the_grid():
    k, ref = _ref()
    kern = Jitter(k, far_from=6.0)      # N(0, 1) mass beyond |x| > 6: 2e-9, far below the trim
    trimmed = grid_global_error(TWO, kern, CHAIN, n_grid=256, n_latent=4, refine=False,
                                generator=torch.Generator().manual_seed(0))
    assert trimmed["mass_lost"] < 1e-5
    assert abs(trimmed["kl"] - ref) < 4 * trimmed["kl_se"] + 1e-4
    with pytest.warns(RuntimeWarning, match="too coarse"):
        whole = grid_global_error(TWO, kern, CHAIN, n_grid=256, n_latent=4, refine=False,
                                  box_trim=0.0, generator=torch.Generator().manual_seed(0))
    # a box stretched to 1e4 leaves 256 nodes about 40 apart: nothing is resolved
    assert not whole["resolved"] and not (abs(whole["kl"] - ref) < 0.1)


@pytest.mark.parametrize("far_from", [2.5, 3.0])
def test_tail_draws_above_the_trim_are_dropped_at_the_box_cap_and_counted_as_lost(far_from):
    """Tail draws carrying more mass than the trim (1.2% and 0.3% of N(0, 1) lie beyond 2.5
    and 3) would stretch the box to 1e4; the cap keeps it within BOX_CAP times the marginal's
    box, the mass beyond is lost, and the KL of the rest is the upper bound it must be: about
    the reference plus -log(1 - mass lost), finite, never below the reference."""
    k, ref = _ref()
    with pytest.warns(RuntimeWarning, match="too coarse"):   # the node rule sees the far draws
        r = grid_global_error(TWO, Jitter(k, far_from=far_from), CHAIN, n_grid=256, n_latent=4,
                              refine=False, generator=torch.Generator().manual_seed(0))
    assert 1e-3 < r["mass_lost"] < 0.1
    assert math.isfinite(r["kl"]) and r["kl"] >= ref - 4 * r["kl_se"]
    assert r["kl"] <= ref - math.log(1 - r["mass_lost"]) + 0.05 + 4 * r["kl_se"]


def test_two_grid_kls_agree_within_the_tolerance_and_their_standard_errors():
    from smdlab.experiments.toy_eval import grids_agree

    assert grids_agree(1.0, 1.04) and grids_agree(0.1, 0.115)       # 5%, or 0.02 nats
    assert not grids_agree(1.0, 1.2)
    assert grids_agree(1.0, 1.2, 0.05, 0.05)                          # 2 x hypot(se) = 0.14
    assert not grids_agree(math.inf, math.inf) and not grids_agree(1.0, math.nan)


def test_a_scored_latent_row_carries_the_jackknife_standard_error():
    from smdlab.experiments.toy_config import ToyEval
    from smdlab.experiments.toy_eval import score

    k, ref = _ref()
    row, _ = score(TWO, Jitter(k), CHAIN, ToyEval(n_eval=200, n_grid=256, n_latent=2), seed=3)
    assert row["kl_se"] > 0 and abs(row["kl"] - ref) < 4 * row["kl_se"] + 1e-4
    row, _ = score(TWO, k, CHAIN, ToyEval(n_eval=200, n_grid=256, n_latent=2), seed=3)
    assert "kl_se" not in row and row["kl"] == pytest.approx(ref, rel=1e-6)



def test_a_jackknife_driven_below_zero_returns_the_pooled_kl_unresolved(monkeypatch):
    """Pushes that gain mass in some replicates (a chain that falls apart) can drive the
    correction below 0; the route then keeps the pooled KL and does not call it resolved."""
    import numpy as np

    import smdlab.global_error as ge

    q = np.exp(-0.5 * np.linspace(-3, 3, 64) ** 2)
    scales = iter([3.0] + [1.0] * 7)         # one replicate with three times the mass

    def fake_push(*args, **kw):
        c = next(scales)
        return {"density": c * q, "q_density": q, "kl_raw": -math.log(c), "kl": 0.0,
                "mass_lost": 0.0, "p_mass_in_box": 1.0, "mass_pruned": 0.0, "grid_error": 0.0,
                "resolution": 0.0, "work": 1.0, "random_latent": True, "n_grid": 64, "steps": 4}

    k = BestGaussianKernel(TWO, SCHED, "beta")
    monkeypatch.setattr(ge, "_grid_push", fake_push)
    with pytest.warns(RuntimeWarning, match="disagree too much"):
        r = ge.grid_global_error(TWO, k, CHAIN, n_grid=64, refine=False)
    assert r["jackknife_unstable"] and not r["resolved"]
    assert r["kl_raw"] < 0 and r["kl_pooled"] == pytest.approx(-math.log(10 / 8))
    assert r["kl"] == 0.0                     # a KL is never negative: the pooled one, floored
