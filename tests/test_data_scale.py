"""Data at full scale: shard size as a setting (same batches, same training, exact resume across shards)."""

import json
import os
import re
import signal
import subprocess
import sys
import types

import numpy as np
import psutil
import pytest

from core import data
from core.config import TrainConfig
from core.data import BUNDLED, BatchLoader, DataError, prepare, read_meta
from core.tokenizer import encode
from tests.helpers import CACHE, MICRO, ROOT, records, run_cmd, train_cmd, wait_for

TINY = 1000  # tokens per shard: every few batches cross a shard boundary


def _split_tokens(cache, split):
    return np.concatenate([np.fromfile(cache / s["file"], dtype=np.uint16) for s in read_meta(cache)["shards"][split]])


def _all_tokens(cache):
    return np.concatenate([_split_tokens(cache, "train"), _split_tokens(cache, "val")])


def _reference(docs):
    """The token stream of documents, encoded one by one: each followed by <|endoftext|>."""
    return np.asarray([t for d in docs if d.strip() for t in [*encode(d, allow_special=False), 50256]], np.uint16)


@pytest.fixture(scope="module")
def one_and_tiny(tmp_path_factory):
    """Shakespeare prepared in one shard (the default size) and in shards of TINY tokens."""
    root = tmp_path_factory.mktemp("caches")
    one = prepare("shakespeare", root / "one", log=lambda _: None)
    tiny = prepare("shakespeare", root / "tiny", log=lambda _: None, shard_tokens=TINY)
    return one, tiny


def test_tiny_shards_hold_the_same_tokens(one_and_tiny):
    for split in ("train", "val"):
        assert np.array_equal(*(_split_tokens(c, split) for c in one_and_tiny))
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


STEPS, STOP = 10, 3
# Constant learning rate (min_lr = lr), so a run stopped by a smaller --max-steps and resumed with a larger one
# follows the same schedule as an uninterrupted run; dropout > 0 so the RNG state must be restored too.
ARGS = [*MICRO, "--batch-size", "16", "--lr", "1e-3", "--min-lr", "1e-3", "--dropout", "0.1"]
ARGS += ["--eval-interval", "4", "--ckpt-interval", "0"]


def _losses(run):
    return [(r["step"], r["loss"]) for r in records(run, "train")], [
        (r["step"], r["val_loss"]) for r in records(run, "eval")
    ]


def test_tiny_shards_train_the_same_and_resume_exactly_across_shards(tmp_path):
    tiny_cache = ["--data-cache", str(tmp_path / "cache"), "--shard-tokens", str(TINY)]
    one = run_cmd(train_cmd(tmp_path, *ARGS, "--data-cache", CACHE, "--max-steps", str(STEPS), "--run-name", "one"))
    assert one.returncode == 0, one.stderr
    assert len(_losses(tmp_path / "one")[0]) == STEPS
    # The same run in shards of TINY tokens, stopped after step 3 and resumed: the same floats, bitwise. (Equal to the
    # one-shard run, it is equal to an uninterrupted tiny-shard run too, so that run is left out to save time.)
    part = run_cmd(train_cmd(tmp_path, *ARGS, *tiny_cache, "--max-steps", str(STOP), "--run-name", "part"))
    assert part.returncode == 0, part.stderr
    resumed = run_cmd(train_cmd(tmp_path, "--resume", "part", "--max-steps", str(STEPS)))
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {STOP}" in resumed.stdout
    cache = next((tmp_path / "cache").iterdir())
    assert len(read_meta(cache)["shards"]["train"]) > 100
    loader = BatchLoader(cache, "train", 16, 32, seed=TrainConfig.seed)  # micro-batch g is step g here
    assert sum(_crossing_windows(loader, g) for g in range(STOP, STEPS)) >= 1, "no window after the resume spans shards"
    (train_part, val_part), (train_one, val_one) = _losses(tmp_path / "part"), _losses(tmp_path / "one")
    assert train_part == train_one
    assert set(val_one) <= set(val_part)  # the stopped run also evaluated at its last step


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
    """~15 MB of text: one process tokenizes it for seconds, long enough to be killed midway."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(BUNDLED["shakespeare"].read_text() * 14)
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


# --- FineWeb-Edu format: resumable, budgeted, with progress and a disk check ----------------------------


def _fineweb_docs(n_chars):
    """Web-page-sized documents (a few KB) cut from the bundled corpus, n_chars in all."""
    paragraphs = BUNDLED["shakespeare"].read_text().split("\n\n")
    docs, i, total = [], 0, 0
    while total < n_chars:
        docs.append("\n\n".join(paragraphs[i % len(paragraphs) : i % len(paragraphs) + 1 + i % 13]))
        docs[-1] += f" (page {len(docs)})"  # every document differs
        total += len(docs[-1])
        i += 7
    return docs


def _fineweb_records(docs):
    """Rows with FineWeb-Edu's columns (text first; the others are ignored)."""
    return [
        {
            "text": d,
            "id": f"<urn:uuid:{i:08d}>",
            "dump": "CC-MAIN-2024-10",
            "url": f"https://example.org/{i}",
            "language": "en",
            "language_score": 0.97,
            "token_count": len(d) // 4,
            "score": 3.2,
            "int_score": 3,
        }
        for i, d in enumerate(docs)
    ]


