"""The Sampling tab's callbacks (form -> core.generation, streaming, next-token view), the Attention tab's
callbacks, and the model list/cache they share, on real checkpoints written to a temporary runs folder."""

import json
import os
import re
import time
from html import unescape

import gradio as gr
import numpy as np
import psutil
import pytest
import torch

from core.attention import attention_maps, previous_token_scores, repeated_random_tokens
from core.checkpoint import save_checkpoint
from core.config import ConfigError, model_config
from core.generation import SamplingConfig, filter_probs, generate, prompt_tokens, stream
from core.jobs import Jobs
from core.model import GPT
from core.tokenizer import decode, encode
from playground import attention_tab, figures, model_picker, sampling_tab
from playground.app import build_ui
from playground.model_cache import CACHE, ModelCache, ModelError, list_models, refresh_choices, resolve_choice
from playground.model_picker import refresh_model_choices
from playground.sampling_tab import build_config, run_generation
from playground.tab import AppContext


def _save(runs, name, step, seed=0, **state):
    torch.manual_seed(seed)
    return save_checkpoint(runs / name, step, GPT(model_config("micro")), state=state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    _save(runs, "older", 10, seed=1)
    time.sleep(0.02)
    _save(runs, "micro-run", 10, seed=2)
    _save(runs, "micro-run", 20, seed=3)
    (runs / "empty-run").mkdir()  # a run without checkpoints is not offered
    return runs


def _built(runs_dir, module):
    """A tab built for real (inside Blocks) over runs_dir, and its context."""
    ctx = AppContext.for_runs_dir(runs_dir)
    with gr.Blocks():
        tab = module.build(ctx)
    return tab, ctx


@pytest.fixture(scope="module")
def sampling(runs):
    return _built(runs, sampling_tab)


@pytest.fixture(scope="module")
def attention(runs):
    return _built(runs, attention_tab)


def generate_callback(ui, *args):
    """The Generate button's stream as (samples HTML or None when left unchanged, status) pairs."""
    tab, ctx = ui
    for out in sampling_tab.generate_samples(tab, ctx, *args):
        yield out.get(tab["output"]), out[tab["status"]]


def stop_callback(ui):
    sampling_tab.stop_generation(*ui, None)  # the Stop button of the same (here: local) session


def preview_callback(ui, *args):
    """The next-token view as (figure, note, chips); the figure and chips are None when left unchanged."""
    tab, ctx = ui
    out = sampling_tab.show_next_token(tab, ctx, *args)
    return out.get(tab["chart"]), out[tab["chart_note"]], out.get(tab["chips"])


def show_callback(ui, *args):
    """Show attention's outputs in SHOW_OUTPUTS order (None for those left unchanged)."""
    tab, ctx = ui
    out = attention_tab.show_attention(tab, ctx, *args)
    return [out.get(tab[name]) for name in attention_tab.SHOW_OUTPUTS]


def _completions(html_text: str) -> list[str]:
    return [unescape(t) for t in re.findall(r'<span class="completion">(.*?)</span>', html_text, re.S)]


def _final(gen):
    *_, last = gen
    return last


# --- form -> SamplingConfig ------------------------------------------------------------------------


def test_build_config_maps_ui_conventions():
    cfg = build_config(0.7, 0, 0.9, 50, 42, "END\n\\n\\n", True, 3)
    assert cfg == SamplingConfig(
        max_new_tokens=50, temperature=0.7, top_k=None, top_p=0.9, seed=42, stop=("END", "\n\n"), num_samples=3
    )
    assert build_config(1.0, 40, 1.0, 10, 1, "", False, 1).top_k == 40
    greedy = build_config(0, 0, 1.0, 10, 1, "", True, 1)
    assert greedy.greedy and greedy.top_k is None
    # An empty seed means a fresh random one, chosen here so the UI can show (and reuse) it.
    assert isinstance(build_config(1.0, 0, 1.0, 10, None, "", True, 1).seed, int)
    assert build_config(1.0, 50257.0, 1.0, 10.0, 7.0, None, True, 1.0).top_k == 50257


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-0.1, 0, 1.0, 10, 1, "", True, 1), "temperature"),
        ((1.0, -1, 1.0, 10, 1, "", True, 1), "top-k"),
        ((1.0, 60000, 1.0, 10, 1, "", True, 1), "top-k"),
        ((1.0, 2.5, 1.0, 10, 1, "", True, 1), "top-k must be a whole number"),
        ((1.0, 0, 0.0, 10, 1, "", True, 1), "top-p"),
        ((1.0, 0, 1.0, 0, 1, "", True, 1), "max new tokens"),
        ((1.0, 0, 1.0, None, 1, "", True, 1), "max new tokens"),
        ((1.0, 0, 1.0, 10, -5, "", True, 1), "seed"),
        ((1.0, 0, 1.0, 10, 1, "", True, 9), "number of samples"),
    ],
)
def test_build_config_rejects_bad_values(args, message):
    with pytest.raises(ValueError, match=message):
        build_config(*args)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((1.0, -1, 1.0, 10, 1, "", True, 1), "top_k"),
        ((1.0, 99999, 1.0, 10, 1, "", True, 1), "top_k"),
        ((1.0, 0, 1.0, 10, -5, "", True, 1), "seed"),
        ((1.0, 0, 1.0, 10, 2.5, "", True, 1), "seed"),
        ((float("nan"), 0, 1.0, 10, 1, "", True, 1), "temperature"),
        ((1.0, 0, 1.5, 10, 1, "", True, 1), "top_p"),
        ((1.0, 0, 1.0, 3000, 1, "", True, 1), "max_new"),
        ((1.0, 0, 1.0, 10, 1, "", True, 0), "samples"),
    ],
)
def test_build_config_names_the_field_of_a_bad_value(args, field):
    with pytest.raises(ConfigError) as e:
        build_config(*args)
    assert e.value.field == field and field in sampling_tab.FIELD_HINTS


