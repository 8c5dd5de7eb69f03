"""The Attention tab: attention maps of any checkpoint, per layer and head, with a BertViz-like overview.

Gradio's Plot has no click event, so the overview of all heads is an HTML grid of small PNG heatmaps
whose clicks come back through gr.HTML's trigger(); the big heatmap and the per-head summary are plotly.
"""

from __future__ import annotations

import base64
import functools
import html
import itertools
import struct
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.colors
import plotly.graph_objects as go

from core.attention import (
    MAX_TOKENS,
    AttentionResult,
    attention_maps,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from core.lru import LRU
from core.tokenizer import decode, encode
from playground.model_cache import CACHE, ModelError
from playground.model_picker import model_picker

DEFAULT_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "First Citizen:\nBefore we proceed any further, hear me speak."
)
SUMMARIES = ("Entropy", "Previous-token score", "Induction score")

# Weights near the attention sink (first token) are large and most others small, so colours follow
# sqrt(weight): position p of the scale shows weight p², keeping weak patterns visible. Hover shows true values.
_BLUES = [tuple(int(c) for c in s[4:-1].split(",")) for s in plotly.colors.sequential.Blues]
COLORSCALE = [[(i / (len(_BLUES) - 1)) ** 2, f"rgb{c}"] for i, c in enumerate(_BLUES)]
_BLUES_ARRAY = np.array(_BLUES, dtype=np.float64)

MAX_RESULTS = 4
MAX_RESULT_BYTES = 1 << 30  # a gpt2-xl result at 256 tokens is ~315 MB
_RESULTS: LRU[str, AttentionResult] = LRU(MAX_RESULTS, MAX_RESULT_BYTES, size=lambda r: r.probs.nbytes)  # redraws
_RESULT_IDS = itertools.count()


def _remember(result: AttentionResult) -> str:
    key = str(next(_RESULT_IDS))
    _RESULTS.put(key, result)
    return key


def _recall(key: str | None) -> AttentionResult | None:
    return _RESULTS.get(key or "")


# --- figures ------------------------------------------------------------------------------------


def _axis_labels(result: AttentionResult) -> list[str]:
    """Unique category labels (position first): a repeated token must not merge two rows."""
    return [f"{i} {lab[:14]}" for i, lab in enumerate(result.labels)]


def message_figure(text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font=dict(size=14, color="#6b7280"), x=0.5, y=0.5)
    fig.update_layout(
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        height=320,
        plot_bgcolor="white",
        margin=dict(l=10, r=10, t=10, b=10),
    )
    return fig


def heatmap_figure(result: AttentionResult, layer: int, head: int, average: bool) -> go.Figure:
    """One layer/head (or the mean over the layer's heads): rows are queries, columns keys."""
    layer = min(max(int(layer), 0), result.n_layer - 1)
    head = min(max(int(head), 0), result.n_head - 1)
    z = result.probs[layer].mean(0) if average else result.probs[layer, head]
    z = np.where(np.tri(len(z), dtype=bool), z, np.nan)  # the masked future is blank, not "zero"
    labels = _axis_labels(result)
    title = f"Layer {layer}, mean over {result.n_head} heads" if average else f"Layer {layer}, head {head}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            colorscale=COLORSCALE,
            zmin=0,
            zmax=1,
            hoverongaps=False,
            hovertemplate="query: %{y}<br>key: %{x}<br>weight: %{z:.4f}<extra></extra>",
            colorbar=dict(title=dict(text="weight"), thickness=12),
        )
    )
    side = int(min(680, max(420, 200 + 12 * len(labels))))  # about square in the tab's left column
    fig.update_layout(
        title=dict(text=title, x=0.5, font=dict(size=15)),
        height=side,
        margin=dict(l=10, r=10, t=44, b=10),
        plot_bgcolor="#f3f4f6",
        xaxis=dict(title="key (attended to)", tickangle=-60, tickfont=dict(size=10), showgrid=False),
        yaxis=dict(title="query", autorange="reversed", tickfont=dict(size=10), showgrid=False),
        uirevision=f"{id(result)}",  # keep zoom while switching heads of the same input
    )
    return fig


def head_scores(result: AttentionResult, kind: str) -> np.ndarray:
    if kind == "Previous-token score":
        return previous_token_scores(result.probs)
    if kind == "Induction score":
        return induction_scores(result.probs, result.tokens)
    return result.entropy


def summary_figure(result: AttentionResult, kind: str) -> go.Figure:
    """A layer x head heatmap of one per-head number."""
    z = head_scores(result, kind)
    L, H = z.shape
    if kind == "Entropy":
        zmax, colorscale, fmt, unit = float(np.log(len(result.tokens))) or 1.0, "Viridis", ".2f", " nats"
    else:
        zmax, colorscale, fmt, unit = 1.0, "Magma", ".2f", ""
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(H)),
            y=list(range(L)),
            zmin=0,
            zmax=zmax,
            colorscale=colorscale,
            texttemplate=f"%{{z:{fmt}}}" if L * H <= 64 else None,
            textfont=dict(size=10),
            hovertemplate=f"layer %{{y}}, head %{{x}}<br>{kind.lower()}: %{{z:.3f}}{unit}<extra></extra>",
            colorbar=dict(thickness=12),
        )
    )
    fig.update_layout(
        height=int(min(520, max(260, 90 + 26 * L))),
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(title="head", dtick=1 if H <= 16 else None, showgrid=False),
        yaxis=dict(title="layer", autorange="reversed", dtick=1 if L <= 16 else None, showgrid=False),
    )
    return fig


