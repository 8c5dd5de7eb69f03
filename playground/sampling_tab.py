"""The Sampling tab: stream samples from any checkpoint, and see what temperature, top-k and top-p do to the
next-token distribution. All generation goes through core.generation; this module maps the form to a
SamplingConfig, lays the tab out and wires its callbacks (the bars are drawn by playground.figures, the samples
and prompt chips by playground.html_render).
"""

from __future__ import annotations

import html
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch

from core.attention import token_label
from core.config import GPT2_VOCAB_SIZE
from core.generation import MAX_SAMPLES, SamplingConfig, filter_probs, prefill, prompt_tokens, stream, window_keep
from core.lru import LRU
from playground.figures import candidates_figure
from playground.html_render import (
    EMPTY_SAMPLES,
    PROMPT_CHIPS_CSS,
    PROMPT_CHIPS_JS,
    SAMPLES_CSS,
    prompt_chips_html,
    samples_html,
)
from playground.model_cache import CACHE, LoadedModel, ModelError
from playground.model_picker import layout_model_picker, wire_model_picker
from playground.tab import AppContext, OnOpen, Tab, bind

DEFAULT_PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
MAX_UI_SAMPLES = 8
MAX_UI_NEW_TOKENS = 2048
MIN_UPDATE_S = 0.04  # at most ~25 redraws a second while streaming; the final text is always sent


# ----- form -> SamplingConfig --------------------------------------------------------------------------------------


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


# ----- generation ---------------------------------------------------------------------------------------------------


@dataclass
class Output:
    """What the streaming callback shows: the samples (HTML) and a status line (Markdown)."""

    html: str
    status: str


def _speed(n_tokens: int, elapsed: float, first: float | None) -> str:
    rate = n_tokens / elapsed if elapsed > 0 else 0.0
    ttft = f" · first token after **{first * 1000:.0f} ms**" if first is not None else ""
    return f"**{n_tokens}** new tokens in **{elapsed:.2f} s** · **{rate:.1f} tokens/s**{ttft}"


def run_generation(
    loaded: LoadedModel, prompt: str, cfg: SamplingConfig, stop_requested: Callable[[], bool] = lambda: False
) -> Iterator[Output]:
    """Stream samples: yields an Output after new text (at most every MIN_UPDATE_S), then a final one.

    stop_requested is polled after every token; when it returns True the run ends early (the Stop button).
    """
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
            yield Output(samples_html(prompt, texts, reasons, running=True), status)
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
    yield Output(samples_html(prompt, texts, reasons, running=False), status)


# ----- next-token view ----------------------------------------------------------------------------------------------

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


def _code(token: int) -> str:
    return f"<code>{html.escape(token_label(token))}</code>"


def candidates_note(logits: torch.Tensor, cfg: SamplingConfig, tokens: list[int], pos: int, block: int) -> str:
    """What the chart shows: after which token, how many tokens can be sampled, and the token that really follows."""
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


# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------

GENERATE_INPUTS = ("model", "prompt", "temperature", "top_k", "top_p", "max_new", "seed", "stop_text", "eot", "samples")
NEXT_TOKEN_INPUTS = ("model", "prompt", "temperature", "top_k", "top_p", "position")
NEXT_TOKEN_OUTPUTS = ("chart", "chart_note", "chips")