def test_slider_values_out_of_range_move_into_it_with_a_note():
    assert sampling_tab.fit_slider("temperature", 0.7) == (0.7, None)
    assert sampling_tab.fit_slider("temperature", 5) == (2, "temperature 5 is outside 0 … 2: set to 2")
    assert sampling_tab.fit_slider("top_p", 0) == (0.01, "top-p 0 is outside 0.01 … 1: set to 0.01")
    assert sampling_tab.fit_slider("max_new", 5000)[0] == sampling_tab.MAX_UI_NEW_TOKENS
    assert sampling_tab.fit_slider("samples", 2.5) == (2, "number of samples 2.5 is not a whole number: set to 2")
    assert (
        sampling_tab.fit_slider("samples", None)[0] == 1
        and "must be a number" in sampling_tab.fit_slider("samples", None)[1]
    )
    values, notes = sampling_tab.fit_sliders({"temperature": -1, "top_k": -7, "samples": 3})
    assert values == {"temperature": 0, "top_k": -7, "samples": 3} and list(notes) == ["temperature"]


def test_the_callbacks_put_messages_under_their_fields(sampling):
    tab, ctx = sampling
    # Generate with seed -5: nothing generated, the message under Seed, every other field its hint.
    (out,) = sampling_tab.generate_samples(tab, ctx, "micro-run", "x", 1.0, 0, 1.0, 5, -5, "", True, 1)
    assert tab["output"] not in out and out[tab["status"]].startswith("⚠ seed must be 0 or more")
    assert out[tab["seed"]]["info"].startswith("⚠ seed") and out[tab["seed"]]["elem_classes"] == ["field-error"]
    assert out[tab["top_k"]] == {"__type__": "update", "info": sampling_tab.FIELD_HINTS["top_k"], "elem_classes": []}
    # A slider beyond its range is moved to its end and generation goes on; the note stays under the slider.
    outs = list(sampling_tab.generate_samples(tab, ctx, "micro-run", "x", 1.0, 0, 1.0, 3, 1, "", True, 20))
    assert outs[0][tab["samples"]]["value"] == 8 and "set to 8" in outs[0][tab["samples"]]["info"]
    assert outs[-1][tab["status"]].startswith("Done") and outs[-1][tab["output"]].count('class="sample"') == 8
    # The next-token view: top-k -1 is refused under its field, and the chart says to fix it.
    view = sampling_tab.show_next_token(tab, ctx, "micro-run", "x", 0.8, -1, 1.0, -1)
    assert "top-k must be between 0 (off) and 50257, got -1" in view[tab["top_k"]]["info"]
    assert view[tab["chart"]].layout.annotations[0].text == "Fix the highlighted setting"
    fixed = sampling_tab.show_next_token(tab, ctx, "micro-run", "x", 0.8, 40, 1.0, -1)
    assert fixed[tab["top_k"]]["info"] == sampling_tab.FIELD_HINTS["top_k"] and fixed[tab["chart"]].data


