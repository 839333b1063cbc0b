"""REPORT.md agrees with the results it describes: run ids checked, smoke runs judged nothing,
the image comparison's verdicts taken from its committed result."""

import json
import shutil
from pathlib import Path

import pytest

from smdlab.experiments.base import SMOKE_STATUS, ExperimentResult, Outputs, Verdict, save_result
from smdlab.images.report import lab_summary, verdict_rows
from smdlab.report import load_summaries, save_summary, write_report

REPO = Path(__file__).resolve().parent.parent
IMAGES_JSON = REPO / "results" / "images" / "images.json"


def fake_run(out: Outputs, name="e2", status="holds", evidence="M = 1.5 nats"):
    json_path = save_result(name, {"seed": 0}, {"x": 1}, out)
    return ExperimentResult(name, {"x": 1}, json_path, [], f"section of {name}",
                            [Verdict("C1", status, evidence)], {"h": 1.0})


def test_agreeing_result_and_summary_keep_their_verdicts(tmp_path):
    out = Outputs(tmp_path)
    save_summary(fake_run(out), out, 1.0, quick=False)
    text = write_report(out, "cmd").read_text()
    assert "| holds | M = 1.5 nats |" in text and "Out of date" not in text
    assert out.run_id in text


def test_a_result_newer_than_its_summary_withdraws_the_verdicts(tmp_path):
    """An interrupt after the result JSON, before the summary: the report must not show the old
    run's verdicts beside the new run's numbers."""
    old = Outputs(tmp_path)
    save_summary(fake_run(old), old, 1.0, quick=False)
    new = Outputs(tmp_path)                         # a later invocation: another run id
    assert new.run_id != old.run_id
    fake_run(new, status="does not hold as stated")   # ... interrupted before its summary
    [s] = [s for s in load_summaries(new) if s["name"] == "e2"]
    assert new.run_id in s["stale"] and old.run_id in s["stale"]
    text = write_report(new, "cmd").read_text()
    assert "Out of date" in text and "| holds |" not in text
    assert "withdrawn" in text


def test_missing_result_marks_the_section_stale(tmp_path):
    out = Outputs(tmp_path)
    save_summary(fake_run(out), out, 1.0, quick=False)
    (tmp_path / "results" / "e2.json").unlink()
    text = write_report(out, "cmd").read_text()
    assert "Out of date" in text and "| holds |" not in text


def test_quick_runs_issue_no_verdicts(tmp_path):
    out = Outputs(tmp_path)
    res = fake_run(out)
    save_summary(res, out, 1.0, quick=True)
    assert res.verdicts[0].status == "holds"          # the run's own result is untouched
    summary = json.loads((tmp_path / "results" / "e2.summary.json").read_text())
    assert {v["status"] for v in summary["verdicts"]} == {SMOKE_STATUS}
    text = write_report(out, "cmd").read_text()
    assert f"| {SMOKE_STATUS} |" in text and "| holds |" not in text
    assert "Smoke run" in text and "carry no evidence" in text


@pytest.mark.skipif(not IMAGES_JSON.exists(), reason="no committed image result")
def test_image_verdicts_reach_the_verdict_table_from_the_committed_result(tmp_path):
    dest = tmp_path / "results" / "images"
    dest.mkdir(parents=True)
    shutil.copy(IMAGES_JSON, dest / "images.json")
    out = Outputs(tmp_path)
    text = write_report(out, "cmd").read_text()
    result = json.loads(IMAGES_JSON.read_text())["result"]
    rows = verdict_rows(result)
    assert rows and any(c.startswith("C5") for c, _, _ in rows)
    table = text.split("## Headline numbers")[0]
    for claim, status, _ in rows:
        line = next(ln for ln in table.splitlines() if claim.split(":")[0] in ln
                    and "(images)" in ln)
        assert f"| {status} |" in line and line.rstrip().endswith("| images |")
    assert "### IMAGES" in text and "REPORT-images.md" in text


@pytest.mark.skipif(not IMAGES_JSON.exists(), reason="no committed image result")
def test_a_smoke_image_result_issues_no_verdicts(tmp_path):
    payload = json.loads(IMAGES_JSON.read_text())
    payload["result"]["config"]["preset"] = "smoke"
    dest = tmp_path / "results" / "images"
    dest.mkdir(parents=True)
    (dest / "images.json").write_text(json.dumps(payload))
    s = lab_summary(tmp_path)
    assert s["quick"] and {v["status"] for v in s["verdicts"]} == {SMOKE_STATUS}
    assert "Smoke run" in s["summary_md"]
    table = write_report(Outputs(tmp_path), "cmd").read_text().split("## Headline")[0]
    rows = [ln for ln in table.splitlines() if ln.rstrip().endswith("| images |")]
    assert rows and all(f"| {SMOKE_STATUS} |" in ln for ln in rows)


@pytest.mark.skipif(not (REPO / "results" / "e1.summary.json").exists(),
                    reason="no committed lab results")
def test_report_only_rebuilds_the_report_from_committed_results(tmp_path):
    from smdlab.__main__ import main

    shutil.copytree(REPO / "results", tmp_path / "results",
                    ignore=shutil.ignore_patterns("models"))
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "REPORT.md").read_text()
    assert "Out of date" not in text and "### E8" in text
    if IMAGES_JSON.exists():
        assert any(ln.rstrip().endswith("| images |") for ln in text.splitlines())
