"""Badly fitted reverse kernels with a deterministic 1-D reference, shared by the calibration
tests and benchmarks/bench_estimator_calibration.py."""

from __future__ import annotations

import torch

from smdlab import ExactKernel, GaussianMixture, NoiseSchedule
from smdlab.denoisers import GaussianDenoiser
from smdlab.distributions import Gaussian, LatentMixture
from smdlab.kernels import ReverseKernel
from smdlab.nets import VectorMLP

SCHED = NoiseSchedule.linear(1000)
TWO = GaussianMixture.two_modes(2.0, 0.1)
RARE = GaussianMixture([1e-4, 1 - 1e-4], [[-1.5], [0.5]], [0.01, 0.05])


class WrongGaussian(ReverseKernel):
    """N(a * E_q[x_s | x_t] + b, c * Var_q[x_s | x_t]): a wrong mean map and a wrong variance."""

    def __init__(self, mixture, schedule, scale=1.0, shift=0.0, var_factor=1.0):
        self.mixture, self.schedule = mixture, schedule
        self.scale, self.shift, self.var_factor = scale, shift, var_factor
        self.dim, self.name = mixture.D, f"wrong(a={scale},b={shift},c={var_factor})"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        post = ExactKernel(self.mixture, self.schedule).distribution(x_t, t, s)
        var = self.var_factor * post.covariance_trace() / post.D
        return Gaussian(self.scale * post.mean() + self.shift, variance=var)


class OffsetMixture(ReverseKernel):
    """A latent kernel with a deterministic latent: (1/L) sum_l N(E_q[x_s|x_t] + d_l, v).

    Deterministic, so the 1-D quadrature is an exact reference and Monte Carlo has no
    log-mean-exp bias; n_latent is ignored (the offsets are the latent's L values)."""

    def __init__(self, mixture, schedule, offsets=(-0.5, 0.5), var=0.05):
        self.mixture, self.schedule = mixture, schedule
        self.offsets, self.var = torch.tensor(offsets, dtype=torch.float64), var
        self.dim, self.name = mixture.D, f"offsets{tuple(offsets)},v={var}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        post = ExactKernel(self.mixture, self.schedule).distribution(x_t, t, s)
        mu = post.mean()[:, None, :] + self.offsets[None, :, None]
        return LatentMixture(mu, self.var)


def untrained(seed: int, final_variance=0.01, schedule=SCHED):
    """An untrained VectorMLP behind a GaussianDenoiser (every learned kernel at step 0)."""
    torch.manual_seed(seed)
    net = VectorMLP(1).double()
    return GaussianDenoiser(net, schedule, 1, final_variance=final_variance, name=f"mlp{seed}")


def cases():
    """(name, mixture, kernel, t, s) for the calibration sweep."""
    out = []
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        out.append((f"var x{c}", TWO, WrongGaussian(TWO, SCHED, var_factor=c), 100, 0))
    out.append(("mean +0.3", TWO, WrongGaussian(TWO, SCHED, shift=0.3), 300, 200))
    out.append(("mean x1.5 var x0.1", TWO, WrongGaussian(TWO, SCHED, 1.5, 0.0, 0.1), 200, 100))
    out.append(("mean x0.9", TWO, WrongGaussian(TWO, SCHED, 0.9), 50, 49))
    out.append(("rare mode, var x3", RARE, WrongGaussian(RARE, SCHED, var_factor=3.0), 20, 0))
    for seed in (0, 1):
        out.append((f"untrained mlp{seed} 500->0", TWO, untrained(seed), 500, 0))
    out.append(("untrained mlp2 300->200", TWO, untrained(2), 300, 200))
    out.append(("latent offsets", TWO, OffsetMixture(TWO, SCHED), 100, 0))
    out.append(("latent narrow", TWO, OffsetMixture(TWO, SCHED, (-0.05, 0.05), 0.002), 300, 200))
    return out
