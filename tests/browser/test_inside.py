"""The Inside tab in a real Chromium against a real `python app.py`: each view shows core.probe's numbers for the
checkpoints on disk, and branching from a token continues in the Sampling tab."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from playwright.sync_api import expect

from core.attention import attention_maps, induction_scores, token_label
from core.checkpoint import load_model, save_checkpoint
from core.config import model_config
from core.generation import SamplingConfig, generate
from core.model import GPT
from core.probe import ablation_effect, compare, logit_lens, token_logprobs
from core.tokenizer import decode, encode
from playground.inside_tab import DEFAULT_PROMPT, DEFAULT_TEXT, TOP_ALTERNATIVES, TOP_INDUCTION
from playground.probe_render import LENS_LABEL, format_perplexity
from tests.helpers import click_quickly

SLOW_MS = 120_000  # a view on a loaded 2-core machine


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """micro-run: step 10 untrained (sharpened attention, so heads differ), step 30 trained 20 steps on the tab's
    default text, so its probabilities differ from token to token."""
    torch.manual_seed(0)
    model = GPT(model_config("micro", n_head=4, block_size=128))
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20)
    runs = tmp_path_factory.mktemp("inside") / "runs"
    save_checkpoint(runs / "micro-run", 10, model, state={})
    tokens = torch.tensor([encode(DEFAULT_TEXT)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(20):
        logits = model(tokens[:, :-1])[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tokens[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(runs / "micro-run", 30, model.eval(), state={})
    return runs


def _weights(runs_dir, choice):
    return load_model(runs_dir / choice)[0]


def _open_inside(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Inside").click()
    expect(page.locator("#inside-model input")).to_have_value(re.compile("^micro-run · latest"))


def _view(page, name):
    page.locator("#inside-views").get_by_role("tab", name=name).click()


def test_token_probabilities_hover_and_branch(app_server, runs_dir, page, screenshot_dir):
    url = app_server(runs_dir)
    _open_inside(page, url)  # opening the tab draws the text view of the default text
    lp = token_logprobs(_weights(runs_dir, "micro-run"), encode(DEFAULT_TEXT), top=TOP_ALTERNATIVES)
    note = page.locator("#inside-text-note", has_text="perplexity")
    note.wait_for(timeout=SLOW_MS)
    assert f"perplexity {format_perplexity(lp.perplexity)}" in note.inner_text()
    assert f"loss {lp.loss:.4f}" in note.inner_text()
    assert page.locator("#inside-tokens .tok[data-pos]").count() == len(lp.tokens) - 1

    # Hovering a token shows its probability rank and the alternatives the model expected.
    pos = 8
    token = page.locator(f'#inside-tokens .tok[data-pos="{pos}"]')
    token.hover()
    card = token.locator(".pop")
    expect(card).to_be_visible()
    assert card.locator(".rank").inner_text() == f"{int(lp.rank[pos]):,}"
    alts = [int(t) for t in card.locator("button.alt").evaluate_all("bs => bs.map(b => b.dataset.token)")]
    assert alts == [int(t) for t in lp.top_tokens[pos] if t != lp.tokens[pos + 1]]
    page.screenshot(path=str(screenshot_dir / "inside-text.png"), full_page=True)

    # Clicking an alternative continues from there in Sampling, with that token instead of the true one.
    card.locator("button.alt").first.click()
    expect(page.get_by_role("tab", name="Sampling")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#sample-prompt textarea")).to_have_value(decode(lp.tokens[: pos + 1] + [alts[0]]))

    # Wrong input is a message, not a stack trace.
    page.get_by_role("tab", name="Inside").click()
    page.locator("#inside-text textarea").fill("")
    page.locator("#inside-run").click()
    page.locator("#inside-text-note", has_text="The text box is empty").wait_for(timeout=SLOW_MS)


def _plot_data(page, elem_id):
    return page.evaluate(
        f"""() => {{
          const plot = document.querySelector('#{elem_id} .js-plotly-plot');
          return plot && plot.data ? JSON.stringify({{x: plot.data[0].x, y: plot.data[0].y,
                                                     text: plot.data[0].text}}) : null;
        }}"""
    )


def _check_lens(page, runs_dir, start):
    lens = logit_lens(_weights(runs_dir, "micro-run"), encode(DEFAULT_TEXT))
    shown = json.loads(
        page.wait_for_function(
            f"""() => {{
          const p = document.querySelector('#inside-lens-plot .js-plotly-plot');
          return p && p.data && p.data[0].x[0].startsWith('{start} ') &&
                 JSON.stringify({{x: p.data[0].x, y: p.data[0].y, text: p.data[0].text}});
        }}""",
            timeout=SLOW_MS,
        ).json_value()
    )
    assert shown["y"] == lens.layer_labels
    cols = range(start, start + len(shown["x"]))
    for layer, row in enumerate(shown["text"]):
        assert row == [token_label(int(lens.top_tokens[layer, p, 0]))[:LENS_LABEL] for p in cols]


def _selected_heads(page):
    cells = page.locator("#inside-heads button.head.on")
    return sorted(
        (int(a), int(b)) for a, b in cells.evaluate_all("cs => cs.map(c => [c.dataset.layer, c.dataset.head])")
    )


def test_lens_ablation_and_compare_show_cores_numbers(app_server, runs_dir, page, screenshot_dir):
    url = app_server(runs_dir)
    _open_inside(page, url)
    page.locator("#inside-text-note", has_text="perplexity").wait_for(timeout=SLOW_MS)

    # Logit lens: each cell's text is core's top token at that layer and position; the slider moves the window.
    _view(page, "Logit lens")
    _check_lens(page, runs_dir, 0)
    box = page.locator("#inside-lens-start input[type=number]")
    box.fill("10")
    box.press("Enter")
    _check_lens(page, runs_dir, 10)
    page.locator("#inside-lens-plot").hover()
    page.screenshot(path=str(screenshot_dir / "inside-lens.png"), full_page=True)

    # Head ablation on the induction probe: two clicked heads, then the top induction heads.
    _view(page, "Head ablation")
    page.locator("#inside-ablation-note", has_text="Click heads").wait_for(timeout=SLOW_MS)
    page.locator("#inside-probe").click()
    expect(page.locator("#inside-text textarea")).to_have_value(re.compile("^<\\|endoftext\\|>"))
    probe = encode(page.locator("#inside-text textarea").input_value())
    page.locator("#inside-ablation-note", has_text=f"{len(probe)} tokens").wait_for(timeout=SLOW_MS)
    model = _weights(runs_dir, "micro-run")
    click_quickly(
        page,
        "#inside-heads",
        ['button.head[data-layer="0"][data-head="1"]', 'button.head[data-layer="1"][data-head="2"]'],
    )
    note = page.locator("#inside-ablation-note", has_text="2 heads")
    note.wait_for(timeout=SLOW_MS)
    effect = ablation_effect(model, probe, [(0, 1), (1, 2)])
    assert f"change {effect.mean_diff:+.4f}" in note.inner_text()

    page.locator("#inside-induction").click()
    note = page.locator("#inside-ablation-note", has_text="Highest induction scores")
    note.wait_for(timeout=SLOW_MS)
    scores = induction_scores(attention_maps(model, probe).probs, probe)
    top = sorted(
        tuple(map(int, lh)) for lh in sorted(np.ndindex(scores.shape), key=lambda lh: -scores[lh])[:TOP_INDUCTION]
    )
    assert _selected_heads(page) == top
    assert f"change {ablation_effect(model, probe, top).mean_diff:+.4f}" in note.inner_text()
    page.screenshot(path=str(screenshot_dir / "inside-ablation.png"), full_page=True)

    # Compare: B starts on the older checkpoint; both samples and the loss difference are core's.
    page.locator("#inside-text textarea").fill(DEFAULT_TEXT)
    _view(page, "Compare checkpoints")
    expect(page.locator("#inside-b-model input")).to_have_value("micro-run · step 10")
    page.locator("#inside-compare-note", has_text="B − A").wait_for(timeout=SLOW_MS)
    a, b = model, _weights(runs_dir, "micro-run/ckpt/step-000010")
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.8, top_k=50, seed=1337)
    shown = page.locator("#inside-samples .completion").evaluate_all("cs => cs.map(c => c.textContent)")
    assert shown == [generate(a, DEFAULT_PROMPT, cfg)[0], generate(b, DEFAULT_PROMPT, cfg)[0]]
    cmp = compare(a, b, encode(DEFAULT_TEXT))
    assert f"B − A {cmp.mean_diff:+.4f}" in page.locator("#inside-compare-note").inner_text()
    page.screenshot(path=str(screenshot_dir / "inside-compare.png"), full_page=True)
