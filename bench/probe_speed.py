"""Time of each core.probe view against one plain forward of the same model, measured in the same run.

    python bench/probe_speed.py                        # gpt2 (124M, random weights), fp32, 256 tokens, CPU
    python bench/probe_speed.py --device cuda --tokens 1024 --preset gpt2-medium

Each view gets a warm-up call, then the median of --repeats timed calls; views take turns within each
repeat, so a load change on a shared machine hits all of them. "x forward" is the view's time divided
by the plain forward's: the cost of what the view adds (top-k, the lens read-outs, a second model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config import PRESETS, model_config  # noqa: E402
from core.model import GPT  # noqa: E402
from core.probe import ablation_effect, compare, logit_lens, token_logprobs  # noqa: E402


def timed(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Median seconds per view over repeats, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2", choices=list(PRESETS))
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = model_config(args.preset)
    a, b = GPT(cfg).to(args.device).eval(), GPT(cfg).to(args.device).eval()
    tokens = torch.randint(0, cfg.vocab_size, (min(args.tokens, cfg.block_size),)).tolist()
    idx = torch.tensor([tokens], device=args.device)
    heads = [(5, 1), (5, 5), (6, 9)]

    def forward() -> None:
        with torch.no_grad():
            a(idx)

    views: dict[str, Callable[[], object]] = {
        "plain forward (baseline)": forward,
        "token_logprobs(top=5)": lambda: token_logprobs(a, tokens, top=5),
        "logit_lens(top=3)": lambda: logit_lens(a, tokens, top=3),
        f"ablation_effect({len(heads)} heads)": lambda: ablation_effect(a, tokens, heads),
        "compare(a, b)": lambda: compare(a, b, tokens),
    }
    print(
        f"{args.preset} ({a.num_params() / 1e6:.0f}M), {len(tokens)} tokens, {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    results = timed(views, args.device, args.repeats)
    base = results["plain forward (baseline)"]
    for name, sec in results.items():
        print(f"  {name:<28} {sec * 1000:8.0f} ms   {sec / base:5.2f} x forward")


if __name__ == "__main__":
    main()
