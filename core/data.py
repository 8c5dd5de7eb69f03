"""Corpus -> uint16 token shards + meta.json, and a resumable, rank-aware batch loader.

Preparing: documents are tokenized with the GPT-2 tokenizer, joined with <|endoftext|>, split into
train/val (the last val_fraction of the token stream, or a separate val source) and written as raw
uint16 shards (memory-mapped when training). The cache folder name is a hash of everything that
changes the tokens (source files with mtime and size, tokenizer, split settings), so preparing the
same source twice reuses it. A cache is built in a temporary folder and renamed into place: an
error or a kill never leaves a partial cache behind.

Loading: every process computes the same seeded order of micro-batches (one global order per epoch);
micro-batch number g of that order is a pure function of g. A process of rank r at micro-step k of
an optimizer step takes g = position + k * world + r. So 2 processes x accumulation A see exactly
the sequences 1 process x 2A sees, ranks never overlap, and the loader state is one counter.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from core.config import EOT_TOKEN, TrainConfig
from core.tokenizer import encode, tokenizer_hash

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = {"shakespeare": ROOT / "data" / "tinyshakespeare.txt"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
CACHE_VERSION = 1
SHARD_TOKENS = 100_000_000  # 200 MB per shard (the default of --shard-tokens)
POOL_MIN_BYTES = 8_000_000  # below this, one process tokenizes faster than a pool starts
CHUNK_CHARS = 1_000_000  # text handed to one tokenizer worker at a time
TMP_MARK = ".tmp-"  # a cache being built is <cache_dir>/.<name>.tmp-XXXX until it is renamed into place
# flock()ed by the preparer for its whole life: the kernel drops the lock when the process dies, however it
# dies, so a temp folder whose lock nobody holds was left by a preparation that can never finish it.
LOCK_FILE = ".lock"
UNLOCKED_GRACE_S = 60  # a temp folder without a lock file this young may be one being created this instant

Log = Callable[[str], None]


class DataError(ValueError):
    """A data source that cannot be used; the message names the problem and the fix."""


# --- reading sources ------------------------------------------------------------------------------


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # how surrogateescape marks each byte that is not UTF-8


def _decode(raw: bytes, path: Path, log: Log) -> str:
    """UTF-8 text with each invalid byte replaced by U+FFFD, saying how many were replaced."""
    text, bad = _ESCAPED_BYTE.subn("\ufffd", raw.decode("utf-8", errors="surrogateescape"))
    if bad:
        log(f"warning: {path} is not valid UTF-8: {bad} byte(s) replaced by U+FFFD")
    return text


def source_files(spec: str) -> list[Path]:
    """The files behind a local source spec ("shakespeare", a file or a folder), sorted."""
    path = BUNDLED.get(spec, Path(spec).expanduser())
    if not path.exists():
        raise DataError(
            f"data source {spec!r} not found; give 'shakespeare', a .txt/.jsonl/.parquet file or a folder "
            "of them, or 'hf:<dataset name>'"
        )
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise DataError(f"{path} is a {path.suffix or 'suffix-less'} file; use a {'/'.join(TEXT_SUFFIXES)} file")
        return [path.resolve()]
    files = sorted(p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files; put the corpus there")
    return files


def _read_documents(path: Path, log: Log) -> Iterator[str]:
    if path.suffix == ".txt":
        yield _decode(path.read_bytes(), path, log)
    elif path.suffix == ".jsonl":
        text = _decode(path.read_bytes(), path, log)
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n} is not valid JSON ({e}); fix or remove that line") from e
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path} line {n} has no string 'text' field (found {keys}); each line needs one")
            yield record["text"]
    else:  # .parquet
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from e
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise DataError(f"{path} has no 'text' column (columns: {table.column_names})")
        yield from (t for t in table.column("text").to_pylist() if t)


def _hf_documents(name: str, config: str | None, budget: int | None, log: Log) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"'hf:{name}' needs the optional datasets library: pip install datasets") from e
    if not budget:
        raise DataError(f"'hf:{name}' is streamed; set a token budget with --data-token-budget (e.g. 100000000)")
    try:
        stream = datasets.load_dataset(name, config, split="train", streaming=True)
        for record in stream:
            text = record.get("text")
            if isinstance(text, str) and text:
                yield text
    except DataError:
        raise
    except Exception as e:  # network, auth, unknown dataset: the library raises many kinds
        raise DataError(
            f"could not stream Hugging Face dataset {name!r} (config {config!r}): {e}. "
            "Check the name and config and that this machine is online (HF_HUB_OFFLINE unset)"
        ) from e


def _split_chunks(text: str) -> Iterator[str]:
    """Cut a long document after a lone newline between non-spaces, where GPT-2's pre-tokenizer splits
    anyway (so the tokens equal those of the whole text; a run of whitespace would merge differently)."""
    start = 0
    while len(text) - start > CHUNK_CHARS:
        cut = text.find("\n", start + CHUNK_CHARS)
        while cut != -1 and (cut + 1 >= len(text) or text[cut + 1].isspace() or text[cut - 1].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start : cut + 1]
        start = cut + 1
    yield text[start:]


def _pieces(documents: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(text chunk, ends a document) pairs; an <|endoftext|> follows each document's last chunk."""
    for doc in documents:
        if not doc.strip():
            continue  # an empty document would add a lone <|endoftext|>
        chunks = list(_split_chunks(doc))
        for i, chunk in enumerate(chunks):
            yield chunk, i == len(chunks) - 1


