"""Evaluations of a GPT: HellaSwag accuracy (scored as build-nanogpt scores it) and the perplexity of a text.

HellaSwag: each example is a context `ctx` and 4 `endings`, one of them right (`label`). Every ending is
scored as a continuation: the tokens of `ctx` followed by the tokens of `" " + ending`, and the
cross-entropy of each ending token given everything before it. `acc` counts the examples whose lowest
*summed* ending loss is the label, `acc_norm` those whose lowest *mean* (per-token) loss is. OpenAI's GPT-2
124M scores acc 0.2859, acc_norm 0.2955 on the 10,042 validation examples this way. An example longer than
the model's context (only small models) loses its oldest context tokens.

Perplexity: the text is tokenized without an <|endoftext|> prefix into N tokens. Windows start at 0, S, 2S,
... and each covers [b, min(b + L, N)); every token at position 1..N-1 is predicted exactly once, by the first
window that contains it and its predecessor but has not predicted it yet, so a prediction sees at most L-1
and (after the first window) at least L-S-1 tokens of context; windows stop once one reaches the end. loss
is the mean negative log-likelihood (nats) over the N-1 predictions, perplexity = exp(loss). Defaults:
L = the model's context, S = L // 2. S must be below L: with S = L the first token of each window after
the first would share no window with its predecessor and never be predicted.

Both run on the model's device under the caller's autocast, and with a torch.compile'd model: every
forward of one call has the same shape (rows and length padded), so the model compiles once per data set.
`evaluate_hellaswag` is DDP-aware: when torch.distributed is initialized, example i is scored on rank
i % world and the counts are all-reduced.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from core.distributed import DistContext, all_reduce_sum
from core.model import unwrap_model
from core.parallel import is_sharded
from core.tokenizer import encode

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
DEFAULT_CACHE_DIR = Path("data/cache/hellaswag")
HELLASWAG_FIELDS = ("ctx", "endings", "label")  # the fields scoring reads; the others are optional
Progress = Callable[[int, int], None]  # (done, total) on this process


class EvalError(ValueError):
    """Bad evaluation input (a file, a setting); the message is one line naming the problem and the fix."""


# --- HellaSwag data -----------------------------------------------------------------------------
@dataclass(frozen=True)
class HellaSwagExample:
    ctx: str
    endings: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if not isinstance(self.ctx, str) or not self.ctx:
            raise EvalError(f"'ctx' must be a non-empty string, got {self.ctx!r}")
        if not isinstance(self.endings, (list, tuple)) or not all(isinstance(e, str) for e in self.endings):
            raise EvalError("'endings' must be a list of 4 strings")
        if len(self.endings) != 4:
            raise EvalError(f"'endings' has {len(self.endings)} entries; HellaSwag examples have exactly 4")
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not 0 <= self.label < 4:
            raise EvalError(f"'label' is {self.label!r}; it must be 0, 1, 2 or 3")
        object.__setattr__(self, "endings", tuple(self.endings))


def _parse_line(line: str, where: str) -> HellaSwagExample:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise EvalError(f"{where}: not valid JSON ({getattr(e, 'msg', e)})") from e
    if not isinstance(obj, dict):
        raise EvalError(f"{where}: expected a JSON object with ctx, endings and label")
    missing = [k for k in HELLASWAG_FIELDS if k not in obj]
    if missing:
        raise EvalError(f"{where}: missing field(s) {', '.join(missing)}; each line needs ctx, endings (4) and label")
    try:
        return HellaSwagExample(obj["ctx"], obj["endings"], obj["label"])
    except EvalError as e:
        raise EvalError(f"{where}: {e}") from e


def read_hellaswag(path: str | Path, limit: int | None = None) -> list[HellaSwagExample]:
    """The examples of a HellaSwag jsonl file (the first `limit` when given); EvalError names a bad line."""
    p = Path(path).expanduser()
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be >= 1, got {limit}")
    try:
        f = p.open("rb")
    except FileNotFoundError as e:
        raise EvalError(f"HellaSwag file not found: {p}; pass the path of a hellaswag_val.jsonl copy") from e
    except OSError as e:
        raise EvalError(f"cannot read HellaSwag file {p}: {e.strerror or e}") from e
    examples: list[HellaSwagExample] = []
    with f:
        for lineno, raw in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EvalError(f"{p} line {lineno}: not UTF-8 text ({e.reason})") from e
            if line.strip():
                examples.append(_parse_line(line, f"{p} line {lineno}"))
    if not examples:
        raise EvalError(f"{p} holds no HellaSwag examples")
    return examples


def download_hellaswag(cache_dir: str | Path = DEFAULT_CACHE_DIR, url: str = HELLASWAG_VAL_URL) -> Path:
    """The cached validation file, downloaded once; written under a temporary name, so never half a file."""
    target = Path(cache_dir) / "hellaswag_val.jsonl"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".hellaswag-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        Path(tmp).unlink(missing_ok=True)
        reason = str(getattr(e, "reason", "") or e).replace("\n", " ")[:200]
        raise EvalError(
            f"could not download HellaSwag from {url} ({type(e).__name__}: {reason}); "
            "offline? download that file elsewhere and pass --file with a local copy"
        ) from e
    return target


def load_hellaswag(
    file: str | Path | None = None,
    limit: int | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    url: str = HELLASWAG_VAL_URL,
) -> list[HellaSwagExample]:
    """Examples from `file`, or (None) from the validation set, downloaded into cache_dir on first use."""
    return read_hellaswag(file if file is not None else download_hellaswag(cache_dir, url), limit)


# --- scoring ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _without_ddp(model: nn.Module) -> nn.Module:
    """The module inside DDP (compiled or not): DDP's forward may sync buffers, a collective that ranks scoring
    different numbers of batches would never all reach."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def _target_nll(model: nn.Module, rows: Sequence[tuple[list[int], int, int]], n_rows: int, length: int) -> torch.Tensor:
    """Summed NLL of tokens[lo:hi] of each row given the tokens before them (float64, on the CPU).

    Rows are padded to one (n_rows, length) batch (dummy rows and tail of token 0: causal attention keeps
    them from touching real positions), so repeated calls give a compiled model the same shape.
    """
    device = _model_device(model)
    idx = torch.zeros((n_rows, length), dtype=torch.long)
    sel = torch.zeros((n_rows, length - 1), dtype=torch.bool)  # sel[r, p]: logits at p score token p + 1
    for r, (tokens, lo, hi) in enumerate(rows):
        idx[r, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        sel[r, lo - 1 : hi - 1] = True
    idx, sel = idx.to(device), sel.to(device)
    logits = _without_ddp(model)(idx)[0][:, :-1]
    nll = F.cross_entropy(logits[sel].float(), idx[:, 1:][sel], reduction="none")
    sums = torch.zeros(n_rows, dtype=torch.float64, device=device)
    sums.index_add_(0, sel.nonzero()[:, 0], nll.double())
    return sums[: len(rows)].cpu()


def _render(example: HellaSwagExample, block_size: int) -> list[tuple[list[int], int, int]]:
    """Four rows (tokens, first scored index, end): context then " " + ending, cut to the model's context."""
    ctx = encode(example.ctx, allow_special=False)
    rows = []
    for ending in example.endings:
        tokens = ctx + encode(" " + ending, allow_special=False)
        cut = max(0, len(tokens) - block_size)  # drop the oldest context tokens of an over-long example
        rows.append((tokens[cut:], max(1, len(ctx) - cut), len(tokens) - cut))
    return rows


def _rendered(model: nn.Module, examples: Sequence[HellaSwagExample]) -> tuple[list[list[tuple]], int]:
    block_size = unwrap_model(model).config.block_size
    rendered = [_render(ex, block_size) for ex in examples]
    length = max(2, max((len(r[0]) for rows in rendered for r in rows), default=2))
    return rendered, length


def _ending_losses_rendered(
    model: nn.Module,
    rendered: list[list[tuple]],
    length: int,
    batch_examples: int,
    progress: Progress | None,
    pad_to: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pad_to: run the batches of that many examples, the missing ones empty (every FSDP rank the same forwards)."""
    if batch_examples < 1:
        raise EvalError(f"batch_examples must be >= 1, got {batch_examples}")
    n = len(rendered)
    sums = torch.zeros((n, 4), dtype=torch.float64)
    counts = torch.tensor([[r[2] - r[1] for r in rows] for rows in rendered], dtype=torch.float64).reshape(n, 4)
    per_batch = min(batch_examples, max(n, pad_to, 1))
    with _eval_mode(model):
        for start in range(0, max(n, pad_to), per_batch):
            chunk = rendered[start : start + per_batch]
            rows = [row for rows in chunk for row in rows]
            sums[start : start + len(chunk)] = _target_nll(model, rows, 4 * per_batch, length).view(-1, 4)
            if progress and chunk:
                progress(start + len(chunk), n)
    return sums, sums / counts


def ending_losses(
    model: nn.Module, examples: Sequence[HellaSwagExample], batch_examples: int = 4, progress: Progress | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed, mean) cross-entropy of each ending, each (len(examples), 4) float64 on the CPU; this process only.

    `argmin(dim=1)` of the first is the `acc` choice, of the second the `acc_norm` choice.
    """
    rendered, length = _rendered(model, examples)
    return _ending_losses_rendered(model, rendered, length, batch_examples, progress)


@dataclass(frozen=True)
class HellaSwagResult:
    n: int
    correct: int  # lowest summed loss on the label
    correct_norm: int  # lowest mean loss on the label

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"task": "hellaswag", "n": self.n, "acc": self.acc, "acc_norm": self.acc_norm}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_hellaswag(
    model: nn.Module, examples: Sequence[HellaSwagExample], batch_examples: int = 4, progress: Progress | None = None
) -> HellaSwagResult:
    """acc and acc_norm over `examples`. Under torch.distributed every rank must call it with the same
    examples: rank r scores examples r, r + world, ... and all ranks return the all-reduced totals."""
    rank, world = _world()
    rendered, length = _rendered(model, examples)  # row length from all examples: one shape per call and file
    mine = rendered[rank::world]
    labels = torch.tensor([ex.label for ex in examples[rank::world]], dtype=torch.long)
    pad_to = -(-len(rendered) // world) if is_sharded(model) else 0
    sums, means = _ending_losses_rendered(model, mine, length, batch_examples, progress, pad_to)
    counts = torch.tensor(
        [len(mine), (sums.argmin(1) == labels).sum().item(), (means.argmin(1) == labels).sum().item()],
        dtype=torch.float64,
        device=_model_device(model),
    )
    if world > 1:
        ctx = DistContext(rank, int(os.environ.get("LOCAL_RANK", rank)), world, counts.device)
        counts = all_reduce_sum(counts, ctx)  # float64 keeps counts exact
    n, correct, correct_norm = (round(v) for v in counts.tolist())
    return HellaSwagResult(n, correct, correct_norm)


# --- perplexity ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerplexityResult:
    tokens: int  # predictions made: N - 1 for a text of N tokens
    loss: float  # mean negative log-likelihood, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 709 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"task": "perplexity", "tokens": self.tokens, "loss": self.loss, "perplexity": self.perplexity}


def perplexity_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first): the window covers tokens [start, end) and predicts tokens first..end-1."""
    if n_tokens < 2:
        raise EvalError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    if seq_len < 2:
        raise EvalError(f"seq-len must be >= 2, got {seq_len}")
    if not 1 <= stride < seq_len:
        raise EvalError(
            f"stride must be between 1 and seq-len - 1 = {seq_len - 1}, got {stride}: windows must overlap by a "
            "token so that every token is predicted (stride = seq-len would skip the first token of each window)"
        )
    windows, predicted_to = [], 1  # tokens 1..predicted_to-1 are predicted already
    for start in range(0, n_tokens, stride):
        end = min(start + seq_len, n_tokens)
        windows.append((start, end, predicted_to))
        predicted_to = end
        if end == n_tokens:
            break
    return windows


def perplexity(
    model: nn.Module,
    tokens: Sequence[int],
    seq_len: int | None = None,
    stride: int | None = None,
    batch_windows: int = 4,
    progress: Progress | None = None,
) -> PerplexityResult:
    """Sliding-window perplexity of a token sequence (see the module docstring for the exact definition)."""
    block_size = unwrap_model(model).config.block_size
    window = block_size if seq_len is None else seq_len
    if window > block_size:
        raise EvalError(
            f"seq-len {window} exceeds the model's context ({block_size}); use --seq-len {block_size} or less"
        )
    windows = perplexity_windows(len(tokens), window, window // 2 if stride is None else stride)
    if batch_windows < 1:
        raise EvalError(f"batch_windows must be >= 1, got {batch_windows}")
    per_batch, length = min(batch_windows, len(windows)), min(window, len(tokens))
    total = 0.0
    with _eval_mode(model):
        for i in range(0, len(windows), per_batch):
            rows = [(list(tokens[s:e]), first - s, e - s) for s, e, first in windows[i : i + per_batch]]
            total += _target_nll(model, rows, per_batch, length).sum().item()
            if progress:
                progress(min(i + per_batch, len(windows)), len(windows))
    n = len(tokens) - 1
    return PerplexityResult(tokens=n, loss=total / n)


def text_perplexity(
    model: nn.Module,
    text: str,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_windows: int = 4,
    progress: Progress | None = None,
) -> PerplexityResult:
    """Perplexity of a text tokenized with GPT-2 BPE, no <|endoftext|> prefix ("<|endoftext|>" in it is text)."""
    return perplexity(model, encode(text, allow_special=False), seq_len, stride, batch_windows, progress)
