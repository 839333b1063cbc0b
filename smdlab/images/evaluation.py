"""Sample quality for images without downloads: FD-<net>, KID, precision/recall, mode coverage.

Offline, the Inception network behind FID cannot be obtained, so the default metric is a Fréchet
distance on the penultimate features of a small classifier that smdlab trains on the dataset's own
training split (:func:`train_classifier`).  It is reported as ``FD-<net>`` (e.g. ``FD-digitsnet``),
never as FID, together with the classifier's test accuracy and a hash of its weights: numbers are
comparable only between runs with the same hash.

* Fréchet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets:
  ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x . y / d + 1)^3, mean and standard deviation over random subsets.
* Precision / recall (Kynkäänniemi et al. 2019): a generated point is "precise" when it falls in
  the k-NN ball of some real point; a real point is "recalled" when it falls in the k-NN ball of
  some generated point.
* Mode coverage: the classifier's predicted-class frequencies of the generated samples against the
  reference's, their total variation, and how many classes get at least half their share.
* Inception FID when a user has the standard weights file: :func:`inception_fid` (through
  torch-fidelity's extractor with a local weights path); it fails with a message naming the
  missing file or package, and its Fréchet path is the same function as FD-<net>'s.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData
from .unet import group_norm


# ---------------------------------------------------------------------------- classifier
class SmallClassifier(nn.Module):
    """conv-GN-SiLU x 2 per stage (stride-2 between stages), global average pool, a feature layer
    of width ``feature_dim`` (the penultimate features for FD) and a linear classification head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, stages: int = 2,
                 feature_dim: int = 128):
        super().__init__()
        layers, c = [], in_channels
        for i in range(stages):
            w = width * 2 ** i
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1), group_norm(w, 8),
                       nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), group_norm(w, 8), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(c, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> penultimate features (N, feature_dim)."""
        return self.feature(self.body(x).mean((-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierInfo:
    """What a result records about the feature network: name (for FD-<name>), test accuracy,
    train/test sizes, steps, a sha256 prefix of its weights and the training time."""

    name: str
    accuracy: float
    n_train: int
    n_test: int
    steps: int
    weights_sha256: str
    train_seconds: float
    feature_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def state_hash(module: nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's parameters and buffers, in name order."""
    h = hashlib.sha256()
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def classifier_accuracy(net: nn.Module, data: ImageData, batch_size: int = 512) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        logits = net(data.images[i:i + batch_size])
        correct += (logits.argmax(-1) == data.labels[i:i + batch_size]).sum().item()
    return correct / len(data)


def train_classifier(train: ImageData, test: ImageData, name: str, steps: int = 600,
                     batch_size: int = 128, lr: float = 2e-3, width: int = 32,
                     feature_dim: int = 128, seed: int = 0, cache_dir=None,
                     progress: bool = False, device=None) -> tuple[SmallClassifier, ClassifierInfo]:
    """Train :class:`SmallClassifier` on ``train`` (random shifts by one pixel as augmentation),
    measure its accuracy on ``test``; with ``cache_dir``, reuse a stored network trained with the
    same settings on the same data (the file records its accuracy and weights hash)."""
    from tqdm import tqdm

    from ..provenance import atomic_write_bytes

    if train.labels is None or test.labels is None:
        raise ValueError("the feature classifier needs labelled data (got an unlabelled set)")
    num_classes = max(train.num_classes, int(train.labels.max()) + 1)
    stages = 2 if min(train.shape[1:]) <= 16 else 3
    key = hashlib.sha256(repr((name, train.shape, len(train), len(test), steps, batch_size, lr,
                               width, feature_dim, seed, float(train.images[:64].sum()))).encode())
    path = Path(cache_dir) / f"classifier-{name}-{key.hexdigest()[:12]}.pt" if cache_dir else None
    net = SmallClassifier(train.shape[0], num_classes, width, stages, feature_dim)
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=True)
        net.load_state_dict(blob["state"])
        net.eval()
        return net, ClassifierInfo(**blob["info"])
    device = torch.device(device or "cpu")
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    net.to(device)
    images, labels = train.images.to(device), train.labels.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    net.train()
    for _ in tqdm(range(steps), disable=not progress, desc=f"classifier {name}"):
        idx = torch.randint(len(train), (batch_size,), generator=g, device=device)
        x = images[idx]
        dx, dy = torch.randint(-1, 2, (2,), generator=g, device=device).tolist()
        x = torch.roll(x, (dx, dy), (-2, -1))
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.cpu().eval()
    info = ClassifierInfo(name, classifier_accuracy(net, test), len(train), len(test), steps,
                          state_hash(net), time.perf_counter() - t0, feature_dim)
    if path is not None:
        buf = io.BytesIO()
        torch.save({"state": net.state_dict(), "info": info.to_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())
    return net, info


@torch.no_grad()
def extract_features(feature_fn, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Apply ``feature_fn`` ((B, ...) -> (B, F)) in batches; float64 numpy (N, F)."""
    out = [feature_fn(images[i:i + batch_size]).double().cpu() for i in range(0, len(images),
                                                                              batch_size)]
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------- metrics
def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2).

    tr((cov1 cov2)^{1/2}) is computed as tr((S1^{1/2} cov2 S1^{1/2})^{1/2}) (a symmetric PSD
    matrix, so eigenvalues are real), which avoids the complex round-off of a general sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"shape mismatch: means {mu1.shape} vs {mu2.shape}, covariances "
                         f"{cov1.shape} vs {cov2.shape}")
    s1 = _sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = mu1 - mu2
    return float(max(d @ d + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt, 0.0))


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features (N, F)."""
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, F); got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def fd_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def kid(f1: np.ndarray, f2: np.ndarray, n_subsets: int = 20, subset_size: int = 500,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception-style distance: unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3 over random
    subsets of size min(subset_size, N1, N2); returns (mean, std) over subsets."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 points in each set")
    vals = []
    for _ in range(n_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) \
            - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def _knn_radii(f: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(f, f)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour balls."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set")
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = _pairwise(fake, real)  # (n_fake, n_real)
    precision = (d <= r_real[None]).any(1).mean()
    recall = (d.T <= r_fake[None]).any(1).mean()
    return float(precision), float(recall)


def class_frequencies(predicted: torch.Tensor, num_classes: int,
                      reference: torch.Tensor | None = None) -> dict:
    """Mode coverage from predicted labels: per-class frequencies, total variation to the
    reference frequencies (uniform if none), classes covered (frequency >= half the reference
    share) and the entropy of the frequencies in nats."""
    freq = torch.bincount(predicted.flatten().long(), minlength=num_classes).double()
    freq = freq / freq.sum()
    ref = (torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64) if reference is None
           else torch.bincount(reference.long(), minlength=num_classes).double())
    ref = ref / ref.sum()
    ent = -(freq[freq > 0] * freq[freq > 0].log()).sum()
    return {"frequencies": freq.tolist(), "reference": ref.tolist(),
            "tv": float(0.5 * (freq - ref).abs().sum()),
            "covered": int((freq >= 0.5 * ref).sum()), "entropy": float(ent),
            "max_entropy": math.log(num_classes)}


