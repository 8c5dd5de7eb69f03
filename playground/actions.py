"""Stop, Resume and Delete a run: the one implementation behind the buttons of Train, Monitor and Models.

Each action returns an Outcome (did it work, and one line saying what happened or what to do instead);
the tab decides how to show it (a Markdown line, a toast). Nothing here raises: a bad name, an active
run or a run that is gone is an Outcome with ok=False.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import ConfigError
from core.jobs import STOP_TIMEOUT_S, DeviceBusy, JobError, Jobs
from core.runs import CheckpointError, list_checkpoints
from playground.runs_view import folder_size, megabytes

PICK_A_RUN = "Pick a run first."
# How to run a second CPU job: from the Train tab (its checkbox), or from elsewhere (go there).
TICK_ALONGSIDE = "tick *Allow alongside another job*"
RESUME_ALONGSIDE = "resume it from Train › Manage a run with *Allow alongside another job* ticked"
# What an action can run into; each carries a message written for the user.
EXPECTED = (JobError, ConfigError, CheckpointError, OSError)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


MAX_STOP_TIMEOUT_S = 24 * 3600


def stop_run(jobs: Jobs, name: str | None, timeout_s: float | None = STOP_TIMEOUT_S) -> Outcome:
    """Ask the run to stop; returns at once (the trainer saves a checkpoint and exits on its own). If it has not
    exited `timeout_s` seconds later it is killed, unless a checkpoint is being saved then (that is waited for)."""
    if not name:
        return Outcome(False, PICK_A_RUN)
    if timeout_s is None or not 1 <= timeout_s <= MAX_STOP_TIMEOUT_S:
        return Outcome(False, f"Stop timeout must be between 1 and {MAX_STOP_TIMEOUT_S} seconds, got {timeout_s}.")
    try:
        st = jobs.stop(name, timeout=float(timeout_s), wait=False)
    except EXPECTED as e:  # unknown run, survivors, unsafe name: a message, never a trace
        return Outcome(False, f"Could not stop {name}: {e}")
    if not st.active:  # it had ended already: stop did nothing, say so
        return Outcome(False, f"{name} is already {st.state}: there is nothing to stop.")
    return Outcome(True, f"Stopping {name}: it saves a checkpoint and exits.")


def device_busy(e: DeviceBusy, allow: str) -> str:
    """A busy device in the UI's words: its own controls (`allow`: how to run alongside), not the CLI's flags."""
    text = f"run {e.holder!r} is already training on {e.device}; one job per device at a time. Stop it or wait for it"
    return f"{text}, or {allow} (both jobs get slower)." if e.device == "cpu" else f"{text}."


def resume_run(jobs: Jobs, name: str | None, allow_concurrent: bool = False, allow: str = RESUME_ALONGSIDE) -> Outcome:
    """Relaunch a stopped or failed run from its latest checkpoint (alongside another CPU job if allowed)."""
    if not name:
        return Outcome(False, PICK_A_RUN)
    try:
        jobs.resume(name, allow_concurrent=allow_concurrent)
    except DeviceBusy as e:
        return Outcome(False, f"Could not resume {name}: {device_busy(e, allow)}")
    except EXPECTED as e:  # still active, finished, no checkpoint: say which
        return Outcome(False, f"Could not resume {name}: {e}")
    return Outcome(True, f"Resumed {name} from its latest checkpoint.")


def confirm_delete(jobs: Jobs, name: str | None) -> Outcome:
    """The question to ask before deleting (ok=True), or why the run cannot be deleted now (ok=False)."""
    if not name:
        return Outcome(False, "Pick a run to delete.")
    try:
        st = jobs.status(name)
        if st.active:
            return Outcome(False, f"**{name}** is {st.state}; stop it first (Monitor tab).")
        path = jobs.run_dir(name)
    except EXPECTED as e:
        return Outcome(False, str(e))
    n = len(list_checkpoints(path))
    return Outcome(
        True,
        f"Delete run **{name}** with its {n} checkpoint{'s' if n != 1 else ''}, logs and metrics "
        f"({megabytes(folder_size(path))})? This cannot be undone.",
    )


def delete_run(jobs: Jobs, name: str | None) -> Outcome:
    try:
        jobs.delete_run(name or "")
    except EXPECTED as e:  # active run, unknown name, unsafe name: say so
        return Outcome(False, f"Not deleted: {e}")
    return Outcome(True, f"Deleted **{name}**.")
