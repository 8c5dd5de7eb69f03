"""The Sampling tab: stream samples from any checkpoint, and see what temperature, top-k and top-p do to the
next-token distribution. All generation goes through core.generation; this module maps the form to a
SamplingConfig, lays the tab out and wires its callbacks (the bars are drawn by playground.figures, the samples
and prompt chips by playground.html_render). core.generation (torch) is imported inside the callbacks that run the
model: the page is built before torch is loaded (playground.app).
"""

from __future__ import annotations

import html
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from core.attention import token_label
from core.config import GPT2_VOCAB_SIZE, ConfigError
from core.lru import LRU
from core.sampling_config import MAX_SAMPLES, MODES, SamplingConfig
from playground.figures import candidates_figure, message_figure
from playground.html_render import (
    EMPTY_SAMPLES,
    PROMPT_CHIPS_CSS,
    PROMPT_CHIPS_JS,
    SAMPLES_CSS,
    prompt_chips_html,
    samples_html,
)
from playground.model_cache import CACHE, LoadedModel, ModelError
from playground.model_picker import layout_model_picker, refresh_model_choices, wire_model_picker
from playground.tab import IN_TURN, AppContext, OnOpen, Tab, bind

if TYPE_CHECKING:
    import torch

DEFAULT_PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n"
MAX_UI_SAMPLES = 8
MAX_UI_NEW_TOKENS = 2048
MIN_UPDATE_S = 0.04  # at most ~25 redraws a second while streaming; the final text is always sent


# ----- form -> SamplingConfig --------------------------------------------------------------------------------------


def parse_stop(text: str | None) -> tuple[str, ...]:
    r"""One stop string per line; the escapes \n and \t stand for a newline and a tab."""
    lines = (text or "").splitlines()
    return tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in lines if s.strip())


# ----- speed modes (core.decode_modes) -------------------------------------------------------------------------------

# What each mode trades, as the dropdown shows it (docs/sampling.md#modes has the measurements).
MODE_LABELS = {
    "default": "default — fp32 with the KV cache: the reference",
    "compiled": "compiled — compiles first (minutes on a small CPU); for GPUs: slower than default on a CPU",
    "bf16": "bf16 — half the weight bytes; can be faster with AMX / AVX-512 BF16 or on a GPU; tiny numeric differences",
    "int8": "int8 — weight-only int8, a quarter of the weight bytes; logits differ by a few hundredths",
    "int8-compiled": "int8-compiled — int8 with the compiled decode step: both trades",
}
MODE_HINT = "How the model runs. The next-token chart always uses default."  # before the tab is opened (no torch)


def mode_hint(device: torch.device) -> str:
    """The hint under the mode picker: which modes this device runs well, as core.precision reports it."""
    import torch

    from core.precision import cpu_bf16_support

    if device.type == "cuda":
        bf16 = "This GPU runs bf16 natively" if torch.cuda.is_bf16_supported() else "This GPU has no bf16: it is slow"
    elif device.type == "cpu":
        isa = cpu_bf16_support()
        bf16 = (
            f"This CPU has {isa}: bf16 and int8 (bf16 activations) run natively"
            if isa
            else "This CPU has no AMX or AVX-512 BF16: bf16 and int8 are emulated, likely slower than default"
        )
    else:
        bf16 = f"bf16 and int8 are untested on {device.type}"
    return f"How the model runs. {bf16}. The next-token chart always uses default."


# The hint under each number field; a message about its value replaces it (in red) until the value is fixed.
FIELD_HINTS = {
    "temperature": "0 = greedy (always the most likely token); higher = more random",
    "top_k": f"keep the k most likely; 0 = off (1 … {GPT2_VOCAB_SIZE})",
    "top_p": "keep the most likely tokens up to this much probability; 1 = off",
    "max_new": f"1 … {MAX_UI_NEW_TOKENS}",
    "samples": f"1 … {MAX_UI_SAMPLES}, generated as one batch",
    "seed": "Same seed → same text. Empty: a new random seed each run.",
    "mode": MODE_HINT,  # the device's own line (mode_hint) is added when the tab opens: it needs torch
}
PREVIEW_FIELDS = ("temperature", "top_k", "top_p")  # the fields the next-token view reads


@dataclass(frozen=True)
class SliderRange:
    label: str
    minimum: float
    maximum: float
    step: float
    default: float


