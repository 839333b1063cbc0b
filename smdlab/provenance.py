"""Reproducibility records and atomic file writes.

Every experiment's JSON result carries its full config, seed, the package version and the git
commit; every output is written to a temporary name in the same folder and then renamed, so an
interrupted run never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from . import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The current commit of the source tree (with '-dirty' if it has changes), or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(config=None, seed: int | None = None) -> dict:
    """What a result needs to be reproduced: config, seed, versions, commit, time, machine."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return {
        "config": config,
        "seed": seed if seed is not None else (config or {}).get("seed"),
        "smdlab_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask), not
    mkstemp's private 0600, so that results are shared the way the user's umask says.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path, obj) -> Path:
    """Write obj as indented JSON atomically (tensors and numpy values become lists/numbers)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=True) + "\n")


#: Set (to "1") by ``python -m smdlab --quick`` for its own and its child processes: every figure
#: saved then carries a "smoke run" stamp.
SMOKE_ENV = "SMDLAB_SMOKE"


def save_figure(fig, path, pdf: bool = False, smoke: bool | None = None) -> Path:
    """Save a matplotlib figure as PNG (and PDF) atomically; returns the PNG path.  A smoke run's
    figure (``smoke``; None: the :data:`SMOKE_ENV` environment variable) is stamped as one."""
    import io

    if smoke is None:
        smoke = os.environ.get(SMOKE_ENV) == "1"
    if smoke:
        fig.text(0.5, 1.0, "SMOKE RUN (seconds of training, tiny samples): not a result",
                 ha="center", va="bottom", color="red", fontsize=12, fontweight="bold")
    path = Path(path).with_suffix(".png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    if pdf:
        buf = io.BytesIO()
        fig.savefig(buf, format="pdf", bbox_inches="tight")
        atomic_write_bytes(path.with_suffix(".pdf"), buf.getvalue())
    return path
