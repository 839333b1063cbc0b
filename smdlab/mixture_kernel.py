"""A discrete-latent reverse kernel trained by exact likelihood: the mixture posterior denoiser.

SMD's kernel is p(x_s | x_t) = E_z N(x_s; mu(x_t, z), s2 I) with a continuous latent z = g(x_t,
eta); its likelihood has no closed form, so the paper trains a Jensen bound (which lets the model
ignore z) and the lab's alternatives train a K-sample bound or an energy score.  With a
*discrete* latent k in 1..K whose probabilities the network outputs, the likelihood is a finite
sum and can be trained exactly.  This module's kernel models the clean point's posterior as

    p(x_0 | x_t) = sum_k w_k(x_t, t) N(x_0; m_k(x_t, t), v_k(x_t, t) I)              (1)

(one network, a head of K (D + 2) outputs: K clean-point predictions in the parameterisation's
space, K logits, K log-variances), and derives every reverse step from it by the forward
posterior q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, beta~ I):

    p(x_s | x_t) = sum_k w_k N(x_s; c0 m_k + ct x_t, (beta~ + c0^2 v_k) I)              (2)

(on the jump to 0: c0 = 1, ct = 0, beta~ = 0, the components of (1) themselves: the last jump's
variance is learned, not chosen).

Why (2) can be exact.  For a Gaussian-mixture target, q(x_0 | x_t) = sum_k r_k(x_t)
N(x_0; a_k(x_t), Lambda_k) (:mod:`smdlab.exact`); with K >= the target's components and
isotropic Lambda_k (the lab's grid and ring targets) (1) can equal it, and then (2) equals the
exact reverse transition q(x_s | x_t) for every jump t -> s of every chain: the construction of
E5 (SMD's expressivity) with a discrete latent.

Training (:func:`posterior_nll`): maximum likelihood of (1), -log p(x_0 | x_t) with
(x_0, x_t) ~ q, per example and dimension, at the trained jumps' steps t.  Its expectation is
E KL(q(x_0 | x_t) || p(x_0 | x_t)) + H, and by the data-processing inequality (x_s given x_t is
x_0 passed through the same Gaussian channel under q and under p) the local error of (2) on any
jump from t is at most that KL: minimising the loss minimises an upper bound on every local
error, with no latent sampling and no bound gap.  The objective is ``Objective("nll", chain)``
of :mod:`smdlab.objectives`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import parameterization as P
from .denoisers import _Denoiser
from .distributions import LatentMixture

#: Smallest clean-point variance v_k of a component (keeps the likelihood finite).
VAR_FLOOR = 1e-6
#: log v_k at a zero network output (v = e^-4 ~ 0.018: a component about 0.14 wide).
LOG_VAR_OFFSET = -4.0


class MixtureDenoiser(_Denoiser):
    """The mixture posterior kernel (1)-(2) of the module docstring.

    Args:
        net: backbone ``net(x_t, t) -> (N, K * (D + 2))`` (e.g. a
            :class:`~smdlab.nets.VectorMLP` with ``out_dim=K * (D + 2)``).
        schedule: the chain it is trained on (its root indexes t).
        dim: data dimension D (vectors only).
        n_components: K.
        parameterization: how each component's clean point is read from the head (``eps``, ``x0``
            or ``v``, as for :class:`~smdlab.denoisers.GaussianDenoiser`).
    """

    is_gaussian = False
    has_latent = False          # its step density is exact: no latent draws are needed

    def __init__(self, net: nn.Module, schedule, dim: int, n_components: int,
                 parameterization: str = "v", name: str = "mixture"):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"MixtureDenoiser is for vectors: dim must be an int >= 1; got {dim!r}")
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be an int >= 1; got {n_components!r}")
        super().__init__(net, schedule, dim, parameterization, "beta_tilde", "clipped")
        self.K, self.name = n_components, name
        # Each component's variance is beta~ + c0^2 v_k (the jump to 0: v_k, learned), not one
        # beta-tilde rule: ``variance`` names that; final_jump_variance (the clipped beta-tilde)
        # is only what DDIM with eta > 0 uses on its last jump.
        self.variance = "mixture"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eta=None) -> torch.Tensor:
        """The raw head (N, K * (D + 2)) for x_t (N, D) at root steps t (N,)."""
        return self.net(x_t, t)

    def _output(self, x, tv, eta, generator):
        return self.net(x, tv)

    def components(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor | None = None):
        """(log w (N, K), m (N, K, D), v (N, K)) of (1) at x_t (N, D), root steps t (N,), in the
        network's dtype (``out``: the head, if already computed)."""
        N, D, K = x_t.shape[0], self.D, self.K
        if out is None:
            out = self.net(x_t, t)
        if out.shape != (N, K * (D + 2)):
            raise ValueError(f"{self.name}: the network must output (N, K * (D + 2)) = "
                             f"({N}, {K * (D + 2)}); got {tuple(out.shape)}")
        h = out.reshape(N, K, D + 2)
        m = P.to_x0(self.parameterization, h[..., :D], x_t[:, None, :].to(h.dtype),
                    self.log_alpha_bars[t])
        log_w = torch.log_softmax(h[..., D], -1)
        v = VAR_FLOOR + torch.exp((h[..., D + 1] + LOG_VAR_OFFSET).clamp(max=20.0))
        return log_w, m, v

    def _components64(self, x_t: torch.Tensor, t: int):
        N = x_t.shape[0]
        p = self._anchor()
        tv = torch.full((N,), t, dtype=torch.long, device=p.device)
        x = x_t.reshape(N, self.D)
        log_w, m, v = self.components(x.to(p.dtype), tv)
        log_w = log_w.to(torch.float64)
        return log_w - torch.logsumexp(log_w, -1, keepdim=True), m.to(torch.float64), \
            v.to(torch.float64)

    @staticmethod
    def _mean(log_w, m, shape):
        return (log_w.exp()[..., None] * m).sum(1).reshape(shape)

    @torch.no_grad()
    def denoise(self, x_t, t, eta=None, generator=None):
        """E_p[x_0 | x_t] = sum_k w_k m_k (x_t's shape, float64); eta is ignored."""
        t = P.check_root_step(self.schedule, t, self.name)
        if t == 0:
            raise ValueError(f"{self.name}: denoise needs a root step t >= 1; got t=0")
        log_w, m, _ = self._components64(x_t, t)
        return self._mean(log_w, m, x_t.shape)

    def _jump(self, x_t, t, s):
        """(the step (2), the posterior mean) from one evaluation of the network."""
        t, s, lt, ls = self.jump(t, s)
        log_w, m, v = self._components64(x_t, t)
        c0, ct, beta_tilde, _ = P.posterior_coefficients(lt, ls)
        x64 = x_t.reshape(x_t.shape[0], self.D).to(torch.float64)
        means = c0.item() * m + ct.item() * x64[:, None, :]
        dist = LatentMixture(means, beta_tilde.item() + c0.item() ** 2 * v, log_w)
        return dist, self._mean(log_w, m, x_t.shape)

    @torch.no_grad()
    def distribution(self, x_t, t, s, generator=None, n_latent=None) -> LatentMixture:
        """The step (2): a K-component Gaussian mixture with weights (exact density)."""
        return self._jump(x_t, t, s)[0]

    @torch.no_grad()
    def step(self, x_t, t, s, generator=None, x0_hook=None):
        """(step distribution, x0_hat = the posterior mean), one network evaluation;
        ``x0_hook`` is refused: the step goes through K clean points, not one."""
        if x0_hook is not None:
            raise ValueError(f"{self.name}: x0_hook is not supported (the step mixes K clean-point "
                             "predictions)")
        return self._jump(x_t, t, s)


