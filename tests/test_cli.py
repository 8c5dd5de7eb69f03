"""TrainConfig <-> command-line flags: every field survives config -> flags -> parsed config, in both parsers."""

import argparse
import dataclasses
import subprocess
import sys
import typing

import pytest

from core.cli import add_config_arguments, config_to_flags, flag_name, overrides_from_args
from core.config import TrainConfig
from core.train import build_parser
from tests.helpers import ROOT

# Every field set to something other than its default, so config_to_flags has to emit every flag.
EVERY_FIELD = TrainConfig(
    run_name="my-run.1",
    runs_dir="/tmp/some runs",
    preset="small",
    n_layer=3,
    n_head=2,
    n_embd=64,
    block_size=48,
    dropout=0.1,
    pad_vocab=False,
    data="/tmp/a folder/corpus.txt",
    data_config="sample-10BT",
    val_data="hf:some/dataset",
    val_fraction=0.05,
    data_token_budget=123_456_789,
    data_cache="/tmp/cache",
    shard_tokens=5_000_000,
    batch_size=3,
    seq_len=40,
    total_batch_tokens=480,
    max_steps=7,
    max_tokens=10_000,
    lr=3e-4,
    min_lr=1e-10,
    warmup_steps=0,
    weight_decay=0.0,
    beta1=0.8,
    beta2=0.999,
    grad_clip=0.30000000000000004,
    eval_interval=0,
    eval_batches=2,
    ckpt_interval=1,
    keep_last=1,
    sample_interval=5,
    sample_tokens=8,
    log_interval=10,
    report_to="tensorboard,wandb",
    hellaswag_interval=250,
    hellaswag_limit=500,
    hellaswag_file="/tmp/hs dir/hellaswag_val.jsonl",
    seed=0,
    device="cpu",
    precision="bf16",
    compile=True,
    init_from="gpt2",
    nproc=2,
    parallel="fsdp",
    extra={"note": "a b", "nested": {"x": [1, 2.5, None]}, "on": True},
)
OPTIONAL_FIELDS = [
    f.name
    for f in dataclasses.fields(TrainConfig)
    if type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[f.name])
]


def config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser


def round_trip(cfg: TrainConfig, parser: argparse.ArgumentParser) -> TrainConfig:
    args = parser.parse_args(config_to_flags(cfg, skip=()))
    return TrainConfig.from_dict(overrides_from_args(args))


def test_the_example_sets_every_field_to_something_else():
    default = TrainConfig()
    same = [f.name for f in dataclasses.fields(TrainConfig) if getattr(EVERY_FIELD, f.name) == getattr(default, f.name)]
    assert same == []  # a new field needs a non-default value above


@pytest.mark.parametrize("parser", [config_parser, build_parser], ids=["add_config_arguments", "core.train"])
def test_every_field_round_trips(parser):
    flags = config_to_flags(EVERY_FIELD, skip=())
    assert {f for f in flags if f.startswith("--")} == {
        "--no-pad-vocab" if f.name == "pad_vocab" else flag_name(f.name) for f in dataclasses.fields(TrainConfig)
    }
    assert round_trip(EVERY_FIELD, parser()) == EVERY_FIELD
    assert round_trip(TrainConfig(), parser()) == TrainConfig()  # nothing differs: no flags at all
    assert config_to_flags(TrainConfig(), skip=()) == []


@pytest.mark.parametrize("parser", [config_parser, build_parser], ids=["add_config_arguments", "core.train"])
def test_none_bools_and_floats_parse_to_their_values(parser):
    assert OPTIONAL_FIELDS  # n_layer, seq_len, min_lr, ...
    args = parser().parse_args([a for name in OPTIONAL_FIELDS for a in (flag_name(name), "none")])
    assert overrides_from_args(args) == dict.fromkeys(OPTIONAL_FIELDS)
    # Optional fields set to None on top of a config that has them set (e.g. a config file) come back as None.
    cleared = dataclasses.replace(EVERY_FIELD, **dict.fromkeys(OPTIONAL_FIELDS))
    base = EVERY_FIELD.to_dict()
    flags = [a for name in OPTIONAL_FIELDS for a in (flag_name(name), "null")]
    assert TrainConfig.from_dict({**base, **overrides_from_args(parser().parse_args(flags))}) == cleared

    args = parser().parse_args(["--pad-vocab", "--no-compile", "--lr", "3e-4", "--min-lr", "1E-5"])
    assert overrides_from_args(args) == {"pad_vocab": True, "compile": False, "lr": 3e-4, "min_lr": 1e-5}
    assert overrides_from_args(parser().parse_args([])) == {}  # flags not given leave a config file's value alone


def test_bad_values_are_one_line_errors(capsys):
    for flags, message in (
        (["--extra", "[1, 2]"], "--extra needs a JSON object"),
        (["--extra", "{not json"], "--extra needs a JSON object"),
        (["--max-steps", "many"], "--max-steps"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(flags)
        assert message in capsys.readouterr().err


def test_train_help_lists_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "core.train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for f in dataclasses.fields(TrainConfig):
        assert flag_name(f.name) in out.stdout, f.name
    assert "--no-compile" in out.stdout and "--resume" in out.stdout and "--config" in out.stdout
