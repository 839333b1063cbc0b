"""The oracle members of every few-step reverse-kernel family, built from the exact posterior.

Each class is a :class:`~smdlab.kernels.ReverseKernel` under the contract of :mod:`smdlab.kernels`
(root steps, ``distribution``, ``step``, ``sample``, ``denoise``).  "Oracle" means the family's
best case: every quantity a network would have to learn (E[x_0 | x_t], the posterior moments, the
responsibilities) is taken from the exact posterior q(x_s | x_t) of a Gaussian-mixture target, so
what remains is the error of the FAMILY, not of a training run.  Notation as in
:mod:`smdlab.parameterization`: a jump t -> s, a^2 = abar_t / abar_s, b = 1 - a^2, beta~ the DDPM
posterior variance of the jump.

Families (:func:`oracle_families` builds them all):

* Gaussian kernels, all with the exact mean E[x_s | x_t] (the best mean for the forward KL):
    - ``gaussian-moment`` (:class:`~smdlab.kernels.BestGaussianKernel` kind "moment"): mean and full
      covariance of q(x_s | x_t) at each x_t: the best Gaussian, point by point;
    - ``gaussian-isotropic`` (kind "isotropic"): variance tr Cov(x_s | x_t) / D at each x_t, the best
      N(mu, v(x_t) I): a per-POINT variance, which no published method outputs;
    - ``analytic-dpm`` (:class:`AnalyticDPMKernel`, Bao et al. 2022): ONE isotropic variance per
      step, v_t = E_{q(x_t)} tr Cov(x_s | x_t) / D.  This is the minimiser over constant v of
      E_{x_t} KL(q(x_s | x_t) || N(mu(x_t), v I)) (the x_t-average of the "isotropic" kind's
      variance), and it equals Analytic-DPM's closed form
      v_t = beta~ + c0^2 (1 - abar_t) / abar_t (1 - (1 - abar_t) E||grad log q(x_t)||^2 / D), since
      Cov(x_s | x_t) = beta~ I + c0^2 Cov(x_0 | x_t) and Tweedie gives E tr Cov(x_0 | x_t).  Its
      local error lies between the isotropic kind's and the beta-tilde kind's;
    - ``gaussian-beta_tilde`` and ``gaussian-beta`` (kinds "beta_tilde", "beta"): DDPM's two fixed
      variances, i.e. a perfectly trained DDPM.
* ``gms`` (:class:`GMSKernel`, Guo et al. 2023): per step AND per dimension, a two-component mixture
  (1/3) N(mu_1, v) + (2/3) N(mu_2, v) fitted to the first three raw moments of the exact
  posterior's marginal in that dimension by a few dozen damped Gauss-Newton iterations (see
  :func:`smdlab.gms.gms_fit`: what the fit fixes and what it cannot represent).
* ``topk-k`` (:class:`TopKKernel`): the exact mixture posterior truncated to its k most responsible
  components at each x_t, weights renormalised: "how many components does a step need?".
* ``ddim-eta`` (:class:`DDIMKernel`): DDIM driven by the exact x0 prediction, eta in [0, 1].
  eta = 1 is the beta-tilde Gaussian (same mean, same variance); eta = 0 is deterministic: its
  step is a point mass, so its local error KL(q(x_s | x_t) || delta) is +infinity (q has a density,
  the point mass does not) and the chain-rule bound says nothing.  Its final marginal is the
  push-forward of N(0, I) through a smooth injective map and has a density, so its global error is
  finite: :func:`ddim_pushforward_kl` computes it by the change of variables.
* ``smd-construction`` (:func:`smd_construction`): the SMD latent-mixture construction of E5 with
  sigma^2 = beta~ (exact on every jump to s >= 1, a floor on the final jump).
* ``exact``: :class:`~smdlab.kernels.ExactKernel`, zero local error.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distributions import LOG_2PI, Gaussian
from .exact import MixturePosterior, posterior_from_log_alpha_bars
from .gms import GMSKernel
from .kernels import BestGaussianKernel, ExactKernel, MixtureConstructionKernel, ReverseKernel, _MixtureOracle
from .mixture import GaussianMixture
from .parameterization import check_root_step, ddim_mean, posterior_coefficients, root_jump
from .sampling import PointMass, chain_steps
from .schedules import NoiseSchedule


# ---------------------------------------------------------------------- Analytic-DPM
def analytic_dpm_variance(mixture: GaussianMixture, schedule: NoiseSchedule, t: int, s: int,
                          n_points: int = 8192, generator: torch.Generator | None = None
                          ) -> tuple[float, float]:
    """v_t = E_{x_t ~ q(x_t)} tr Cov(x_s | x_t) / D for the jump t -> s (root steps): (v, se).

    The expectation is a Monte Carlo average over ``n_points`` x_t; every term is at least beta~
    (each posterior component's variance is), so v >= beta~ always holds, which is Analytic-DPM's
    lower clip; its upper clip (from bounded data) does not apply to a mixture.
    """
    _, _, lt, ls = root_jump(schedule, t, s, "analytic_dpm_variance")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x_t = _diffused_sample(mixture, lt, n_points, g)
    tr = posterior_from_log_alpha_bars(mixture, x_t, lt, ls).covariance_trace() / mixture.D
    return tr.mean().item(), (tr.std() / math.sqrt(n_points)).item()


def _diffused_sample(mixture, log_ab, n, generator):
    x0 = mixture.sample(n, generator)
    eps = torch.randn(x0.shape, dtype=x0.dtype, generator=generator)
    return math.exp(0.5 * log_ab) * x0 + math.sqrt(-math.expm1(log_ab)) * eps


class AnalyticDPMKernel(_MixtureOracle):
    """Exact mean, one isotropic variance per step: Analytic-DPM's optimal variance (see module).

    Args:
        mixture, schedule: the target and the kernel's schedule.
        n_points: x_t draws behind each step's variance (fixed seed ``seed``, so the kernel is a
            deterministic function of the step; the variance's Monte Carlo standard error is kept
            in ``variance_se``).
    """

    is_gaussian = True

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, n_points: int = 8192,
                 seed: int = 0):
        if not isinstance(n_points, int) or n_points < 2:
            raise ValueError(f"n_points must be an integer >= 2; got {n_points!r}")
        super().__init__(mixture, schedule)
        self.n_points, self.seed = n_points, seed
        self.name = "analytic-dpm"
        self._cache: dict[tuple[int, int], tuple[float, float]] = {}

    def step_variance(self, t: int, s: int) -> float:
        """The step's variance v_t (cached per jump)."""
        t, s, _, _ = self.jump(t, s)
        if (t, s) not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 1009 * t + s)
            self._cache[t, s] = analytic_dpm_variance(self.mixture, self.schedule, t, s,
                                                      self.n_points, g)
        return self._cache[t, s][0]

    def variance_se(self, t: int, s: int) -> float:
        self.step_variance(t, s)
        return self._cache[int(t), int(s)][1]

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        t, s, post = self.exact_step(x_t, t, s)
        return Gaussian(post.mean(), variance=self.step_variance(t, s))

    def final_jump_variance(self, t: int) -> float:
        return self.step_variance(t, 0)


