"""smdlab.fastmath returns torch's values: exp bit for bit, logsumexp to the last bit in practice."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from smdlab import fastmath

torch.set_num_threads(1)

# Values around every threshold of the fast route: the clamp (-700 / -80), the subnormal band
# (-745 / -104) and the underflow to 0, besides ordinary ones and the special values.
_SPECIAL = [0.0, -1.0, 3.0, -699.9, -700.0, -700.1, -720.0, -744.4, -745.1, -745.2, -746.0,
            -79.9, -80.0, -80.1, -87.5, -103.3, -103.9, -104.1, -105.0, -1e4, -1e300,
            math.inf, -math.inf, math.nan, 709.0, 710.0]


def _floats(dtype):
    width = 64 if dtype == torch.float64 else 32
    special = _SPECIAL if width == 64 else [v for v in _SPECIAL if not abs(v) > 3e38 or
                                            math.isinf(v)]
    return st.one_of(st.sampled_from(special),
                     st.floats(-2000, 50, width=width, allow_nan=False))


@st.composite
def tensors(draw, dtype):
    shape = draw(st.tuples(st.integers(1, 7), st.integers(1, 40)))
    np_dtype = "float64" if dtype == torch.float64 else "float32"
    a = draw(arrays(np_dtype, shape, elements=_floats(dtype)))
    return torch.from_numpy(a)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_exp_is_torch_exp_bit_for_bit(dtype, data):
    x = data.draw(tensors(dtype))
    assert torch.equal(fastmath.exp(x).isnan(), x.exp().isnan())
    assert torch.equal(torch.nan_to_num(fastmath.exp(x)), torch.nan_to_num(x.exp()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_logsumexp_matches_torch(dtype, data):
    x = data.draw(tensors(dtype))
    for dim in (-1, 0):
        got, want = fastmath.logsumexp(x, dim), torch.logsumexp(x, dim)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(torch.isinf(got) & (got > 0), torch.isinf(want) & (want > 0))
        assert torch.equal(torch.isinf(got) & (got < 0), torch.isinf(want) & (want < 0))
        fin = torch.isfinite(want)
        # Terms > 700 (float32: 80) nats below the largest are clamped there: a relative change
        # of at most K e^-700, far below one ulp of a sum that holds 1.
        assert torch.allclose(got[fin], want[fin], rtol=4 * torch.finfo(dtype).eps, atol=0)


def test_logsumexp_special_rows():
    x = torch.tensor([[-math.inf, -math.inf], [math.inf, 0.0], [math.nan, 0.0],
                      [0.0, -math.inf], [-1e5, 0.0]], dtype=torch.float64)
    got = fastmath.logsumexp(x, -1)
    assert got[0] == -math.inf and got[1] == math.inf and got[2].isnan()
    assert got[3] == 0.0 and got[4] == 0.0


def test_exp_in_place_and_on_strided_tensors():
    x = torch.linspace(-800.0, 5.0, 4000, dtype=torch.float64).reshape(40, 100)
    want = x.exp()
    t = x.t()                                       # not contiguous
    assert torch.equal(fastmath.exp(t), want.t())
    y = x.clone()
    assert fastmath.exp_(y) is y and torch.equal(y, want)
    z = x.clone().t()
    fastmath.exp_(z)
    assert torch.equal(z, want.t())


def test_exp_far_below_underflow_is_zero_and_subnormals_exact():
    x = torch.linspace(-760.0, -690.0, 20001, dtype=torch.float64)
    assert torch.equal(fastmath.exp(x), x.exp())
    assert (fastmath.exp(torch.tensor([-800.0, -math.inf], dtype=torch.float64)) == 0).all()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_all_finite_is_isfinite_all(data):
    x = data.draw(tensors(torch.float64))
    assert fastmath.all_finite(x) == bool(torch.isfinite(x).all())
    assert fastmath.all_finite(x.to(torch.float32)) == bool(torch.isfinite(x.to(torch.float32)).all())
    assert fastmath.all_finite(torch.empty(0, 3))


def test_empty_and_integer_inputs_go_to_torch():
    assert torch.equal(fastmath.logsumexp(torch.zeros(3, 0), -1), torch.full((3,), -math.inf))
    assert torch.equal(fastmath.exp(torch.tensor([1, 2])), torch.exp(torch.tensor([1, 2])))
    x = torch.tensor([[1, 2]])
    assert torch.equal(fastmath.logsumexp(x, -1), torch.logsumexp(x, -1))


def test_latent_mixture_of_no_points():
    from smdlab.distributions import LatentMixture

    lm = LatentMixture(torch.zeros(0, 3, 2), torch.ones(0, 3))
    assert lm.log_prob(torch.zeros(0, 2)).shape == (0,)
