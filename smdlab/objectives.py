"""Training objectives for the learned kernels of :mod:`smdlab.denoisers`, for any data shape.

Each objective is a callable ``loss(model, x0, generator) -> (loss, metrics)`` (the signature
:func:`smdlab.training.train` expects, with the batch being clean data x0 (N, *shape)).  ``model``
is a :class:`~smdlab.denoisers.GaussianDenoiser` or :class:`~smdlab.denoisers.SMDDenoiser`,
possibly DDP-wrapped (the network is always evaluated through ``model(...)``).

Every objective draws, per example, a jump t -> s of its training chain (uniformly over the chain's
S jumps; a respaced chain trains only its own steps), eps ~ N(0, I) and
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.  The likelihood-based losses also draw
x_s ~ q(x_s | x_t, x0) = N(c0 x0 + ct x_t, beta~ I), which together with x_t is a pair from the
forward process, (x_s, x_t) ~ q.

``jensen`` (the paper's objective).  log p(x_s | x_t) = log E_eta N(x_s; mu(x_t, z(eta)), s2 I)
    >= E_eta log N(x_s; mu(x_t, z(eta)), s2 I) (Jensen), estimated with one eta per example.  Up to
    constants and a positive per-step weight this is ||target - out(x_t, eta)||^2 in the
    parameterisation's space (``weighting="simple"``, what the paper and DDPM train with; for a
    Gaussian model this *is* the DDPM loss), or the bound itself (``weighting="likelihood"``, see
    below).  Minimiser: for every z, out(x_t, z) = E[target | x_t], because eta is independent of
    (x0, x_t): the best kernel ignores its latent and is the DDPM kernel (SMD.md, "the objective
    problem").
``multisample``.  The K-sample importance bound log p(x_s | x_t) >= E log (1/K) sum_k
    N(x_s; mu(x_t, z_k), s2 I) with K independent etas; K = 1 is the Jensen bound, and the bound
    increases to log p(x_s | x_t) as K grows (Burda et al. 2016).  Its maximiser over an
    expressive model is the true kernel, p(x_s | x_t) = q(x_s | x_t), when s2 is no larger than
    the true components' variance.
``energy``.  The energy score of the clean-point predictions x0_hat_m = x0_hat(x_t, z(eta_m)),
    m = 1..M (M >= 2): E||x0_hat - x0|| - 1/2 E||x0_hat - x0_hat'||, estimated without bias by
    (1/M) sum_m ||x0_hat_m - x0|| - 1/(2 M (M - 1)) sum_{m != m'} ||x0_hat_m - x0_hat_m'||.  The
    energy score is strictly proper, so its minimiser makes x0_hat(x_t, z(eta)) with eta ~ N(0, I)
    a sample of q(x_0 | x_t); the reverse kernel q(x_s | x_t, x0_hat) then is q(x_s | x_t) for any
    jump (De Bortoli et al. 2025, distributional diffusion).
    The kernel adds its own noise to x0_hat: on a jump t -> s > 0 it is the posterior's
    beta-tilde, the same Gaussian the data's x_s carries, and matching q(x_0 | x_t) matches
    q(x_s | x_t); on the jump to 0, however, the data carry none and the kernel adds its final
    variance, so a model trained on x0 (``energy_space="x0"``, the score as published) blurs
    twice there: its x0_hat already spreads over each mode's width, and the final variance
    (the data's within-mode variance in E6-E8) is added on top.  ``energy_space="kernel"``
    scores the kernel's own samples instead, x0_hat + sqrt(final variance) xi on that jump
    (the other jumps' common noise is left out of both sides), so the minimiser is the kernel
    whose final jump, noise included, is q(x_0 | x_t).
    ``energy_beta`` = beta in (0, 2) replaces each distance by its beta-th power, the energy
    score of exponent beta (Gneiting and Raftery 2007), also strictly proper; beta < 1 weighs
    short distances more, i.e. the spread of x0_hat within a mode.
    ``energy_bandwidths`` = (h_1, ...) replaces the distance by the kernel score of a sum of
    Gaussian kernels k(x, y) = sum_j exp(-||x - y||^2 / (2 h_j^2)):
    1/2 E k(Y, Y') - E k(Y, x0), strictly proper too (the kernel is characteristic).  Why: the
    energy distance weighs a difference of characteristic functions at frequency w by
    1 / |w|^(D + beta), so structure at a small scale (modes 0.5 apart: |w| ~ 12) counts for
    almost nothing (on the 4-step grid chain's last jump the best Gaussian's energy score is
    within 0.005 +- 0.003 of the exact kernel's, benchmarks/bench_energy_beta.py); a Gaussian
    kernel of bandwidth h weighs it by exp(-h^2 |w|^2 / 2) instead.

``nll``.  For the discrete-latent kernel of :mod:`smdlab.mixture_kernel` only: -log p(x_0 | x_t)
    of its mixture posterior, exact (no latent draws, no bound), per dimension; it bounds the
    local error of every jump from t (data processing, see that module).

Likelihood weighting.  The per-example loss -log p is multiplied by w = 2 s2 / (c0^2 D) and its
x-independent constant dropped: a positive weight per step does not move any step's minimiser,
and it puts every step on the scale of a squared error in x0 per dimension (for K = 1 the loss is
||x0 - x0_hat + (sqrt(beta~) / c0) xi||^2 / D with xi ~ N(0, I)).  On fine chains sqrt(beta~) / c0
is large: the bound is then a very noisy estimate, a property of the objective, not a bug.
"""