# ---------------------------------------------------------------------- top-k truncation
class TopKKernel(_MixtureOracle):
    """The exact posterior q(x_s | x_t) truncated to its k most responsible components per point.

    The kept responsibilities are renormalised; with k >= K this is the exact kernel (and its
    distribution is the exact MixturePosterior).  A MixturePosterior with per-point weights, so
    every estimator that handles the exact kernel handles it too.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        super().__init__(mixture, schedule)
        self.k = k
        self.name = f"topk-{k}"

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        t, s, post = self.exact_step(x_t, t, s)
        if self.k >= post.K:
            return post
        lw = post.log_weights
        idx = lw.topk(self.k, dim=-1).indices
        kept = torch.full_like(lw, -math.inf).scatter(-1, idx, lw.gather(-1, idx))
        kept = kept - torch.logsumexp(kept, -1, keepdim=True)
        return MixturePosterior(post.x_t, kept, post.gain, post.offset, post.eigvals,
                                post.eigvecs, post.axis_aligned)


# ---------------------------------------------------------------------- DDIM
class DDIMKernel(_MixtureOracle):
    """DDIM (Song et al. 2021, eq. 12) driven by the exact x0 prediction E[x_0 | x_t].

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma xi with
    sigma^2 = eta^2 beta~ (eta^2 times the clipped final-jump variance on the jump to 0, as in
    :func:`smdlab.sampling.ddim_sample`).  eta = 1 is the beta-tilde Gaussian; eta = 0 has no density
    (``distribution`` returns a :class:`~smdlab.sampling.PointMass`, whose log_prob refuses): score
    its global error with :func:`ddim_pushforward_kl`.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, eta: float = 0.0):
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
            raise ValueError(f"DDIM eta must be a number in [0, 1]; got {eta!r}")
        super().__init__(mixture, schedule)
        self.eta = float(eta)
        self.is_gaussian = self.eta > 0
        self.name = f"ddim-{self.eta:g}"

    def step_variance(self, t: int, s: int) -> float:
        t, s, lt, ls = self.jump(t, s)
        jump_var = self.final_jump_variance(t) if s == 0 else posterior_coefficients(lt, ls)[2].item()
        return self.eta ** 2 * jump_var

    def step_map(self, x_t: torch.Tensor, t: int, s: int) -> torch.Tensor:
        """The mean of the step (the whole step for eta = 0): (N, D), differentiable in x_t."""
        t, s, lt, ls = self.jump(t, s)
        x0 = self.denoise(x_t, t)
        return ddim_mean(x_t.to(torch.float64), x0, lt, ls, self.step_variance(t, s))

    def distribution(self, x_t, t, s, generator=None, n_latent=None):
        mean = self.step_map(x_t, t, s)
        var = self.step_variance(t, s)
        return Gaussian(mean, variance=var) if var > 0 else PointMass(mean)

    def step(self, x_t, t, s, generator=None, x0_hook=None):
        t_, s_, lt, ls = self.jump(t, s)
        x0 = self.denoise(x_t, t_)
        if x0_hook is not None:
            x0 = x0_hook(x0)
        var = self.step_variance(t_, s_)
        mean = ddim_mean(x_t.to(torch.float64), x0.to(torch.float64), lt, ls, var).flatten(1)
        return (Gaussian(mean, variance=var) if var > 0 else PointMass(mean)), x0


