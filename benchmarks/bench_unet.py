"""Cost of SMD on the image backbone: train step time and peak memory of the same U-Net
configuration plain, with the published hypernetwork conditioning computed in O(d), with FiLM,
with the naive matrix hypernetwork (as the authors' code builds it), and the full SMD model
(conditioned U-Net + latent generator) with the published separate generator network (``smd``)
and with the cheap generator on the U-Net's own stem (``smd_shared``), and the cheap SMD
(``smd_cheap``: FiLM conditioning, a 1x1 map of the per-pixel latent to a scale and shift per
channel, with the shared-stem generator); then sampling throughput (images/s) of DDPM and every
SMD form.

Where the time goes (``parts``, one more child process): forward + backward of each piece of the
SMD model timed alone on its real input shapes (the U-Net body, each conditioning module split
into its z -> (u, c) projection and the rest, each generator), and the bytes that autograd saves
for the backward pass (the per-pixel latent field's memory traffic) of each whole model.

Every configuration runs in its own child process (so its peak resident memory is its own), in
alternating rounds, and the best round counts.  On a loaded machine those per-process times drift
by 2x between rounds, so the ratios that count come from one more child that builds every variant
and runs one train step of each in turn (``interleaved``: min and median over its steps), timed in
CPU seconds of that one-thread process (wall seconds on CUDA); the ``parts`` child is timed so too.  Run:

    python benchmarks/bench_unet.py                     # CPU-sized default (16 x 16 x 3, width 32)
    python benchmarks/bench_unet.py --image-size 32 --base 128 --mults 1,2,2,2 --attn 16 \
        --batch 128 --device cuda                       # the published CIFAR-10 configuration

Prints a table with ratios to the plain U-Net and writes benchmarks/results/bench_unet.json.
Aim (issue 11): the full SMD train step at most 1.3x the plain U-Net's.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

VARIANTS = ("plain", "hyper", "film", "hyper_naive", "smd", "smd_shared", "smd_cheap")
LABELS = {"plain": "plain U-Net", "hyper": "O(d) conditioning alone (z given)",
          "film": "FiLM conditioning (z given)", "hyper_naive": "naive matrix hypernetwork",
          "smd": "full SMD, separate generator (published)",
          "smd_shared": "full SMD, shared-stem generator",
          "smd_cheap": "cheap SMD: FiLM conditioning + shared-stem generator"}
ROOT = Path(__file__).resolve().parent.parent


def build(args, variant):
    from smdlab.images.models import ModelSpec, build_model
    from smdlab.images.unet import UNet, UNetConfig
    from smdlab.schedules import NoiseSchedule

    cfg = UNetConfig(in_channels=args.channels, image_size=args.image_size,
                     base_channels=args.base, channel_mults=args.mults,
                     attn_resolutions=args.attn, num_res_blocks=args.res_blocks,
                     inner_dim=args.inner, hyper_layers=args.layers)
    if variant in ("smd", "smd_shared", "smd_cheap"):
        gen = "separate" if variant == "smd" else "shared"
        cond = "film" if variant == "smd_cheap" else "hyper"
        return build_model(ModelSpec("smd", "smd", latent_dim=args.latent, conditioning=cond,
                                     generator=gen), cfg, NoiseSchedule.linear(1000))
    if variant == "ddpm":
        return build_model(ModelSpec("ddpm"), cfg, NoiseSchedule.linear(1000))
    if variant == "plain":
        return UNet(cfg)
    return UNet(cfg, conditioning=variant, latent_dim=args.latent)


def clock(dev) -> float:
    """Seconds: this process's CPU time on the CPU (one thread: what other processes on a busy
    machine do barely moves it, unlike the wall clock), the wall clock on CUDA."""
    return time.perf_counter() if dev.type == "cuda" else time.process_time()


def timed(f, dev) -> float:
    """Seconds of one call of ``f`` by :func:`clock`, synchronised on CUDA."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock(dev)
    f()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return clock(dev) - t0


