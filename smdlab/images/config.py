"""The image comparison's configuration: composed sections, one per concern.

    ImagesConfig
      data:   DataConfig     (dataset, files, size, subset, flips)
      net:    NetConfig      (the U-Net backbone shared by every model)
      models: ModelsConfig   (the model spec: SMD's latent, objectives, parameterisation)
      chains: ChainsConfig   (schedule, T, the short chain, sampling steps)
      train:  smdlab.training.TrainConfig (optimisation of the T-step models; the short-chain
              models train ``short_train_steps`` steps with the same settings)
      eval:   EvalConfig     (samples, EMA, the feature classifier)

Presets (:mod:`.presets`) are named instances of this class; ``--set section.field=value`` changes
any field (:mod:`smdlab.config`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..training import TrainConfig
from .models import ModelSpec
from .unet import UNetConfig

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")
SMOKE_PRESETS = ("smoke", "tiny")     # their reports issue no verdicts


@dataclass
class DataConfig:
    """dataset: one of DATASETS; data_root: the folder holding its files (None: the default
    location, digits need none); image_size: resize and centre-crop to it (None: native);
    channels: 1 or 3 (None: native); n_train: a random subset of the training split; flip:
    random horizontal flips during training."""

    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    channels: int | None = None
    n_train: int | None = None
    flip: bool = False

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {DATASETS}; got {self.dataset!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"data.image_size (--image-size) must be a positive number of pixels; "
                             f"got {self.image_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3; got {self.channels}")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"data.n_train must be >= 1; got {self.n_train}")


@dataclass
class NetConfig:
    """The U-Net (:class:`~smdlab.images.unet.UNetConfig`): base_channels, channel_mults,
    num_res_blocks, attn_resolutions, dropout; inner_dim and hyper_layers of SMD's conditioning."""

    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    inner_dim: int = 32
    hyper_layers: int = 2

    def unet(self, shape) -> UNetConfig:
        C, H, W = shape
        if H != W:
            raise ValueError(f"square images only; got {H} x {W} (set data.image_size)")
        return UNetConfig(in_channels=C, image_size=H, base_channels=self.base_channels,
                          channel_mults=tuple(self.channel_mults),
                          num_res_blocks=self.num_res_blocks,
                          attn_resolutions=tuple(self.attn_resolutions), dropout=self.dropout,
                          inner_dim=self.inner_dim, hyper_layers=self.hyper_layers)


@dataclass
class ModelsConfig:
    """The model spec of the comparison: ``ddpm``, ``smd-jensen`` (the paper's objective),
    ``smd-<best_objective>`` (multisample or energy, with objective_samples latent draws) and
    ``ddpm-matched`` (a plain U-Net of the best SMD model's size).  conditioning, latent_dim,
    generator_fraction: SMD's latent; generator: "separate" (the published latent-generator
    network) or "shared" (the cheap one on the U-Net's stem); parameterization: eps, x0 or v."""

    conditioning: str = "hyper"
    latent_dim: int = 8
    generator_fraction: float = 0.25
    generator: str = "separate"
    best_objective: str = "energy"
    objective_samples: int = 2
    parameterization: str = "v"

    def __post_init__(self):
        if self.best_objective not in ("multisample", "energy"):
            raise ValueError(f"models.best_objective must be 'multisample' or 'energy'; got "
                             f"{self.best_objective!r}")

    def specs(self) -> list[ModelSpec]:
        common = dict(conditioning=self.conditioning, latent_dim=self.latent_dim,
                      generator_fraction=self.generator_fraction, generator=self.generator,
                      parameterization=self.parameterization)
        best_k = self.objective_samples if self.best_objective == "energy" else \
            max(self.objective_samples, 2)
        jensen = ModelSpec("smd-jensen", "smd", "jensen", 1, **common)
        best = ModelSpec(f"smd-{self.best_objective}", "smd", self.best_objective, best_k,
                         **common)
        return [ModelSpec("ddpm", "ddpm", parameterization=self.parameterization), jensen, best,
                ModelSpec("ddpm-matched", "ddpm-matched", match_to=best, **common)]


@dataclass
class ChainsConfig:
    """schedule and T of the root chain; short_chain: steps of the short training chain (spacing
    of respaced chains); sample_steps: ancestral chains of the long protocol; ddim_steps: its
    DDIM (eta = 0) chains."""

    schedule: str = "linear"
    T: int = 1000
    short_chain: int = 10
    spacing: str = "linspace"
    sample_steps: tuple[int, ...] = (100, 50, 20, 10)
    ddim_steps: tuple[int, ...] = (10,)

    def __post_init__(self):
        for s in (*self.sample_steps, *self.ddim_steps, self.short_chain):
            if not 1 <= int(s) <= self.T:
                raise ValueError(f"every step count must lie in 1..T={self.T}; got {s}")


@dataclass
class EvalConfig:
    """n_samples generated images per evaluation (sample_batch at a time); use_ema: sample the
    EMA weights; classifier_steps: training steps of the feature classifier behind FD-<net>;
    n_grid: images per saved grid; curve_points: learning-curve evaluations during training
    (fewer when a model trains fewer steps); curve_n: samples per curve point (small: cheap, and
    FD at small n is biased upwards, see the report's FD-against-n table); curve_rel_tol: the
    convergence rule's relative tolerance.  The defaults (n = 1000, 10%) were chosen by
    measurement: with benchmarks/bench_image_recipes.py at n = 100 the last points of trained
    digits models still moved 5-15% between evaluations (benchmarks/results/), and in the
    default run at n = 250 (commit a9de672) 7 of 16 models on a visible plateau still moved
    10-17%, as much as the tolerance; n = 1000 halves the sampling noise of a point."""

    n_samples: int = 250
    sample_batch: int = 500
    use_ema: bool = True
    classifier_steps: int = 400
    n_grid: int = 36
    curve_points: int = 8
    curve_n: int = 1000
    curve_rel_tol: float = 0.1

    def __post_init__(self):
        if self.n_samples < 8:
            raise ValueError(f"eval.n_samples must be >= 8 for the metrics; got {self.n_samples}")
        if self.curve_n < 8:
            raise ValueError(f"eval.curve_n must be >= 8 for the metrics; got {self.curve_n}")
        if self.curve_points < 3:
            raise ValueError(f"eval.curve_points must be >= 3 (the convergence rule compares the "
                             f"last 3); got {self.curve_points}")
        if self.curve_rel_tol < 0:
            raise ValueError(f"eval.curve_rel_tol must be >= 0; got {self.curve_rel_tol}")