def _batched_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """Per-point Jacobians (N, D, D) of a row-wise map fn: (N, D) -> (N, D) by D reverse passes
    (row n of the output depends on row n of the input only, so one backward pass of the sum of
    output coordinate i gives row i of every point's Jacobian)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=i < y.shape[1] - 1)[0]
                for i in range(y.shape[1])]
    return torch.stack(rows, 1), y.detach()


def ddim_pushforward(kernel: DDIMKernel, x_T: torch.Tensor, schedule: NoiseSchedule | None = None,
                     jacobian: str = "autograd") -> tuple[torch.Tensor, torch.Tensor]:
    """Push x_T (N, D) through the deterministic DDIM chain: (x_0 (N, D), log p(x_0) (N,)).

    log p(x_0) = log N(x_T; 0, I) - sum over the steps of log |det J_step(x_t)|, the change of
    variables.  With the exact x0 prediction each step map is A x_t + B E[x_0 | x_t] with A, B >= 0
    and dE[x_0 | x_t]/dx_t = sqrt(abar_t) / (1 - abar_t) Cov(x_0 | x_t) (Tweedie), so its Jacobian
    is symmetric positive definite: the map is the gradient of a strictly convex function, hence
    injective, and the formula gives the density of the push-forward exactly.
    ``jacobian="autograd"`` differentiates the step map (works for any differentiable denoiser);
    ``"tweedie"`` uses the closed form above (exact kernels; the tests check they agree).
    """
    if kernel.eta != 0:
        raise ValueError(f"the push-forward density is for DDIM eta = 0; this kernel has eta = "
                         f"{kernel.eta:g} (it has a density per step: use the path estimators)")
    if jacobian not in ("autograd", "tweedie"):
        raise ValueError(f"jacobian must be 'autograd' or 'tweedie'; got {jacobian!r}")
    x = x_T.to(torch.float64)
    logp = -0.5 * (x * x).sum(-1) - 0.5 * x.shape[1] * LOG_2PI
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    for t, s in chain_steps(kernel, schedule):
        if jacobian == "autograd":
            J, y = _batched_jacobian(lambda z, t=t, s=s: kernel.step_map(z, t, s), x)
        else:
            _, _, lt, ls = kernel.jump(t, s)
            post0 = posterior_from_log_alpha_bars(kernel.mixture, x, lt, 0.0)
            A = math.sqrt(-math.expm1(ls) / -math.expm1(lt)) if s > 0 else 0.0
            B = math.exp(0.5 * ls) - A * math.exp(0.5 * lt)
            J = A * eye + B * math.exp(0.5 * lt) / -math.expm1(lt) * post0.covariance()
            y = kernel.step_map(x, t, s)
        logp = logp - torch.linalg.slogdet(J)[1]
        x = y
    return x, logp


def ddim_pushforward_kl(mixture: GaussianMixture, kernel: DDIMKernel,
                        schedule: NoiseSchedule | None = None, n_grid: int | None = None,
                        n_samples: int | None = None, width: float | None = None,
                        generator: torch.Generator | None = None,
                        jacobian: str = "autograd") -> dict:
    """KL(q(x_0) || p(x_0)) of deterministic DDIM by the change of variables.

    * 1-D: p(x_0) on a uniform x_0 grid over q's support (:func:`ddim_density_1d`, the increasing
      map inverted by interpolation, x_T in [-width, width], default 40), then
      sum q log(q / p) h.  Where q has mass outside the image of that x_T interval, p there is
      below N(width) (e^-800 at 40): the KL is reported as inf with that mass.  This happens at
      few steps: the exact-x0 DDIM map squeezes R into little more than the modes' cores.
    * 2-D (or any D with ``n_samples``): KL = E_{x_T ~ N(0, I)}[r log r] at x_0 = F(x_T) with
      r = q / p, as a midpoint rule on [-width, width]^2 (default 6, ``n_grid`` = 256 per axis)
      or a Monte Carlo average with its standard error.  "q_mass" is the same rule applied to
      E_p[r] = 1: below 1 when the rule misses part of q (p's density there is too small for
      the x_T nodes to reach); then "kl" is not resolved.
    ``jacobian`` is passed to :func:`ddim_pushforward` ("tweedie" is several times faster in D = 8).
    Returns {"kl", "se", "q_mass", "unreached" (1-D: q's mass outside the image), "method",
    "steps", "kernel"}.
    """
    D = mixture.D
    steps = len(chain_steps(kernel, schedule))
    if n_samples is None and D == 1:
        width = 40.0 if width is None else width
        sd = mixture.eigvals[:, 0].sqrt()
        lo = (mixture.means[:, 0] - 8 * sd).min().item()
        hi = (mixture.means[:, 0] + 8 * sd).max().item()
        n = n_grid if n_grid is not None else 20001
        x = torch.linspace(lo, hi, n, dtype=torch.float64)
        h = (hi - lo) / (n - 1)
        log_q = mixture.log_prob(x[:, None])
        q = log_q.exp()
        p = ddim_density_1d(kernel, x, schedule, width=width, n=65536, jacobian=jacobian)
        reached = p > 0
        unreached = (q[~reached].sum() * h).item()
        q_mass = (q[reached].sum() * h).item()
        kl_raw = math.inf if unreached > 1e-12 else \
            (h * q * (log_q - p.clamp_min(1e-300).log())).sum().item()
        return {"kl": max(kl_raw, 0.0), "kl_raw": kl_raw, "se": 0.0, "q_mass": q_mass, "unreached": unreached,
                "method": f"x0 grid {n}", "steps": steps, "kernel": kernel.name}
    width = 6.0 if width is None else width
    if n_samples is None and D > 2:
        raise ValueError(f"the grid route is for D <= 2 (D={D}); pass n_samples for Monte Carlo")
    if n_samples is None:
        n = n_grid if n_grid is not None else 256
        h = 2 * width / n
        ax = torch.linspace(-width + h / 2, width - h / 2, n, dtype=torch.float64)
        x_T = torch.cartesian_prod(ax, ax)
        w = torch.exp(-0.5 * (x_T * x_T).sum(-1) - 0.5 * D * LOG_2PI) * h ** D
        method = f"x_T grid {n}^{D}"
    else:
        x_T = torch.randn(n_samples, D, dtype=torch.float64, generator=generator)
        w = torch.full((n_samples,), 1.0 / n_samples, dtype=torch.float64)
        method = f"mc {n_samples}"
    x0, logp = ddim_pushforward(kernel, x_T, schedule, jacobian)
    log_r = mixture_log_prob_any(mixture, x0) - logp
    r = log_r.clamp(max=700).exp()
    f = r * log_r
    kl_raw = (w * f).sum().item()
    se = 0.0 if n_samples is None else (f.std() / math.sqrt(n_samples)).item()
    # A KL is never negative: a node or Monte Carlo sum below 0 is reported as 0 (raw kept).
    return {"kl": max(kl_raw, 0.0), "kl_raw": kl_raw, "se": se,
            "q_mass": (w * r).sum().item(), "unreached": float("nan"),
            "method": method, "steps": steps, "kernel": kernel.name}


def mixture_log_prob_any(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """log q(x) (N,) through the eigenbasis, in blocks (many components, many points)."""
    return torch.cat([torch.logsumexp(mixture.component_log_prob(x[i:i + 4096])
                                      + mixture.weights.log(), -1)
                      for i in range(0, x.shape[0], 4096)])


def ddim_density_1d(kernel: DDIMKernel, x0_grid: torch.Tensor,
                    schedule: NoiseSchedule | None = None, width: float = 8.0,
                    n: int = 8192, jacobian: str = "autograd") -> torch.Tensor:
    """p(x_0) of 1-D deterministic DDIM on a grid of x_0 values (M,): the map is increasing, so it
    is inverted by interpolating log p over a fine x_T grid (n nodes on [-width, width]); zero
    outside the image of that interval."""
    if kernel.dim != 1:
        raise ValueError(f"ddim_density_1d is 1-D; the kernel has dim {kernel.dim}")
    x_T = torch.linspace(-width, width, n, dtype=torch.float64)[:, None]
    x0, logp = ddim_pushforward(kernel, x_T, schedule, jacobian)
    xs, lp = x0[:, 0].numpy(), logp.numpy()
    if not np.all(np.diff(xs) > 0):
        raise RuntimeError("the 1-D DDIM map is not increasing on the grid (it should be)")
    g = np.asarray(x0_grid, dtype=np.float64).reshape(-1)
    out = np.exp(np.interp(g, xs, lp))
    out[(g < xs[0]) | (g > xs[-1])] = 0.0
    return torch.from_numpy(out)


# ---------------------------------------------------------------------- SMD and the registry
def smd_construction(mixture: GaussianMixture, schedule: NoiseSchedule, variance="beta_tilde"):
    """E5's SMD mixture construction as a kernel (its ``distribution`` with n_latent=None
    integrates the latent exactly)."""
    k = MixtureConstructionKernel(mixture, schedule, variance)
    k.name = "smd-construction"
    return k


def oracle_families(mixture: GaussianMixture, schedule: NoiseSchedule, topk=(1, 2, 4, 8),
                    etas=(0.0, 0.5, 1.0), analytic_points: int = 8192) -> dict[str, ReverseKernel]:
    """Every family's oracle member for one target and root schedule, by name (insertion order:
    Gaussians, GMS, top-k, DDIM, SMD, exact).  ``topk`` values >= K are dropped (they are the
    exact kernel)."""
    check_root_step(schedule, 0, "oracle_families")
    ks: list[ReverseKernel] = [BestGaussianKernel(mixture, schedule, "moment"),
                               BestGaussianKernel(mixture, schedule, "isotropic"),
                               AnalyticDPMKernel(mixture, schedule, analytic_points),
                               BestGaussianKernel(mixture, schedule, "beta_tilde"),
                               BestGaussianKernel(mixture, schedule, "beta"),
                               GMSKernel(mixture, schedule)]
    ks += [TopKKernel(mixture, schedule, k) for k in sorted(set(topk)) if k < mixture.K]
    ks += [DDIMKernel(mixture, schedule, e) for e in etas]
    ks += [smd_construction(mixture, schedule), ExactKernel(mixture, schedule)]
    return {k.name: k for k in ks}
