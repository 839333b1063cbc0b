import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab import NoiseSchedule
from smdlab.schedules import SPACINGS, respaced_steps


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [1, 7, 1000, 4000])
def test_schedule_invariants(name, T):
    s = NoiseSchedule.from_name(name, T)
    assert s.T == T and s.betas.shape == (T,) and s.alpha_bars.shape == (T + 1,)
    assert s.alpha_bars[0] == 1.0
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert (s.alpha_bars.diff() < 0).all()
    torch.testing.assert_close(s.alpha_bars[1:], torch.cumprod(s.alphas, 0), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.one_minus_alpha_bars, 1 - s.alpha_bars, rtol=1e-9, atol=1e-15)
    assert torch.equal(s.original_steps, torch.arange(T + 1))
    assert s.root is s


def test_linear_matches_ddpm_endpoints():
    s = NoiseSchedule.linear(1000)
    assert math.isclose(s.betas[0].item(), 1e-4) and math.isclose(s.betas[-1].item(), 0.02)
    # the DDPM paper's abar_T for this schedule is about 4e-5
    assert 3e-5 < s.alpha_bars[-1].item() < 5e-5


@given(T=st.integers(1, 4000), data=st.data(), spacing=st.sampled_from(SPACINGS),
       name=st.sampled_from(["linear", "cosine", "sigmoid"]))
def test_respacing_reproduces_alpha_bars_on_kept_steps(T, data, spacing, name):
    S = data.draw(st.integers(1, T))
    base = NoiseSchedule.from_name(name, T)
    r = base.respace(S, spacing)
    kept = r.original_steps
    assert r.T == S and kept.shape == (S + 1,)
    assert kept[0] == 0 and kept[-1] == T and (kept.diff() > 0).all()
    assert torch.equal(r.alpha_bars, base.alpha_bars[kept])
    # the coarse chain is a DDPM in its own right: its betas compose to the kept abar
    torch.testing.assert_close(torch.cumprod(r.alphas, 0), r.alpha_bars[1:], rtol=1e-10, atol=1e-300)
    # beta = 1 - alpha lies in (0, 1]; it rounds to exactly 1 only where alpha is below float64's
    # resolution at 1 (a one-step chain of a long linear schedule: abar_T ~ 1e-16 at T = 3631),
    # while alpha itself stays positive
    assert ((r.betas > 0) & (r.betas <= 1)).all() and (r.alphas > 0).all()
    assert ((r.betas < 1) | (r.alphas < 2.0 ** -52)).all()
    assert r.root is base and r.is_respacing_of(base)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_respace_identity_and_odd_counts(spacing):
    base = NoiseSchedule.linear(1000)
    same = base.respace(1000, spacing)
    assert torch.equal(same.original_steps, torch.arange(1001))
    torch.testing.assert_close(same.betas, base.betas, rtol=1e-9, atol=0)
    seven = base.respace(7, spacing)
    assert seven.original_steps[0] == 0 and seven.original_steps[-1] == 1000 and seven.T == 7


def test_respace_of_respaced_points_at_root():
    base = NoiseSchedule.cosine(1000)
    r10 = base.respace(10)
    r4 = r10.respace(4)
    assert r4.root is base
    assert set(r4.original_steps.tolist()) <= set(r10.original_steps.tolist())
    assert torch.equal(r4.alpha_bars, base.alpha_bars[r4.original_steps])


def test_linspace_and_trailing_differ_when_T_not_divisible():
    a = respaced_steps(1000, 7, "linspace").tolist()
    b = respaced_steps(1000, 7, "trailing").tolist()
    assert a != b and b[-1] - b[-2] == 1000 // 7


@pytest.mark.parametrize("bad", [dict(S=0), dict(S=-3), dict(S=1001), dict(S=10, spacing="leading"),
                                 dict(S=2.5)])
def test_invalid_respacing_raises(bad):
    with pytest.raises(ValueError):
        NoiseSchedule.linear(1000).respace(**bad)


@pytest.mark.parametrize("betas", [[], [0.0, 0.1], [0.5, 1.0], [float("nan")]])
def test_invalid_betas_raise(betas):
    with pytest.raises(ValueError):
        NoiseSchedule(betas)


@pytest.mark.parametrize("T", [0, -1, 2.0])
def test_invalid_T_raises(T):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        NoiseSchedule.linear(T)


def test_jump_quantities():
    s = NoiseSchedule.linear(1000)
    b = s.jump_beta(500, 200)
    assert math.isclose(b, 1 - s.alpha_bars[500].item() / s.alpha_bars[200].item(), rel_tol=1e-12)
    bt = s.posterior_variance(500, 200)
    assert 0 < bt < b
    assert math.isclose(s.posterior_variance(1, 0), 0.0, abs_tol=1e-300)
    with pytest.raises(ValueError):
        s.jump_beta(200, 500)


# ---------------------------------------------------------------------------- the step validator
@pytest.mark.parametrize("bad", [2.7, 3.0, "5", True, None, torch.tensor(2.0), torch.tensor([1, 2])])
def test_check_step_rejects_non_integers_naming_the_parameter(bad):
    from smdlab.schedules import check_step

    with pytest.raises(TypeError, match="my_step must be an integer"):
        check_step(bad, "my_step", 10)


def test_check_step_and_jump_accept_integer_scalars_and_check_ranges():
    import numpy as np

    from smdlab.schedules import check_jump, check_step

    for t in (7, np.int64(7), np.int16(7), torch.tensor(7)):
        assert check_step(t, "t", 10) == 7 and type(check_step(t, "t", 10)) is int
    with pytest.raises(ValueError, match=r"step t=11 is outside 0\.\.T=10"):
        check_step(11, "t", 10)
    with pytest.raises(ValueError, match="s=-1"):
        check_jump(3, -1, 10)
    with pytest.raises(ValueError, match="need s < t"):
        check_jump(3, 3, 10)
    s = NoiseSchedule.linear(50)
    with pytest.raises(TypeError, match=r"\bs must be an integer"):
        s.jump_beta(10, 2.5)
    with pytest.raises(TypeError, match=r"\bt must be an integer"):
        s.root_step("3")
    assert s.kernel_variance(np.int64(10), torch.tensor(0)) == s.kernel_variance(10, 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tau=0), "tau"), (dict(tau=-1.0), "tau"), (dict(tau=float("nan")), "tau"),
    (dict(start=3.0, end=-3.0), "start < end"), (dict(max_beta=1.0), "max_beta"),
    (dict(tau=1e30), "tau"),
])
def test_sigmoid_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.sigmoid(20, **kwargs)
