"""FD, KID, precision/recall, mode coverage and the Inception path (with a stand-in network)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smdlab.images.data import load_digits
from smdlab.images.evaluation import (
    class_frequencies,
    evaluate_samples,
    fd_from_features,
    frechet_distance,
    inception_fid,
    kid,
    load_inception_extractor,
    precision_recall,
    state_hash,
    train_classifier,
)


@given(st.integers(1, 6), st.integers(0, 10_000))
def test_frechet_matches_closed_forms(d, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.1 * np.eye(d)
    mu = rng.normal(size=d)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-6 * np.trace(cov))
    # isotropic covariances: W2^2 = |dmu|^2 + d (s1 - s2)^2
    s1, s2 = rng.uniform(0.1, 3, 2)
    mu2 = rng.normal(size=d)
    want = ((mu - mu2) ** 2).sum() + d * (s1 - s2) ** 2
    got = frechet_distance(mu, s1 ** 2 * np.eye(d), mu2, s2 ** 2 * np.eye(d))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    # symmetric
    b = rng.normal(size=(d, d))
    cov2 = b @ b.T + 0.1 * np.eye(d)
    assert frechet_distance(mu, cov, mu2, cov2) == pytest.approx(
        frechet_distance(mu2, cov2, mu, cov), rel=1e-6, abs=1e-9)


def test_fd_self_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8)) / np.sqrt(8)
    assert fd_from_features(f, f) == pytest.approx(0, abs=1e-8)
    fds = [fd_from_features(f, f + s * rng.normal(size=f.shape)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(fds, fds[1:]))
    m, _ = kid(f, f + 2.0 * rng.normal(size=f.shape))
    m0, s0 = kid(f[:1000], f[1000:])
    assert m > 10 * max(abs(m0), s0)


def test_precision_recall_extremes():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 4))
    p, r = precision_recall(real, rng.normal(size=(300, 4)))
    assert p > 0.8 and r > 0.8
    # a generator that only covers one half of the data: precise, low recall
    half = real[real[:, 0] > 0.5]
    p, r = precision_recall(real, half + 0.01 * rng.normal(size=half.shape))
    assert p > 0.95 and r < 0.6
    p, r = precision_recall(real, real + 20)
    assert p == 0 and r == 0


def test_class_frequencies():
    pred = torch.tensor([0, 0, 0, 1])
    out = class_frequencies(pred, 3)
    assert out["frequencies"] == [0.75, 0.25, 0.0]
    assert out["covered"] == 2  # classes 0 and 1 have at least half their 1/3 share
    assert out["tv"] == pytest.approx(0.5 * (abs(0.75 - 1 / 3) + abs(0.25 - 1 / 3) + 1 / 3))
    full = class_frequencies(torch.arange(3).repeat(5), 3)
    assert full["tv"] == pytest.approx(0) and full["covered"] == 3
    assert full["entropy"] == pytest.approx(full["max_entropy"])


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    train, test = load_digits("train"), load_digits("test")
    cache = tmp_path_factory.mktemp("cls")
    net, info = train_classifier(train, test, "digitsnet", steps=150, cache_dir=cache)
    return train, test, net, info, cache


def test_classifier_learns_and_caches(digits_classifier):
    train, test, net, info, cache = digits_classifier
    assert info.accuracy > 0.8  # chance is 0.1
    assert info.weights_sha256 == state_hash(net)
    again, info2 = train_classifier(train, test, "digitsnet", steps=150, cache_dir=cache)
    assert info2 == info and state_hash(again) == info.weights_sha256


def test_evaluate_samples_orders_quality(digits_classifier):
    train, test, net, info, _ = digits_classifier
    g = torch.Generator().manual_seed(0)
    good = evaluate_samples(test.images, train, net, info)
    noisy = evaluate_samples((test.images + 0.6 * torch.randn(test.images.shape, generator=g)),
                             train, net, info)
    ones = test.images[test.labels == 1]
    collapsed = evaluate_samples(ones.repeat(4, 1, 1, 1)[:300], train, net, info)
    assert good["metric"] == "FD-digitsnet" and good["n"] == len(test)
    assert good["fd"] < noisy["fd"] and good["fd"] < collapsed["fd"]
    assert good["classes"]["covered"] == 10 and collapsed["classes"]["covered"] <= 2
    assert collapsed["recall"] < good["recall"]


def test_inception_path_with_stand_in_and_missing_file(tmp_path):
    torch.manual_seed(0)
    stand_in = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    seen = []

    def extractor(x):
        seen.append(x.dtype)
        return stand_in(x.float() / 255)

    x = load_digits("test").images[:200]
    same = inception_fid(x, x, extractor=extractor)
    diff = inception_fid(x, x.flip(-2).clamp(-1, 1) * 0.2, extractor=extractor)
    assert seen[0] == torch.uint8  # the standard extractors take uint8 RGB
    assert same["fd"] == pytest.approx(0, abs=1e-6) and diff["fd"] > 1e-4
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception_extractor(missing)
    with pytest.raises(FileNotFoundError, match="weights file"):
        inception_fid(x, x, weights_path=missing)
