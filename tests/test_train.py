"""The trainer: gradient accumulation, the CLI (real subprocesses), metrics, bad input, failures."""

import dataclasses
import json
import signal

import pytest
import torch

from core import distributed as D
from core.checkpoint import save_checkpoint
from core.config import TrainConfig
from core.model import GPT
from core.reporting import Reporter, StepRecord
from core.train import Plan, build_training, main
from core.trainer import Cadence, LoaderState, StopFlag, Trainer, TrainState
from tests.helpers import CACHE, MICRO, records, run_cmd, train_cmd


def train(args, runs, timeout=300, env=None):
    return run_cmd(train_cmd(runs, *args), timeout=timeout, env=env)


def main_in_process(argv):
    """The CLI's main in this process (faster than a subprocess), leaving the signal handlers as they were."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _trainer(tmp_path, **kw):
    cfg = TrainConfig(
        preset="micro",
        data_cache=CACHE,
        seq_len=32,
        runs_dir=str(tmp_path),
        run_name="ga",
        device="cpu",
        precision="fp32",  # auto is bf16 on CPUs with AMX: the comparison needs exact fp32 sums
        **kw,
    )
    ctx, report = D.setup("cpu"), Reporter()
    return Trainer(build_training(Plan(cfg, tmp_path / "ga", None), ctx, report.log), ctx, StopFlag(), report)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    big = _trainer(tmp_path, batch_size=8)  # 1 micro-batch of 8
    small = _trainer(tmp_path, batch_size=4, total_batch_tokens=8 * 32)  # 2 micro-batches of 4
    assert (big.state.grad_accum, small.state.grad_accum) == (1, 2)
    for _ in range(2):  # the second step also checks that both advance the data the same way
        loss_big, loss_small = big.accumulate_gradients(), small.accumulate_gradients()
        assert loss_small == pytest.approx(loss_big, rel=1e-5)
        for (name, a), b in zip(big.model.named_parameters(), small.model.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
        big.apply_gradients()
        small.apply_gradients()
    assert big.state.loader.position == 2 and small.state.loader.position == 4  # same sequences, in micro-batches


def test_tiny_model_learns_shakespeare(tmp_path):
    # ~1.5 min of CPU. The unigram entropy of tinyshakespeare in GPT-2 tokens is 6.32 nats: a model
    # whose val loss goes below it predicts from context, not just word frequencies. 200 steps of
    # 16 x 64 tokens reach ~5.9 (seed 1337); the bound keeps a margin for other BLAS builds.
    args = [
        "--preset",
        "tiny",
        "--data-cache",
        CACHE,
        "--batch-size",
        "16",
        "--seq-len",
        "64",
        "--max-steps",
        "200",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "10",
        "--eval-interval",
        "100",
        "--eval-batches",
        "8",
        "--ckpt-interval",
        "0",
        "--sample-interval",
        "200",
        "--sample-tokens",
        "8",
        "--run-name",
        "learn",
    ]
    out = train(args, tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "learn"
    losses = [r["loss"] for r in records(run, "train")]
    assert len(losses) == 200 and losses[0] > 10.0
    assert sum(losses[-10:]) / 10 < 6.3
    assert records(run, "eval")[-1]["val_loss"] < 6.2
    # the run folder and metrics follow the documented schema
    start, end = records(run, "status")[0], records(run, "status")[-1]
    assert start["state"] == "running" and start["step"] == 0 and start["total_steps"] == 200
    assert start["world_size"] == 1 and start["grad_accum"] == 1 and start["tokens_per_step"] == 1024
    assert end["state"] == "done"
    rec = records(run, "train")[-1]
    assert rec["step"] == 200 and rec["tokens"] == 200 * 1024 and rec["mfu"] is None
    for key in ("lr", "grad_norm", "dt", "tok_per_s", "elapsed", "eta_s", "mem_mb", "total_steps"):
        assert rec[key] is not None, key
    assert records(run, "sample")[0]["step"] == 200
    assert TrainConfig.from_json(run / "config.json").max_steps == 200
    assert "core.train" in (run / "command.txt").read_text()
    assert (run / "ckpt" / "latest").read_text().strip() == "step-000200"
    assert "step 200/200 | loss" in out.stdout and "tok/s" in out.stdout and "eta" in out.stdout


def test_job_layer_config_is_used_and_kept(tmp_path):
    run = tmp_path / "job"
    run.mkdir()
    cfg = TrainConfig(
        preset="micro",
        data_cache=CACHE,
        batch_size=2,
        max_steps=2,
        eval_interval=0,
        ckpt_interval=0,
        run_name="job",
        runs_dir=str(tmp_path),
    )
    cfg.to_json(run / "config.json")
    (run / "command.txt").write_text("launched by the job layer\n")
    before = (run / "config.json").read_text()
    out = train(["--config", str(run / "config.json")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (run / "config.json").read_text() == before
    assert (run / "command.txt").read_text() == "launched by the job layer\n"
    assert [r["step"] for r in records(run, "train")] == [1, 2]
    again = train(["--config", str(run / "config.json")], tmp_path)  # same run twice: refused, nothing lost
    assert again.returncode == 2 and "--resume job" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/corpus.txt"], "not found"),
        (["--batch-size", "3", "--total-batch-tokens", "100"], "must be a multiple of"),
        (["--run-name", "../escape"], "run name"),
        (["--data", "{short}"], "fewer than one batch"),
        (["--data", "{empty}"], "is empty"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["--parallel", "zero3"], "parallel must be ddp or fsdp, got 'zero3'"),
        (["--parallel", "fsdp", "--precision", "fp16"], "FSDP trains in bf16 or fp32"),
        (["--log-interval", "0"], "log_interval must be >= 1"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    (tmp_path / "short.txt").write_text("too short for a batch " * 5)
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(short=tmp_path / "short.txt", empty=tmp_path / "empty.txt") for a in args]
    code = main_in_process(["--runs-dir", str(tmp_path), *MICRO, "--max-steps", "2", "--run-name", "bad", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    status = tmp_path / "bad" / "metrics.jsonl"
    if status.exists():  # once the run folder is known the failure is recorded there too
        assert records(tmp_path / "bad", "status")[-1]["state"] == "failed"


def test_diverging_loss_fails_and_keeps_the_last_checkpoint(tmp_path):
    out = train(
        [
            *MICRO,
            "--batch-size",
            "2",
            "--max-steps",
            "40",
            "--lr",
            "1e4",
            "--warmup-steps",
            "0",
            "--grad-clip",
            "0",
            "--ckpt-interval",
            "1",
            "--eval-interval",
            "0",
            "--run-name",
            "nan",
        ],
        tmp_path,
    )
    assert out.returncode == 1, out.stdout[-2000:]
    status = records(tmp_path / "nan", "status")[-1]
    assert status["state"] == "failed" and "loss became" in status["message"] and "--lr" in status["message"]
    step = status["step"]
    saved = sorted(p.name for p in (tmp_path / "nan" / "ckpt").glob("step-*"))
    assert saved[-1] == f"step-{step - 1:06d}"  # the diverged step is never saved
    latest = json.loads((tmp_path / "nan" / "ckpt" / saved[-1] / "state.json").read_text())
    assert latest["step"] == step - 1


def test_init_from_checkpoint_and_hf_folder(tmp_path):
    from core.checkpoint import load_model
    from core.hf import export_hf

    base = train(
        [
            *MICRO,
            "--n-embd",
            "64",
            "--batch-size",
            "2",
            "--max-steps",
            "1",
            "--eval-interval",
            "0",
            "--run-name",
            "base",
        ],
        tmp_path,
    )
    assert base.returncode == 0, base.stderr
    model, _ = load_model(tmp_path / "base")
    export_hf(model, tmp_path / "hf")
    for source, name in ((tmp_path / "base", "ft-ckpt"), (tmp_path / "hf", "ft-hf")):
        out = train(
            [
                *MICRO,
                "--init-from",
                str(source),
                "--batch-size",
                "2",
                "--max-steps",
                "2",
                "--eval-interval",
                "0",
                "--run-name",
                name,
            ],
            tmp_path,
        )
        assert out.returncode == 0, out.stderr
        assert "initialized from" in out.stdout
        tuned, ck = load_model(tmp_path / name)
        assert tuned.config.n_embd == 64 and ck.state["train_config"]["n_embd"] == 64  # the source's shape
    missing = train([*MICRO, "--init-from", str(tmp_path / "nowhere"), "--max-steps", "1", "--run-name", "x"], tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


# state.json as the trainer has written it since the first version (rng shortened): still readable.
STATE_JSON = {
    "tokens": 256,
    "tokens_per_step": 64,
    "world_size": 1,
    "grad_accum": 1,
    "elapsed": 1.03,
    "rng": [{"torch": "OQUAAA==", "numpy": ["MT19937", [1, 2], 624, 0, 0.0], "python": [3, [5, 6], None]}],
    "loader": {"position": 4, "epoch": 0, "seed": 1337, "batch_size": 2, "seq_len": 32, "data_key": "da95090e16941c34"},
    "best_val_loss": 10.78,
    "val_loss": 10.79,
    "scaler": None,
    "precision": "fp32",
    "train_config": TrainConfig(preset="micro", batch_size=2).to_dict(),
    "step": 4,
    "model_config": {"n_layer": 2},  # save_checkpoint's own keys, not part of the train state
    "optimizer": {"param_groups": []},
}


def test_train_state_reads_and_writes_state_json():
    state = TrainState.from_dict(STATE_JSON)
    assert (state.step, state.tokens, state.loader.position, state.best_val_loss) == (4, 256, 4, 10.78)
    written = {k: v for k, v in STATE_JSON.items() if k not in ("model_config", "optimizer")}
    assert state.to_dict() == written
    assert json.loads(json.dumps(state.to_dict())) == written  # JSON only

    loader = LoaderState(position=0, epoch=0, seed=1337, batch_size=2, seq_len=32, data_key="da95090e16941c34")
    fresh = TrainState(0, 64, 1, 1, "fp32", loader, STATE_JSON["train_config"])  # the same run, built anew
    assert fresh.resume_problems(state) == []
    assert fresh.continued_from(state) == dataclasses.replace(state, val_loss=None)
    bigger = dataclasses.replace(fresh, tokens_per_step=128, loader=dataclasses.replace(fresh.loader, batch_size=4))
    assert bigger.resume_problems(state) == ["batch_size 2 -> 4", "tokens per step 64 -> 128"]

    state.evaluated(10.5)
    assert (state.val_loss, state.best_val_loss) == (10.5, 10.5)
    state.advance(micro_batches=2)
    assert (state.step, state.tokens, state.loader.position, state.val_loss) == (5, 320, 6, None)


def test_cadence_of_logs_evals_samples_and_saves():
    cadence = Cadence(total_steps=10, log=3, eval=4, sample=0, save=0)
    steps = range(1, 11)
    assert [s for s in steps if cadence.log_due(s)] == [3, 6, 9, 10]
    assert [s for s in steps if cadence.eval_due(s)] == [4, 8, 10]
    assert [s for s in steps if cadence.sample_due(s)] == []  # 0: never
    assert [s for s in steps if cadence.save_due(s)] == [10]  # 0: only at the end
    assert [s for s in steps if Cadence(10, log=1, eval=0, sample=5, save=4).save_due(s)] == [4, 8, 10]


def test_resuming_imported_weights_says_to_start_from_them(tmp_path, capsys):
    cfg = TrainConfig(preset="micro", run_name="imported", runs_dir=str(tmp_path), data_cache=CACHE)
    save_checkpoint(tmp_path / "imported", 0, GPT(cfg.model_config()), {"imported": True})
    cfg.to_json(tmp_path / "imported" / "config.json")
    assert main_in_process(["--runs-dir", str(tmp_path), "--resume", "imported"]) == 2
    err = capsys.readouterr().err
    assert "no training state to continue" in err and "--init-from" in err and "Traceback" not in err
    assert records(tmp_path / "imported", "status") == []  # the run is left as it was


def test_config_json_is_replaced_atomically(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(max_steps=1).to_json(path)
    before = path.stat().st_ino
    TrainConfig(max_steps=2).to_json(path)
    assert path.stat().st_ino != before  # a new file renamed over the old one, never rewritten in place
    assert TrainConfig.from_json(path).max_steps == 2
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_reporter_writes_each_record_and_its_line_from_the_same_values(tmp_path, capsys):
    report = Reporter()
    report.open(tmp_path / "metrics.jsonl")
    step = StepRecord(
        3,
        10,
        300,
        loss=2.5,
        lr=1e-3,
        grad_norm=0.75,
        dt=0.25,
        tok_per_s=400.0,
        mfu=0.123,
        elapsed=1.0,
        eta_s=3725.0,
        mem_mb=100.0,
    )
    report.trained(step)
    report.evaluated(3, 2.25)
    report.failed(3, "boom")
    report.console = False  # another rank: no lines
    report.sampled(3, "hi")
    report.close()
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "step 3/10 | loss 2.5000 | lr 1.00e-03 | norm 0.75 | 250.0 ms | 400 tok/s | mfu 12.3% | eta 1h02m",
        "step 3 | val loss 2.2500",
    ]
    assert out.err == "error: boom\n"
    got = records(tmp_path, "train")[0]
    assert {k: v for k, v in got.items() if k not in ("kind", "time")} == dataclasses.asdict(step)
    assert [r["val_loss"] for r in records(tmp_path, "eval")] == [2.25]
    failed = {k: v for k, v in records(tmp_path, "status")[0].items() if k != "time"}
    assert failed == {"kind": "status", "state": "failed", "step": 3, "message": "boom"}
    assert records(tmp_path, "sample")[0]["text"] == "hi"
