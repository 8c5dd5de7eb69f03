"""Training precision (fp32, bf16 or fp16 autocast) and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from core.config import ConfigError

# Dense peak FLOP/s per GPU (bf16, fp16, fp32-as-TF32) from vendor datasheets; first match wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "fp32": 418e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    ("A10G", {}),  # a cloud variant with its own clocks: unknown rather than wrong
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12}),
    ("4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("3090", {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at a precision, or None where unknown (CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def cpu_bf16_support() -> str | None:
    """The instruction set that makes bf16 matmuls fast on this CPU ("AMX", "AVX-512 BF16"), or None.

    Asked of PyTorch itself (oneDNN's own dispatch), not read from /proc/cpuinfo.
    """
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX-512 BF16"
    return None


def choose_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision to train in, why): auto is bf16 on GPUs that support it, fp16 with a loss scaler on older
    GPUs, bf16 on CPUs with native bf16 matmuls (about 1.8x fp32 for GPT-2 124M on AMX), fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return "bf16", "auto: this GPU supports bf16"
            return "fp16", "auto: this GPU has no bf16; fp16 with a loss scaler"
        if device.type == "cpu" and (isa := cpu_bf16_support()):
            return "bf16", f"auto: this CPU has {isa}, so bf16 autocast is faster than fp32"
        return "fp32", f"auto: no fast bf16 on this {device.type}"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision fp16 needs a CUDA GPU (it uses a GradScaler); use bf16 or fp32 on CPU", field="precision"
        )
    return precision, "as configured"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context the forward passes run in: autocast to the precision's dtype, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (its gradients underflow without one); a disabled, pass-through one otherwise."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")
