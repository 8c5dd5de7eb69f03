"""Which state a run is in, decided by one pure function of what was observed about it.

No files, no processes, no clock here: the manager gathers the facts (status.json, the trainer's last
status record, whether the recorded process still lives, ...) and `decide_state` turns them into a
state and a message, so every situation is one row of a table in tests/test_job_state.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATES = ("running", "stopping", "done", "failed", "stopped", "unknown")
ACTIVE = ("running", "stopping")
FINAL = ("done", "stopped", "failed")
# A run trained by hand (no status.json) whose last record says "running" but whose metrics have not
# moved for this long is taken to be dead: we have no pid to ask.
CLI_STALE_S = 600
START_GRACE_S = 60  # status.json written, pid not yet recorded: the launcher is still starting it


@dataclass(frozen=True)
class Decision:
    state: str
    message: str = ""
    source: str = "job"  # job: launched as a job; cli: trained by hand; imported: weights without a training log
    settle: bool = False  # a final state that status.json does not hold yet: record it, later calls skip the lookups
    adopt: bool = False  # the job's processes run but status.json has no pid: record theirs


def follows_record(record: dict[str, Any], last_status: dict[str, Any] | None) -> bool:
    """Whether the job record speaks for the run: not when it was trained by hand after the job ended."""
    ended_at = record.get("ended_at")
    return not (last_status and ended_at and last_status.get("time", 0) > ended_at)


def needs_processes(record: dict[str, Any] | None, last_status: dict[str, Any] | None, *, now: float) -> bool:
    """Whether deciding needs a look at the processes: a job recorded as active, with a pid or past the
    start grace (its launcher may have died after starting the trainer, before recording its pid)."""
    return (
        record is not None
        and follows_record(record, last_status)
        and record.get("state") in ACTIVE
        and (record.get("pid") is not None or not _starting(record, now))
    )


def _starting(record: dict[str, Any], now: float) -> bool:
    return now - (record.get("launched_at") or 0) < START_GRACE_S


def decide_state(
    record: dict[str, Any] | None,
    last_status: dict[str, Any] | None,
    *,
    now: float,
    alive: bool = False,
    orphans: int = 0,
    exit_code: int | None = None,
    checkpoint: str | None = None,
    metrics_mtime: float | None = None,
) -> Decision:
    """The state of a run.

    record: status.json (None for runs trained by hand or imported); last_status: the trainer's newest
    {"kind": "status"} record in metrics.jsonl; alive: the recorded pid is still our process; orphans: other
    live processes carrying the job id (torchrun workers whose agent died, or the trainer of a launcher that
    died before recording its pid); exit_code: the trainer's, when
    known; checkpoint: the newest complete checkpoint; metrics_mtime: when metrics.jsonl last changed (None:
    there is none); now: the current time.
    """
    if record is not None and follows_record(record, last_status):
        return _job_state(record, last_status, now, alive, orphans, exit_code, checkpoint)
    return _by_hand_state(last_status, now, checkpoint, metrics_mtime)


def _job_state(
    record: dict[str, Any],
    last_status: dict[str, Any] | None,
    now: float,
    alive: bool,
    orphans: int,
    exit_code: int | None,
    checkpoint: str | None,
) -> Decision:
    recorded = record.get("state")
    if recorded not in ACTIVE:  # final state already settled by an earlier call
        return Decision(recorded or "unknown", record.get("message") or "")
    pid = record.get("pid")
    if pid is None:  # the launcher is between writing status.json and recording the process it started
        if _starting(record, now):
            return Decision("running", "starting")
        if orphans:  # it died (or could not write) after starting the trainer, which still writes the run
            msg = f"the launcher did not record the trainer's pid; found {orphans} process(es) carrying the job id"
            return Decision(recorded, msg, adopt=True)
        return Decision("failed", "the launcher exited before the trainer was started", settle=True)
    if alive:
        return Decision(recorded)
    if orphans:  # e.g. torchrun's agent was killed but its workers (own sessions) still run
        return Decision(recorded, f"the launcher (pid {pid}) is gone; {orphans} worker process(es) still running")
    return _ended(record, last_status, exit_code, checkpoint)


def _ended(
    record: dict[str, Any], last_status: dict[str, Any] | None, exit_code: int | None, checkpoint: str | None
) -> Decision:
    """Every process of the job has ended: the trainer's last status record since launch says how."""
    launched = record.get("launched_at") or 0
    final = last_status if last_status and last_status.get("time", 0) >= launched else None
    state = final.get("state") if final else None
    said = (final or {}).get("message") or ""
    if record.get("killed"):
        state = state if state in ("stopped", "failed") else "stopped"
        msg = said or (
            f"did not stop within the timeout and was killed; progress after checkpoint {checkpoint} is lost"
        )
    elif state in FINAL:
        msg = said
    elif record.get("stop_requested_at"):  # stopped before the trainer could handle signals (e.g. at import)
        state = "stopped"
        msg = f"stopped before training got going; nothing new was saved (last checkpoint: {checkpoint})"
    else:
        state = "failed"
        code = f" (exit code {exit_code})" if exit_code is not None else ""
        msg = f"the trainer ended without a final status{code}: killed, or crashed (see the end of train.log)"
    return Decision(state, msg, settle=True)


def _by_hand_state(
    last_status: dict[str, Any] | None, now: float, checkpoint: str | None, metrics_mtime: float | None
) -> Decision:
    if last_status is None:
        if checkpoint is not None and metrics_mtime is None:
            return Decision("done", "model weights without a training log", source="imported")
        return Decision("unknown", "no training record yet", source="cli")
    state = last_status.get("state", "unknown")
    state = state if state in STATES else "unknown"
    idle = now - metrics_mtime if metrics_mtime is not None else 0.0
    if state in ACTIVE and idle > CLI_STALE_S:
        return Decision(
            "failed",
            f"no progress for {idle / 60:.0f} min and no final status; the trainer (started by hand, "
            f"so there is no pid to check) was probably killed",
            source="cli",
        )
    return Decision(state, last_status.get("message") or "", source="cli")
