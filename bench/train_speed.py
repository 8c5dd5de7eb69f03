"""Tokens/s and peak memory of one training step (forward, backward, AdamW): ours vs transformers vs nanoGPT.

Same config, same batch, same optimizer settings for every contender, in fp32 and bf16 autocast. Each
(contender, precision) runs in its own subprocess per round, so its peak RSS is its own; rounds alternate the
order (A B C C B A ...) so a busy machine slows all alike; medians of the rounds are printed, with the ratio
to nanoGPT and to transformers at the same precision. nanoGPT is imported from a checkout given with
--nanogpt (its model.py; never copied here), its column skipped otherwise. All run under the tuned glibc
allocator the trainer uses (core/cpu_malloc.py). On CUDA it uses fused AdamW and also prints MFU and peak
GPU memory.

    python bench/train_speed.py --nanogpt ~/src/nanoGPT                      # CPU: tiny config
    python bench/train_speed.py --preset gpt2 --batch-size 4 --seq-len 256 --nanogpt ~/src/nanoGPT
    python bench/train_speed.py --preset gpt2 --batch-size 16 --seq-len 1024 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import ConfigError, ModelConfig, model_config  # noqa: E402
from core.cpu_malloc import TUNED_ENV, reexec_with_tuned_malloc  # noqa: E402
from core.device import pick_device  # noqa: E402
from core.hf import hf_config  # noqa: E402
from core.model import GPT  # noqa: E402
from core.precision import peak_flops  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
RESULT = "RESULT "  # prefix of the one line a worker prints for the parent


def hf_model(mc: ModelConfig):  # noqa: ANN201
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**hf_config(mc))  # the config.json export_hf writes: same shapes and dropout as ours
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def nanogpt_file(path: str) -> Path:
    """nanoGPT's model.py in a checkout (or the file itself); exits with a one-line message when absent."""
    file = Path(path).expanduser()
    file = file / "model.py" if file.is_dir() else file
    if not file.is_file():
        sys.exit(
            f"error: no nanoGPT model.py at {path}; pass a checkout (git clone https://github.com/karpathy/nanoGPT)"
        )
    return file


