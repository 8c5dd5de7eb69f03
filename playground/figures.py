"""The plotly figures of every tab: Monitor's loss curves and training-health panels, Sampling's next-token bars,
Attention's heatmaps and per-head summaries.

Pure functions of their data (no Gradio), so they are unit-tested on real metrics files, logits and attention
maps. Only the drawing is downsampled; the records themselves are never thinned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from core.attention import AttentionResult, induction_scores, previous_token_scores, token_label
from core.references import HELLASWAG_CHANCE, Reference, hellaswag_references
from core.sampling_config import SamplingConfig

if TYPE_CHECKING:
    import torch

X_AXES = {"step": "Step", "tokens": "Tokens", "time": "Wall time (min)"}
MAX_POINTS = 1500  # per trace; browsers stay smooth and a 100k-step run still shows its spikes
COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]
FONT = dict(family="Inter, system-ui, sans-serif", size=13, color="#1f2937")

Records = Sequence[dict[str, Any]]

# ----- Monitor: loss curves and training health from metrics records -----------------------------------------------


def finite(v: Any) -> bool:
    """A real number that is neither NaN nor inf (a bool is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ema(values: Sequence[float | None], smoothing: float) -> list[float | None]:
    """TensorBoard's debiased exponential moving average; gaps (None/NaN) stay gaps and do not reset it."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out: list[float | None] = []
    last, n = 0.0, 0
    for v in values:
        if not finite(v):
            out.append(None)
            continue
        last = last * smoothing + (1 - smoothing) * v
        n += 1
        # Dividing by 1 - s^n removes the bias towards the zero the average started from.
        out.append(last / (1 - smoothing**n) if smoothing > 0 else float(v))
    return out


def downsample_indices(n: int, max_points: int = MAX_POINTS, values: Sequence[float | None] | None = None) -> list[int]:
    """Indices to draw: all if n <= max_points, else first, last and per bucket the min and max of values
    (or evenly spaced indices without values), so spikes survive the thinning."""
    if n <= max_points:
        return list(range(n))
    buckets = max(1, (max_points - 2) // 2)
    bounds = [1 + b * (n - 2) // buckets for b in range(buckets + 1)]  # bucket b is [bounds[b], bounds[b + 1])
    keep = {0, n - 1}
    if values is None:
        keep.update(lo for lo, hi in zip(bounds, bounds[1:]) if lo < hi)
        return sorted(keep)
    # Vectorized (a 100k-step run is thinned on every Monitor tick): sort by (bucket, value), the first of each
    # bucket is its min (with -value: its max); gaps (None, NaN, inf) are dropped first, ties keep the lowest index.
    v = np.array([np.nan if x is None else x for x in values[1 : n - 1]], dtype=np.float64)
    idx = np.arange(1, n - 1)
    bucket = np.searchsorted(np.asarray(bounds), idx, side="right") - 1
    ok = np.isfinite(v)
    idx, bucket, v = idx[ok], bucket[ok], v[ok]
    for key in (v, -v):
        order = np.lexsort((key, bucket))
        first = np.ones(len(order), dtype=bool)
        first[1:] = bucket[order][1:] != bucket[order][:-1]
        keep.update(idx[order][first].tolist())
    return sorted(keep)


def split_records(records: Records) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"train": [], "eval": [], "sample": [], "status": []}
    for r in records:
        out.setdefault(r.get("kind", ""), []).append(r)
    return out


def x_values(records: Records, axis: str, train: Records, t0: float | None) -> list[float | None]:
    """The x coordinate of each record: its step, the tokens seen at that step, or minutes since the run began."""
    if axis == "step":
        return [r.get("step") for r in records]
    if axis == "tokens":
        # Eval records carry only a step: look up the tokens the train record of that step reported.
        by_step = {r.get("step"): r.get("tokens") for r in train}
        per_step = next((r["tokens"] / r["step"] for r in reversed(train) if r.get("tokens") and r.get("step")), None)
        out = []
        for r in records:
            tok = r.get("tokens", by_step.get(r.get("step")))
            if tok is None and per_step and r.get("step") is not None:
                tok = r["step"] * per_step
            out.append(tok)
        return out
    if axis == "time":
        return [(r["time"] - t0) / 60 if t0 is not None and finite(r.get("time")) else None for r in records]
    raise ValueError(f"x axis must be one of {', '.join(X_AXES)}, got {axis!r}")


def _t0(records: Records) -> float | None:
    """The run's first record time (records are in the order they were written)."""
    return next((r["time"] for r in records if finite(r.get("time"))), None)


def _base_layout(fig: go.Figure, x_axis: str, uirevision: str, height: int) -> None:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=60, r=20, t=48, b=48),
        font=FONT,
        hovermode="x unified",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        uirevision=uirevision,  # keeps the user's zoom and hidden traces across timer refreshes
    )
    fig.update_xaxes(showgrid=True, gridcolor="#eef0f3", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#eef0f3", zeroline=False)


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=15))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _line(xs: list, ys: list, max_points: int, keep_spikes: bool = True, **kw: Any) -> go.Scatter:
    """A line trace through at most about max_points of the points (see downsample_indices); a lone point (a run
    that logged one step) is drawn as a marker, as a line through one point is invisible."""
    keep = downsample_indices(len(ys), max_points, ys if keep_spikes else None)
    mode = "lines+markers" if sum(finite(ys[j]) for j in keep) == 1 else "lines"
    return go.Scatter(x=[xs[j] for j in keep], y=[ys[j] for j in keep], mode=mode, **kw)


