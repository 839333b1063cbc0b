"""The convergence rule on synthetic learning curves (plateau, still improving, noisy), and the
learning-curve record."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smdlab.convergence import LearningCurve, evaluation_steps, is_converged


def test_plateau_is_converged():
    v = [0.3, 0.7, 0.88, 0.93, 0.94, 0.94, 0.94, 0.94]
    assert is_converged(v, [0.01] * 8)


def test_still_improving_is_not_converged():
    # rising by 0.03 per evaluation: each step is within 2 s.e. of the previous one (s.e. 0.012,
    # so 2 s.e. of a difference = 0.034), but over the last three evaluations it rose by 0.06
    v = [0.50 + 0.03 * k for k in range(8)]
    assert abs(v[-1] - v[-2]) < 2 * math.sqrt(2) * 0.012
    assert not is_converged(v, [0.012] * 8, rel_tol=0.0)


def test_noisy_plateau_is_converged_only_when_its_noise_is_stated():
    rng = np.random.default_rng(0)
    se = 0.05
    v = list(2.0 + se * rng.standard_normal(10))
    assert is_converged(v, [se] * 10, rel_tol=0.0)
    assert not is_converged(v, None, rel_tol=0.0)      # the same noise without its s.e.


def test_a_late_jump_is_not_converged_and_short_or_infinite_curves_never_are():
    assert not is_converged([1.0, 1.0, 1.0, 1.0, 0.5], [0.01] * 5)
    assert not is_converged([0.9, 0.9], [0.01, 0.01])                  # shorter than the window
    assert not is_converged([1.0, math.inf, 1.0], None)
    with pytest.raises(ValueError, match="window"):
        is_converged([1, 1, 1], window=1)
    with pytest.raises(ValueError, match="length"):
        is_converged([1, 1, 1], [0.1])


@given(st.floats(-5, 5), st.integers(3, 12), st.floats(0, 1))
def test_any_constant_curve_converges_and_a_trend_beyond_the_tolerance_does_not(c, n, se):
    assert is_converged([c] * n, [se] * n)
    tol = 2 * math.sqrt(2) * se + 0.02 * (abs(c) + 10) + 1e-9
    # a trend whose change over the last two evaluations exceeds the tolerance
    slope = tol
    v = [c + slope * k for k in range(n)]
    assert not is_converged(v, [se] * n)


def test_evaluation_steps_and_curve_record():
    assert evaluation_steps(3000, 8) == [375, 750, 1125, 1500, 1875, 2250, 2625, 3000]
    assert evaluation_steps(5, 8) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        evaluation_steps(0, 8)
    c = LearningCurve("in_mode_share")
    for step, v in zip(evaluation_steps(800, 8), [0.3, 0.6, 0.8, 0.9, 0.92, 0.93, 0.94, 0.95]):
        c.add(step, {"in_mode_share": v, "in_mode_share_se": 0.01, "nll_excess": 1 / v})
    assert c.converged()
    assert not c.converged("nll_excess", rel_tol=0.0)      # no s.e. given for it: exact test
    with pytest.raises(ValueError, match="increase"):
        c.add(800, {"in_mode_share": 0.9})
    again = LearningCurve.from_dict(c.to_dict())
    assert again.points == c.points and c.to_dict()["converged"] is True
