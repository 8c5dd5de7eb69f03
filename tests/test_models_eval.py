"""The Models tab's scores and Evaluate action: a real micro run (HellaSwag in its loop), real evaluation jobs, and
the table showing what the jobs wrote to evals.jsonl."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from core.jobs import eval_status, read_evals
from core.paths import AccessPolicy
from playground import eval_action, models_tab
from playground.tab import AppContext
from tests.helpers import MICRO, wait_for
from tests.test_hellaswag_loop import EXAMPLES, main_in_process

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n" * 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    rows = [{"ctx": ctx, "endings": endings, "label": label} for ctx, endings, label in EXAMPLES]
    (folder / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "corpus.txt").write_text(TEXT)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, files):
    """A micro run trained for 2 steps on a local text file, with HellaSwag (all 6 examples) in its loop."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["--runs-dir", str(runs), *MICRO, "--run-name", "r", "--max-steps", "2", "--device", "cpu"]
    loop = ["--hellaswag-interval", "2", "--hellaswag-file", str(files / "hs.jsonl"), "--eval-interval", "0"]
    assert main_in_process([*args, "--data", str(files / "corpus.txt"), "--seq-len", "32", *loop]) == 0
    return runs


@pytest.fixture
def tab_ctx(runs):
    ctx = AppContext.for_runs_dir(runs)
    with gr.Blocks():
        tab = models_tab.build(ctx)
    return tab, ctx


def row_of(rows, run="r", ckpt="step-000002"):
    return dict(zip(models_tab.COLUMNS, next(r for r in rows if r[0] == run and r[3] == ckpt)))


def finished(tab, ctx, run="r"):
    """watch_eval's answer once the job ended (it answers {} while the job runs)."""
    return wait_for(lambda: models_tab.watch_eval(tab, ctx, run) or None, 300, "the evaluation job")


def test_table_shows_the_loops_hellaswag_then_an_evaluation_jobs(tab_ctx, files):
    tab, ctx = tab_ctx
    row = row_of(models_tab.checkpoint_rows(ctx.jobs))
    metrics = [json.loads(line) for line in (ctx.runs_dir / "r" / "metrics.jsonl").read_text().splitlines()]
    loop = next(r for r in metrics if r.get("kind") == "eval" and "hellaswag_acc_norm" in r)
    assert row["HellaSwag"] == f"{loop['hellaswag_acc_norm']:.4f} (n 6)" and row["Perplexity"] == "—"

    ckpt = str(ctx.runs_dir / "r" / "ckpt" / "step-000002")
    out = models_tab.evaluate_picked(tab, ctx, ckpt, "hellaswag", 3, str(files / "hs.jsonl"), "")
    assert out[tab["eval_msg"]].startswith("⏳ Evaluating **r / step-000002** (HellaSwag, first 3 examples)")
    assert out[tab["eval_run"]] == "r" and out[tab["eval_timer"]].active
    done = finished(tab, ctx)
    record = read_evals(ctx.runs_dir, "r")[-1]
    assert done[tab["eval_msg"]] == (
        f"✅ r / step-000002: HellaSwag acc_norm **{record['acc_norm']:.4f}** (acc {record['acc']:.4f}, 3 examples)"
    )
    assert not done[tab["eval_timer"]].active and done[tab["eval_run"]] is None
    assert row_of(done[tab["table"]])["HellaSwag"] == f"{record['acc_norm']:.4f} (n 3)"  # the newer one wins


def test_perplexity_of_the_runs_own_text_lands_in_its_column(tab_ctx, files):
    tab, ctx = tab_ctx
    assert eval_action.run_text_file(ctx.runs_dir / "r") == files / "corpus.txt"
    ckpt = str(ctx.runs_dir / "r" / "ckpt" / "step-000002")
    out = models_tab.evaluate_picked(tab, ctx, ckpt, "perplexity", None, "", "")
    assert "(Perplexity, corpus.txt)" in out[tab["eval_msg"]]
    done = finished(tab, ctx)
    record = read_evals(ctx.runs_dir, "r")[-1]
    assert record["task"] == "perplexity" and record["data"] == str(files / "corpus.txt")
    assert done[tab["eval_msg"]].startswith(f"✅ r / step-000002: perplexity **{record['perplexity']:.2f}**")
    assert row_of(done[tab["table"]])["Perplexity"] == f"{record['perplexity']:.2f}"
    assert eval_status(ctx.runs_dir, "r").state == "done"


def test_evaluate_refusals_are_one_line(tab_ctx, files, tmp_path):
    tab, ctx = tab_ctx
    ckpt = str(ctx.runs_dir / "r" / "ckpt" / "step-000002")
    cases = [
        ((None, "hellaswag", 5, "", ""), "⚠ Not started: pick a checkpoint to evaluate"),
        ((str(tmp_path), "hellaswag", 5, "", ""), "is not a checkpoint of a run in"),
        ((ckpt, "hellaswag", 0, "", ""), "the example limit must be a whole number >= 1, got 0"),
        ((ckpt, "hellaswag", 2.5, "", ""), "got 2.5"),
        ((ckpt, "hellaswag", 5, str(tmp_path / "none.jsonl"), ""), "HellaSwag file not found"),
        ((ckpt, "perplexity", 5, "", str(tmp_path / "none.txt")), "text file not found"),
    ]
    for args, words in cases:
        message = models_tab.evaluate_picked(tab, ctx, *args)[tab["eval_msg"]]
        assert message.startswith("⚠ Not started:") and words in message and "\n" not in message, message
    assert eval_status(ctx.runs_dir, "r").state in ("none", "done")  # nothing was started

    exposed = AccessPolicy(exposed=True, allowed=(files,), allow_downloads=False)
    refused, run = eval_action.start_eval(ctx.jobs, ckpt, "hellaswag", 5, "", "", exposed)
    assert not refused.ok and run is None and "hub downloads are off" in refused.message
    assert models_tab.watch_eval(tab, ctx, None)[tab["eval_run"]] is None  # nothing to follow: the timer stops
