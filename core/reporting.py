"""What a training run tells the world: each event once, as a metrics.jsonl record and a console line.

Records (see core/metrics.py for the file itself), every one with "kind" and "time":
    status  state=running (step, total_steps, world_size, grad_accum, tokens_per_step, precision, device),
            then state=done (step, total_steps), stopped (step, total_steps, checkpoint, signal)
            or failed (step, message)
    train   step, total_steps, tokens, loss, lr, grad_norm, dt, tok_per_s, mfu, elapsed, eta_s, mem_mb,
            mem_mb_ranks (one per rank, under torchrun)
    eval    step, val_loss
    sample  step, text
Rank 0 writes the records (once the run folder is known), hands each to the trackers of TrainConfig.report_to
(core/trackers.py) and prints the lines; an error is printed by every rank that hits it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import TrainConfig
from core.metrics import MetricsWriter
from core.trackers import Tracker, open_trackers, scalars


def format_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; the process's resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Pace:
    """Training time across the run's processes, and tokens/s, MFU and ETA from step times."""

    def __init__(
        self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, total_steps: int, elapsed: float
    ) -> None:
        self.tokens_per_step, self.flops_per_token, self.total_steps = tokens_per_step, flops_per_token, total_steps
        self.peak_flops = peak_flops  # of all devices together; None where unknown (no MFU then)
        self.elapsed_before = elapsed  # training seconds of the run's earlier processes
        self.started = time.time()
        self.step_time: float | None = None  # moving average, for the ETA

    def start(self) -> None:
        self.started = time.time()

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def add(self, step: int, dt: float) -> None:
        """Count optimizer step `step` (1-based), which took dt seconds; the first two (warm-up) set the average."""
        self.step_time = dt if self.step_time is None or step <= 2 else 0.9 * self.step_time + 0.1 * dt

    def tok_per_s(self, dt: float) -> float:
        return self.tokens_per_step / dt

    def mfu(self, dt: float) -> float | None:
        return self.flops_per_token * self.tok_per_s(dt) / self.peak_flops if self.peak_flops else None

    def eta(self, step: int) -> float:
        return (self.total_steps - step) * (self.step_time or 0.0)


@dataclass
class StepRecord:
    """One logged optimizer step: the fields of a "train" record, in its order."""

    step: int
    total_steps: int
    tokens: int
    loss: float
    lr: float
    grad_norm: float
    dt: float
    tok_per_s: float
    mfu: float | None
    elapsed: float
    eta_s: float
    mem_mb: float
    mem_mb_ranks: list[float] | None = None  # every rank's mem_mb under torchrun, rank 0 first

    def line(self) -> str:
        mfu = f" | mfu {100 * self.mfu:.1f}%" if self.mfu is not None else ""
        return (
            f"step {self.step}/{self.total_steps} | loss {self.loss:.4f} | lr {self.lr:.2e} | "
            f"norm {self.grad_norm:.2f} | {1000 * self.dt:.1f} ms | {self.tok_per_s:,.0f} tok/s{mfu} | "
            f"eta {format_duration(self.eta_s)}"
        )


