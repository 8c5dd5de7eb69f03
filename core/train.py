"""The training loop and its CLI: `python -m core.train ...`, alone or under torchrun (DDP).

    python -m core.train --preset tiny --data shakespeare --max-steps 200 --run-name tiny-shk
    python -m core.train --config checkpoints/tiny-shk/config.json
    python -m core.train --resume tiny-shk            # continue exactly from ckpt/latest
    python -m torch.distributed.run --standalone --nproc_per_node=2 -m core.train --preset tiny ...

Every TrainConfig field is a flag (--max-steps, --compile/--no-compile, ...). Rank 0 writes
metrics.jsonl, progress lines and checkpoints. SIGTERM/SIGINT finish the current optimizer step,
save a checkpoint and exit 0 with status "stopped"; all ranks agree on that step through an
all-reduced stop flag. Exit codes: 0 done or stopped, 1 failed (NaN loss, OOM, any error), 2 bad
configuration.

Fault injection for tests (documented, inert unless set): PLAYGROUND_TEST_CRASH_RANK=r makes rank r
raise at step PLAYGROUND_TEST_CRASH_STEP (default 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import torch

from core import distributed as D
from core.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    read_state,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    write_text_atomic,
)
from core.config import EOT_TOKEN, ConfigError, ModelConfig, TrainConfig, read_config_json
from core.cpu_malloc import reexec_with_tuned_malloc
from core.data import BatchLoader, DataError, prepare_for
from core.hf import HFError
from core.metrics import MetricsWriter
from core.model import GPT, clean_state_dict, load_clean_state_dict, unwrap_model
from core.optim import make_optimizer, schedule
from core.runs import default_run_name, resolve_run_dir
from core.weights import WeightsError, load_weights

# Dense peak FLOP/s per GPU (bf16, fp16, fp32-as-TF32) from vendor datasheets; first match wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "fp32": 418e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    ("A10G", {}),  # a cloud variant with its own clocks: unknown rather than wrong
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12}),
    ("4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("3090", {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingFailed(RuntimeError):
    """The run cannot go on (diverged loss, out of memory); the message says what to change."""


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at a precision, or None where unknown (CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it, fp16 (with a GradScaler) on older GPUs, fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU (it uses a GradScaler); use bf16 or fp32 on CPU")
    return precision


# --- CLI: one flag per TrainConfig field ----------------------------------------------------------


def _field_parser(tp: Any, name: str) -> Any:
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if args and optional else tp

    def parse(s: str) -> Any:
        if optional and s.lower() in ("none", "null", ""):
            return None
        if typing.get_origin(base) is dict or base is dict:
            value = json.loads(s)
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"--{name} needs a JSON object")
            return value
        return base(s)

    parse.__name__ = getattr(base, "__name__", str(base))  # argparse shows it in error messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a GPT-2 (single process, or DDP under torchrun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", help="a TrainConfig JSON file (e.g. <run>/config.json); flags override its fields")
    p.add_argument("--resume", metavar="RUN", help="continue a run (a name under --runs-dir, or its folder) exactly")
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        shown = getattr(defaults, f.name)
        if tp is bool:
            p.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"(default: {shown})",
            )
        else:
            p.add_argument(
                flag, dest=f.name, type=_field_parser(tp, f.name), default=argparse.SUPPRESS, help=f"(default: {shown})"
            )
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _config_dict(path: Path) -> dict[str, Any]:
    fields = {k: v for k, v in read_config_json(path).items() if k not in ("model_config", "model")}
    return TrainConfig.from_dict(fields).to_dict()


def find_run(spec: str, runs_dir: str) -> Path:
    """A run folder from a path to it, or from a run name under runs_dir."""
    p = Path(spec)
    if p.is_dir() and ((p / "config.json").is_file() or (p / "ckpt").is_dir()):
        return p
    run_dir = resolve_run_dir(runs_dir, spec)  # validates the name
    if not run_dir.is_dir():
        raise ConfigError(f"no run {spec!r} in {runs_dir}; give the run's name or folder to --resume")
    return run_dir


@dataclasses.dataclass
class Plan:
    cfg: TrainConfig
    run_dir: Path
    resume_from: Path | None  # checkpoint folder to continue from


def plan_run(args: argparse.Namespace, ctx: D.DistContext) -> Plan:
    """Resolve the config (file < flags; on resume the checkpoint's config < flags) and the run folder."""
    overrides = _overrides(args)
    if args.resume:
        run_dir = find_run(args.resume, overrides.get("runs_dir", TrainConfig.runs_dir))
        try:
            ckpt = resolve_checkpoint(run_dir)
            state = read_state(ckpt)
        except CheckpointError as e:
            raise ConfigError(f"cannot resume {run_dir}: {e}") from e
        base = state.get("train_config") or _config_dict(run_dir / "config.json")
        cfg = TrainConfig.from_dict({**base, **overrides, "run_name": run_dir.name, "runs_dir": str(run_dir.parent)})
        if cfg.total_batch_tokens is None:
            # Pin the total batch the run was trained with, so resuming on another number of processes
            # changes the accumulation, not the batch.
            cfg.total_batch_tokens = state.get("tokens_per_step")
        return Plan(cfg, run_dir, ckpt)
    base = _config_dict(Path(args.config)) if args.config else {}
    cfg = TrainConfig.from_dict({**base, **overrides})
    if not cfg.run_name:
        cfg.run_name = D.broadcast_object(default_run_name(cfg), ctx)
    run_dir = resolve_run_dir(cfg.runs_dir, cfg.run_name)
    if (run_dir / "ckpt").is_dir() and any((run_dir / "ckpt").iterdir()):
        raise ConfigError(
            f"run {cfg.run_name!r} already has checkpoints in {run_dir}; continue it with --resume {cfg.run_name} "
            "or choose another --run-name"
        )
    return Plan(cfg, run_dir, None)


# --- stop requests ---------------------------------------------------------------------------------


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop stops after the current optimizer step (repeats ignored)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            print(f"{self.signal} received: stopping after this step and saving a checkpoint", flush=True)


# --- the trainer -----------------------------------------------------------------------------------


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _init_model(cfg: TrainConfig, log: Any) -> GPT:
    """scratch: a fresh GPT of the config's preset; otherwise the weights core.weights resolves init_from to."""
    if cfg.init_from == "scratch":
        return GPT(cfg.model_config())
    try:
        model, source = load_weights(cfg.init_from, runs_dir=cfg.runs_dir)
    except WeightsError as e:
        raise ConfigError(str(e), field="init_from") from e
    if model.config.dropout != cfg.dropout:  # the weights' shape, with the dropout asked for now
        loaded, model = model, GPT(dataclasses.replace(model.config, dropout=cfg.dropout))
        load_clean_state_dict(model, clean_state_dict(loaded))
    log(f"initialized from {source} (weights only, fresh optimizer)")
    return model.train()


def _adopt_model_config(cfg: TrainConfig, mc: ModelConfig) -> None:
    """Make cfg describe a model loaded from elsewhere, so resume and config.json rebuild the same one."""
    cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size = mc.n_layer, mc.n_head, mc.n_embd, mc.block_size
    cfg.pad_vocab = mc.pad_vocab


class Trainer:
    def __init__(self, plan: Plan, ctx: D.DistContext, stop: StopFlag, metrics: MetricsWriter | None) -> None:
        self.cfg, self.run_dir, self.ctx, self.stop, self.metrics = plan.cfg, plan.run_dir, ctx, stop, metrics
        cfg, dev = self.cfg, ctx.device
        if cfg.parallel != "ddp":
            raise ConfigError(f"--parallel {cfg.parallel} is not available yet; use --parallel ddp")
        if cfg.nproc != ctx.world_size:
            self.log(
                f"note: the config asks for {cfg.nproc} process(es) but {ctx.world_size} are running; launch "
                f"`python -m torch.distributed.run --standalone --nproc_per_node={cfg.nproc} -m core.train ...` "
                "for DDP (the world size of the launch is what counts)"
            )
        self.precision = resolve_precision(cfg.precision, dev)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.autocast = (
            torch.autocast(dev.type, dtype=DTYPES[self.precision])
            if self.precision != "fp32"
            else contextlib.nullcontext()
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        resume = load_checkpoint(plan.resume_from) if plan.resume_from else None
        if resume:
            model = GPT(cfg.model_config())
            try:
                load_clean_state_dict(model, resume.model_state)
            except RuntimeError as e:
                raise ConfigError(f"checkpoint {resume.path} does not fit the configured model: {e}") from e
        else:
            model = _init_model(cfg, self.log)
            _adopt_model_config(cfg, model.config)
        cfg.validate(ctx.world_size)
        self.model = model.to(dev)
        self.optimizer = make_optimizer(self.model, cfg, dev.type)
        self.lr_at = schedule(cfg, ctx.world_size)
        self.accum = cfg.grad_accum_steps(ctx.world_size)
        self.seq_len = cfg.effective_seq_len
        self.tokens_per_step = cfg.batch_size * self.seq_len * self.accum * ctx.world_size
        self.total_steps = cfg.total_steps(ctx.world_size)
        self.flops_per_token = unwrap_model(self.model).flops_per_token(self.seq_len)
        self.peak = peak_flops(dev, self.precision)

        self.step, self.position, self.elapsed0 = 0, 0, 0.0
        self.saved_at: Path | None = None
        self.best_val: float | None = None
        self.last_val: tuple[int, float] | None = None
        self._data()
        if resume:
            self._restore(resume)
        else:
            torch.manual_seed(cfg.seed + ctx.rank)  # different dropout masks per rank

        self.compiled = torch.compile(self.model) if cfg.compile else self.model
        self.train_model: torch.nn.Module = self.compiled
        if ctx.is_ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.compiled, device_ids=[dev.index] if dev.type == "cuda" else None)

    def log(self, msg: str) -> None:
        if self.ctx.is_main:
            print(msg, flush=True)

    def _data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        # One process per machine tokenizes; the others wait and then read its cache.
        if ctx.local_rank == 0:
            cache = prepare_for(cfg, log=self.log)
        D.barrier(ctx)
        if ctx.local_rank != 0:
            cache = prepare_for(cfg, log=lambda _: None)
        self.train_data = BatchLoader(cache, "train", cfg.batch_size, self.seq_len, cfg.seed, True, ctx.device)
        self.val_data = BatchLoader(cache, "val", cfg.batch_size, self.seq_len, cfg.seed, False, ctx.device)

    def _restore(self, ck: Any) -> None:
        state, ctx = ck.state, self.ctx
        loader = state.get("loader", {})
        saved_tps = state.get("tokens_per_step")
        problems = []
        if loader.get("batch_size") != self.cfg.batch_size:
            problems.append(f"batch_size {loader.get('batch_size')} -> {self.cfg.batch_size}")
        if loader.get("seq_len") != self.seq_len:
            problems.append(f"seq_len {loader.get('seq_len')} -> {self.seq_len}")
        if saved_tps != self.tokens_per_step:
            problems.append(f"tokens per step {saved_tps} -> {self.tokens_per_step}")
        if loader.get("data_key") != self.train_data.data_key:
            problems.append("the data source (its files or split settings) changed")
        if problems:
            raise ConfigError(
                f"cannot resume {ck.path} exactly: {'; '.join(problems)}. Resume keeps batch_size, seq_len, data "
                "and the total batch (batch_size x seq_len x processes x accumulation) fixed; a different number "
                "of processes works when --total-batch-tokens stays the same"
            )
        if ck.optimizer_state is None:
            raise ConfigError(f"checkpoint {ck.path} has no optimizer state; use it with --init-from instead")
        try:
            self.optimizer.load_state_dict(ck.optimizer_state)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"optimizer state in {ck.path} does not fit this model: {e}") from e
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.position = state["step"], loader["position"]
        self.elapsed0 = state.get("elapsed", 0.0)
        self.best_val = state.get("best_val_loss")
        rngs = state.get("rng") or []
        if len(rngs) == ctx.world_size:
            restore_rng_state(rngs[ctx.rank])
        else:  # another world size: exact only without dropout (the only randomness in a step)
            torch.manual_seed(self.cfg.seed + ctx.rank + 1000 * self.step)
        self.log(f"resumed from {ck.path} at step {self.step}")

    def _state(self) -> dict[str, Any]:
        """Everything a resume needs besides weights and optimizer (JSON only)."""
        rngs = D.gather_objects(capture_rng_state(), self.ctx)
        return {
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_step": self.tokens_per_step,
            "world_size": self.ctx.world_size,
            "grad_accum": self.accum,
            "elapsed": self.elapsed0 + time.time() - self.t0,
            "rng": rngs,
            "loader": {
                "position": self.position,
                "epoch": self.train_data.epoch_of(self.position),
                "seed": self.cfg.seed,
                "batch_size": self.cfg.batch_size,
                "seq_len": self.seq_len,
                "data_key": self.train_data.data_key,
            },
            "best_val_loss": self.best_val,
            "val_loss": self.last_val[1] if self.last_val and self.last_val[0] == self.step else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "precision": self.precision,
            "train_config": self.cfg.to_dict(),
        }

    def save(self) -> Path | None:
        state = self._state()  # a collective: every rank takes part
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.model, state, self.optimizer, self.cfg.keep_last)
            self.log(f"saved checkpoint {path}")
        D.barrier(self.ctx)  # no rank runs ahead while rank 0 writes
        return path

    @torch.no_grad()
    def evaluate(self) -> float:
        ctx, n = self.ctx, self.cfg.eval_batches
        self.compiled.eval()
        losses = torch.zeros((), device=ctx.device)
        mine = range(ctx.rank, n, ctx.world_size)  # rank r takes val batches r, r+W, ...
        for g in mine:
            x, y = self.val_data.batch(g)
            with self.autocast:
                loss = self.compiled(x, y).loss
            losses += loss.float()
        self.compiled.train()
        return D.all_reduce_mean(losses / max(1, len(mine)), ctx).item()

    def sample_text(self) -> str:
        from core.generation import SamplingConfig, generate

        model = unwrap_model(self.model)
        model.eval()
        n = min(self.cfg.sample_tokens, model.config.block_size - 1)
        scfg = SamplingConfig(
            max_new_tokens=n, temperature=1.0, top_k=50, seed=self.cfg.seed + self.step, stop_at_eot=False
        )
        with self.autocast:
            text = generate(model, [EOT_TOKEN], scfg)[0]
        model.train()
        return text

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over accum micro-batches per rank; returns (mean loss, grad norm)."""
        loss = self.accumulate_gradients()
        return loss, self.apply_gradients()

    def accumulate_gradients(self) -> float:
        """Forward/backward over this rank's accum micro-batches; the loss averaged over all ranks."""
        ctx = self.ctx
        crash_rank = os.environ.get("PLAYGROUND_TEST_CRASH_RANK")
        crash_step = int(os.environ.get("PLAYGROUND_TEST_CRASH_STEP", "2"))
        if crash_rank is not None and int(crash_rank) == ctx.rank and self.step + 1 == crash_step:
            raise RuntimeError(f"test fault injection: rank {ctx.rank} crashed at step {self.step + 1}")
        loss_sum = torch.zeros((), device=ctx.device)
        for k in range(self.accum):
            x, y = self.train_data.batch(self.position + k * ctx.world_size + ctx.rank)
            last = k == self.accum - 1
            sync = self.train_model.no_sync() if ctx.is_ddp and not last else contextlib.nullcontext()
            with sync:
                with self.autocast:
                    loss = self.train_model(x, y).loss
                loss = loss / self.accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.position += self.accum * ctx.world_size
        return D.all_reduce_mean(loss_sum, ctx).item()

    def apply_gradients(self) -> float:
        """Clip, take the AdamW step at this step's lr, clear the gradients; returns the grad norm."""
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return norm.item()

    def write(self, kind: str, **fields: Any) -> None:
        if self.metrics:
            self.metrics.write(kind, **fields)

    def run(self) -> bool:
        """Train to total_steps or a stop request; True when stopped early (checkpoint in self.saved_at)."""
        cfg, ctx = self.cfg, self.ctx
        self.t0 = time.time()
        self.write(
            "status",
            state="running",
            step=self.step,
            total_steps=self.total_steps,
            world_size=ctx.world_size,
            grad_accum=self.accum,
            tokens_per_step=self.tokens_per_step,
            precision=self.precision,
            device=str(ctx.device),
        )
        self.log(
            f"training {unwrap_model(self.model).num_params():,} parameters on {ctx.world_size} x {ctx.device} "
            f"({self.precision}); {self.tokens_per_step:,} tokens/step = {cfg.batch_size} x {self.seq_len} x "
            f"{self.accum} accumulation x {ctx.world_size} processes; steps {self.step} -> {self.total_steps}"
        )
        self.train_model.train()
        dt_avg = None
        while self.step < self.total_steps:
            t = time.time()
            loss, norm = self.train_step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            dt = time.time() - t
            if not math.isfinite(loss):
                raise TrainingFailed(
                    f"loss became {loss} at step {self.step}: lower --lr, raise --warmup-steps or use --precision "
                    "bf16/fp32"  # what became of the checkpoints is said by the job's status (core.jobs)
                )
            dt_avg = dt if dt_avg is None or self.step <= 2 else 0.9 * dt_avg + 0.1 * dt
            if self.step % cfg.log_interval == 0 or self.step == self.total_steps:
                tok_s = self.tokens_per_step / dt
                mfu = self.flops_per_token * tok_s / (self.peak * ctx.world_size) if self.peak else None
                eta = (self.total_steps - self.step) * dt_avg
                lr = self.lr_at(self.step - 1)
                self.write(
                    "train",
                    step=self.step,
                    total_steps=self.total_steps,
                    tokens=self.step * self.tokens_per_step,
                    loss=loss,
                    lr=lr,
                    grad_norm=norm,
                    dt=dt,
                    tok_per_s=tok_s,
                    mfu=mfu,
                    elapsed=self.elapsed0 + time.time() - self.t0,
                    eta_s=eta,
                    mem_mb=_memory_mb(ctx.device),
                )
                mfu_s = f" | mfu {100 * mfu:.1f}%" if mfu is not None else ""
                self.log(
                    f"step {self.step}/{self.total_steps} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:.2f} | "
                    f"{1000 * dt:.1f} ms | {tok_s:,.0f} tok/s{mfu_s} | eta {_fmt_time(eta)}"
                )
            done = self.step == self.total_steps
            if cfg.eval_interval and (self.step % cfg.eval_interval == 0 or done):
                val = self.evaluate()
                self.last_val = (self.step, val)
                self.best_val = val if self.best_val is None else min(self.best_val, val)
                self.write("eval", step=self.step, val_loss=val)
                self.log(f"step {self.step} | val loss {val:.4f}")
            if ctx.is_main and cfg.sample_interval and (self.step % cfg.sample_interval == 0 or done):
                text = self.sample_text()
                self.write("sample", step=self.step, text=text)
                self.log(f"sample at step {self.step}: {text[:200]!r}")
            stopping = D.any_rank(self.stop.signal is not None, ctx)
            if stopping or done or (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0):
                self.saved_at = self.save()
            if stopping and not done:
                return True
        return False


