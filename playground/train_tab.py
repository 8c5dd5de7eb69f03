"""Train tab: a form for TrainConfig, the exact CLI command it runs, validation next to the fields, launch/stop/resume.

The form's values become one TrainConfig (the same object the CLI reads from config.json); the tab only validates
it and hands it to core.jobs, which starts `python -m core.train` in the background.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from core.config import PRESETS, ConfigError, ModelConfig, TrainConfig, model_config
from core.data import DataError, source_files
from core.runs import validate_run_name
from playground.runs_view import duration, human, jobs_for, list_runs, run_choices

DATA_SOURCES = {
    "shakespeare": "Bundled tinyshakespeare (1 MB)",
    "local": "Local file or folder",
    "hf": "Hugging Face dataset",
}
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
GPU_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_choices(gpus: int = GPU_COUNT) -> list[tuple[str, str]]:
    choices = [("CPU · 1 process", "cpu"), ("CPU · DDP (gloo)", "cpu-ddp")]
    if gpus >= 1:
        choices.append(("GPU · 1 process", "gpu"))
    if gpus >= 2:
        choices.append((f"All {gpus} GPUs · DDP (nccl)", "gpus-ddp"))
    return choices


# Form fields in the order of the callbacks' inputs, with their defaults (a newcomer's first run: tiny on CPU).
DEFAULTS: dict[str, Any] = {
    "run_name": "",
    "preset": "tiny",
    "data_source": "shakespeare",
    "data_path": "",
    "hf_dataset": "",
    "hf_config": "",
    "hf_token_budget": 10_000_000,
    "batch_size": 16,
    "seq_len": 128,
    "total_batch_tokens": 0,
    "max_steps": 2000,
    "lr": 1e-3,
    "warmup_steps": 100,
    "min_lr": 1e-4,
    "weight_decay": 0.1,
    "precision": "auto",
    "compile": False,
    "eval_interval": 100,
    "ckpt_interval": 500,
    "sample_interval": 200,
    "seed": 1337,
    "init_from": "scratch",
    "device": "cpu",
    "nproc": 2,
    "allow_concurrent": False,
}
FIELDS = list(DEFAULTS)
INT_FIELDS = {
    "batch_size",
    "seq_len",
    "total_batch_tokens",
    "max_steps",
    "warmup_steps",
    "eval_interval",
    "ckpt_interval",
    "sample_interval",
    "seed",
    "nproc",
    "hf_token_budget",
}
# Which field a ConfigError is about, by how its message starts (longest keys first: min_lr before lr).
ERROR_FIELDS = [
    ("total_batch_tokens", "total_batch_tokens"),
    ("run name", "run_name"),
    ("batch_size", "batch_size"),
    ("seq_len", "seq_len"),
    ("max_steps", "max_steps"),
    ("min_lr", "min_lr"),
    ("lr", "lr"),
    ("warmup", "warmup_steps"),
    ("weight_decay", "weight_decay"),
    ("intervals", "eval_interval"),
    ("precision", "precision"),
    ("nproc", "nproc"),
]


class FieldError(ValueError):
    """A form value that cannot work; `field` is the form field the message belongs next to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def param_count(mc: ModelConfig) -> int:
    """GPT-2 parameter count, analytically (tied head once, no padded rows): instant, no model built."""
    C, L = mc.n_embd, mc.n_layer
    per_layer = 12 * C * C + 13 * C if mc.bias else 12 * C * C + 4 * C  # attn + mlp weights, biases, 2 LayerNorms
    return mc.vocab_size * C + mc.block_size * C + L * per_layer + (2 * C if mc.bias else C)


def preset_summary(preset: str) -> str:
    """'124M parameters · 12 layers · 12 heads · width 768 · context 1024'."""
    try:
        mc = model_config(preset)
    except ConfigError as e:
        return str(e)
    return (
        f"{human(param_count(mc))} parameters · {mc.n_layer} layers · {mc.n_head} heads · width {mc.n_embd} · "
        f"context {mc.block_size}"
    )


def _number(values: dict[str, Any], name: str, label: str) -> Any:
    v = values.get(name)
    if v is None or v == "":
        raise FieldError(name, f"{label} is empty; enter a number")
    return int(v) if name in INT_FIELDS else float(v)


