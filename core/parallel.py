"""How the model is spread over torchrun's ranks: DDP or FSDP2 (`--parallel ddp|fsdp`).

DDP keeps a whole copy of the weights, gradients and AdamW moments on every rank and all-reduces the gradients.
FSDP2 (`torch.distributed.fsdp.fully_shard`) keeps 1/world of each on every rank, as DTensors: a block's weights are
all-gathered for its forward and backward and freed after, and its gradients are reduce-scattered. That is what lets
gpt2-xl (≈24 GB of weights and AdamW state before activations) train on GPUs that cannot hold it whole. Both average
the gradients over the ranks, so the same batches give the same losses.

Checkpoints are the same either way: every tensor is gathered whole on the CPU before rank 0 writes it, so an FSDP
checkpoint loads in a single process, and resumes under DDP, FSDP or one process alike.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from core.config import TrainConfig
from core.distributed import DistContext
from core.model import GPT, clean_state_dict, unwrap_model


def wrap(model: GPT, cfg: TrainConfig, ctx: DistContext) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model compiled when asked, the module training runs: that again in DDP under torchrun).

    Under FSDP the model is sharded in place (each transformer block, then the root with the embeddings and the
    tied head), so make the optimizer after this: it must hold the sharded parameters.
    """
    sharded = ctx.is_ddp and cfg.parallel == "fsdp"
    if sharded:
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    compiled = torch.compile(model) if cfg.compile else model
    if not ctx.is_ddp or sharded:
        return compiled, compiled
    devices = [ctx.device.index] if ctx.device.type == "cuda" else None
    return compiled, DistributedDataParallel(compiled, device_ids=devices)


def is_sharded(model: torch.nn.Module) -> bool:
    """True for an FSDP model (compiled or not): its forward is a collective every rank must run."""
    return isinstance(unwrap_model(model), FSDPModule)


def gradient_sync(train_model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces only on the last micro-batch of a step. FSDP reduce-scatters after each one: its gradients
    then accumulate sharded, which is the memory it exists to save."""
    if isinstance(train_model, DistributedDataParallel) and not last:
        return train_model.no_sync()
    return contextlib.nullcontext()


def whole(t: Any) -> Any:
    """A DTensor gathered whole (a collective: every rank calls it, in the same order); anything else as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(clean weights, optimizer state dict), every tensor whole on the CPU: what a checkpoint holds. Under FSDP
    it is a collective, so every rank calls it; rank 0 writes the result."""
    weights = {k: whole(v).detach().cpu() for k, v in clean_state_dict(model).items()}
    sd = optimizer.state_dict()
    state = {pid: {k: whole(v) for k, v in s.items()} for pid, s in sd["state"].items()}
    return weights, {**sd, "state": state}


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load a checkpoint's whole optimizer state; under FSDP each rank keeps its shard of every moment."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def shard_like(value: Any, param: torch.Tensor) -> Any:
        if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        return value  # AdamW's step count, or a plain parameter's state

    state = {pid: {k: shard_like(v, params[int(pid)]) for k, v in s.items()} for pid, s in sd["state"].items()}
    optimizer.load_state_dict({**sd, "state": state})