def _write_fineweb(folder, docs, fmt, files=6):
    folder.mkdir()
    rows = _fineweb_records(docs)
    per = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * per : (k + 1) * per]
        path = folder / f"000_{k:05d}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in part))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(part), path, row_group_size=500)
    return folder


def _with_shards(cache, n):
    """The temp folder of a preparation that has recorded at least n train shards, once there is one."""
    for tmp in _temp_folders(cache):
        try:
            progress = json.loads((tmp / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        if len(progress.get("train", {}).get("shards", [])) >= n:
            return tmp
    return None


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_fineweb_format_folder_resumes_after_a_kill(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    docs = _fineweb_docs(9_000_000)  # above POOL_MIN_BYTES: tokenized by a pool of 2
    folder = _write_fineweb(tmp_path / "fineweb", docs, fmt)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "core.data", "--data", str(folder), "--data-cache", str(cache)]
    cmd += ["--shard-tokens", "250000", "--val-fraction", "0.05", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = wait_for(lambda: _with_shards(cache, 2) or proc.poll() is not None, 180, "two shards written")
    assert proc.poll() is None, "the preparation ended before it could be interrupted"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the test means to kill a preparation that tokenizes in a pool"
    proc.kill()
    proc.wait(timeout=30)
    wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 30, "orphans")
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp.glob("train-*.bin")}

    again = run_cmd(cmd, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming the interrupted preparation in {tmp}" in again.stdout
    out = cache / again.stdout.splitlines()[-1].split()[0].rsplit("/", 1)[-1]
    for name, stat in kept.items():  # the shards written before the kill were kept, not written again
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat
    assert _temp_folders(cache) == []
    expected = _reference(docs)
    assert np.array_equal(_all_tokens(out), expected)
    assert read_meta(out)["val_tokens"] == int(len(expected) * 0.05)
    assert len(read_meta(out)["shards"]["train"]) > len(kept)


class _FakeStream:
    """Stands in for `datasets.load_dataset(..., streaming=True)`: rows of FineWeb-Edu's format, and a network
    that fails once after `fail_after` rows."""

    def __init__(self, docs, fail_after=None):
        self.docs, self.fail_after, self.calls = docs, fail_after, []

    def load_dataset(self, path, name=None, split=None, streaming=False):
        self.calls.append((path, name, split, streaming))
        fail_after, self.fail_after = self.fail_after, None
        return self._rows(fail_after)

    def _rows(self, fail_after):
        for i, row in enumerate(_fineweb_records(self.docs)):
            if i == fail_after:
                raise ConnectionError("Read timed out")
            yield row


@pytest.fixture
def fake_datasets(monkeypatch):
    def install(stream):
        module = types.ModuleType("datasets")
        module.load_dataset = stream.load_dataset
        monkeypatch.setitem(sys.modules, "datasets", module)
        return stream

    return install


FINEWEB = "hf:HuggingFaceFW/fineweb-edu"
PROGRESS_LINE = re.compile(r"  train: tokenized [\d,]+ / [\d,]+ tokens \(\d+\.\d%\), [\d,]+ tok/s, ETA \d+:\d\d:\d\d$")


def test_a_stream_with_a_budget_resumes_after_a_network_error(tmp_path, fake_datasets, monkeypatch):
    docs = _fineweb_docs(600_000)
    stream = fake_datasets(_FakeStream(docs, fail_after=len(docs) // 2))
    monkeypatch.setattr(data, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(data, "CHUNK_CHARS", 5_000)  # small tasks, so shards are written before the error
    budget, cache, logs = 120_000, tmp_path / "cache", []
    kw = dict(data_config="sample-10BT", token_budget=budget, val_fraction=0.01, workers=1, shard_tokens=10_000)
    with pytest.raises(data.StreamError, match="Read timed out.*a rerun resumes"):
        prepare(FINEWEB, cache, log=logs.append, **kw)
    assert stream.calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    (tmp,) = _temp_folders(cache)
    kept = {p.name: p.stat().st_mtime_ns for p in tmp.glob("train-*.bin")}
    assert len(kept) >= 3 and any("run the same command again to resume" in m for m in logs)
    assert any(PROGRESS_LINE.match(m) for m in logs), logs

    logs.clear()
    out = prepare(FINEWEB, cache, log=logs.append, **kw)
    assert any(f"resuming the interrupted preparation in {tmp}" in m for m in logs), logs
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert np.array_equal(_all_tokens(out), _reference(docs)[:budget])  # the first `budget` tokens of the stream
    meta = read_meta(out)
    assert (meta["train_tokens"], meta["val_tokens"]) == (budget - 1200, 1200)
    assert _temp_folders(cache) == []
    monkeypatch.delitem(sys.modules, "datasets")
    assert prepare(FINEWEB, cache, **kw) == out  # a prepared cache is used without the datasets library


def test_disk_use_is_stated_and_checked_before_it_starts(tmp_path, fake_datasets):
    stream = fake_datasets(_FakeStream(_fineweb_docs(20_000)))
    cache, logs = tmp_path / "cache", []
    free = data.shutil.disk_usage(tmp_path).free
    try:
        prepare(FINEWEB, cache, data_config="sample-10BT", token_budget=10**10, log=logs.append, workers=1)
    except DataError as e:  # this disk has less than 20 GB free
        assert free < 20e9 and "not enough disk space" in str(e)
    assert any(m.startswith(f"this will write ~20.0 GB for 10B tokens to {cache}; free: ") for m in logs), logs

    stream.calls.clear()
    with pytest.raises(DataError, match=r"not enough disk space: preparing needs ~20,000,000.0 GB in .*--data-cache"):
        prepare(FINEWEB, cache, data_config="sample-10BT", token_budget=10**16, log=lambda _: None)
    assert stream.calls == [] and _temp_folders(cache) == []  # refused before streaming anything

    (tmp_path / "c.txt").write_text("local text " * 3000)  # a local source: an estimate from its size
    logs.clear()
    prepare(str(tmp_path / "c.txt"), cache, log=logs.append)
    assert any(re.match(r"this will write ~0\.0 MB for ~11K tokens to ", m) for m in logs), logs


def test_a_stream_needs_a_budget(tmp_path, fake_datasets):
    fake_datasets(_FakeStream(["x"]))
    with pytest.raises(DataError, match="set a token budget with --data-token-budget"):
        prepare(FINEWEB, tmp_path / "cache", data_config="sample-10BT")


@pytest.mark.parametrize("fail", ["tail", "truncate", "rename"])
def test_a_kill_while_splitting_off_val_is_redone(tmp_path, monkeypatch, fail):
    """The last step moves the val tail out of the train shards; interrupted at any point, a rerun completes it."""
    real_replace, real_truncate, calls = os.replace, os.truncate, []
    real_split = data._Build.split_off_val

    def replace(src, dst):
        calls.append(dst)
        if fail == ("tail" if len(calls) == 1 else "rename" if len(calls) == 4 else None):
            raise KeyboardInterrupt
        real_replace(src, dst)

    def truncate(path, length):
        if fail == "truncate":
            raise KeyboardInterrupt
        real_truncate(path, length)

    def split_off_val(self, n_val):
        with monkeypatch.context() as m:
            m.setattr(data.os, "replace", replace)
            m.setattr(data.os, "truncate", truncate)
            return real_split(self, n_val)

    monkeypatch.setattr(data._Build, "split_off_val", split_off_val)
    kw = dict(log=lambda _: None, shard_tokens=TINY, val_fraction=0.0314)  # the cut falls inside a shard
    with pytest.raises(KeyboardInterrupt):
        prepare("shakespeare", tmp_path / "cache", **kw)
    monkeypatch.setattr(data._Build, "split_off_val", real_split)
    out = prepare("shakespeare", tmp_path / "cache", **kw)
    expected = _reference([BUNDLED["shakespeare"].read_text()])
    n_val = int(len(expected) * 0.0314)
    assert np.array_equal(_split_tokens(out, "train"), expected[:-n_val])
    assert np.array_equal(_split_tokens(out, "val"), expected[-n_val:])
    assert all(s["tokens"] == TINY for s in read_meta(out)["shards"]["val"][1:-1])
