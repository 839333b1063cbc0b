"""File formats of image datasets, parsed without trusting the file.

* IDX (MNIST, Fashion-MNIST): :func:`read_idx`, gzipped or raw; the header's shape must match the
  payload exactly.
* CIFAR-10 python batches: :func:`read_cifar_batch`.  They are pickles, and unpickling runs code
  named in the file, so they are read by :class:`RestrictedUnpickler`, which admits only what a
  CIFAR batch holds (dicts, lists, bytes, str, numbers, and numpy arrays through numpy's own
  reconstruction functions); any other global a file names (``os.system``, ``builtins.open``, ...)
  is refused before it is called, wherever in the file it hides.

Every reader caps what it inflates at ``MAX_DECOMPRESSED_BYTES`` (gzip bombs) and raises a
``ValueError`` naming the file and the problem.  :mod:`smdlab.images.data` turns the arrays into
:class:`~smdlab.images.data.ImageData`.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path

import numpy as np

# Largest file (after gunzip) a reader accepts: Fashion-MNIST's largest is 47 MB, a CIFAR batch 31 MB.
MAX_DECOMPRESSED_BYTES = 1 << 30
CIFAR10_NUM_CLASSES = 10


def read_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number.

    At most ``max_bytes`` (default MAX_DECOMPRESSED_BYTES) come back: a larger file, or a gzip
    stream that would inflate beyond it (a gzip bomb), is a ValueError, found without ever
    holding more than the cap in memory.
    """
    path = Path(path)
    cap = MAX_DECOMPRESSED_BYTES if max_bytes is None else max_bytes
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        size = path.stat().st_size
        if size > cap:
            raise ValueError(f"{path}: {size} bytes exceed the {cap}-byte limit "
                             f"(MAX_DECOMPRESSED_BYTES)")
        return path.read_bytes()
    out = bytearray()
    try:
        with gzip.open(path, "rb") as g:
            while True:
                chunk = g.read(min(1 << 20, cap + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
                if len(out) > cap:
                    raise ValueError(f"{path}: gzip data inflate beyond the {cap}-byte limit "
                                     f"(MAX_DECOMPRESSED_BYTES): a gzip bomb or not a dataset file")
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return bytes(out)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or raw, into an array of its declared shape.

    The header is two zero bytes, a type code, the number of dimensions, then one big-endian
    uint32 per dimension; a payload shorter or longer than the header declares is an error.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    # Python integers: a header of 0xFFFFFFFF dimensions must not overflow an int64 product.
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {what}: header declares shape {tuple(dims)} "
                         f"({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def check_pixels(x: np.ndarray, path: Path) -> None:
    """8-bit pixels: integers in 0..255 (a float, NaN or int16 image would leave [-1, 1])."""
    if x.dtype.kind not in "ui":
        raise ValueError(f"{path}: pixels must be integers 0..255; got dtype {x.dtype}")
    if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
        raise ValueError(f"{path}: pixels must lie in 0..255; got {int(x.min())} .. {int(x.max())}")


def check_labels(y: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Integer class labels in 0..num_classes-1, as int64."""
    if y.dtype.kind not in "ui":
        raise ValueError(f"{path}: labels must be integers; got dtype {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{path}: labels must lie in 0..{num_classes - 1}; got {int(y.min())} .. "
                         f"{int(y.max())}")
    return y.astype(np.int64)


class ForbiddenPickleError(pickle.UnpicklingError):
    """A pickle names something a CIFAR-10 batch never holds; it was refused, not called."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR-10 batches that can only build plain data and numpy arrays.

    Plain containers and scalars (dict, list, tuple, bytes, str, int, float, bool, None) need no
    globals.  The only globals admitted are numpy's array/dtype reconstruction functions and,
    for Python-3 protocol-2 pickles of bytes, ``_codecs.encode`` restricted to latin-1; each is
    wrapped so that it can build only an ndarray, a dtype or bytes.  Everything else raises
    ``pickle.UnpicklingError`` before it is called, so a crafted file runs nothing.
    """

    def find_class(self, module, name):
        fn = _SAFE_GLOBALS.get((module, name))
        if fn is None:
            raise ForbiddenPickleError(f"forbidden global {module}.{name} (a CIFAR-10 batch "
                                         f"holds only dicts, lists, bytes and numpy arrays)")
        return fn

    def persistent_load(self, pid):
        raise ForbiddenPickleError("persistent references are not allowed")


def _safe_reconstruct(subtype, shape, dtype_char):
    if subtype is not np.ndarray:
        raise ForbiddenPickleError("numpy _reconstruct may only build a plain ndarray")
    return _np_reconstruct(np.ndarray, shape, dtype_char)


def _safe_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ForbiddenPickleError("arrays of Python objects are not allowed")
    return _np_frombuffer(buf, dtype, shape, order)


def _safe_encode(text, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise ForbiddenPickleError(f"_codecs.encode is only allowed for latin-1 text; got "
                                     f"encoding {encoding!r}")
    return text.encode("latin-1")


def _numpy_internals():
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:   # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    return _reconstruct, _frombuffer


_np_reconstruct, _np_frombuffer = _numpy_internals()
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _safe_encode,
}


def restricted_loads(data: bytes, encoding: str = "bytes"):
    """``pickle.loads`` through :class:`RestrictedUnpickler` (no code can run)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    path = Path(path)
    data = read_bytes(path)
    try:
        batch = restricted_loads(data, encoding="bytes")
    except ForbiddenPickleError as e:
        raise ValueError(f"{path}: refused, not a plain CIFAR-10 batch: {e}; nothing in it "
                         f"was run") from None
    except Exception as e:  # noqa: BLE001 - pickle raises many kinds of errors on corrupt input
        raise ValueError(f"{path}: corrupt or truncated CIFAR-10 pickle batch ({e!r})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    batch = {k.decode(errors="replace") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' "
                         f"(keys {sorted(map(str, batch))})")
    x = batch["data"]
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{path}: CIFAR-10 data must be a numpy array; got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR-10 data must be (N, 3072); got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{path}: CIFAR-10 batch holds no images")
    check_pixels(x, path)
    labels = batch["labels"]
    if not isinstance(labels, (list, tuple, np.ndarray)) or \
            any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{path}: CIFAR-10 labels must be a list of integers")
    y = np.asarray(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: {y.shape[0]} labels for {x.shape[0]} images")
    y = check_labels(y, path, CIFAR10_NUM_CLASSES)
    return x.reshape(-1, 3, 32, 32).astype(np.uint8), y
