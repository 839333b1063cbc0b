"""The generic training loop: bitwise resume, NaN guard, corrupt checkpoints, config checks, EMA."""

import json

import pytest
import torch
from torch import nn

from smdlab.training import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    checkpoint_paths,
    latest_checkpoint,
    load_checkpoint,
    train,
)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def _data(step, gen):
    x = torch.randn(32, 3, generator=gen)
    return x, 0.5 * x.sum(-1, keepdim=True)


def _loss(model, batch, gen):
    x, y = batch
    noise = 0.01 * torch.randn(y.shape, generator=gen)   # the loss draws from the generator too
    err = model(x) - y
    return ((err - noise) ** 2).mean(), {"abs": float(err.abs().mean().detach())}


class _Stop(Exception):
    pass


def _stop_at(k):
    def cb(step, model, ema):
        if step == k:
            raise _Stop
    return cb


def test_resume_is_bitwise_identical(tmp_path):
    cfg = TrainConfig(steps=23, lr=3e-3, checkpoint_every=5, log_every=3, seed=4, ema_decay=0.9,
                      warmup_steps=4)
    ref = train(_model(), _loss, _data, cfg, run_dir=tmp_path / "a")
    with pytest.raises(_Stop):
        train(_model(), _loss, _data, cfg, run_dir=tmp_path / "b", callback=_stop_at(13))
    assert latest_checkpoint(tmp_path / "b").name == "ckpt_00000010.pt"
    # resume with a differently initialised model: everything comes from the checkpoint
    res = train(_model(seed=99), _loss, _data, cfg, run_dir=tmp_path / "b")
    assert res.resumed_from == 10 and res.step == 23
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ref.ema.state_dict().values(), res.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert ref.log == res.log
    log = json.loads((tmp_path / "b" / "log.json").read_text())
    assert [e["step"] for e in log["log"]] == [3, 6, 9, 12, 15, 18, 21, 23]
    assert {"loss", "lr", "abs"} <= set(log["log"][0])
    assert len(checkpoint_paths(tmp_path / "b")) == cfg.keep_checkpoints
    # a finished run resumes to a no-op
    again = train(_model(), _loss, _data, cfg, run_dir=tmp_path / "b")
    assert again.step == 23 and again.resumed_from == 23


def test_training_reduces_loss_and_extends():
    cfg = TrainConfig(steps=150, lr=1e-2, seed=0, log_every=10)
    res = train(_model(), _loss, _data, cfg)
    assert res.log[-1]["loss"] < 0.5 * res.log[0]["loss"]


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    def loss(model, batch, gen):
        x, y = batch
        out = ((model(x) - y) ** 2).mean()
        return out * float("nan") if loss.calls == 8 else out

    def counting(model, batch, gen):
        loss.calls += 1
        return loss(model, batch, gen)
    loss.calls = 0
    cfg = TrainConfig(steps=20, checkpoint_every=5, seed=1)
    with pytest.raises(NonFiniteLossError, match=r"step 8: loss is nan.*ckpt_00000005\.pt"):
        train(_model(), counting, _data, cfg, run_dir=tmp_path)
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    assert ck["step"] == 5
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_nan_gradient_is_caught():
    def loss(model, batch, gen):
        x, y = batch
        return (model(x) * 0).sum() + (model[0].weight.sum() * 0 + float("inf")) * 0 + \
            torch.sqrt(torch.zeros(())) * model[0].weight.sum()   # finite loss, nan gradient
    with pytest.raises(NonFiniteLossError, match="gradient"):
        train(_model(), loss, _data, TrainConfig(steps=3, grad_clip=None))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = TrainConfig(steps=4, checkpoint_every=2)
    train(_model(), _loss, _data, cfg, run_dir=tmp_path)
    latest_checkpoint(tmp_path).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(_model(), _loss, _data, cfg, run_dir=tmp_path)


def test_config_mismatch_on_resume(tmp_path):
    train(_model(), _loss, _data, TrainConfig(steps=4), run_dir=tmp_path,
          extra_config={"width": 16})
    with pytest.raises(CheckpointError, match="lr"):
        train(_model(), _loss, _data, TrainConfig(steps=8, lr=5e-4), run_dir=tmp_path,
              extra_config={"width": 16})
    with pytest.raises(CheckpointError, match="extra"):
        train(_model(), _loss, _data, TrainConfig(steps=8), run_dir=tmp_path,
              extra_config={"width": 32})
    res = train(_model(), _loss, _data, TrainConfig(steps=8), run_dir=tmp_path,
                extra_config={"width": 16})   # more steps is allowed: training continues
    assert res.resumed_from == 4 and res.step == 8


def test_ema_with_zero_decay_is_the_model():
    res = train(_model(), _loss, _data, TrainConfig(steps=5, ema_decay=0.0))
    for a, b in zip(res.model.state_dict().values(), res.ema.state_dict().values()):
        assert torch.equal(a, b)
    res = train(_model(), _loss, _data, TrainConfig(steps=5, ema_decay=0.5))
    assert not torch.equal(res.model[0].weight, res.ema[0].weight)


def test_stateful_data_source_is_checkpointed(tmp_path):
    class Source:
        def __init__(self):
            self.cursor = 0

        def next_batch(self, step, gen):
            self.cursor += 1
            x = torch.full((4, 3), float(self.cursor)) / 10
            return x, x.sum(-1, keepdim=True)

        def state_dict(self):
            return {"cursor": self.cursor}

        def load_state_dict(self, s):
            self.cursor = s["cursor"]

    cfg = TrainConfig(steps=6, checkpoint_every=3)
    with pytest.raises(_Stop):
        train(_model(), _loss, Source(), cfg, run_dir=tmp_path, callback=_stop_at(4))
    src = Source()
    train(_model(), _loss, src, cfg, run_dir=tmp_path)
    assert src.cursor == 6


def test_bad_config_values():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
