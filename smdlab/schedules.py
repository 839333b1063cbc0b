"""Discrete-time noise schedules and respacing.

Notation (see ../shared/notes/SMD.md): beta_t for t = 1..T, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s, abar_0 = 1.  Every schedule is stored in float64 through
log(abar_t), so that 1 - abar_t and ratios abar_t / abar_s stay accurate at both ends of the
chain (T up to several thousand, abar close to 1 at the first step).

A respaced schedule is the exact DDPM on a sub-chain 0 = t_0 < t_1 < ... < t_S = T of a root
schedule: its betas are 1 - abar_{t_i} / abar_{t_{i-1}} and its abar are the root's abar on the
kept steps.  It remembers, in ``original_steps``, which root step each of its steps is, so a
network trained on root indices is always evaluated at the right index.

diffusers (Hugging Face) indexes the same process from 0: its ``alphas_cumprod[k]`` is smdlab's
``alpha_bars[k + 1]`` and its timestep k is smdlab's root step k + 1 (its "previous timestep" -1
is root step 0, abar = 1).  :meth:`NoiseSchedule.from_diffusers`, :meth:`NoiseSchedule.to_diffusers`
and :meth:`NoiseSchedule.diffusers_timesteps` translate; :meth:`NoiseSchedule.respace_diffusers`
gives the chain diffusers samples for each ``timestep_spacing`` (its default "leading" included).
"""

from __future__ import annotations

import math
import numbers

import torch

SPACINGS = ("linspace", "trailing", "quadratic")
#: diffusers' ``timestep_spacing`` values (:meth:`NoiseSchedule.respace_diffusers`).
DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


class IntegerTypeError(TypeError, ValueError):
    """A step index or count that is not an integer (a float, a string, a bool).

    It is a TypeError, and also a ValueError so that code catching ValueError for every bad
    argument (the CLIs, older callers) still catches it.
    """


def as_integer(value, name: str) -> int:
    """``value`` as a Python int: Python, numpy and 0-d torch integers are accepted.

    Floats (even 3.0), strings, bools and anything else raise :class:`IntegerTypeError` naming
    ``name``: silently truncating t = 2.7 to 2 or parsing t = '5' hides a caller's bug.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.ndim != 0 or value.dtype.is_floating_point or \
                value.dtype.is_complex or value.dtype == torch.bool:
            raise IntegerTypeError(f"{name} must be an integer; got a tensor of shape "
                                   f"{tuple(value.shape)} and dtype {value.dtype}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # numpy.bool_ is not Integral; numpy integers are.
        raise IntegerTypeError(f"{name} must be an integer; got {value!r} "
                               f"({type(value).__name__})")
    return int(value)


def check_step(t, name: str = "t", T: int | None = None) -> int:
    """Validate one step index: an integer (see :func:`as_integer`) in 0..T; returns it as int.

    Raises IntegerTypeError (a TypeError) for a non-integer and ValueError for one outside 0..T,
    both naming ``name``.  The one step validator of smdlab: schedules, the exact engine and the
    kernels all go through it.
    """
    t = as_integer(t, name)
    if t < 0 or (T is not None and t > T):
        upper = "" if T is None else f"..T={T}"
        raise ValueError(f"step {name}={t} is outside 0{upper}")
    return t


def check_jump(t, s, T: int | None = None) -> tuple[int, int]:
    """Validate a reverse jump t -> s: integers with 0 <= s < t <= T; returns (t, s) as ints."""
    t, s = check_step(t, "t", T), check_step(s, "s", T)
    if not s < t:
        raise ValueError(f"need s < t for a jump t -> s; got t={t}, s={s}"
                         + ("" if T is None else f" (0 <= s < t <= T={T})"))
    return t, s


def _check_real(value, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = True, high_open: bool = True) -> float:
    """A finite real number within (low, high) (open or closed ends), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (isinstance(value, torch.Tensor) and value.numel() == 1
                and not value.dtype.is_complex and value.dtype != torch.bool):
            raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        brackets = ("(" if low_open or low is None else "[") + lo + ", " + hi + \
            (")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be a finite number in {brackets}; got {v!r}")
    return v


