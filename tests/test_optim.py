"""LR schedule values and weight-decay parameter groups."""

import math

import pytest
import torch

from core.config import TrainConfig, model_config
from core.model import GPT
from core.optim import get_lr, lr_schedule, make_optimizer, param_groups


def test_lr_warmup_peak_cosine_and_floor():
    lr, min_lr, warmup, total = 6e-4, 6e-5, 10, 110
    assert get_lr(0, lr, min_lr, warmup, total) == pytest.approx(lr / 10)  # never 0 on the first step
    assert get_lr(4, lr, min_lr, warmup, total) == pytest.approx(lr * 5 / 10)
    assert get_lr(9, lr, min_lr, warmup, total) == pytest.approx(lr)  # peak at the end of warmup
    assert get_lr(10, lr, min_lr, warmup, total) == pytest.approx(lr)  # cosine starts at the peak
    assert get_lr(60, lr, min_lr, warmup, total) == pytest.approx((lr + min_lr) / 2)  # half-way
    assert get_lr(110, lr, min_lr, warmup, total) == pytest.approx(min_lr)
    assert get_lr(500, lr, min_lr, warmup, total) == pytest.approx(min_lr)  # stays at the floor
    values = [get_lr(s, lr, min_lr, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_lr_schedule_uses_config_defaults():
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=100)
    f = lr_schedule(cfg, world_size=1)
    assert f(0) == pytest.approx(1e-3)
    assert f(100) == pytest.approx(1e-4)  # min_lr defaults to lr / 10
    assert f(50) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)


def test_weight_decay_only_on_matrices():
    model = GPT(model_config("micro"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}
    assert any(names[id(p)].endswith("ln_1.weight") for p in no_decay["params"])
    assert any(names[id(p)].endswith("c_attn.bias") for p in no_decay["params"])
    # every parameter exactly once (the tied lm_head is the embedding, not a second tensor)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_optimizer_settings():
    cfg = TrainConfig(lr=3e-4, beta1=0.8, beta2=0.9, weight_decay=0.05)
    opt = make_optimizer(GPT(model_config("micro")), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["betas"] == (0.8, 0.9) and g["lr"] == 3e-4 and not g["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
