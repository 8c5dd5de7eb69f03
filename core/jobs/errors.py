"""Why a job operation was refused: one class per kind, so callers catch a class instead of reading the
message. Every message says what went wrong and what to do instead; the UI and the CLI show it as is."""

from __future__ import annotations

from pathlib import Path


class JobError(RuntimeError):
    """A job operation that cannot be done; the message says why and what to do instead."""


class RunNotFound(JobError):
    def __init__(self, name: str, runs_dir: Path) -> None:
        super().__init__(f"no run named {name!r} in {runs_dir}; see `python -m core.jobs list`")
        self.name = name


class NameTaken(JobError):
    """A launch under the name of a run folder that already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a run named {name!r} already exists; pick another name, resume it "
            f"(python -m core.jobs resume {name}) or delete it first"
        )
        self.name = name


class DeviceBusy(JobError):
    """A launch or resume on a device another job is training on (one job per device at a time)."""

    def __init__(self, device: str, holder: str, holder_pid: int | None) -> None:
        hint = " or allow concurrent CPU jobs (--allow-concurrent; both get slower)" if device == "cpu" else ""
        super().__init__(
            f"run {holder!r} (pid {holder_pid}) is already training on {device}; one job per device at a time. "
            f"Stop it (python -m core.jobs stop {holder}), wait for it to finish{hint}."
        )
        self.device, self.holder = device, holder


class RunActive(JobError):
    """Resume or delete of a run that is still running or stopping (or whose run lock a trainer holds)."""

    def __init__(self, name: str, state: str, action: str, pid: int | None = None) -> None:
        by = f" (written by pid {pid})" if pid else ""
        super().__init__(f"run {name!r} is still {state}{by}; stop it before {action}")
        self.name, self.state, self.pid = name, state, pid


class NothingToResume(JobError):
    """Resume of a run that finished, or that has no checkpoint or no readable config."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class NotAJob(JobError):
    """Stop of a run trained by hand: there is no recorded process to signal."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"run {name!r} was started by hand, not as a job, so there is no process to stop here; "
            f"press Ctrl+C in its terminal (it saves a checkpoint) or send it SIGTERM"
        )
        self.name = name


class StartFailed(JobError):
    """The trainer process could not be started (e.g. the interpreter is gone)."""


class StopFailed(JobError):
    """Processes of the job survived SIGKILL."""
