"""HellaSwag in the training loop: records at the right steps equal to core.evals on the saved checkpoint of the
same step, a data set that cannot be had turns it off with one warning (the run still ends done), and under real
torchrun (2 gloo processes) the records appear once with the full count."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.error
import urllib.request

import pytest

from core.config import TrainConfig
from core.data import prepare_for
from core.evals import evaluate_hellaswag, read_hellaswag
from core.jobs import Jobs
from core.runs import checkpoint_step, list_checkpoints
from core.train import main
from core.trainer import Cadence
from core.weights import load_weights
from tests.helpers import CACHE, MICRO, records, run_cmd, train_cmd

# Made up, in HellaSwag's format (only ctx, endings and label are read); 6 examples, endings of varied length.
EXAMPLES = [
    ("A man is sitting on a roof. he", ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
     "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3),
    ("A woman pours flour into a bowl. she", ["adds two eggs and stirs.", "sings.",
     "drives the car to the station and waits for the train.", "is"], 0),
    ("The kids run onto the field. they", ["kick the ball", "kick the ball around for a while, laughing.",
     "sleep.", "paint the fence blue and green."], 1),
    ("How to clean a cast iron pan.", ["Rinse it with hot water.", "Eat it.",
     "Scrub off any stuck food with coarse salt, then dry it on the stove.", "Sell the pan."], 2),
    ("A dog stands at the edge of a lake. the dog", ["jumps in.", "barks at the ducks that swim by.",
     "reads a book.", "is wet"], 1),
    ("Two people stand on a stage holding violins. they", ["begin to play a slow tune.", "eat sandwiches.",
     "play.", "walk off the stage without a word."], 0),
]  # fmt: skip
BATCH = 8  # micro-batch rows; the trainer scores HellaSwag BATCH // 4 examples per forward


@pytest.fixture
def hs_file(tmp_path):
    path = tmp_path / "hellaswag_small.jsonl"
    lines = [
        {"ind": i, "activity_label": "Test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx, "split": "val",
         "split_type": "indomain", "label": label, "endings": endings, "source_id": f"test~{i}"}
        for i, (ctx, endings, label) in enumerate(EXAMPLES)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def main_in_process(argv):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_args(name: str, *extra: str) -> list[str]:
    return [
        *MICRO,
        "--run-name", name, "--device", "cpu", "--precision", "fp32", "--batch-size", str(BATCH),
        "--eval-interval", "0", "--ckpt-interval", "2", "--keep-last", "10", *extra,
    ]  # fmt: skip


def checkpoint_results(run_dir, hs_file, limit=None) -> dict[int, tuple[float, float, int]]:
    """core.evals on every saved checkpoint of the run, as the trainer batches it: {step: (acc, acc_norm, n)}."""
    examples = read_hellaswag(hs_file, limit)
    out = {}
    for ckpt in list_checkpoints(run_dir):
        model, _ = load_weights(str(ckpt), "cpu")
        r = evaluate_hellaswag(model, examples, batch_examples=BATCH // 4)
        out[checkpoint_step(ckpt)] = (r.acc, r.acc_norm, r.n)
    return out


def hellaswag_records(run_dir) -> dict[int, tuple[float, float, int]]:
    recs = [r for r in records(run_dir, "eval") if "hellaswag_acc" in r]
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), f"a step was recorded twice: {steps}"
    return {r["step"]: (r["hellaswag_acc"], r["hellaswag_acc_norm"], r["hellaswag_n"]) for r in recs}


def test_cadence_asks_for_hellaswag_at_multiples_and_the_last_step():
    cadence = Cadence(total_steps=7, log=1, eval=0, sample=0, save=0, hellaswag=3)
    assert [s for s in range(1, 8) if cadence.hellaswag_due(s)] == [3, 6, 7]
    assert not any(Cadence(7, 1, 0, 0, 0).hellaswag_due(s) for s in range(1, 8))  # 0: off


def test_records_at_each_interval_equal_core_evals_on_that_steps_checkpoint(tmp_path, hs_file):
    args = run_args("hs", "--max-steps", "5", "--hellaswag-interval", "2", "--hellaswag-file", str(hs_file))
    assert main_in_process(["--runs-dir", str(tmp_path), *args, "--hellaswag-limit", "5", "--eval-interval", "2"]) == 0
    run = tmp_path / "hs"
    got = hellaswag_records(run)
    assert sorted(got) == [2, 4, 5]
    assert all(n == 5 for _, _, n in got.values())  # --hellaswag-limit: the first 5 of 6
    assert got == checkpoint_results(run, hs_file, limit=5)  # checkpoints at steps 2, 4 and 5 (the last)
    assert records(run, "status")[-1]["state"] == "done"
    last = records(run, "eval")[-1]
    assert set(last) == {"kind", "time", "step", "hellaswag_acc", "hellaswag_acc_norm", "hellaswag_n"}
    # a HellaSwag record after the val loss of the same step: the run's status still shows that val loss
    val_losses = [r["val_loss"] for r in records(run, "eval") if "val_loss" in r]
    assert len(val_losses) == 3 and Jobs(tmp_path).status("hs").val_loss == val_losses[-1]


def test_an_unreachable_dataset_logs_one_warning_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    # No --hellaswag-file, an empty HellaSwag cache (a data cache of its own) and no network: HellaSwag goes off.
    shakespeare = prepare_for(TrainConfig(data_cache=CACHE), log=lambda _: None)
    cache = tmp_path / "cache"
    shutil.copytree(shakespeare, cache / shakespeare.name)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["--runs-dir", str(tmp_path), *run_args("off", "--max-steps", "3", "--hellaswag-interval", "1")]
    assert main_in_process([*argv, "--data-cache", str(cache)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "HellaSwag" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: HellaSwag is off for this run: could not download")
    assert "--file" in warnings[0]  # the one line says what to do
    assert hellaswag_records(tmp_path / "off") == {}
    assert records(tmp_path / "off", "status")[-1]["state"] == "done"
    assert not list((cache / "hellaswag").glob("*"))  # nothing half-downloaded left behind


def test_ddp_records_once_with_the_full_count(tmp_path, hs_file):
    args = run_args("ddp", "--max-steps", "4", "--hellaswag-interval", "2", "--hellaswag-file", str(hs_file))
    out = run_cmd(train_cmd(tmp_path, *args, "--hellaswag-limit", "5", nproc=2), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "ddp"
    got = hellaswag_records(run)  # asserts each step once: rank 0 alone writes
    assert sorted(got) == [2, 4]
    assert all(n == 5 for _, _, n in got.values())  # rank 0 scored 3, rank 1 scored 2: all-reduced
    assert got == {step: v for step, v in checkpoint_results(run, hs_file, limit=5).items() if step in got}
