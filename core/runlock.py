"""Who is writing a run folder right now, told by marks the trainer leaves in it.

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
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from core.runs import write_text_atomic

SAVING_FILE = ".saving"


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
