"""Data at full scale: shard size as a setting (same batches, same training, exact resume across shards)."""

import sys

import numpy as np
import pytest

from core.data import BatchLoader, prepare, read_meta
from tests.helpers import CACHE, MICRO, records, run_cmd, train_cmd

TINY = 1000  # tokens per shard: every few batches cross a shard boundary


@pytest.fixture(scope="module")
def one_and_tiny(tmp_path_factory):
    """Shakespeare prepared in one shard (the default size) and in shards of TINY tokens."""
    root = tmp_path_factory.mktemp("caches")
    one = prepare("shakespeare", root / "one", log=lambda _: None)
    tiny = prepare("shakespeare", root / "tiny", log=lambda _: None, shard_tokens=TINY)
    return one, tiny


def test_tiny_shards_hold_the_same_tokens(one_and_tiny):
    one, tiny = (read_meta(c) for c in one_and_tiny)
    assert len(one["shards"]["train"]) == 1 and len(tiny["shards"]["train"]) > 100
    assert all(s["tokens"] == TINY for s in tiny["shards"]["train"][:-1])
    assert (one["train_tokens"], one["val_tokens"]) == (tiny["train_tokens"], tiny["val_tokens"])
    assert one["key"]["shard_tokens"] != tiny["key"]["shard_tokens"]  # two caches, not one reused


def _crossing_windows(loader, g):
    """How many windows of micro-batch g span two TINY-token shards."""
    B, T = loader.B, loader.T
    if loader.shuffle:
        epoch, j = divmod(g, loader.batches_per_epoch)
        loader._epoch_plan(epoch)
        ids = loader._order[j * B : (j + 1) * B]
    else:
        loader._epoch_plan(0)
        ids = [(g * B + i) % len(loader._order) for i in range(B)]
    first = loader._offset + np.asarray(ids) * T
    return int((first // TINY != (first + T) // TINY).sum())


@pytest.mark.parametrize("shuffle", [True, False])
def test_tiny_shards_give_the_same_batches(one_and_tiny, shuffle):
    one, tiny = one_and_tiny
    split = "train" if shuffle else "val"
    a = BatchLoader(one, split, 8, 64, seed=3, shuffle=shuffle)
    b = BatchLoader(tiny, split, 8, 64, seed=3, shuffle=shuffle)
    assert a.batches_per_epoch == b.batches_per_epoch and a.data_key == b.data_key
    n = a.batches_per_epoch
    for g in [*range(100), n - 1, n, n + 1, 3 * n + 5]:  # into later epochs: other offsets and orders
        (xa, ya), (xb, yb) = a.batch(g), b.batch(g)
        assert xa.equal(xb) and ya.equal(yb), f"micro-batch {g} differs"
    assert sum(_crossing_windows(b, g) for g in range(100)) >= 20, "the test must read windows spanning shards"


STEPS = 8
# Constant learning rate (min_lr = lr), so a run stopped by a smaller --max-steps and resumed with a larger one
# follows the same schedule as an uninterrupted run; dropout > 0 so the RNG state must be restored too.
ARGS = [*MICRO, "--batch-size", "4", "--lr", "1e-3", "--min-lr", "1e-3", "--dropout", "0.1"]
ARGS += ["--eval-interval", "4", "--ckpt-interval", "0"]


def _losses(run):
    return [(r["step"], r["loss"]) for r in records(run, "train")], [
        (r["step"], r["val_loss"]) for r in records(run, "eval")
    ]


def test_tiny_shards_train_the_same_and_resume_exactly_across_shards(tmp_path):
    tiny_cache = ["--data-cache", str(tmp_path / "cache"), "--shard-tokens", str(TINY)]
    one = run_cmd(train_cmd(tmp_path, *ARGS, "--data-cache", CACHE, "--max-steps", str(STEPS), "--run-name", "one"))
    assert one.returncode == 0, one.stderr
    tiny = run_cmd(train_cmd(tmp_path, *ARGS, *tiny_cache, "--max-steps", str(STEPS), "--run-name", "tiny"))
    assert tiny.returncode == 0, tiny.stderr
    assert len(read_meta(next((tmp_path / "cache").iterdir()))["shards"]["train"]) > 100
    assert _losses(tmp_path / "one") == _losses(tmp_path / "tiny")  # bitwise: the same floats
    assert len(_losses(tmp_path / "one")[0]) == STEPS

    part = run_cmd(train_cmd(tmp_path, *ARGS, *tiny_cache, "--max-steps", "3", "--run-name", "part"))
    assert part.returncode == 0, part.stderr
    resumed = run_cmd(train_cmd(tmp_path, "--resume", "part", "--max-steps", str(STEPS)))
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 3" in resumed.stdout
    (train_part, val_part), (train_one, val_one) = _losses(tmp_path / "part"), _losses(tmp_path / "one")
    assert train_part == train_one
    assert set(val_one) <= set(val_part)  # the stopped run also evaluated at its last step, 3


def test_cli_shard_tokens(tmp_path):
    (tmp_path / "c.txt").write_text("words for a few small shards " * 100)
    cmd = ["-m", "core.data", "--data", str(tmp_path / "c.txt"), "--data-cache", str(tmp_path / "cache")]
    out = run_cmd([sys.executable, *cmd, "--shard-tokens", "100"], timeout=120)
    assert out.returncode == 0, out.stderr
    meta = read_meta(out.stdout.splitlines()[-1].split()[0])  # the last line: the folder and counts
    assert [s["tokens"] for s in meta["shards"]["train"]][:-1] == [100] * (len(meta["shards"]["train"]) - 1)
    assert meta["train_tokens"] > 500 and meta["key"]["shard_tokens"] == 100
    bad = run_cmd([sys.executable, *cmd, "--shard-tokens", "0"], timeout=120)
    assert bad.returncode == 2 and "--shard-tokens must be >= 1" in bad.stderr
