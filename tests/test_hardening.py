"""Data-loss and crash defects from the hardening review, each reproduced here (they failed before the fix)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from core.checkpoint import resolve_checkpoint, save_checkpoint
from core.config import ConfigError, TrainConfig, model_config
from core.metrics import MetricsWriter, read_all
from core.model import GPT
from core.runs import list_checkpoints
from tests.helpers import MICRO, ROOT, records, run_cmd, train_cmd, wait_for

# --- 1. checkpoints past step 999,999 ----------------------------------------------------------------


def test_checkpoints_past_a_million_steps_sort_by_number(tmp_path):
    model = GPT(model_config("micro"))
    for step in (999_000, 999_500, 1_000_000):
        save_checkpoint(tmp_path, step, model, {}, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    # the newest must survive pruning and `latest` must point at it
    assert names == ["step-999500", "step-1000000"]
    assert resolve_checkpoint(tmp_path).name == "step-1000000"
    assert (tmp_path / "ckpt" / "step-1000000" / "state.json").is_file()


def test_old_six_digit_names_still_list_in_step_order(tmp_path):
    model = GPT(model_config("micro"))
    for step in (5, 40, 1_000_001):
        save_checkpoint(tmp_path, step, model, {}, keep_last=5)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005", "step-000040", "step-1000001"]


# --- 8. a torn metrics line ---------------------------------------------------------------------------


def test_a_record_after_a_torn_line_is_not_lost(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')  # killed mid-write
    w = MetricsWriter(path)
    w.write("status", state="running")
    w.close()
    recs = read_all(path)
    assert [r["kind"] for r in recs] == ["train", "status"]


# --- 14. every field validated ------------------------------------------------------------------------

# One value per TrainConfig field that cannot work. A new field without an entry fails the first test.
BAD_VALUES = {
    "run_name": "bad name#",
    "runs_dir": "",
    "preset": "gpt5",
    "n_layer": 0,
    "n_head": -1,
    "n_embd": 0,
    "block_size": 0,
    "dropout": 1.5,
    "pad_vocab": "yes",
    "data": "",
    "data_config": 5,
    "val_data": "",
    "val_fraction": 1.5,
    "data_token_budget": 0,
    "data_cache": "",
    "shard_tokens": 0,
    "batch_size": "16",
    "seq_len": 0,
    "total_batch_tokens": -512,
    "max_steps": 0,
    "max_tokens": -1,
    "lr": 0.0,
    "min_lr": -1.0,
    "warmup_steps": -1,
    "weight_decay": -0.1,
    "beta1": 1.0,
    "beta2": -0.5,
    "grad_clip": -1.0,
    "eval_interval": -1,
    "eval_batches": 0,
    "ckpt_interval": -1,
    "keep_last": 0,
    "sample_interval": -1,
    "sample_tokens": 0,
    "log_interval": 0,
    "report_to": "tensorboard,mlflow",
    "hellaswag_interval": -1,
    "hellaswag_limit": 0,
    "hellaswag_file": "",
    "seed": -1,
    "device": "tpu",
    "precision": "fp8",
    "compile": "no",
    "init_from": "",
    "nproc": 0,
    "parallel": "zero3",
    "extra": [1, 2],
}


def test_every_field_has_a_bad_value_in_this_table():
    assert set(BAD_VALUES) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_validate_refuses_each_bad_field_naming_it(name):
    kw = {name: BAD_VALUES[name]}
    if name == "max_steps":
        kw["max_tokens"] = None
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw).validate()
    assert e.value.field == name, str(e.value)


def test_log_interval_zero_is_a_one_line_error_from_the_cli(tmp_path):
    r = run_cmd(train_cmd(tmp_path, *MICRO, "--max-steps", "2", "--log-interval", "0"), timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "log_interval" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_string_in_a_config_file_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "micro", "batch_size": "16"}))
    r = run_cmd(train_cmd(tmp_path / "runs", "--config", str(cfg), "--max-steps", "2"), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "batch_size" in r.stderr


# --- 16. traversal and missing checkpoints --------------------------------------------------------------


def test_launch_dry_run_refuses_a_traversing_run_name(tmp_path):
    r = run_cmd(
        [sys.executable, "-m", "core.jobs", "--runs-dir", str(tmp_path), "launch", "--run-name", "../../x", "--dry-run"]
    )
    assert r.returncode != 0
    assert "../../x" not in r.stdout
    assert "run name" in r.stderr


def test_sample_from_a_missing_local_path_is_one_line(tmp_path):
    r = run_cmd([sys.executable, "-m", "core.sample", "--checkpoint", str(tmp_path / "nope"), "--max-new-tokens", "1"])
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "no such run or folder" in lines[0]


# --- 18. a refused configuration leaves no run behind ----------------------------------------------------


@pytest.mark.parametrize("bad", [["--seq-len", "4096"], ["--preset", "gpt5"], ["--lr", "-1"]])
def test_a_refused_config_creates_no_run_folder(tmp_path, bad):
    r = run_cmd(train_cmd(tmp_path, *MICRO, "--run-name", "typo", "--max-steps", "2", *bad), timeout=120)
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "typo").exists()
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_nan_weights_are_never_saved(tmp_path):
    """A non-finite gradient (finite loss) must not reach the weights or a checkpoint (item 2)."""
    env = {**os.environ, "PLAYGROUND_TEST_INF_GRAD_STEP": "3"}
    r = run_cmd(
        train_cmd(tmp_path, *MICRO, "--run-name", "g", "--max-steps", "6", "--ckpt-interval", "2"), timeout=180, env=env
    )
    assert "non-finite gradient" in (r.stdout + r.stderr)
    for ck in list_checkpoints(tmp_path / "g"):
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(ck / "model.safetensors").values()), ck


def test_non_finite_gradients_in_a_row_fail_the_run_with_finite_checkpoints(tmp_path):
    env = {**os.environ, "PLAYGROUND_TEST_INF_GRAD_STEP": "3,4,5"}
    r = run_cmd(
        train_cmd(tmp_path, *MICRO, "--run-name", "g", "--max-steps", "8", "--ckpt-interval", "2"), timeout=180, env=env
    )
    assert r.returncode == 1
    assert "non-finite gradient norm 3 steps in a row" in r.stderr
    from safetensors.torch import load_file

    ckpts = list_checkpoints(tmp_path / "g")
    assert ckpts and all(
        all(torch.isfinite(t).all() for t in load_file(ck / "model.safetensors").values()) for ck in ckpts
    )


# --- 4. a corrupt newest checkpoint --------------------------------------------------------------------


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path):
    base = [*MICRO, "--run-name", "c", "--ckpt-interval", "2", "--keep-last", "3", "--seed", "5"]
    assert run_cmd(train_cmd(tmp_path, *base, "--max-steps", "4"), timeout=180).returncode == 0
    newest = tmp_path / "c" / "ckpt" / "step-000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated on disk
    r = run_cmd(train_cmd(tmp_path, "--resume", "c", "--max-steps", "6"), timeout=180)
    assert r.returncode == 0, r.stderr
    assert "skipping checkpoint step-000004" in r.stdout and "resuming from" in r.stdout and "step-000002" in r.stdout
    steps = [rec["step"] for rec in records(tmp_path / "c", "train")]
    assert steps[-3:] == [4, 5, 6]  # steps 3-4 trained again from step 2, then on to 6


def test_resume_takes_a_checkpoint_folder(tmp_path):
    base = [*MICRO, "--run-name", "d", "--ckpt-interval", "2", "--keep-last", "3"]
    assert run_cmd(train_cmd(tmp_path, *base, "--max-steps", "4"), timeout=180).returncode == 0
    ckpt = tmp_path / "d" / "ckpt" / "step-000002"
    r = run_cmd(train_cmd(tmp_path, "--resume", str(ckpt), "--max-steps", "3"), timeout=180)
    assert r.returncode == 0, r.stderr
    assert records(tmp_path / "d", "train")[-1]["step"] == 3


# --- 15. relative paths are resolved where they were checked ----------------------------------------------


def test_a_relative_data_path_is_saved_absolute_and_trains_from_another_folder(tmp_path):
    corpus = tmp_path / "work" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("To be, or not to be: that is the question. " * 400)
    runs = tmp_path / "runs"
    r = subprocess.run(
        [sys.executable, "-m", "core.jobs", "--runs-dir", str(runs), "launch", "--preset", "micro",
         "--data", "corpus.txt", "--run-name", "rel", "--max-steps", "2", "--data-cache", str(tmp_path / "cache")],
        cwd=corpus.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = json.loads((runs / "rel" / "config.json").read_text())
    assert saved["data"] == str(corpus.resolve())
    wait_for(lambda: [s for s in records(runs / "rel", "status") if s["state"] in ("done", "failed")], 120, "the end")
    assert records(runs / "rel", "status")[-1]["state"] == "done", (runs / "rel" / "train.log").read_text()


# --- Also: SIGKILL at random moments, resume each time ----------------------------------------------------


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill -9 a CPU run at seeded random moments (during steps, evals and checkpoint writes), resume after each
    kill, and end with weights bit for bit equal to a run that was never interrupted, and no temporary folder."""
    import random
    import signal
    import time

    from safetensors.torch import load_file

    args = [*MICRO, "--precision", "fp32", "--max-steps", "14", "--ckpt-interval", "2", "--eval-interval", "3"]
    assert run_cmd(train_cmd(tmp_path / "ref", *args, "--run-name", "r"), timeout=300).returncode == 0
    runs, rng = tmp_path / "killed", random.Random(1234)

    def next_command() -> list[str]:  # resume once there is a checkpoint; before that, start again
        has_ckpt = bool(list_checkpoints(runs / "r"))
        return train_cmd(runs, "--resume", "r") if has_ckpt else train_cmd(runs, *args, "--run-name", "r")

    for _ in range(4):
        proc = subprocess.Popen(next_command(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cmd = (
        train_cmd(runs, "--resume", "r") if list_checkpoints(runs / "r") else train_cmd(runs, *args, "--run-name", "r")
    )
    finished = run_cmd(cmd, timeout=300)
    assert finished.returncode == 0, finished.stderr
    a = load_file(tmp_path / "ref" / "r" / "ckpt" / "step-000014" / "model.safetensors")
    b = load_file(runs / "r" / "ckpt" / "step-000014" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in (runs / "r").rglob("*") if ".tmp" in p.name]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import core.checkpoint as checkpoint

    model = GPT(model_config("micro"))
    save_checkpoint(tmp_path, 2, model, {}, keep_last=3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, model, {}, keep_last=3)
    assert [p.name for p in (tmp_path / "ckpt").iterdir() if p.is_dir()] == ["step-000002"]
    assert resolve_checkpoint(tmp_path).name == "step-000002"
