"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from core.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay >= 2-D tensors (matmul weights, embeddings); not biases or LayerNorm gains (GPT-3 paper)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # the tied head counts once
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CUDA (one launch for all parameters)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        fused=device_type == "cuda",
    )


def get_lr(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine down to min_lr.

    Warmup reaches lr at step warmup_steps - 1 (never 0 at step 0); the cosine ends at min_lr on
    total_steps and stays there.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def lr_schedule(cfg: TrainConfig, world_size: int) -> Callable[[int], float]:
    """The step -> lr function of a config."""
    total = cfg.total_steps(world_size)
    return lambda step: get_lr(step, cfg.lr, cfg.effective_min_lr, cfg.warmup_steps, total)
