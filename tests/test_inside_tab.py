"""The Inside tab's callbacks on real checkpoints in a temporary runs folder: every shown number is checked against
core.probe / core.generation / core.attention computed independently on the same weights."""

from __future__ import annotations

import math
import re
from html import unescape

import gradio as gr
import numpy as np
import pytest
import torch

import core.probe
from core.attention import attention_maps, induction_scores, repeated_random_tokens, token_label
from core.checkpoint import load_model, save_checkpoint
from core.config import model_config
from core.generation import SamplingConfig, generate
from core.model import GPT
from core.probe import ablation_effect, compare, logit_lens, token_logprobs
from core.tokenizer import decode, encode
from playground import inside_tab, probe_render
from playground.app import build_ui
from playground.inside_tab import (
    ablation_view,
    branch_from,
    compare_view,
    lens_view,
    select_induction_heads,
    show_view,
    text_view,
    use_probe,
)
from playground.tab import AppContext

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak."


def _model(seed: int, block_size: int = 64) -> GPT:
    torch.manual_seed(seed)
    model = GPT(model_config("micro", n_head=4, block_size=block_size))
    with torch.no_grad():  # sharper attention than the default init, so heads differ and ablation matters
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    save_checkpoint(runs / "run", 10, _model(1), state={})
    save_checkpoint(runs / "run", 20, _model(2), state={})
    return runs


@pytest.fixture(scope="module")
def ui(runs):
    ctx = AppContext.for_runs_dir(runs)
    with gr.Blocks():
        tab = inside_tab.build(ctx)
    return tab, ctx


def _weights(runs, choice):
    return load_model(runs / choice)[0]


LATEST, OLDER = "run", "run/ckpt/step-000010"


# --- text view ------------------------------------------------------------------------------------------------------


def test_text_view_shows_cores_loss_perplexity_ranks_and_alternatives(ui, runs):
    tab, ctx = ui
    out = text_view(tab, ctx, LATEST, TEXT)
    lp = token_logprobs(_weights(runs, LATEST), encode(TEXT), top=inside_tab.TOP_ALTERNATIVES)
    note = out[tab["text_note"]]
    assert f"loss **{lp.loss:.4f}**" in note
    assert f"perplexity **{lp.perplexity:,.2f}**" in note
    assert out[tab["scored"]] == lp.tokens
    page = out[tab["tokens"]]
    ranks = [int(r.replace(",", "")) for r in re.findall(r'<b class="rank">([\d,]+)</b>', page)]
    assert ranks == lp.rank.tolist()
    # Each token's colour is its probability on the log scale; each card offers the top tokens but the true one.
    spans = re.findall(r'<span class="tok" data-pos="(\d+)" style="([^"]+)">', page)
    assert [int(p) for p, _ in spans] == list(range(len(lp.tokens) - 1))
    for i, style in spans:
        assert style == probe_render.prob_style(math.exp(float(lp.logprob[int(i)])))
    alts = [int(t) for t in re.findall(r'<button class="alt" data-pos="3" data-token="(\d+)"', page)]
    assert alts == [int(t) for t in lp.top_tokens[3] if t != lp.tokens[4]]


def test_probability_colours_are_viridis_on_a_log_scale():
    assert probe_render.prob_scale(1.0) == 1.0 and probe_render.prob_scale(1e-4) == 0.0
    assert probe_render.prob_scale(1e-9) == 0.0 and probe_render.prob_scale(0.01) == pytest.approx(0.5)
    assert probe_render.prob_style(1.0) == "background:rgb(253, 231, 37);color:#111827"  # viridis' yellow end
    assert probe_render.prob_style(0.0) == "background:rgb(68, 1, 84);color:#ffffff"  # its dark purple start
    # Loss up is red, down blue (ColorBrewer RdBu), white at no change.
    assert probe_render.diff_style(1.0, 1.0).startswith("background:rgb(103, 0, 31)")
    assert probe_render.diff_style(-1.0, 1.0).startswith("background:rgb(5, 48, 97)")
    assert probe_render.diff_style(0.0, 1.0).startswith("background:rgb(247, 247, 247)")