def make_step(args, variant):
    """(model, step()): one AdamW train step of ``variant`` on a fixed batch."""
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build(args, variant).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, C, S = args.batch, args.channels, args.image_size
    x = torch.randn(B, C, S, S, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    smd = variant.startswith("smd")
    z = torch.randn(B, args.latent, S, S, device=dev) if variant != "plain" and not smd else None

    def step():
        if smd:
            out = model(x, t, torch.randn_like(x))
        else:
            out = model(x, t, z) if z is not None else model(x, t)
        loss = out.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def interleaved(args, variants) -> dict:
    """Step times of every variant in ONE process, one step of each in turn (so a change in the
    machine's load hits all of them alike), in CPU time on the CPU: min and median ms."""
    dev = torch.device(args.device)
    steps = {v: make_step(args, v)[1] for v in variants}
    for _ in range(args.warmup):
        for f in steps.values():
            f()
    times = {v: [] for v in variants}
    for _ in range(args.interleaved_steps):
        for v, f in steps.items():
            times[v].append(1000 * timed(f, dev))
    return {v: {"min_ms": min(ts), "median_ms": sorted(ts)[len(ts) // 2], "n_steps": len(ts)}
            for v, ts in times.items()}


def one(args, variant) -> dict:
    """Time train steps of one variant in this process; report peak memory."""
    dev = torch.device(args.device)
    model, step = make_step(args, variant)
    smd = variant.startswith("smd")

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res = {"variant": variant, "step_seconds": times[len(times) // 2],
           "parameters": sum(p.numel() for p in model.parameters()),
           "peak_memory_mib": peak, "memory_kind": "cuda allocated" if dev.type == "cuda"
           else "process peak RSS"}
    if smd or variant == "plain":
        res.update(sampling(args, variant if smd else "ddpm"))
    return res


def _fwd_bwd_seconds(args, fn, inputs, params) -> float:
    """Median (CPU) seconds of forward + backward of ``fn(*inputs)`` (a tensor) into ``inputs`` that
    require grad and ``params``."""
    dev = torch.device(args.device)
    wrt = [i for i in inputs if isinstance(i, torch.Tensor) and i.requires_grad] + list(params)

    def once():
        out = fn(*inputs)
        return torch.autograd.grad(out.square().mean(), wrt, allow_unused=True)

    for _ in range(args.warmup):
        once()
    times = []
    for _ in range(args.steps):
        times.append(timed(once, dev))
    return sorted(times)[len(times) // 2]


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while running ``fn()``."""
    seen: dict[tuple, int] = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def parts(args) -> dict:
    """Forward + backward time of each piece of the SMD model alone, and saved-activation bytes."""
    torch.manual_seed(0)
    dev = torch.device(args.device)
    B, C, S, Z = args.batch, args.channels, args.image_size, args.latent
    sep, shr = build(args, "smd").to(dev), build(args, "smd_shared").to(dev)
    plain = build(args, "plain").to(dev)
    x = torch.randn(B, C, S, S, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    eta = torch.randn_like(x)
    z = torch.randn(B, Z, S, S, device=dev, requires_grad=True)
    h = torch.randn(B, args.base, S, S, device=dev, requires_grad=True)
    cond = sep.net.cond_in
    out = {}
    out["unet_plain_ms"] = 1000 * _fwd_bwd_seconds(args, plain, (x, t), plain.parameters())
    out["conditioned_unet_z_given_ms"] = 1000 * _fwd_bwd_seconds(
        args, sep.net, (x, t, z), sep.net.parameters())
    out["cond_module_ms"] = 1000 * _fwd_bwd_seconds(args, cond, (h, z), cond.parameters())
    out["cond_z_to_uc_projection_ms"] = 1000 * _fwd_bwd_seconds(
        args, lambda zz: cond.hyper(zz.movedim(1, -1)), (z,), cond.hyper.parameters())
    out["cond_rest_ms"] = out["cond_module_ms"] - out["cond_z_to_uc_projection_ms"]
    out["generator_separate_ms"] = 1000 * _fwd_bwd_seconds(
        args, sep.gen, (x, eta, t), sep.gen.parameters())
    out["generator_shared_ms"] = 1000 * _fwd_bwd_seconds(
        args, shr.gen, (x, eta, t), list(shr.gen.parameters()))
    shr.net._stem_cache = None
    mib = 2 ** -20
    out["saved_for_backward_mib"] = {
        "plain": mib * _saved_bytes(lambda: plain(x, t)),
        "hyper_z_given": mib * _saved_bytes(lambda: sep.net(x, t, z)),
        "smd": mib * _saved_bytes(lambda: sep(x, t, eta)),
        "smd_shared": mib * _saved_bytes(lambda: shr(x, t, eta))}
    L, d = args.layers, args.inner
    out["latent_field_mib"] = {   # per train step, float32, forward only
        "z": mib * 4 * B * Z * S * S,
        "u_c_per_conditioning_module": mib * 4 * B * S * S * L * (d + 1),
        "u_c_both_modules": mib * 8 * B * S * S * L * (d + 1)}
    return out


def sampling(args, kind) -> dict:
    from smdlab.images.sampling import generate

    model = build(args, kind).to(args.device).eval()
    chain = model.schedule.respace(args.sample_steps)
    generate(model, 4, chain, batch_size=4, device=args.device)  # warm-up
    t0 = time.perf_counter()
    generate(model, args.sample_n, chain, batch_size=args.sample_n, device=args.device)
    secs = time.perf_counter() - t0
    return {"sampling_images_per_second": args.sample_n / secs,
            "sampling_steps": args.sample_steps}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--mults", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 2))
    p.add_argument("--attn", type=lambda s: tuple(int(v) for v in s.split(",") if v),
                   default=(8,))
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--latent", type=int, default=100)
    p.add_argument("--inner", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--interleaved-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip", type=lambda s: tuple(v for v in s.split(",") if v), default=(),
                   help="variants not to run (e.g. hyper_naive, which is ~30x slower on the CPU)")
    p.add_argument("--one", choices=(*VARIANTS, "parts", "interleaved"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_unet.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.one:
        if args.one == "interleaved":
            print(json.dumps(interleaved(args, [v for v in VARIANTS if v not in args.skip])))
        else:
            print(json.dumps(parts(args) if args.one == "parts" else one(args, args.one)))
        return
    argv = [a for a in sys.argv[1:]]
    best: dict[str, dict] = {}
    variants = [v for v in VARIANTS if v not in args.skip]
    for r in range(args.rounds):
        for v in variants:
            out = subprocess.run([sys.executable, __file__, *argv, "--one", v], cwd=ROOT,
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}: {v:12s} {1000 * res['step_seconds']:8.1f} ms/step", flush=True)
            if v not in best or res["step_seconds"] < best[v]["step_seconds"]:
                best[v] = res
    def child(what):
        out = subprocess.run([sys.executable, __file__, *argv, "--one", what], cwd=ROOT,
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        return json.loads(out.stdout.strip().splitlines()[-1])

    inter = child("interleaved")
    for r in inter.values():
        r["min_ratio_to_plain"] = r["min_ms"] / inter["plain"]["min_ms"]
        r["median_ratio_to_plain"] = r["median_ms"] / inter["plain"]["median_ms"]
    breakdown = child("parts")
    base = best["plain"]
    print(f"\nU-Net {args.image_size}x{args.image_size}x{args.channels}, width {args.base}, "
          f"mults {args.mults}, attention {args.attn}, latent {args.latent}, inner {args.inner}, "
          f"batch {args.batch}, device {args.device}, 1 thread\n")
    print(f"{'variant':12s} {'params':>10s} {'ms/step':>9s} {'x plain':>8s} {'peak MiB':>9s} "
          f"{'x plain':>8s} {'img/s':>8s}")
    for v in variants:
        b = best[v]
        b["label"] = LABELS[v]
        b["time_ratio_to_plain"] = b["step_seconds"] / base["step_seconds"]
        b["memory_ratio_to_plain"] = b["peak_memory_mib"] / base["peak_memory_mib"]
        ips = b.get("sampling_images_per_second")
        print(f"{v:12s} {b['parameters']:10d} {1000 * b['step_seconds']:9.1f} "
              f"{b['time_ratio_to_plain']:8.2f} {b['peak_memory_mib']:9.0f} "
              f"{b['memory_ratio_to_plain']:8.2f} {'' if ips is None else f'{ips:8.1f}'}")
    naive_vs_fast = (best["hyper_naive"]["step_seconds"] / best["hyper"]["step_seconds"]
                     if "hyper_naive" in best else None)
    if naive_vs_fast is not None:
        print(f"\nnaive matrix hypernetwork / O(d) form: {naive_vs_fast:.2f}x step time")
    print(f"\ninterleaved in one process ({inter['plain']['n_steps']} steps each, one of each in "
          f"turn; {'wall' if args.device != 'cpu' else 'CPU'} time): ms/step min, median, x plain")
    for v, r in inter.items():
        print(f"  {v:12s} {r['min_ms']:8.1f} {r['median_ms']:8.1f}   x{r['min_ratio_to_plain']:.2f}"
              f" (min)  x{r['median_ratio_to_plain']:.2f} (median)   {LABELS[v]}")
    ms = {v: r["min_ms"] for v, r in inter.items()}
    decomposition = {}
    for v in ("smd", "smd_shared", "smd_cheap"):
        c = "film" if v == "smd_cheap" else "hyper"
        if v in ms and c in ms:
            decomposition[v] = {"total_over_plain_ms": ms[v] - ms["plain"],
                                "conditioning_ms": ms[c] - ms["plain"],
                                "generator_and_latent_ms": ms[v] - ms[c]}
            print(f"{v}: +{ms[v] - ms['plain']:.1f} ms over plain = conditioning ({c}) "
                  f"+{ms[c] - ms['plain']:.1f} ms + generator and latent "
                  f"{ms[v] - ms[c]:+.1f} ms")
    print("\nwhere the time goes (forward + backward of each piece alone, ms):")
    for k, v in breakdown.items():
        if k.endswith("_ms"):
            print(f"  {k:32s} {v:8.1f}")
    print("saved for backward (MiB):", {k: round(v, 1)
                                        for k, v in breakdown["saved_for_backward_mib"].items()})
    print("latent field (MiB, forward):", {k: round(v, 1)
                                           for k, v in breakdown["latent_field_mib"].items()})
    from smdlab.provenance import run_metadata, write_json

    cfg = {k: v for k, v in vars(args).items() if k not in ("out", "one")}
    write_json(args.out, {"benchmark": "bench_unet", **run_metadata(cfg), "results": best,
                          "naive_over_fast": naive_vs_fast, "breakdown": breakdown,
                          "decomposition_ms": decomposition,
                          "interleaved": inter,
                          "aim": "full SMD train step <= 1.3x the plain U-Net's"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
