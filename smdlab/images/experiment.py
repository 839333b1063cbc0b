"""The image comparison: DDPM against SMD on real images, FD-<net> and friends against steps.

A registered experiment of the lab (``images``; run by ``python -m smdlab.images`` or
``python -m smdlab images``), with the lab's outputs, provenance and report: its verdict rows enter
REPORT.md's table, rebuilt from ``results/images/images.json`` (:func:`.report.lab_summary`).

Models (see :mod:`smdlab.images.models`): ``ddpm``; ``smd-jensen`` (the paper's objective);
``smd-<best>`` (the objective that worked in the toy lab, ``models.best_objective``);
``ddpm-matched`` (a plain U-Net with the SMD model's parameter count).  Two protocols, as the
paper's few-step claim (C5) needs both:

* ``long``: models trained on the T-step chain, sampled on respaced chains of
  ``chains.sample_steps`` steps (ancestral on every chain, DDIM eta = 0 on ``chains.ddim_steps``);
* ``short``: models trained on the ``chains.short_chain``-step chain and sampled on it
  (ancestral, DDIM, and for SMD the frozen-latent ablation).

Convergence discipline: during training every model records FD-<net> and KID of its (EMA) weights
at ``eval.curve_points`` steps spread over training (:func:`smdlab.convergence.evaluation_steps`),
on ``eval.curve_n`` samples of its cheapest evaluation chain (the fewest ``chains.sample_steps``
for the long protocol, the training chain for the short one); the points are saved beside the
checkpoints (``curve.json``), so a resumed run reuses them and computes the same curve.  A model is
*converged* when its FD curve passes :func:`smdlab.convergence.is_converged` with the relative
tolerance alone (the last 3 points within ``eval.curve_rel_tol`` of the final one; the points
share one sampling seed, yet measured late points of trained digits models still moved 10-17%
at n = 250 and up to ~20% at n = 1000, so the tolerance must exceed that jitter).  A row of
the report trained with several seeds (a headline row) is judged on the curve of its mean over
seeds (:func:`smdlab.images.report.unconverged_models`), the quantity its verdicts compare; a
verdict resting on an unconverged model or row has status
"unconverged" (:func:`smdlab.experiments.base.gate_on_convergence`).

Every evaluation records n, the reference split, sampler, steps, EMA flag, seeds, parameter
counts and the measured train step time (of the training that made the weights, also after a
resume).  Outputs (under ``out``): results/images/images.json, figures/images/*.png,
REPORT-images.md; checkpoints under runs/images/ (resumed automatically on a second call; every
setting that changes training, and a fingerprint of the loaded data, are part of each model's
checkpoint config, so a changed setting or dataset is an error, never a silent reuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..convergence import LearningCurve, evaluation_steps
from ..experiments.base import ExperimentResult, Outputs, register
from ..provenance import run_metadata, write_json
from ..schedules import NoiseSchedule
from .config import ImagesConfig
from .data import load_dataset
from .distributed import DistInfo, barrier
from .evaluation import (
    evaluate_samples,
    extract_features,
    fd_from_features,
    load_inception_extractor,
    state_hash,
    to_inception_input,
    train_classifier,
)
from .models import build_model, latent_spread
from .report import lab_summary, load_result, write_report
from .sampling import generate, save_grid
from .train import train_image_model


@dataclass
class ImageOutputs(Outputs):
    """The lab's outputs, with the image comparison's own sub-folders: root/figures/images,
    root/results/images, root/runs/images and root/REPORT-images.md."""

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


def data_fingerprint(images: torch.Tensor) -> str:
    """A sha256 (16 hex digits) of the loaded training tensor's values, shape and dtype: a
    different dataset with the same name and size has a different fingerprint."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _timing(run_dir: Path, tr, is_main: bool) -> tuple[float, float | None, float]:
    """(seconds per step, peak MiB, training seconds) of the training that produced the weights:
    measured now when this call trained, else what the call that trained recorded (a resume
    reports the original times, not the reload's)."""
    path = run_dir / "timing.json"
    res = tr.result
    saved = {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    if res.step > res.resumed_from:
        # a resumed partial run adds its seconds to those of the calls before it
        total = res.seconds + (float(saved.get("train_seconds", 0.0)) if res.resumed_from else 0.0)
        if is_main:
            write_json(path, {"step_seconds": tr.step_seconds, "peak_memory_mib": tr.peak_memory_mib,
                              "steps": res.step, "train_seconds": total})
        return tr.step_seconds, tr.peak_memory_mib, total
    if "step_seconds" in saved:
        return (float(saved["step_seconds"]), saved.get("peak_memory_mib"),
                float(saved.get("train_seconds", 0.0)))
    return tr.step_seconds, tr.peak_memory_mib, res.seconds


def _feature_scorer(cfg: ImagesConfig, train_data, test_data, out: ImageOutputs, info: DistInfo,
                    log, inception_weights):
    """(evaluate(samples) -> metrics, classifier info) on the main process, else (None, None)."""
    if not info.is_main:
        return None, None
    classifier, cls_info = train_classifier(
        train_data, test_data, f"{cfg.data.dataset.replace('-', '')}net",
        steps=cfg.eval.classifier_steps, seed=cfg.seed, cache_dir=out.runs, progress=True,
        device=info.device)
    log(f"feature net FD-{cls_info.name}: test accuracy {cls_info.accuracy:.3f}, "
        f"weights {cls_info.weights_sha256}")
    ref_feats = extract_features(classifier.features, train_data.images)
    incep = incep_ref = None
    if inception_weights is not None:
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

    def fd_only(images):
        return fd_from_features(ref_feats, extract_features(classifier.features, images))

    evaluate.fd_only = fd_only
    return evaluate, cls_info


def fd_against_n(cfg: ImagesConfig, test_data, evaluate) -> dict[int, float]:
    """FD-<net> of n held-out real images against the training split, for the n this run uses
    (curve points, final evaluations) and a doubling ladder up to the test split's size: the
    metric's floor and its small-sample bias (FD estimated from n points is biased upwards,
    roughly like 1/n)."""
    m = len(test_data)
    ns = {n for n in (cfg.eval.curve_n, cfg.eval.n_samples) if n <= m}
    k = 25
    while k <= min(m, 5000):
        ns.add(k)
        k *= 2
    # nested subsets (the first n of one permutation), so the ladder shows n, not resampling
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(cfg.seed))
    return {int(n): evaluate.fd_only(test_data.images[perm[:n]]) for n in sorted(ns) if n >= 8}


