"""Models for the Sampling and Attention tabs: which checkpoints exist, and a small LRU cache of loaded ones.

A choice is a path relative to the runs folder: "<run>" means the run's latest checkpoint (so a run still
training is followed as it saves), "<run>/ckpt/step-000500" one checkpoint. A loaded model is keyed by its
checkpoint folder and the modification time of its weights, so a re-saved checkpoint is reloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ConfigError, ModelConfig
from core.device import pick_device
from core.jobs import JobError, Jobs
from core.lru import LRU
from core.runs import MODEL_FILE, CheckpointError, list_checkpoints, read_state
from core.weights import WeightsError, resolve_run

if TYPE_CHECKING:
    import torch

    from core.model import GPT

MAX_MODELS = 3


class ModelError(RuntimeError):
    """A model that cannot be used; the message says what to do."""


@dataclass
class LoadedModel:
    model: GPT  # eval mode; holds no state, so sampling, attention maps and the next-token view share it
    path: Path  # the checkpoint folder
    step: int
    config: ModelConfig
    name: str  # e.g. "tiny-shakespeare · step 500"
    key: tuple[str, int]  # (checkpoint folder, weights mtime): identifies these exact weights


def _training(jobs: Jobs, name: str) -> bool:
    """Whether the run is training now, as core.jobs judges it (a live process, not a stale status.json)."""
    try:
        return jobs.status(name).active
    except (JobError, ConfigError):  # deleted meanwhile, or a folder name that is no run name
        return False


def _describe(cfg: dict) -> str:
    try:
        return f"{cfg['n_layer']} layers × {cfg['n_head']} heads, {cfg['n_embd']}d, ctx {cfg['block_size']}"
    except (KeyError, TypeError):
        return "unknown size"


def _step_of(ckpt: Path) -> int:
    try:
        return int(ckpt.name.removeprefix("step-"))
    except ValueError:
        return -1


def list_models(jobs: Jobs) -> list[tuple[str, str]]:
    """(label, value) pairs for a dropdown: every run of jobs' runs folder with weights, the ones training now
    first, then newest first; for each its latest checkpoint (followed while the run trains), then its older
    checkpoints. Labels say what is true now: call again after a run saved or stopped."""
    root = jobs.runs_dir
    if not root.is_dir():
        return []
    runs = []
    for run in root.iterdir():
        if run.name.startswith(".") or not run.is_dir():
            continue
        ckpts = [c for c in list_checkpoints(run) if (c / MODEL_FILE).is_file()]
        if ckpts:
            newest = max((c / MODEL_FILE).stat().st_mtime for c in ckpts)
            runs.append((_training(jobs, run.name), newest, run, ckpts))
    choices = []
    for training, _, run, ckpts in sorted(runs, key=lambda r: r[:2], reverse=True):
        try:
            state = read_state(ckpts[-1])
        except CheckpointError:
            state = {}
        size = _describe(state.get("model_config"))
        if state.get("imported"):
            what = f"imported from {state.get('source', 'Hugging Face')}"
        else:
            what = f"latest (step {_step_of(ckpts[-1])}{', training…' if training else ''})"
        choices.append((f"{run.name} · {what} · {size}", run.name))
        for c in reversed(ckpts[:-1]):
            choices.append((f"{run.name} · step {_step_of(c)}", f"{run.name}/ckpt/{c.name}"))
    return choices


def no_models_message(runs_dir: str | Path) -> str:
    """What to do when there is nothing to load (Markdown)."""
    return (
        f"**No checkpoint in `{runs_dir}` yet.** To get one:\n"
        "- **Train** the `tiny` preset in the **Train** tab for a few minutes on CPU; its first checkpoint "
        "appears here after one checkpoint interval (press ⟳ Refresh). From a terminal: "
        f"`python -m core.train --preset tiny --max-steps 1000 --ckpt-interval 100 --runs-dir {runs_dir}`\n"
        "- **Import GPT-2** weights in the **Models** tab: a Hugging Face hub id such as `gpt2` (needs internet) "
        "or a local Hugging Face folder (`config.json` + `model.safetensors`)."
    )


def resolve_choice(runs_dir: str | Path, choice: str | None) -> Path:
    """The checkpoint folder of a dropdown value, refusing anything outside the runs folder."""
    if not choice:
        raise ModelError("no model selected; pick a checkpoint in the model list (press ⟳ to refresh it)")
    try:
        source = resolve_run(runs_dir, choice)
    except WeightsError as e:
        raise ModelError(str(e)) from e
    if source.kind not in ("run", "checkpoint"):
        raise ModelError(f"{choice!r} is not a run or checkpoint of this project; import it in the Models tab")
    return source.path


class ModelCache:
    """At most max_models loaded models; the least recently used one is dropped when a new one loads."""

    def __init__(self, max_models: int = MAX_MODELS, device: str | torch.device | None = None) -> None:
        self._device = device
        self._models: LRU[tuple[str, int], LoadedModel] = LRU(max_models)

    @functools.cached_property
    def device(self) -> torch.device:
        """Where models load: the given device, else pick_device("auto"); asked on first use (it imports torch)."""
        import torch

        return torch.device(self._device) if self._device else pick_device("auto")

    def get(self, runs_dir: str | Path, choice: str | None) -> LoadedModel:
        ckpt = resolve_choice(runs_dir, choice)
        try:
            key = (str(ckpt), (ckpt / MODEL_FILE).stat().st_mtime_ns)
        except FileNotFoundError as e:
            raise ModelError(f"weights missing in {ckpt} (pruned while training?); press ⟳ and pick again") from e
        # Two clicks never load the same model twice: the second waits for the first's load.
        return self._models.get_or_make(key, lambda: self._load(ckpt, key))

    def _load(self, ckpt: Path, key: tuple[str, int]) -> LoadedModel:
        from core.checkpoint import load_model

        self._models.discard(lambda k: k[0] == key[0])  # the same checkpoint re-saved: drop the stale weights
        try:
            model, ck = load_model(ckpt, self.device)
        except CheckpointError as e:
            raise ModelError(str(e)) from e
        step = int(ck.state.get("step", _step_of(ckpt)))
        name = f"{ckpt.parent.parent.name} · step {step}"
        return LoadedModel(model, ckpt, step, model.config, name, key)

    def keys(self) -> list[tuple[str, int]]:
        return self._models.keys()


CACHE = ModelCache()  # shared by the Sampling and Attention tabs of one app process


def refresh_choices(jobs: Jobs, current: str | None) -> tuple[list[tuple[str, str]], str | None, str]:
    """Dropdown choices, the value to show (current if still there, else the newest) and a message:
    empty when models exist, otherwise how to get one."""
    choices = list_models(jobs)
    values = [v for _, v in choices]
    value = current if current in values else (values[0] if values else None)
    return choices, value, "" if choices else no_models_message(jobs.runs_dir)
