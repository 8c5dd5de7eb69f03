"""The Attention tab: attention maps of any checkpoint, per layer and head, with a BertViz-like overview.

The big heatmap and the per-head summary are plotly (playground.figures); the overview of all heads is an HTML
grid of small maps whose clicks come back through gr.HTML's trigger() (playground.html_render). A computed
result is kept server-side under a key, so moving a slider only redraws.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from core.attention import MAX_TOKENS, AttentionResult, attention_maps, repeated_random_tokens
from core.lru import LRU
from core.tokenizer import decode, encode
from playground.figures import SUMMARIES, head_scores, heatmap_figure, message_figure, summary_figure
from playground.html_render import GRID_CSS, GRID_JS, TOKEN_CHIPS_CSS, grid_html, token_chips_html
from playground.model_cache import CACHE, ModelError
from playground.model_picker import layout_model_picker, refresh_model_choices, wire_model_picker
from playground.tab import IN_TURN, AppContext, OnOpen, Tab, bind

DEFAULT_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "First Citizen:\nBefore we proceed any further, hear me speak."
)
NO_MAPS = "Pick a model and press Show attention"
PROBE_REPEATS = 40  # random tokens in the induction probe (each appears twice), fewer when the window is shorter

MAX_RESULTS = 4
MAX_RESULT_BYTES = 1 << 30  # a gpt2-xl result at 256 tokens is ~315 MB
_RESULTS: LRU[str, AttentionResult] = LRU(MAX_RESULTS, MAX_RESULT_BYTES, size=lambda r: r.probs.nbytes)  # redraws
_RESULT_IDS = itertools.count()

# Runs in the browser when the sliders move: the grid's outline follows without a server round trip.
HIGHLIGHT_JS = """
(key, layer, head, average) => {
  document.querySelectorAll('#attn-grid .cell').forEach((c) => c.classList.toggle('selected',
    Number(c.dataset.layer) === layer && (average || Number(c.dataset.head) === head)));
  return [key, layer, head, average];
}
"""


# The hints under the Layer and Head sliders; a note about a moved value replaces them (in red) until the next one.
INDEX_HINTS = {"layer": "0 = the first", "head": "0 = the first"}


def fit_index(value: Any, count: int, what: str) -> tuple[int, str | None]:
    """A layer or head number moved into 0 … count-1 (Gradio would refuse a number beyond the slider with a toast
    naming no field), and a note saying why when it moved."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        return 0, f"{what} must be a whole number from 0 to {count - 1}: showing {what} 0"
    fitted = min(max(round(number), 0), count - 1)
    if fitted == number:
        return fitted, None
    if 0 <= number <= count - 1:
        return fitted, f"{what} {number:g} is not a whole number: showing {what} {fitted}"
    return fitted, f"there is no {what} {number:g}: this model has {what}s 0 … {count - 1}; showing {what} {fitted}"


def _index_state(name: str, value: int, note: str | None, **props: Any) -> dict[str, Any]:
    if note:
        return gr.update(value=value, info=f"⚠ {note}", elem_classes=["field-error"], **props)
    return gr.update(value=value, info=INDEX_HINTS[name], elem_classes=[], **props)


def _remember(result: AttentionResult) -> str:
    key = str(next(_RESULT_IDS))
    _RESULTS.put(key, result)
    return key


def _recall(key: str | None) -> AttentionResult | None:
    return _RESULTS.get(key or "")


def summary_note(result: AttentionResult, kind: str) -> str:
    """What the summary shows, and its strongest (or, for entropy, sharpest and most diffuse) heads."""
    z = head_scores(result, kind)
    names = [(f"L{layer} H{head}", float(z[layer, head])) for layer, head in np.ndindex(z.shape)]
    names = [(n, v) for n, v in names if np.isfinite(v)]
    if not names:
        return "No token repeats in this text, so there is no induction score: try **Repeated random tokens**."
    top = lambda items: ", ".join(f"{n} ({v:.2f})" for n, v in items)
    ranked = sorted(names, key=lambda nv: nv[1])
    if kind == "Entropy":
        uniform = np.log(len(result.tokens))
        return (
            f"Mean entropy of each head's attention rows (0 = always one token, log T = {uniform:.2f} = uniform). "
            f"Sharpest: {top(ranked[:3])}. Most diffuse: {top(ranked[::-1][:3])}."
        )
    what = (
        "attention from each token to the one just before it"
        if kind == "Previous-token score"
        else "attention from a repeated token to the token that followed its earlier occurrence"
    )
    return f"Mean {what}. Highest: {top(ranked[::-1][:5])}."


