"""The Inside tab: what a checkpoint expected at each token, what each layer already predicts (logit lens), which
attention heads matter (head ablation) and how two checkpoints differ, on one text.

The numbers come from core.probe; this module maps the form to its calls, caches each result per (model, tokens,
view parameters), and hands it to playground.probe_render to draw. Only the view that is open is computed: opening
a view, ▶ Analyse, Enter in the text box and a new model run the open one. core.probe and core.generation (torch)
are imported inside the views: the page is built before torch is loaded (playground.app).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import gradio as gr
import numpy as np

from core.attention import attention_maps, induction_scores, repeated_random_tokens
from core.config import EOT_TOKEN
from core.lru import LRU
from core.sampling_config import SamplingConfig
from core.tokenizer import decode, encode
from playground import probe_render as render
from playground.model_cache import CACHE, LoadedModel, ModelError, refresh_choices
from playground.model_picker import layout_model_picker, wire_model_picker
from playground.tab import IN_TURN, AppContext, OnOpen, Tab, bind

if TYPE_CHECKING:
    from core.probe import Comparison

DEFAULT_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?"
)
DEFAULT_PROMPT = "ROMEO:\n"
MAX_TOKENS = 256  # per text: core.probe reads up to the context window (1024 for GPT-2); 256 keeps CPU views quick
TOP_ALTERNATIVES = 5  # shown when hovering a token
TOP_INDUCTION = 4  # heads picked by "Select top induction heads"
PROBE_REPEAT = 40  # random tokens in each half of the induction probe (fewer when the window is smaller)
GENERATE_TOKENS = 48  # added by "Generate a text"
MAX_NEW = 200  # longest sample in the compare view

_RESULTS: LRU[tuple, Any] = LRU(32)  # every result is small: the lens of gpt2 at 256 tokens is ~0.1 MB
R = TypeVar("R")


# --- models, tokens, cache ------------------------------------------------------------------------
def _load(ctx: AppContext, choice: str | None) -> LoadedModel:
    return CACHE.get(ctx.runs_dir, choice)


def _picker(ctx: AppContext, prefix: str, label: str) -> dict[str, Any]:
    """A model picker (components "model", "model_refresh", "model_missing") under its own label."""
    parts = layout_model_picker(ctx, prefix)
    parts["model"].label = label
    return parts


def refresh_model_b(tab: Tab, ctx: AppContext, current: str | None) -> dict[Any, Any]:
    """Checkpoint B's choices as they are now (the same list as A's)."""
    choices, value, _ = refresh_choices(ctx.jobs, current)
    return {tab["model_b"]: gr.update(choices=choices, value=value)}


def _cached(kind: str, loaded: LoadedModel, tokens: list[int], params: Any, make: Callable[[], R]) -> R:
    return _RESULTS.get_or_make((kind, loaded.key, tuple(tokens), params), make)


def text_tokens(text: str | None, block_size: int) -> tuple[list[int], str]:
    """The text's tokens cut to what the views read (the context window, at most MAX_TOKENS), and a note when cut."""
    if not text or not text.strip():
        raise ValueError("The text box is empty: type or paste a text, or press ✎ Generate a text.")
    tokens = encode(text)
    cap = min(MAX_TOKENS, block_size)
    if len(tokens) <= cap:
        return tokens, ""
    why = (
        "the model's context window" if cap == block_size else f"this tab's limit of {MAX_TOKENS}, to stay quick on CPU"
    )
    return tokens[:cap], f"⚠ The text has **{len(tokens)} tokens**; only the first **{cap}** are used ({why})."


def _problem(e: Exception, what: str) -> str:
    """One line for the UI; a message of ours as it is, anything else with its type (never a stack trace)."""
    if isinstance(e, (ValueError, ModelError)):
        return f"⚠ {e}"
    return f"⚠ {what} failed: {type(e).__name__}: {e}"