# Gradio refuses a slider value outside its range with a toast naming no field, before any callback runs. The
# events here skip that check (preprocess=False) and move such a value to the slider's end, saying so under it.
SLIDERS = {
    "temperature": SliderRange("temperature", 0, 2, 0.05, 0.8),
    "top_p": SliderRange("top-p", 0.01, 1, 0.01, 1.0),
    "max_new": SliderRange("max new tokens", 1, MAX_UI_NEW_TOKENS, 1, 200),
    "samples": SliderRange("number of samples", 1, MAX_UI_SAMPLES, 1, 1),
}


def fit_slider(name: str, value: Any) -> tuple[float, str | None]:
    """The value of slider `name` moved into its range (whole numbers for a step of 1), and a note when it moved."""
    r = SLIDERS[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        return r.default, f"{r.label} must be a number from {r.minimum:g} to {r.maximum:g}: set to {r.default:g}"
    fitted = min(max(number, r.minimum), r.maximum)
    if r.step == 1:
        fitted = round(fitted)
    if fitted == number:
        return fitted, None
    why = "is not a whole number" if r.minimum <= number <= r.maximum else f"is outside {r.minimum:g} … {r.maximum:g}"
    return fitted, f"{r.label} {number:g} {why}: set to {fitted:g}"


def fit_sliders(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's values with every slider's moved into its range, and the notes {field: why it moved}."""
    fitted, notes = dict(values), {}
    for name in SLIDERS.keys() & values.keys():
        fitted[name], note = fit_slider(name, values[name])
        if note:
            notes[name] = note
    return fitted, notes


def _int(value: Any, name: str, field: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}", field=field) from None
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{name} must be a whole number, got {value}", field=field)
    return int(number)


def _float(value: Any, name: str, field: str) -> float | None:
    try:
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}", field=field) from None
    return number if number is None or math.isfinite(number) else None


def build_config(
    temperature: float | None,
    top_k: float | None,
    top_p: float | None,
    max_new_tokens: float | None,
    seed: float | None,
    stop: str | None,
    stop_at_eot: bool,
    num_samples: float | None,
    mode: str | None = "default",
) -> SamplingConfig:
    """The SamplingConfig for the form's values (UI conventions: top-k 0 = off, temperature 0 = greedy,
    empty seed = a fresh random one, no mode = default). Raises ConfigError (a ValueError) whose `field` names
    the form field (a key of FIELD_HINTS) and whose message is for the user."""
    k = _int(top_k, "top-k", "top_k", 0)
    if k is None or not 0 <= k <= GPT2_VOCAB_SIZE:
        raise ConfigError(f"top-k must be between 0 (off) and {GPT2_VOCAB_SIZE}, got {top_k}", field="top_k")
    n = _int(num_samples, "number of samples", "samples", 1)
    if not 1 <= n <= MAX_UI_SAMPLES:
        raise ConfigError(f"number of samples must be between 1 and {MAX_UI_SAMPLES}, got {num_samples}", "samples")
    new = _int(max_new_tokens, "max new tokens", "max_new")
    if new is None or not 1 <= new <= MAX_UI_NEW_TOKENS:
        message = f"max new tokens must be between 1 and {MAX_UI_NEW_TOKENS}, got {max_new_tokens}"
        raise ConfigError(message, field="max_new")
    t = _float(temperature, "temperature", "temperature")
    if t is None or t < 0:
        raise ConfigError(f"temperature must be 0 (greedy) or more, got {temperature}", field="temperature")
    p = _float(top_p, "top-p", "top_p")
    if p is None or not 0 < p <= 1:
        raise ConfigError(f"top-p must be in (0, 1] (1 = off), got {top_p}", field="top_p")
    seed_value = _int(seed, "seed", "seed")
    if seed_value is not None and not 0 <= seed_value < 2**63:
        raise ConfigError(f"seed must be 0 or more (or empty for a random one), got {seed}", field="seed")
    if (mode or "default") not in MODES:
        raise ConfigError(f"speed mode must be one of {', '.join(MODES)}; got {mode!r}", field="mode")
    cfg = SamplingConfig(
        max_new_tokens=new,
        temperature=t,
        top_k=k or None,
        top_p=p,
        seed=secrets.randbelow(2**31) if seed_value is None else seed_value,
        stop=parse_stop(stop),
        stop_at_eot=bool(stop_at_eot),
        num_samples=min(n, MAX_SAMPLES),
        mode=mode or "default",
    )
    return cfg.validate()


def field_states(
    names: tuple[str, ...],
    error: Exception | None = None,
    notes: dict[str, str] | None = None,
    fitted: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """{field: update} for the named fields: the error's message under its field and each slider note under its
    slider, with the slider's fitted value (in red); every other field's hint back."""
    bad, notes, fitted = getattr(error, "field", None), notes or {}, fitted or {}
    states = {}
    for name in names:
        if name == bad:
            states[name] = gr.update(info=f"⚠ {error}", elem_classes=["field-error"])
        elif name in notes:
            states[name] = gr.update(value=fitted[name], info=f"⚠ {notes[name]}", elem_classes=["field-error"])
        else:
            states[name] = gr.update(info=field_hint(name), elem_classes=[])
    return states


def field_hint(name: str) -> str:
    """The hint under a form field; the mode picker's also says which modes this device runs well."""
    return mode_hint(CACHE.device) if name == "mode" else FIELD_HINTS[name]


def show_mode_hint(tab: Tab, ctx: AppContext) -> dict[Any, Any]:
    """Opening the tab: the mode picker's hint for this device (the page was built without torch)."""
    return {tab["mode"]: gr.update(info=field_hint("mode"))}


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
    from core.decode_modes import decoder_for
    from core.generation import prompt_tokens, stream, window_keep

    block = loaded.config.block_size
    keep = window_keep(block, cfg.window_keep)
    n_prompt = len(prompt_tokens(prompt))
    n = cfg.num_samples
    texts, reasons = [""] * n, [None] * n
    notes = [f"model `{loaded.name}`", f"seed {cfg.seed}", f"mode **{cfg.mode}**"]
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
    failure = decoder_for(loaded.model, cfg.mode).compile_failure if cfg.mode.endswith("compiled") else None
    if failure:
        notes.append(f"compiling was not possible here ({failure}): the step ran uncompiled")
    status = ("Stopped · " if stopped else "Done · ") + _speed(count, elapsed, first) + "  \n" + " · ".join(notes)
    yield Output(samples_html(prompt, texts, reasons, running=False), status)


# ----- next-token view ----------------------------------------------------------------------------------------------

_LOGITS: LRU[tuple, torch.Tensor] = LRU(16)  # recent next-token logits: moving a slider only refilters


def next_token_logits(loaded: LoadedModel, tokens: list[int]) -> torch.Tensor:
    """Logits (V,) of the token after `tokens`, from the last block_size of them (what sampling sees)."""
    import torch

    from core.generation import prefill

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
    from core.generation import filter_probs

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


# An edited prompt's view waits this long before it is computed. While it runs, Gradio holds back further edits of
# the prompt and sends only the last one once it is done (trigger_mode "always_last"): typing or pasting long text
# costs a few round trips and redraws (each of which touches every component's loading state in the browser),
# not one per key.
EDIT_SETTLE_S = 0.3

# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------

GENERATE_INPUTS = (
    "model",
    "prompt",
    "temperature",
    "top_k",
    "top_p",
    "max_new",
    "seed",
    "stop_text",
    "eot",
    "samples",
    "mode",
)
GENERATE_OUTPUTS = ("output", "status", *FIELD_HINTS, "model", "model_missing")
NEXT_TOKEN_INPUTS = ("model", "prompt", *PREVIEW_FIELDS, "position")
NEXT_TOKEN_OUTPUTS = ("chart", "chart_note", "chips", *PREVIEW_FIELDS)
EDIT_OUTPUTS = ("chart", "chart_note", "chips", "position")  # after a prompt edit

# Stop flags of running generations, per browser session. Stop sets the flag and the stream ends after its
# current token with a final update; cancelling the Gradio event instead would race that update and flash
# "Error" on the outputs.
_STOP_FLAGS: dict[str, threading.Event] = {}


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _fields(tab: Tab, names: tuple[str, ...], *args: Any) -> dict[Any, Any]:
    return {tab[name]: update for name, update in field_states(names, *args).items()}


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
    mode: str | None = "default",
    request: gr.Request | None = None,
) -> Iterator[dict[Any, Any]]:
    """The Generate button: streams the samples and a status line. A bad value gets its message under its field
    and nothing is generated (the samples shown stay); a slider value out of range is moved into it. The model
    list is refreshed, so its label says what is generated from (the step now, whether the run still trains)."""
    session = _session(request)
    flag = _STOP_FLAGS[session] = threading.Event()
    output, status, names = tab["output"], tab["status"], tuple(FIELD_HINTS)
    form = dict(temperature=temperature, top_k=top_k, top_p=top_p, max_new=max_new, seed=seed, samples=samples)
    v, notes = fit_sliders(form)
    try:
        cfg = build_config(
            *(v["temperature"], v["top_k"], v["top_p"], v["max_new"], v["seed"], stop_text, stop_at_eot, v["samples"]),
            mode,
        )
    except ConfigError as e:
        yield {status: f"⚠ {e}: fix the highlighted field, then press Generate.", **_fields(tab, names, e, notes, v)}
        return
    try:
        fields = {**_fields(tab, names, None, notes, v), **refresh_model_choices(tab, ctx, choice)}
        loaded = CACHE.get(ctx.runs_dir, choice)
        yield {output: EMPTY_SAMPLES, status: _starting(cfg.mode), **fields}
        for shown in run_generation(loaded, text or "", cfg, stop_requested=flag.is_set):
            yield {output: shown.html, status: shown.status}
    except ModelError as e:
        yield {status: f"⚠ {e}", **fields}
    except Exception as e:  # never a stack trace in the browser
        yield {status: f"⚠ generation failed: {_one_line(e)}"}
    finally:
        if _STOP_FLAGS.get(session) is flag:
            del _STOP_FLAGS[session]


