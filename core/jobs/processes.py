"""The processes of a job: starting it, telling whether it still runs, signalling and reaping it.

A pid alone is never trusted: the process must also have the recorded start time (pids are reused), and
a zombie counts as dead. Every process of a job carries JOB_ENV=<job id> in its environment; that is how
torchrun's workers (which run in their own sessions) are found and stopped even when the torchrun agent
itself was killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

from core.runlock import process_alive

JOB_ENV = "PLAYGROUND_JOB_ID"

# Popen objects of the jobs this process started, by pid: poll() reaps a finished child so that it is
# not mistaken for a live process (a zombie keeps its pid until its parent waits for it).
_CHILDREN: dict[int, subprocess.Popen] = {}


def spawn(argv: list[str], cwd: Path, job_id: str, log: IO[bytes]) -> tuple[int, float | None]:
    """Start argv in a session of its own with its output in log; returns (pid, start time).

    The start time is None when the process is already gone (its exit shows in train.log).
    Raises OSError when it cannot be started.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", JOB_ENV: job_id}
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: stop signals the whole tree, signals to the UI don't reach it
    )
    _CHILDREN[proc.pid] = proc
    # Wait for it in the background: it is reaped the moment it ends, even if no one asks for its status again
    # (else it stays a <defunct> child of the app). A daemon thread: the app can still exit and leave the job.
    threading.Thread(target=proc.wait, name=f"reap-job-{proc.pid}", daemon=True).start()
    try:
        return proc.pid, psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        return proc.pid, None


def is_alive(pid: int | None, start_time: float | None) -> bool:
    """True if pid is a live, non-zombie process with the recorded start time (so: really our process)."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our own child: poll() also reaps it
        return False
    return process_alive(pid, start_time)


def reap(pid: int | None) -> int | None:
    """The exit code of a child this process started and that has ended (None for anyone else's)."""
    child = _CHILDREN.pop(pid, None) if pid else None
    if child is None:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):  # dead, maybe seen as a zombie a moment ago
        return child.wait(timeout=5)
    return None


def job_processes(job_id: str | None) -> list[psutil.Process]:
    """Live processes that carry this job's id in their environment (trainer, torchrun agent, workers)."""
    if not job_id:
        return []
    needle = f"{JOB_ENV}={job_id}".encode()
    me = os.getpid()
    found = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if _environ_has(p.pid, needle) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def _environ_has(pid: int, needle: bytes) -> bool:
    proc_env = Path(f"/proc/{pid}/environ")
    if proc_env.parent.parent.is_dir():  # Linux: read the raw block, much faster than psutil's parse
        try:
            return needle in proc_env.read_bytes().split(b"\0")
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            return False
    key, _, value = needle.decode().partition("=")
    return psutil.Process(pid).environ().get(key) == value


def signal_job(record: dict[str, Any], sig: signal.Signals) -> None:
    """Send sig to the job of a status.json record.

    The group holds the trainer (or the torchrun agent, which forwards SIGTERM to its workers and waits
    for them). torchrun's workers run in sessions of their own: they are signalled directly only with
    SIGKILL, or when the agent is gone (a second SIGTERM would cut the agent's shutdown short).
    """
    leader_alive = is_alive(record.get("pid"), record.get("start_time"))
    if leader_alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record["pgid"], sig)
    if sig == signal.SIGKILL or not leader_alive:
        for p in job_processes(record.get("job_id")):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(sig)


def wait_gone(record: dict[str, Any], timeout: float) -> bool:
    """Wait until no process of the job is left; False if some still run after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if not is_alive(record.get("pid"), record.get("start_time")) and not job_processes(record.get("job_id")):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
