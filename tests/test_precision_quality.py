"""bf16 autocast trains as well as fp32: the same tiny run through the real trainer (`python -m core.train`), once
in each precision, ends at the same validation loss within 1 %.

The issue asks for 500 steps; on 2 shared CPU cores that is several minutes, so the suite runs STEPS (200: both
runs side by side in about a minute) and `PRECISION_QUALITY_STEPS=500` runs the full check (docs/benchmarks.md has
the figures of both).
"""

import math
import os
import subprocess

import pytest

from core.config import GPT2_VOCAB_SIZE
from core.precision import cpu_bf16_support
from tests.helpers import CACHE, ROOT, records, train_cmd

UNIGRAM_ENTROPY = 6.32
STEPS = int(os.environ.get("PRECISION_QUALITY_STEPS", "200"))
# 2 layers, 64 wide, 64-token sequences, on the bundled Shakespeare; the seed fixes the init and the batches.
RUN = ["--preset", "tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--seq-len", "64"]
RUN += ["--batch-size", "8", "--lr", "3e-3", "--warmup-steps", str(STEPS // 10), "--max-steps", str(STEPS)]
RUN += ["--eval-interval", str(STEPS), "--eval-batches", "20", "--ckpt-interval", "0", "--log-interval", "50"]
RUN += ["--device", "cpu", "--seed", "1337"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        cpu_bf16_support() is None,
        reason="this CPU has no AMX or AVX-512 BF16: bf16 autocast is emulated there and far too slow to train",
    ),
]


def test_bf16_autocast_reaches_the_fp32_val_loss(tmp_path):
    # Both runs at once, one thread each: on 2 cores that takes half the time of one after the other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        p: subprocess.Popen(
            train_cmd(tmp_path, *RUN, "--run-name", p, "--precision", p, "--data-cache", CACHE),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in ("fp32", "bf16")
    }
    logs = {p: proc.communicate(timeout=60 * max(5, STEPS // 40))[0] for p, proc in procs.items()}
    for p, proc in procs.items():
        assert proc.returncode == 0, logs[p][-2000:]
        assert records(tmp_path / p, "status")[0]["precision"] == p  # autocast really ran (or really did not)
    fp32, bf16 = (records(tmp_path / p, "eval")[-1] for p in ("fp32", "bf16"))
    assert fp32["step"] == bf16["step"] == STEPS
    # Learned something: far below a uniform guess (ln 50,257 = 10.8 nats) and below the unigram entropy of the text
    # under GPT-2's BPE (6.32 nats, docs/testing.md), so both models use context.
    assert max(fp32["val_loss"], bf16["val_loss"]) < UNIGRAM_ENTROPY < math.log(GPT2_VOCAB_SIZE)
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.01), (fp32["val_loss"], bf16["val_loss"])
