"""Keep glibc from returning big blocks to the OS between training steps (Linux, CPU training).

Each step allocates and frees blocks of hundreds of MB (the B x T x 50257 logits, their softmax and
gradients). By default glibc serves such blocks with mmap and gives them back on free, so every step
page-faults them in again: on CPU that is half the step time (spent in the kernel). Raising the mmap
and trim thresholds keeps the memory in the heap for reuse. glibc reads them at process start only
(mallopt caps the mmap threshold at 32 MB), hence a one-time re-exec with the variables set.
"""

from __future__ import annotations

import os
import sys

TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**40), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def reexec_with_tuned_malloc() -> None:
    """Re-run this very command line with the thresholds set; a no-op when set or not Linux.

    exec keeps the pid and process start time, so job tracking and torchrun see the same process.
    Set PLAYGROUND_MALLOC_TUNING=0 to opt out.
    """
    if sys.platform != "linux" or os.environ.get("PLAYGROUND_MALLOC_TUNING") == "0":
        return
    if all(os.environ.get(k) == v for k, v in TUNED_ENV.items()):
        return
    os.environ.update(TUNED_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
