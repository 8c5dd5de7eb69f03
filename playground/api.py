"""The app's named API: plain typed functions that scripts and notebooks call through `gradio_client` or HTTP.

Each endpoint is registered with Gradio's own `gr.api` (parameters and their types come from the signature, the
description from the docstring); `hide_ui_events` then hides the tabs' own events from the API page, so
`Client(url).view_api()` lists exactly ENDPOINTS. The functions call core and the shared playground modules (the
model cache, the run actions) -- the same code the tabs run -- and answer with JSON values. A refused call raises
gr.Error with a one-line message (the client raises it as an error); `/launch` instead answers a field-level
error, `{"error": ..., "field": ...}`, so a script can tell which TrainConfig field to fix. See docs/api.md.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.context import get_blocks_context

from core.attention import attention_maps, induction_scores, previous_token_scores
from core.config import ConfigError, TrainConfig
from core.data import BUNDLED, DataError, check_source
from core.jobs import STOP_TIMEOUT_S, JobError
from core.metrics import export_records
from core.runs import CheckpointError, list_checkpoints, read_state, resolve_checkpoint
from core.sampling_config import SamplingConfig
from core.tokenizer import encode, token_str
from playground import actions
from playground.model_cache import CACHE, ModelError
from playground.sampling_tab import MAX_UI_NEW_TOKENS, MAX_UI_SAMPLES, next_token_logits
from playground.tab import AppContext, bind
from playground.train_tab import error_field

MAX_TOP_N = 100  # candidates /next_token_probs returns at most
RUN_FIELDS = ("name", "state", "step", "total_steps", "loss", "val_loss", "checkpoint", "started_at")
# What an endpoint can run into; each carries a message written for the user.
EXPECTED = (ValueError, ModelError, JobError, CheckpointError, OSError)


def _refusals_as_messages(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, raising gr.Error (a one-line message for the client, never a stack trace) instead of its errors.

    Keeps fn's signature and type hints (gr.api reads them) and stays a generator function when fn is one.
    """

    def refuse(e: Exception) -> gr.Error:
        if isinstance(e, EXPECTED):
            return gr.Error(str(e), print_exception=False)
        return gr.Error(f"{fn.__name__} failed: {type(e).__name__}: {e}")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise refuse(e) from e

    else:

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise refuse(e) from e

    return checked


def _json_numbers(values: np.ndarray) -> list[Any]:
    """A numeric array as nested lists, NaN (a score that does not apply) as null: JSON has no NaN."""
    if values.ndim > 1:
        return [_json_numbers(v) for v in values]
    return [None if math.isnan(v) else float(v) for v in values]


def _sampling_config(temperature: float, top_k: int | None, top_p: float, **more: Any) -> SamplingConfig:
    """A checked SamplingConfig; top_k 0 or None is off. ValueError names the field that is out of range."""
    return SamplingConfig(temperature=temperature, top_k=top_k or None, top_p=top_p, **more).validate()


# ----- models ------------------------------------------------------------------------------------------------------


@_refusals_as_messages
def generate(
    ctx: AppContext,
    model: str,
    prompt: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int | None = None,
    num_samples: int = 1,
    stop: list[str] | None = None,
    mode: str = "default",
) -> Iterator[list[str]]:
    """Sample text from a checkpoint; streams every sample's text so far (use Client.submit), the last answer is
    the finished texts, without the prompt.

    Args:
        model: a run (its latest checkpoint) or one checkpoint, "<run>/ckpt/step-000500" (see /checkpoints)
        prompt: the text to continue; empty starts from <|endoftext|>
        temperature: 0 = greedy, higher = more random
        top_k: keep the k most likely tokens; 0 or null = off
        top_p: keep the most likely tokens up to this much probability; 1 = off
        max_new_tokens: at most this many new tokens per sample (1 to 2048)
        seed: the same seed gives the same text; null = a random one
        num_samples: how many samples of the prompt (1 to 8)
        stop: strings that end a sample; they are not part of the text
        mode: how the model runs: default (fp32), compiled, bf16, int8 or int8-compiled (docs/sampling.md#modes)
    """
    from core.generation import stream

    if not 1 <= max_new_tokens <= MAX_UI_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be between 1 and {MAX_UI_NEW_TOKENS}, got {max_new_tokens}")
    if not 1 <= num_samples <= MAX_UI_SAMPLES:
        raise ValueError(f"num_samples must be between 1 and {MAX_UI_SAMPLES}, got {num_samples}")
    cfg = _sampling_config(
        temperature,
        top_k,
        top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        num_samples=num_samples,
        stop=stop or (),
        mode=mode,
    )
    loaded = CACHE.get(ctx.runs_dir, model)
    texts = [""] * num_samples
    for step in stream(loaded.model, prompt, cfg):
        texts = [text + new for text, new in zip(texts, step.texts)]
        yield texts