def compute_attention(
    runs_dir: Path, choice: str | None, text: str | None, max_tokens: int = MAX_TOKENS
) -> tuple[AttentionResult | None, str]:
    """Run the model on the text: (result or None, Markdown note saying what is shown or what went wrong)."""
    if not text or not text.strip():
        return None, "⚠ The text box is empty: type some text, or press **Repeated random tokens**."
    try:
        loaded = CACHE.get(runs_dir, choice)
    except ModelError as e:
        return None, f"⚠ {e}"
    result = attention_maps(loaded.model, encode(text), max_tokens=max_tokens)
    cfg = loaded.config
    note = (
        f"**{len(result.tokens)} tokens** · `{loaded.name}` · {cfg.n_layer} layers × {cfg.n_head} heads. "
        "Hover a cell for query, key and weight; click a small map below to open that head."
    )
    if result.truncated:
        cap = len(result.tokens)
        why = "the context window of this model" if cap == cfg.block_size else f"the display cap of {MAX_TOKENS} tokens"
        note += (
            f"\n\n⚠ The text has **{result.n_input} tokens**; only the first **{cap}** are shown ({why}). "
            "Shorten the text to see all of it."
        )
    return result, note


# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------

SHOW_INPUTS = ("model", "text", "layer", "head", "average", "kind")
SHOW_OUTPUTS = (
    "note",
    "model",
    "model_missing",
    "chips",
    "layer",
    "head",
    "heatmap",
    "summary",
    "summary_note",
    "grid",
    "key",
)


def show_attention(
    tab: Tab, ctx: AppContext, choice: str | None, text: str | None, layer: Any, head: Any, average: bool, kind: str
) -> dict[Any, Any]:
    """Compute the maps of the text and draw them all; the layer and head sliders fit the model. The model list
    is refreshed, so its label says what the maps are of."""
    try:
        picker = refresh_model_choices(tab, ctx, choice)
        result, message = compute_attention(ctx.runs_dir, choice, text)
    except Exception as e:  # never a stack trace in the browser
        picker, result, message = {}, None, f"⚠ Could not compute attention: {type(e).__name__}: {e}"
    if result is None:  # nothing of an earlier text or model stays on show
        return {tab["note"]: message, **picker, **cleared_maps(tab)}
    L, H = result.n_layer, result.n_head
    layer, layer_note = fit_index(layer, L, "layer")
    head, head_note = fit_index(head, H, "head")
    return {
        tab["note"]: message,
        **picker,
        tab["chips"]: token_chips_html(result),
        tab["layer"]: _index_state("layer", layer, layer_note, maximum=max(L - 1, 1), interactive=L > 1),
        tab["head"]: _index_state("head", head, head_note, maximum=max(H - 1, 1), interactive=H > 1),
        tab["heatmap"]: heatmap_figure(result, layer, head, average),
        tab["summary"]: summary_figure(result, kind),
        tab["summary_note"]: summary_note(result, kind),
        tab["grid"]: grid_html(result, layer, head, average),
        tab["key"]: _remember(result),
    }


def cleared_maps(tab: Tab) -> dict[Any, Any]:
    """Every map, chip and score emptied: what shows when there is no result."""
    return {
        tab["chips"]: "",
        tab["heatmap"]: message_figure(NO_MAPS),
        tab["summary"]: message_figure(""),
        tab["summary_note"]: "",
        tab["grid"]: "",
        tab["key"]: None,
    }


def show_placeholders(tab: Tab, ctx: AppContext, key: str | None) -> Any:
    """Opening the tab with no result shown: the maps say what to do. They are drawn here, not in the page: the
    first plotly figure of a process costs about 0.1 s, which app start does not pay."""
    return gr.skip() if key else {tab["heatmap"]: message_figure(NO_MAPS), tab["summary"]: message_figure("")}


def redraw_heatmap(tab: Tab, ctx: AppContext, key: str | None, layer: Any, head: Any, average: bool) -> dict[Any, Any]:
    """Another layer or head (or the average) of the text already computed; a number the model does not have is
    moved to the nearest one, with a note under its slider."""
    result = _recall(key)
    if result is None:
        return {tab["heatmap"]: message_figure("Press Show attention")}
    layer, layer_note = fit_index(layer, result.n_layer, "layer")
    head, head_note = fit_index(head, result.n_head, "head")
    return {
        tab["heatmap"]: heatmap_figure(result, layer, head, average),
        tab["layer"]: _index_state("layer", layer, layer_note),
        tab["head"]: _index_state("head", head, head_note),
    }


def redraw_summary(tab: Tab, ctx: AppContext, key: str | None, kind: str) -> dict[Any, Any]:
    """Another per-head summary of the text already computed."""
    result = _recall(key)
    if result is None:
        return {tab["summary"]: message_figure(""), tab["summary_note"]: ""}
    return {tab["summary"]: summary_figure(result, kind), tab["summary_note"]: summary_note(result, kind)}


def open_clicked_head(tab: Tab, ctx: AppContext, key: str | None, evt: gr.EventData) -> dict[Any, Any]:
    """A click on a map of the overview grid: its layer and head go to the sliders and the big heatmap."""
    layer, head = int(evt.layer), int(evt.head)
    return {
        tab["layer"]: layer,
        tab["head"]: head,
        tab["average"]: False,
        **redraw_heatmap(tab, ctx, key, layer, head, False),
    }


