"""Recipes (core/recipes.py, python -m core.train --recipe/--list-recipes): the values of build-nanogpt's GPT-2 run,
the micro-batch from the GPU's memory, precedence recipe < --config < flags, and the expected wall time against a
hand computation."""

from __future__ import annotations

import json

import pytest
import torch

from core import distributed as D
from core.config import ConfigError, TrainConfig
from core.recipes import (
    RECIPES,
    DeviceInfo,
    apply_recipe,
    describe_recipes,
    expected_wall_time,
    get_recipe,
    gpt2_micro_batch,
    recipe_values,
)
from core.train import build_parser, plan_run
from tests.helpers import CACHE, records, run_cmd, train_cmd

GB = 10**9
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 1, 85_017_624_576, True)  # what torch reports for an H100
A100_40 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", 1, 42_505_273_344, True)
RTX_4090 = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 1, 25_393_692_672, True)
T4 = DeviceInfo("cuda", "Tesla T4", 1, 15_642_329_088, False)
LAPTOP = DeviceInfo("cpu", "x86_64", 2, 16 * GB, True)


def test_gpt2_recipe_is_build_nanogpts_run():
    cfg = apply_recipe("gpt2-124m-fineweb", device=H100)
    assert (cfg.preset, cfg.data, cfg.data_config) == ("gpt2", "hf:HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert (cfg.data_token_budget, cfg.val_fraction) == (10_000_000_000, 0.01)
    assert (cfg.total_batch_tokens, cfg.max_steps, cfg.warmup_steps) == (524_288, 19_073, 715)
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.grad_clip) == (6e-4, 6e-5, 0.1, 1.0)
    assert (cfg.eval_interval, cfg.hellaswag_interval, cfg.precision, cfg.compile) == (250, 250, "bf16", True)
    assert (cfg.batch_size, cfg.effective_seq_len, cfg.grad_accum_steps(1)) == (64, 1024, 8)
    assert pytest.approx(10e9, rel=1e-4) == 19_073 * 524_288  # one epoch of the 10B tokens
    cfg.validate(1)


@pytest.mark.parametrize(
    "device, batch, accum",
    [(H100, 64, 8), (A100_40, 32, 16), (RTX_4090, 16, 32), (T4, 8, 64), (LAPTOP, 4, 128)],
    ids=["80GB", "40GB", "24GB", "16GB", "cpu-16GB"],
)
def test_gpt2_micro_batch_follows_memory_and_accumulation_makes_up_the_batch(device, batch, accum):
    cfg = apply_recipe("gpt2-124m-fineweb", device=device)
    assert gpt2_micro_batch(device) == cfg.batch_size == batch
    assert cfg.grad_accum_steps(cfg.nproc) == accum
    assert cfg.compile == (device.kind == "cuda")
    assert cfg.precision == ("bf16" if device.bf16 else "auto")  # the T4 has no bf16: auto picks fp16 there
    cfg.validate()


def test_all_gpus_of_a_machine_share_the_batch():
    cfg = apply_recipe("gpt2-124m-fineweb", device=DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 8, 85 * GB, True))
    assert (cfg.nproc, cfg.batch_size, cfg.grad_accum_steps(8)) == (8, 64, 1)


def test_cpu_micro_batch_fits_half_the_ram():
    # 1.5 GB per 1024-token sequence plus 2 GB, measured for gpt2 in bf16 on this CPU; at least one sequence
    assert [gpt2_micro_batch(DeviceInfo("cpu", "x", 8, gb * GB, True)) for gb in (4, 8, 16, 64, 512)] == [
        1,
        1,
        4,
        16,
        16,
    ]


def test_every_recipe_validates_on_each_device():
    for name in RECIPES:
        for device in (H100, A100_40, T4, LAPTOP):
            apply_recipe(name, device=device).validate()
        assert get_recipe(name).description and get_recipe(name).hardware


def test_unknown_recipe_is_a_config_error_naming_the_recipes():
    with pytest.raises(ConfigError) as e:
        recipe_values("gpt3", LAPTOP)
    assert e.value.field == "recipe" and "gpt2-124m-fineweb" in str(e.value) and "shakespeare-cpu" in str(e.value)


def test_overrides_win_over_the_recipe():
    cfg = apply_recipe("shakespeare-cpu", {"max_steps": 7, "n_layer": None}, device=LAPTOP)
    assert (cfg.max_steps, cfg.n_layer, cfg.lr, cfg.data) == (7, None, 3e-3, "shakespeare")


