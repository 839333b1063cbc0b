"""Image readers on small files the tests write, including corrupt ones."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from smdlab.images.data import (
    load_dataset,
    load_digits,
    load_image_folder,
    random_hflip,
    read_cifar_batch,
    read_idx,
    resize_images,
)


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_mnist(root, n=20, size=28, gz=True, prefix="train", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_and_scaling(tmp_path, gz):
    x, y = write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path, "train")
    assert data.images.shape == (20, 1, 28, 28) and data.images.dtype == torch.float32
    assert torch.equal(data.labels, torch.from_numpy(y.astype(np.int64)))
    back = ((data.images[:, 0] + 1) * 127.5).round().numpy().astype(np.uint8)
    assert np.array_equal(back, x)
    assert data.images.min() >= -1 and data.images.max() <= 1


def test_idx_truncated_and_corrupt(tmp_path):
    good = idx_bytes(np.zeros((4, 5, 5)))
    (tmp_path / "trunc").write_bytes(good[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "bad").write_bytes(b"\x12\x34\x56\x78" + good[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "badgz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "badgz")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_idx(tmp_path / "nowhere")


def test_idx_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, n=6)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5))))
    with pytest.raises(ValueError, match="labels for 6 images"):
        load_dataset("fashion-mnist", tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        write_mnist(tmp_path)
        load_dataset("mnist", tmp_path, "test")
    with pytest.raises(ValueError, match="needs a data folder"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def write_cifar(path, n=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, n).tolist()
    path.write_bytes(pickle.dumps({b"data": x, b"labels": y, b"batch_label": b"test"}))
    return x, y


def test_cifar_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    x1, y1 = write_cifar(root / "data_batch_1", 7, 0)
    x2, y2 = write_cifar(root / "data_batch_2", 5, 1)
    write_cifar(root / "test_batch", 3, 2)
    data = load_dataset("cifar10", tmp_path, "train")
    assert data.images.shape == (12, 3, 32, 32)
    assert data.labels.tolist() == y1 + y2
    # channel-major layout: the first 1024 bytes are the red plane
    red = ((data.images[0, 0] + 1) * 127.5).round().numpy().astype(np.uint8)
    assert np.array_equal(red.ravel(), x1[0, :1024])
    assert len(load_dataset("cifar10", root, "test")) == 3
    small = load_dataset("cifar10", root, "test", image_size=16, channels=1)
    assert small.images.shape == (3, 1, 16, 16)


def test_cifar_corrupt(tmp_path):
    write_cifar(tmp_path / "data_batch_1")
    raw = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_cifar_batch(tmp_path / "data_batch_1")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 100))}))
    with pytest.raises(ValueError, match="lacks"):
        read_cifar_batch(tmp_path / "data_batch_1")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 100)),
                                                          b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        read_cifar_batch(tmp_path / "data_batch_1")


def _png(path, size, value, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def test_folder_labels_skip_and_resize(tmp_path):
    for i in range(3):
        _png(tmp_path / "cats" / f"{i}.png", (12, 10), 10 * i)
        _png(tmp_path / "dogs" / f"{i}.png", (12, 10), 200)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        data = load_image_folder(tmp_path, image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.skipped == 1
    assert data.class_names == ("cats", "dogs")
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(data.images[data.labels == 1], torch.tensor(200 / 127.5 - 1), atol=1e-5)
    with pytest.warns(UserWarning, match="skipped 1"):
        grey = load_dataset("folder", tmp_path, "train", image_size=8, channels=1)
    assert grey.images.shape[1] == 1 and len(grey) == 5  # one held out for the test split


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    _png(tmp_path / "mixed" / "a.png", (8, 8), 1)
    _png(tmp_path / "mixed" / "b.png", (9, 8), 1)
    with pytest.raises(ValueError, match="mixed sizes"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", image_size=4).images.shape == (2, 3, 4, 4)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="could be read"):
        load_image_folder(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "absent")


def test_digits_split_and_transforms():
    train, test = load_digits("train"), load_digits("test")
    assert train.shape == (1, 8, 8) and len(train) + len(test) == 1797
    assert train.images.min() == -1 and train.images.max() == 1
    x = train.images[:16]
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
    big = resize_images(x, 16)
    assert big.shape == (16, 1, 16, 16)
    assert torch.allclose(big.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.05)


# ---------------------------------------------------------------------------- issue 9: safe files
class _CreatesFile:
    """A pickle payload that, if unpickled by plain pickle, creates a file (and so proves it ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Shell:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_malicious_cifar_batch_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps(_CreatesFile(marker)))
    # the payload is real: plain pickle would run it
    pickle.loads(bad.read_bytes()).close()
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError,
                       match=r"data_batch_1: refused.*(builtins|io)\.open.*nothing in it was run"):
        read_cifar_batch(bad)
    assert not marker.exists()
    bad.write_bytes(pickle.dumps(_Shell(), protocol=2))
    with pytest.raises(ValueError, match=r"refused.*(posix|os|nt)\.system"):
        read_cifar_batch(bad)
    with pytest.raises(ValueError, match="refused"):
        load_dataset("cifar10", tmp_path, "train")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_payload_hidden_in_a_valid_cifar_batch_is_refused(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    hidden = [
        {b"data": x, b"labels": [0, 1, 2], b"batch_label": _CreatesFile(marker)},
        {b"data": x, b"labels": [0, 1, _CreatesFile(marker)]},
        {b"data": x, b"labels": [0, 1, 2], b"extra": np.array([_CreatesFile(marker)], dtype=object)},
    ]
    for batch in hidden:
        path = tmp_path / "data_batch_1"
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        with pytest.raises(ValueError, match="data_batch_1: refused"):
            read_cifar_batch(path)
        assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_valid_cifar_batches_of_every_protocol_load(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    y = [3, 0, 9, 1]
    path = tmp_path / "data_batch_1"
    batch = {b"data": x, b"labels": y, b"batch_label": b"training batch 1 of 5",
             b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    got_x, got_y = read_cifar_batch(path)
    assert np.array_equal(got_x.reshape(4, -1), x) and got_y.tolist() == y
    # the reader also takes a gzipped batch
    path.write_bytes(gzip.compress(pickle.dumps(batch, protocol=protocol)))
    assert np.array_equal(read_cifar_batch(path)[0].reshape(4, -1), x)


@pytest.mark.parametrize("data, labels, match", [
    (np.zeros((2, 3072), np.float32), [0, 1], "integers 0..255"),
    (np.full((2, 3072), np.nan), [0, 1], "integers 0..255"),
    (np.full((2, 3072), 300, np.int16), [0, 1], "0..255"),
    (np.zeros((2, 3072), np.uint8), [0.5, 1.0], "labels must be a list of integers"),
    (np.zeros((2, 3072), np.uint8), [0, 10], r"labels must lie in 0\.\.9"),
    (np.zeros((2, 3072), np.uint8), [-1, 0], r"labels must lie in 0\.\.9"),
    (np.zeros((2, 3072), np.uint8), [True, False], "list of integers"),
    (np.zeros((0, 3072), np.uint8), [], "no images"),
    ([[0] * 3072], [0], "numpy array"),
])
def test_bad_cifar_contents_name_the_file(tmp_path, data, labels, match):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    with pytest.raises(ValueError, match=match) as err:
        read_cifar_batch(path)
    assert str(path) in str(err.value)


def _idx(arr, code=0x08, dims=None):
    arr = np.asarray(arr)
    dims = arr.shape if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return header + arr.tobytes()


def _write_idx_pair(root, images: bytes, labels: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train-images-idx3-ubyte").write_bytes(images)
    (root / "train-labels-idx1-ubyte").write_bytes(labels)


@pytest.mark.parametrize("case, match", [
    ("negative labels", "labels must lie in 0..9"),
    ("float labels", "labels must be integers"),
    ("nan labels", "labels must be integers"),
    ("label 10", "labels must lie in 0..9"),
    ("0 x 0 images", "empty images"),
    ("no images", "no images"),
    ("int16 pixels", "pixels must lie in 0..255"),
    ("float pixels", "pixels must be integers"),
    ("overflowing header", "truncated"),
])
def test_bad_idx_files_name_the_file(tmp_path, case, match):
    x = np.zeros((3, 4, 4), np.uint8)
    y = np.array([1, 2, 3], np.uint8)
    images, labels = _idx(x), _idx(y)
    bad_images = "pixels" in case or "images" in case or "header" in case
    if case == "negative labels":
        labels = _idx(np.array([1, -2, 3], ">i4"), 0x0C)
    elif case == "float labels":
        labels = _idx(np.array([1.0, 2.5, 3.0], ">f4"), 0x0D)
    elif case == "nan labels":
        labels = _idx(np.array([1.0, np.nan, 3.0], ">f8"), 0x0E)
    elif case == "label 10":
        labels = _idx(np.array([1, 10, 3], np.uint8))
    elif case == "0 x 0 images":
        images = _idx(np.zeros((3, 0, 0), np.uint8))
    elif case == "no images":
        images, labels = _idx(np.zeros((0, 4, 4), np.uint8)), _idx(np.zeros(0, np.uint8))
    elif case == "int16 pixels":
        images = _idx(np.full((3, 4, 4), 1000, ">i2"), 0x0B)
    elif case == "float pixels":
        images = _idx(np.full((3, 4, 4), 0.5, ">f4"), 0x0D)
    elif case == "overflowing header":
        images = _idx(np.zeros(16, np.uint8), dims=(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
    _write_idx_pair(tmp_path, images, labels)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("mnist", tmp_path)
    bad = "train-images" if bad_images else "train-labels"
    assert f"{bad}-idx" in str(err.value)


def test_gzip_bomb_is_capped(tmp_path, monkeypatch):
    import smdlab.images.formats as data_mod

    good = idx_bytes(np.zeros((4, 8, 8)))
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    # 64 MiB of zeros after a valid header: about 64 KiB on disk
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(good[:16])
        chunk = bytes(1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(data_mod, "MAX_DECOMPRESSED_BYTES", 4 << 20)
    with pytest.raises(ValueError, match="gzip bomb") as err:
        read_idx(bomb)
    assert str(bomb) in str(err.value)
    raw = tmp_path / "big"
    raw.write_bytes(bytes(5 << 20))
    with pytest.raises(ValueError, match="limit"):
        read_idx(raw)
    # under the cap, the same path reads normally
    small = tmp_path / "small.gz"
    small.write_bytes(gzip.compress(good))
    assert read_idx(small).shape == (4, 8, 8)


def test_decompression_bomb_png_is_skipped_not_fatal(tmp_path, monkeypatch):
    from PIL import Image

    for i in range(3):
        _png(tmp_path / f"ok{i}.png", (8, 8), 50 * i)
    _png(tmp_path / "bomb.png", (400, 300), 7)       # 120,000 pixels
    with pytest.warns(UserWarning, match=r"skipped 1 of 4.*1 too large"):
        data = load_image_folder(tmp_path, max_pixels=10_000)
    assert len(data) == 3 and data.skipped == 1
    # PIL's own bomb check raises inside Image.open (an exception PIL does not derive from
    # OSError): the reader must skip the file, not abort the run
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        data = load_image_folder(tmp_path)
    assert len(data) == 3
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)   # warning zone (1x-2x): skipped too
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        assert len(load_image_folder(tmp_path)) == 3


def test_imagedata_rejects_nan_and_out_of_range_pixels():
    from smdlab.images.data import ImageData

    x = torch.zeros(4, 1, 3, 3)
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 images hold NaN"):
        ImageData(x, None, (), "t")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ImageData(torch.full((2, 1, 3, 3), 1.5), None, (), "t")
    with pytest.raises(ValueError, match="labels must lie"):
        ImageData(torch.zeros(2, 1, 3, 3), torch.tensor([0, 5]), ("a", "b"), "t")
    with pytest.raises(TypeError, match="labels must be an integer"):
        ImageData(torch.zeros(2, 1, 3, 3), torch.tensor([0.0, 1.0]), ("a", "b"), "t")
    with pytest.raises(ValueError, match="empty images"):
        ImageData(torch.zeros(2, 1, 0, 0), None, (), "t")


def test_too_small_data_fails_before_training(tmp_path):
    from smdlab.images.data import check_min_images

    for i in range(5):
        _png(tmp_path / f"{i}.png", (8, 8), 10 * i)
    data = load_image_folder(tmp_path)
    assert check_min_images(data, 5) is data and data.require(5, "FD") is data
    with pytest.raises(ValueError, match=r"5 images, but FD-net with n=64 needs at least 64"):
        data.require(64, "FD-net with n=64")
    with pytest.raises(ValueError, match="needs at least 10"):
        load_dataset("folder", tmp_path, "train", min_images=10)
    with pytest.raises(TypeError, match="min_images"):
        check_min_images(data, 2.5)


@pytest.mark.parametrize("size, err", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                       ("8", TypeError)])
def test_image_size_is_validated_up_front(size, err):
    with pytest.raises(err, match="image_size must be a positive integer"):
        load_dataset("digits", image_size=size)


def test_cifar_batch_with_numpy1_module_names_loads(tmp_path):
    # the original CIFAR-10 files were pickled by Python 2 with numpy 1: "numpy.core.multiarray"
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"data": x, b"labels": [4, 5]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    got, y = read_cifar_batch(path)
    assert np.array_equal(got.reshape(2, -1), x) and y.tolist() == [4, 5]
