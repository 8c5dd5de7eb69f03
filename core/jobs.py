"""Background training jobs: launch, status, stop, resume, reattach after a restart.

A job is the ordinary trainer CLI (`python -m core.train --config <run>/config.json`, or the same under
`python -m torch.distributed.run` for DDP) started in its own session with its output in train.log.
Everything needed to find it again lives in the run folder, so a new process (the UI after a restart,
a terminal) sees the same jobs:

    status.json   pid, process-group id, process start time, job id, state, device, nproc, launched_at

A pid alone is never trusted: the process must also have the recorded start time (pids are reused), and
a zombie counts as dead. Every process of a job carries PLAYGROUND_JOB_ID=<job id> in its environment;
that is how torchrun's workers (which run in their own sessions) are found and stopped even when the
torchrun agent itself was killed.

Resource policy: one job per device at a time. A second launch on a busy GPU is refused, naming the
running job; a second CPU job is refused unless allow_concurrent=True (both then share the cores).

CLI: python -m core.jobs [--runs-dir DIR] list | status RUN | stop RUN | resume RUN | logs RUN | launch | delete RUN
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from core.config import ConfigError, TrainConfig
from core.metrics import MetricsReader
from core.runs import (
    default_run_name,
    list_checkpoints,
    resolve_run_dir,
    unique_run_name,
    validate_run_name,
    write_text_atomic,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_ENV = "PLAYGROUND_JOB_ID"
STATES = ("running", "stopping", "done", "failed", "stopped", "unknown")
ACTIVE = ("running", "stopping")
# A run trained by hand (no status.json) whose last record says "running" but whose metrics have not
# moved for this long is taken to be dead: we have no pid to ask.
CLI_STALE_S = 600
START_GRACE_S = 60  # status.json written, pid not yet recorded: the launcher is still starting it
FAIL_TAIL_LINES = 20

# Popen objects of the jobs this process started, by pid: poll() reaps a finished child so that it is
# not mistaken for a live process (a zombie keeps its pid until its parent waits for it).
_CHILDREN: dict[int, subprocess.Popen] = {}


class JobError(RuntimeError):
    """A job operation that cannot be done; the message says why and what to do instead."""


@dataclass
class JobStatus:
    name: str
    state: str  # running | stopping | done | failed | stopped | unknown
    source: str = "job"  # job: launched here; cli: trained by hand; imported: weights without a training log
    run_dir: str = ""
    pid: int | None = None
    step: int | None = None
    total_steps: int | None = None
    tokens: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tok_per_s: float | None = None
    eta_s: float | None = None
    elapsed: float | None = None
    message: str = ""  # the failure reason, or a note on the state
    log_tail: str = ""  # last lines of train.log when the job failed
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    device: str | None = None
    nproc: int | None = None
    preset: str | None = None
    checkpoint: str | None = None  # newest complete checkpoint folder name
    command: str = ""  # the exact command line that was launched

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Summary:
    """What status needs from metrics.jsonl, kept up to date incrementally (long runs have big files)."""

    reader: MetricsReader
    ino: int | None = None  # identity of the file being read
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    status: dict[str, Any] | None = None

    def update(self) -> _Summary:
        for rec in self.reader.read_new():
            kind = rec.get("kind") if isinstance(rec, dict) else None
            if kind in ("train", "eval", "status"):
                setattr(self, kind, rec)
        return self


def resolve_device(device: str) -> str:
    """The device a config will train on ("auto" resolved the way the trainer resolves it)."""
    if device != "auto":
        return device
    from core.distributed import pick_device  # lazy: listing jobs should not pay for importing torch

    return pick_device("auto").type


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, n: int) -> str:
    """The last n lines of a text file, read from the end (logs can be large)."""
    if n <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= n:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
                block *= 2
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").replace("\r\n", "\n").splitlines()
    return "\n".join(lines[-n:])


def _proc_alive(pid: int | None, start_time: float | None) -> bool:
    """True if pid is a live, non-zombie process with the recorded start time (so: really our process)."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our own child: poll() also reaps it
        return False
    try:
        p = psutil.Process(pid)
        if start_time is not None and abs(p.create_time() - start_time) > 0.05:
            return False  # the pid now belongs to another process
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _job_processes(job_id: str | None) -> list[psutil.Process]:
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