def summary_note(result: AttentionResult, kind: str) -> str:
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


# --- overview grid (HTML, clickable) -----------------------------------------------------------


def _png(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG encoder (no imaging library needed for these thumbnails)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _colorize(v: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] -> uint8 RGB on the same sqrt-scaled Blues as the big heatmap."""
    pos = np.sqrt(np.clip(v, 0, 1)) * (len(_BLUES_ARRAY) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_BLUES_ARRAY) - 2)
    frac = (pos - lo)[..., None]
    return (_BLUES_ARRAY[lo] * (1 - frac) + _BLUES_ARRAY[lo + 1] * frac).round().astype(np.uint8)


def thumbnails(probs: np.ndarray, max_side: int) -> np.ndarray:
    """(L, H, s, s) max-pooled maps with s <= max_side: a sharp diagonal stays visible when shrunk."""
    T = probs.shape[-1]
    s = min(T, max_side)
    starts = np.linspace(0, T, s + 1).astype(int)[:-1]
    return np.maximum.reduceat(np.maximum.reduceat(probs, starts, axis=-1), starts, axis=-2)


def grid_html(result: AttentionResult, layer: int, head: int, average: bool) -> str:
    L, H = result.n_layer, result.n_head
    cell = int(min(96, max(28, 1000 // H)))  # pixels per head on screen
    thumbs = _colorize(thumbnails(result.probs, max_side=min(cell, 48 if L * H <= 300 else 24)))
    ent = result.entropy
    prev = previous_token_scores(result.probs)
    ind = induction_scores(result.probs, result.tokens)
    parts = [f'<div class="grid" style="grid-template-columns: 2.2em repeat({H}, {cell}px)"><div></div>']
    parts += [f'<div class="hdr">H{h}</div>' for h in range(H)]
    for li in range(L):
        parts.append(f'<div class="hdr">L{li}</div>')
        for h in range(H):
            src = base64.b64encode(_png(thumbs[li, h])).decode()
            tip = f"L{li} H{h} · entropy {ent[li, h]:.2f} · prev-token {prev[li, h]:.2f}"
            tip += f" · induction {ind[li, h]:.2f}" if np.isfinite(ind[li, h]) else ""
            selected = " selected" if li == layer and (average or h == head) else ""
            parts.append(
                f'<button class="cell{selected}" data-layer="{li}" data-head="{h}" title="{tip}" '
                f'aria-label="layer {li} head {h}"><img src="data:image/png;base64,{src}" alt=""></button>'
            )
    parts.append("</div>")
    return "".join(parts)


GRID_CSS = """
.grid { display: grid; gap: 3px; overflow-x: auto; padding: 4px; }
.hdr { font-size: 11px; color: #6b7280; display: flex; align-items: center; justify-content: center; }
.cell { padding: 0; border: 1px solid #e5e7eb; border-radius: 3px; cursor: pointer; background: white;
        aspect-ratio: 1; }
.cell img { width: 100%; height: 100%; display: block; image-rendering: pixelated; border-radius: 2px; }
.cell:hover { border-color: #f97316; }
.cell.selected { outline: 2px solid #f97316; outline-offset: 1px; }
"""

GRID_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('[data-layer]');
  if (!cell) return;
  element.querySelectorAll('.cell.selected').forEach((c) => c.classList.remove('selected'));
  cell.classList.add('selected');
  trigger('click', {layer: Number(cell.dataset.layer), head: Number(cell.dataset.head)});
});
"""

# Runs in the browser when the sliders move: the grid's outline follows without a server round trip.
HIGHLIGHT_JS = """
(key, layer, head, average) => {
  document.querySelectorAll('#attn-grid .cell').forEach((c) => c.classList.toggle('selected',
    Number(c.dataset.layer) === layer && (average || Number(c.dataset.head) === head)));
  return [key, layer, head, average];
}
"""

CHIP_COLORS = ("#dbeafe", "#fce7f3", "#dcfce7", "#fef3c7", "#ede9fe")


def chips_html(result: AttentionResult) -> str:
    chips = [
        f'<span class="chip" style="background:{CHIP_COLORS[i % len(CHIP_COLORS)]}" '
        f'title="position {i} · token id {t}">{html.escape(lab)}</span>'
        for i, (t, lab) in enumerate(zip(result.tokens, result.labels))
    ]
    return '<div class="chips">' + "".join(chips) + "</div>"


CHIPS_CSS = """
.chips { display: flex; flex-wrap: wrap; gap: 3px; max-height: 9.5em; overflow-y: auto; padding: 2px; }
.chip { font-family: ui-monospace, monospace; font-size: 12.5px; padding: 1px 5px; border-radius: 4px;
        white-space: pre; color: #111827; }
"""


# --- callbacks ----------------------------------------------------------------------------------


def compute(runs_dir: Path, choice: str | None, text: str, max_tokens: int = MAX_TOKENS):
    """Run the model on the text. Returns (result or None, Markdown note)."""
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


def show_callback(runs_dir: Path, choice, text_value, layer_value, head_value, average_value, kind_value):
    """Show attention: (note, chips, layer, head, heatmap, summary, summary note, grid, result key)."""
    try:
        result, message = compute(runs_dir, choice, text_value)
    except Exception as e:  # never a stack trace in the browser
        result, message = None, f"⚠ Could not compute attention: {type(e).__name__}: {e}"
    if result is None:
        return (message,) + (gr.update(),) * 8
    L, H = result.n_layer, result.n_head
    lay, hd = min(int(layer_value), L - 1), min(int(head_value), H - 1)
    return (
        message,
        chips_html(result),
        gr.update(maximum=max(L - 1, 1), value=lay, interactive=L > 1),
        gr.update(maximum=max(H - 1, 1), value=hd, interactive=H > 1),
        heatmap_figure(result, lay, hd, average_value),
        summary_figure(result, kind_value),
        summary_note(result, kind_value),
        grid_html(result, lay, hd, average_value),
        _remember(result),
    )


def build_tab(runs_dir: Path) -> None:
    """The Attention tab's components and events (called inside `with gr.Tab(...)`)."""
    runs_dir = Path(runs_dir)
    gr.Markdown(
        "Which tokens does each head look at? Rows are queries (the token being predicted from), "
        "columns keys (the tokens it attends to); each row sums to 1."
    )
    model, _ = model_picker(runs_dir, "attn")
    text = gr.Textbox(DEFAULT_TEXT, label="Text", lines=3, max_lines=8, elem_id="attn-text")
    with gr.Row():
        run = gr.Button("Show attention", variant="primary", elem_id="attn-run")
        example = gr.Button("↻ Repeated random tokens (induction probe)", elem_id="attn-example")
    note = gr.Markdown(elem_id="attn-note")
    chips = gr.HTML(css_template=CHIPS_CSS, js_on_load=None, elem_id="attn-chips")
    key = gr.State(None)
    example_seed = gr.State(0)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                layer = gr.Slider(0, 1, value=0, step=1, label="Layer", elem_id="attn-layer")
                head = gr.Slider(0, 1, value=0, step=1, label="Head", elem_id="attn-head")
                average = gr.Checkbox(False, label="Average over heads", elem_id="attn-average")
            heatmap = gr.Plot(
                message_figure("Pick a model and press Show attention"), show_label=False, elem_id="attn-heatmap"
            )
        with gr.Column(scale=2):
            kind = gr.Radio(list(SUMMARIES), value=SUMMARIES[0], label="Per-head summary", elem_id="attn-kind")
            summary = gr.Plot(message_figure(""), show_label=False, elem_id="attn-summary")
            summary_md = gr.Markdown(elem_id="attn-summary-note")
    gr.Markdown("#### All heads — click one to open it (hover for its scores)")
    grid = gr.HTML(css_template=GRID_CSS, js_on_load=GRID_JS, elem_id="attn-grid")

    def redraw(key_value, layer_value, head_value, average_value):
        result = _recall(key_value)
        if result is None:
            return message_figure("Press Show attention")
        return heatmap_figure(result, layer_value, head_value, average_value)

    def redraw_summary(key_value, kind_value):
        result = _recall(key_value)
        if result is None:
            return message_figure(""), ""
        return summary_figure(result, kind_value), summary_note(result, kind_value)

    def pick(key_value, evt: gr.EventData):
        layer_value, head_value = int(evt._data["layer"]), int(evt._data["head"])
        return layer_value, head_value, False, redraw(key_value, layer_value, head_value, False)

    def make_example(choice, seed):
        try:
            block = CACHE.get(runs_dir, choice).config.block_size
        except ModelError:
            block = 2 * 40 + 1
        n = max(1, min(40, (min(block, MAX_TOKENS) - 1) // 2))
        return decode(repeated_random_tokens(n, seed)), seed + 1

    show = functools.partial(show_callback, runs_dir)
    inputs = [model, text, layer, head, average, kind]
    outputs = [note, chips, layer, head, heatmap, summary, summary_md, grid, key]
    run.click(show, inputs, outputs)
    text.submit(show, inputs, outputs)
    model.input(show, inputs, outputs)
    example.click(make_example, [model, example_seed], [text, example_seed]).then(show, inputs, outputs)
    for control in (layer, head, average):
        control.input(redraw, [key, layer, head, average], heatmap, js=HIGHLIGHT_JS, trigger_mode="always_last")
    kind.change(redraw_summary, [key, kind], [summary, summary_md])
    grid.click(pick, key, [layer, head, average, heatmap])
