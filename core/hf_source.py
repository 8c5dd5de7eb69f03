"""Hugging Face GPT-2 sources without torch: whether a folder is in Hugging Face layout, whether a text is shaped
like a hub id, and a GPT-2 config.json as our ModelConfig. core.hf loads and writes the weights; the UI's forms
and core.weights use these before torch is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.config import GPT2_VOCAB_SIZE, ModelConfig

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFError(RuntimeError):
    """A Hugging Face folder or hub id that cannot be used; the message names the problem and the fix."""


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder in Hugging Face layout: a config.json that names a model_type. Whether it holds a
    GPT-2 this code can run (and its weights) is checked when it is loaded, with a message saying what is wrong."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg


def is_hub_id(text: str) -> bool:
    """True for a string shaped like a hub id, "gpt2" or "org/name", that is not a local path: no leading '.',
    '/' or '~', no backslash, at most one '/', and for org/name no local folder called org."""
    if not HUB_ID.match(text):
        return False
    org, slash, _ = text.partition("/")
    return not (slash and Path(org).is_dir())


def hf_model_config(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a Hugging Face GPT-2 config.json; refuses variants this model cannot run."""
    if hf.get("model_type") != "gpt2":
        raise HFError(f"config.json has model_type {hf.get('model_type')!r}; only GPT-2 ('gpt2') can be imported")
    act = hf.get("activation_function", "gelu_new")
    n_embd = int(hf.get("n_embd", 768))
    checks = [
        (act in GELU_TANH, f"activation_function {act!r} is not GPT-2's tanh GELU (gelu_new)"),
        (hf.get("n_inner") in (None, 4 * n_embd), f"n_inner {hf.get('n_inner')} is not 4 * n_embd"),
        (abs(float(hf.get("layer_norm_epsilon", 1e-5)) - 1e-5) < 1e-12, "layer_norm_epsilon is not 1e-5"),
        (hf.get("scale_attn_weights", True), "scale_attn_weights is false"),
        (not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx is true"),
        (
            int(hf.get("vocab_size", GPT2_VOCAB_SIZE)) == GPT2_VOCAB_SIZE,
            f"vocab_size {hf.get('vocab_size')} is not GPT-2's {GPT2_VOCAB_SIZE} (the tokenizer here is GPT-2's)",
        ),
    ]
    for ok, problem in checks:
        if not ok:
            raise HFError(f"unsupported GPT-2 variant: {problem}")
    return ModelConfig(
        block_size=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
        vocab_size=GPT2_VOCAB_SIZE,
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        pad_vocab=False,
    ).validate()