def nanogpt_model(mc: ModelConfig, path: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_file(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shape = dict(n_layer=mc.n_layer, n_head=mc.n_head, n_embd=mc.n_embd, dropout=mc.dropout, bias=mc.bias)
    return module.GPT(module.GPTConfig(block_size=mc.block_size, vocab_size=mc.vocab_size, **shape))


def build(name: str, mc: ModelConfig, device: torch.device, nanogpt: str | None):  # noqa: ANN201
    """(model, loss of a batch x): each contender's own way of computing the training loss."""
    if name == "transformers":
        model = hf_model(mc).to(device).train()
        return model, lambda x: model(input_ids=x, labels=x).loss
    if name == "nanogpt":
        model = nanogpt_model(mc, nanogpt).to(device).train()
        return model, lambda x: model(x, x)[1]
    model = GPT(mc).to(device).train()
    run = torch.compile(model) if name == "ours+compile" else model
    return model, lambda x: run(x, x).loss


def time_steps(step, x, n: int, device: torch.device) -> float:  # noqa: ANN001
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def measure(a: argparse.Namespace, device: torch.device) -> dict:
    """Worker: warm up, then time a.steps steps of one (contender, precision); its own peak memory."""
    name, precision = a.worker.split(":")
    dtype = DTYPES[precision]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    mc = model_config(a.preset, pad_vocab=False)  # HF has no padded vocabulary: same shapes for all
    torch.manual_seed(0)
    model, loss_of = build(name, mc, device, a.nanogpt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(x: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_of(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    x = torch.randint(0, mc.vocab_size, (a.batch_size, a.seq_len), device=device)
    t = time.perf_counter()
    for _ in range(2):  # warm up (and compile) outside the timing
        step(x)
    warm = time.perf_counter() - t
    seconds = time_steps(step, x, a.steps, device)
    rss_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = peak_flops(device, precision)
    return {
        "s_per_step": seconds,
        "warmup_s": warm,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit,
        "peak_gpu": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "mfu": GPT(mc).flops_per_token(a.seq_len) * x.numel() / seconds / peak if peak else None,
    }


def run_worker(job: tuple[str, str]) -> dict:
    """This command line again with --worker NAME:PRECISION, in a fresh process."""
    cmd = [sys.executable, *sys.orig_argv[1:], "--worker", ":".join(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        sys.exit(f"error: {' '.join(job)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def report(results: dict[tuple[str, str], list[dict]], tokens: int, device: torch.device) -> None:
    """Medians per (contender, precision), ratios at the same precision, the issue's two targets."""
    step = {job: statistics.median(r["s_per_step"] for r in rs) for job, rs in results.items()}
    rss = {job: max(r["peak_rss"] for r in rs) for job, rs in results.items()}
    gpu = device.type == "cuda"
    head = f"\n{'model':<13} {'prec':<5} {'ms/step':>9} {'tok/s':>9} {'vs nanoGPT':>10} {'vs HF':>7} {'peak RSS':>9}"
    print(head + (f" {'MFU':>6} {'GPU mem':>8}" if gpu else ""))
    for (name, prec), s in step.items():
        ratio = {p: f"{step[(p, prec)] / s:.2f}x" if (p, prec) in step else "-" for p in ("nanogpt", "transformers")}
        line = f"{name:<13} {prec:<5} {1000 * s:>9.1f} {tokens / s:>9,.0f} {ratio['nanogpt']:>10} "
        line += f"{ratio['transformers']:>7} {rss[(name, prec)] / 1e9:>7.2f}GB"
        if gpu:
            rs = results[(name, prec)]
            mfu = statistics.median(r["mfu"] for r in rs) if rs[0]["mfu"] else None
            line += f" {f'{100 * mfu:.1f}%' if mfu else '-':>6} {max(r['peak_gpu'] for r in rs) / 1e9:>6.2f}GB"
        print(line)
    if ("ours", "bf16") in step and ("nanogpt", "fp32") in step:
        speed = step[("nanogpt", "fp32")] / step[("ours", "bf16")]
        print(f"target: ours bf16 / nanoGPT fp32 tok/s = {speed:.2f}x (issue 15 asks >= 1.6x)")
    for prec in DTYPES:
        if ("ours", prec) in rss and ("nanogpt", prec) in rss:
            share = rss[("ours", prec)] / rss[("nanogpt", prec)]
            print(f"target: peak RSS ours / nanoGPT, {prec} = {share:.2f} (issue 15 asks <= 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median reported)")
    p.add_argument("--device", default="auto", help="auto: the GPU if there is one (core.device.pick_device)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32 and/or bf16 (autocast)")
    p.add_argument("--nanogpt", metavar="PATH", help="a nanoGPT checkout (or its model.py) to add as a peer")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # NAME:PRECISION, set by run_worker
    a = p.parse_args()

    try:
        device = pick_device(a.device)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if a.worker:
        print(RESULT + json.dumps(measure(a, device)))
        return
    precisions = a.precision.split(",")
    if not precisions or any(prec not in DTYPES for prec in precisions):
        sys.exit(f"error: --precision takes fp32, bf16 or both (fp32,bf16), not {a.precision!r}")
    names = ["ours", "transformers"]
    if a.nanogpt:
        nanogpt_file(a.nanogpt)
        names.append("nanogpt")
    if a.compile:
        names.append("ours+compile")
    jobs = [(name, prec) for prec in precisions for name in names]
    mc = model_config(a.preset, pad_vocab=False)
    with torch.device("meta"):
        n_params = GPT(mc).num_params()
    tuned = all(os.environ.get(k) == v for k, v in TUNED_ENV.items())
    print(
        f"{a.preset} ({n_params / 1e6:.1f}M params), batch {a.batch_size} x {a.seq_len}, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, tuned allocator {'on' if tuned else 'off'}"
    )
    if not a.nanogpt:
        print("nanoGPT column skipped: pass --nanogpt PATH (a checkout of github.com/karpathy/nanoGPT)")
    results: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
    for r in range(a.rounds):
        for job in jobs if r % 2 == 0 else jobs[::-1]:  # A B C C B A ...: drifts in load hit all alike
            res = run_worker(job)
            results[job].append(res)
            ms, gb = 1000 * res["s_per_step"], res["peak_rss"] / 1e9
            print(f"  round {r + 1}: {job[0]} {job[1]} {ms:.0f} ms/step, peak RSS {gb:.2f} GB", flush=True)
    report(results, a.batch_size * a.seq_len, device)


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # time the steps as the trainer runs them (see core/cpu_malloc.py)
    main()
