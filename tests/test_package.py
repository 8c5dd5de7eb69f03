"""The installable package: the wheel builds, installs into a fresh venv, and its commands work from a folder outside
the repository -- so they find the packaged tokenizer and corpus, never the checkout's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT

COMMANDS = ("gpt2-playground", "gpt2-train", "gpt2-sample", "gpt2-eval", "gpt2-jobs")
NOT_SOURCE = (".git", ".venv", "checkpoints", "data", "test-output", "build", "*.egg-info", "__pycache__", ".*_cache")


def test_the_package_pins_what_requirements_txt_pins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()]
    assert project["dependencies"] == pins
    assert set(project["scripts"]) == set(COMMANDS)


def run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv decides the imports
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed. Its dependencies (torch, gradio, ...) come from this interpreter's
    site-packages, added after the venv's own through a .pth file, so nothing is downloaded and the package itself
    is always the installed wheel."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-w", tmp / "dist"], src)
    (wheel,) = (tmp / "dist").glob("gpt2_playground-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], tmp)  # with pip (ensurepip: offline)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp)
    return venv


@pytest.mark.slow
def test_the_installed_commands_run_from_outside_the_repo(venv: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    files = "import app, core.data, core.tokenizer as t; print(app.__file__, core.data.BUNDLED['shakespeare'])"
    files += "; print(t.RANKS_FILE)"

    where = run([venv / "bin" / "python", "-c", files], work).stdout.split()
    assert len(where) == 3 and all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where
    for command in COMMANDS:
        out = run([venv / "bin" / command, "--help"], work)
        assert "examples:" in out.stdout, command

    train = [venv / "bin" / "gpt2-train", "--preset", "micro", "--max-steps", "2", "--batch-size", "4"]
    out = run([*train, "--eval-interval", "0", "--run-name", "pkg", "--device", "cpu"], work)
    assert "done: 2 steps" in out.stdout
    assert (work / "checkpoints" / "pkg" / "ckpt" / "step-000002").is_dir()
    assert any((work / "data" / "cache").iterdir())  # the packaged corpus, tokenized into the working folder
    sample = [venv / "bin" / "gpt2-sample", "--checkpoint", "pkg", "--prompt", "ROMEO:", "--max-new-tokens", "4"]
    out = run(sample, work)
    assert out.stdout.startswith("ROMEO:")
    assert "pkg" in run([venv / "bin" / "gpt2-jobs", "list"], work).stdout