def image_train_config(**changes) -> TrainConfig:
    """The image models' optimisation defaults (the seed is set per model): AdamW at lr 2e-3,
    a cosine decay to 2% of it over 2,000 steps (at the default batch of 48), EMA 0.99.  Chosen
    by benchmarks/bench_image_recipes.py on digits 8 x 8 (FD-digitsnet): a constant lr for the
    earlier 450 / 300 steps left the DDPM at FD 21.0 (1000-step chain, sampled on 10 steps) and
    SMD-energy at 40.0 (10-step chain) where the cosine over 2,000 steps reached 5.2 and 10.9
    (curve n = 100).  Cheaper recipes measured since (bench_image_recipes_b96.md) end worse: the
    whole default as 1,000 steps of 96 (the same 96,000 images) ran in 18.6 min, no faster than
    this default (18.9 min on the same machine), but left the 1000-step DDPM at FD 8.8 instead
    of 6.3 and passed 6 of 16 models instead of 11; 1,000 steps of 48 at lr 4e-3 or 1e-3, or of
    96 at lr 1e-3, left it at 14.2, 18.9 and 10.6."""
    base = dict(steps=2000, lr=2e-3, weight_decay=0.0, warmup_steps=50, grad_clip=1.0,
                ema_decay=0.99, checkpoint_every=250, keep_checkpoints=1, log_every=25,
                progress=True, bf16=True, lr_schedule="cosine", lr_final=0.02)
    return TrainConfig(**{**base, **changes})


def resolve_best(names, best_objective: str) -> list[str]:
    """``names`` with ``"smd-best"`` replaced by ``smd-<best_objective>``, duplicates dropped."""
    best = f"smd-{best_objective}"
    return list(dict.fromkeys(best if m == "smd-best" else m for m in names))


@dataclass
class ImagesConfig:
    """Everything that defines an image run (see the module docstring for the sections).

    preset: the name this config came from; seed: training and sampling seed; seed_repeats:
    extra training seeds of the models named in ``seed_models`` (None: every model; the name
    ``"smd-best"`` stands for the SMD model of ``models.best_objective``) on the protocols in
    ``seed_protocols`` (the headline rows: their mean and spread over training seeds);
    batch_size: per-process batch;
    short_train_steps: steps of the short-chain models; device: None = CUDA if available;
    workers: models trained at once in that many spawned processes (one process, not torchrun;
    each with the run's thread count; on a GPU they share it), the numbers do not depend on it;
    channels_last: keep the models' weights and the training images in channels-last memory
    layout (faster convolutions on GPUs with tensor cores; the same function, numbers equal up
    to rounding, so it is part of each checkpoint's config).
    """

    preset: str = "default"
    seed: int = 0
    seed_repeats: tuple[int, ...] = (1, 2)
    seed_protocols: tuple[str, ...] = ("short",)
    seed_models: tuple[str, ...] | None = None
    workers: int = 1
    channels_last: bool = False
    device: str | None = None
    batch_size: int = 48
    short_train_steps: int = 2000
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    chains: ChainsConfig = field(default_factory=ChainsConfig)
    train: TrainConfig = field(default_factory=image_train_config)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        self.seed_repeats = tuple(int(s) for s in self.seed_repeats if int(s) != self.seed)
        self.seed_protocols = tuple(self.seed_protocols)
        if self.seed_models is not None:
            # checked against the run's model names by repeated_models (at the CLI and in
            # image_jobs), so that --set models.best_objective=... and seed_models=... may come
            # in any order
            self.seed_models = tuple(str(m) for m in self.seed_models)
        bad = [p for p in self.seed_protocols if p not in ("long", "short")]
        if bad:
            raise ValueError(f"seed_protocols may name 'long' and 'short'; got {bad}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.short_train_steps < 0:
            raise ValueError(f"short_train_steps must be >= 0; got {self.short_train_steps}")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda or cuda:N; got {self.device!r}")

    def repeated_models(self) -> list[str]:
        """Names of the models trained again with each of ``seed_repeats`` (``"smd-best"``
        resolved to ``smd-<models.best_objective>``); a ValueError names any entry of
        ``seed_models`` that is not a model of this run."""
        names = [spec.name for spec in self.models.specs()]
        if self.seed_models is None:
            return names
        wanted = resolve_best(self.seed_models, self.models.best_objective)
        unknown = [m for m in wanted if m not in names]
        if unknown:
            raise ValueError(f"seed_models names {unknown}, not model(s) of this run; choose "
                             f"from {names} or 'smd-best'")
        return wanted

    @property
    def smoke(self) -> bool:
        """A smoke-sized run: its report issues no verdicts."""
        return self.preset in SMOKE_PRESETS

    @classmethod
    def from_preset(cls, name: str = "default") -> ImagesConfig:
        from .presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return copy.deepcopy(PRESETS[name])

    @classmethod
    def quick(cls) -> ImagesConfig:
        return cls.from_preset("smoke")
