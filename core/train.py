"""The trainer's command line: `python -m core.train ...`, alone or under torchrun (DDP).

    python -m core.train --preset tiny --data shakespeare --max-steps 200 --run-name tiny-shk
    python -m core.train --config checkpoints/tiny-shk/config.json
    python -m core.train --recipe gpt2-124m-fineweb   # a named config (--list-recipes); flags override it
    python -m core.train --resume tiny-shk            # continue exactly from ckpt/latest
    python -m torch.distributed.run --standalone --nproc_per_node=2 -m core.train --preset tiny ...

Every TrainConfig field is a flag (--max-steps, --compile/--no-compile, ...; see core/cli.py). This
module plans the run (config and run folder), builds its parts (build_training) and hands them to
core.trainer.Trainer; core.reporting writes metrics.jsonl and the console lines (rank 0).
SIGTERM/SIGINT finish the current optimizer step, save a checkpoint and exit 0 with status
"stopped"; all ranks agree on that step through an all-reduced stop flag. Exit codes: 0 done or
stopped, 1 failed (NaN loss, OOM, any error), 2 bad configuration.

Fault injection for tests (documented, inert unless set): PLAYGROUND_TEST_CRASH_RANK=r makes rank r
raise at step PLAYGROUND_TEST_CRASH_STEP (default 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core import distributed as D
from core import parallel as P
from core.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    restore_rng_state,
)
from core.cli import add_config_arguments, overrides_from_args
from core.config import FSDP_PRECISIONS, ConfigError, ModelConfig, TrainConfig, read_config_json
from core.cpu_malloc import reexec_with_tuned_malloc
from core.data import BatchLoader, DataError, prepare_for
from core.evals import EvalError, HellaSwagExample, load_hellaswag
from core.files import write_text_atomic
from core.hf import HFError
from core.model import GPT, clean_state_dict, load_clean_state_dict
from core.optim import lr_schedule, make_optimizer
from core.precision import DTYPES, autocast, choose_precision, grad_scaler, peak_flops
from core.recipes import describe_recipes, detect_device, recipe_values
from core.reporting import Pace, Reporter
from core.runlock import RunLock, hold_run_lock
from core.runs import STATE_FILE, default_run_name, list_checkpoints, resolve_run_dir
from core.trainer import (
    Cadence,
    LoaderState,
    StopFlag,
    StopRequested,
    Trainer,
    TrainingFailed,
    TrainingParts,
    TrainState,
)
from core.weights import WeightsError, load_weights

Log = Callable[[str], None]

# --- planning: which config, which run folder -----------------------------------------------------


EXAMPLES = """examples:
  python -m core.train --preset tiny --max-steps 1000 --ckpt-interval 100 --run-name tiny-shk
  python -m core.train --resume tiny-shk                  continue exactly from its latest checkpoint
  python -m core.train --config checkpoints/tiny-shk/config.json --run-name tiny-2 --lr 3e-4
  python -m core.train --preset gpt2 --data hf:HuggingFaceFW/fineweb-edu --data-config sample-10BT \\
      --data-token-budget 1000000000 --device cuda --precision bf16 --compile --report-to tensorboard
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m core.train --preset tiny
(installed with pip: gpt2-train instead of python -m core.train)"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, and the examples as written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a GPT-2 (single process, or DDP under torchrun).",
        epilog=EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--recipe", metavar="NAME", help="start from a recipe (see --list-recipes); --config and flags override it"
    )
    p.add_argument("--list-recipes", action="store_true", help="list the recipes, sized for this machine, and exit")
    p.add_argument("--config", help="a TrainConfig JSON file (e.g. <run>/config.json); flags override its fields")
    p.add_argument("--resume", metavar="RUN", help="continue a run (a name under --runs-dir, or its folder) exactly")
    add_config_arguments(p)
    return p


