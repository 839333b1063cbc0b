import math

import numpy as np
import pytest
import torch
from hypothesis import given
from scipy import stats

from smdlab import GaussianMixture

from .strategies import mixtures


def scipy_log_prob(m: GaussianMixture, x: torch.Tensor) -> np.ndarray:
    comps = [np.log(m.weights[k].item()) + stats.multivariate_normal(
        m.means[k].numpy(), m.covariances[k].numpy()).logpdf(x.numpy()).reshape(-1)
        for k in range(m.K)]
    return np.logaddexp.reduce(np.stack(comps), axis=0)


@given(m=mixtures())
def test_log_prob_matches_scipy(m):
    x = m.sample(16, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(m.log_prob(x).numpy(), scipy_log_prob(m, x), rtol=1e-9, atol=1e-9)
    # the eigenbasis route used by the exact engine agrees with torch.distributions
    comp = m.component_log_prob(x) + m.weights.log()
    torch.testing.assert_close(torch.logsumexp(comp, -1), m.log_prob(x))
    torch.testing.assert_close(m.responsibilities(x).sum(-1), torch.ones(16, dtype=torch.float64))


def test_covariance_forms_agree():
    w, mu = [0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]]
    iso = GaussianMixture(w, mu, [0.5, 0.2])
    diag = GaussianMixture(w, mu, [[0.5, 0.5], [0.2, 0.2]])
    full = GaussianMixture(w, mu, torch.tensor([0.5, 0.2])[:, None, None] * torch.eye(2))
    x = torch.randn(10, 2, dtype=torch.float64)
    for other in (diag, full):
        torch.testing.assert_close(iso.log_prob(x), other.log_prob(x))
    assert (iso.kind, diag.kind, full.kind) == ("isotropic", "diagonal", "full")
    assert iso.axis_aligned and not full.axis_aligned


def test_sample_moments_match():
    g = torch.Generator().manual_seed(1)
    m = GaussianMixture.random(4, 3, generator=g)
    n = 200_000
    x, k = m.sample(n, generator=g, return_components=True)
    se = (torch.diagonal(m.covariance()) / n).sqrt()
    assert ((x.mean(0) - m.mean()).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), m.covariance(), rtol=0.03, atol=0.03)
    freq = torch.bincount(k, minlength=m.K) / n
    assert (freq - m.weights).abs().max() < 5 * math.sqrt(0.25 / n)


def test_sampling_is_reproducible_with_generator():
    m = GaussianMixture.grid()
    a = m.sample(100, torch.Generator().manual_seed(3))
    b = m.sample(100, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_constructors():
    grid = GaussianMixture.grid()
    assert (grid.K, grid.D) == (49, 2)
    torch.testing.assert_close(grid.mean(), torch.zeros(2, dtype=torch.float64))
    # default spacing gives unit variance between modes plus the small within-mode variance
    torch.testing.assert_close(torch.diagonal(grid.covariance()),
                               torch.full((2,), 1.0 + 0.05**2, dtype=torch.float64))
    ring = GaussianMixture.ring(8, radius=2.0)
    torch.testing.assert_close(ring.means.norm(dim=-1), torch.full((8,), 2.0, dtype=torch.float64))
    prod = GaussianMixture.product([0.5, 0.5], [-1.0, 1.0], [0.01, 0.01], D=3)
    assert (prod.K, prod.D) == (8, 3)
    # a product mixture's density is the product of its 1-D factors
    one = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.01, 0.01])
    x = prod.sample(20, torch.Generator().manual_seed(0))
    torch.testing.assert_close(prod.log_prob(x), one.log_prob(x.reshape(-1, 1)).reshape(20, 3).sum(-1))
    two = GaussianMixture.two_modes(4.0, 0.5)
    assert two.D == 1 and two.means.flatten().tolist() == [-2.0, 2.0]


@pytest.mark.parametrize("args, match", [
    (([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0]), "sum to 1"),
    (([-0.5, 1.5], [[0.0], [1.0]], [1.0, 1.0]), "positive"),
    (([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0]), "means must have shape"),
    (([0.5, 0.5], [[0.0], [1.0]], [1.0, -1.0]), "positive"),
    (([0.5, 0.5], [[0.0], [float("nan")]], [1.0, 1.0]), "finite"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.5], [0.0, 1.0]]] * 2), "symmetric"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 2.0], [2.0, 1.0]]] * 2), "positive definite"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0, 1.0]] * 2), "covariances must have shape"),
    (([[0.5, 0.5]], [[0.0], [1.0]], [1.0, 1.0]), "weights must be"),
    (("ab", [[0.0]], [1.0]), "numeric"),
])
def test_invalid_mixtures_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_wrong_point_dimension_raises():
    with pytest.raises(ValueError, match="last dimension D=2"):
        GaussianMixture.grid().log_prob(torch.zeros(5, 3))


