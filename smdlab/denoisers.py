"""Learned reverse kernels: the Gaussian (DDPM) kernel and the soft mixture denoising (SMD) kernel.

Both wrap a backbone ``net(x_t, t, z=None)`` (vectors: :class:`smdlab.nets.VectorMLP`; images: a
U-Net) and implement the :class:`smdlab.kernels.ReverseKernel` contract, so the samplers and the
error lab treat them exactly like the oracle kernels.  Both are ``nn.Module`` s (train them with
:func:`smdlab.training.train` and the losses of :mod:`smdlab.objectives`).

Every step t -> s (root steps, any s < t, so any respaced chain works) goes through a clean-point
prediction x0_hat and the DDPM posterior q(x_s | x_t, x_0 = x0_hat) (SMD.md, "Discrete-time
diffusion"):

    mean = c0 x0_hat + ct x_t,
    c0 = sqrt(abar_s) b / (1 - abar_t),  ct = a (1 - abar_s) / (1 - abar_t),
    a^2 = abar_t / abar_s,  b = 1 - a^2,
    variance "beta_tilde" = (1 - abar_s) / (1 - abar_t) b  (the posterior's), or "beta" = b.

beta_tilde is 0 on the last jump (s = 0).  ``final_variance`` says what replaces it:
  * ``"beta1"`` (default): beta_1 of the root chain, a nearly deterministic last step, as DDPM
    samplers take it (they return the mean there).  A latent kernel needs this: SMD can only be
    exact when its variance is below the narrowest component of the true posterior (SMD.md).
  * ``"clipped"``: :meth:`NoiseSchedule.kernel_variance`, the improved-DDPM clip to the variance of
    the jump above (the error lab's convention for its best-Gaussian kernels); on a 4-step linear
    chain that is a variance of about 0.4, which blurs whatever the kernel predicts.
  * a float: that variance (E6-E8 use the data's within-mode variance, the largest final
    variance under which a latent kernel can still be exact).
E6-E8 use one rule for every learned kernel and for the oracle DDPM reference (like for like).

Parameterisations (what the network outputs), with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps:
  * ``eps``: x0_hat = (x_t - sqrt(1 - abar_t) out) / sqrt(abar_t);
  * ``x0``:  x0_hat = out;
  * ``v``:   v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0,
             so x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) out.

The SMD kernel (SMD.md, "Soft mixture denoising") draws eta ~ N(0, I) (shape ``eta_shape``), makes
z = gen(x_t, eta, t) and evaluates the backbone with z, so the step is the continuous mixture
p(x_s | x_t) = E_eta N(mean(x_t, z(eta)), sigma^2 I).  Sampling draws a fresh eta at every step;
``freeze_eta=True`` (or :meth:`SMDDenoiser.with_frozen_eta`) holds one fixed eta for every step and
every point: the deterministic-latent ablation.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .distributions import Gaussian, LatentMixture
from .kernels import ReverseKernel
from .schedules import NoiseSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")
VARIANCES = ("beta_tilde", "beta")
FINAL_VARIANCES = ("beta1", "clipped")


class _Denoiser(nn.Module, ReverseKernel):
    """What both learned kernels share: schedule bookkeeping, parameterisations, the step mean."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, shape, parameterization: str,
                 variance: str, final_variance: str = "beta1"):
        nn.Module.__init__(self)
        if isinstance(final_variance, (int, float)) and not isinstance(final_variance, bool):
            if not final_variance > 0:
                raise ValueError(f"a numeric final_variance must be positive; got {final_variance}")
            final_variance = float(final_variance)
        elif final_variance not in FINAL_VARIANCES:
            raise ValueError(f"unknown final_variance {final_variance!r}; choose one of "
                             f"{FINAL_VARIANCES} or a positive float")
        self.final_variance = final_variance
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of "
                             f"{PARAMETERIZATIONS}")
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
        self.net = net
        self.schedule = schedule     # the chain it is trained on and sampled on by default
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.D = math.prod(self.shape)
        self.dim = self.shape[0] if len(self.shape) == 1 else self.shape
        self.parameterization, self.variance = parameterization, variance
        # float64 log abar of the root chain; not saved (it is a function of the schedule).
        self.register_buffer("_log_ab", schedule.root.log_alpha_bars.clone(), persistent=False)

    # ------------------------------------------------------------ schedule helpers (batched)
    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t for root steps t (N,), float64."""
        return self._log_ab[t].exp()

    def step_coefficients(self, t: torch.Tensor, s: torch.Tensor):
        """(c0, ct, variance) of the jumps t -> s, each (N,) float64 (see the module docstring)."""
        lt, ls = self._log_ab[t], self._log_ab[s]
        if not (ls > lt).all():
            raise ValueError("every jump needs s < t")
        om_t, om_s = -torch.expm1(lt), -torch.expm1(ls)
        b = -torch.expm1(lt - ls)
        c0 = (0.5 * ls).exp() * b / om_t
        ct = (0.5 * (lt - ls)).exp() * om_s / om_t
        if self.variance == "beta":
            var = b
        else:
            var = om_s / om_t * b
            if (s == 0).any():
                var = var.clone()
                if isinstance(self.final_variance, float):
                    var[s == 0] = self.final_variance
                elif self.final_variance == "beta1":
                    var[s == 0] = -torch.expm1(self._log_ab[1])
                else:
                    root = self.schedule.root
                    for tt in torch.unique(t[s == 0]).tolist():
                        var[(s == 0) & (t == tt)] = root.kernel_variance(int(tt), 0, "beta_tilde")
        return c0, ct, var

    def x0_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """x0_hat from the network output (any shape (N, ...)); computed in out's dtype."""
        ab = self.abar(t).to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
        if self.parameterization == "x0":
            return out
        if self.parameterization == "eps":
            return (x_t.to(out.dtype) - (1 - ab).sqrt() * out) / ab.sqrt()
        return ab.sqrt() * x_t.to(out.dtype) - (1 - ab).sqrt() * out

    def regression_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """What the network should output for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
        if self.parameterization == "eps":
            return eps
        if self.parameterization == "x0":
            return x0
        ab = self.abar(t).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def diffuse(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        ab = self.abar(t).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    # ------------------------------------------------------------ kernel contract
    def _anchor(self) -> torch.Tensor:
        """A tensor with the network's dtype and device (its first parameter, else buffer)."""
        for p in self.net.parameters():
            return p
        for b in self.net.buffers():
            return b
        return self._log_ab.float()

    def _prepare(self, x_t: torch.Tensor, t: int, s: int):
        self._log_alpha_bars(t, s)       # validates 0 <= s < t <= T
        N = x_t.shape[0]
        x = x_t.reshape(N, *self.shape)
        p = self._anchor()
        tv = torch.full((N,), int(t), dtype=torch.long, device=p.device)
        sv = torch.full((N,), int(s), dtype=torch.long, device=p.device)
        return x, tv, sv, p.dtype

    def _mean(self, out, x, tv, sv):
        """Step mean (N, D) in float64 from the network output (x in float64)."""
        x64 = x.to(torch.float64)
        x0 = self.x0_from_output(out.to(torch.float64), x64, tv)
        c0, ct, var = self.step_coefficients(tv, sv)
        return (c0[:, None] * x0.flatten(1) + ct[:, None] * x64.flatten(1)), var

    def sample(self, x_t, t, s, generator=None):
        """One reverse step; keeps x_t's shape ((N, D) or (N, *shape)) and dtype."""
        x_s = self.distribution(x_t, t, s, generator=generator, n_latent=1).sample(generator)
        return x_s.reshape(x_t.shape).to(x_t.dtype)


