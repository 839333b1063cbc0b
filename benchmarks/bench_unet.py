"""Cost of SMD on the image backbone: train step time and peak memory of the same U-Net
configuration plain, with the published hypernetwork conditioning computed in O(d), with FiLM,
with the naive matrix hypernetwork (as the authors' code builds it), and the full SMD model
(conditioned U-Net + latent generator); then sampling throughput (images/s) of DDPM and SMD.

Every configuration runs in its own child process (so its peak resident memory is its own), in
alternating rounds, and the best round counts.  Run:

    python benchmarks/bench_unet.py                     # CPU-sized default (16 x 16 x 3, width 32)
    python benchmarks/bench_unet.py --image-size 32 --base 128 --mults 1,2,2,2 --attn 16 \
        --batch 128 --device cuda                       # the published CIFAR-10 configuration

Prints a table with ratios to the plain U-Net and writes benchmarks/results/bench_unet.json.
Aim: SMD (O(d) form) at most 1.25x the plain U-Net's step time.
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

VARIANTS = ("plain", "hyper", "film", "hyper_naive", "smd")
ROOT = Path(__file__).resolve().parent.parent


def build(args, variant):
    from smdlab.images.models import ModelSpec, build_model
    from smdlab.images.unet import UNet, UNetConfig
    from smdlab.schedules import NoiseSchedule

    cfg = UNetConfig(in_channels=args.channels, image_size=args.image_size,
                     base_channels=args.base, channel_mults=args.mults,
                     attn_resolutions=args.attn, num_res_blocks=args.res_blocks,
                     inner_dim=args.inner, hyper_layers=2)
    if variant == "smd":
        return build_model(ModelSpec("smd", "smd", latent_dim=args.latent, conditioning="hyper"),
                           cfg, NoiseSchedule.linear(1000))
    if variant == "ddpm":
        return build_model(ModelSpec("ddpm"), cfg, NoiseSchedule.linear(1000))
    if variant == "plain":
        return UNet(cfg)
    return UNet(cfg, conditioning=variant, latent_dim=args.latent)


def one(args, variant) -> dict:
    """Time train steps of one variant in this process; report peak memory."""
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build(args, variant).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, C, S = args.batch, args.channels, args.image_size
    x = torch.randn(B, C, S, S, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    z = torch.randn(B, args.latent, S, S, device=dev) if variant not in ("plain", "smd") else None

    def step():
        if variant == "smd":
            out = model(x, t, torch.randn_like(x))
        else:
            out = model(x, t, z) if z is not None else model(x, t)
        loss = out.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
    if variant in ("smd", "plain"):
        res.update(sampling(args, "smd" if variant == "smd" else "ddpm"))
    return res


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
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_unet.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(one(args, args.one)))
        return
    argv = [a for a in sys.argv[1:]]
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for v in VARIANTS:
            out = subprocess.run([sys.executable, __file__, *argv, "--one", v], cwd=ROOT,
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}: {v:12s} {1000 * res['step_seconds']:8.1f} ms/step", flush=True)
            if v not in best or res["step_seconds"] < best[v]["step_seconds"]:
                best[v] = res
    base = best["plain"]
    print(f"\nU-Net {args.image_size}x{args.image_size}x{args.channels}, width {args.base}, "
          f"mults {args.mults}, attention {args.attn}, latent {args.latent}, inner {args.inner}, "
          f"batch {args.batch}, device {args.device}, 1 thread\n")
    print(f"{'variant':12s} {'params':>10s} {'ms/step':>9s} {'x plain':>8s} {'peak MiB':>9s} "
          f"{'x plain':>8s} {'img/s':>8s}")
    for v in VARIANTS:
        b = best[v]
        b["time_ratio_to_plain"] = b["step_seconds"] / base["step_seconds"]
        b["memory_ratio_to_plain"] = b["peak_memory_mib"] / base["peak_memory_mib"]
        ips = b.get("sampling_images_per_second")
        print(f"{v:12s} {b['parameters']:10d} {1000 * b['step_seconds']:9.1f} "
              f"{b['time_ratio_to_plain']:8.2f} {b['peak_memory_mib']:9.0f} "
              f"{b['memory_ratio_to_plain']:8.2f} {'' if ips is None else f'{ips:8.1f}'}")
    naive_vs_fast = best["hyper_naive"]["step_seconds"] / best["hyper"]["step_seconds"]
    print(f"\nnaive matrix hypernetwork / O(d) form: {naive_vs_fast:.2f}x step time")
    from smdlab.provenance import run_metadata, write_json

    cfg = {k: v for k, v in vars(args).items() if k not in ("out", "one")}
    write_json(args.out, {"benchmark": "bench_unet", **run_metadata(cfg), "results": best,
                          "naive_over_fast": naive_vs_fast,
                          "aim": "hyper (O(d)) <= 1.25x plain step time"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