# ---------------------------------------------------------------------------- issue 9 validation
def test_square_covariances_need_an_explicit_convention():
    w, mu = [0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]]
    shared = torch.tensor([[1.0, 0.3], [0.3, 1.0]])     # one (D, D) matrix meant for both
    with pytest.raises(ValueError, match="ambiguous"):
        GaussianMixture(w, mu, shared)
    diag = GaussianMixture(w, mu, shared, covariance_type="diagonal")
    assert diag.kind == "diagonal" and torch.allclose(diag.eigvals[1], torch.tensor(
        [0.3, 1.0], dtype=torch.float64))
    full = GaussianMixture(w, mu, shared.expand(2, 2, 2), covariance_type="full")
    assert torch.allclose(full.covariances[0], shared.double())
    with pytest.raises(ValueError, match="covariance_type='full' must have shape"):
        GaussianMixture(w, mu, shared, covariance_type="full")
    with pytest.raises(ValueError, match="unknown covariance_type"):
        GaussianMixture(w, mu, shared, covariance_type="shared")
    # a non-symmetric square array can only be K diagonals: read as such
    assert GaussianMixture(w, mu, [[0.5, 0.5], [0.2, 0.2]]).kind == "diagonal"
    # derived mixtures keep their convention (a diffused K = D diagonal mixture)
    from smdlab import NoiseSchedule, marginal
    assert marginal(diag, NoiseSchedule.linear(10), 5).kind == "diagonal"
    assert diag.to(dtype=torch.float32).kind == "diagonal"


def test_symmetry_is_judged_per_component():
    big = torch.eye(2) * 1e4
    small = torch.tensor([[1e-3, 1e-4], [0.0, 1e-3]])   # 10 % asymmetric, tiny next to big
    with pytest.raises(ValueError, match="component 1"):
        GaussianMixture([0.5, 0.5], [[0, 0], [1, 1]], torch.stack([big, small]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(G=2.5), "G must be an integer"), (dict(G=0), "G >= 1"), (dict(G="3"), "G must be"),
    (dict(G=3, std=0.0), "std"), (dict(G=3, spacing=float("inf")), "spacing"),
])
def test_grid_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        GaussianMixture.grid(**kwargs)


def test_random_and_limits():
    from smdlab.mixture import ExtremeValueError, value_limits

    with pytest.raises(ValueError, match="unknown kind 'bogus'"):
        GaussianMixture.random(2, 2, kind="bogus")
    with pytest.raises(ValueError, match="D >= 1"):
        GaussianMixture.random(2, 0)
    with pytest.raises(ValueError, match="min_var <= max_var"):
        GaussianMixture.random(2, 2, min_var=0.5, max_var=0.1)
    L, vmin, vmax = value_limits(torch.float64)
    assert 1e60 < L < 1e62 and vmin == L ** -2 and vmax == L ** 2
    GaussianMixture([1.0], [[0.9 * L]], [1.0])          # inside the range: fine
    with pytest.raises(ExtremeValueError, match="means"):
        GaussianMixture([1.0], [[1.1 * L]], [1.0])
    with pytest.raises(ExtremeValueError, match="covariances"):
        GaussianMixture([1.0], [[0.0]], [vmin / 2])
    with pytest.raises(TypeError, match="dtype"):
        GaussianMixture([1.0], [[0.0]], [1.0], dtype=torch.int64)
    assert issubclass(ExtremeValueError, OverflowError) and issubclass(ExtremeValueError, ValueError)


def test_sample_counts():
    m = GaussianMixture.grid(2)
    x, k = m.sample(0, return_components=True)
    assert x.shape == (0, 2) and k.shape == (0,)
    assert m.sample(np.int64(3)).shape == (3, 2)
    for bad in (-1, 2.5, "4"):
        with pytest.raises((TypeError, ValueError), match="n must be"):
            m.sample(bad)
