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

WEIGHT_TOL = 1e-6


class GaussianMixture:
    """A K-component mixture of Gaussians in D dimensions (float64 by default).

    Args:
        weights: (K,) positive mixing weights that sum to 1 (within 1e-6; renormalised exactly).
        means: (K, D) component means.  A (K,) tensor is read as D = 1.
        covariances: full (K, D, D), diagonal (K, D) or isotropic (K,) variances.
        dtype, device: where the parameters live.
    """

    def __init__(self, weights, means, covariances, *, dtype=torch.float64, device=None):
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
        if (w <= 0).any():
            raise ValueError(f"weights must be positive; got min weight {w.min().item():.3g}")
        if abs(w.sum().item() - 1.0) > WEIGHT_TOL:
            raise ValueError(f"weights must sum to 1 (within {WEIGHT_TOL}); they sum to {w.sum().item():.9g}")
        w = w / w.sum()
        if c.shape == (K,):
            kind = "isotropic"
            c_full = c[:, None, None] * torch.eye(D, dtype=dtype, device=m.device)
        elif c.shape == (K, D):
            kind = "diagonal"
            c_full = torch.diag_embed(c)
        elif c.shape == (K, D, D):
            kind = "full"
            c_full = c
        else:
            raise ValueError(f"covariances must have shape (K,)=({K},) isotropic, (K, D)=({K}, {D}) "
                             f"diagonal or (K, D, D)=({K}, {D}, {D}) full; got {tuple(c.shape)}")
        if kind != "full" and (c <= 0).any():
            raise ValueError(f"{kind} covariances (variances) must be positive; got min "
                             f"{c.min().item():.3g}")
        asym = (c_full - c_full.transpose(-1, -2)).abs().amax()
        scale = c_full.abs().amax().clamp_min(1e-300)
        if asym > 1e-8 * scale:
            raise ValueError(f"covariances must be symmetric; max |C - C^T| = {asym.item():.3g}")
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
                               self.compact_covariances().to(device, dtype), dtype=dtype,
                               device=device)

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
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        if x.shape[-1] != self.D:
            raise ValueError(f"points must have last dimension D={self.D}; got shape {tuple(x.shape)}")
        return x

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, D={self.D}, {self.kind})"

    # ------------------------------------------------------------------ targets used by the lab
    @classmethod
    def grid(cls, G: int = 7, spacing: float = 0.5, std: float = 0.05, **kw) -> GaussianMixture:
        """G x G equally weighted isotropic Gaussians on a square grid centred at 0 (the paper's 7 x 7 toy).

        The default spacing 0.5 gives the 7 x 7 grid unit per-axis variance.
        """
        if G < 1 or spacing <= 0 or std <= 0:
            raise ValueError(f"grid needs G >= 1, spacing > 0, std > 0; got {G}, {spacing}, {std}")
        c = (torch.arange(G, dtype=torch.float64) - (G - 1) / 2) * spacing
        means = torch.cartesian_prod(c, c).reshape(-1, 2)
        K = G * G
        return cls(torch.full((K,), 1.0 / K), means, torch.full((K,), std ** 2), **kw)

    @classmethod
    def ring(cls, K: int = 8, radius: float = 1.0, std: float = 0.05, **kw) -> GaussianMixture:
        """K equally weighted isotropic Gaussians evenly spaced on a circle."""
        if K < 1 or radius < 0 or std <= 0:
            raise ValueError(f"ring needs K >= 1, radius >= 0, std > 0; got {K}, {radius}, {std}")
        a = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
        means = radius * torch.stack([a.cos(), a.sin()], -1)
        return cls(torch.full((K,), 1.0 / K), means, torch.full((K,), std ** 2), **kw)

    @classmethod
    def two_modes(cls, separation: float = 2.0, std: float = 0.1, weight: float = 0.5,
                  **kw) -> GaussianMixture:
        """A 1-D mixture of two Gaussians at +-separation/2 with the given std."""
        return cls([weight, 1 - weight], [[-separation / 2], [separation / 2]],
                   [std ** 2, std ** 2], **kw)

    @classmethod
    def random(cls, K: int, D: int, generator: torch.Generator | None = None, scale: float = 2.0,
               min_var: float = 0.01, max_var: float = 0.5, kind: str = "full", **kw):
        """A random mixture: Dirichlet(1) weights, uniform means in [-scale, scale]^D, random SPD
        covariances with eigenvalues in [min_var, max_var]."""
        g = generator
        w = torch.distributions.Gamma(1.0, 1.0).rsample((K,)) if g is None else \
            -torch.log(torch.rand(K, generator=g, dtype=torch.float64)).clamp_min(1e-12)
        w = (w / w.sum()).to(torch.float64)
        means = (torch.rand(K, D, generator=g, dtype=torch.float64) * 2 - 1) * scale
        var = min_var + (max_var - min_var) * torch.rand(K, D, generator=g, dtype=torch.float64)
        if kind == "isotropic":
            return cls(w, means, var[:, 0], **kw)
        if kind == "diagonal":
            return cls(w, means, var, **kw)
        q, _ = torch.linalg.qr(torch.randn(K, D, D, generator=g, dtype=torch.float64))
        cov = q @ torch.diag_embed(var) @ q.transpose(-1, -2)
        return cls(w, means, 0.5 * (cov + cov.transpose(-1, -2)), **kw)

    @classmethod
    def product(cls, weights, means, variances, D: int, **kw) -> GaussianMixture:
        """The product of D independent copies of one 1-D mixture (J components): J^D components.

        Its components are all combinations of per-axis components, with product weights and
        diagonal covariances.  Useful to make errors grow with the dimension.
        """
        w1 = torch.as_tensor(weights, dtype=torch.float64)
        m1 = torch.as_tensor(means, dtype=torch.float64).flatten()
        v1 = torch.as_tensor(variances, dtype=torch.float64).flatten()
        J = w1.numel()
        if m1.numel() != J or v1.numel() != J:
            raise ValueError(f"product needs J weights, means and variances; got {J}, {m1.numel()}, "
                             f"{v1.numel()}")
        if D < 1 or J ** D > 1_000_000:
            raise ValueError(f"product mixture with J={J}, D={D} has {J ** D} components; keep it "
                             "between 1 and 1e6")
        idx = torch.tensor(list(itertools.product(range(J), repeat=D)), dtype=torch.int64)
        w = w1[idx].prod(-1)
        return cls(w / w.sum(), m1[idx], v1[idx], **kw)


def _as_tensor(name, value, dtype, device):
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
