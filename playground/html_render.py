"""HTML fragments of the Sampling and Attention tabs, each with the CSS and browser JS of its gr.HTML component.

Sample cards, clickable prompt-token chips, coloured token chips, and the clickable overview grid of attention
heads (small PNG heatmaps: Gradio's Plot has no click event, gr.HTML's trigger() does). Pure functions of their
data; the markup's classes and data attributes are what the CSS and JS next to it rely on.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib

import numpy as np

from core.attention import AttentionResult, induction_scores, previous_token_scores, token_label
from playground.figures import BLUES

# ----- Sampling: the samples as they stream -------------------------------------------------------------------------

STOP_REASONS = {"eot": "ended with <|endoftext|>", "stop": "hit a stop string", "length": "reached max new tokens"}
SHOWN_PROMPT_CHARS = 300  # the end of the prompt, in grey, before each sample

EMPTY_SAMPLES = '<div class="empty">Samples stream here. Press <b>Generate</b>.</div>'

SAMPLES_CSS = """
.samples { display: flex; flex-direction: column; gap: 10px; }
.sample { border: 1px solid var(--border-color-primary); border-radius: 10px; overflow: hidden; }
.sample-head { font-size: 12px; color: var(--body-text-color-subdued); padding: 5px 12px;
  background: var(--background-fill-secondary); border-bottom: 1px solid var(--border-color-primary); }
.sample-text { margin: 0; padding: 10px 12px; white-space: pre-wrap; word-break: break-word; font-size: 13.5px;
  line-height: 1.5; font-family: var(--font-mono); max-height: 420px; overflow-y: auto; background: none; }
.prompt { color: #94a3b8; }
.completion { color: var(--body-text-color); }
.cursor { color: #2563eb; animation: blink 1s step-end infinite; }
@keyframes blink { 50% { opacity: 0; } }
.empty { color: var(--body-text-color-subdued); font-size: 14px; padding: 28px; text-align: center;
  border: 1px dashed var(--border-color-primary); border-radius: 10px; }
"""


def samples_html(prompt: str, texts: list[str], reasons: list[str | None], running: bool) -> str:
    """One card per sample: the end of the prompt, the text so far, and why it ended (or a cursor while running)."""
    tail = prompt[-SHOWN_PROMPT_CHARS:]
    shown_prompt = ("…" if len(prompt) > len(tail) else "") + tail
    cards = []
    for i, (text, reason) in enumerate(zip(texts, reasons)):
        state = STOP_REASONS.get(reason or "", "generating…" if running else "stopped")
        cursor = '<span class="cursor">▌</span>' if running and reason is None else ""
        head = html.escape((f"Sample {i + 1} · " if len(texts) > 1 else "") + state)
        cards.append(
            f'<div class="sample" data-sample="{i}"><div class="sample-head">{head}</div>'
            f'<pre class="sample-text"><span class="prompt">{html.escape(shown_prompt)}</span>'
            f'<span class="completion">{html.escape(text)}</span>{cursor}</pre></div>'
        )
    return '<div class="samples">' + "".join(cards) + "</div>"


# ----- Sampling: the prompt's tokens, click one to see what the model predicts after it ---------------------------

MAX_PROMPT_CHIPS = 200  # prompt tokens shown as clickable chips (the last ones)

PROMPT_CHIPS_CSS = """
.chips { display: flex; flex-wrap: wrap; gap: 3px; max-height: 8.5em; overflow-y: auto; padding: 2px; }
.chip { font-family: var(--font-mono); font-size: 12px; padding: 1px 5px; border-radius: 4px; white-space: pre;
  border: 1px solid #e2e8f0; background: #f8fafc; color: #0f172a; cursor: pointer; }
.chip:hover { border-color: #2563eb; }
.chip.selected { background: #2563eb; color: white; border-color: #2563eb; }
.more { color: #94a3b8; padding: 0 4px; }
"""

# A click selects the chip at once and sends its position back as the event's `pos`.
PROMPT_CHIPS_JS = """
element.addEventListener('click', (e) => {
  const chip = e.target.closest('[data-pos]');
  if (!chip) return;
  element.querySelectorAll('.chip.selected').forEach((c) => c.classList.remove('selected'));
  chip.classList.add('selected');
  trigger('click', {pos: Number(chip.dataset.pos)});
});
"""


def prompt_chips_html(tokens: list[int], selected: int) -> str:
    """The last MAX_PROMPT_CHIPS prompt tokens as buttons carrying their position; `selected` is highlighted."""
    start = max(0, len(tokens) - MAX_PROMPT_CHIPS)
    chips = ['<span class="more">…</span>'] if start else []
    for i in range(start, len(tokens)):
        cls = "chip selected" if i == selected else "chip"
        chips.append(
            f'<button class="{cls}" data-pos="{i}" title="position {i} · id {tokens[i]}">'
            f"{html.escape(token_label(tokens[i]))}</button>"
        )
    return '<div class="chips">' + "".join(chips) + "</div>"


# ----- Attention: the tokens of the text ----------------------------------------------------------------------------

TOKEN_COLORS = ("#dbeafe", "#fce7f3", "#dcfce7", "#fef3c7", "#ede9fe")

TOKEN_CHIPS_CSS = """
.chips { display: flex; flex-wrap: wrap; gap: 3px; max-height: 9.5em; overflow-y: auto; padding: 2px; }
.chip { font-family: ui-monospace, monospace; font-size: 12.5px; padding: 1px 5px; border-radius: 4px;
        white-space: pre; color: #111827; }
"""


def token_chips_html(result: AttentionResult) -> str:
    """The text as its tokens, in alternating colours so their boundaries show."""
    chips = [
        f'<span class="chip" style="background:{TOKEN_COLORS[i % len(TOKEN_COLORS)]}" '
        f'title="position {i} · token id {t}">{html.escape(lab)}</span>'
        for i, (t, lab) in enumerate(zip(result.tokens, result.labels))
    ]
    return '<div class="chips">' + "".join(chips) + "</div>"


# ----- Attention: every head as a small clickable map ---------------------------------------------------------------

_BLUES_ARRAY = np.array(BLUES, dtype=np.float64)

GRID_CSS = """
.grid { display: grid; gap: 3px; overflow-x: auto; padding: 4px; }
.hdr { font-size: 11px; color: #6b7280; display: flex; align-items: center; justify-content: center; }
.cell { padding: 0; border: 1px solid #e5e7eb; border-radius: 3px; cursor: pointer; background: white;
        aspect-ratio: 1; }
.cell img { width: 100%; height: 100%; display: block; image-rendering: pixelated; border-radius: 2px; }
.cell:hover { border-color: #f97316; }
.cell.selected { outline: 2px solid #f97316; outline-offset: 1px; }
"""

# A click outlines the cell at once and sends its `layer` and `head` back with the event.
GRID_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('[data-layer]');
  if (!cell) return;
  element.querySelectorAll('.cell.selected').forEach((c) => c.classList.remove('selected'));
  cell.classList.add('selected');
  trigger('click', {layer: Number(cell.dataset.layer), head: Number(cell.dataset.head)});
});
"""


def _png(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG encoder (no imaging library needed for these thumbnails)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _colorize(v: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] -> uint8 RGB on the same sqrt-scaled Blues as the big heatmap (figures.COLORSCALE)."""
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
    """A layer x head grid of thumbnails; hovering one shows its scores, the picked head (or layer) is outlined."""
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
