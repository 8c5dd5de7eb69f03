"""The "Model / checkpoint" picker of the Sampling and Attention tabs: a dropdown of the checkpoints, a Refresh
button and, while there is no model yet, a note saying how to get one."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.events import Dependency

from playground.model_cache import refresh_choices


def model_picker(runs_dir: Path, prefix: str) -> tuple[gr.Dropdown, list[Dependency]]:
    """Build the picker (elem_ids `<prefix>-model`, `-refresh`, `-missing`) inside the current tab.

    Returns the dropdown and the events that refresh its choices (the Refresh button, and opening the tab, since
    runs may have appeared since the page was loaded), so the tab can chain its own `.then(...)` on them.
    """
    choices, value, missing = refresh_choices(runs_dir, None)
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices, value=value, label="Model / checkpoint", scale=6, elem_id=f"{prefix}-model")
        refresh = gr.Button("⟳ Refresh", scale=0, min_width=110, elem_id=f"{prefix}-refresh")
    note = gr.Markdown(missing, visible=bool(missing), elem_id=f"{prefix}-missing", elem_classes=["status-card"])

    def on_refresh(current):
        new_choices, new_value, message = refresh_choices(runs_dir, current)
        return gr.update(choices=new_choices, value=new_value), gr.update(value=message, visible=bool(message))

    parent = gr.context.get_render_context()
    opened = parent.select if isinstance(parent, gr.Tab) else gr.context.Context.root_block.load
    return model, [refresh.click(on_refresh, model, [model, note]), opened(on_refresh, model, [model, note])]
