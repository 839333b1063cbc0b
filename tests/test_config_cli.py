"""The shared --set parser and the two command lines' error contract: one `error:` line, exit
code 2 for what the user asked, 1 for failures while running; unwritable outputs found first."""

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smdlab.__main__ import main as lab_main
from smdlab.cli import UsageError, run_main, threads_from_env
from smdlab.config import ConfigError, apply_overrides, describe_fields, fields_of, has_field
from smdlab.experiments import REGISTRY
from smdlab.experiments.toy_config import ToyConfig
from smdlab.images.__main__ import main as images_main
from smdlab.images.config import ImagesConfig


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("libgomp")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------- the parser
def test_nested_fields_are_set_and_the_original_is_unchanged():
    cfg = ToyConfig()
    new = apply_overrides(cfg, ["zoo.train.lr=1e-3", "zoo.chains=1000,4", "eval.n_grid=16",
                                "zoo.target.name=two_modes", "zoo.train.grad_clip=none",
                                "zoo.train.progress=false"])
    assert new.zoo.train.lr == 1e-3 and new.zoo.chains == (1000, 4) and new.eval.n_grid == 16
    assert new.zoo.target.name == "two_modes" and new.zoo.train.grad_clip is None
    assert new.zoo.train.progress is False
    assert cfg == ToyConfig()


@pytest.mark.parametrize("assignment, words", [
    ("zoo.train.lrr=1", ["zoo.train.lrr", "'lrr'", "lr,"]),
    ("nope=1", ["'nope'", "seed"]),
    ("zoo.train.lr=abc", ["zoo.train.lr", "expected a number"]),
    ("zoo.train.lr=inf", ["zoo.train.lr", "finite"]),
    ("zoo.train.lr=nan", ["zoo.train.lr", "finite"]),
    ("eval.n_grid=1.5", ["eval.n_grid", "integer"]),
    ("zoo.train.progress=maybe", ["zoo.train.progress", "boolean"]),
    ("zoo=3", ["'zoo' is a section"]),
    ("zoo.train.lr.x=1", ["'lr' is a float"]),
    ("zoo.kinds=ddpm,bogus", ["zoo.kinds", "bogus"]),
    ("zoo.train.lr=-1", ["zoo.train.lr", "positive"]),
    ("zoo.train.lr", ["PATH=VALUE"]),
    ("=3", ["malformed"]),
])
def test_unknown_fields_and_bad_values_name_the_field(assignment, words):
    with pytest.raises(ConfigError) as e:
        apply_overrides(ToyConfig(), [assignment])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@given(st.integers(0, 10**6), st.floats(1e-8, 1e3, allow_nan=False, allow_infinity=False))
def test_values_round_trip_through_their_text(n, lr):
    cfg = apply_overrides(ToyConfig(), [f"eval.n_grid={n}", f"zoo.train.lr={lr!r}"])
    assert cfg.eval.n_grid == n and cfg.zoo.train.lr == lr


def test_every_leaf_field_of_every_experiment_is_listed_and_settable():
    for exp in REGISTRY.values():
        cfg = exp.config()
        rows = fields_of(cfg)
        assert rows and len({p for p, _, _ in rows}) == len(rows)
        text = describe_fields(cfg)
        for path, _, value in rows:
            assert path in text and has_field(cfg, path)
            if isinstance(value, bool):
                again = apply_overrides(cfg, [f"{path}={str(value).lower()}"])
            elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                again = apply_overrides(cfg, [f"{path}={value!r}"])
            else:
                continue
            assert again == cfg, path      # setting a field to its value changes nothing


def test_help_lists_the_fields(capsys):
    assert lab_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "zoo.train.lr" in out and "e2 fields" in out and "--set" in out
    assert images_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "data.flip" in out and "--preset" in out


def test_presets_are_config_instances_and_copies():
    a, b = ImagesConfig.from_preset("smoke"), ImagesConfig.from_preset("smoke")
    assert isinstance(a, ImagesConfig) and a == b and a is not b and a.smoke
    a.train.lr = 5.0
    assert ImagesConfig.from_preset("smoke").train.lr != 5.0
    assert dataclasses.is_dataclass(a.train) and not ImagesConfig.from_preset("default").smoke