def _config_dict(path: Path) -> dict[str, Any]:
    """The fields a config file sets (checked: unknown fields are an error); the model's own entries are skipped."""
    fields = {k: v for k, v in read_config_json(path).items() if k not in ("model_config", "model")}
    TrainConfig.from_dict(fields)
    return fields


def _recipe_values(name: str, ctx: D.DistContext) -> dict[str, Any]:
    """The recipe's fields, sized for this process's device and, on GPUs, for the processes of this launch."""
    device = detect_device(ctx.device.type)
    if device.kind == "cuda":
        device = dataclasses.replace(device, count=ctx.world_size)
    return recipe_values(name, device)


def find_run(spec: str, runs_dir: str) -> Path:
    """A run folder from a path to it, or from a run name under runs_dir."""
    p = Path(spec)
    if p.is_dir() and ((p / "config.json").is_file() or (p / "ckpt").is_dir()):
        return p
    run_dir = resolve_run_dir(runs_dir, spec)  # validates the name
    if not run_dir.is_dir():
        raise ConfigError(f"no run {spec!r} in {runs_dir}; give the run's name or folder to --resume")
    return run_dir


def resume_point(spec: str, runs_dir: str) -> tuple[Path, Checkpoint, list[str]]:
    """(run folder, the checkpoint to continue, notes on newer checkpoints that did not load).

    spec is a run (name or folder): its newest checkpoint that loads, newest first, so a checkpoint
    corrupted on disk costs the steps since the one before it, not the run; or one checkpoint folder.
    """
    p = Path(spec)
    if (p / STATE_FILE).is_file():  # one checkpoint, asked for by its folder
        try:
            return p.resolve().parent.parent, load_checkpoint(p), []
        except CheckpointError as e:
            raise ConfigError(f"cannot resume from {p}: {e}") from e
    run_dir = find_run(spec, runs_dir)
    notes: list[str] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return run_dir, load_checkpoint(ckpt), notes
        except CheckpointError as e:
            notes.append(f"warning: skipping checkpoint {ckpt.name}, it does not load ({e})")
    why = "; ".join(notes) if notes else "no checkpoint yet; train for at least one checkpoint interval first"
    raise ConfigError(f"cannot resume {run_dir}: {why}")


@dataclasses.dataclass
class Plan:
    """What a run will be: its config, its folder and, on resume, the checkpoint it continues."""

    cfg: TrainConfig
    run_dir: Path
    resume_from: Checkpoint | None  # the checkpoint to continue from, loaded
    notes: list[str] = dataclasses.field(default_factory=list)  # said in the log once the run folder is open


def plan_run(args: argparse.Namespace, ctx: D.DistContext) -> Plan:
    """Resolve the config (recipe < file < flags; on resume the checkpoint's config < flags) and the run folder."""
    overrides = overrides_from_args(args)
    if args.resume and args.recipe:
        raise ConfigError("--recipe starts a new run; --resume continues one with its own config: drop --recipe")
    if args.resume:
        run_dir, ckpt, notes = resume_point(args.resume, overrides.get("runs_dir", TrainConfig.runs_dir))
        state = ckpt.state
        base = state.get("train_config") or _config_dict(run_dir / "config.json")
        cfg = TrainConfig.from_dict({**base, **overrides, "run_name": run_dir.name, "runs_dir": str(run_dir.parent)})
        if cfg.total_batch_tokens is None:
            # Pin the total batch the run was trained with, so resuming on another number of processes
            # changes the accumulation, not the batch.
            cfg.total_batch_tokens = state.get("tokens_per_step")
        if notes:
            notes.append(f"resuming from the newest checkpoint that loads: {ckpt.path.name}")
        return Plan(cfg, run_dir, ckpt, notes)
    recipe = _recipe_values(args.recipe, ctx) if args.recipe else {}
    base = _config_dict(Path(args.config)) if args.config else {}
    cfg = TrainConfig.from_dict({**recipe, **base, **overrides})
    if cfg.nproc == 1 < ctx.world_size:  # typed under torchrun: config.json says how many processes trained it
        cfg.nproc = ctx.world_size
    if not cfg.run_name:
        cfg.run_name = D.broadcast_object(default_run_name(cfg), ctx)
    run_dir = resolve_run_dir(cfg.runs_dir, cfg.run_name)
    if (run_dir / "ckpt").is_dir() and any((run_dir / "ckpt").iterdir()):
        raise ConfigError(
            f"run {cfg.run_name!r} already has checkpoints in {run_dir}; continue it with --resume {cfg.run_name} "
            "or choose another --run-name"
        )
    return Plan(cfg, run_dir, None)


