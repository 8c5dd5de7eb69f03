"""Where a model's weights come from: the one answer to "what is this source?".

A source is what a person types or picks: `python -m core.sample --checkpoint X`, `python -m core.train
--init-from X`, a model in the UI. It is one of four kinds:

    run         a run folder of this project; its latest complete checkpoint is used
    checkpoint  one checkpoint folder of a run (holds state.json)
    hf_folder   a Hugging Face folder (config.json + model.safetensors or pytorch_model.bin)
    hub         a Hugging Face hub id such as gpt2 or openai-community/gpt2 (downloaded when loaded)

Precedence, first match wins:

1. An existing local path (~ expanded): a folder with state.json is a checkpoint; a folder with ckpt/
   (or a ckpt/ folder itself) is a run; a folder whose config.json names a model_type is a Hugging Face
   folder. Any other existing path is an error saying what it lacks (a run that has not saved a
   checkpoint yet, a file, an unrelated folder) -- it is never looked up anywhere else.
2. A run under runs_dir, when one is given: "<run>" or "<run>/ckpt/step-000500", judged as in 1.
3. A hub id: "name" or "org/name", not starting with '.', '/' or '~', no backslash, and no local folder
   called org (see core.hf_source.is_hub_id).
4. Anything else, e.g. a path that does not exist: WeightsError "no such run or folder: X".

resolve_source only looks at the disk (no network, no weights read); load_weights also loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ConfigError
from core.hf_source import is_hf_folder, is_hub_id
from core.runs import STATE_FILE, CheckpointError, resolve_checkpoint

if TYPE_CHECKING:
    import torch

    from core.model import GPT


class WeightsError(ConfigError):
    """A source that names no usable weights; the one-line message says what to pass instead."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "run" | "checkpoint" | "hf_folder" | "hub"
    path: Path | None = None  # the checkpoint folder (run, checkpoint) or the HF folder; None for a hub id
    hub_id: str | None = None  # for "hub"
    run_dir: Path | None = None  # for "run": the run folder whose latest checkpoint `path` is

    def __str__(self) -> str:
        if self.kind == "hub":
            return f"Hugging Face hub model {self.hub_id}"
        if self.kind == "hf_folder":
            return f"Hugging Face folder {self.path}"
        if self.kind == "run":
            return f"run {self.run_dir} (its latest checkpoint, {self.path.name})"
        return f"checkpoint {self.path}"


def resolve_source(spec: str | Path, runs_dir: str | Path | None = None) -> WeightsSource:
    """What `spec` names, by the precedence in this module's docstring. Raises WeightsError."""
    text = str(spec).strip()
    if not text:
        raise WeightsError("no weights given: pass a run, a checkpoint folder, a Hugging Face folder or a hub id")
    path = Path(text).expanduser()
    if path.exists():
        return _local(path)
    run = _inside(runs_dir, text) if runs_dir is not None else None
    if run is not None and run.exists():
        return _local(run)
    if is_hub_id(text):
        return WeightsSource("hub", hub_id=text)
    raise WeightsError(f"no such run or folder: {text}")


def resolve_run(runs_dir: str | Path, name: str) -> WeightsSource:
    """A model picked from a list of runs_dir's runs and checkpoints (rule 2 alone: never outside runs_dir,
    never a hub id). Raises WeightsError."""
    path = _inside(runs_dir, name)
    if path is None:
        raise WeightsError(
            f"{name!r} is outside the runs folder {Path(runs_dir).resolve()}; pick a model from the list"
        )
    if not path.exists():
        raise WeightsError(f"{name!r} no longer exists in {runs_dir} (deleted?); refresh the list of models")
    return _local(path)


def load_weights(
    spec: str | Path, device: str | torch.device = "cpu", runs_dir: str | Path | None = None
) -> tuple[GPT, WeightsSource]:
    """The GPT (eval mode, on device) that spec names, and what spec was resolved to.

    Raises WeightsError (what spec is), CheckpointError or HFError (weights that cannot be read).
    """
    from core.checkpoint import load_model  # torch: the UI resolves sources before it is loaded
    from core.hf import load_hf_gpt2

    source = resolve_source(spec, runs_dir)
    if source.kind in ("run", "checkpoint"):
        return load_model(source.path, device)[0], source
    return load_hf_gpt2(source.path or source.hub_id, device), source


def _inside(runs_dir: str | Path, name: str) -> Path | None:
    """runs_dir/name, or None when name leads outside runs_dir (.., an absolute path, a symlink out)."""
    root = Path(runs_dir).resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) else None


def _local(path: Path) -> WeightsSource:
    if not path.is_dir():
        raise WeightsError(f"{path} is a file; pass the run, checkpoint or Hugging Face folder that holds it")
    if (path / STATE_FILE).is_file():
        return WeightsSource("checkpoint", path)
    if (path / "ckpt").is_dir() or path.name == "ckpt":
        run = path.parent if path.name == "ckpt" else path
        try:
            return WeightsSource("run", resolve_checkpoint(run), run_dir=run)
        except CheckpointError as e:
            raise WeightsError(str(e)) from e
    if is_hf_folder(path):
        return WeightsSource("hf_folder", path)
    if (path / "config.json").is_file() or (path / "metrics.jsonl").is_file():
        raise WeightsError(f"no checkpoint in {path} yet; train for at least one checkpoint interval first")
    raise WeightsError(
        f"{path} is not a run, a checkpoint or a Hugging Face folder (it has no ckpt/, {STATE_FILE} or config.json)"
    )
