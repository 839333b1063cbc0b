"""What a denoising network can output, and the DDPM step it implies: the one place of these formulas.

Notation (SMD.md, "Discrete-time diffusion"): abar_t is the root schedule's cumulative product,
stored as ``la_t = log abar_t`` (float64), and every function below takes log abar, so that
1 - abar stays accurate at both ends of a chain.  Tensors of data have any shape (N, ...):
vectors (N, D), images (N, C, H, W); per-point coefficients are (N,) (or scalars) and are
broadcast over the trailing data dimensions by :func:`broadcast`.

Derivations (x0 clean data, eps ~ N(0, I), 0 <= s < t root steps):

  (1) forward marginal:  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
  (2) eps from x0:       eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)          (solve (1)).
  (3) x0 from eps:       x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          (solve (1)).
  (4) v (Salimans & Ho 2022):  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.  With (1), (x_t, v) is a
      rotation of (x0, eps) by the angle phi = atan(sqrt((1 - abar_t) / abar_t)), hence
      x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v  and  eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.
  (5) score (Tweedie):   grad log q(x_t) = -E[eps | x_t] / sqrt(1 - abar_t), so a network's
      eps_hat gives score_hat = -eps_hat / sqrt(1 - abar_t), and back.
  (6) DDPM posterior of the jump t -> s (Ho et al. 2020, eq. 7, for any s < t): with
      a^2 = abar_t / abar_s and b = 1 - a^2 (the jump's beta),
        q(x_s | x_t, x0) = N(c0 x0 + ct x_t, beta~ I),
        c0 = sqrt(abar_s) b / (1 - abar_t),   ct = a (1 - abar_s) / (1 - abar_t),
        beta~ = (1 - abar_s) / (1 - abar_t) b   (0 exactly on the jump to s = 0).
  (7) DDIM (Song et al. 2021, eq. 12) with sigma^2 = eta^2 beta~:
        x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps_hat + sigma xi.
      With eta = 1, 1 - abar_s - beta~ = abar_t (1 - abar_s)^2 / (abar_s (1 - abar_t)), so the
      eps_hat term is ct x_t - (ct sqrt(abar_t)) x0 and the step is (6): DDIM(1) = ancestral.

The step-index convention (every public function of smdlab): steps are ROOT steps, indices into
``schedule.root``; a respaced schedule only says which root steps are kept.  :func:`root_jump`
is the one check: a step that is not a kept step of the schedule it is asked of is an error, so
a coarse schedule's own index (5 of a 10-step respacing of 1000) cannot pass for root step 5.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule, as_integer

PARAMETERIZATIONS = ("eps", "x0", "v")


def broadcast(coef, like: torch.Tensor) -> torch.Tensor:
    """A per-point coefficient (N,) or scalar as a tensor broadcasting against ``like`` (N, ...),
    in like's dtype and device."""
    c = torch.as_tensor(coef, device=like.device).to(like.dtype)
    if c.ndim == 0:
        return c
    return c.reshape(-1, *([1] * (like.ndim - 1)))


def _roots(log_ab, like):
    """(sqrt(abar), sqrt(1 - abar)) broadcast against ``like``, computed in float64 from log abar."""
    la = torch.as_tensor(log_ab, dtype=torch.float64, device=like.device)
    return broadcast((0.5 * la).exp(), like), broadcast((-torch.expm1(la)).sqrt(), like)


def diffuse(x0: torch.Tensor, eps: torch.Tensor, log_ab) -> torch.Tensor:
    """x_t of (1) for x0, eps (N, ...) and log abar_t (N,) or scalar."""
    sa, so = _roots(log_ab, x0)
    return sa * x0 + so * eps


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, log_ab) -> torch.Tensor:
    """eps of (2)."""
    sa, so = _roots(log_ab, x_t)
    return (x_t - sa * x0) / so


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, log_ab) -> torch.Tensor:
    """x0 of (3)."""
    sa, so = _roots(log_ab, x_t)
    return (x_t - so * eps) / sa


def v_from(x0: torch.Tensor, eps: torch.Tensor, log_ab) -> torch.Tensor:
    """v of (4) from x0 and eps."""
    sa, so = _roots(log_ab, x0)
    return sa * eps - so * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, log_ab) -> torch.Tensor:
    """x0 of (4) from x_t and v."""
    sa, so = _roots(log_ab, x_t)
    return sa * x_t - so * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, log_ab) -> torch.Tensor:
    """eps of (4) from x_t and v."""
    sa, so = _roots(log_ab, x_t)
    return so * x_t + sa * v


def score_from_eps(eps: torch.Tensor, log_ab) -> torch.Tensor:
    """The score of (5) from (a prediction of) eps."""
    _, so = _roots(log_ab, eps)
    return -eps / so


def eps_from_score(score: torch.Tensor, log_ab) -> torch.Tensor:
    """eps of (5) from the score."""
    _, so = _roots(log_ab, score)
    return -so * score


def _check_kind(kind: str) -> None:
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}")