def _lines(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def probe_length(block_size: int) -> int:
    """Random tokens per half of the induction probe, so that <|endoftext|> + both halves fit the window."""
    return max(1, min(PROBE_REPEAT, (min(block_size, MAX_TOKENS) - 1) // 2))


def repeat_start(tokens: list[int]) -> int | None:
    """Index of the first repeated token when tokens are the induction probe (<|endoftext|> + s + s), else None."""
    n = (len(tokens) - 1) // 2
    if n < 1 or len(tokens) != 2 * n + 1 or tokens[0] != EOT_TOKEN or tokens[1 : n + 1] != tokens[n + 1 :]:
        return None
    return n + 1


# --- views: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------
def text_view(tab: Tab, ctx: AppContext, choice: str | None, text: str | None) -> dict[Any, Any]:
    """Every token coloured by its probability, with the alternatives on hover; loss and perplexity."""
    from core.probe import token_logprobs

    try:
        loaded = _load(ctx, choice)
        tokens, note = text_tokens(text, loaded.config.block_size)
        lp = _cached(
            "logprobs", loaded, tokens, TOP_ALTERNATIVES, lambda: token_logprobs(loaded.model, tokens, TOP_ALTERNATIVES)
        )
    except Exception as e:
        return {tab["text_note"]: _problem(e, "Token probabilities"), tab["tokens"]: "", tab["scored"]: None}
    return {
        tab["text_note"]: _lines(render.text_summary(lp, loaded.name), note),
        tab["tokens"]: render.text_html(lp),
        tab["scored"]: lp.tokens,
    }


def lens_view(tab: Tab, ctx: AppContext, choice: str | None, text: str | None, start: float | None) -> dict[Any, Any]:
    """The logit lens heatmap of LENS_COLUMNS positions from `start` (the whole text is computed once)."""
    from core.probe import logit_lens

    try:
        loaded = _load(ctx, choice)
        tokens, note = text_tokens(text, loaded.config.block_size)
        lens = _cached("lens", loaded, tokens, None, lambda: logit_lens(loaded.model, tokens))
    except Exception as e:
        return {tab["lens_note"]: _problem(e, "Logit lens"), tab["lens_plot"]: None}
    n = len(lens.tokens)
    cols = render.lens_window(n, start)
    shown = f"positions {cols.start}–{cols.stop - 1} of {n} (move the slider for the others)" if n > len(cols) else ""
    summary = (
        f"**{n} positions × {len(lens.layer_labels)} read-outs** · `{loaded.name}`. Each cell: the top next-token "
        "guess if the model stopped after that layer; colour: the probability it gives the token that really came "
        f"next. Hover for the top 3. {shown}"
    )
    return {
        tab["lens_note"]: _lines(summary, note),
        tab["lens_plot"]: render.lens_figure(lens, cols.start),
        tab["lens_start"]: gr.update(maximum=max(1, n - len(cols)), value=cols.start, visible=n > len(cols)),
    }


def _scores_for(loaded: LoadedModel, scores: dict | None) -> np.ndarray | None:
    """The remembered induction scores when they belong to this model."""
    if not scores or tuple(scores["key"]) != tuple(loaded.key):
        return None
    return np.array(scores["values"], dtype=np.float64)


def ablation_summary(effect: Comparison, heads: list[tuple[int, int]]) -> str:
    what = f"**{len(heads)} head{'s' * (len(heads) != 1)}** ({render.heads_label(heads)})"
    out = (
        f"Without {what} the mean loss on these {len(effect.tokens)} tokens goes from **{effect.mean_a:.4f}** to "
        f"**{effect.mean_b:.4f}** nats/token: change **{effect.mean_diff:+.4f}**. Red tokens got harder to predict."
    )
    start = repeat_start(effect.tokens)
    if start is not None:
        first, second = effect.diff[: start - 1], effect.diff[start - 1 :]
        out += (
            f" On the induction probe: first half **{float(first.mean()):+.4f}**, repeated half "
            f"**{float(second.mean()):+.4f}** (a model with induction heads shows a larger rise on the repeated half)."
        )
    return out


def ablation_view(
    tab: Tab, ctx: AppContext, choice: str | None, text: str | None, heads: list | None, scores: dict | None
) -> dict[Any, Any]:
    """The head grid of this model with the selected heads, and the per-token loss change without them."""
    from core.probe import ablation_effect

    out: dict[Any, Any] = {}
    try:
        loaded = _load(ctx, choice)
        cfg = loaded.config
        chosen = sorted({(int(a), int(b)) for a, b in heads or [] if int(a) < cfg.n_layer and int(b) < cfg.n_head})
        out[tab["grid"]] = render.grid_html(cfg.n_layer, cfg.n_head, chosen, _scores_for(loaded, scores))
        out[tab["heads"]] = [list(h) for h in chosen]
        tokens, note = text_tokens(text, cfg.block_size)
        if not chosen:
            hint = (
                f"**{len(tokens)} tokens**. Click heads in the grid to ablate them (zero their output), or press "
                "**Select top induction heads**."
            )
            return {**out, tab["ablation_note"]: _lines(hint, note), tab["ablation_tokens"]: ""}
        effect = _cached(
            "ablation", loaded, tokens, tuple(chosen), lambda: ablation_effect(loaded.model, tokens, chosen)
        )
    except Exception as e:
        return {**out, tab["ablation_note"]: _problem(e, "Head ablation"), tab["ablation_tokens"]: ""}
    return {
        **out,
        tab["ablation_note"]: _lines(ablation_summary(effect, chosen), note),
        tab["ablation_tokens"]: render.diff_html(effect, "loss change without the heads", "with", "without"),
    }


def ablation_update(
    tab: Tab, ctx: AppContext, choice: str | None, text: str | None, heads: list | None, scores: dict | None
) -> dict[Any, Any]:
    """ablation_view after a click in the grid: the grid already shows the click, so it is not redrawn."""
    out = ablation_view(tab, ctx, choice, text, heads, scores)
    out.pop(tab["grid"], None)
    return out


def pick_heads(tab: Tab, ctx: AppContext, evt: gr.EventData) -> dict[Any, Any]:
    """A click in the grid: the browser sends the whole selection."""
    return {tab["heads"]: [[int(a), int(b)] for a, b in (evt._data or {}).get("heads", [])]}


def clear_heads(tab: Tab, ctx: AppContext, choice: str | None, text: str | None, scores: dict | None) -> dict[Any, Any]:
    return ablation_view(tab, ctx, choice, text, [], scores)


def _induction_scores(loaded: LoadedModel, text: str | None) -> tuple[np.ndarray, str]:
    """(L, H) induction scores on the text, or on the induction probe when no token of the text repeats."""
    tokens = encode(text or "")[: min(MAX_TOKENS, loaded.config.block_size)]

    def score(toks: list[int]) -> np.ndarray:
        return _cached(
            "induction", loaded, toks, None, lambda: induction_scores(attention_maps(loaded.model, toks).probs, toks)
        )

    scores = score(tokens) if tokens else None
    if scores is not None and np.isfinite(scores).any():
        return scores, "this text"
    return score(repeated_random_tokens(probe_length(loaded.config.block_size))), "the repeated-random-tokens probe"


def select_induction_heads(
    tab: Tab, ctx: AppContext, choice: str | None, text: str | None, scores: dict | None
) -> dict[Any, Any]:
    """Select the heads with the highest induction scores and show what ablating them does."""
    try:
        loaded = _load(ctx, choice)
        values, source = _induction_scores(loaded, text)
    except Exception as e:
        return {tab["ablation_note"]: _problem(e, "Finding induction heads")}
    ranked = sorted(np.ndindex(values.shape), key=lambda lh: -values[lh] if np.isfinite(values[lh]) else np.inf)
    top = [(int(a), int(b)) for a, b in ranked[: min(TOP_INDUCTION, values.size)]]
    remembered = {"key": list(loaded.key), "values": values.tolist()}
    out = ablation_view(tab, ctx, choice, text, top, remembered)
    picked = ", ".join(f"L{a} H{b} ({values[a, b]:.2f})" for a, b in top)
    out[tab["ablation_note"]] = _lines(f"Highest induction scores on {source}: {picked}.", out[tab["ablation_note"]])
    return {**out, tab["scores"]: remembered}


def sampling_config(
    seed: float | None, temperature: float | None, top_k: float | None, max_new: float | None
) -> SamplingConfig:
    """The SamplingConfig of the compare form (top-k 0 = off); a ValueError names a bad field."""
    if seed is None or seed < 0 or seed != int(seed):
        raise ValueError(
            f"seed must be a whole number ≥ 0 (the same seed gives both checkpoints the same draws), got {seed}"
        )
    if max_new is None or not 1 <= max_new <= MAX_NEW:
        raise ValueError(f"max new tokens must be between 1 and {MAX_NEW}, got {max_new}")
    k = int(top_k or 0)
    cfg = SamplingConfig(
        max_new_tokens=int(max_new), temperature=float(temperature or 0), top_k=k or None, seed=int(seed)
    )
    return cfg.validate()


def _sample(loaded: LoadedModel, prompt: str, cfg: SamplingConfig) -> str:
    from core.generation import generate, prompt_tokens

    tokens = prompt_tokens(prompt)
    return _cached("sample", loaded, tokens, dataclasses.astuple(cfg), lambda: generate(loaded.model, tokens, cfg)[0])


def compare_view(
    tab: Tab,
    ctx: AppContext,
    choice: str | None,
    choice_b: str | None,
    text: str | None,
    prompt: str | None,
    seed: float | None,
    temperature: float | None,
    top_k: float | None,
    max_new: float | None,
) -> dict[Any, Any]:
    """Both checkpoints' samples for the same prompt and settings, and their per-token loss difference on the text."""
    from core.probe import compare

    try:
        a, b = _load(ctx, choice), _load(ctx, choice_b)
        cfg = sampling_config(seed, temperature, top_k, max_new)
        samples = [(f"{side} · {m.name}", _sample(m, prompt or "", cfg)) for side, m in (("A", a), ("B", b))]
        tokens, note = text_tokens(text, min(a.config.block_size, b.config.block_size))
        cmp = _cached("compare", a, tokens, b.key, lambda: compare(a.model, b.model, tokens))
    except Exception as e:
        return {tab["compare_note"]: _problem(e, "Compare"), tab["samples"]: "", tab["compare_tokens"]: ""}
    same = "⚠ A and B are the same checkpoint: pick another one as B." if a.key == b.key else ""
    summary = (
        f"Samples: seed {cfg.seed}, temperature {cfg.temperature:g}, top-k {cfg.top_k or 'off'}. On the text "
        f"(**{len(cmp.tokens)} tokens**): A **{cmp.mean_a:.4f}**, B **{cmp.mean_b:.4f}** nats/token, B − A "
        f"**{cmp.mean_diff:+.4f}** (negative: B predicts this text better). Blue tokens: B better; red: B worse."
    )
    return {
        tab["compare_note"]: _lines(same, summary, note),
        tab["samples"]: render.samples_html(prompt or "", samples),
        tab["compare_tokens"]: render.diff_html(cmp, "loss of B − loss of A", "A", "B"),
    }


VIEW_INPUTS = (
    "view",
    "model",
    "text",
    "lens_start",
    "heads",
    "scores",
    "model_b",
    "prompt",
    "seed",
    "temperature",
    "top_k",
    "max_new",
)
VIEW_OUTPUTS = (
    "text_note",
    "tokens",
    "scored",
    "lens_note",
    "lens_plot",
    "lens_start",
    "grid",
    "heads",
    "ablation_note",
    "ablation_tokens",
    "compare_note",
    "samples",
    "compare_tokens",
)


def show_view(tab: Tab, ctx: AppContext, view: str, choice: str | None, text: str | None, *rest: Any) -> dict[Any, Any]:
    """Compute and draw the open view (inputs in VIEW_INPUTS order)."""
    start, heads, scores, choice_b, prompt, seed, temperature, top_k, max_new = rest
    if view == "lens":
        return lens_view(tab, ctx, choice, text, start)
    if view == "ablation":
        return ablation_view(tab, ctx, choice, text, heads, scores)
    if view == "compare":
        return compare_view(tab, ctx, choice, choice_b, text, prompt, seed, temperature, top_k, max_new)
    return text_view(tab, ctx, choice, text)


def choose_view(tab: Tab, ctx: AppContext, view: str) -> dict[Any, Any]:
    return {tab["view"]: view}


def use_probe(tab: Tab, ctx: AppContext, choice: str | None, seed: int) -> dict[Any, Any]:
    """Fill the text with the repeated-random-tokens probe, sized to the model's window (a new one each press)."""
    try:
        n = probe_length(_load(ctx, choice).config.block_size)
    except ModelError:
        n = PROBE_REPEAT  # the view that runs next says what is wrong with the model
    return {tab["text"]: decode(repeated_random_tokens(n, int(seed or 0))), tab["probe_seed"]: int(seed or 0) + 1}


def generate_text(tab: Tab, ctx: AppContext, choice: str | None, text: str | None) -> dict[Any, Any]:
    """Continue the text (or start from <|endoftext|>) with GENERATE_TOKENS sampled tokens."""
    from core.generation import generate

    try:
        loaded = _load(ctx, choice)
        cfg = SamplingConfig(max_new_tokens=GENERATE_TOKENS, temperature=0.8, top_k=50, seed=secrets.randbelow(2**31))
        more = generate(loaded.model, text or "", cfg)[0]
    except Exception as e:
        return {tab["text_note"]: _problem(e, "Generating a text")}
    return {tab["text"]: (text or "") + more}


def branch_from(tab: Tab, ctx: AppContext, scored: list[int] | None, evt: gr.EventData) -> Any:
    """A click on an alternative: the text up to that token with the alternative instead of the true token."""
    data = evt._data or {}
    pos, token = int(data.get("pos", -1)), int(data.get("token", -1))
    if not scored or not 0 <= pos < len(scored) - 1 or token < 0:
        return gr.skip()
    return {tab["branch"]: (decode(scored[: pos + 1] + [token]), time.time())}


def _open_branch(branch: tuple[str, float] | None) -> Any:
    if not branch:
        return gr.skip(), gr.skip()
    return branch[0], gr.Tabs(selected="sampling")


def connect_branch(inside: Tab, prompt: gr.Textbox, tabs: gr.Tabs) -> None:
    """Continue a branch in Sampling: the branch text becomes `prompt` and the tab with id "sampling" opens."""
    inside["branch"].change(_open_branch, inside["branch"], [prompt, tabs], queue=False, show_progress="hidden")


# --- layout and wiring ----------------------------------------------------------------------------
INTRO = (
    "Look inside a checkpoint on one text: how likely it found each token, what each layer already predicts, "
    "which attention heads matter, and how two checkpoints differ. Pick a view below; ▶ Analyse recomputes it."
)


def _layout_top(ctx: AppContext) -> dict[str, Any]:
    gr.Markdown(INTRO)
    c: dict[str, Any] = _picker(ctx, "inside", "Model / checkpoint (A)")
    c["text"] = gr.Textbox(DEFAULT_TEXT, label="Text", lines=4, max_lines=10, elem_id="inside-text")
    with gr.Row():
        c["run"] = gr.Button("▶ Analyse", variant="primary", elem_id="inside-run")
        c["generate"] = gr.Button("✎ Generate a text", elem_id="inside-generate")
        c["probe"] = gr.Button("↻ Repeated random tokens (induction probe)", elem_id="inside-probe")
    return c


def _layout_text() -> dict[str, Any]:
    return {
        "text_note": gr.Markdown(elem_id="inside-text-note"),
        "tokens": gr.HTML(css_template=render.TEXT_CSS, js_on_load=render.TEXT_JS, elem_id="inside-tokens"),
    }


def _layout_lens() -> dict[str, Any]:
    return {
        "lens_note": gr.Markdown(elem_id="inside-lens-note"),
        "lens_start": gr.Slider(
            0, 1, value=0, step=1, label="First position shown", visible=False, elem_id="inside-lens-start"
        ),
        "lens_plot": gr.Plot(show_label=False, elem_id="inside-lens-plot"),
    }


def _layout_ablation() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["induction"] = gr.Button("Select top induction heads", size="md", elem_id="inside-induction")
        c["clear"] = gr.Button("Clear selection", size="md", elem_id="inside-clear")
    gr.Markdown(
        "Click a head to ablate it (its output is zeroed before the attention projection); click again to "
        "bring it back.",
        elem_classes=["hint"],
    )
    c["grid"] = gr.HTML(css_template=render.GRID_CSS, js_on_load=render.GRID_JS, elem_id="inside-heads")
    c["ablation_note"] = gr.Markdown(elem_id="inside-ablation-note")
    c["ablation_tokens"] = gr.HTML(css_template=render.TEXT_CSS, js_on_load=None, elem_id="inside-ablation-tokens")
    return c


def _layout_compare(ctx: AppContext) -> dict[str, Any]:
    b = _picker(ctx, "inside-b", "Checkpoint B (compared with A, the model above)")
    b["model_missing"].visible = False  # A's note already says how to get a model
    c: dict[str, Any] = {"model_b": b["model"], "model_b_refresh": b["model_refresh"]}
    choices = c["model_b"].choices
    if len(choices) > 1:  # B starts as a checkpoint other than A's
        c["model_b"].value = choices[1][1]
    with gr.Row(equal_height=True):
        c["prompt"] = gr.Textbox(DEFAULT_PROMPT, label="Prompt for both", lines=2, scale=3, elem_id="inside-prompt")
        c["seed"] = gr.Number(1337, label="Seed", precision=0, minimum=0, scale=1, elem_id="inside-seed")
        c["temperature"] = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature", scale=2)
        c["top_k"] = gr.Number(50, label="Top-k (0 = off)", precision=0, minimum=0, scale=1)
        c["max_new"] = gr.Slider(1, MAX_NEW, value=40, step=1, label="New tokens", scale=2, elem_id="inside-max-new")
    c["compare_run"] = gr.Button("▶ Sample both and compare", variant="primary", elem_id="inside-compare-run")
    c["compare_note"] = gr.Markdown(elem_id="inside-compare-note")
    c["samples"] = gr.HTML(css_template=render.SAMPLES_CSS, js_on_load=None, elem_id="inside-samples")
    gr.Markdown("**Per-token loss difference on the text** (hover a token for both losses)")
    c["compare_tokens"] = gr.HTML(css_template=render.TEXT_CSS, js_on_load=None, elem_id="inside-compare-tokens")
    return c


def _layout(ctx: AppContext) -> tuple[dict[str, Any], dict[str, gr.Tab]]:
    c = _layout_top(ctx)
    views: dict[str, gr.Tab] = {}
    with gr.Tabs(selected="text", elem_id="inside-views"):
        for view, title, layout in (
            ("text", "Token probabilities", _layout_text),
            ("lens", "Logit lens", _layout_lens),
            ("ablation", "Head ablation", _layout_ablation),
            ("compare", "Compare checkpoints", lambda: _layout_compare(ctx)),
        ):
            with gr.Tab(title, id=view, elem_id=f"inside-view-{view}") as views[view]:
                c.update(layout())
    c["view"] = gr.State("text")
    c["scored"] = gr.State(None)  # the tokens of the text view, for branching
    c["heads"] = gr.State([])  # [[layer, head], ...] to ablate
    c["scores"] = gr.State(None)  # {"key": model key, "values": (L, H) induction scores} for the grid's tint
    c["probe_seed"] = gr.State(0)
    c["branch"] = gr.State(None)  # (prefix + alternative token as text, time): connect_branch sends it to Sampling
    return c, views


def _wire(tab: Tab, ctx: AppContext, views: dict[str, gr.Tab]) -> None:
    wire_model_picker(tab, ctx)  # A: ⟳ and a refresh when the tab is opened (its first on_open step)
    show = bind(show_view, tab, ctx)
    inputs, outputs = [tab[n] for n in VIEW_INPUTS], [tab[n] for n in VIEW_OUTPUTS]
    for view, item in views.items():
        item.select(bind(choose_view, tab, ctx, view), None, tab["view"], queue=False).then(show, inputs, outputs)
    tab["run"].click(show, inputs, outputs)
    tab["text"].submit(show, inputs, outputs)
    tab["model"].input(show, inputs, outputs)
    tab["probe"].click(
        bind(use_probe, tab, ctx), [tab["model"], tab["probe_seed"]], [tab["text"], tab["probe_seed"]]
    ).then(show, inputs, outputs)
    gen = bind(generate_text, tab, ctx)
    tab["generate"].click(gen, [tab["model"], tab["text"]], [tab["text"], tab["text_note"]]).then(show, inputs, outputs)
    tab["lens_start"].input(  # the lens is cached: moving the window only redraws
        bind(lens_view, tab, ctx),
        [tab["model"], tab["text"], tab["lens_start"]],
        [tab["lens_note"], tab["lens_plot"], tab["lens_start"]],
        trigger_mode="always_last",
        show_progress="hidden",
    )
    ablation = [tab["model"], tab["text"], tab["heads"], tab["scores"]]
    ablation_out = [tab[n] for n in ("grid", "heads", "ablation_note", "ablation_tokens", "scores")]
    tab["grid"].click(bind(pick_heads, tab, ctx), None, tab["heads"], **IN_TURN).then(
        bind(ablation_update, tab, ctx), ablation, ablation_out, trigger_mode="always_last"
    )
    tab["induction"].click(
        bind(select_induction_heads, tab, ctx), [tab["model"], tab["text"], tab["scores"]], ablation_out
    )
    tab["clear"].click(bind(clear_heads, tab, ctx), [tab["model"], tab["text"], tab["scores"]], ablation_out)
    tab["tokens"].click(bind(branch_from, tab, ctx), tab["scored"], tab["branch"], **IN_TURN)
    for event in (tab["model_b"].input, tab["compare_run"].click, tab["prompt"].submit):
        event(show, inputs, outputs)
    tab["model_b_refresh"].click(bind(refresh_model_b, tab, ctx), tab["model_b"], tab["model_b"])
    tab.on_open.append(OnOpen(bind(refresh_model_b, tab, ctx), [tab["model_b"]], [tab["model_b"]]))
    tab.on_open.append(OnOpen(show, inputs, outputs))


def build(ctx: AppContext) -> Tab:
    """The Inside tab (called inside its gr.Tab). Its on_open draws the open view; wire it to the tab's select
    only, so that a page load does not load a model."""
    components, views = _layout(ctx)
    tab = Tab("inside", components)
    _wire(tab, ctx, views)
    return tab
