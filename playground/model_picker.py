"""The "Model / checkpoint" picker of the Sampling and Attention tabs: a dropdown of the checkpoints, a Refresh
button and, while there is no model yet, a note saying how to get one.

A tab lays the picker out with `layout_model_picker` (components "model", "model_refresh", "model_missing",
"model_picked") and wires it with `wire_model_picker`. The list is refreshed on every page load (the models there
are then, never one loaded), when the tab is opened and on ⟳: runs may have appeared since. Until the person picks
a model, the picker follows the newest one (a run training now first); what they picked stays while it exists.
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
    picked = gr.State(False)  # whether the person picked the model on this page (else: follow the newest)
    return {"model": model, "model_refresh": refresh, "model_missing": note, "model_picked": picked}


def refresh_model_choices(tab: Tab, ctx: AppContext, current: str | None, picked: bool = True) -> dict[Any, Any]:
    """The checkpoints as they are now, with fresh labels; a picked one stays if it still exists, else the newest."""
    choices, value, message = refresh_choices(ctx.jobs, current if picked else None)
    return {
        tab["model"]: gr.update(choices=choices, value=value),
        tab["model_missing"]: gr.update(value=message, visible=bool(message)),
    }


def show_newest_models(tab: Tab, ctx: AppContext) -> dict[Any, Any]:
    """On page load: the checkpoints there are now, the newest picked (the page's first value dates from app start)."""
    return refresh_model_choices(tab, ctx, None, picked=False)


def mark_model_picked(tab: Tab, ctx: AppContext) -> dict[Any, Any]:
    """The person picked a model: refreshes keep it from now on."""
    return {tab["model_picked"]: True}


def wire_model_picker(tab: Tab, ctx: AppContext) -> Dependency:
    """Refresh the list on page load, on ⟳ and (as one of the tab's on_open steps) when the tab is opened; returns
    the ⟳ event, so the tab can chain its own `.then(...)` on it."""
    refresh = bind(refresh_model_choices, tab, ctx)
    inputs, outputs = [tab["model"], tab["model_picked"]], [tab["model"], tab["model_missing"]]
    tab["model"].input(bind(mark_model_picked, tab, ctx), None, tab["model_picked"], queue=False)
    # gr.on without triggers and without inputs runs on page load only: lists, loads no model.
    gr.on(None, bind(show_newest_models, tab, ctx), None, outputs, show_progress="hidden")
    tab.on_open.append(OnOpen(refresh, inputs, outputs))
    return tab["model_refresh"].click(refresh, inputs, outputs)
