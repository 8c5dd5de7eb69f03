"""Recipes: named, ready-made training configs, sized for the hardware they run on.

    python -m core.train --list-recipes
    python -m core.train --recipe gpt2-124m-fineweb                  # build-nanogpt's GPT-2 124M run
    python -m core.train --recipe shakespeare-cpu --max-steps 300     # flags override the recipe

A recipe is a partial TrainConfig (the fields it sets) plus the fields it picks for the device (the
micro-batch from the GPU's memory, compile on CUDA, ...); every other field keeps its default. Order of
precedence: recipe < --config file < command-line flags. `expected_wall_time` estimates how long a config
trains on a device, for the Train tab and --list-recipes. torch is imported inside the functions that need it: the
Train tab lists the recipes while it builds its page, before torch is loaded.
"""

from __future__ import annotations

import math
import os
import platform
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import ConfigError, TrainConfig

GPU_MFU = 0.40  # assumed for a compiled bf16 GPT-2 on a datacenter GPU (build-nanogpt-style runs reach 0.35-0.5)
GPU_MFU_EAGER = 0.25  # the same without torch.compile
# Training FLOP/s per CPU core, measured (single-thread CPU time of a step, glibc malloc tuned as the trainer
# does) on a 2-core AVX-512 BF16 server while other jobs loaded it: (parameters, bf16, fp32). Between two rows
# the rate is interpolated on log(parameters); beyond them the nearest row is used. tiny with 6 layers
# (7.6M, 16 x 128 tokens) did 1,974 tok/s per core in bf16; gpt2 (124M, 1 x 1024) 172 tok/s.
CPU_FLOPS_PER_CORE: list[tuple[float, float, float]] = [(7.6e6, 93e9, 74e9), (124e6, 147e9, 82e9)]
CPU_PARALLEL_EFFICIENCY = 0.8  # a step on n cores takes the one-core time / (n x this)
STARTUP_S = 30.0  # importing torch, reading the data cache, the first (slow) step


@dataclass(frozen=True)
class DeviceInfo:
    """What a recipe is sized for: the device kind, its name, how many (GPUs; cores for a CPU), memory in bytes
    (one GPU's, or the machine's RAM for CPU and MPS) and whether it has fast bf16."""

    kind: str  # cuda | mps | cpu
    name: str
    count: int
    memory_bytes: int
    bf16: bool

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"{self.count} x {self.name} ({self.memory_bytes / 1e9:.0f} GB)"
        cores = f", {self.count} cores" if self.kind == "cpu" else ""
        return f"{self.kind} ({self.name}{cores}, {self.memory_bytes / 1e9:.0f} GB RAM)"


