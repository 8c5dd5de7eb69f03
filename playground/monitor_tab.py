"""Monitor tab: live loss curves and training health of one run (or several, to compare), refreshed by a timer.

Each browser session keeps its own incremental readers in gr.State, so a tick reads only the lines appended to
metrics.jsonl since the last tick, however long the run. The timer stops when none of the shown runs is active.
"""

from __future__ import annotations

import html
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.config import ConfigError, TrainConfig
from core.jobs import Jobs, JobStatus
from core.metrics import MetricsReader, export_records
from core.references import Reference, health_warnings, loss_references
from playground import actions, figures
from playground.figures import X_AXES, health_figure, loss_figure
from playground.runs_view import duration, human, list_runs, picked_by_user, run_choices, stop_timeout_box
from playground.tab import AppContext, OnOpen, Tab, bind

ZOOM_KEEPER = (Path(__file__).parent / "zoom_keeper.js").read_text()
TICK_S = 2.0  # while a shown run is active
IDLE_TICK_S = 10.0  # otherwise: a slow look, to notice a run that is resumed or launched elsewhere
LOG_LINES = 40
# Records one page keeps per run. Past this, older training points are thinned (every other one kept; evals,
# samples and statuses all kept), so a page watching a 1M-step run holds a bounded amount of memory. Drawing
# thins further (figures.MAX_POINTS).
MAX_KEPT = 50_000
HEALTH_CHECK_EVERY_S = 10.0
DOWNLOADS = Path(tempfile.mkdtemp(prefix="gpt2-playground-metrics-"))  # this app's exported metrics files


@dataclass
class RunCache:
    """Records of one run read so far, and the reader that continues where the last tick stopped; its config (None
    until its config.json is readable) and the health warnings of its records."""

    reader: MetricsReader
    records: list[dict[str, Any]] = field(default_factory=list)
    config: TrainConfig | None = None
    warnings: list[str] = field(default_factory=list)
    warned_at: float = -math.inf  # time.monotonic() of the last health check

    def update(self) -> int:
        """Read what was appended; returns how many records changed (a replaced file counts as at least one)."""
        new = self.reader.read_new()
        if self.reader.replaced:  # the run was deleted (and maybe launched again): what we had is gone
            self.records, self.config = new, None
            return max(1, len(new))
        self.records += new
        if len(self.records) > MAX_KEPT:
            self.records = thin_records(self.records)
        return len(new)


def thin_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other training record (and the last one), every record of any other kind, in order."""
    train = [i for i, r in enumerate(records) if r.get("kind") == "train"]
    dropped = set(train[1:-1:2])
    return [r for i, r in enumerate(records) if i not in dropped]


@dataclass
class MonitorCache:
    """What one browser tab has read and shows (kept in its gr.State), so that a tick sends only what changed."""

    runs: dict[str, RunCache] = field(default_factory=dict)
    view: tuple = ()  # the last drawn (runs, settings): unchanged view + no new records = nothing to redraw
    sent: dict[str, Any] = field(default_factory=dict)  # the card, sample, log and timer last sent
    labels: dict[str, str] = field(default_factory=dict)  # run -> the state its picker label says
    main: str | None = None  # the run Compare with's choices were last sent without


def run_config(jobs: Jobs, name: str) -> TrainConfig | None:
    """The run's config.json, or None while it is missing or unreadable (a run still starting, an old format)."""
    try:
        cfg = TrainConfig.from_json(jobs.run_dir(name) / "config.json")
        cfg.model_config()  # a preset this version does not know: no vocabulary to draw the init line from
    except (ConfigError, ValueError, TypeError, OSError):
        return None
    return cfg


def run_warnings(records: list[dict[str, Any]], cfg: TrainConfig | None) -> list[str]:
    """core.references.health_warnings for a run; the first-step check only for a run known to start from scratch
    (a fine-tune's first loss is the pretrained model's)."""
    if cfg is None:
        return health_warnings(records, from_scratch=False)
    from_scratch = cfg.init_from == "scratch"
    return health_warnings(
        records, from_scratch=from_scratch, warmup_steps=cfg.warmup_steps, vocab_size=cfg.model_config().vocab_size
    )


