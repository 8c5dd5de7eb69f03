"""Evaluation jobs: `python -m core.eval ... --json` on a run's checkpoint, in the background like training.

    python -m core.jobs eval RUN --task hellaswag [--limit N] [--file HELLASWAG.jsonl] [--wait]
    python -m core.jobs eval RUN --task perplexity --data FILE [--wait]
    python -m core.jobs evals RUN                     # the evaluation job's state and every result

The job is `python -m core.jobs.eval_worker RUN_DIR`, started with processes.spawn (its own session, output in
the run's eval.log, the job id in its environment). It runs the core.eval command recorded in eval.json and
appends the result to the run's evals.jsonl as one record:

    {"kind": "eval", "time", "task", <core.eval's result: n, acc, acc_norm | tokens, loss, perplexity>,
     "checkpoint", "step", "limit" (hellaswag), "data" (perplexity)}

eval.json is the job (job_id, pid, start_time, state running/done/failed, message, task, checkpoint, argv,
launched_at, ended_at). One evaluation per run at a time; it shares the device with whatever else runs there.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs import processes
from core.jobs.errors import JobError, RunNotFound
from core.jobs.manager import REPO_ROOT, _locked
from core.jobs.records import read_json, tail
from core.metrics import MetricsWriter, read_all
from core.runs import checkpoint_step, list_checkpoints, resolve_run_dir, write_text_atomic

EVAL_FILE = "eval.json"
EVALS_FILE = "evals.jsonl"
EVAL_LOG = "eval.log"
TASKS = ("hellaswag", "perplexity")
START_GRACE_S = 30.0  # eval.json written, pid not recorded yet


class EvalRefused(JobError):
    """An evaluation that cannot start (bad task or file, no checkpoint, one already running)."""


@dataclass
class EvalStatus:
    run: str
    state: str  # none (never evaluated) | running | done | failed
    task: str | None = None
    checkpoint: str | None = None  # the checkpoint folder evaluated, e.g. step-000500
    message: str = ""  # why it failed
    result: dict[str, Any] | None = None  # the evals.jsonl record of the newest evaluation, once done
    pid: int | None = None
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _run_dir(runs_dir: str | Path, run: str) -> Path:
    path = resolve_run_dir(Path(runs_dir).expanduser().resolve(), run)
    if not path.is_dir():
        raise RunNotFound(run, Path(runs_dir))
    return path


def _checkpoint(run_dir: Path, run: str, name: str | None) -> Path:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise EvalRefused(f"run {run!r} has no checkpoint to evaluate yet; train it for a checkpoint interval first")
    if name is None:
        return ckpts[-1]
    found = [c for c in ckpts if c.name == name]
    if not found:
        raise EvalRefused(f"run {run!r} has no checkpoint {name!r}; it has {', '.join(c.name for c in ckpts)}")
    return found[0]


def _file(path: str | Path, what: str, flag: str) -> Path:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise EvalRefused(f"{what} not found: {p}; pass {flag} with an existing file")
    return p


def eval_command(
    checkpoint: Path,
    task: str,
    limit: int | None = None,
    data: str | Path | None = None,
    file: str | Path | None = None,
    device: str = "auto",
) -> list[str]:
    """The core.eval argv an evaluation job runs; EvalRefused for settings that cannot work."""
    if task not in TASKS:
        raise EvalRefused(f"unknown task {task!r}; choose hellaswag or perplexity")
    argv = [sys.executable, "-m", "core.eval", task, "--checkpoint", str(checkpoint), "--json", "--device", device]
    if task == "perplexity":
        if data is None:
            raise EvalRefused("perplexity needs a text file: pass --data FILE")
        return [*argv, "--data", str(_file(data, "text file", "--data"))]
    if limit is not None:
        if limit < 1:
            raise EvalRefused(f"limit must be >= 1, got {limit}")
        argv += ["--limit", str(limit)]
    if file is not None:
        argv += ["--file", str(_file(file, "HellaSwag file", "--file"))]
    return argv


def launch_eval(
    runs_dir: str | Path,
    run: str,
    task: str,
    *,
    limit: int | None = None,
    data: str | Path | None = None,
    file: str | Path | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
) -> EvalStatus:
    """Start evaluating a run's checkpoint (default: its newest) in the background; its status.

    Raises RunNotFound, EvalRefused (bad settings, no checkpoint, an evaluation of the run already running)
    or StartFailed-like JobError when the process cannot be started.
    """
    run_dir = _run_dir(runs_dir, run)
    ckpt = _checkpoint(run_dir, run, checkpoint)
    argv = eval_command(ckpt, task, limit, data, file, device)
    with _locked(run_dir.parent):
        current = eval_status(runs_dir, run)
        if current.active:
            raise EvalRefused(f"an evaluation of {run!r} is already running (pid {current.pid}); wait for it")
        job_id = uuid.uuid4().hex
        record: dict[str, Any] = {
            "job_id": job_id, "state": "running", "pid": None, "start_time": None, "launched_at": time.time(),
            "task": task, "checkpoint": ckpt.name, "step": checkpoint_step(ckpt), "limit": limit,
            "data": argv[argv.index("--data") + 1] if "--data" in argv else None, "argv": argv,
        }  # fmt: skip
        _write(run_dir, record)
        worker = [sys.executable, "-m", "core.jobs.eval_worker", str(run_dir)]
        with open(run_dir / EVAL_LOG, "ab") as log:
            log.write(f"=== eval {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                pid, start_time = processes.spawn(worker, REPO_ROOT, job_id, log)
            except OSError as e:
                record.update(state="failed", message=f"could not start the evaluation: {e}", ended_at=time.time())
                _write(run_dir, record)
                raise JobError(f"could not start the evaluation of {run!r}: {e}") from e
        record.update(pid=pid, start_time=start_time)
        _write(run_dir, record)
    return eval_status(runs_dir, run)


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(run_dir / EVAL_FILE, json.dumps(record, indent=1))


def _finish(run_dir: Path, record: dict[str, Any], state: str, message: str = "") -> None:
    """Record the end of the job. Under the launch lock, and over a fresh read of eval.json: the launcher may
    still be about to record the worker's pid."""
    with _locked(run_dir.parent):
        record = {**record, **(read_json(run_dir / EVAL_FILE) or {})}
        record.update(state=state, message=message, ended_at=time.time())
        _write(run_dir, record)


