"""KV-cache sampling speed: ours vs transformers `generate` on identical weights, plus ours without a cache.

    python bench/sample_speed.py                      # gpt2 (124M), fp32, batch 1, 32-token prompt, 128 new tokens
    python bench/sample_speed.py --device cuda --preset gpt2-medium --new-tokens 256

Our random GPT-2 is exported to a temporary Hugging Face folder and loaded by transformers, so both
run the same weights; greedy decoding must then give the same tokens (checked). Each contender gets
a warm-up run, then the median of --repeats timed runs. Ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config import PRESETS, model_config  # noqa: E402
from core.device import pick_device  # noqa: E402
from core.generation import SamplingConfig, generate_tokens  # noqa: E402
from core.hf import export_hf  # noqa: E402
from core.model import GPT  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def timed(fns: dict[str, Callable[[], list[int]]], device: str, repeats: int) -> dict[str, tuple[float, list[int]]]:
    """Median seconds per contender over repeats after one warm-up each, and its tokens.

    Contenders take turns within each repeat, so a load change on a shared machine hits all of them.
    """
    out = {name: fn() for name, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            out[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), out[name]) for name in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpt2", choices=list(PRESETS))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--skip-recompute", action="store_true", help="skip the slow no-cache baseline")
    args = ap.parse_args()
    device = pick_device(args.device).type

    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    ours = GPT(model_config(args.preset)).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp).to(device).eval()
    hf.generation_config.pad_token_id = 50256
    hf.generation_config.eos_token_id = None  # run the full length, as ours does with stop_at_eot=False

    n = args.new_tokens
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    ids = prompt.to(device)
    with torch.inference_mode():
        diff = (hf(ids).logits - ours(ids).logits).abs().max().item()

    def run_hf() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
        return out[0, args.prompt_tokens :].tolist()

    def run_ours(use_cache: bool = True) -> list[int]:
        cfg = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False, use_cache=use_cache)
        return generate_tokens(ours, prompt[0].tolist(), cfg)[0]

    name = torch.cuda.get_device_name() if device == "cuda" else f"{device} ({torch.get_num_threads()} CPU threads)"
    print(f"{args.preset} fp32 on {name}, batch 1, prompt {args.prompt_tokens}, {n} new tokens, greedy")
    print(f"logits max abs diff vs transformers: {diff:.2e}")
    fns = {"ours, KV cache": run_ours, "transformers generate": run_hf}
    if not args.skip_recompute:
        fns["ours, no cache"] = lambda: run_ours(False)
    results = timed(fns, device, args.repeats)
    t_ours, tok_ours = results["ours, KV cache"]
    t_hf, tok_hf = results["transformers generate"]
    print(f"greedy tokens identical: {tok_ours == tok_hf}")
    print(f"{'':24}{'tokens/s':>10}{'ms/token':>10}{'time vs ours':>14}")
    for label, (t, _) in results.items():
        print(f"{label:24}{n / t:10.1f}{1000 * t / n:10.2f}{t / t_ours:13.2f}x")
    print(f"ratio ours / transformers: {t_hf / t_ours:.2f}x (target >= 1.0)")


if __name__ == "__main__":
    main()