# --- generation through the UI callback ----------------------------------------------------------


def test_same_seed_same_text_through_the_callback(runs, sampling):
    args = ("micro-run", "Hello there", 0.9, 0, 1.0, 12, 123, "", False, 2)
    first = _final(generate_callback(sampling, *args))
    again = _final(generate_callback(sampling, *args))
    other = _final(generate_callback(sampling, *args[:6], 124, *args[7:]))
    texts = _completions(first[0])
    assert len(texts) == 2 and all(texts) and texts == _completions(again[0])
    assert texts != _completions(other[0])
    assert first[1].startswith("Done") and "tokens/s" in first[1] and "first token after" in first[1]
    # The UI shows exactly what core.generation generates for the same settings.
    model = CACHE.get(runs, "micro-run").model
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=None, seed=123, stop_at_eot=False, num_samples=2)
    assert texts == generate(model, "Hello there", cfg)


def test_greedy_and_top_k_reach_core_sampling(runs, sampling):
    model = CACHE.get(runs, "micro-run").model
    greedy = _final(generate_callback(sampling, "micro-run", "Once", 0, 5, 0.5, 12, 1, "", False, 1))
    assert _completions(greedy[0]) == generate(model, "Once", SamplingConfig(max_new_tokens=12, temperature=0))
    assert "top-k and top-p have no effect" in greedy[1]
    top_k = _final(generate_callback(sampling, "micro-run", "Once", 1.3, 3, 1.0, 12, 9, "", False, 1))
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.3, top_k=3, seed=9, stop_at_eot=False)
    assert _completions(top_k[0]) == generate(model, "Once", cfg)


def test_streaming_yields_growing_text(runs, monkeypatch):
    monkeypatch.setattr(sampling_tab, "MIN_UPDATE_S", 0.0)  # one update per token
    cfg = build_config(1.0, 0, 1.0, 15, 5, "", False, 1)
    outs = list(run_generation(CACHE.get(runs, "micro-run"), "abc", cfg))
    lengths = [len(_completions(o.html)[0]) for o in outs]
    assert len(outs) == 16 and lengths == sorted(lengths) and lengths[-1] > lengths[0]
    assert outs[0].status.startswith("Generating") and outs[-1].status.startswith("Done")
    assert "reached max new tokens" in outs[-1].html


def test_stop_ends_the_stream_early(sampling, monkeypatch):
    monkeypatch.setattr(sampling_tab, "MIN_UPDATE_S", 0.0)
    gen = generate_callback(sampling, "micro-run", "abc", 1.0, 0, 1.0, 500, 5, "", False, 1)
    seen = [next(gen) for _ in range(4)]  # "Starting…" and three tokens
    stop_callback(sampling)
    rest = list(gen)
    html_text, status = rest[-1]
    assert len(rest) <= 2 and status.startswith("Stopped") and "stopped" in html_text
    assert len(_completions(html_text)[0]) >= 3 and len(_completions(seen[-1][0])[0]) <= len(_completions(html_text)[0])
    assert not sampling_tab._STOP_FLAGS  # the flag is gone once the run ended


def test_prompt_longer_than_the_context_window(sampling):
    long_prompt = " word" * 100  # 100 tokens; micro's context window is 32
    html_text, status = _final(generate_callback(sampling, "micro-run", long_prompt, 1.0, 0, 1.0, 40, 1, "", False, 1))
    assert len(_completions(html_text)[0]) > 0
    assert "longer than the context window (32)" in status and "slid" in status


