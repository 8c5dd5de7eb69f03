"""Shared helpers of the tabs: run pickers, the stop timeout box and human-readable numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs import STOP_TIMEOUT_S, Jobs, JobStatus


def list_runs(jobs: Jobs) -> list[JobStatus]:
    """Every run, active first, then newest first; never raises (a broken folder shows as unknown)."""
    try:
        return jobs.list_runs()
    except Exception:
        return []


def run_choices(runs: list[JobStatus]) -> list[tuple[str, str]]:
    return [(f"{st.name}  ·  {st.state}", st.name) for st in runs]


def first_active(runs: list[JobStatus]) -> str | None:
    """The run to show when the user has not picked one: an active run (list_runs puts them first)."""
    return runs[0].name if runs and runs[0].active else None


def picked_by_user(tab: Any, ctx: Any) -> dict[Any, Any]:
    """Callback of a run picker's input event: the user chose this run, so it stays when the tab opens again
    (instead of the active run). `tab` has a "picked" gr.State."""
    return {tab["picked"]: True}


def stop_timeout_box(elem_id: str) -> gr.Number:
    """Seconds Stop gives a run to save and exit before it is killed (never while a checkpoint is being saved)."""
    return gr.Number(
        STOP_TIMEOUT_S,
        label="Kill after (s)",
        info="if it has not exited by then; a checkpoint being saved is always waited for",
        precision=0,
        min_width=70,
        elem_id=elem_id,
    )


def human(n: float | None, digits: int = 3) -> str:
    """1234567 -> '1.23M'."""
    if n is None:
        return "—"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{digits}g}{unit}"
    return f"{n:.{digits}g}" if isinstance(n, float) else str(n)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def folder_size(path: Path) -> int:
    """Bytes in the files under path."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def megabytes(n: int) -> str:
    """1234567 -> '1.2 MB'; below 100 kB in kB."""
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.0f} kB"
