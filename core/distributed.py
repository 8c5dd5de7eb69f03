"""torchrun/DDP setup and teardown, and the few collectives the trainer needs.

torchrun (python -m torch.distributed.run) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in every worker; without them this is a plain single process and every helper here is
a no-op. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from core.device import pick_device

_GLOO_SETTLE_S = 0.05


@dataclass
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_ddp(self) -> bool:
        return self.world_size > 1


def setup(device_pref: str = "auto", timeout_s: float = 1800) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device.

    timeout_s bounds how long a collective waits (e.g. ranks waiting while local rank 0 tokenizes a
    corpus); a crashed peer is noticed sooner, by its closed connection.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
        elif device.type == "cpu":
            dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
        else:
            raise RuntimeError(f"multi-process training on {device.type} is not supported; use cuda or cpu")
    return DistContext(rank, local_rank, world, device)


def teardown() -> None:
    """Leave the process group (safe to call twice, or when there is none)."""
    if dist.is_available() and dist.is_initialized():
        # A gloo worker thread releases a finished collective's tensors just after wait() returns, and that
        # takes the GIL: if the interpreter is already finalizing, the process aborts (pytorch/pytorch#179291).
        # Sleeping hands the GIL over so the workers finish first.
        time.sleep(_GLOO_SETTLE_S)
        with contextlib.suppress(Exception):  # a peer already died: nothing left to tear down cleanly
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_ddp:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean over ranks, in place (identity when single-process)."""
    if ctx.is_ddp:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world_size
    return t


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks, in place (identity when single-process)."""
    if ctx.is_ddp:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if flag is true on any rank (so all ranks stop at the same step)."""
    if not ctx.is_ddp:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """One JSON-able object per rank, on every rank (in-memory transfer, nothing read from disk)."""
    if not ctx.is_ddp:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's value of obj on every rank (e.g. a run name made from the clock)."""
    if not ctx.is_ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