def form_to_config(values: dict[str, Any], runs_dir: Path) -> TrainConfig:
    """The validated TrainConfig of the form's values; FieldError names the field and the fix."""
    v = {**DEFAULTS, **values}
    num = {
        name: _number(v, name, name.replace("_", " "))
        for name in INT_FIELDS | {"lr", "min_lr", "weight_decay"}
        if name != "hf_token_budget" or v["data_source"] == "hf"
    }
    name = (v["run_name"] or "").strip()
    if name:
        try:
            validate_run_name(name)
        except ConfigError as e:
            raise FieldError("run_name", str(e)) from e
    data, data_config, budget = "shakespeare", None, None
    if v["data_source"] == "local":
        path = (v["data_path"] or "").strip()
        if not path:
            raise FieldError("data_path", "data path is empty; give a .txt/.jsonl/.parquet file or a folder of them")
        try:
            source_files(path)
        except DataError as e:
            raise FieldError("data_path", str(e)) from e
        data = path
    elif v["data_source"] == "hf":
        dataset = (v["hf_dataset"] or "").strip().removeprefix("hf:")
        if not dataset:
            raise FieldError("hf_dataset", "dataset name is empty; e.g. HuggingFaceFW/fineweb-edu")
        if num["hf_token_budget"] < 1:
            raise FieldError("hf_token_budget", "token budget must be >= 1: a streamed dataset needs a cap")
        data, data_config, budget = f"hf:{dataset}", (v["hf_config"] or "").strip() or None, num["hf_token_budget"]
    device, nproc = {
        "cpu": ("cpu", 1),
        "cpu-ddp": ("cpu", num["nproc"]),
        "gpu": ("cuda", 1),
        "gpus-ddp": ("cuda", GPU_COUNT),
    }.get(v["device"], (None, 0))
    if device is None:
        raise FieldError("device", f"unknown device choice {v['device']!r}")
    if v["device"] == "cpu-ddp" and not 2 <= nproc <= 64:
        raise FieldError("nproc", f"CPU DDP needs 2 to 64 processes, got {nproc}")
    if device == "cuda" and not GPU_COUNT:
        raise FieldError("device", "no CUDA GPU is visible to this machine; choose a CPU option")
    init_from = (v["init_from"] or "scratch").strip() or "scratch"
    looks_like_path = init_from.startswith((".", "~", "/")) or init_from.count("/") > 1
    if init_from != "scratch" and looks_like_path and not Path(init_from).expanduser().exists():
        raise FieldError(
            "init_from", f"{init_from} not found; pick a run, give a Hugging Face GPT-2 folder or a hub id like gpt2"
        )
    cfg = TrainConfig(
        run_name=name,
        runs_dir=str(runs_dir),
        preset=v["preset"],
        data=data,
        data_config=data_config,
        data_token_budget=budget,
        batch_size=num["batch_size"],
        seq_len=num["seq_len"],
        total_batch_tokens=num["total_batch_tokens"] or None,
        max_steps=num["max_steps"],
        lr=num["lr"],
        warmup_steps=num["warmup_steps"],
        min_lr=num["min_lr"],
        weight_decay=num["weight_decay"],
        precision=v["precision"],
        compile=bool(v["compile"]),
        eval_interval=num["eval_interval"],
        ckpt_interval=num["ckpt_interval"],
        sample_interval=num["sample_interval"],
        seed=num["seed"],
        init_from=init_from,
        device=device,
        nproc=nproc,
    )
    try:
        cfg.validate()
    except ConfigError as e:
        msg = str(e)
        field = next((f for key, f in ERROR_FIELDS if msg.startswith(key)), "launch")
        raise FieldError(field, msg) from e
    return cfg


def batch_summary(cfg: TrainConfig) -> str:
    """How a step is made: micro-batch x processes x accumulation = tokens per optimizer step."""
    accum = cfg.grad_accum_steps(cfg.nproc)
    seq = cfg.effective_seq_len
    step_tokens = cfg.batch_size * seq * cfg.nproc * accum
    procs = f" × {cfg.nproc} processes" if cfg.nproc > 1 else ""
    total = cfg.total_steps(cfg.nproc) * step_tokens
    return (
        f"**{accum}** accumulation step{'s' if accum > 1 else ''} · {cfg.batch_size} × {seq} tokens{procs} "
        f"× {accum} = **{step_tokens:,} tokens / step** · {human(total)} tokens in total"
    )


