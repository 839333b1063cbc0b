"""Sample-based metrics of a model's samples against a Gaussian-mixture target q(x_0), any dimension.

* ``nll``: mean -log q(x) over the samples (with ``nll_ref``, the entropy of q, its value for
  samples of q itself; ``nll_excess`` = nll - nll_ref).
* Mode statistics: ``in_mode_share`` is the share of samples within "3 standard deviations" of
  some component, i.e. squared Mahalanobis distance below the chi-square quantile that a sample
  of that component stays under with probability P(|Z| <= 3) = 0.9973 (exactly 3 std in 1-D, the
  same coverage in any dimension).  Occupancy: each sample is assigned to its most responsible
  component (argmax q(k | x)); ``occupancy_tv`` = 1/2 sum_k |o_k - w_k| and ``occupancy_chi2`` =
  sum_k (o_k - w_k)^2 / w_k (the chi-square divergence of the occupancy from the weights; n times
  it is Pearson's statistic, whose p-value is ``occupancy_pvalue``).
* ``mmd``: maximum mean discrepancy with an RBF kernel (a sum over bandwidths 2^-2..2^2 times
  the median inter-point distance of the reference sample), against a fresh sample of q;
  ``mmd2`` is the unbiased MMD^2 (can be slightly negative), ``mmd`` = sqrt(max(mmd2, 0)).
* ``sw2``: sliced Wasserstein-2 over ``n_projections`` random directions, against a fresh sample
  of q of the same size (sorted projections, exact 1-D W2 per direction).

With ``reference=True`` the same distances between two independent samples of q are returned as
``mmd_ref`` and ``sw2_ref``: the noise floor that a perfect model reaches at this sample size.
"""

from __future__ import annotations

import math

import torch
from scipy import stats

from .local_error import mixture_log_prob
from .mixture import GaussianMixture

THREE_SIGMA_COVERAGE = math.erf(3 / math.sqrt(2))   # P(|Z| <= 3) = 0.99730


def _check_samples(mixture: GaussianMixture, samples) -> torch.Tensor:
    x = torch.as_tensor(samples, dtype=mixture.dtype)
    if x.ndim != 2 or x.shape[1] != mixture.D:
        raise ValueError(f"samples must have shape (n, D) with D={mixture.D}; got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples; got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    return x


def mode_statistics(mixture: GaussianMixture, samples) -> dict:
    """In-mode share and occupancy of each component against its weight (see module docstring).

    ``modes_covered`` counts the components that own at least one in-mode sample.
    """
    x = _check_samples(mixture, samples)
    n, D = x.shape
    d = x[:, None, :] - mixture.means[None]                                 # (n, K, D)
    z = torch.einsum("kij,nki->nkj", mixture.eigvecs, d)
    maha2 = (z * z / mixture.eigvals).sum(-1)                               # (n, K)
    radius2 = float(stats.chi2.ppf(THREE_SIGMA_COVERAGE, D))
    in_mode = (maha2 <= radius2).any(-1)
    assign = mixture.responsibilities(x).argmax(-1)
    counts = torch.bincount(assign, minlength=mixture.K).to(torch.float64)
    occ = counts / n
    w = mixture.weights
    chi2 = ((occ - w) ** 2 / w).sum().item()
    pvalue = float(stats.chi2.sf(n * chi2, max(mixture.K - 1, 1))) if mixture.K > 1 else 1.0
    return {"in_mode_share": in_mode.double().mean().item(),
            "occupancy": occ.tolist(),
            "occupancy_tv": 0.5 * (occ - w).abs().sum().item(),
            "occupancy_chi2": chi2, "occupancy_pvalue": pvalue,
            "modes_covered": int(torch.bincount(assign[in_mode], minlength=mixture.K)
                                 .gt(0).sum()),
            "in_mode_radius2": radius2}


def _pairwise_sq(a, b):
    return ((a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2 * a @ b.T).clamp_min(0)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None,
            scales=(0.25, 0.5, 1.0, 2.0, 4.0)) -> tuple[float, float]:
    """Unbiased MMD^2 between samples x (n, D) and y (m, D) with a sum of RBF kernels.

    Bandwidths are ``scales`` times ``bandwidth`` (default: the median distance within y, the
    reference).  Returns (mmd2, bandwidth).
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    dyy = _pairwise_sq(y, y)
    if bandwidth is None:
        m = y.shape[0]
        off = dyy[~torch.eye(m, dtype=torch.bool)]
        bandwidth = off.sqrt().median().item() if off.numel() else 1.0
        bandwidth = bandwidth if bandwidth > 0 else 1.0

    def k(d2):
        return sum(torch.exp(-d2 / (2 * (s * bandwidth) ** 2)) for s in scales)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(_pairwise_sq(x, x)), k(dyy), k(_pairwise_sq(x, y))
    mmd2 = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + \
        (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean()
    return mmd2.item(), bandwidth


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128,
              generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between equal-size samples x, y (n, D)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs equal-size samples; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    D = x.shape[1]
    theta = torch.randn(D, n_projections, dtype=torch.float64, generator=generator)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = (x.to(torch.float64) @ theta).sort(0).values
    py = (y.to(torch.float64) @ theta).sort(0).values
    return ((px - py) ** 2).mean().sqrt().item()


def sample_metrics(mixture: GaussianMixture, samples, generator: torch.Generator | None = None,
                   max_mmd: int = 2000, n_projections: int = 128, reference: bool = False) -> dict:
    """Every sample metric of ``samples`` (n, D) against q = ``mixture`` (see module docstring).

    Args:
        max_mmd: MMD uses at most this many samples (it costs O(n^2)).
        reference: also compute the noise floors ``mmd_ref`` and ``sw2_ref`` (two samples of q).
    Returns a dict of floats: nll, nll_se, nll_ref, nll_excess, in_mode_share, occupancy_tv,
    occupancy_chi2, occupancy_pvalue, modes_covered, mmd, mmd2, sw2, n (plus occupancy, a list).
    """
    x = _check_samples(mixture, samples)
    n = x.shape[0]
    g = generator
    log_q = mixture_log_prob(mixture, x)
    ref = mixture.sample(n, g)
    out = {"n": n, "nll": -log_q.mean().item(),
           "nll_se": (log_q.std() / math.sqrt(n)).item(),
           "nll_ref": -mixture_log_prob(mixture, ref).mean().item()}
    out["nll_excess"] = out["nll"] - out["nll_ref"]
    out.update(mode_statistics(mixture, x))
    m = min(n, max_mmd)
    mmd2, bw = mmd_rbf(x[:m], ref[:m])
    out.update({"mmd2": mmd2, "mmd": math.sqrt(max(mmd2, 0.0)), "mmd_bandwidth": bw,
                "sw2": sliced_w2(x, ref, n_projections, g)})
    if reference:
        ref2 = mixture.sample(n, g)
        r2, _ = mmd_rbf(ref2[:m], ref[:m], bandwidth=bw)
        out["mmd_ref"] = math.sqrt(max(r2, 0.0))
        out["sw2_ref"] = sliced_w2(ref2, ref, n_projections, g)
    return out