@torch.no_grad()
def evaluate_samples(samples: torch.Tensor, reference: ImageData, classifier: SmallClassifier,
                     info: ClassifierInfo, k: int = 3, seed: int = 0,
                     reference_features: np.ndarray | None = None,
                     n_bootstrap: int = 10, pr_max: int = 5000) -> dict:
    """Every metric of generated ``samples`` (N, C, H, W) against ``reference`` in one dict:
    ``fd`` (FD-<net>) and ``fd_boot_std`` (its bootstrap spread over the generated set),
    ``kid``/``kid_std``, ``precision``/``recall`` (on equal-size real and generated sets),
    ``classes`` (mode coverage), with ``n``, ``n_reference``, ``reference`` (its name/split)
    and the feature network."""
    classifier.eval()
    samples = samples.float().clamp(-1, 1)
    f_fake = extract_features(classifier.features, samples)
    f_real = (reference_features if reference_features is not None
              else extract_features(classifier.features, reference.images))
    kid_mean, kid_std = kid(f_real, f_fake, seed=seed)
    # Spread of FD from resampling the generated set (with replacement), at the same n.
    rng = np.random.default_rng(seed)
    boots = [fd_from_features(f_real, f_fake[rng.integers(0, len(f_fake), len(f_fake))])
             for _ in range(n_bootstrap)]
    # Precision/recall compare k-NN balls, whose radii shrink as a set grows: use as many real
    # points as generated ones (at most pr_max, which also bounds the O(n^2) distance matrix).
    m = min(len(f_real), len(f_fake), pr_max)
    pr_idx = rng.choice(len(f_real), m, replace=False)
    prec, rec = precision_recall(f_real[pr_idx], f_fake[rng.choice(len(f_fake), m, replace=False)],
                                 k)
    pred = torch.cat([classifier(samples[i:i + 500]).argmax(-1) for i in range(0, len(samples),
                                                                                500)])
    return {"metric": f"FD-{info.name}", "fd": fd_from_features(f_real, f_fake),
            "fd_boot_std": float(np.std(boots)) if boots else float("nan"),
            "kid": kid_mean, "kid_std": kid_std, "precision": prec, "recall": rec,
            "classes": class_frequencies(pred, classifier.head.out_features,
                                         reference.labels),
            "n": len(samples), "n_reference": len(reference), "reference": reference.name,
            "feature_net": info.to_dict()}