def cli_flags(cfg: TrainConfig) -> list[str]:
    """The config as `python -m core.jobs launch` flags: only the fields that differ from TrainConfig's defaults."""
    default = TrainConfig()
    flags = []
    for key, value in cfg.to_dict().items():
        if key in ("runs_dir", "extra") or value == getattr(default, key) or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def command_preview(cfg: TrainConfig, runs_dir: Path) -> str:
    """What Launch runs (exactly), and the one-liner that does the same launch from a terminal."""
    jobs = jobs_for(runs_dir)
    terminal = ["python", "-m", "core.jobs", "--runs-dir", str(runs_dir), "launch", *cli_flags(cfg)]
    return (
        "# What Launch runs (after writing the form to config.json in the run folder):\n"
        f"{jobs.command_line(cfg)}\n\n"
        "# The same launch from a terminal:\n"
        f"{shlex.join(terminal)}"
    )


def init_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """scratch, then every run that has a checkpoint (own runs and imported GPT-2 weights)."""
    choices = [("scratch (random init)", "scratch")]
    for st in list_runs(runs_dir):
        if st.checkpoint:
            choices.append((f"{st.name} ({st.checkpoint})", st.run_dir))
    return choices


@dataclass
class TrainTab:
    launched: gr.State  # "<run>@<time>" of the run just launched or resumed: the Monitor tab follows it
    run_picker: gr.Dropdown
    init_from: gr.Dropdown
    refresh_choices: Any  # callback(run) -> updates for [run_picker, init_from]


def _field_updates(infos: dict[str, str | None], error: FieldError | None, preset: str | None = None) -> list[Any]:
    """Put the error message under its field (red) and restore every other field's hint (the preset's: its size)."""
    out = []
    for name in FIELDS:
        if error is not None and error.field == name:
            out.append(gr.update(info=f"⚠ {error}", elem_classes=["field-error"]))
        elif name == "preset" and preset:
            out.append(gr.update(info=preset_summary(preset), elem_classes=[]))
        else:
            out.append(gr.update(info=infos.get(name), elem_classes=[]))
    return out