@_refusals_as_messages
def next_token_probs(
    ctx: AppContext,
    model: str,
    prompt: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    top_n: int = 10,
) -> list[dict[str, Any]]:
    """The model's most likely next tokens after the prompt, most likely first: token id, text, `probability`
    (what sampling with these settings draws from) and `model_probability` (the plain softmax).

    Args:
        model: a run or one checkpoint (see /checkpoints)
        prompt: the text; empty means the token after <|endoftext|>
        temperature: 0 = greedy (all probability on the most likely token)
        top_k: keep the k most likely tokens; 0 or null = off
        top_p: keep the most likely tokens up to this much probability; 1 = off
        top_n: how many candidates to return (1 to 100)
    """
    import torch

    from core.generation import filter_probs, prompt_tokens

    if not 1 <= top_n <= MAX_TOP_N:
        raise ValueError(f"top_n must be between 1 and {MAX_TOP_N}, got {top_n}")
    cfg = _sampling_config(temperature, top_k, top_p)
    loaded = CACHE.get(ctx.runs_dir, model)
    logits = next_token_logits(loaded, prompt_tokens(prompt))
    sampled, plain = filter_probs(logits[None], cfg)[0], logits.float().softmax(-1)
    ids = torch.topk(logits, min(top_n, logits.numel())).indices.tolist()
    return [
        {"token": t, "text": token_str(t), "probability": sampled[t].item(), "model_probability": plain[t].item()}
        for t in ids
    ]


@_refusals_as_messages
def attention(ctx: AppContext, model: str, text: str, layer: int = 0, head: int = 0) -> dict[str, Any]:
    """Attention of every layer and head on the text: the tokens, per-head summaries ([layer][head] tables of
    `entropy` in nats, `previous_token` and `induction` scores; null where a score does not apply) and `map`, the
    attention probabilities of one layer and head ([query][key], rows sum to 1).

    Args:
        model: a run or one checkpoint (see /checkpoints)
        text: the text to look at (at most 256 tokens, or the model's context window, are used)
        layer: the layer of `map`, from 0
        head: the head of `map`, from 0
    """
    tokens = encode(text)
    if not tokens:
        raise ValueError("text is empty; give some text to look at")
    loaded = CACHE.get(ctx.runs_dir, model)
    n_layer, n_head = loaded.config.n_layer, loaded.config.n_head
    if not (0 <= layer < n_layer and 0 <= head < n_head):
        raise ValueError(f"layer must be in [0, {n_layer}) and head in [0, {n_head}); got layer {layer}, head {head}")
    result = attention_maps(loaded.model, tokens)
    return {
        "tokens": result.tokens,
        "labels": result.labels,
        "truncated": result.truncated,
        "n_input": result.n_input,
        "n_layer": n_layer,
        "n_head": n_head,
        "entropy": _json_numbers(result.entropy),
        "previous_token": _json_numbers(previous_token_scores(result.probs)),
        "induction": _json_numbers(induction_scores(result.probs, result.tokens)),
        "layer": layer,
        "head": head,
        "map": result.probs[layer, head].tolist(),
    }


# ----- runs --------------------------------------------------------------------------------------------------------


@_refusals_as_messages
def runs(ctx: AppContext) -> list[dict[str, Any]]:
    """Every run of the app's runs folder, active first, then newest first: name, state, step, total_steps, loss,
    val_loss, checkpoint (the newest), started_at (unix seconds)."""
    return [{k: v for k, v in st.to_dict().items() if k in RUN_FIELDS} for st in ctx.jobs.list_runs()]


@_refusals_as_messages
def status(ctx: AppContext, run: str) -> dict[str, Any]:
    """Everything known about one run: state (running, stopping, done, failed, stopped), step, losses, speed, ETA,
    device, the failure message and the end of its log.

    Args:
        run: the run's name
    """
    return ctx.jobs.status(run).to_dict()


