"""Sample from a checkpoint on the command line, streaming the text as it is generated.

    python -m core.sample --checkpoint checkpoints/my-run --prompt "ROMEO:" --temperature 0.8 --top-k 200

--checkpoint takes a run folder (its latest checkpoint), a checkpoint folder, a Hugging Face GPT-2
folder (config.json + model.safetensors), the name of a run in --runs-dir, or a hub id such as gpt2
(downloaded when online); core.weights decides which, in that order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.checkpoint import CheckpointError
from core.config import TrainConfig
from core.device import pick_device
from core.generation import MODES, SamplingConfig, stream
from core.hf import HFError
from core.tokenizer import TokenizerError
from core.weights import load_weights

EXAMPLES = """examples:
  python -m core.sample --checkpoint checkpoints/tiny-shk --prompt "ROMEO:" --temperature 0.8 --top-k 50
  python -m core.sample --checkpoint tiny-shk --prompt "" --num-samples 3 --max-new-tokens 100 --seed 1
  python -m core.sample --checkpoint gpt2 --prompt "Hello, I'm a language model," --temperature 0
(installed with pip: gpt2-sample instead of python -m core.sample)"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m core.sample",
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--checkpoint", required=True, help="run folder, checkpoint folder, HF GPT-2 folder, run name or hub id"
    )
    ap.add_argument("--runs-dir", default=TrainConfig.runs_dir, help="where --checkpoint looks for a run name")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", help="text to continue (empty: start from <|endoftext|>)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from this file")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: off)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    ap.add_argument("--seed", type=int, default=None, help="same seed -> same text")
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    ap.add_argument("--no-stop-at-eot", action="store_true", help="keep going past <|endoftext|>")
    ap.add_argument("--no-echo", action="store_true", help="print only the completion, not the prompt")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument(
        "--mode",
        default="default",
        choices=MODES,
        help="default: fp32 with KV cache; compiled: torch.compile'd decode step (compiles on first use); "
        "bf16 / int8: lighter weights, faster on CPU at a small cost in accuracy (docs/sampling.md#modes)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prompt = args.prompt_file.read_text(encoding="utf-8") if args.prompt_file else args.prompt
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=tuple(args.stop),
            stop_at_eot=not args.no_stop_at_eot,
            num_samples=args.num_samples,
            mode=args.mode,
        ).validate()
        device = pick_device(args.device)  # ConfigError (a ValueError) names a device that is not there
        model = load_weights(args.checkpoint, device, args.runs_dir)[0]
        steps = stream(model, prompt, cfg)
    except (ValueError, OSError, CheckpointError, HFError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    out = sys.stdout
    live = cfg.num_samples == 1  # several samples advance together: print each when complete
    texts = [[] for _ in range(cfg.num_samples)]
    n_tokens, t0, slid = 0, time.perf_counter(), False
    if live and not args.no_echo:
        out.write(prompt)
    try:
        for step in steps:
            slid |= step.context_slid
            n_tokens += sum(t >= 0 for t in step.tokens)
            for i, piece in enumerate(step.texts):
                texts[i].append(piece)
            if live:
                out.write(step.texts[0])
                out.flush()
    except KeyboardInterrupt:
        steps.close()
        print("\n[interrupted]", file=sys.stderr)
        return 130
    if live:
        out.write("\n")
    else:
        for i, t in enumerate(texts):
            out.write(f"--- sample {i + 1} ---\n{'' if args.no_echo else prompt}{''.join(t)}\n")
    out.flush()
    dt = time.perf_counter() - t0
    note = "; the context window slid (older text was dropped)" if slid else ""
    print(
        f"[{n_tokens} tokens in {dt:.2f}s, {n_tokens / max(dt, 1e-9):.1f} tokens/s on {device}, mode {cfg.mode}{note}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
