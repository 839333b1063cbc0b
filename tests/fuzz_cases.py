"""The fuzz catalogue: bad and extreme inputs for the public API and the data readers (issue 9).

Each case factory takes a numpy Generator and returns a :class:`Case`: a thunk to call, what kind
of input it is, and the parameter an error must name.  Two users:

* ``tests/test_fuzz.py`` draws factories and seeds with hypothesis and asserts every outcome is
  acceptable;
* ``benchmarks/fuzz_counts.py`` runs thousands of draws and prints the table of outcomes.

Kinds and what counts as acceptable:
  * ``"invalid"``: must raise ValueError/TypeError whose message names ``param``;
  * ``"extreme"``: valid but extreme; must return finite numbers, or raise an OverflowError /
    ValueError naming ``param`` (smdlab's ExtremeValueError is both);
  * ``"file"``: a bad data file; must raise ValueError/FileNotFoundError naming the file, or (a
    folder reader) skip it and count it, or load data that pass ImageData's checks (a random byte
    mutation can leave a valid file).
"""

from __future__ import annotations

import gzip
import math
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smdlab import GaussianMixture, NoiseSchedule
from smdlab.distributions import Gaussian, LatentMixture
from smdlab.exact import (
    MixturePosterior,
    best_gaussian,
    expected_eps,
    expected_x0,
    marginal,
    posterior,
    score,
)
from smdlab.kernels import BestGaussianKernel, ExactKernel


@dataclass
class Case:
    label: str          # the factory's name (for tables)
    kind: str           # "invalid" | "extreme" | "file"
    param: str          # what an error message must name (a parameter or a file path)
    call: object        # thunk
    detail: str = ""
    expect_len: tuple | None = None   # a folder case: how many images may come back


# ------------------------------------------------------------------------------ outcomes
CLEAR, UNNAMED, CRASH, NAN, ACCEPTED, OK, SKIPPED, LOST = (
    "clear error", "error not naming the parameter", "bad crash", "silent NaN/inf",
    "invalid accepted", "finite result", "skipped and counted", "data lost")
GOOD = {CLEAR, OK, SKIPPED}


def finite(obj) -> bool:
    """True when every number a result holds is finite (tensors, mixtures, posteriors, ...)."""
    if obj is None or isinstance(obj, (str, bool)):
        return True
    if isinstance(obj, torch.Tensor):
        return bool(torch.isfinite(obj).all()) if obj.is_floating_point() else True
    if isinstance(obj, (int, float)):
        return math.isfinite(obj)
    if isinstance(obj, (tuple, list)):
        return all(finite(o) for o in obj)
    if isinstance(obj, GaussianMixture):
        x = obj.means[:3]
        return finite((obj.weights, obj.means, obj.covariances, obj.log_prob(x)))
    if isinstance(obj, MixturePosterior):
        x = obj.mean()
        return finite((obj.log_weights, obj.weights, obj.means, x, obj.covariance(),
                       obj.log_prob(x), obj.sample(torch.Generator().manual_seed(0))))
    if isinstance(obj, Gaussian):
        return finite((obj.mean(), obj.variance, obj.covariance, obj.log_prob(obj.mean()),
                       obj.entropy()))
    if isinstance(obj, LatentMixture):
        return finite((obj.means, obj.variance, obj.log_prob(obj.mean())))
    if isinstance(obj, NoiseSchedule):
        return finite((obj.betas, obj.log_alpha_bars, obj.alpha_bars))
    if hasattr(obj, "images"):                      # ImageData
        return finite(obj.images)
    return True


