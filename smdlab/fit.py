"""Fit a learned reverse kernel to any Gaussian mixture in one call::

    import smdlab
    q = smdlab.GaussianMixture.ring(8, radius=1.0, std=0.05)
    kernel = smdlab.fit(q, kind="ddpm")                  # the measured recipe, steps=None
    x0 = smdlab.ancestral_sample(kernel, torch.randn(1000, 2, dtype=torch.float64),
                                 kernel.schedule)

:func:`fit` builds the lab's vector backbone (:class:`smdlab.nets.VectorMLP`, v-parameterisation,
beta-tilde variances; on the jump to 0 the clipped beta-tilde for DDPM and the narrowest
component's variance for SMD), trains it with
:func:`smdlab.training.train` on exact samples of the target and returns the EMA kernel (a
:class:`~smdlab.denoisers.GaussianDenoiser` or :class:`~smdlab.denoisers.SMDDenoiser`, in eval
mode, float32 weights; a :class:`~smdlab.mixture_kernel.MixtureDenoiser` for ``kind="mixture"``)
that ``ancestral_sample``, ``local_error`` and ``grid_global_error`` accept.

The recipe (:class:`Recipe`, chosen by ``benchmarks/bench_recipes.py``; numbers below)
---------------------------------------------------------------------------------------
Two changes over plain DDPM training (uniform jump index, raw coordinates) matter:

* t-sampling: a mixture of 30% uniform and 70% log-normal in sigma = sqrt((1 - abar) / abar),
  log sigma ~ N(-1.2, 1.2^2) (:func:`smdlab.objectives.step_probabilities`);
* input features: 6 Fourier frequencies per coordinate (:class:`smdlab.nets.FourierFeatures`).

Measured with ``benchmarks/bench_recipes.py --steps 2000 --seeds 2`` (7 x 7 grid, DDPM width
128 depth 2, batch 256, trained and sampled on the linear 1000-step chain; 1000 samples; mean ±
sd over 2 seeds; ``benchmarks/results/bench_recipes.json``; oracle DDPM 0.965)::

    recipe                          in-mode share   NLL excess
    uniform t, raw x                0.393 ± 0.004   7.10 ± 0.14
    uniform t, Fourier x            0.905 ± 0.013   1.73 ± 0.16
    log-normal t, raw x             0.471 ± 0.025   5.99 ± 0.09
    log-normal t, Fourier x         0.943 ± 0.003   1.00 ± 0.06   <- chosen

On the 4-step chain (``--chains 4 --kinds ddpm smd_energy``, 2 seeds, 2000 steps,
``bench_recipes_S4.json``; grid KL, 48^2 nodes) the recipe moves DDPM's KL from 4.28 ± 0.05 to
5.01 ± 0.14, toward the oracle DDPM's 5.92 (an undertrained DDPM's blur helps on coarse jumps,
see issue 10), and leaves SMD-energy at 2.58 ± 0.12 (uniform t: 2.61), above the best beta-tilde
Gaussian (2.09): the recipe is not what keeps energy models from the goal of <= 1 nat.

Optimisation and the last jump (issue 10, ``bench_recipes.py --zoo``; one seed, 7 x 7 grid,
batch 256, lr 2e-3, EMA 0.995; KL on 64^2 nodes)::

    model, chain                 recipe                     final score              curve
    DDPM, 1000 steps             constant lr, 2000 steps    in-mode 0.943 (2 seeds)  converged
    DDPM, 1000 steps             cosine to 0.05, 1000       in-mode 0.967            converged
    DDPM, 1000 steps             cosine to 0.05, 600        in-mode 0.895            converged
    DDPM, 4 steps, "data" var.   constant, 2000             KL 4.69 (oracle 5.92)    rising
    DDPM, 4 steps, "clipped"     constant, 2000             KL 2.094 (oracle 2.09)   converged
    DDPM, 4 steps, "clipped"     cosine to 0.05, 1000       KL 2.100                 converged
    SMD-energy, 4 steps          constant, 2000, x0 space   KL 2.09                  -
    SMD-energy, 4 steps          constant, 2000, kernel sp. KL 2.03                  not conv.
    SMD-energy, 4 steps          cosine 1500, M = 4         KL 2.01                  not conv.
    SMD-energy, 4 steps          cosine 1500, batch 512     KL 1.92                  not conv.

(the oracle DDPM has the same last-jump variance; the best beta-tilde Gaussian scores
2.09).  So: a cosine decay to 5% of the lr (``lr_schedule="cosine"``) reaches in 1000 steps
what a constant lr did not in 2000; DDPM takes the ``"clipped"`` last-jump variance
(``final_variance="auto"``), SMD the narrowest component's variance, and the energy score is
taken in the kernel's space (``energy_space="kernel"``, the last jump's noise included; see
:mod:`smdlab.objectives`).  ``steps=None`` trains :data:`DEFAULT_STEPS`: 1000 for DDPM,
SMD-jensen and SMD-multisample (the measured DDPM count), 2000 for SMD-energy (its 4-step KL
is flat between 1500 and 2000 steps at ~2 nats; no setting of the zoo's probes got it below
1.9, see the zoo's notes).  Why (``benchmarks/results/bench_energy_beta.md``): on the chain's last jump
the energy score of the best beta-tilde Gaussian is within 0.005 +- 0.003 of the exact
posterior's (about 1% of it) though its KL is 2 nats worse, and the trained models' predictions
are spread uniformly over the grid's cells (12% within 0.1 of a mode centre, as uniform points;
the exact minimiser: ~100%).  Neither the exponent ``energy_beta`` = 0.5 (KL 1.737 +- 0.020 vs
1.885 +- 0.091, 3 seeds), a Gaussian-kernel score (``energy_bandwidths``, 2.04) nor a discrete
``latent="codebook"`` (1.87) changes that; the defaults stay the published form.

``kind="mixture"`` (:mod:`smdlab.mixture_kernel`) is the discrete-latent kernel of E10: one head
predicts K clean points, weights and variances, trained by the exact likelihood of the
clean-point posterior (no latent draws), with the same backbone and t-density.  On the 4-step
grid chain it reached a KL (IW upper bound) of 0.032 and 0.041 nats after 6000 steps (2 seeds,
K = 64), 0.249 and 0.246 after 3000, and 1.04 and 0.93 with K = 16 < the grid's 49 modes
(``benchmarks/results/bench_mixture_recipe.md``; in an earlier one-seed probe lr 5e-3 or 1e-3 and
a wider or deeper backbone did no better), so ``steps=None`` trains 6000.  On the 1000-step chain
6000 steps give an in-mode share of 0.989 / 0.994, 3000 steps 0.975 / 0.963.

The features do most of the work; the t-density adds 0.04 in-mode share and lowers the NLL
excess by 40% at equal steps.  The issue's probe found the same (uniform t, raw x: 0.44 after
5k steps, 0.45 after 10k; both changes: 0.94 after 3-5k).  Only two seeds and 2000 steps were
measured (a shared 2-core machine); the margin (0.55) is over 100 seed sds.  EMA decay 0.995
averages over ~200 steps, where the cosine's lr is already below a fifth of its peak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .denoisers import GaussianDenoiser, SMDDenoiser
from .mixture import GaussianMixture
from .nets import CodebookLatentGenerator, VectorLatentGenerator, VectorMLP
from .objectives import T_SAMPLINGS, Objective
from .schedules import NoiseSchedule
from .training import TrainConfig, train


def _flush_setting(run_dir) -> bool:
    """Flush subnormals while training (TrainConfig.flush_denormal), except when resuming a run
    that began without it (written before the option existed): it keeps computing what it did."""
    from .checkpoints import CheckpointError, latest_checkpoint, load_checkpoint

    last = latest_checkpoint(run_dir) if run_dir is not None else None
    if last is None:
        return True
    try:
        return bool(load_checkpoint(last)["config"].get("flush_denormal", False))
    except (CheckpointError, KeyError, TypeError):
        return True         # (train() reports a damaged checkpoint itself)

LATENTS = ("gaussian", "codebook")
FIT_KINDS = ("ddpm", "smd_jensen", "smd_multisample", "smd_energy", "mixture")
# Training steps used when steps=None (see the module docstring).
DEFAULT_STEPS = {"ddpm": 1000, "smd_jensen": 1000, "smd_multisample": 1000, "smd_energy": 2000,
                 "mixture": 6000}


def default_components(target: GaussianMixture) -> int:
    """K of a ``mixture`` kernel when the recipe leaves it open: twice the target's components,
    at least 8 and at most 64 (the zoo's 64 for the 49-mode grid)."""
    return min(max(2 * target.K, 8), 64)


@dataclass(frozen=True)
class Recipe:
    """How a learned kernel is trained (defaults: the measured recipe of the module docstring).

    t_sampling, p_mean, p_std, uniform_share: the jump-index density
    (:func:`smdlab.objectives.step_probabilities`); fourier, fourier_scale: input Fourier
    features (0: raw coordinates); hidden, depth, time_dim: the backbone; latent_dim, noise_dim,
    gen_hidden: SMD's latent; latent: its generator, ``"gaussian"`` (an MLP of Gaussian noise,
    the published form) or ``"codebook"`` (:class:`smdlab.nets.CodebookLatentGenerator`, n_codes
    uniform discrete codes); n_samples: K (multisample) or M (energy); batch_size, lr,
    warmup_steps, ema_decay, lr_schedule, lr_final, fused: the optimisation
    (:class:`smdlab.training.TrainConfig`); energy_space, energy_beta, energy_bandwidths: what
    the energy score compares, its distances' exponent, or the bandwidths of a Gaussian-kernel
    score in its place (:class:`smdlab.objectives.Objective`);
    final_variance: the variance of the jump to 0
    (``"auto"``: ``"clipped"`` for DDPM, ``"data"`` = the narrowest component's variance for
    SMD; see the module docstring); n_components: K of the ``mixture`` kind (None:
    :func:`default_components`).
    """

    t_sampling: str = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2
    uniform_share: float = 0.3
    fourier: int = 6
    fourier_scale: float = 1.0
    hidden: int = 128
    depth: int = 2
    time_dim: int = 64
    latent_dim: int = 16
    noise_dim: int = 4
    gen_hidden: int = 64
    latent: str = "gaussian"
    n_codes: int = 64
    n_samples: int = 2
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    lr_schedule: str = "cosine"
    lr_final: float = 0.05
    fused: bool = True
    energy_space: str = "kernel"
    energy_beta: float = 1.0
    energy_bandwidths: tuple[float, ...] | None = None
    final_variance: str | float = "auto"
    n_components: int | None = None

    def __post_init__(self):
        if not (self.final_variance in ("auto", "clipped", "beta1", "data") or
                (isinstance(self.final_variance, float) and self.final_variance > 0)):
            raise ValueError(f"recipe.final_variance must be 'auto', 'data', 'clipped', 'beta1' "
                             f"or a positive float; got {self.final_variance!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"recipe.t_sampling must be one of {T_SAMPLINGS}; got "
                             f"{self.t_sampling!r}")
        if self.energy_bandwidths is not None:      # a JSON list, say: keep the recipe hashable
            object.__setattr__(self, "energy_bandwidths",
                               tuple(float(h) for h in self.energy_bandwidths))
        if self.latent not in LATENTS:
            raise ValueError(f"recipe.latent must be one of {LATENTS}; got {self.latent!r}")
        if self.n_codes < 1:
            raise ValueError(f"recipe.n_codes must be >= 1; got {self.n_codes}")
        if self.batch_size < 1 or self.fourier < 0:
            raise ValueError("recipe needs batch_size >= 1 and fourier >= 0")
        if self.n_components is not None and (isinstance(self.n_components, bool) or
                                              not isinstance(self.n_components, int) or
                                              self.n_components < 1):
            raise ValueError(f"recipe.n_components must be an int >= 1 or None; got "
                             f"{self.n_components!r}")

    @classmethod
    def baseline(cls, **changes) -> Recipe:
        """Plain DDPM training: uniform jump index, raw coordinates."""
        return cls(**{"t_sampling": "uniform", "fourier": 0, **changes})


def _kind(kind) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string; got {type(kind).__name__}")
    k = kind.replace("-", "_")
    if k not in FIT_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {FIT_KINDS}")
    return k


def build_kernel(dim: int, kind: str, chain: NoiseSchedule, recipe: Recipe = Recipe(),
                 final_variance="clipped", n_components: int = 16):
    """(untrained kernel, objective) of ``kind`` for D = ``dim`` on ``chain`` (``n_components``:
    K of a ``mixture`` kernel when the recipe leaves it open)."""
    k = _kind(kind)
    r = recipe
    T = chain.root.T
    ts = {"t_sampling": r.t_sampling, "p_mean": r.p_mean, "p_std": r.p_std,
          "uniform_share": r.uniform_share}
    if k == "mixture":
        from .mixture_kernel import MixtureDenoiser, build_mixture_mlp

        K = r.n_components or n_components
        net = build_mixture_mlp(dim, K, hidden=r.hidden, depth=r.depth, time_dim=r.time_dim, T=T,
                                fourier=r.fourier, fourier_scale=r.fourier_scale)
        return MixtureDenoiser(net, chain, dim, K, "v"), Objective("nll", chain, **ts)
    if k == "ddpm":
        net = VectorMLP(dim, r.hidden, r.depth, time_dim=r.time_dim, T=T, fourier=r.fourier,
                        fourier_scale=r.fourier_scale)
        model = GaussianDenoiser(net, chain, dim, "v", name="ddpm", final_variance=final_variance)
        obj = "jensen"
    else:
        net = VectorMLP(dim, r.hidden, r.depth, time_dim=r.time_dim, T=T, latent_dim=r.latent_dim,
                        fourier=r.fourier, fourier_scale=r.fourier_scale)
        if r.latent == "codebook":
            gen = CodebookLatentGenerator(r.noise_dim, r.latent_dim, r.n_codes)
        else:
            gen = VectorLatentGenerator(dim, r.noise_dim, r.latent_dim, hidden=r.gen_hidden,
                                        time_dim=max(r.time_dim // 2, 2), T=T)
        model = SMDDenoiser(net, gen, chain, dim, r.noise_dim, "v", name=k.replace("_", "-"),
                            final_variance=final_variance)
        obj = k.removeprefix("smd_")
    n = {"jensen": 1, "multisample": max(r.n_samples, 1), "energy": max(r.n_samples, 2)}[obj]
    extra = {"energy_space": r.energy_space, "energy_beta": r.energy_beta,
             "energy_bandwidths": r.energy_bandwidths} if obj == "energy" else {}
    objective = Objective(obj, chain, n_samples=n, **ts, **extra)
    return model, objective


def fit(target: GaussianMixture, kind: str = "ddpm", schedule: NoiseSchedule | None = None,
        steps: int | None = None, seed: int = 0, *, recipe: Recipe | None = None,
        run_dir=None, callback=None, progress: bool = False):
    """Train a learned reverse kernel on ``target`` and return it (EMA weights, eval mode).

    Args:
        target: the :class:`GaussianMixture` q(x_0) (any dimension D); training draws exact
            samples of it (float32).
        kind: ``"ddpm"``, ``"smd_jensen"``, ``"smd_multisample"``, ``"smd_energy"`` or
            ``"mixture"`` (the discrete-latent kernel of :mod:`smdlab.mixture_kernel`, trained by
            exact likelihood; its last jump's variance is learned) (hyphens accepted).
        schedule: the chain trained and sampled on (a schedule or a respacing; default
            ``NoiseSchedule.linear(1000)``).
        steps: optimizer steps (None: :data:`DEFAULT_STEPS` of the kind).
        seed: seeds the weights, the data and the noise.
        recipe: a :class:`Recipe` (default: the measured one).
        run_dir: checkpoint folder (resumable, see :mod:`smdlab.training`); None writes nothing.
        callback: ``callback(step, model, ema)`` after every step (e.g. to record a
            :class:`smdlab.convergence.LearningCurve`).
    Returns the kernel; ``kernel.training = {"steps", "seconds", "log"}`` records the run.
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a GaussianMixture; got {type(target).__name__}")
    k = _kind(kind)
    if schedule is None:
        schedule = NoiseSchedule.linear(1000)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
    if steps is None:
        steps = DEFAULT_STEPS[k]
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int or None; got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a smdlab.fit.Recipe; got {type(recipe).__name__}")
    # SMD: the narrowest component's variance on the jump to 0, the largest final variance under
    # which a latent kernel can still be exact (see smdlab.denoisers); DDPM: the clipped
    # beta-tilde, its best (see the module docstring).
    fv = recipe.final_variance
    if fv == "auto":
        fv = "clipped" if k == "ddpm" else "data"
    final_variance = float(target.eigvals.min()) if fv == "data" else fv
    torch.manual_seed(seed)
    model, objective = build_kernel(target.D, k, schedule, recipe, final_variance,
                                    default_components(target))
    sample_target = target.to(dtype=torch.float32)

    def data(step, g):
        return sample_target.sample(recipe.batch_size, g)

    config = TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=min(recipe.warmup_steps, steps),
                         ema_decay=recipe.ema_decay, seed=seed, progress=progress,
                         keep_checkpoints=1, lr_schedule=recipe.lr_schedule,
                         lr_final=recipe.lr_final, fused=recipe.fused,
                         flush_denormal=_flush_setting(run_dir))
    res = train(model, objective, data, config, run_dir=run_dir, callback=callback,
                extra_config={"recipe": dataclasses.asdict(recipe), "kind": k,
                              "target": repr(target), "chain": schedule.original_steps.tolist()},
                desc=f"fit {k}")
    kernel = res.ema.module if hasattr(res.ema, "module") else res.ema
    kernel.eval()
    kernel.training_record = {"steps": res.step, "seconds": res.seconds, "log": res.log}
    return kernel
