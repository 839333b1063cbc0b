"""exp and logsumexp for the exact half's evaluations, the same values as torch's, faster.

On CPU, ``torch.exp`` takes a slow path for arguments below the underflow threshold: measured on
one thread (float64, 2M elements), arguments spread over [-2000, 0] take 49 ms against 1.3 ms
for arguments inside [-700, 0], and a row of ``-inf`` takes 11 ms.  The exact half meets such
arguments all the time: Gaussian densities of narrow components evaluated far from their means
(the grid route's normal matrices) and log-sum-exps over many components of which most lie
hundreds of nats below the largest (E3's 256-component posteriors: 121 of its 205 s were
``torch.logsumexp``).

:func:`exp` returns exactly ``torch.exp(x)`` (bit for bit: the arguments whose result is a
subnormal number are recomputed by ``torch.exp`` itself, and those below the underflow limit are
0 in both); :func:`logsumexp` returns ``torch.logsumexp(x, dim)`` up to terms below
``exp(-700)`` relative to the largest, which cannot change a double sum that already holds 1
(in the tests, bit for bit).  Neither is meant for training code (the objectives keep torch's
functions, whose gradients they were tuned with).
"""

from __future__ import annotations

import math

import torch

# Below FAST_MIN the fast route clamps; below ZERO_BELOW exp underflows to exactly 0.
_FAST_MIN = {torch.float64: -700.0, torch.float32: -80.0}
_ZERO_BELOW = {torch.float64: -746.0, torch.float32: -105.0}


def _limits(x: torch.Tensor) -> tuple[float, float]:
    return _FAST_MIN.get(x.dtype, -80.0), _ZERO_BELOW.get(x.dtype, -105.0)


def _any(mask: torch.Tensor) -> bool:
    """mask.any(), faster: a bool tensor's any() is a slow reduction on CPU (0.85 ms against
    0.013 ms for the max of its bytes, 1M elements)."""
    return mask.numel() > 0 and bool(mask.reshape(-1).view(torch.uint8).amax())


def all_finite(x: torch.Tensor) -> bool:
    """``bool(torch.isfinite(x).all())``, 4x faster on CPU (measured on 131k doubles: 0.08 ms
    against 0.35): x * 0 is 0 exactly where x is finite and NaN where it is not."""
    return bool((x * 0).sum() == 0)


def exp(x: torch.Tensor) -> torch.Tensor:
    """``torch.exp(x)`` (a new tensor, the same values bit for bit), without torch's slow path
    for arguments that underflow.  Not for autograd (it works in place); integer tensors go to
    torch."""
    if not x.is_floating_point():
        return torch.exp(x)
    return exp_(x.clone())


def exp_(x: torch.Tensor) -> torch.Tensor:
    """:func:`exp` in place: ``x`` becomes ``torch.exp(x)`` (bit for bit) and is returned."""
    if not x.is_contiguous():
        return x.copy_(exp_(x.contiguous()))
    lo, zero = _limits(x)
    below = x < lo
    if not _any(below):
        return x.exp_()
    flat = x.reshape(-1)
    band = (below & (x > zero)).reshape(-1)    # results that are subnormal (or nearly): exactly
    idx = band.nonzero()[:, 0] if _any(band) else None
    exact = flat[idx].exp() if idx is not None else None
    x.clamp_min_(lo).exp_().masked_fill_(below, 0.0)
    if idx is not None:
        flat[idx] = exact                       # (flat is a view: x is contiguous)
    return x


def logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch.logsumexp(x, dim)`` (rows of -inf give -inf, +inf gives +inf, NaN propagates),
    with the terms more than 700 nats (float32: 80) below their row's largest clamped there
    instead of underflowing on torch's slow path."""
    if not x.is_floating_point() or x.numel() == 0:
        return torch.logsumexp(x, dim)          # (integers are promoted; an empty sum is -inf)
    lo, _ = _limits(x)
    m = x.amax(dim, keepdim=True)
    shift = m.masked_fill(~torch.isfinite(m), 0.0)
    s = (x - shift).clamp_min_(lo).exp_().sum(dim).log_()
    m, shift = m.squeeze(dim), shift.squeeze(dim)
    return s.add_(shift).masked_fill_(m == -math.inf, -math.inf)