def classify(case: Case):
    """Run a case: (outcome, exception-or-None)."""
    try:
        out = case.call()
    except (ValueError, TypeError, OverflowError, FileNotFoundError) as e:
        if case.kind == "extreme" and isinstance(e, OverflowError):
            return CLEAR, e
        if isinstance(e, OverflowError) and not isinstance(e, ValueError):
            return CRASH, e
        if case.param.lower() in str(e).lower():
            return CLEAR, e
        return UNNAMED, e
    except Exception as e:  # noqa: BLE001 - anything else is what the fuzzer hunts
        return CRASH, e
    if case.kind == "invalid":
        return ACCEPTED, None
    if case.expect_len is not None and len(out) not in case.expect_len:
        return LOST, None
    if case.kind == "file" and getattr(out, "skipped", 0):
        return (SKIPPED if finite(out) else NAN), None
    try:
        ok = finite(out)
    except (ValueError, TypeError, OverflowError) as e:
        return (CLEAR if case.param.lower() in str(e).lower() or isinstance(e, OverflowError)
                else UNNAMED), e
    except Exception as e:  # noqa: BLE001
        return CRASH, e
    return (OK if ok else NAN), None


# ------------------------------------------------------------------------------ helpers
BAD_INTS = [2.7, 3.0, "5", True, False, None, float("nan"), float("inf"), 1 + 2j, [3],
            torch.tensor(2.5), torch.tensor([3, 4]), np.float64(4.0)]
GOOD_INTS = [np.int64(5), np.int32(5), torch.tensor(5), 5]
BAD_REALS = [float("nan"), float("inf"), -float("inf"), "1.0", None, [1.0]]
SCHED = NoiseSchedule.linear(100)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _mix(rng, K=None, D=None, kind=None):
    K = K or int(rng.integers(1, 5))
    D = D or int(rng.integers(1, 4))
    kind = kind or _pick(rng, ["full", "diagonal", "isotropic"])
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    return GaussianMixture.random(K, D, generator=g, kind=kind)


def _points(rng, n, D):
    return torch.as_tensor(rng.normal(size=(n, D)))


def _poison(rng, x, values):
    x = x.clone()
    idx = tuple(int(rng.integers(s)) for s in x.shape)
    x[idx] = _pick(rng, values)
    return x


# ------------------------------------------------------------------------------ API factories
def mixture_bad_values(rng):
    K, D = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    w = np.full(K, 1.0 / K)
    m = rng.normal(size=(K, D))
    c = np.full((K, D), 0.5)
    which = _pick(rng, ["weights", "means", "covariances"])
    bad = _pick(rng, [float("nan"), float("inf"), -float("inf"), -1.0, 0.0])
    arrs = {"weights": w, "means": m, "covariances": c}
    a = arrs[which].copy()
    a.flat[int(rng.integers(a.size))] = bad
    if which == "means" and bad in (-1.0, 0.0):     # any finite mean is valid: make it NaN
        a.flat[0] = float("nan")
    arrs[which] = a
    # covariance_type only where the shape is ambiguous (K = D), so that older code (without
    # that keyword) can be fuzzed with the same cases for the "before" counts
    kw = {"covariance_type": "diagonal"} if K == D >= 2 else {}
    return Case("mixture: NaN/inf/non-positive entries", "invalid", which,
                lambda: GaussianMixture(arrs["weights"], arrs["means"], arrs["covariances"], **kw))


def mixture_bad_shapes(rng):
    K = int(rng.integers(1, 4))
    choice = int(rng.integers(6))
    w = np.full(K, 1.0 / K)
    if choice == 0:
        return Case("mixture: D = 0", "invalid", "means",
                    lambda: GaussianMixture(w, np.zeros((K, 0)), np.ones(K)))
    if choice == 1:
        return Case("mixture: empty weights", "invalid", "weights",
                    lambda: GaussianMixture([], np.zeros((0, 1)), []))
    if choice == 2:
        D = int(rng.integers(1, 4))
        return Case("mixture: wrong covariance shape", "invalid", "covariances",
                    lambda: GaussianMixture(w, np.zeros((K, D)), np.ones((K, D + 1))))
    if choice == 3:
        return Case("mixture: weights not summing to 1", "invalid", "weights",
                    lambda: GaussianMixture(w * 1.5, np.zeros((K, 1)), np.ones(K)))
    if choice == 4:
        if rng.random() < 0.5:
            return Case("mixture: non-numeric", "invalid", "weights",
                        lambda: GaussianMixture("abc", [[0.0]], [1.0]))
        return Case("mixture: non-numeric", "invalid", "means",
                    lambda: GaussianMixture([1.0], [["x"]], [1.0]))
    return Case("mixture: means shape mismatch", "invalid", "means",
                lambda: GaussianMixture(w, np.zeros((K + 1, 2)), np.ones(K + 1)))


