"""The latent-conditioning modules: the O(d) hypernetwork equals the naive matrix form, shapes for
vectors and images, and the latent changes the output at initialisation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab.conditioning import FiLM, HyperConditioning, NaiveHyperConditioning, make_conditioning


@given(C=st.integers(1, 9), Z=st.integers(1, 7), inner=st.integers(1, 12), L=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), image=st.booleans(), pixel_latent=st.booleans())
def test_od_hypernet_equals_naive_matrix_form(C, Z, inner, L, seed, image, pixel_latent):
    torch.manual_seed(seed)
    fast = HyperConditioning(C, Z, inner_dim=inner, n_layers=L).double()
    naive = NaiveHyperConditioning(C, Z, inner_dim=inner, n_layers=L).double()
    naive.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(seed)
    if image:
        h = torch.randn(3, C, 4, 5, generator=g, dtype=torch.float64)
        z = torch.randn(3, Z, *((4, 5) if pixel_latent else ()), generator=g, dtype=torch.float64)
    else:
        h = torch.randn(6, C, generator=g, dtype=torch.float64)
        z = torch.randn(6, Z, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fast(h, z), naive(h, z), rtol=1e-10, atol=1e-10)


def test_matrix_is_rank_one_plus_scaled_identity():
    # The naive form's W must be u u^T + softplus(c) I: check its spectrum directly.
    torch.manual_seed(0)
    m = NaiveHyperConditioning(4, 3, inner_dim=6, n_layers=1).double()
    z = torch.randn(1, 3, dtype=torch.float64)
    u, s = m._factors(z)
    W = u[0, 0, :, None] * u[0, 0, None, :] + s[0, 0] * torch.eye(6, dtype=torch.float64)
    ev = torch.linalg.eigvalsh(W)
    torch.testing.assert_close(ev[:-1], s[0, 0].expand(5))
    torch.testing.assert_close(ev[-1], s[0, 0, 0] + (u[0, 0] ** 2).sum())
    assert (s > 0).all()


@pytest.mark.parametrize("kind", ["hyper", "hyper_naive", "film"])
@pytest.mark.parametrize("shape,zshape", [((5, 8), (5, 3)), ((2, 8, 4, 4), (2, 3, 4, 4)),
                                          ((2, 8, 4, 4), (2, 3))])
def test_shapes_and_latent_changes_output_at_init(kind, shape, zshape):
    torch.manual_seed(1)
    m = make_conditioning(kind, 8, 3) if kind == "film" else make_conditioning(kind, 8, 3,
                                                                               inner_dim=10)
    h = torch.randn(shape)
    z1, z2 = torch.randn(zshape), torch.randn(zshape)
    out1, out2 = m(h, z1), m(h, z2)
    assert out1.shape == h.shape and out1.dtype == h.dtype
    assert (out1 - out2).abs().max() > 1e-3
    # gradients reach the latent
    z = z1.clone().requires_grad_(True)
    m(h, z).square().sum().backward()
    assert z.grad.abs().sum() > 0


def test_parameter_counts():
    m = HyperConditioning(32, 16, inner_dim=100, n_layers=2)
    n = sum(p.numel() for p in m.parameters())
    assert n == (32 * 100 + 100) + (16 * 2 * 101 + 2 * 101) + (100 * 32 + 32)
    f = FiLM(32, 16)
    assert sum(p.numel() for p in f.parameters()) == 16 * 64 + 64


def test_bad_inputs_raise_clear_errors():
    m = HyperConditioning(8, 3, inner_dim=4)
    with pytest.raises(ValueError, match="features"):
        m(torch.randn(2, 7), torch.randn(2, 3))
    with pytest.raises(ValueError, match="latent"):
        m(torch.randn(2, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="spatial"):
        m(torch.randn(2, 8, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="latent z"):
        m(torch.randn(2, 8), None)
    with pytest.raises(ValueError, match="unknown conditioning"):
        make_conditioning("nope", 8, 3)
    with pytest.raises(ValueError):
        HyperConditioning(0, 3)
