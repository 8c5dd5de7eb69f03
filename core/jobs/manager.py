"""Jobs: launch, resume, stop, watch and delete the training jobs of one runs folder."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from core.config import ConfigError, TrainConfig
from core.jobs import processes
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
from core.jobs.records import (
    FAIL_TAIL_LINES,
    JobStatus,
    MetricsSummary,
    new_record,
    read_json,
    read_status,
    tail,
    write_status,
)
from core.jobs.state import Decision, decide_state, needs_processes
from core.metrics import MetricsReader
from core.runlock import current_save, run_lock_holder
from core.runs import (
    default_run_name,
    list_checkpoints,
    resolve_run_dir,
    unique_run_name,
    validate_run_name,
    write_text_atomic,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RUN_FILES = ("status.json", "config.json", "metrics.jsonl", "ckpt")  # a folder holding one of these is a run
NO_LOG = "the trainer exited without a message and an empty train.log"
STOP_TIMEOUT_S = 30.0  # stop: seconds from SIGTERM to SIGKILL (the UI's and the CLI's default)
SAVE_WAIT_CAP_S = 600.0  # past the timeout, stop waits this long at most for a checkpoint being saved
AFTER_SAVE_S = 15.0  # once that save is done, the trainer records its final status and exits


def resolve_device(device: str) -> str:
    """The device a config will train on ("auto" resolved the way the trainer resolves it)."""
    if device != "auto":
        return device
    from core.distributed import pick_device  # lazy: listing jobs should not pay for importing torch

    return pick_device("auto").type


@contextlib.contextmanager
def _locked(runs_dir: Path) -> Iterator[None]:
    """Serialize launches (two clicks, two UIs) so the one-job-per-device check cannot race."""
    with open(runs_dir / ".jobs.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _decide(
    run_dir: Path, record: dict[str, Any] | None, last: dict[str, Any] | None, checkpoint: str | None, now: float
) -> Decision:
    """Gather what decide_state needs, looking at processes only when the answer depends on them."""
    alive, found, exit_code = False, [], (record or {}).get("exit_code")
    if record is not None and needs_processes(record, last, now=now):
        alive = processes.is_alive(record.get("pid"), record.get("start_time"))
        found = [] if alive else processes.job_processes(record.get("job_id"))
        if not alive and not found:  # all gone: if it was our child, reap it for its exit code
            reaped = processes.reap(record.get("pid"))
            if reaped is not None:
                exit_code = record["exit_code"] = reaped
    try:
        metrics_mtime: float | None = (run_dir / "metrics.jsonl").stat().st_mtime
    except OSError:
        metrics_mtime = None
    decision = decide_state(
        record,
        last,
        now=now,
        alive=alive,
        orphans=len(found),
        exit_code=exit_code,
        checkpoint=checkpoint,
        metrics_mtime=metrics_mtime,
    )
    if decision.adopt and record is not None:
        _adopt(run_dir, record, found)
    return decision


def _adopt(run_dir: Path, record: dict[str, Any], found: list[psutil.Process]) -> None:
    """Record the process a launcher started but could not record: the root of the job's process tree."""
    pids = {p.pid for p in found}
    roots = []
    for p in found:
        with contextlib.suppress(psutil.Error):
            if p.ppid() not in pids:
                roots.append((p.create_time(), p.pid))
    if not roots:
        return
    start_time, pid = min(roots)  # the oldest root: the trainer, or torchrun's agent
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    record.update(pid=pid, pgid=pgid, start_time=start_time, adopted=True)
    with contextlib.suppress(OSError):  # a full disk: the answer is right, the next call adopts again
        write_status(run_dir, record)


def _wait_ended(run_dir: Path, record: dict[str, Any], timeout: float) -> bool:
    """Wait until the job has ended: `timeout` seconds, longer while its trainer is saving a checkpoint.

    False when processes of the job still run after that (the caller kills them).
    """
    if processes.wait_gone(record, timeout):
        return True
    cap, saved = time.monotonic() + SAVE_WAIT_CAP_S, False
    while current_save(run_dir) is not None:  # a marker of a dead saver is ignored (and removed)
        saved = True
        if time.monotonic() >= cap:
            return False
        if processes.wait_gone(record, min(1.0, cap - time.monotonic())):
            return True
    return saved and processes.wait_gone(record, AFTER_SAVE_S)


