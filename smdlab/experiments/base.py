"""What every experiment shares: where outputs go, what a run returns, and the registry.

An experiment is a module with a config dataclass (field defaults, and a ``quick()`` constructor) and a
``run(config, out) -> ExperimentResult`` function.  The CLI (``python -m smdlab``), the notebooks and
the tests all call the same functions.  Each run writes ``results/<name>.json`` (with
:func:`smdlab.provenance.run_metadata` and the run id of its :class:`Outputs`) and its figures under
``figures/``; the report checks that every section's summary and result carry the same run id.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..provenance import REPO_ROOT, run_metadata, write_json

SMOKE_STATUS = "not tested (smoke run)"
#: The status of a verdict whose numbers come from a learned model that failed its convergence
#: rule (:mod:`smdlab.convergence`): the reading it would have is kept in its evidence, not issued.
UNCONVERGED_STATUS = "unconverged"
VERDICTS = ("holds", "holds with qualification", "does not hold as stated", "not tested",
            SMOKE_STATUS, UNCONVERGED_STATUS)


def new_run_id() -> str:
    """A fresh run id: UTC time and 6 random hex digits (sortable, unique per invocation)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def check_writable(folder, what: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written and renamed there (what every
    output of a run does), before any work starts.  Raises ValueError naming ``what``."""
    if folder is None or str(folder).strip() == "":
        raise ValueError(f"{what} must be a folder path; got an empty string")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".smdlab-write-test.", suffix=".tmp")
        os.close(fd)
        os.replace(tmp, tmp + ".renamed")
        os.unlink(tmp + ".renamed")
    except OSError as e:
        raise ValueError(f"{what} {folder} is not writable: {e.strerror or e}") from e
    return folder


@dataclass
class Outputs:
    """Output locations: ``root/figures``, ``root/results`` and ``root/REPORT.md``; ``run_id``
    marks every result and summary this invocation writes."""

    root: Path
    run_id: str = field(default_factory=new_run_id)

    @classmethod
    def default(cls) -> Outputs:
        # The repository's own folders when run from a checkout, else the working directory.
        return cls(REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd())

    @property
    def figures(self) -> Path:
        p = Path(self.root) / "figures"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def results(self) -> Path:
        p = Path(self.root) / "results"
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def report(self) -> Path:
        return Path(self.root) / "REPORT.md"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"


@dataclass
class Verdict:
    """One row of the report's verdict table.

    claim: the paper's claim id (e.g. "C3") or a lab finding; status: one of VERDICTS;
    evidence: the numbers behind it, one sentence; figure: path of the figure that shows it.
    """

    claim: str
    status: str
    evidence: str
    figure: str = ""

    def __post_init__(self):
        if self.status not in VERDICTS:
            raise ValueError(f"verdict status must be one of {VERDICTS}; got {self.status!r}")


def gate_on_convergence(verdict: Verdict, unconverged: list[str]) -> Verdict:
    """``verdict`` itself when every learned model it rests on converged, else the same row with
    status "unconverged" and the reading it would have had (and the models' names) in front of
    its evidence: a learned result counts only with its evidence."""
    if not unconverged:
        return verdict
    return Verdict(verdict.claim, UNCONVERGED_STATUS,
                   f"not judged: rests on {len(unconverged)} model(s) that failed the "
                   f"convergence rule ({', '.join(unconverged)}); with them it would read "
                   f"\"{verdict.status}\": {verdict.evidence}", verdict.figure)


@dataclass
class ExperimentResult:
    """What a run returns: its JSON path, figure paths, a markdown section and verdict rows."""

    name: str
    data: dict
    json_path: Path
    figures: list[Path] = field(default_factory=list)
    summary_md: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    headline: dict = field(default_factory=dict)


def save_result(name: str, config, data: dict, out: Outputs) -> Path:
    """Write results/<name>.json with the run metadata (config, seed, version, commit, run id)."""
    payload = {"experiment": name, "run_id": out.run_id, **run_metadata(config), "result": data}
    return write_json(out.results / f"{name}.json", payload)


@dataclass
class Experiment:
    name: str
    title: str
    config_cls: type
    run: Callable
    in_lab: bool = True   # run by a plain `python -m smdlab` (the image comparison is not)
    summarize: Callable | None = None   # rebuilds the summary from the committed result JSON

    def config(self, quick: bool = False, **overrides):
        # A config's defaults are its field defaults unless it defines default() itself.
        make_default = getattr(self.config_cls, "default", self.config_cls)
        cfg = self.config_cls.quick() if quick else make_default()
        return dataclasses.replace(cfg, **overrides) if overrides else cfg


REGISTRY: dict[str, Experiment] = {}


def register(name: str, title: str, config_cls: type, in_lab: bool = True,
             summarize: Callable | None = None):
    """Decorator for an experiment's run function: adds it to the registry under ``name``.

    in_lab=False keeps it out of the default ``python -m smdlab`` run (it runs when named);
    ``summarize(out) -> dict | None`` lets the report rebuild its section from its committed
    result without rerunning it.
    """
    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"experiment {name!r} registered twice")
        REGISTRY[name] = Experiment(name, title, config_cls, fn, in_lab, summarize)
        return fn
    return deco