# ---------------------------------------------------------------------------- lab CLI errors
@pytest.mark.parametrize("argv, words", [
    (["e1", "--set", "e1.bogus=1"], ["bogus"]),
    (["e6", "--set", "zoo.train.lr=inf"], ["zoo.train.lr", "finite"]),
    (["e6", "--set", "e6.zoo.train.lr=inf"], ["finite"]),
    (["e1", "--set", "zoo.train.lr=1e-3"], ["zoo"]),       # e1 has no such field
    (["e1", "--out", ""], ["--out", "empty"]),
    (["e99"], ["unknown experiment"]),
    (["e1", "--threads", "0"], ["--threads"]),
    (["e1", "--seed", "-1"], ["--seed"]),
    (["--bogus-flag"], ["unrecognized"]),
])
def test_lab_usage_errors_are_one_line_exit_2(argv, words, capsys, tmp_path):
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    assert lab_main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    for w in words:
        assert w in line


@pytest.mark.parametrize("value, ok", [("abc", None), ("0", None), ("-2", None), ("2,1", 2),
                                        ("3", 3), ("", 1)])
def test_omp_num_threads(value, ok):
    if ok is None:
        with pytest.raises(UsageError, match="OMP_NUM_THREADS"):
            threads_from_env(None, {"OMP_NUM_THREADS": value})
    else:
        assert threads_from_env(None, {"OMP_NUM_THREADS": value}) == ok


def test_bad_omp_num_threads_reaches_the_user_as_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    assert lab_main(["e1", "--quick", "--out", str(tmp_path)]) == 2
    assert "OMP_NUM_THREADS" in one_error_line(capsys.readouterr().err)
    assert images_main(["--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "OMP_NUM_THREADS" in one_error_line(capsys.readouterr().err)


def unwritable(tmp_path):
    """A folder no one can create: its parent is a file (works as root too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker / "out"


def test_unwritable_out_is_found_before_any_work(tmp_path, capsys):
    bad = unwritable(tmp_path)
    assert lab_main(["e1", "--quick", "--out", str(bad)]) == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)
    assert images_main(["--preset", "tiny", "--out", str(bad)]) == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)


def test_read_only_results_folder_is_found_before_any_work(tmp_path, capsys):
    import os
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    (tmp_path / "results").mkdir()
    (tmp_path / "results").chmod(0o500)
    try:
        assert lab_main(["e1", "--quick", "--out", str(tmp_path)]) == 2
        assert "not writable" in one_error_line(capsys.readouterr().err)
    finally:
        (tmp_path / "results").chmod(0o700)


# ---------------------------------------------------------------------------- image CLI errors
@pytest.mark.parametrize("argv, words", [
    (["--lr", "inf"], ["train.lr", "finite"]),
    (["--set", "train.lr=inf"], ["train.lr", "finite"]),
    (["--set", "train.lr=0"], ["lr must be positive"]),
    (["--image-size", "0"], ["image-size", "positive"]),
    (["--set", "data.bogus=1"], ["data.bogus", "'bogus'"]),
    (["--n-samples", "3"], ["n_samples"]),
    (["--out", ""], ["--out", "empty"]),
    (["--preset", "nope"], ["invalid choice"]),
    (["--device", "tpu"], ["device"]),
])
def test_image_usage_errors_are_one_line_exit_2(argv, words, capsys, tmp_path):
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    assert images_main(["--preset", "tiny", *argv]) == 2
    line = one_error_line(capsys.readouterr().err)
    for w in words:
        assert w in line


def test_cuda_without_cuda_is_a_usage_error(capsys, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert images_main(["--preset", "tiny", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in one_error_line(capsys.readouterr().err)


def test_runtime_errors_are_one_line_exit_1(capsys):
    from smdlab.training import NonFiniteLossError

    def boom():
        raise NonFiniteLossError("training stopped at step 3: loss is nan")

    assert run_main(boom) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "NonFiniteLossError" in line and "step 3" in line

    def bad_checkpoint():
        from smdlab.training import CheckpointError
        raise CheckpointError("cannot resume from x: the config differs (flip)")

    assert run_main(bad_checkpoint) == 2
    assert "config differs" in one_error_line(capsys.readouterr().err)
