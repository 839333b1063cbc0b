"""The any-D global error (smdlab.path_kl): importance-weighted upper bounds on KL(q(x_0) || p(x_0))
against the grid route in 1-D and 2-D, their decrease in K, K = 1 as the chain-rule bound, and
dimension additivity on product targets."""

import pytest
import torch

from smdlab import BestGaussianKernel, ExactKernel, GaussianMixture, NoiseSchedule
from smdlab.bounds import kl_bound
from smdlab.families import DDIMKernel, TopKKernel
from smdlab.global_error import grid_global_error
from smdlab.path_kl import best_bound, convergence_gap, iw_global_kl, path_log_weights

ROOT = NoiseSchedule.linear(1000)


def _aniso():
    from smdlab.targets import anisotropic_target
    return anisotropic_target()


@pytest.mark.parametrize("D", [1, 2])
def test_exact_kernel_bound_is_the_prior_term(D):
    mix = GaussianMixture.two_modes() if D == 1 else _aniso()
    r = iw_global_kl(mix, ExactKernel(mix, ROOT.respace(10)), n_points=128, Ks=(1, 8),
                     generator=torch.Generator().manual_seed(0))
    for b, se in zip(r["bound"], r["se"]):
        assert abs(b) < 1e-3 and se < 1e-3


@pytest.mark.parametrize("case", ["1d-beta_tilde", "1d-topk1", "2d-aniso-isotropic",
                                  "2d-grid-beta_tilde"])
def test_iw_bound_lies_above_the_grid_kl_and_approaches_it(case):
    if case.startswith("1d"):
        mix, n_grid = GaussianMixture.two_modes(), 2048
    elif "aniso" in case:
        mix, n_grid = _aniso(), 128
    else:
        mix, n_grid = GaussianMixture.grid(3, 0.6, 0.08), 128
    chain = ROOT.respace(4)
    kernel = TopKKernel(mix, chain, 1) if "topk" in case else \
        BestGaussianKernel(mix, chain, case.rsplit("-", 1)[1])
    grid = grid_global_error(mix, kernel, n_grid=n_grid)["kl"]
    r = iw_global_kl(mix, kernel, n_points=256, Ks=(1, 16, 256),
                     generator=torch.Generator().manual_seed(1))
    for b, se in zip(r["bound"], r["se"]):
        assert b >= grid - 3 * se - 1e-3, (r, grid)
    b, se = best_bound(r)
    assert abs(b - grid) < 3 * se + 0.05 * max(grid, 0.02), (r, grid)
    assert r["bound"][0] - b > -2 * r["se"][0]        # tightening (in expectation)
    assert convergence_gap(r) > -3 * se


def test_bound_decreases_in_K_on_average():
    mix = GaussianMixture.two_modes()
    k = BestGaussianKernel(mix, ROOT.respace(4), "beta_tilde")
    means = []
    for seed in range(4):
        r = iw_global_kl(mix, k, n_points=128, Ks=(1, 4, 16, 64),
                         generator=torch.Generator().manual_seed(seed))
        means.append(r["bound"])
    avg = torch.tensor(means).mean(0)
    assert (avg[1:] <= avg[:-1] + 0.02).all(), avg


def test_K1_bound_is_the_chain_rule_bound():
    mix = GaussianMixture.two_modes(2.0, 0.2)
    k = BestGaussianKernel(mix, ROOT.respace(4), "beta_tilde")
    g = torch.Generator().manual_seed(0)
    r = iw_global_kl(mix, k, n_points=4096, Ks=(1,), generator=g)
    cb = kl_bound(mix, k, n_points=2048, generator=g)
    se = (r["se"][0] ** 2 + cb["bound_se"] ** 2) ** 0.5
    assert r["bound"][0] == pytest.approx(cb["bound"], abs=4 * se + 1e-3)


def test_product_target_kl_adds_over_dimensions():
    # the beta-tilde kernel of a product mixture factorises, so the joint KL (K = 1) is additive
    one = GaussianMixture.two_modes(2.0, 0.2)
    three = GaussianMixture.product([0.5, 0.5], [-1.0, 1.0], [0.04, 0.04], 3)
    chain = ROOT.respace(4)
    g = torch.Generator().manual_seed(0)
    r1 = iw_global_kl(one, BestGaussianKernel(one, chain, "beta_tilde"), n_points=2048, Ks=(1,),
                      generator=g)
    r3 = iw_global_kl(three, BestGaussianKernel(three, chain, "beta_tilde"), n_points=2048,
                      Ks=(1,), generator=g)
    se = (9 * r1["se"][0] ** 2 + r3["se"][0] ** 2) ** 0.5
    assert r3["bound"][0] == pytest.approx(3 * r1["bound"][0], abs=4 * se)


