"""The Gradio app: tabs Train, Monitor, Sampling, Attention, Inside, Models over one runs folder, and the named API.

The page is built and served without torch (about 1.5 s to import on a small CPU, more than building the page): the
tabs import the core modules that load it (MODEL_MODULES) inside the callbacks that run a model, and app.py imports
them in the background once the server answers (warm_up). tests/test_app_start.py holds the tabs to that.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from core.paths import UNRESTRICTED, AccessPolicy
from playground import api, attention_tab, inside_tab, models_tab, monitor_tab, sampling_tab, train_tab, url_state
from playground.tab import AppContext, Tab

# What the tabs import inside their callbacks: the model code, which loads torch, safetensors and the rest.
MODEL_MODULES = ("core.checkpoint", "core.generation", "core.probe", "core.hf", "core.precision")
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
        # Opening Sampling loads a model (for its next-token chart): these run when the tab is opened, never on
        # page load, so a person who only trains never pays for a model in memory.
        opened_lazily: list[tuple[gr.Tab, Tab]] = []
        with gr.Tabs(selected="train") as tabs:
            with gr.Tab("Train", id="train") as item:
                train = train_tab.build(ctx)
                opened.append((item, train))
            with gr.Tab("Monitor", id="monitor") as item:
                monitor = monitor_tab.build(ctx)
                opened.append((item, monitor))
            with gr.Tab("Sampling", id="sampling") as item:
                sampling = sampling_tab.build(ctx)
                opened_lazily.append((item, sampling))
            with gr.Tab("Attention", id="attention") as item:
                opened_lazily.append((item, attention_tab.build(ctx)))
            with gr.Tab("Inside", id="inside") as item:
                inside = inside_tab.build(ctx)
                opened_lazily.append((item, inside))
            with gr.Tab("Models", id="models") as item:
                opened.append((item, models_tab.build(ctx)))

        # The address names the tab and the run (url_state); the tabs' load steps follow the step that reads it.
        tab_ids = ["train", "monitor", "sampling", "attention", "inside", "models"]
        loaded = url_state.wire(demo, tabs, tab_ids, monitor, ctx)
        for item, tab in opened:
            wire_on_open(item.select, tab)
            wire_on_open(loaded.then, tab)
        for item, tab in opened_lazily:
            wire_on_open(item.select, tab)
        inside_tab.connect_branch(inside, sampling["prompt"], tabs)  # branching from a token continues in Sampling
        # A launched (or resumed) run opens in Monitor, which follows it live.
        monitor_tab.follow(monitor, ctx, train["launched"]).then(
            lambda: gr.Tabs(selected=monitor.id), None, tabs, queue=False
        )
        api.register(ctx)  # the named endpoints of scripts and notebooks (docs/api.md)
    api.hide_ui_events(demo)  # ... and only they show on the API page
    return demo


def warm_up() -> threading.Thread:
    """Import MODEL_MODULES in a background thread, so that the first click that runs a model does not wait for
    torch. Call it once the server answers: the page is served first."""

    def load() -> None:
        for name in MODEL_MODULES:
            try:
                importlib.import_module(name)
            except Exception as e:  # a broken install: the callback that needs the module says so in the UI
                print(f"warning: could not load {name} ahead of use ({type(e).__name__}: {e})", file=sys.stderr)
                return

    thread = threading.Thread(target=load, name="warm-up", daemon=True)
    thread.start()
    return thread
