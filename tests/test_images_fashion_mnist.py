"""The whole image pipeline on REAL 28 x 28 Fashion-MNIST (Debian's dataset-fashion-mnist, which
.ci/run installs), at the tiny preset's size: reading the gzipped IDX files, training every model,
the feature classifier, sampling, FD, the report.  Off CI, the test is skipped when the data is not
installed; on CI (CI=true) missing data is a failure, so it can never pass by being skipped."""

import json
import os
from pathlib import Path

import pytest

from smdlab.images.__main__ import main

ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion_root():
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must install dataset-fashion-mnist (no IDX files in {ROOT})")
        pytest.skip(f"Fashion-MNIST not installed in {ROOT} (apt-get install dataset-fashion-mnist)")
    return ROOT


def test_tiny_pipeline_on_real_fashion_mnist(fashion_root, tmp_path):
    out = tmp_path / "fm"
    argv = ["--preset", "tiny", "--dataset", "fashion-mnist", "--data-root", str(fashion_root),
            "--out", str(out), "--set", "data.image_size=none", "--set", "data.n_train=256"]
    assert main(argv) == 0
    payload = json.loads((out / "results" / "images" / "images.json").read_text())
    res = payload["result"]
    assert res["reference_split"] == "fashion-mnist:train"
    assert res["dataset"]["shape"] == [1, 28, 28] and res["dataset"]["n_train"] == 256
    rows = [e for e in res["evaluations"] if e["protocol"] != "data"]
    assert rows and all(e["metrics"]["metric"].startswith("FD-fashion") for e in rows)
    assert all(e["metrics"]["fd"] >= 0 for e in rows)
    report = (out / "REPORT-images.md").read_text()
    assert "fashion-mnist" in report and "smoke" in report.lower()