def mixture_ambiguous_square(rng):
    D = int(rng.integers(2, 5))
    a = rng.uniform(0.1, 1.0, size=(D, D))
    sym = a @ a.T + D * np.eye(D)
    return Case("mixture: (D, D) covariance with K = D", "invalid", "covariance",
                lambda: GaussianMixture(np.full(D, 1.0 / D), rng.normal(size=(D, D)), sym))


def mixture_asymmetric_small(rng):
    # a large component next to a tiny one whose own asymmetry is 10 %
    big = np.eye(2) * 1e4
    small = np.array([[1e-3, 1e-4], [0.0, 1e-3]])
    return Case("mixture: asymmetric small component", "invalid", "symmetric",
                lambda: GaussianMixture([0.5, 0.5], [[0, 0], [1, 1]], np.stack([big, small])))


def mixture_bad_dtype(rng):
    dt = _pick(rng, [torch.int64, torch.int32, torch.bool, "float64", None])
    return Case("mixture: non-float dtype", "invalid", "dtype",
                lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0], dtype=dt))


def mixture_extreme(rng):
    which = _pick(rng, ["means", "tiny variance", "huge variance", "mixed"])
    K, D = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    w = np.full(K, 1.0 / K)
    m = rng.normal(size=(K, D))
    v = np.full(K, 0.5)
    if which == "means":
        m = m * 10.0 ** rng.uniform(50, 300)
    elif which == "tiny variance":
        v = v * 10.0 ** -rng.uniform(100, 323)
    elif which == "huge variance":
        v = v * 10.0 ** rng.uniform(100, 300)
    else:
        m = m * 10.0 ** rng.uniform(20, 60)
        v = v * 10.0 ** -rng.uniform(20, 120)
    t = int(rng.integers(1, 101))
    x = _points(rng, 4, D) * 10.0 ** rng.uniform(0, 60)
    param = "means" if which in ("means", "mixed") else "covariances"

    def run():
        mix = GaussianMixture(w, m, v)
        return (marginal(mix, SCHED, t), posterior(mix, SCHED, x, t), score(mix, SCHED, x, t))
    return Case(f"mixture: extreme {which}", "extreme", param, run)


def constructors_bad(rng):
    choice = int(rng.integers(12))
    if choice == 0:
        G = _pick(rng, [2.5, "3", 0, -1, None, True])
        return Case("grid(G)", "invalid", "G", lambda: GaussianMixture.grid(G))
    if choice == 1:
        return Case("grid(std)", "invalid", "std",
                    lambda: GaussianMixture.grid(3, std=_pick(rng, [0.0, -1.0] + BAD_REALS)))
    if choice == 2:
        return Case("random(kind)", "invalid", "kind",
                    lambda: GaussianMixture.random(2, 2, kind=_pick(rng, ["bogus", "", None, 3])))
    if choice == 3:
        KD = _pick(rng, [(0, 2), (2, 0), (2.5, 2), (2, "2"), (-1, 1)])
        p = "K" if KD[0] != 2 else "D"
        return Case("random(K, D)", "invalid", p, lambda: GaussianMixture.random(*KD))
    if choice == 4:
        return Case("random(min_var > max_var)", "invalid", "min_var",
                    lambda: GaussianMixture.random(2, 2, min_var=0.5, max_var=0.1))
    if choice == 5:
        return Case("ring(K)", "invalid", "K",
                    lambda: GaussianMixture.ring(_pick(rng, [0, 2.5, "8", None])))
    if choice == 6:
        return Case("two_modes(std)", "invalid", "std",
                    lambda: GaussianMixture.two_modes(2.0, _pick(rng, [0.0, -0.1] + BAD_REALS)))
    if choice == 7:
        return Case("two_modes(weight)", "invalid", "weight",
                    lambda: GaussianMixture.two_modes(2.0, 0.1, _pick(rng, [0.0, 1.0, 1.5, "a"])))
    if choice == 8:
        return Case("product(D)", "invalid", "D",
                    lambda: GaussianMixture.product([0.5, 0.5], [-1, 1], [0.1, 0.1],
                                                    _pick(rng, [0, 2.5, "2", 30])))
    if choice == 9:
        return Case("sample(n)", "invalid", "n",
                    lambda: GaussianMixture.grid(2).sample(_pick(rng, [-1, 2.5, "4", None])))
    if choice == 10:
        return Case("random(generator)", "invalid", "generator",
                    lambda: GaussianMixture.random(2, 2, generator=_pick(rng, [0, "seed"])))
    return Case("random(scale)", "invalid", "scale",
                lambda: GaussianMixture.random(2, 2, scale=_pick(rng, [-1.0] + BAD_REALS)))