# A log axis labels the ticks between powers of ten with their first digit alone ("3" for 0.3): "~g" prints the
# whole number (0.3, 1, 20) on every tick.
LOG_AXIS = dict(type="log", tickformat="~g")


def failures(runs: dict[str, Records]) -> list[str]:
    """'failed at step 1: CUDA out of memory...' for each run whose last status record says it failed."""
    out = []
    for name, records in runs.items():
        last = next((r for r in reversed(records) if r.get("kind") == "status"), None)
        if last and last.get("state") == "failed":
            why = str(last.get("message") or "no message").splitlines()[0]
            why = why if len(why) <= 110 else why[:109] + "…"
            prefix = f"{name} " if len(runs) > 1 else ""
            out.append(f"{prefix}failed at step {last.get('step', '?')}: {why}")
    return out


def _annotate_failures(fig: go.Figure, failed: list[str]) -> None:
    """Why a curve stops, written on the chart itself (top right, one line per failed run)."""
    for i, text in enumerate(failed):
        fig.add_annotation(
            text=text,
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.99,
            y=0.97 - 0.07 * i,
            xanchor="right",
            font=dict(size=12, color="#991b1b"),
            bgcolor="#fef2f2",
        )


def loss_figure(
    runs: dict[str, Records],
    smoothing: float = 0.6,
    x_axis: str = "step",
    log_y: bool = False,
    uirevision: str = "loss",
    max_points: int = MAX_POINTS,
    references: Sequence[Reference] = (),
) -> go.Figure:
    """Train loss (raw, faint) with its EMA, and val loss points, for one or more runs on one chart, with the
    references (core.references.loss_references) as dashed lines across the drawn steps."""
    fig = go.Figure()
    _base_layout(fig, x_axis, uirevision, height=430)
    fig.update_layout(title=dict(text="Loss", x=0.01, font=dict(size=16)))
    drawn = False
    for i, (name, records) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        parts = split_records(records)
        train, evals, t0 = parts["train"], parts["eval"], _t0(records)
        label = name if len(runs) > 1 else "train"
        if train:
            xs = x_values(train, x_axis, train, t0)
            raw = [r.get("loss") for r in train]
            fig.add_trace(
                _line(
                    xs,
                    raw,
                    max_points,
                    line=dict(color=color, width=1),
                    opacity=0.25,
                    name=f"{label} (raw)",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                _line(
                    xs,
                    ema(raw, smoothing),
                    max_points,
                    keep_spikes=False,  # an average has none: evenly spaced points draw it best
                    line=dict(color=color, width=2.2),
                    name=f"{label} loss" if len(runs) > 1 else "train loss (smoothed)",
                    legendgroup=name,
                    hovertemplate="%{y:.4f}",
                )
            )
            drawn = True
        vals = [r for r in evals if finite(r.get("val_loss"))]
        if vals:
            xs = x_values(vals, x_axis, train, t0)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[r["val_loss"] for r in vals],
                    mode="lines+markers",
                    line=dict(color=color, width=1.2, dash="dot"),
                    marker=dict(color=color, size=8, symbol="diamond", line=dict(color="white", width=1)),
                    name=f"{name} val" if len(runs) > 1 else "val loss",
                    legendgroup=name,
                    hovertemplate="val %{y:.4f}",
                )
            )
            drawn = True
    failed = failures(runs)
    if not drawn:
        return _empty(
            fig, "<br>".join(failed) or "No training steps recorded yet: the curve appears with the first ones"
        )
    _annotate_failures(fig, failed)
    add_references(fig, references, log_y)
    fig.update_xaxes(title_text=X_AXES[x_axis])
    fig.update_yaxes(title_text="cross-entropy loss", **(LOG_AXIS if log_y else dict(type="linear")))
    return fig