class GaussianDenoiser(_Denoiser):
    """DDPM's reverse kernel p(x_s | x_t) = N(mean(x_t, t), sigma^2 I) around a network.

    Args:
        net: backbone, called as ``net(x_t, t)``.
        schedule: the chain it is trained on (its root indexes t).
        shape: data shape (an int D for vectors).
        parameterization: ``"eps"``, ``"x0"`` or ``"v"``; variance: ``"beta_tilde"`` or ``"beta"``;
        final_variance: ``"beta1"``, ``"clipped"`` or a float (the variance of the jump to 0, see
            the module docstring).
    """

    is_gaussian = True
    has_latent = False

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, shape, parameterization="eps",
                 variance="beta_tilde", name: str = "ddpm", final_variance: str = "beta1"):
        super().__init__(net, schedule, shape, parameterization, variance, final_variance)
        self.name = name

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eta=None) -> torch.Tensor:
        """The network output for x_t (N, *shape) at root steps t (N,); eta is ignored."""
        return self.net(x_t, t)

    @torch.no_grad()
    def distribution(self, x_t, t, s, generator=None, n_latent=None) -> Gaussian:
        x, tv, sv, dt = self._prepare(x_t, t, s)
        mean, var = self._mean(self.net(x.to(dt), tv), x, tv, sv)
        return Gaussian(mean, variance=var)


