"""Run names and run folders: validation, safe resolution inside the runs folder, unique names,
listing a run's checkpoints, finding the one a path names and reading its state.json, and writing its small
files atomically (the tensors are core.checkpoint's).

Every path built from a user-given run name goes through resolve_run_dir, so a name can never point
outside the runs folder (no separators, no '..', no absolute paths, no symlink that escapes).
No torch here: core.jobs (the CLI and the UI's polling) and the UI's pages use this module and stay fast to import.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from core.config import ConfigError, TrainConfig
from core.files import write_text_atomic as write_text_atomic  # re-exported: jobs and checkpoints use it from here

MAX_RUN_NAME = 64
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
STATE_FILE = "state.json"  # a checkpoint folder is complete once it holds this file
MODEL_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit; the message names the file."""


def validate_run_name(name: str) -> str:
    """Return name if it is a safe run-folder name, else raise ConfigError saying what to change."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("run name is empty; give a name such as 'tiny-shakespeare'", field="run_name")
    if len(name) > MAX_RUN_NAME:
        raise ConfigError(f"run name is {len(name)} characters long; use at most {MAX_RUN_NAME}", field="run_name")
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_RE.fullmatch(c)})
        raise ConfigError(
            f"run name {name!r} contains {''.join(bad)!r}; use only letters, digits, '-', '_' and '.'", field="run_name"
        )
    if ".." in name or name.startswith("."):
        raise ConfigError(
            f"run name {name!r} must not start with '.' or contain '..'; e.g. use '-' instead", field="run_name"
        )
    return name


def resolve_run_dir(runs_dir: str | Path, name: str) -> Path:
    """The folder of run `name` inside runs_dir, refusing anything that would land outside it."""
    validate_run_name(name)
    root = Path(runs_dir).resolve()
    path = root / name
    # A symlinked run folder is fine as long as its target stays inside the runs folder.
    if not path.resolve().is_relative_to(root):
        raise ConfigError(f"run {name!r} points outside the runs folder {root}; refusing to touch it")
    return path


def unique_run_name(runs_dir: str | Path, name: str) -> str:
    """name, or name-2, name-3, ... : the first that has no folder in runs_dir yet."""
    validate_run_name(name)
    root = Path(runs_dir)
    candidate, n = name, 1
    while (root / candidate).exists() or (root / candidate).is_symlink():
        n += 1
        suffix = f"-{n}"
        candidate = name[: MAX_RUN_NAME - len(suffix)] + suffix
    return candidate


def default_run_name(config: TrainConfig) -> str:
    return f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of killed writes excluded)."""
    root = Path(run_dir) / "ckpt"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    # By the number, not the name: step-1000000 comes after step-999500 (names are zero-padded to 6 digits only).
    return sorted(found, key=lambda p: checkpoint_step(p))


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder named step-N (any number of digits); None for any other name."""
    digits = path.name.removeprefix("step-")
    return int(digits) if path.name.startswith("step-") and digits.isdigit() else None


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint file missing: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt ({e}); use an older checkpoint") from e


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its latest), a ckpt/ folder or a checkpoint folder."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if (p / "ckpt").is_dir():
        root = p / "ckpt"
    elif p.name == "ckpt":
        root = p
    elif (p / "config.json").is_file() or (p / "metrics.jsonl").is_file():  # a run that has not saved yet
        raise CheckpointError(f"no checkpoint in {p} yet; train for at least one checkpoint interval first")
    else:  # a checkpoint folder without its state.json, or a folder that holds no run
        raise CheckpointError(f"{p} is not a checkpoint: {p / STATE_FILE} is missing; pick a run or another checkpoint")
    latest = root / "latest"
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(root.parent)  # latest is missing or stale: the newest complete one
    if found:
        return found[-1]
    raise CheckpointError(f"no checkpoint in {p} yet; train for at least one checkpoint interval first")