REFERENCE_COLORS = ["#6b7280", "#b45309", "#7c3aed"]


def add_references(fig: go.Figure, references: Sequence[Reference], log_y: bool = False) -> None:
    """Each reference as a dashed horizontal line across the x range drawn so far, named in the legend and labelled
    above its right end. Line traces, not shapes, so that a log y axis places them by value like the curves; the
    labels are annotations, whose y a log axis reads as log10 of the value."""
    xs = [x for trace in fig.data for x in (trace.x or ()) if finite(x)]
    if not xs:
        return
    lo, hi = min(xs), max(xs)
    for i, ref in enumerate(references):
        color = REFERENCE_COLORS[i % len(REFERENCE_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[ref.value, ref.value],
                mode="lines",
                line=dict(color=color, width=1.2, dash="dash"),
                name=ref.label,
                legendgroup="references",
                hoverinfo="skip",
            )
        )
        fig.add_annotation(
            text=ref.label,
            x=hi,
            y=math.log10(ref.value) if log_y else ref.value,
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
            font=dict(size=11, color=color),
        )


def hellaswag_lines() -> list[Reference]:
    """The HellaSwag chart's references: GPT-2 and GPT-3 124M, and chance (one of four endings)."""
    chance = Reference(f"chance ({HELLASWAG_CHANCE:g})", HELLASWAG_CHANCE, "one of four endings")
    return [*hellaswag_references(), chance]


def _is_hellaswag(record: dict[str, Any]) -> bool:
    return record.get("kind") == "eval" and finite(record.get("hellaswag_acc_norm"))


def _hellaswag_records(records: Records) -> list[dict[str, Any]]:
    return [r for r in records if _is_hellaswag(r)]


def has_hellaswag(records: Records) -> bool:
    """Whether a run logged HellaSwag in its training loop (eval records with hellaswag_acc_norm)."""
    return any(_is_hellaswag(r) for r in records)


def hellaswag_figure(runs: dict[str, Records], x_axis: str = "step", uirevision: str = "hellaswag") -> go.Figure:
    """HellaSwag acc_norm at each evaluation of one or more runs, with GPT-2 124M, GPT-3 124M and chance."""
    fig = go.Figure()
    _base_layout(fig, x_axis, uirevision, height=430)
    fig.update_layout(title=dict(text="HellaSwag", x=0.01, font=dict(size=16)))
    for i, (name, records) in enumerate(runs.items()):
        results = _hellaswag_records(records)
        if not results:
            continue
        train = split_records(records)["train"]
        color = COLORS[i % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                x=x_values(results, x_axis, train, _t0(records)),
                y=[r["hellaswag_acc_norm"] for r in results],
                customdata=[r.get("hellaswag_n") for r in results],
                mode="lines+markers",
                line=dict(color=color, width=2),
                marker=dict(color=color, size=7),
                name=name if len(runs) > 1 else "acc_norm",
                legendgroup=name,
                hovertemplate="acc_norm %{y:.4f} (%{customdata} examples)",
            )
        )
    if not fig.data:
        return _empty(fig, "No HellaSwag results: train with --hellaswag-interval to evaluate it in the loop")
    add_references(fig, hellaswag_lines())
    fig.update_xaxes(title_text=X_AXES[x_axis])
    fig.update_yaxes(title_text="acc_norm", tickformat=".2f")
    return fig


PANELS = [("lr", "Learning rate"), ("grad_norm", "Gradient norm"), ("tok_per_s", "Tokens / s"), ("mfu", "MFU (%)")]


