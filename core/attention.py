"""Attention maps and per-head summaries for the UI (the Attention tab), computed with the model's
explicit attention path. Training never runs this path; it only serves visualization.

torch is imported inside attention_maps: the UI builds its pages from this module before torch is loaded.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.config import EOT_TOKEN
from core.tokenizer import encode, token_str

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 256  # beyond this a T x T map per head is too big to draw and to read


@dataclass
class AttentionResult:
    tokens: list[int]  # the tokens actually visualized (after truncation)
    labels: list[str]  # one readable label per token
    probs: np.ndarray  # (L, H, T, T) float32; row = query, column = key; rows sum to 1
    entropy: np.ndarray  # (L, H) mean over query rows of the row entropy, in nats, within [0, log T]
    truncated: bool  # True when the input was longer than the cap
    n_input: int  # number of tokens before truncation

    @property
    def n_layer(self) -> int:
        return self.probs.shape[0]

    @property
    def n_head(self) -> int:
        return self.probs.shape[1]


def token_label(token: int) -> str:
    """A token as a short visible string: leading space as '␣', newline as '↵', tab as '⇥'."""
    s = token_str(token)
    return s.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def attention_maps(model: torch.nn.Module, tokens: list[int], max_tokens: int = MAX_TOKENS) -> AttentionResult:
    """Attention probabilities of every layer and head for one sequence.

    The first min(max_tokens, block_size) tokens are kept; `truncated` says whether any were cut.
    """
    import torch

    from core.model import unwrap_model

    if not tokens:
        raise ValueError("no tokens to visualize; type some text first")
    gpt = unwrap_model(model)
    cap = max(1, min(max_tokens, gpt.config.block_size))
    kept = list(tokens[:cap])
    device = gpt.transformer.wte.weight.device
    with torch.inference_mode():
        idx = torch.tensor([kept], dtype=torch.long, device=device)
        # The model holds no state, so this runs on the same model other threads may be sampling from.
        attns = gpt(idx, return_attn=True).attentions
        probs = torch.stack([a[0] for a in attns]).float()  # (L, H, T, T)
        # Row entropy; 0 * log 0 (the masked future) counts as 0.
        row_entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)  # (L, H, T)
        probs_np = probs.cpu().numpy()
        entropy = row_entropy.mean(-1).cpu().numpy()
    return AttentionResult(
        tokens=kept,
        labels=[token_label(t) for t in kept],
        probs=probs_np,
        entropy=entropy,
        truncated=len(tokens) > cap,
        n_input=len(tokens),
    )


def previous_token_scores(probs: np.ndarray) -> np.ndarray:
    """(L, H): mean attention from each query to the token right before it (queries 1 .. T-1)."""
    T = probs.shape[-1]
    if T < 2:
        return np.full(probs.shape[:2], np.nan, dtype=np.float32)
    q = np.arange(1, T)
    return probs[..., q, q - 1].mean(-1)


def induction_targets(tokens: list[int]) -> list[list[int]]:
    """For each query i, the keys j + 1 where tokens[j] == tokens[i] and j < i: the token that
    followed an earlier occurrence of the current token, which an induction head attends to."""
    seen: dict[int, list[int]] = {}
    targets = []
    for i, t in enumerate(tokens):
        targets.append([j + 1 for j in seen.get(t, [])])
        seen.setdefault(t, []).append(i)
    return targets


def induction_scores(probs: np.ndarray, tokens: list[int]) -> np.ndarray:
    """(L, H): mean attention paid to induction targets, over the queries that have one
    (NaN when no token repeats). Near 1 on repeated random tokens means an induction head."""
    T = probs.shape[-1]
    mask = np.zeros((T, T), dtype=probs.dtype)
    for i, keys in enumerate(induction_targets(tokens[:T])):
        mask[i, keys] = 1.0
    queries = mask.any(-1)
    if not queries.any():
        return np.full(probs.shape[:2], np.nan, dtype=np.float32)
    return (probs * mask).sum(-1)[..., queries].mean(-1)


@functools.cache
def _word_tokens() -> np.ndarray:
    """Tokens that are one space + lowercase letters and encode back to themselves, so a text of
    them round-trips through the tokenizer exactly (the text box can show and edit them)."""
    word = re.compile(r" [a-z]{3,}")
    ids = [t for t in range(EOT_TOKEN) if word.fullmatch(token_str(t)) and encode(token_str(t)) == [t]]
    return np.array(ids, dtype=np.int64)


def repeated_random_tokens(n: int = 40, seed: int = 0) -> list[int]:
    """<|endoftext|> then n random word tokens, then the same n again: the classic induction-head
    probe (Olsson et al., 2022). A model with induction heads predicts the second half, and those
    heads attend from each repeated token to the token after its first occurrence."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pool = _word_tokens()
    rng = np.random.default_rng(seed)
    half = rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()
    return [EOT_TOKEN] + half + half
