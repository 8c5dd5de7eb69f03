"""Per-rank memory and tokens/s of `--parallel fsdp` against `--parallel ddp`: the same trainer, config and batches.

Each round trains a few steps under torchrun with each strategy, in ABBA order (ddp fsdp fsdp ddp ...), and reads
the run's own train records: each rank's memory at every logged step (`mem_mb_ranks`: peak allocated GPU memory on
CUDA, resident memory on CPU) and tokens/s. It prints the medians over the rounds of the largest per-rank memory and
of tok/s (after the first step), and FSDP's ratio to DDP. On CPU the RSS must follow the live tensors, so glibc
serves every block over 1 MB with mmap and returns it on free (MALLOC_MMAP_THRESHOLD_, instead of the trainer's tuning
in core/cpu_malloc.py, which keeps freed blocks and would report the heap's high-water mark and fragmentation).

    python bench/fsdp_memory.py                                       # CPU, 2 gloo processes, 124M, B1 x T64
    python bench/fsdp_memory.py --nproc 8 --preset gpt2-xl --batch-size 4 --seq-len 1024 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(a: argparse.Namespace, parallel: str, runs: Path, name: str) -> tuple[float, float]:
    """(largest per-rank memory in MB over the logged steps, median tok/s after the first step) of one run."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
        "-m", "core.train", "--runs-dir", str(runs), "--run-name", name, "--preset", a.preset,
        "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len), "--max-steps", str(a.steps),
        "--precision", a.precision, "--parallel", parallel, "--eval-interval", "0", "--ckpt-interval", "0",
        "--sample-interval", "0", "--data-cache", str(runs / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "PLAYGROUND_MALLOC_TUNING": "0", "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{parallel} run failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    return max(max(r["mem_mb_ranks"]) for r in steps), statistics.median(r["tok_per_s"] for r in steps[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both strategies twice)")
    a = p.parse_args()
    got: dict[str, list[tuple[float, float]]] = {"ddp": [], "fsdp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for i, parallel in enumerate(("ddp", "fsdp", "fsdp", "ddp")):
                got[parallel].append(train(a, parallel, Path(tmp), f"{parallel}-{r}-{i}"))
                print(f"round {r + 1} {parallel}: {got[parallel][-1][0]:,.0f} MB, {got[parallel][-1][1]:,.0f} tok/s")
    mem = {k: statistics.median(m for m, _ in v) for k, v in got.items()}
    speed = {k: statistics.median(s for _, s in v) for k, v in got.items()}
    print(f"\n{a.preset} B{a.batch_size} x T{a.seq_len}, {a.nproc} processes, {a.precision}; medians of {a.rounds * 2}")
    for k in got:
        print(f"{k:5s} largest per-rank memory {mem[k]:8,.0f} MB   {speed[k]:8,.0f} tok/s")
    print(f"fsdp / ddp: memory {mem['fsdp'] / mem['ddp']:.2f}x, tok/s {speed['fsdp'] / speed['ddp']:.2f}x")


if __name__ == "__main__":
    main()
