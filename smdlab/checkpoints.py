"""Checkpoint files of the training loop (:mod:`smdlab.training`): checksummed, atomic, safe to load.

A checkpoint ``run_dir/ckpt_<step>.pt`` is a torch-saved envelope {format, sha256, payload}: the
payload is the serialized training state, and its SHA-256 is verified before anything in it is
deserialized, so a flipped bit anywhere in the file is a :class:`CheckpointError` naming the
file, never a silently different run.  Files load with ``torch.load(weights_only=True)`` only.
Writes go to a temporary name and are renamed (:func:`smdlab.provenance.atomic_write_bytes`);
:func:`clean_orphans` removes the temporary files a killed run left.  :func:`fingerprint`
identifies the data a run trains on.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import torch

from .provenance import atomic_write_bytes

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
# Temporary files of atomic_write_bytes for checkpoints, EMA snapshots and the log
# (".<name>.<random>.tmp").
ORPHAN_RE = re.compile(r"^\.(ckpt_\d+\.pt|snap_\d+\.pt|log\.json)\..+\.tmp$")
CHECKPOINT_FORMAT = "smdlab-checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not belong to this run."""


def checkpoint_paths(run_dir) -> list[Path]:
    """Checkpoints in run_dir, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    paths = checkpoint_paths(run_dir)
    return paths[-1] if paths else None


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or unreadable ({why}); delete it to "
                           f"resume from an earlier one or start afresh")


def _torch_load(source, path: Path, map_location):
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        # torch's message for a refused object advises loading with weights_only=False: never
        # pass that on (it would run whatever code the file names); say what was refused.
        if isinstance(e, pickle.UnpicklingError):
            why = ("it holds objects other than tensors and plain Python data, which smdlab "
                   "never unpickles")
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            why = f"{type(e).__name__}: {first[:200]}"
        raise _corrupt(path, why) from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and verify a checkpoint; a corrupt or unverifiable file is a :class:`CheckpointError`.

    The file is an envelope ``{"format", "sha256", "payload"}`` whose payload (a uint8 tensor) is
    the ``torch.save`` bytes of the state; the SHA-256 of the payload must match before it is
    unpickled (``weights_only=True`` both times).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    outer = _torch_load(path, path, "cpu")
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        if isinstance(outer, dict) and {"step", "model", "config"} <= set(outer):
            raise CheckpointError(f"checkpoint {path} was written without a checksum (an older "
                                  f"smdlab) and cannot be verified; delete it (or its run folder) "
                                  f"to retrain")
        raise CheckpointError(f"checkpoint {path} is not an smdlab training checkpoint")
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or \
            not isinstance(digest, str):
        raise _corrupt(path, "malformed envelope")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise _corrupt(path, "checksum mismatch: the stored tensors or state changed after "
                             "they were written")
    ckpt = _torch_load(io.BytesIO(data), path, map_location)
    if not isinstance(ckpt, dict) or not {"step", "model", "config"} <= set(ckpt):
        raise CheckpointError(f"checkpoint {path} is not an smdlab training checkpoint")
    return ckpt


def verify_checkpoint(path) -> bool:
    """True when ``path`` loads and its checksum matches (see :func:`load_checkpoint`)."""
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` atomically inside a checksummed envelope (see :func:`load_checkpoint`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    envelope = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    out = io.BytesIO()
    torch.save(envelope, out)
    return atomic_write_bytes(path, out.getvalue())


def clean_orphans(run_dir) -> list[Path]:
    """Remove temporary checkpoint/log files a killed run left in run_dir; returns them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = [p for p in run_dir.iterdir() if ORPHAN_RE.match(p.name) and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def fingerprint(*arrays) -> str:
    """A SHA-256 fingerprint of tensors or numpy arrays (dtype, shape and every value).

    Pass it to :func:`train` as ``data_fingerprint`` so that a run resumed on different data (a
    folder with the same name and count but other pixels) is an error, not a silent mix.
    ``None`` entries (e.g. missing labels) are allowed and hashed as such.
    """
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().contiguous()
            header = f"torch;{a.dtype};{tuple(a.shape)};"
            data = a.reshape(-1).view(torch.uint8).numpy()
        elif isinstance(a, np.ndarray) and a.dtype != object:
            header = f"numpy;{a.dtype};{a.shape};"
            data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        else:
            raise TypeError(f"fingerprint takes tensors or numeric numpy arrays; got "
                            f"{type(a).__name__}")
        h.update(header.encode())
        h.update(memoryview(data))
    return "sha256:" + h.hexdigest()


def last_good_checkpoint(run_dir) -> Path | None:
    """The newest checkpoint in run_dir whose checksum verifies now (None if there is none)."""
    if run_dir is None:
        return None
    for path in reversed(checkpoint_paths(run_dir)):
        if verify_checkpoint(path):
            return path
    return None
