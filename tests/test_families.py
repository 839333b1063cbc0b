"""The oracle kernel families (smdlab.families): the kernel contract for every member, and the
mathematics each family rests on (top-k truncation, GMS's moment fit, DDIM's two ends, Analytic-
DPM's variance, the change of variables of deterministic DDIM)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smdlab import ExactKernel, GaussianMixture, NoiseSchedule, ancestral_sample, ddim_sample
from smdlab.exact import expected_x0, posterior, posterior_from_log_alpha_bars
from smdlab.families import (
    AnalyticDPMKernel,
    DDIMKernel,
    TopKKernel,
    ddim_density_1d,
    ddim_pushforward,
    ddim_pushforward_kl,
    oracle_families,
)
from smdlab.gms import GMSKernel, gms_exact, gms_fit, posterior_raw_moments
from smdlab.kernels import BestGaussianKernel
from smdlab.local_error import local_error, local_errors
from smdlab.mixture import gaussian_log_prob_eig
from smdlab.parameterization import posterior_coefficients
from smdlab.sampling import PointMass

from .strategies import mixtures

ROOT = NoiseSchedule.linear(200)
CHAIN = ROOT.respace(5)


def _aniso():
    from smdlab.targets import anisotropic_target
    return anisotropic_target()


TARGETS = {"two_modes": GaussianMixture.two_modes(), "aniso": _aniso()}


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_member_honours_the_kernel_contract(target):
    mix = TARGETS[target]
    fam = oracle_families(mix, CHAIN, topk=(1, 2))
    assert len(fam) == len(set(fam))
    g = torch.Generator().manual_seed(0)
    x_t = mix.sample(64, g) * 1.5
    pairs = [(200, 160), (40, 0)]
    for name, k in fam.items():
        assert k.dim == mix.D and k.schedule is CHAIN
        for t, s in pairs:
            dist = k.distribution(x_t, t, s)
            assert dist.mean().shape == (64, mix.D)
            x_s = k.sample(x_t, t, s, torch.Generator().manual_seed(1))
            assert x_s.shape == x_t.shape and x_s.dtype == x_t.dtype
            again = k.sample(x_t, t, s, torch.Generator().manual_seed(1))
            assert torch.equal(x_s, again), name
            if isinstance(dist, PointMass):
                with pytest.raises(ValueError, match="no density"):
                    dist.log_prob(x_s)
                assert torch.allclose(x_s, dist.mean())
            else:
                lp = dist.log_prob(x_s)
                assert lp.shape == (64,) and torch.isfinite(lp).all(), name
        # denoise, where a family has it, is E[x_0 | x_t] (the SMD construction steps directly)
        if k.can_denoise:
            assert torch.allclose(k.denoise(x_t, 120), expected_x0(mix, ROOT, x_t, 120))
        # root steps only: step 7 is not kept by the 5-step chain
        with pytest.raises(ValueError, match="not a kept step"):
            k.distribution(x_t, 7, 0)


@pytest.mark.parametrize("name", ["gms", "topk-1", "analytic-dpm", "ddim-0.5"])
def test_samples_match_the_step_distribution_mean(name):
    mix = TARGETS["two_modes"]
    k = oracle_families(mix, CHAIN, topk=(1,))[name]
    x_t = torch.tensor([[0.05], [0.6]], dtype=torch.float64).repeat(20000, 1)
    dist = k.distribution(x_t, 80, 40)
    draws = k.sample(x_t, 80, 40, torch.Generator().manual_seed(3))
    for i in range(2):
        sel = draws[i::2, 0]
        sd = sel.std().item()
        assert abs(sel.mean().item() - dist.mean()[i, 0].item()) < 5 * sd / math.sqrt(sel.numel())


@settings(max_examples=15)
@given(mixtures(max_K=4, max_D=2), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_topk_with_k_at_least_K_is_the_exact_kernel(mix, extra, seed):
    k = TopKKernel(mix, CHAIN, mix.K + extra)
    g = torch.Generator().manual_seed(seed)
    x_t = mix.sample(32, g)
    x_s = posterior(mix, CHAIN, x_t, 120, 80).sample(g)
    exact = ExactKernel(mix, CHAIN).distribution(x_t, 120, 80)
    assert torch.equal(k.distribution(x_t, 120, 80).log_prob(x_s), exact.log_prob(x_s))
    r = local_error(mix, k, 120, 80, n_points=64, n_mc=1, generator=g)
    assert r.mean == 0.0 and r.se == 0.0


@settings(max_examples=15)
@given(st.floats(-3, 3), st.floats(1e-3, 2.0), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_top1_on_one_component_is_exact(m, var, D, seed):
    mix = GaussianMixture([1.0], [[m] * D], [var])
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(16, D, dtype=torch.float64, generator=g)
    x_s = torch.randn(16, D, dtype=torch.float64, generator=g)
    for t, s in ((200, 160), (40, 0)):
        a = TopKKernel(mix, CHAIN, 1).distribution(x_t, t, s).log_prob(x_s)
        b = ExactKernel(mix, CHAIN).distribution(x_t, t, s).log_prob(x_s)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_topk_truncation_keeps_the_largest_responsibilities_renormalised():
    mix = GaussianMixture.grid(3, 0.5, 0.05)
    x_t = mix.sample(50, torch.Generator().manual_seed(0))
    full = posterior(mix, CHAIN, x_t, 80, 40)
    trunc = TopKKernel(mix, CHAIN, 2).distribution(x_t, 80, 40)
    w = trunc.weights
    assert torch.allclose(w.sum(-1), torch.ones(50, dtype=torch.float64))
    assert ((w > 0).sum(-1) <= 2).all()
    top = full.weights.topk(2, -1)
    expect = top.values / top.values.sum(-1, keepdim=True)
    assert torch.allclose(w.gather(-1, top.indices), expect)
    # local error falls to zero as k reaches K
    g = torch.Generator().manual_seed(1)
    ks = [TopKKernel(mix, CHAIN, k) for k in (1, 9)]
    e1, e9 = local_errors(mix, ks, 40, 0, n_points=512, n_mc=2, generator=g)
    assert e1.mean > 3 * e1.se + 1e-4 and e9.mean == 0.0


# ---------------------------------------------------------------------- GMS
def _mixture_raw(means, var, w=1 / 3):
    u1, u2 = means
    return torch.stack([w * u1 + (1 - w) * u2, w * (u1 ** 2 + var) + (1 - w) * (u2 ** 2 + var),
                        w * (u1 ** 3 + 3 * u1 * var) + (1 - w) * (u2 ** 3 + 3 * u2 * var)])


@settings(max_examples=12)
@given(mixtures(max_K=4, max_D=3, kinds=("diagonal", "full")), st.integers(1, 199),
       st.integers(0, 2**31 - 1))
def test_gms_fit_reproduces_three_moments_where_representable(mix, t, seed):
    g = torch.Generator().manual_seed(seed)
    x_t = mix.sample(24, g)
    la = ROOT.log_alpha_bars
    post = posterior_from_log_alpha_bars(mix, x_t, la[t + 1].item(), la[t].item())
    mom = posterior_raw_moments(post)
    # the moments are those of the posterior's per-dimension marginal (a sampled check)
    m1, m2, m3 = mom
    var = m2 - m1 * m1
    gamma = (m3 - 3 * m1 * m2 + 2 * m1 ** 3) / var ** 1.5
    means, v, res = gms_fit(mom, iterations=30)
    ok = gamma.abs() < 0.65
    fitted = _mixture_raw(means, v)
    scale = torch.stack([m1.abs() + var.sqrt(), m2.abs() + var, m3.abs() + var ** 1.5])
    err = ((fitted - mom).abs() / scale)
    assert (err[:, ok] < 1e-7).all()
    assert (res[ok] < 1e-7).all()
    # and it is the closed-form solution there (near gamma = 0 the loss is flat like delta^6, so
    # a few dozen iterations leave a split of order 1e-3 sd: the moments match, the means only
    # to that accuracy)
    em, ev = gms_exact(m1, var, m3 - 3 * m1 * m2 + 2 * m1 ** 3)
    sd = var.sqrt()
    assert ((v - ev).abs()[ok] <= 1e-2 * var[ok]).all()
    assert ((means - em).abs()[:, ok] <= 2e-2 * sd[ok]).all()
    clear = ok & (gamma.abs() > 0.05)
    assert ((means - em).abs()[:, clear] <= 1e-5 * sd[clear]).all()


def test_gms_cannot_split_a_symmetric_bimodal_step_nor_fit_strong_skew():
    # symmetric two modes: skewness 0, so the fitted means coincide (one Gaussian)
    m1 = torch.tensor([0.0], dtype=torch.float64)
    mom = torch.stack([m1, m1 + 1.0, m1])
    means, v, res = gms_fit(mom)
    assert (means[0] - means[1]).abs().item() < 1e-2 and v.item() == pytest.approx(1.0, abs=1e-4)
    assert res.item() < 1e-8
    # skewness 2 (> 1/sqrt(2)): no fit, the variance sits on its floor and a mismatch remains
    mom = torch.stack([m1, m1 + 1.0, m1 + 2.0])
    means, v, res = gms_fit(mom, min_scale=1e-3)
    assert res.item() > 0.1 and v.item() == pytest.approx(1e-3)
    assert gms_exact(m1, m1 + 1.0, m1 + 2.0)[1].item() < 0


def test_gms_bad_input():
    with pytest.raises(ValueError, match="moments"):
        gms_fit(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="iterations"):
        gms_fit(torch.zeros(3, 4), iterations=0)
    with pytest.raises(ValueError, match="weight"):
        gms_fit(torch.zeros(3, 4), weight=0.5)


def test_gms_kernel_density_is_normalised_1d():
    mix = GaussianMixture([0.7, 0.3], [[0.0], [1.0]], [0.05, 0.05])
    k = GMSKernel(mix, CHAIN)
    x_t = torch.tensor([[0.4]], dtype=torch.float64)
    y = torch.linspace(-4, 5, 20001, dtype=torch.float64)[:, None]
    dist = k.distribution(x_t.expand(y.shape[0], 1), 80, 40)
    mass = dist.log_prob(y).exp().sum().item() * (y[1, 0] - y[0, 0]).item()
    assert mass == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("target", list(TARGETS))
def test_ddim_eta1_is_the_ancestral_beta_tilde_step(target):
    mix = TARGETS[target]
    x_t = mix.sample(40, torch.Generator().manual_seed(0)) + 0.3
    d = DDIMKernel(mix, CHAIN, 1.0)
    b = BestGaussianKernel(mix, CHAIN, "beta_tilde")
    for t, s in ((200, 160), (120, 80), (40, 0)):
        p, q = d.distribution(x_t, t, s), b.distribution(x_t, t, s)
        assert torch.allclose(p.mean(), q.mean(), atol=1e-10)
        assert torch.allclose(p.variance, q.variance, rtol=1e-12)


def test_ddim_kernel_chain_is_ddim_sampling_of_the_exact_denoiser():
    mix = TARGETS["aniso"]
    x_T = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for eta in (0.0, 0.5):
        a = ancestral_sample(DDIMKernel(mix, CHAIN, eta), x_T, generator=torch.Generator().manual_seed(1))
        b = ddim_sample(ExactKernel(mix, CHAIN), x_T, eta=eta,
                        generator=torch.Generator().manual_seed(1))
        assert torch.allclose(a, b, atol=1e-10)


def test_ddim_bad_eta_and_no_density_at_eta0():
    mix = TARGETS["two_modes"]
    with pytest.raises(ValueError, match="eta"):
        DDIMKernel(mix, CHAIN, 1.5)
    k = DDIMKernel(mix, CHAIN, 0.0)
    assert not k.is_gaussian
    with pytest.raises(ValueError, match="push-forward"):
        ddim_pushforward(DDIMKernel(mix, CHAIN, 0.5), torch.zeros(2, 1))


@pytest.mark.parametrize("S", [10, 25])
def test_ddim_pushforward_density_integrates_to_one_1d(S):
    mix = GaussianMixture.two_modes(2.0, 0.2, weight=0.3)
    k = DDIMKernel(mix, ROOT.respace(S), 0.0)
    y = torch.linspace(-4, 4, 40001, dtype=torch.float64)
    p = ddim_density_1d(k, y, width=12.0, n=65536)
    assert (p * (y[1] - y[0])).sum().item() == pytest.approx(1.0, abs=2e-3)
    # and the push-forward samples agree with that density (mean)
    x_T = torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0, _ = ddim_pushforward(k, x_T)
    mean_density = ((p * y).sum() * (y[1] - y[0])).item()
    assert x0.mean().item() == pytest.approx(mean_density, abs=4 * x0.std().item() / 140)


def test_autograd_jacobian_equals_tweedie_closed_form():
    mix = TARGETS["aniso"]
    k = DDIMKernel(mix, ROOT.respace(4), 0.0)
    x_T = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xa, la = ddim_pushforward(k, x_T, jacobian="autograd")
    xb, lb = ddim_pushforward(k, x_T, jacobian="tweedie")
    assert torch.allclose(xa, xb) and torch.allclose(la, lb, atol=1e-8)


def test_ddim_pushforward_kl_of_a_gaussian_target_is_the_closed_form():
    # q = N(m, v): every DDIM step is affine, p(x_0) is Gaussian with the pushed-forward moments
    mix = GaussianMixture([1.0], [[0.5]], [0.3])
    k = DDIMKernel(mix, ROOT.respace(4), 0.0)
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    x0, _ = ddim_pushforward(k, x_T)
    slope, m_p = (x0[1, 0] - x0[0, 0]).item(), x0[0, 0].item()
    v_p, m_q, v_q = slope ** 2, 0.5, 0.3
    closed = 0.5 * (math.log(v_p / v_q) + (v_q + (m_q - m_p) ** 2) / v_p - 1)
    r = ddim_pushforward_kl(mix, k)
    assert r["kl"] == pytest.approx(closed, rel=1e-4, abs=1e-9)
    # the 2-D x_T-grid route on a product of the same Gaussian: twice the 1-D value
    mix2 = GaussianMixture([1.0], [[0.5, 0.5]], [0.3])
    r2 = ddim_pushforward_kl(mix2, DDIMKernel(mix2, ROOT.respace(4), 0.0), n_grid=200)
    assert r2["kl"] == pytest.approx(2 * closed, rel=1e-3, abs=1e-8)
    assert r2["q_mass"] == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------- Analytic-DPM
def test_analytic_dpm_variance_is_tweedies_closed_form_and_sits_between_the_kinds():
    mix = TARGETS["aniso"]
    t, s = 120, 80
    k = AnalyticDPMKernel(mix, CHAIN, n_points=20000)
    v = k.step_variance(t, s)
    lt, ls = ROOT.log_alpha_bars[t].item(), ROOT.log_alpha_bars[s].item()
    c0, _, bt, _ = (c.item() for c in posterior_coefficients(lt, ls))
    assert v >= bt
    # Analytic-DPM (Bao et al. 2022, Thm 1): beta~ + c0^2 (1-abar)/abar (1 - (1-abar) E|score|^2/D)
    from smdlab.exact import score
    g = torch.Generator().manual_seed(5)
    x0 = mix.sample(40000, g)
    ab = math.exp(lt)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, dtype=x0.dtype, generator=g)
    sc2 = (score(mix, ROOT, x_t, t) ** 2).sum(-1) / mix.D
    closed = bt + c0 ** 2 * (1 - ab) / ab * (1 - (1 - ab) * sc2)
    se = math.hypot(closed.std().item() / math.sqrt(40000), k.variance_se(t, s))
    assert v == pytest.approx(closed.mean().item(), abs=5 * se)
    # one variance per step: its local error lies between the per-point and the fixed ones
    ks = [BestGaussianKernel(mix, CHAIN, "isotropic"), k, BestGaussianKernel(mix, CHAIN, "beta_tilde")]
    iso, ana, btk = local_errors(mix, ks, t, s, n_points=2048, n_mc=2,
                                 generator=torch.Generator().manual_seed(2))
    assert iso.mean <= ana.mean + 3 * (iso.se + ana.se)
    assert ana.mean <= btk.mean + 3 * (ana.se + btk.se)


def test_oracle_families_drop_topk_at_or_above_K_and_validate():
    mix = TARGETS["aniso"]   # K = 3
    fam = oracle_families(mix, CHAIN, topk=(1, 2, 4, 8))
    assert [n for n in fam if n.startswith("topk")] == ["topk-1", "topk-2"]
    assert {"exact", "gms", "analytic-dpm", "ddim-0", "ddim-1", "smd-construction"} <= set(fam)
    with pytest.raises(ValueError, match="k must"):
        TopKKernel(mix, CHAIN, 0)
    with pytest.raises(ValueError, match="n_points"):
        AnalyticDPMKernel(mix, CHAIN, n_points=1)


def test_component_marginals_of_the_moments_match_a_direct_formula():
    mix = TARGETS["aniso"]
    x_t = mix.sample(8, torch.Generator().manual_seed(0))
    post = posterior(mix, CHAIN, x_t, 80, 40)
    mom = posterior_raw_moments(post)
    # numerically integrate dimension 0's marginal of the first point
    y = torch.linspace(-4, 4, 40001, dtype=torch.float64)
    var0 = post.covariances[:, 0, 0]
    comp = gaussian_log_prob_eig(y[:, None, None], post.means[0, :, 0:1], var0[:, None],
                                 torch.ones(post.K, 1, 1, dtype=torch.float64))
    dens = (comp + post.log_weights[0]).logsumexp(-1).exp()
    h = (y[1] - y[0]).item()
    for j in range(3):
        assert (dens * y ** (j + 1)).sum().item() * h == pytest.approx(mom[j, 0, 0].item(), abs=1e-8)


# ---------------------------------------------------------------------- E9 (the bench itself)
def test_e9_quick_run_scores_every_family_consistently(tmp_path):
    import dataclasses
    import json

    from smdlab.experiments import REGISTRY, Outputs
    from smdlab.experiments.base import VERDICTS

    exp = REGISTRY["e9"]
    cfg = dataclasses.replace(exp.config(quick=True), targets=("two_modes",), b_dims=(1,),
                              b_separations=(2.0,), b_stds=(0.1, 1e-3))
    out = Outputs(tmp_path)
    res = exp.run(cfg, out)
    payload = json.loads(res.json_path.read_text())
    assert payload["experiment"] == "e9" and payload["config"]["seed"] == 0
    rows = res.data["targets"]["two_modes"]["rows"]
    for S in cfg.steps:
        assert rows["exact"][S]["local"] == 0.0 and abs(rows["exact"][S]["kl"]) < 1e-3
        # DDIM(1) is the beta-tilde Gaussian: same local error on the same pairs
        assert rows["ddim-1"][S]["local"] == pytest.approx(rows["gaussian-beta_tilde"][S]["local"],
                                                           abs=1e-9)
        assert rows["ddim-0"][S]["local"] is None            # no density: +inf
        for name, r in rows.items():
            if r[S].get("bounds"):
                # an upper bound on a KL: never clearly negative
                assert r[S]["kl"] > -4 * r[S]["kl_se"] - 1e-6, name
    assert "topk-2" not in rows                              # k >= K is the exact kernel
    assert {v.claim.split(":")[0].split(" ")[0] for v in res.verdicts} == {"L5", "C3"}
    assert all(v.status in VERDICTS and (out.root / v.figure).exists() for v in res.verdicts)
    assert all(p.exists() and p.stat().st_size > 1000 for p in res.figures)
    # the narrow-component target is the worse one for a perfect DDPM (the final jump's floor)
    stds = res.data["part_b"]["stds"]
    assert stds[1e-3]["kl"] > stds[0.1]["kl"]
