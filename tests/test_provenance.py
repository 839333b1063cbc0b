"""Atomic writes: the file mode follows the umask, interrupted writes leave nothing behind."""

import os
import stat

import pytest

from smdlab.provenance import atomic_write_bytes, current_umask, write_json


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_written_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        a = atomic_write_bytes(tmp_path / "a.bin", b"x")
        b = write_json(tmp_path / "sub" / "b.json", {"k": 1})
        plain = tmp_path / "plain"
        with open(plain, "w") as f:   # what an ordinary open() gives: the reference
            f.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~mask
    for p in (a, b):
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_interrupted_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")   # fails inside the write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_smoke_figures_are_stamped(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smdlab.provenance import SMOKE_ENV, save_figure

    def texts(smoke, env):
        if env:
            monkeypatch.setenv(SMOKE_ENV, "1")
        else:
            monkeypatch.delenv(SMOKE_ENV, raising=False)
        fig = plt.figure()
        save_figure(fig, tmp_path / "f.png", smoke=smoke)
        out = [t.get_text() for t in fig.texts]
        plt.close(fig)
        return out

    assert texts(None, False) == [] and texts(False, True) == []
    assert any("SMOKE RUN" in t for t in texts(None, True))
    assert any("SMOKE RUN" in t for t in texts(True, False))
