"""Who is writing a run folder right now, told by marks the trainer leaves in it.

    .lock     flock()ed by the trainer for its whole life (rank 0 only under DDP), holding its pid. A second
              trainer on the same run (a resume typed in a terminal while a job runs) is refused with
              RunLocked; `core.jobs` refuses resume and delete while it is held. The kernel drops the lock
              when the process ends, however it ends (SIGKILL included): a lock is never stale.
    .saving   {"pid", "start_time", "step", "since"} while a checkpoint is being written (rank 0 only).
              `python -m core.jobs stop` keeps waiting past its timeout while a live process is saving, so a
              stop never SIGKILLs a checkpoint half-written. A file rather than a status record in
              metrics.jsonl: it is gone the moment the save ends, a reader needs no scan of the log, and one
              left by a killed saver is recognised by its dead pid and removed.

A pid alone is never trusted: the process must also have the recorded start time (pids are reused).
No torch here: core.jobs uses this module and stays fast to import.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.config import ConfigError
from core.runs import write_text_atomic

LOCK_FILE = ".lock"
SAVING_FILE = ".saving"
# A reader probing the lock (run_lock_holder) holds it for an instant: a trainer starting right then retries
# for this long before taking the lock as held by another writer.
ACQUIRE_PATIENCE_S = 1.0


def process_alive(pid: int, start_time: float | None) -> bool:
    """True if pid is a live, non-zombie process started at start_time (when given): really that process."""
    try:
        p = psutil.Process(pid)
        if start_time is not None and abs(p.create_time() - start_time) > 0.05:
            return False  # the pid now belongs to another process
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(frozen=True)
class Save:
    """A checkpoint being written: by which process, of which step, since when (unix seconds)."""

    pid: int
    step: int | None
    since: float | None


@contextlib.contextmanager
def saving(run_dir: str | Path, step: int) -> Iterator[None]:
    """Mark run_dir as being saved (step `step`) by this process for the duration of the block."""
    path = Path(run_dir) / SAVING_FILE
    me = psutil.Process()
    marker = {"pid": me.pid, "start_time": me.create_time(), "step": step, "since": time.time()}
    write_text_atomic(path, json.dumps(marker) + "\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def current_save(run_dir: str | Path) -> Save | None:
    """The save in progress in run_dir, or None. A marker left by a process that is gone is removed."""
    path = Path(run_dir) / SAVING_FILE
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        marker = None
    pid = marker.get("pid") if isinstance(marker, dict) else None
    if isinstance(pid, int) and process_alive(pid, marker.get("start_time")):
        return Save(pid, marker.get("step"), marker.get("since"))
    with contextlib.suppress(OSError):  # stale: its saver was killed mid-save (the checkpoint is a temp folder)
        path.unlink()
    return None


class RunLocked(ConfigError):
    """A trainer refused because another process is writing the same run."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        name, who = run_dir.name, f"pid {pid}" if pid else "another process"
        super().__init__(
            f"run {name!r} is being written by {who}; stop it first (python -m core.jobs stop {name})", field="run_name"
        )
        self.run, self.pid = name, pid


class RunLock:
    """A held run lock: release() (or the end of a with block, or of the process) lets it go."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_run_lock(run_dir: str | Path) -> RunLock:
    """Take the lock of run_dir (made if missing) for this process, or raise RunLocked naming its holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + ACQUIRE_PATIENCE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunLocked(run_dir, _holder_pid(run_dir)) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)  # only now: before the lock was ours, the file held the current holder's pid
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(fd)


def run_lock_holder(run_dir: str | Path) -> int | None:
    """The pid of the process holding run_dir's lock (0 when it has not written it yet); None when free."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: probes never block each other
    except BlockingIOError:
        return _holder_pid(Path(run_dir)) or 0
    finally:
        os.close(fd)  # also drops the shared lock taken when the run is free
    return None


def _holder_pid(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((run_dir / LOCK_FILE).read_text().strip())
    return None