def loss_reference_lines(configs: Sequence[TrainConfig | None]) -> list[Reference]:
    """The loss chart's reference lines for the shown runs: each run's (core.references.loss_references), once."""
    out: dict[tuple[str, float], Reference] = {}
    for cfg in configs:
        if cfg is not None:
            for ref in loss_references(cfg.data, cfg.model_config().vocab_size):
                out.setdefault((ref.label, ref.value), ref)
    return list(out.values())


def _health_check_due(rc: RunCache, changed: int) -> bool:
    """The health check reads every record (100 ms for a 100k-step run): run it on a non-finite loss at once,
    otherwise at most every HEALTH_CHECK_EVERY_S."""
    if time.monotonic() - rc.warned_at >= HEALTH_CHECK_EVERY_S:
        return True
    return any(not figures.finite(r.get("loss")) for r in rc.records[-changed:] if r.get("kind") == "train")


def read_runs(jobs: Jobs, cache: MonitorCache, names: list[str]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """{run: all its records so far} for the given runs, and how many records were new since the last call. Each
    run's config and health warnings are kept up to date in the cache."""
    out, new = {}, 0
    for name in names:
        rc = cache.runs.get(name)
        if rc is None:
            try:
                rc = cache.runs[name] = RunCache(jobs.reader(name))
            except Exception:  # deleted meanwhile, or an unsafe name: just not drawn
                continue
        changed = rc.update()
        loaded = rc.config is None and (cfg := run_config(jobs, name)) is not None
        if loaded:
            rc.config = cfg
        if loaded or changed and _health_check_due(rc, changed):
            rc.warnings, rc.warned_at = run_warnings(rc.records, rc.config), time.monotonic()
        new += changed
        out[name] = rc.records
    return out, new


WARNING_STYLE = "margin-top:8px;padding:6px 12px;border-radius:8px;background:#fffbeb;color:#92400e"


def _stat(label: str, value: str) -> str:
    return f"<div class='stat'><span>{label}</span><b>{html.escape(value)}</b></div>"


def status_html(st: JobStatus | Exception | None, warnings: Sequence[str] = ()) -> str:
    """The status card: state badge, step / total with a progress bar, tokens, times, losses, speed, failure (or
    why the run's status could not be read), and the run's health warnings (core.references.health_warnings)."""
    if st is None:
        return "<div class='status-card'>No run selected. Launch one in the Train tab, or pick a run above.</div>"
    if isinstance(st, Exception):
        return f"<div class='status-card'>⚠ {html.escape(str(st))}</div>"
    step = f"{st.step:,}" if st.step is not None else "—"
    total = f"{st.total_steps:,}" if st.total_steps else "—"
    pct = 100 * (st.step or 0) / st.total_steps if st.total_steps else 0
    state = st.state if st.state in ("running", "stopping", "done", "stopped", "failed") else "unknown"
    label = "starting" if st.state == "running" and st.message == "starting" else st.state
    device = f"{st.device} × {st.nproc}" if st.device and (st.nproc or 1) > 1 else (st.device or "—")
    if st.parallel and device != "—":
        device += f" {st.parallel.upper()}"
    memory = " · ".join(f"{m:,.0f}" for m in st.mem_mb) + " MB" if st.mem_mb else "—"
    stats = [
        _stat("step", f"{step} / {total}"),
        _stat("tokens", human(st.tokens)),
        _stat("loss", f"{st.loss:.4f}" if st.loss is not None else "—"),
        _stat("val loss", f"{st.val_loss:.4f}" if st.val_loss is not None else "—"),
        _stat("tok/s", f"{st.tok_per_s:,.0f}" if st.tok_per_s else "—"),
        _stat("elapsed", duration(st.elapsed)),
        _stat("ETA", duration(st.eta_s) if st.active else "—"),
        _stat("device", device),
        _stat("memory per rank" if st.mem_mb and len(st.mem_mb) > 1 else "memory", memory),
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
    parts += [f"<div class='health-warning' style='{WARNING_STYLE}'>⚠ {html.escape(w)}</div>" for w in warnings]
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


# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------

VIEW_INPUTS = ("run", "compare", "smoothing", "x_axis", "log_y", "cache")
VIEW_OUTPUTS = (
    "status",
    "loss_plot",
    "hellaswag_plot",
    "health_plot",
    "sample",
    "log",
    "cache",
    "timer",
    "run",
    "compare",
)


def _statuses(jobs: Jobs, names: list[str]) -> dict[str, JobStatus | Exception]:
    out: dict[str, JobStatus | Exception] = {}
    for n in names:
        try:
            out[n] = jobs.status(n)
        except Exception as e:  # deleted meanwhile, unsafe name: said on the card (main run) or left out
            out[n] = e
    return out


def pickers(runs: list[JobStatus], name: str | None, others: list[str]) -> dict[str, Any]:
    """Updates of Run and Compare with: the runs as they are now (labels with their state), the main run left out
    of Compare with."""
    rest = [st for st in runs if st.name != name]
    return {
        "run": gr.update(choices=run_choices(runs), value=name),
        "compare": gr.update(choices=run_choices(rest), value=[n for n in others if n != name]),
    }


def _send_changed(tab: Tab, cache: MonitorCache, values: dict[str, Any]) -> dict[Any, Any]:
    """Only what differs from what this browser tab shows: an unchanged card or log is not re-rendered."""
    out = {tab[key]: value for key, value in values.items() if cache.sent.get(key) != value}
    cache.sent.update(values)
    if tab["timer"] in out:
        out[tab["timer"]] = gr.Timer(out[tab["timer"]], active=True)
    return out


def refresh_monitor(
    tab: Tab,
    ctx: AppContext,
    name: str | None,
    others: list[str] | None,
    smooth: float,
    axis: str,
    logy: bool,
    cache: MonitorCache | None,
) -> dict[Any, Any]:
    """One tick: status card, curves (redrawn only when there is something new), last sample, log tail, and the
    pickers' labels when a shown run changed state. The timer ticks fast while a shown run is active, and slowly
    otherwise, so a run resumed elsewhere (another browser tab, a terminal) is followed again."""
    cache = cache or MonitorCache()
    compared = [n for n in others or [] if n != name]
    names = list(dict.fromkeys(n for n in [name, *compared] if n))
    records, new = read_runs(ctx.jobs, cache, names)
    statuses = _statuses(ctx.jobs, names)
    st = statuses.get(name) if name else None
    active = any(isinstance(s, JobStatus) and s.active for s in statuses.values())
    main = cache.runs.get(name) if name else None
    values: dict[str, Any] = {
        "status": status_html(st, main.warnings if main else ()),
        "sample": last_sample(records.get(name, [])) if name else "",
        "log": log_html(ctx.jobs.log_tail(name, LOG_LINES) if isinstance(st, JobStatus) else ""),
        "timer": TICK_S if active else IDLE_TICK_S,  # seconds between ticks
    }
    out = {**_send_changed(tab, cache, values), tab["cache"]: cache}
    labels = {n: s.state for n, s in statuses.items() if isinstance(s, JobStatus)}
    stale = any(cache.labels.get(n) != state for n, state in labels.items())  # a label says another state
    if stale or name != cache.main or compared != (others or []):  # or Compare with still offers the main run
        runs = list_runs(ctx.jobs)
        cache.labels, cache.main = {r.name: r.state for r in runs}, name
        out |= {tab[key]: update for key, update in pickers(runs, name, compared).items()}
    refs = loss_reference_lines([cache.runs[n].config for n in records])
    view = (tuple(names), smooth, axis, logy, tuple(refs))  # a config read late brings its reference lines
    if new or view != cache.view:  # else the plots keep what they show
        key = "|".join(names) + axis  # the browser keeps the zoom of this key across redraws (ZOOM_KEEPER)
        loss = loss_figure(records, smooth, axis, logy, uirevision="loss" + key, references=refs) if names else None
        out[tab["loss_plot"]] = loss
        out[tab["health_plot"]] = health_figure(records, axis, logy, uirevision="health" + key) if names else None
        out[tab["hellaswag_plot"]] = hellaswag_update(records, axis, "hellaswag" + key)
        cache.view = view
    return out


def hellaswag_update(records: dict[str, list[dict[str, Any]]], axis: str, uirevision: str) -> dict[str, Any]:
    """The HellaSwag chart, shown only while one of the shown runs has HellaSwag results."""
    if not any(figures.has_hellaswag(recs) for recs in records.values()):
        return gr.update(value=None, visible=False)
    return gr.update(value=figures.hellaswag_figure(records, axis, uirevision=uirevision), visible=True)


def refresh_run_choices(
    tab: Tab, ctx: AppContext, current: str | None, others: list[str] | None, picked: bool
) -> dict[Any, Any]:
    """Both pickers list the runs as they are now. The run the user picked stays while it exists; otherwise the
    first run is shown: an active one when there is one (runs are listed active first, then newest first)."""
    runs = list_runs(ctx.jobs)
    names = [st.name for st in runs]
    value = current if picked and current in names else (names[0] if names else None)
    return {tab[key]: update for key, update in pickers(runs, value, others or []).items()}


def show_launched_run(tab: Tab, ctx: AppContext, launched: tuple[str, float] | None, others: list[str] | None) -> Any:
    """Pick the run just launched or resumed ((name, time), from the Train tab) and watch it live."""
    if not launched:
        return gr.skip()
    name, _ = launched
    return {tab[key]: update for key, update in pickers(list_runs(ctx.jobs), name, others or []).items()}


def metrics_files(tab: Tab, ctx: AppContext, name: str | None) -> dict[Any, Any]:
    """The picked run's metrics as CSV and JSONL files for the two download buttons (None: nothing to offer)."""
    out: dict[Any, Any] = {}
    for fmt in ("csv", "jsonl"):
        try:
            text = export_records(ctx.jobs.run_dir(name or "") / "metrics.jsonl", fmt)
        except (ValueError, OSError):  # no run picked, an unsafe name, or no metrics yet
            out[tab[f"download_{fmt}"]] = None
            continue
        path = DOWNLOADS / f"{name}.metrics.{fmt}"
        path.write_text(text)
        out[tab[f"download_{fmt}"]] = str(path)
    return out


def stop_run(tab: Tab, ctx: AppContext, name: str | None, timeout_s: float | None) -> None:
    """Stop (the trainer saves a checkpoint); the refresh that follows sets the timer to watch it end."""
    stopped = actions.stop_run(ctx.jobs, name, timeout_s)
    if not stopped.ok:
        gr.Warning(stopped.message)


def resume_run(tab: Tab, ctx: AppContext, name: str | None) -> None:
    """Resume; the refresh that follows sees it active and ticks fast again."""
    resumed = actions.resume_run(ctx.jobs, name)
    (gr.Info if resumed.ok else gr.Warning)(resumed.message)


def follow(monitor: Tab, ctx: AppContext, launched: gr.State) -> Any:
    """Show every run that `launched` names ((run, time), set by another tab); the run's change event refreshes the
    view (and its timer). Returns the event."""
    outputs = [monitor["run"], monitor["compare"]]
    return launched.change(bind(show_launched_run, monitor, ctx), [launched, monitor["compare"]], outputs, queue=False)


# ----- layout and wiring --------------------------------------------------------------------------------------------


def _layout_pickers() -> dict[str, Any]:
    # Empty until the page loads: the runs as they are then (not as they were when the app started) fill them.
    with gr.Row(equal_height=True):
        run = gr.Dropdown([], value=None, label="Run", scale=3, elem_id="monitor-run")
        compare = gr.Dropdown([], value=[], multiselect=True, label="Compare with", scale=3, elem_id="monitor-compare")
        with gr.Column(scale=1, min_width=180):
            with gr.Row():
                stop_btn = gr.Button("Stop", size="md", min_width=70, elem_classes=["danger"], elem_id="monitor-stop")
                resume_btn = gr.Button("Resume", size="md", min_width=70, elem_id="monitor-resume")
            stop_timeout = stop_timeout_box("monitor-stop-timeout")
            refresh_btn = gr.Button("↻ Refresh", size="sm", variant="secondary")
            with gr.Row():
                download_csv = gr.DownloadButton("⬇ CSV", size="sm", min_width=70, elem_id="monitor-download-csv")
                download_jsonl = gr.DownloadButton("⬇ JSONL", size="sm", min_width=70, elem_id="monitor-download-jsonl")
    return {
        "run": run,
        "compare": compare,
        "stop_btn": stop_btn,
        "stop_timeout": stop_timeout,
        "resume_btn": resume_btn,
        "refresh_btn": refresh_btn,
        "download_csv": download_csv,
        "download_jsonl": download_jsonl,
        "picked": gr.State(False),  # the user chose the run (else the first, active, run is shown on open)
    }


def _layout_charts() -> dict[str, Any]:
    c: dict[str, Any] = {"status": gr.HTML(status_html(None), elem_id="monitor-status")}
    with gr.Row(equal_height=True, elem_classes=["chart-controls"]):
        c["x_axis"] = gr.Radio(
            [(v, k) for k, v in X_AXES.items()], value="step", label="x axis", scale=3, min_width=360
        )
        c["smoothing"] = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=3)
        c["log_y"] = gr.Checkbox(False, label="Log scale (loss, grad norm)", scale=1, min_width=160)
    with gr.Row(equal_height=True):
        c["loss_plot"] = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot", scale=3)
        # Beside the loss, and only for a run that evaluates HellaSwag in its loop (--hellaswag-interval).
        c["hellaswag_plot"] = gr.Plot(
            label="HellaSwag", show_label=False, elem_id="hellaswag-plot", scale=2, visible=False
        )
    c["health_plot"] = gr.Plot(label="Training health", show_label=False, elem_id="health-plot")
    with gr.Row():
        c["sample"] = gr.Textbox(label="Last sample", lines=12, max_lines=12, interactive=False, scale=2)
        with gr.Column(scale=3):
            gr.Markdown("**train.log** (last lines)", elem_classes=["log-title"])
            c["log"] = gr.HTML(log_html(""), elem_id="monitor-log")
    c["cache"] = gr.State(None)  # a MonitorCache per browser session, made on first refresh
    c["timer"] = gr.Timer(TICK_S, active=False)
    # Gradio draws each new figure in a new element, which loses a zoom that plotly's uirevision would keep: this
    # script keeps it in the browser, per uirevision (the runs and the x axis shown).
    gr.HTML("", js_on_load=ZOOM_KEEPER, elem_id="zoom-keeper", padding=False)
    return c


def _wire(tab: Tab, ctx: AppContext) -> None:
    refresh = bind(refresh_monitor, tab, ctx)
    inputs, outputs = [tab[n] for n in VIEW_INPUTS], [tab[n] for n in VIEW_OUTPUTS]
    tab["timer"].tick(refresh, inputs, outputs, show_progress="hidden", queue=True, concurrency_limit=4)
    for name in ("run", "compare", "x_axis", "log_y"):
        tab[name].change(refresh, inputs, outputs, show_progress="hidden")
    tab["smoothing"].release(refresh, inputs, outputs, show_progress="hidden")
    tab["run"].input(bind(picked_by_user, tab, ctx), None, tab["picked"], queue=False, show_progress="hidden")
    choices = bind(refresh_run_choices, tab, ctx)
    choice_inputs, pickers = [tab["run"], tab["compare"], tab["picked"]], [tab["run"], tab["compare"]]
    tab["refresh_btn"].click(choices, choice_inputs, pickers).then(refresh, inputs, outputs, show_progress="hidden")
    for button, action, args in (("stop_btn", stop_run, ["run", "stop_timeout"]), ("resume_btn", resume_run, ["run"])):
        clicked = tab[button].click(bind(action, tab, ctx), [tab[a] for a in args], None)
        clicked.then(refresh, inputs, outputs, show_progress="hidden")
    downloads = bind(metrics_files, tab, ctx), tab["run"], [tab["download_csv"], tab["download_jsonl"]]
    tab["run"].change(*downloads, show_progress="hidden")  # the files as they are when the run is picked;
    tab["refresh_btn"].click(*downloads, show_progress="hidden")  # ↻ brings a running run's newest lines
    tab.on_open += [OnOpen(choices, choice_inputs, pickers), OnOpen(refresh, inputs, outputs)]


def build(ctx: AppContext) -> Tab:
    tab = Tab("monitor", {**_layout_pickers(), **_layout_charts()})
    _wire(tab, ctx)
    return tab