def test_clicking_an_alternative_branches_to_sampling(ui):
    tab, ctx = ui
    tokens = encode(TEXT)
    alt = encode(" banana")[0]
    out = branch_from(tab, ctx, tokens, gr.EventData(None, {"pos": 4, "token": alt}))
    text, _ = out[tab["branch"]]
    assert text == decode(tokens[:5]) + " banana"
    prompt, tabs = inside_tab._open_branch((text, 1.0))
    assert prompt == text and tabs.selected == "sampling"
    # A click on a stale page (no scored text, or a position past it) does nothing.
    assert isinstance(branch_from(tab, ctx, None, gr.EventData(None, {"pos": 0, "token": alt})), type(gr.skip()))
    assert isinstance(branch_from(tab, ctx, tokens, gr.EventData(None, {"pos": 99, "token": alt})), type(gr.skip()))


# --- logit lens -----------------------------------------------------------------------------------------------------


def test_lens_cells_are_cores_top_tokens_and_true_probabilities(ui, runs):
    tab, ctx = ui
    text = " the cat sat on the mat" * 10  # 60 tokens: more than one window of LENS_COLUMNS
    out = lens_view(tab, ctx, LATEST, text, 15)
    lens = logit_lens(_weights(runs, LATEST), encode(text))
    fig = out[tab["lens_plot"]]
    heat = fig.data[0]
    cols = range(15, 15 + probe_render.LENS_COLUMNS)
    assert list(heat.y) == lens.layer_labels == ["embeddings", "block 0", "block 1"]
    assert list(heat.x)[0] == f"15 {token_label(lens.tokens[15])}"
    for layer in range(3):
        assert list(heat.text[layer]) == [
            token_label(int(lens.top_tokens[layer, p, 0]))[: probe_render.LENS_LABEL] for p in cols
        ]
        expected = np.log10(np.clip(lens.true_prob[layer, cols.start : cols.stop], 1e-4, 1))
        np.testing.assert_allclose(np.array(heat.z[layer], dtype=float), expected, rtol=1e-6, equal_nan=True)
    last = 60 - probe_render.LENS_COLUMNS
    assert f"positions 15–{15 + probe_render.LENS_COLUMNS - 1} of 60" in out[tab["lens_note"]]
    assert out[tab["lens_start"]]["value"] == 15 and out[tab["lens_start"]]["maximum"] == last
    # A start past the end moves back so the window stays full.
    assert lens_view(tab, ctx, LATEST, text, 500)[tab["lens_start"]]["value"] == last


# --- head ablation --------------------------------------------------------------------------------------------------


def test_ablation_total_and_tokens_equal_core(ui, runs):
    tab, ctx = ui
    heads = [[1, 0], [0, 3], [7, 7]]  # (7, 7) does not exist in this model: dropped, not an error
    out = ablation_view(tab, ctx, LATEST, TEXT, heads, None)
    effect = ablation_effect(_weights(runs, LATEST), encode(TEXT), [(0, 3), (1, 0)])
    note = out[tab["ablation_note"]]
    assert f"change **{effect.mean_diff:+.4f}**" in note and "L0 H3, L1 H0" in note
    assert out[tab["heads"]] == [[0, 3], [1, 0]]
    shown = [float(d) for d in re.findall(r'data-diff="([-\d.e]+)"', out[tab["ablation_tokens"]])]
    np.testing.assert_allclose(shown, effect.diff, atol=1e-5)
    grid = out[tab["grid"]]
    assert grid.count('<button class="head') == 2 * 4 and grid.count('class="head on"') == 2
    assert 'data-layer="1" data-head="0" title="layer 1 head 0" aria-pressed="true"' in grid


