"""Monitor tab: live loss curves and training health of one run (or several, to compare), refreshed by a timer.

Each browser session keeps its own incremental readers in gr.State, so a tick reads only the lines appended to
metrics.jsonl since the last tick, however long the run. The timer stops when none of the shown runs is active.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs import JobStatus
from core.metrics import MetricsReader
from playground.figures import X_AXES, health_figure, loss_figure
from playground.runs_view import duration, human, jobs_for, list_runs, run_choices

TICK_S = 2.0
LOG_LINES = 40


@dataclass
class RunCache:
    """Records of one run read so far, and the reader that continues where the last tick stopped."""

    reader: MetricsReader
    records: list[dict[str, Any]] = field(default_factory=list)

    def update(self) -> int:
        try:
            if self.reader.path.stat().st_size < self.reader.offset:  # replaced (run deleted and relaunched)
                self.records.clear()
        except FileNotFoundError:
            pass
        new = self.reader.read_new()
        self.records += new
        return len(new)


@dataclass
class MonitorCache:
    runs: dict[str, RunCache] = field(default_factory=dict)
    view: tuple = ()  # the last drawn (runs, settings): unchanged view + no new records = nothing to redraw


def read_runs(runs_dir: Path, cache: MonitorCache, names: list[str]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """{run: all its records so far} for the given runs, and how many records were new since the last call."""
    jobs = jobs_for(runs_dir)
    out, new = {}, 0
    for name in names:
        rc = cache.runs.get(name)
        if rc is None:
            try:
                rc = cache.runs[name] = RunCache(jobs.reader(name))
            except Exception:  # deleted meanwhile, or an unsafe name: just not drawn
                continue
        new += rc.update()
        out[name] = rc.records
    return out, new


def _stat(label: str, value: str) -> str:
    return f"<div class='stat'><span>{label}</span><b>{html.escape(value)}</b></div>"


def status_html(st: JobStatus | None) -> str:
    """The status card: state badge, step / total with a progress bar, tokens, times, losses, speed, failure."""
    if st is None:
        return "<div class='status-card'>No run selected. Launch one in the Train tab, or pick a run above.</div>"
    step = f"{st.step:,}" if st.step is not None else "—"
    total = f"{st.total_steps:,}" if st.total_steps else "—"
    pct = 100 * (st.step or 0) / st.total_steps if st.total_steps else 0
    state = st.state if st.state in ("running", "stopping", "done", "stopped", "failed") else "unknown"
    label = "starting" if st.state == "running" and st.message == "starting" else st.state
    device = f"{st.device} × {st.nproc}" if st.device and (st.nproc or 1) > 1 else (st.device or "—")
    stats = [
        _stat("step", f"{step} / {total}"),
        _stat("tokens", human(st.tokens)),
        _stat("loss", f"{st.loss:.4f}" if st.loss is not None else "—"),
        _stat("val loss", f"{st.val_loss:.4f}" if st.val_loss is not None else "—"),
        _stat("tok/s", f"{st.tok_per_s:,.0f}" if st.tok_per_s else "—"),
        _stat("elapsed", duration(st.elapsed)),
        _stat("ETA", duration(st.eta_s) if st.active else "—"),
        _stat("device", device),
    ]
    parts = [
        f"<div class='status-card' id='run-status' data-state='{state}'>",
        f"<div class='row1'><span class='run'>{html.escape(st.name)}</span>"
        f"<span class='badge {state}'>{html.escape(label)}</span>{''.join(stats)}</div>",
        f"<div class='progress'><div style='width:{pct:.1f}%'></div></div>",
    ]
    if st.state == "failed":
        reason = st.message or st.log_tail or "the trainer exited without a message"
        parts.append(f"<div class='failure'>{html.escape(reason)}</div>")
    elif st.message and st.message != "starting":
        parts.append(f"<div class='hint' style='margin-top:8px'>{html.escape(st.message)}</div>")
    parts.append("</div>")
    return "".join(parts)


def log_html(text: str) -> str:
    """The log tail in a box that starts scrolled to the bottom (column-reverse), like a terminal."""
    body = html.escape(text) if text else "No log yet."
    return f"<div class='log-box'><pre>{body}</pre></div>"


def last_sample(records: list[dict[str, Any]]) -> str:
    for r in reversed(records):
        if r.get("kind") == "sample" and r.get("text"):
            return f"[step {r.get('step', '?')}]\n{r['text']}"
    return "No sample yet: the trainer writes one every 'Sample every' steps."


@dataclass
class MonitorTab:
    run: gr.Dropdown
    compare: gr.Dropdown
    timer: gr.Timer
    refresh: Any  # the tick callback, with its inputs and outputs (also run on page load)
    inputs: list[Any]
    outputs: list[Any]
    follow: Any  # callback("<run>@<time>") -> updates for [run, compare, timer]: show a run just launched
    refresh_choices: Any  # callback(run) -> updates for [run, compare]


def build_tab(runs_dir: Path) -> MonitorTab:
    jobs = jobs_for(runs_dir)
    runs = list_runs(runs_dir)
    first = runs[0].name if runs else None
    with gr.Row(equal_height=True):
        run = gr.Dropdown(run_choices(runs), value=first, label="Run", scale=3, elem_id="monitor-run")
        compare = gr.Dropdown(
            run_choices(runs), value=[], multiselect=True, label="Compare with", scale=3, elem_id="monitor-compare"
        )
        with gr.Column(scale=1, min_width=180):
            with gr.Row():
                stop_btn = gr.Button("Stop", size="md", min_width=70, elem_classes=["danger"], elem_id="monitor-stop")
                resume_btn = gr.Button("Resume", size="md", min_width=70, elem_id="monitor-resume")
            refresh_btn = gr.Button("↻ Refresh", size="sm", variant="secondary")
    status = gr.HTML(status_html(None), elem_id="monitor-status")
    with gr.Row(equal_height=True, elem_classes=["chart-controls"]):
        x_axis = gr.Radio([(v, k) for k, v in X_AXES.items()], value="step", label="x axis", scale=3, min_width=360)
        smoothing = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=3)
        log_y = gr.Checkbox(False, label="Log scale (loss, grad norm)", scale=1, min_width=160)
    loss_plot = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot")
    health_plot = gr.Plot(label="Training health", show_label=False, elem_id="health-plot")
    with gr.Row():
        sample = gr.Textbox(label="Last sample", lines=12, max_lines=12, interactive=False, scale=2)
        with gr.Column(scale=3):
            gr.Markdown("**train.log** (last lines)", elem_classes=["log-title"])
            log = gr.HTML(log_html(""), elem_id="monitor-log")
    cache = gr.State(None)  # a MonitorCache per browser session, made on first refresh
    timer = gr.Timer(TICK_S, active=False)

    def refresh(
        name: str | None, others: list[str] | None, smooth: float, axis: str, logy: bool, c: MonitorCache | None
    ) -> tuple[Any, ...]:
        c = c or MonitorCache()
        names = [n for n in [name, *(others or [])] if n]
        names = list(dict.fromkeys(names))
        if not names:
            return status_html(None), None, None, "", log_html(""), c, gr.Timer(active=False)
        records, new = read_runs(runs_dir, c, names)
        try:
            st = jobs.status(name) if name else None
        except Exception as e:
            return (
                f"<div class='status-card'>⚠ {html.escape(str(e))}</div>",
                None,
                None,
                "",
                "",
                c,
                gr.Timer(active=False),
            )
        active = False
        for n in names:
            try:
                active = active or (st if n == name else jobs.status(n)).active
            except Exception:
                continue
        view = (tuple(names), smooth, axis, logy)
        if new or view != c.view:
            key = "|".join(names) + axis  # zoom survives refreshes, resets when the runs or the axis change
            loss = loss_figure(records, smooth, axis, logy, uirevision="loss" + key)
            health = health_figure(records, axis, logy, uirevision="health" + key)
            c.view = view
        else:
            loss = health = gr.skip()
        tail = log_html(jobs.log_tail(name, LOG_LINES) if name else "")
        return (
            status_html(st),
            loss,
            health,
            last_sample(records.get(name, [])),
            tail,
            c,
            gr.Timer(active=active),
        )

    inputs = [run, compare, smoothing, x_axis, log_y, cache]
    outputs = [status, loss_plot, health_plot, sample, log, cache, timer]
    timer.tick(refresh, inputs, outputs, show_progress="hidden", queue=True, concurrency_limit=4)
    for comp in (run, compare, x_axis, log_y):
        comp.change(refresh, inputs, outputs, show_progress="hidden")
    smoothing.release(refresh, inputs, outputs, show_progress="hidden")

    def refresh_choices(current: str | None) -> tuple[Any, Any]:
        runs = list_runs(runs_dir)
        names = [st.name for st in runs]
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=run_choices(runs), value=value), gr.update(choices=run_choices(runs))

    refresh_btn.click(refresh_choices, run, [run, compare]).then(refresh, inputs, outputs, show_progress="hidden")

    def follow(launched: str) -> tuple[Any, Any, Any]:
        name = (launched or "").rpartition("@")[0]
        if not name:
            return gr.update(), gr.update(), gr.update()
        runs = list_runs(runs_dir)
        return (
            gr.update(choices=run_choices(runs), value=name),
            gr.update(choices=run_choices(runs)),
            gr.Timer(active=True),
        )

    def stop(name: str | None) -> Any:
        if not name:
            gr.Warning("Pick a run first.")
            return gr.update()
        try:
            jobs.stop(name, wait=False)  # the trainer saves a checkpoint; the timer shows when it is gone
        except Exception as e:
            gr.Warning(f"Could not stop {name}: {e}")
        return gr.Timer(active=True)

    def resume(name: str | None) -> Any:
        if not name:
            gr.Warning("Pick a run first.")
            return gr.update()
        try:
            jobs.resume(name)
        except Exception as e:
            gr.Warning(f"Could not resume {name}: {e}")
            return gr.update()
        gr.Info(f"Resumed {name} from its latest checkpoint.")
        return gr.Timer(active=True)

    stop_btn.click(stop, run, timer).then(refresh, inputs, outputs, show_progress="hidden")
    resume_btn.click(resume, run, timer).then(refresh, inputs, outputs, show_progress="hidden")
    return MonitorTab(run, compare, timer, refresh, inputs, outputs, follow, refresh_choices)