def _encode_piece(piece: tuple[str, bool]) -> np.ndarray:
    text, last = piece
    ids = encode(text, allow_special=False)  # "<|endoftext|>" typed in a corpus is just text
    if last:
        ids.append(EOT_TOKEN)
    return np.asarray(ids, dtype=np.uint16)


# --- writing the cache ----------------------------------------------------------------------------


class _StreamWriter:
    """Appends uint16 tokens to one raw file, counting them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115
        self.n = 0

    def write(self, arr: np.ndarray) -> None:
        self.f.write(arr.tobytes())
        self.n += len(arr)

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _tokenize_to(
    documents: Iterator[str], out: Path, workers: int, total_bytes: int | None, budget: int | None, log: Log
) -> int:
    writer = _StreamWriter(out)
    t0, last_report = time.time(), 0.0
    pool = None
    if workers > 1 and (total_bytes is None or total_bytes >= POOL_MIN_BYTES):
        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        pieces = _pieces(documents)
        arrays = pool.imap(_encode_piece, pieces, chunksize=4) if pool else map(_encode_piece, pieces)
        for arr in arrays:
            if budget is not None and writer.n + len(arr) >= budget:
                writer.write(arr[: budget - writer.n])
                break
            writer.write(arr)
            if time.time() - last_report > 5:
                last_report = time.time()
                log(f"  tokenized {writer.n:,} tokens ({writer.n / (last_report - t0 + 1e-9):,.0f} tok/s)")
    finally:
        if pool:
            pool.terminate()
        writer.close()
    return writer.n


def _write_shards(
    raw: Path, start: int, end: int, out_dir: Path, split: str, shard_tokens: int
) -> list[dict[str, Any]]:
    tokens = np.memmap(raw, dtype=np.uint16, mode="r")
    shards = []
    for i, lo in enumerate(range(start, end, shard_tokens)):
        hi = min(end, lo + shard_tokens)
        name = f"{split}-{i:05d}.bin"
        with open(out_dir / name, "wb") as f:
            f.write(tokens[lo:hi].tobytes())
            f.flush()
            os.fsync(f.fileno())
        shards.append({"file": name, "tokens": hi - lo})
    del tokens
    return shards


@dataclass
class _Source:
    spec: str
    key: dict[str, Any]  # what identifies the tokens (goes into the cache hash)
    documents: Callable[[Log], Iterator[str]]
    total_bytes: int | None


def _make_source(spec: str, hf_config: str | None, budget: int | None) -> _Source:
    if spec.startswith("hf:"):
        name = spec[3:]
        if not name:
            raise DataError("give a dataset after 'hf:', e.g. hf:HuggingFaceFW/fineweb-edu")
        return _Source(
            spec,
            {"hf": name, "config": hf_config, "budget": budget},
            lambda log: _hf_documents(name, hf_config, budget, log),
            None,
        )
    files = source_files(spec)
    key = {"files": [[str(p), p.stat().st_mtime_ns, p.stat().st_size] for p in files], "budget": budget}

    def documents(log: Log) -> Iterator[str]:
        for p in files:
            yield from _read_documents(p, log)

    return _Source(spec, key, documents, sum(p.stat().st_size for p in files))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(root: Path, final: Path) -> tuple[Path, int]:
    """A fresh temp folder for `final` and the fd of its lock, held until the fd is closed."""
    while True:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}{TMP_MARK}"))
        fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, tmp / LOCK_FILE):  # else a sweep took the lock before this process did: try again
            os.write(fd, f"{os.getpid()}\n".encode())  # for a person wondering who is writing here
            return tmp, fd
        os.close(fd)


def _lock_if_stale(folder: Path) -> int | None:
    """The fd of folder's lock when no live preparer holds it (close it to release), else None."""
    try:
        if not (folder / LOCK_FILE).exists() and time.time() - folder.stat().st_mtime < UNLOCKED_GRACE_S:
            return None
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # gone meanwhile, or not a folder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if _same_file(fd, folder / LOCK_FILE):
        return fd
    os.close(fd)  # its preparer finished (renamed the folder) or another sweep removed it
    return None


