"""Experiment trackers a run also reports to (TrainConfig.report_to): TensorBoard, Weights & Biases, Trackio.

The Reporter (core/reporting.py) hands every metrics record to each open tracker, which keeps the numbers of SCALARS
at the record's step -- the very values metrics.jsonl holds, named `<kind>/<field>` (train/loss, eval/val_loss) --
with the run name and its TrainConfig as hyper-parameters. Only rank 0 reports (it alone opens the metrics file).

Each tracker is an optional package. A missing one is a line in the log saying what to install, and the run goes on
without it; so is a tracker that fails to start or to log (no W&B login, a full disk): a tracker never fails a run.
TensorBoard writes to <run>/tensorboard (`tensorboard --logdir checkpoints` shows every run); W&B and Trackio use their
own settings (WANDB_MODE=offline, TRACKIO_DIR, ...), in the project PROJECT.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core.config import REPORT_TO

PROJECT = "gpt2-playground"
SCALARS = ("loss", "val_loss", "lr", "grad_norm", "tok_per_s", "mfu", "hellaswag_acc", "hellaswag_acc_norm")
PACKAGES = {name: name for name in REPORT_TO}  # what to pip install for each: the same names
TENSORBOARD_DIR = "tensorboard"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracked numbers of one metrics record, named `<kind>/<field>`; none for a record without a step or
    for a value that is missing, null or not finite (a diverged loss)."""
    if record.get("step") is None:
        return {}
    values = {}
    for name in SCALARS:
        v = record.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            values[f"{record['kind']}/{name}"] = float(v)
    return values


def hyperparameters(run_name: str, config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The run name and config as flat hyper-parameters (TensorBoard takes only numbers, text and booleans:
    null, lists and objects become their JSON text)."""
    flat: dict[str, str | int | float | bool] = {"run_name": run_name}
    for name, value in config.items():
        flat[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)
    return flat


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in <run>/tensorboard: the scalars, the hyper-parameters (HParams tab) and the config as text."""

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), flush_secs=10)
        # The hyper-parameters go into this run's own event file (SummaryWriter.add_hparams would start another);
        # the HParams tab lines them up with these metrics.
        metrics = dict.fromkeys(("train/loss", "eval/val_loss"), 0.0)
        for summary in hparams(hyperparameters(run_name, config), metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=PROJECT, name=run_name, config=config, dir=str(run_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=PROJECT, name=run_name, config=config)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


TRACKERS: dict[str, Callable[[Path, str, dict[str, Any]], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "trackio": TrackioTracker,
}


def open_trackers(
    names: list[str], run_dir: Path, run_name: str, config: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Tracker]:
    """The trackers of `names` that could start, by name; for each that could not, one line through `log`."""
    opened: dict[str, Tracker] = {}
    for name in names:
        try:
            opened[name] = TRACKERS[name](run_dir, run_name, config)
        except ImportError:
            log(
                f"warning: report_to {name}: the {PACKAGES[name]} package is not installed; "
                f"pip install {PACKAGES[name]} to report to it. Training goes on without it"
            )
        except Exception as e:  # no login, no disk, a bad setting: the run matters more than the tracker
            log(f"warning: report_to {name} could not start ({type(e).__name__}: {e}); training goes on without it")
    if opened:
        log(f"reporting to {', '.join(opened)}")
    return opened
