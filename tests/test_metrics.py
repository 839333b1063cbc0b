"""Sample metrics: near their noise floor on samples of q, large on a shifted mixture, and mode
statistics exact on constructed cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smdlab import GaussianMixture
from smdlab.metrics import mmd_rbf, mode_statistics, sample_metrics, sliced_w2

GRID = GaussianMixture.grid(3, spacing=1.0, std=0.05)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def shifted(mix, by):
    return GaussianMixture(mix.weights, mix.means + by, mix.compact_covariances())


def test_zero_ish_on_q_and_large_on_a_shift():
    n = 1500
    good = sample_metrics(GRID, GRID.sample(n, gen(1)), gen(2), reference=True)
    bad = sample_metrics(GRID, shifted(GRID, 0.45).sample(n, gen(1)), gen(2))
    assert good["in_mode_share"] > 0.98 and bad["in_mode_share"] < 0.05
    assert good["occupancy_tv"] < 0.06 and good["occupancy_pvalue"] > 1e-3
    assert abs(good["nll_excess"]) < 5 * good["nll_se"] + 0.05
    assert bad["nll_excess"] > 10
    assert good["mmd"] < 3 * good["mmd_ref"] + 0.01 and bad["mmd"] > 5 * good["mmd_ref"]
    assert good["sw2"] < 3 * good["sw2_ref"] and bad["sw2"] > 3 * good["sw2_ref"]
    for key in ("nll", "in_mode_share", "occupancy_tv", "occupancy_chi2", "mmd", "sw2"):
        assert isinstance(good[key], float)


def test_occupancy_on_constructed_cases():
    means = GRID.means
    # All samples exactly on component 4: one mode covered, TV = 1 - 1/9.
    st_ = mode_statistics(GRID, means[4].expand(50, 2))
    assert st_["modes_covered"] == 1 and st_["in_mode_share"] == 1.0
    assert st_["occupancy_tv"] == pytest.approx(1 - 1 / 9)
    assert st_["occupancy_chi2"] == pytest.approx((1 - 1 / 9) ** 2 * 9 + 8 * (1 / 9) ** 2 * 9)
    # Exactly one sample per component: zero TV and chi-square, everything in mode.
    st_ = mode_statistics(GRID, means)
    assert st_["occupancy_tv"] == pytest.approx(0.0) and st_["occupancy_chi2"] == pytest.approx(0)
    assert st_["modes_covered"] == 9
    # Midpoints between modes are out of mode (0.5 apart = 10 std).
    mid = (means[0] + means[1]) / 2
    assert mode_statistics(GRID, mid.expand(4, 2))["in_mode_share"] == 0.0
    # 3 std exactly is the 1-D boundary.
    one = GaussianMixture([1.0], [[0.0]], [1.0])
    ms = mode_statistics(one, torch.tensor([[2.99], [3.01]]))
    assert ms["in_mode_share"] == 0.5


@settings(max_examples=15)
@given(seed=st.integers(0, 1000), shift=st.floats(-2, 2), n=st.integers(20, 200))
def test_distances_are_symmetric_and_shift_sensitive(seed, shift, n):
    x = torch.randn(n, 2, generator=gen(seed), dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen(seed + 1), dtype=torch.float64)
    assert sliced_w2(x, x, generator=gen()) == pytest.approx(0.0, abs=1e-12)
    # In 1-D the sliced distance is the exact W2, and a shift moves it by exactly the shift.
    x1 = x[:, :1]
    assert sliced_w2(x1, x1 + shift, 8, gen()) == pytest.approx(abs(shift), abs=1e-9)
    a, _ = mmd_rbf(x, y, bandwidth=1.0)
    b, _ = mmd_rbf(y, x, bandwidth=1.0)
    assert a == pytest.approx(b, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        sample_metrics(GRID, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        sample_metrics(GRID, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="equal-size"):
        sliced_w2(torch.zeros(3, 2), torch.zeros(4, 2))