def fill_induction_probe(tab: Tab, ctx: AppContext, choice: str | None, seed: int) -> dict[Any, Any]:
    """Random tokens, repeated once, sized to fit the model's window: induction heads light up on the repeat."""
    try:
        block = CACHE.get(ctx.runs_dir, choice).config.block_size
    except ModelError:  # Show attention will say what is wrong with the model
        block = 2 * PROBE_REPEATS + 1
    n = max(1, min(PROBE_REPEATS, (min(block, MAX_TOKENS) - 1) // 2))
    return {tab["text"]: decode(repeated_random_tokens(n, seed)), tab["probe_seed"]: seed + 1}


# ----- layout and wiring --------------------------------------------------------------------------------------------


def _layout_text(ctx: AppContext) -> dict[str, Any]:
    gr.Markdown(
        "Which tokens does each head look at? Rows are queries (the token being predicted from), "
        "columns keys (the tokens it attends to); each row sums to 1."
    )
    c = layout_model_picker(ctx, "attn")
    c["text"] = gr.Textbox(DEFAULT_TEXT, label="Text", lines=3, max_lines=8, elem_id="attn-text")
    with gr.Row():
        c["show_btn"] = gr.Button("Show attention", variant="primary", elem_id="attn-run")
        c["probe_btn"] = gr.Button("↻ Repeated random tokens (induction probe)", elem_id="attn-example")
    c["note"] = gr.Markdown(elem_id="attn-note")
    c["chips"] = gr.HTML(css_template=TOKEN_CHIPS_CSS, js_on_load=None, elem_id="attn-chips")
    c["key"] = gr.State(None)  # where the shown result is kept (see _remember)
    c["probe_seed"] = gr.State(0)
    return c


def _layout_maps() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                c["layer"] = gr.Slider(
                    0, 1, value=0, step=1, label="Layer", info=INDEX_HINTS["layer"], elem_id="attn-layer"
                )
                c["head"] = gr.Slider(
                    0, 1, value=0, step=1, label="Head", info=INDEX_HINTS["head"], elem_id="attn-head"
                )
                c["average"] = gr.Checkbox(False, label="Average over heads", elem_id="attn-average")
            c["heatmap"] = gr.Plot(show_label=False, elem_id="attn-heatmap")  # see show_placeholders
        with gr.Column(scale=2):
            c["kind"] = gr.Radio(list(SUMMARIES), value=SUMMARIES[0], label="Per-head summary", elem_id="attn-kind")
            c["summary"] = gr.Plot(show_label=False, elem_id="attn-summary")
            c["summary_note"] = gr.Markdown(elem_id="attn-summary-note")
    gr.Markdown("#### All heads — click one to open it (hover for its scores)")
    c["grid"] = gr.HTML(css_template=GRID_CSS, js_on_load=GRID_JS, elem_id="attn-grid")
    return c


def _wire(tab: Tab, ctx: AppContext) -> None:
    # preprocess=False wherever the sliders are read: the callbacks fit their numbers to the model (fit_index), so
    # a layer the model does not have gets a note under its slider, never Gradio's toast and an "Error" heatmap.
    show = dict(
        fn=bind(show_attention, tab, ctx),
        inputs=[tab[n] for n in SHOW_INPUTS],
        outputs=[tab[n] for n in SHOW_OUTPUTS],
        preprocess=False,
    )
    tab["show_btn"].click(**show)
    tab["text"].submit(**show)
    tab["model"].input(**show)
    tab["probe_btn"].click(
        bind(fill_induction_probe, tab, ctx), [tab["model"], tab["probe_seed"]], [tab["text"], tab["probe_seed"]]
    ).then(**show)
    view = [tab["key"], tab["layer"], tab["head"], tab["average"]]
    redraw = [tab["heatmap"], tab["layer"], tab["head"]]
    for name in ("layer", "head", "average"):
        tab[name].input(
            bind(redraw_heatmap, tab, ctx), view, redraw, js=HIGHLIGHT_JS, trigger_mode="always_last", preprocess=False
        ).then(None, view, None, js=HIGHLIGHT_JS)  # the outline follows a number moved into range
    tab["kind"].change(bind(redraw_summary, tab, ctx), [tab["key"], tab["kind"]], [tab["summary"], tab["summary_note"]])
    tab["grid"].click(
        bind(open_clicked_head, tab, ctx),
        tab["key"],
        [tab["layer"], tab["head"], tab["average"], tab["heatmap"]],
        **IN_TURN,  # of quick clicks the last one wins, as the browser shows
    )
    # The placeholders first, before the model list's refresh: a result shown by a quick click must never be
    # replaced by them (they skip when a result is shown; the key is read when the step runs).
    tab.on_open.append(OnOpen(bind(show_placeholders, tab, ctx), [tab["key"]], [tab["heatmap"], tab["summary"]]))
    wire_model_picker(tab, ctx)


def build(ctx: AppContext) -> Tab:
    tab = Tab("attention", {**_layout_text(ctx), **_layout_maps()})
    _wire(tab, ctx)
    return tab
