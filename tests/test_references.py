"""Reference values and health_warnings (core/references.py) on synthetic metrics records."""

from __future__ import annotations

import math

import pytest

from core.references import (
    GPT2_124M_FINEWEB_EDU_VAL_LOSS,
    HELLASWAG_GPT2_124M,
    HELLASWAG_GPT3_124M,
    INIT_LOSS,
    health_warnings,
    hellaswag_references,
    is_fineweb_edu,
    loss_references,
)


def train(losses, start=1):
    return [{"kind": "train", "step": start + i, "loss": loss, "time": 0.0} for i, loss in enumerate(losses)]


def decaying(n=200, start=10.9, end=3.5):
    return [end + (start - end) * math.exp(-i / 30) for i in range(n)]


def test_reference_values():
    assert pytest.approx(10.8249, abs=1e-4) == INIT_LOSS  # ln(50257)
    assert (GPT2_124M_FINEWEB_EDU_VAL_LOSS, HELLASWAG_GPT2_124M, HELLASWAG_GPT3_124M) == (3.2924, 0.2955, 0.337)
    assert [r.value for r in hellaswag_references()] == [0.2955, 0.337]


def test_loss_lines_add_gpt2_on_fineweb_edu_only():
    assert [r.value for r in loss_references("shakespeare")] == [INIT_LOSS]
    assert [r.value for r in loss_references("hf:HuggingFaceFW/fineweb-edu")] == [INIT_LOSS, 3.2924]
    assert is_fineweb_edu("/data/fineweb-edu/sample/10BT/") and not is_fineweb_edu(None)
    assert loss_references(vocab_size=100)[0].value == pytest.approx(math.log(100))


def test_a_healthy_run_has_no_warnings():
    records = [*train(decaying()), {"kind": "eval", "step": 100, "val_loss": 4.1}, {"kind": "status", "state": "done"}]
    assert health_warnings(records, warmup_steps=20) == []
    assert health_warnings([]) == []


@pytest.mark.parametrize("first", [7.5, 12.5])
def test_a_first_step_loss_far_from_ln_vocab_warns(first):
    (warning,) = health_warnings(train([first, *decaying()[1:]]))
    assert warning.startswith(f"first-step loss {first:.2f} is ") and "ln(50257) = 10.82" in warning


def test_the_first_step_check_spares_fine_tunes_near_misses_and_unlogged_first_steps():
    assert health_warnings(train([3.1, 3.0, 2.9]), from_scratch=False) == []  # a fine-tune starts low
    assert health_warnings(train([10.0, *decaying()[1:]])) == []  # 0.82 nats off: within the tolerance
    assert health_warnings(train([7.0, 6.0, 5.0], start=10)) == []  # step 1 was not logged


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_a_nan_or_inf_loss_warns_with_its_step(bad):
    losses = decaying(50)
    losses[30] = bad  # metrics.jsonl stores NaN and inf as null
    warnings = health_warnings(train(losses))
    assert any(w.startswith("loss became NaN or inf at step 31") for w in warnings), warnings


def test_a_nan_validation_loss_warns():
    records = [*train(decaying(50)), {"kind": "eval", "step": 50, "val_loss": None}]
    assert health_warnings(records) == [
        "loss became NaN or inf at the validation at step 50; lower --lr, raise --warmup-steps or use --precision "
        "bf16/fp32"
    ]


def test_a_loss_climbing_after_warmup_is_diverging():
    losses = [*decaying(100, end=3.0), *[3.0 + 0.1 * i for i in range(60)]]  # back up to ~9
    (warning,) = health_warnings(train(losses), warmup_steps=10)
    assert warning.startswith("loss is diverging: smoothed ") and "at step 160" in warning


def test_spikes_warmup_and_resumes_are_not_divergence():
    spiky = decaying(200, end=3.0)
    spiky[150] = 6.0  # one bad batch: the smoothed loss barely moves
    assert health_warnings(train(spiky)) == []
    # a fine-tune whose loss rose while the lr warmed up, then held: only the lows after warmup count
    warm = train([2.0] * 3 + [3.5] * 60)
    assert health_warnings(warm, from_scratch=False, warmup_steps=10) == []
    assert health_warnings(warm, from_scratch=False)[0].startswith("loss is diverging")
    # a resumed run logs steps 81-100 again: each step counts once, in order
    resumed = [*train(decaying(100)), *train(decaying(100)[80:], start=81)]
    assert health_warnings(resumed) == []
