"""HTML and plotly figures for the Inside tab: tokens coloured by probability or by a loss change, the logit-lens
heatmap, the clickable layer x head grid and the side-by-side samples.

Pure functions of core.probe results (no Gradio), so tests compare what they draw with core's numbers. Colours are
colour-blind safe: viridis for probabilities, ColorBrewer's RdBu for changes (red: the loss went up).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from core.attention import token_label
from core.tokenizer import token_str

if TYPE_CHECKING:
    from core.probe import Comparison, LogitLens, TokenLogprobs

LOG_MIN = -4  # probabilities below 1e-4 share the darkest colour: random guessing over 50,257 tokens is 2e-5
LENS_COLUMNS = 24  # positions drawn at once in the logit lens; a slider moves the window
LENS_LABEL = 6  # characters of the top token written in a lens cell

_VIRIDIS = np.array([plotly.colors.hex_to_rgb(c) for c in plotly.colors.sequential.Viridis], dtype=np.float64)
_RDBU = np.array([plotly.colors.unlabel_rgb(c) for c in plotly.colors.diverging.RdBu], dtype=np.float64)
_BLUES = np.array([plotly.colors.unlabel_rgb(c) for c in plotly.colors.sequential.Blues], dtype=np.float64)
_PERCENT_TICKS = ["≤0.01%", "0.1%", "1%", "10%", "100%"]


# --- colours --------------------------------------------------------------------------------------
def _sample(stops: np.ndarray, x: float) -> tuple[int, int, int]:
    """The colour at x in [0, 1] along evenly spaced stops, linearly interpolated."""
    pos = min(max(x, 0.0), 1.0) * (len(stops) - 1)
    lo = min(int(pos), len(stops) - 2)
    rgb = stops[lo] * (1 - (pos - lo)) + stops[lo + 1] * (pos - lo)
    return tuple(int(round(v)) for v in rgb)  # type: ignore[return-value]


def _style(rgb: tuple[int, int, int]) -> str:
    """Background rgb with black or white text, whichever reads better (relative luminance)."""
    r, g, b = (v / 255 for v in rgb)
    ink = "#111827" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#ffffff"
    return f"background:rgb{rgb};color:{ink}"


def prob_scale(p: float) -> float:
    """Where probability p sits on the log colour scale: 0 at 1e-4 (or below), 1 at 1."""
    return (math.log10(min(max(p, 10.0**LOG_MIN), 1.0)) - LOG_MIN) / -LOG_MIN


def prob_style(p: float) -> str:
    return _style(_sample(_VIRIDIS, prob_scale(p)))


def diff_style(diff: float, scale: float) -> str:
    """Red where the loss went up (diff > 0), blue where it went down; full colour at |diff| >= scale."""
    return _style(_sample(_RDBU, 0.5 - 0.5 * diff / scale))


def _gradient(stops: np.ndarray) -> str:
    return ", ".join(f"rgb{tuple(int(v) for v in s)}" for s in stops)


def prob_legend() -> str:
    ticks = "".join(f"<span>{t}</span>" for t in _PERCENT_TICKS)
    return (
        '<div class="legend"><span class="legend-title">probability the model gave the token (log scale)</span>'
        f'<div class="bar" style="background:linear-gradient(90deg, {_gradient(_VIRIDIS)})"></div>'
        f'<div class="ticks">{ticks}</div></div>'
    )


def diff_legend(scale: float, what: str) -> str:
    ticks = f"<span>−{scale:.2g}</span><span>0</span><span>+{scale:.2g}</span>"
    return (
        f'<div class="legend"><span class="legend-title">{html.escape(what)} (nats)</span>'
        f'<div class="bar" style="background:linear-gradient(90deg, {_gradient(_RDBU[::-1])})"></div>'
        f'<div class="ticks">{ticks}</div></div>'
    )


# --- tokens ---------------------------------------------------------------------------------------
def token_text(token: int) -> str:
    """A token as it reads in running text, escaped; a newline gets a visible ↵ so it can be hovered."""
    return html.escape(token_str(token).replace("\n", "↵\n"))


def _percent(p: float) -> str:
    return f"{p:.2%}" if p >= 0.0001 else f"{p:.1e}"


def token_popup(lp: TokenLogprobs, i: int) -> str:
    """The hover card of prediction i (token i + 1): its probability and rank, and the alternatives as buttons."""
    true = lp.tokens[i + 1]
    alts = "".join(
        f'<button class="alt" data-pos="{i}" data-token="{int(t)}"><code>{html.escape(token_label(int(t)))}</code>'
        f"<span>{_percent(float(p))}</span></button>"
        for t, p in zip(lp.top_tokens[i], lp.top_probs[i])
        if int(t) != true
    )
    return (
        f'<span class="pop"><span class="pop-head"><code>{html.escape(token_label(true))}</code> '
        f'p = <b class="p">{_percent(math.exp(float(lp.logprob[i])))}</b> · '
        f'rank <b class="rank">{int(lp.rank[i]):,}</b></span>'
        '<span class="pop-sub">other candidates — click one to continue from here with it in Sampling:</span>'
        f"{alts}</span>"
    )


def text_html(lp: TokenLogprobs) -> str:
    """The text, each token coloured by the probability the model gave it, with a hover card per token."""
    parts = [
        f'<span class="tok first" title="the first token: nothing before it to predict it from">'
        f"{token_text(lp.tokens[0])}</span>"
    ]
    for i, token in enumerate(lp.tokens[1:]):
        style = prob_style(math.exp(float(lp.logprob[i])))
        parts.append(f'<span class="tok" data-pos="{i}" style="{style}">{token_text(token)}{token_popup(lp, i)}</span>')
    return f'{prob_legend()}<div class="probe-text">{"".join(parts)}</div>'


def diff_html(cmp: Comparison, what: str, label_a: str, label_b: str) -> str:
    """The text coloured by the per-token loss change loss_b - loss_a; hover shows both losses."""
    scale = max(0.5, float(np.nanmax(np.abs(cmp.diff))) if len(cmp.diff) else 0.5)
    parts = [f'<span class="tok first" title="the first token is not predicted">{token_text(cmp.tokens[0])}</span>']
    for i, token in enumerate(cmp.tokens[1:]):
        a, b, d = float(cmp.loss_a[i]), float(cmp.loss_b[i]), float(cmp.diff[i])
        tip = f"{label_a}: {a:.3f} nats · {label_b}: {b:.3f} nats · change {d:+.3f}"
        parts.append(
            f'<span class="tok" data-pos="{i}" data-diff="{d:.6f}" style="{diff_style(d, scale)}" '
            f'title="{html.escape(tip)}">{token_text(token)}</span>'
        )
    return f'{diff_legend(scale, what)}<div class="probe-text">{"".join(parts)}</div>'


TEXT_CSS = """
.legend { display: grid; grid-template-columns: max-content 260px; align-items: center; gap: 2px 12px;
  margin: 4px 0 10px; font-size: 12px; color: var(--body-text-color-subdued); }