def test_bad_input_and_missing_model_give_messages(sampling, tmp_path):
    outs = list(generate_callback(sampling, "micro-run", "x", 1.0, -3, 1.0, 10, 1, "", True, 1))
    assert len(outs) == 1 and outs[0][1].startswith("⚠") and "top-k" in outs[0][1]
    outs = list(generate_callback(_built(tmp_path, sampling_tab), None, "x", 1.0, 0, 1.0, 10, 1, "", True, 1))
    assert "no model selected" in outs[-1][1]
    outs = list(generate_callback(sampling, "../../etc", "x", 1.0, 0, 1.0, 10, 1, "", True, 1))
    assert "outside the runs folder" in outs[-1][1]
    _, note, _ = preview_callback(sampling, "gone-run", "x", 1.0, 0, 1.0, -1)
    assert "no longer exists" in note


# --- next-token view -----------------------------------------------------------------------------


def test_preview_shows_the_filtered_distribution(runs, sampling):
    fig, note, chips = preview_callback(sampling, "micro-run", "The quick brown fox", 0.8, 5, 1.0, -1)
    model, raw_bars, final_bars = CACHE.get(runs, "micro-run").model, fig.data[0], fig.data[1]
    assert "**5** of 50,257 tokens" in note and "the end of the prompt" in note
    tokens = prompt_tokens("The quick brown fox")
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, -1]
    expected = filter_probs(logits[None], SamplingConfig(temperature=0.8, top_k=5))[0]
    assert sorted(final_bars.x, reverse=True)[:5] == pytest.approx(expected.topk(5).values.tolist(), abs=1e-6)
    assert sum(final_bars.x) == pytest.approx(1.0, abs=1e-5) and len(raw_bars.x) == figures.TOP_BARS
    assert chips.count("data-pos=") == len(tokens) and 'class="chip selected" data-pos="3"' in chips
    # A position inside the prompt: the distribution after "The" and the token that really follows.
    _, note, chips = preview_callback(sampling, "micro-run", "The quick brown fox", 0, 0, 1.0, 0)
    assert "token 0" in note and "quick" in note and 'class="chip selected" data-pos="0"' in chips
    assert "**1** of 50,257" in note  # greedy keeps one token


def test_clicking_a_prompt_token_picks_its_position(sampling):
    tab, ctx = sampling
    clicked = gr.EventData(tab["chips"], {"pos": 2})  # what PROMPT_CHIPS_JS sends
    assert sampling_tab.pick_prompt_token(tab, ctx, clicked) == {tab["position"]: 2}
    # An edited prompt goes back to the token after its end.
    edited = sampling_tab.show_next_token_after_edit(tab, ctx, "micro-run", "The quick brown", 0.8, 5, 1.0)
    assert edited[tab["position"]] == -1 and "the end of the prompt" in edited[tab["chart_note"]]
    assert set(edited) == {tab[name] for name in sampling_tab.EDIT_OUTPUTS}  # the setting fields are left alone


# --- attention: redraws of a kept result, clicks on the grid, the induction probe ----------------------------------