def test_no_heads_selected_asks_for_some(ui):
    tab, ctx = ui
    out = ablation_view(tab, ctx, LATEST, TEXT, [], None)
    assert "Click heads" in out[tab["ablation_note"]] and out[tab["ablation_tokens"]] == ""
    assert out[tab["grid"]].count('class="head on"') == 0


def test_top_induction_heads_and_the_probe_halves(ui, runs):
    tab, ctx = ui
    model = _weights(runs, LATEST)
    probe = repeated_random_tokens(inside_tab.probe_length(64), seed=0)
    text = decode(probe)
    assert encode(text) == probe and inside_tab.repeat_start(probe) == 32
    out = select_induction_heads(tab, ctx, LATEST, text, None)
    scores = induction_scores(attention_maps(model, probe).probs, probe)
    expected = sorted(np.ndindex(scores.shape), key=lambda lh: -scores[lh])[: inside_tab.TOP_INDUCTION]
    assert out[tab["heads"]] == [list(map(int, lh)) for lh in sorted(expected)]
    effect = ablation_effect(model, probe, expected)
    note = out[tab["ablation_note"]]
    assert "Highest induction scores on this text" in note
    assert f"change **{effect.mean_diff:+.4f}**" in note
    assert f"repeated half **{float(effect.diff[31:].mean()):+.4f}**" in note
    np.testing.assert_allclose(out[tab["scores"]]["values"], scores, rtol=1e-6)
    assert f"induction score {scores[expected[0]]:.2f}" in out[tab["grid"]]
    # A text without repeats has no induction score: the probe is scored instead.
    plain = select_induction_heads(tab, ctx, LATEST, "One two three.", None)
    assert "repeated-random-tokens probe" in plain[tab["ablation_note"]]


def test_probe_button_fills_a_probe_that_fits_the_window(ui):
    tab, ctx = ui
    out = use_probe(tab, ctx, LATEST, 3)
    assert out[tab["text"]] == decode(repeated_random_tokens(31, seed=3)) and out[tab["probe_seed"]] == 4
    assert len(encode(out[tab["text"]])) == 63  # <|endoftext|> + 2 x 31 fits the 64-token window


# --- compare --------------------------------------------------------------------------------------------------------


def test_compare_shows_both_samples_and_the_loss_difference(ui, runs):
    tab, ctx = ui
    out = compare_view(tab, ctx, LATEST, OLDER, TEXT, "ROMEO:", 7, 0.9, 20, 12)
    a, b = _weights(runs, LATEST), _weights(runs, OLDER)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=20, seed=7)
    samples = [unescape(t) for t in re.findall(r'<span class="completion">(.*?)</span>', out[tab["samples"]], re.S)]
    assert samples == [generate(a, "ROMEO:", cfg)[0], generate(b, "ROMEO:", cfg)[0]]
    assert samples[0] != samples[1]
    assert "A · run · step 20" in out[tab["samples"]] and "B · run · step 10" in out[tab["samples"]]
    cmp = compare(a, b, encode(TEXT))
    note = out[tab["compare_note"]]
    assert f"A **{cmp.mean_a:.4f}**, B **{cmp.mean_b:.4f}**" in note and f"**{cmp.mean_diff:+.4f}**" in note
    shown = [float(d) for d in re.findall(r'data-diff="([-\d.e]+)"', out[tab["compare_tokens"]])]
    np.testing.assert_allclose(shown, cmp.diff, atol=1e-5)
    same = compare_view(tab, ctx, LATEST, LATEST, TEXT, "ROMEO:", 7, 0.9, 20, 12)
    assert "same checkpoint" in same[tab["compare_note"]]


def test_compare_picker_starts_on_another_checkpoint(ui):
    tab, _ = ui
    assert tab["model"].value == LATEST and tab["model_b"].value == OLDER


# --- dispatch, caching, wrong input ---------------------------------------------------------------------------------


