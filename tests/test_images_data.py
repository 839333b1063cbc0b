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