def schedule_bad(rng):
    choice = int(rng.integers(8))
    maker = _pick(rng, [NoiseSchedule.linear, NoiseSchedule.cosine, NoiseSchedule.sigmoid])
    if choice <= 2:
        T = _pick(rng, [0, -5, 2.5, 10.0, "10", True, None, torch.tensor(2.5)])
        return Case("schedule(T)", "invalid", "T", lambda: maker(T))
    if choice == 3:
        return Case("sigmoid(tau)", "invalid", "tau",
                    lambda: NoiseSchedule.sigmoid(50, tau=_pick(rng, [0, 0.0, -1.0] + BAD_REALS)))
    if choice == 4:
        return Case("linear(beta_start)", "invalid", "beta_start",
                    lambda: NoiseSchedule.linear(50, beta_start=_pick(rng, [0.0, 1.0, -0.1, 2.0]
                                                                       + BAD_REALS)))
    if choice == 5:
        return Case("cosine(max_beta)", "invalid", "max_beta",
                    lambda: NoiseSchedule.cosine(50, max_beta=_pick(rng, [0.0, 1.0, 1.5] + BAD_REALS)))
    if choice == 6:
        return Case("from_name(name)", "invalid", "schedule",
                    lambda: NoiseSchedule.from_name(_pick(rng, ["linearr", "", None, 3]), 10))
    S = _pick(rng, [0, -1, 101, 2.5, "10", None, True])
    return Case("respace(S)", "invalid", "S", lambda: SCHED.respace(S))


def schedule_good_ints(rng):
    T = _pick(rng, GOOD_INTS)
    maker = _pick(rng, [NoiseSchedule.linear, NoiseSchedule.cosine, NoiseSchedule.sigmoid])
    return Case("schedule(T) numpy/torch integer", "extreme", "T",
                lambda: maker(T).respace(_pick(rng, GOOD_INTS)))


def steps_bad(rng):
    mix = _mix(rng)
    x = _points(rng, 3, mix.D)
    bad = _pick(rng, BAD_INTS + [-1, 101, 10**12])
    which = _pick(rng, ["t", "s"])
    if which == "s" and bad is None:     # s=None is valid: it means t - 1
        bad = 2.7
    t, s = (bad, 0) if which == "t" else (50, bad)
    fn = _pick(rng, ["posterior", "best_gaussian", "marginal", "score", "expected_x0",
                     "expected_eps", "jump", "kernel_variance", "root_step", "exact_kernel",
                     "gaussian_kernel"])
    if which == "s" and fn in ("marginal", "score", "expected_x0", "expected_eps", "root_step"):
        which, t = "t", bad
    calls = {
        "posterior": lambda: posterior(mix, SCHED, x, t, s),
        "best_gaussian": lambda: best_gaussian(mix, SCHED, x, t, s),
        "marginal": lambda: marginal(mix, SCHED, t),
        "score": lambda: score(mix, SCHED, x, t),
        "expected_x0": lambda: expected_x0(mix, SCHED, x, t),
        "expected_eps": lambda: expected_eps(mix, SCHED, x, t),
        "jump": lambda: SCHED.jump(t, s),
        "kernel_variance": lambda: SCHED.kernel_variance(t, s),
        "root_step": lambda: SCHED.root_step(t),
        "exact_kernel": lambda: ExactKernel(mix, SCHED).distribution(x, t, s),
        "gaussian_kernel": lambda: BestGaussianKernel(mix, SCHED, "beta").distribution(x, t, s),
    }
    return Case(f"steps: bad {which} in {fn}", "invalid", which, calls[fn], repr(bad))


