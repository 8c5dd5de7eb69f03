"""Evaluate a model on the command line: HellaSwag accuracy, or the perplexity of a text file.

    python -m core.eval hellaswag --checkpoint checkpoints/my-run --limit 500 --json
    python -m core.eval perplexity --checkpoint gpt2 --data notes.txt --seq-len 1024 --stride 512

--checkpoint takes a run folder, a checkpoint folder, a Hugging Face GPT-2 folder or a hub id. Under torchrun
(python -m torch.distributed.run --nproc_per_node=N -m core.eval hellaswag ...) the examples are split over
the ranks and rank 0 prints the totals. Definitions: core/evals.py and docs/evals.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

import core.distributed as D
from core.checkpoint import CheckpointError
from core.evals import (
    DEFAULT_CACHE_DIR,
    EvalError,
    Progress,
    evaluate_hellaswag,
    load_hellaswag,
    text_perplexity,
)
from core.hf import HFError
from core.model import GPT
from core.tokenizer import TokenizerError
from core.weights import load_weights


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other error of this command
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _open_model(spec: str, device: torch.device) -> GPT:
    """The single place that turns --checkpoint into a model (run, checkpoint folder, HF folder, hub id)."""
    return load_weights(spec, device)[0]


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {s!r}")
    return v


EXAMPLES = """examples:
  python -m core.eval hellaswag --checkpoint checkpoints/tiny-shk --limit 500
  python -m core.eval hellaswag --checkpoint gpt2 --file hellaswag_val.jsonl --json
  python -m core.eval perplexity --checkpoint tiny-shk --data notes.txt --seq-len 128 --stride 64
(installed with pip: gpt2-eval instead of python -m core.eval)"""


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m core.eval",
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = ap.add_subparsers(dest="task", required=True, metavar="{hellaswag,perplexity}")
    common = _Parser(add_help=False)
    common.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder, HF GPT-2 folder or hub id")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    hs = tasks.add_parser("hellaswag", parents=[common], help="HellaSwag accuracy (completion style)")
    hs.add_argument("--file", type=Path, help="a HellaSwag jsonl file (default: the validation set, downloaded once)")
    hs.add_argument("--limit", type=_positive, help="evaluate only the first N examples")
    hs.add_argument("--batch-examples", type=_positive, default=4, help="examples per forward (4 rows each)")
    hs.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the download is kept")

    pp = tasks.add_parser("perplexity", parents=[common], help="sliding-window perplexity of a text file")
    pp.add_argument("--data", type=Path, required=True, help="a UTF-8 text file")
    pp.add_argument("--seq-len", type=_positive, help="window length L (default: the model's context)")
    pp.add_argument("--stride", type=_positive, help="window step S, below L (default: L // 2)")
    return ap


def _progress(label: str) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    return lambda done, total: print(f"\r{label} {done}/{total}", end="", file=sys.stderr, flush=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise EvalError(f"text file not found: {path}; pass --data with a UTF-8 text file") from e
    except UnicodeDecodeError as e:
        raise EvalError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
    except OSError as e:
        raise EvalError(f"cannot read {path}: {e.strerror or e}") from e


def _run(args: argparse.Namespace, ctx: D.DistContext) -> dict[str, Any]:
    if args.task == "hellaswag":
        examples = load_hellaswag(args.file, args.limit, args.cache_dir)
        model = _open_model(args.checkpoint, ctx.device)
        progress = _progress("examples") if ctx.is_main else None
        return evaluate_hellaswag(model, examples, args.batch_examples, progress).to_dict()
    text = _read_text(args.data)
    model = _open_model(args.checkpoint, ctx.device)
    return text_perplexity(model, text, args.seq_len, args.stride, progress=_progress("windows")).to_dict()


def _describe(result: dict[str, Any]) -> str:
    if result["task"] == "hellaswag":
        return f"hellaswag: {result['n']} examples, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}"
    return (
        f"perplexity {result['perplexity']:.3f} (loss {result['loss']:.4f} nats over {result['tokens']} "
        "predicted tokens)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        ctx = D.setup(args.device)  # joins the process group under torchrun; a plain process otherwise
        try:
            result = _run(args, ctx)
        finally:
            D.teardown()
    except (ValueError, OSError, CheckpointError, HFError, TokenizerError) as e:  # EvalError, ConfigError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ctx.is_main:
        return 0
    if sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress line
    print(json.dumps(result) if args.json else _describe(result), flush=True)
    where = f"{ctx.world_size} processes" if ctx.is_ddp else str(ctx.device)
    print(f"[{time.perf_counter() - t0:.1f}s on {where}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
