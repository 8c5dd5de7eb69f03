"""SamplingConfig: what one generation does (length, temperature, top-k, top-p, seed, stops, batch, mode), checked
without torch, so the UI validates its forms before torch is loaded. core.generation runs it; core.decode_modes
runs the modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("default", "compiled", "bf16", "int8", "int8-compiled")
GREEDY_BELOW = 1e-5  # temperatures below this are treated as 0 (dividing by them overflows)
MAX_SAMPLES = 64


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy (deterministic)
    top_k: int | None = None  # None = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # None = a fresh random seed
    stop: tuple[str, ...] = ()  # stop strings; their text is not part of the output
    stop_at_eot: bool = True
    num_samples: int = 1
    top_candidates: int = 0  # >0: report this many candidates per step (Step.top)
    window_keep: int | None = None  # tokens kept when the context slides; None = block_size // 2
    use_cache: bool = True  # False recomputes the whole window each step (reference / benchmarks)
    mode: str = "default"  # how the model runs: one of core.decode_modes.MODES (docs/sampling.md#modes)

    def validate(self) -> SamplingConfig:
        """Check every field; raises ValueError naming the field and the allowed range."""
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, or None to turn it off; got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63), or None for a random one; got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if not is_int(self.num_samples) or not 1 <= self.num_samples <= MAX_SAMPLES:
            raise ValueError(f"num_samples must be an integer in [1, {MAX_SAMPLES}], got {self.num_samples!r}")
        if not is_int(self.top_candidates) or self.top_candidates < 0:
            raise ValueError(f"top_candidates must be an integer >= 0, got {self.top_candidates!r}")
        if self.window_keep is not None and (not is_int(self.window_keep) or self.window_keep < 1):
            raise ValueError(f"window_keep must be an integer >= 1, or None; got {self.window_keep!r}")
        check_mode(self.mode)
        if self.mode != "default" and not self.use_cache:
            raise ValueError(f"mode {self.mode!r} decodes with the KV cache; use_cache=False needs mode='default'")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW
