"""`python -m smdlab.images`: the smoke preset end to end, resume, clear errors, the GPU script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smdlab.images.__main__ import main
from smdlab.images.report import flat_config

from .test_images_data import write_mnist

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["--preset", "smoke", "--out", str(out)]) == 0
    return out


def test_smoke_run_writes_everything(smoke_run):
    out = smoke_run
    report = (out / "REPORT-images.md").read_text()
    assert "python -m smdlab.images --preset smoke --out" in report
    assert "FD-digitsnet" in report and "not** FID" in report
    for name in ("metrics_vs_steps.png", "class_frequencies.png", "samples_overview.png",
                 "learning_curves.png"):
        assert (out / "figures" / "images" / name).stat().st_size > 1000
    payload = json.loads((out / "results" / "images" / "images.json").read_text())
    res = payload["result"]
    assert payload["git_commit"] and res["reference_split"] == "digits:train"
    assert res["feature_net"]["accuracy"] > 0.1 and len(res["feature_net"]["weights_sha256"]) == 16
    models = res["models"]
    assert set(models) == {f"{p}-{m}" for p in ("long", "short")
                           for m in ("ddpm", "smd-jensen", "smd-energy", "ddpm-matched")} | {
        f"short-{m}-seed1" for m in ("ddpm", "smd-jensen", "smd-energy", "ddpm-matched")}
    assert models["short-ddpm-seed1"]["seed"] == 1 and models["short-ddpm-seed1"]["protocol"] == \
        "short"
    # the headline rows of the short protocol: mean and sd over the 2 training seeds
    assert "## Headline: mean over training seeds" in report and "(2 seeds)" in report
    assert "pooled standard deviation" in report
    for m in models.values():
        assert m["parameters"] > 0 and m["step_seconds"] > 0 and m["train_steps"] == 30
    smd, matched = models["long-smd-energy"]["parameters"], models["long-ddpm-matched"]["parameters"]
    assert abs(matched / smd - 1) <= 0.05
    rows = [e for e in res["evaluations"] if e["protocol"] != "data"]
    cfg = flat_config(res)
    # every model: ancestral at each sample_steps + DDIM (long), ancestral + DDIM (+ frozen) (short)
    # ... and each seed repeat of a short-chain model: ancestral + DDIM
    assert len(rows) == 4 * (len(cfg["sample_steps"]) + len(cfg["ddim_steps"])) + 4 * 2 + 2 + 4 * 2
    for e in rows:
        m = e["metrics"]
        assert m["n"] == cfg["n_samples"] and m["reference"] == "digits:train"
        assert m["metric"] == "FD-digitsnet" and m["fd"] >= 0 and 0 <= m["recall"] <= 1
        assert e["sampler"] in ("ancestral", "ddim") and e["steps"] >= 1
        assert (out / e["extra"]["grid"]).exists()
    assert res["sampling"]["use_ema"] is True and "sample_seed" in res["sampling"]
    # learning curves: FD and KID at 8 steps of every model's training, and the plateau rule
    for m in models.values():
        pts = m["curve"]["points"]
        assert [p["step"] for p in pts] == [4, 8, 11, 15, 19, 22, 26, 30]
        assert all(p["fd"] >= 0 and p["fd_boot_std"] >= 0 and "kid" in p for p in pts)
        assert m["curve_settings"]["n"] == 24 and isinstance(m["curve"]["converged"], bool)
        assert (out / "runs" / "images" / next(k for k, v in models.items() if v is m) /
                "curve.json").exists()
    assert set(res["fd_against_n"]) >= {"24", "48"}
    assert "## Learning curves and convergence" in report and "| converged |" in report
    assert "against n" in report and res["convergence_rule"] in report


def test_second_call_resumes_and_mismatch_is_an_error(smoke_run, capsys):
    out = smoke_run
    # a changed configuration must not silently restart (or reuse) the stored runs
    assert main(["--preset", "smoke", "--out", str(out), "--lr", "0.01"]) == 2
    assert "config differs" in capsys.readouterr().err


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", "mnist", "--data-root", str(tmp_path / "nope"), "--preset",
                 "tiny", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--sample-steps", "5000"]) == 2
    assert "1..T" in capsys.readouterr().err


def test_gpu_script_end_to_end_on_cpu_with_tiny_preset(tmp_path):
    data = tmp_path / "mnist"
    write_mnist(data, n=64, prefix="train")
    write_mnist(data, n=32, prefix="t10k", seed=1)
    out = tmp_path / "out"
    env = {**os.environ, "PRESET": "tiny", "DATASET": "mnist", "DATA_ROOT": str(data),
           "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_images.sh"), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "results" / "images" / "images.json").read_text())["result"]
    assert res["dataset"]["train"] == "mnist:train" and res["dataset"]["shape"] == [1, 8, 8]
    assert (out / "REPORT-images.md").exists() and (out / "environment.txt").exists()
    assert "wall seconds" in (out / "environment.txt").read_text()


def _numbers(out: Path) -> tuple[dict, list]:
    res = json.loads((out / "results" / "images" / "images.json").read_text())["result"]
    curves = {k: m["curve"]["points"] for k, m in res["models"].items()}
    evals = [(e["model"], e["protocol"], e["sampler"], e["steps"], e["extra"].get("train_seed"),
              e["metrics"]["fd"], e["metrics"]["kid"]) for e in res["evaluations"]]
    return curves, evals


def test_worker_processes_give_the_same_numbers_as_one_process(tmp_path):
    """--workers 2 trains the models in two spawned processes, costliest first: every curve
    point and every evaluation is bit-identical to the one-process run, in the same order."""
    one, two = tmp_path / "one", tmp_path / "two"
    tiny = ["--preset", "tiny", "--set", "seed_repeats=1"]
    assert main([*tiny, "--out", str(one)]) == 0
    assert main([*tiny, "--out", str(two), "--workers", "2"]) == 0
    res = json.loads((two / "results" / "images" / "images.json").read_text())["result"]
    assert res["workers"] == 2 and "short-ddpm-seed1" in res["models"]
    assert _numbers(one) == _numbers(two)


def test_workers_under_torchrun_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from smdlab.images.config import ImagesConfig
    from smdlab.images.distributed import DistInfo
    from smdlab.images.experiment import ImageOutputs, run_images

    cfg = ImagesConfig.from_preset("tiny")
    cfg.workers = 2
    with pytest.raises(ValueError, match="torchrun"):
        run_images(cfg, ImageOutputs(tmp_path), DistInfo(rank=0, world_size=2))
    assert main(["--preset", "tiny", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "smdlab.images", "--preset", "tiny",
                           "--device", "cpu", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "results" / "images" / "images.json").read_text())["result"]
    assert res["world_size"] == 2
    assert all(m["global_batch"] == 2 * flat_config(res)["batch_size"] for m in res["models"].values())
    # one writer: each run folder holds one checkpoint and one log
    for run in (tmp_path / "runs" / "images").iterdir():
        if run.is_dir():
            assert sorted(p.name for p in run.iterdir()) == ["ckpt_00000006.pt", "log.json"]


def test_resume_with_flip_changed_is_an_error(smoke_run, capsys):
    """--flip changes training: a resume must refuse it (it used to train without flips while
    its JSON said flip: true)."""
    assert main(["--preset", "smoke", "--out", str(smoke_run), "--flip"]) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "flip" in err


def test_smoke_report_issues_no_verdicts(smoke_run):
    report = (smoke_run / "REPORT-images.md").read_text()
    verdict = report.split("## Verdict")[1]
    assert "not tested (smoke run)" in verdict and "Smoke run" in verdict
    for status in ("| holds |", "| holds with qualification |", "| does not hold as stated |"):
        assert status not in verdict


@pytest.mark.slow
def test_resume_with_different_pixels_is_an_error(tmp_path, capsys):
    """Same dataset name and image count, different pixels: the data fingerprint in every
    model's checkpoint config refuses the resume."""
    data = tmp_path / "mnist"
    write_mnist(data, n=64, prefix="train")
    write_mnist(data, n=32, prefix="t10k", seed=1)
    args = ["--preset", "tiny", "--dataset", "mnist", "--data-root", str(data), "--out",
            str(tmp_path / "out")]
    assert main(args) == 0
    write_mnist(data, n=64, prefix="train", seed=7)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "data_fingerprint" in err


def test_channels_last_is_the_same_function_and_part_of_the_checkpoint(tmp_path):
    """channels_last changes the memory layout only: the curves and evaluations agree with the
    default layout up to rounding, and a resume with the layout changed is refused."""
    plain, last = tmp_path / "plain", tmp_path / "last"
    tiny = ["--preset", "tiny"]
    assert main([*tiny, "--out", str(plain)]) == 0
    assert main([*tiny, "--out", str(last), "--set", "channels_last=true"]) == 0
    (c0, e0), (c1, e1) = _numbers(plain), _numbers(last)
    assert [x[:5] for x in e0] == [x[:5] for x in e1]
    np.testing.assert_allclose([x[5:] for x in e0], [x[5:] for x in e1], rtol=1e-3, atol=1e-4)
    assert sorted(c0) == sorted(c1)
    for k in c0:
        np.testing.assert_allclose([q["fd"] for q in c0[k]], [q["fd"] for q in c1[k]],
                                   rtol=1e-3, atol=1e-4)
    assert main([*tiny, "--out", str(last)]) == 2        # layout changed: not a silent reuse


def test_seed_models_choose_which_models_repeat_with_extra_seeds(tmp_path, capsys):
    from smdlab.config import apply_overrides
    from smdlab.images.config import ImagesConfig
    from smdlab.images.experiment import image_jobs

    cfg = apply_overrides(ImagesConfig.from_preset("smoke"),
                          ["seed_repeats=1,2", "seed_models=ddpm,smd-energy"])
    labels = [j.label for j in image_jobs(cfg)]
    main_labels = [f"{p}-{m}" for p in ("long", "short")
                   for m in ("ddpm", "smd-jensen", "smd-energy", "ddpm-matched")]
    assert labels == main_labels + [f"short-{m}-seed{s}" for s in (1, 2)
                                    for m in ("ddpm", "smd-energy")]
    # None repeats every model; the order of --set changes does not matter
    every = apply_overrides(ImagesConfig.from_preset("smoke"), ["seed_repeats=1"])
    assert every.seed_models is None
    assert sum(j.seed == 1 for j in image_jobs(every)) == 4
    for order in (["models.best_objective=multisample", "seed_models=smd-multisample"],
                  ["seed_models=smd-multisample", "models.best_objective=multisample"]):
        both = apply_overrides(ImagesConfig.from_preset("smoke"), order)
        assert [j.label for j in image_jobs(both) if j.seed != 0] == \
            ["short-smd-multisample-seed1"]
    # "smd-best" follows the best objective (the default preset names it)
    assert ImagesConfig.from_preset("default").seed_models == ("ddpm", "smd-best")
    best = apply_overrides(ImagesConfig.from_preset("default"),
                           ["models.best_objective=multisample"])
    assert best.repeated_models() == ["ddpm", "smd-multisample"]
    # an empty list repeats nothing, and the report says so
    from smdlab.images.report import _seeds_note
    none = apply_overrides(ImagesConfig.from_preset("smoke"), ["seed_models="])
    assert none.seed_models == () and all(j.seed == 0 for j in image_jobs(none))
    assert _seeds_note({"seed": 0, "seed_repeats": [1], "seed_models": []}) == \
        "Every model is trained with seed 0."
    assert "ddpm, smd-multisample of the short protocol" in _seeds_note(
        {"seed": 0, "seed_repeats": [1], "seed_models": ["ddpm", "smd-best"],
         "best_objective": "multisample"})
    # a name that is not a model of the run is a usage error before anything runs
    assert main(["--preset", "smoke", "--set", "seed_models=ddpm,smd-nope",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "smd-nope" in err and "smd-jensen" in err
    assert not (tmp_path / "runs").exists()
