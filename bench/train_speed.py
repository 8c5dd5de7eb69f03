"""Tokens/s of one training step (forward, backward, AdamW) of our GPT vs transformers' GPT2LMHeadModel.

Same config, same batch, same optimizer settings, measured in the same run with the two models
interleaved (so a busy machine slows both alike); prints the ratio. On CUDA it uses bf16 autocast and
fused AdamW and also prints MFU.

    python bench/train_speed.py                      # CPU: tiny-ish config, ~1-2 minutes
    python bench/train_speed.py --compile            # adds torch.compile'd ours
    python bench/train_speed.py --preset gpt2 --batch-size 16 --seq-len 1024 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import ConfigError, ModelConfig, model_config  # noqa: E402
from core.cpu_malloc import reexec_with_tuned_malloc  # noqa: E402
from core.distributed import pick_device  # noqa: E402
from core.hf import hf_config  # noqa: E402
from core.model import GPT  # noqa: E402
from core.precision import peak_flops  # noqa: E402


def hf_model(mc: ModelConfig):  # noqa: ANN201
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**hf_config(mc))  # the config.json export_hf writes: same shapes and dropout as ours
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def make_step(model, kind: str, device: torch.device, dtype: torch.dtype | None):  # noqa: ANN001, ANN201
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, y).loss if kind == "ours" else model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, x, y, n: int, device: torch.device) -> float:  # noqa: ANN001
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median reported)")
    p.add_argument("--device", default="auto", help="auto: the GPU if there is one (core.distributed.pick_device)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    a = p.parse_args()

    try:
        device = pick_device(a.device)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    mc = model_config(a.preset, pad_vocab=False)  # HF has no padded vocabulary: same shapes for both
    torch.manual_seed(0)
    x = torch.randint(0, mc.vocab_size, (a.batch_size, a.seq_len), device=device)
    contenders = {
        "ours": make_step(GPT(mc).to(device).train(), "ours", device, dtype),
        "transformers": make_step(hf_model(mc).to(device).train(), "hf", device, dtype),
    }
    if a.compile:
        contenders["ours+compile"] = make_step(torch.compile(GPT(mc).to(device).train()), "ours", device, dtype)
    print(
        f"{a.preset} ({GPT(mc).num_params() / 1e6:.1f}M params), batch {a.batch_size} x {a.seq_len}, {device}, "
        f"{'bf16 autocast' if dtype else 'fp32'}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name, step in contenders.items():  # warm up (and compile) outside the timing
        t = time.perf_counter()
        for _ in range(2):
            step(x, x)
        print(f"  warm-up {name}: {time.perf_counter() - t:.1f}s")
    times: dict[str, list[float]] = {n: [] for n in contenders}
    for _ in range(a.rounds):
        for name, step in contenders.items():
            times[name].append(time_steps(step, x, x, a.steps, device))
    tokens = a.batch_size * a.seq_len
    flops = GPT(mc).flops_per_token(a.seq_len)
    peak = peak_flops(device, "bf16") if device.type == "cuda" else None
    ref = statistics.median(times["transformers"])
    print(f"{'model':<14} {'ms/step':>9} {'tok/s':>10} {'vs HF':>7} {'MFU':>6}")
    for name, ts in times.items():
        med = statistics.median(ts)
        mfu = f"{100 * flops * tokens / med / peak:.1f}%" if peak else "-"
        print(f"{name:<14} {1000 * med:>9.1f} {tokens / med:>10,.0f} {ref / med:>6.2f}x {mfu:>6}")


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # time the steps as the trainer runs them (see core/cpu_malloc.py)
    main()
