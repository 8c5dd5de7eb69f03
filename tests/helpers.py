"""Helpers shared by the tests that run the real trainer: its command line, its metrics, waiting on it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.metrics import read_all

ROOT = Path(__file__).resolve().parent.parent
CACHE = str(ROOT / "data" / "cache")
# The smallest real run: micro model on the cached Shakespeare tokens, short warmup, a quick eval.
MICRO = ["--preset", "micro", "--data-cache", CACHE, "--eval-batches", "2", "--warmup-steps", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def train_cmd(runs: str | Path, *args: str, nproc: int = 1) -> list[str]:
    """`python -m core.train` (under torchrun for 2 processes) writing its runs to `runs`."""
    launcher = TORCHRUN if nproc > 1 else [sys.executable]
    return [*launcher, "-m", "core.train", "--runs-dir", str(runs), *args]


def run_cmd(cmd: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root to the end, capturing its output as text."""
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def records(run_dir: str | Path, kind: str) -> list[dict[str, Any]]:
    """The run's metrics records of one kind ("train", "eval", "status", ...); none while there is no file."""
    return [r for r in read_all(Path(run_dir) / "metrics.jsonl") if r["kind"] == kind]


T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll `pred` until it returns something truthy, and return that; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def click_quickly(page, container: str, cells: list[str], gap_ms: int = 20) -> None:
    """Click the cells (selectors inside the container) gap_ms apart: each next click lands while the server is
    still answering the one before, as a person's quick clicks do on a loaded machine."""
    page.locator(container).evaluate(
        "(g, [cells, gap]) => cells.forEach((s, i) => setTimeout(() => g.querySelector(s).click(), gap * i))",
        [cells, gap_ms],
    )
