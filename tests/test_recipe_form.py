"""The Train tab's recipe picker: the form it fills gives exactly core.recipes' config, and the command shows it."""

from __future__ import annotations

import dataclasses
import shlex

import gradio as gr
import pytest

from core.cli import config_to_flags
from core.recipes import apply_recipe, describe_duration, detect_device, expected_wall_time, recipe_names
from playground import train_tab
from playground.recipe_form import NO_RECIPE
from playground.tab import AppContext


@pytest.fixture
def tab_ctx(tmp_path):
    ctx = AppContext.for_runs_dir(tmp_path / "runs")
    with gr.Blocks():
        tab = train_tab.build(ctx)
    return tab, ctx


def picked_form(tab, out):
    """The form's values after the pick: the defaults, then what the callback filled in (as the browser would)."""
    filled = {name: out[tab[name]] for name in train_tab.FIELDS if tab[name] in out}
    return {**train_tab.DEFAULTS, **filled}


@pytest.mark.parametrize("name", recipe_names())
def test_picking_a_recipe_gives_the_recipes_config_field_by_field(tab_ctx, name):
    tab, ctx = tab_ctx
    out = train_tab.pick_recipe(tab, ctx, name, "cpu")
    extra = out[tab["recipe_extra"]]
    values = picked_form(tab, out)
    cfg = train_tab.form_to_config({**values, "recipe_extra": extra}, ctx.runs_dir)
    device = detect_device("cpu")
    expected = apply_recipe(name, device=device)
    for field in dataclasses.fields(expected):
        if field.name in ("runs_dir", "device"):  # the form names its runs folder and its device ("auto" in core)
            continue
        assert getattr(cfg, field.name) == getattr(expected, field.name), field.name
    assert cfg.device == "cpu" and cfg.runs_dir == str(ctx.runs_dir)
    when = describe_duration(expected_wall_time(expected, device))
    assert f"Expected wall time on {device.describe()}: {when}" in out[tab["recipe_md"]]

    # The preview (what Launch runs) carries the recipe's values, also those without a field of their own.
    preview = train_tab.preview_form(tab, ctx, *[values[n] for n in train_tab.FIELDS], None, extra)
    command = preview[tab["command"]]
    terminal = shlex.split(command.split("# The same launch from a terminal:\n")[1])
    assert terminal[terminal.index("launch") + 1 :] == config_to_flags(cfg)
    assert preview[tab["message"]] == ""


def test_shakespeare_recipe_fills_fields_and_carries_the_rest(tab_ctx):
    tab, ctx = tab_ctx
    out = train_tab.pick_recipe(tab, ctx, "shakespeare-cpu", "cpu-ddp")  # the recipe is one process: CPU · 1
    values = picked_form(tab, out)
    assert (values["preset"], values["data_source"], values["device"]) == ("tiny", "shakespeare", "cpu")
    assert (values["max_steps"], values["lr"], values["min_lr"], values["seq_len"]) == (600, 3e-3, 3e-4, 128)
    assert out[tab["recipe_extra"]] == {"n_layer": 6, "eval_batches": 8, "keep_last": 2, "sample_tokens": 96}
    assert "Also sets n_layer 6, eval_batches 8" in out[tab["recipe_md"]]
    hint = train_tab.model_hint({**values, "recipe_extra": out[tab["recipe_extra"]]}, ctx.runs_dir, ctx.access)
    assert hint.startswith("tiny with 7.64M parameters · 6 layers")

    # the form stays editable: a changed field wins, the carried values stay
    edited = {**values, "max_steps": 50, "recipe_extra": out[tab["recipe_extra"]]}
    cfg = train_tab.form_to_config(edited, ctx.runs_dir)
    assert (cfg.max_steps, cfg.n_layer, cfg.keep_last) == (50, 6, 2)

    # None (custom) keeps the form and drops the carried values
    cleared = train_tab.pick_recipe(tab, ctx, NO_RECIPE, "cpu")
    assert cleared == {tab["recipe_md"]: "", tab["recipe_extra"]: {}}
    assert train_tab.form_to_config(values, ctx.runs_dir).n_layer is None


def test_gpt2_recipe_fills_the_streamed_dataset_fields(tab_ctx):
    tab, ctx = tab_ctx
    values = picked_form(tab, train_tab.pick_recipe(tab, ctx, "gpt2-124m-fineweb", "cpu"))
    assert (values["data_source"], values["hf_dataset"], values["hf_config"]) == (
        "hf",
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
    )
    assert (values["hf_token_budget"], values["total_batch_tokens"], values["warmup_steps"]) == (
        10_000_000_000,
        524_288,
        715,
    )


def test_an_unknown_recipe_is_one_line(tab_ctx):
    tab, ctx = tab_ctx
    out = train_tab.pick_recipe(tab, ctx, "no-such-recipe", "cpu")
    assert out[tab["recipe_md"]].startswith("⚠ Recipe not applied: unknown recipe 'no-such-recipe'")
    assert out[tab["recipe_extra"]] == {}