def read_evals(runs_dir: str | Path, run: str) -> list[dict[str, Any]]:
    """Every evaluation result of a run (its evals.jsonl records), oldest first."""
    return read_all(_run_dir(runs_dir, run) / EVALS_FILE)


def checkpoint_scores(runs_dir: str | Path, run: str) -> dict[str, dict[str, Any]]:
    """The newest HellaSwag and perplexity of each checkpoint of a run, by checkpoint folder name:
    {"step-000500": {"hellaswag_acc_norm", "hellaswag_acc", "hellaswag_n", "perplexity", "perplexity_data"}}
    (only the keys it has). HellaSwag comes from the training loop (an eval record of the checkpoint's step
    in metrics.jsonl) or from evaluation jobs (evals.jsonl), whichever is newer."""
    run_dir = _run_dir(runs_dir, run)
    names = {checkpoint_step(c): c.name for c in list_checkpoints(run_dir)}
    found: list[tuple[float, str, dict[str, Any]]] = []
    for r in read_all(run_dir / "metrics.jsonl"):
        if r.get("kind") == "eval" and "hellaswag_acc" in r and r.get("step") in names:
            scores = {k: r[k] for k in ("hellaswag_acc", "hellaswag_acc_norm", "hellaswag_n")}
            found.append((r.get("time", 0), names[r["step"]], scores))
    for r in read_all(run_dir / EVALS_FILE):
        if r.get("task") == "hellaswag":
            scores = {"hellaswag_acc": r["acc"], "hellaswag_acc_norm": r["acc_norm"], "hellaswag_n": r["n"]}
        else:
            scores = {"perplexity": r.get("perplexity"), "perplexity_data": r.get("data")}
        found.append((r.get("time", 0), r.get("checkpoint"), scores))
    out: dict[str, dict[str, Any]] = {}
    for _, name, scores in sorted(found, key=lambda f: f[0]):
        if name in names.values():
            out.setdefault(name, {}).update(scores)
    return out


def eval_status(runs_dir: str | Path, run: str) -> EvalStatus:
    """The run's newest evaluation job: running, done (with its result) or failed (with the reason)."""
    run_dir = _run_dir(runs_dir, run)
    record = read_json(run_dir / EVAL_FILE)
    if record is None:
        return EvalStatus(run, "none")
    state, message = record.get("state", "failed"), record.get("message", "")
    if state == "running" and not processes.is_alive(record.get("pid"), record.get("start_time")):
        starting = record.get("pid") is None and time.time() - record.get("launched_at", 0) < START_GRACE_S
        if not starting:  # killed, or the machine restarted: it will never write its result
            state = "failed"
            message = "the evaluation ended without a result: " + (tail(run_dir / EVAL_LOG, 5) or "no output")
    result = None
    if state == "done":
        result = next(
            (r for r in reversed(read_all(run_dir / EVALS_FILE)) if r.get("job_id") == record["job_id"]), None
        )
    return EvalStatus(
        run=run, state=state, task=record.get("task"), checkpoint=record.get("checkpoint"), message=message,
        result=result, pid=record.get("pid"), started_at=record.get("launched_at"), ended_at=record.get("ended_at"),
    )  # fmt: skip


def _error_line(log_tail: str, code: int) -> str:
    """core.eval's one-line error (the last "error: ..." line of the log), else the last line it printed."""
    lines = [line for line in log_tail.splitlines() if line.strip() and not line.startswith("=== eval ")]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [f"core.eval exited with status {code}"])[-1]


def run_recorded(run_dir: Path) -> int:
    """The job itself: run the recorded core.eval command, append its result to evals.jsonl, settle eval.json."""
    record = read_json(run_dir / EVAL_FILE)
    if record is None:
        print(f"error: no {EVAL_FILE} in {run_dir}", file=sys.stderr)
        return 2
    sys.stderr.flush()
    # stdout carries the JSON result; stderr (timing, errors) goes straight on into eval.log
    proc = subprocess.run(record["argv"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (ValueError, IndexError):
        result = None
    if result is None:
        _finish(run_dir, record, "failed", _error_line(tail(run_dir / EVAL_LOG, 20), proc.returncode))
        return 1
    extra = {"limit": record["limit"]} if record["task"] == "hellaswag" else {"data": record["data"]}
    writer = MetricsWriter(run_dir / EVALS_FILE)
    writer.write(
        "eval", **result, checkpoint=record["checkpoint"], step=record["step"], **extra, job_id=record["job_id"]
    )
    writer.close()
    print(json.dumps(result), flush=True)
    _finish(run_dir, record, "done")
    return 0
