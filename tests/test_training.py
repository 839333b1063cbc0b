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


# ---------------------------------------------------------------------------- checksums (issue 9)
def _flip(path, offset, bit=0):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _payload_span(path):
    """(start, end) of the checksummed payload (the inner torch.save bytes) inside the file."""
    import io

    raw = path.read_bytes()
    outer = torch.load(io.BytesIO(raw), weights_only=True)
    inner = outer["payload"].numpy().tobytes()
    start = raw.find(inner)
    assert start > 0
    return start, start + len(inner), inner


def test_bit_flips_in_a_checkpoint_are_detected(tmp_path):
    import io

    train(_model(), _loss, _data, TrainConfig(steps=6, checkpoint_every=3, seed=2), run_dir=tmp_path)
    path = latest_checkpoint(tmp_path)
    good = path.read_bytes()
    start, end, inner = _payload_span(path)
    # where the model's tensors are stored inside the payload: every byte of them must matter
    state = torch.load(io.BytesIO(inner), weights_only=True)
    w = state["model"]["0.weight"].numpy().tobytes()
    w_at = inner.find(w)
    assert w_at > 0
    offsets = [start, start + 100, w_at + start, w_at + start + len(w) // 2,
               w_at + start + len(w) - 1, (start + end) // 2, end - 1]
    for k, off in enumerate(offsets):
        path.write_bytes(good)
        _flip(path, off, bit=k % 8)
        with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="corrupt"):
            train(_model(), _loss, _data, TrainConfig(steps=9, checkpoint_every=3, seed=2),
                  run_dir=tmp_path)
    # a flip anywhere in the file: a clear error, or (zip padding, unused header fields) a state
    # identical to the stored one; never a silently different checkpoint
    path.write_bytes(good)
    ref = load_checkpoint(path)
    for off in range(0, len(good), max(1, len(good) // 60)):
        path.write_bytes(good)
        _flip(path, off, bit=off % 8)
        try:
            got = load_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "weights_only=False" not in str(e)
            continue
        for key in ("model", "ema"):
            for name, t in ref[key].items():
                assert torch.equal(t, got[key][name]), (off, key, name)
        assert got["step"] == ref["step"] and got["config"] == ref["config"]


def test_unverifiable_or_foreign_files_are_refused(tmp_path):
    legacy = tmp_path / "ckpt_00000001.pt"
    torch.save({"step": 1, "model": {}, "config": {}}, legacy)
    with pytest.raises(CheckpointError, match="without a checksum"):
        load_checkpoint(legacy)
    torch.save({"weights": torch.zeros(3)}, legacy)
    with pytest.raises(CheckpointError, match="not an smdlab training checkpoint"):
        load_checkpoint(legacy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_nan_guard_never_names_a_corrupt_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss(model, batch, gen):
        calls["n"] += 1
        x, y = batch
        out = ((model(x) - y) ** 2).mean()
        return out * float("nan") if calls["n"] == 12 else out

    def corrupt_latest(step, model, ema):
        if step == 11:   # the step-10 checkpoint is damaged on disk after it was written
            path = latest_checkpoint(tmp_path)
            assert path.name == "ckpt_00000010.pt"
            start, end, _ = _payload_span(path)
            _flip(path, (start + end) // 2)

    cfg = TrainConfig(steps=20, checkpoint_every=5, seed=1)
    with pytest.raises(NonFiniteLossError, match=r"step 12.*verified\) checkpoint is .*ckpt_00000005"):
        train(_model(), loss, _data, cfg, run_dir=tmp_path, callback=corrupt_latest)


def test_orphan_temporary_files_are_removed(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    orphans = [tmp_path / ".ckpt_00000004.pt.k2j4h5.tmp", tmp_path / ".log.json.x8d.tmp",
               tmp_path / ".snap_00000002.pt.a1b2.tmp"]
    for p in orphans:
        p.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    train(_model(), _loss, _data, TrainConfig(steps=2), run_dir=tmp_path)
    assert not any(p.exists() for p in orphans) and keep.exists()


def _derived(steps):
    # like the image experiment: log_every is derived from steps, so it changes when a run is
    # extended; it must not block the extension
    return TrainConfig(steps=steps, lr=3e-3, seed=7, warmup_steps=5, ema_decay=0.9,
                       log_every=max(1, steps // 10), checkpoint_every=0)


def test_extending_a_finished_run_equals_a_straight_run(tmp_path):
    straight = train(_model(), _loss, _data, _derived(40), run_dir=tmp_path / "a")
    first = train(_model(), _loss, _data, _derived(30), run_dir=tmp_path / "b")
    assert first.step == 30
    ext = train(_model(), _loss, _data, _derived(40), run_dir=tmp_path / "b")
    assert ext.resumed_from == 30 and ext.step == 40
    for key in ("model", "ema"):
        a, b = getattr(straight, key).state_dict(), getattr(ext, key).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    # going back below the checkpoint's step is refused, not a silent 40-step model
    with pytest.raises(CheckpointError, match="beyond steps=20"):
        train(_model(), _loss, _data, _derived(20), run_dir=tmp_path / "b")


def test_data_fingerprint_and_extra_settings_are_compared_on_resume(tmp_path):
    from smdlab.training import fingerprint

    x = torch.linspace(-1, 1, 48).reshape(3, 16)
    fp = fingerprint(x)
    assert fp == fingerprint(x.clone()) and fp.startswith("sha256:")
    y = x.clone()
    y[1, 3] += 1e-6
    assert fingerprint(y) != fp
    assert fingerprint(x.double()) != fp             # dtype is part of the data
    assert fingerprint(x.reshape(16, 3)) != fp       # and so is the shape
    assert fingerprint(x.numpy()) == fingerprint(x.numpy().copy())
    with pytest.raises(TypeError, match="fingerprint"):
        fingerprint([1, 2, 3])
    cfg = TrainConfig(steps=3)
    train(_model(), _loss, _data, cfg, run_dir=tmp_path, extra_config={"flip": False},
          data_fingerprint=fp)
    with pytest.raises(CheckpointError, match="training data differ"):
        train(_model(), _loss, _data, TrainConfig(steps=6), run_dir=tmp_path,
              extra_config={"flip": False}, data_fingerprint=fingerprint(y))
    with pytest.raises(CheckpointError, match="flip"):
        train(_model(), _loss, _data, TrainConfig(steps=6), run_dir=tmp_path,
              extra_config={"flip": True}, data_fingerprint=fp)
    with pytest.raises(CheckpointError, match="data_fingerprint"):   # fingerprint now missing
        train(_model(), _loss, _data, TrainConfig(steps=6), run_dir=tmp_path,
              extra_config={"flip": False})
    with pytest.raises(TypeError, match="data_fingerprint"):
        train(_model(), _loss, _data, cfg, data_fingerprint=123)
    res = train(_model(), _loss, _data, TrainConfig(steps=6), run_dir=tmp_path,
                extra_config={"flip": False}, data_fingerprint=fp)
    assert res.resumed_from == 3 and res.step == 6
    saved = load_checkpoint(latest_checkpoint(tmp_path))["config"]
    assert saved["data_fingerprint"] == fp and saved["extra"] == {"flip": False}


def test_refused_objects_never_suggest_unsafe_loading(tmp_path):
    import fractions

    path = tmp_path / "ckpt_00000001.pt"
    # an object torch's safe loader refuses (any class outside its allow-list)
    torch.save({"step": 1, "model": fractions.Fraction(1, 3), "config": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "never unpickles" in msg
    assert "weights_only" not in msg and "can still be loaded" not in msg


def _cosine(steps):
    return TrainConfig(steps=steps, lr=3e-3, checkpoint_every=5, seed=4, ema_decay=0.9,
                       warmup_steps=3, lr_schedule="cosine", lr_final=0.05, log_every=1,
                       fused=True)


def test_cosine_schedule_decays_to_its_final_lr_and_resumes_bit_identically_fused(tmp_path):
    ref = train(_model(), _loss, _data, _cosine(23), run_dir=tmp_path / "a")
    lrs = [e["lr"] for e in ref.log]
    assert lrs[:2] == pytest.approx([2e-3, 3e-3])    # the warm-up (lr of the next step)
    assert all(b <= a for a, b in zip(lrs[2:], lrs[3:]))                # then only down
    assert lrs[-1] == pytest.approx(0.05 * 3e-3)                        # to lr_final * lr
    with pytest.raises(_Stop):
        train(_model(), _loss, _data, _cosine(23), run_dir=tmp_path / "b", callback=_stop_at(13))
    res = train(_model(seed=99), _loss, _data, _cosine(23), run_dir=tmp_path / "b")
    assert res.resumed_from == 10 and res.step == 23 and res.log == ref.log
    for key in ("model", "ema"):
        a, b = getattr(ref, key).state_dict(), getattr(res, key).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)


def test_changing_steps_under_a_cosine_schedule_is_refused(tmp_path):
    train(_model(), _loss, _data, _cosine(20), run_dir=tmp_path)
    for steps in (30, 10):
        with pytest.raises(CheckpointError, match=r"steps: checkpoint has 20.*depends on the "
                                                  r"total number of steps"):
            train(_model(), _loss, _data, _cosine(steps), run_dir=tmp_path)
    # the same steps is a no-op resume; a constant-lr run still extends (test above)
    assert train(_model(), _loss, _data, _cosine(20), run_dir=tmp_path).resumed_from == 20


def test_constant_lr_is_unchanged_and_old_checkpoints_without_the_new_fields_resume(tmp_path):
    from smdlab.training import lr_factor

    cfg = TrainConfig(steps=10, warmup_steps=4)
    assert [lr_factor(k, cfg) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="lr_final"):
        TrainConfig(lr_schedule="cosine", lr_final=1.5)
    # a checkpoint written before lr_schedule/lr_final existed (constant lr) resumes
    from smdlab.checkpoints import save_checkpoint

    train(_model(), _loss, _data, _derived(10), run_dir=tmp_path)
    path = latest_checkpoint(tmp_path)
    ck = load_checkpoint(path)
    for k in ("lr_schedule", "lr_final", "fused"):
        del ck["config"][k]
    save_checkpoint(path, ck)
    assert train(_model(), _loss, _data, _derived(12), run_dir=tmp_path).resumed_from == 10


def test_flush_denormal_is_recorded_only_when_on_resumes_bitwise_and_is_switched_off(tmp_path):
    cfg = TrainConfig(steps=12, lr=3e-3, checkpoint_every=4, seed=1, flush_denormal=True)
    ref = train(_model(), _loss, _data, cfg, run_dir=tmp_path / "a")
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    assert tiny.item() != 0.0 and (tiny * 1.0).item() != 0.0     # the flush is off afterwards
    with pytest.raises(_Stop):
        train(_model(), _loss, _data, cfg, run_dir=tmp_path / "b", callback=_stop_at(6))
    assert (tiny * 1.0).item() != 0.0                             # ... also after an exception
    res = train(_model(seed=5), _loss, _data, cfg, run_dir=tmp_path / "b")
    assert res.resumed_from == 4
    for a, b in zip(ref.model.state_dict().values(), res.model.state_dict().values()):
        assert torch.equal(a, b)
    on = load_checkpoint(latest_checkpoint(tmp_path / "a"))["config"]
    off = train(_model(), _loss, _data, TrainConfig(steps=2), run_dir=tmp_path / "c")
    assert on["flush_denormal"] is True
    assert "flush_denormal" not in load_checkpoint(latest_checkpoint(tmp_path / "c"))["config"]
    assert off.step == 2


def test_the_callback_runs_with_subnormals_kept(tmp_path):
    seen = []

    def cb(step, model, ema):
        seen.append((torch.tensor([1e-310], dtype=torch.float64) * 1.0).item())

    train(_model(), _loss, _data, TrainConfig(steps=3, flush_denormal=True), callback=cb)
    assert seen and all(v != 0.0 for v in seen)


def test_fit_keeps_an_older_runs_flush_setting(tmp_path):
    from smdlab.fit import _flush_setting

    assert _flush_setting(None) is True and _flush_setting(tmp_path / "none") is True
    train(_model(), _loss, _data, TrainConfig(steps=2), run_dir=tmp_path / "old")
    assert _flush_setting(tmp_path / "old") is False          # begun without it: kept off
    train(_model(), _loss, _data, TrainConfig(steps=2, flush_denormal=True),
          run_dir=tmp_path / "new")
    assert _flush_setting(tmp_path / "new") is True
