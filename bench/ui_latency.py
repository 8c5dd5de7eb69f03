"""UI latency against issue 15's targets, each beside a floor measured in the same run.

    python bench/ui_latency.py                  # all three, --repeats 3
    python bench/ui_latency.py --only monitor   # app | monitor | attention

- app: `python app.py` started to its page served (HTTP 200), vs `python -c "import torch, gradio"` (the imports
  any Gradio + PyTorch app pays). Target 3 s.
- monitor: one Monitor refresh of a 100k-step run after a new record arrived (the live tick: read, thin, redraw
  both charts), and the first drawing of it; vs building the same two plotly figures from kept points alone.
  Target 200 ms per refresh.
- attention: the Attention tab's callback on 256 tokens of a 124M model (random weights, already loaded), vs
  `transformers` GPT-2's forward with output_attentions on the same tokens. Target 2 s on CPU.

Sides alternate within each repeat (ABBA over repeats); medians are printed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TARGETS_S = {"app": 3.0, "monitor": 0.2, "attention": 2.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_app_start(runs: Path) -> float:
    """Seconds from spawning app.py to its page answering 200."""
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("app.py did not serve its page within 120 s")
    finally:
        proc.terminate()
        proc.wait(30)


def time_imports() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, gradio"], check=True)
    return time.perf_counter() - t0


def write_long_run(runs: Path, name: str, steps: int) -> Path:
    """A run folder with `steps` train records (and an eval every 250), as the trainer writes them."""
    from core.config import TrainConfig
    from core.metrics import MetricsWriter

    run = runs / name
    run.mkdir(parents=True)
    TrainConfig(run_name=name, preset="tiny").to_json(run / "config.json")
    w = MetricsWriter(run / "metrics.jsonl")
    for s in range(1, steps + 1):
        loss = 3.0 + 8.0 / (1 + s / 500)
        w.write("train", step=s, total_steps=steps, tokens=s * 4096, loss=loss, lr=6e-4, grad_norm=1.0, dt=0.1,
                tok_per_s=40000.0, mfu=None, elapsed=0.1 * s, eta_s=0.1 * (steps - s), mem_mb=900.0)  # fmt: skip
        if s % 250 == 0:
            w.write("eval", step=s, val_loss=loss + 0.05)
    w.close()
    return run


def monitor_sides(runs: Path, name: str) -> dict[str, Callable[[], None]]:
    import gradio as gr

    from core.metrics import MetricsWriter
    from playground import monitor_tab
    from playground.figures import health_figure, loss_figure
    from playground.tab import AppContext

    ctx = AppContext.for_runs_dir(runs)
    with gr.Blocks():
        tab = monitor_tab.build(ctx)
    view = (name, [], 0.6, "step", False)
    state: dict = {"cache": None, "step": 10**6}
    writer = MetricsWriter(runs / name / "metrics.jsonl")  # flushed per record, as the trainer's

    def first() -> None:
        monitor_tab.refresh_monitor(tab, ctx, *view, None)

    def tick() -> None:
        if state["cache"] is None:
            state["cache"] = monitor_tab.refresh_monitor(tab, ctx, *view, None)[tab["cache"]]
        state["step"] += 1
        writer.write("train", step=state["step"], total_steps=state["step"], tokens=1, loss=3.0, lr=6e-4,
                     grad_norm=1.0, dt=0.1, tok_per_s=1.0, mfu=None, elapsed=1.0, eta_s=0.0, mem_mb=1.0)  # fmt: skip
        out = monitor_tab.refresh_monitor(tab, ctx, *view, state["cache"])
        state["cache"] = out[tab["cache"]]

    kept = monitor_tab.refresh_monitor(tab, ctx, *view, None)[tab["cache"]]
    records = {n: rc.records for n, rc in kept.runs.items()}

    def figures_only() -> None:
        loss_figure(records, 0.6, "step", False)
        health_figure(records, "step", False)

    return {"refresh after a new record": tick, "first drawing": first, "plotly figures alone": figures_only}


def attention_sides(runs: Path) -> dict[str, Callable[[], None]]:
    import gradio as gr
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.checkpoint import save_checkpoint
    from core.config import TrainConfig, model_config
    from core.model import GPT
    from playground import attention_tab
    from playground.tab import AppContext

    torch.manual_seed(0)
    save_checkpoint(runs / "gpt2-random", 1, GPT(model_config("gpt2")), {})
    TrainConfig(run_name="gpt2-random", preset="gpt2").to_json(runs / "gpt2-random" / "config.json")
    ctx = AppContext.for_runs_dir(runs)
    with gr.Blocks():
        tab = attention_tab.build(ctx)
    text = " ".join(["the", "quick", "brown", "fox"] * 64)  # one token per word: 256 tokens
    hf = GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).eval()
    idx = torch.randint(0, 50257, (1, 256))

    def ours() -> None:
        out = attention_tab.show_attention(tab, ctx, "gpt2-random", text, 0, 0, False, "Entropy")
        assert "256 tokens" in out[tab["note"]], out[tab["note"]]

    def peer() -> None:
        with torch.no_grad():
            hf(idx, output_attentions=True)

    return {"Attention tab, 256 tokens": ours, "transformers forward + attentions": peer}


def medians(sides: dict[str, Callable[[], object]], repeats: int, warm: bool = True) -> dict[str, float]:
    if warm:
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # ABBA
        for k in order:
            t0 = time.perf_counter()
            out = sides[k]()
            times[k].append(out if isinstance(out, float) else time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(name: str, got: dict[str, float]) -> None:
    first, *rest = got
    target = TARGETS_S[name]
    ok = "meets" if got[first] <= target else "MISSES"
    print(f"{name}: {first} {got[first]:.3f} s ({ok} the {target:g} s target)")
    for k in rest:
        print(f"    vs {k} {got[k]:.3f} s: ratio {got[first] / got[k]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(TARGETS_S), action="append", help="run only this part (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100_000, help="train records in the Monitor's run")
    args = ap.parse_args()
    parts = args.only or ["app", "monitor", "attention"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        if "app" in parts:
            sides = {"app.py to a served page": lambda: time_app_start(runs), "import torch, gradio": time_imports}
            report("app", medians(sides, args.repeats, warm=False))
        if "monitor" in parts:
            write_long_run(runs, "long", args.steps)
            report("monitor", medians(monitor_sides(runs, "long"), args.repeats))
        if "attention" in parts:
            report("attention", medians(attention_sides(runs), args.repeats))


if __name__ == "__main__":
    main()