def _checked_launch_config(ctx: AppContext, config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig to launch, in this app's runs folder, with the checks the Train tab's form makes: an exposed
    app reads data only from its allowed folders and downloads only with --allow-downloads (core.paths)."""
    if not isinstance(config, dict):
        raise ConfigError('config must be a JSON object of TrainConfig fields, e.g. {"preset": "micro"}')
    cfg = TrainConfig.from_dict({**config, "runs_dir": str(ctx.runs_dir)}).validate()
    access = ctx.access
    for name in ("data", "val_data"):
        spec = getattr(cfg, name)
        if spec is None or spec in BUNDLED:
            continue
        if spec.startswith("hf:"):
            access.check_download(f"dataset {spec.removeprefix('hf:')!r}", name)
            continue
        if access.exposed:  # the trainer gets the very path that was checked
            spec = str(access.check_read(spec, name))
            setattr(cfg, name, spec)
        try:
            check_source(spec)
        except DataError as e:
            raise ConfigError(str(e), field=name) from e
    if cfg.init_from != "scratch":
        cfg.init_from = access.check_model_source(cfg.init_from, "init_from")
    if access.exposed:  # the token cache is written: only inside an allowed folder
        cfg.data_cache = str(access.check_read(cfg.data_cache, "data_cache"))
    return cfg


def launch(ctx: AppContext, config: dict[str, Any], allow_concurrent: bool = False) -> dict[str, Any]:
    """Start a training run in the background: {"run", "pid", "command"}, or {"error", "field"} naming the
    TrainConfig field to fix (field is null for refusals such as a busy device).

    Args:
        config: TrainConfig fields as JSON, e.g. {"preset": "micro", "max_steps": 100}; missing fields keep their
            defaults (docs/training.md lists them); the run goes into the app's runs folder
        allow_concurrent: also start when another job trains on the CPU (both then share the cores)
    """
    try:
        job = ctx.jobs.launch(_checked_launch_config(ctx, config), allow_concurrent=allow_concurrent)
    except Exception as e:  # bad value, name taken, busy device, disk full: an answer, never a trace
        return {"error": str(e), "field": error_field(e)}
    return {"run": job.name, "pid": job.pid, "command": job.command}


def stop(ctx: AppContext, run: str, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
    """Ask a run to stop: {"ok", "message"}; it saves a checkpoint and exits on its own (poll /status).

    Args:
        run: the run's name
        timeout_s: seconds before a run that has not exited is killed (a checkpoint being saved is waited for)
    """
    outcome = actions.stop_run(ctx.jobs, run, timeout_s)
    return {"ok": outcome.ok, "message": outcome.message}


def resume(ctx: AppContext, run: str) -> dict[str, Any]:
    """Continue a stopped or failed run from its latest checkpoint: {"ok", "message"}.

    Args:
        run: the run's name
    """
    outcome = actions.resume_run(ctx.jobs, run)
    return {"ok": outcome.ok, "message": outcome.message}


@_refusals_as_messages
def checkpoints(ctx: AppContext, run: str) -> list[dict[str, Any]]:
    """A run's checkpoints, oldest first: name, model (the value /generate, /next_token_probs and /attention take),
    step, val_loss (null when none was measured) and whether it is the latest.

    Args:
        run: the run's name
    """
    run_dir = Path(ctx.jobs.status(run).run_dir)  # status refuses a name that is no run
    found = list_checkpoints(run_dir)
    latest = resolve_checkpoint(run_dir) if found else None
    answer = []
    for ckpt in found:
        try:
            state = read_state(ckpt)
        except CheckpointError:  # pruned or being written meanwhile
            continue
        model = f"{run}/ckpt/{ckpt.name}"
        answer.append(
            {
                "name": ckpt.name,
                "model": model,
                "step": state.get("step"),
                "val_loss": state.get("val_loss"),
                "latest": ckpt == latest,
            }
        )
    return answer


@_refusals_as_messages
def export(ctx: AppContext, run: str, format: str = "csv") -> str:
    """A run's metrics.jsonl as CSV (one row per record, a `kind` column, the union of the fields as columns) or
    as JSONL (the records as they are), as text.

    Args:
        run: the run's name
        format: csv or jsonl
    """
    run_dir = Path(ctx.jobs.status(run).run_dir)  # status refuses a name that is no run
    return export_records(run_dir / "metrics.jsonl", format)


ENDPOINTS: dict[str, Callable[..., Any]] = {
    "generate": generate,
    "next_token_probs": next_token_probs,
    "attention": attention,
    "runs": runs,
    "status": status,
    "launch": launch,
    "stop": stop,
    "resume": resume,
    "checkpoints": checkpoints,
    "export": export,
}


def register(ctx: AppContext) -> None:
    """Inside the app's Blocks: one gr.api endpoint per ENDPOINTS entry, under exactly that name (an event of the
    tabs that Gradio named the same is renamed first, or ours would get a suffix)."""
    for event in get_blocks_context().fns.values():
        if event.api_name in ENDPOINTS:
            event.api_name = f"ui_{event.api_name}"
    for name, fn in ENDPOINTS.items():
        bound = bind(fn, ctx)
        # bind keeps the parameters; gr.api also reads the return type (its output) from the signature.
        answer = typing.get_type_hints(fn)["return"]
        bound.__signature__ = inspect.signature(bound).replace(return_annotation=answer)
        gr.api(bound, api_name=name)


def hide_ui_events(demo: gr.Blocks) -> None:
    """Hide every event but the named endpoints from the API page (`view_api()`); the tabs still call them."""
    for event in demo.fns.values():
        fn = getattr(event.fn, "__wrapped__", None)
        if fn is None or fn is not ENDPOINTS.get(event.api_name or ""):
            event.api_visibility = "undocumented"
