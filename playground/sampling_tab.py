"""The Sampling tab: stream samples from any checkpoint, and see what temperature, top-k and top-p do to the
next-token distribution. All generation goes through core.generation; this module only maps the form to a
SamplingConfig and draws the results.
"""

from __future__ import annotations

import functools
import html
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import torch

from core.attention import token_label
from core.config import GPT2_VOCAB_SIZE
from core.generation import MAX_SAMPLES, SamplingConfig, filter_probs, prefill, prompt_tokens, stream, window_keep
from core.lru import LRU
from playground.model_cache import CACHE, LoadedModel, ModelError
from playground.model_picker import model_picker

DEFAULT_PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
MAX_UI_SAMPLES = 8
MAX_UI_NEW_TOKENS = 2048
TOP_BARS = 15  # candidates drawn in the next-token chart
MAX_CHIPS = 200  # prompt tokens shown as clickable chips (the last ones)
MIN_UPDATE_S = 0.04  # at most ~25 redraws a second while streaming; the final text is always sent


# --- form -> SamplingConfig ---------------------------------------------------------------------


def parse_stop(text: str | None) -> tuple[str, ...]:
    r"""One stop string per line; the escapes \n and \t stand for a newline and a tab."""
    lines = (text or "").splitlines()
    return tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in lines if s.strip())


def _int(value, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(number)


def build_config(
    temperature: float | None,
    top_k: float | None,
    top_p: float | None,
    max_new_tokens: float | None,
    seed: float | None,
    stop: str | None,
    stop_at_eot: bool,
    num_samples: float | None,
) -> SamplingConfig:
    """The SamplingConfig for the form's values (UI conventions: top-k 0 = off, temperature 0 = greedy,
    empty seed = a fresh random one). Raises ValueError with a message for the user."""
    k = _int(top_k, "top-k", 0)
    if k is None or not 0 <= k <= GPT2_VOCAB_SIZE:
        raise ValueError(f"top-k must be between 0 (off) and {GPT2_VOCAB_SIZE}, got {top_k}")
    n = _int(num_samples, "number of samples", 1)
    if not 1 <= n <= MAX_UI_SAMPLES:
        raise ValueError(f"number of samples must be between 1 and {MAX_UI_SAMPLES}, got {num_samples}")
    new = _int(max_new_tokens, "max new tokens")
    if new is None or not 1 <= new <= MAX_UI_NEW_TOKENS:
        raise ValueError(f"max new tokens must be between 1 and {MAX_UI_NEW_TOKENS}, got {max_new_tokens}")
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_p is None or not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1] (1 = off), got {top_p}")
    seed_value = _int(seed, "seed")
    if seed_value is not None and seed_value < 0:
        raise ValueError(f"seed must be 0 or more (or empty for a random one), got {seed}")
    cfg = SamplingConfig(
        max_new_tokens=new,
        temperature=float(temperature),
        top_k=k or None,
        top_p=float(top_p),
        seed=secrets.randbelow(2**31) if seed_value is None else seed_value,
        stop=parse_stop(stop),
        stop_at_eot=bool(stop_at_eot),
        num_samples=min(n, MAX_SAMPLES),
    )
    return cfg.validate()


def config_notes(cfg: SamplingConfig) -> list[str]:
    """Settings that are legal but do not do what a person may think."""
    notes = []
    if cfg.greedy and (cfg.top_k or cfg.top_p < 1):
        notes.append("temperature 0 is greedy decoding: top-k and top-p have no effect")
    if cfg.greedy and cfg.num_samples > 1:
        notes.append("greedy decoding is deterministic: all samples are identical")
    if cfg.top_k == 1 and not cfg.greedy:
        notes.append("top-k 1 always picks the most likely token (same as greedy)")
    return notes


# --- generation ---------------------------------------------------------------------------------


@dataclass
class Output:
    """What the streaming callback shows: the samples (HTML) and a status line (Markdown)."""

    html: str
    status: str


def _render_samples(prompt: str, texts: list[str], reasons: list[str | None], running: bool) -> str:
    tail = prompt[-300:]
    shown_prompt = ("…" if len(prompt) > len(tail) else "") + tail
    cards = []
    why = {"eot": "ended with <|endoftext|>", "stop": "hit a stop string", "length": "reached max new tokens"}
    for i, (text, reason) in enumerate(zip(texts, reasons)):
        state = why.get(reason or "", "generating…" if running else "stopped")
        cursor = '<span class="cursor">▌</span>' if running and reason is None else ""
        head = html.escape((f"Sample {i + 1} · " if len(texts) > 1 else "") + state)
        cards.append(
            f'<div class="sample" data-sample="{i}"><div class="sample-head">{head}</div>'
            f'<pre class="sample-text"><span class="prompt">{html.escape(shown_prompt)}</span>'
            f'<span class="completion">{html.escape(text)}</span>{cursor}</pre></div>'
        )
    return '<div class="samples">' + "".join(cards) + "</div>"