def test_thousand_step_chain_runs_and_is_small_for_a_perfect_ddpm():
    mix = GaussianMixture.two_modes()
    k = BestGaussianKernel(mix, ROOT, "beta_tilde")
    r = iw_global_kl(mix, k, n_points=64, Ks=(1, 4), generator=torch.Generator().manual_seed(0))
    assert r["steps"] == 1000
    assert 0 <= r["bound"][-1] < 0.1


def test_refuses_deterministic_steps_and_bad_input():
    mix = GaussianMixture.two_modes()
    chain = ROOT.respace(4)
    with pytest.raises(ValueError, match="ddim_pushforward_kl"):
        iw_global_kl(mix, DDIMKernel(mix, chain, 0.0), n_points=4, Ks=(1,))
    with pytest.raises(ValueError, match="n_points"):
        iw_global_kl(mix, ExactKernel(mix, chain), n_points=1)
    with pytest.raises(ValueError, match="Ks"):
        iw_global_kl(mix, ExactKernel(mix, chain), Ks=(0,))
    with pytest.raises(ValueError, match="x0"):
        path_log_weights(mix, ExactKernel(mix, chain), torch.zeros(3, 2), 2)


# ---------------------------------------------------------------------- latent kernels
def _oracle_pair(mix, chain):
    """The oracle DDPM (exact mean, beta-tilde) as a Gaussian kernel and as an SMD kernel whose
    backbone ignores the latent (so its sampled step density is the Gaussian's, to rounding)."""
    from smdlab.denoisers import GaussianDenoiser, SMDDenoiser
    from smdlab.nets import OracleNet, VectorLatentGenerator

    net = OracleNet(mix, ROOT, "v")
    gen = VectorLatentGenerator(mix.D, 3, 4, hidden=8, time_dim=4, T=ROOT.T).double()
    return (GaussianDenoiser(net, chain, mix.D, "v", name="oracle"),
            SMDDenoiser(net, gen, chain, mix.D, 3, "v", name="oracle-smd"))


def test_a_latent_kernel_that_ignores_its_latent_gives_the_exact_density_bound():
    mix = GaussianMixture.two_modes(2.0, 0.2)
    gauss, smd = _oracle_pair(mix, ROOT.respace(4))
    r_g = iw_global_kl(mix, gauss, n_points=64, Ks=(1, 8),
                       generator=torch.Generator().manual_seed(3))
    r_s = iw_global_kl(mix, smd, n_points=64, Ks=(1, 8), n_latent=5,
                       generator=torch.Generator().manual_seed(3),
                       latent_generator=torch.Generator().manual_seed(99))
    assert r_s["n_latent"] == 5
    for a, b in zip(r_g["bound_raw"], r_s["bound_raw"]):
        assert b == pytest.approx(a, abs=1e-9)


@pytest.mark.parametrize("L", [1, 4])
def test_sampled_latent_bound_stays_above_the_kl(L):
    # the SMD construction with the beta variance: a genuinely latent kernel that is not exact
    from smdlab.kernels import MixtureConstructionKernel

    mix = GaussianMixture.two_modes(2.0, 0.1)
    chain = ROOT.respace(4)
    k = MixtureConstructionKernel(mix, chain, "beta")
    grid = grid_global_error(mix, k, n_grid=2048, n_latent=None)["kl"]
    exact = iw_global_kl(mix, k, n_points=256, Ks=(1, 16), n_latent=None,
                         generator=torch.Generator().manual_seed(5))
    sampled = iw_global_kl(mix, k, n_points=256, Ks=(1, 16), n_latent=L,
                           generator=torch.Generator().manual_seed(5),
                           latent_generator=torch.Generator().manual_seed(6))
    for b, se, be in zip(sampled["bound"], sampled["se"], exact["bound"]):
        assert b >= grid - 3 * se, (sampled, grid)
        assert b >= be - 3 * se, (sampled, exact)     # looser than the exact density's (Jensen)
    assert grid > 0.01                                # the kernel is not exact: a real test
