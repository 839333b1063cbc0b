"""E6-E8 end to end at quick size: results, figures, verdicts, the shared model cache; and the
latent-spread measurement of E7."""

import json

import pytest
import torch

from smdlab import GaussianMixture, NoiseSchedule
from smdlab.experiments.base import VERDICTS, Outputs

pytest.importorskip("smdlab.metrics")

from smdlab.diagnostics import latent_spread  # noqa: E402
from smdlab.experiments import e6_toy, e7_latent_use, e8_few_steps, toy_zoo  # noqa: E402
from smdlab.experiments.toy_config import ToyConfig, ToyEval, ToyZoo, replace_train  # noqa: E402


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    out = Outputs(tmp_path_factory.mktemp("learned"))
    results = {}
    for mod, cls in ((e6_toy, ToyConfig), (e7_latent_use, e7_latent_use.LatentUseConfig),
                     (e8_few_steps, e8_few_steps.FewStepConfig)):
        results[mod.__name__.rsplit(".", 1)[1]] = mod.run(cls.quick(), out)
    return out, results


def test_quick_runs_write_results_and_figures(quick_runs):
    out, results = quick_runs
    for res in results.values():
        payload = json.loads(res.json_path.read_text())
        assert payload["experiment"] == res.name
        assert {"config", "seed", "git_commit", "smdlab_version"} <= set(payload)
        assert res.figures and all(p.exists() and p.stat().st_size > 0 for p in res.figures)
        for v in res.verdicts:
            assert v.status in VERDICTS
        for line in res.summary_md.splitlines():
            if line.startswith("!["):
                assert (out.root / line[line.index("(") + 1:-1]).exists(), line
    e6 = results["e6_toy"].data
    kinds = set(ToyConfig.quick().zoo.kinds)
    assert {r["kind"] for r in e6["rows"]} == kinds
    # every model on its own chain and the full-chain models on the respaced chain
    assert {(r["train_S"], r["sample_S"]) for r in e6["rows"]} == {(1000, 1000), (1000, 4), (4, 4)}
    # the capacity-matched DDPM is within 5% of SMD's parameter count
    assert abs(e6["params"]["ddpm-matched"] / e6["params"]["smd-jensen"] - 1) < 0.05
    # E7 and E8 reused E6's models (trained once) and wrote their verdict rows
    claims = {v.claim.split(":")[0] for r in results.values() for v in r.verdicts}
    assert {"L1", "L2", "C5"} <= claims


def test_models_are_cached_on_disk(quick_runs, tmp_path):
    out, _ = quick_runs
    cfg = ToyConfig.quick()
    toy_zoo.clear_memory_cache()       # forget the in-process cache: the disk cache must serve
    zoo = toy_zoo.toy_zoo(cfg.zoo, out, cfg.seed)
    assert all(tm.cached for tm in zoo.values())
    assert all(tm.run_dir.parent == out.results / "models" for tm in zoo.values())
    assert len({tm.run_dir for tm in zoo.values()}) == len(zoo)   # one folder per model


def test_latent_spread_is_zero_for_a_frozen_latent_and_true_spread_matches_mixture():
    cfg = ToyConfig.quick()
    root = NoiseSchedule.linear(1000)
    # On the root chain: a 4-step model refuses the root jump 5 -> 0 it does not keep.
    model, _ = toy_zoo.build(cfg.zoo, "smd-energy", root)
    mix = GaussianMixture.two_modes(2.0, 0.05)
    mix = GaussianMixture(mix.weights, torch.cat([mix.means, torch.zeros(2, 1, dtype=torch.float64)], 1),
                          torch.full((2,), 0.05 ** 2))
    g = torch.Generator().manual_seed(0)
    learned, true = latent_spread(model.with_frozen_eta(), mix, root, 1000, 750,
                                                64, 8, g)
    assert learned == 0.0
    # at t -> 0 from a low-noise x_t the posterior is one component: no spread
    _, true_low = latent_spread(model, mix, root, 5, 0, 64, 8, g)
    assert true_low < 1e-3 < true


def test_cache_key_ignores_evaluation_sizes_but_not_model_settings():
    import dataclasses
    cfg = ToyConfig.quick()
    key = toy_zoo.model_key(cfg.zoo, "ddpm", 4, 0)
    same = dataclasses.replace(cfg, eval=ToyEval(n_eval=7, n_snapshot=3, n_grid=9, n_latent=2),
                               zoo=replace_train(dataclasses.replace(cfg.zoo, chains=(4,)),
                                                 progress=True))
    assert toy_zoo.model_key(same.zoo, "ddpm", 4, 0) == key
    assert toy_zoo.model_key(replace_train(cfg.zoo, lr=1e-4), "ddpm", 4, 0) != key
    assert toy_zoo.model_key(cfg.zoo, "ddpm", 4, 1) != key
    # E7's own fields never change the shared models' keys either
    e7cfg = e7_latent_use.LatentUseConfig.quick()
    assert toy_zoo.model_key(e7cfg.zoo, "ddpm", 4, 0) == key


