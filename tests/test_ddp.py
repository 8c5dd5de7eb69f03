"""DDP through real torchrun (gloo, 2 processes): equivalence, SIGTERM stop + resume, a crashing rank."""

import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import MICRO, ROOT, records, run_cmd, train_cmd

# micro-batch 4 x 32 tokens; 512 tokens a step = accumulation 4 on 1 process, 2 on each of 2 processes
ARGS = [
    *MICRO,
    "--precision",
    "fp32",  # the equivalence is exact maths; bf16 (auto on CPUs with AMX/AVX-512 BF16) would blur it
    "--batch-size",
    "4",
    "--total-batch-tokens",
    "512",
    "--max-steps",
    "6",
    "--eval-interval",
    "3",
    "--ckpt-interval",
    "0",
]


def run_ok(cmd, timeout=300):
    out = run_cmd(cmd, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    run_ok(train_cmd(runs, *ARGS, "--run-name", "one"))
    return runs / "one"


def test_two_processes_equal_one_with_double_accumulation(reference, tmp_path):
    run_ok(train_cmd(tmp_path, *ARGS, "--run-name", "two", nproc=2))
    two = tmp_path / "two"
    start = records(two, "status")[0]
    assert (start["world_size"], start["grad_accum"], start["tokens_per_step"]) == (2, 2, 512)
    assert records(reference, "status")[0]["grad_accum"] == 4
    ref_losses = [r["loss"] for r in records(reference, "train")]
    assert [r["loss"] for r in records(two, "train")] == pytest.approx(ref_losses, rel=1e-5)
    assert [r["val_loss"] for r in records(two, "eval")] == pytest.approx(
        [r["val_loss"] for r in records(reference, "eval")], rel=1e-5
    )
    a = load_file(reference / "ckpt" / "step-000006" / "model.safetensors")
    b = load_file(two / "ckpt" / "step-000006" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert sum(1 for _ in (two / "ckpt").glob("step-*")) == 1  # rank 0 alone writes


def test_sigterm_to_torchrun_group_stops_all_ranks_and_resume_is_exact(reference, tmp_path):
    run = tmp_path / "sig"
    log = open(tmp_path / "train.log", "w")  # noqa: SIM115 (like the job layer: a file, never a pipe)
    proc = subprocess.Popen(
        train_cmd(tmp_path, *ARGS, "--run-name", "sig", nproc=2),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() or not records(run, "train"):
        assert time.time() < deadline and proc.poll() is None, (tmp_path / "train.log").read_text()
        time.sleep(0.1)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGTERM)  # what the UI's stop does: the whole process group
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=30)
    took = time.time() - t0
    assert not alive, "a rank outlived the stop"
    assert took < 20, f"stopping took {took:.1f}s"
    status = records(run, "status")[-1]
    assert status["state"] == "stopped", (tmp_path / "train.log").read_text()[-3000:]
    k = status["step"]
    assert 1 <= k < 6
    assert [p.name for p in (run / "ckpt").glob("step-*")] == [f"step-{k:06d}"]  # exactly one checkpoint

    shutil.copytree(run, tmp_path / "sig1")  # the same stopped run, to resume on one process below

    run_ok(train_cmd(tmp_path, "--resume", "sig", nproc=2))
    ref = [r["loss"] for r in records(reference, "train")]
    assert [r["step"] for r in records(run, "train")] == list(range(1, 7))
    assert [r["loss"] for r in records(run, "train")] == pytest.approx(ref, rel=1e-5)

    # World size 2 -> 1 with the same total batch: accumulation doubles, the curve goes on unchanged.
    run_ok(train_cmd(tmp_path, "--resume", "sig1"))
    assert records(tmp_path / "sig1", "status")[-2]["grad_accum"] == 4
    assert [r["loss"] for r in records(tmp_path / "sig1", "train")] == pytest.approx(ref, rel=1e-5)


def test_crashing_rank_fails_the_job_without_hanging(tmp_path):
    env = {**os.environ, "PLAYGROUND_TEST_CRASH_RANK": "1", "PLAYGROUND_TEST_CRASH_STEP": "2"}
    t0 = time.time()
    out = run_cmd(train_cmd(tmp_path, *ARGS, "--run-name", "crash", nproc=2), timeout=180, env=env)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "test fault injection: rank 1 crashed at step 2" in log
    status = records(tmp_path / "crash", "status")[-1]
    assert status["state"] == "failed" and "lost contact with another rank" in status["message"]
    assert time.time() - t0 < 150
