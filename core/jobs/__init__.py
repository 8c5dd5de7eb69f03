"""Background training jobs: launch, status, stop, resume, reattach after a restart.

A job is the ordinary trainer CLI (`python -m core.train --config <run>/config.json`, or the same under
`python -m torch.distributed.run` for DDP) started in its own session with its output in train.log.
Everything needed to find it again lives in the run folder, so a new process (the UI after a restart,
a terminal) sees the same jobs:

    status.json   pid, process-group id, process start time, job id, state, device, nproc, launched_at

Stop: SIGTERM to the whole job; the trainer finishes its step, saves a checkpoint and exits. After the
timeout (STOP_TIMEOUT_S unless given) it gets SIGKILL, except while it is saving a checkpoint (the trainer's
.saving marker, core/runlock.py): a save in progress is waited for, up to SAVE_WAIT_CAP_S more.

One writer per run: delete takes the lock launch and resume take, and resume and delete are refused while
the run's job is active or a trainer (one started by hand too) holds the run lock (core/runlock.py).

Resource policy: one job per device at a time. A second launch on a busy GPU is refused, naming the
running job; a second CPU job is refused unless allow_concurrent=True (both then share the cores).

The package, one job per module:
    records.py    status.json, the end of train.log, the metrics summary, JobStatus
    processes.py  starting, finding (pid + start time, job id in the environment), signalling, reaping
    state.py      decide_state: the state of a run as a pure function of what was observed
    errors.py     JobError and one subclass per kind of refusal
    manager.py    Jobs: launch / resume / stop / status / list / delete / readers
    evaljob.py    evaluation jobs: core.eval on a run's checkpoint in the background, results in evals.jsonl
    cli.py        python -m core.jobs [--runs-dir DIR] list | status | stop | resume | logs | launch | delete
                  | eval | evals
"""

from core.jobs.cli import main
from core.jobs.errors import (
    DeviceBusy,
    JobError,
    NameTaken,
    NotAJob,
    NothingToResume,
    RunActive,
    RunNotFound,
    StartFailed,
    StopFailed,
)
from core.jobs.evaljob import EvalRefused, EvalStatus, checkpoint_scores, eval_status, launch_eval, read_evals
from core.jobs.manager import SAVE_WAIT_CAP_S, STOP_TIMEOUT_S, Jobs, resolve_device
from core.jobs.processes import JOB_ENV
from core.jobs.records import FAIL_TAIL_LINES, JobStatus
from core.jobs.state import ACTIVE, CLI_STALE_S, START_GRACE_S, STATES, Decision, decide_state

__all__ = [
    "ACTIVE",
    "CLI_STALE_S",
    "FAIL_TAIL_LINES",
    "JOB_ENV",
    "SAVE_WAIT_CAP_S",
    "START_GRACE_S",
    "STATES",
    "STOP_TIMEOUT_S",
    "Decision",
    "DeviceBusy",
    "EvalRefused",
    "EvalStatus",
    "JobError",
    "JobStatus",
    "Jobs",
    "NameTaken",
    "NotAJob",
    "NothingToResume",
    "RunActive",
    "RunNotFound",
    "StartFailed",
    "StopFailed",
    "checkpoint_scores",
    "decide_state",
    "eval_status",
    "launch_eval",
    "main",
    "read_evals",
    "resolve_device",
]