def posterior_nll(model, den: MixtureDenoiser, x0: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor):
    """-log p(x_0 | x_t) of (1) per example and dimension (mean over the batch), and metrics."""
    D = den.D
    out = model(x_t, t).to(x0.dtype)
    log_w, m, v = den.components(x_t, t, out)
    d2 = (x0[:, None, :] - m).square().sum(-1)
    comp = -0.5 * (d2 / v + D * (math.log(2 * math.pi) + v.log()))
    nll = -torch.logsumexp(log_w + comp, -1) / D
    with torch.no_grad():
        used = torch.exp(-(log_w.exp() * log_w).sum(-1)).mean()     # perplexity of the weights
    return nll.mean(), {"components_used": float(used)}


def build_mixture_mlp(dim: int, n_components: int, **mlp) -> nn.Module:
    """A :class:`~smdlab.nets.VectorMLP` with the K (D + 2)-wide head of (1); the head starts
    at zero weights for the logits and log-variances (equal weights, v = e^-4) and small random
    clean points, so training starts from a broad, even mixture."""
    from .nets import VectorMLP

    net = VectorMLP(dim, out_dim=n_components * (dim + 2), **mlp)
    with torch.no_grad():
        w = net.out.weight.view(n_components, dim + 2, -1)
        w[:, dim:].zero_()
        net.out.bias.view(n_components, dim + 2)[:, dim:].zero_()
    return net


__all__ = ["MixtureDenoiser", "posterior_nll", "build_mixture_mlp", "VAR_FLOOR"]