def after_failure(checkpoint: str | None) -> str:
    """What a failed run still offers: its latest checkpoint to resume from, or nothing to resume."""
    if checkpoint:
        return (
            f"Its latest checkpoint ({checkpoint}) is kept: resume continues from it with the same settings; to "
            "change them, start a new run from it (Train › Initialize from, or --init-from)."
        )
    return (
        "No checkpoint was saved, so there is nothing to resume: fix the cause and launch it again (under a new "
        "name, or delete this run first)."
    )


def _settle(run_dir: Path, record: dict[str, Any], st: JobStatus, now: float) -> None:
    """Record a final state in status.json so later calls need no process lookups."""
    st.ended_at = st.ended_at or now
    st.log_tail = tail(run_dir / "train.log", FAIL_TAIL_LINES) if st.state == "failed" else ""
    record.update(state=st.state, message=st.message, ended_at=st.ended_at, log_tail=st.log_tail)
    with contextlib.suppress(OSError):  # a read-only runs folder still gets a correct answer
        write_status(run_dir, record)


class Jobs:
    """The training jobs of one runs folder. Any number of instances, in any process, see the same jobs."""

    def __init__(self, runs_dir: str | Path = "checkpoints", clock: Callable[[], float] = time.time) -> None:
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.clock = clock  # unix seconds; tests move it to see how a job looks later
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._summaries: dict[str, MetricsSummary] = {}
        self._readers: dict[str, MetricsReader] = {}
        self._lock = threading.Lock()  # the UI calls from several threads; readers keep a file offset

    def run_dir(self, name: str) -> Path:
        """The folder of a run; raises ConfigError for names that are unsafe or point outside runs_dir."""
        return resolve_run_dir(self.runs_dir, name)

    def _existing(self, name: str) -> Path:
        path = self.run_dir(name)
        if not path.is_dir():
            raise RunNotFound(name, self.runs_dir)
        return path

    def command_for(self, config: TrainConfig, resume: bool = False) -> list[str]:
        """The exact argv that launch (or resume) runs for this config; shown in the UI before launch."""
        run_dir = self.runs_dir / (config.run_name or default_run_name(config))
        target = ["--resume", str(run_dir)] if resume else ["--config", str(run_dir / "config.json")]
        if config.nproc > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config.nproc}"]
            return [sys.executable, *launcher, "-m", "core.train", *target]
        return [sys.executable, "-m", "core.train", *target]

    def command_line(self, config: TrainConfig, resume: bool = False) -> str:
        """command_for as one shell-quoted line, for display and copy-paste."""
        return shlex.join(self.command_for(config, resume))

    def launch(
        self, config: TrainConfig | dict[str, Any], allow_concurrent: bool = False, auto_suffix: bool = False
    ) -> JobStatus:
        """Write the run folder and start the trainer in the background. Returns the job's status.

        Raises ConfigError for a bad config or run name, NameTaken when the name is taken (unless
        auto_suffix), DeviceBusy when the device is (see the resource policy in core/jobs/__init__.py).
        """
        config = TrainConfig.from_dict(dict(config)) if isinstance(config, dict) else dataclasses.replace(config)
        config = config.with_absolute_paths()  # the trainer runs in the repo root, not in the caller's folder
        auto_name = not config.run_name
        config.run_name = config.run_name or default_run_name(config)
        validate_run_name(config.run_name)
        config.validate()
        config.runs_dir = str(self.runs_dir)
        device = resolve_device(config.device)
        with _locked(self.runs_dir):
            if auto_name or auto_suffix:
                config.run_name = unique_run_name(self.runs_dir, config.run_name)
            run_dir = self.run_dir(config.run_name)
            if run_dir.exists() or run_dir.is_symlink():
                raise NameTaken(config.run_name)
            self._check_device_free(device, allow_concurrent)
            run_dir.mkdir()
            write_text_atomic(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
            return self._start(config, run_dir, device, resume=False)

    def resume(self, name: str, allow_concurrent: bool = False) -> JobStatus:
        """Relaunch a stopped or failed run from its latest checkpoint (the trainer's --resume)."""
        run_dir = self._existing(name)
        with _locked(self.runs_dir):
            st = self._check_not_written(name, run_dir, "resuming")
            if st.state == "done":
                raise NothingToResume(
                    name,
                    f"run {name!r} already finished all {st.total_steps} steps; to train longer, launch a new "
                    f"run with init_from={run_dir}",
                )
            if not list_checkpoints(run_dir):
                raise NothingToResume(
                    name, f"run {name!r} has no checkpoint to resume from; delete it and launch it again"
                )
            try:
                config = TrainConfig.from_json(run_dir / "config.json")
            except ConfigError as e:
                raise NothingToResume(name, f"cannot resume {name!r}: {e}") from e
            config.run_name, config.runs_dir = name, str(self.runs_dir)
            device = resolve_device(config.device)
            self._check_device_free(device, allow_concurrent)
            return self._start(config, run_dir, device, resume=True)

    def _check_not_written(self, name: str, run_dir: Path, action: str) -> JobStatus:
        """The run's status, if no process writes it: neither an active job nor a trainer holding the run lock
        (one started by hand, or any trainer whose job record says otherwise)."""
        st = self.status(name)
        if st.active:
            raise RunActive(name, st.state, action, st.pid)
        holder = run_lock_holder(run_dir)
        if holder is not None:
            raise RunActive(name, "running", action, holder)
        return st

    def _check_device_free(self, device: str, allow_concurrent: bool) -> None:
        for st in self.list_runs():
            if st.active and st.device == device and not (device == "cpu" and allow_concurrent):
                raise DeviceBusy(device, st.name, st.pid)

    def _start(self, config: TrainConfig, run_dir: Path, device: str, resume: bool) -> JobStatus:
        argv = self.command_for(config, resume=resume)
        resumes = (read_status(run_dir) or {}).get("resumes", -1) + 1 if resume else 0
        record = new_record(uuid.uuid4().hex, device, config.nproc, argv, resumes, self.clock())
        # status.json exists before the process does, so a concurrent list never sees a job-less run folder.
        write_status(run_dir, record)
        write_text_atomic(run_dir / "command.txt", shlex.join(argv) + "\n")
        with open(run_dir / "train.log", "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {'resume' if resume else 'launch'} {stamp}: {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                pid, start_time = processes.spawn(argv, REPO_ROOT, record["job_id"], log)
            except OSError as e:
                record.update(state="failed", message=f"could not start the trainer: {e}", ended_at=self.clock())
                write_status(run_dir, record)
                raise StartFailed(f"could not start the trainer for {config.run_name!r}: {e}") from e
        record.update(pid=pid, pgid=pid, start_time=start_time)
        write_status(run_dir, record)
        return self.status(config.run_name)

    def _summary(self, name: str, run_dir: Path) -> MetricsSummary:
        with self._lock:
            if name not in self._summaries:
                self._summaries[name] = MetricsSummary(MetricsReader(run_dir / "metrics.jsonl"))
            return self._summaries[name].update()

    def status(self, name: str) -> JobStatus:
        """The state of a run, from its process (if it has one) and the trainer's own status records."""
        run_dir = self._existing(name)
        record = read_status(run_dir)
        summary = self._summary(name, run_dir)
        config = read_json(run_dir / "config.json") or {}
        st = JobStatus(name=name, state="unknown", run_dir=str(run_dir), preset=config.get("preset"))
        ckpts = list_checkpoints(run_dir)
        st.checkpoint = ckpts[-1].name if ckpts else None
        if (run_dir / "command.txt").is_file():
            st.command = (run_dir / "command.txt").read_text(errors="replace").strip()
        summary.fill(st)
        now = self.clock()
        decision = _decide(run_dir, record, summary.status, st.checkpoint, now)
        st.state, st.message, st.source = decision.state, decision.message, decision.source
        if record is not None and decision.source == "job":
            st.pid, st.device, st.nproc = record.get("pid"), record.get("device"), record.get("nproc")
            st.started_at, st.ended_at = record.get("launched_at"), record.get("ended_at")
            st.exit_code, st.log_tail = record.get("exit_code"), record.get("log_tail") or ""
        else:
            st.device, st.nproc = config.get("device"), config.get("nproc")
        st.parallel = config.get("parallel", "ddp") if (st.nproc or 1) > 1 else None
        if decision.settle and record is not None:
            _settle(run_dir, record, st, now)
        if st.state == "failed":
            st.log_tail = st.log_tail or tail(run_dir / "train.log", FAIL_TAIL_LINES)
            st.message = f"{st.message or st.log_tail or NO_LOG}\n{after_failure(st.checkpoint)}"
        if not st.active:
            st.eta_s = None
        return st

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S, wait: bool = True) -> JobStatus:
        """Ask a job to stop (SIGTERM: the trainer finishes its step, saves a checkpoint and exits).

        After `timeout` seconds the whole job (process group and every process carrying the job id, so
        also torchrun's workers) gets SIGKILL, unless its trainer is saving a checkpoint right then: that
        save is waited for (up to SAVE_WAIT_CAP_S more), never cut in half. wait=False returns at once with
        state "stopping" and finishes in a background thread (for the UI). Stopping a job that has already
        ended is a no-op.
        """
        run_dir = self._existing(name)
        st = self.status(name)
        if not st.active:
            return st
        record = read_status(run_dir)
        if st.source != "job" or record is None:
            raise NotAJob(name)
        record.update(state="stopping", stop_requested_at=self.clock())
        write_status(run_dir, record)
        processes.signal_job(record, signal.SIGTERM)
        if not wait:
            threading.Thread(target=self._finish_stop, args=(name, record, timeout), daemon=True).start()
            return self.status(name)
        return self._finish_stop(name, record, timeout)

    def _finish_stop(self, name: str, record: dict[str, Any], timeout: float) -> JobStatus:
        run_dir = self.run_dir(name)
        if not _wait_ended(run_dir, record, timeout):
            record = read_status(run_dir) or record
            record["killed"] = True
            write_status(run_dir, record)
            processes.signal_job(record, signal.SIGKILL)
            if not processes.wait_gone(record, 10):
                left = [p.pid for p in processes.job_processes(record.get("job_id"))]
                raise StopFailed(f"run {name!r}: processes {left or [record.get('pid')]} survived SIGKILL")
        return self.status(name)

    def list_runs(self) -> list[JobStatus]:
        """Every run folder: jobs, runs trained by hand, imported models. Active first, then newest first."""
        runs = []
        for path in sorted(self.runs_dir.iterdir()):
            try:
                validate_run_name(path.name)
                if not path.is_dir() or not any((path / f).exists() for f in RUN_FILES):
                    continue
                st = self.status(path.name)
            except (ConfigError, JobError):
                continue  # not a run folder (hidden files, the lock, stray names)
            except Exception as e:  # a broken folder must not hide the others
                st = JobStatus(name=path.name, state="unknown", run_dir=str(path), message=f"unreadable: {e}")
            if st.started_at is None:
                with contextlib.suppress(OSError):
                    st.started_at = path.stat().st_mtime
            runs.append(st)
        runs.sort(key=lambda s: (not s.active, -(s.started_at or 0)))
        return runs

    def delete_run(self, name: str) -> None:
        """Delete a run folder. Only names inside the runs folder; never a run that is still active."""
        path = self.run_dir(name)  # refuses '..', separators, absolute paths, symlinks leading outside
        with _locked(self.runs_dir):  # a launch or resume of this name cannot interleave
            if path.is_symlink():
                path.unlink()  # remove the link only, never what it points to
                return
            self._check_not_written(name, path, "deleting it")  # RunNotFound when there is no such folder
            shutil.rmtree(path)
        with self._lock:
            self._summaries.pop(name, None)
            self._readers.pop(name, None)

    def reader(self, name: str) -> MetricsReader:
        """A fresh incremental reader of the run's metrics.jsonl (each caller keeps its own position)."""
        return MetricsReader(self._existing(name) / "metrics.jsonl")

    def read_new_metrics(self, name: str) -> list[dict[str, Any]]:
        """Metrics records appended since this instance's last call for this run."""
        with self._lock:
            if name not in self._readers:
                self._readers[name] = self.reader(name)
            return self._readers[name].read_new()

    def log_tail(self, name: str, n: int = 50) -> str:
        """The last n lines of the run's train.log."""
        return tail(self._existing(name) / "train.log", n)