def test_attention_redraws_the_kept_result(runs, attention):
    tab, ctx = attention
    text = "one two three one two three"
    shown = attention_tab.show_attention(tab, ctx, "micro-run", text, 5, 9, False, "Entropy")
    assert shown[tab["layer"]]["value"] == 1 and shown[tab["head"]]["value"] == 1  # clamped to micro's 2 x 2
    key = shown[tab["key"]]
    maps = attention_maps(CACHE.get(runs, "micro-run").model, encode(text))
    # A click on the overview grid (what GRID_JS sends) opens that head in the sliders and the big heatmap.
    clicked = attention_tab.open_clicked_head(tab, ctx, key, gr.EventData(tab["grid"], {"layer": 1, "head": 0}))
    assert (clicked[tab["layer"]]["value"], clicked[tab["head"]]["value"], clicked[tab["average"]]) == (1, 0, False)
    heatmap = clicked[tab["heatmap"]]
    assert heatmap.layout.title.text == "Layer 1, head 0"
    z = np.array(heatmap.data[0].z, dtype=float)
    causal = np.tri(len(maps.tokens), dtype=bool)
    assert np.allclose(z[causal], maps.probs[1, 0][causal], atol=1e-6) and np.isnan(z[~causal]).all()
    mean = attention_tab.redraw_heatmap(tab, ctx, key, 1, 0, True)[tab["heatmap"]]
    assert mean.layout.title.text == "Layer 1, mean over 2 heads"
    summary = attention_tab.redraw_summary(tab, ctx, key, "Previous-token score")
    expected = previous_token_scores(maps.probs)
    assert np.allclose(np.array(summary[tab["summary"]].data[0].z, dtype=float), expected, atol=1e-6)
    assert "Highest: L" in summary[tab["summary_note"]]
    # A layer or head the model does not have moves to the nearest one, with a note under its slider.
    moved = attention_tab.redraw_heatmap(tab, ctx, key, 9, -1, False)
    assert moved[tab["heatmap"]].layout.title.text == "Layer 1, head 0"
    assert moved[tab["layer"]]["value"] == 1 and "there is no layer 9" in moved[tab["layer"]]["info"]
    assert moved[tab["head"]]["value"] == 0 and "there is no head -1" in moved[tab["head"]]["info"]
    back = attention_tab.redraw_heatmap(tab, ctx, key, 1, 1, False)
    assert back[tab["layer"]]["info"] == attention_tab.INDEX_HINTS["layer"] and back[tab["layer"]]["elem_classes"] == []
    assert attention_tab.fit_index(0.5, 2, "head") == (0, "head 0.5 is not a whole number: showing head 0")
    assert attention_tab.fit_index(None, 2, "layer")[0] == 0
    # A result no longer kept (evicted, or the server restarted) asks to press the button again.
    gone = attention_tab.redraw_heatmap(tab, ctx, "no-such-key", 0, 0, False)[tab["heatmap"]]
    assert gone.layout.annotations[0].text == "Press Show attention"


def test_no_result_clears_the_maps_of_the_last_one(attention):
    shown = dict(
        zip(attention_tab.SHOW_OUTPUTS, show_callback(attention, "micro-run", "one two", 0, 0, False, "Entropy"))
    )
    assert shown["grid"] and shown["key"] is not None
    for text, model in (("  ", "micro-run"), ("one two", "gone-run")):
        empty = dict(zip(attention_tab.SHOW_OUTPUTS, show_callback(attention, model, text, 0, 0, False, "Entropy")))
        assert empty["note"].startswith("⚠") and empty["grid"] == "" and empty["chips"] == "" and empty["key"] is None
        assert empty["heatmap"].layout.annotations[0].text == attention_tab.NO_MAPS and not empty["heatmap"].data
        assert empty["summary_note"] == "" and not empty["summary"].data


def test_the_maps_say_what_to_do_once_the_tab_opens_and_until_a_result_shows(attention):
    """The page is built without the placeholder figures (app start does not pay for plotly's first figure);
    opening the tab draws them while no result is shown, and leaves a shown result alone."""
    tab, ctx = attention
    assert tab["heatmap"].value is None and tab["summary"].value is None
    (step,) = [s for s in tab.on_open if s.outputs == [tab["heatmap"], tab["summary"]]]
    assert step.inputs == [tab["key"]]
    drawn = step.fn(None)
    assert drawn[tab["heatmap"]].layout.annotations[0].text == attention_tab.NO_MAPS and not drawn[tab["summary"]].data
    shown = show_callback(attention, "micro-run", "one two", 0, 0, False, "Entropy")
    key = dict(zip(attention_tab.SHOW_OUTPUTS, shown))["key"]
    assert key is not None and step.fn(key) == gr.skip()


def test_induction_probe_fits_the_context_window(runs, attention):
    tab, ctx = attention
    probe = attention_tab.fill_induction_probe(tab, ctx, "micro-run", 7)
    # micro's window is 32 tokens: <|endoftext|> and 15 random tokens twice.
    assert probe[tab["text"]] == decode(repeated_random_tokens(15, 7)) and probe[tab["probe_seed"]] == 8
    assert len(encode(probe[tab["text"]])) == 31
    no_model = attention_tab.fill_induction_probe(tab, ctx, None, 0)  # Show attention will say what is wrong
    assert len(encode(no_model[tab["text"]])) == 1 + 2 * attention_tab.PROBE_REPEATS


# --- model list and cache ------------------------------------------------------------------------


