"""The Train tab's recipe picker: a recipe's config (core.recipes) as the form's values, and the hint beside it.

The form gets every value of `apply_recipe(name, device=...)`, not only the ones the recipe sets, so the launched
config equals the recipe's. Fields the form has no input for (n_layer, eval_batches, hellaswag_interval, ...) are
returned as `extra`: the tab keeps them beside the form and adds them to the config (and so to the command).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.config import TrainConfig
from core.recipes import DeviceInfo, apply_recipe, describe_duration, detect_device, expected_wall_time, get_recipe

NO_RECIPE = "custom"  # the picker's value for "None (custom)"
# The device the form's Device choice trains on (what detect_device sizes the recipe for).
DEVICE_KIND = {"cpu": "cpu", "cpu-ddp": "cpu", "gpu": "cuda", "gpus-ddp": "cuda"}
# TrainConfig fields the form's own inputs set (see train_tab.form_to_config); the rest of a recipe is `extra`.
FORM_SETS = {
    "run_name", "runs_dir", "preset", "data", "data_config", "data_token_budget", "batch_size", "seq_len",
    "total_batch_tokens", "max_steps", "lr", "warmup_steps", "min_lr", "weight_decay", "precision", "compile",
    "eval_interval", "ckpt_interval", "sample_interval", "seed", "init_from", "device", "nproc", "parallel",
}  # fmt: skip


@dataclass(frozen=True)
class RecipeFill:
    values: dict[str, Any]  # form field -> value
    extra: dict[str, Any]  # TrainConfig fields the form has no input for, where the recipe's differ from defaults
    hint: str  # the recipe's description and its expected wall time on this machine


def _data_fields(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.data == "shakespeare":
        return {"data_source": "shakespeare"}
    if cfg.data.startswith("hf:"):
        return {
            "data_source": "hf",
            "hf_dataset": cfg.data.removeprefix("hf:"),
            "hf_config": cfg.data_config or "",
            "hf_token_budget": cfg.data_token_budget,
        }
    return {"data_source": "local", "data_path": cfg.data}


def _device_fields(cfg: TrainConfig, kind: str) -> dict[str, Any]:
    if cfg.nproc == 1:
        return {"device": "gpu" if kind == "cuda" else "cpu"}
    if kind == "cuda":
        return {"device": "gpus-ddp", "parallel": cfg.parallel}
    return {"device": "cpu-ddp", "nproc": cfg.nproc, "parallel": cfg.parallel}


def form_values(cfg: TrainConfig, kind: str) -> dict[str, Any]:
    """The Train form's values that give cfg (kind: the device it trains on, cpu or cuda)."""
    same = (
        "preset", "batch_size", "max_steps", "lr", "warmup_steps", "weight_decay", "precision", "compile",
        "eval_interval", "ckpt_interval", "sample_interval", "seed", "init_from",
    )  # fmt: skip
    values = {name: getattr(cfg, name) for name in same}
    values |= {
        "seq_len": cfg.effective_seq_len,
        "total_batch_tokens": cfg.total_batch_tokens or 0,
        "min_lr": cfg.effective_min_lr,
    }
    return values | _data_fields(cfg) | _device_fields(cfg, kind)


def extra_fields(cfg: TrainConfig) -> dict[str, Any]:
    """cfg's values for the fields the form cannot show, where they differ from TrainConfig's defaults."""
    defaults = TrainConfig()
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in FORM_SETS and getattr(cfg, f.name) != getattr(defaults, f.name)
    }


def recipe_hint(name: str, cfg: TrainConfig, device: DeviceInfo, extra: dict[str, Any]) -> str:
    recipe = get_recipe(name)
    when = describe_duration(expected_wall_time(cfg, device))
    also = ", ".join(f"{k} {v}" for k, v in extra.items())
    carried = f" Also sets {also} (no field here: they are in the command)." if also else ""
    return f"{recipe.description} **Expected wall time on {device.describe()}: {when}.**{carried}"


def recipe_fill(name: str, device_choice: str) -> RecipeFill:
    """The form's values for recipe `name`, sized for the device the form's Device choice trains on."""
    kind = DEVICE_KIND.get(device_choice, "cpu")
    device = detect_device(kind)
    cfg = apply_recipe(name, device=device)
    extra = extra_fields(cfg)
    return RecipeFill(form_values(cfg, kind), extra, recipe_hint(name, cfg, device, extra))
