"""E6: the paper's toy, a 7 x 7 grid of Gaussians in 2-D, learned by DDPM and by SMD.

Models (one backbone, :class:`smdlab.nets.VectorMLP`; v-parameterisation, beta-tilde variance):
  * ``ddpm``: the Gaussian kernel, trained with the simple loss;
  * ``ddpm_matched``: the same with a wider backbone whose parameter count is within 5% of SMD's;
  * ``smd_jensen``: SMD with the paper's objective (one eta per example, regression loss);
  * ``smd_multisample``: SMD with the K-sample likelihood bound;
  * ``smd_energy``: SMD with the energy score on clean-point predictions.
Each is trained on the full chain (T = 1000) and on 10- and 4-step chains (trained and sampled on
that chain); the 1000-step models are also sampled on respaced 10- and 4-step chains.

This module also holds the model zoo shared by E6, E7 and E8: :func:`toy_zoo` trains every model
once, caches its checkpoint (and EMA snapshots during training) under ``results/models/`` keyed by
the config, and resumes or reloads them on later calls (see :mod:`smdlab.training`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..denoisers import GaussianDenoiser, SMDDenoiser
from ..kernels import BestGaussianKernel, ExactKernel
from ..mixture import GaussianMixture
from ..nets import OracleNet, VectorLatentGenerator, VectorMLP, count_parameters, matched_width
from ..objectives import Objective
from ..provenance import atomic_write_bytes, save_figure
from ..sampling import ancestral_sample
from ..schedules import NoiseSchedule
from ..training import TrainConfig, load_checkpoint, train
from .base import ExperimentResult, Outputs, register, save_result

KINDS = ("ddpm", "ddpm_matched", "smd_jensen", "smd_multisample", "smd_energy")
LABELS = {"ddpm": "DDPM", "ddpm_matched": "DDPM (matched capacity)", "smd_jensen": "SMD-jensen",
          "smd_multisample": "SMD-multisample", "smd_energy": "SMD-energy",
          "exact": "exact chain", "oracle_ddpm": "oracle DDPM (exact mean)",
          "gaussian-beta_tilde": "best beta-tilde Gaussian (clipped last step)",
          "gaussian-moment": "best Gaussian (moment-matched)"}
COLORS = {"ddpm": "tab:blue", "ddpm_matched": "tab:cyan", "smd_jensen": "tab:orange",
          "smd_multisample": "tab:green", "smd_energy": "tab:red", "exact": "black",
          "oracle_ddpm": "dimgray", "gaussian-beta_tilde": "darkgray", "gaussian-moment": "gray"}


@dataclass
class ToyConfig:
    """The toy's target, models, training and evaluation sizes (shared by E6, E7, E8).

    final_variance: the variance of every learned kernel's jump to 0: ``"data"`` = grid_std^2 (the
    within-mode variance), or ``"beta1"``/``"clipped"`` (see :mod:`smdlab.denoisers`).
    target_name: ``"grid"`` (grid_size^2 modes, spacing grid_spacing, std grid_std, D = 2) or
    ``"two_modes"`` (1-D, separation grid_spacing, std grid_std).
    seed: base seed; n_seeds: seeds per model; seed_chains: chains trained with all n_seeds
    (the others with the first seed only, to fit the time budget); chains: training chains (number
    of steps of the respaced linear(T) chain; T itself is the full chain).
    """

    seed: int = 0
    T: int = 1000
    target_name: str = "grid"
    grid_size: int = 7
    grid_spacing: float = 0.5
    grid_std: float = 0.05
    chains: tuple = (1000, 10, 4)
    kinds: tuple = KINDS
    n_seeds: int = 3
    seed_chains: tuple = (4,)
    hidden: int = 128
    time_dim: int = 64
    gen_hidden: int = 64
    depth: int = 2
    latent_dim: int = 16
    noise_dim: int = 4
    inner_dim: int = 32
    conditioning: str = "hyper"
    parameterization: str = "v"
    final_variance: str = "data"
    n_multisample: int = 4
    n_energy: int = 2
    train_steps: int = 500
    batch: int = 256
    lr: float = 2e-3
    ema_decay: float = 0.99
    warmup_steps: int = 50
    snapshots: tuple = (0.1, 0.3, 1.0)
    n_eval: int = 1000
    n_snapshot: int = 400
    n_grid: int = 64
    n_latent: int = 8
    progress: bool = True

    @classmethod
    def quick(cls) -> ToyConfig:
        return cls(chains=(1000, 4), n_seeds=1, seed_chains=(), train_steps=30, batch=128,
                   warmup_steps=5, n_eval=200, n_snapshot=100, n_grid=32, n_latent=4, progress=False,
                   snapshots=(0.5, 1.0))


# ---------------------------------------------------------------------------- the model zoo
@dataclass
class TrainedModel:
    """One trained model: its EMA kernel, the EMA weights at snapshot steps, and its record."""

    kind: str
    S: int
    seed: int
    kernel: object
    snapshots: dict = field(default_factory=dict)     # step -> kernel with the EMA weights then
    log: list = field(default_factory=list)
    params: int = 0
    seconds: float = 0.0
    cached: bool = False
    run_dir: Path | None = None


def target(cfg: ToyConfig) -> GaussianMixture:
    if cfg.target_name == "grid":
        return GaussianMixture.grid(cfg.grid_size, cfg.grid_spacing, cfg.grid_std)
    if cfg.target_name == "two_modes":
        return GaussianMixture.two_modes(cfg.grid_spacing, cfg.grid_std)
    raise ValueError(f"unknown target {cfg.target_name!r}; choose 'grid' or 'two_modes'")


def data_dim(cfg: ToyConfig) -> int:
    return 2 if cfg.target_name == "grid" else 1


def root_schedule(cfg: ToyConfig) -> NoiseSchedule:
    return NoiseSchedule.linear(cfg.T)


def chain_of(root: NoiseSchedule, S: int) -> NoiseSchedule:
    return root if S == root.T else root.respace(S)


def _smd_parts(cfg: ToyConfig):
    D = data_dim(cfg)
    net = VectorMLP(D, cfg.hidden, cfg.depth, time_dim=cfg.time_dim, T=cfg.T,
                    latent_dim=cfg.latent_dim, conditioning=cfg.conditioning,
                    inner_dim=cfg.inner_dim)
    gen = VectorLatentGenerator(D, cfg.noise_dim, cfg.latent_dim, hidden=cfg.gen_hidden,
                                time_dim=max(cfg.time_dim // 2, 2), T=cfg.T)
    return net, gen


def matched_hidden(cfg: ToyConfig) -> int:
    """Backbone width of the capacity-matched DDPM (parameters within 5% of the SMD model's)."""
    target_params = count_parameters(*_smd_parts(cfg))
    return matched_width(target_params, lambda w: VectorMLP(data_dim(cfg), w, cfg.depth,
                                                             time_dim=cfg.time_dim, T=cfg.T))


def final_variance(cfg: ToyConfig):
    return cfg.grid_std ** 2 if cfg.final_variance == "data" else cfg.final_variance


def build(cfg: ToyConfig, kind: str, chain: NoiseSchedule):
    """(model, objective) of a kind on a training chain."""
    p = cfg.parameterization
    fv = final_variance(cfg)
    if kind in ("ddpm", "ddpm_matched"):
        width = cfg.hidden if kind == "ddpm" else matched_hidden(cfg)
        D = data_dim(cfg)
        model = GaussianDenoiser(VectorMLP(D, width, cfg.depth, time_dim=cfg.time_dim, T=cfg.T),
                                 chain, D, p, name=kind, final_variance=fv)
        return model, Objective("jensen", chain)
    if kind.startswith("smd_"):
        net, gen = _smd_parts(cfg)
        model = SMDDenoiser(net, gen, chain, data_dim(cfg), cfg.noise_dim, p, name=kind,
                            final_variance=fv)
        obj = kind.removeprefix("smd_")
        n = {"jensen": 1, "multisample": cfg.n_multisample, "energy": cfg.n_energy}[obj]
        return model, Objective(obj, chain, n_samples=n)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")


def _model_fields(cfg: ToyConfig) -> dict:
    """The ToyConfig fields that define a trained model (subclass fields never enter the key)."""
    d = {f.name: getattr(cfg, f.name) for f in fields(ToyConfig)}
    for k in ("seed", "chains", "kinds", "n_seeds", "seed_chains", "n_eval", "n_snapshot", "n_grid",
              "n_latent", "progress"):
        d.pop(k)
    return d


def _run_key(cfg: ToyConfig, kind: str, S: int, seed: int) -> str:
    blob = json.dumps({"model": _model_fields(cfg), "kind": kind, "S": S, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


_ZOO: dict = {}


def train_one(cfg: ToyConfig, kind: str, S: int, seed: int, models_dir: Path) -> TrainedModel:
    """Train (or reload from the cache) one model; EMA snapshots are saved during training."""
    root = root_schedule(cfg)
    chain = chain_of(root, S)
    mix = target(cfg)
    key = _run_key(cfg, kind, S, seed)
    run_dir = Path(models_dir) / f"{kind}-S{S}-seed{seed}-{key}"
    model_seed = 1000 * seed + KINDS.index(kind) * 17 + S
    torch.manual_seed(model_seed)
    model, objective = build(cfg, kind, chain)
    snap_steps = sorted({max(1, round(f * cfg.train_steps)) for f in cfg.snapshots})

    def data(step, g):
        return mix.sample(cfg.batch, g).float()

    def on_step(step, m, ema):
        if step in snap_steps:
            import io
            buf = io.BytesIO()
            torch.save(ema.state_dict(), buf)
            atomic_write_bytes(run_dir / f"snap_{step:08d}.pt", buf.getvalue())

    tc = TrainConfig(steps=cfg.train_steps, lr=cfg.lr, ema_decay=cfg.ema_decay,
                     warmup_steps=cfg.warmup_steps, seed=model_seed, progress=cfg.progress,
                     keep_checkpoints=1)
    res = train(model, objective, data, tc, run_dir=run_dir, callback=on_step,
                extra_config={"model": _model_fields(cfg), "kind": kind, "S": S},
                desc=f"{kind} S={S} seed={seed}")
    kernel = res.ema
    kernel.eval()
    snaps = {}
    for step in snap_steps:
        path = run_dir / f"snap_{step:08d}.pt"
        if step == cfg.train_steps:
            snaps[step] = kernel
        elif path.exists():
            k, _ = build(cfg, kind, chain)
            k.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            k.eval()
            snaps[step] = k
    return TrainedModel(kind, S, seed, kernel, snaps, res.log, count_parameters(kernel),
                        res.seconds, res.resumed_from == cfg.train_steps, run_dir)


def toy_zoo(cfg: ToyConfig, out: Outputs) -> dict:
    """Every model of the config: {(kind, S, seed): TrainedModel}, trained once and cached
    (in memory for this process, on disk under results/models/)."""
    models_dir = out.results / "models"
    zoo = {}
    for S in cfg.chains:
        seeds = range(cfg.n_seeds) if S in cfg.seed_chains else range(1)
        for seed in seeds:
            for kind in cfg.kinds:
                mkey = (str(models_dir), _run_key(cfg, kind, S, cfg.seed + seed))
                if mkey not in _ZOO:
                    _ZOO[mkey] = train_one(cfg, kind, S, cfg.seed + seed, models_dir)
                zoo[kind, S, seed] = _ZOO[mkey]
    return zoo


def load_model(run_dir) -> dict:
    """The raw checkpoint of a cached model (for inspection)."""
    from ..training import latest_checkpoint
    return load_checkpoint(latest_checkpoint(run_dir))


# ---------------------------------------------------------------------------- evaluation
def kernel_dim(kernel) -> int:
    return kernel.dim if isinstance(kernel.dim, int) else int(np.prod(kernel.dim))


def draw_samples(kernel, chain: NoiseSchedule, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, kernel_dim(kernel), generator=g,
                      dtype=torch.float64)
    return ancestral_sample(kernel, x_T, chain, generator=g)


_EVAL: dict = {}


def evaluate(mix, kernel, chain: NoiseSchedule, cfg: ToyConfig, seed: int,
             samples: torch.Tensor | None = None, grid: bool = True) -> dict:
    """Sample metrics (and the grid global KL when ``grid``) of a kernel sampled on a chain.

    Results are memoised for this process (E6, E7 and E8 share models and evaluations).
    """
    key = (id(kernel), getattr(kernel, "freeze_eta", None), tuple(chain.original_steps.tolist()),
           cfg.n_eval, cfg.n_grid, cfg.n_latent, seed, grid, id(mix) if not hasattr(mix, "means")
           else tuple(mix.means.flatten().tolist()))
    if key not in _EVAL:
        _EVAL[key] = (_evaluate(mix, kernel, chain, cfg, seed, samples, grid), kernel)
    return dict(_EVAL[key][0])


def _evaluate(mix, kernel, chain, cfg, seed, samples, grid):
    from ..global_error import grid_global_error
    from ..metrics import sample_metrics

    if samples is None:
        samples = draw_samples(kernel, chain, cfg.n_eval, seed)
    row = {k: float(v) for k, v in sample_metrics(mix, samples,
                                                  generator=torch.Generator().manual_seed(seed)
                                                  ).items() if _is_number(v)}
    if grid:
        g = torch.Generator().manual_seed(seed + 1)
        res = grid_global_error(mix, kernel, chain, n_grid=cfg.n_grid, n_latent=cfg.n_latent,
                                generator=g)
        row["kl"], row["mass_lost"] = float(res["kl"]), float(res["mass_lost"])
        if not math.isfinite(row["kl"]):
            # the chain pushed (almost) all mass outside the grid boxes: p(x_0) ~ 0 where q lives
            row["kl"] = math.inf
    return row


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) or (hasattr(v, "ndim") and v.ndim == 0)


_REFS: dict = {}
REFERENCES = ("exact", "oracle_ddpm", "gaussian-beta_tilde")


def reference_kernel(name: str, mix, cfg: ToyConfig, chain: NoiseSchedule):
    """The reference chains: ``exact`` (zero local error), ``oracle_ddpm`` (the exact mean with the
    learned kernels' variances: the best any DDPM of this family can do per step) and
    ``gaussian-beta_tilde`` (the lab's best beta-tilde Gaussian, improved-DDPM clip on the jump to
    0, see :mod:`smdlab.denoisers`)."""
    root = chain.root
    if name == "exact":
        return ExactKernel(mix, root)
    if name == "oracle_ddpm":
        return GaussianDenoiser(OracleNet(mix, root, cfg.parameterization), chain, mix.D,
                                cfg.parameterization, name="oracle_ddpm",
                                final_variance=final_variance(cfg))
    if name == "gaussian-beta_tilde":
        return BestGaussianKernel(mix, root, "beta_tilde")
    raise ValueError(f"unknown reference {name!r}; choose one of {REFERENCES}")


def references(mix, cfg: ToyConfig, S_list) -> dict:
    """Reference chains at each number of steps: {name: {S: metrics}} (memoised; the grid KL only
    for S <= 100)."""
    root = root_schedule(cfg)
    out = {}
    for name in REFERENCES:
        out[name] = {}
        for S in S_list:
            key = (name, cfg.target_name, cfg.grid_size, cfg.grid_spacing, cfg.grid_std, cfg.T, S,
                   cfg.n_eval, cfg.n_grid, cfg.n_latent, cfg.parameterization, cfg.final_variance)
            if key not in _REFS:
                chain = chain_of(root, S)
                _REFS[key] = _evaluate(mix, reference_kernel(name, mix, cfg, chain), chain, cfg, 7,
                                       None, S <= 100)
            out[name][S] = dict(_REFS[key])
    return out


def mean_spread(values) -> tuple[float, float]:
    """(mean, standard deviation over seeds; 0 for one seed)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def fmt(m, s=None, digits=3) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:.{digits}g}" if not s else f"{m:.{digits}g} ± {s:.2g}"


# ---------------------------------------------------------------------------- E6
def _scatter(ax, x, mix, title):
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4, color="tab:blue", rasterized=True)
    m = mix.means.numpy()
    ax.scatter(m[:, 0], m[:, 1], s=6, color="red", marker="x", linewidths=0.6)
    lim = mix.means.abs().max().item() + 0.6
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=6)


@register("e6", "Toy reproduction: 7x7 grid, DDPM vs SMD (three objectives), few-step chains",
          ToyConfig, heavy=True)
def run(cfg: ToyConfig, out: Outputs) -> ExperimentResult:
    import matplotlib.pyplot as plt

    if data_dim(cfg) != 2:
        raise ValueError("E6 scatters 2-D samples: use target_name='grid'")
    t0 = time.perf_counter()
    mix = target(cfg)
    root = root_schedule(cfg)
    zoo = toy_zoo(cfg, out)
    t_train = time.perf_counter() - t0
    few = [S for S in cfg.chains if S < cfg.T]
    # ---- metrics: every model on its own chain (all seeds), 1000-step models respaced (seed 0)
    rows = []
    samples_for_plot = {}
    for (kind, S, seed), tm in zoo.items():
        chain = chain_of(root, S)
        x = draw_samples(tm.kernel, chain, cfg.n_eval, 100 + seed)
        if seed == 0:
            samples_for_plot[kind, S, S] = x
        r = evaluate(mix, tm.kernel, chain, cfg, 100 + seed, samples=x, grid=S < cfg.T)
        rows.append({"kind": kind, "train_S": S, "sample_S": S, "seed": seed, **r,
                     "params": tm.params, "train_seconds": tm.seconds})
        if S == cfg.T:
            for Sf in few:
                ch = root.respace(Sf)
                x = draw_samples(tm.kernel, ch, cfg.n_eval, 200 + seed)
                if seed == 0:
                    samples_for_plot[kind, S, Sf] = x
                r = evaluate(mix, tm.kernel, ch, cfg, 200 + seed, samples=x, grid=True)
                rows.append({"kind": kind, "train_S": S, "sample_S": Sf, "seed": seed, **r,
                             "params": tm.params, "train_seconds": tm.seconds})
    refs = references(mix, cfg, sorted(set(cfg.chains)))
    # ---- snapshots over training (seed 0, each model on its own chain)
    snap_samples = {}
    for (kind, S, seed), tm in zoo.items():
        if seed != 0:
            continue
        for step, k in tm.snapshots.items():
            if step == cfg.train_steps:     # the final EMA weights: reuse the evaluation samples
                snap_samples[kind, S, step] = samples_for_plot[kind, S, S][:cfg.n_snapshot]
            else:
                snap_samples[kind, S, step] = draw_samples(k, chain_of(root, S), cfg.n_snapshot,
                                                           300)
    # ---- aggregate over seeds
    table = _aggregate(rows)
    data = {"rows": rows, "table": table, "references": refs,
            "params": {kind: zoo[kind, cfg.chains[0], 0].params for kind in cfg.kinds},
            "matched_hidden": matched_hidden(cfg),
            "train_seconds_total": t_train,
            "cached_models": sum(tm.cached for tm in zoo.values()),
            "eval_seconds": time.perf_counter() - t0 - t_train,
            "cut": _cuts(cfg)}
    json_path = save_result("e6", cfg, data, out)
    # ---- figures
    figs = []
    for S in cfg.chains:
        steps = sorted({st for (k, s, st) in snap_samples if s == S})
        fig, axes = plt.subplots(len(cfg.kinds), len(steps) + 1,
                                 figsize=(2.4 * (len(steps) + 1), 2.4 * len(cfg.kinds)),
                                 squeeze=False)
        for i, kind in enumerate(cfg.kinds):
            for j, st in enumerate(steps):
                _scatter(axes[i, j], snap_samples[kind, S, st].numpy(), mix,
                         f"{LABELS[kind]}, step {st}")
            if i == 0:
                x = draw_samples(ExactKernel(mix, root), chain_of(root, S), cfg.n_snapshot, 5)
                _scatter(axes[0, -1], x.numpy(), mix, f"exact chain\n{S} steps")
            else:
                axes[i, -1].axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("x1")
        for ax in axes[:, 0]:
            ax.set_ylabel("x2")
        fig.suptitle(f"E6: samples during training, trained and sampled on {S} steps "
                     f"(EMA weights; red x = mode centres)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        figs.append(save_figure(fig, out.figure(f"e6_scatter_S{S}")))
        plt.close(fig)
    if cfg.T in cfg.chains and few:
        fig, axes = plt.subplots(len(few) + 1, len(cfg.kinds), squeeze=False,
                                 figsize=(2.4 * len(cfg.kinds), 2.4 * (len(few) + 1)))
        for j, kind in enumerate(cfg.kinds):
            for i, Sf in enumerate([cfg.T, *few]):
                _scatter(axes[i, j], samples_for_plot[kind, cfg.T, Sf].numpy(), mix,
                         f"{LABELS[kind]}, {Sf} steps")
            axes[-1, j].set_xlabel("x1")
        for ax in axes[:, 0]:
            ax.set_ylabel("x2")
        fig.suptitle(f"E6: models trained on {cfg.T} steps, sampled on respaced chains",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        figs.append(save_figure(fig, out.figure("e6_scatter_respaced")))
        plt.close(fig)
    summary, verdicts, headline = _summary(cfg, table, refs, data)
    return ExperimentResult("e6", data, json_path, figs, summary, verdicts, headline)


def _aggregate(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kind"], r["train_S"], r["sample_S"]), []).append(r)
    table = []
    for (kind, tS, sS), rs in groups.items():
        entry = {"kind": kind, "train_S": tS, "sample_S": sS, "n_seeds": len(rs)}
        for key in ("kl", "in_mode_share", "occupancy_tv", "mmd", "sw2", "nll"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                entry[key], entry[key + "_sd"] = mean_spread(vals)
        table.append(entry)
    return table


def _cuts(cfg: ToyConfig) -> str:
    one_seed = [S for S in cfg.chains if S not in cfg.seed_chains]
    parts = []
    if cfg.n_seeds > 1 and one_seed:
        parts.append(f"chains {one_seed} trained with one seed only (time budget); chains "
                     f"{list(cfg.seed_chains)} with {cfg.n_seeds} seeds")
    parts.append(f"{cfg.train_steps} training steps of batch {cfg.batch} per model")
    parts.append(f"grid global KL ({cfg.n_grid}^2 nodes, {cfg.n_latent} latent draws per node) "
                 f"only on chains of <= 100 steps; the {cfg.T}-step chain is scored by samples")
    return "; ".join(parts)


def _lookup(table, kind, tS, sS):
    for e in table:
        if (e["kind"], e["train_S"], e["sample_S"]) == (kind, tS, sS):
            return e
    return None


def _summary(cfg, table, refs, data):
    lines = ["Models trained on the 7x7 grid (EMA weights); global KL = KL(q(x_0) || p(x_0)) "
             "on a grid (nats), in-mode = share of samples within 3 std of a mode centre. "
             f"Mean ± sd over seeds where n > 1. Cuts: {data['cut']}.", "",
             "| model | trained on | sampled on | seeds | global KL | in-mode share | MMD |",
             "|---|---|---|---|---|---|---|"]
    for e in sorted(table, key=lambda e: (-e["train_S"], -e["sample_S"], KINDS.index(e["kind"]))):
        lines.append(f"| {LABELS[e['kind']]} | {e['train_S']} | {e['sample_S']} | {e['n_seeds']} | "
                     f"{fmt(e.get('kl'), e.get('kl_sd'))} | "
                     f"{fmt(e.get('in_mode_share'), e.get('in_mode_share_sd'))} | "
                     f"{fmt(e.get('mmd'), e.get('mmd_sd'))} |")
    for name in REFERENCES:
        for S, r in refs[name].items():
            lines.append(f"| {LABELS[name]} | - | {S} | - | {fmt(r.get('kl'))} | "
                         f"{fmt(r.get('in_mode_share'))} | {fmt(r.get('mmd'))} |")
    lines += ["", "![E6 samples, 4 steps](figures/e6_scatter_S4.png)" if 4 in cfg.chains else "",
              f"![E6 samples, {cfg.T} steps](figures/e6_scatter_S{cfg.T}.png)",
              "![E6 respaced](figures/e6_scatter_respaced.png)"]
    headline, verdicts = {}, []
    Smin = min(cfg.chains)
    best = {k: _lookup(table, k, Smin, Smin) for k in cfg.kinds}
    if best.get("ddpm") and best.get("smd_energy") and "kl" in best["ddpm"]:
        for k, e in best.items():
            if e and "kl" in e:
                headline[f"kl_{k}_S{Smin}"] = round(e["kl"], 4)
                headline[f"in_mode_{k}_S{Smin}"] = round(e.get("in_mode_share", float("nan")), 4)
    return "\n".join(lines), verdicts, headline
