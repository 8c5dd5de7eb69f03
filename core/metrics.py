"""metrics.jsonl: one JSON object per line, append-only, readable while it is being written.

Records: {"kind": "train", "step", "tokens", "loss", "lr", "grad_norm", "dt", "tok_per_s", "mfu", ...} /
{"kind": "eval", "step", "val_loss"} / {"kind": "sample", "step", "text"} / {"kind": "status", "state",
"message"}; core/reporting.py, which writes them during training, lists every field. Every record also
carries "time" (unix seconds).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _jsonable(v: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss is written as null and flagged by a status record.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class MetricsWriter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for appends)
        if not _ends_with_newline(self.path):
            # A kill mid-write left a torn last line: end it, or the next record would be glued to it.
            self._f.write("\n")

    def write(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in fields.items()}}
        # One write call per line so a reader never sees two records interleaved.
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


class MetricsReader:
    """Reads only what was appended since the last call; a partial last line waits for the next.

    When the file was replaced since the last call (a run deleted and launched again under the same
    name: another inode, or a shorter file), reading starts over and `replaced` is True until the
    next call, so a caller holding earlier records knows to drop them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.replaced = False
        self._ino: int | None = None

    def read_new(self) -> list[dict[str, Any]]:
        self.replaced = False
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
                    self.offset, self.replaced = 0, True
                self._ino = st.st_ino
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            if self._ino is not None:  # deleted: what was read belongs to a run that is gone
                self.offset, self._ino, self.replaced = 0, None, True
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in chunk[:end].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
                continue  # a corrupt line (e.g. a crash mid-write before a restart) is skipped
        return records


def read_all(path: str | Path) -> list[dict[str, Any]]:
    return MetricsReader(path).read_new()


FORMATS = ("csv", "jsonl")
FIRST_COLUMNS = ("kind", "step", "time")  # then every other field, in the order the records first show it


def export_records(path: str | Path, fmt: str) -> str:
    """A metrics file as text: "jsonl", its records one per line (torn or corrupt lines left out); "csv", one row per
    record with the union of the records' fields as columns (kind, step, time first; a field a record lacks is an
    empty cell, as is null). ValueError names a bad format or a missing file."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not Path(path).is_file():
        raise ValueError(f"{path} not found: the run has no metrics yet (imported weights, or not started)")
    records = read_all(path)
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    columns = {name: None for name in FIRST_COLUMNS}
    for record in records:
        columns.update(dict.fromkeys(record))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