def detect_device(pref: str = "auto") -> DeviceInfo:
    """The device a run with device=pref would train on, as DeviceInfo (all the GPUs of this machine for cuda)."""
    import psutil
    import torch

    from core.device import gpu_count, pick_device
    from core.precision import cpu_bf16_support

    kind = pick_device(pref).type
    ram = psutil.virtual_memory().total
    if kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, gpu_count(), props.total_memory, torch.cuda.is_bf16_supported())
    if kind == "mps":
        return DeviceInfo("mps", "Apple GPU", 1, ram, False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return DeviceInfo("cpu", platform.processor() or platform.machine() or "cpu", cores, ram, bool(cpu_bf16_support()))


def _power_of_two_at_most(x: float, low: int, high: int) -> int:
    return max(low, min(high, 2 ** math.floor(math.log2(x)))) if x >= 1 else low


def gpt2_micro_batch(device: DeviceInfo) -> int:
    """Sequences of 1024 tokens per micro-batch for GPT-2 124M: 64 on a GPU with >= 80 GB, halved for each
    halving of its memory (40 GB: 32, 24 GB: 16, 16 GB: 8); on a CPU or MPS, what half the RAM holds at the
    1.5 GB a sequence took here (plus 2 GB of weights and AdamW state), at most 16."""
    if device.kind == "cuda":
        return _power_of_two_at_most(64 * device.memory_bytes / 80e9, 1, 64)
    return _power_of_two_at_most((device.memory_bytes / 2 - 2e9) / 1.5e9, 1, 16)


def _gpt2_for(device: DeviceInfo) -> dict[str, Any]:
    """The GPT-2 recipe's hardware-dependent fields; accumulation follows from total_batch_tokens."""
    batch = gpt2_micro_batch(device)
    return {
        "batch_size": batch,
        "seq_len": 1024,
        "eval_batches": max(1, 20 * 64 // batch),  # build-nanogpt's 20 x 64 x 1024 validation tokens
        "compile": device.kind == "cuda",
        "precision": "bf16" if device.bf16 else "auto",  # auto: fp16 on GPUs without bf16, fp32 on such CPUs
        "nproc": device.count if device.kind == "cuda" else 1,
    }


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    hardware: str  # what it needs and how long it takes
    values: dict[str, Any]  # TrainConfig fields it sets
    sized: Callable[[DeviceInfo], dict[str, Any]] = field(default=lambda device: {})  # fields picked per device

    def config_values(self, device: DeviceInfo) -> dict[str, Any]:
        return {**self.values, **self.sized(device)}


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="gpt2-124m-fineweb",
            description=(
                "Reproduce GPT-2 124M as build-nanogpt does: FineWeb-Edu sample-10BT (10B tokens, 1% held out for "
                "validation), 524,288 tokens per step for 19,073 steps (one epoch), AdamW lr 6e-4 -> 6e-5 cosine "
                "after 715 warmup steps, weight decay 0.1, clip 1.0, val loss and HellaSwag every 250 steps. "
                "Compare with OpenAI's GPT-2 124M: val loss 3.2924, HellaSwag acc_norm 0.2955."
            ),
            hardware=(
                "CUDA GPUs with bf16 (Ampere or newer); about 6 hours on one H100 and 2-3 on 8 x A100 (estimates; "
                "all GPUs of the machine through torchrun). Needs ~20 GB of disk for the tokens and a network "
                "connection to stream FineWeb-Edu and download HellaSwag (or local copies). The micro-batch per "
                "GPU follows its memory (64 x 1024 on 80 GB); gradient accumulation makes up the 524,288 tokens."
            ),
            values={
                "preset": "gpt2",
                "data": "hf:HuggingFaceFW/fineweb-edu",
                "data_config": "sample-10BT",
                "data_token_budget": 10_000_000_000,
                "val_fraction": 0.01,
                "total_batch_tokens": 524_288,
                "max_steps": 19_073,
                "lr": 6e-4,
                "min_lr": 6e-5,
                "warmup_steps": 715,
                "weight_decay": 0.1,
                "grad_clip": 1.0,
                "eval_interval": 250,
                "hellaswag_interval": 250,
                "ckpt_interval": 1000,
                "sample_interval": 250,
                "sample_tokens": 32,
            },
            sized=_gpt2_for,
        ),
        Recipe(
            name="shakespeare-cpu",
            description=(
                "A small GPT (the tiny preset with 6 layers, 7.6M parameters) on the bundled tinyshakespeare "
                "corpus: 600 steps of 16 x 128 tokens (1.2M tokens, ~4 epochs). Samples at steps 300 and 600 "
                "show speaker names, line breaks and Shakespearean words."
            ),
            hardware="any CPU: under 10 minutes on a 2-core laptop (bf16 where the CPU has it); seconds on a GPU",
            values={
                "preset": "tiny",
                "n_layer": 6,
                "data": "shakespeare",
                "batch_size": 16,
                "seq_len": 128,
                "max_steps": 600,
                "lr": 3e-3,
                "min_lr": 3e-4,
                "warmup_steps": 50,
                "eval_interval": 100,
                "eval_batches": 8,
                "ckpt_interval": 300,
                "keep_last": 2,
                "sample_interval": 300,
                "sample_tokens": 96,
            },
        ),
    )
}


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe of that name; ConfigError (field "recipe") naming the ones there are."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}", field="recipe")
    return RECIPES[name]


def recipe_values(name: str, device: DeviceInfo | None = None) -> dict[str, Any]:
    """The TrainConfig fields the recipe sets, sized for device (default: this machine's)."""
    return get_recipe(name).config_values(device or detect_device())