def test_model_settings_outside_the_old_field_list_change_the_key():
    """Every TrainConfig field that changes the weights enters the key (not only those the toy
    config used to restate), and the batch size and model spec do too."""
    import dataclasses
    zoo = ToyZoo.quick()
    key = toy_zoo.model_key(zoo, "smd-energy", 4, 0)
    for changed in (replace_train(zoo, grad_clip=0.5), replace_train(zoo, weight_decay=1e-4),
                    dataclasses.replace(zoo, batch_size=64),
                    dataclasses.replace(zoo, model=dataclasses.replace(zoo.model, n_energy=3))):
        assert toy_zoo.model_key(changed, "smd-energy", 4, 0) != key
    assert toy_zoo.model_key(replace_train(zoo, keep_checkpoints=3), "smd-energy", 4, 0) == key


def test_evaluation_memo_is_keyed_by_content_not_identity(quick_runs):
    """E6 and E8 score the same draws: a reloaded model (a new object) hits the same memo entry
    and a fresh scoring of the same kernel reproduces it."""
    from smdlab.experiments import toy_eval
    out, _ = quick_runs
    cfg = ToyConfig.quick()
    toy_zoo.clear_memory_cache()
    tm = toy_zoo.toy_zoo(cfg.zoo, out, cfg.seed)["ddpm", 4, 0]
    row, x = toy_eval.evaluate(tm, cfg.zoo, 4, cfg.eval)
    again, _ = toy_eval.score(cfg.zoo.target.mixture(), tm.kernel, cfg.zoo.chain(4), cfg.eval,
                              toy_eval.sample_seed(tm, 4))
    assert row == pytest.approx(again)
    assert toy_eval.sample_seed(tm, 4) != toy_eval.sample_seed(tm, 2)


def test_reloaded_models_report_their_original_training_time(quick_runs):
    out, results = quick_runs
    first = {(r["kind"], r["train_S"]): r["train_seconds"] for r in results["e6_toy"].data["rows"]}
    cfg = ToyConfig.quick()
    toy_zoo.clear_memory_cache()
    for (kind, S, _), tm in toy_zoo.toy_zoo(cfg.zoo, out, cfg.seed).items():
        assert tm.cached and tm.seconds > 0
        assert tm.seconds == pytest.approx(first[kind, S])


def test_e6_reports_an_iw_global_kl_for_the_long_chain(quick_runs):
    """The 1000-step chain has no resolved grid: its global KL is the IW upper bound sequence,
    for every kind (seed 0) and the references, with the method named in the table."""
    _, results = quick_runs
    res = results["e6_toy"]
    iw, zc = res.data["iw"], ToyConfig.quick().zoo
    assert {r["kind"] for r in iw["models"]} == set(zc.kinds)
    for r in iw["models"] + [iw["references"][n][zc.T] for n in iw["references"]]:
        assert r["steps"] == zc.T and len(r["bounds"]) == len(iw["sizes"]["Ks"])
        assert r["kl"] == r["bounds"][-1] >= 0 and r["kl_se"] >= 0
        assert "IW upper bound" in r["method"]
    exact = iw["references"]["exact"][zc.T]
    assert exact["kl"] < 4 * exact["kl_se"] + 1e-3          # only the prior term remains
    # a row's "converged" is the bound's own rule; the model's learning curve is model_converged
    curves = {m["kind"]: m["converged"] for m in res.data["models"]
              if m["train_S"] == zc.T and m["seed"] == 0}
    assert {r["kind"]: r["model_converged"] for r in iw["models"]} == curves
    assert "(IW, K=" in res.summary_md and "B_1" in res.summary_md
    # no grid number at 1000 steps is presented as a value
    long_rows = [r for r in res.data["rows"] if r["sample_S"] == zc.T]
    assert long_rows and all("kl" not in r for r in long_rows)


def test_e9_scores_the_learned_models_beside_the_oracles(quick_runs):
    """E9 on the grid target with the quick zoo (trained above, reused from the cache): the
    full-chain models on every S, the own-chain models on theirs, each with its convergence
    status in the table and the figure's legend; every bound an upper bound (>= -4 se)."""
    import dataclasses

    from smdlab.experiments import e9_families
    from smdlab.experiments.e9_report import learned_label

    out, _ = quick_runs
    cfg = dataclasses.replace(e9_families.E9Config.quick(), targets=("grid",), steps=(2, 4),
                              b_dims=(1,), b_separations=(2.0,), b_stds=(0.1,))
    res = e9_families.run(cfg, out)
    learned = res.data["targets"]["grid"]["learned"]
    for kind in cfg.learned_kinds:
        full = [e for e in learned.values() if e["kind"] == kind and not e["own_chain"]]
        own = [e for e in learned.values() if e["kind"] == kind and e["own_chain"]]
        assert len(full) == 1 and sorted(full[0]["rows"]) == [2, 4]
        assert len(own) == 1 and list(own[0]["rows"]) == [4] and own[0]["train_S"] == 4
    for name, e in learned.items():
        assert len(e["converged"]) == len(e["seeds"])
        assert (name + " |") in res.summary_md
        if not all(e["converged"]):
            assert "unconverged" in learned_label(name, e)
        for row in e["rows"].values():
            assert row["local"] >= 0 and row["local_se"] >= 0
            assert row["kl"] >= 0 and row["kl"] > -4 * row["kl_se"]
            assert "IW bound" in row["method"]
            if e["kind"].startswith("smd"):
                assert row["n_latent_iw"] == cfg.learned_n_latent_iw
            assert "grid_resolved" in row         # S <= learned_grid_max_steps: the grid route
    assert any(p.name.startswith("e9_families_grid") for p in res.figures)
    # the oracle rows are those of the plain run (the learned block is separate)
    assert "learned" not in " ".join(res.data["targets"]["grid"]["rows"])