# Stop flags of running generations, per browser session. Stop sets the flag and the stream ends after its
# current token with a final update; cancelling the Gradio event instead would race that update and flash
# "Error" on the outputs.
_STOP_FLAGS: dict[str, threading.Event] = {}


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def generate_samples(
    tab: Tab,
    ctx: AppContext,
    choice: str | None,
    text: str | None,
    temperature: float | None,
    top_k: float | None,
    top_p: float | None,
    max_new: float | None,
    seed: float | None,
    stop_text: str | None,
    stop_at_eot: bool,
    samples: float | None,
    request: gr.Request | None = None,
) -> Iterator[dict[Any, Any]]:
    """The Generate button: streams the samples and a status line; bad input becomes a message in the status."""
    session = _session(request)
    flag = _STOP_FLAGS[session] = threading.Event()
    output, status = tab["output"], tab["status"]
    try:
        cfg = build_config(temperature, top_k, top_p, max_new, seed, stop_text, stop_at_eot, samples)
        loaded = CACHE.get(ctx.runs_dir, choice)
        yield {output: EMPTY_SAMPLES, status: "Starting…"}
        for shown in run_generation(loaded, text or "", cfg, stop_requested=flag.is_set):
            yield {output: shown.html, status: shown.status}
    except (ValueError, ModelError) as e:
        yield {status: f"⚠ {e}"}
    except Exception as e:  # never a stack trace in the browser
        yield {status: f"⚠ generation failed: {type(e).__name__}: {e}"}
    finally:
        if _STOP_FLAGS.get(session) is flag:
            del _STOP_FLAGS[session]


def stop_generation(tab: Tab, ctx: AppContext, request: gr.Request | None = None) -> None:
    """The Stop button: ends this session's running generation (if any) after its current token."""
    flag = _STOP_FLAGS.get(_session(request))
    if flag is not None:
        flag.set()


def show_next_token(
    tab: Tab,
    ctx: AppContext,
    choice: str | None,
    text: str | None,
    temperature: float | None,
    top_k: float | None,
    top_p: float | None,
    pos: int | None,
) -> dict[Any, Any]:
    """The next-token view: bars, note and prompt chips for the token after position pos (-1 = the last one)."""
    try:
        cfg = build_config(temperature, top_k, top_p, 1, 0, "", True, 1)
        loaded = CACHE.get(ctx.runs_dir, choice)
        tokens = prompt_tokens(text or "")
        pos = len(tokens) - 1 if pos is None or not 0 <= pos < len(tokens) else pos
        logits = next_token_logits(loaded, tokens[: pos + 1])
        actual = tokens[pos + 1] if pos + 1 < len(tokens) else None
        note = candidates_note(logits, cfg, tokens, pos, loaded.config.block_size)
        extra = config_notes(cfg)
        if extra:
            note += "  \n" + "; ".join(extra).capitalize() + "."
    except (ValueError, ModelError) as e:
        return {tab["chart_note"]: f"⚠ {e}"}
    except Exception as e:  # never a stack trace in the browser
        return {tab["chart_note"]: f"⚠ next-token view failed: {type(e).__name__}: {e}"}
    return {
        tab["chart"]: candidates_figure(logits, cfg, actual),
        tab["chart_note"]: note,
        tab["chips"]: prompt_chips_html(tokens, pos),
    }


def forget_picked_token(tab: Tab, ctx: AppContext) -> dict[Any, Any]:
    """An edited prompt: the chart goes back to the token after its end."""
    return {tab["position"]: -1}


def pick_prompt_token(tab: Tab, ctx: AppContext, evt: gr.EventData) -> dict[Any, Any]:
    """A click on a prompt chip: show what the model predicts after that token."""
    return {tab["position"]: int(evt.pos)}


# ----- layout and wiring --------------------------------------------------------------------------------------------


def _layout_generation() -> dict[str, Any]:
    """The left column: prompt, length, seed and stop settings, Generate/Stop, and the samples."""
    c: dict[str, Any] = {}
    c["prompt"] = gr.Textbox(
        DEFAULT_PROMPT,
        label="Prompt",
        lines=4,
        max_lines=12,
        elem_id="sample-prompt",
        info="Empty starts from <|endoftext|>. Longer than the context window is fine.",
    )
    with gr.Row():
        c["max_new"] = gr.Slider(
            1, MAX_UI_NEW_TOKENS, value=200, step=1, label="Max new tokens", elem_id="sample-max-new"
        )
        c["samples"] = gr.Slider(1, MAX_UI_SAMPLES, value=1, step=1, label="Number of samples", elem_id="sample-n")
    with gr.Row():
        c["seed"] = gr.Number(
            1337,
            label="Seed",
            precision=0,
            minimum=0,
            elem_id="sample-seed",
            info="Same seed → same text. Empty: a new random seed each run.",
        )
        c["stop_text"] = gr.Textbox(
            "",
            label="Stop strings",
            lines=1,
            max_lines=4,
            elem_id="sample-stop-text",
            placeholder="one per line, e.g. \\n\\n",
            info="Not included in the output.",
        )
        c["eot"] = gr.Checkbox(True, label="Stop at <|endoftext|>", elem_id="sample-eot")
    with gr.Row():
        c["generate_btn"] = gr.Button("▶ Generate", variant="primary", elem_id="sample-generate")
        c["stop_btn"] = gr.Button("■ Stop", variant="stop", elem_id="sample-stop")
    c["status"] = gr.Markdown(elem_id="sample-status")
    c["output"] = gr.HTML(EMPTY_SAMPLES, css_template=SAMPLES_CSS, js_on_load=None, elem_id="sample-output")
    return c


