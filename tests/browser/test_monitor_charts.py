"""Issue 13 in a real Chromium against a real `python app.py`: Monitor draws the reference lines a run's data calls for,
a HellaSwag chart beside the loss only for a run that logged HellaSwag, and the run's health warnings on its card."""

from __future__ import annotations

import json

import pytest

from core.config import TrainConfig
from core.references import (
    GPT2_124M_FINEWEB_EDU_VAL_LOSS,
    HELLASWAG_CHANCE,
    HELLASWAG_GPT2_124M,
    HELLASWAG_GPT3_124M,
    INIT_LOSS,
)
from tests.browser.test_ux_train_monitor import pick_run
from tests.test_monitor_references import FINEWEB, decaying, reported_run

pytestmark = pytest.mark.browser

TRACES = """chart => { const d = document.querySelector('#' + chart + ' .js-plotly-plot');
    return d && d.data ? JSON.stringify(d.data.map(t => [t.name, t.legendgroup || '', t.y])) : null; }"""


def traces(page, chart: str) -> list[tuple[str, str, list[float]]]:
    """(name, legend group, y values) of every trace the chart draws, once it has drawn some."""
    page.wait_for_function(f"() => ({TRACES})('{chart}') !== null")
    return [tuple(t) for t in json.loads(page.evaluate(TRACES, chart))]


def test_reference_lines_hellaswag_chart_and_health_warnings(app_server, page, tmp_path, screenshot_dir):
    runs = tmp_path / "runs"
    scores = {100: 0.262, 200: 0.281, 300: 0.297}
    reported_run(runs / "edu", TrainConfig(data=FINEWEB, preset="micro"), decaying(300), hellaswag=scores)
    reported_run(runs / "shk", TrainConfig(preset="micro", warmup_steps=10), decaying(50, start=3.0))
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-status [data-state]")

    pick_run(page, "monitor-run", "edu")
    page.wait_for_selector("#monitor-status:has-text('edu')")
    page.wait_for_selector("#hellaswag-plot .js-plotly-plot")
    hellaswag = traces(page, "hellaswag-plot")
    assert hellaswag[0][0] == "acc_norm" and hellaswag[0][2] == pytest.approx(list(scores.values()))
    lines = {y[0] for _, group, y in hellaswag if group == "references"}
    assert lines == {HELLASWAG_GPT2_124M, HELLASWAG_GPT3_124M, HELLASWAG_CHANCE}
    page.wait_for_function("() => document.querySelector('#loss-plot .js-plotly-plot')?.data?.length > 3")
    loss_lines = [(name, y) for name, group, y in traces(page, "loss-plot") if group == "references"]
    assert [y for _, y in loss_lines] == [[INIT_LOSS] * 2, [GPT2_124M_FINEWEB_EDU_VAL_LOSS] * 2]
    assert "ln(50257) = 10.82" in loss_lines[0][0]
    # The labels are written on the chart itself, not only in the legend.
    written = page.locator("#loss-plot .annotation-text").all_text_contents()
    assert written == [name for name, _ in loss_lines]
    assert page.locator("#monitor-status .health-warning").count() == 0
    page.get_by_label("Log scale (loss, grad norm)").check()
    page.wait_for_function(
        "() => document.querySelector('#loss-plot .js-plotly-plot')?._fullLayout.yaxis.type === 'log'"
    )
    assert [y for name, group, y in traces(page, "loss-plot") if group == "references"] == [y for _, y in loss_lines]
    page.screenshot(path=str(screenshot_dir / "monitor-references.png"), full_page=True)

    pick_run(page, "monitor-run", "shk")  # on Shakespeare: no GPT-2 line, no HellaSwag, a first loss far from ln(V)
    page.wait_for_selector("#monitor-status:has-text('shk')")
    page.locator("#hellaswag-plot").wait_for(state="hidden")
    warning = page.locator("#monitor-status .health-warning")
    warning.wait_for()
    assert "first-step loss 4.00" in warning.text_content()
    page.wait_for_function(
        """() => { const d = document.querySelector('#loss-plot .js-plotly-plot');
                   return d && d.data && d.data.filter(t => t.legendgroup === 'references').length === 1; }"""
    )
    assert [y for _, group, y in traces(page, "loss-plot") if group == "references"] == [[INIT_LOSS] * 2]