from __future__ import annotations

import math

import torch

from .parameterization import posterior_coefficients
from .schedules import NoiseSchedule
from .training import unwrap

OBJECTIVES = ("jensen", "multisample", "energy", "nll")
ENERGY_SPACES = ("x0", "kernel")
T_SAMPLINGS = ("uniform", "lognormal")


def step_probabilities(chain: NoiseSchedule, t_sampling: str = "uniform", p_mean: float = -1.2,
                       p_std: float = 1.2, uniform_share: float = 0.3) -> torch.Tensor:
    """Probabilities (S,) of training the jumps t_i -> t_{i-1}, i = 1..S, of ``chain``.

    ``"uniform"``: 1/S each (the DDPM default).  ``"lognormal"``: a mixture of
    ``uniform_share`` times uniform and (1 - uniform_share) times a log-normal density in the
    noise level sigma = sqrt((1 - abar) / abar), log sigma ~ N(p_mean, p_std^2) (the EDM
    training density), discretised onto the chain: jump i gets the normal mass of log sigma
    between the midpoints to its neighbours (the end bins reach to -inf and +inf, so the
    masses sum to 1 on any chain, also on 2 or 4 steps).

    Why: on a linear 1000-step chain most uniform draws are at large sigma where the posterior
    mean is nearly linear and easy, while the steps that place samples in modes (sigma ~ the
    mode spacing and below) get few updates; the uniform share keeps the coarse steps trained.
    """
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"unknown t_sampling {t_sampling!r}; choose one of {T_SAMPLINGS}")
    S = chain.original_steps.numel() - 1
    uni = torch.full((S,), 1.0 / S, dtype=torch.float64)
    if t_sampling == "uniform":
        return uni
    if not 0 <= uniform_share <= 1 or p_std <= 0:
        raise ValueError(f"lognormal t-sampling needs uniform_share in [0, 1] and p_std > 0; got "
                         f"{uniform_share}, {p_std}")
    la = chain.log_alpha_bars.to(torch.float64)[1:]
    log_sigma = 0.5 * (torch.log(-torch.expm1(la)) - la)                # increasing in i
    mid = 0.5 * (log_sigma[1:] + log_sigma[:-1])
    inf = torch.tensor([math.inf], dtype=torch.float64)
    edges = torch.cat([-inf, mid, inf])
    cdf = torch.special.ndtr((edges - p_mean) / p_std)
    ln = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return uniform_share * uni + (1 - uniform_share) * ln / ln.sum()


