import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cpu_malloc import TUNED_ENV

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform != "linux", reason="the malloc tuning applies to glibc on Linux only")
def test_reexec_sets_the_thresholds_once_and_keeps_the_pid(tmp_path):
    keys = sorted(TUNED_ENV)
    (tmp_path / "envdump.py").write_text(
        f"import os, sys\nprint(os.getpid(), *(os.environ.get(k) for k in {keys!r}), sys.argv[1:])\n"
    )
    script = (
        "import os; print(os.getpid(), flush=True)\n"
        "from core.cpu_malloc import reexec_with_tuned_malloc\n"
        "reexec_with_tuned_malloc('envdump')\n"
        "print('not re-executed')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in TUNED_ENV}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", script, "--flag", "x"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    pid, *values = second.split(" ", len(TUNED_ENV) + 1)
    assert pid == first  # exec: same process, so job tracking and torchrun are not confused
    assert values[: len(keys)] == [TUNED_ENV[k] for k in keys]
    assert "['--flag', 'x']" in second

    # Already tuned (the re-executed process) or opted out: nothing happens.
    for extra in (TUNED_ENV, {"PLAYGROUND_MALLOC_TUNING": "0"}):
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.splitlines()[-1] == "not re-executed", out.stderr