@contextlib.contextmanager
def _locked(runs_dir: Path) -> Iterator[None]:
    """Serialize launches (two clicks, two UIs) so the one-job-per-device check cannot race."""
    with open(runs_dir / ".jobs.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Jobs:
    """The training jobs of one runs folder. Any number of instances, in any process, see the same jobs."""

    def __init__(self, runs_dir: str | Path = "checkpoints") -> None:
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._summaries: dict[str, _Summary] = {}
        self._readers: dict[str, MetricsReader] = {}
        self._lock = threading.Lock()  # the UI calls from several threads; readers keep a file offset

    # ----- paths and commands -------------------------------------------------------------------

    def run_dir(self, name: str) -> Path:
        """The folder of a run; raises ConfigError for names that are unsafe or point outside runs_dir."""
        return resolve_run_dir(self.runs_dir, name)

    def _existing(self, name: str) -> Path:
        path = self.run_dir(name)
        if not path.is_dir():
            raise JobError(f"no run named {name!r} in {self.runs_dir}; see `python -m core.jobs list`")
        return path

    def command_for(self, config: TrainConfig, resume: bool = False) -> list[str]:
        """The exact argv that launch (or resume) runs for this config; shown in the UI before launch."""
        run_dir = self.runs_dir / (config.run_name or default_run_name(config))
        if resume:
            target = ["--resume", str(run_dir)]
        else:
            target = ["--config", str(run_dir / "config.json")]
        if config.nproc > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config.nproc}"]
            return [sys.executable, *launcher, "-m", "core.train", *target]
        return [sys.executable, "-m", "core.train", *target]

    def command_line(self, config: TrainConfig, resume: bool = False) -> str:
        """command_for as one shell-quoted line, for display and copy-paste."""
        return shlex.join(self.command_for(config, resume))

    # ----- launch and resume --------------------------------------------------------------------

    def launch(
        self, config: TrainConfig | dict[str, Any], allow_concurrent: bool = False, auto_suffix: bool = False
    ) -> JobStatus:
        """Write the run folder and start the trainer in the background. Returns the job's status.

        Raises ConfigError for a bad config or run name, JobError when the name is taken (unless
        auto_suffix) or the device is busy (see the resource policy in the module docstring).
        """
        config = TrainConfig.from_dict(dict(config)) if isinstance(config, dict) else dataclasses.replace(config)
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
                raise JobError(
                    f"a run named {config.run_name!r} already exists; pick another name, resume it "
                    f"(python -m core.jobs resume {config.run_name}) or delete it first"
                )
            self._check_device_free(device, allow_concurrent)
            run_dir.mkdir()
            write_text_atomic(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
            return self._start(config, run_dir, device, resume=False)

    def resume(self, name: str, allow_concurrent: bool = False) -> JobStatus:
        """Relaunch a stopped or failed run from its latest checkpoint (the trainer's --resume)."""
        run_dir = self._existing(name)
        with _locked(self.runs_dir):
            st = self.status(name)
            if st.active:
                raise JobError(f"run {name!r} is still {st.state}; stop it before resuming")
            if st.state == "done":
                raise JobError(
                    f"run {name!r} already finished all {st.total_steps} steps; to train longer, launch a new "
                    f"run with init_from={run_dir}"
                )
            if not list_checkpoints(run_dir):
                raise JobError(f"run {name!r} has no checkpoint to resume from; delete it and launch it again")
            try:
                config = TrainConfig.from_json(run_dir / "config.json")
            except ConfigError as e:
                raise JobError(f"cannot resume {name!r}: {e}") from e
            config.run_name, config.runs_dir = name, str(self.runs_dir)
            device = resolve_device(config.device)
            self._check_device_free(device, allow_concurrent)
            return self._start(config, run_dir, device, resume=True)

    def _check_device_free(self, device: str, allow_concurrent: bool) -> None:
        for st in self.list_runs():
            if not st.active or st.device != device:
                continue
            if device == "cpu" and allow_concurrent:
                continue
            hint = " or allow concurrent CPU jobs (--allow-concurrent; both get slower)" if device == "cpu" else ""
            raise JobError(
                f"run {st.name!r} (pid {st.pid}) is already training on {device}; one job per device at a time. "
                f"Stop it (python -m core.jobs stop {st.name}), wait for it to finish{hint}."
            )

    def _start(self, config: TrainConfig, run_dir: Path, device: str, resume: bool) -> JobStatus:
        argv = self.command_for(config, resume=resume)
        job_id = uuid.uuid4().hex
        previous = _read_json(run_dir / "status.json") or {}
        record = {
            "job_id": job_id,
            "state": "running",
            "pid": None,
            "pgid": None,
            "start_time": None,
            "launched_at": time.time(),
            "device": device,
            "nproc": config.nproc,
            "argv": argv,
            "resumes": previous.get("resumes", -1) + 1 if resume else 0,
        }
        # status.json exists before the process does, so a concurrent list never sees a job-less run folder.
        write_text_atomic(run_dir / "status.json", json.dumps(record, indent=1))
        write_text_atomic(run_dir / "command.txt", shlex.join(argv) + "\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", JOB_ENV: job_id}
        with open(run_dir / "train.log", "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {'resume' if resume else 'launch'} {stamp}: {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() signals the whole tree, UI signals don't
                )
            except OSError as e:
                record.update(state="failed", message=f"could not start the trainer: {e}", ended_at=time.time())
                write_text_atomic(run_dir / "status.json", json.dumps(record, indent=1))
                raise JobError(f"could not start the trainer for {config.run_name!r}: {e}") from e
        _CHILDREN[proc.pid] = proc
        try:
            start_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # already gone: status() will read why from train.log
            start_time = None
        record.update(pid=proc.pid, pgid=proc.pid, start_time=start_time)
        write_text_atomic(run_dir / "status.json", json.dumps(record, indent=1))
        return self.status(config.run_name)

    # ----- status ---------------------------------------------------------------------------------

    def _summary(self, name: str, run_dir: Path) -> _Summary:
        path = run_dir / "metrics.jsonl"
        try:
            ino = path.stat().st_ino
        except OSError:
            ino = None
        with self._lock:
            s = self._summaries.get(name)
            if s is None or s.ino != ino:  # new, or the run was deleted and made again: start over
                s = self._summaries[name] = _Summary(MetricsReader(path), ino)
            return s.update()

    def status(self, name: str) -> JobStatus:
        """The state of a run, from its process (if it has one) and the trainer's own status records."""
        run_dir = self._existing(name)
        job = _read_json(run_dir / "status.json")
        summary = self._summary(name, run_dir)
        config = _read_json(run_dir / "config.json") or {}
        st = JobStatus(name=name, state="unknown", run_dir=str(run_dir), preset=config.get("preset"))
        ckpts = list_checkpoints(run_dir)
        st.checkpoint = ckpts[-1].name if ckpts else None
        if (run_dir / "command.txt").is_file():
            st.command = (run_dir / "command.txt").read_text(errors="replace").strip()
        self._fill_metrics(st, summary)
        last = summary.status
        if job is not None and not (last and job.get("ended_at") and last.get("time", 0) > job["ended_at"]):
            self._job_state(st, run_dir, job, last)
        else:  # trained by hand with the CLI (or resumed by hand after a job ended): metrics only
            self._cli_state(st, run_dir, last, config)
        if st.state == "failed" and not st.log_tail:
            st.log_tail = _tail(run_dir / "train.log", FAIL_TAIL_LINES)
            st.message = st.message or st.log_tail or "the trainer exited without a message and an empty train.log"
        if not st.active:
            st.eta_s = None
        return st

    @staticmethod
    def _fill_metrics(st: JobStatus, summary: _Summary) -> None:
        if summary.train:
            t = summary.train
            st.step, st.total_steps, st.tokens = t.get("step"), t.get("total_steps"), t.get("tokens")
            st.loss, st.lr, st.tok_per_s = t.get("loss"), t.get("lr"), t.get("tok_per_s")
            st.eta_s, st.elapsed = t.get("eta_s"), t.get("elapsed")
        if summary.eval:
            st.val_loss = summary.eval.get("val_loss")
        s = summary.status
        if s:  # a status record may be newer than the last train record (e.g. final step, stop)
            if s.get("step") is not None and (st.step is None or s["step"] >= st.step):
                st.step = s["step"]
            st.total_steps = s.get("total_steps") or st.total_steps

    def _job_state(self, st: JobStatus, run_dir: Path, job: dict[str, Any], last: dict[str, Any] | None) -> None:
        st.source = "job"
        st.pid, st.device, st.nproc = job.get("pid"), job.get("device"), job.get("nproc")
        st.started_at, st.ended_at, st.exit_code = job.get("launched_at"), job.get("ended_at"), job.get("exit_code")
        recorded = job.get("state")
        if recorded not in ACTIVE:  # final state already settled by an earlier status call
            st.state, st.message = recorded or "unknown", job.get("message", "")
            st.log_tail = job.get("log_tail", "")
            return
        if st.pid is None:  # the launcher is between writing status.json and starting the process
            if time.time() - (st.started_at or 0) < START_GRACE_S:
                st.state, st.message = "running", "starting"
                return
            self._settle(run_dir, job, st, "failed", "the launcher exited before the trainer was started")
            return
        if _proc_alive(st.pid, job.get("start_time")):
            st.state = recorded
            return
        orphans = _job_processes(job.get("job_id"))
        if orphans:  # e.g. torchrun's agent was killed but its workers (own sessions) still run
            st.state = recorded
            st.message = f"the launcher (pid {st.pid}) is gone; {len(orphans)} worker process(es) still running"
            return
        # Every process of the job has ended: the trainer's last status record since launch says how.
        child = _CHILDREN.pop(st.pid, None)
        if child is not None:  # our child, dead (maybe seen as a zombie a moment ago): reap it for its exit code
            with contextlib.suppress(subprocess.TimeoutExpired):
                st.exit_code = job["exit_code"] = child.wait(timeout=5)
        final = last if last and last.get("time", 0) >= (st.started_at or 0) else None
        state = final.get("state") if final else None
        if job.get("killed"):
            state = state if state in ("stopped", "failed") else "stopped"
            msg = (final or {}).get("message") or (
                f"did not stop within the timeout and was killed; progress after checkpoint {st.checkpoint} is lost"
            )
        elif state in ("done", "stopped", "failed"):
            msg = final.get("message", "")
        elif job.get("stop_requested_at"):  # stopped before the trainer could handle signals (e.g. at import)
            state = "stopped"
            msg = f"stopped before training got going; nothing new was saved (last checkpoint: {st.checkpoint})"
        else:
            state = "failed"
            code = f" (exit code {st.exit_code})" if st.exit_code is not None else ""
            msg = f"the trainer ended without a final status{code}: killed, or crashed (see the end of train.log)"
        self._settle(run_dir, job, st, state, msg)

    def _settle(self, run_dir: Path, job: dict[str, Any], st: JobStatus, state: str, message: str) -> None:
        """Record a final state in status.json so later calls need no process lookups."""
        st.state, st.message = state, message or ""
        st.ended_at = st.ended_at or time.time()
        if state == "failed":
            st.log_tail = _tail(run_dir / "train.log", FAIL_TAIL_LINES)
        job.update(state=state, message=st.message, ended_at=st.ended_at, log_tail=st.log_tail)
        with contextlib.suppress(OSError):  # a read-only runs folder still gets a correct answer
            write_text_atomic(run_dir / "status.json", json.dumps(job, indent=1))

    @staticmethod
    def _cli_state(st: JobStatus, run_dir: Path, last: dict[str, Any] | None, config: dict[str, Any]) -> None:
        st.source = "cli"
        st.device, st.nproc = config.get("device"), config.get("nproc")
        metrics = run_dir / "metrics.jsonl"
        if last is None:
            if list_checkpoints(run_dir) and not metrics.exists():
                st.source, st.state, st.message = "imported", "done", "model weights without a training log"
            else:
                st.message = "no training record yet"
            return
        st.state, st.message = last.get("state", "unknown"), last.get("message", "")
        if st.state not in STATES:
            st.state = "unknown"
        if st.active:
            idle = time.time() - metrics.stat().st_mtime
            if idle > CLI_STALE_S:
                st.state = "failed"
                st.message = (
                    f"no progress for {idle / 60:.0f} min and no final status; the trainer (started by hand, "
                    f"so there is no pid to check) was probably killed"
                )

    # ----- stop ----------------------------------------------------------------------------------

    def stop(self, name: str, timeout: float = 30, wait: bool = True) -> JobStatus:
        """Ask a job to stop (SIGTERM: the trainer finishes its step, saves a checkpoint and exits).

        After `timeout` seconds the whole job (process group and every process carrying the job id, so
        also torchrun's workers) gets SIGKILL. wait=False returns at once with state "stopping" and
        finishes in a background thread (for the UI). Stopping a job that has already ended is a no-op.
        """
        run_dir = self._existing(name)
        st = self.status(name)
        if not st.active:
            return st
        job = _read_json(run_dir / "status.json")
        if st.source != "job" or job is None:
            raise JobError(
                f"run {name!r} was started by hand, not as a job, so there is no process to stop here; "
                f"press Ctrl+C in its terminal (it saves a checkpoint) or send it SIGTERM"
            )
        job.update(state="stopping", stop_requested_at=time.time())
        write_text_atomic(run_dir / "status.json", json.dumps(job, indent=1))
        self._signal(job, signal.SIGTERM)
        if not wait:
            threading.Thread(target=self._finish_stop, args=(name, job, timeout), daemon=True).start()
            return self.status(name)
        return self._finish_stop(name, job, timeout)

    def _finish_stop(self, name: str, job: dict[str, Any], timeout: float) -> JobStatus:
        run_dir = self.run_dir(name)
        if not self._wait_gone(job, timeout):
            job = _read_json(run_dir / "status.json") or job
            job["killed"] = True
            write_text_atomic(run_dir / "status.json", json.dumps(job, indent=1))
            self._signal(job, signal.SIGKILL)
            if not self._wait_gone(job, 10):
                left = [p.pid for p in _job_processes(job.get("job_id"))]
                raise JobError(f"run {name!r}: processes {left or [job.get('pid')]} survived SIGKILL")
        return self.status(name)

    @staticmethod
    def _signal(job: dict[str, Any], sig: signal.Signals) -> None:
        # The group holds the trainer (or the torchrun agent, which forwards SIGTERM to its workers and
        # waits for them). torchrun's workers run in sessions of their own: they are signalled directly
        # only with SIGKILL, or when the agent is gone (a second SIGTERM would cut the agent's shutdown short).
        leader_alive = _proc_alive(job.get("pid"), job.get("start_time"))
        if leader_alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job["pgid"], sig)
        if sig == signal.SIGKILL or not leader_alive:
            for p in _job_processes(job.get("job_id")):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    p.send_signal(sig)

    @staticmethod
    def _wait_gone(job: dict[str, Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not _proc_alive(job.get("pid"), job.get("start_time")) and not _job_processes(job.get("job_id")):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    # ----- listing, deleting, reading ---------------------------------------------------------------

    def list_runs(self) -> list[JobStatus]:
        """Every run folder: jobs, runs trained by hand, imported models. Active first, then newest first."""
        runs = []
        for path in sorted(self.runs_dir.iterdir()):
            try:
                validate_run_name(path.name)
                if not path.is_dir() or not any(
                    (path / f).exists() for f in ("status.json", "config.json", "metrics.jsonl", "ckpt")
                ):
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
        if path.is_symlink():
            path.unlink()  # remove the link only, never what it points to
            return
        if not path.is_dir():
            raise JobError(f"no run named {name!r} in {self.runs_dir}")
        st = self.status(name)
        if st.active:
            raise JobError(f"run {name!r} is {st.state}; stop it before deleting it")
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
        return _tail(self._existing(name) / "train.log", n)


# ----- CLI ---------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def _print_table(runs: list[JobStatus]) -> None:
    rows = [("NAME", "STATE", "STEP", "LOSS", "VAL", "DEVICE", "STARTED")]
    for s in runs:
        step = f"{_fmt(s.step)}/{_fmt(s.total_steps)}" if s.step is not None else "-"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started_at)) if s.started_at else "-"
        dev = f"{s.device}x{s.nproc}" if s.device and (s.nproc or 1) > 1 else (s.device or "-")
        rows.append((s.name, s.state, step, _fmt(s.loss, ".4f"), _fmt(s.val_loss, ".4f"), dev, started))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_status(s: JobStatus) -> None:
    print(f"{s.name}: {s.state}" + (f" (pid {s.pid})" if s.active and s.pid else ""))
    if s.step is not None:
        line = f"  step {s.step}/{_fmt(s.total_steps)}  loss {_fmt(s.loss, '.4f')}  val {_fmt(s.val_loss, '.4f')}"
        if s.tok_per_s:
            line += f"  {s.tok_per_s:,.0f} tok/s"
        if s.eta_s is not None:
            line += f"  eta {s.eta_s / 60:.1f} min"
        print(line)
    if s.device:
        print(f"  device {s.device}" + (f" x{s.nproc}" if s.nproc and s.nproc > 1 else ""))
    if s.checkpoint:
        print(f"  checkpoint {s.checkpoint}")
    if s.message:
        print("  " + s.message.replace("\n", "\n  "))
    if s.log_tail and s.log_tail != s.message:
        print("  end of train.log:\n    " + s.log_tail.replace("\n", "\n    "))


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--max-steps 200, --compile/--no-compile, ...)."""
    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type)
        if "dict" in kind or f.name == "runs_dir":  # runs_dir: the top-level --runs-dir decides
            continue
        flag = "--" + f.name.replace("_", "-")
        if "bool" in kind:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            typ = int if "int" in kind else float if "float" in kind else str
            p.add_argument(flag, dest=f.name, type=typ, default=None, metavar=f.name.upper())


def _follow(jobs: Jobs, name: str) -> None:
    """Print train.log as it grows until the job ends (like tail -f, but stops with the job)."""
    path = jobs.run_dir(name) / "train.log"
    offset = path.stat().st_size if path.exists() else 0
    while True:
        active = jobs.status(name).active
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not active:
            return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.jobs", description="Manage background training jobs.")
    ap.add_argument("--runs-dir", default="checkpoints", help="the runs folder (default: checkpoints)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="all runs, active first")
    p.add_argument("--json", action="store_true")
    for cmd, text in (("status", "state, step, loss of one run"), ("delete", "delete a run folder")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("run")
        if cmd == "status":
            p.add_argument("--json", action="store_true")
    p = sub.add_parser("stop", help="stop a job (it saves a checkpoint first)")
    p.add_argument("run")
    p.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL (default 30)")
    p = sub.add_parser("resume", help="continue a stopped or failed run from its latest checkpoint")
    p.add_argument("run")
    p.add_argument("--allow-concurrent", action="store_true", help="allow a second job on the CPU")
    p = sub.add_parser("logs", help="the end of train.log")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=50, help="lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p = sub.add_parser("launch", help="start a training job in the background")
    p.add_argument("--config", help="a TrainConfig JSON file; flags override its fields")
    p.add_argument("--allow-concurrent", action="store_true", help="allow a second job on the CPU")
    p.add_argument("--auto-suffix", action="store_true", help="on a name clash, add -2, -3, ...")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    _add_config_flags(p)
    args = ap.parse_args(argv)
    try:
        jobs = Jobs(args.runs_dir)
        if args.cmd == "list":
            runs = jobs.list_runs()
            if args.json:
                print(json.dumps([s.to_dict() for s in runs], indent=1))
            elif runs:
                _print_table(runs)
            else:
                print(f"no runs in {jobs.runs_dir}")
        elif args.cmd == "status":
            s = jobs.status(args.run)
            print(json.dumps(s.to_dict(), indent=1)) if args.json else _print_status(s)
        elif args.cmd == "stop":
            before = jobs.status(args.run)
            if not before.active:
                print(f"{args.run} is not running (state {before.state})")
                return 0
            print(f"stopping {args.run} (waiting up to {args.timeout:g}s for its checkpoint)...", flush=True)
            _print_status(jobs.stop(args.run, timeout=args.timeout))
        elif args.cmd == "resume":
            s = jobs.resume(args.run, allow_concurrent=args.allow_concurrent)
            print(f"resumed {s.name} (pid {s.pid}); follow it with: python -m core.jobs logs {s.name} -f")
        elif args.cmd == "logs":
            print(jobs.log_tail(args.run, args.n))
            if args.follow:
                _follow(jobs, args.run)
        elif args.cmd == "delete":
            jobs.delete_run(args.run)
            print(f"deleted {args.run}")
        elif args.cmd == "launch":
            base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
            names = {f.name for f in dataclasses.fields(TrainConfig)}
            base.update({k: v for k, v in vars(args).items() if k in names and k != "runs_dir" and v is not None})
            config = TrainConfig.from_dict(base)
            if args.dry_run:
                print(jobs.command_line(config))
                return 0
            s = jobs.launch(config, allow_concurrent=args.allow_concurrent, auto_suffix=args.auto_suffix)
            print(f"launched {s.name} (pid {s.pid}): {s.command}")
            print(f"follow it with: python -m core.jobs logs {s.name} -f")
    except (ConfigError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