class NoiseSchedule:
    """A T-step forward process q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I).

    Attributes:
        T: number of steps.
        betas: (T,) float64, ``betas[i]`` is beta at step i + 1.
        alphas: (T,) float64, 1 - betas.
        alpha_bars: (T + 1,) float64, ``alpha_bars[t]`` is abar_t and ``alpha_bars[0] == 1``.
        log_alpha_bars: (T + 1,) float64, log abar_t (the primary representation).
        original_steps: (T + 1,) int64, the root-schedule step of each step of this schedule
            (``arange(T + 1)`` for a root schedule).
        root: the schedule this one was respaced from (itself for a root schedule).
        name: a short human-readable description.
    """

    def __init__(self, betas: torch.Tensor | list[float], name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a schedule needs at least one step (betas is empty)")
        if not torch.isfinite(betas).all():
            raise ValueError("betas must be finite")
        if (betas <= 0).any() or (betas >= 1).any():
            bad = betas[(betas <= 0) | (betas >= 1)][0].item()
            raise ValueError(f"every beta must lie in (0, 1); got {bad!r}")
        log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self._init(log_ab, betas, torch.arange(betas.numel() + 1), None, name)

    def _init(self, log_alpha_bars, betas, original_steps, root, name):
        self.log_alpha_bars = log_alpha_bars
        self.betas = betas
        # exp of the log-ratio, not 1 - beta: keeps alpha accurate when beta is close to 1.
        self.alphas = torch.exp(log_alpha_bars.diff())
        self.alpha_bars = torch.exp(log_alpha_bars)
        self.one_minus_alpha_bars = -torch.expm1(log_alpha_bars)
        self.original_steps = original_steps.to(torch.int64)
        self.root = self if root is None else root
        self.T = betas.numel()
        self.name = name

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """DDPM's linear schedule (Ho et al. 2020): beta from beta_start to beta_end over T steps."""
        T = _check_T(T)
        beta_start = _check_real(beta_start, "beta_start", 0.0, 1.0)
        beta_end = _check_real(beta_end, "beta_end", 0.0, 1.0)
        if T == 1:
            betas = torch.tensor([beta_end], dtype=torch.float64)
        else:
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(betas, name=f"linear(T={T})")

    @classmethod
    def cosine(cls, T: int = 1000, offset: float = 0.008, max_beta: float = 0.999):
        """Cosine schedule (Nichol & Dhariwal 2021): abar(t) = f(t)/f(0), f = cos^2(pi/2 (t/T+s)/(1+s))."""
        T = _check_T(T)
        offset = _check_real(offset, "offset", 0.0, None, low_open=False)
        max_beta = _check_real(max_beta, "max_beta", 0.0, 1.0)
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas, name=f"cosine(T={T})")

    @classmethod
    def sigmoid(cls, T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                max_beta: float = 0.999):
        """Sigmoid schedule (Jabri et al. 2022): abar(t) follows a rescaled sigmoid from 1 to 0."""
        T = _check_T(T)
        start, end = _check_real(start, "start"), _check_real(end, "end")
        tau = _check_real(tau, "tau", 0.0)
        max_beta = _check_real(max_beta, "max_beta", 0.0, 1.0)
        if not start < end:
            raise ValueError(f"sigmoid schedule needs start < end; got start={start}, end={end}")
        t = torch.arange(T + 1, dtype=torch.float64) / T
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        if not (v_end - v_start).item() > 1e-12:
            raise ValueError(f"sigmoid schedule: tau={tau} is too large for start={start}, "
                             f"end={end} (the sigmoid is flat; abar would be 0/0)")
        abar = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
        betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas, name=f"sigmoid(T={T})")

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> NoiseSchedule:
        """``"linear"``, ``"cosine"`` or ``"sigmoid"`` with T steps."""
        makers = {"linear": cls.linear, "cosine": cls.cosine, "sigmoid": cls.sigmoid}
        if not isinstance(name, str):
            raise TypeError(f"schedule name must be a string; got {name!r}")
        if name not in makers:
            raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(makers)}")
        return makers[name](T)

    @classmethod
    def from_diffusers(cls, source, name: str = "diffusers") -> NoiseSchedule:
        """The schedule of a diffusers scheduler, or of its ``alphas_cumprod`` (T,).

        ``source``: a diffusers scheduler (anything with ``betas`` or ``alphas_cumprod``; its
        ``betas`` are used, they are exact in float32 where the ratio of two float32 cumulative
        products would lose digits at small beta), or an ``alphas_cumprod`` array / tensor / list of
        T values, strictly decreasing in (0, 1).  ``alphas_cumprod[k]`` becomes ``alpha_bars[k+1]``.
        A zero-terminal-SNR scheduler (``rescale_betas_zero_snr``) has a last beta of exactly 1,
        which no density chain has: pass its ``alphas_cumprod`` (last value 2^-24) instead.
        """
        betas = getattr(source, "betas", None)
        if betas is not None and not isinstance(source, (torch.Tensor, list, tuple)):
            return cls(torch.as_tensor(betas, dtype=torch.float64), name=name)
        ac = getattr(source, "alphas_cumprod", source)
        try:
            ac = torch.as_tensor(ac, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"alphas_cumprod must be a scheduler or a (T,) array of numbers; got "
                            f"{type(source).__name__}") from e
        if ac.numel() < 1 or not torch.isfinite(ac).all() or (ac <= 0).any() or (ac >= 1).any():
            raise ValueError("alphas_cumprod must hold T >= 1 finite values in (0, 1)")
        log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), ac.log()])
        if not (log_ab.diff() < 0).all():
            raise ValueError("alphas_cumprod must be strictly decreasing (every beta in (0, 1))")
        return cls(-torch.expm1(log_ab.diff()), name=name)

    def to_diffusers(self) -> dict:
        """Keyword arguments of a diffusers scheduler with this (root) schedule:
        ``DDPMScheduler(**schedule.to_diffusers())`` gives ``alphas_cumprod == alpha_bars[1:]``.

        diffusers respaces at sampling time (``set_timesteps``), so a respaced schedule is refused:
        convert its ``root`` and pass :meth:`diffusers_timesteps` to ``set_timesteps(timesteps=...)``.
        """
        if self.root is not self:
            raise ValueError(f"{self.name} is a respaced schedule: use .root.to_diffusers() and "
                             "set_timesteps(timesteps=schedule.diffusers_timesteps())")
        return {"num_train_timesteps": self.T, "trained_betas": self.betas.tolist()}

    def diffusers_timesteps(self) -> list[int]:
        """diffusers' timesteps of this chain, noisiest first: root steps t_S ... t_1, minus one
        (root step 0 is diffusers' "previous timestep" -1 of the last step)."""
        return [int(t) - 1 for t in self.original_steps[1:].flip(0).tolist()]

    # ------------------------------------------------------------------ respacing
    def respace(self, S: int, spacing: str = "linspace") -> NoiseSchedule:
        """The exact S-step sub-chain of this schedule.

        Kept steps always start at T and end at 0.  Spacings:
          * ``"linspace"``: round(i T / S), evenly spread, both ends exact;
          * ``"trailing"``: T, T - c, ..., T - (S - 1) c with integer stride c = T // S, the
            remainder absorbed by the final jump to 0;
          * ``"quadratic"``: i + round((i / S)^2 (T - S)), dense near 0 (as in DDIM's "quad").
        When S divides T, "trailing" is diffusers' "trailing" too.  diffusers' default "leading"
        does not start at T: it is :meth:`respace_diffusers`.
        ``S == T`` gives back this schedule's steps.  Respacing a respaced schedule keeps
        ``original_steps`` pointing at the root schedule.
        """
        return self._sub_chain(respaced_steps(self.T, S, spacing), f"{self.name}->{S}({spacing})")

    def respace_diffusers(self, S: int, spacing: str = "leading", steps_offset: int = 0) -> NoiseSchedule:
        """The S-step chain a diffusers scheduler samples after ``set_timesteps(S)``.

        diffusers' timesteps k (0-based) are root steps k + 1, and the step after the last one
        (its "previous timestep" -1, alpha_prod = 1) is root step 0.  Its ``timestep_spacing``:
          * ``"leading"`` (its default): k = i (T // S) + steps_offset, i = 0 .. S - 1, so the
            noisiest root step is 1 + (S - 1) (T // S) + steps_offset, not T (901 for 10 of 1000
            steps): the chain starts from N(0, I) at a step where abar_t is not yet ~0;
          * ``"trailing"``: k = round(T, T - T/S, ..., > 0) - 1 (the noisiest is T);
          * ``"linspace"``: k = round(linspace(0, T - 1, S)).
        Needs a root schedule (diffusers' timesteps index the training chain).
        """
        if self.root is not self:
            raise ValueError(f"respace_diffusers needs a root schedule; {self.name} is respaced "
                             "(call it on .root)")
        S = as_integer(S, "S (the number of steps)")
        offset = as_integer(steps_offset, "steps_offset")
        if not 1 <= S <= self.T:
            raise ValueError(f"cannot respace a {self.T}-step schedule to S={S} steps (need 1..T)")
        if spacing == "leading":
            k = [i * (self.T // S) + offset for i in range(S)]
        elif spacing == "trailing":
            k = [int(torch.round(torch.tensor(self.T - i * self.T / S, dtype=torch.float64))) - 1
                 for i in range(S)]
        elif spacing == "linspace":
            k = torch.linspace(0, self.T - 1, S, dtype=torch.float64).round().long().tolist()
        else:
            raise ValueError(f"unknown diffusers timestep_spacing {spacing!r}; choose one of "
                             f"{DIFFUSERS_SPACINGS}")
        kept = sorted({0, *(int(v) + 1 for v in k)})
        if len(kept) != S + 1 or min(k) < 0 or kept[-1] > self.T:
            raise ValueError(f"diffusers {spacing!r} spacing with S={S}, steps_offset={offset} "
                             f"gives timesteps outside 0..T-1={self.T - 1} or repeated ones")
        return self._sub_chain(torch.tensor(kept, dtype=torch.int64),
                               f"{self.name}->{S}(diffusers-{spacing})")

    def _sub_chain(self, kept: torch.Tensor, name: str) -> NoiseSchedule:
        """The exact chain on this schedule's steps ``kept`` (0 = kept[0] < ... , int64)."""
        log_ab = self.log_alpha_bars[kept]
        betas = -torch.expm1(log_ab[1:] - log_ab[:-1])
        out = NoiseSchedule.__new__(NoiseSchedule)
        out._init(log_ab, betas, self.original_steps[kept], self.root, name)
        return out

    # ------------------------------------------------------------------ helpers
    def jump(self, t: int, s: int) -> tuple[float, float, float, float]:
        """(abar_t, abar_s, 1 - abar_t, 1 - abar_s) as Python floats, validating 0 <= s < t <= T."""
        t, s = check_jump(t, s, self.T)
        return (self.alpha_bars[t].item(), self.alpha_bars[s].item(),
                self.one_minus_alpha_bars[t].item(), self.one_minus_alpha_bars[s].item())

    def jump_beta(self, t: int, s: int) -> float:
        """1 - abar_t / abar_s: the variance of q(x_t | x_s) for the jump s -> t."""
        t, s = check_jump(t, s, self.T)
        return -math.expm1(self.log_alpha_bars[t].item() - self.log_alpha_bars[s].item())

    def posterior_variance(self, t: int, s: int) -> float:
        """beta-tilde of the jump: (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)."""
        _, _, omt, oms = self.jump(t, s)
        return oms / omt * self.jump_beta(t, s)

    def kernel_variance(self, t: int, s: int, kind: str = "beta_tilde") -> float:
        """The fixed variance of a Gaussian reverse kernel for the jump t -> s (DDPM's two choices).

        ``"beta"``: 1 - abar_t / abar_s.  ``"beta_tilde"``: the posterior variance, except on the
        final jump to 0, where it is exactly 0; there it is clipped, as in improved DDPM, to the
        posterior variance of the equally long jump just above (2t -> t; t -> t/2 when t = T), so
        that the kernel stays a density.  On a uniform chain this is the next jump's variance.
        """
        if kind == "beta":
            return self.jump_beta(t, s)
        if kind != "beta_tilde":
            raise ValueError(f"unknown kernel variance {kind!r}; choose 'beta_tilde' or 'beta'")
        t, s = check_jump(t, s, self.T)
        if s > 0:
            return self.posterior_variance(t, s)
        if t < self.T:
            return self.posterior_variance(min(2 * t, self.T), t)
        if self.T >= 2:
            return self.posterior_variance(self.T, self.T // 2)
        return self.jump_beta(t, s)

    def root_step(self, t: int) -> int:
        """The root-schedule index of this schedule's step t."""
        return int(self.original_steps[check_step(t, "t", self.T)])

    def is_respacing_of(self, other: NoiseSchedule) -> bool:
        """True when this schedule's steps are steps of ``other`` (same root abar)."""
        if self.root is other.root:
            return True
        a, b = self.root.log_alpha_bars, other.root.log_alpha_bars
        return a.shape == b.shape and torch.equal(a, b)

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name}, T={self.T}, abar_T={self.alpha_bars[-1].item():.3g})"


def _check_T(T, name: str = "T") -> int:
    try:
        T = as_integer(T, name)
    except IntegerTypeError as e:
        raise IntegerTypeError(f"{name} must be a positive integer; got {T!r} "
                               f"({type(T).__name__})") from e
    if T < 1:
        raise ValueError(f"{name} must be a positive integer; got {T!r}")
    return T


def respaced_steps(T: int, S: int, spacing: str = "linspace") -> torch.Tensor:
    """Kept steps 0 = t_0 < t_1 < ... < t_S = T of an S-step sub-chain of a T-step chain."""
    T = _check_T(T)
    S = as_integer(S, "S (the number of steps)")
    if S < 1:
        raise ValueError(f"cannot respace to S={S} steps: need at least 1")
    if S > T:
        raise ValueError(f"cannot respace a {T}-step schedule to S={S} > T steps")
    i = torch.arange(S + 1, dtype=torch.float64)
    if spacing == "linspace":
        kept = torch.floor(i * T / S + 0.5)
    elif spacing == "trailing":
        c = T // S
        kept = torch.cat([torch.zeros(1, dtype=torch.float64), T - c * (S - i[1:])])
    elif spacing == "quadratic":
        kept = i + torch.floor((i / S) ** 2 * (T - S) + 0.5)
    else:
        hint = " (diffusers' 'leading' spacing: NoiseSchedule.respace_diffusers)" \
            if spacing == "leading" else ""
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}{hint}")
    kept = kept.to(torch.int64)
    assert kept[0] == 0 and kept[-1] == T and (kept.diff() > 0).all(), kept
    return kept
