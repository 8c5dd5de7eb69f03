"""Sampling speed and quality of each decode mode vs transformers `generate` (fp32) on identical weights.

    python bench/sample_speed.py                      # gpt2 (124M), default mode, batch 1, prompt 32, 128 new tokens
    python bench/sample_speed.py --modes all          # default, compiled, bf16, int8
    python bench/sample_speed.py --modes int8,bf16 --preset small --repeats 5
    python bench/sample_speed.py --device cuda --preset gpt2-medium --new-tokens 256

Our random GPT-2 is exported to a temporary Hugging Face folder and loaded by transformers, so both run
the same weights; greedy decoding in the default mode must then give the same tokens (checked). Quality of
each mode vs our fp32 default: the largest logit difference and the greedy-token agreement over the same
128 steps, teacher-forced (both fed fp32's greedy tokens, so one early difference counts once), plus how
many leading tokens free-running greedy generation shares with fp32. Speed: each contender gets a warm-up
run (compiled mode compiles there: its time is printed), then contenders alternate ABBA-style (forward
order, then reverse) for --repeats rounds, and medians are compared. Ratios > 1 mean faster than
transformers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config import PRESETS, model_config  # noqa: E402
from core.decode_modes import MODES, compare_with_default  # noqa: E402
from core.device import pick_device  # noqa: E402
from core.generation import SamplingConfig, generate_tokens  # noqa: E402
from core.hf import export_hf  # noqa: E402
from core.model import GPT  # noqa: E402

HF = "transformers fp32"
TARGET_DEFAULT, TARGET_BEST, TARGET_AGREEMENT = 1.4, 2.0, 0.95


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def timed(
    fns: dict[str, Callable[[], list[int]]], device: str, repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, list[int]]]:
    """Warm-up seconds, median seconds and tokens per contender.

    Rounds alternate the order (A B C, then C B A, ...), so a load change on a shared machine, or
    whichever runs first after another, hits every contender alike.
    """
    warm, tokens = {}, {}
    for name, fn in fns.items():
        sync(device)
        t0 = time.perf_counter()
        tokens[name] = fn()
        sync(device)
        warm[name] = time.perf_counter() - t0
        print(f"  warm-up {name}: {warm[name]:.1f}s", file=sys.stderr, flush=True)  # progress: compiling is slow
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            sync(device)
            t0 = time.perf_counter()
            tokens[name] = fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return warm, {name: statistics.median(t) for name, t in times.items()}, tokens


def parse_modes(text: str) -> list[str]:
    modes = list(MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"error: --modes takes 'all' or a comma list of {', '.join(MODES)}; got {text!r}")
    return modes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpt2", choices=list(PRESETS))
    ap.add_argument("--modes", default="default", help="'all' or a comma list of " + ", ".join(MODES))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4, help="timed rounds (ABBA order); medians are compared")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--skip-recompute", action="store_true", help="skip the slow no-cache baseline")
    args = ap.parse_args()
    modes = parse_modes(args.modes)
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

    def run_ours(mode: str = "default", use_cache: bool = True) -> Callable[[], list[int]]:
        cfg = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False, use_cache=use_cache, mode=mode)
        return lambda: generate_tokens(ours, prompt[0].tolist(), cfg)[0]

    name = torch.cuda.get_device_name() if device == "cuda" else f"{device} ({torch.get_num_threads()} CPU threads)"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.preset} on {name}, batch 1, prompt {args.prompt_tokens}, {n} new tokens, greedy; load avg {load}")
    print(f"fp32 logits max abs diff vs transformers: {diff:.2e}")
    fns = {f"ours {m}": run_ours(m) for m in modes}
    fns[HF] = run_hf
    if not args.skip_recompute:
        fns["ours, no cache"] = run_ours(use_cache=False)
    warm, med, tokens = timed(fns, device, args.repeats)
    ref = generate_tokens(ours, prompt[0].tolist(), SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False))
    print(f"greedy tokens identical, ours default vs transformers: {ref[0] == tokens[HF]}")
    report(args, ours, prompt[0].tolist(), modes, warm, med, tokens, ref[0])


def report(
    args: argparse.Namespace,
    ours: GPT,
    prompt: list[int],
    modes: list[str],
    warm: dict[str, float],
    med: dict[str, float],
    tokens: dict[str, list[int]],
    ref: list[int],
) -> None:
    """The quality and speed tables and the verdicts against the targets."""
    n = args.new_tokens
    steps = min(n, ours.config.block_size - len(prompt) + 1)
    print(f"\nquality vs ours fp32 default ({steps} steps teacher-forced; free-running: leading tokens equal)")
    quality = {}
    for mode in modes:
        q = quality[mode] = compare_with_default(ours, mode, prompt, steps)
        same = next((i for i, (a, b) in enumerate(zip(tokens[f"ours {mode}"], ref)) if a != b), len(ref))
        print(
            f"  {mode:10} max logit diff {q.max_logit_diff:9.2e}   greedy agreement {q.agreement:7.1%}   "
            f"free-running {same}/{len(ref)}"
        )
    t_hf = med[HF]
    print(f"\n{'':22}{'tok/s':>9}{'ms/token':>10}{'vs ' + HF:>24}{'warm-up s':>11}")
    for label, t in med.items():
        print(f"{label:22}{n / t:9.1f}{1000 * t / n:10.2f}{t_hf / t:23.2f}x{warm[label]:11.1f}")
    if "default" in modes:
        r = t_hf / med["ours default"]
        verdict = "met" if r >= TARGET_DEFAULT else "MISSED"
        print(f"default / transformers: {r:.2f}x (target >= {TARGET_DEFAULT}x): {verdict}")
    ok = {m: t_hf / med[f"ours {m}"] for m in modes if quality[m].agreement >= TARGET_AGREEMENT}
    if ok:
        best = max(ok, key=ok.get)
        verdict = "met" if ok[best] >= TARGET_BEST else "MISSED"
        print(
            f"fastest mode with >= {TARGET_AGREEMENT:.0%} agreement: {best}, {ok[best]:.2f}x transformers "
            f"(target >= {TARGET_BEST}x): {verdict}"
        )


if __name__ == "__main__":
    main()