def apply_recipe(name: str, overrides: dict[str, Any] | None = None, device: DeviceInfo | None = None) -> TrainConfig:
    """TrainConfig defaults, then the recipe (sized for device), then overrides."""
    return TrainConfig.from_dict({**recipe_values(name, device), **(overrides or {})})


def _model_size(cfg: TrainConfig) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of the config's model, counted as the trainer counts them."""
    import torch

    from core.model import GPT

    with torch.device("meta"):  # the shapes without the memory
        model = GPT(cfg.model_config())
    return model.num_params(), model.flops_per_token(cfg.effective_seq_len)


def _cpu_flops_per_core(params: float, bf16: bool) -> float:
    rows = CPU_FLOPS_PER_CORE
    col = 1 if bf16 else 2
    if params <= rows[0][0]:
        return rows[0][col]
    for lo, hi in zip(rows, rows[1:]):
        if params <= hi[0]:
            t = math.log(params / lo[0]) / math.log(hi[0] / lo[0])
            return lo[col] + t * (hi[col] - lo[col])
    return rows[-1][col]


def _gpu_peak(device: DeviceInfo, precision: str) -> float | None:
    from core.precision import PEAK_FLOPS

    for key, peaks in PEAK_FLOPS:
        if key in device.name:
            return peaks.get(precision)
    return None


def expected_wall_time(cfg: TrainConfig, device: DeviceInfo) -> float | None:
    """Seconds the config's training steps should take on device, or None where there is no basis for a guess
    (MPS, GPUs missing from core.precision.PEAK_FLOPS). GPUs: FLOPs / (peak x GPU_MFU, or GPU_MFU_EAGER without
    compile), over min(nproc, GPUs); CPUs: FLOPs / the measured CPU_FLOPS_PER_CORE rate x cores x efficiency.
    Evaluations, samples and data preparation are not counted; expect +-50 % on other machines."""
    world = min(cfg.nproc, device.count) if device.kind == "cuda" else 1
    tokens = cfg.total_steps(world) * (cfg.total_batch_tokens or cfg.tokens_per_micro_step(world))
    fast_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.bf16)
    if device.kind == "cuda":
        precision = "bf16" if fast_bf16 else ("fp32" if cfg.precision == "fp32" else "fp16")
        peak = _gpu_peak(device, precision)
        if not peak:
            return None
        rate = peak * world * (GPU_MFU if cfg.compile else GPU_MFU_EAGER)
    elif device.kind == "cpu":
        per_core = _cpu_flops_per_core(_model_size(cfg)[0], fast_bf16 and device.bf16)
        rate = per_core * device.count * CPU_PARALLEL_EFFICIENCY
    else:
        return None
    return STARTUP_S + _model_size(cfg)[1] * tokens / rate


def describe_duration(seconds: float | None) -> str:
    """An expected_wall_time for people: "about 6m57s", "about 6h00m", "about 420 days", "unknown"."""
    from core.reporting import format_duration

    if seconds is None:
        return "unknown"
    return f"about {format_duration(seconds)}" if seconds < 2 * 86400 else f"about {seconds / 86400:,.0f} days"


def describe_recipes(device: DeviceInfo) -> str:
    """What --list-recipes prints: each recipe, what it needs, and its config and expected time on device."""
    blocks = []
    for recipe in RECIPES.values():
        cfg = apply_recipe(recipe.name, device=device)
        world = min(cfg.nproc, device.count) if device.kind == "cuda" else 1
        try:
            batch = f"{cfg.batch_size} x {cfg.effective_seq_len} x {cfg.grad_accum_steps(world)} accumulation"
        except ConfigError as e:
            batch = f"does not fit ({e})"
        compiled = ", compiled" if cfg.compile else ""
        when = describe_duration(expected_wall_time(cfg, device))
        here = (
            f"here, on {device.describe()}: {batch} x {world} process(es); {cfg.precision}{compiled}; expected {when}"
        )
        lines = [recipe.description, f"needs: {recipe.hardware}", here, f"python -m core.train --recipe {recipe.name}"]
        blocks.append(
            "\n".join(
                [recipe.name, *(textwrap.fill(t, 110, initial_indent="  ", subsequent_indent="    ") for t in lines)]
            )
        )
    return "\n\n".join(blocks)