.legend-title { grid-row: span 2; }
.legend .bar { height: 10px; border-radius: 3px; }
.legend .ticks { display: flex; justify-content: space-between; font-variant-numeric: tabular-nums; }
.probe-text { font-family: var(--font-mono); font-size: 14px; line-height: 1.9; white-space: pre-wrap;
  word-break: break-word; padding: 10px 12px; border: 1px solid var(--border-color-primary); border-radius: 10px; }
.tok { position: relative; border-radius: 3px; padding: 1px 0; cursor: default; }
.tok.first { color: var(--body-text-color-subdued); }
.tok:hover { outline: 2px solid #f97316; z-index: 5; }
.pop { display: none; position: absolute; top: 100%; left: 0; z-index: 60; min-width: 230px; padding: 8px;
  white-space: normal; background: var(--background-fill-primary); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); border-radius: 8px; box-shadow: 0 6px 18px rgba(0,0,0,.18);
  font-size: 12.5px; line-height: 1.4; font-family: var(--font); }
.tok:hover > .pop { display: block; }
.pop-head { display: block; margin-bottom: 4px; }
.pop-sub { display: block; color: var(--body-text-color-subdued); font-size: 11.5px; margin-bottom: 4px; }
.alt { display: flex; justify-content: space-between; gap: 12px; width: 100%; padding: 2px 6px; margin: 1px 0;
  border: 1px solid var(--border-color-primary); border-radius: 4px; background: var(--background-fill-secondary);
  cursor: pointer; font-size: 12.5px; color: var(--body-text-color); }
