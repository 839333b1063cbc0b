"""Learning curves of quality against the exact target, and the rule that calls a model converged.

A learned kernel is judged during training, not only at the end: at ``n_evals`` steps spread over
training (:func:`evaluation_steps`) its EMA weights are scored against the exact mixture (in-mode
share and NLL excess of ancestral samples under q, the grid global KL where it applies) and the
point is appended to a :class:`LearningCurve`.

The convergence rule (:func:`is_converged`), applied to one metric of the curve::

    converged  <=>  for every evaluation j among the last ``window`` (default 3):
                    |v_j - v_last| <= n_se * sqrt(se_j^2 + se_last^2) + rel_tol * |v_last| + abs_tol

i.e. the last ``window`` evaluations agree with the final one within two standard errors of
their difference (the sampling noise of the evaluation itself) plus a 2% relative tolerance
(for metrics without a standard error, like the grid KL, the relative tolerance is the test).
Comparing against the point ``window - 1`` evaluations back, not just the previous one, is what
catches a curve that is still improving by less than its noise per evaluation but clearly over
the last quarter of training.  A curve shorter than ``window`` is never converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_WINDOW = 3
DEFAULT_N_SE = 2.0
DEFAULT_REL_TOL = 0.02


def evaluation_steps(total: int, n_evals: int = 8) -> list[int]:
    """``n_evals`` distinct training steps (ascending, the last one ``total``) evenly spread over
    1..total (fewer when total < n_evals)."""
    if total < 1 or n_evals < 1:
        raise ValueError(f"evaluation_steps needs total >= 1 and n_evals >= 1; got {total}, "
                         f"{n_evals}")
    return sorted({max(1, round(total * (k + 1) / n_evals)) for k in range(n_evals)})


def is_converged(values, ses=None, *, window: int = DEFAULT_WINDOW, n_se: float = DEFAULT_N_SE,
                 rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = 0.0) -> bool:
    """The convergence rule of the module docstring for one metric's curve.

    Args:
        values: the metric at successive evaluations (oldest first).
        ses: their standard errors (None or missing entries: 0).
        window: how many final evaluations must agree (>= 2).
    A non-finite value among the last ``window`` is never converged.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2; got {window}")
    if n_se < 0 or rel_tol < 0 or abs_tol < 0:
        raise ValueError("n_se, rel_tol and abs_tol must be >= 0")
    v = [float(x) for x in values]
    se = [0.0 if s is None else float(s) for s in (ses if ses is not None else [None] * len(v))]
    if len(se) != len(v):
        raise ValueError(f"values and ses differ in length ({len(v)} vs {len(se)})")
    if len(v) < window:
        return False
    tail, tail_se = v[-window:], se[-window:]
    if not all(math.isfinite(x) for x in tail):
        return False
    last, last_se = tail[-1], tail_se[-1]
    tol_base = rel_tol * abs(last) + abs_tol
    return all(abs(x - last) <= n_se * math.sqrt(s * s + last_se * last_se) + tol_base
               for x, s in zip(tail[:-1], tail_se[:-1]))


@dataclass
class LearningCurve:
    """Evaluations of one model during training.

    points: [{"step": int, metric: value, metric + "_se": standard error, ...}] oldest first;
    primary: the metric the rule is applied to (in-mode share on long chains, the grid KL on
    few-step chains, NLL excess where no grid applies); rel_tol: the rule's relative tolerance
    for it (the zoo uses 5% for the grid KL, which has no standard error: the EMA weights of a
    trained few-step model still move its KL by a few per cent between evaluations); abs_tol:
    an absolute tolerance (the zoo uses 0.02 nats for the grid KL: the curve grid's own node
    error, measured on a 4-step mixture kernel at KL ~0.05 as 0.0466 / 0.0529 / 0.0474 nats on
    64^2 / 96^2 / 128^2 nodes, so a KL near 0 cannot be resolved to a few per cent).
    """

    primary: str
    points: list = field(default_factory=list)
    rel_tol: float = DEFAULT_REL_TOL
    abs_tol: float = 0.0

    def add(self, step: int, metrics: dict) -> None:
        if self.points and step <= self.points[-1]["step"]:
            raise ValueError(f"evaluation steps must increase; got {step} after "
                             f"{self.points[-1]['step']}")
        self.points.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})

    def series(self, metric: str) -> tuple[list[int], list[float], list[float | None]]:
        """(steps, values, standard errors) of one metric."""
        pts = [p for p in self.points if metric in p]
        return ([p["step"] for p in pts], [p[metric] for p in pts],
                [p.get(metric + "_se") for p in pts])

    def converged(self, metric: str | None = None, **rule) -> bool:
        _, v, se = self.series(metric or self.primary)
        return is_converged(v, se, **{"rel_tol": self.rel_tol, "abs_tol": self.abs_tol, **rule})

    def to_dict(self) -> dict:
        return {"primary": self.primary, "points": list(self.points), "rel_tol": self.rel_tol,
                "abs_tol": self.abs_tol,
                "converged": self.converged()}

    @classmethod
    def from_dict(cls, d: dict) -> LearningCurve:
        return cls(d["primary"], list(d["points"]), float(d.get("rel_tol", DEFAULT_REL_TOL)),
                   float(d.get("abs_tol", 0.0)))