def _layout_next_token() -> dict[str, Any]:
    """The right column: temperature, top-k, top-p and the next-token chart they change."""
    c: dict[str, Any] = {}
    c["temperature"] = gr.Slider(
        0,
        2,
        value=0.8,
        step=0.05,
        label="Temperature",
        elem_id="sample-temperature",
        info="0 = greedy (always the most likely token); higher = more random",
    )
    c["top_k"] = gr.Number(
        50,
        label="Top-k",
        precision=0,
        minimum=0,
        maximum=GPT2_VOCAB_SIZE,
        elem_id="sample-top-k",
        info=f"keep the k most likely; 0 = off (1 … {GPT2_VOCAB_SIZE})",
    )
    c["top_p"] = gr.Slider(
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
    c["chart"] = gr.Plot(show_label=False, elem_id="sample-chart")
    c["chart_note"] = gr.Markdown(elem_id="sample-chart-note")
    c["chips"] = gr.HTML(css_template=PROMPT_CHIPS_CSS, js_on_load=PROMPT_CHIPS_JS, elem_id="sample-chips")
    return c


def _wire(tab: Tab, ctx: AppContext) -> None:
    generate = bind(generate_samples, tab, ctx)
    gen_inputs, shown = [tab[n] for n in GENERATE_INPUTS], [tab["output"], tab["status"]]
    tab["generate_btn"].click(generate, gen_inputs, shown, show_progress="hidden")
    tab["prompt"].submit(generate, gen_inputs, shown, show_progress="hidden")
    tab["stop_btn"].click(bind(stop_generation, tab, ctx), None, None, queue=False)

    preview = bind(show_next_token, tab, ctx)
    inputs, outputs = [tab[n] for n in NEXT_TOKEN_INPUTS], [tab[n] for n in NEXT_TOKEN_OUTPUTS]
    tab["model"].input(preview, inputs, outputs)
    tab["prompt"].input(bind(forget_picked_token, tab, ctx), None, tab["position"], queue=False).then(
        preview, inputs, outputs, trigger_mode="always_last"
    )
    for name in ("temperature", "top_k", "top_p"):
        tab[name].change(preview, inputs, outputs, trigger_mode="always_last", show_progress="hidden")
    tab["chips"].click(bind(pick_prompt_token, tab, ctx), None, tab["position"]).then(
        preview, inputs, outputs, show_progress="hidden"
    )
    # A refreshed model list (⟳, or opening the tab) draws the chart; nothing is loaded on page load, so a
    # person who only trains never pays for a model in memory.
    wire_model_picker(tab, ctx).then(preview, inputs, outputs)
    tab.on_open.append(OnOpen(preview, inputs, outputs))


def build(ctx: AppContext) -> Tab:
    tab = Tab("sampling", layout_model_picker(ctx, "sample"))
    with gr.Row():
        with gr.Column(scale=5):
            tab.components |= _layout_generation()
        with gr.Column(scale=4):
            tab.components |= _layout_next_token()
    tab.components["position"] = gr.State(-1)  # prompt position whose next token is shown; -1 = the last one
    _wire(tab, ctx)
    return tab
