"""What a run folder records about its job: status.json, the end of train.log, a summary of metrics.jsonl,
and JobStatus, the answer `Jobs.status` builds from them."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobs.state import ACTIVE
from core.metrics import MetricsReader
from core.runs import write_text_atomic

STATUS_FILE = "status.json"
FAIL_TAIL_LINES = 20


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
    parallel: str | None = None  # ddp | fsdp, when nproc > 1
    mem_mb: list[float] | None = None  # each rank's memory at the last logged step (peak GPU memory on CUDA)
    preset: str | None = None
    checkpoint: str | None = None  # newest complete checkpoint folder name
    command: str = ""  # the exact command line that was launched

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The job record of a run (None for runs trained by hand or imported)."""
    return read_json(run_dir / STATUS_FILE)


def write_status(run_dir: Path, record: dict[str, Any]) -> None:
    """Replace status.json atomically: a poller in another process sees the old or the new record."""
    write_text_atomic(run_dir / STATUS_FILE, json.dumps(record, indent=1))


def new_record(job_id: str, device: str, nproc: int, argv: list[str], resumes: int, now: float) -> dict[str, Any]:
    """The record of a job about to start: its process is filled in once it exists."""
    return {
        "job_id": job_id,
        "state": "running",
        "pid": None,
        "pgid": None,
        "start_time": None,
        "launched_at": now,
        "device": device,
        "nproc": nproc,
        "argv": argv,
        "resumes": resumes,
    }


def tail(path: Path, n: int) -> str:
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


@dataclass
class MetricsSummary:
    """The newest train, eval (val loss) and status records of metrics.jsonl, kept up to date incrementally
    (long runs have big files)."""

    reader: MetricsReader
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    status: dict[str, Any] | None = None

    def update(self) -> MetricsSummary:
        records = self.reader.read_new()
        if self.reader.replaced:  # the run was deleted and made again: what we held belongs to the old one
            self.train = self.eval = self.status = None
        for rec in records:
            kind = rec.get("kind") if isinstance(rec, dict) else None
            if kind == "eval" and "val_loss" not in rec:
                continue  # a HellaSwag record: the newest val loss is still the one before it
            if kind in ("train", "eval", "status"):
                setattr(self, kind, rec)
        return self

    def fill(self, st: JobStatus) -> None:
        """Copy progress (step, loss, speed, ...) into st."""
        if self.train:
            t = self.train
            st.step, st.total_steps, st.tokens = t.get("step"), t.get("total_steps"), t.get("tokens")
            st.loss, st.lr, st.tok_per_s = t.get("loss"), t.get("lr"), t.get("tok_per_s")
            st.eta_s, st.elapsed = t.get("eta_s"), t.get("elapsed")
            st.mem_mb = t.get("mem_mb_ranks") or ([t["mem_mb"]] if t.get("mem_mb") is not None else None)
        if self.eval:
            st.val_loss = self.eval.get("val_loss")
        s = self.status
        if s:  # a status record may be newer than the last train record (e.g. final step, stop)
            if s.get("step") is not None and (st.step is None or s["step"] >= st.step):
                st.step = s["step"]
            st.total_steps = s.get("total_steps") or st.total_steps
