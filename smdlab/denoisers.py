"""Learned reverse kernels: the Gaussian (DDPM) kernel and the soft mixture denoising (SMD) kernel.

Both wrap a backbone ``net(x_t, t, z=None)`` (vectors: :class:`smdlab.nets.VectorMLP`; images: a
U-Net) and implement the :class:`smdlab.kernels.ReverseKernel` contract, so the samplers and the
error lab treat them exactly like the oracle kernels.  Both are ``nn.Module`` s (train them with
:func:`smdlab.training.train` and the losses of :mod:`smdlab.objectives`).

Every step t -> s (root steps, any kept s < t, so any respaced chain works) goes through the
clean-point prediction x0_hat = :meth:`denoise` (EDM's D(x_t)) and the DDPM posterior
q(x_s | x_t, x_0 = x0_hat) = N(c0 x0_hat + ct x_t, sigma^2 I) of
:func:`smdlab.parameterization.posterior_coefficients` (derivation (6) there); the network's
output is turned into x0_hat by that module's parameterisations (eps, x0 or v; derivations (2)-(4)).
The variance sigma^2 is ``"beta_tilde"`` (the posterior's) or ``"beta"`` (the jump's beta).

beta_tilde is 0 on the last jump (s = 0).  ``final_variance`` says what replaces it, and the
samplers of :mod:`smdlab.sampling` sample it like any other jump (one final-jump rule):
  * ``"beta1"`` (default): beta_1 of the root chain, a nearly deterministic last step (DDPM's
    reference sampler returns the mean there).  A latent kernel needs a small value: SMD can only
    be exact when its variance is below the narrowest component of the true posterior (SMD.md).
  * ``"clipped"``: :meth:`NoiseSchedule.kernel_variance`, the improved-DDPM clip to the variance of
    the jump above (the error lab's convention for its best-Gaussian kernels); on a 4-step linear
    chain that is a variance of about 0.4, which blurs whatever the kernel predicts.
  * a positive float: that variance (E6-E8's SMD kernels use the data's within-mode variance, the
    largest final variance under which a latent kernel can still be exact, and their DDPMs
    ``"clipped"``, see :mod:`smdlab.experiments.toy_zoo`; images may take a tiny one).

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

from . import parameterization as P
from .distributions import Gaussian, LatentMixture
from .kernels import ReverseKernel
from .parameterization import PARAMETERIZATIONS, check_root_step
from .schedules import NoiseSchedule

VARIANCES = ("beta_tilde", "beta")
FINAL_VARIANCES = ("beta1", "clipped")


class _Denoiser(nn.Module, ReverseKernel):
    """What both learned kernels share: schedule bookkeeping, parameterisations, the step."""

    can_denoise = True

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
        # float64 log abar of the root chain, indexed by root steps; not saved (a function of
        # the schedule), but moved with the module to its device.
        self.register_buffer("log_alpha_bars", schedule.root.log_alpha_bars.clone(),
                             persistent=False)

    # ------------------------------------------------------------ schedule helpers (batched)
    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t for root steps t (N,), float64."""
        return self.log_alpha_bars[t].exp()

    def final_jump_variance(self, t: int) -> float:
        """The variance replacing beta-tilde on the jump t -> 0 (``final_variance``)."""
        t = check_root_step(self.schedule, t, self.name)
        if isinstance(self.final_variance, float):
            return self.final_variance
        if self.final_variance == "beta1":
            return -math.expm1(self.schedule.root.log_alpha_bars[1].item())
        return self.schedule.root.kernel_variance(t, 0, "beta_tilde")

    def step_coefficients(self, t: torch.Tensor, s: torch.Tensor):
        """(c0, ct, variance) of the jumps t -> s (root steps (N,)), each (N,) float64."""
        c0, ct, beta_tilde, beta = P.posterior_coefficients(self.log_alpha_bars[t],
                                                            self.log_alpha_bars[s])
        if self.variance == "beta":
            return c0, ct, beta
        var = beta_tilde
        if (s == 0).any():
            var = var.clone()
            for tt in torch.unique(t[s == 0]).tolist():
                var[(s == 0) & (t == tt)] = self.final_jump_variance(int(tt))
        return c0, ct, var

    def x0_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """x0_hat from the network output (any shape (N, ...)); computed in out's dtype."""
        return P.to_x0(self.parameterization, out, x_t, self.log_alpha_bars[t])

    def regression_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """What the network should output for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
        return P.target(self.parameterization, x0, eps, self.log_alpha_bars[t])

    def diffuse(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for root steps t (N,)."""
        return P.diffuse(x0, eps, self.log_alpha_bars[t])

    # ------------------------------------------------------------ kernel contract
    def _anchor(self) -> torch.Tensor:
        """A tensor with the network's dtype and device (its first parameter, else buffer)."""
        for p in self.net.parameters():
            return p
        for b in self.net.buffers():
            return b
        return self.log_alpha_bars.float()

    def _output(self, x: torch.Tensor, tv: torch.Tensor, eta, generator) -> torch.Tensor:
        """The network output for x (N, *shape) in the network's dtype at root steps tv (N,)."""
        raise NotImplementedError

    def denoise(self, x_t: torch.Tensor, t: int, eta: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x0_hat = D(x_t) for x_t (N, D) or (N, *shape) at root step t >= 1: x_t's shape, float64.

        An SMD kernel uses the latent noise ``eta`` (N, *eta_shape) when given, else draws one per
        point from ``generator`` (or uses its frozen eta); the Gaussian kernel ignores eta.
        """
        t = check_root_step(self.schedule, t, self.name)
        if t == 0:
            raise ValueError(f"{self.name}: denoise needs a root step t >= 1; got t=0")
        N = x_t.shape[0]
        x = x_t.reshape(N, *self.shape)
        p = self._anchor()
        tv = torch.full((N,), t, dtype=torch.long, device=p.device)
        out = self._output(x.to(p.dtype), tv, eta, generator)
        x64 = x.to(torch.float64)
        return self.x0_from_output(out.to(torch.float64), x64, tv).reshape(x_t.shape)

    def _step_mean(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int):
        """(mean (N, D), variance (N,)) of q(x_s | x_t, x0_hat = x0), float64, flattened data."""
        tv = torch.full((x_t.shape[0],), t, dtype=torch.long, device=self.log_alpha_bars.device)
        c0, ct, var = self.step_coefficients(tv, torch.full_like(tv, s))
        x64 = x_t.to(torch.float64).flatten(1)
        return c0[:, None].to(x64) * x0.flatten(1) + ct[:, None].to(x64) * x64, var.to(x64)

    @torch.no_grad()
    def step(self, x_t, t, s, generator=None, x0_hook=None):
        """(step distribution, x0_hat) for one latent draw; ``x0_hook`` maps x0_hat (x_t's shape)
        before the step (e.g. clipping images to [-1, 1])."""
        t, s, _, _ = self.jump(t, s)
        x0 = self.denoise(x_t, t, generator=generator)
        if x0_hook is not None:
            x0 = x0_hook(x0)
        return self._distribution_of(*self._step_mean(x_t, x0, t, s)), x0

    def _distribution_of(self, mean, var):
        raise NotImplementedError


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

    def _output(self, x, tv, eta, generator):
        return self.net(x, tv)

    def _distribution_of(self, mean, var) -> Gaussian:
        return Gaussian(mean, variance=var)

    @torch.no_grad()
    def distribution(self, x_t, t, s, generator=None, n_latent=None) -> Gaussian:
        return self.step(x_t, t, s, generator)[0]


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

    def _output(self, x, tv, eta, generator):
        if eta is None:
            eta = self.draw_eta(x.shape[0], generator, dtype=x.dtype, device=x.device)
        return self.net(x, tv, self.gen(x, eta.to(x.dtype), tv))

    def _distribution_of(self, mean, var) -> LatentMixture:
        N = mean.shape[0]
        return LatentMixture(mean.reshape(N, -1, self.D), var.reshape(N, -1)[:, 0])

    @torch.no_grad()
    def distribution(self, x_t, t, s, generator=None, n_latent=None) -> LatentMixture:
        """The step seen through L = n_latent latent draws: an equally weighted mixture of L
        Gaussians (means (N, L, D)); L = 1 is one draw of the kernel's mixture component."""
        L = self.n_latent if n_latent is None else int(n_latent)
        if L < 1:
            raise ValueError(f"n_latent must be >= 1; got {L}")
        t, s, _, _ = self.jump(t, s)
        xr = x_t.repeat_interleave(L, 0)
        x0 = self.denoise(xr, t, generator=generator)        # one fresh eta per (point, draw)
        mean, var = self._step_mean(xr, x0, t, s)
        N = x_t.shape[0]
        return LatentMixture(mean.reshape(N, L, self.D), var.reshape(N, L)[:, 0])
