"""The zoo's learning curves: n_evals evaluations at the planned steps, saved beside the model and
reloaded, the grid KL only on few-step 2-D chains, and evaluation that leaves training untouched."""

import dataclasses

import pytest
import torch

from smdlab.convergence import evaluation_steps
from smdlab.experiments.toy_config import ToyModelSpec, ToyZoo, toy_train_config
from smdlab.experiments.toy_zoo import (
    kl_evaluations,
    primary_metric,
    train_one,
    unconverged_note,
)


def _zoo(n_evals):
    return ToyZoo(T=200, chains=(200, 4), kinds=("ddpm", "smd-energy"), n_seeds=1,
                  model=ToyModelSpec(hidden=16, time_dim=8, gen_hidden=8, latent_dim=4,
                                     noise_dim=2, inner_dim=4),
                  train=toy_train_config(steps=12, warmup_steps=2), batch_size=32,
                  snapshots=(1.0,), n_evals=n_evals, curve_samples=30, curve_grid=12,
                  curve_latent=2, workers=1, kind_steps=())


def test_curves_have_the_planned_points_and_reload(tmp_path):
    zoo = _zoo(4)
    for kind, S in (("ddpm", 200), ("smd-energy", 4)):
        tm = train_one(zoo, kind, S, 0, tmp_path)
        assert [p["step"] for p in tm.curve.points] == evaluation_steps(12, 4) == [3, 6, 9, 12]
        assert tm.curve.primary == primary_metric(zoo, S) == ("kl" if S == 4 else "in_mode_share")
        # the grid KL: at every evaluation of a Gaussian kind, at the rule's window (the last
        # curve_kl_last = 3) of an SMD kind, never on a long chain
        with_kl = [p["step"] for p in tm.curve.points if "kl" in p]
        assert with_kl == ([] if S > 100 else [3, 6, 9, 12] if kind == "ddpm" else [6, 9, 12])
        assert all(0 <= p["in_mode_share"] <= 1 for p in tm.curve.points)
        assert (tm.run_dir / "curve.json").is_file()
        again = train_one(zoo, kind, S, 0, tmp_path)        # a reload, not a retraining
        assert again.cached and again.curve.points == tm.curve.points
    note = unconverged_note({("smd-energy", 4, 0): tm})
    assert note == "" if tm.converged else "unconverged" in note


def test_evaluating_during_training_does_not_change_the_weights(tmp_path):
    a = train_one(_zoo(4), "smd-energy", 4, 0, tmp_path / "a")
    b = train_one(dataclasses.replace(_zoo(0)), "smd-energy", 4, 0, tmp_path / "b")
    assert b.curve.points == []
    for (k, x), y in zip(a.kernel.state_dict().items(), b.kernel.state_dict().values()):
        assert torch.equal(x, y), k


def test_a_model_trained_by_a_worker_process_equals_one_trained_here(tmp_path):
    from smdlab.experiments.toy_zoo import train_parallel

    zoo = _zoo(2)
    jobs = [("ddpm", 4, 0), ("smd-energy", 4, 0)]
    done = train_parallel(zoo, jobs, tmp_path / "w", workers=2)
    assert sorted((k, S, s) for k, S, s, _ in done) == sorted(jobs)
    for kind, S, seed in jobs:
        here = train_one(zoo, kind, S, seed, tmp_path / "here")
        there = train_one(zoo, kind, S, seed, tmp_path / "w")      # reloads the worker's run
        assert there.cached and not here.cached
        assert there.curve.points == here.curve.points
        for x, y in zip(here.kernel.state_dict().values(), there.kernel.state_dict().values()):
            assert torch.equal(x, y)


def test_several_zoos_train_in_one_pool_as_they_would_alone(tmp_path):
    """toy_zoos (the lab's first phase: E10's mixture zoo beside the shared one) gives each zoo
    the models toy_zoo gives it alone, and a model two zoos share is trained once."""
    from smdlab.experiments import Outputs
    from smdlab.experiments.toy_zoo import clear_memory_cache, toy_zoo, toy_zoos

    a = dataclasses.replace(_zoo(2), workers=2, chains=(4,))
    b = dataclasses.replace(a, kinds=("ddpm",))                     # shares ddpm@4 with a
    clear_memory_cache()
    both = toy_zoos([(a, 0, None), (b, 0, None)], Outputs(tmp_path / "one"))
    assert sorted(both[0]) == [("ddpm", 4, 0), ("smd-energy", 4, 0)]
    assert sorted(both[1]) == [("ddpm", 4, 0)]
    assert len(list((tmp_path / "one" / "results" / "models").iterdir())) == 2
    clear_memory_cache()
    alone = toy_zoo(a, Outputs(tmp_path / "alone"), 0)
    for member, tm in alone.items():
        for x, y in zip(tm.kernel.state_dict().values(),
                        both[0][member].kernel.state_dict().values()):
            assert torch.equal(x, y)
    assert both[1]["ddpm", 4, 0].curve.points == both[0]["ddpm", 4, 0].curve.points
    clear_memory_cache()