# --- building: model, optimizer, data, precision, the state to start from ------------------------


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


def _starting_model(plan: Plan, log: Log) -> tuple[GPT, Checkpoint | None]:
    """The model to train (seeded alike on every rank) and, on resume, the checkpoint it continues."""
    cfg = plan.cfg
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    if plan.resume_from is None:
        model = _init_model(cfg, log)
        _adopt_model_config(cfg, model.config)
        return model, None
    ck = plan.resume_from
    model = GPT(cfg.model_config())
    try:
        load_clean_state_dict(model, ck.model_state)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {ck.path} does not fit the configured model: {e}") from e
    return model, ck


def _loaders(cfg: TrainConfig, ctx: D.DistContext, seq_len: int, log: Log) -> tuple[BatchLoader, BatchLoader]:
    """Train and val loaders. One process per machine tokenizes; the others wait and then read its cache."""
    if ctx.local_rank == 0:
        cache = prepare_for(cfg, log=log)
    D.barrier(ctx)
    if ctx.local_rank != 0:
        cache = prepare_for(cfg, log=lambda _: None)
    B, seed, dev = cfg.batch_size, cfg.seed, ctx.device
    train = BatchLoader(cache, "train", B, seq_len, seed=seed, shuffle=True, device=dev)
    val = BatchLoader(cache, "val", B, seq_len, seed=seed, shuffle=False, device=dev)
    return train, val


def _load_hellaswag(cfg: TrainConfig) -> tuple[list[HellaSwagExample] | None, str]:
    try:
        return load_hellaswag(cfg.hellaswag_file, cfg.hellaswag_limit, Path(cfg.data_cache) / "hellaswag"), ""
    except EvalError as e:
        return None, str(e)


def _hellaswag_examples(cfg: TrainConfig, ctx: D.DistContext, log: Log) -> list[HellaSwagExample] | None:
    """The examples HellaSwag is evaluated on in the loop, loaded once; None when it is off.

    One process per machine loads first (it may download the validation set); the others then read its
    cache. A data set that cannot be had (offline, a bad file) turns HellaSwag off on every rank with one
    warning: it never ends a run.
    """
    if cfg.hellaswag_interval <= 0:
        return None
    examples, error = _load_hellaswag(cfg) if ctx.local_rank == 0 else (None, "")
    D.barrier(ctx)
    if ctx.local_rank != 0:
        examples, error = _load_hellaswag(cfg)
    if D.any_rank(examples is None, ctx):
        log(f"warning: HellaSwag is off for this run: {error or 'another process could not load it'}")
        return None
    log(f"HellaSwag every {cfg.hellaswag_interval} steps on {len(examples)} examples")
    return examples


