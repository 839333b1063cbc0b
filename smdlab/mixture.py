"""Gaussian-mixture targets q(x_0) = sum_k w_k N(m_k, C_k).

Covariances are stored full (K, D, D) together with their eigendecomposition C_k = U_k diag(l_k) U_k^T,
which is what makes every diffusion quantity of the mixture closed form and numerically stable
(see :mod:`smdlab.exact`).  Densities and sampling go through ``torch.distributions``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from . import fastmath
from .schedules import _check_real, as_integer

WEIGHT_TOL = 1e-6
COVARIANCE_TYPES = ("full", "diagonal", "isotropic")
RANDOM_KINDS = COVARIANCE_TYPES


class ExtremeValueError(ValueError, OverflowError):
    """A finite input too large or too small for the exact engine's floating-point range.

    Squared distances over variances must stay finite (see :func:`value_limits`); rather than
    return NaN, smdlab refuses such inputs.  It is both an OverflowError and a ValueError.
    """


def value_limits(dtype: torch.dtype = torch.float64) -> tuple[float, float, float]:
    """(max |coordinate|, min variance, max variance) the exact engine computes with in ``dtype``.

    With |mean|, |x| <= L = finfo.max^(1/5) and variances in [L^-2, L^2], every squared
    Mahalanobis distance is at most 4 L^4 = 4 finfo.max^(4/5), far from overflow, and every
    log-density finite (float64: L = 1.1e61, variances 8e-123 .. 1.3e122).
    """
    L = torch.finfo(dtype).max ** 0.2
    return L, L ** -2, L ** 2


def check_points(x, name: str, D: int, dtype, device, ndim: int | None = 2) -> torch.Tensor:
    """Points x as a tensor of ``dtype`` with last dimension D, finite and within value_limits.

    ndim=2 requires (N, D); ndim=None accepts (..., D).
    """
    try:
        x = torch.as_tensor(x, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a numeric array (N, D): {e}") from e
    if (ndim is not None and x.ndim != ndim) or x.ndim < 1 or x.shape[-1] != D:
        want = "(N, D)" if ndim == 2 else "(..., D)"
        raise ValueError(f"{name} must have shape {want} with last dimension D={D}; got shape "
                         f"{tuple(x.shape)}")
    if not fastmath.all_finite(x):
        raise ValueError(f"{name} must be finite; got NaN or inf")
    L = value_limits(x.dtype)[0]
    if x.numel() and x.abs().max() > L:
        raise ExtremeValueError(f"{name}: |value| {x.abs().max().item():.3g} exceeds {L:.3g}, the "
                                f"largest coordinate smdlab computes with in {x.dtype} (squared "
                                f"distances would overflow)")
    return x


class GaussianMixture:
    """A K-component mixture of Gaussians in D dimensions (float64 by default).

    Args:
        weights: (K,) positive mixing weights that sum to 1 (within 1e-6; renormalised exactly).
        means: (K, D) component means, D >= 1.  A (K,) tensor is read as D = 1.
        covariances: full (K, D, D), diagonal (K, D) or isotropic (K,) variances.
        covariance_type: ``"full"``, ``"diagonal"`` or ``"isotropic"`` to say which of these
            covariances is; None infers it from the shape.  The one ambiguous shape is a square
            (K, D) array with K = D >= 2 that is symmetric: it could be K diagonals or one (D, D)
            matrix meant for every component, so inference refuses it (a non-symmetric square
            array can only be diagonals and is read so).
        dtype, device: where the parameters live (dtype must be a floating-point type).

    Means must satisfy |m| <= L and covariance eigenvalues lie in [L^-2, L^2] (see
    :func:`value_limits`); outside that range :class:`ExtremeValueError` is raised instead of
    NaN results later.
    """

    def __init__(self, weights, means, covariances, *, covariance_type: str | None = None,
                 dtype=torch.float64, device=None):
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch dtype; got {dtype!r}")
        if covariance_type is not None and covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"unknown covariance_type {covariance_type!r}; choose one of "
                             f"{COVARIANCE_TYPES} or None")
        w = _as_tensor("weights", weights, dtype, device)
        m = _as_tensor("means", means, dtype, device)
        c = _as_tensor("covariances", covariances, dtype, device)
        if w.ndim != 1 or w.numel() < 1:
            raise ValueError(f"weights must be a non-empty 1-D tensor (K,); got shape {tuple(w.shape)}")
        K = w.numel()
        if m.ndim == 1:
            m = m[:, None]
        if m.ndim != 2 or m.shape[0] != K:
            raise ValueError(f"means must have shape (K, D) = ({K}, D) to match {K} weights; "
                             f"got shape {tuple(m.shape)}")
        D = m.shape[1]
        if D < 1:
            raise ValueError(f"means must have at least one dimension: shape (K, D) with D >= 1; "
                             f"got shape {tuple(m.shape)}")
        L, vmin, vmax = value_limits(dtype)
        if m.abs().max() > L:
            raise ExtremeValueError(f"means: |value| {m.abs().max().item():.3g} exceeds {L:.3g}, the "
                                    f"largest coordinate smdlab computes with in {dtype}")
        if (w <= 0).any():
            raise ValueError(f"weights must be positive; got min weight {w.min().item():.3g}")
        if abs(w.sum().item() - 1.0) > WEIGHT_TOL:
            raise ValueError(f"weights must sum to 1 (within {WEIGHT_TOL}); they sum to {w.sum().item():.9g}")
        w = w / w.sum()
        shapes = {"isotropic": (K,), "diagonal": (K, D), "full": (K, D, D)}
        if covariance_type is not None:
            kind = covariance_type
            if c.shape != shapes[kind]:
                raise ValueError(f"covariances of covariance_type={kind!r} must have shape "
                                 f"{shapes[kind]}; got {tuple(c.shape)}")
        else:
            kind = next((k for k, shape in shapes.items() if c.shape == shape), None)
            if kind is None:
                raise ValueError(f"covariances must have shape (K,)=({K},) isotropic, (K, D)=({K}, "
                                 f"{D}) diagonal or (K, D, D)=({K}, {D}, {D}) full; got "
                                 f"{tuple(c.shape)}")
            if kind == "diagonal" and K == D >= 2 and torch.equal(c, c.T):
                raise ValueError(f"covariances of shape ({K}, {D}) with K = D = {D} are ambiguous: "
                                 f"{K} diagonal variances or one ({D}, {D}) matrix? Pass "
                                 f"covariance_type='diagonal', or a (K, D, D) tensor for full "
                                 f"covariances")
        if kind == "isotropic":
            c_full = c[:, None, None] * torch.eye(D, dtype=dtype, device=m.device)
        elif kind == "diagonal":
            c_full = torch.diag_embed(c)
        else:
            c_full = c
        if kind != "full" and (c <= 0).any():
            raise ValueError(f"{kind} covariances (variances) must be positive; got min "
                             f"{c.min().item():.3g}")
        # Symmetry relative to each component's own scale: a tiny component next to a wide one
        # must not pass with a large relative asymmetry.
        asym = (c_full - c_full.transpose(-1, -2)).abs().amax((-2, -1))
        scale = c_full.abs().amax((-2, -1)).clamp_min(torch.finfo(dtype).tiny)
        if (asym > 1e-8 * scale).any():
            k = int((asym / scale).argmax())
            raise ValueError(f"covariances must be symmetric; component {k} has max |C - C^T| = "
                             f"{asym[k].item():.3g} (relative {(asym[k] / scale[k]).item():.3g})")
        c_full = 0.5 * (c_full + c_full.transpose(-1, -2))
        if kind == "full":
            evals, evecs = torch.linalg.eigh(c_full)
        else:
            # Axis-aligned: keep the eigenbasis the identity (eigh would sort and permute it), so
            # that the exact engine can skip every rotation.
            evals = torch.diagonal(c_full, dim1=-2, dim2=-1).clone()
            evecs = torch.eye(D, dtype=dtype, device=m.device).expand(K, D, D).clone()
        if (evals <= 0).any():
            k = int((evals <= 0).any(-1).nonzero()[0])
            raise ValueError(f"covariances must be positive definite; component {k} has smallest "
                             f"eigenvalue {evals[k].min().item():.3g}")
        if evals.min() < vmin or evals.max() > vmax:
            raise ExtremeValueError(f"covariances: eigenvalues must lie in [{vmin:.3g}, {vmax:.3g}] "
                                    f"for {dtype}; got {evals.min().item():.3g} .. "
                                    f"{evals.max().item():.3g}")
        self.weights, self.means, self.covariances = w, m, c_full
        self.eigvals, self.eigvecs = evals, evecs
        self.kind = kind
        self.axis_aligned = kind != "full"
        self.K, self.D = K, D

    # ------------------------------------------------------------------ basic quantities
    @property
    def dtype(self):
        return self.means.dtype

    @property
    def device(self):
        return self.means.device

    def to(self, device=None, dtype=None) -> GaussianMixture:
        dtype = dtype or self.dtype
        return GaussianMixture(self.weights.to(device, dtype), self.means.to(device, dtype),
                               self.compact_covariances().to(device, dtype),
                               covariance_type=self.kind, dtype=dtype, device=device)

    def compact_covariances(self) -> torch.Tensor:
        """Covariances in the form they were given: (K,), (K, D) or (K, D, D)."""
        if self.kind == "isotropic":
            return self.eigvals[:, 0]
        if self.kind == "diagonal":
            return self.eigvals
        return self.covariances

    def distribution(self) -> MixtureSameFamily:
        comp = MultivariateNormal(self.means, scale_tril=self._scale_tril())
        return MixtureSameFamily(Categorical(probs=self.weights), comp, validate_args=False)

    def _scale_tril(self) -> torch.Tensor:
        # U diag(sqrt l) is a valid square root; turn it into a Cholesky factor through QR so that
        # tiny variances (1e-8) never fail a Cholesky of the reconstructed matrix.
        root = self.eigvecs * self.eigvals.sqrt()[..., None, :]
        r = torch.linalg.qr(root.transpose(-1, -2), mode="r").R
        L = r.transpose(-1, -2)
        sign = torch.sign(torch.diagonal(L, dim1=-2, dim2=-1))
        return L * sign[..., None, :]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) for x of shape (..., D)."""
        x = self._check_points(x)
        return self.distribution().log_prob(x)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; m_k, C_k) for x (N, D) -> (N, K), through the eigenbasis."""
        x = self._check_points(x)
        return gaussian_log_prob_eig(x[..., None, :], self.means, self.eigvals, self.eigvecs)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """q(k | x) as (N, K) probabilities."""
        logits = self.component_log_prob(x) + self.weights.log()
        return torch.softmax(logits, dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_components: bool = False):
        """n samples (n, D); optionally also the component index of each (n,)."""
        n = as_integer(n, "n")
        if n < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        if n == 0:   # torch.multinomial refuses zero draws
            x = torch.empty(0, self.D, dtype=self.dtype, device=self.device)
            k = torch.empty(0, dtype=torch.int64, device=self.device)
            return (x, k) if return_components else x
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.D, dtype=self.dtype, device=self.device, generator=generator)
        root = self.eigvecs * self.eigvals.sqrt()[..., None, :]
        x = self.means[k] + torch.einsum("nij,nj->ni", root[k], eps)
        return (x, k) if return_components else x

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        mu = self.mean()
        d = self.means - mu
        return torch.einsum("k,kij->ij", self.weights, self.covariances) + \
            torch.einsum("k,ki,kj->ij", self.weights, d, d)

    def _check_points(self, x):
        return check_points(x, "points", self.D, self.dtype, self.device, ndim=None)

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, D={self.D}, {self.kind})"

    # ------------------------------------------------------------------ targets used by the lab
    @classmethod
    def grid(cls, G: int = 7, spacing: float = 0.5, std: float = 0.05, **kw) -> GaussianMixture:
        """G x G equally weighted isotropic Gaussians on a square grid centred at 0 (the paper's 7 x 7 toy).

        The default spacing 0.5 gives the 7 x 7 grid unit per-axis variance.
        """
        G = as_integer(G, "G")
        if G < 1:
            raise ValueError(f"grid needs G >= 1; got G={G}")
        spacing, std = _check_real(spacing, "spacing", 0.0), _check_real(std, "std", 0.0)
        c = (torch.arange(G, dtype=torch.float64) - (G - 1) / 2) * spacing
        means = torch.cartesian_prod(c, c).reshape(-1, 2)
        K = G * G
        return cls(torch.full((K,), 1.0 / K), means, torch.full((K,), std ** 2), **kw)

    @classmethod
    def ring(cls, K: int = 8, radius: float = 1.0, std: float = 0.05, **kw) -> GaussianMixture:
        """K equally weighted isotropic Gaussians evenly spaced on a circle."""
        K = as_integer(K, "K")
        if K < 1:
            raise ValueError(f"ring needs K >= 1; got K={K}")
        radius = _check_real(radius, "radius", 0.0, low_open=False)
        std = _check_real(std, "std", 0.0)
        a = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
        means = radius * torch.stack([a.cos(), a.sin()], -1)
        return cls(torch.full((K,), 1.0 / K), means, torch.full((K,), std ** 2), **kw)

    @classmethod
    def two_modes(cls, separation: float = 2.0, std: float = 0.1, weight: float = 0.5,
                  **kw) -> GaussianMixture:
        """A 1-D mixture of two Gaussians at +-separation/2 with the given std."""
        separation = _check_real(separation, "separation")
        std = _check_real(std, "std", 0.0)
        weight = _check_real(weight, "weight", 0.0, 1.0)
        return cls([weight, 1 - weight], [[-separation / 2], [separation / 2]],
                   [std ** 2, std ** 2], **kw)

    @classmethod
    def random(cls, K: int, D: int, generator: torch.Generator | None = None, scale: float = 2.0,
               min_var: float = 0.01, max_var: float = 0.5, kind: str = "full", **kw):
        """A random mixture: Dirichlet(1) weights, uniform means in [-scale, scale]^D, random SPD
        covariances with eigenvalues in [min_var, max_var].  kind: "full", "diagonal" or
        "isotropic"."""
        K, D = as_integer(K, "K"), as_integer(D, "D")
        if K < 1 or D < 1:
            raise ValueError(f"random mixture needs K >= 1 and D >= 1; got K={K}, D={D}")
        if kind not in RANDOM_KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {RANDOM_KINDS}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {generator!r}")
        scale = _check_real(scale, "scale", 0.0, low_open=False)
        min_var = _check_real(min_var, "min_var", 0.0)
        max_var = _check_real(max_var, "max_var", 0.0)
        if min_var > max_var:
            raise ValueError(f"need min_var <= max_var; got min_var={min_var}, max_var={max_var}")
        g = generator
        w = torch.distributions.Gamma(1.0, 1.0).rsample((K,)) if g is None else \
            -torch.log(torch.rand(K, generator=g, dtype=torch.float64)).clamp_min(1e-12)
        w = (w / w.sum()).to(torch.float64)
        means = (torch.rand(K, D, generator=g, dtype=torch.float64) * 2 - 1) * scale
        var = min_var + (max_var - min_var) * torch.rand(K, D, generator=g, dtype=torch.float64)
        if kind == "isotropic":
            return cls(w, means, var[:, 0], covariance_type="isotropic", **kw)
        if kind == "diagonal":
            return cls(w, means, var, covariance_type="diagonal", **kw)
        q, _ = torch.linalg.qr(torch.randn(K, D, D, generator=g, dtype=torch.float64))
        cov = q @ torch.diag_embed(var) @ q.transpose(-1, -2)
        return cls(w, means, 0.5 * (cov + cov.transpose(-1, -2)), **kw)

    @classmethod
    def product(cls, weights, means, variances, D: int, **kw) -> GaussianMixture:
        """The product of D independent copies of one 1-D mixture (J components): J^D components.

        Its components are all combinations of per-axis components, with product weights and
        diagonal covariances.  Useful to make errors grow with the dimension.
        """
        w1 = _as_tensor("weights", weights, torch.float64, None).flatten()
        m1 = _as_tensor("means", means, torch.float64, None).flatten()
        v1 = _as_tensor("variances", variances, torch.float64, None).flatten()
        D = as_integer(D, "D")
        J = w1.numel()
        if m1.numel() != J or v1.numel() != J:
            raise ValueError(f"product needs J weights, means and variances; got {J}, {m1.numel()}, "
                             f"{v1.numel()}")
        if J < 1 or D < 1 or J ** D > 1_000_000:
            raise ValueError(f"product mixture with J={J}, D={D} has {J ** D} components; keep it "
                             "between 1 and 1e6")
        idx = torch.tensor(list(itertools.product(range(J), repeat=D)), dtype=torch.int64)
        w = w1[idx].prod(-1)
        return cls(w / w.sum(), m1[idx], v1[idx], covariance_type="diagonal", **kw)


def _as_tensor(name, value, dtype, device):
    if isinstance(value, torch.Tensor) and (value.dtype.is_complex or value.dtype == torch.bool):
        raise ValueError(f"{name} must be numeric array-like of real numbers; got dtype {value.dtype}")
    try:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be numeric array-like: {e}") from e
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite; got NaN or inf")
    return t


def gaussian_log_prob_eig(x, mean, evals, evecs):
    """log N(x; mean, U diag(evals) U^T), broadcasting x and mean over leading dims.

    x, mean: (..., D); evals: (..., D); evecs: (..., D, D) (columns are eigenvectors).
    """
    d = x - mean
    z = torch.einsum("...ij,...i->...j", evecs, d)  # U^T d
    maha = (z * z / evals).sum(-1)
    D = x.shape[-1]
    return -0.5 * (maha + evals.log().sum(-1) + D * math.log(2 * math.pi))
