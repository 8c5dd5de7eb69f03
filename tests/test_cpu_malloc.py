import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cpu_malloc import TUNED_ENV

ROOT = Path(__file__).resolve().parent.parent
KEYS = sorted(TUNED_ENV)
SCRIPT = f"""
import os, sys
print(os.getpid(), *(os.environ.get(k) for k in {KEYS!r}), sys.argv[1:], flush=True)
from core.cpu_malloc import reexec_with_tuned_malloc
reexec_with_tuned_malloc()
print("went on", flush=True)
"""


def _run(tmp_path: Path, extra_env: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in TUNED_ENV} | extra_env | {"PYTHONPATH": str(ROOT)}
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.skipif(sys.platform != "linux", reason="the malloc tuning applies to glibc on Linux only")
def test_reexec_sets_the_thresholds_once_and_keeps_the_pid(tmp_path):
    before, after, went_on = _run(tmp_path, {})
    assert before.split()[1:3] == ["None", "None"]
    # exec: the same process (job tracking and torchrun are not confused), same arguments, tuned env
    assert after.split()[0] == before.split()[0]
    assert after.split()[1:3] == [TUNED_ENV[k] for k in KEYS]
    assert after.endswith("['--flag', 'x']") and went_on == "went on"


@pytest.mark.parametrize("env", [TUNED_ENV, {"PLAYGROUND_MALLOC_TUNING": "0"}], ids=["already-tuned", "opted-out"])
def test_no_reexec_when_tuned_or_opted_out(tmp_path, env):
    lines = _run(tmp_path, env)
    assert len(lines) == 2 and lines[1] == "went on"
