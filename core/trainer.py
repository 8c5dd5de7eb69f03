"""The training loop: optimizer steps with gradient accumulation, evaluation, samples and checkpoints.

`core.train.build_training` builds everything (model, optimizer, data, precision, the state to start
from) into TrainingParts; a Trainer only runs them. Under DDP every rank runs the same loop; rank 0
alone writes checkpoints, metrics and samples, and all ranks agree on when to stop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import distributed as D
from core import parallel as P
from core.checkpoint import capture_rng_state, save_checkpoint
from core.config import EOT_TOKEN, TrainConfig
from core.data import BatchLoader
from core.evals import HellaSwagExample, HellaSwagResult, evaluate_hellaswag
from core.model import GPT
from core.reporting import Pace, Reporter, StepRecord, memory_mb
from core.runlock import saving

MAX_SKIPPED_STEPS = 3  # non-finite gradient norms in a row before the run fails


class TrainingFailed(RuntimeError):
    """The run cannot go on (diverged loss, out of memory); the message says what to change."""


@dataclass
class LoaderState:
    """The data loader's place: micro-batch g of the seeded order is a pure function of g, so position says it all."""

    position: int  # micro-batches taken so far, over all ranks
    epoch: int  # of position, for the record
    seed: int
    batch_size: int
    seq_len: int
    data_key: str  # identifies the tokens (source files, split settings)


@dataclass
class TrainState:
    """Where a run stands; to_dict() is a checkpoint's state.json (besides step, weights and optimizer).

    rng, scaler, elapsed and loader.epoch are brought up to date when a checkpoint is saved.
    """

    step: int
    tokens_per_step: int
    world_size: int
    grad_accum: int
    precision: str
    loader: LoaderState
    train_config: dict[str, Any]
    elapsed: float = 0.0  # training seconds, over all the run's processes
    best_val_loss: float | None = None
    val_loss: float | None = None  # of this step, when it was evaluated (pruning keeps the best checkpoint)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per rank
    scaler: dict[str, Any] | None = None  # fp16's loss scaler

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step

    def advance(self, micro_batches: int) -> None:
        """One optimizer step done, over micro_batches more micro-batches."""
        self.step += 1
        self.loader.position += micro_batches
        self.val_loss = None

    def evaluated(self, val_loss: float) -> None:
        self.val_loss = val_loss
        self.best_val_loss = val_loss if self.best_val_loss is None else min(self.best_val_loss, val_loss)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """The state of a checkpoint's state.json (other keys, e.g. model_config, are ignored).

        KeyError or TypeError when it holds no training state (a checkpoint of imported weights).
        """
        return cls(
            step=d["step"],
            tokens_per_step=d["tokens_per_step"],
            world_size=d["world_size"],
            grad_accum=d["grad_accum"],
            precision=d["precision"],
            loader=LoaderState(**d["loader"]),
            train_config=d["train_config"],
            elapsed=d.get("elapsed", 0.0),
            best_val_loss=d.get("best_val_loss"),
            val_loss=d.get("val_loss"),
            rng=d.get("rng") or [],
            scaler=d.get("scaler"),
        )

    def resume_problems(self, saved: TrainState) -> list[str]:
        """What continuing `saved` with this state's settings would change (empty: it continues exactly)."""
        was, now = saved.loader, self.loader
        problems = [
            f"{name} {a} -> {b}"
            for name, a, b in (
                ("batch_size", was.batch_size, now.batch_size),
                ("seq_len", was.seq_len, now.seq_len),
                ("tokens per step", saved.tokens_per_step, self.tokens_per_step),
            )
            if a != b
        ]
        if was.data_key != now.data_key:
            problems.append("the data source (its files or split settings) changed")
        return problems

    def continued_from(self, saved: TrainState) -> TrainState:
        """This run's state, at the point where saved left off."""
        return dataclasses.replace(
            self,
            step=saved.step,
            loader=dataclasses.replace(self.loader, position=saved.loader.position),
            elapsed=saved.elapsed,
            best_val_loss=saved.best_val_loss,
            rng=saved.rng,
            scaler=saved.scaler,
        )


@dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates, samples and saves: at multiples of each interval and at the last step.

    An eval, HellaSwag or sample interval of 0 switches that off; a checkpoint interval of 0 leaves only the
    last step.
    """

    total_steps: int
    log: int
    eval: int
    sample: int
    save: int
    hellaswag: int = 0

    def _due(self, interval: int, step: int) -> bool:
        return interval > 0 and (step % interval == 0 or step == self.total_steps)

    def log_due(self, step: int) -> bool:
        return self._due(self.log, step)

    def eval_due(self, step: int) -> bool:
        return self._due(self.eval, step)

    def hellaswag_due(self, step: int) -> bool:
        return self._due(self.hellaswag, step)

    def sample_due(self, step: int) -> bool:
        return self._due(self.sample, step)

    def save_due(self, step: int) -> bool:
        return step == self.total_steps or self._due(self.save, step)


class StopRequested(BaseException):  # not an Exception: library code that catches those must let it through
    """SIGTERM/SIGINT before the first step was done (data preparation, compile): nothing to save, end now."""


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop stops after the current optimizer step (repeats ignored).

    Until `armed` (set once the first step is done) they raise StopRequested instead: data preparation and
    compilation can take minutes, and there is nothing to save yet.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.armed = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            if not self.armed:
                raise StopRequested(self.signal)
            print(f"{self.signal} received: stopping after this step and saving a checkpoint", flush=True)


@dataclass
class TrainingParts:
    """A run ready to train (made by core.train.build_training)."""

    cfg: TrainConfig
    run_dir: Path
    model: GPT  # the weights: saved, sampled from, clipped
    compiled: torch.nn.Module  # model, torch.compile'd when asked: evaluation runs it
    train_model: torch.nn.Module  # compiled, wrapped in DDP under torchrun: training runs it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: AbstractContextManager
    lr_at: Callable[[int], float]
    train_data: BatchLoader
    val_data: BatchLoader
    state: TrainState
    cadence: Cadence
    pace: Pace
    hellaswag: list[HellaSwagExample] | None = None  # the examples evaluated in the loop; None: HellaSwag off


class Trainer:
    """Runs TrainingParts to the last step or a stop request."""

    def __init__(self, parts: TrainingParts, ctx: D.DistContext, stop: StopFlag, report: Reporter) -> None:
        self.ctx, self.stop, self.report = ctx, stop, report
        self.cfg, self.run_dir = parts.cfg, parts.run_dir
        self.model, self.compiled, self.train_model = parts.model, parts.compiled, parts.train_model
        self.optimizer, self.scaler, self.lr_at = parts.optimizer, parts.scaler, parts.lr_at
        self.autocast = parts.autocast
        self.train_data, self.val_data = parts.train_data, parts.val_data
        self.state, self.cadence, self.pace = parts.state, parts.cadence, parts.pace
        self.hellaswag = parts.hellaswag
        self.saved_at: Path | None = None
        self.skipped_in_a_row = 0  # updates skipped in a row for a non-finite gradient norm

    def run(self) -> bool:
        """Train to the last step or a stop request; True when stopped early (checkpoint in self.saved_at)."""
        state, cadence = self.state, self.cadence
        self._report_start()
        self.train_model.train()
        self.pace.start()
        while state.step < cadence.total_steps:
            loss, norm, dt = self.train_step()
            if not math.isfinite(loss):
                raise TrainingFailed(
                    f"loss became {loss} at step {state.step}: lower --lr, raise --warmup-steps or use --precision "
                    "bf16/fp32"  # what became of the checkpoints is said by the job's status (core.jobs)
                )
            self.pace.add(state.step, dt)
            if cadence.log_due(state.step):
                self.report.trained(self._step_record(loss, norm, dt))
            if cadence.eval_due(state.step):
                state.evaluated(self.evaluate())
                self.report.evaluated(state.step, state.val_loss)
            if self.hellaswag and cadence.hellaswag_due(state.step):
                result = self.evaluate_hellaswag()
                self.report.hellaswag(state.step, result.acc, result.acc_norm, result.n)
            if cadence.sample_due(state.step) and (self.ctx.is_main or P.is_sharded(self.model)):
                self.report.sampled(state.step, self.sample_text())  # FSDP: every rank runs the forwards
            stopping = D.any_rank(self.stop.signal is not None, self.ctx)
            self.stop.armed = True  # setup and the first (compiling) step are behind: a stop now saves
            if stopping or cadence.save_due(state.step):
                self.saved_at = self.save()
            if stopping and state.step < cadence.total_steps:
                return True
        return False

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step; returns (mean loss over all ranks, grad norm, seconds it took)."""
        t = time.time()
        loss = self.accumulate_gradients()
        norm = self.apply_gradients()
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        return loss, norm, time.time() - t

    def accumulate_gradients(self) -> float:
        """Forward/backward over this rank's micro-batches of the step; the loss averaged over all ranks."""
        ctx, state, accum = self.ctx, self.state, self.state.grad_accum
        _inject_test_fault(ctx.rank, state.step + 1)
        loss_sum = torch.zeros((), device=ctx.device)
        for k in range(accum):
            x, y = self.train_data.batch(state.loader.position + k * ctx.world_size + ctx.rank)
            last = k == accum - 1
            with P.gradient_sync(self.train_model, last):
                with self.autocast:
                    _, loss = self.train_model(x, y)[:2]
                loss = loss / accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        _inject_test_inf_gradient(self.model, state.step + 1)
        return D.all_reduce_mean(loss_sum, ctx).item()

    def apply_gradients(self) -> float:
        """Clip, take the AdamW step at this step's lr, clear the gradients, count the step; returns the grad norm."""
        cfg, state = self.cfg, self.state
        self.scaler.unscale_(self.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(state.step)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = P.whole(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if self.scaler.is_enabled() or self._gradients_finite(norm.item()):  # fp16's scaler skips on its own
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.advance(state.grad_accum * self.ctx.world_size)
        return norm.item()

    def _gradients_finite(self, norm: float) -> bool:
        """Policy for an inf/NaN gradient norm with a finite loss: skip that update (the weights stay finite, so
        no checkpoint ever holds NaN), and fail after MAX_SKIPPED_STEPS in a row. Under DDP the gradients were
        all-reduced, so every rank sees the same norm and makes the same choice."""
        if math.isfinite(norm):
            self.skipped_in_a_row = 0
            return True
        self.skipped_in_a_row += 1
        step = self.state.step + 1
        self.report.log(f"warning: non-finite gradient norm ({norm}) at step {step}: update skipped")
        if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
            raise TrainingFailed(
                f"non-finite gradient norm {MAX_SKIPPED_STEPS} steps in a row (last at step {step}); the weights and "
                "checkpoints are still finite. Lower --lr, raise --warmup-steps or use --precision fp32, then resume"
            )
        return False

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over eval_batches validation batches, shared out among the ranks."""
        ctx, n = self.ctx, self.cfg.eval_batches
        self.compiled.eval()
        # Rank r takes val batches r, r+W, ...; under FSDP a rank with fewer runs a spare one uncounted, because
        # every rank must take part in every forward.
        rounds = -(-n // ctx.world_size) if P.is_sharded(self.model) else len(range(ctx.rank, n, ctx.world_size))
        total = torch.zeros(2, device=ctx.device)  # (summed loss, batches)
        for g in range(ctx.rank, ctx.rank + rounds * ctx.world_size, ctx.world_size):
            x, y = self.val_data.batch(g % n)
            with self.autocast:
                _, loss = self.compiled(x, y)[:2]
            if g < n:
                total += torch.stack([loss.float(), torch.ones((), device=ctx.device)])
        self.compiled.train()
        loss_sum, batches = D.all_reduce_sum(total, ctx).tolist()
        return loss_sum / batches

    def evaluate_hellaswag(self) -> HellaSwagResult:
        """HellaSwag accuracy of the model being trained (compiled, under the training autocast); every rank
        calls it: the examples are split over the ranks and the counts all-reduced."""
        batch_examples = max(1, self.cfg.batch_size // 4)  # 4 rows per example: about a training micro-batch
        with self.autocast:
            return evaluate_hellaswag(self.compiled, self.hellaswag or [], batch_examples)

    def sample_text(self) -> str:
        from core.generation import SamplingConfig, generate

        self.model.eval()
        n = min(self.cfg.sample_tokens, self.model.config.block_size - 1)
        seed = self.cfg.seed + self.state.step
        scfg = SamplingConfig(max_new_tokens=n, temperature=1.0, top_k=50, seed=seed, stop_at_eot=False)
        with self.autocast:
            text = generate(self.model, [EOT_TOKEN], scfg)[0]
        self.model.train()
        return text

    def save(self) -> Path | None:
        """Checkpoint this step (a collective: every rank sends its RNG state; rank 0 writes)."""
        state = self.state
        state.rng = D.gather_objects(capture_rng_state(), self.ctx)
        state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        state.elapsed = self.pace.elapsed()
        state.loader.epoch = self.train_data.epoch_of(state.loader.position)
        path = None
        weights, optimizer_state = P.full_state(self.model, self.optimizer)  # FSDP: every rank gathers
        if self.ctx.is_main:
            with saving(self.run_dir, state.step):  # `core.jobs stop` waits for it instead of killing it mid-write
                path = save_checkpoint(
                    self.run_dir,
                    state.step,
                    self.model,
                    state.to_dict(),
                    optimizer_state,
                    keep_last=self.cfg.keep_last,
                    weights=weights,
                )
            self.report.log(f"saved checkpoint {path}")
        D.barrier(self.ctx)  # no rank runs ahead while rank 0 writes
        return path

    def _report_start(self) -> None:
        s, ctx = self.state, self.ctx
        self.report.started(
            step=s.step,
            total_steps=self.cadence.total_steps,
            world_size=ctx.world_size,
            grad_accum=s.grad_accum,
            tokens_per_step=s.tokens_per_step,
            precision=s.precision,
            device=str(ctx.device),
            parameters=self.model.num_params(),
            batch_size=s.loader.batch_size,
            seq_len=s.loader.seq_len,
        )

    def _step_record(self, loss: float, norm: float, dt: float) -> StepRecord:
        """(every rank calls it: the ranks' memory is gathered.)"""
        step, pace, ctx = self.state.step, self.pace, self.ctx
        mem = memory_mb(ctx.device)
        return StepRecord(
            step=step,
            total_steps=self.cadence.total_steps,
            tokens=self.state.tokens,
            loss=loss,
            lr=self.lr_at(step - 1),
            grad_norm=norm,
            dt=dt,
            tok_per_s=pace.tok_per_s(dt),
            mfu=pace.mfu(dt),
            elapsed=pace.elapsed(),
            eta_s=pace.eta(step),
            mem_mb=mem,
            mem_mb_ranks=[float(m) for m in D.gather_objects(mem, ctx)] if ctx.is_ddp else None,
        )


def _inject_test_fault(rank: int, step: int) -> None:
    """PLAYGROUND_TEST_CRASH_RANK=r makes rank r fail at step PLAYGROUND_TEST_CRASH_STEP (default 2); tests only."""
    crash_rank = os.environ.get("PLAYGROUND_TEST_CRASH_RANK")
    crash_step = int(os.environ.get("PLAYGROUND_TEST_CRASH_STEP", "2"))
    if crash_rank is not None and int(crash_rank) == rank and step == crash_step:
        raise RuntimeError(f"test fault injection: rank {rank} crashed at step {step}")


def _inject_test_inf_gradient(model: GPT, step: int) -> None:
    """PLAYGROUND_TEST_INF_GRAD_STEP=k[,k2...]: an inf in one gradient at those steps (finite loss); tests only."""
    if str(step) in os.environ.get("PLAYGROUND_TEST_INF_GRAD_STEP", "").split(","):
        grad = model.transformer.h[0].mlp.c_fc.weight.grad
        if grad is not None:
            grad.view(-1)[0] = float("inf")
