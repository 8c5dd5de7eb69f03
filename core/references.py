"""What a healthy run looks like: reference values to draw beside its curves, and warnings when it is off.

Reference values (sources in docs/evals.md#reference-values):
    loss at initialization     ln(50257) = 10.82: a fresh model spreads its guess over the whole vocabulary
    GPT-2 124M on FineWeb-Edu  val loss 3.2924 (OpenAI's weights on build-nanogpt's validation shard)
    HellaSwag acc_norm         GPT-2 124M 0.2955 (acc 0.2859), GPT-3 124M 0.337, gpt2-xl 0.4893, chance 0.25

`health_warnings(records)` reads a run's metrics records (metrics.jsonl) and says what looks wrong, one line
each: a first-step loss far from ln(vocab), a loss that went NaN or inf, a loss that climbs after warmup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.config import GPT2_VOCAB_SIZE

INIT_LOSS = math.log(GPT2_VOCAB_SIZE)  # 10.8249
GPT2_124M_FINEWEB_EDU_VAL_LOSS = 3.2924
HELLASWAG_GPT2_124M = 0.2955  # acc_norm, build-nanogpt's scoring; acc 0.2859
HELLASWAG_GPT2_124M_ACC = 0.2859
HELLASWAG_GPT3_124M = 0.337
HELLASWAG_GPT2_XL = 0.4893
HELLASWAG_CHANCE = 0.25
INIT_LOSS_TOLERANCE = 1.0  # nats between the first-step loss and ln(vocab) before it is worth a warning
DIVERGENCE_RATIO = 1.5  # smoothed loss this many times its lowest value after warmup: diverging
EMA_BETA = 0.9  # smoothing of the training loss for the divergence check


@dataclass(frozen=True)
class Reference:
    """One horizontal line on a chart."""

    label: str
    value: float
    source: str


def is_fineweb_edu(data: str | None) -> bool:
    """Whether a TrainConfig.data source is FineWeb-Edu (the Hugging Face id or a local copy named after it)."""
    return bool(data) and "fineweb-edu" in str(data).lower()


def loss_references(data: str | None = None, vocab_size: int = GPT2_VOCAB_SIZE) -> list[Reference]:
    """Lines for a loss chart: the loss at initialization, and GPT-2 124M's val loss when training on FineWeb-Edu."""
    refs = [Reference(f"init: ln({vocab_size}) = {math.log(vocab_size):.2f}", math.log(vocab_size), "uniform guess")]
    if is_fineweb_edu(data):
        refs.append(
            Reference("GPT-2 124M val loss (3.2924)", GPT2_124M_FINEWEB_EDU_VAL_LOSS, "build-nanogpt play.ipynb")
        )
    return refs


def hellaswag_references() -> list[Reference]:
    """Lines for a HellaSwag (acc_norm) chart."""
    return [
        Reference("GPT-2 124M (0.2955)", HELLASWAG_GPT2_124M, "build-nanogpt hellaswag.py"),
        Reference("GPT-3 124M (0.337)", HELLASWAG_GPT3_124M, "GPT-3 paper"),
    ]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _train_losses(records: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """(step, loss) of the train records in step order; a step logged again after a resume counts once (the
    newest), so the steps a resumed run repeats are not read as a jump."""
    by_step: dict[int, Any] = {}
    for r in records:
        if r.get("kind") == "train" and isinstance(r.get("step"), int):
            by_step[r["step"]] = r.get("loss")
    return sorted(by_step.items())


def _first_step_warning(losses: list[tuple[int, Any]], vocab_size: int) -> str | None:
    if not losses or losses[0][0] != 1 or not _finite(losses[0][1]):
        return None  # step 1 not logged: its loss (on the initial weights) is unknown
    loss, expected = losses[0][1], math.log(vocab_size)
    if abs(loss - expected) <= INIT_LOSS_TOLERANCE:
        return None
    return (
        f"first-step loss {loss:.2f} is {abs(loss - expected):.1f} nats from ln({vocab_size}) = {expected:.2f}, the "
        "loss of a freshly initialized model; check the weight initialization and that the targets are the inputs "
        "shifted by one"
    )


def _divergence_warning(losses: list[tuple[int, Any]], warmup_steps: int) -> str | None:
    ema, low, low_step, last, last_step = None, math.inf, 0, None, 0
    for step, loss in losses:
        if not _finite(loss):
            continue
        ema = loss if ema is None else EMA_BETA * ema + (1 - EMA_BETA) * loss
        if step > warmup_steps:
            if ema < low:
                low, low_step = ema, step
            last, last_step = ema, step
    if last is None or last <= DIVERGENCE_RATIO * low:
        return None
    return (
        f"loss is diverging: smoothed {last:.2f} at step {last_step}, up from {low:.2f} at step {low_step}; lower "
        "--lr, raise --warmup-steps or --grad-clip, then resume from a checkpoint before it rose"
    )


def health_warnings(
    records: Iterable[dict[str, Any]],
    *,
    from_scratch: bool = True,
    warmup_steps: int = 0,
    vocab_size: int = GPT2_VOCAB_SIZE,
) -> list[str]:
    """What looks wrong with a run, from its metrics records (empty: nothing). Checks:

    - the first step's loss (on the initial weights) more than 1 nat from ln(vocab_size), for a run trained
      from scratch (from_scratch=False for a fine-tune, whose first loss is the pretrained model's);
    - a NaN or inf loss (metrics.jsonl stores them as null), in training or validation;
    - divergence: the training loss smoothed (EMA 0.9) ends above 1.5 x its lowest value after warmup_steps.
    """
    records = [r for r in records if isinstance(r, dict)]
    losses = _train_losses(records)
    warnings = []
    if from_scratch and (w := _first_step_warning(losses, vocab_size)):
        warnings.append(w)
    bad = [step for step, loss in losses if not _finite(loss)]
    evals = [r for r in records if r.get("kind") == "eval" and "val_loss" in r]
    bad_val = [r.get("step") for r in evals if not _finite(r["val_loss"])]
    if bad or bad_val:
        where = f"step {bad[0]}" if bad else f"the validation at step {bad_val[0]}"
        warnings.append(
            f"loss became NaN or inf at {where}; lower --lr, raise --warmup-steps or use --precision bf16/fp32"
        )
    if w := _divergence_warning(losses, warmup_steps):
        warnings.append(w)
    return warnings