.alt:hover { border-color: #2563eb; background: #dbeafe; color: #0f172a; }
.alt code, .pop-head code { white-space: pre; font-family: var(--font-mono); }
"""

TEXT_JS = """
element.addEventListener('click', (e) => {
  const alt = e.target.closest('button.alt');
  if (!alt) return;
  trigger('click', {pos: Number(alt.dataset.pos), token: Number(alt.dataset.token)});
});
"""


def text_summary(lp: TokenLogprobs, model_name: str) -> str:
    """Markdown: the text's size, mean loss and perplexity."""
    return (
        f"**{len(lp.tokens)} tokens** · `{model_name}` · loss **{lp.loss:.4f}** nats/token · "
        f"perplexity **{format_perplexity(lp.perplexity)}**. Hover a token for what the model expected instead."
    )


def format_perplexity(value: float) -> str:
    return f"{value:,.2f}"


# --- logit lens -----------------------------------------------------------------------------------
def lens_window(n_positions: int, start: int | float | None) -> range:
    """The positions drawn: LENS_COLUMNS of them from start, moved back to fit."""
    first = min(max(int(start or 0), 0), max(0, n_positions - LENS_COLUMNS))
    return range(first, min(n_positions, first + LENS_COLUMNS))


def _lens_hover(lens: LogitLens, layer: int, pos: int) -> str:
    tops = " · ".join(
        f"{html.escape(token_label(int(t)))} {_percent(float(p))}"
        for t, p in zip(lens.top_tokens[layer, pos], lens.top_probs[layer, pos])
    )
    if pos + 1 < len(lens.tokens):
        nxt = html.escape(token_label(lens.tokens[pos + 1]))
        return f"top: {tops}<br>true next token “{nxt}”: {_percent(float(lens.true_prob[layer, pos]))}"
    return f"top: {tops}<br>(the last position: no true next token)"


def lens_figure(lens: LogitLens, start: int | float | None = 0) -> go.Figure:
    """Layers (rows, embeddings at the bottom) x positions: the top token in each cell, coloured by the
    probability of the token that really came next (log scale)."""
    cols = lens_window(len(lens.tokens), start)
    labels = lens.layer_labels
    x = [f"{p} {token_label(lens.tokens[p])[:10]}" for p in cols]
    with np.errstate(divide="ignore"):
        z = np.log10(np.clip(lens.true_prob[:, cols.start : cols.stop], 10.0**LOG_MIN, 1.0))
    text = [[token_label(int(lens.top_tokens[lay, p, 0]))[:LENS_LABEL] for p in cols] for lay in range(len(labels))]
    hover = [[_lens_hover(lens, lay, p) for p in cols] for lay in range(len(labels))]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=labels,
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            textfont=dict(family="monospace", size=10),
            colorscale="Viridis",
            zmin=LOG_MIN,
            zmax=0,
            hoverongaps=False,
            hovertemplate="%{y} · position %{x}<br>%{customdata}<extra></extra>",
            colorbar=dict(
                title=dict(text="p(true next)", side="right"),
                tickvals=list(range(LOG_MIN, 1)),
                ticktext=_PERCENT_TICKS,
                thickness=12,
            ),
        )
    )
    fig.update_layout(
        height=int(min(760, 150 + 30 * len(labels))),
        margin=dict(l=10, r=10, t=10, b=10),
        plot_bgcolor="#f3f4f6",
        xaxis=dict(title="position and input token", tickangle=-60, tickfont=dict(size=10, family="monospace")),
        yaxis=dict(title="read out after", tickfont=dict(size=11)),
    )
    return fig


