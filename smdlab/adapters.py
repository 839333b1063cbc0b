"""Adapters: outside denoising networks as smdlab reverse kernels.

Each adapter wraps a callable as a backbone ``net(x_t, t)`` of smdlab's root-step convention and
hands it to :class:`smdlab.denoisers.GaussianDenoiser`, so the result is an ordinary smdlab kernel
(samplers, local and global error, DDIM) on the schedule given.  Neither diffusers nor k-diffusion
is imported: the adapters only rely on the calling conventions below, so both stay optional.

* diffusers (``UNet2DModel`` and friends): ``model(x, timestep).sample`` (a tuple's first element
  or a bare tensor are accepted too), timestep k being smdlab's root step k + 1 (diffusers'
  ``alphas_cumprod[k]`` is ``alpha_bars[k + 1]``; see :mod:`smdlab.schedules`).  Its
  ``prediction_type`` "epsilon", "v_prediction" or "sample" is smdlab's "eps", "v" or "x0"
  (:mod:`smdlab.parameterization`, derivations (2)-(4)).
* k-diffusion (Karras et al. 2022, EDM's D): ``D(x, sigma) -> x0_hat`` on the variance-exploding
  form x = x0 + sigma eps.  A VP state x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is that with
  x = x_t / sqrt(abar) and sigma = sqrt((1 - abar) / abar); D's output is an x0 prediction.

The last step.  diffusers' DDPMScheduler returns the mean on its last step; smdlab's samplers
sample every jump (one final-jump rule, :mod:`smdlab.sampling`), so the kernel needs a variance
there: ``final_variance="beta1"`` (beta_1 of the schedule, 1e-4 on DDPM's linear one; the default)
or any small positive float.
"""

from __future__ import annotations

import torch
from torch import nn

from .denoisers import GaussianDenoiser
from .schedules import NoiseSchedule

#: diffusers' ``prediction_type`` -> smdlab's parameterisation.
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class _Backbone(nn.Module):
    """Holds an outside callable (a registered submodule when it is an nn.Module).

    A callable without parameters gets a 0-d buffer of ``dtype`` (default float64) so that the
    denoiser, which feeds the network in its parameters' dtype, knows what to feed it.
    """

    def __init__(self, fn, dtype: torch.dtype | None):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"the wrapped model must be callable; got {type(fn).__name__}")
        self.fn = fn
        has_params = isinstance(fn, nn.Module) and any(True for _ in fn.parameters())
        if dtype is not None or not has_params:
            self.register_buffer("anchor", torch.zeros((), dtype=dtype or torch.float64),
                                 persistent=False)


class DiffusersBackbone(_Backbone):
    """``net(x_t, t)`` = ``model(x_t, t - 1).sample``: root steps t (N,) to diffusers timesteps."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.fn(x_t, t - 1)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            raise ValueError(f"the diffusers model must return an output of x's shape "
                             f"{tuple(x_t.shape)} (a .sample tensor, a tuple or a tensor); got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out


class KDiffusionBackbone(_Backbone):
    """``net(x_t, t)`` = ``D(x_t / sqrt(abar_t), sigma_t)`` with sigma_t = sqrt((1 - abar_t) / abar_t)
    (sigma (N,), in x's dtype): an x0 prediction."""

    def __init__(self, fn, schedule: NoiseSchedule, dtype: torch.dtype | None):
        super().__init__(fn, dtype)
        self.register_buffer("log_alpha_bars", schedule.root.log_alpha_bars.clone(),
                             persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        la = self.log_alpha_bars[t]                                   # (N,) float64
        sigma = torch.expm1(-la).sqrt()                               # sqrt(1/abar - 1)
        scale = (-0.5 * la).exp().reshape(-1, *([1] * (x_t.ndim - 1)))
        out = self.fn(x_t * scale.to(x_t.dtype), sigma.to(x_t.dtype))
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            raise ValueError(f"D(x, sigma) must return a tensor of x's shape {tuple(x_t.shape)}; "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        return out


def _check_schedule(schedule) -> NoiseSchedule:
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if hasattr(schedule, "alphas_cumprod"):    # a diffusers scheduler
        return NoiseSchedule.from_diffusers(schedule)
    raise TypeError(f"schedule must be a NoiseSchedule or a diffusers scheduler; got "
                    f"{type(schedule).__name__}")


def diffusers_kernel(model, schedule, shape, prediction_type: str | None = None,
                     variance: str = "beta_tilde", final_variance="beta1",
                     dtype: torch.dtype | None = None, name: str = "diffusers") -> GaussianDenoiser:
    """A diffusers-style model as a Gaussian reverse kernel.

    Args:
        model: ``model(x, timestep)`` returning ``.sample`` (or a tuple / tensor) of x's shape,
            x (N, *shape), timestep (N,) int64 in diffusers' 0-based indexing.
        schedule: the NoiseSchedule it was trained on (e.g. ``NoiseSchedule.from_diffusers``), or
            a diffusers scheduler (converted; its ``config.prediction_type`` is then the default).
        shape: data shape (an int D for vectors, (C, H, W) for images).
        prediction_type: "epsilon", "v_prediction" or "sample" (default "epsilon").
        variance, final_variance: as for :class:`~smdlab.denoisers.GaussianDenoiser`
            ("beta_tilde" is diffusers' "fixed_small", "beta" its "fixed_large").
        dtype: the dtype a model without parameters (a function) is fed (default float64); a
            model with parameters is fed its parameters' dtype.
    """
    if prediction_type is None:
        prediction_type = getattr(getattr(schedule, "config", None), "prediction_type", "epsilon")
    if prediction_type not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of "
                         f"{sorted(DIFFUSERS_PREDICTIONS)}")
    schedule = _check_schedule(schedule)
    return GaussianDenoiser(DiffusersBackbone(model, dtype), schedule, shape,
                            DIFFUSERS_PREDICTIONS[prediction_type], variance, name=name,
                            final_variance=final_variance)


def k_diffusion_kernel(denoiser, schedule: NoiseSchedule, shape, variance: str = "beta_tilde",
                       final_variance="beta1", dtype: torch.dtype | None = None,
                       name: str = "k-diffusion") -> GaussianDenoiser:
    """A k-diffusion-style denoiser ``D(x, sigma) -> x0_hat`` as a Gaussian reverse kernel on
    ``schedule`` (the VP chain whose steps it is sampled on; sigma_t = sqrt((1 - abar_t) / abar_t)).

    Args:
        denoiser: ``D(x, sigma)`` with x (N, *shape) = x0 + sigma eps and sigma (N,).
        schedule, shape, variance, final_variance, dtype: as for :func:`diffusers_kernel`.
    """
    schedule = _check_schedule(schedule)
    return GaussianDenoiser(KDiffusionBackbone(denoiser, schedule, dtype), schedule, shape, "x0",
                            variance, name=name, final_variance=final_variance)
