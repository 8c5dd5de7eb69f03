"""Data preparation (real files, real tokenizer) and the rank-aware batch loader."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import data
from core.data import BUNDLED, BatchLoader, DataError, prepare, read_meta
from core.tokenizer import encode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    return prepare("shakespeare", tmp_path_factory.mktemp("cache"), log=lambda _: None)


def _tokens(cache, split):
    return np.concatenate([np.fromfile(cache / s["file"], dtype=np.uint16) for s in read_meta(cache)["shards"][split]])


def test_prepare_shakespeare(shakespeare):
    meta = read_meta(shakespeare)
    text = BUNDLED["shakespeare"].read_text()
    expected = encode(text, allow_special=False) + [50256]
    train, val = _tokens(shakespeare, "train"), _tokens(shakespeare, "val")
    assert meta["train_tokens"] + meta["val_tokens"] == len(expected)
    assert meta["val_tokens"] == int(len(expected) * 0.1)
    assert np.array_equal(np.concatenate([train, val]), np.asarray(expected, dtype=np.uint16))
    assert meta["tokenizer"] and meta["source"] == "shakespeare" and meta["dtype"] == "uint16"


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("hello world. " * 200)
    logs = []
    a = prepare(str(src), tmp_path / "cache", log=logs.append)
    assert any("preparing" in m for m in logs)
    logs.clear()
    assert prepare(str(src), tmp_path / "cache", log=logs.append) == a and logs == []  # reused, no work
    src.write_text("other words here. " * 200)  # new size + mtime -> a new cache
    assert prepare(str(src), tmp_path / "cache", log=lambda _: None) != a
    assert prepare(str(src), tmp_path / "cache", val_fraction=0.2, log=lambda _: None) != a


def test_pool_and_chunking_give_the_same_tokens(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = BUNDLED["shakespeare"].read_text()[:300_000]
    (folder / "a.txt").write_text(text)
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["first doc", "second doc"]))
    single = prepare(str(folder), tmp_path / "one", workers=1, log=lambda _: None)
    monkeypatch.setattr(data, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(data, "CHUNK_CHARS", 20_000)  # 15 chunks for the worker pool
    pooled = prepare(str(folder), tmp_path / "pool", workers=2, log=lambda _: None)
    for split in ("train", "val"):
        assert np.array_equal(_tokens(single, split), _tokens(pooled, split))
    all_tokens = np.concatenate([_tokens(single, "train"), _tokens(single, "val")])
    assert (all_tokens == 50256).sum() == 3  # one <|endoftext|> after each document
    assert encode("second doc")[-1] == all_tokens[-2]


def test_separate_val_source_and_token_budget(tmp_path):
    (tmp_path / "t.txt").write_text("training text " * 500)
    (tmp_path / "v.txt").write_text("validation text " * 50)
    cache = prepare(
        str(tmp_path / "t.txt"), tmp_path / "c", val_data=str(tmp_path / "v.txt"), token_budget=300, log=lambda _: None
    )
    meta = read_meta(cache)
    assert meta["train_tokens"] == 300  # the budget caps the source
    assert meta["val_tokens"] == len(encode("validation text " * 50)) + 1  # + <|endoftext|>


def test_loader_ranks_are_disjoint_and_match_single_process(shakespeare):
    B, T, world, accum = 4, 32, 2, 3
    single = BatchLoader(shakespeare, "train", B, T, seed=7)
    ranks = [BatchLoader(shakespeare, "train", B, T, seed=7) for _ in range(world)]
    for step in range(3):
        position = step * accum * world
        one = {tuple(r) for k in range(accum * world) for r in single.batch(position + k)[0].tolist()}
        per_rank = [
            {tuple(r) for k in range(accum) for r in ranks[rank].batch(position + k * world + rank)[0].tolist()}
            for rank in range(world)
        ]
        assert not per_rank[0] & per_rank[1]
        assert per_rank[0] | per_rank[1] == one
    x, y = single.batch(5)
    assert x.shape == (B, T) and x.dtype.is_floating_point is False
    assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())  # y is x shifted by one token


def test_loader_is_deterministic_and_reshuffles_each_epoch(shakespeare):
    a = BatchLoader(shakespeare, "train", 8, 64, seed=1)
    b = BatchLoader(shakespeare, "train", 8, 64, seed=1)
    assert all(np.array_equal(a.batch(g)[0], b.batch(g)[0]) for g in (0, 3, 1, 2000))
    n = a.batches_per_epoch
    assert a.epoch_of(n - 1) == 0 and a.epoch_of(n) == 1
    assert not np.array_equal(a.batch(0)[0], a.batch(n)[0])  # epoch 1: another offset and order
    assert not np.array_equal(a.batch(0)[0], BatchLoader(shakespeare, "train", 8, 64, seed=2).batch(0)[0])
    epoch0 = {tuple(r) for g in range(n) for r in a.batch(g)[0].tolist()}
    assert len(epoch0) == n * 8  # an epoch never repeats a window


def test_val_loader_is_ordered_and_wraps(shakespeare):
    v = BatchLoader(shakespeare, "val", 4, 32, shuffle=False)
    val = _tokens(shakespeare, "val")
    assert np.array_equal(v.batch(0)[0][0].numpy(), val[:32])
    assert np.array_equal(v.batch(0)[0][1].numpy(), val[32:64])
    assert np.array_equal(v.batch(10**6)[0].shape, (4, 32))  # wraps instead of failing


# --- bad input -----------------------------------------------------------------------------------


def _no_partial_cache(cache):
    return not cache.exists() or all(not p.name.startswith(".") for p in cache.iterdir())


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="not found.*shakespeare"):
        prepare(str(tmp_path / "nope.txt"), tmp_path / "cache")


def test_empty_corpus_leaves_no_cache(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"is empty \(0 tokens\); give a corpus"):
        prepare(str(tmp_path / "empty.txt"), tmp_path / "cache", log=lambda _: None)
    assert _no_partial_cache(tmp_path / "cache") and not any((tmp_path / "cache").iterdir())


def test_non_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok " * 100 + b"\xff\xfe end")
    logs = []
    cache = prepare(str(tmp_path / "bad.txt"), tmp_path / "cache", log=logs.append)
    assert any("not valid UTF-8: 102 byte(s) replaced" in m for m in logs)
    assert read_meta(cache)["train_tokens"] > 0


def test_corpus_shorter_than_a_batch(tmp_path):
    (tmp_path / "short.txt").write_text("just a few words of text " * 20)
    cache = prepare(str(tmp_path / "short.txt"), tmp_path / "cache", log=lambda _: None)
    with pytest.raises(DataError, match="fewer than one batch.*lower --batch-size"):
        BatchLoader(cache, "train", 16, 64)


def test_unsupported_inputs(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="use a .txt/.jsonl/.parquet file"):
        prepare(str(tmp_path / "x.csv"), tmp_path / "cache")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="holds no"):
        prepare(str(tmp_path / "d"), tmp_path / "cache")
    (tmp_path / "j.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match="line 1 has no string 'text' field"):
        prepare(str(tmp_path / "j.jsonl"), tmp_path / "cache", log=lambda _: None)
    assert _no_partial_cache(tmp_path / "cache")


def test_optional_libraries_missing_give_install_hints(tmp_path):
    pytest.importorskip("torch")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pip install datasets"):
            prepare("hf:Skylion007/openwebtext", tmp_path / "cache", token_budget=1000, log=lambda _: None)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="pip install pyarrow"):
            prepare(str(tmp_path / "t.parquet"), tmp_path / "cache", log=lambda _: None)
    assert _no_partial_cache(tmp_path / "cache")


def test_cli_prepares_and_reports(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("some text for the command line " * 100)
    out = subprocess.run(
        [sys.executable, "-m", "core.data", "--data", str(tmp_path / "c.txt"), "--data-cache", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "train=" in out.stdout
    assert data.main(["--data", str(tmp_path / "missing"), "--data-cache", str(tmp_path / "cache")]) == 2
    assert "not found" in capsys.readouterr().err