class SMDDenoiser(_Denoiser):
    """Soft mixture denoising: p(x_s | x_t) = E_eta N(mean(x_t, g(x_t, eta, t)), sigma^2 I).

    Args:
        net: backbone taking a latent, ``net(x_t, t, z)``.
        generator_net: the latent generator ``gen(x_t, eta, t) -> z``.
        schedule, shape, parameterization, variance: as for :class:`GaussianDenoiser`.
        eta_shape: shape of one eta (vectors: (noise_dim,); images: image-shaped).
        freeze_eta: use one fixed eta (drawn from ``eta_seed``) for every step and point.
        n_latent: default number of latent draws of :meth:`distribution`.
    """

    is_gaussian = False
    has_latent = True

    def __init__(self, net: nn.Module, generator_net: nn.Module, schedule: NoiseSchedule, shape,
                 eta_shape, parameterization="eps", variance="beta_tilde",
                 freeze_eta: bool = False, eta_seed: int = 0, n_latent: int = 1,
                 name: str = "smd", final_variance: str = "beta1"):
        super().__init__(net, schedule, shape, parameterization, variance, final_variance)
        self.gen = generator_net
        self.eta_shape = (eta_shape,) if isinstance(eta_shape, int) else tuple(eta_shape)
        self.freeze_eta, self.n_latent, self.name = freeze_eta, n_latent, name
        g = torch.Generator().manual_seed(eta_seed)
        self.register_buffer("frozen_eta", torch.randn(self.eta_shape, generator=g),
                             persistent=False)

    def with_frozen_eta(self, frozen: bool = True) -> SMDDenoiser:
        """The same model (shared weights) with eta frozen (the deterministic-latent ablation)."""
        k = copy.copy(self)
        k.freeze_eta = frozen
        k.name = f"{self.name}-frozen" if frozen else self.name.removesuffix("-frozen")
        return k

    def draw_eta(self, n: int, generator=None, dtype=None, device=None) -> torch.Tensor:
        """n draws of eta (n, *eta_shape) (the frozen eta repeated when frozen)."""
        p = self._anchor()
        dtype, device = dtype or p.dtype, device or p.device
        if self.freeze_eta:
            return self.frozen_eta.to(dtype).expand(n, *self.eta_shape)
        return torch.randn((n, *self.eta_shape), generator=generator, dtype=dtype, device=device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """Network output for x_t (N, *shape), root steps t (N,), latent noise eta (N, *eta)."""
        return self.net(x_t, t, self.gen(x_t, eta, t))

    @torch.no_grad()
    def distribution(self, x_t, t, s, generator=None, n_latent=None) -> LatentMixture:
        """The step seen through L = n_latent latent draws: an equally weighted mixture of L
        Gaussians (means (N, L, D)); L = 1 is one draw of the kernel's mixture component."""
        L = self.n_latent if n_latent is None else int(n_latent)
        if L < 1:
            raise ValueError(f"n_latent must be >= 1; got {L}")
        x, tv, sv, dt = self._prepare(x_t, t, s)
        N = x.shape[0]
        xr = x.repeat_interleave(L, 0)
        tr, sr = tv.repeat_interleave(L, 0), sv.repeat_interleave(L, 0)
        eta = self.draw_eta(N * L, generator, dtype=dt, device=tv.device)
        out = self.net(xr.to(dt), tr, self.gen(xr.to(dt), eta, tr))
        mean, var = self._mean(out, xr, tr, sr)
        return LatentMixture(mean.reshape(N, L, self.D), var.reshape(N, L)[:, 0])