# ---------------------------------------------------------------------------- Inception FID
INCEPTION_WEIGHTS_HINT = ("pt_inception-2015-12-05-6726825d.pth (the standard FID Inception "
                          "weights, as distributed by pytorch-fid / torch-fidelity)")


def load_inception_extractor(weights_path):
    """torch-fidelity's FID Inception-v3 loaded from a local weights file (no download).

    Raises FileNotFoundError naming the file when it is absent, ImportError naming the package
    when torch-fidelity is not installed.  The extractor takes uint8 (N, 3, H, W) images.
    """
    path = Path(weights_path) if weights_path else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"Inception FID needs the weights file "
                                f"{weights_path or '(none given)'}"
                                f" ({INCEPTION_WEIGHTS_HINT}); it cannot be downloaded here. "
                                f"Use the offline FD-<net> metric instead, or pass "
                                f"--inception-weights")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise ImportError("Inception FID needs torch-fidelity (pip install torch-fidelity) to "
                          "build "
                          f"the network for {path}") from e
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(path))
    net.eval()

    def features(x_uint8: torch.Tensor) -> torch.Tensor:
        out = net(x_uint8)
        return out[0] if isinstance(out, (tuple, list)) else out

    return features


def to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, 3, H, W) (grey repeated), as FID extractors take."""
    y = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.repeat(1, 3, 1, 1) if y.shape[1] == 1 else y


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights_path=None,
                  extractor=None, batch_size: int = 100) -> dict:
    """FID between two image sets (N, C, H, W) in [-1, 1].

    ``extractor`` (uint8 (B, 3, H, W) -> (B, F)) defaults to the Inception network built from
    ``weights_path`` by :func:`load_inception_extractor`; tests pass a stand-in network.
    """
    if extractor is None:
        extractor = load_inception_extractor(weights_path)
    f_real = extract_features(lambda b: extractor(to_inception_input(b)), real, batch_size)
    f_fake = extract_features(lambda b: extractor(to_inception_input(b)), fake, batch_size)
    return {"metric": "FID" if weights_path else "FD-standin",
            "fd": fd_from_features(f_real, f_fake), "n": len(fake), "n_reference": len(real),
            "weights": str(weights_path) if weights_path else None}
