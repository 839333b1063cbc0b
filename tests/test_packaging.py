"""The set-up a fresh machine relies on: one dependency list, two README commands, a CLI."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_is_pinned_below_the_cuda_build():
    deps = pyproject()["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    assert "<2.14" in torch_dep and ">=2.1" in torch_dep


def test_environment_yml_installs_the_package_with_every_extra():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert len(pip_section) == 1, "environment.yml must not keep a second dependency list"
    m = re.fullmatch(r"-e \.\[(.*)\]", pip_section[0].strip())
    assert m, pip_section
    assert set(m.group(1).split(",")) == set(pyproject()["project"]["optional-dependencies"])
    # no conda package other than python and pip: pyproject.toml is the one list
    assert all(d in ("python=3.11", "pip") for d in deps if isinstance(d, str))


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    make = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", readme, flags=re.M):
        assert re.search(rf"^{re.escape(target)}:", make, flags=re.M), f"README names make {target}"
    for nb in re.findall(r"notebooks/[\w.-]+\.ipynb", readme):
        assert (ROOT / nb).exists(), f"README names {nb}, which does not exist"
    for script in re.findall(r"(?:benchmarks|scripts)/[\w.-]+\.(?:py|sh)", readme):
        assert (ROOT / script).exists(), f"README names {script}, which does not exist"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "OMP_NUM_THREADS=1" in ci
    assert "make test" in readme and "make lab" in readme


def test_cli_help_lists_experiments_and_rejects_bad_flags():
    out = subprocess.run([sys.executable, "-m", "smdlab", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout and "--out" in out.stdout
    from smdlab.experiments import REGISTRY
    for name in REGISTRY:
        assert name in out.stdout
    bad = subprocess.run([sys.executable, "-m", "smdlab", "no-such-experiment"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "smdlab", "--threads", "0"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--threads" in bad.stderr


def test_ruff_config_present():
    assert pyproject()["tool"]["ruff"]["line-length"] == 110


@pytest.mark.parametrize("name", ["NoiseSchedule", "GaussianMixture", "marginal", "posterior"])
def test_public_api(name):
    import smdlab
    assert hasattr(smdlab, name)
