"""The README's "Score your own reverse kernel" example runs as written and says what is true."""

import contextlib
import io
import re
from pathlib import Path

import torch

from smdlab import BestGaussianKernel

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    parts = text.split(f"\n## {title}\n", 1)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return parts[1].split("\n## ", 1)[0]


def test_score_your_own_kernel_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", section("Score your own reverse kernel"), re.S)
    assert len(blocks) == 1
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), ns)
    lines = out.getvalue().strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["mine", "net"]
    for ln in lines:
        m, kl = re.search(r"M\(100 -> 0\) = (\S+) ", ln), re.search(r"\) = (\S+), sample", ln)
        assert float(m.group(1)) > 0 and float(kl.group(1)) > 0
    # The wrapped oracle network is the best beta-tilde Gaussian (the lab's DDPM floor), up to
    # float32: a network without parameters is fed float32 by GaussianDenoiser.
    best = BestGaussianKernel(ns["target"], ns["root"], "beta_tilde")
    x = torch.linspace(-3, 3, 31, dtype=torch.float64)[:, None]
    for t, s in [(1000, 900), (200, 100), (100, 0)]:
        a, b = ns["net"].distribution(x, t, s), best.distribution(x, t, s)
        torch.testing.assert_close(a.mean(), b.mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.variance, b.variance, rtol=1e-12, atol=0)


def test_readme_notebook_command_keeps_its_outputs():
    nb = section("The lab (`python -m smdlab`)")
    assert "jupyter execute --inplace" in nb or "jupyter execute --output" in nb
    assert "figures/notebooks" in nb