def test_generate_and_show_attention_refresh_the_model_labels(tmp_path):
    _save(tmp_path, "run", 40)
    (sampling, ctx), (attention, _) = _built(tmp_path, sampling_tab), _built(tmp_path, attention_tab)
    assert sampling["model"].choices[0][0].startswith("run · latest (step 40)")
    _save(tmp_path, "run", 300)  # the run saved again since the page was loaded
    outs = list(sampling_tab.generate_samples(sampling, ctx, "run", "x", 1.0, 0, 1.0, 2, 1, "", True, 1))
    assert outs[-1][sampling["status"]].startswith("Done") and "step 300" in outs[-1][sampling["status"]]
    picker = next(out[sampling["model"]] for out in outs if sampling["model"] in out)
    assert picker["value"] == "run" and picker["choices"][0][0].startswith("run · latest (step 300)")
    shown = attention_tab.show_attention(attention, ctx, "run", "some text", 0, 0, False, "Entropy")
    assert shown[attention["model"]]["choices"][0][0].startswith("run · latest (step 300)")


def test_list_models_offers_runs_with_weights(runs):
    choices = list_models(Jobs(runs))
    values = [v for _, v in choices]
    assert values == ["micro-run", "micro-run/ckpt/step-000010", "older"]
    assert choices[0][0].startswith("micro-run · latest (step 20)") and "2 layers × 2 heads" in choices[0][0]
    assert resolve_choice(runs, "micro-run").name == "step-000020"
    assert resolve_choice(runs, "micro-run/ckpt/step-000010").name == "step-000010"


def test_list_models_marks_training_and_imported_runs(tmp_path):
    _save(tmp_path, "training", 5)
    _save(tmp_path, "crashed", 5)
    me = psutil.Process()  # this test process stands in for the trainer of "training"
    job = {"job_id": "x", "state": "running", "launched_at": time.time(), "pid": me.pid, "start_time": me.create_time()}
    (tmp_path / "training" / "status.json").write_text(json.dumps(job))
    # status.json still says running, but its process is gone: core.jobs, asked instead of the file, knows.
    dead = {**job, "pid": 2**22 + 12345, "start_time": 1.0}
    (tmp_path / "crashed" / "status.json").write_text(json.dumps(dead))
    _save(tmp_path, "gpt2-import", 0, imported=True, source="gpt2")
    labels = dict((v, label) for label, v in list_models(Jobs(tmp_path)))
    assert "training…" in labels["training"] and "imported from gpt2" in labels["gpt2-import"]
    assert list_models(Jobs(tmp_path))[0][1] == "training"  # a run training now comes first, though not the newest
    assert "training…" not in labels["crashed"]
    # A still-training run is followed: its entry loads the newest checkpoint once one appears.
    cache = ModelCache(max_models=2)
    assert cache.get(tmp_path, "training").step == 5
    _save(tmp_path, "training", 15)
    assert cache.get(tmp_path, "training").step == 15


def test_no_checkpoint_message(tmp_path):
    choices, value, message = refresh_choices(Jobs(tmp_path), "whatever")
    assert choices == [] and value is None
    assert "No checkpoint" in message and "Train" in message and "Import GPT-2" in message
    assert refresh_choices(Jobs(tmp_path / "missing"), None)[0] == []
    html_out = show_callback(_built(tmp_path, attention_tab), None, "some text", 0, 0, False, "Entropy")
    assert "no model selected" in html_out[0]


def test_model_picker_lists_the_runs_of_the_apps_jobs(tmp_path):
    tab, ctx = _built(tmp_path, attention_tab)
    steps = [step.fn.__name__ for step in tab.on_open]  # opening the tab draws the placeholders, refreshes the list
    assert steps[:2] == ["show_placeholders", "refresh_model_choices"]
    empty = refresh_model_choices(tab, ctx, None)
    assert empty[tab["model"]]["choices"] == [] and empty[tab["model_missing"]]["visible"]
    _save(ctx.runs_dir, "late-run", 3)  # saved while the app runs
    found = refresh_model_choices(tab, ctx, "gone-run")
    assert found[tab["model"]]["value"] == "late-run" and not found[tab["model_missing"]]["visible"]
    assert refresh_model_choices(tab, ctx, "late-run")[tab["model"]]["value"] == "late-run"
    # Until the person picks one, the picker follows the newest model; on page load too.
    time.sleep(0.02)
    _save(ctx.runs_dir, "later-run", 1)
    assert refresh_model_choices(tab, ctx, "late-run", False)[tab["model"]]["value"] == "later-run"
    assert refresh_model_choices(tab, ctx, "late-run", True)[tab["model"]]["value"] == "late-run"
    assert model_picker.show_newest_models(tab, ctx)[tab["model"]]["value"] == "later-run"
    assert model_picker.mark_model_picked(tab, ctx) == {tab["model_picked"]: True}


