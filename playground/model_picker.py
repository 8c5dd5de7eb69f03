"""The "Model / checkpoint" picker of the Sampling and Attention tabs: a dropdown of the checkpoints, a Refresh
button and, while there is no model yet, a note saying how to get one.

A tab lays the picker out with `layout_model_picker` (components "model", "model_refresh", "model_missing")
and wires it with `wire_model_picker`, which also refreshes the list when the tab is opened: runs may have
appeared since the page was loaded.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.events import Dependency

from playground.model_cache import refresh_choices
from playground.tab import AppContext, OnOpen, Tab, bind


def layout_model_picker(ctx: AppContext, prefix: str) -> dict[str, Any]:
    """The picker's components (elem_ids `<prefix>-model`, `-refresh`, `-missing`), with the models there are now."""
    choices, value, missing = refresh_choices(ctx.jobs, None)
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices, value=value, label="Model / checkpoint", scale=6, elem_id=f"{prefix}-model")
        refresh = gr.Button("⟳ Refresh", scale=0, min_width=110, elem_id=f"{prefix}-refresh")
    note = gr.Markdown(missing, visible=bool(missing), elem_id=f"{prefix}-missing", elem_classes=["status-card"])
    return {"model": model, "model_refresh": refresh, "model_missing": note}


def refresh_model_choices(tab: Tab, ctx: AppContext, current: str | None) -> dict[Any, Any]:
    """The checkpoints as they are now; the picked one stays if it still exists, else the newest."""
    choices, value, message = refresh_choices(ctx.jobs, current)
    return {
        tab["model"]: gr.update(choices=choices, value=value),
        tab["model_missing"]: gr.update(value=message, visible=bool(message)),
    }


def wire_model_picker(tab: Tab, ctx: AppContext) -> Dependency:
    """Refresh the list on ⟳ and (as the tab's first on_open step) when the tab is opened; returns the ⟳ event,
    so the tab can chain its own `.then(...)` on it."""
    refresh = bind(refresh_model_choices, tab, ctx)
    outputs = [tab["model"], tab["model_missing"]]
    tab.on_open.append(OnOpen(refresh, [tab["model"]], outputs))
    return tab["model_refresh"].click(refresh, tab["model"], outputs)
