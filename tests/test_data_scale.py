"""Data at full scale: shard size as a setting (same batches, same training, exact resume across shards)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from core import data
from core.data import BatchLoader, prepare, read_meta
from core.tokenizer import encode
from tests.helpers import CACHE, MICRO, ROOT, records, run_cmd, train_cmd, wait_for

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


# --- leftovers of a killed preparation -------------------------------------------------------------


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """~30 MB of text: one process tokenizes it for several seconds, long enough to be killed midway."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text((ROOT / "data" / "tinyshakespeare.txt").read_text() * 27)
    return path


def _temp_folders(cache):
    return [p for p in cache.iterdir() if ".tmp-" in p.name] if cache.exists() else []


def _writing(cache):
    """The temp folder of a preparation that has written some tokens, once there is one."""
    for tmp in _temp_folders(cache):
        if any(f.is_file() and f.stat().st_size > 100_000 for f in tmp.iterdir()):
            return tmp
    return None


def _start_preparing(corpus, cache):
    cmd = [sys.executable, "-m", "core.data", "--data", str(corpus), "--data-cache", str(cache), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: _writing(cache) or proc.poll() is not None, 120, "the preparation to write tokens")
    assert proc.poll() is None, "the preparation ended before it could be interrupted: " + proc.stdout.read()
    return proc


def _all_tokens(cache):
    meta = read_meta(cache)
    parts = [np.fromfile(cache / s["file"], dtype=np.uint16) for s in meta["shards"]["train"] + meta["shards"]["val"]]
    return np.concatenate(parts)


def test_a_killed_preparation_leaves_nothing_behind(big_corpus, tmp_path):
    cache = tmp_path / "cache"
    proc = _start_preparing(big_corpus, cache)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _temp_folders(cache), "the kill should leave a temp folder for the next preparation to deal with"
    out = prepare(str(big_corpus), cache, workers=1, log=lambda _: None)
    assert _temp_folders(cache) == []
    expected = encode(big_corpus.read_text(), allow_special=False) + [50256]
    assert np.array_equal(_all_tokens(out), np.asarray(expected, dtype=np.uint16))


def test_a_live_preparation_is_not_swept(big_corpus, tmp_path):
    cache = tmp_path / "cache"
    proc = _start_preparing(big_corpus, cache)
    try:
        live = _writing(cache)
        small = tmp_path / "small.txt"
        small.write_text("another corpus prepared meanwhile. " * 300)
        prepare(str(small), cache, log=lambda _: None)  # sweeps stale temp folders: must spare the live one
        assert proc.poll() is None, "the big preparation ended too soon for the test to mean anything"
        assert live.is_dir()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert _temp_folders(cache) == []
    assert read_meta(out.splitlines()[-1].split()[0])["source"] == str(big_corpus)


def test_meta_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(data.os, "fsync", fsync)
    (tmp_path / "c.txt").write_text("text that must reach the disk. " * 200)
    out = prepare(str(tmp_path / "c.txt"), tmp_path / "cache", log=lambda _: None)
    temp = [p for p in synced if ".tmp-" in p]
    assert any(p.endswith("/meta.json") for p in temp), synced
    assert any(".tmp-" in p.rsplit("/", 1)[-1] for p in temp), "the temp folder itself is fsynced"
    assert str(out.parent) in synced, "the cache root is fsynced after the rename"
