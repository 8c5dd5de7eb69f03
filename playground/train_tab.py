"""Train tab: a form for TrainConfig, the exact CLI command it runs, validation next to the fields, launch/stop/resume.

The form's values become one TrainConfig (the same object the CLI reads from config.json); the tab only validates
it and hands it to core.jobs, which starts `python -m core.train` in the background.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.cli import config_to_flags
from core.config import PARALLEL, PRESETS, ConfigError, ModelConfig, TrainConfig, model_config
from core.data import BUNDLED, MAX_LISTED_FILES, DataError, check_source, source_files
from core.device import gpu_count
from core.hf_source import HFError, hf_model_config
from core.jobs import DeviceBusy, Jobs, JobStatus, NameTaken
from core.paths import UNRESTRICTED, AccessPolicy
from core.recipes import recipe_names
from core.runs import CheckpointError, read_state, validate_run_name
from core.weights import resolve_source
from playground import actions
from playground.recipe_form import NO_RECIPE, recipe_fill
from playground.runs_view import (
    duration,
    first_active,
    human,
    list_runs,
    picked_by_user,
    run_choices,
    stop_timeout_box,
)
from playground.tab import AppContext, OnOpen, Tab, bind

DATA_SOURCES = {
    "shakespeare": "Bundled tinyshakespeare (1 MB)",
    "local": "Local file or folder",
    "hf": "Hugging Face dataset",
}
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]

# Form fields in the order of the callbacks' inputs, with their defaults: a newcomer's first run, tiny on CPU, whose
# schedule (600 steps, lr 3e-3) was chosen by measurement to finish in minutes (FIRST_RUN below, docs/benchmarks.md).
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
    "max_steps": 600,
    "lr": 3e-3,
    "warmup_steps": 50,
    "min_lr": 3e-4,
    "weight_decay": 0.1,
    "precision": "auto",
    "compile": False,
    "eval_interval": 100,
    "ckpt_interval": 300,
    "sample_interval": 300,
    "seed": 1337,
    "init_from": "scratch",
    "device": "cpu",
    "nproc": 2,
    "parallel": "ddp",
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
NUMBER_FIELDS = [name for name in FIELDS if name in INT_FIELDS or name in ("lr", "min_lr", "weight_decay")]
# The hint under each field (the preset's and the device's are computed: see field_info). An error message takes
# its place until the value is fixed.
FIELD_INFOS = {
    "run_name": "Empty: preset + date and time",
    "data_path": "A .txt/.jsonl/.parquet file, or a folder of them",
    "hf_dataset": "Streamed from the Hub (needs internet and `pip install datasets`)",
    "hf_token_budget": "Tokens taken from the stream",
    "batch_size": "Sequences per process",
    "seq_len": "≤ the model's context",
    "total_batch_tokens": "0: no accumulation",
    "max_steps": "Optimizer steps",
    "lr": "Peak, after warmup",
    "warmup_steps": "Linear ramp to the peak",
    "min_lr": "Cosine decay ends here",
    "weight_decay": "AdamW, on matrices only",
    "eval_interval": "Steps between val-loss evaluations (0 = never)",
    "ckpt_interval": "Steps between checkpoints (0 = only at the end / on stop)",
    "sample_interval": "Steps between text samples shown in Monitor (0 = never)",
    "precision": "auto: bf16 on recent GPUs and on CPUs with AMX / AVX-512 BF16, else fp32",
    "compile": "Faster steps after a slow first one",
    "init_from": "Start from random weights, a run's latest checkpoint, or an imported GPT-2",
    "nproc": "Processes for CPU DDP (gloo)",
    "parallel": "DDP: a whole copy per process. FSDP: weights, gradients and AdamW state split over the processes, "
    "for a model one device cannot hold",
    "allow_concurrent": "Launch or resume next to another CPU job (both get slower)",
}
PICK_A_RUN_HINT = "Pick a run to stop or resume it."
FIRST_RUN = (
    "With the defaults, **Launch** trains the tiny preset on tinyshakespeare for 600 steps: about 6½ minutes on "
    "2 CPU cores with bf16 (val loss 4.80; samples with speaker names and verse). The *shakespeare-cpu* recipe "
    "(6 layers) reaches 4.66 in the same time."
)
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
TICK_S = 2.0  # Manage a run follows an active run at this pace


def device_choices(gpus: int) -> list[tuple[str, str]]:
    choices = [("CPU · 1 process", "cpu"), ("CPU · DDP (gloo)", "cpu-ddp")]
    if gpus >= 1:
        choices.append(("GPU · 1 process", "gpu"))
    if gpus >= 2:
        choices.append((f"All {gpus} GPUs · DDP (nccl)", "gpus-ddp"))
    return choices


def param_count(mc: ModelConfig) -> int:
    """GPT-2 parameter count, analytically (tied head once, no padded rows): instant, no model built."""
    C, L = mc.n_embd, mc.n_layer
    per_layer = 12 * C * C + 13 * C if mc.bias else 12 * C * C + 4 * C  # attn + mlp weights, biases, 2 LayerNorms
    return mc.vocab_size * C + mc.block_size * C + L * per_layer + (2 * C if mc.bias else C)


def shape_summary(mc: ModelConfig) -> str:
    """'124M parameters · 12 layers · 12 heads · width 768 · context 1024'."""
    return (
        f"{human(param_count(mc))} parameters · {mc.n_layer} layers · {mc.n_head} heads · width {mc.n_embd} · "
        f"context {mc.block_size}"
    )


def preset_summary(preset: str) -> str:
    try:
        return shape_summary(model_config(preset))
    except ConfigError as e:
        return str(e)


def init_model_config(init_from: str | None, runs_dir: Path) -> ModelConfig | None:
    """The shape of the weights init_from names, read from small files (a checkpoint's state.json, a Hugging Face
    folder's config.json), never from the weights; None for scratch, a hub id (known only once downloaded) or
    anything unreadable (launch says what is wrong with it)."""
    if not init_from or init_from == "scratch":
        return None
    try:
        source = resolve_source(init_from, runs_dir)
        if source.kind in ("run", "checkpoint"):
            return ModelConfig.from_dict(read_state(source.path)["model_config"])
        if source.kind == "hf_folder":
            return hf_model_config(json.loads((source.path / "config.json").read_text()))
    except (ConfigError, CheckpointError, HFError, OSError, ValueError, KeyError, TypeError):
        return None
    return None


def model_hint(v: dict[str, Any], runs_dir: Path, access: AccessPolicy) -> str:
    """The hint under the preset: the size of the model the run will train (Initialize from's weights replace the
    preset's shape)."""
    init = (v.get("init_from") or "scratch").strip() or "scratch"
    try:
        mc = init_model_config(access.check_model_source(init, "init_from"), runs_dir) if init != "scratch" else None
    except ConfigError:
        mc = None
    if mc is None:
        preset = v.get("preset") or DEFAULTS["preset"]
        shape = {k: x for k, x in (v.get("recipe_extra") or {}).items() if k in ("n_layer", "n_head", "n_embd")}
        if not shape:
            return preset_summary(preset)
        try:  # a recipe's own shape (shakespeare-cpu: tiny with 6 layers)
            return f"{preset} with {shape_summary(model_config(preset, **shape))}"
        except ConfigError as e:
            return str(e)
    return f"{Path(init).name}'s model: {shape_summary(mc)} (replaces the preset)"


def field_info(name: str, preset: str | None = None) -> str | None:
    """The hint under a form field: the preset's size, the GPUs found, or a fixed text."""
    if name == "preset":
        return preset_summary(preset or DEFAULTS["preset"])
    if name == "device":
        gpus = gpu_count()
        if not gpus:
            return "No CUDA GPU detected: GPU options appear when one is present"
        return f"{gpus} CUDA GPU{'s' if gpus != 1 else ''} detected"
    return FIELD_INFOS.get(name)


# ----- form -> TrainConfig (ConfigError.field names the form field a message belongs next to) -------------------


def _numbers(v: dict[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for name in NUMBER_FIELDS:
        if name == "hf_token_budget" and v["data_source"] != "hf":
            continue
        label = name.replace("_", " ")
        if v.get(name) is None or v[name] == "":
            raise ConfigError(f"{label} is empty; enter a number", field=name)
        value = float(v[name])
        if not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value}", field=name)
        if name in INT_FIELDS and not value.is_integer():
            raise ConfigError(f"{label} must be a whole number, got {value:g}; e.g. {round(value)}", field=name)
        out[name] = int(value) if name in INT_FIELDS else value
    return out


def _data_source(
    v: dict[str, Any], num: dict[str, Any], access: AccessPolicy, list_files: bool
) -> tuple[str, str | None, int | None]:
    """(data, data_config, data_token_budget) of the Training data fields. A data folder is listed (up to
    MAX_LISTED_FILES entries) only when list_files: the live preview only checks that it exists."""
    if v["data_source"] == "local":
        path = (v["data_path"] or "").strip()
        if not path:
            raise ConfigError(
                "data path is empty; give a .txt/.jsonl/.parquet file or a folder of them", field="data_path"
            )
        if len(path) > MAX_PATH_CHARS:  # said at once, without asking the file system (a paste gone wrong)
            raise ConfigError(
                f"data path is {len(path):,} characters long; a path has at most {MAX_PATH_CHARS:,}: give the path "
                "of a file or folder",
                field="data_path",
            )
        if access.exposed and path not in BUNDLED:  # the trainer gets the very path that was checked
            path = str(access.check_read(path, "data_path"))
        try:
            files = source_files(path, limit=MAX_LISTED_FILES) if list_files else [check_source(path)]
            if all(f.is_file() and f.stat().st_size == 0 for f in files):  # a folder's files: at launch only
                what = (
                    f"{path} is empty (0 bytes)" if len(files) == 1 else f"all {len(files)} files in {path} are empty"
                )
                raise ConfigError(f"{what}; give a corpus with text in it", field="data_path")
        except DataError as e:
            raise ConfigError(str(e), field="data_path") from e
        except OSError as e:  # a folder that cannot be walked (permissions)
            raise ConfigError(f"cannot list {path}: {e}; point at a folder you can read", field="data_path") from e
        return path, None, None
    if v["data_source"] == "hf":
        dataset = (v["hf_dataset"] or "").strip().removeprefix("hf:")
        if not dataset:
            raise ConfigError("dataset name is empty; e.g. HuggingFaceFW/fineweb-edu", field="hf_dataset")
        access.check_download(f"dataset {dataset!r}", "hf_dataset")
        if num["hf_token_budget"] < 1:
            raise ConfigError("token budget must be >= 1: a streamed dataset needs a cap", field="hf_token_budget")
        return f"hf:{dataset}", (v["hf_config"] or "").strip() or None, num["hf_token_budget"]
    return "shakespeare", None, None


def _device_and_nproc(v: dict[str, Any], num: dict[str, Any]) -> tuple[str, int]:
    gpus = gpu_count()
    choice = v["device"]
    choices = {"cpu": ("cpu", 1), "cpu-ddp": ("cpu", num["nproc"]), "gpu": ("cuda", 1), "gpus-ddp": ("cuda", gpus)}
    device, nproc = choices.get(choice, ("", 0))
    if not device:
        raise ConfigError(f"unknown device choice {choice!r}", field="device")
    if choice == "cpu-ddp" and not 2 <= nproc <= 64:
        raise ConfigError(f"CPU DDP needs 2 to 64 processes, got {nproc}", field="nproc")
    if device == "cuda" and not gpus:
        raise ConfigError("no CUDA GPU is visible to this machine; choose a CPU option", field="device")
    if v["parallel"] not in PARALLEL:
        raise ConfigError(f"parallel must be ddp or fsdp, got {v['parallel']!r}", field="parallel")
    return device, nproc


def _init_from(v: dict[str, Any], access: AccessPolicy) -> str:
    init_from = (v["init_from"] or "scratch").strip() or "scratch"
    if init_from != "scratch":
        init_from = access.check_model_source(init_from, "init_from")
    looks_like_path = init_from.startswith((".", "~", "/")) or init_from.count("/") > 1
    if init_from != "scratch" and looks_like_path and not Path(init_from).expanduser().exists():
        raise ConfigError(
            f"{init_from} not found; pick a run, give a Hugging Face GPT-2 folder or a hub id like gpt2",
            field="init_from",
        )
    return init_from


def form_to_config(
    values: dict[str, Any], runs_dir: Path, *, access: AccessPolicy = UNRESTRICTED, list_files: bool = False
) -> TrainConfig:
    """The validated TrainConfig of the form's values; ConfigError.field names the field (a form field, or a
    TrainConfig field the form does not show) and the message the fix. `access` says which local paths and
    downloads the form may use (exposed app: only allowed folders); list_files (at launch, not per keystroke)
    also lists a data folder's files. values["recipe_extra"]: the picked recipe's fields the form has no input for."""
    v = {**DEFAULTS, **values}
    num = _numbers(v)
    name = (v["run_name"] or "").strip()
    if name:
        validate_run_name(name)
    data, data_config, budget = _data_source(v, num, access, list_files)
    device, nproc = _device_and_nproc(v, num)
    init_from = _init_from(v, access)
    # The weights' shape replaces the preset's (the trainer adopts it too): validate against it, say it in config.json.
    shape = init_model_config(init_from, runs_dir)
    dims = {k: getattr(shape, k) for k in ("n_layer", "n_head", "n_embd", "block_size")} if shape else {}
    cfg = TrainConfig(
        **(v.get("recipe_extra") or {}),
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
        parallel=v["parallel"] if nproc > 1 else "ddp",
    )
    cfg = dataclasses.replace(cfg, **dims)
    return cfg.validate()


def batch_summary(cfg: TrainConfig) -> str:
    """How a step is made: micro-batch x processes x accumulation = tokens per optimizer step."""
    accum = cfg.grad_accum_steps(cfg.nproc)
    seq = cfg.effective_seq_len
    step_tokens = cfg.batch_size * seq * cfg.nproc * accum
    procs = f" × {cfg.nproc} processes ({cfg.parallel.upper()})" if cfg.nproc > 1 else ""
    total = cfg.total_steps(cfg.nproc) * step_tokens
    return (
        f"**{accum}** accumulation step{'s' if accum > 1 else ''} · {cfg.batch_size} × {seq} tokens{procs} "
        f"× {accum} = **{step_tokens:,} tokens / step** · {human(total)} tokens in total"
    )


def command_preview(cfg: TrainConfig, jobs: Jobs) -> str:
    """What Launch runs (exactly), and the one-liner that does the same launch from a terminal."""
    terminal = ["python", "-m", "core.jobs", "--runs-dir", str(jobs.runs_dir), "launch", *config_to_flags(cfg)]
    return (
        "# What Launch runs (after writing the form to config.json in the run folder):\n"
        f"{jobs.command_line(cfg)}\n\n"
        "# The same launch from a terminal:\n"
        f"{shlex.join(terminal)}"
    )


def init_choices(jobs: Jobs) -> list[tuple[str, str]]:
    """scratch, then every run that has a checkpoint (own runs and imported GPT-2 weights)."""
    choices = [("scratch (random init)", "scratch")]
    choices += [(f"{st.name} ({st.checkpoint})", st.run_dir) for st in list_runs(jobs) if st.checkpoint]
    return choices


def error_field(e: Exception) -> str | None:
    """The form field an error belongs next to; None: next to the Launch button (busy device, disk full)."""
    if isinstance(e, ConfigError):
        return e.field
    if isinstance(e, NameTaken):
        return "run_name"
    return None


def field_states(preset: str | None, error: Exception | None = None) -> dict[str, dict[str, Any]]:
    """{field: update}: the error's message under its field (red), every other field's hint restored."""
    view = FormView(preset, error_field(error) if error is not None else None, str(error or ""))
    return {name: view.field_update(name) for name in FIELDS}


@dataclass(frozen=True)
class FormView:
    """What the form shows around its values: which field is marked with which message, the preset's hint, the
    command, the batch line and the message above Launch. Each browser session keeps the last one it was sent, and
    a preview sends only what differs from it: a keystroke re-renders one or two components, not the whole form."""

    preset: str | None
    bad_field: str | None = None
    error: str = ""
    command: str | None = None  # None: the form is invalid, the last valid command stays
    batch: str = ""
    message: str = ""
    model: str | None = None  # the preset's hint when it is not the preset's size (see model_hint)

    def field_state(self, name: str) -> tuple[str | None, bool]:
        if name == self.bad_field:
            return f"⚠ {self.error}", True
        return (self.model if name == "preset" and self.model else field_info(name, self.preset)), False

    def field_update(self, name: str) -> dict[str, Any]:
        info, bad = self.field_state(name)
        return gr.update(info=info, elem_classes=["field-error"] if bad else [])

    def changes(self, tab: Tab, shown: FormView | None) -> dict[Any, Any]:
        """{component: update} for what differs from `shown` (everything when nothing was shown yet)."""
        names = FIELDS if shown is None else [n for n in FIELDS if self.field_state(n) != shown.field_state(n)]
        out: dict[Any, Any] = {tab[name]: self.field_update(name) for name in names}
        for key, value, before in (
            ("command", self.command, shown and shown.command),
            ("batch_md", self.batch, shown and shown.batch),
            ("message", self.message, shown and shown.message),
        ):
            if value is not None and (shown is None or value != before):
                out[tab[key]] = value
        kept = self.command if self.command is not None else shown and shown.command
        out[tab["shown"]] = dataclasses.replace(self, command=kept)
        return out


def form_view(ctx: AppContext, v: dict[str, Any]) -> FormView:
    """The live view of the form's values: the validation message next to its field, or the batch arithmetic and
    the exact command."""
    model = model_hint(v, ctx.runs_dir, ctx.access)
    try:
        cfg = form_to_config(v, ctx.runs_dir, access=ctx.access)
    except ConfigError as e:
        fix = "⚠ Fix the highlighted field before launching."
        if e.field in FIELDS:
            return FormView(v.get("preset"), e.field, str(e), message=fix, model=model)
        return FormView(v.get("preset"), message=f"⚠ {e}", model=model)
    return FormView(v.get("preset"), command=command_preview(cfg, ctx.jobs), batch=batch_summary(cfg), model=model)


def run_summary(st: JobStatus) -> str:
    """'**running** · step 120 / 2,000 · 1m 05s elapsed' for the run picked under Manage a run."""
    step = f"step {st.step:,} / {st.total_steps:,}" if st.step is not None and st.total_steps else "no steps yet"
    return f"**{st.state}** · {step} · {duration(st.elapsed)} elapsed"


# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------


def _form(values: tuple[Any, ...]) -> tuple[dict[str, Any], FormView | None]:
    """The form's values by field, and the view last shown (the optional inputs after the fields: the view, then
    the picked recipe's extra fields, kept under "recipe_extra")."""
    n = len(FIELDS)
    shown = values[n] if len(values) > n else None
    extra = values[n + 1] if len(values) > n + 1 else None
    return {**dict(zip(FIELDS, values)), "recipe_extra": extra or {}}, shown


def pick_recipe(tab: Tab, ctx: AppContext, name: str | None, device: str | None) -> dict[Any, Any]:
    """Fill the form with a recipe's config sized for the form's device, and say what it is and how long it takes;
    "None (custom)" keeps the form as it is and drops the recipe's extra fields."""
    if not name or name == NO_RECIPE:
        return {tab["recipe_md"]: "", tab["recipe_extra"]: {}}
    try:
        fill = recipe_fill(name, device or DEFAULTS["device"])
    except Exception as e:  # an unknown name, a device that vanished: a message, never a trace
        return {tab["recipe_md"]: f"⚠ Recipe not applied: {e}", tab["recipe_extra"]: {}}
    return {
        **{tab[field]: value for field, value in fill.values.items()},
        tab["recipe_md"]: fill.hint,
        tab["recipe_extra"]: fill.extra,
    }


def preview_form(tab: Tab, ctx: AppContext, *values: Any) -> dict[Any, Any]:
    """Live: validation next to the field, the batch arithmetic and the exact command. values: the FIELDS, then
    optionally the FormView last shown (only what changed since is sent)."""
    v, shown = _form(values)
    return form_view(ctx, v).changes(tab, shown)


def follow_model(
    tab: Tab, ctx: AppContext, preset: str, init_from: str | None, seq_len: float | None, followed: int | None
) -> Any:
    """The sequence length follows the context of the model (the preset's, or Initialize from's) while it still
    holds the context it last followed (`followed`); one the user typed stays, and only shrinks to fit."""
    try:
        init = ctx.access.check_model_source(init_from, "init_from") if init_from and init_from != "scratch" else None
        block = (init_model_config(init, ctx.runs_dir) or model_config(preset)).block_size
    except ConfigError:
        return gr.skip()
    if seq_len and seq_len != followed and seq_len <= block:
        return gr.skip()
    return {tab["seq_len"]: block, tab["seq_len_follows"]: block}


def show_data_fields(tab: Tab, ctx: AppContext, source: str) -> dict[Any, Any]:
    return {tab["data_path"]: gr.update(visible=source == "local"), tab["hf_row"]: gr.update(visible=source == "hf")}


def show_nproc(tab: Tab, ctx: AppContext, device: str) -> dict[Any, Any]:
    return {
        tab["nproc"]: gr.update(visible=device == "cpu-ddp"),
        tab["parallel"]: gr.update(visible=device in ("cpu-ddp", "gpus-ddp")),
    }


def launch_run(tab: Tab, ctx: AppContext, *values: Any) -> dict[Any, Any]:
    """Validate and launch; the launched marker (run, time) makes the Monitor tab follow the new run."""
    v, shown = _form(values)
    kept = {"command": shown.command, "batch": shown.batch} if shown else {}
    kept["model"] = model_hint(v, ctx.runs_dir, ctx.access)
    try:
        cfg = form_to_config(v, ctx.runs_dir, access=ctx.access, list_files=True)
        job = ctx.jobs.launch(cfg, allow_concurrent=bool(v["allow_concurrent"]))
    except Exception as e:  # bad value, name taken, busy device, disk full: a message, never a trace
        bad = error_field(e) if error_field(e) in FIELDS else None
        why = actions.device_busy(e, actions.TICK_ALONGSIDE) if isinstance(e, DeviceBusy) else str(e)
        view = FormView(v.get("preset"), bad, str(e) if bad else "", message=f"⚠ Not launched: {why}", **kept)
        return view.changes(tab, shown)
    view = FormView(
        v.get("preset"), message=f"✅ Launched **{job.name}** (pid {job.pid}): follow it in the Monitor tab.", **kept
    )
    return {
        **view.changes(tab, shown),
        tab["run_picker"]: gr.update(choices=run_choices(list_runs(ctx.jobs)), value=job.name),
        tab["launched"]: (job.name, time.time()),
        tab["init_from"]: gr.update(choices=init_choices(ctx.jobs)),
        tab["manage_timer"]: gr.Timer(active=True),
    }


def watch_picked_run(tab: Tab, ctx: AppContext, name: str | None, labelled: str | None) -> dict[Any, Any]:
    """Manage a run, live: the picked run's summary, and its label in the picker once its state changed (`labelled`:
    the state the label shows). The timer ticks while the run is active (running, stopping)."""
    if not name:
        return {tab["run_md"]: PICK_A_RUN_HINT, tab["manage_timer"]: gr.Timer(active=False)}
    try:
        st = ctx.jobs.status(name)
    except Exception as e:  # deleted meanwhile, unsafe name
        return {tab["run_md"]: f"⚠ {e}", tab["manage_timer"]: gr.Timer(active=False)}
    out = {tab["run_md"]: run_summary(st), tab["manage_timer"]: gr.Timer(active=st.active)}
    if st.state != labelled:
        out[tab["run_picker"]] = gr.update(choices=run_choices(list_runs(ctx.jobs)), value=name)
        out[tab["labelled"]] = st.state
    return out


def stop_picked_run(tab: Tab, ctx: AppContext, name: str | None, timeout_s: float | None) -> dict[Any, Any]:
    stopped = actions.stop_run(ctx.jobs, name, timeout_s)
    if not stopped.ok:
        return {tab["run_md"]: f"⚠ {stopped.message}"}
    return {tab["run_md"]: stopped.message, tab["manage_timer"]: gr.Timer(active=True)}  # the timer follows it


def resume_picked_run(tab: Tab, ctx: AppContext, name: str | None, alongside: bool = False) -> dict[Any, Any]:
    resumed = actions.resume_run(ctx.jobs, name, bool(alongside), actions.TICK_ALONGSIDE + " and resume again")
    if not resumed.ok:
        return {tab["run_md"]: f"⚠ {resumed.message}"}
    return {
        tab["run_md"]: resumed.message,
        tab["manage_timer"]: gr.Timer(active=True),
        tab["launched"]: (name, time.time()),
    }


def refresh_run_pickers(tab: Tab, ctx: AppContext, current: str | None, picked: bool = False) -> dict[Any, Any]:
    """Runs and checkpoints as they are now (they change in other tabs and terminals). The run the user picked stays
    while it exists; otherwise an active run is picked, if there is one."""
    runs = list_runs(ctx.jobs)
    value = current if picked and current in [st.name for st in runs] else first_active(runs)
    return {
        tab["run_picker"]: gr.update(choices=run_choices(runs), value=value),
        tab["labelled"]: next((st.state for st in runs if st.name == value), None),
        tab["init_from"]: gr.update(choices=init_choices(ctx.jobs)),
    }


# ----- layout -------------------------------------------------------------------------------------------------------


def _number_field(name: str, label: str) -> gr.Number:
    # No minimum/maximum and no precision: Gradio would reject or round a value (-5, 2.5) before the app's own
    # check (_numbers, TrainConfig.validate) names the field.
    return gr.Number(DEFAULTS[name], label=label, info=field_info(name))


def _layout_recipe() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Group():
        c["recipe"] = gr.Dropdown(
            [("None (custom)", NO_RECIPE), *((name, name) for name in recipe_names())],
            value=NO_RECIPE,
            label="Recipe",
            info="Fills the form with a ready-made run sized for the chosen device; every field stays editable",
            elem_id="train-recipe",
        )
        c["recipe_md"] = gr.Markdown(FIRST_RUN, elem_classes=["hint"], elem_id="train-recipe-hint")
    c["recipe_extra"] = gr.State({})  # the recipe's fields the form has no input for (see recipe_form)
    return c


def _layout_model_and_data() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Group(), gr.Row():
        c["preset"] = gr.Dropdown(
            list(PRESETS), value=DEFAULTS["preset"], label="Model preset", info=field_info("preset"), scale=3
        )
        c["run_name"] = gr.Textbox(label="Run name", placeholder="auto", info=field_info("run_name"), scale=2)
    with gr.Group():
        c["data_source"] = gr.Radio(
            [(label, key) for key, label in DATA_SOURCES.items()], value="shakespeare", label="Training data"
        )
        c["data_path"] = gr.Textbox(
            label="Data path", placeholder="/path/to/corpus.txt", info=field_info("data_path"), visible=False
        )
        with gr.Row(visible=False) as c["hf_row"]:
            c["hf_dataset"] = gr.Textbox(
                label="Dataset", placeholder="HuggingFaceFW/fineweb-edu", info=field_info("hf_dataset"), scale=3
            )
            c["hf_config"] = gr.Textbox(label="Config", placeholder="sample-10BT", scale=2)
            c["hf_token_budget"] = _number_field("hf_token_budget", "Token budget")
    return c


def _layout_batch_and_optimizer(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Group():
        with gr.Row():
            for name, label in (
                ("batch_size", "Batch size"),
                ("seq_len", "Sequence length"),
                ("total_batch_tokens", "Tokens per step"),
                ("max_steps", "Steps"),
            ):
                c[name] = _number_field(name, label)
        c["batch_md"] = gr.Markdown(batch_summary(form_to_config(DEFAULTS, ctx.runs_dir)), elem_classes=["hint"])
    with gr.Group(), gr.Row():
        c["lr"] = gr.Number(DEFAULTS["lr"], label="Learning rate", info=field_info("lr"))
        c["warmup_steps"] = _number_field("warmup_steps", "Warmup steps")
        c["min_lr"] = gr.Number(DEFAULTS["min_lr"], label="Min learning rate", info=field_info("min_lr"))
        c["weight_decay"] = gr.Number(DEFAULTS["weight_decay"], label="Weight decay", info=field_info("weight_decay"))
    return c


def _layout_advanced() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Accordion("Evaluation, checkpoints, precision, seed", open=False):
        with gr.Row():
            for name, label in (
                ("eval_interval", "Eval every"),
                ("ckpt_interval", "Checkpoint every"),
                ("sample_interval", "Sample every"),
                ("seed", "Seed"),
            ):
                c[name] = _number_field(name, label)
        with gr.Row():
            c["precision"] = gr.Dropdown(PRECISIONS, value="auto", label="Precision", info=field_info("precision"))
            c["compile"] = gr.Checkbox(False, label="torch.compile", info=field_info("compile"))
    return c


def _layout_launch(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Group():
        c["device"] = gr.Radio(device_choices(gpu_count()), value="cpu", label="Device", info=field_info("device"))
        c["nproc"] = gr.Slider(2, 8, value=2, step=1, label="CPU processes", info=field_info("nproc"), visible=False)
        c["parallel"] = gr.Radio(
            [("DDP", "ddp"), ("FSDP · sharded", "fsdp")],
            value="ddp",
            label="Parallel",
            info=field_info("parallel"),
            visible=False,
            elem_id="train-parallel",
        )
        c["allow_concurrent"] = gr.Checkbox(
            False, label="Allow alongside another job", info=field_info("allow_concurrent")
        )
    c["init_from"] = gr.Dropdown(
        init_choices(ctx.jobs),
        value="scratch",
        label="Initialize from",
        info=field_info("init_from"),
        allow_custom_value=True,
    )
    c["command"] = gr.Code(
        command_preview(form_to_config(DEFAULTS, ctx.runs_dir), ctx.jobs),
        label="Command (copy it to a terminal)",
        language="shell",
        wrap_lines=True,
        elem_id="command-preview",
    )
    c["message"] = gr.Markdown(elem_classes=["form-message"], elem_id="train-message")
    c["launch_btn"] = gr.Button("Launch training", variant="primary", size="lg", elem_id="launch-btn")
    c["shown"] = gr.State(None)  # the FormView this browser session shows
    c["seq_len_follows"] = gr.State(DEFAULTS["seq_len"])  # the model context the sequence length last followed
    return c


def _layout_manage(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    gr.Markdown("**Manage a run**", elem_classes=["section-title"])
    with gr.Row(equal_height=True):
        c["run_picker"] = gr.Dropdown([], label="Run", show_label=False, scale=5, elem_id="train-run-picker")
        c["stop_btn"] = gr.Button(
            "Stop", size="md", scale=1, min_width=76, elem_classes=["danger"], elem_id="train-stop"
        )
        c["resume_btn"] = gr.Button("Resume", size="md", scale=1, min_width=86, elem_id="train-resume")
        c["stop_timeout"] = stop_timeout_box("train-stop-timeout")
    c["run_md"] = gr.Markdown(PICK_A_RUN_HINT, elem_classes=["hint"], elem_id="train-run-summary")
    # The run just launched or resumed, as (name, time): the Monitor tab follows it.
    c["launched"] = gr.State(None)
    c["picked"] = gr.State(False)  # the user chose the run (else an active run is picked when the tab opens)
    c["labelled"] = gr.State(None)  # the state the picked run's label shows
    c["manage_timer"] = gr.Timer(TICK_S, active=False)
    return c


# ----- wiring -------------------------------------------------------------------------------------------------------


def _wire(tab: Tab, ctx: AppContext) -> None:
    fields = [tab[name] for name in FIELDS]
    form_in = [*fields, tab["shown"], tab["recipe_extra"]]
    form_out = [*fields, tab["command"], tab["batch_md"], tab["message"], tab["shown"]]
    # One event for every field: "always_last" runs it once more after a pending run with the values as they are
    # then, so however fast the typing, the last preview sees the final values (never per keystroke, never stale).
    gr.on(
        [*(comp.change for comp in fields), tab["recipe_extra"].change],
        bind(preview_form, tab, ctx),
        form_in,
        form_out,
        trigger_mode="always_last",
        show_progress="hidden",
        queue=False,
    )
    follows = [tab["seq_len"], tab["seq_len_follows"]]
    gr.on(
        [tab["preset"].change, tab["init_from"].change],
        bind(follow_model, tab, ctx),
        [tab["preset"], tab["init_from"], *follows],
        follows,
        queue=False,
        show_progress="hidden",
    )
    tab["data_source"].change(
        bind(show_data_fields, tab, ctx), tab["data_source"], [tab["data_path"], tab["hf_row"]], queue=False
    )
    tab["device"].change(bind(show_nproc, tab, ctx), tab["device"], [tab["nproc"], tab["parallel"]], queue=False)
    picked = tab["recipe"].input(
        bind(pick_recipe, tab, ctx),
        [tab["recipe"], tab["device"]],
        [*fields, tab["recipe_md"], tab["recipe_extra"]],
        queue=False,
        show_progress="hidden",
    )
    # Fields a recipe leaves at their values fire no change event: preview once the whole fill is in.
    picked.then(bind(preview_form, tab, ctx), form_in, form_out, queue=False, show_progress="hidden")
    launched = [tab["run_picker"], tab["launched"], tab["init_from"], tab["manage_timer"]]
    tab["launch_btn"].click(bind(launch_run, tab, ctx), form_in, [*form_out, *launched], concurrency_limit=1)

    picker = tab["run_picker"]
    picker.input(bind(picked_by_user, tab, ctx), None, tab["picked"], queue=False, show_progress="hidden")
    watch = bind(watch_picked_run, tab, ctx)
    watched = [tab["run_md"], tab["manage_timer"], picker, tab["labelled"]]
    picker.change(watch, [picker, tab["labelled"]], watched, queue=False, show_progress="hidden")
    tab["manage_timer"].tick(watch, [picker, tab["labelled"]], watched, show_progress="hidden")
    stop_inputs = [picker, tab["stop_timeout"]]
    tab["stop_btn"].click(bind(stop_picked_run, tab, ctx), stop_inputs, [tab["run_md"], tab["manage_timer"]])
    tab["resume_btn"].click(
        bind(resume_picked_run, tab, ctx),
        [picker, tab["allow_concurrent"]],
        [tab["run_md"], tab["manage_timer"], tab["launched"]],
    )
    refreshed = [picker, tab["labelled"], tab["init_from"]]
    tab.on_open += [
        OnOpen(bind(refresh_run_pickers, tab, ctx), [picker, tab["picked"]], refreshed),
        OnOpen(watch, [picker, tab["labelled"]], watched),  # the summary as it is now, even if the pick stayed
    ]


def build(ctx: AppContext) -> Tab:
    tab = Tab("train")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            tab.components |= _layout_recipe()
            tab.components |= _layout_model_and_data()
            tab.components |= _layout_batch_and_optimizer(ctx)
            tab.components |= _layout_advanced()
        with gr.Column(scale=2):
            tab.components |= _layout_launch(ctx)
            tab.components |= _layout_manage(ctx)
    for name in FIELDS:  # stable ids for browser tests and custom CSS
        tab[name].elem_id = "train-" + name.replace("_", "-")
    _wire(tab, ctx)
    return tab