def _resume(
    ck: Checkpoint,
    fresh: TrainState,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ctx: D.DistContext,
    log: Log,
) -> TrainState:
    """Load the checkpoint's optimizer, loss scaler and RNG states; the state where it left off."""
    try:
        saved = TrainState.from_dict(ck.state)
    except (KeyError, TypeError) as e:
        raise ConfigError(
            f"checkpoint {ck.path} holds weights but no training state to continue; start a new run from it "
            f"with --init-from {ck.path}"
        ) from e
    problems = fresh.resume_problems(saved)
    if problems:
        raise ConfigError(
            f"cannot resume {ck.path} exactly: {'; '.join(problems)}. Resume keeps batch_size, seq_len, data "
            "and the total batch (batch_size x seq_len x processes x accumulation) fixed; a different number "
            "of processes works when --total-batch-tokens stays the same"
        )
    if ck.optimizer_state is None:
        raise ConfigError(f"checkpoint {ck.path} has no optimizer state; use it with --init-from instead")
    try:
        P.load_optimizer_state(optimizer, ck.optimizer_state)
    except (ValueError, KeyError, IndexError) as e:
        raise ConfigError(f"optimizer state in {ck.path} does not fit this model: {e}") from e
    if saved.scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(saved.scaler)
    if len(saved.rng) == ctx.world_size:
        restore_rng_state(saved.rng[ctx.rank])
    else:  # another world size: exact only without dropout (the only randomness in a step)
        torch.manual_seed(fresh.loader.seed + ctx.rank + 1000 * saved.step)
    log(f"resumed from {ck.path} at step {saved.step}")
    return fresh.continued_from(saved)


def build_training(plan: Plan, ctx: D.DistContext, log: Log) -> TrainingParts:
    """Everything a planned run trains with, at its first step or where its checkpoint left off."""
    cfg, dev, world = plan.cfg, ctx.device, ctx.world_size
    if cfg.nproc != world:
        log(
            f"note: the config asks for {cfg.nproc} process(es) but {world} are running; launch "
            f"`python -m torch.distributed.run --standalone --nproc_per_node={cfg.nproc} -m core.train ...` "
            "for DDP (the world size of the launch is what counts)"
        )
    model, ck = _starting_model(plan, log)
    cfg.validate(world)
    precision, why = choose_precision(cfg.precision, dev)
    if ck is not None and cfg.precision == "auto" and ck.state.get("precision") in DTYPES:
        precision, why = ck.state["precision"], "auto: the checkpoint's, so the run continues exactly"
    log(f"precision {precision} ({why})")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ctx.is_ddp and cfg.parallel == "fsdp" and precision == "fp16":
        raise ConfigError(f"{FSDP_PRECISIONS}: add --precision fp32, or use --parallel ddp", field="precision")
    model = model.to(dev)
    compiled, train_model = P.wrap(model, cfg, ctx)  # before the optimizer: FSDP replaces the parameters
    optimizer, scaler = make_optimizer(model, cfg, dev.type), grad_scaler(precision)
    accum, seq_len = cfg.grad_accum_steps(world), cfg.effective_seq_len
    train_data, val_data = _loaders(cfg, ctx, seq_len, log)
    hellaswag = _hellaswag_examples(cfg, ctx, log)
    loader = LoaderState(0, 0, cfg.seed, cfg.batch_size, seq_len, train_data.data_key)
    tokens_per_step = cfg.batch_size * seq_len * accum * world
    state = TrainState(0, tokens_per_step, world, accum, precision, loader, cfg.to_dict())
    if ck is not None:
        state = _resume(ck, state, optimizer, scaler, ctx, log)
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # different dropout masks per rank
    total = cfg.total_steps(world)
    peak = peak_flops(dev, precision)
    all_peak = peak * world if peak else None
    return TrainingParts(
        cfg=cfg,
        run_dir=plan.run_dir,
        model=model,
        compiled=compiled,
        train_model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        autocast=autocast(precision, dev),
        lr_at=lr_schedule(cfg, world),
        train_data=train_data,
        val_data=val_data,
        state=state,
        cadence=Cadence(
            total,
            cfg.log_interval,
            cfg.eval_interval,
            cfg.sample_interval,
            cfg.ckpt_interval,
            hellaswag=cfg.hellaswag_interval if hellaswag else 0,
        ),
        pace=Pace(tokens_per_step, model.flops_per_token(seq_len), all_peak, total, state.elapsed),
        hellaswag=hellaswag,
    )


# --- the command --------------------------------------------------------------------------------


