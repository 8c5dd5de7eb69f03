"""Issue 17 item 17: a job started by this process is reaped as soon as it ends (no <defunct> child while nobody
asks for its status), and still outlives this process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

from core.jobs import processes
from tests.helpers import ROOT, wait_for


def reaped(pid: int) -> bool:
    """True once pid is gone for good: a zombie (dead, not yet waited for) still has its process entry."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def test_an_ended_job_is_reaped_without_a_status_call(tmp_path):
    with open(tmp_path / "train.log", "wb") as log:
        pid, _ = processes.spawn([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, "job-reap", log)
    wait_for(lambda: reaped(pid), 30, f"job {pid} to be reaped", poll=0.2)
    assert processes.reap(pid) == 3  # its exit code is still there for the status
    assert not processes.is_alive(pid, None)


def test_a_job_outlives_the_process_that_started_it(tmp_path):
    starter = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from core.jobs import processes
        with open(Path({str(tmp_path)!r}) / "train.log", "wb") as log:
            pid, _ = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], Path("."), "job-o", log)
        print(pid)
        """
    )
    out = subprocess.run([sys.executable, "-c", starter], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # the starter exits at once: the waiting thread does not hold it
    job = psutil.Process(int(out.stdout))
    try:
        assert job.is_running() and job.status() != psutil.STATUS_ZOMBIE
    finally:
        job.kill()
