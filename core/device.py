"""The one device picker: what "auto", "cuda", "mps" or "cpu" means on this machine.

Used by the trainer (through core.distributed, per local rank), core.jobs (which device a launch will
occupy), the sampling CLI and benchmark, and the UI's model cache.
"""

from __future__ import annotations

import torch

from core.config import ConfigError


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: the local rank's CUDA GPU, else Apple MPS, else CPU. ConfigError for a device that is not there."""
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
    """CUDA GPUs visible to this process (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