def to_x0(kind: str, out: torch.Tensor, x_t: torch.Tensor, log_ab) -> torch.Tensor:
    """x0_hat from a network output ``out`` in parameterisation ``kind`` (computed in out's dtype)."""
    _check_kind(kind)
    x_t = x_t.to(out.dtype)
    if kind == "x0":
        return out
    if kind == "eps":
        return x0_from_eps(x_t, out, log_ab)
    return x0_from_v(x_t, out, log_ab)


def target(kind: str, x0: torch.Tensor, eps: torch.Tensor, log_ab) -> torch.Tensor:
    """The regression target of parameterisation ``kind`` for x_t = diffuse(x0, eps, log_ab)."""
    _check_kind(kind)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    return v_from(x0, eps, log_ab)


def posterior_coefficients(log_ab_t, log_ab_s):
    """(c0, ct, beta_tilde, beta) of the jumps t -> s from (6), float64, for log abar_t < log abar_s
    given as tensors (N,) or Python floats (then 0-d tensors)."""
    lt = torch.as_tensor(log_ab_t, dtype=torch.float64)
    ls = torch.as_tensor(log_ab_s, dtype=torch.float64, device=lt.device)
    if not (ls > lt).all():
        raise ValueError("every jump t -> s needs abar_s > abar_t, i.e. s < t")
    om_t, om_s = -torch.expm1(lt), -torch.expm1(ls)
    beta = -torch.expm1(lt - ls)
    c0 = (0.5 * ls).exp() * beta / om_t
    ct = (0.5 * (lt - ls)).exp() * om_s / om_t
    return c0, ct, om_s / om_t * beta, beta


def ddim_mean(x_t: torch.Tensor, x0: torch.Tensor, log_ab_t, log_ab_s, variance) -> torch.Tensor:
    """The mean of the DDIM step (7) with noise variance sigma^2 = ``variance`` ((N,) or scalar).

    The square root's argument is clipped at 0: on the jump to s = 0 it is -sigma^2, and the mean
    is then x0 itself (a DDIM step to the data lands on its prediction).
    """
    eps = eps_from_x0(x_t, x0, log_ab_t)
    ls = torch.as_tensor(log_ab_s, dtype=torch.float64, device=x_t.device)
    var = torch.as_tensor(variance, dtype=torch.float64, device=x_t.device)
    keep = (-torch.expm1(ls) - var).clamp_min(0).sqrt()
    return broadcast((0.5 * ls).exp(), x_t) * x0 + broadcast(keep, x_t) * eps


def root_jump(schedule, t, s=None, who: str = "step") -> tuple[int, int, float, float]:
    """Validate the jump t -> s of ``schedule`` in ROOT steps and return (t, s, log abar_t, log abar_s).

    Both steps must be kept steps of ``schedule`` (``schedule.original_steps``; every step of a
    root schedule is kept) with 0 <= s < t <= T of the root.  ``s=None`` is the kept step just
    below t (t - 1 on a root schedule).  ``who`` names the caller in the error message.
    """
    _check_schedule(schedule, who)
    root = schedule.root
    # Every step of a root schedule is kept (no list to search on the 1000-step chains).
    kept = range(root.T + 1) if schedule is root else schedule.original_steps.tolist()
    t = _as_step(t, "t", who)
    if not 0 < t <= root.T:
        raise ValueError(f"{who}: root step t={t} is outside 1..T={root.T} of {root.name}")
    if t not in kept:
        raise ValueError(f"{who}: t={t} is not a kept step of {schedule.name} (steps are ROOT "
                         f"indices; this schedule keeps {_short(kept)})")
    if s is None:
        s = kept[kept.index(t) - 1]
    s = _as_step(s, "s", who)
    if not 0 <= s < t:
        raise ValueError(f"{who}: need root steps 0 <= s < t; got t={t}, s={s}")
    if s not in kept:
        raise ValueError(f"{who}: s={s} is not a kept step of {schedule.name} (steps are ROOT "
                         f"indices; this schedule keeps {_short(kept)})")
    return t, s, root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()


def check_root_step(schedule, t, who: str = "step") -> int:
    """Validate one ROOT step t (0 allowed) as a kept step of ``schedule``; return it as an int."""
    _check_schedule(schedule, who)
    t = _as_step(t, "t", who)
    if not 0 <= t <= schedule.root.T:
        raise ValueError(f"{who}: root step {t} is outside 0..T={schedule.root.T} of "
                         f"{schedule.root.name}")
    if schedule is not schedule.root and t not in schedule.original_steps.tolist():
        raise ValueError(f"{who}: t={t} is not a kept step of {schedule.name} (steps are ROOT "
                         f"indices; this schedule keeps {_short(schedule.original_steps.tolist())})")
    return t


def _as_step(t, name: str, who: str) -> int:
    # One integer rule for every step in smdlab (schedules.as_integer): 2.7 or '5' is a caller's bug.
    return as_integer(t, f"{who}: step {name}")


def _check_schedule(schedule, who: str) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"{who}: schedule must be a NoiseSchedule; got {type(schedule).__name__}")


def _short(kept) -> str:
    kept = list(kept)
    return str(kept) if len(kept) <= 8 else f"[{kept[0]}, {kept[1]}, ..., {kept[-1]}]"