def _sweep_stale(root: Path, log: Log) -> None:
    """Remove the temp folders of preparations that died (SIGKILL, power loss), never those of live ones."""
    for folder in root.glob(f".*{TMP_MARK}*"):
        fd = _lock_if_stale(folder)
        if fd is None:
            continue
        try:
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder}, left by an interrupted preparation ({size / 1e6:,.1f} MB)")
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write meta.json and rename tmp to final, durably: after a power loss the cache is complete or absent."""
    with open(tmp / "meta.json", "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    (tmp / LOCK_FILE).unlink()  # the lock itself stays held (by the open fd) until prepare returns
    _fsync_dir(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process (e.g. another node's rank 0) finished the same cache first
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(final.parent)


def _cache_name(spec: str, digest: str) -> str:
    stem = Path(spec[3:] if spec.startswith("hf:") else spec).name or "data"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)[:40]
    return f"{safe}-{digest[:12]}"


def prepare(
    data: str = "shakespeare",
    cache_dir: str | Path = "data/cache",
    val_fraction: float = 0.1,
    val_data: str | None = None,
    data_config: str | None = None,
    token_budget: int | None = None,
    workers: int | None = None,
    log: Log = print,
    shard_tokens: int = SHARD_TOKENS,
) -> Path:
    """Tokenize a source into <cache_dir>/<name>-<hash>/ (train/val shards + meta.json); reuse if there."""
    train_src = _make_source(data, data_config, token_budget)
    val_src = _make_source(val_data, data_config, token_budget) if val_data else None
    if not val_src and not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; or give a separate --val-data")
    key = {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_hash(),
        "train": train_src.key,
        "val": val_src.key if val_src else None,
        "val_fraction": None if val_src else val_fraction,
        "shard_tokens": shard_tokens,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    root = Path(cache_dir)
    final = root / _cache_name(data, digest)
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 16)
    _sweep_stale(root, log)
    tmp, lock = _new_temp(root, final)
    try:
        log(f"preparing {data!r} -> {final} ({workers} worker(s))")
        raw = tmp / "all.raw"
        n = _tokenize_to(train_src.documents(log), raw, workers, train_src.total_bytes, token_budget, log)
        if n == 0:
            raise DataError(f"data source {data!r} is empty (0 tokens); give a corpus with text in it")
        if val_src:
            val_raw = tmp / "val.raw"
            nv = _tokenize_to(val_src.documents(log), val_raw, workers, val_src.total_bytes, token_budget, log)
            if nv < 2:
                raise DataError(f"validation source {val_data!r} has {nv} token(s); it needs at least 2")
            train = _write_shards(raw, 0, n, tmp, "train", shard_tokens)
            val = _write_shards(val_raw, 0, nv, tmp, "val", shard_tokens)
            val_raw.unlink()
        else:
            n_val = int(n * val_fraction)
            if n_val < 2 or n - n_val < 2:
                raise DataError(
                    f"data source {data!r} has only {n} tokens: too few to split into train and val; "
                    "give a bigger corpus"
                )
            train = _write_shards(raw, 0, n - n_val, tmp, "train", shard_tokens)
            val = _write_shards(raw, n - n_val, n, tmp, "val", shard_tokens)
        raw.unlink()
        meta = {
            "source": data,
            "val_source": val_data,
            "key": key,
            "tokenizer": tokenizer_hash(),
            "dtype": "uint16",
            "train_tokens": sum(s["tokens"] for s in train),
            "val_tokens": sum(s["tokens"] for s in val),
            "shards": {"train": train, "val": val},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _publish(tmp, final, meta)
        log(f"prepared {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens")
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _data_key(key: dict[str, Any]) -> str:
    """What identifies the tokens of a cache: its key without the shard size, which changes no batch."""
    tokens_only = {k: v for k, v in key.items() if k != "shard_tokens"}
    return hashlib.sha256(json.dumps(tokens_only, sort_keys=True).encode()).hexdigest()[:16]


def prepare_for(cfg: TrainConfig, log: Log = print) -> Path:
    return prepare(
        cfg.data,
        cfg.data_cache,
        cfg.val_fraction,
        cfg.val_data,
        cfg.data_config,
        cfg.data_token_budget,
        log=log,
        shard_tokens=cfg.shard_tokens,
    )


def read_meta(cache: str | Path) -> dict[str, Any]:
    path = Path(cache) / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"data cache {path} is missing or corrupt ({e}); delete {Path(cache)} and prepare again") from e


# --- loading batches ------------------------------------------------------------------------------


class BatchLoader:
    """Micro-batches (x, y) of shape (batch_size, seq_len) from one split of a prepared cache.

    Training (shuffle=True): each epoch draws a seeded random offset in [0, seq_len) and a seeded
    permutation of the windows starting at offset + i * seq_len in every shard; micro-batch g is
    a pure function of g, so all ranks agree on the order without talking. Validation
    (shuffle=False): windows in order from offset 0, wrapping around.
    """

    def __init__(
        self,
        cache: str | Path,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        meta = read_meta(cache)
        self.meta, self.split = meta, split
        import torch  # here, not at the top: tokenizer workers import this module and need no torch

        self.B, self.T, self.seed, self.shuffle = batch_size, seq_len, seed, shuffle
        self.device = torch.device(device)
        self.shards = [np.memmap(Path(cache) / s["file"], dtype=np.uint16, mode="r") for s in meta["shards"][split]]
        # Where each shard starts in the split's token stream: windows run across shard boundaries, so the
        # batches do not depend on the shard size.
        self.bounds = np.concatenate([[0], np.cumsum([len(s) for s in self.shards], dtype=np.int64)])
        self.data_key = _data_key(meta["key"])
        n_min = self._window_count(seq_len - 1 if shuffle else 0)
        need = batch_size if shuffle else 1
        if n_min < need:
            raise DataError(
                f"the {split} split of {meta['source']!r} has {int(self.bounds[-1]):,} tokens, fewer than one "
                f"batch of batch_size x (seq_len + 1) = {batch_size} x {seq_len + 1} tokens; use a bigger corpus or "
                "lower --batch-size / --seq-len"
            )
        # Every epoch has the same number of micro-batches (that of the largest offset), so the epoch
        # of micro-batch g is simply g // batches_per_epoch.
        self.batches_per_epoch = n_min // batch_size if shuffle else max(1, n_min // batch_size)
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    def _window_count(self, offset: int) -> int:
        """Windows of seq_len + 1 tokens that start at offset + i * seq_len in the split's token stream."""
        return max(0, (int(self.bounds[-1]) - 1 - offset) // self.T)

    def _epoch_plan(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        offset = int(rng.integers(self.T)) if rng is not None else 0
        n = self._window_count(offset)
        self._order = rng.permutation(n) if rng is not None else np.arange(n)
        self._offset, self._epoch = offset, epoch

    def window(self, w: int) -> np.ndarray:
        """Tokens of window w (seq_len + 1 of them) in the current epoch's numbering."""
        lo = self._offset + w * self.T
        hi = lo + self.T + 1
        first = int(np.searchsorted(self.bounds, lo, side="right")) - 1  # the shards holding tokens lo .. hi - 1
        last = int(np.searchsorted(self.bounds, hi - 1, side="right")) - 1
        if first == last:
            b = int(self.bounds[first])
            return self.shards[first][lo - b : hi - b]
        parts = []
        for i in range(first, last + 1):
            b = int(self.bounds[i])
            parts.append(self.shards[i][max(lo - b, 0) : hi - b])
        return np.concatenate(parts)

    def batch(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global micro-batch g as (x, y) int64 tensors on the loader's device."""
        if self.shuffle:
            epoch, j = divmod(g, self.batches_per_epoch)
            self._epoch_plan(epoch)
            ids = self._order[j * self.B : (j + 1) * self.B]
        else:
            self._epoch_plan(0)
            n = len(self._order)
            ids = self._order[[(g * self.B + i) % n for i in range(self.B)]]
        import torch

        buf = torch.from_numpy(np.stack([self.window(int(w)) for w in ids]).astype(np.int64))
        x, y = buf[:, :-1], buf[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def epoch_of(self, g: int) -> int:
        return g // self.batches_per_epoch


def main(argv: list[str] | None = None) -> int:
    """`python -m core.data --data SOURCE`: prepare a cache ahead of training and print its folder."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m core.data", description=main.__doc__)
    p.add_argument("--data", default="shakespeare")
    p.add_argument("--data-cache", default="data/cache")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-data", default=None)
    p.add_argument("--data-config", default=None)
    p.add_argument("--data-token-budget", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, help="tokens per shard file (2 bytes each)")
    a = p.parse_args(argv)
    if a.shard_tokens < 1:
        p.error("--shard-tokens must be >= 1")
    try:
        out = prepare(
            a.data,
            a.data_cache,
            a.val_fraction,
            a.val_data,
            a.data_config,
            a.data_token_budget,
            a.workers,
            shard_tokens=a.shard_tokens,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_meta(out)
    print(f"{out}  train={meta['train_tokens']:,} val={meta['val_tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
