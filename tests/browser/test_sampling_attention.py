"""The Sampling and Attention tabs in a real Chromium against a real `python app.py`, on a real checkpoint."""

from __future__ import annotations

import re
import time

import pytest
import torch
from playwright.sync_api import expect

from core.checkpoint import save_checkpoint
from core.config import model_config
from core.generation import SamplingConfig, generate
from core.model import GPT
from core.weights import load_weights
from playground.sampling_tab import DEFAULT_PROMPT
from tests.helpers import click_quickly


@pytest.fixture
def runs_dir(tmp_path):
    torch.manual_seed(0)
    model = GPT(model_config("micro", n_head=4))
    with torch.no_grad():  # sharper attention than the default init, so heads differ visibly
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20)
    runs = tmp_path / "runs"
    save_checkpoint(runs / "micro-run", 40, model, state={})
    return runs


def _open_tab(page, url, name):
    page.goto(url)
    page.get_by_role("tab", name=name).click()


def _set_number(page, selector, value):
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _pick_mode(page, mode):
    page.locator("#sample-mode input").click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(mode)} —")).click()
    expect(page.locator("#sample-mode input")).to_have_value(re.compile(f"^{re.escape(mode)} —"))


def _output_text(page):
    return (
        page.locator("#sample-output .completion").first.inner_text()
        if page.locator("#sample-output .completion").count()
        else ""
    )


def test_sampling_streams_and_stops(app_server, runs_dir, page, screenshot_dir):
    url = app_server(runs_dir)
    _open_tab(page, url, "Sampling")
    expect(page.locator("#sample-model input")).to_have_value(re.compile("^micro-run"))
    page.locator("#sample-chart .js-plotly-plot").wait_for()  # the next-token view drew on load

    # A short run finishes and reports its speed.
    _set_number(page, "#sample-max-new", 20)
    page.locator("#sample-generate").click()
    page.locator("#sample-status", has_text="Done").wait_for()
    status = page.locator("#sample-status").inner_text()
    assert "tokens/s" in status and "first token after" in status and "seed 1337" in status
    done_text = _output_text(page)
    assert done_text and "mode default" in status

    # The int8 speed mode: the status names it and the text is what core.generation makes in that mode.
    _pick_mode(page, "int8")
    page.locator("#sample-generate").click()
    page.locator("#sample-status", has_text="mode int8").filter(has_text="Done").wait_for()
    model = load_weights(runs_dir / "micro-run")[0]
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.8, top_k=50, seed=1337, mode="int8")
    (expected,) = generate(model, DEFAULT_PROMPT, cfg)
    assert page.locator("#sample-output .completion").first.text_content() == expected.replace("\r", "\n")
    _pick_mode(page, "default")

    # A long run streams: the text grows between two reads, then Stop ends it for good. Four samples of up
    # to 2048 tokens take far longer than this test waits, even on a fast machine.
    _set_number(page, "#sample-max-new", 2048)
    _set_number(page, "#sample-n", 4)
    expect(page.locator("#sample-max-new input[type=number]")).to_have_value("2048")
    page.locator("#sample-generate").click()
    page.locator("#sample-status", has_text="Generating").wait_for()
    first = _output_text(page)
    deadline = time.monotonic() + 20
    while (second := _output_text(page)) == first or len(second) <= len(first):
        assert time.monotonic() < deadline, "the output did not grow while generating"
        time.sleep(0.2)
    assert second.startswith(first[: max(0, len(first) - 2)])  # grows at the end (minus a held-back char)
    page.locator("#sample-stop").click()
    status = page.locator("#sample-status")
    status.filter(has_text=re.compile("Stopped|Done")).wait_for()
    assert status.inner_text().startswith("Stopped"), status.inner_text()
    assert page.locator("#sample-output .sample").count() == 4
    stopped = _output_text(page)
    time.sleep(1.5)
    assert _output_text(page) == stopped, "text kept coming after Stop"

    # The chart follows the sliders: top-k 3 leaves three tokens to sample from.
    _set_number(page, "#sample-top-k", 3)
    page.locator("#sample-chart-note", has_text="**3**").or_(
        page.locator("#sample-chart-note", has_text="3 of 50,257")
    ).first.wait_for()
    page.screenshot(path=str(screenshot_dir / "sampling.png"), full_page=True)

    # A checkpoint saved while the app runs shows up after ⟳ Refresh.
    save_checkpoint(runs_dir / "late-run", 5, GPT(model_config("micro")), state={})
    page.locator("#sample-refresh").click()
    page.locator("#sample-model input").click()
    page.get_by_role("option", name=re.compile("^late-run")).wait_for()


def _heatmap_state(page):
    return page.evaluate(
        """() => {
          const plot = document.querySelector('#attn-heatmap .js-plotly-plot');
          return plot && plot.data && plot.data[0] && plot.data[0].z
            ? {title: plot.layout.title.text, z: JSON.stringify(plot.data[0].z)} : null;
        }"""
    )


def _wait_heatmap_change(page, before, timeout=60, title=None):
    """The heatmap's state once it differs from `before` (and, if given, shows `title`)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _heatmap_state(page)
        if state and state != before and title in (None, state["title"]):
            return state
        assert time.monotonic() < deadline, f"heatmap did not change from {before and before['title']} to {title}"
        time.sleep(0.2)


def test_attention_heatmap_follows_layer_and_head(app_server, runs_dir, page, screenshot_dir):
    url = app_server(runs_dir)
    _open_tab(page, url, "Attention")
    expect(page.locator("#attn-model input")).to_have_value(re.compile("^micro-run"))
    page.locator("#attn-run").click()
    first = _wait_heatmap_change(page, None)
    assert first["title"] == "Layer 0, head 0"
    assert page.locator("#attn-chips .chip").count() > 10
    assert page.locator("#attn-grid .cell").count() == 2 * 4

    _set_number(page, "#attn-head", 2)  # the head selector
    second = _wait_heatmap_change(page, first)
    assert second["title"] == "Layer 0, head 2" and second["z"] != first["z"]

    # The overview grid selects too; of two quick clicks the last one wins.
    click_quickly(page, "#attn-grid", ['.cell[data-layer="0"][data-head="1"]', '.cell[data-layer="1"][data-head="3"]'])
    third = _wait_heatmap_change(page, second, title="Layer 1, head 3")
    assert page.locator("#attn-layer input[type=number]").input_value() == "1"
    assert page.locator("#attn-head input[type=number]").input_value() == "3"

    page.locator("#attn-average input").check()
    fourth = _wait_heatmap_change(page, third)
    assert fourth["title"] == "Layer 1, mean over 4 heads"

    # Too long a text is cut to the model's window (micro: 32 tokens), with a note saying so.
    page.locator("#attn-text textarea").fill(" word" * 50)
    page.locator("#attn-run").click()
    page.locator("#attn-note", has_text="only the first").wait_for()
    # The induction probe: random tokens repeated, sized to fit the window (1 + 2 x 15 = 31 tokens).
    page.locator("#attn-example").click()
    page.locator("#attn-note", has_text="31 tokens").wait_for()
    text = page.locator("#attn-text textarea").input_value()
    assert text.startswith("<|endoftext|>") and text[13:].strip()
    page.get_by_label("Induction score").check()
    page.locator("#attn-summary-note", has_text="Highest").wait_for()
    page.screenshot(path=str(screenshot_dir / "attention.png"), full_page=True)