# --- head grid ------------------------------------------------------------------------------------
def grid_html(n_layer: int, n_head: int, selected: Sequence[Sequence[int]], scores: np.ndarray | None = None) -> str:
    """A layer x head grid of toggle buttons; selected (ablated) heads are black with a ✕. With induction scores,
    each cell is tinted by its score (light blues only, so a tint never looks selected) and its tooltip gives it."""
    chosen = {(int(lay), int(h)) for lay, h in selected}
    cell = int(min(40, max(24, 900 // max(n_head, 1))))
    parts = [f'<div class="head-grid" style="grid-template-columns: 2.6em repeat({n_head}, {cell}px)"><div></div>']
    parts += [f'<div class="hdr">H{h}</div>' for h in range(n_head)]
    for lay in range(n_layer):
        parts.append(f'<div class="hdr">L{lay}</div>')
        for h in range(n_head):
            tip = f"layer {lay} head {h}"
            style = ""
            if scores is not None and np.isfinite(scores[lay, h]):
                tip += f" · induction score {scores[lay, h]:.2f}"
                style = f' style="{_style(_sample(_BLUES, 0.6 * float(scores[lay, h])))}"'
            on = " on" if (lay, h) in chosen else ""
            parts.append(
                f'<button class="head{on}" data-layer="{lay}" data-head="{h}" title="{tip}" '
                f'aria-pressed="{str(bool(on)).lower()}"{style}>{"✕" if on else h}</button>'
            )
    parts.append("</div>")
    return "".join(parts)


GRID_CSS = """
.head-grid { display: grid; gap: 3px; overflow-x: auto; padding: 4px; }
.hdr { font-size: 11px; color: var(--body-text-color-subdued); display: flex; align-items: center;
  justify-content: center; }
.head { aspect-ratio: 1; padding: 0; font-size: 11px; border: 1px solid var(--border-color-primary); border-radius: 4px;
  background: var(--background-fill-secondary); color: var(--body-text-color); cursor: pointer; }
.head:hover { border-color: #f97316; }
.head.on { background: #111827 !important; color: #ffffff !important; border: 2px solid #f97316; font-weight: 700; }
"""

# Toggles in the browser at once, then sends the whole selection (so a lost event cannot desynchronize it).
GRID_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('button.head');
  if (!cell) return;
  const on = !cell.classList.contains('on');
  cell.classList.toggle('on', on);
  cell.setAttribute('aria-pressed', String(on));
  cell.textContent = on ? '✕' : cell.dataset.head;
  const heads = [...element.querySelectorAll('button.head.on')].map(
    (c) => [Number(c.dataset.layer), Number(c.dataset.head)]);
  trigger('click', {heads: heads});
});
"""


def heads_label(heads: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"L{lay} H{h}" for lay, h in sorted((int(a), int(b)) for a, b in heads))


# --- two samples ----------------------------------------------------------------------------------
def samples_html(prompt: str, samples: Sequence[tuple[str, str]]) -> str:
    """Samples side by side: (title, completion) each, after the same prompt (shown greyed)."""
    tail = prompt[-200:]
    shown = html.escape(("…" if len(prompt) > len(tail) else "") + tail)
    cards = "".join(
        f'<div class="sample" data-sample="{i}"><div class="sample-head">{html.escape(title)}</div>'
        f'<pre class="sample-text"><span class="prompt">{shown}</span>'
        f'<span class="completion">{html.escape(text)}</span></pre></div>'
        for i, (title, text) in enumerate(samples)
    )
    return f'<div class="side-by-side">{cards}</div>'


SAMPLES_CSS = """
.side-by-side { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.sample { border: 1px solid var(--border-color-primary); border-radius: 10px; overflow: hidden; }
.sample-head { font-size: 12px; color: var(--body-text-color-subdued); padding: 5px 12px;
  background: var(--background-fill-secondary); border-bottom: 1px solid var(--border-color-primary); }
.sample-text { margin: 0; padding: 10px 12px; white-space: pre-wrap; word-break: break-word; font-size: 13px;
  line-height: 1.5; font-family: var(--font-mono); max-height: 360px; overflow-y: auto; background: none; }
.prompt { color: #94a3b8; }
"""
