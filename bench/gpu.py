"""GPU check and benchmark in one short run (under 8 minutes on one H100), printing one table.

    python bench/gpu.py             # CUDA: gpt2 (124M) at context 1024
    python bench/gpu.py --dry-run   # CPU, micro preset, < 1 minute: proves the script works

1. correctness: the same 5 AdamW steps from the same weights and batches in fp32 and in bf16
   autocast; the losses must agree within a tolerance.
2. training throughput of the gpt2 preset: bf16 autocast, fused AdamW, flash SDPA, padded
   vocabulary, eager and torch.compile; tokens/s and MFU (peak from core.precision.PEAK_FLOPS).
3. KV-cache sampling (core.generation, greedy) vs transformers' generate on the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import ConfigError, model_config  # noqa: E402
from core.distributed import pick_device  # noqa: E402
from core.generation import SamplingConfig, generate_tokens  # noqa: E402
from core.hf import export_hf  # noqa: E402
from core.model import GPT  # noqa: E402
from core.precision import peak_flops  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sdpa_fast(device: torch.device):  # noqa: ANN201
    """Flash (or memory-efficient) attention kernels only, on CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def losses(mc, batches, dtype, device: torch.device) -> list[float]:  # noqa: ANN001
    torch.manual_seed(0)
    model = GPT(mc).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    out = []
    for x, y in batches:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None), sdpa_fast(device):
            loss = model(x, y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def throughput(mc, B: int, T: int, compile_: bool, steps: int, device: torch.device) -> tuple[float, float | None]:  # noqa: ANN001
    torch.manual_seed(0)
    model = GPT(mc).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    run = torch.compile(model) if compile_ else model
    x = torch.randint(0, mc.vocab_size, (B, T), device=device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype), sdpa_fast(device):
            loss = run(x, x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    tok_s = B * T * steps / (time.perf_counter() - t)
    peak = peak_flops(device, "bf16")
    mfu = model.flops_per_token(T) * tok_s / peak if peak else None
    return tok_s, mfu


def sampling(mc, new_tokens: int, device: torch.device) -> tuple[float, float, bool]:  # noqa: ANN001
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ours = GPT(mc).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, d)
        hf = GPT2LMHeadModel.from_pretrained(d).to(device).eval()
    prompt = torch.randint(0, mc.vocab_size, (1, 16)).tolist()[0]
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, stop_at_eot=False)
    ids = torch.tensor([prompt], device=device)

    def ours_run() -> list[int]:
        return generate_tokens(ours, prompt, cfg)[0]

    def hf_run() -> list[int]:
        with torch.no_grad():
            out = hf.generate(
                ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=50256
            )
        return out[0, len(prompt) :].tolist()

    timings = {}
    results = {}
    for name, fn in (("ours", ours_run), ("hf", hf_run)):
        fn()  # warm-up
        sync(device)
        t = time.perf_counter()
        results[name] = fn()
        sync(device)
        timings[name] = new_tokens / (time.perf_counter() - t)
    return timings["ours"], timings["hf"], results["ours"] == results["hf"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, micro preset, tiny sizes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    if a.dry_run:
        device, preset, B, T, steps, new = torch.device("cpu"), "micro", 4, 32, 2, 16
    else:
        try:
            device = pick_device("cuda")
        except ConfigError:
            sys.exit("no CUDA GPU visible; use --dry-run to check the script on CPU")
        preset, B, T, steps, new = "gpt2", a.batch_size, 1024, a.steps, 256
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, preset {preset}, batch {B} x {T}", flush=True)
    rows = []

    t0 = time.time()
    mc = model_config(preset, pad_vocab=True)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, mc.vocab_size, (4, min(T, 256)), generator=g).to(device),) * 2 for _ in range(5)]
    fp32, bf16 = losses(mc, batches, None, device), losses(mc, batches, torch.bfloat16, device)
    diff = max(abs(a - b) for a, b in zip(fp32, bf16))
    ok = diff < 0.05 * max(1.0, fp32[0] / 10)
    rows.append(
        (
            "bf16 vs fp32 loss, 5 steps",
            f"max |diff| {diff:.4f} ({fp32[-1]:.3f} vs {bf16[-1]:.3f})",
            "ok" if ok else "MISMATCH",
        )
    )
    print(f"  correctness done in {time.time() - t0:.0f}s", flush=True)

    for compile_ in (False, True) if not a.no_compile and not a.dry_run else (False,):
        t0 = time.time()
        try:
            tok_s, mfu = throughput(mc, B, T, compile_, steps, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the eager run's memory back before the compiled one
            mfu_s = f", MFU {100 * mfu:.1f}%" if mfu is not None else ""
            rows.append(
                (f"train {preset} bf16 {'compiled' if compile_ else 'eager'}", f"{tok_s:,.0f} tok/s{mfu_s}", "")
            )
        except torch.OutOfMemoryError:
            rows.append(
                (f"train {preset} {'compiled' if compile_ else 'eager'}", "out of memory", "lower --batch-size")
            )
        print(f"  throughput ({'compiled' if compile_ else 'eager'}) done in {time.time() - t0:.0f}s", flush=True)

    t0 = time.time()
    ours, hf, same = sampling(model_config(preset), new, device)
    rows.append(
        (
            f"greedy sampling, {new} tokens",
            f"ours {ours:,.0f} tok/s vs HF {hf:,.0f} tok/s = {ours / hf:.2f}x",
            "same tokens" if same else "tokens differ",
        )
    )
    print(f"  sampling done in {time.time() - t0:.0f}s", flush=True)

    width = max(len(r[0]) for r in rows)
    print()
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:<55} {note}")


if __name__ == "__main__":
    main()