def _status_failed(metrics: MetricsWriter | None, step: int | None, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if metrics:
        metrics.write("status", state="failed", step=step, message=message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = StopFlag()
    stop.install()
    metrics: MetricsWriter | None = None
    trainer: Trainer | None = None
    ctx = None
    try:
        flag_device = _overrides(args).get("device")
        pref = flag_device or "auto"
        if not flag_device and args.config and not args.resume:
            pref = read_config_json(args.config).get("device", "auto")
        ctx = D.setup(pref)
        plan = plan_run(args, ctx)
        if ctx.is_main:
            plan.run_dir.mkdir(parents=True, exist_ok=True)
            if not (plan.run_dir / "config.json").exists():
                plan.cfg.to_json(plan.run_dir / "config.json")
            if not (plan.run_dir / "command.txt").exists():
                write_text_atomic(
                    plan.run_dir / "command.txt",
                    shlex.join([sys.executable, "-m", "core.train", *(argv if argv is not None else sys.argv[1:])])
                    + "\n",
                )
            metrics = MetricsWriter(plan.run_dir / "metrics.jsonl")
        trainer = Trainer(plan, ctx, stop, metrics)
        if trainer.run():
            if metrics:
                metrics.write(
                    "status",
                    state="stopped",
                    step=trainer.step,
                    total_steps=trainer.total_steps,
                    checkpoint=str(trainer.saved_at),
                    signal=stop.signal,
                )
            trainer.log(f"stopped at step {trainer.step}; resume with: python -m core.train --resume {plan.run_dir}")
        else:
            if metrics:
                metrics.write("status", state="done", step=trainer.step, total_steps=trainer.total_steps)
            trainer.log(f"done: {trainer.step} steps; checkpoints in {plan.run_dir / 'ckpt'}")
        return 0
    except (ConfigError, DataError, CheckpointError, HFError) as e:
        # A refused resume leaves the run as it was (stopped, resumable), so it is not marked failed.
        _status_failed(None if args.resume and trainer is None else metrics, trainer.step if trainer else None, str(e))
        return 2
    except torch.OutOfMemoryError as e:
        bs = trainer.cfg.batch_size if trainer else "the"
        _status_failed(
            metrics,
            trainer.step if trainer else None,
            f"out of memory ({str(e).splitlines()[0]}). Lower --batch-size (now {bs}); keep "
            "--total-batch-tokens to train with the same total batch through gradient accumulation",
        )
        return 1
    except TrainingFailed as e:
        _status_failed(metrics, trainer.step if trainer else None, str(e))
        return 1
    except Exception as e:
        rank = f"rank {ctx.rank}: " if ctx and ctx.is_ddp else ""
        if isinstance(e, torch.distributed.DistError) or "closed by peer" in str(e):
            rank += "lost contact with another rank (its own error is in the log above): "
        import traceback

        traceback.print_exc()
        _status_failed(metrics, trainer.step if trainer else None, f"{rank}{type(e).__name__}: {e}")
        return 1
    finally:
        if metrics:
            metrics.close()
        D.teardown()


if __name__ == "__main__":
    reexec_with_tuned_malloc()
    sys.exit(main())