def test_pickers_refresh_on_page_load_but_models_load_only_when_a_tab_opens(tmp_path):
    demo = build_ui(tmp_path / "runs")
    fns = list(demo.fns.values())

    def events(name):
        return sorted(event for fn in fns if fn.name == name for _, event in fn.targets)

    # Each tab's ⟳ and its opening keep what was picked; a page load lists the models there are then.
    # Sampling and Inside on their select; Attention right after its placeholders (its first step on select).
    assert events("refresh_model_choices") == ["click"] * 3 + ["select"] * 2 + ["then"]
    (placeholders,) = [fn for fn in fns if fn.name == "show_placeholders" and ("select" in dict(fn.targets).values())]
    assert any(fn.name == "refresh_model_choices" and fn.trigger_after == placeholders._id for fn in fns)
    assert events("show_newest_models") == ["load"] * 3
    # Nothing that loads a model runs on page load, nor after anything that does: the chart waits for the tab.
    after_load = {fn._id for fn in fns if any(event == "load" for _, event in fn.targets)}
    while more := {fn._id for fn in fns if fn.trigger_after in after_load} - after_load:
        after_load |= more
    names = {fn.name for fn in fns if fn._id in after_load}
    assert "show_newest_models" in names and not names & {"show_next_token", "show_attention", "generate_samples"}


def test_model_cache_is_lru_and_reloads_resaved_weights(tmp_path):
    for name in "abcd":
        _save(tmp_path, name, 1)
    cache = ModelCache(max_models=3, device="cpu")
    a = cache.get(tmp_path, "a")
    assert cache.get(tmp_path, "a") is a  # a hit: not reloaded
    cache.get(tmp_path, "b")
    cache.get(tmp_path, "c")
    cache.get(tmp_path, "a")  # a becomes the most recently used
    cache.get(tmp_path, "d")  # evicts b, the least recently used
    loaded = [os.path.basename(os.path.dirname(os.path.dirname(k[0]))) for k in cache.keys()]  # noqa: SIM118
    assert loaded == ["c", "a", "d"]
    # A checkpoint re-saved in place (same folder, new weights) is loaded again, not served stale.
    time.sleep(0.01)
    _save(tmp_path, "a", 1, seed=9)
    assert cache.get(tmp_path, "a") is not a and len(cache.keys()) == 3
    with pytest.raises(ModelError, match="outside the runs folder"):
        cache.get(tmp_path, "../a")


def test_attention_and_preview_share_the_model_with_a_running_generation(runs, sampling, attention):
    """One loaded model serves all three: a stream keeps its KV cache to itself, so forwards without one
    (attention maps, the next-token view) in the middle of it change neither its text nor theirs."""
    model = CACHE.get(runs, "micro-run").model
    cfg = SamplingConfig(max_new_tokens=20, seed=5, stop_at_eot=False)
    expected = generate(model, "Hello", cfg)[0]
    fig_alone, note_alone, _ = preview_callback(sampling, "micro-run", "The quick", 0.8, 5, 1.0, -1)
    steps = stream(model, "Hello", cfg)
    texts = [next(steps).texts[0] for _ in range(5)]
    shown = show_callback(attention, "micro-run", "some text here", 0, 0, False, "Entropy")
    fig, note, _ = preview_callback(sampling, "micro-run", "The quick", 0.8, 5, 1.0, -1)
    texts += [s.texts[0] for s in steps]
    assert "".join(texts) == expected
    assert "tokens**" in shown[0] and note == note_alone and fig.data[1].x == fig_alone.data[1].x
    maps = attention_maps(model, encode("some text here"))
    assert shown[-1] is not None and np.allclose(maps.probs.sum(-1), 1.0)
