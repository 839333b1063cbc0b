"""The image comparison's figures, drawn from its result dict (metric curves, learning curves
during training, class frequencies, an overview of sample grids)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..provenance import save_figure
from .report import flat_config, is_smoke, rows_of, seed_stat

_COLORS = {"ddpm": "tab:blue", "smd-jensen": "tab:orange", "smd-energy": "tab:green",
           "smd-multisample": "tab:green", "ddpm-matched": "tab:purple"}


def make_figures(result: dict, out) -> list[Path]:
    """Draw every figure of ``result`` under ``out.figures`` (an ImageOutputs); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save = partial(save_figure, smoke=is_smoke(result))
    metric = result["feature_net"]["name"] if result["feature_net"] else "net"
    names = [m["spec"]["name"] for k, m in result["models"].items() if k.startswith("long-")]
    real = rows_of(result, protocol="data")
    cfg = flat_config(result)
    short_S = cfg["short_chain"]
    figs = []
    panels = [("fd", f"FD-{metric} (lower is better)"), ("kid", "KID (lower is better)"),
              ("recall", "recall (higher is better)"), ("precision", "precision (higher is better)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, (key, title) in zip(axes, panels):
        for name in names:
            c = _COLORS.get(name, None)
            for sampler, ls in (("ancestral", "-"), ("ddim", "--")):
                steps = sorted({e["steps"] for e in rows_of(result, model=name, protocol="long",
                                                            sampler=sampler,
                                                            frozen_latent=False)})
                if steps:   # mean over training seeds at each step count
                    ys = [seed_stat(result, key, model=name, protocol="long", sampler=sampler,
                                    steps=S, frozen_latent=False)["mean"] for S in steps]
                    ax.plot(steps, ys, ls, marker="o", color=c, ms=4,
                            label=f"{name} ({sampler}, 1000-step model)")
            st = seed_stat(result, key, model=name, protocol="short", sampler="ancestral",
                           steps=short_S, frozen_latent=False)
            if st:
                ax.errorbar([short_S], [st["mean"]], yerr=[st["sd"] or 0.0], fmt="*", ms=13,
                            color=c, markeredgecolor="k", capsize=3,
                            label=f"{name} (trained on {short_S} steps; "
                                  f"{st['n']} seed{'s' if st['n'] > 1 else ''})")
        if real:
            ax.axhline(real[0]["metrics"][key], color="gray", lw=1, ls=":",
                       label="held-out real images")
        ax.set_xscale("log")
        ticks = sorted({*cfg["sample_steps"], short_S})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps (log scale)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center",
               ncol=4, bbox_to_anchor=(0.5, -0.22))
    fig.suptitle(f"{result['dataset']['train']}: sample quality against sampling steps "
                 f"(n = {result['sampling']['n']}, EMA = {result['sampling']['use_ema']})")
    figs.append(save(fig, out.figures / "metrics_vs_steps.png"))
    plt.close(fig)

    # Mode coverage: predicted-class frequencies at the fewest steps of each protocol.
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    few = min(cfg["sample_steps"])
    for ax, (protocol, S) in zip(axes, (("long", few), ("short", short_S))):
        width = 0.8 / (len(names) + 1)
        ref = real[0]["metrics"]["classes"]["reference"] if real else None
        K = len(ref) if ref else 0
        if ref:
            ax.bar([k - 0.4 + width / 2 for k in range(K)], ref, width, color="lightgray",
                   label="training split")
        for j, name in enumerate(names):
            rows = rows_of(result, model=name, protocol=protocol, sampler="ancestral", steps=S,
                         frozen_latent=False)
            if rows:
                freq = rows[0]["metrics"]["classes"]["frequencies"]
                ax.bar([k - 0.4 + (j + 1.5) * width for k in range(len(freq))], freq, width,
                       color=_COLORS.get(name), label=name)
        ax.set_xlabel("predicted class of generated image")
        ax.set_ylabel("frequency")
        ax.set_title(f"{protocol} protocol, {S} ancestral steps")
        names_k = result["dataset"].get("class_names") or []
        if len(names_k) == K and any(not c.isdigit() for c in names_k):
            ax.set_xticks(range(K), names_k, rotation=45, ha="right", fontsize=7)
        else:
            ax.set_xticks(range(K))
    axes[0].legend(fontsize=7)
    figs.append(save(fig, out.figures / "class_frequencies.png"))
    plt.close(fig)

    # One overview of samples: rows = models, columns = step counts (first images of each grid).
    from PIL import Image

    cols = sorted(cfg["sample_steps"], reverse=True)
    fig, axes = plt.subplots(len(names), len(cols) + 1, figsize=(2.2 * (len(cols) + 1),
                                                                 2.3 * len(names)))
    axes = [[a] for a in axes] if len(cols) + 1 == 1 else axes
    for i, name in enumerate(names):
        for j, S in enumerate([*cols, -1]):
            ax = axes[i][j]
            ax.axis("off")
            rows = (rows_of(result, model=name, protocol="long", sampler="ancestral", steps=S)
                    if S > 0 else rows_of(result, model=name, protocol="short", sampler="ancestral",
                                        frozen_latent=False))
            if rows:
                ax.imshow(Image.open(out.root / rows[0]["extra"]["grid"]), cmap="gray")
            ax.set_title(f"{name}\n{S} steps" if S > 0 else f"{name}\ntrained on {short_S}",
                         fontsize=7)
    figs.append(save(fig, out.figures / "samples_overview.png"))
    plt.close(fig)
    curves = learning_curves_figure(result, out, plt)
    if curves is not None:
        figs.append(curves)
    return figs


def learning_curves_figure(result: dict, out, plt) -> Path | None:
    """FD and KID against training steps, one line per model and protocol (dashed: not
    converged by the rule), error bars: one point's bootstrap / subset spread; a thick line:
    the FD curve of a row's mean over training seeds (what a headline row is judged on)."""
    models = {k: m for k, m in result["models"].items() if (m.get("curve") or {}).get("points")}
    if not models:
        return None
    from .report import mean_curve, model_converged, seed_groups

    metric = result["feature_net"]["name"] if result["feature_net"] else "net"
    protocols = [p for p in ("long", "short")
                 if any(m["protocol"] == p for m in models.values())]
    fig, axes = plt.subplots(2, len(protocols), figsize=(5.5 * len(protocols), 7), squeeze=False)
    for j, protocol in enumerate(protocols):
        for label, m in models.items():
            if m["protocol"] != protocol:
                continue
            pts = m["curve"]["points"]
            conv = model_converged(m)
            name = m["spec"]["name"]
            for i, key in enumerate(("fd", "kid")):
                axes[i][j].errorbar([q["step"] for q in pts], [q[key] for q in pts],
                                    yerr=[q[key + ("_boot_std" if key == "fd" else "_std")]
                                          for q in pts], marker="o", ms=3,
                                    capsize=2, ls="-" if conv else "--",
                                    color=_COLORS.get(name),
                                    label=f"{label} ({'converged' if conv else 'not converged'})")
        for group in seed_groups(result, [k for k, m in result["models"].items()
                                          if m["protocol"] == protocol]):
            mc = mean_curve([result["models"][label] for label in group])
            if len(group) < 2 or mc is None or not mc.points:
                continue    # one seed, or a seed without a (complete) curve: no mean to draw
            name = result["models"][group[0]]["spec"]["name"]
            axes[0][j].plot([q["step"] for q in mc.points], [q["fd"] for q in mc.points],
                            lw=3, alpha=0.6, color=_COLORS.get(name),
                            ls="-" if mc.converged() else "--",
                            label=f"{protocol}-{name}: mean of {len(group)} seeds ("
                                  f"{'converged' if mc.converged() else 'not converged'})")
        n = next(iter(models.values())).get("curve_settings", {}).get("n", "?")
        axes[0][j].set_title(f"{protocol} protocol (n = {n} per point)")
        axes[0][j].set_ylabel(f"FD-{metric}")
        axes[1][j].set_ylabel("KID")
        for i in range(2):
            axes[i][j].set_xlabel("training step")
            axes[i][j].grid(alpha=0.3)
            axes[i][j].legend(fontsize=6)
    fig.suptitle("learning curves during training (EMA weights; dashed: fails the plateau rule; "
                 "thick: mean over training seeds)")
    fig.tight_layout()
    path = save_figure(fig, out.figures / "learning_curves.png", smoke=is_smoke(result))
    plt.close(fig)
    return path


