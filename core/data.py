"""Corpus -> uint16 token shards + meta.json, and a resumable, rank-aware batch loader.

Preparing: documents are tokenized with the GPT-2 tokenizer (by a pool of processes), joined with
<|endoftext|>, split into train/val (the last val_fraction of the token stream, or a separate val
source) and written as raw uint16 shards of shard_tokens (memory-mapped when training) as the tokens
arrive. The cache folder name is a hash of everything that changes the tokens or their files (source
files with mtime and size, tokenizer, split settings, shard size), so preparing the same source twice
reuses it. A cache is built in a temporary folder, locked by its preparer, and renamed into place
once complete: a reader never sees a partial cache. After each shard the temp folder records how far
it got, so a preparation that is killed resumes there when run again; a temp folder that no live
process holds and that cannot be resumed is removed by the next preparation.

Loading: every process computes the same seeded order of micro-batches (one global order per epoch);
micro-batch number g of that order is a pure function of g. A process of rank r at micro-step k of
an optimizer step takes g = position + k * world + r. So 2 processes x accumulation A see exactly
the sequences 1 process x 2A sees, ranks never overlap, and the loader state is one counter.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import torch

from core.config import EOT_TOKEN, TrainConfig
from core.runs import write_text_atomic
from core.tokenizer import encode, tokenizer_hash

BUNDLED = {"shakespeare": Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"}  # package data
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
CACHE_VERSION = 1
SHARD_TOKENS = 100_000_000  # 200 MB per shard (the default of --shard-tokens)
POOL_MIN_BYTES = 8_000_000  # below this, one process tokenizes faster than a pool starts
CHUNK_CHARS = 1_000_000  # text handed to one tokenizer worker at a time
MAX_LISTED_FILES = 100_000  # the UI lists a data folder at launch, walking no more entries than this
CHARS_PER_TOKEN = 3  # for disk estimates: GPT-2 averages about 4 characters of English per token; err high
PROGRESS_EVERY_S = 5.0  # between progress lines
PROGRESS_FILE = "progress.json"  # in a temp folder: the shards written so far and where the source stands
TMP_MARK = ".tmp-"  # a cache being built is <cache_dir>/.<name>.tmp-XXXX until it is renamed into place
# flock()ed by the preparer for its whole life: the kernel drops the lock when the process dies, however it
# dies, so a temp folder whose lock nobody holds was left by a preparation that can never finish it.
LOCK_FILE = ".lock"
UNLOCKED_GRACE_S = 60  # a temp folder without a lock file this young may be one being created this instant

Log = Callable[[str], None]


class DataError(ValueError):
    """A data source that cannot be used; the message names the problem and the fix."""


class StreamError(DataError):
    """A streamed source that broke off (network, server): the shards written are kept for a rerun."""


# --- reading sources ------------------------------------------------------------------------------


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # how surrogateescape marks each byte that is not UTF-8


def _decode(raw: bytes, path: Path, log: Log) -> str:
    """UTF-8 text with each invalid byte replaced by U+FFFD, saying how many were replaced."""
    text, bad = _ESCAPED_BYTE.subn("\ufffd", raw.decode("utf-8", errors="surrogateescape"))
    if bad:
        log(f"warning: {path} is not valid UTF-8: {bad} byte(s) replaced by U+FFFD")
    return text


def check_source(spec: str) -> Path:
    """The file or folder behind a local source spec, checked without listing a folder (cheap: fine per keystroke)."""
    path = BUNDLED.get(spec, Path(spec).expanduser())
    if not path.exists():
        raise DataError(
            f"data source {spec!r} not found; give 'shakespeare', a .txt/.jsonl/.parquet file or a folder "
            "of them, or 'hf:<dataset name>'"
        )
    if path.is_file() and path.suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path} is a {path.suffix or 'suffix-less'} file; use a {'/'.join(TEXT_SUFFIXES)} file")
    return path


def source_files(spec: str, limit: int | None = None) -> list[Path]:
    """The files behind a local source spec ("shakespeare", a file or a folder), sorted.

    With a limit (the UI's launch check), a folder is refused once more than `limit` entries were walked; the CLI
    walks all of it.
    """
    path = check_source(spec)
    if path.is_file():
        return [path.resolve()]
    files = []
    for n, p in enumerate(path.rglob("*"), 1):
        if limit is not None and n > limit:
            raise DataError(
                f"folder {path} holds more than {limit:,} files and folders; point at a smaller folder, or train on "
                "it from a terminal (python -m core.train --data FOLDER), which has no limit"
            )
        if p.is_file() and p.suffix in TEXT_SUFFIXES:
            files.append(p.resolve())
    files.sort()
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
        parquet = pq.ParquetFile(path)
        if "text" not in parquet.schema_arrow.names:
            raise DataError(f"{path} has no 'text' column (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(batch_size=1024, columns=["text"]):  # a FineWeb file is 2 GB: not at once
            yield from (t for t in batch.column(0).to_pylist() if t)


def _hf_documents(name: str, config: str | None) -> Iterator[str]:
    import datasets  # present: prepare checked (_Source.check)

    try:
        stream = datasets.load_dataset(name, config, split="train", streaming=True)
        for record in stream:
            text = record.get("text")
            if isinstance(text, str) and text:
                yield text
    except Exception as e:  # network, auth, unknown dataset: the library raises many kinds
        raise StreamError(
            f"could not stream Hugging Face dataset {name!r} (config {config!r}): {e}. Check the name and config "
            "and that this machine is online (HF_HUB_OFFLINE unset); a rerun resumes after the last shard written"
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


Piece = tuple[str, int, bool]  # (text, number of its document in the source, whether it ends the document)


def _pieces(documents: Iterator[str], first: int) -> Iterator[Piece]:
    """The chunks of documents numbered from `first`; an <|endoftext|> follows each document's last chunk."""
    for d, doc in enumerate(documents, first):
        if not doc.strip():
            continue  # an empty document would add a lone <|endoftext|>
        chunks = list(_split_chunks(doc))
        for i, chunk in enumerate(chunks):
            yield chunk, d, i == len(chunks) - 1


def _tasks(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped into about CHUNK_CHARS characters per worker task: short web documents one by one
    would cost more in messages between processes than in tokenizing."""
    group: list[Piece] = []
    chars = 0
    for piece in pieces:
        group.append(piece)
        chars += len(piece[0])
        if chars >= CHUNK_CHARS:
            yield group
            group, chars = [], 0
    if group:
        yield group


def _encode_task(task: list[Piece]) -> list[tuple[np.ndarray, int, bool]]:
    out = []
    for text, doc, last in task:
        ids = encode(text, allow_special=False)  # "<|endoftext|>" typed in a corpus is just text
        if last:
            ids.append(EOT_TOKEN)
        out.append((np.asarray(ids, dtype=np.uint16), doc, last))
    return out


def _in_order(fn: Callable[[Any], Any], tasks: Iterator[Any], pool: Any, depth: int) -> Iterator[Any]:
    """fn over tasks on a process pool, results in order, at most `depth` tasks in flight: a 10B-token stream
    is read only as fast as it is tokenized (Pool.imap would read all of it into memory ahead)."""
    if pool is None:
        yield from map(fn, tasks)
        return
    pending: deque[Any] = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# --- writing the cache ----------------------------------------------------------------------------


def _count(n: int) -> str:
    """10_000_000_000 -> '10B', 338_025 -> '338K'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Counted:
    """Documents passed through, counting their characters (how far into a local source we are)."""

    def __init__(self, documents: Iterator[str]) -> None:
        self.documents, self.chars = documents, 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> str:
        doc = next(self.documents)
        self.chars += len(doc)
        return doc


class _Progress:
    """A progress line every PROGRESS_EVERY_S seconds: tokens done / total, rate, ETA. The total is the token
    budget; without one, how much of a local source's text has been read stands in for it."""

    def __init__(self, log: Log, label: str, tokens: int, total: int | None, docs: _Counted, chars: int | None):
        self.log, self.label, self.tokens0, self.total = log, label, tokens, total
        self.docs, self.chars0, self.total_chars = docs, docs.chars, chars
        self.t0 = self.last = time.time()

    def update(self, tokens: int) -> None:
        now = time.time()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last, elapsed = now, max(now - self.t0, 1e-6)
        rate = (tokens - self.tokens0) / elapsed
        done, left = f"{tokens:,} tokens", []
        if self.total:
            done = f"{tokens:,} / {self.total:,} tokens ({min(tokens / self.total, 1):.1%})"
            left.append((self.total - tokens) / rate if rate else math.inf)
        if self.total_chars:
            chars = self.docs.chars
            if not self.total:
                done += f" ({min(chars / self.total_chars, 1):.1%} of the input)"
            chars_rate = (chars - self.chars0) / elapsed
            left.append(max(self.total_chars - chars, 0) / chars_rate if chars_rate else math.inf)
        eta = _duration(min(left)) if left and min(left) < math.inf else "?"
        self.log(f"  {self.label}: tokenized {done}, {rate:,.0f} tok/s, ETA {eta}")


class _ShardWriter:
    """One split's tokens, written as shard files of shard_tokens while they arrive.

    A shard is written as <name>.part, fsynced and renamed; then the progress file records the shards and where
    the source stands right after them (documents wholly written, tokens of the next one already written), so a
    preparation that is killed resumes from its last shard instead of from the start.
    """

    def __init__(
        self, tmp: Path, split: str, state: dict[str, Any], size: int, limit: int | None, save: Callable[[], None]
    ) -> None:
        self.tmp, self.split, self.state, self.size, self.limit, self.save = tmp, split, state, size, limit, save
        self.written = sum(s["tokens"] for s in state["shards"])
        self.doc, self.doc_tokens, self.drop = state["docs"], 0, state["skip"]
        self.part: BinaryIO | None = None
        self.in_part = 0

    @property
    def tokens(self) -> int:
        return self.written + self.in_part

    def _path(self, suffix: str = "") -> Path:
        return self.tmp / f"{self.split}-{len(self.state['shards']):05d}.bin{suffix}"

    def add(self, tokens: np.ndarray, doc: int, last: bool) -> bool:
        """Append the tokens of a piece of document `doc`; False once the token limit is reached."""
        if doc != self.doc:
            self.doc, self.doc_tokens, self.drop = doc, 0, 0
        skip = min(len(tokens), max(self.drop - self.doc_tokens, 0))  # in the shards of an earlier run already
        self.doc_tokens += skip
        tokens = tokens[skip:]
        if self.limit is not None:
            tokens = tokens[: self.limit - self.tokens]
        while len(tokens):
            if self.part is None:
                self.part = open(self._path(".part"), "wb")  # noqa: SIM115 (closed in _close_shard / close)
            take = tokens[: self.size - self.in_part]
            self.part.write(take.tobytes())
            self.in_part += len(take)
            self.doc_tokens += len(take)
            tokens = tokens[len(take) :]
            if self.in_part == self.size:
                ends_doc = last and not len(tokens)
                self._close_shard(self.doc + 1 if ends_doc else self.doc, 0 if ends_doc else self.doc_tokens)
        return self.limit is None or self.tokens < self.limit

    def _close_shard(self, docs: int, skip: int) -> None:
        assert self.part is not None
        self.part.flush()
        os.fsync(self.part.fileno())
        self.part.close()
        self.part = None
        os.replace(self._path(".part"), self._path())
        self.state["shards"].append({"file": self._path().name, "tokens": self.in_part})
        self.written, self.in_part = self.written + self.in_part, 0
        self.state.update(docs=docs, skip=skip)
        self.save()

    def finish(self) -> None:
        if self.in_part:
            self._close_shard(self.doc + 1, 0)
        self.state["done"] = True
        self.save()

    def close(self) -> None:
        """After an error: the partial shard is dropped (a rerun writes it again)."""
        if self.part is not None:
            self.part.close()
            self.part = None


@dataclass
class _Source:
    spec: str
    key: dict[str, Any]  # what identifies the tokens (goes into the cache hash)
    documents: Callable[[Log], Iterator[str]]
    total_chars: int | None  # about how much text a local source holds; None for a stream
    check: Callable[[], None] = lambda: None  # raises DataError when a library the source needs is missing

    def token_estimate(self, budget: int | None) -> int:
        if self.total_chars is None:
            return budget or 0  # a stream always has a budget (_make_source)
        guess = math.ceil(self.total_chars / CHARS_PER_TOKEN)
        return min(guess, budget) if budget else guess


def _text_chars(path: Path) -> int:
    """About how many characters of text a file holds: its size, or for parquet its uncompressed text column."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            md = pq.ParquetFile(path).metadata
            groups = (md.row_group(i) for i in range(md.num_row_groups))
            cols = (g.column(j) for g in groups for j in range(g.num_columns))
            return sum(c.total_uncompressed_size for c in cols if c.path_in_schema == "text")
        except (ImportError, OSError, ValueError):  # reading the file later says what is wrong with it
            pass
    return path.stat().st_size


def _make_source(spec: str, hf_config: str | None, budget: int | None) -> _Source:
    if spec.startswith("hf:"):
        name = spec[3:]
        if not name:
            raise DataError("give a dataset after 'hf:', e.g. hf:HuggingFaceFW/fineweb-edu")
        if not budget:
            raise DataError(f"'hf:{name}' is streamed; set a token budget with --data-token-budget (e.g. 100000000)")

        def check() -> None:
            try:
                import datasets  # noqa: F401
            except ImportError as e:
                raise DataError(f"'hf:{name}' needs the optional datasets library: pip install datasets") from e

        key = {"hf": name, "config": hf_config, "budget": budget}
        return _Source(spec, key, lambda log: _hf_documents(name, hf_config), None, check)
    files = source_files(spec)
    key = {"files": [[str(p), p.stat().st_mtime_ns, p.stat().st_size] for p in files], "budget": budget}

    def documents(log: Log) -> Iterator[str]:
        for p in files:
            yield from _read_documents(p, log)

    return _Source(spec, key, documents, sum(_text_chars(p) for p in files))


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


def _read_progress(folder: Path) -> dict[str, Any] | None:
    try:
        progress = json.loads((folder / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def _shards_written(progress: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [shard for split in ("train", "val") for shard in (progress or {}).get(split, {}).get("shards", [])]


def _claim_temp(root: Path, final: Path, digest: str, log: Log) -> tuple[Path, int, dict[str, Any]]:
    """The temp folder to build `final` in, its lock fd, and its progress: that of an interrupted preparation of
    the same cache when there is one (resumed), else a new one. Folders of dead preparations are removed on the
    way, except those of other caches that hold shards: rerunning their command resumes them."""
    ours, found = f".{final.name}{TMP_MARK}", None
    for folder in sorted(root.glob(f".*{TMP_MARK}*")):
        fd = _lock_if_stale(folder)
        if fd is None:
            continue  # a live preparer's
        progress = _read_progress(folder)
        if not found and folder.name.startswith(ours) and progress and progress.get("digest") == digest:
            found = folder, fd, progress
            continue
        size = _size(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
        if _shards_written(progress) and not folder.name.startswith(ours):
            log(f"keeping {folder} ({size}): an interrupted preparation that its command resumes (or delete it)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder} ({size}), left by an interrupted preparation")
        os.close(fd)
    if not found:
        tmp, fd = _new_temp(root, final)
        return tmp, fd, {"digest": digest}
    tmp, fd, progress = found
    for part in tmp.glob("*.part"):
        part.unlink()  # a shard cut short
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    kept = _shards_written(progress)
    tokens = sum(s["tokens"] for s in kept)
    log(f"resuming the interrupted preparation in {tmp}: {tokens:,} tokens in {len(kept)} shard(s) kept")
    return found


@dataclass
class _Build:
    """A preparation in its temp folder: progress.json says what is written already, this writes the rest."""

    tmp: Path
    progress: dict[str, Any]
    shard_tokens: int
    budget: int | None
    workers: int
    log: Log

    def save(self) -> None:
        write_text_atomic(self.tmp / PROGRESS_FILE, json.dumps(self.progress) + "\n")
        _fsync_dir(self.tmp)  # and with it the rename of the shard just finished

    def written(self) -> int:
        return sum(s["tokens"] for s in _shards_written(self.progress))

    def check_disk(self, root: Path, sources: list[_Source]) -> None:
        """Say how much this writes where, and refuse when the disk has less free space than that."""
        tokens = sum(s.token_estimate(self.budget) for s in sources)
        guess = "~" if any(s.total_chars is not None for s in sources) else ""
        need, done, free = 2 * max(tokens - self.written(), 0), 2 * self.written(), shutil.disk_usage(root).free
        kept = f" ({_size(done)} written before)" if done else ""
        self.log(
            f"this will write ~{_size(need)} for {guess}{_count(tokens)} tokens to {root}{kept}; free: {_size(free)}"
        )
        if need > free:
            raise DataError(
                f"not enough disk space: preparing needs ~{_size(need)} in {root}, which has {_size(free)} free; "
                "free some space, lower --data-token-budget or pick another folder with --data-cache"
            )

    def stream(self, split: str, source: _Source) -> int:
        """Tokenize a source into the split's shards, from where an earlier run stopped; the split's tokens."""
        state = self.progress.setdefault(split, {"shards": [], "docs": 0, "skip": 0, "done": False})
        writer = _ShardWriter(self.tmp, split, state, self.shard_tokens, self.budget, self.save)
        if state["done"]:
            return writer.tokens
        docs = _Counted(source.documents(self.log))
        for _ in itertools.islice(docs, state["docs"]):
            pass  # written by an earlier run
        progress = _Progress(self.log, split, writer.tokens, self.budget, docs, source.total_chars)
        big = source.total_chars is None or source.total_chars >= POOL_MIN_BYTES
        pool = multiprocessing.get_context("spawn").Pool(self.workers) if self.workers > 1 and big else None
        try:
            for results in _in_order(_encode_task, _tasks(_pieces(docs, state["docs"])), pool, 2 * self.workers):
                if not all(writer.add(*r) for r in results):  # the budget is reached
                    break
                progress.update(writer.tokens)
            writer.finish()
        finally:
            if pool:
                pool.terminate()
            writer.close()
        return writer.tokens

    def split_off_val(self, n_val: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(train, val) shards: the last n_val tokens of the train stream moved into val-* files. Each step sees
        whether it was done, so a rerun after a kill at any point does only what is missing."""
        shards = self.progress["train"]["shards"]
        cut = sum(s["tokens"] for s in shards) - n_val
        train: list[dict[str, Any]] = []
        val: list[dict[str, Any]] = []
        start = 0
        for s in shards:
            lo, start = start, start + s["tokens"]
            path, name = self.tmp / s["file"], f"val-{len(val):05d}.bin"
            if start <= cut:
                train.append(s)
            elif lo >= cut:  # wholly validation
                if path.exists():
                    os.replace(path, self.tmp / name)
                val.append({"file": name, "tokens": s["tokens"]})
            else:  # the shard the cut falls in: its tail is the first val shard
                head = cut - lo
                if path.stat().st_size > 2 * head:
                    _write_atomic(self.tmp / name, np.fromfile(path, dtype=np.uint16, offset=2 * head))
                    os.truncate(path, 2 * head)
                train.append({"file": s["file"], "tokens": head})
                val.append({"file": name, "tokens": start - cut})
        return train, val

    def splits(self, train_src: _Source, val_src: _Source | None, val_fraction: float) -> tuple[list, list]:
        n = self.stream("train", train_src)
        if n == 0:
            raise DataError(f"data source {train_src.spec!r} is empty (0 tokens); give a corpus with text in it")
        if val_src:
            nv = self.stream("val", val_src)
            if nv < 2:
                raise DataError(f"validation source {val_src.spec!r} has {nv} token(s); it needs at least 2")
            return self.progress["train"]["shards"], self.progress["val"]["shards"]
        n_val = int(n * val_fraction)
        if n_val < 2 or n - n_val < 2:
            raise DataError(
                f"data source {train_src.spec!r} has only {n} tokens: too few to split into train and val; "
                "give a bigger corpus"
            )
        return self.split_off_val(n_val)

    def abandon(self, error: BaseException) -> None:
        """After an error: keep what is written for a rerun to resume, unless the input itself is bad."""
        bad_input = isinstance(error, DataError) and not isinstance(error, StreamError)
        shards = len(_shards_written(self.progress))
        if shards and not bad_input:
            self.log(f"kept {self.tmp} ({shards} shard(s)): run the same command again to resume")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _write_atomic(path: Path, tokens: np.ndarray) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def _publish(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write meta.json and rename tmp to final, durably: after a power loss the cache is complete or absent."""
    with open(tmp / "meta.json", "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for name in (PROGRESS_FILE, LOCK_FILE):  # the lock stays held (by the open fd) until prepare returns
        (tmp / name).unlink(missing_ok=True)
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


def _cache_key(train: _Source, val: _Source | None, val_fraction: float, shard_tokens: int) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_hash(),
        "train": train.key,
        "val": val.key if val else None,
        "val_fraction": None if val else val_fraction,
        "shard_tokens": shard_tokens,
    }


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
    """Tokenize a source into <cache_dir>/<name>-<hash>/ (train/val shards + meta.json); reuse if there.

    An interrupted preparation (killed, a network error, a full disk) keeps the shards it wrote in its temp
    folder; running the same preparation again resumes after them.
    """
    train_src = _make_source(data, data_config, token_budget)
    val_src = _make_source(val_data, data_config, token_budget) if val_data else None
    if not val_src and not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; or give a separate --val-data")
    key = _cache_key(train_src, val_src, val_fraction, shard_tokens)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    root = Path(cache_dir)
    final = root / _cache_name(data, digest)
    if (final / "meta.json").is_file():
        return final
    sources = [s for s in (train_src, val_src) if s]
    for source in sources:
        source.check()  # here, not before: a cache made elsewhere is used without the library
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 16)
    tmp, lock, progress = _claim_temp(root, final, digest, log)
    build = _Build(tmp, progress, shard_tokens, token_budget, workers, log)
    try:
        log(f"preparing {data!r} -> {final} ({workers} worker(s))")
        build.check_disk(root, sources)
        train, val = build.splits(train_src, val_src, val_fraction)
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
    except BaseException as e:
        build.abandon(e)
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
    permutation of the windows starting at offset + i * seq_len in the split's tokens (its shards
    read as one stream, so a window may span two shards); micro-batch g is
    a pure function of g, so all ranks agree on the order without talking. Validation
    (shuffle=False): windows in order from offset 0, wrapping around.
    """

    def __init__(
        self,
        cache: str | Path,
        split: str,
        batch_size: int,
        seq_len: int,
        *,
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

    examples = """examples:
  python -m core.data --data shakespeare
  python -m core.data --data ~/corpora/books --val-fraction 0.05 --workers 8
  python -m core.data --data hf:HuggingFaceFW/fineweb-edu --data-config sample-10BT --data-token-budget 1000000000"""
    p = argparse.ArgumentParser(
        prog="python -m core.data",
        description=main.__doc__,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
