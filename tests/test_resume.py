"""Stop (SIGINT, like Ctrl-C) and resume gives exactly the uninterrupted run (bitwise, CPU fp32)."""

import json
import signal
import subprocess
import time
from pathlib import Path

from safetensors.torch import load_file

from tests.helpers import MICRO, ROOT, records, run_cmd, train_cmd

# dropout > 0 so the RNG state has to be restored too
ARGS = [
    *MICRO,
    "--batch-size",
    "4",
    "--max-steps",
    "8",
    "--dropout",
    "0.1",
    "--eval-interval",
    "4",
    "--ckpt-interval",
    "0",
]


def losses(run):
    return [(r["step"], r["loss"]) for r in records(run, "train")]


def test_stop_and_resume_is_exact(tmp_path):
    straight = run_cmd(train_cmd(tmp_path, *ARGS, "--run-name", "straight"))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "part"
    proc = subprocess.Popen(
        train_cmd(tmp_path, *ARGS, "--run-name", "part"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() or not losses(run):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    status = records(run, "status")[-1]
    assert status["state"] == "stopped", out
    k = status["step"]
    assert 1 <= k < 8, "the run finished before the signal; the test needs a stop in the middle"
    assert Path(status["checkpoint"]).name == f"step-{k:06d}"
    assert "SIGINT received" in out and f"--resume {run}" in out

    changed = run_cmd(train_cmd(tmp_path, "--resume", "part", "--batch-size", "2"))
    assert changed.returncode == 2 and "cannot resume" in changed.stderr and "batch_size 4 -> 2" in changed.stderr

    resumed = run_cmd(train_cmd(tmp_path, "--resume", "part"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'ckpt' / f'step-{k:06d}'} at step {k}" in resumed.stdout

    assert losses(run) == losses(tmp_path / "straight")  # bitwise: same floats
    a = load_file(tmp_path / "straight" / "ckpt" / "step-000008" / "model.safetensors")
    b = load_file(run / "ckpt" / "step-000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[n].equal(b[n]) for n in a)
    oa = load_file(tmp_path / "straight" / "ckpt" / "step-000008" / "optimizer.safetensors")
    ob = load_file(run / "ckpt" / "step-000008" / "optimizer.safetensors")
    assert all(oa[n].equal(ob[n]) for n in oa)

    state = json.loads((run / "ckpt" / "step-000008" / "state.json").read_text())
    assert state["step"] == 8 and state["tokens"] == 8 * 4 * 32 and state["val_loss"] is not None
    assert state["loader"]["position"] == 8 and state["train_config"]["max_steps"] == 8
    assert {"torch", "numpy", "python"} <= set(state["rng"][0]) and state["best_val_loss"] <= state["val_loss"]
    # No pickle anywhere: a checkpoint is safetensors + JSON only.
    for ckpt in (run / "ckpt").glob("step-*"):
        assert {p.suffix for p in ckpt.iterdir()} <= {".safetensors", ".json"}
    statuses = [r["state"] for r in records(run, "status")]
    assert statuses == ["running", "stopped", "running", "done"]  # the refused resume changed nothing