class Objective:
    """A training loss for a denoiser on a chain.

    Args:
        kind: ``"jensen"``, ``"multisample"``, ``"energy"`` or ``"nll"`` (the exact likelihood of
            a :class:`~smdlab.mixture_kernel.MixtureDenoiser`'s clean-point posterior).
        chain: the chain whose jumps are trained (a schedule or a respacing of the model's).
        n_samples: K for ``multisample`` (>= 1), M for ``energy`` (>= 2); ignored by ``jensen``.
        weighting: for ``jensen``: ``"simple"`` (regression in the parameterisation's space) or
            ``"likelihood"`` (the weighted Jensen bound; equals ``multisample`` with K = 1).
        t_sampling, p_mean, p_std, uniform_share: how the trained jump is drawn, see
            :func:`step_probabilities` (``"uniform"`` draws every jump equally often).
        energy_space: for ``energy``: ``"x0"`` (the score of the clean-point predictions) or
            ``"kernel"`` (the score of the kernel's own samples: on the jump to 0 the
            predictions carry the kernel's final variance, see the module docstring).
        energy_beta: for ``energy``: the exponent beta in (0, 2) of the distances (1: the
            energy score as published).
        energy_bandwidths: for ``energy``: None (the distance) or the bandwidths of a
            Gaussian-kernel score (see the module docstring), in the data's units.
    """

    def __init__(self, kind: str, chain: NoiseSchedule, n_samples: int = 1,
                 weighting: str = "simple", t_sampling: str = "uniform", p_mean: float = -1.2,
                 p_std: float = 1.2, uniform_share: float = 0.3, energy_space: str = "x0",
                 energy_beta: float = 1.0, energy_bandwidths=None):
        if kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {kind!r}; choose one of {OBJECTIVES}")
        if kind == "multisample" and n_samples < 1:
            raise ValueError(f"multisample needs n_samples = K >= 1; got {n_samples}")
        if kind == "energy" and n_samples < 2:
            raise ValueError(f"the energy score needs n_samples = M >= 2 latent draws; got "
                             f"{n_samples}")
        if weighting not in ("simple", "likelihood"):
            raise ValueError(f"unknown weighting {weighting!r}; choose 'simple' or 'likelihood'")
        if energy_space not in ENERGY_SPACES:
            raise ValueError(f"unknown energy_space {energy_space!r}; choose one of {ENERGY_SPACES}")
        if not 0 < float(energy_beta) < 2:
            raise ValueError(f"energy_beta must lie in (0, 2) (the energy score is strictly proper "
                             f"there); got {energy_beta}")
        self.energy_beta = float(energy_beta)
        if energy_bandwidths is not None:
            energy_bandwidths = tuple(float(h) for h in energy_bandwidths)
            if not energy_bandwidths or min(energy_bandwidths) <= 0:
                raise ValueError(f"energy_bandwidths must be positive numbers; got "
                                 f"{energy_bandwidths}")
            if self.energy_beta != 1.0:
                raise ValueError("energy_beta and energy_bandwidths are alternatives (a kernel "
                                 "score has no distance exponent); set one of them")
        self.energy_bandwidths = energy_bandwidths
        self.kind, self.chain, self.n_samples, self.weighting = kind, chain, n_samples, weighting
        self.energy_space = energy_space
        self._steps = chain.original_steps.clone()
        self.t_sampling = t_sampling
        self.t_params = {"p_mean": p_mean, "p_std": p_std, "uniform_share": uniform_share}
        self._probs = step_probabilities(chain, t_sampling, p_mean, p_std, uniform_share)

    def describe(self) -> dict:
        d = {"kind": self.kind, "chain": self.chain.name, "n_samples": self.n_samples,
             "weighting": self.weighting, "t_sampling": self.t_sampling}
        if self.kind == "energy":
            d["energy_space"] = self.energy_space
            if self.energy_beta != 1.0:
                d["energy_beta"] = self.energy_beta
            if self.energy_bandwidths is not None:
                d["energy_bandwidths"] = list(self.energy_bandwidths)
        if self.t_sampling != "uniform":
            d.update(self.t_params)
        return d

    def draw_jumps(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Indices i (n,) in 1..S of the jumps t_i -> t_{i-1} to train (see
        :func:`step_probabilities`); uniform draws use randint, as before this option existed,
        so that uniform runs keep their random streams."""
        S = self._probs.numel()
        if self.t_sampling == "uniform":
            return torch.randint(1, S + 1, (n,), generator=generator, device=device)
        probs = self._probs.to(device=device, dtype=torch.float32)
        return torch.multinomial(probs, n, replacement=True, generator=generator) + 1

    def __call__(self, model, x0: torch.Tensor, generator: torch.Generator | None = None):
        den = unwrap(model)
        if not self.chain.is_respacing_of(den.schedule):
            raise ValueError(f"training chain {self.chain.name} is not a respacing of the model's "
                             f"schedule {den.schedule.name}")
        N = x0.shape[0]
        dev = x0.device
        steps = self._steps.to(dev)
        i = self.draw_jumps(N, generator, dev)
        t, s = steps[i], steps[i - 1]
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev)
        x_t = den.diffuse(x0, eps, t)
        if self.kind == "jensen" and self.weighting == "simple":
            eta = _eta(den, N, generator, x0)
            out = model(x_t, t, eta).to(x0.dtype)     # float32 losses under bf16 autocast
            loss = (out - den.regression_target(x0, eps, t)).square().flatten(1).mean(1)
            return loss.mean(), {}
        if self.kind == "nll":
            from .mixture_kernel import MixtureDenoiser, posterior_nll

            if not isinstance(den, MixtureDenoiser):
                raise ValueError(f"the nll objective trains a MixtureDenoiser (its likelihood is "
                                 f"exact); got {type(den).__name__}")
            return posterior_nll(model, den, x0, x_t, t)
        if self.kind == "energy":
            return _energy(model, den, x0, x_t, t, s, self.n_samples, generator,
                           self.energy_space == "kernel", self.energy_beta,
                           self.energy_bandwidths)
        K = 1 if self.kind == "jensen" else self.n_samples
        return _multisample(model, den, x0, x_t, t, s, K, generator)


def _eta(den, n, generator, like):
    return den.draw_eta(n, generator, dtype=like.dtype, device=like.device) \
        if getattr(den, "has_latent", False) else None


def _multisample(model, den, x0, x_t, t, s, K, generator):
    """-(weighted) log (1/K) sum_k N(x_s; mu(x_t, z_k), s2 I) with (x_s, x_t) ~ q."""
    N, D = x0.shape[0], x0[0].numel()
    c0, _, var = den.step_coefficients(t, s)
    # x_s ~ q(x_s | x_t, x0): the posterior's variance is beta-tilde (0 on the jump to 0).
    q_var = posterior_coefficients(den.log_alpha_bars[t], den.log_alpha_bars[s])[2]
    xi = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    xr = x_t.repeat_interleave(K, 0)
    tr = t.repeat_interleave(K, 0)
    eta = _eta(den, N * K, generator, x0)
    x0_hat = den.x0_from_output(model(xr, tr, eta).to(x0.dtype), xr, tr)
    # x_s - mu_k = c0 d_k + sqrt(q_var) xi with d_k = x0 - x0_hat_k; the term q_var ||xi||^2 of
    # ||x_s - mu_k||^2 is the same for every k and free of parameters, so it is dropped exactly.
    d = (x0.repeat_interleave(K, 0) - x0_hat).flatten(1).reshape(N, K, D)
    c0x, qs = c0.to(x0.dtype)[:, None], q_var.sqrt().to(x0.dtype)[:, None]
    sq = c0x ** 2 * d.square().sum(-1) + 2 * c0x * qs * (d * xi.flatten(1)[:, None, :]).sum(-1)
    v = var.to(x0.dtype)[:, None]
    nll = -(torch.logsumexp(-sq / (2 * v), 1) - math.log(K))          # up to a constant
    w = 2 * var.to(x0.dtype) / (c0.to(x0.dtype) ** 2 * D)
    loss = (w * nll).mean()
    return loss, {}


def _energy(model, den, x0, x_t, t, s, M, generator, kernel_space=False, beta=1.0,
            bandwidths=None):
    """The energy score (distances to the power ``beta``) of M clean-point predictions per
    example (with ``kernel_space``, of the kernel's samples: the jump to 0 adds its
    final-variance noise to each prediction)."""
    N, D = x0.shape[0], x0[0].numel()
    xr = x_t.repeat_interleave(M, 0)
    tr = t.repeat_interleave(M, 0)
    eta = _eta(den, N * M, generator, x0)
    x0_hat = den.x0_from_output(model(xr, tr, eta).to(x0.dtype), xr, tr).reshape(N, M, D)
    if kernel_space and bool((s == 0).any()):
        var = den.step_coefficients(t, s)[2].to(x0.dtype)
        sd = torch.where(s == 0, var.sqrt(), torch.zeros_like(var))[:, None, None]
        noise = torch.randn(x0_hat.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x0_hat = x0_hat + sd * noise
    target = x0.reshape(N, 1, D)
    if bandwidths is not None:
        fit = _gauss_kernel(x0_hat - target, bandwidths).mean(1)
        pair = _gauss_kernel(x0_hat[:, :, None] - x0_hat[:, None, :], bandwidths)
        eye = torch.eye(M, dtype=torch.bool, device=x0.device)
        spread = pair.masked_fill(eye, 0.0).sum((1, 2)) / (M * (M - 1))
        loss = (0.5 * spread - fit).mean()
        return loss, {"spread": float(spread.mean().detach())}
    fit = _norm(x0_hat - target, beta).mean(1)
    pair = _norm(x0_hat[:, :, None] - x0_hat[:, None, :], beta)      # (N, M, M), zero diagonal
    spread = pair.sum((1, 2)) / (M * (M - 1))
    scale = D ** (beta / 2)
    loss = (fit - 0.5 * spread).mean() / scale
    return loss, {"spread": float(spread.mean().detach()) / scale}


def _gauss_kernel(x, bandwidths):
    """sum_j exp(-||x||^2 / (2 h_j^2)) over the last axis's norm."""
    sq = x.square().sum(-1)
    return sum(torch.exp(-sq / (2 * h * h)) for h in bandwidths)


def _norm(x, beta=1.0):
    # ||x||^beta with a tiny floor: the exact norm's gradient is undefined at 0 (the diagonal
    # pairs).  beta = 1 keeps the published form's arithmetic exactly.
    sq = x.square().sum(-1) + 1e-12
    return sq.sqrt() if beta == 1.0 else sq.pow(beta / 2)