class CurveRecorder:
    """The training callback that records a model's learning curve (see the module docstring).

    At each step of ``evaluation_steps(total, points)`` (main process only) it samples ``n``
    images from the EMA weights (or the raw ones) on ``chain`` with seed ``seed``, scores them
    with ``evaluate`` and appends {step, fd, fd_boot_std, kid, kid_std} (the bootstrap / subset
    spreads of one point).  Every point uses the same sampling seed (common random numbers); that
    lowers the noise of a *difference* between points less than hoped (the sampler's paths react
    to small weight changes: late points moved 10-20% in the default run), so the rule is applied
    with the relative tolerance alone (as the toy zoo does for its grid KL), not with the
    bootstrap spreads as standard errors (which at small n would pass any curve).
    The torch RNG state is restored afterwards, so training is unchanged by the
    evaluations.  Points are written to ``run_dir/curve.json`` with the settings that made them;
    stored points with the same settings are reused (a resumed or reloaded model's weights at a
    step are bit-identical, so are its points).
    """

    def __init__(self, run_dir: Path, total: int, evaluate, chain, settings: dict, *,
                 device, use_ema: bool = True, is_main: bool = True, rel_tol: float = 0.05):
        self.path = Path(run_dir) / "curve.json"
        self.at = set(evaluation_steps(total, settings["points"])) if total > 0 else set()
        self.evaluate, self.chain, self.settings = evaluate, chain, settings
        self.device, self.use_ema, self.is_main, self.rel_tol = device, use_ema, is_main, rel_tol
        self.points: dict[int, dict] = {}
        self.seconds = 0.0
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("settings") == settings:
                self.points = {int(q["step"]): q for q in saved["points"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def __call__(self, step: int, model, ema) -> None:
        if not self.is_main or step not in self.at or step in self.points:
            return
        from ..training import unwrap

        t0 = time.perf_counter()
        net = ema if self.use_ema else unwrap(model)
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            was = net.training
            net.eval()
            try:
                x = generate(net, self.settings["n"], self.chain, "ancestral", 0.0, True,
                             self.settings["batch"], self.settings["seed"], self.device)
            finally:
                net.train(was)
        m = self.evaluate(x)
        self.points[step] = {"step": int(step), "fd": m["fd"], "fd_boot_std": m["fd_boot_std"],
                             "kid": m["kid"], "kid_std": m["kid_std"]}
        write_json(self.path, {"settings": self.settings,
                               "points": [self.points[k] for k in sorted(self.points)]})
        self.seconds += time.perf_counter() - t0

    def curve(self, final_step: int) -> LearningCurve:
        c = LearningCurve("fd", rel_tol=self.rel_tol)
        for k in sorted(self.points):
            if k in self.at and k <= final_step:
                q = self.points[k]
                c.add(k, {key: q[key] for key in ("fd", "fd_boot_std", "kid", "kid_std")})
        return c


def _curve_chain(cfg: ImagesConfig, protocol: str, root, short) -> tuple[int, NoiseSchedule]:
    if protocol == "long":
        S = min(cfg.chains.sample_steps)
        return S, root.respace(S, cfg.chains.spacing)
    return cfg.chains.short_chain, short


def _sampler_runs(cfg: ImagesConfig, protocol: str, is_smd: bool,
                  repeat: bool = False) -> list[tuple[str, int, bool]]:
    """(sampler, steps, frozen latent) of every evaluation of one trained model (a seed repeat
    skips the frozen-latent ablation)."""
    ch = cfg.chains
    if protocol == "long":
        return [("ancestral", s, False) for s in ch.sample_steps] + \
            [("ddim", s, False) for s in ch.ddim_steps]
    if repeat:
        return [("ancestral", ch.short_chain, False), ("ddim", ch.short_chain, False)]
    runs = [("ancestral", ch.short_chain, False), ("ddim", ch.short_chain, False)]
    return runs + ([("ancestral", ch.short_chain, True)] if is_smd else [])


@dataclass(frozen=True)
class ImageJob:
    """One model to train: its protocol ("long" or "short"), training steps, spec and seed."""

    protocol: str
    steps: int
    spec: object
    seed: int
    main_seed: int

    @property
    def label(self) -> str:
        return f"{self.protocol}-{self.spec.name}" + (
            f"-seed{self.seed}" if self.seed != self.main_seed else "")

    @property
    def cost(self) -> float:
        """Relative training cost (measured ms/step ratios on digits at batch 48: plain U-Net 1,
        matched 1.4, SMD-jensen 1.9, SMD with K latent draws about 1 + 0.9 K), used to start the
        longest first."""
        spec = self.spec
        if spec.kind == "smd":
            per = 1.9 if spec.objective == "jensen" else 1.0 + 0.9 * spec.n_samples
        else:
            per = 1.4 if spec.kind == "ddpm-matched" else 1.0
        return per * self.steps


def image_jobs(cfg: ImagesConfig) -> list[ImageJob]:
    """Every model of the run, in report order: each model on both protocols with the main seed,
    then the models named in ``cfg.seed_models`` (None: every model) of the protocols in
    ``cfg.seed_protocols`` again with each of ``cfg.seed_repeats`` (the spread over training
    seeds of the headline rows)."""
    specs = cfg.models.specs()
    repeated = cfg.repeated_models()
    steps = {"long": cfg.train.steps, "short": cfg.short_train_steps}
    jobs = [ImageJob(p, steps[p], spec, cfg.seed, cfg.seed) for p in ("long", "short")
            for spec in specs]
    jobs += [ImageJob(p, steps[p], spec, s, cfg.seed) for p in ("long", "short")
             if p in cfg.seed_protocols for s in cfg.seed_repeats for spec in specs
             if spec.name in repeated]
    return jobs


@dataclass
class _Setup:
    """What every job of a run needs, built once per process (data, chains, the scorer)."""

    cfg: ImagesConfig
    train_data: object
    test_data: object
    fingerprint: str
    unet: object
    root: NoiseSchedule
    short: NoiseSchedule
    evaluate: object
    cls_info: object
    inception: str | None = None


def _setup(cfg: ImagesConfig, out: ImageOutputs, info: DistInfo, log, inception_weights,
           quiet: bool = False) -> _Setup:
    d = cfg.data
    train_data = load_dataset(d.dataset, d.data_root, "train", d.image_size, d.channels)
    test_data = load_dataset(d.dataset, d.data_root, "test", d.image_size, d.channels)
    if d.n_train is not None:
        train_data = train_data.subset(d.n_train, torch.Generator().manual_seed(cfg.seed))
    if train_data.skipped and not quiet:
        log(f"skipped {train_data.skipped} unreadable files")
    if not torch.isfinite(train_data.images).all():
        raise ValueError(f"{train_data.name}: the training images contain NaN or inf pixels")
    root = NoiseSchedule.from_name(cfg.chains.schedule, cfg.chains.T)
    evaluate, cls_info = _feature_scorer(cfg, train_data, test_data, out, info,
                                         (lambda *a, **k: None) if quiet else log,
                                         inception_weights)
    return _Setup(cfg, train_data, test_data, data_fingerprint(train_data.images),
                  cfg.net.unet(train_data.shape), root,
                  root.respace(cfg.chains.short_chain, cfg.chains.spacing), evaluate, cls_info,
                  None if inception_weights is None else str(inception_weights))


def _run_job(s: _Setup, job: ImageJob, out: ImageOutputs, info: DistInfo, log,
             progress: bool = True) -> tuple[str, dict, list]:
    """Train (or resume) one model with its learning curve, probe its latent and score its
    samples: (label, model record, evaluations)."""
    from ..objectives import Objective

    cfg, d, spec, seed, protocol = s.cfg, s.cfg.data, job.spec, job.seed, job.protocol
    inception = s.inception
    label = job.label
    chain = s.root if protocol == "long" else s.short
    torch.manual_seed(seed)
    model = build_model(spec, s.unet, s.root)
    images = s.train_data.images
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    objective = Objective(spec.objective, chain, n_samples=spec.n_samples)
    # Everything that changes what this model learns: a resume with any of it changed is an
    # error (smdlab.training compares the stored config), never a silent reuse.
    extra = {"model": spec.to_dict(), "unet": s.unet.to_dict(), "chain": chain.name,
             "objective": objective.describe(), "dataset": s.train_data.name,
             "n_train": len(s.train_data), "data_fingerprint": s.fingerprint,
             "flip": d.flip, "image_size": d.image_size, "channels": d.channels,
             "batch_size": cfg.batch_size, "world_size": info.world_size,
             **({"channels_last": True} if cfg.channels_last else {})}
    tc = dataclasses.replace(cfg.train, steps=job.steps, seed=seed,
                             progress=cfg.train.progress and progress)
    curve_S, curve_chain = _curve_chain(cfg, protocol, s.root, s.short)
    curve_settings = {"points": cfg.eval.curve_points, "n": cfg.eval.curve_n,
                      "sampler": "ancestral", "steps": curve_S, "seed": cfg.seed + 1,
                      "batch": cfg.eval.sample_batch, "use_ema": cfg.eval.use_ema}
    recorder = CurveRecorder(out.runs / label, job.steps, s.evaluate, curve_chain,
                             curve_settings, device=info.device, use_ema=cfg.eval.use_ema,
                             is_main=info.is_main, rel_tol=cfg.eval.curve_rel_tol)
    tr = train_image_model(model, objective, images, tc, batch_size=cfg.batch_size,
                           flip=d.flip, run_dir=out.runs / label, info=info,
                           extra_config=extra, desc=label, callback=recorder)
    res = tr.result
    curve = recorder.curve(res.step)
    step_s, peak, train_s = _timing(out.runs / label, tr, info.is_main)
    ncfg = res.model.net.config
    record = {"spec": spec.to_dict(), "protocol": protocol, "seed": seed,
              "chain": chain.name, "width": ncfg.base_channels,
              "time_dim": ncfg.time_dim or 4 * ncfg.base_channels,
              "parameters": tr.parameters, "train_steps": res.step,
              "resumed_from": res.resumed_from, "step_seconds": step_s,
              "train_seconds": train_s, "peak_memory_mib": peak,
              "final_loss": res.log[-1]["loss"] if res.log else None,
              "loss_log": res.log, "global_batch": cfg.batch_size * info.world_size,
              "curve": curve.to_dict(), "curve_settings": curve_settings,
              "curve_seconds_this_call": recorder.seconds}
    lines = [f"{label}: {tr.parameters} parameters, {res.step} steps (resumed from "
             f"{res.resumed_from}), {1000 * step_s:.1f} ms/step"]
    evaluations: list[Evaluation] = []
    if info.is_main:
        lines.append(f"  curve ({len(curve.points)} points, n = {cfg.eval.curve_n}): FD " +
                     ", ".join(f"{q['step']}: {q['fd']:.2f}" for q in curve.points) +
                     f"; converged: {'yes' if curve.converged() else 'no'}")
        net = res.ema if cfg.eval.use_ema else res.model
        net.eval()
        cache = EvalCache(out.runs / label, state_hash(net), {
            "n": cfg.eval.n_samples, "seed": cfg.seed + 1, "batch": cfg.eval.sample_batch,
            "use_ema": cfg.eval.use_ema, "spacing": cfg.chains.spacing,
            "root": s.root.name, "short": s.short.name,
            "features": s.cls_info.weights_sha256 if s.cls_info else None,
            "inception": inception}, enabled=info.is_main)
        if spec.kind == "smd":
            probe = s.test_data.subset(64, torch.Generator().manual_seed(cfg.seed)).images
            st = chain.original_steps.tolist()   # lowest, middle and highest step
            steps_probe = sorted({st[1], st[len(st) // 2], st[-1]})
            use = cache.get("latent_use")    # JSON keys are strings: back to steps
            use = None if use is None else {int(t): v for t, v in use.items()}
            if use is None or sorted(use) != steps_probe:
                use = latent_spread(net, probe, steps_probe, seed=cfg.seed)
                cache.put("latent_use", use)
            record["latent_use"] = use
            lines.append("  latent use (eta std / data std of x0_hat): " + ", ".join(
                f"t={t}: {v['ratio']:.3f}" for t, v in record["latent_use"].items()))
        for sampler, S, frozen in _sampler_runs(cfg, protocol, spec.kind == "smd",
                                                seed != cfg.seed):
            ev, line = _sample_and_score(cfg, net, label, spec.name, protocol, sampler, S,
                                         frozen, seed, s.root, s.short, s.evaluate, out, info,
                                         cache)
            evaluations.append(ev)
            lines.append(line)
    log("\n".join(lines))
    return label, record, evaluations


# One _Setup per worker process (built by its first job), keyed by the run it belongs to.
_WORKER_SETUP: dict = {}


def _job_in_worker(args) -> tuple[str, dict, list]:
    cfg, root, run_id, device, threads, inception_weights, job = args
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(device=dev)
    out = ImageOutputs(root, run_id)
    key = (root, run_id)
    if key not in _WORKER_SETUP:
        _WORKER_SETUP.clear()
        _WORKER_SETUP[key] = _setup(cfg, out, info, print, inception_weights, quiet=True)
    return _run_job(_WORKER_SETUP[key], job, out, info, lambda msg: print(msg, flush=True),
                    progress=False)


def _run_jobs_parallel(cfg: ImagesConfig, jobs: list[ImageJob], out: ImageOutputs,
                       info: DistInfo, inception_weights, log) -> list:
    """Run ``jobs`` in ``cfg.workers`` spawned processes of ``torch.get_num_threads()`` threads
    each (the costliest first); returns their results in the order of ``jobs``.  Every job
    seeds all of its randomness itself, so its numbers do not depend on which worker ran it or
    what ran before it there."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = torch.get_num_threads()
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, tuple] = {}
    log(f"training {len(jobs)} models in {cfg.workers} worker processes ({threads} thread(s) "
        f"each); lines appear as models finish")
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
        futures = {pool.submit(_job_in_worker, (cfg, str(out.root), out.run_id, str(info.device),
                                                threads, inception_weights, jobs[i])): i
                   for i in order}
        from concurrent.futures import as_completed

        from tqdm import tqdm
        for f in tqdm(as_completed(futures), total=len(futures), desc="image models",
                      disable=not cfg.train.progress):
            results[futures[f]] = f.result()
    return [results[i] for i in range(len(jobs))]


def run_images(cfg: ImagesConfig, out: ImageOutputs, info: DistInfo | None = None,
               command: str | None = None, log=print, inception_weights=None) -> dict:
    """Run the comparison of ``cfg``; returns the result dict (also written as JSON).

    With ``inception_weights`` (the FID Inception weights file) every evaluation also reports
    Inception FID against the training split (needs torch-fidelity); a missing file is an error
    before any training.  With ``cfg.workers`` > 1 (one process, not torchrun) the models train
    in that many worker processes; the numbers are the same as with one.
    """
    info = info or DistInfo()
    if cfg.workers > 1 and info.distributed:
        raise ValueError(f"workers = {cfg.workers} runs models in parallel processes; under "
                         f"torchrun (world size {info.world_size}) set workers = 1")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    s = _setup(cfg, out, info, log, inception_weights)
    train_data, test_data = s.train_data, s.test_data
    log(f"data {train_data.name}: {len(train_data)} train, {len(test_data)} test images of shape "
        f"{train_data.shape} (fingerprint {s.fingerprint}); device {info.device}, world size "
        f"{info.world_size}")
    evaluations: list[Evaluation] = []
    models: dict[str, dict] = {}
    fd_by_n = None
    if info.is_main:  # the floor of the metric at this n: held-out real images
        real = test_data.subset(cfg.eval.n_samples, torch.Generator().manual_seed(cfg.seed)).images
        evaluations.append(Evaluation("real (test split)", "data", "-", 0, s.evaluate(real)))
        fd_by_n = fd_against_n(cfg, test_data, s.evaluate)
        log("FD of held-out real images against n: " + ", ".join(
            f"n={n}: {v:.3f}" for n, v in fd_by_n.items()))
    jobs = image_jobs(cfg)
    if cfg.workers > 1:
        done = _run_jobs_parallel(cfg, jobs, out, info, inception_weights, log)
    else:
        done = []
        for job in jobs:
            done.append(_run_job(s, job, out, info, log))
            barrier(info)
    for label, record, evs in done:
        models[label] = record
        evaluations += evs

    result = {
        "config": dataclasses.asdict(cfg),
        "command": command,
        "run_id": out.run_id,
        "dataset": {"train": train_data.name, "test": test_data.name, "n_train": len(train_data),
                    "n_test": len(test_data), "shape": list(train_data.shape),
                    "skipped": train_data.skipped, "fingerprint": s.fingerprint,
                    "class_names": list(train_data.class_names)},
        "reference_split": train_data.name,
        "feature_net": s.cls_info.to_dict() if s.cls_info else None,
        "sampling": {"n": cfg.eval.n_samples, "use_ema": cfg.eval.use_ema,
                     "sample_seed": cfg.seed + 1, "train_seed": cfg.seed, "clip_x0": True,
                     "spacing": cfg.chains.spacing, "ddim_eta": 0.0},
        "world_size": info.world_size,
        "workers": cfg.workers,
        "device": str(info.device),
        "models": models,
        "evaluations": [dataclasses.asdict(e) for e in evaluations],
        "fd_against_n": fd_by_n,
        "convergence_rule": convergence_rule(cfg.eval.curve_rel_tol),
        "seconds": time.perf_counter() - t_start,
    }
    if info.is_main:
        _write_outputs(cfg, result, out, log)
    return result


def convergence_rule(rel_tol: float) -> str:
    return (f"converged when each of the FD curve's last 3 points lies within {rel_tol:.0%} of "
            f"the final one (smdlab.convergence.is_converged with the relative tolerance alone: "
            f"every point is sampled with the same seed; one point's bootstrap spread is drawn as "
            f"error bars, not used as a standard error, since at small n it would pass any curve); a "
            f"curve of fewer than 3 points is not converged")


class EvalCache:
    """Evaluations of one model's sampled weights, stored in ``run_dir/evaluations.json`` and
    reused while the weights (their sha256) and every setting that changes the numbers (n,
    seed, batch, chain, the feature net's hash) are the same: a rerun of an unchanged
    checkpoint re-scores nothing, and keeps the sampling times of the call that measured them."""

    def __init__(self, run_dir: Path, weights: str, settings: dict, enabled: bool = True):
        self.path = Path(run_dir) / "evaluations.json"
        self.key = {"weights": weights, **settings}
        self.enabled = enabled
        self.entries: dict[str, dict] = {}
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("key") == self.key:
                self.entries = dict(saved["entries"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def get(self, tag: str):
        return self.entries.get(tag) if self.enabled else None

    def put(self, tag: str, value) -> None:
        self.entries[tag] = value
        if self.enabled:
            write_json(self.path, {"key": self.key, "entries": self.entries})


def _sample_and_score(cfg, net, label, name, protocol, sampler, S, frozen, seed, root, short,
                      evaluate, out, info, cache: EvalCache | None = None
                      ) -> tuple[Evaluation, str]:
    tag = f"{label}-{sampler}{S}" + ("-frozen" if frozen else "")
    grid = out.grids / f"{tag}.png"
    hit = cache.get(tag) if cache is not None else None
    if hit is not None and grid.exists():
        ev = Evaluation(**hit)
        m = ev.metrics
        return ev, (f"  {tag}: FD {m['fd']:.3f} +- {m['fd_boot_std']:.3f} (stored evaluation of "
                    f"these weights)")
    kernel = net.with_frozen_eta() if frozen else net
    chain_S = root.respace(S, cfg.chains.spacing) if protocol == "long" else short
    n = cfg.eval.n_samples
    t0 = time.perf_counter()
    x = generate(kernel, n, chain_S, sampler, 0.0, True, cfg.eval.sample_batch, cfg.seed + 1,
                 info.device, progress=False)
    secs = time.perf_counter() - t0
    m = evaluate(x)
    save_grid(x[:cfg.eval.n_grid], grid,
              title=f"{name}, {protocol} protocol (seed {seed}): {sampler}, {S} steps"
                    + (", latent frozen" if frozen else ""))
    line = (f"  {tag}: FD {m['fd']:.3f} +- {m['fd_boot_std']:.3f}, KID {m['kid']:.4f}, P/R "
            f"{m['precision']:.2f}/{m['recall']:.2f}, classes covered "
            f"{m['classes']['covered']}, {n / secs:.0f} img/s")
    ev = Evaluation(name, protocol, sampler, S, m, frozen, secs,
                    {"images_per_second": n / secs, "grid": f"figures/images/grids/{tag}.png",
                     "train_seed": seed})
    if cache is not None:
        cache.put(tag, dataclasses.asdict(ev))
    return ev, line


def _write_outputs(cfg: ImagesConfig, result: dict, out: ImageOutputs, log) -> None:
    from .figures import make_figures

    meta = {"experiment": "images", "run_id": out.run_id, **run_metadata(cfg)}
    # The numbers first, so that a failure while drawing never loses a (GPU) run's results.
    write_json(out.results / "images.json", {**meta, "result": result})
    try:
        figures = make_figures(result, out)
    except ImportError as e:   # e.g. a GPU machine without matplotlib
        log(f"figures skipped ({e}); the JSON and the report are complete")
        figures = []
    result["figures"] = [str(f.relative_to(out.root)) for f in figures]
    write_json(out.results / "images.json", {**meta, "result": result})
    write_report(result, out)


def _summarize(out: Outputs) -> dict | None:
    return lab_summary(out.root)


@register("images", "Images: DDPM against SMD on real images (FD-<net>, KID, precision/recall "
          "against sampling steps)", ImagesConfig, in_lab=False, summarize=_summarize)
def run(cfg: ImagesConfig, out: Outputs) -> ExperimentResult:
    """The lab's entry point: run the comparison into ``out`` (single process)."""
    import shlex
    import sys

    from .distributed import init_distributed, shutdown

    iout = ImageOutputs(out.root, out.run_id)
    info = init_distributed(cfg.device)
    try:
        run_images(cfg, iout, info, command="python -m smdlab " + shlex.join(sys.argv[1:]),
                   log=print)
    finally:
        shutdown(info)
    s = lab_summary(out.root)
    from ..experiments.base import Verdict
    return ExperimentResult("images", load_result(iout), out.root / "results" / "images" /
                            "images.json", [Path(out.root) / f for f in s["figures"]],
                            s["summary_md"], [Verdict(**v) for v in s["verdicts"]], s["headline"])


__all__ = ["ImageOutputs", "ImagesConfig", "Evaluation", "data_fingerprint", "run", "run_images"]