def test_snapshots_are_checksummed_and_a_corrupt_one_is_a_clear_error(tmp_path):
    import pytest

    from smdlab.checkpoints import CheckpointError
    from smdlab.experiments.toy_zoo import clear_memory_cache, load_snapshot

    zoo = dataclasses.replace(_zoo(0), snapshots=(0.5, 1.0))
    tm = train_one(zoo, "ddpm", 4, 0, tmp_path)
    snap = tm.run_dir / "snap_00000006.pt"
    assert set(load_snapshot(snap)) == set(tm.snapshots[6].state_dict())
    # flip one byte in the middle of the file (inside the stored weights)
    raw = bytearray(snap.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snap.write_bytes(bytes(raw))
    clear_memory_cache()
    with pytest.raises(CheckpointError, match="snap_00000006.pt"):
        train_one(zoo, "ddpm", 4, 0, tmp_path)
    # a raw torch.save of the weights (an older smdlab) cannot be verified: refused too
    torch.save(tm.kernel.state_dict(), snap)
    with pytest.raises(CheckpointError, match="snap_00000006.pt"):
        load_snapshot(snap)


def test_kl_evaluations_spend_the_latent_grid_on_the_rules_window():
    zoo = _zoo(8)
    steps = evaluation_steps(80, 8)
    assert kl_evaluations(zoo, "ddpm-matched", steps) == set(steps)
    assert kl_evaluations(zoo, "smd-jensen", steps) == set(steps[-3:])
    assert kl_evaluations(dataclasses.replace(zoo, curve_kl_last=0), "smd-energy", steps) == \
        set(steps)


def test_kind_steps_stretch_one_kind_and_keep_the_others_keys(tmp_path):
    from smdlab.experiments.toy_zoo import model_key
    zoo = dataclasses.replace(_zoo(2), kind_steps=("smd-energy=2.5",))
    assert zoo.steps_for("smd-energy") == 30 and zoo.steps_for("ddpm") == 12
    tm = train_one(zoo, "smd-energy", 4, 0, tmp_path)
    assert tm.steps == 30 and [p["step"] for p in tm.curve.points] == evaluation_steps(30, 2)
    other = dataclasses.replace(zoo, kind_steps=("smd-energy=3",))
    assert model_key(other, "ddpm", 4, 0) == model_key(zoo, "ddpm", 4, 0)
    assert model_key(other, "smd-energy", 4, 0) != model_key(zoo, "smd-energy", 4, 0)
    for bad in (("smd-energy=0",), ("nope=2",), ("smd-energy=x",), ("ddpm@0=2",),
                ("ddpm@x=2",)):
        with pytest.raises(ValueError, match="kind_steps"):
            dataclasses.replace(zoo, kind_steps=bad)


def test_a_chain_specific_entry_changes_only_that_chain():
    from smdlab.experiments.toy_zoo import model_key
    zoo = dataclasses.replace(_zoo(2), kind_steps=("mixture=2", "mixture@4=0.5"))
    assert zoo.steps_for("mixture", 4) == 6 and zoo.steps_for("mixture", 10) == 24
    assert zoo.steps_for("mixture") == 24 and zoo.steps_for("ddpm", 4) == 12
    plain = dataclasses.replace(zoo, kind_steps=("mixture=2",))
    assert model_key(plain, "mixture", 10, 0) == model_key(zoo, "mixture", 10, 0)
    assert model_key(plain, "mixture", 4, 0) != model_key(zoo, "mixture", 4, 0)
    order = dataclasses.replace(zoo, kind_steps=("mixture@4=0.5", "mixture=2"))
    assert order.steps_for("mixture", 4) == 6 and order.steps_for("mixture", 10) == 24


def test_scores_planned_for_the_workers_equal_scores_computed_here(tmp_path):
    """The zoo's workers score each model as planned and store the scores beside it; what the
    experiments then read equals a fresh computation in this process, a corrupt stored score is
    recomputed (with a warning), and a change of the estimator's settings never reuses one."""
    import warnings

    from smdlab import global_error
    from smdlab.experiments import Outputs
    from smdlab.experiments import toy_eval as te
    from smdlab.experiments.toy_config import ToyEval
    from smdlab.experiments.toy_zoo import clear_memory_cache, toy_zoo

    zoo = dataclasses.replace(_zoo(2), workers=2)
    sizes = ToyEval(n_eval=40, n_snapshot=10, n_grid=16, n_latent=1)
    plan = {("smd-energy", 4, 0): [("eval", 4, sizes, True)],
            ("ddpm", 200, 0): [("eval", 200, sizes, False), ("eval", 4, sizes, True)]}
    clear_memory_cache()
    te._EVAL.clear()
    models = toy_zoo(zoo, Outputs(tmp_path), 0, plan=plan)
    stored = sorted(p.name for p in (tmp_path / "results" / "models").glob("*/evals/*.pt"))
    assert len(stored) == 3
    seen = {}
    for (kind, S, i), reqs in plan.items():
        tm = models[kind, S, i]
        for _, Sf, sz, grid in reqs:
            got, x = te.evaluate(tm, zoo, Sf, sz, grid=grid)           # read from the folder
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fresh, y = te.score(zoo.target.mixture(), tm.kernel, zoo.chain(Sf), sz,
                                    te.sample_seed(tm, Sf), grid)
            assert got == fresh and torch.equal(x, y)
            seen[kind, Sf] = got
    tm = models["smd-energy", 4, 0]
    path = next((tm.run_dir / "evals").glob("eval-*.pt"))
    path.write_bytes(path.read_bytes()[:-10])                         # a truncated file
    te._EVAL.clear()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again, _ = te.evaluate(tm, zoo, 4, sizes, grid=True)
    assert again == seen["smd-energy", 4]           # the same seeds: the same score again
    before = te._disk_path(tm, "eval", ("k",))
    try:
        global_error.BOX_CAP += 1.0
        assert te._disk_path(tm, "eval", ("k",)) != before
    finally:
        global_error.BOX_CAP -= 1.0
    clear_memory_cache()
    te._EVAL.clear()
