"""E1: what the true reverse kernel q(x_s | x_t) looks like, beside the best single Gaussian.

For the 1-D two-mode mixture and the 7 x 7 grid, at several jumps of chains with different numbers
of steps, and at x_t between modes and on a mode: the exact posterior density, the moment-matched
Gaussian, the effective number of posterior components exp(H(r(x_t))) (components, not modes: they
may overlap into one bump) and KL(q(x_s | x_t) || Gaussian)
at that x_t (nats, with its standard error).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..exact import best_gaussian_of, posterior_from_log_alpha_bars
from ..kernels import ExactKernel
from ..provenance import save_figure
from ..quadrature import point_kl_quadrature
from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from ..targets import make_target
from .base import ExperimentResult, Outputs, Verdict, register, save_result


@dataclass
class E1Config:
    """chains_1d / chains_2d: numbers of steps of respaced linear(T) chains; for each chain the
    first, a middle and the last jump are shown; n_mc: copies of x_t in the plotted posterior
    batch (the KL itself is by quadrature, see :func:`smdlab.quadrature.point_kl_quadrature`)."""

    seed: int = 0
    T: int = 1000
    chains_1d: tuple = (1000, 10, 4)
    chains_2d: tuple = (10, 4)
    n_mc: int = 2048
    n_density: int = 400

    @classmethod
    def quick(cls):
        return cls(chains_1d=(10, 4), chains_2d=(4,), n_mc=256, n_density=150)


def _jumps(root, S):

    pairs = chain_steps(ExactKernel(make_target("two_modes"), root), root.respace(S))
    idx = sorted({0, len(pairs) // 2, len(pairs) - 1})
    return [pairs[i] for i in idx]


def _panel(mix, root, t, s, x_t, cfg, g):
    """Posterior and moment Gaussian at one x_t (a (D,) tensor); KL with its quadrature error."""
    lt, ls = root.log_alpha_bars[t].item(), root.log_alpha_bars[s].item()
    xb = x_t[None].expand(cfg.n_mc, -1).contiguous()
    post = posterior_from_log_alpha_bars(mix, xb, lt, ls)
    gauss = best_gaussian_of(post, root, t, s, "moment")
    # Deterministic KL at this one x_t; "kl_se" is the quadrature's error estimate (a Monte Carlo
    # standard error over copies of one point, as printed before, was not an error bar).
    kl, se = point_kl_quadrature(mix, lt, ls, x_t, lambda p: best_gaussian_of(p, root, t, s,
                                                                               "moment"))
    r = post.weights[0]
    eff = math.exp(-(r * r.clamp_min(1e-300).log()).sum().item())
    return post, gauss, {"t": t, "s": s, "x_t": x_t.tolist(), "kl": kl, "kl_se": se,
                         "effective_components": eff,
                         "posterior_std": post.covariance_trace()[0].sqrt().item()}


@register("e1", "Posterior shapes: q(x_{t-1} | x_t) beside the best single Gaussian", E1Config)
def run(cfg: E1Config, out: Outputs) -> ExperimentResult:
    import matplotlib.pyplot as plt


    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    root = NoiseSchedule.linear(cfg.T)
    data = {"two_modes": [], "grid": []}
    figs = []
    # 1-D: rows = chains, columns = jumps; curves for x_t between the modes and on a mode.
    mix = make_target("two_modes")
    fig, axes = plt.subplots(len(cfg.chains_1d), 3, figsize=(13, 3.2 * len(cfg.chains_1d)),
                             squeeze=False)
    for i, S in enumerate(cfg.chains_1d):
        for j, (t, s) in enumerate(_jumps(root, S)):
            ax = axes[i, j]
            sq = math.sqrt(root.alpha_bars[t].item())
            for x_val, color in ((0.0, "tab:red"), (0.5 * sq, "tab:purple"), (sq, "tab:blue")):
                post, gauss, info = _panel(mix, root, t, s, torch.tensor([x_val],
                                           dtype=torch.float64), cfg, g)
                info["steps"] = S
                data["two_modes"].append(info)
                mu, sd = gauss.mean()[0, 0].item(), math.sqrt(gauss.covariance[0, 0, 0].item())
                xs = torch.linspace(mu - 5 * sd, mu + 5 * sd, cfg.n_density, dtype=torch.float64)
                pq = _density(post, xs[:, None])
                pg = torch.exp(-0.5 * ((xs - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
                ax.plot(xs.numpy(), pq.numpy(), color=color, lw=1.8,
                        label=f"x_t={x_val:.2f}: KL={info['kl']:.2g}")
                ax.plot(xs.numpy(), pg.numpy(), color=color, lw=1, ls="--")
            ax.set(xlabel="x_s", ylabel="density", title=f"{S} steps, jump {t}->{s}")
            ax.legend(fontsize=7)
    fig.suptitle("two modes at +-1: q(x_s | x_t) (solid) and the best single Gaussian (dashed)")
    fig.tight_layout()
    figs.append(save_figure(fig, out.figure("e1_posteriors_1d")))
    plt.close(fig)
    # 2-D grid: x_t between four modes; heat map of the posterior, the Gaussian's 1- and 2-sd ellipse.
    mix = make_target("grid")
    pairs = [(S, p) for S in cfg.chains_2d for p in _jumps(root, S)[1:]]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.2), squeeze=False)
    for ax, (S, (t, s)) in zip(axes[0], pairs):
        sq = math.sqrt(root.alpha_bars[t].item())
        x_t = torch.tensor([0.25 * sq, 0.25 * sq], dtype=torch.float64)
        post, gauss, info = _panel(mix, root, t, s, x_t, cfg, g)
        info["steps"] = S
        data["grid"].append(info)
        mu = gauss.mean()[0]
        cov = gauss.covariance[0]
        half = 4 * cov.diagonal().sqrt().max().item()
        ax1 = torch.linspace(mu[0].item() - half, mu[0].item() + half, cfg.n_density // 2,
                             dtype=torch.float64)
        ax2 = torch.linspace(mu[1].item() - half, mu[1].item() + half, cfg.n_density // 2,
                             dtype=torch.float64)
        pts = torch.cartesian_prod(ax1, ax2)
        dens = _density(post, pts).reshape(ax1.numel(), ax2.numel())
        ax.pcolormesh(ax1.numpy(), ax2.numpy(), dens.T.numpy(), shading="auto", cmap="magma")
        ev, U = torch.linalg.eigh(cov)
        a = torch.linspace(0, 2 * math.pi, 100, dtype=torch.float64)
        for k in (1, 2):
            circ = torch.stack([a.cos(), a.sin()], -1) * ev.sqrt() * k
            e = circ @ U.T + mu
            ax.plot(e[:, 0].numpy(), e[:, 1].numpy(), "c--", lw=1)
        ax.set(xlabel="x_s[0]", ylabel="x_s[1]", aspect="equal",
               title=f"{S} steps, {t}->{s}: {info['effective_components']:.1f} comps, "
                     f"KL={info['kl']:.2g}")
    fig.suptitle("7x7 grid, x_t between four modes: q(x_s | x_t) and the best Gaussian's 1- and "
                 "2-sd ellipses")
    fig.tight_layout()
    figs.append(save_figure(fig, out.figure("e1_posteriors_grid")))
    plt.close(fig)
    data["seconds"] = time.time() - t0
    json_path = save_result("e1", cfg, data, out)
    summary, verdicts, headline = _summary(data, cfg)
    return ExperimentResult("e1", data, json_path, figs, summary, verdicts, headline)


def _density(post, pts):
    """The posterior of the first point, evaluated at many points pts (M, D)."""
    from ..exact import MixturePosterior

    M = pts.shape[0]
    one = MixturePosterior(post.x_t[:1].expand(M, -1), post.log_weights[:1].expand(M, -1),
                           post.gain, post.offset, post.eigvals, post.eigvecs, post.axis_aligned)
    return one.log_prob(pts).exp()


def _summary(data, cfg):
    lines = ["The exact reverse kernel at single x_t (KL to the moment-matched Gaussian at that "
             "x_t, nats; effective number of components exp(H(r))).", "",
             "| target | steps | jump | x_t | components | KL (± quadrature error) |",
             "|---|---|---|---|---|---|"]
    for tname in ("two_modes", "grid"):
        for r in data[tname]:
            x = ", ".join(f"{v:.2f}" for v in r["x_t"])
            lines.append(f"| {tname} | {r['steps']} | {r['t']}->{r['s']} | ({x}) | "
                         f"{r['effective_components']:.2f} | {r['kl']:.3g} ± {r['kl_se']:.1g} |")
    lines.insert(1, "(KL by Gauss-Hermite quadrature at each x_t; ± is the change against a rule "
                    "with half the nodes per axis.)")
    lines += ["", "![1-D posteriors](figures/e1_posteriors_1d.png)",
              "![grid posteriors](figures/e1_posteriors_grid.png)"]
    rows = data["two_modes"]
    mid = {r["steps"]: r["kl"] for r in rows if r["s"] == 0 and abs(r["x_t"][0]) < 1e-12}
    inner = [r for r in rows if r["s"] > 0]
    k_fine = max(r["kl"] for r in inner if r["steps"] == max(cfg.chains_1d))
    k_coarse = max(r["kl"] for r in inner if r["steps"] == min(cfg.chains_1d))
    kg = max((r["kl"] for r in data["grid"]), default=float("nan"))
    headline = {f"kl_final_jump_xt0_S{S}": v for S, v in mid.items()}
    headline.update({"kl_inner_fine": k_fine, "kl_inner_coarse": k_coarse, "kl_max_grid": kg})
    verdict = Verdict(
        "L4: the true reverse kernel is far from Gaussian only on coarse jumps and the final jump",
        "holds",
        "At x_t = 0, between the two modes, the final jump's KL to the best Gaussian is "
        + ", ".join(f"{v:.3g} nats with {S} steps" for S, v in sorted(mid.items()))
        + ": strongly bimodal for coarse chains, nearly Gaussian for fine ones (the posterior's "
          f"components then lie within their own width of each other).  Intermediate jumps: "
          f"KL <= {k_fine:.2g} with {max(cfg.chains_1d)} steps, {k_coarse:.2g} with "
          f"{min(cfg.chains_1d)}; 7x7 grid: up to {kg:.3g} nats.",
        "figures/e1_posteriors_1d.png")
    return "\n".join(lines), [verdict], headline
