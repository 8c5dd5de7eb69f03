"""The Gradio app: tabs Train, Monitor, Sampling, Attention, Models over one runs folder."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from playground import attention_tab, models_tab, monitor_tab, sampling_tab, train_tab

HEADER = """
# GPT-2 Playground
Train a GPT-2 from scratch, watch it learn, look inside it and sample from it. Every button runs a command you can also
type: the Train tab shows it.
"""


def build_ui(runs_dir: str | Path) -> gr.Blocks:
    runs_dir = Path(runs_dir).expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="GPT-2 Playground") as demo:
        gr.Markdown(HEADER, elem_id="app-header")
        with gr.Tabs(selected="train") as tabs:
            with gr.Tab("Train", id="train") as train_tab_item:
                train = train_tab.build_tab(runs_dir)
            with gr.Tab("Monitor", id="monitor") as monitor_tab_item:
                monitor = monitor_tab.build_tab(runs_dir)
            with gr.Tab("Sampling", id="sampling"):
                sampling_tab.build_tab(runs_dir)
            with gr.Tab("Attention", id="attention"):
                attention_tab.build_tab(runs_dir)
            with gr.Tab("Models", id="models") as models_tab_item:
                refresh_models, models_inputs, models_outputs = models_tab.build_tab(runs_dir)

        # A launched (or resumed) run opens in Monitor, which follows it live.
        train.launched.change(
            monitor.follow, train.launched, [monitor.run, monitor.compare, monitor.timer], queue=False
        ).then(lambda: gr.Tabs(selected="monitor"), None, tabs, queue=False)
        monitor_tab_item.select(monitor.refresh_choices, monitor.run, [monitor.run, monitor.compare]).then(
            monitor.refresh, monitor.inputs, monitor.outputs, show_progress="hidden"
        )
        models_tab_item.select(refresh_models, models_inputs, models_outputs)
        train_tab_item.select(train.refresh_choices, train.run_picker, [train.run_picker, train.init_from])
        demo.load(monitor.refresh, monitor.inputs, monitor.outputs, show_progress="hidden")
    return demo
