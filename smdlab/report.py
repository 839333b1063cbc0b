"""REPORT.md: the verdict table, headline numbers and each experiment's section.

Every experiment run leaves ``results/<name>.summary.json`` (its markdown section, verdict rows,
headline numbers, figures and wall time) beside its full JSON result.  The report is assembled
from all summaries present, in the registry's order, so running one experiment updates its
section without losing the others.  Experiments registered with a ``summarize`` function (the image
comparison) have their section rebuilt from their committed result JSON instead.

Agreement between the report and the results: each result JSON and its summary carry the run id
of the invocation that wrote them.  When the two differ (a run interrupted between writing its
result and its summary), the section is marked out of date and its verdicts are withdrawn, so the
report never presents one run's verdicts beside another run's numbers.

Smoke runs (``--quick``, or the image presets ``smoke``/``tiny``) issue no verdicts: their rows
read "not tested (smoke run)", because seconds of training on tiny samples measure nothing about
the claims.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from . import __version__
from .experiments.base import REGISTRY, SMOKE_STATUS, ExperimentResult, Outputs, Verdict
from .provenance import atomic_write_text, git_commit, write_json

# The paper's claims, paraphrased (see ../shared/notes/SMD.md, "The source").
CLAIMS = {
    "C1": "Expressive bottleneck: each reverse step is one Gaussian while the true reverse "
          "transition of multimodal data is a mixture.",
    "C2": "The bounded-error assumption behind existing approximation guarantees is too strong.",
    "C3": "Diffusion models have unbounded (\"uniformly unbounded\") local and global denoising errors.",
    "C4": "Soft mixture denoising is expressive: it can represent the reverse kernel of any Gaussian "
          "mixture.",
    "C5": "SMD improves DDPM-type models, especially with few backward iterations.",
}


def claim_id(claim: str) -> str:
    """The paper-claim id a verdict row belongs to ("C3" for "C3 (local error): ..."), else ""."""
    m = re.match(r"(C\d+)\b", claim)
    return m.group(1) if m else ""


def summary_path(out: Outputs, name: str) -> Path:
    return out.results / f"{name}.summary.json"


SMOKE_WHY = ("a smoke-sized run (seconds of training, small samples, loose estimators) checks that "
             "the pipeline runs end to end; its numbers carry no evidence about the claim")


def smoke_verdicts(verdicts) -> list[Verdict]:
    """The rows a smoke run shows instead of its verdicts: the claims, not judged."""
    return [Verdict(v.claim, SMOKE_STATUS, f"not judged: {SMOKE_WHY}.", v.figure) for v in verdicts]


def smoke_note(what: str = "`--quick`") -> str:
    return (f"> **Smoke run ({what}): no verdicts.** This section comes from {SMOKE_WHY}; "
            "run without it for numbers that mean something.")


def save_summary(result: ExperimentResult, out: Outputs, seconds: float, quick: bool) -> Path:
    """Write results/<name>.summary.json for ``result`` (with ``out.run_id``; a quick run's
    verdicts are withdrawn, see the module docstring)."""
    rel = [_rel(p, out) for p in result.figures]
    verdicts = smoke_verdicts(result.verdicts) if quick else result.verdicts
    summary = (smoke_note() + "\n\n" + result.summary_md) if quick else result.summary_md
    payload = {
        "name": result.name, "run_id": out.run_id, "summary_md": summary,
        "headline": result.headline, "figures": rel, "seconds": seconds, "quick": quick,
        "json": _rel(result.json_path, out), "verdicts": [vars(v) for v in verdicts],
    }
    return write_json(summary_path(out, result.name), payload)


def _rel(path, out: Outputs) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(out.root).resolve()))
    except ValueError:
        return str(path)


def _result_run_id(out: Outputs, summary: dict):
    """(found, run id) of the result JSON a summary points to."""
    p = Path(out.root) / summary.get("json", "")
    try:
        return True, json.loads(p.read_text()).get("run_id")
    except (OSError, json.JSONDecodeError):
        return False, None


def check_agreement(out: Outputs, summary: dict) -> str:
    """Why a summary and its result JSON disagree ("" when they come from the same run)."""
    found, rid = _result_run_id(out, summary)
    if not found:
        return f"its result {summary.get('json')} is missing or unreadable"
    if rid != summary.get("run_id"):
        return (f"{summary.get('json')} is from run {rid}, this section from run "
                f"{summary.get('run_id')} (a run was interrupted between the two)")
    return ""


def load_summaries(out: Outputs) -> list[dict]:
    """Every section present under ``out``, in registry order, each checked against its result
    (a disagreeing one gets ``stale`` = the reason and loses its verdicts)."""
    found = []
    for name, exp in REGISTRY.items():
        if exp.summarize is not None:
            s = exp.summarize(out)
            if s is not None:
                found.append(s)
            continue
        p = summary_path(out, name)
        if not p.exists():
            continue
        try:
            s = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt summary file {p}: {e}") from e
        why = check_agreement(out, s)
        if why:
            s["stale"] = why
            s["verdicts"] = [dict(v, status="not tested", evidence=f"withdrawn: {why}; rerun "
                                  f"`python -m smdlab {name}`") for v in s.get("verdicts", [])]
        found.append(s)
    return found


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(summaries: list[dict], command: str) -> str:
    lines = [
        "# smdlab report: the expressive bottleneck of diffusion models, checked with exact mathematics",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"smdlab {__version__}, commit `{git_commit()}`.",
        "",
    ]
    lines += ["Each experiment's JSON result under `results/` records its config, seed, package version, "
              "the commit it ran at and its run id (checked against its section here). The image "
              "comparison (`python -m smdlab.images`) also writes the full `REPORT-images.md`; its "
              "verdicts and headline appear below, rebuilt from `results/images/images.json`.", ""]
    if any(s.get("quick") for s in summaries):
        lines += ["> Some sections come from a smoke run (`--quick` or a smoke preset): they issue "
                  "no verdicts and their numbers are smoke-test sized.", ""]
    stale = [s["name"] for s in summaries if s.get("stale")]
    if stale:
        lines += [f"> **Out of date:** {', '.join(stale)}: the section and its result JSON come "
                  "from different runs; their verdicts are withdrawn until rerun.", ""]
    verdicts = [(Verdict(**v), s["name"]) for s in summaries for v in s.get("verdicts", [])]
    lines += ["## Verdicts", "",
              "Each claim of the paper (paraphrased) with what the lab measured. Rows come from the "
              "experiments named in the last column.", "",
              "| Claim | Verdict | Evidence | Figure | Experiment |", "|---|---|---|---|---|"]
    order = {c: i for i, c in enumerate(CLAIMS)}
    for v, name in sorted(verdicts, key=lambda vn: (order.get(claim_id(vn[0].claim), 99),
                                                    vn[0].claim)):
        cid = claim_id(v.claim)
        if cid in CLAIMS:
            rest = re.sub(r"^\((.*?)\)\s*:?\s*", r"\1: ", v.claim[len(cid):].strip(" :")).strip(" :")
            claim = f"**{cid}** {CLAIMS[cid]}" + (f" *({rest})*" if rest else "")
        else:
            claim = f"Lab finding: **{v.claim}**"
        fig = f"[{Path(v.figure).name}]({v.figure})" if v.figure else ""
        lines.append(f"| {_cell(claim)} | {v.status} | {_cell(v.evidence)} | {fig} | {name} |")
    untested = [c for c in CLAIMS if c not in {claim_id(v.claim) for v, _ in verdicts}]
    for c in untested:
        lines.append(f"| **{c}** {_cell(CLAIMS[c])} | not tested | no experiment in this run "
                     "addressed it | | |")
    lines += ["", "## Headline numbers", "", "| Experiment | Quantity | Value |", "|---|---|---|"]
    for s in summaries:
        for k, val in s.get("headline", {}).items():
            shown = f"{val:.4g}" if isinstance(val, float) else str(val)
            lines.append(f"| {s['name']} | {_cell(k)} | {_cell(shown)} |")
    lines += ["", "## Experiments", ""]
    for s in summaries:
        title = REGISTRY[s["name"]].title if s["name"] in REGISTRY else s["name"]
        lines += [f"### {s['name'].upper()}: {title}", "",
                  f"_Result: `{s['json']}`; wall time {s['seconds']:.0f} s; run "
                  f"`{s.get('run_id')}`._", ""]
        if s.get("stale"):
            lines += [f"> **Out of date:** {s['stale']}. Rerun `python -m smdlab {s['name']}`.", ""]
        lines += [s.get("summary_md", "").strip(), ""]
        for fig in s.get("figures", []):
            if fig.endswith(".png"):
                lines += [f"![{Path(fig).stem}]({fig})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Outputs, command: str) -> Path:
    text = render(load_summaries(out), command)
    return atomic_write_text(out.report, text)