def plan(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(argv)
    return plan_run(args, D.DistContext(0, 0, 1, torch.device("cpu"))).cfg


def test_precedence_recipe_then_config_file_then_flags(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": 1e-4, "max_steps": 3, "run_name": "from-file"}))
    cfg = plan(
        ["--runs-dir", str(tmp_path), "--recipe", "shakespeare-cpu", "--config", str(config), "--max-steps", "2"]
    )
    assert cfg.max_steps == 2  # flag over file
    assert cfg.lr == 1e-4  # file over recipe
    assert (cfg.n_layer, cfg.batch_size, cfg.sample_tokens) == (6, 16, 96)  # recipe over defaults
    assert cfg.warmup_steps == 50 and cfg.run_name == "from-file"


def test_recipe_with_resume_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="drop --recipe"):
        plan(["--runs-dir", str(tmp_path), "--recipe", "shakespeare-cpu", "--resume", "x"])


def test_cli_lists_recipes_and_trains_from_one(tmp_path):
    out = run_cmd(train_cmd(tmp_path, "--list-recipes"), timeout=120)
    assert out.returncode == 0, out.stderr
    for name in RECIPES:
        assert f"python -m core.train --recipe {name}" in out.stdout
    assert "expected about" in out.stdout
    small = ["--preset", "micro", "--seq-len", "32", "--batch-size", "2", "--max-steps", "2", "--data-cache", CACHE]
    out = run_cmd(train_cmd(tmp_path, "--recipe", "shakespeare-cpu", *small, "--run-name", "r"), timeout=300)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["n_layer"], saved["lr"], saved["max_steps"], saved["batch_size"]) == (6, 3e-3, 2, 2)
    assert records(tmp_path / "r", "status")[-1]["state"] == "done"
    bad = run_cmd(train_cmd(tmp_path, "--recipe", "gpt3"), timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: unknown recipe 'gpt3'; choose one of gpt2-124m-fineweb, shakespeare-cpu"
    ]


def test_expected_wall_time_on_gpus_is_flops_over_peak_times_mfu():
    cfg = apply_recipe("gpt2-124m-fineweb", device=H100)
    # by hand: 6 x (GPT-2's 124,439,808 parameters less wpe's 1024 x 768; padded vocabulary rows never count)
    # + 12 L H Q T for attention (PaLM, appendix B)
    per_token = 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 12 * 64 * 1024
    seconds = 30 + per_token * 19_073 * 524_288 / (989e12 * 0.40)
    assert expected_wall_time(cfg, H100) == pytest.approx(seconds, rel=1e-6)
    assert 5 * 3600 < seconds < 7 * 3600
    eight = DeviceInfo("cuda", H100.name, 8, H100.memory_bytes, True)
    assert expected_wall_time(apply_recipe("gpt2-124m-fineweb", device=eight), eight) == pytest.approx(
        30 + (seconds - 30) / 8, rel=1e-6
    )
    eager = apply_recipe("gpt2-124m-fineweb", {"compile": False}, device=H100)
    assert expected_wall_time(eager, H100) == pytest.approx(30 + (seconds - 30) * 0.40 / 0.25, rel=1e-6)


def test_expected_wall_time_is_none_without_a_basis():
    unknown = DeviceInfo("cuda", "Some Future GPU", 1, 80 * GB, True)
    assert expected_wall_time(apply_recipe("gpt2-124m-fineweb", device=unknown), unknown) is None
    mps = DeviceInfo("mps", "Apple GPU", 1, 16 * GB, False)
    assert expected_wall_time(apply_recipe("shakespeare-cpu", device=mps), mps) is None


def test_shakespeare_cpu_fits_ten_minutes_on_a_two_core_laptop():
    cfg = apply_recipe("shakespeare-cpu", device=LAPTOP)
    seconds = expected_wall_time(cfg, LAPTOP)
    assert 4 * 60 < seconds < 10 * 60
    four = DeviceInfo("cpu", "x86_64", 4, 16 * GB, True)
    assert expected_wall_time(cfg, four) < seconds
    no_bf16 = DeviceInfo("cpu", "x86_64", 2, 16 * GB, False)
    assert expected_wall_time(cfg, no_bf16) > seconds  # fp32 is slower per FLOP


def test_describe_recipes_names_the_device_and_each_command():
    text = describe_recipes(H100)
    assert "64 x 1024 x 8 accumulation x 1 process(es); bf16, compiled" in text
    assert text.count("python -m core.train --recipe") == len(RECIPES)
