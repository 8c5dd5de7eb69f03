"""Monitor's "is my run healthy?" parts (issue 13): the loss chart's reference lines, the HellaSwag chart and the
health warnings on the status card, checked against core.references' constants on run folders written by the
trainer's own Reporter."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import pytest

from core.config import TrainConfig
from core.jobs import JobStatus
from core.metrics import MetricsWriter, read_all
from core.references import (
    GPT2_124M_FINEWEB_EDU_VAL_LOSS,
    HELLASWAG_CHANCE,
    HELLASWAG_GPT2_124M,
    HELLASWAG_GPT3_124M,
    INIT_LOSS,
    health_warnings,
    loss_references,
)
from core.reporting import Reporter, StepRecord
from playground import figures, monitor_tab
from playground.tab import AppContext

FINEWEB = "hf:HuggingFaceFW/fineweb-edu"


def reported_run(
    run: Path,
    cfg: TrainConfig,
    losses: list[float],
    hellaswag: dict[int, float] | None = None,
    val: dict[int, float] | None = None,
) -> None:
    """A run folder as the trainer leaves it: config.json, and metrics.jsonl written by core's Reporter (train
    records for losses[0] at step 1 on, val losses and HellaSwag acc_norm at the given steps)."""
    run.mkdir(parents=True, exist_ok=True)
    cfg.to_json(run / "config.json")
    report = Reporter()
    report.log = lambda line: None  # no console lines in the test output
    report.open(run / "metrics.jsonl", cfg)
    total = len(losses)
    for step, loss in enumerate(losses, start=1):
        report.trained(StepRecord(step, total, 64 * step, loss, 1e-3, 1.0, 0.1, 640.0, None, step, 1.0, 100.0))
        if step in (val or {}):
            report.evaluated(step, val[step])
        if step in (hellaswag or {}):
            acc_norm = hellaswag[step]
            report.hellaswag(step, acc_norm - 0.01, acc_norm, 100)
    report.close()


def decaying(n: int, start: float = INIT_LOSS) -> list[float]:
    return [start * math.exp(-s / n) + 1.0 for s in range(n)]


def reference_traces(fig) -> dict[str, tuple[float, ...]]:
    return {t.name: tuple(t.y) for t in fig.data if t.legendgroup == "references"}


def records_of(run: Path) -> list[dict]:
    return read_all(run / "metrics.jsonl")


# ----- figures ---------------------------------------------------------------------------------------------------


def test_loss_chart_draws_the_init_line_and_gpt2_on_fineweb_edu_across_the_steps(tmp_path):
    reported_run(tmp_path / "r", TrainConfig(data=FINEWEB), decaying(30), val={10: 4.0, 20: 3.5, 30: 3.4})
    refs = loss_references(FINEWEB)
    for log_y in (False, True):
        fig = figures.loss_figure({"r": records_of(tmp_path / "r")}, log_y=log_y, references=refs)
        lines = [t for t in fig.data if t.legendgroup == "references"]
        assert [t.y for t in lines] == [(INIT_LOSS, INIT_LOSS), (GPT2_124M_FINEWEB_EDU_VAL_LOSS,) * 2]
        assert all(t.x == (1, 30) and t.line.dash == "dash" for t in lines)  # across every drawn step
        labels = [(a.text, a.x, a.y) for a in fig.layout.annotations]  # on the chart, not only in the legend
        to_y = math.log10 if log_y else float
        assert labels == [(r.label, 30, pytest.approx(to_y(r.value))) for r in refs]
        assert fig.layout.yaxis.type == ("log" if log_y else "linear")
    assert "ln(50257) = 10.82" in lines[0].name
    # The curves come first, unchanged: raw, smoothed, val.
    assert [t.name for t in fig.data[:3]] == ["train (raw)", "train loss (smoothed)", "val loss"]


def test_loss_chart_without_steps_draws_no_reference_lines():
    fig = figures.loss_figure({"r": []}, references=loss_references(FINEWEB))
    assert not fig.data and "No training steps" in fig.layout.annotations[0].text


def test_hellaswag_chart_has_acc_norm_and_gpt2_gpt3_chance_lines(tmp_path):
    scores = {10: 0.26, 20: 0.27, 30: 0.285}
    reported_run(tmp_path / "r", TrainConfig(), decaying(30), hellaswag=scores)
    records = records_of(tmp_path / "r")
    assert figures.has_hellaswag(records)
    fig = figures.hellaswag_figure({"r": records})
    acc = fig.data[0]
    assert list(acc.x) == [10, 20, 30] and list(acc.y) == pytest.approx(list(scores.values()))
    assert list(acc.customdata) == [100, 100, 100]  # examples evaluated, in the hover
    refs = reference_traces(fig)
    assert sorted(v[0] for v in refs.values()) == sorted([HELLASWAG_GPT2_124M, HELLASWAG_GPT3_124M, HELLASWAG_CHANCE])
    assert all(t.x == (10, 30) for t in fig.data[1:])
    tokens = figures.hellaswag_figure({"r": records}, x_axis="tokens").data[0]
    assert list(tokens.x) == [640, 1280, 1920]  # the tokens the train record of that step reported


def test_hellaswag_chart_compares_runs_and_says_when_there_is_nothing(tmp_path):
    reported_run(tmp_path / "a", TrainConfig(), decaying(20), hellaswag={10: 0.26, 20: 0.27})
    reported_run(tmp_path / "b", TrainConfig(), decaying(20), hellaswag={20: 0.28})
    reported_run(tmp_path / "c", TrainConfig(), decaying(20))
    runs = {n: records_of(tmp_path / n) for n in "abc"}
    fig = figures.hellaswag_figure(runs)
    curves = [t for t in fig.data if t.legendgroup != "references"]
    assert [(t.name, list(t.x)) for t in curves] == [("a", [10, 20]), ("b", [20])]
    assert curves[0].line.color != curves[1].line.color
    assert not figures.has_hellaswag(runs["c"])
    empty = figures.hellaswag_figure({"c": runs["c"]})
    assert not empty.data and "--hellaswag-interval" in empty.layout.annotations[0].text


# ----- Monitor tab: the run's config decides the lines; the chart shows only with results ---------------------------


def built(tmp_path):
    ctx = AppContext.for_runs_dir(tmp_path / "runs")
    with gr.Blocks():
        tab = monitor_tab.build(ctx)
    return tab, ctx


def refresh(tab, ctx, name, others=(), cache=None):
    return monitor_tab.refresh_monitor(tab, ctx, name, list(others), 0.6, "step", False, cache)


def test_monitor_draws_the_lines_of_each_runs_data_and_hellaswag_only_when_logged(tmp_path):
    tab, ctx = built(tmp_path)
    reported_run(ctx.runs_dir / "edu", TrainConfig(data=FINEWEB), decaying(20), hellaswag={10: 0.27, 20: 0.28})
    reported_run(ctx.runs_dir / "shk", TrainConfig(data="shakespeare"), decaying(20))
    out = refresh(tab, ctx, "shk")
    assert list(reference_traces(out[tab["loss_plot"]]).values()) == [(INIT_LOSS, INIT_LOSS)]
    assert out[tab["hellaswag_plot"]]["visible"] is False

    out = refresh(tab, ctx, "edu")
    lines = reference_traces(out[tab["loss_plot"]])
    assert list(lines.values()) == [(INIT_LOSS,) * 2, (GPT2_124M_FINEWEB_EDU_VAL_LOSS,) * 2]
    shown = out[tab["hellaswag_plot"]]
    assert shown["visible"] is True and list(shown["value"].data[0].y) == pytest.approx([0.27, 0.28])

    both = refresh(tab, ctx, "shk", ["edu"])  # comparing: each run's lines, once
    assert len(reference_traces(both[tab["loss_plot"]])) == 2
    curves = [t.name for t in both[tab["hellaswag_plot"]]["value"].data if t.legendgroup != "references"]
    assert curves == ["edu"]


def test_monitor_draws_the_lines_once_a_late_config_appears(tmp_path):
    tab, ctx = built(tmp_path)
    run = ctx.runs_dir / "late"
    reported_run(run, TrainConfig(data=FINEWEB), decaying(5))
    (run / "config.json").rename(tmp_path / "config.json")  # a run still starting: no config yet
    out = refresh(tab, ctx, "late")
    assert reference_traces(out[tab["loss_plot"]]) == {}
    assert tab["loss_plot"] not in refresh(tab, ctx, "late", cache=out[tab["cache"]])  # nothing new: no redraw
    (tmp_path / "config.json").rename(run / "config.json")
    again = refresh(tab, ctx, "late", cache=out[tab["cache"]])
    assert len(reference_traces(again[tab["loss_plot"]])) == 2


# ----- health warnings on the status card ------------------------------------------------------------------------


def card(st_name: str = "r") -> JobStatus:
    return JobStatus(name=st_name, state="running", step=20, total_steps=20)


def test_status_card_shows_the_runs_health_warnings_escaped(tmp_path):
    tab, ctx = built(tmp_path)
    reported_run(ctx.runs_dir / "bad-init", TrainConfig(warmup_steps=2), decaying(20, start=3.0))
    html = refresh(tab, ctx, "bad-init")[tab["status"]]
    expected = health_warnings(records_of(ctx.runs_dir / "bad-init"), warmup_steps=2)
    assert len(expected) == 1 and "first-step loss" in expected[0]
    assert html.count("class='health-warning'") == 1 and expected[0] in html

    # A fine-tune starts from the pretrained model's loss: no first-step warning.
    reported_run(ctx.runs_dir / "tuned", TrainConfig(init_from="gpt2"), decaying(20, start=3.0))
    assert "health-warning" not in refresh(tab, ctx, "tuned")[tab["status"]]

    reported_run(ctx.runs_dir / "nan", TrainConfig(), [*decaying(10), float("nan")])
    assert "NaN or inf at step 11" in refresh(tab, ctx, "nan")[tab["status"]]

    escaped = monitor_tab.status_html(card(), ["loss <b>jumped</b> & more"])
    assert "loss &lt;b&gt;jumped&lt;/b&gt; &amp; more" in escaped and "<b>jumped" not in escaped


def test_a_live_run_going_nan_is_warned_on_the_next_tick(tmp_path):
    """The health check is rate-limited while a run is followed (it reads every record), but a non-finite loss in
    the new records is checked at once."""
    tab, ctx = built(tmp_path)
    run = ctx.runs_dir / "live"
    reported_run(run, TrainConfig(), decaying(10))
    out = refresh(tab, ctx, "live")
    assert "health-warning" not in out[tab["status"]]
    cache = out[tab["cache"]]
    writer = MetricsWriter(run / "metrics.jsonl")
    writer.write("train", step=11, total_steps=12, tokens=704, loss=2.0, lr=1e-3, grad_norm=1.0)
    assert "health-warning" not in refresh(tab, ctx, "live", cache=cache)[tab["status"]]
    writer.write("train", step=12, total_steps=12, tokens=768, loss=float("nan"), lr=1e-3, grad_norm=1.0)
    writer.close()
    assert "NaN or inf at step 12" in refresh(tab, ctx, "live", cache=cache)[tab["status"]]