def _device_preference(args: argparse.Namespace) -> str:
    """--device, else the device of the --config file; auto on resume."""
    flag = overrides_from_args(args).get("device")
    if flag:
        return flag
    if args.config and not args.resume:
        return read_config_json(args.config).get("device", "auto")
    return "auto"


def _open_run_folder(plan: Plan, argv: list[str] | None) -> Path:
    """The run folder with config.json and command.txt (kept when the job layer wrote them); its metrics file."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if not (plan.run_dir / "config.json").exists():
        plan.cfg.to_json(plan.run_dir / "config.json")
    if not (plan.run_dir / "command.txt").exists():
        command = [sys.executable, "-m", "core.train", *(argv if argv is not None else sys.argv[1:])]
        write_text_atomic(plan.run_dir / "command.txt", shlex.join(command) + "\n")
    return plan.run_dir / "metrics.jsonl"


def _failure(e: Exception, trainer: Trainer | None, ctx: D.DistContext | None) -> tuple[int, str]:
    """The exit code and one-line message of an error that ended the run."""
    if isinstance(e, (ConfigError, DataError, CheckpointError, HFError)):
        return 2, str(e)
    if isinstance(e, torch.OutOfMemoryError):
        now = f" (now {trainer.cfg.batch_size})" if trainer else ""
        return 1, (
            f"out of memory ({str(e).splitlines()[0]}). Lower --batch-size{now}; keep --total-batch-tokens to "
            "train with the same total batch through gradient accumulation"
        )
    if isinstance(e, TrainingFailed):
        return 1, str(e)
    rank = f"rank {ctx.rank}: " if ctx and ctx.is_ddp else ""
    if isinstance(e, torch.distributed.DistError) or "closed by peer" in str(e):
        rank += "lost contact with another rank (its own error is in the log above): "
    traceback.print_exc()
    return 1, f"{rank}{type(e).__name__}: {e}"


def _list_recipes(args: argparse.Namespace) -> int:
    try:
        print(describe_recipes(detect_device(_device_preference(args))))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_recipes:
        return _list_recipes(args)
    stop = StopFlag()
    stop.install()
    report = Reporter()
    ctx: D.DistContext | None = None
    trainer: Trainer | None = None
    run_lock: RunLock | None = None
    made_folder: Path | None = None  # a run folder this process created: removed again if the config is refused
    try:
        ctx = D.setup(_device_preference(args))
        report.console = ctx.is_main
        plan = plan_run(args, ctx)
        if ctx.is_main:
            made_folder = None if plan.run_dir.exists() else plan.run_dir
            run_lock = hold_run_lock(plan.run_dir)  # one writer per run: a second one is refused (exit 2)
            report.open(_open_run_folder(plan, argv), plan.cfg)
        for note in plan.notes:
            report.log(note)
        trainer = Trainer(build_training(plan, ctx, report.log), ctx, stop, report)
        total = trainer.cadence.total_steps
        if trainer.run():
            report.stopped(trainer.state.step, total, trainer.saved_at, stop.signal, plan.run_dir)
        else:
            report.done(trainer.state.step, total, plan.run_dir)
        return 0
    except StopRequested:
        report.stopped_early(trainer.state.step if trainer else None)
        return 0
    except Exception as e:
        code, message = _failure(e, trainer, ctx)
        # Refused before any training: a resume leaves the run as it was (stopped, resumable), and a new run
        # typed by hand leaves no folder behind (a background job's folder was made by core.jobs and is kept).
        refused = code == 2 and trainer is None
        report.failed(trainer.state.step if trainer else None, message, record=not (refused and args.resume))
        if refused and made_folder:
            report.close()
            shutil.rmtree(made_folder, ignore_errors=True)
        return code
    finally:
        report.close()
        if run_lock:
            run_lock.release()
        D.teardown()


def cli() -> None:
    """The `gpt2-train` command: main() in a process with glibc's malloc tuned for training (core/cpu_malloc.py)."""
    reexec_with_tuned_malloc()
    sys.exit(main())


if __name__ == "__main__":
    cli()