def steps_good(rng):
    mix = _mix(rng)
    x = _points(rng, 3, mix.D)
    t, s = _pick(rng, GOOD_INTS), _pick(rng, [np.int64(2), torch.tensor(0), 1])
    return Case("steps: numpy/torch integers", "extreme", "t",
                lambda: (posterior(mix, SCHED, x, t, s), best_gaussian(mix, SCHED, x, t, s),
                         SCHED.kernel_variance(t, s), ExactKernel(mix, SCHED).distribution(x, t, s)))


def points_bad(rng):
    mix = _mix(rng)
    t = int(rng.integers(1, 101))
    choice = int(rng.integers(4))
    if choice == 0:
        x = _poison(rng, _points(rng, 4, mix.D), [float("nan"), float("inf"), -float("inf")])
        param = "x_t"
    elif choice == 1:
        x, param = _points(rng, 4, mix.D + 1), "x_t"
    elif choice == 2:
        x, param = _pick(rng, ["abc", None, [[1, "a"]]]), "x_t"
    else:
        x, param = _points(rng, 4, mix.D)[0], "x_t"      # (D,) instead of (N, D)
    fn = _pick(rng, [lambda: posterior(mix, SCHED, x, t), lambda: score(mix, SCHED, x, t),
                     lambda: expected_x0(mix, SCHED, x, t), lambda: best_gaussian(mix, SCHED, x, t),
                     lambda: ExactKernel(mix, SCHED).distribution(x, t, t - 1)])
    return Case("points: NaN/inf/shape/type x_t", "invalid", param, fn)


def points_extreme(rng):
    mix = _mix(rng)
    t = int(rng.integers(1, 101))
    x = _points(rng, 4, mix.D) * 10.0 ** rng.uniform(5, 300)
    return Case("points: huge x_t", "extreme", "x_t",
                lambda: (posterior(mix, SCHED, x, t), score(mix, SCHED, x, t),
                         best_gaussian(mix, SCHED, x, t, kind="moment"),
                         mix.log_prob(x)))


def kinds_bad(rng):
    mix = _mix(rng)
    x = _points(rng, 2, mix.D)
    kind = _pick(rng, ["median", "", None, 3, "Moment"])
    return Case("best_gaussian(kind)", "invalid", "kind",
                lambda: _pick(rng, [lambda: best_gaussian(mix, SCHED, x, 5, kind=kind),
                                    lambda: BestGaussianKernel(mix, SCHED, kind)])())


def posterior_log_prob_bad(rng):
    mix = _mix(rng)
    post = posterior(mix, SCHED, _points(rng, 3, mix.D), 10)
    x = _pick(rng, [_poison(rng, _points(rng, 3, mix.D), [float("nan"), float("inf")]),
                    _points(rng, 2, mix.D), "abc"])
    return Case("posterior.log_prob(x)", "invalid", "x", lambda: post.log_prob(x))


def distributions_bad(rng):
    choice = int(rng.integers(5))
    mean = torch.as_tensor(rng.normal(size=(3, 2)))
    if choice == 0:
        v = _pick(rng, [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, -1.0, 1.0])])
        return Case("Gaussian(variance)", "invalid", "variance", lambda: Gaussian(mean, variance=v))
    if choice == 1:
        m = _pick(rng, [_poison(rng, mean, [float("nan")]), mean[0], "abc", mean.long()])
        return Case("Gaussian(mean)", "invalid", "mean", lambda: Gaussian(m, variance=1.0))
    if choice == 2:
        c = _pick(rng, [torch.full((2, 2), float("nan")), torch.eye(3), "abc"])
        return Case("Gaussian(covariance)", "invalid", "covariance",
                    lambda: Gaussian(mean, covariance=c))
    if choice == 3:
        v = _pick(rng, [0.0, -2.0, float("nan")])
        return Case("LatentMixture(variance)", "invalid", "variance",
                    lambda: LatentMixture(mean[:, None, :].repeat(1, 4, 1), v))
    m = _pick(rng, [mean, torch.full((3, 4, 2), float("nan")), torch.zeros(3, 0, 2)])
    return Case("LatentMixture(means)", "invalid", "means", lambda: LatentMixture(m, 1.0))


