"""TrainConfig.report_to: a real micro run reports to TensorBoard (read back with TensorBoard's own reader) the same
scalars as its metrics.jsonl at the same steps, with its name and config as hyper-parameters; W&B and Trackio get the
same numbers; a missing or failing tracker is one line in the log and never a failed run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core import trackers
from core.config import REPORT_TO, ConfigError, TrainConfig
from core.metrics import read_all
from core.reporting import Reporter, StepRecord
from tests.helpers import MICRO, run_cmd, train_cmd

STEP = StepRecord(1, 2, 64, 10.8, 1e-3, 2.5, 0.1, 640.0, None, 0.1, 0.1, 100.0)


def test_report_to_takes_a_comma_separated_list_of_known_trackers():
    assert TrainConfig(report_to=" tensorboard, wandb ,").validate().trackers == ["tensorboard", "wandb"]
    assert TrainConfig().trackers == []
    with pytest.raises(ConfigError, match="report_to takes tensorboard, wandb, trackio") as e:
        TrainConfig(report_to="tensorboard,mlflow").validate()
    assert e.value.field == "report_to"
    assert set(trackers.TRACKERS) == set(trackers.PACKAGES) == set(REPORT_TO)


def test_scalars_are_the_finite_numbers_of_a_record_named_by_kind():
    assert trackers.scalars({"kind": "train", "step": 3, "loss": 2.0, "lr": 1e-3, "mfu": None, "dt": 0.1}) == {
        "train/loss": 2.0,
        "train/lr": 1e-3,
    }
    assert trackers.scalars({"kind": "eval", "step": 3, "val_loss": float("nan")}) == {}
    assert trackers.scalars({"kind": "status", "state": "running", "step": None}) == {}
    assert trackers.scalars({"kind": "eval", "step": 4, "hellaswag_acc_norm": 0.3}) == {"eval/hellaswag_acc_norm": 0.3}


@pytest.mark.slow
def test_tensorboard_gets_the_metrics_of_a_real_run(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    args = ("--max-steps", "6", "--eval-interval", "3", "--run-name", "tb", "--report-to", "tensorboard")
    r = run_cmd(train_cmd(tmp_path, *MICRO, *args), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "reporting to tensorboard" in r.stdout
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()

    expected: dict[str, list[tuple[int, float]]] = {}
    for record in read_all(tmp_path / "tb" / "metrics.jsonl"):
        for tag, value in trackers.scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tok_per_s", "eval/val_loss"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag  # stored as float32
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4, 5, 6]

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["run_name"].string_value == "tb" and hparams["preset"].string_value == "micro"
    assert hparams["max_steps"].number_value == 6 and hparams["report_to"].string_value == "tensorboard"


@pytest.mark.slow
def test_only_rank_0_reports_under_ddp(tmp_path: Path):
    args = ("--max-steps", "2", "--eval-interval", "0", "--run-name", "ddp", "--report-to", "tensorboard")
    r = run_cmd(train_cmd(tmp_path, *MICRO, *args, nproc=2), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("reporting to tensorboard") == 1
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_missing_package_is_one_line_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("wandb", "trackio"):
        monkeypatch.setitem(sys.modules, name, None)  # `import wandb` raises ImportError, installed or not
    lines: list[str] = []
    report = Reporter()
    monkeypatch.setattr(report, "log", lines.append)
    report.open(tmp_path / "run" / "metrics.jsonl", TrainConfig(run_name="run", report_to="wandb,trackio"))
    report.trained(STEP)
    report.close()
    assert lines[-1].startswith("step 1/2 | loss 10.8000")
    assert lines[:-1] == [
        "warning: report_to wandb: the wandb package is not installed; pip install wandb to report to it. "
        "Training goes on without it",
        "warning: report_to trackio: the trackio package is not installed; pip install trackio to report to it. "
        "Training goes on without it",
    ]
    assert [r["kind"] for r in read_all(tmp_path / "run" / "metrics.jsonl")] == ["train"]


class Recorder:
    """A stand-in for the wandb / trackio module: records what the tracker calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, values, step=None):
        self.calls.append(("log", values, step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_get_the_same_scalars_and_the_config(name, tmp_path, monkeypatch):
    module = Recorder()
    monkeypatch.setitem(sys.modules, name, module)  # `import wandb` gives the recorder
    cfg = TrainConfig(run_name="run", report_to=name)
    report = Reporter()
    monkeypatch.setattr(report, "log", lambda line: None)
    report.open(tmp_path / "run" / "metrics.jsonl", cfg)
    report.trained(STEP)
    report.evaluated(2, 9.5)
    report.sampled(2, "text")  # no scalars: not forwarded
    report.close()
    init, *logs, finish = module.calls
    assert init[0] == "init" and init[1]["project"] == trackers.PROJECT and init[1]["name"] == "run"
    assert init[1]["config"] == cfg.to_dict() and finish == ("finish",)
    assert logs == [
        ("log", {"train/loss": 10.8, "train/lr": 1e-3, "train/grad_norm": 2.5, "train/tok_per_s": 640.0}, 1),
        ("log", {"eval/val_loss": 9.5}, 2),
    ]


def test_a_failing_tracker_is_dropped_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class Failing:
        def __init__(self, *args) -> None:
            pass

        def log(self, step, values) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    monkeypatch.setitem(trackers.TRACKERS, "wandb", Failing)
    lines: list[str] = []
    report = Reporter()
    monkeypatch.setattr(report, "log", lines.append)
    report.open(tmp_path / "run" / "metrics.jsonl", TrainConfig(run_name="run", report_to="wandb"))
    report.trained(STEP)
    report.evaluated(2, 9.5)
    report.close()
    assert [line for line in lines if not line.startswith("step ")] == [
        "reporting to wandb",
        "warning: report_to wandb failed (OSError: [Errno 28] No space left on device); training goes on without it",
    ]
    assert [r["kind"] for r in read_all(tmp_path / "run" / "metrics.jsonl")] == ["train", "eval"]
