"""The trainer's marks on its run folder: the saving marker that tells `stop` to wait, and the per-run lock that
keeps a second writer out. Real files, real subprocesses (one of them SIGKILLed)."""

import fcntl
import json
import os
import subprocess
import sys
import threading

import psutil
import pytest

from core.config import ConfigError
from core.runlock import LOCK_FILE, SAVING_FILE, RunLocked, current_save, hold_run_lock, run_lock_holder, saving
from tests.helpers import ROOT

SAVER = """
import sys, time
from core.runlock import saving
with saving(sys.argv[1], 5):
    print("saving", flush=True)
    time.sleep(60)
"""


def start(code: str, *args: str) -> subprocess.Popen:
    """A python process running code from the repo root; returns once it printed its first line."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline(), "the helper process printed nothing"
    return p


def test_saving_marks_the_save_while_it_lasts(tmp_path):
    assert current_save(tmp_path) is None
    with saving(tmp_path, 120):
        now = current_save(tmp_path)
        assert (now.pid, now.step) == (os.getpid(), 120)
        marker = json.loads((tmp_path / SAVING_FILE).read_text())
        assert (marker["pid"], marker["step"]) == (os.getpid(), 120)
        assert marker["start_time"] == pytest.approx(psutil.Process().create_time(), abs=0.05)
    assert current_save(tmp_path) is None and not (tmp_path / SAVING_FILE).exists()
    with pytest.raises(OSError, match="disk full"), saving(tmp_path, 7):
        raise OSError("disk full")
    assert not (tmp_path / SAVING_FILE).exists()  # a failed save is not a save in progress


def test_a_marker_left_by_a_killed_saver_is_ignored_and_removed(tmp_path):
    p = start(SAVER, str(tmp_path))
    try:
        assert (current_save(tmp_path).pid, current_save(tmp_path).step) == (p.pid, 5)
    finally:
        p.kill()
        p.wait()
    assert (tmp_path / SAVING_FILE).exists()  # SIGKILL: no chance to clean up
    assert current_save(tmp_path) is None
    assert not (tmp_path / SAVING_FILE).exists()


def test_a_marker_whose_pid_was_reused_or_that_is_garbage_does_not_count(tmp_path):
    me = psutil.Process()
    (tmp_path / SAVING_FILE).write_text(json.dumps({"pid": me.pid, "start_time": me.create_time() - 100, "step": 3}))
    assert current_save(tmp_path) is None  # the pid belongs to another process now
    for garbage in ("{not json", "[]", '{"pid": "x"}'):
        (tmp_path / SAVING_FILE).write_text(garbage)
        assert current_save(tmp_path) is None and not (tmp_path / SAVING_FILE).exists()


HOLDER = """
import sys, time
from core.runlock import hold_run_lock
lock = hold_run_lock(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "tiny"
    assert run_lock_holder(run) is None  # no folder yet
    p = start(HOLDER, str(run))
    try:
        assert run_lock_holder(run) == p.pid
        with pytest.raises(RunLocked) as e:
            hold_run_lock(run)
        assert (
            str(e.value) == f"run 'tiny' is being written by pid {p.pid}; stop it first (python -m core.jobs stop tiny)"
        )
        assert isinstance(e.value, ConfigError) and (e.value.run, e.value.pid, e.value.field) == (
            "tiny",
            p.pid,
            "run_name",
        )
    finally:
        p.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock with the process
        p.wait()
    assert run_lock_holder(run) is None
    with hold_run_lock(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert run_lock_holder(run) == os.getpid()
    assert run_lock_holder(run) is None
    lock = hold_run_lock(run)  # released above, so this process can take it again (main() run twice in tests)
    lock.release()
    lock.release()  # twice is harmless


def test_a_reader_probing_the_lock_does_not_refuse_a_starting_trainer(tmp_path):
    """run_lock_holder (the UI polling) holds the lock for an instant; a trainer starting right then waits it out."""
    with hold_run_lock(tmp_path):
        pass
    probe = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # a probe caught in the act, released 0.3 s later
    threading.Timer(0.3, os.close, (probe,)).start()
    with hold_run_lock(tmp_path):
        assert run_lock_holder(tmp_path) == os.getpid()
