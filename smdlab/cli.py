"""What both command lines share: one-line errors, exit codes, threads, the device and --out.

Every error reaches the user as one ``error: ...`` line on stderr, never a traceback.  Exit code 2:
the request cannot be carried out as asked: bad flags, --set values or environment, and the
library's ValueError family raised on the user's inputs while running (a missing or malformed data
folder, a checkpoint that does not belong to this run, i.e. CheckpointError: use another --out).
Exit code 1: anything else going wrong while running (a non-finite loss, an OSError, a bug).
Set ``SMDLAB_TRACEBACK=1`` to see the traceback of a runtime error as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

USAGE_ERROR, RUNTIME_ERROR = 2, 1


class UsageError(ValueError):
    """A problem with what the user asked for (reported with exit code 2)."""


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error: ...`` line and exit code 2."""

    def error(self, message):
        raise UsageError(message)


def fail(message: str, code: int) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def threads_from_env(requested: int | None, env: dict | None = None) -> int:
    """Torch threads: ``requested`` if given, else OMP_NUM_THREADS (its first level when it is an
    OpenMP list such as ``2,1``), else 1.  A value that is not a positive integer is a UsageError."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads must be at least 1; got {requested}")
        return requested
    raw = (env if env is not None else os.environ).get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return 1
    first = raw.split(",")[0].strip()
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"OMP_NUM_THREADS must be a positive integer (or an OpenMP list like "
                         f"'2,1'); got {raw!r}")
    return n


def check_device(device: str | None) -> None:
    """A requested device must exist here (``cuda`` without CUDA is a UsageError)."""
    if device is None or device == "cpu":
        return
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was requested but CUDA is not available on this "
                         "machine (use --device cpu)")


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body, turning every exception into one ``error:`` line and an exit code."""
    try:
        return body()
    except SystemExit as e:             # argparse's --help and friends
        return e.code if isinstance(e.code, int) else 0
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        return fail(e, USAGE_ERROR)
    except KeyboardInterrupt:
        return fail("interrupted; finished results and checkpoints are kept (run the same "
                    "command again to resume)", 130)
    except Exception as e:  # noqa: BLE001  (the CLI's contract: never a traceback)
        if os.environ.get("SMDLAB_TRACEBACK"):
            traceback.print_exc()
        return fail(f"{type(e).__name__}: {e}", RUNTIME_ERROR)