API_FACTORIES = [mixture_bad_values, mixture_bad_shapes, mixture_ambiguous_square,
                 mixture_asymmetric_small, mixture_bad_dtype, mixture_extreme, constructors_bad,
                 schedule_bad, schedule_good_ints, steps_bad, steps_good, points_bad,
                 points_extreme, kinds_bad, posterior_log_prob_bad, distributions_bad]


# ------------------------------------------------------------------------------ data files
def _idx(arr, code=0x08, dims=None):
    arr = np.asarray(arr)
    dims = arr.shape if dims is None else dims
    return bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims) + \
        arr.tobytes()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _valid_cifar(rng, n=3):
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"batch"}


def data_file_case(rng, root: Path) -> Case:
    """Write one bad data file under ``root`` (a fresh folder) and return the case reading it."""
    from smdlab.images.data import load_dataset, load_image_folder, read_cifar_batch, read_idx

    root.mkdir(parents=True, exist_ok=True)
    choice = int(rng.integers(10))
    x = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 10, 3).astype(np.uint8)
    if choice == 0:          # truncated / extended IDX, raw or gzipped
        data = _idx(x)
        cut = int(rng.integers(0, len(data) + 8))
        data = data[:cut] if cut < len(data) else data + bytes(cut - len(data))
        if cut == len(data) and cut == len(_idx(x)):
            data = data[:-1]
        if rng.random() < 0.5:
            data = gzip.compress(data)
        p = root / "train-images-idx3-ubyte"
        p.write_bytes(data)
        return Case("data: truncated/extended IDX", "file", str(p), lambda: read_idx(p))
    if choice == 1:          # random header bytes
        data = bytearray(_idx(x))
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(16))] = int(rng.integers(256))
        p = root / "train-images-idx3-ubyte"
        p.write_bytes(bytes(data))
        (root / "train-labels-idx1-ubyte").write_bytes(_idx(y))
        return Case("data: IDX header bytes mutated", "file", str(p),
                    lambda: load_dataset("mnist", root))
    if choice == 2:          # bad labels
        lab = _pick(rng, [_idx(np.array([1, -3, 2], ">i4"), 0x0C),
                          _idx(np.array([1.0, np.nan, 2.0], ">f8"), 0x0E),
                          _idx(np.array([1, 200, 2], np.uint8)), _idx(np.zeros((3, 2), np.uint8)),
                          _idx(np.array([1, 2], np.uint8))])
        (root / "train-images-idx3-ubyte").write_bytes(_idx(x))
        p = root / "train-labels-idx1-ubyte"
        p.write_bytes(lab)
        return Case("data: bad IDX labels", "file", str(p), lambda: load_dataset("mnist", root))
    if choice == 3:          # bad pixels / empty images
        img = _pick(rng, [_idx(np.full((3, 6, 6), 999, ">i2"), 0x0B),
                          _idx(np.full((3, 6, 6), -5, ">i2"), 0x0B),
                          _idx(np.full((3, 6, 6), np.nan, ">f4"), 0x0D),
                          _idx(np.zeros((3, 0, 0), np.uint8)), _idx(np.zeros((3, 6), np.uint8)),
                          _idx(np.zeros(0, np.uint8), dims=(0xFFFFFFFF, 0xFFFF, 0xFFFF))])
        p = root / "train-images-idx3-ubyte"
        p.write_bytes(img)
        (root / "train-labels-idx1-ubyte").write_bytes(_idx(y))
        return Case("data: bad IDX pixels/shape/header", "file", str(p),
                    lambda: load_dataset("mnist", root))
    if choice == 4:          # gzip bomb (the cap is lowered for the test)
        import smdlab.images.formats as data_mod
        p = root / "train-images-idx3-ubyte.gz"
        with gzip.open(p, "wb") as f:
            f.write(_idx(x)[:16])
            f.write(bytes(3 << 20))

        def run():
            old = data_mod.MAX_DECOMPRESSED_BYTES
            data_mod.MAX_DECOMPRESSED_BYTES = 1 << 20
            try:
                return read_idx(p)
            finally:
                data_mod.MAX_DECOMPRESSED_BYTES = old
        return Case("data: gzip bomb", "file", str(p), run)
    if choice == 5:          # malicious or hidden payload CIFAR pickle
        marker = root / "PWNED"
        batch = _valid_cifar(rng)
        where = int(rng.integers(3))
        if where == 0:
            obj = _Payload(marker)
        elif where == 1:
            batch[b"batch_label"] = _Payload(marker)
            obj = batch
        else:
            batch[b"labels"][0] = _Payload(marker)
            obj = batch
        p = root / "data_batch_1"
        p.write_bytes(pickle.dumps(obj, protocol=int(rng.integers(2, 6))))

        def run():
            try:
                return read_cifar_batch(p)
            finally:
                if marker.exists():
                    raise AssertionError("the payload ran")   # counted as a bad crash
        return Case("data: malicious CIFAR pickle", "file", str(p), run)
    if choice == 6:          # CIFAR with wrong contents
        batch = _valid_cifar(rng)
        mut = int(rng.integers(6))
        if mut == 0:
            batch[b"data"] = batch[b"data"].astype(np.float64) / 255
        elif mut == 1:
            batch[b"data"] = np.full((3, 3072), np.nan)
        elif mut == 2:
            batch[b"labels"] = [0.5, 1.5, 2.5]
        elif mut == 3:
            batch[b"labels"] = [-1, 3, 11]
        elif mut == 4:
            batch[b"data"] = batch[b"data"][:, :100]
        else:
            batch = [batch]
        p = root / "data_batch_1"
        p.write_bytes(pickle.dumps(batch))
        return Case("data: CIFAR float/NaN/bad labels/shape", "file", str(p),
                    lambda: read_cifar_batch(p))
    if choice == 7:          # random byte mutations of a valid CIFAR pickle
        data = bytearray(pickle.dumps(_valid_cifar(rng), protocol=int(rng.integers(2, 6))))
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        p = root / "test_batch"
        p.write_bytes(bytes(data))
        return Case("data: CIFAR bytes mutated", "file", str(p), lambda: read_cifar_batch(p))
    # image folders with a bad file among good ones (choice 8, 9)
    from PIL import Image
    for i in range(3):
        Image.new("L", (6, 6), 40 * i).save(root / f"ok{i}.png")
    bad = root / "bad.png"
    kind = int(rng.integers(4))
    if kind == 0:
        Image.new("L", (300, 200), 1).save(bad)          # a bomb for max_pixels=10_000
    elif kind == 1:
        good = (root / "ok0.png").read_bytes()
        bad.write_bytes(good[: int(rng.integers(8, len(good)))])
    elif kind == 2:
        bad.write_bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes())
    else:
        data = bytearray((root / "ok1.png").read_bytes())
        for _ in range(3):
            data[int(rng.integers(8, len(data)))] = int(rng.integers(256))
        bad.write_bytes(bytes(data))

    def run():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_image_folder(root, max_pixels=10_000)
    # the 3 good images always come back; a truncated or mutated PNG may still decode (its
    # pixel data intact, or an unchecked chunk hit), and then 4 are right
    expect = (3,) if kind in (0, 2) else (3, 4)
    return Case("data: bad file in an image folder", "file", str(root), run, expect_len=expect)


def data_case_in_tempdir(rng):
    """A data case in its own temporary folder (removed when the returned context exits)."""
    tmp = tempfile.TemporaryDirectory()
    return tmp, data_file_case(rng, Path(tmp.name) / "d")
