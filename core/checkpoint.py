"""Checkpoints: safetensors for tensors, JSON for everything else, atomic on disk. No pickle.

Layout of one checkpoint:
    <run>/ckpt/step-000500/model.safetensors      weights (tied head stored once)
                          optimizer.safetensors  AdamW moments (optional)
                          state.json             model config, step, RNG, loader state, ... (core.trainer.TrainState)
    <run>/ckpt/latest                            name of the newest complete checkpoint
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.config import ModelConfig
from core.files import write_text_atomic
from core.model import GPT, clean_state_dict, load_clean_state_dict, unwrap_model

# torch-free (the UI reads checkpoints before torch is loaded); callers may import them from here
from core.runs import MODEL_FILE, STATE_FILE, CheckpointError, list_checkpoints, read_state, resolve_checkpoint

OPTIM_FILE = "optimizer.safetensors"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # contents of state.json
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.state["model_config"])


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    keep_last: int = 3,
    *,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ckpt/step-NNNNNN atomically, point ckpt/latest at it and prune old checkpoints.

    state must be JSON-serializable; the model config is added to it. The optimizer may be given as its state
    dict, and the weights as a clean state dict (both gathered whole from an FSDP model: core.parallel.full_state).
    A process killed at any point leaves the previous checkpoint and ckpt/latest intact.
    """
    ckpt_root = Path(run_dir) / "ckpt"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}.tmp-"))
    try:
        state = {**state, "step": step, "model_config": unwrap_model(model).config.to_dict()}
        save_file(clean_state_dict(model) if weights is None else weights, tmp / MODEL_FILE)
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer if isinstance(optimizer, dict) else optimizer.state_dict())
            save_file(tensors, tmp / OPTIM_FILE)
            state["optimizer"] = meta
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():  # re-saving the same step (e.g. stop right after a periodic save)
            _discard(final)
        os.rename(tmp, final)
        _fsync_path(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(ckpt_root / "latest", name + "\n")
    prune_checkpoints(ckpt_root, keep_last)
    return final


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest keep_last checkpoints plus the one with the best val loss."""
    ckpts = list_checkpoints(ckpt_root.parent)
    keep = set(ckpts[-keep_last:])
    scored = [(s["val_loss"], p) for p in ckpts if (s := _try_state(p)) and s.get("val_loss") is not None]
    if scored:
        keep.add(min(scored)[1])
    for p in ckpts:
        if p not in keep:
            _discard(p)
    for p in ckpt_root.glob(".step-*.tmp-*"):  # leftovers of killed writes
        shutil.rmtree(p, ignore_errors=True)


def _discard(p: Path) -> None:
    """Delete a checkpoint so it is never seen half-deleted: rename it out of sight first (atomic)."""
    trash = p.parent / f".{p.name}.tmp-del{os.getpid()}"
    os.rename(p, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _try_state(p: Path) -> dict[str, Any] | None:
    try:
        return read_state(p)
    except CheckpointError:
        return None


def load_checkpoint(path: str | Path, *, with_optimizer: bool = True) -> Checkpoint:
    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    if "model_config" not in state:
        raise CheckpointError(f"{ckpt / STATE_FILE} has no model_config; it is not a checkpoint of this project")

    def _load(file: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(file)
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint file missing: {file}") from e
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt or truncated ({e}); use an older checkpoint"
            ) from e

    model_state = _load(ckpt / MODEL_FILE)
    optim = None
    if with_optimizer and (ckpt / OPTIM_FILE).is_file() and "optimizer" in state:
        optim = _unflatten_optimizer(_load(ckpt / OPTIM_FILE), state["optimizer"])
    return Checkpoint(ckpt, state, model_state, optim)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Checkpoint]:
    """A GPT in eval mode with the weights of a checkpoint (or a run's latest checkpoint)."""
    ck = load_checkpoint(path, with_optimizer=False)
    model = GPT(ck.model_config)
    try:
        load_clean_state_dict(model, ck.model_state)
    except RuntimeError as e:
        raise CheckpointError(
            f"weights in {ck.path / MODEL_FILE} do not match the config in {ck.path / STATE_FILE}: {e}"
        ) from e
    return model.to(device).eval(), ck


# --- RNG states as JSON (exact resume without pickle) ---------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def capture_rng_state() -> dict[str, Any]:
    """torch CPU/CUDA, numpy and python RNG states as JSON-able values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_internal), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state (CUDA states only where the same GPUs are present)."""
    torch.set_rng_state(_unb64(state["torch"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
