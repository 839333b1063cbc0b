"""What every experiment shares: where outputs go, what a run returns, and the registry.

An experiment is a module with a config dataclass (field defaults, and a ``quick()`` constructor) and a
``run(config, out) -> ExperimentResult`` function.  The CLI (``python -m smdlab``), the notebooks and
the tests all call the same functions.  Each run writes ``results/<name>.json`` (with
:func:`smdlab.provenance.run_metadata`) and its figures under ``figures/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..provenance import REPO_ROOT, run_metadata, write_json

VERDICTS = ("holds", "holds with qualification", "does not hold as stated", "not tested")


@dataclass
class Outputs:
    """Output locations: ``root/figures``, ``root/results`` and ``root/REPORT.md``."""

    root: Path

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
    """Write results/<name>.json with the run metadata (config, seed, version, commit)."""
    payload = {"experiment": name, **run_metadata(config), "result": data}
    return write_json(out.results / f"{name}.json", payload)


@dataclass
class Experiment:
    name: str
    title: str
    config_cls: type
    run: Callable
    heavy: bool = False   # trains networks (used for ordering and the --quick budget)

    def config(self, quick: bool = False, **overrides):
        # A config's defaults are its field defaults unless it defines default() itself.
        make_default = getattr(self.config_cls, "default", self.config_cls)
        cfg = self.config_cls.quick() if quick else make_default()
        return dataclasses.replace(cfg, **overrides) if overrides else cfg


REGISTRY: dict[str, Experiment] = {}


def register(name: str, title: str, config_cls: type, heavy: bool = False):
    """Decorator for an experiment's run function: adds it to the registry under ``name``."""
    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"experiment {name!r} registered twice")
        REGISTRY[name] = Experiment(name, title, config_cls, fn, heavy)
        return fn
    return deco
