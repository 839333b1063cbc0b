"""The lab runner (experiments side by side in processes) and the verdict rules built on learned
models: the convergence gate and C5 read as a trend over steps."""

import json

import pytest
import torch

from smdlab.__main__ import main as lab_main
from smdlab.experiments.base import UNCONVERGED_STATUS, VERDICTS, Verdict, gate_on_convergence
from smdlab.experiments.e8_few_steps import _gap, c5_verdict

torch.set_num_threads(1)


def test_gate_keeps_converged_verdicts_and_withholds_the_rest():
    v = Verdict("C5: x", "holds", "numbers", "fig.png")
    assert gate_on_convergence(v, []) is v
    g = gate_on_convergence(v, ["DDPM S=4 seed 1"])
    assert g.status == UNCONVERGED_STATUS and UNCONVERGED_STATUS in VERDICTS
    assert "DDPM S=4 seed 1" in g.evidence and '"holds"' in g.evidence and "numbers" in g.evidence
    assert g.claim == v.claim and g.figure == v.figure


def _row(kl, sd=0.01, resolved=True):
    return {"kl": (kl, sd), "kl_resolved": resolved, "n_seeds": 3}


def _trend(pairs, kind="smd-jensen"):
    """{S: (ddpm, smd)} -> the trend dict c5_verdict reads (respaced series only)."""
    return {"respaced": {kind: {S: _gap(_row(d), _row(m)) for S, (d, m) in pairs.items()}},
            "own": {}}


def test_gap_counts_only_differences_clear_of_seed_noise():
    assert _gap(_row(5.0), _row(4.0))["better"]
    assert not _gap(_row(5.0, 0.6), _row(4.0))["better"]          # 1.0 < 2 x 0.6
    assert not _gap(_row(5.0), _row(4.95))["better"]              # under 2% of DDPM's KL
    assert _gap(_row(4.0), _row(5.0))["worse"]
    assert _gap(_row(5.0, resolved=False), _row(4.0)) is None     # an unresolved grid never counts
    assert _gap(_row(float("inf")), _row(4.0)) is None


@pytest.mark.parametrize("pairs, kind, status", [
    ({2: (6.0, 3.0), 10: (2.0, 1.9), 1000: (0.1, 0.1)}, "smd-jensen", "holds"),
    ({2: (6.0, 3.0), 10: (2.0, 1.9)}, "smd-energy", "holds with qualification"),
    ({2: (6.0, 6.0), 10: (2.0, 1.0)}, "smd-jensen", "does not hold as stated"),
    ({2: (6.0, 7.0), 10: (2.0, 2.0)}, "smd-energy", "does not hold as stated"),
])
def test_c5_reads_the_trend_over_steps(pairs, kind, status):
    v = c5_verdict(_trend(pairs, kind), 1000)
    assert v.status == status
    for S in pairs:
        assert f"S={S} " in v.evidence


def test_c5_improvement_that_shrinks_toward_few_steps_is_qualified():
    # better everywhere, but relatively more at many steps than at few: not "especially"
    v = c5_verdict(_trend({2: (6.0, 5.0), 100: (1.0, 0.5)}, "smd-jensen"), 1000)
    assert v.status == "holds with qualification"
    assert "does not grow toward few steps" in v.evidence


def test_no_trend_no_verdict():
    assert c5_verdict({"respaced": {}, "own": {}}, 1000) is None


def test_side_by_side_run_computes_what_a_sequential_one_does(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert lab_main(["--quick", "e1", "e5", "--jobs", "2", "--out", str(a)]) == 0
    assert lab_main(["--quick", "e1", "e5", "--jobs", "1", "--out", str(b)]) == 0
    for name in ("e1", "e5"):
        ra = json.loads((a / "results" / f"{name}.json").read_text())["result"]
        rb = json.loads((b / "results" / f"{name}.json").read_text())["result"]
        ra.pop("seconds", None), rb.pop("seconds", None)
        assert ra == rb
    assert "E5" in (a / "REPORT.md").read_text() or "e5" in (a / "REPORT.md").read_text()


def test_jobs_must_be_positive(capsys):
    assert lab_main(["--quick", "e1", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err


def _shares(values):
    return {k: {2: {"in_mode_share": (v, 0.01)}} for k, v in values.items()}


@pytest.mark.parametrize("values, status", [
    ({"ddpm": 0.35, "smd-jensen": 0.80, "smd-energy": 0.9}, "holds"),
    ({"ddpm": 0.35, "smd-jensen": 0.36, "smd-energy": 0.9}, "holds with qualification"),
    ({"ddpm": 0.35, "smd-jensen": 0.36, "smd-energy": 0.34}, "does not hold as stated"),
])
def test_paper_toy_figure_reads_the_in_mode_shares(values, status):
    from smdlab.experiments.e8_few_steps import figure2_verdict
    refs = {"oracle_ddpm": {2: {"in_mode_share": 0.4}}, "exact": {2: {"in_mode_share": 0.99}}}
    v = figure2_verdict(_shares(values), {}, refs, [2], 1000)
    assert v.status == status and "oracle DDPM 0.4" in v.evidence


def test_series_resting_on_an_unconverged_model_are_left_out_of_the_judgement():
    """A kind's respaced series goes when its (or DDPM's) 1000-step models failed the rule; an
    own-chain entry at S when its (or DDPM's) S-step models did; the rest is judged."""
    from smdlab.experiments.e8_few_steps import judged_series

    g = _gap(_row(5.0), _row(4.0))
    trend = {"respaced": {"smd-jensen": {4: g}, "smd-energy": {4: g}},
             "own": {"smd-jensen": {4: g, 10: g}, "smd-energy": {4: g, 10: g}}}
    respaced = {k: {4: _row(4.0)} for k in ("ddpm", "smd-jensen", "smd-energy")}
    own = {k: {4: _row(4.0), 10: _row(3.0)} for k in ("ddpm", "smd-jensen", "smd-energy")}
    bad = {("smd-energy", 1000), ("smd-jensen", 10), ("ddpm", 4)}
    r, o, t = judged_series(respaced, own, trend, bad, 1000)
    assert set(r) == {"ddpm", "smd-jensen"}
    assert t["respaced"] == {"smd-jensen": {4: g}}
    assert t["own"] == {"smd-jensen": {}, "smd-energy": {10: g}}     # DDPM at S=4 failed
    assert o["smd-jensen"] == {} and set(o["smd-energy"]) == {10} and set(o["ddpm"]) == {10}
    assert judged_series(respaced, own, trend, set(), 1000) == (respaced, own, trend)
