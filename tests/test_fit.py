"""smdlab.fit and the training recipe: kernels for 1-D and 3-D targets that the samplers and the
error lab accept, clear errors, the recipe beating uniform-t training, bit-identical resume, and
the t-density's invariants."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smdlab
from smdlab import GaussianMixture, NoiseSchedule, ancestral_sample
from smdlab.fit import Recipe, build_kernel, fit
from smdlab.global_error import grid_global_error
from smdlab.local_error import local_error
from smdlab.metrics import mode_statistics, sample_metrics
from smdlab.nets import CodebookLatentGenerator, FourierFeatures
from smdlab.objectives import Objective, step_probabilities
from smdlab.training import TrainConfig, train

ROOT = NoiseSchedule.linear(1000)
SMALL = Recipe(hidden=32, time_dim=16, latent_dim=4, noise_dim=2, gen_hidden=16, batch_size=64)


@pytest.mark.parametrize("kind", ["ddpm", "smd_energy", "mixture"])
def test_fit_on_a_1d_target_gives_a_kernel_the_lab_accepts(kind):
    q = GaussianMixture.two_modes(2.0, 0.1, weight=0.3)
    chain = ROOT.respace(4)
    k = fit(q, kind, chain, steps=20, seed=1, recipe=SMALL)
    assert k.training_record["steps"] == 20 and not k.training
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(k, torch.randn(50, 1, generator=g, dtype=torch.float64), chain,
                         generator=g)
    assert x.shape == (50, 1) and torch.isfinite(x).all()
    m = local_error(q, k, 250, 0, n_points=64, n_latent=4, generator=g)
    assert np.isfinite(m.mean) and m.mean >= 0
    res = grid_global_error(q, k, chain, n_grid=64, n_latent=4, generator=g)
    assert np.isfinite(float(res["kl"])) and float(res["kl"]) >= 0


def test_fit_on_a_3d_target_with_unequal_weights():
    q = GaussianMixture.random(3, 3, generator=torch.Generator().manual_seed(2))
    chain = ROOT.respace(10)
    k = fit(q, "smd-jensen", chain, steps=15, recipe=SMALL)
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(k, torch.randn(40, 3, generator=g, dtype=torch.float64), chain,
                         generator=g)
    assert x.shape == (40, 3) and torch.isfinite(x).all()
    m = local_error(q, k, 100, 0, n_points=64, n_latent=4, generator=g)
    assert np.isfinite(m.mean) and m.mean >= 0
    assert np.isfinite(sample_metrics(q, x, generator=g)["nll_excess"])
    with pytest.raises(ValueError, match="1-D and 2-D"):      # the grid route's own limit
        grid_global_error(q, k, chain, n_grid=12, n_latent=2, generator=g)
    assert smdlab.fit is fit


def test_fit_mixture_kind_on_a_3d_target_and_its_components():
    from smdlab.fit import default_components
    from smdlab.mixture_kernel import MixtureDenoiser

    q = GaussianMixture.random(3, 3, generator=torch.Generator().manual_seed(2))
    chain = ROOT.respace(10)
    k = fit(q, "mixture", chain, steps=15, recipe=SMALL)
    assert isinstance(k, MixtureDenoiser) and k.K == default_components(q) == 8
    g = torch.Generator().manual_seed(0)
    x = ancestral_sample(k, torch.randn(40, 3, generator=g, dtype=torch.float64), chain,
                         generator=g)
    assert x.shape == (40, 3) and torch.isfinite(x).all()
    m = local_error(q, k, 100, 0, n_points=64, generator=g)
    assert np.isfinite(m.mean) and m.mean >= 0 and m.method == "mc"
    k5 = fit(q, "mixture", chain, steps=2, recipe=dataclasses.replace(SMALL, n_components=5))
    assert k5.K == 5
    with pytest.raises(ValueError, match="n_components"):
        Recipe(n_components=0)


def test_fit_rejects_bad_arguments_clearly():
    q = GaussianMixture.two_modes()
    with pytest.raises(ValueError, match="kind"):
        fit(q, "vae", steps=1)
    with pytest.raises(TypeError, match="target"):
        fit(np.zeros((3, 2)), "ddpm", steps=1)
    with pytest.raises(ValueError, match="steps"):
        fit(q, "ddpm", steps=0)
    with pytest.raises(TypeError, match="steps"):
        fit(q, "ddpm", steps=2.5)
    with pytest.raises(TypeError, match="schedule"):
        fit(q, "ddpm", schedule="linear", steps=1)
    with pytest.raises(TypeError, match="recipe"):
        fit(q, "ddpm", steps=1, recipe={"lr": 1})
    with pytest.raises(ValueError, match="t_sampling"):
        Recipe(t_sampling="cosine")
    with pytest.raises(ValueError, match="latent"):
        Recipe(latent="flow")
    with pytest.raises(ValueError, match="n_codes"):
        Recipe(latent="codebook", n_codes=0)


def test_recipe_beats_uniform_t_training_well_outside_seed_noise():
    """4 x 4 grid, 200-step chain, 400 steps: measured 0.84-0.86 vs 0.35-0.36 at 600 steps."""
    q = GaussianMixture.grid(4, 0.5, 0.05)
    chain = NoiseSchedule.linear(200)
    share = {}
    for name, r in (("baseline", Recipe.baseline(hidden=64, batch_size=128)),
                    ("recipe", Recipe(hidden=64, batch_size=128))):
        share[name] = []
        for seed in range(2):
            k = fit(q, "ddpm", chain, steps=400, seed=seed, recipe=r)
            g = torch.Generator().manual_seed(10 + seed)
            x = ancestral_sample(k, torch.randn(300, 2, generator=g, dtype=torch.float64), chain,
                                 generator=g)
            share[name].append(mode_statistics(q, x)["in_mode_share"])
    a, b = np.array(share["recipe"]), np.array(share["baseline"])
    noise = max(a.std(ddof=1), b.std(ddof=1), np.sqrt(0.25 / 300))
    assert a.mean() - b.mean() > max(0.2, 5 * noise), share


def test_resume_is_bit_identical_with_the_recipe(tmp_path):
    q = GaussianMixture.grid(3, 0.5, 0.05).to(dtype=torch.float32)
    chain = ROOT.respace(10)

    def run(run_dir, stop=None):
        torch.manual_seed(0)
        model, obj = build_kernel(2, "smd_energy", chain, SMALL, final_variance=0.0025)
        assert obj.t_sampling == "lognormal"
        cfg = TrainConfig(steps=12, checkpoint_every=5, seed=3)

        def cb(step, m, ema):
            if step == stop:
                raise KeyboardInterrupt

        return train(model, obj, lambda step, g: q.sample(32, g), cfg, run_dir=run_dir,
                     callback=cb)

    ref = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop=7)
    res = run(tmp_path / "b")
    assert res.resumed_from == 5
    for (name, x), y in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(x, y), name
    assert ref.log == res.log


@given(st.integers(1, 60), st.floats(0, 1), st.floats(-3, 2), st.floats(0.2, 3))
def test_step_probabilities_are_a_distribution_with_a_uniform_floor(S, u, pm, ps):
    chain = ROOT if S == 60 else ROOT.respace(S)
    p = step_probabilities(chain, "lognormal", pm, ps, u)
    n = chain.original_steps.numel() - 1
    assert p.shape == (n,) and torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype))
    assert (p >= u / n - 1e-12).all()


def test_lognormal_sampling_favours_small_sigma_and_uniform_keeps_its_stream():
    p = step_probabilities(ROOT, "lognormal")
    assert p[:300].sum() > 0.5 > 300 / 1000          # sigma(t=300) ~ 0.75: most mass below
    a = Objective("jensen", ROOT).draw_jumps(100, torch.Generator().manual_seed(1))
    b = torch.randint(1, 1001, (100,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="t_sampling"):
        Objective("jensen", ROOT, t_sampling="cosine")


def test_fourier_features_keep_the_coordinates():
    f = FourierFeatures(3, 4)
    x = torch.randn(5, 3)
    y = f(x)
    assert y.shape == (5, f.out_dim) == (5, 27)
    assert torch.equal(y[:, :3], x)
    assert torch.allclose(y[:, 3:15] ** 2 + y[:, 15:] ** 2, torch.ones(5, 12))
    with pytest.raises(ValueError, match="n_freq"):
        FourierFeatures(2, 0)


def test_recipe_final_variance_and_schedule_defaults():
    q = GaussianMixture.two_modes(2.0, 0.1)
    chain = ROOT.respace(4)
    ddpm = fit(q, "ddpm", chain, steps=5, recipe=SMALL)
    smd = fit(q, "smd_energy", chain, steps=5, recipe=SMALL)
    assert ddpm.final_variance == "clipped"
    assert smd.final_variance == pytest.approx(float(q.eigvals.min()))
    # the cosine decays to lr_final * lr on the last step
    assert ddpm.training_record["log"][-1]["lr"] == pytest.approx(SMALL.lr * SMALL.lr_final)
    fixed = fit(q, "ddpm", chain, steps=5, recipe=Recipe(**{**SMALL.__dict__,
                                                            "final_variance": 0.5}))
    assert fixed.final_variance == 0.5
    with pytest.raises(ValueError, match="final_variance"):
        Recipe(final_variance="wide")


def test_codebook_latent_draws_its_codes_uniformly_and_fits_like_any_smd_kernel():
    # k = floor(K Phi(eta_1)) is uniform on 0..K-1 for eta ~ N(0, I): counts of 40,000 draws over
    # K = 8 codes lie within 5 binomial sds of 5,000; the codes are what the generator returns.
    gen = CodebookLatentGenerator(noise_dim=3, latent_dim=4, n_codes=8)
    eta = torch.randn(40_000, 3, generator=torch.Generator().manual_seed(0))
    k = gen.code_index(eta)
    counts = torch.bincount(k, minlength=8).double()
    assert k.min() >= 0 and k.max() <= 7
    assert (counts - 5000).abs().max() < 5 * (40_000 * (1 / 8) * (7 / 8)) ** 0.5
    z = gen(torch.zeros(40_000, 2), eta, torch.zeros(40_000, dtype=torch.long))
    assert torch.equal(z, gen.codes.weight[k])
    q = GaussianMixture.two_modes(2.0, 0.1)
    chain = ROOT.respace(4)
    kern = fit(q, "smd_energy", chain, steps=10, seed=0,
               recipe=dataclasses.replace(SMALL, latent="codebook", n_codes=16))
    assert isinstance(kern.gen, CodebookLatentGenerator)
    g = torch.Generator().manual_seed(1)
    x = ancestral_sample(kern, torch.randn(40, 1, generator=g, dtype=torch.float64), chain,
                         generator=g)
    assert x.shape == (40, 1) and torch.isfinite(x).all()
