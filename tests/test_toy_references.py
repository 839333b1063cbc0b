"""Reference-chain scores stored on disk: computed once (by the lab's first phase), read back
unchanged by every experiment that asks, recomputed when a stored file is damaged."""

import dataclasses
import warnings

import pytest
import torch

from smdlab.experiments import toy_eval as te
from smdlab.experiments.toy_config import ToyEval, ToyModelSpec, ToyZoo, toy_train_config

torch.set_num_threads(1)

ZOO = ToyZoo(T=200, chains=(200, 4), kinds=("ddpm",), n_seeds=1,
             model=ToyModelSpec(hidden=16, time_dim=8), train=toy_train_config(steps=4,
                                                                                warmup_steps=1),
             batch_size=16, snapshots=(1.0,), n_evals=0, workers=1, kind_steps=())
SIZES = ToyEval(n_eval=40, n_snapshot=10, n_grid=16, n_latent=1)


def _fresh():
    te._REFS.clear()
    te._IW.clear()


def test_stored_references_read_back_equal_to_a_fresh_computation(tmp_path):
    _fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        te.run_reference_plan(("refs", ZOO, SIZES, 4, 101), tmp_path)
        stored = sorted(p.name for p in (tmp_path / "references").iterdir())
        assert len(stored) == len(te.REFERENCES)
        _fresh()
        read = te.references(ZOO, SIZES, [4], models_dir=tmp_path)        # from the files
        _fresh()
        fresh = te.references(ZOO, SIZES, [4])                             # no files
    assert read == fresh
    assert sorted(p.name for p in (tmp_path / "references").iterdir()) == stored


def test_iw_references_are_stored_too(tmp_path):
    _fresh()
    iw = te.IWSizes(min_steps=200, n_points=4, Ks=(1, 2))
    te.run_reference_plan(("iw", ZOO, iw, 200), tmp_path)
    _fresh()
    a = te.references_iw(ZOO, iw, [200], models_dir=tmp_path)
    _fresh()
    b = te.references_iw(ZOO, iw, [200])
    strip = {n: {S: {k: v for k, v in r.items() if k != "seconds"} for S, r in per.items()}
             for n, per in a.items()}
    assert strip == {n: {S: {k: v for k, v in r.items() if k != "seconds"}
                         for S, r in per.items()} for n, per in b.items()}


def test_a_damaged_reference_file_is_recomputed_with_a_warning(tmp_path):
    _fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = te.references(ZOO, SIZES, [4], models_dir=tmp_path)
    for p in (tmp_path / "references").iterdir():
        p.write_bytes(b"not a checkpoint")
    _fresh()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        got = te.references(ZOO, SIZES, [4], models_dir=tmp_path)
    assert got == want


def test_unknown_reference_request_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown reference request"):
        te.run_reference_plan(("grid", ZOO, SIZES, 4), tmp_path)


def test_the_lab_plans_each_reference_once():
    from smdlab.__main__ import configs_for
    from smdlab.experiments.runner import reference_plans

    names = ["e6", "e8", "e10"]
    plan = reference_plans(names, configs_for(names, True, None, []))
    assert len(plan) == len({te.reference_request_key(r) for r in plan}) > 0
    # E6's and E10's requests of the same chain differ only in their zoo's kinds: planned once
    e6 = configs_for(["e6"], True, None, [])["e6"]
    e10 = configs_for(["e10"], True, None, [])["e10"]
    assert te.reference_request_key(("refs", e6.zoo, e6.eval, 4, 101)) == \
        te.reference_request_key(("refs", e10.zoo, e10.eval, 4, 101))
    assert {r[0] for r in plan} <= {"refs", "iw"}
    assert dataclasses.is_dataclass(plan[0][1])
