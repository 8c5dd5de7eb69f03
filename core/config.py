"""Model presets and the training config: one dataclass flows UI -> JSON -> trainer -> checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import write_text_atomic

GPT2_VOCAB_SIZE = 50257
EOT_TOKEN = 50256
REPORT_TO = ("tensorboard", "wandb", "trackio")  # the experiment trackers a run can report to (core/trackers.py)


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the problem and the fix.

    `field` is the TrainConfig field (or form field, e.g. "run_name") it belongs to, when there is one,
    so a UI can put the message under that field without parsing it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class ModelConfig:
    block_size: int = 1024  # context window
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # Pad the embedding table to a multiple of 64 (50304): faster matmuls; padded rows are never
    # sampled (logits are cut back to vocab_size) and never exported.
    pad_vocab: bool = False

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / 64) * 64 if self.pad_vocab else self.vocab_size

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> ModelConfig:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model {name} must be >= 1, got {getattr(self, name)}", field=name)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick n_head from {[h for h in range(1, 33) if self.n_embd % h == 0]}",
                field="n_head",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", field="dropout")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}).validate()


# GPT-2 family (Radford et al. 2019) plus small presets that train on a laptop CPU in minutes.
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "micro": dict(n_layer=2, n_head=2, n_embd=32, block_size=32),  # for tests
}


def model_config(preset: str = "gpt2", **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset, with any non-None overrides applied and validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", field="preset")
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values).validate()


@dataclass
class TrainConfig:
    # run
    run_name: str = ""  # empty: a name is made from the preset and time
    runs_dir: str = "checkpoints"
    # model: a preset, optionally overridden
    preset: str = "tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float = 0.0
    pad_vocab: bool = True
    # data: "shakespeare", a local file/folder, or "hf:<dataset>" (see core.data)
    data: str = "shakespeare"
    data_config: str | None = None  # Hugging Face dataset config, e.g. sample-10BT
    val_data: str | None = None  # a separate validation source; otherwise val_fraction of data
    val_fraction: float = 0.1
    data_token_budget: int | None = None  # cap on tokens taken from a streamed dataset
    data_cache: str = "data/cache"
    shard_tokens: int = 100_000_000  # tokens per cache shard file (2 bytes each); part of the cache key
    # batch
    batch_size: int = 16  # micro-batch per process
    seq_len: int | None = None  # defaults to the model's block_size
    total_batch_tokens: int | None = None  # defaults to one micro-batch on every process
    # length
    max_steps: int = 1000
    max_tokens: int | None = None  # a token budget; overrides max_steps when set
    # optimizer and schedule
    lr: float = 1e-3
    min_lr: float | None = None  # defaults to lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # evaluation, checkpoints, samples
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 500
    keep_last: int = 3
    sample_interval: int = 0  # 0: never
    sample_tokens: int = 64
    log_interval: int = 1
    report_to: str = ""  # also report the metrics to these trackers, comma-separated: tensorboard,wandb,trackio
    hellaswag_interval: int = 0  # 0: never; HellaSwag accuracy every N steps and at the last step
    hellaswag_limit: int | None = None  # evaluate only the first N examples (quick looks on a CPU)
    hellaswag_file: str | None = None  # a HellaSwag jsonl file; None: the validation set, downloaded once
    # system
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    init_from: str = "scratch"  # scratch | a checkpoint/run path | a GPT-2 HF folder or hub id
    nproc: int = 1  # processes to launch (DDP through torchrun when > 1)
    parallel: str = "ddp"  # ddp | fsdp: how torchrun's processes share the model (core/parallel.py)
    extra: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> ModelConfig:
        return model_config(
            self.preset,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            dropout=self.dropout,
            pad_vocab=self.pad_vocab,
        )

    @property
    def effective_seq_len(self) -> int:
        return self.seq_len or self.model_config().block_size

    @property
    def trackers(self) -> list[str]:
        """The trackers of report_to, in order: "tensorboard, wandb" -> ["tensorboard", "wandb"]."""
        return [name.strip() for name in self.report_to.split(",") if name.strip()]

    @property
    def effective_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def tokens_per_micro_step(self, world_size: int) -> int:
        return self.batch_size * self.effective_seq_len * world_size

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step; raises ConfigError if the batch does not divide."""
        per = self.tokens_per_micro_step(world_size)
        total = self.total_batch_tokens or per
        if total % per:
            raise ConfigError(
                f"total_batch_tokens ({total}) must be a multiple of batch_size x seq_len x processes "
                f"= {self.batch_size} x {self.effective_seq_len} x {world_size} = {per}; "
                f"try {max(per, round(total / per) * per)}",
                field="total_batch_tokens",
            )
        return total // per

    def total_steps(self, world_size: int) -> int:
        if self.max_tokens:
            step_tokens = self.total_batch_tokens or self.tokens_per_micro_step(world_size)
            return max(1, math.ceil(self.max_tokens / step_tokens))
        return self.max_steps

    def validate(self, world_size: int | None = None) -> TrainConfig:
        """Check every field (type, then range); ConfigError naming the first field that cannot work."""
        for name, expected in _FIELD_TYPES.items():
            if not _has_type(getattr(self, name), expected):
                raise ConfigError(f"{name} must be {_type_words(expected)}, got {getattr(self, name)!r}", field=name)
        for ok, name, message in self._range_checks():
            if not ok:
                raise ConfigError(message, field=name)
        if self.run_name:
            from core.runs import validate_run_name  # core.runs imports this module

            validate_run_name(self.run_name)
        mc = self.model_config()
        if self.seq_len is not None and not 1 <= self.seq_len <= mc.block_size:
            raise ConfigError(
                f"seq_len ({self.seq_len}) must be between 1 and the model's block_size ({mc.block_size})",
                field="seq_len",
            )
        self.grad_accum_steps(world_size or self.nproc)
        return self

    def _range_checks(self) -> list[tuple[bool, str, str]]:
        def at_least(name: str, low: int) -> tuple[bool, str, str]:
            value = getattr(self, name)
            return value is None or value >= low, name, f"{name} must be >= {low}, got {value}"

        return [
            (bool(self.runs_dir), "runs_dir", "runs_dir is empty; give the folder that holds the runs"),
            (self.preset in PRESETS, "preset", f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"),
            *(at_least(name, 1) for name in ("n_layer", "n_head", "n_embd", "block_size")),
            (0.0 <= self.dropout < 1.0, "dropout", f"dropout must be in [0, 1), got {self.dropout}"),
            (bool(self.data), "data", "data is empty; give a corpus (a file, a folder, hf:<dataset>) or shakespeare"),
            (self.val_data != "", "val_data", "val_data is empty; give a validation source or leave it unset"),
            (0 < self.val_fraction < 1 or self.val_data is not None, "val_fraction", "val_fraction must be in (0, 1)"),
            at_least("data_token_budget", 1),
            at_least("shard_tokens", 1),
            (bool(self.data_cache), "data_cache", "data_cache is empty; give a folder for the token cache"),
            at_least("batch_size", 1),
            (
                (self.total_batch_tokens or 0) >= 0,
                "total_batch_tokens",
                "total_batch_tokens must be >= 0 (0: one micro-batch per process, no accumulation)",
            ),
            (self.max_steps >= 1 or bool(self.max_tokens), "max_steps", "max_steps must be >= 1"),
            at_least("max_tokens", 1),
            (self.lr > 0, "lr", "lr must be > 0"),
            (0 <= self.effective_min_lr <= self.lr, "min_lr", "min_lr must be between 0 and lr"),
            at_least("warmup_steps", 0),
            (self.weight_decay >= 0, "weight_decay", "weight_decay must be >= 0"),
            (0 <= self.beta1 < 1, "beta1", "beta1 must be in [0, 1)"),
            (0 <= self.beta2 < 1, "beta2", "beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip", "grad_clip must be >= 0 (0 disables clipping)"),
            (self.eval_interval >= 0, "eval_interval", "eval_interval must be >= 0 (0: never)"),
            at_least("eval_batches", 1),
            (self.ckpt_interval >= 0, "ckpt_interval", "ckpt_interval must be >= 0 (0: only at the end)"),
            at_least("keep_last", 1),
            (self.sample_interval >= 0, "sample_interval", "sample_interval must be >= 0 (0: never)"),
            at_least("sample_tokens", 1),
            at_least("log_interval", 1),
            (
                set(self.trackers) <= set(REPORT_TO),
                "report_to",
                f"report_to takes {', '.join(REPORT_TO)} (comma-separated, or empty for none), got {self.report_to!r}",
            ),
            (self.hellaswag_interval >= 0, "hellaswag_interval", "hellaswag_interval must be >= 0 (0: never)"),
            at_least("hellaswag_limit", 1),
            (
                self.hellaswag_file != "",
                "hellaswag_file",
                "hellaswag_file is empty; give a HellaSwag jsonl file or leave it unset",
            ),
            (0 <= self.seed < 2**63, "seed", f"seed must be >= 0 and < 2**63, got {self.seed}"),
            (self.device in ("auto", "cpu", "cuda", "mps"), "device", "device must be auto, cpu, cuda or mps"),
            (self.precision in PRECISIONS, "precision", "precision must be auto, fp32, bf16 or fp16"),
            (bool(self.init_from), "init_from", "init_from is empty; give scratch, a run, a checkpoint or a GPT-2"),
            at_least("nproc", 1),
            (self.parallel in PARALLEL, "parallel", f"parallel must be ddp or fsdp, got {self.parallel!r}"),
            (
                not (self.parallel == "fsdp" and self.precision == "fp16"),
                "precision",
                f"{FSDP_PRECISIONS}; use bf16",
            ),
        ]

    def with_absolute_paths(self, base: str | Path | None = None) -> TrainConfig:
        """A copy whose local data, val_data, init_from, hellaswag_file and data_cache paths are absolute (relative
        ones taken from base, by default the working folder), so a trainer started in another folder uses the files
        that were meant. Names that are not local paths (bundled corpora, hf:..., hub ids, run names) are kept."""
        root = Path(base) if base is not None else Path.cwd()
        out = dataclasses.replace(self)
        for name in ("data", "val_data", "init_from", "hellaswag_file"):
            value = getattr(out, name)
            if value and not value.startswith("hf:") and not Path(value).is_absolute() and (root / value).exists():
                setattr(out, name, str((root / value).resolve()))
        out.data_cache = str((root / out.data_cache).resolve())  # written by the trainer: where the caller meant
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        """Write config.json atomically (the UI may read it while a run starts)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}", field=unknown[0])
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_config_json(path))


def read_config_json(path: str | Path) -> Any:
    """The parsed contents of a config file; ConfigError when it is missing or not JSON."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {p} is not valid JSON: {e}") from e


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLEL = ("ddp", "fsdp")  # how torchrun's processes share the model (core/parallel.py)
FSDP_PRECISIONS = "FSDP trains in bf16 or fp32 (fp16's loss scaling is not built for sharded gradients)"
_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """int | None -> (int, NoneType); int -> (int,)."""
    union = typing.get_origin(annotation) in (types.UnionType, typing.Union)
    return typing.get_args(annotation) if union else (annotation,)


def _has_type(value: Any, expected: Any) -> bool:
    """isinstance against a field's annotation (int | None, dict[str, Any], ...); a bool is not a number."""
    options = (
        typing.get_args(expected) if typing.get_origin(expected) in (types.UnionType, typing.Union) else (expected,)
    )
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base in (str, bool, dict) and isinstance(value, base):
            return True
    return False


def _type_words(expected: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "a JSON object"}
    words = [names.get(typing.get_origin(a) or a, "none") for a in _alternatives(expected)]
    return " or ".join(w if w != "none" else "unset (null)" for w in words)
