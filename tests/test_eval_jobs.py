"""Evaluation jobs (core/jobs/evaljob.py, python -m core.jobs eval): real processes on a real micro checkpoint; the
result in evals.jsonl equals core.eval run directly; failures and refusals are one line."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from core.jobs import EvalRefused, RunNotFound, checkpoint_scores, eval_status, launch_eval, read_evals
from tests.helpers import MICRO, run_cmd, wait_for
from tests.test_hellaswag_loop import EXAMPLES, main_in_process

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n" * 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory, files):
    """A runs folder with a micro run trained for 2 steps (checkpoint step-000002, HellaSwag on all 6 examples in
    the loop) and a run with no checkpoint."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["--runs-dir", str(runs), *MICRO, "--run-name", "r", "--max-steps", "2", "--device", "cpu"]
    hellaswag = ["--hellaswag-interval", "2", "--hellaswag-file", str(files / "hs.jsonl")]
    assert main_in_process([*args, "--eval-interval", "0", *hellaswag]) == 0
    (runs / "empty").mkdir()
    (runs / "empty" / "config.json").write_text("{}")
    return runs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    good = [{"ctx": ctx, "endings": endings, "label": label} for ctx, endings, label in EXAMPLES]
    (folder / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (folder / "bad.jsonl").write_text(json.dumps({**good[0], "label": 7}) + "\n")
    (folder / "text.txt").write_text(TEXT)
    return folder


def direct(task: str, *args: str) -> dict:
    """`python -m core.eval TASK ... --json`, run here and now."""
    out = run_cmd([sys.executable, "-m", "core.eval", task, *args, "--json"], timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def finished(runs, run="r", timeout=300):
    def ended():
        st = eval_status(runs, run)
        return None if st.active else st

    return wait_for(ended, timeout, "the eval job")


def test_hellaswag_job_records_what_core_eval_gives(runs, files):
    assert checkpoint_scores(runs, "r")["step-000002"]["hellaswag_n"] == 6  # from the training loop
    st = launch_eval(runs, "r", "hellaswag", limit=5, file=files / "hs.jsonl")
    assert st.state == "running" and st.checkpoint == "step-000002" and st.task == "hellaswag"
    st = finished(runs)
    assert st.state == "done", st.message
    ckpt = runs / "r" / "ckpt" / "step-000002"
    expected = direct("hellaswag", "--checkpoint", str(ckpt), "--file", str(files / "hs.jsonl"), "--limit", "5")
    record = read_evals(runs, "r")[-1]
    assert st.result == record
    assert record["kind"] == "eval" and record["time"] > 0
    assert {k: record[k] for k in expected} == expected  # task, n, acc, acc_norm
    assert (record["n"], record["checkpoint"], record["step"], record["limit"]) == (5, "step-000002", 2, 5)
    assert (runs / "r" / "eval.log").is_file()


def test_perplexity_job_from_the_cli_waits_and_prints_the_result(runs, files):
    cli = [sys.executable, "-m", "core.jobs", "--runs-dir", str(runs), "eval", "r", "--task", "perplexity"]
    out = run_cmd([*cli, "--data", str(files / "text.txt"), "--wait"], timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    expected = direct(
        "perplexity", "--checkpoint", str(runs / "r" / "ckpt" / "step-000002"), "--data", str(files / "text.txt")
    )
    assert {k: printed[k] for k in expected} == expected
    assert read_evals(runs, "r")[-1]["data"] == str(files / "text.txt")
    listing = run_cmd([sys.executable, "-m", "core.jobs", "--runs-dir", str(runs), "evals", "r"], timeout=120)
    assert listing.stdout.startswith("r: evaluation done (perplexity on step-000002)")


def test_checkpoint_scores_hold_the_newest_of_the_loop_and_the_jobs(runs):
    scores = checkpoint_scores(runs, "r")
    assert list(scores) == ["step-000002"]
    hs, pp = read_evals(runs, "r")[-2:]  # the two jobs above; the loop's 6-example record is older
    assert scores["step-000002"] == {
        "hellaswag_acc": hs["acc"], "hellaswag_acc_norm": hs["acc_norm"], "hellaswag_n": 5,
        "perplexity": pp["perplexity"], "perplexity_data": pp["data"],
    }  # fmt: skip
    assert checkpoint_scores(runs, "empty") == {}


def test_a_failing_evaluation_ends_failed_with_core_evals_one_line(runs, files):
    launch_eval(runs, "r", "hellaswag", file=files / "bad.jsonl")
    st = finished(runs)
    assert st.state == "failed" and st.result is None
    assert st.message.startswith("error: ") and "line 1: 'label' is 7" in st.message and "\n" not in st.message


def test_a_killed_evaluation_is_failed_and_a_running_one_blocks_a_second(runs, files):
    st = launch_eval(runs, "r", "hellaswag", file=files / "hs.jsonl")
    with pytest.raises(EvalRefused, match="already running"):
        launch_eval(runs, "r", "perplexity", data=files / "text.txt")
    os.killpg(st.pid, signal.SIGKILL)  # the worker and core.eval: its own process group
    st = finished(runs, timeout=30)
    assert st.state == "failed" and st.message.startswith("the evaluation ended without a result")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(run="empty", task="hellaswag"), "has no checkpoint to evaluate yet"),
        (dict(run="r", task="perplexity"), "pass --data FILE"),
        (dict(run="r", task="perplexity", data="/no/such.txt"), "text file not found: /no/such.txt"),
        (dict(run="r", task="hellaswag", file="/no/hs.jsonl"), "HellaSwag file not found"),
        (dict(run="r", task="hellaswag", limit=0), "limit must be >= 1"),
        (dict(run="r", task="mmlu"), "unknown task 'mmlu'"),
        (dict(run="r", task="hellaswag", checkpoint="step-9"), "no checkpoint 'step-9'; it has step-000002"),
    ],
)
def test_refusals_are_one_line(runs, kwargs, message):
    run, task = kwargs.pop("run"), kwargs.pop("task")
    with pytest.raises(EvalRefused) as e:
        launch_eval(runs, run, task, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_run_and_a_run_never_evaluated(runs):
    with pytest.raises(RunNotFound):
        launch_eval(runs, "nope", "hellaswag")
    assert eval_status(runs, "empty").state == "none" and read_evals(runs, "empty") == []