class Reporter:
    """Writes each event of a run as a metrics record and prints its console line, from the same values."""

    def __init__(self) -> None:
        self.metrics: MetricsWriter | None = None  # set by open() on rank 0
        self.trackers: dict[str, Tracker] = {}  # report_to's trackers that started, by name (rank 0)
        self.console = True  # False on ranks other than 0

    def open(self, path: Path, config: TrainConfig | None = None) -> None:
        """From now on, records go to the metrics file at path, and to the trackers config.report_to names."""
        self.metrics = MetricsWriter(path)
        if config is not None and config.trackers:
            self.trackers = open_trackers(config.trackers, path.parent, config.run_name, config.to_dict(), self.log)

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
            self.metrics = None
        for name, tracker in self.trackers.items():
            self._guarded(name, tracker.close)
        self.trackers = {}

    def _guarded(self, name: str, call: Callable[[], None]) -> bool:
        """Run a tracker's call; a failure is one line, never a failed run. False when it failed."""
        try:
            call()
        except Exception as e:
            self.log(f"warning: report_to {name} failed ({type(e).__name__}: {e}); training goes on without it")
            return False
        return True

    def _track(self, kind: str, fields: dict[str, Any]) -> None:
        values = scalars({"kind": kind, **fields})
        if not values:
            return
        step = fields["step"]
        for name, tracker in list(self.trackers.items()):
            if not self._guarded(name, lambda t=tracker: t.log(step, values)):
                del self.trackers[name]

    def log(self, line: str) -> None:
        """A console line that has no record (progress notes, saved checkpoints)."""
        if self.console:
            print(line, flush=True)

    def _event(self, kind: str, line: str | None, **fields: Any) -> None:
        if self.metrics:
            self.metrics.write(kind, **fields)
        if self.trackers:
            self._track(kind, fields)
        if line is not None:
            self.log(line)

    def started(
        self,
        *,
        step: int,
        total_steps: int,
        world_size: int,
        grad_accum: int,
        tokens_per_step: int,
        precision: str,
        device: str,
        parameters: int,
        batch_size: int,
        seq_len: int,
    ) -> None:
        line = (
            f"training {parameters:,} parameters on {world_size} x {device} ({precision}); {tokens_per_step:,} "
            f"tokens/step = {batch_size} x {seq_len} x {grad_accum} accumulation x {world_size} processes; "
            f"steps {step} -> {total_steps}"
        )
        self._event(
            "status",
            line,
            state="running",
            step=step,
            total_steps=total_steps,
            world_size=world_size,
            grad_accum=grad_accum,
            tokens_per_step=tokens_per_step,
            precision=precision,
            device=device,
        )

    def trained(self, record: StepRecord) -> None:
        self._event("train", record.line(), **dataclasses.asdict(record))

    def evaluated(self, step: int, val_loss: float) -> None:
        self._event("eval", f"step {step} | val loss {val_loss:.4f}", step=step, val_loss=val_loss)

    def hellaswag(self, step: int, acc: float, acc_norm: float, n: int) -> None:
        """HellaSwag in the loop: an eval record with step, hellaswag_acc, hellaswag_acc_norm, hellaswag_n."""
        line = f"step {step} | hellaswag acc_norm {acc_norm:.4f} (acc {acc:.4f}, {n} examples)"
        self._event("eval", line, step=step, hellaswag_acc=acc, hellaswag_acc_norm=acc_norm, hellaswag_n=n)

    def sampled(self, step: int, text: str) -> None:
        self._event("sample", f"sample at step {step}: {text[:200]!r}", step=step, text=text)

    def stopped(self, step: int, total_steps: int, checkpoint: Path | None, signal: str | None, run_dir: Path) -> None:
        line = f"stopped at step {step}; resume with: python -m core.train --resume {run_dir}"
        fields = dict(step=step, total_steps=total_steps, checkpoint=str(checkpoint), signal=signal)
        self._event("status", line, state="stopped", **fields)

    def stopped_early(self, step: int | None) -> None:
        """Stopped during setup (data preparation, compile): nothing new was trained, so nothing was saved."""
        line = "stopped before training got going; nothing new was saved"
        self._event("status", line, state="stopped", step=step, message=line)

    def done(self, step: int, total_steps: int, run_dir: Path) -> None:
        line = f"done: {step} steps; checkpoints in {run_dir / 'ckpt'}"
        self._event("status", line, state="done", step=step, total_steps=total_steps)

    def failed(self, step: int | None, message: str, *, record: bool = True) -> None:
        """Every rank prints the error; rank 0 records it unless record is False (the run stays as it was)."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        if record and self.metrics:
            self.metrics.write("status", state="failed", step=step, message=message)