def test_show_view_runs_the_open_view_and_caches_results(ui, monkeypatch):
    tab, ctx = ui
    calls = []
    monkeypatch.setattr(core.probe, "logit_lens", lambda *a: calls.append(1) or logit_lens(*a))
    rest = (0, [], None, OLDER, "", 1, 1.0, 0, 5)
    text = "A text that no other test reads."
    first = show_view(tab, ctx, "lens", LATEST, text, *rest)
    again = show_view(tab, ctx, "lens", LATEST, text, *rest)
    assert len(calls) == 1 and again[tab["lens_note"]] == first[tab["lens_note"]]
    assert tab["tokens"] not in first  # other views keep what they show
    assert tab["tokens"] in show_view(tab, ctx, "text", LATEST, text, *rest)
    assert tab["compare_note"] in show_view(tab, ctx, "compare", LATEST, text, *rest)
    assert tab["grid"] in show_view(tab, ctx, "ablation", LATEST, text, *rest)


def test_wrong_inputs_give_one_line_messages(ui, runs, monkeypatch):
    tab, ctx = ui
    assert text_view(tab, ctx, LATEST, "  ")[tab["text_note"]].startswith("⚠ The text box is empty")
    assert "no model selected" in text_view(tab, ctx, None, TEXT)[tab["text_note"]]
    assert "single token" in lens_view(tab, ctx, LATEST, "Hi", 0)[tab["lens_note"]]
    bad = compare_view(tab, ctx, LATEST, OLDER, TEXT, "", -1, 1.0, 0, 5)[tab["compare_note"]]
    assert bad.startswith("⚠ seed must be a whole number")
    # A checkpoint still being written: its weights file is incomplete.
    partial = runs / "writing" / "ckpt" / "step-000005"
    save_checkpoint(runs / "writing", 5, _model(3), state={})
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    message = ablation_view(tab, ctx, "writing/ckpt/step-000005", TEXT, [[0, 0]], None)[tab["ablation_note"]]
    assert message.startswith("⚠ checkpoint file") and "corrupt or truncated" in message and "\n" not in message
    # Anything unexpected is one line with its type, never a stack trace.
    monkeypatch.setattr(core.probe, "token_logprobs", lambda *a: 1 / 0)
    boom = text_view(tab, ctx, LATEST, "Something else entirely.")[tab["text_note"]]
    assert boom == "⚠ Token probabilities failed: ZeroDivisionError: division by zero"


def test_a_text_longer_than_the_window_is_cut_with_a_note(ui, runs):
    tab, ctx = ui
    text = " word" * 100
    out = text_view(tab, ctx, LATEST, text)
    assert (
        "The text has **100 tokens**; only the first **64** are used (the model's context window)"
        in (out[tab["text_note"]])
    )
    assert len(out[tab["scored"]]) == 64
    tokens, note = inside_tab.text_tokens(" word" * 300, 1024)
    assert len(tokens) == inside_tab.MAX_TOKENS and "this tab's limit of 256" in note


def test_generate_text_continues_the_text(ui):
    tab, ctx = ui
    out = inside_tab.generate_text(tab, ctx, LATEST, "ROMEO:")
    longer = out[tab["text"]]
    assert longer.startswith("ROMEO:") and len(encode(longer)) > len(encode("ROMEO:"))
    assert "no model selected" in inside_tab.generate_text(tab, ctx, None, "ROMEO:")[tab["text_note"]]


def test_app_mounts_the_tab_and_sends_branches_to_sampling(tmp_path):
    demo = build_ui(tmp_path / "runs")
    shows = [fn for fn in demo.fns.values() if fn.name == "show_view"]
    assert shows and all(event != "load" for fn in shows for _, event in fn.targets)  # no model load on page load
    (branch,) = [fn for fn in demo.fns.values() if fn.name == "_open_branch"]
    prompt = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sample-prompt")
    assert prompt in branch.outputs and any(isinstance(b, gr.Tabs) for b in branch.outputs)