def _starting(mode: str) -> str:
    if mode.endswith("compiled"):
        return f"Starting in mode **{mode}**: its first generation compiles the decode step, which can take minutes…"
    return "Starting…"


def _one_line(e: Exception) -> str:
    """An exception as one line for the status (compiler errors run to many lines)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"


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
    """The next-token view: bars, note and prompt chips for the token after position pos (-1 = the last one).
    A bad temperature, top-k or top-p gets its message under its field, and the chart says to fix it."""
    from core.generation import prompt_tokens

    v, notes = fit_sliders(dict(temperature=temperature, top_k=top_k, top_p=top_p))
    try:
        cfg = build_config(v["temperature"], v["top_k"], v["top_p"], 1, 0, "", True, 1)
    except ConfigError as e:
        return {
            tab["chart"]: message_figure("Fix the highlighted setting"),
            tab["chart_note"]: f"⚠ {e}",
            **_fields(tab, PREVIEW_FIELDS, e, notes, v),
        }
    shown = _fields(tab, PREVIEW_FIELDS, None, notes, v)
    try:
        loaded = CACHE.get(ctx.runs_dir, choice)
        tokens = prompt_tokens(text or "")
        pos = len(tokens) - 1 if pos is None or not 0 <= pos < len(tokens) else int(pos)
        logits = next_token_logits(loaded, tokens[: pos + 1])
        actual = tokens[pos + 1] if pos + 1 < len(tokens) else None
        note = candidates_note(logits, cfg, tokens, pos, loaded.config.block_size)
        extra = config_notes(cfg)
        if extra:
            note += "  \n" + "; ".join(extra).capitalize() + "."
    except ModelError as e:
        return {tab["chart_note"]: f"⚠ {e}", **shown}
    except Exception as e:  # never a stack trace in the browser
        return {tab["chart_note"]: f"⚠ next-token view failed: {type(e).__name__}: {e}", **shown}
    return {
        **shown,
        tab["chart"]: candidates_figure(logits, cfg, actual),
        tab["chart_note"]: note,
        tab["chips"]: prompt_chips_html(tokens, pos),
    }


def show_next_token_after_edit(
    tab: Tab,
    ctx: AppContext,
    choice: str | None,
    text: str | None,
    temperature: float | None,
    top_k: float | None,
    top_p: float | None,
) -> dict[Any, Any]:
    """An edited prompt: the view goes back to the token after its end (a picked chip may no longer exist). It
    is drawn EDIT_SETTLE_S after the edit, so that the keys typed meanwhile make one more update, not one each."""
    time.sleep(EDIT_SETTLE_S)
    view = show_next_token(tab, ctx, choice, text, temperature, top_k, top_p, -1)
    # The setting fields are left alone (their messages follow their own edits): fewer components to redraw.
    return {tab[name]: view[tab[name]] for name in EDIT_OUTPUTS if tab[name] in view} | {tab["position"]: -1}


def pick_prompt_token(tab: Tab, ctx: AppContext, evt: gr.EventData) -> dict[Any, Any]:
    """A click on a prompt chip: show what the model predicts after that token."""
    return {tab["position"]: int(evt.pos)}


# ----- layout and wiring --------------------------------------------------------------------------------------------


def _slider(name: str, label: str, elem_id: str) -> gr.Slider:
    r = SLIDERS[name]
    return gr.Slider(
        r.minimum, r.maximum, value=r.default, step=r.step, label=label, elem_id=elem_id, info=FIELD_HINTS[name]
    )


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
        c["max_new"] = _slider("max_new", "Max new tokens", "sample-max-new")
        c["samples"] = _slider("samples", "Number of samples", "sample-n")
    with gr.Row():
        # No minimum here: Gradio would refuse -5 with a toast naming no field; build_config says what is wrong.
        c["seed"] = gr.Number(1337, label="Seed", precision=0, elem_id="sample-seed", info=FIELD_HINTS["seed"])
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
    c["mode"] = gr.Dropdown(
        [(MODE_LABELS.get(mode, mode), mode) for mode in MODES],
        value="default",
        label="Speed mode",
        elem_id="sample-mode",
        info=FIELD_HINTS["mode"],
    )
    with gr.Row():
        c["generate_btn"] = gr.Button("▶ Generate", variant="primary", elem_id="sample-generate")
        c["stop_btn"] = gr.Button("■ Stop", variant="stop", elem_id="sample-stop")
    c["status"] = gr.Markdown(elem_id="sample-status")
    c["output"] = gr.HTML(EMPTY_SAMPLES, css_template=SAMPLES_CSS, js_on_load=None, elem_id="sample-output")
    return c


def _layout_next_token() -> dict[str, Any]:
    """The right column: temperature, top-k, top-p and the next-token chart they change."""
    c: dict[str, Any] = {}
    c["temperature"] = _slider("temperature", "Temperature", "sample-temperature")
    c["top_k"] = gr.Number(50, label="Top-k", precision=0, elem_id="sample-top-k", info=FIELD_HINTS["top_k"])
    c["top_p"] = _slider("top_p", "Top-p (nucleus)", "sample-top-p")
    gr.Markdown(
        "**Next-token probabilities** — what the model would sample next. Move the sliders "
        "and watch the blue bars; click a prompt token below to look inside the prompt."
    )
    c["chart"] = gr.Plot(show_label=False, elem_id="sample-chart")
    c["chart_note"] = gr.Markdown(elem_id="sample-chart-note")
    c["chips"] = gr.HTML(css_template=PROMPT_CHIPS_CSS, js_on_load=PROMPT_CHIPS_JS, elem_id="sample-chips")
    return c


def _wire(tab: Tab, ctx: AppContext) -> None:
    # preprocess=False: the callbacks check every number themselves (see SLIDERS), so a value out of a component's
    # range gets the app's message under its field, never Gradio's toast.
    generate = bind(generate_samples, tab, ctx)
    gen = dict(inputs=[tab[n] for n in GENERATE_INPUTS], outputs=[tab[n] for n in GENERATE_OUTPUTS])
    tab["generate_btn"].click(generate, **gen, show_progress="hidden", preprocess=False)
    tab["prompt"].submit(generate, **gen, show_progress="hidden", preprocess=False)
    tab["stop_btn"].click(bind(stop_generation, tab, ctx), None, None, queue=False)

    preview = dict(
        fn=bind(show_next_token, tab, ctx),
        inputs=[tab[n] for n in NEXT_TOKEN_INPUTS],
        outputs=[tab[n] for n in NEXT_TOKEN_OUTPUTS],
        preprocess=False,
    )
    after_edit = dict(
        preview,
        fn=bind(show_next_token_after_edit, tab, ctx),
        inputs=preview["inputs"][:-1],
        outputs=[tab[n] for n in EDIT_OUTPUTS],
    )
    tab["model"].input(**preview)
    # .change, not .input: Gradio's Textbox fires input on key presses only, so Backspace, Delete, a paste or a cut
    # would leave the view showing the old prompt.
    tab["prompt"].change(**after_edit, trigger_mode="always_last", show_progress="hidden")
    # The sliders on .input (a person moved them), not .change: a value moved back into range changes nothing more.
    for name in ("temperature", "top_p"):
        tab[name].input(**preview, trigger_mode="always_last", show_progress="hidden")
    tab["top_k"].change(**preview, trigger_mode="always_last", show_progress="hidden")
    chips = tab["chips"].click(bind(pick_prompt_token, tab, ctx), None, tab["position"], **IN_TURN)
    chips.then(**preview, show_progress="hidden")
    # A refreshed model list (⟳, or opening the tab) draws the chart; nothing is loaded on page load, so a
    # person who only trains never pays for a model in memory.
    wire_model_picker(tab, ctx).then(**preview)
    tab.on_open.append(OnOpen(bind(show_mode_hint, tab, ctx), [], [tab["mode"]]))
    tab.on_open.append(OnOpen(preview["fn"], preview["inputs"], preview["outputs"]))


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
