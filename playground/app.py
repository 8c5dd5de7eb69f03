"""The Gradio app: tabs Train, Monitor, Sampling, Attention, Models over one runs folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from core.paths import UNRESTRICTED, AccessPolicy
from playground import attention_tab, models_tab, monitor_tab, sampling_tab, train_tab, url_state
from playground.tab import AppContext, Tab

HEADER = """
# GPT-2 Playground
Train a GPT-2 from scratch, watch it learn, look inside it and sample from it. Every button runs a command you can also
type: the Train tab shows it.
"""


def wire_on_open(trigger: Callable[..., Any], tab: Tab) -> None:
    """Run the tab's on_open steps, one after the other, on `trigger` (a gr.Tab's select, or the page's load)."""
    event = None
    for step in tab.on_open:
        start = trigger if event is None else event.then
        event = start(step.fn, list(step.inputs), list(step.outputs), show_progress="hidden")


def build_ui(runs_dir: str | Path, access: AccessPolicy = UNRESTRICTED) -> gr.Blocks:
    """The app over one runs folder; `access` limits the local paths and downloads it may use (exposed apps)."""
    ctx = AppContext.for_runs_dir(runs_dir, access)
    with gr.Blocks(title="GPT-2 Playground") as demo:
        gr.Markdown(HEADER, elem_id="app-header")
        opened: list[tuple[gr.Tab, Tab]] = []
        with gr.Tabs(selected="train") as tabs:
            with gr.Tab("Train", id="train") as item:
                train = train_tab.build(ctx)
                opened.append((item, train))
            with gr.Tab("Monitor", id="monitor") as item:
                monitor = monitor_tab.build(ctx)
                opened.append((item, monitor))
            with gr.Tab("Sampling", id="sampling"):
                sampling_tab.build_tab(ctx.runs_dir)  # wires its own tab-open events (model picker)
            with gr.Tab("Attention", id="attention"):
                attention_tab.build_tab(ctx.runs_dir)
            with gr.Tab("Models", id="models") as item:
                opened.append((item, models_tab.build(ctx)))

        # The address names the tab and the run (url_state); the tabs' load steps follow the step that reads it.
        loaded = url_state.wire(demo, tabs, ["train", "monitor", "sampling", "attention", "models"], monitor, ctx)
        for item, tab in opened:
            wire_on_open(item.select, tab)
            wire_on_open(loaded.then, tab)
        # A launched (or resumed) run opens in Monitor, which follows it live.
        monitor_tab.follow(monitor, ctx, train["launched"]).then(
            lambda: gr.Tabs(selected=monitor.id), None, tabs, queue=False
        )
    return demo
