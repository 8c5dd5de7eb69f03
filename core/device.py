"""The one device picker: what "auto", "cuda", "mps" or "cpu" means on this machine.

Used by the trainer (through core.distributed, per local rank), core.jobs (which device a launch will
occupy), the sampling CLI and benchmark, and the UI's model cache. torch is imported inside the functions: the UI
counts GPUs while it builds its page, before torch is loaded (see gpu_count).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ConfigError

if TYPE_CHECKING:
    import torch


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: the local rank's CUDA GPU, else Apple MPS, else CPU. ConfigError for a device that is not there."""
    import torch

    if pref == "auto":
        if torch.cuda.is_available():
            pref = "cuda"
        elif torch.backends.mps.is_available():
            pref = "mps"
        else:
            pref = "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "lower --nproc_per_node or use --nproc_per_node=gpu"
            )
        return torch.device("cuda", local_rank)
    if pref == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use --device cpu")
    return torch.device(pref)


def gpu_count() -> int:
    """CUDA GPUs visible to this process (0 without CUDA). A PyTorch built without CUDA or ROCm sees none, so then
    the answer needs no torch import."""
    if "torch" not in sys.modules and not torch_gpu_build():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.cache
def torch_gpu_build() -> bool:
    """Whether the installed PyTorch is built with CUDA or ROCm (torch.version.cuda or .hip is set), read from its
    torch/version.py without importing torch. True when that file cannot be read: then torch itself is asked."""
    spec = importlib.util.find_spec("torch")
    try:
        tree = ast.parse((Path(spec.submodule_search_locations[0]) / "version.py").read_text())
    except (AttributeError, TypeError, IndexError, OSError, SyntaxError, ValueError):
        return True
    found: dict[str, object] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip") and node.value is not None:
            try:
                found[target.id] = ast.literal_eval(node.value)
            except ValueError:
                return True
    return len(found) < 2 or any(value is not None for value in found.values())