def build_tab(runs_dir: Path) -> TrainTab:
    jobs = jobs_for(runs_dir)
    gpu_note = (
        f"{GPU_COUNT} CUDA GPU{'s' if GPU_COUNT != 1 else ''} detected"
        if GPU_COUNT
        else "No CUDA GPU detected: GPU options appear when one is present"
    )
    infos: dict[str, str | None] = {
        "preset": preset_summary(DEFAULTS["preset"]),
        "run_name": "Empty: preset + date and time",
        "data_path": "A .txt/.jsonl/.parquet file, or a folder of them",
        "hf_dataset": "Streamed from the Hub (needs internet and `pip install datasets`)",
        "hf_token_budget": "Tokens taken from the stream",
        "batch_size": "Sequences per process",
        "seq_len": "≤ the model's context",
        "total_batch_tokens": "0: no accumulation",
        "max_steps": "Optimizer steps",
        "min_lr": "Cosine decay ends here",
        "eval_interval": "Steps between val-loss evaluations (0 = never)",
        "ckpt_interval": "Steps between checkpoints (0 = only at the end / on stop)",
        "sample_interval": "Steps between text samples shown in Monitor (0 = never)",
        "init_from": "Start from random weights, a run's latest checkpoint, or an imported GPT-2",
        "nproc": "Processes for CPU DDP (gloo)",
        "allow_concurrent": "Run even if another job is using the same device",
        "device": gpu_note,
    }
    comps: dict[str, Any] = {}

    def I(name: str) -> str | None:  # noqa: E743 (short on purpose: read as "info of")
        return infos.get(name)

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Group(), gr.Row():
                comps["preset"] = gr.Dropdown(
                    list(PRESETS), value=DEFAULTS["preset"], label="Model preset", info=I("preset"), scale=3
                )
                comps["run_name"] = gr.Textbox(label="Run name", placeholder="auto", info=I("run_name"), scale=2)
            with gr.Group():
                comps["data_source"] = gr.Radio(
                    [(label, key) for key, label in DATA_SOURCES.items()], value="shakespeare", label="Training data"
                )
                comps["data_path"] = gr.Textbox(
                    label="Data path", placeholder="/path/to/corpus.txt", info=I("data_path"), visible=False
                )
                with gr.Row(visible=False) as hf_row:
                    comps["hf_dataset"] = gr.Textbox(
                        label="Dataset", placeholder="HuggingFaceFW/fineweb-edu", info=I("hf_dataset"), scale=3
                    )
                    comps["hf_config"] = gr.Textbox(label="Config", placeholder="sample-10BT", scale=2)
                    comps["hf_token_budget"] = gr.Number(
                        DEFAULTS["hf_token_budget"], label="Token budget", precision=0, info=I("hf_token_budget")
                    )
            with gr.Group():
                with gr.Row():
                    for name, label in (
                        ("batch_size", "Batch size"),
                        ("seq_len", "Sequence length"),
                        ("total_batch_tokens", "Tokens per step"),
                        ("max_steps", "Steps"),
                    ):
                        comps[name] = gr.Number(DEFAULTS[name], label=label, precision=0, info=I(name), minimum=0)
                batch_md = gr.Markdown(batch_summary(form_to_config(DEFAULTS, runs_dir)), elem_classes=["hint"])
            with gr.Group(), gr.Row():
                comps["lr"] = gr.Number(DEFAULTS["lr"], label="Learning rate", info="Peak, after warmup")
                comps["warmup_steps"] = gr.Number(
                    DEFAULTS["warmup_steps"], label="Warmup steps", precision=0, info="Linear ramp to the peak"
                )
                comps["min_lr"] = gr.Number(DEFAULTS["min_lr"], label="Min learning rate", info=I("min_lr"))
                comps["weight_decay"] = gr.Number(
                    DEFAULTS["weight_decay"], label="Weight decay", info="AdamW, on matrices only"
                )
            with gr.Accordion("Evaluation, checkpoints, precision, seed", open=False):
                with gr.Row():
                    for name, label in (
                        ("eval_interval", "Eval every"),
                        ("ckpt_interval", "Checkpoint every"),
                        ("sample_interval", "Sample every"),
                        ("seed", "Seed"),
                    ):
                        comps[name] = gr.Number(DEFAULTS[name], label=label, precision=0, info=I(name), minimum=0)
                with gr.Row():
                    comps["precision"] = gr.Dropdown(
                        PRECISIONS, value="auto", label="Precision", info="auto: bf16 on recent GPUs, else fp32"
                    )
                    comps["compile"] = gr.Checkbox(
                        False, label="torch.compile", info="Faster steps after a slow first one"
                    )
        with gr.Column(scale=2):
            with gr.Group():
                comps["device"] = gr.Radio(device_choices(), value="cpu", label="Device", info=I("device"))
                comps["nproc"] = gr.Slider(2, 8, value=2, step=1, label="CPU processes", info=I("nproc"), visible=False)
                comps["allow_concurrent"] = gr.Checkbox(
                    False, label="Allow alongside another job", info=I("allow_concurrent")
                )
            comps["init_from"] = gr.Dropdown(
                init_choices(runs_dir),
                value="scratch",
                label="Initialize from",
                info=I("init_from"),
                allow_custom_value=True,
            )
            first = form_to_config(DEFAULTS, runs_dir)
            command = gr.Code(
                command_preview(first, runs_dir),
                label="Command (copy it to a terminal)",
                language="shell",
                wrap_lines=True,
                elem_id="command-preview",
            )
            message = gr.Markdown(elem_classes=["form-message"], elem_id="train-message")
            launch_btn = gr.Button("Launch training", variant="primary", size="lg", elem_id="launch-btn")
            gr.Markdown("**Manage a run**", elem_classes=["section-title"])
            with gr.Row(equal_height=True):
                run_picker = gr.Dropdown(
                    run_choices(list_runs(runs_dir)), label="Run", show_label=False, scale=5, elem_id="train-run-picker"
                )
                stop_btn = gr.Button(
                    "Stop", size="md", scale=1, min_width=76, elem_classes=["danger"], elem_id="train-stop"
                )
                resume_btn = gr.Button("Resume", size="md", scale=1, min_width=86, elem_id="train-resume")
            run_md = gr.Markdown("Pick a run to stop or resume it.", elem_classes=["hint"])
    for name, comp in comps.items():  # stable ids for browser tests and custom CSS
        comp.elem_id = "train-" + name.replace("_", "-")
    launched = gr.State("")

    inputs = [comps[n] for n in FIELDS]
    field_outputs = [comps[n] for n in FIELDS]

    def preview(*values: Any) -> list[Any]:
        """Live: validation next to the field, the batch arithmetic and the exact command."""
        v = dict(zip(FIELDS, values))
        try:
            cfg = form_to_config(v, runs_dir)
        except FieldError as e:
            msg = f"⚠ {e}" if e.field == "launch" else "⚠ Fix the highlighted field before launching."
            return [*_field_updates(infos, e, v.get("preset")), gr.update(), "", msg]
        return [*_field_updates(infos, None, v.get("preset")), command_preview(cfg, runs_dir), batch_summary(cfg), ""]

    preview_outputs = [*field_outputs, command, batch_md, message]
    for comp in inputs:
        getattr(comp, "input" if isinstance(comp, (gr.Textbox, gr.Number)) else "change")(
            preview, inputs, preview_outputs, show_progress="hidden", queue=False
        )

    def on_preset(preset: str, seq_len: int | None) -> Any:
        """Show the model's size; shrink the sequence length when the new model's context is shorter."""
        try:
            block = model_config(preset).block_size
        except ConfigError:
            return gr.update()
        return gr.update(value=block) if not seq_len or seq_len > block else gr.update()

    comps["preset"].change(on_preset, [comps["preset"], comps["seq_len"]], comps["seq_len"], queue=False).then(
        preview, inputs, preview_outputs, show_progress="hidden", queue=False
    )
    comps["data_source"].change(
        lambda s: (gr.update(visible=s == "local"), gr.update(visible=s == "hf")),
        comps["data_source"],
        [comps["data_path"], hf_row],
        queue=False,
    )
    comps["device"].change(lambda d: gr.update(visible=d == "cpu-ddp"), comps["device"], comps["nproc"], queue=False)

    def launch(*values: Any) -> list[Any]:
        v = dict(zip(FIELDS, values))
        try:
            cfg = form_to_config(v, runs_dir)
        except FieldError as e:
            msg = f"⚠ {e}" if e.field == "launch" else f"⚠ Not launched: {e}"
            return [*_field_updates(infos, e, v.get("preset")), msg, gr.update(), gr.update(), gr.update()]
        try:
            job = jobs.launch(cfg, allow_concurrent=bool(v["allow_concurrent"]))
        except Exception as e:  # busy device, name clash, disk full: a message, never a trace
            # A taken name belongs next to the name field; a busy device next to the button.
            error = FieldError("run_name", str(e)) if "a run named" in str(e) else None
            return [
                *_field_updates(infos, error, v.get("preset")),
                f"⚠ Not launched: {e}",
                gr.update(),
                gr.update(),
                gr.update(),
            ]
        return [
            *_field_updates(infos, None, v.get("preset")),
            f"✅ Launched **{job.name}** (pid {job.pid}): follow it in the Monitor tab.",
            gr.update(choices=run_choices(list_runs(runs_dir)), value=job.name),
            f"{job.name}@{time.time()}",
            gr.update(choices=init_choices(runs_dir)),
        ]

    launch_btn.click(
        launch, inputs, [*field_outputs, message, run_picker, launched, comps["init_from"]], concurrency_limit=1
    )

    def describe(name: str | None) -> str:
        if not name:
            return "Pick a run to stop or resume it."
        try:
            st = jobs.status(name)
        except Exception as e:
            return f"⚠ {e}"
        step = f"step {st.step:,} / {st.total_steps:,}" if st.step is not None and st.total_steps else "no steps yet"
        return f"**{st.state}** · {step} · {duration(st.elapsed)} elapsed"

    def stop(name: str | None) -> tuple[str, Any]:
        if not name:
            return "⚠ Pick a run first.", gr.update()
        try:
            jobs.stop(name, wait=False)  # returns at once; the trainer saves a checkpoint and exits
        except Exception as e:
            return f"⚠ Could not stop {name}: {e}", gr.update()
        return describe(name), gr.update(choices=run_choices(list_runs(runs_dir)), value=name)

    def resume(name: str | None) -> tuple[str, Any, str]:
        if not name:
            return "⚠ Pick a run first.", gr.update(), gr.update()
        try:
            jobs.resume(name)
        except Exception as e:
            return f"⚠ Could not resume {name}: {e}", gr.update(), gr.update()
        return describe(name), gr.update(choices=run_choices(list_runs(runs_dir)), value=name), f"{name}@{time.time()}"

    run_picker.change(describe, run_picker, run_md, queue=False)
    stop_btn.click(stop, run_picker, [run_md, run_picker])
    resume_btn.click(resume, run_picker, [run_md, run_picker, launched])

    def refresh_choices(current: str | None) -> tuple[Any, Any]:
        """Runs and checkpoints appear in the pickers when the tab is opened (they change in other tabs)."""
        runs = list_runs(runs_dir)
        value = current if current in [st.name for st in runs] else None
        return gr.update(choices=run_choices(runs), value=value), gr.update(choices=init_choices(runs_dir))

    return TrainTab(launched, run_picker, comps["init_from"], refresh_choices)