def _speed(n_tokens: int, elapsed: float, first: float | None) -> str:
    rate = n_tokens / elapsed if elapsed > 0 else 0.0
    ttft = f" · first token after **{first * 1000:.0f} ms**" if first is not None else ""
    return f"**{n_tokens}** new tokens in **{elapsed:.2f} s** · **{rate:.1f} tokens/s**{ttft}"


def run_generation(
    runs_dir: Path,
    choice: str | None,
    prompt: str,
    cfg: SamplingConfig,
    loaded: LoadedModel | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> Iterator[Output]:
    """Stream samples: yields an Output after new text (at most every MIN_UPDATE_S), then a final one.

    stop_requested is polled after every token; when it returns True the run ends early (the Stop button).
    """
    loaded = loaded or CACHE.get(runs_dir, choice)
    block = loaded.config.block_size
    keep = window_keep(block, cfg.window_keep)
    n_prompt = len(prompt_tokens(prompt))
    n = cfg.num_samples
    texts, reasons = [""] * n, [None] * n
    notes = [f"model `{loaded.name}`", f"seed {cfg.seed}"]
    if n_prompt > block:
        notes.append(
            f"the prompt ({n_prompt} tokens) is longer than the context window ({block}): the model reads its "
            f"last {keep} tokens, and the window slides as the text grows"
        )
    slides = 0
    count = 0
    first = None
    start = last_sent = time.perf_counter()
    stopped = False
    for step in stream(loaded.model, prompt, cfg):
        now = time.perf_counter()
        first = now - start if first is None else first
        slides += bool(step.context_slid and step.index > 0)
        for i in range(n):
            if step.tokens[i] >= 0:
                texts[i] += step.texts[i]
                count += 1
            reasons[i] = step.stop_reason[i] if step.stop_reason else None
        if now - last_sent >= MIN_UPDATE_S:
            last_sent = now
            status = "Generating… " + _speed(count, now - start, first)
            yield Output(_render_samples(prompt, texts, reasons, running=True), status)
        if stop_requested():
            stopped = True
            break
    elapsed = time.perf_counter() - start
    if slides:
        notes.append(
            f"the text outgrew the context window ({block} tokens): it slid {slides}×, keeping the last "
            f"{keep} tokens each time"
        )
    notes += config_notes(cfg)
    status = ("Stopped · " if stopped else "Done · ") + _speed(count, elapsed, first) + "  \n" + " · ".join(notes)
    yield Output(_render_samples(prompt, texts, reasons, running=False), status)


# --- next-token view ----------------------------------------------------------------------------

_LOGITS: LRU[tuple, torch.Tensor] = LRU(16)  # recent next-token logits: moving a slider only refilters


def next_token_logits(loaded: LoadedModel, tokens: list[int]) -> torch.Tensor:
    """Logits (V,) of the token after `tokens`, from the last block_size of them (what sampling sees)."""
    window = tokens[-loaded.config.block_size :]
    key = (loaded.key, tuple(window))
    logits = _LOGITS.get(key)
    if logits is None:
        device = loaded.model.transformer.wte.weight.device
        with torch.inference_mode():
            logits = prefill(loaded.model, torch.tensor([window], device=device))[0].float().cpu()
        _LOGITS.put(key, logits)
    return logits


def candidates_figure(logits: torch.Tensor, cfg: SamplingConfig, actual: int | None = None) -> go.Figure:
    """The most likely next tokens: the model's probability (temperature 1) and the one sampled from."""
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


def _code(token: int) -> str:
    return f"<code>{html.escape(token_label(token))}</code>"


def candidates_note(logits: torch.Tensor, cfg: SamplingConfig, tokens: list[int], pos: int, block: int) -> str:
    final = filter_probs(logits[None], cfg)[0]
    kept = int((final > 0).sum())
    where = "the end of the prompt" if pos == len(tokens) - 1 else f"token {pos} {_code(tokens[pos])}"
    note = f"After **{where}**: **{kept:,}** of {final.numel():,} tokens can be sampled with these settings."
    if pos + 1 < len(tokens):
        t = tokens[pos + 1]
        rank = int((logits > logits[t]).sum()) + 1
        note += f" The text goes on with {_code(t)} (rank {rank}, p = {final[t].item():.1%})."
    if pos + 1 > block:
        note += f" The model sees only the last {block} tokens here (its context window)."
    return note


def chips_html(tokens: list[int], selected: int) -> str:
    start = max(0, len(tokens) - MAX_CHIPS)
    chips = ['<span class="more">…</span>'] if start else []
    for i in range(start, len(tokens)):
        cls = "chip selected" if i == selected else "chip"
        chips.append(
            f'<button class="{cls}" data-pos="{i}" title="position {i} · id {tokens[i]}">'
            f"{html.escape(token_label(tokens[i]))}</button>"
        )
    return '<div class="chips">' + "".join(chips) + "</div>"


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

CHIPS_CSS = """
.chips { display: flex; flex-wrap: wrap; gap: 3px; max-height: 8.5em; overflow-y: auto; padding: 2px; }
.chip { font-family: var(--font-mono); font-size: 12px; padding: 1px 5px; border-radius: 4px; white-space: pre;
  border: 1px solid #e2e8f0; background: #f8fafc; color: #0f172a; cursor: pointer; }
.chip:hover { border-color: #2563eb; }
.chip.selected { background: #2563eb; color: white; border-color: #2563eb; }
.more { color: #94a3b8; padding: 0 4px; }
"""

CHIPS_JS = """
element.addEventListener('click', (e) => {
  const chip = e.target.closest('[data-pos]');
  if (!chip) return;
  element.querySelectorAll('.chip.selected').forEach((c) => c.classList.remove('selected'));
  chip.classList.add('selected');
  trigger('click', {pos: Number(chip.dataset.pos)});
});
"""

EMPTY_OUTPUT = '<div class="empty">Samples stream here. Press <b>Generate</b>.</div>'


def _error(message: str) -> str:
    return f"⚠ {message}"


# Stop flags of running generations, per browser session. Stop sets the flag and the stream ends after its
# current token with a final update; cancelling the Gradio event instead would race that update and flash
# "Error" on the outputs.
_STOP_FLAGS: dict[str, threading.Event] = {}


def generate_callback(
    runs_dir: Path, choice, text, temp, k, p, new, seed_value, stop_value, eot_value, n, request: gr.Request = None
):
    """The Generate button: streams (samples HTML, status Markdown); bad input becomes a message."""
    session = getattr(request, "session_hash", None) or "local"
    flag = _STOP_FLAGS[session] = threading.Event()
    try:
        cfg = build_config(temp, k, p, new, seed_value, stop_value, eot_value, n)
        loaded = CACHE.get(runs_dir, choice)
        yield EMPTY_OUTPUT, "Starting…"
        for out in run_generation(runs_dir, choice, text or "", cfg, loaded, stop_requested=flag.is_set):
            yield out.html, out.status
    except (ValueError, ModelError) as e:
        yield gr.update(), _error(str(e))
    except Exception as e:  # never a stack trace in the browser
        yield gr.update(), _error(f"generation failed: {type(e).__name__}: {e}")
    finally:
        if _STOP_FLAGS.get(session) is flag:
            del _STOP_FLAGS[session]


def stop_callback(request: gr.Request = None) -> None:
    """The Stop button: ends this session's running generation (if any) after its current token."""
    flag = _STOP_FLAGS.get(getattr(request, "session_hash", None) or "local")
    if flag is not None:
        flag.set()


def preview_callback(runs_dir: Path, choice, text, temp, k, p, pos):
    """The next-token view: (bar chart, note, prompt chips) for the token after position pos (-1 = last)."""
    try:
        cfg = build_config(temp, k, p, 1, 0, "", True, 1)
        loaded = CACHE.get(runs_dir, choice)
        tokens = prompt_tokens(text or "")
        pos = len(tokens) - 1 if pos is None or not 0 <= pos < len(tokens) else pos
        logits = next_token_logits(loaded, tokens[: pos + 1])
        actual = tokens[pos + 1] if pos + 1 < len(tokens) else None
        note = candidates_note(logits, cfg, tokens, pos, loaded.config.block_size)
        extra = config_notes(cfg)
        if extra:
            note += "  \n" + "; ".join(extra).capitalize() + "."
        return candidates_figure(logits, cfg, actual), note, chips_html(tokens, pos)
    except (ValueError, ModelError) as e:
        return gr.update(), _error(str(e)), gr.update()
    except Exception as e:
        return gr.update(), _error(f"next-token view failed: {type(e).__name__}: {e}"), gr.update()


def build_tab(runs_dir: Path) -> None:
    """The Sampling tab's components and events (called inside `with gr.Tab(...)`)."""
    runs_dir = Path(runs_dir)
    model, refreshed = model_picker(runs_dir, "sample")
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(
                DEFAULT_PROMPT,
                label="Prompt",
                lines=4,
                max_lines=12,
                elem_id="sample-prompt",
                info="Empty starts from <|endoftext|>. Longer than the context window is fine.",
            )
            with gr.Row():
                max_new = gr.Slider(
                    1, MAX_UI_NEW_TOKENS, value=200, step=1, label="Max new tokens", elem_id="sample-max-new"
                )
                samples = gr.Slider(1, MAX_UI_SAMPLES, value=1, step=1, label="Number of samples", elem_id="sample-n")
            with gr.Row():
                seed = gr.Number(
                    1337,
                    label="Seed",
                    precision=0,
                    minimum=0,
                    elem_id="sample-seed",
                    info="Same seed → same text. Empty: a new random seed each run.",
                )
                stop_text = gr.Textbox(
                    "",
                    label="Stop strings",
                    lines=1,
                    max_lines=4,
                    elem_id="sample-stop-text",
                    placeholder="one per line, e.g. \\n\\n",
                    info="Not included in the output.",
                )
                eot = gr.Checkbox(True, label="Stop at <|endoftext|>", elem_id="sample-eot")
            with gr.Row():
                generate = gr.Button("▶ Generate", variant="primary", elem_id="sample-generate")
                stop = gr.Button("■ Stop", variant="stop", elem_id="sample-stop")
            status = gr.Markdown(elem_id="sample-status")
            output = gr.HTML(EMPTY_OUTPUT, css_template=SAMPLES_CSS, js_on_load=None, elem_id="sample-output")
        with gr.Column(scale=4):
            temperature = gr.Slider(
                0,
                2,
                value=0.8,
                step=0.05,
                label="Temperature",
                elem_id="sample-temperature",
                info="0 = greedy (always the most likely token); higher = more random",
            )
            top_k = gr.Number(
                50,
                label="Top-k",
                precision=0,
                minimum=0,
                maximum=GPT2_VOCAB_SIZE,
                elem_id="sample-top-k",
                info=f"keep the k most likely; 0 = off (1 … {GPT2_VOCAB_SIZE})",
            )
            top_p = gr.Slider(
                0.01,
                1,
                value=1.0,
                step=0.01,
                label="Top-p (nucleus)",
                elem_id="sample-top-p",
                info="keep the most likely tokens up to this much probability; 1 = off",
            )
            gr.Markdown(
                "**Next-token probabilities** — what the model would sample next. Move the sliders "
                "and watch the blue bars; click a prompt token below to look inside the prompt."
            )
            chart = gr.Plot(show_label=False, elem_id="sample-chart")
            chart_note = gr.Markdown(elem_id="sample-chart-note")
            chips = gr.HTML(css_template=CHIPS_CSS, js_on_load=CHIPS_JS, elem_id="sample-chips")
    position = gr.State(-1)  # prompt position whose next token is shown; -1 = the last one

    # Plain functions, not functools.partial: Gradio finds the gr.Request parameter through type hints.
    def on_generate(choice, text, temp, k, p, new, seed_value, stop_value, eot_value, n, request: gr.Request):
        yield from generate_callback(
            runs_dir, choice, text, temp, k, p, new, seed_value, stop_value, eot_value, n, request
        )

    def on_stop(request: gr.Request):
        stop_callback(request)

    on_preview = functools.partial(preview_callback, runs_dir)

    def pick(evt: gr.EventData):
        return int(evt._data["pos"])

    preview_inputs = [model, prompt, temperature, top_k, top_p, position]
    preview_outputs = [chart, chart_note, chips]
    gen_inputs = [model, prompt, temperature, top_k, top_p, max_new, seed, stop_text, eot, samples]
    generate.click(on_generate, gen_inputs, [output, status], show_progress="hidden")
    prompt.submit(on_generate, gen_inputs, [output, status], show_progress="hidden")
    stop.click(on_stop, None, None, queue=False)
    model.input(on_preview, preview_inputs, preview_outputs)
    prompt.input(lambda: -1, None, position, queue=False).then(
        on_preview, preview_inputs, preview_outputs, trigger_mode="always_last"
    )
    for control in (temperature, top_k, top_p):
        control.change(on_preview, preview_inputs, preview_outputs, trigger_mode="always_last", show_progress="hidden")
    chips.click(pick, None, position).then(on_preview, preview_inputs, preview_outputs, show_progress="hidden")
    # A refreshed model list (Refresh, or opening the tab) draws the chart; nothing is loaded on page load, so a
    # person who only trains never pays for a model in memory.
    for event in refreshed:
        event.then(on_preview, preview_inputs, preview_outputs)
