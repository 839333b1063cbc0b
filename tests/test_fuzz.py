"""Fuzz suite (issue 9): bad input gets a clear error naming the parameter, extreme input gives
finite numbers or a clear overflow error, never NaN; bad data files give errors naming the file.

The catalogue of cases lives in tests/fuzz_cases.py (benchmarks/fuzz_counts.py runs thousands of
them and prints the counts); here hypothesis draws factories and seeds, plus direct properties.
"""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from smdlab import GaussianMixture, NoiseSchedule, posterior
from smdlab.mixture import ExtremeValueError, value_limits
from smdlab.schedules import IntegerTypeError, check_jump, check_step
from tests.fuzz_cases import API_FACTORIES, GOOD, classify, data_case_in_tempdir


def _assert_good(case):
    outcome, err = classify(case)
    assert outcome in GOOD, (case.label, case.detail, outcome, repr(err))


@settings(max_examples=300)
@given(st.sampled_from(API_FACTORIES), st.integers(0, 2**32 - 1))
def test_api_inputs_never_crash_or_return_nan(factory, seed):
    _assert_good(factory(np.random.default_rng(seed)))


@settings(max_examples=60)
@given(st.integers(0, 2**32 - 1))
def test_bad_data_files_give_clear_errors(seed):
    tmp, case = data_case_in_tempdir(np.random.default_rng(seed))
    with tmp:
        _assert_good(case)


# ------------------------------------------------------------------------------ direct properties
non_integers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.booleans(),
    st.none(), st.complex_numbers(max_magnitude=10), st.lists(st.integers(0, 5), max_size=2),
    st.floats(-100, 100).map(lambda v: torch.tensor(v)))


@given(non_integers)
def test_steps_reject_every_non_integer_with_a_type_error(t):
    with pytest.raises(TypeError, match="t must be an integer"):
        check_step(t, "t", 100)
    with pytest.raises(TypeError, match=r"\bt\b"):
        posterior(GaussianMixture.grid(2), NoiseSchedule.linear(100), torch.zeros(2, 2), t)


@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6),
       st.sampled_from([int, np.int64, np.int32, torch.tensor]))
def test_integer_steps_of_every_kind_are_accepted_or_range_checked(t, s, make):
    T = 100
    if make is np.int32:
        t, s = max(min(t, 2**31 - 1), -2**31), max(min(s, 2**31 - 1), -2**31)
    if 0 <= s < t <= T:
        assert check_jump(make(t), make(s), T) == (t, s)
        assert isinstance(check_step(make(t), "t", T), int)
    else:
        with pytest.raises(ValueError, match=r"\b[ts]\b") as err:
            check_jump(make(t), make(s), T)
        assert not isinstance(err.value, TypeError)


def test_integer_type_errors_are_also_value_errors():
    # older callers catch ValueError for any bad argument
    assert issubclass(IntegerTypeError, TypeError) and issubclass(IntegerTypeError, ValueError)
    with pytest.raises(TypeError, match="T must be a positive integer"):
        NoiseSchedule.linear(np.float64(10.0))
    assert NoiseSchedule.linear(np.int64(10)).T == 10
    assert NoiseSchedule.cosine(torch.tensor(12)).respace(np.int32(3)).T == 3


@given(st.floats(-400, 400), st.floats(-330, 330))
@settings(max_examples=80)
def test_extreme_magnitudes_give_finite_numbers_or_a_clear_error(log_scale, log_var):
    """Means/x_t of any magnitude and variances of any size: finite output or ExtremeValueError."""
    try:
        scale, var = 10.0 ** log_scale, 10.0 ** log_var
    except OverflowError:
        return
    if not (math.isfinite(scale) and var > 0 and math.isfinite(var)):
        return
    L, vmin, vmax = value_limits()
    sched = NoiseSchedule.linear(50)
    try:
        mix = GaussianMixture([0.3, 0.7], [[-scale, 0.0], [scale, scale]], [var, var])
    except ExtremeValueError as e:
        assert scale > L or not vmin <= var <= vmax
        assert "means" in str(e) or "covariances" in str(e)
        return
    x = torch.tensor([[0.0, 0.0], [scale, -scale], [min(2 * scale, L), scale]],
                     dtype=torch.float64)
    for t in (1, 25, 50):
        post = posterior(mix, sched, x, t)
        for value in (post.log_weights, post.means, post.mean(), post.covariance(),
                      post.log_prob(post.mean()), mix.log_prob(x)):
            assert torch.isfinite(value).all(), (scale, var, t)


def test_reported_cases_are_fixed():
    """The cases the issue lists, one by one."""
    m = GaussianMixture.grid(2)
    s = NoiseSchedule.linear(100)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="D >= 1"):
        GaussianMixture([1.0], torch.zeros(1, 0), [1.0])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x_t must be finite"):
            posterior(m, s, torch.full((2, 2), bad), 10)
    with pytest.raises(ExtremeValueError, match="means"):
        GaussianMixture([0.5, 0.5], [[1e200], [-1e200]], [1.0, 1.0])
    with pytest.raises(OverflowError, match="x_t"):
        posterior(m, s, torch.full((2, 2), 1e160, dtype=torch.float64), 10)
    with pytest.raises(OverflowError, match="covariances"):
        GaussianMixture([1.0], [[0.0]], [1e-320])
    with pytest.raises(TypeError, match="t must be an integer"):
        posterior(m, s, x, 2.7)
    with pytest.raises(TypeError, match="t must be an integer"):
        posterior(m, s, x, "5")
    assert posterior(m, s, x, np.int64(5)).N == 3
    with pytest.raises(TypeError, match="dtype"):
        m.to(dtype=torch.int64)
    with pytest.raises(ValueError, match="ambiguous"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.2], [0.2, 1.0]])
    amb = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.2], [0.2, 1.0]],
                          covariance_type="diagonal")
    assert amb.kind == "diagonal" and torch.equal(amb.eigvals, torch.tensor([[1.0, 0.2], [0.2, 1.0]],
                                                                           dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([0.5, 0.5], [[0, 0], [1, 1]],
                        [[[1e4, 0], [0, 1e4]], [[1e-3, 1e-4], [0, 1e-3]]])
    with pytest.raises(ValueError, match="kind"):
        GaussianMixture.random(2, 2, kind="bogus")
    with pytest.raises(ValueError, match="tau"):
        NoiseSchedule.sigmoid(10, tau=0)
    with pytest.raises(TypeError, match="G must be an integer"):
        GaussianMixture.grid(2.5)
