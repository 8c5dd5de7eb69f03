"""FSDP2 (`--parallel fsdp`) through real torchrun with gloo, 2 processes, against DDP on the same batches: the same
losses, val losses (3 val batches: one rank runs a spare), HellaSwag counts (5 examples: 3 and 2 per rank), samples
and weights; whole checkpoints that load in one process and resume exactly under FSDP and DDP alike."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from core.checkpoint import load_model
from core.jobs import Jobs
from tests.helpers import MICRO, records, run_cmd, train_cmd
from tests.test_hellaswag_loop import EXAMPLES

ARGS = [
    *MICRO,
    "--precision", "fp32",  # exact maths to compare; bf16 would blur it
    "--batch-size", "4", "--total-batch-tokens", "512",  # accumulation 2 on each of 2 processes
    "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "3",
    "--ckpt-interval", "3", "--keep-last", "5", "--sample-interval", "3", "--sample-tokens", "12",
    "--hellaswag-interval", "3", "--hellaswag-limit", "5",
]  # fmt: skip


def run_ok(cmd):
    out = run_cmd(cmd, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same config in one folder: "ddp" and "fsdp"."""
    root = tmp_path_factory.mktemp("fsdp")
    hs = root / "hellaswag.jsonl"
    hs.write_text("".join(json.dumps({"ctx": c, "endings": e, "label": lab}) + "\n" for c, e, lab in EXAMPLES))
    for parallel in ("ddp", "fsdp"):
        run_ok(
            train_cmd(root, *ARGS, "--hellaswag-file", str(hs), "--parallel", parallel, "--run-name", parallel, nproc=2)
        )
    return root


def _losses(run, kind="train", key="loss"):
    return [r[key] for r in records(run, kind) if key in r]


def _hellaswag(run):
    return [(r["step"], r["hellaswag_n"], r["hellaswag_acc"]) for r in records(run, "eval") if "hellaswag_n" in r]


def test_fsdp_trains_like_ddp_on_the_same_batches(runs):
    ddp, fsdp = runs / "ddp", runs / "fsdp"
    assert json.loads((fsdp / "config.json").read_text())["parallel"] == "fsdp"
    assert len(_losses(fsdp)) == 6
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)
    assert _losses(fsdp, "eval", "val_loss") == pytest.approx(_losses(ddp, "eval", "val_loss"), rel=1e-5)
    hellaswag = [(r["step"], r["hellaswag_n"], r["hellaswag_acc"]) for r in records(fsdp, "eval") if "hellaswag_n" in r]
    assert hellaswag == [
        (r["step"], r["hellaswag_n"], r["hellaswag_acc"]) for r in records(ddp, "eval") if "hellaswag_n" in r
    ]
    assert [n for _, n, _ in hellaswag] == [5, 5]
    assert [r["text"] for r in records(fsdp, "sample")] == [r["text"] for r in records(ddp, "sample")]
    for name in ("model.safetensors", "optimizer.safetensors"):  # whole tensors, in the same format as DDP's
        a = load_file(ddp / "ckpt" / "step-000006" / name)
        b = load_file(fsdp / "ckpt" / "step-000006" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_each_rank_reports_its_memory_and_the_status_says_fsdp(runs):
    mems = [r["mem_mb_ranks"] for r in records(runs / "fsdp", "train")]
    assert all(len(m) == 2 and all(v > 0 for v in m) for m in mems)
    st = Jobs(runs).status("fsdp")  # config.json records the world size of the torchrun launch
    assert (st.nproc, st.parallel, st.mem_mb) == (2, "fsdp", mems[-1])


def test_an_fsdp_checkpoint_loads_in_one_process(runs):
    model, ck = load_model(runs / "fsdp" / "ckpt" / "step-000006")
    reference, _ = load_model(runs / "ddp" / "ckpt" / "step-000006")
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    torch.testing.assert_close(model(x)[0], reference(x)[0], rtol=1e-4, atol=1e-5)
    assert ck.state["step"] == 6 and ck.state["train_config"]["parallel"] == "fsdp"


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_resuming_an_fsdp_checkpoint_continues_exactly(runs, tmp_path, parallel):
    run = tmp_path / "again"
    shutil.copytree(runs / "fsdp", run)
    run_ok(train_cmd(tmp_path, "--resume", str(run / "ckpt" / "step-000003"), "--parallel", parallel, nproc=2))
    resumed = [r for r in records(run, "train")][-3:]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx(_losses(runs / "fsdp")[3:], rel=1e-5)
