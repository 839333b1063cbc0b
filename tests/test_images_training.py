"""Image training: stateless per-step batches, exact resume, config mismatch, and a two-process
DistributedDataParallel step on the CPU (gloo)."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from smdlab.images.models import ModelSpec, build_model
from smdlab.images.train import ImageBatches, train_image_model
from smdlab.images.unet import UNetConfig
from smdlab.objectives import Objective
from smdlab.schedules import NoiseSchedule
from smdlab.training import CheckpointError, TrainConfig, checkpoint_paths

REPO = Path(__file__).resolve().parent.parent
UNET = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                  inner_dim=4)


def images(n=64, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_batches_depend_only_on_seed_rank_step():
    x = images()
    g = torch.Generator()
    a = ImageBatches(x, 8, seed=1, rank=0, flip=True)
    first = a(5, g)
    a(6, g)
    torch.testing.assert_close(a(5, torch.Generator()), first)   # no hidden state
    assert not torch.equal(ImageBatches(x, 8, seed=1, rank=1)(5, g), first)
    assert not torch.equal(a(6, g), first)


def _run(run_dir, steps, spec):
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(50)
    model = build_model(spec, UNET, schedule)
    obj = Objective(spec.objective, schedule.respace(5), n_samples=spec.n_samples)
    cfg = TrainConfig(steps=steps, lr=1e-3, checkpoint_every=2, ema_decay=0.9, seed=3)
    return train_image_model(model, obj, images(), cfg, batch_size=4, flip=True,
                             run_dir=run_dir, extra_config={"spec": spec.to_dict()})


@pytest.mark.parametrize("spec", [ModelSpec("ddpm"),
                                  ModelSpec("smd", "smd", "energy", 2, latent_dim=2)],
                         ids=["ddpm", "smd-energy"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, spec):
    full = _run(tmp_path / "full", 6, spec)
    _run(tmp_path / "part", 4, spec)                # "interrupted" after 4 steps
    resumed = _run(tmp_path / "part", 6, spec)      # same command, more steps: resumes
    assert resumed.result.resumed_from == 4 and resumed.result.step == 6
    for a, b in ((full.result.model, resumed.result.model), (full.result.ema, resumed.result.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert full.parameters > 0 and full.step_seconds > 0


def test_config_mismatch_on_resume_is_an_error(tmp_path):
    _run(tmp_path, 2, ModelSpec("ddpm"))
    with pytest.raises(CheckpointError, match="config differs"):
        _run(tmp_path, 4, ModelSpec("ddpm", parameterization="eps"))


WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from smdlab.images.distributed import init_distributed, shutdown
    from smdlab.images.models import ModelSpec, build_model
    from smdlab.images.train import train_image_model
    from smdlab.images.unet import UNetConfig
    from smdlab.objectives import Objective
    from smdlab.schedules import NoiseSchedule
    from smdlab.training import TrainConfig

    out = sys.argv[1]
    info = init_distributed("cpu")
    torch.manual_seed(100 + info.rank)   # different inits: DDP must broadcast rank 0's
    unet = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                      inner_dim=4)
    spec = ModelSpec("smd", "smd", "jensen", latent_dim=2)
    schedule = NoiseSchedule.linear(50)
    model = build_model(spec, unet, schedule)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = TrainConfig(steps=2, lr=1e-3, checkpoint_every=1, keep_checkpoints=5, seed=0)
    res = train_image_model(model, Objective("jensen", schedule), x, cfg, batch_size=4,
                            run_dir=out + "/run", info=info)
    grads = {n: p.grad.clone() for n, p in res.result.model.named_parameters()}
    params = {n: p.detach().clone() for n, p in res.result.model.named_parameters()}
    torch.save({"grads": grads, "params": params, "world": info.world_size},
               f"{out}/rank{info.rank}.pt")
    shutdown(info)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_step(tmp_path):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for name in r0["grads"]:
        # all-reduced gradients and the resulting weights are identical on both ranks
        torch.testing.assert_close(r0["grads"][name], r1["grads"][name], rtol=1e-6, atol=1e-8)
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # only rank 0 wrote: one checkpoint per saved step, one log
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [p.name for p in checkpoint_paths(tmp_path / "run")] == [
        "ckpt_00000001.pt", "ckpt_00000002.pt"]
    assert names == ["ckpt_00000001.pt", "ckpt_00000002.pt", "log.json"]


def test_a_resume_reports_the_original_step_time(tmp_path):
    """A rerun that only reloads finished weights must not report the reload's time per step."""
    from smdlab.images.experiment import _timing

    first = _run(tmp_path, 4, ModelSpec("ddpm"))
    measured, _, seconds = _timing(tmp_path, first, True)
    assert measured == first.step_seconds > 0 and seconds == first.result.seconds > 0
    again = _run(tmp_path, 4, ModelSpec("ddpm"))       # nothing left to train
    assert again.result.resumed_from == again.result.step == 4
    assert _timing(tmp_path, again, True)[0::2] == (measured, seconds)


def test_data_fingerprint_sees_pixels_not_just_shape():
    from smdlab.images.experiment import data_fingerprint

    a = images(seed=0)
    assert data_fingerprint(a) == data_fingerprint(a.clone())
    b = a.clone()
    b[3, 0, 2, 2] += 1e-3
    assert data_fingerprint(b) != data_fingerprint(a)
    assert data_fingerprint(a.double()) != data_fingerprint(a)
