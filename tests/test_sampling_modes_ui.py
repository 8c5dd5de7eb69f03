"""The Sampling tab's speed mode picker: each mode reaches core.generation, the status names it, bad input is a
message under the field, and the API's /generate takes the same modes."""

import os
import re
from html import unescape

import gradio as gr
import pytest
import torch

import core.generation
import core.precision
from core.checkpoint import save_checkpoint
from core.config import model_config
from core.decode_modes import MODES, decoder_for
from core.generation import SamplingConfig, generate
from core.model import GPT
from core.weights import load_weights
from playground import sampling_tab
from playground.tab import AppContext

COMPILED = [m for m in MODES if m.endswith("compiled")]
slow_compile = pytest.mark.skipif(
    not os.environ.get("RUN_COMPILE_TESTS"), reason="torch.compile on CPU takes minutes here; set RUN_COMPILE_TESTS=1"
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    save_checkpoint(runs / "micro-run", 10, GPT(model_config("micro")), state={})
    save_checkpoint(runs / "no-compiler", 10, GPT(model_config("micro")), state={})  # its own model: never compiled
    ctx = AppContext.for_runs_dir(runs)
    with gr.Blocks():
        tab = sampling_tab.build(ctx)
    return tab, ctx, runs


def _generate(ui, mode, temperature=0.9, samples=2, run="micro-run", prompt="Hello there", seed=123):
    """The Generate button's last (samples, status) for these settings in `mode`."""
    tab, ctx, _ = ui
    outs = list(
        sampling_tab.generate_samples(tab, ctx, run, prompt, temperature, 0, 1.0, 16, seed, "", False, samples, mode)
    )
    html = next(o[tab["output"]] for o in reversed(outs) if tab["output"] in o)
    texts = [unescape(t) for t in re.findall(r'<span class="completion">(.*?)</span>', html, re.S)]
    return texts, outs[-1][tab["status"]]


def _core(ui, mode, temperature=0.9, samples=2, run="micro-run", prompt="Hello there", seed=123):
    """What core.generation makes of the same checkpoint, loaded independently of the app's model cache."""
    model = load_weights(ui[2] / run)[0]
    cfg = SamplingConfig(
        max_new_tokens=16, temperature=temperature, seed=seed, stop_at_eot=False, num_samples=samples, mode=mode
    )
    return generate(model, prompt, cfg)


@pytest.mark.parametrize("mode", [pytest.param(m, marks=slow_compile) if m in COMPILED else m for m in MODES])
def test_each_mode_gives_cores_text_and_is_named_in_the_status(ui, mode, monkeypatch):
    ran = []  # the modes generation really decoded in (core's own output could agree with the default mode's)
    monkeypatch.setattr(core.generation, "decoder_for", lambda m, md="default": ran.append(md) or decoder_for(m, md))
    texts, status = _generate(ui, mode)
    assert set(ran) == {mode}
    assert len(texts) == 2 and all(texts)
    assert texts == _core(ui, mode)
    assert status.startswith("Done") and f"mode **{mode}**" in status
    assert "compiling was not possible" not in status  # the compiled modes really compiled


def test_the_picker_offers_every_mode_with_what_it_trades(ui):
    tab = ui[0]
    choices = tab["mode"].choices
    assert [value for _, value in choices] == list(MODES) and tab["mode"].value == "default"
    assert all(label.startswith(f"{value} — ") for label, value in choices)
    labels = {value: label for label, value in choices}
    assert "compiles" in labels["compiled"] and "weight-only int8" in labels["int8"]


def test_the_hint_says_what_this_machine_does_with_bf16(monkeypatch):
    monkeypatch.setattr(core.precision, "cpu_bf16_support", lambda: None)
    assert "no AMX or AVX-512 BF16" in sampling_tab.mode_hint(torch.device("cpu"))
    monkeypatch.setattr(core.precision, "cpu_bf16_support", lambda: "AMX")
    assert "This CPU has AMX" in sampling_tab.mode_hint(torch.device("cpu"))


def test_the_hint_names_this_device_once_the_tab_opens_and_after_a_generation(ui):
    """The page is built without torch, so the picker's first hint has no device line; opening the tab adds it,
    and a generation (which resets every field's hint) keeps it."""
    tab, ctx, _ = ui
    device_hint = sampling_tab.mode_hint(sampling_tab.CACHE.device)
    assert tab["mode"].info == sampling_tab.MODE_HINT and device_hint != sampling_tab.MODE_HINT
    assert device_hint.startswith("How the model runs. ") and device_hint.endswith(" always uses default.")
    opened = [step for step in tab.on_open if step.outputs == [tab["mode"]]]
    assert len(opened) == 1 and opened[0].fn()[tab["mode"]]["info"] == device_hint
    outs = list(sampling_tab.generate_samples(tab, ctx, "micro-run", "Hi", 0.9, 0, 1.0, 2, 1, "", False, 1, "default"))
    assert outs[0][tab["mode"]]["info"] == device_hint


def test_an_unknown_mode_is_a_message_under_the_picker(ui):
    tab, ctx, _ = ui
    (out,) = sampling_tab.generate_samples(tab, ctx, "micro-run", "x", 1.0, 0, 1.0, 3, 1, "", True, 1, "fp8")
    assert out[tab["status"]].startswith("⚠ speed mode must be one of default, compiled")
    assert out[tab["mode"]]["elem_classes"] == ["field-error"] and "fp8" in out[tab["mode"]]["info"]
    assert tab["output"] not in out  # nothing generated, the samples shown stay


def test_a_compiler_failure_is_one_line_in_the_status(ui, monkeypatch):
    """Compiling is unavailable (no compiler, say): the step runs uncompiled, core's text, and the status says why."""

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nlong compiler log line 2\nline 3")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    texts, status = _generate(ui, "compiled", temperature=0, samples=1, run="no-compiler")
    assert texts == _core(ui, "default", temperature=0, samples=1, run="no-compiler")
    note = "compiling was not possible here (RuntimeError: no C++ compiler found): the step ran uncompiled"
    assert note in status and "line 2" not in status
