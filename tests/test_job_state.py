"""decide_state, one row per situation a run can be in: no processes, no files, no clock."""

import ast
from pathlib import Path

import pytest

from core.jobs.state import CLI_STALE_S, START_GRACE_S, decide_state, needs_processes

NOW = 1_000_000.0
LAUNCHED = NOW - 300


def job(state: str = "running", pid: int | None = 4242, **kw) -> dict:
    """A status.json record as the launcher writes it."""
    record = {"job_id": "ab" * 16, "state": state, "pid": pid, "pgid": pid, "start_time": LAUNCHED}
    return {**record, "launched_at": LAUNCHED, **kw}


def said(state: str, at: float = NOW - 10, **kw) -> dict:
    """The trainer's own {"kind": "status"} record in metrics.jsonl."""
    return {"kind": "status", "state": state, "time": at, **kw}


# id, record, last status record, observations, expected (state, message fragment, source, settle)
# fmt: off
ROWS = [
    # ----- jobs: the launcher wrote status.json
    ("starting: no pid yet, within the grace", job(pid=None, launched_at=NOW - START_GRACE_S + 5), None, {},
     ("running", "starting", "job", False)),
    ("launcher died before recording the pid", job(pid=None, launched_at=NOW - START_GRACE_S - 5), None, {},
     ("failed", "the launcher exited before the trainer was started", "job", True)),
    ("launcher died after starting the trainer, found by job id", job(pid=None, launched_at=NOW - START_GRACE_S - 5),
     None, {"orphans": 1}, ("running", "the launcher did not record the trainer's pid; found 1 process", "job", False)),
    ("running and alive", job(), said("running"), {"alive": True}, ("running", "", "job", False)),
    ("stopping and alive", job("stopping", stop_requested_at=NOW - 2), said("running"), {"alive": True},
     ("stopping", "", "job", False)),
    ("agent gone, torchrun workers left", job(), said("running"), {"orphans": 2},
     ("running", "the launcher (pid 4242) is gone; 2 worker process(es) still running", "job", False)),
    ("ended: the trainer said done", job(), said("done", message="finished 50 steps"), {"exit_code": 0},
     ("done", "finished 50 steps", "job", True)),
    ("ended: the trainer said failed", job(), said("failed", message="corpus not found: x.txt"), {},
     ("failed", "corpus not found: x.txt", "job", True)),
    ("ended: the trainer said stopped", job("stopping", stop_requested_at=NOW - 5), said("stopped"), {},
     ("stopped", "", "job", True)),
    ("ended without a final status (kill -9)", job(), said("running"), {"exit_code": -9},
     ("failed", "the trainer ended without a final status (exit code -9): killed, or crashed", "job", True)),
    ("pid reused by another process: ours is gone, exit code unknown", job(), None, {"alive": False},
     ("failed", "the trainer ended without a final status: killed", "job", True)),
    ("a final status from before this launch does not count", job(), said("done", at=LAUNCHED - 60), {},
     ("failed", "ended without a final status", "job", True)),
    ("killed after the stop timeout", job("stopping", killed=True), said("running"), {"checkpoint": "step-000100"},
     ("stopped", "was killed; progress after checkpoint step-000100 is lost", "job", True)),
    ("killed, but the trainer had said why it failed", job("stopping", killed=True),
     said("failed", message="loss is NaN"), {}, ("failed", "loss is NaN", "job", True)),
    ("stopped before the trainer handled signals", job("stopping", stop_requested_at=NOW - 1), None,
     {"checkpoint": "step-000010"},
     ("stopped", "stopped before training got going; nothing new was saved (last checkpoint: step-000010)", "job",
      True)),
    ("settled earlier: the record is the answer", job("failed", message="out of memory", ended_at=NOW - 50), None,
     {"alive": True}, ("failed", "out of memory", "job", False)),
    ("a record without a state", {"pid": 7, "launched_at": LAUNCHED}, None, {}, ("unknown", "", "job", False)),
    # ----- runs trained by hand (no status.json), imported weights
    ("imported weights: checkpoint, no metrics", None, None, {"checkpoint": "step-000000"},
     ("done", "model weights without a training log", "imported", False)),
    ("by hand, nothing recorded yet", None, None, {"metrics_mtime": NOW - 1},
     ("unknown", "no training record yet", "cli", False)),
    ("by hand, running, metrics fresh", None, said("running"), {"metrics_mtime": NOW - 5},
     ("running", "", "cli", False)),
    ("by hand, running, metrics stale", None, said("running"), {"metrics_mtime": NOW - CLI_STALE_S - 60},
     ("failed", "no progress for 11 min and no final status", "cli", False)),
    ("by hand, done", None, said("done", message="finished"), {"metrics_mtime": NOW - 9999},
     ("done", "finished", "cli", False)),
    ("by hand, a state this version does not know", None, said("paused"), {"metrics_mtime": NOW},
     ("unknown", "", "cli", False)),
    ("resumed by hand after the job ended", job("stopped", ended_at=NOW - 100), said("running", at=NOW - 3),
     {"metrics_mtime": NOW - 3}, ("running", "", "cli", False)),
    ("job ended after the last record by hand", job("stopped", ended_at=NOW - 100, message="stopped at 40"),
     said("stopped", at=NOW - 200), {}, ("stopped", "stopped at 40", "job", False)),
]
# fmt: on


@pytest.mark.parametrize(("record", "last", "seen", "expected"), [pytest.param(*r[1:], id=r[0]) for r in ROWS])
def test_decide_state(record, last, seen, expected):
    state, fragment, source, settle = expected
    d = decide_state(record, last, now=NOW, **seen)
    assert (d.state, d.source, d.settle) == (state, source, settle)
    assert fragment in d.message if fragment else d.message == ""


def test_an_untracked_trainer_is_adopted():
    """Only a trainer found past the grace: within it the launcher may still record the pid itself."""
    late = decide_state(job(pid=None, launched_at=NOW - START_GRACE_S - 5), None, now=NOW, orphans=2)
    assert (late.state, late.adopt) == ("running", True)
    early = decide_state(job(pid=None, launched_at=NOW - 5), None, now=NOW, orphans=1)
    assert (early.state, early.message, early.adopt) == ("running", "starting", False)
    for row in ROWS:
        assert decide_state(row[1], row[2], now=NOW, **row[3]).adopt == ("found 1 process" in row[4][1]), row[0]


def test_processes_are_looked_at_only_when_they_decide():
    assert needs_processes(job(), None, now=NOW)
    assert needs_processes(job("stopping"), said("running"), now=NOW)
    assert not needs_processes(job(pid=None, launched_at=NOW - 5), None, now=NOW)  # the launcher is starting it
    assert needs_processes(job(pid=None, launched_at=NOW - START_GRACE_S - 5), None, now=NOW)  # its trainer may run
    assert not needs_processes(job("done", ended_at=NOW - 5), None, now=NOW)  # settled
    assert not needs_processes(None, said("running"), now=NOW)  # by hand: no pid
    assert not needs_processes(job("running", ended_at=NOW - 100), said("running", at=NOW), now=NOW)  # by hand later


def test_state_module_stays_pure():
    """No files, processes or clock: it imports only what describes data."""
    tree = ast.parse((Path(__file__).parent.parent / "core" / "jobs" / "state.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "dataclasses", "typing"}, imported
