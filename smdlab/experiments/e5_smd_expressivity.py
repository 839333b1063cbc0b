"""E5: SMD's expressivity, with the hidden condition made explicit.

The construction behind the claim "SMD can represent any Gaussian mixture": a latent z = (u, xi),
u ~ U(0, 1) picks component k by the inverse CDF of the responsibilities r_k(x_t), xi ~ N(0, I)
adds an offset with covariance (Sigma_k - sigma^2 I)_+ (the positive part, in Sigma_k's eigenbasis),
and the step is N(mean_k(x_t) + offset, sigma^2 I).  Integrated over z this is the mixture of
N(mean_k, Sigma_k with eigenvalues raised to at least sigma^2): the exact posterior whenever
sigma^2 <= the smallest eigenvalue of every posterior component covariance, a floor otherwise.

Which sigma^2 does a DDPM-style kernel use?  The posterior component variance along an eigen-
direction of C_k is b p / q with p = abar_s l + 1 - abar_s and q = abar_t l + 1 - abar_t; beta-tilde
is b (1 - abar_s) / (1 - abar_t), and p / q - (1 - abar_s) / (1 - abar_t) = l (abar_s - abar_t) /
(q (1 - abar_t)) >= 0.  So sigma^2 = beta-tilde always meets the condition (except the clipped final
jump), while sigma^2 = beta = b > b p / q never does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..exact import posterior_from_log_alpha_bars
from ..kernels import MixtureConstructionKernel
from ..local_error import local_errors
from ..provenance import save_figure
from ..sampling import chain_steps
from ..schedules import NoiseSchedule
from ..targets import make_target
from .base import ExperimentResult, Outputs, Verdict, register, save_result


@dataclass
class E5Config:
    seed: int = 0
    T: int = 1000
    steps: int = 10
    targets: tuple = ("grid", "anisotropic")
    ratios: tuple = (0.25, 0.5, 1.0, 2.0, 4.0, 16.0)
    latent_counts: tuple = (4, 32, 256)
    n_points: int = 1024

    @classmethod
    def quick(cls):
        return cls(steps=4, ratios=(0.5, 1.0, 4.0), latent_counts=(4, 64), n_points=256)




@register("e5", "SMD expressivity: the mixture construction, exact iff sigma^2 <= lambda_min",
          E5Config)
def run(cfg: E5Config, out: Outputs) -> ExperimentResult:
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    root = NoiseSchedule.linear(cfg.T)
    chain = root.respace(cfg.steps)
    data = {"targets": {}}
    for tname in cfg.targets:
        mix = make_target(tname)
        variants = [("ratio", r) for r in cfg.ratios] + [("rule", "beta_tilde"), ("rule", "beta")]
        kernels = [MixtureConstructionKernel(mix, root, v) for _, v in variants]
        pairs = chain_steps(kernels[0], chain)
        rows = []
        for t, s in pairs:
            x_probe = mix.sample(64, g)
            lam_min = posterior_from_log_alpha_bars(
                mix, x_probe, root.log_alpha_bars[t].item(),
                root.log_alpha_bars[s].item()).eigvals.min().item()
            exact = local_errors(mix, kernels, t, s, cfg.n_points, 1, None, g)
            row = {"t": t, "s": s, "lambda_min": lam_min,
                   "beta_tilde": root.kernel_variance(t, s, "beta_tilde"),
                   "beta": root.kernel_variance(t, s, "beta"),
                   "exact_latent": {str(v): {"mean": r.mean, "se": r.se}
                                    for (_, v), r in zip(variants, exact)}}
            # Sampled latents at the boundary case sigma^2 = lambda_min: the log-mean-exp bias.
            k1 = MixtureConstructionKernel(mix, root, 1.0)
            row["sampled_latent"] = {}
            for L in cfg.latent_counts:
                r = local_errors(mix, [k1], t, s, cfg.n_points, 1, L, g)[0]
                row["sampled_latent"][str(L)] = {"mean": r.mean, "se": r.se}
            rows.append(row)
        data["targets"][tname] = rows
    data["seconds"] = time.time() - t0
    json_path = save_result("e5", cfg, data, out)
    figs = [_figure(data, cfg, out)]
    summary, verdicts, headline = _summary(data, cfg)
    return ExperimentResult("e5", data, json_path, figs, summary, verdicts, headline)


def _sum(rows, key, v, part="all"):
    """Sum over jumps (part: "all", "inner" = jumps t -> s >= 1, "final" = the jump to 0)."""
    rows = [r for r in rows if part == "all" or (r["s"] > 0) == (part == "inner")]
    return float(sum(r[key][str(v)]["mean"] for r in rows)), \
        float(np.sqrt(sum(r[key][str(v)]["se"] ** 2 for r in rows)))


def _figure(data, cfg, out):
    import matplotlib.pyplot as plt

    names = list(data["targets"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.4 * len(names), 8), squeeze=False)
    for j, tname in enumerate(names):
        rows = data["targets"][tname]
        ax = axes[0, j]
        sums = [_sum(rows, "exact_latent", r)[0] for r in cfg.ratios]
        ax.plot(cfg.ratios, np.clip(sums, 1e-12, None), "-o", label="latent integrated exactly")
        ax.axvline(1.0, color="gray", ls=":", label="sigma^2 = lambda_min")
        for rule, c in (("beta_tilde", "tab:orange"), ("beta", "tab:red")):
            ax.axhline(max(_sum(rows, "exact_latent", rule)[0], 1e-12), color=c, ls="--",
                       label=f"sigma^2 = {rule}")
        ax.set(xscale="log", yscale="log", xlabel="sigma^2 / lambda_min (per jump)",
               ylabel=f"sum over the {cfg.steps} jumps of M (nats, clipped 1e-12)",
               title=f"{tname}: zero up to lambda_min, a floor beyond")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        Ls = list(cfg.latent_counts)
        vals = [_sum(rows, "sampled_latent", L) for L in Ls]
        ax.errorbar(Ls, [v[0] for v in vals], yerr=[2 * v[1] for v in vals], fmt="-o")
        ax.set(xscale="log", xlabel="latent draws L per x_t (log-mean-exp estimate of log p)",
               ylabel="sum of M, sigma^2 = lambda_min (nats)",
               title="sampled latents: the estimate's upward bias shrinks with L")
    fig.tight_layout()
    path = save_figure(fig, out.figure("e5_smd_expressivity"))
    plt.close(fig)
    return path


def _summary(data, cfg):
    lines = [f"The SMD mixture construction on a {cfg.steps}-step linear chain: sum over jumps of "
             "M (nats) with the latent integrated exactly, against sigma^2 / lambda_min, and for "
             "DDPM's two variance choices.", "",
             "Each cell: sum over the jumps t -> s >= 1 / the final jump to x_0.", "",
             "| target | " + " | ".join(f"rho={r:g}" for r in cfg.ratios)
             + " | beta-tilde | beta | min over jumps s >= 1 of lambda_min / beta-tilde |",
             "|---|" + "---|" * (len(cfg.ratios) + 3)]
    headline, ok_zero, floors, bt = {}, True, [], []
    for tname, rows in data["targets"].items():
        vals = [_sum(rows, "exact_latent", r)[0] for r in cfg.ratios]

        def cell(v, rows=rows):
            return (f"{_sum(rows, 'exact_latent', v, 'inner')[0]:.3g} / "
                    f"{_sum(rows, 'exact_latent', v, 'final')[0]:.3g}")

        btv = _sum(rows, "exact_latent", "beta_tilde", "inner")[0]
        bv = _sum(rows, "exact_latent", "beta", "inner")[0]
        inter = [r for r in rows if r["s"] > 0]
        margin = min(r["lambda_min"] / r["beta_tilde"] for r in inter) if inter else float("nan")
        lines.append(f"| {tname} | " + " | ".join(cell(r) for r in cfg.ratios)
                     + f" | {cell('beta_tilde')} | {cell('beta')} | {margin:.6g} |")
        ok_zero &= all(abs(v) < 1e-9 for r, v in zip(cfg.ratios, vals) if r <= 1)
        floors += [v for r, v in zip(cfg.ratios, vals) if r > 1]
        bt.append((tname, btv, bv, margin))
        headline[f"{tname}_floor_rho{max(cfg.ratios):g}"] = round(vals[-1], 4)
        headline[f"{tname}_beta"] = round(bv, 4)
    Lmax = max(cfg.latent_counts)
    lat = {t: _sum(rows, "sampled_latent", Lmax) for t, rows in data["targets"].items()}
    lines += ["", f"With sampled latents (L = {Lmax}, sigma^2 = lambda_min) the log-mean-exp "
              "estimate gives " + ", ".join(f"{t}: {m:.3g} ± {s:.2g}" for t, (m, s) in lat.items())
              + " nats: an upward bias of the estimator, not of the kernel.", "",
              "![E5](figures/e5_smd_expressivity.png)"]
    bt_txt = "; ".join(f"{t}: beta-tilde {a:.2g}, beta {b:.3g} nats over the jumps to s >= 1"
                       for t, a, b, _ in bt)
    verdict = Verdict(
        "C4", "holds with qualification",
        f"The construction reproduces q(x_s | x_t) exactly (sum of M = 0 to machine precision for "
        f"every sigma^2 <= lambda_min: {ok_zero}) and hits a floor beyond (up to "
        f"{max(floors) if floors else float('nan'):.3g} nats at rho = {max(cfg.ratios):g}).  "
        f"sigma^2 = beta-tilde always satisfies the condition on intermediate jumps (lambda_min >= "
        f"beta-tilde, proved in the module and measured), sigma^2 = beta never does ({bt_txt}); "
        "on the final jump the clipped beta-tilde exceeds lambda_min and leaves a floor.  "
        "Exactness needs a latent generator that can realise r_k(x_t) and the offsets, which the "
        "claim takes for granted.",
        "figures/e5_smd_expressivity.png")
    return "\n".join(lines), [verdict], headline