def health_figure(
    runs: dict[str, Records],
    x_axis: str = "step",
    log_y: bool = False,
    uirevision: str = "health",
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Learning rate, gradient norm, throughput and MFU (when the trainer knows it) as small panels."""
    from plotly.subplots import make_subplots  # it imports narwhals: paid on the first chart, not at app start

    if not any(_has(recs, "loss") for recs in runs.values()):
        fig = go.Figure()
        _base_layout(fig, x_axis, uirevision, height=120)
        return _empty(fig, "Learning rate, gradient norm and throughput appear with the first steps")
    panels = [p for p in PANELS if p[0] != "mfu" or any(_knows_mfu(recs) for recs in runs.values())]
    cols = len(panels)
    fig = make_subplots(rows=1, cols=cols, subplot_titles=[t for _, t in panels], horizontal_spacing=0.06)
    _base_layout(fig, x_axis, uirevision, height=290)
    # No legend: the runs have the loss chart's colors, and hovering names the run.
    fig.update_layout(hovermode="x", showlegend=False, margin=dict(l=50, r=20, t=40, b=48))
    for i, (name, records) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        train = split_records(records)["train"]
        if not train:
            continue
        xs = x_values(train, x_axis, train, _t0(records))
        for c, (key, title) in enumerate(panels, start=1):
            ys = [r.get(key) for r in train]
            if key == "mfu":
                ys = [y * 100 if finite(y) else None for y in ys]
            fig.add_trace(
                _line(
                    xs,
                    ys,
                    max_points,
                    line=dict(color=color, width=1.6),
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    hovertemplate=f"{title}: %{{y:.4g}}<extra>{name}</extra>",
                ),
                row=1,
                col=c,
            )
    for c, (key, _) in enumerate(panels, start=1):
        fig.update_xaxes(title_text=X_AXES[x_axis], row=1, col=c, title_font=dict(size=11))
        log = log_y and key == "grad_norm"
        fig.update_yaxes(**(LOG_AXIS if log else dict(type="linear")), row=1, col=c)
        fig.update_yaxes(exponentformat="power" if key == "lr" else "none", row=1, col=c)
    fig.update_annotations(font=dict(size=13))
    return fig


def _has(records: Records, key: str) -> bool:
    """A train record with a finite value of key; newest first, so a live 100k-step run answers at once."""
    return any(r.get("kind") == "train" and finite(r.get(key)) for r in reversed(records))


def _knows_mfu(records: Records) -> bool:
    """The trainer reports MFU on every step or on none (it knows the device's peak or not): ask the newest."""
    newest = next((r for r in reversed(records) if r.get("kind") == "train"), {})
    return finite(newest.get("mfu"))


# ----- Sampling: the next-token distribution ----------------------------------------------------------------------

TOP_BARS = 15  # candidates drawn in the next-token chart


def candidates_figure(logits: torch.Tensor, cfg: SamplingConfig, actual: int | None = None) -> go.Figure:
    """The most likely next tokens: the model's probability (temperature 1) and the one sampled from."""
    import torch

    from core.generation import filter_probs

    raw = logits.softmax(-1)
    final = filter_probs(logits[None], cfg)[0]
    order = torch.argsort(torch.maximum(raw, final), descending=True)[:TOP_BARS].tolist()
    labels = [f"{r + 1}. {token_label(t)[:18]}" for r, t in enumerate(order)]
    marks = ["  ← actual" if t == actual else "" for t in order]
    fig = go.Figure()
    fig.add_bar(
        y=labels,
        x=[raw[t].item() for t in order],
        orientation="h",
        name="model (temperature 1)",
        marker_color="#cbd5e1",
        hovertemplate="%{y}: %{x:.2%}<extra>model</extra>",
    )
    fig.add_bar(
        y=labels,
        x=[final[t].item() for t in order],
        orientation="h",
        name="sampled from (your settings)",
        marker_color="#2563eb",
        text=[f"{final[t].item():.1%}{m}" for t, m in zip(order, marks)],
        textposition="outside",
        cliponaxis=False,
        hovertemplate="%{y}: %{x:.2%}<extra>sampled from</extra>",
    )
    fig.update_layout(
        barmode="group",
        bargap=0.25,
        bargroupgap=0.05,
        height=470,
        margin=dict(l=10, r=40, t=10, b=10),
        legend=dict(orientation="h", y=-0.08, x=0),
        plot_bgcolor="white",
        xaxis=dict(
            tickformat=".0%", range=[0, min(1.0, max(final.max().item(), raw.max().item()) * 1.25)], gridcolor="#eef2f7"
        ),
        yaxis=dict(autorange="reversed", tickfont=dict(family="monospace", size=12)),
    )
    return fig


# ----- Attention: one head's map, and one number per head ---------------------------------------------------------

# Weights near the attention sink (first token) are large and most others small, so colours follow
# sqrt(weight): position p of the scale shows weight p², keeping weak patterns visible. Hover shows true values.
BLUES = [tuple(int(c) for c in s[4:-1].split(",")) for s in plotly.colors.sequential.Blues]  # (r, g, b), light first
COLORSCALE = [[(i / (len(BLUES) - 1)) ** 2, f"rgb{c}"] for i, c in enumerate(BLUES)]
SUMMARIES = ("Entropy", "Previous-token score", "Induction score")


def message_figure(text: str) -> go.Figure:
    """An empty plot with a grey message in the middle (before the first result, or when there is none)."""
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


def _axis_labels(result: AttentionResult) -> list[str]:
    """Unique category labels (position first): a repeated token must not merge two rows."""
    return [f"{i} {lab[:14]}" for i, lab in enumerate(result.labels)]


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
    """(L, H): one of SUMMARIES for every head."""
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
