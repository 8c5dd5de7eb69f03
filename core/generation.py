"""Text generation with a KV cache: greedy, temperature, top-k, top-p, seeds, stop strings, streaming.

The prompt is prefilled once, then each step feeds one token at its absolute position. GPT-2 has
learned absolute positions, so cached keys/values cannot be shifted: when the sequence outgrows the
context window, the window *slides* -- the last `keep` tokens are prefilled again from position 0
and decoding continues. `keep` defaults to block_size // 2: a rebuild then costs one prefill per
block_size // 2 new tokens (about one extra forward per token, amortized) while the model always
sees at least half a window of context. keep = block_size - 1 gives the most context but rebuilds
on every token (as slow as recomputing without a cache).

The model holds no state: each stream owns its KV cache (core.model.KVCache) and passes it to every
forward, so any number of streams (two browser tabs, two threads) can run on one loaded model at once.
prefill and decode_step are the two forwards, as plain functions of (model, tokens, cache).
SamplingConfig (core.sampling_config) says what to generate; its mode picks how the forwards run (fp32, compiled,
bf16, int8: core.decode_modes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from core.config import EOT_TOKEN
from core.decode_modes import Decoder, decoder_for
from core.decode_modes import decode_step as decode_step  # re-exported: callers import the two forwards from here
from core.decode_modes import prefill as prefill
from core.model import unwrap_model
from core.sampling_config import MAX_SAMPLES, SamplingConfig
from core.sampling_config import MODES as MODES  # torch-free; re-exported: callers import it and SamplingConfig here
from core.tokenizer import StreamDecoder, encode


@dataclass
class Step:
    """One generation step: the token each sample produced (-1 where a sample produced none)."""

    index: int  # step number, 0 for the first new token
    tokens: list[int]  # per sample; -1 if it had already finished (or was still reading its prompt)
    texts: list[str]  # decoded text per sample (may be "" while a character or a stop string is incomplete)
    top: list[list[tuple[int, float]]]  # per sample: (token, probability sampled from), model's ranking
    context_slid: bool  # the window slid (or the prompt was cut) before this token was predicted
    finished: list[bool] = field(default_factory=list)  # per sample, True once it has stopped
    stop_reason: list[str | None] = field(default_factory=list)  # "eot" | "stop" | "length" once finished


# --- the distribution ---------------------------------------------------------------------------
def _restrict(logits: torch.Tensor, cfg: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Candidate logits after temperature, top-k and top-p, and their token ids (None: all, in order).

    top-k takes exactly k candidates with torch.topk, which also sorts them, so top-p then works on
    k values instead of sorting the whole vocabulary.
    """
    logits = logits.float() / cfg.temperature
    ids = None
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        logits, ids = torch.topk(logits, cfg.top_k, dim=-1)
    if cfg.top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, dim=-1, descending=True)
        probs = logits.softmax(-1)
        # Keep the smallest set of tokens whose mass reaches top_p (the most likely one always stays).
        logits = logits.masked_fill(probs.cumsum(-1) - probs >= cfg.top_p, float("-inf"))
    return logits, ids


def filter_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Probabilities (B, V) actually sampled from, after temperature, top-k and top-p.

    Greedy (temperature 0) gives the one-hot vector of the argmax.
    """
    logits = logits.float()
    if cfg.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    cand, ids = _restrict(logits, cfg)
    return _over_vocab(cand.softmax(-1), ids, logits)


def _over_vocab(probs: torch.Tensor, ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Candidate probabilities placed at their token ids in a (B, V) tensor (zeros elsewhere)."""
    return probs if ids is None else torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, ids, probs)


def _choose(
    logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row (B,), and the filtered probabilities when candidates are reported."""
    if cfg.greedy:
        return logits.argmax(-1), filter_probs(logits, cfg) if cfg.top_candidates else None
    cand, ids = _restrict(logits, cfg)
    probs = cand.softmax(-1)
    shown = _over_vocab(probs, ids, logits) if cfg.top_candidates else None  # top-k/top-p done once per step
    # argmax(p / E), E ~ Exp(1), picks i with probability p_i (a race of exponential clocks); it is
    # much cheaper than torch.multinomial over 50k entries. The clamp keeps 0/0 out.
    noise = torch.empty_like(probs).exponential_(generator=gen).clamp_(min=torch.finfo(probs.dtype).tiny)
    choice = (probs / noise).argmax(-1)
    return (choice if ids is None else ids.gather(-1, choice[:, None]).squeeze(-1)), shown


# --- per-sample text bookkeeping ----------------------------------------------------------------
class _TextTracker:
    """Decodes one sample's tokens and applies the stop rules.

    Text that could be the beginning of a stop string is held back until it is clear it is not,
    so the stop string itself never reaches the output, even when it spans several tokens.
    """

    def __init__(self, stop: tuple[str, ...], stop_at_eot: bool) -> None:
        self.decoder = StreamDecoder()
        self.stop = stop
        self.stop_at_eot = stop_at_eot
        self.held = ""
        self.produced = 0
        self.reason: str | None = None

    def push(self, token: int, max_new_tokens: int) -> str:
        self.produced += 1
        if token == EOT_TOKEN and self.stop_at_eot:
            return self._finish("eot")
        self.held += self.decoder.push(token)
        if self.stop:
            cut = min((i for s in self.stop if (i := self.held.find(s)) >= 0), default=-1)
            if cut >= 0:
                out, self.held = self.held[:cut], ""
                self.reason = "stop"
                return out
        if self.produced >= max_new_tokens:
            return self._finish("length")
        keep = self._stop_prefix_len(self.held)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def _finish(self, reason: str) -> str:
        self.reason = reason
        tail = self.held + self.decoder.flush()
        self.held = ""
        cut = min((i for s in self.stop if (i := tail.find(s)) >= 0), default=-1)
        return tail[:cut] if cut >= 0 else tail

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


# --- running the model --------------------------------------------------------------------------
def prompt_tokens(prompt: str | Sequence[int], vocab_size: int = EOT_TOKEN + 1) -> list[int]:
    """Token ids of a prompt (text or ids); an empty prompt starts from <|endoftext|>."""
    if isinstance(prompt, str):
        tokens = encode(prompt)
    else:
        tokens = list(prompt)
        bad = [t for t in tokens if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab_size}); got {bad[:5]}")
    return tokens or [EOT_TOKEN]


def window_keep(block_size: int, requested: int | None = None) -> int:
    """How many of the latest tokens stay in the window when it slides (and of a prompt longer than it).

    requested (SamplingConfig.window_keep) defaults to block_size // 2; it is capped at block_size - 1 so
    the next token always fits, and is at least 1.
    """
    if block_size <= 1:
        return 1
    return min(requested or max(1, block_size // 2), block_size - 1)


class _Window:
    """The tokens a batch of equal-length rows currently sees, and their KV cache; slides when full."""

    def __init__(self, decoder: Decoder, rows: torch.Tensor, cfg: SamplingConfig, max_steps: int) -> None:
        self.decoder = decoder
        self.block = decoder.model.config.block_size
        self.keep = window_keep(self.block, cfg.window_keep)
        batch, length = rows.shape
        # Preallocated so steps never reallocate.
        self.tokens = torch.empty(batch, self.block, dtype=torch.long, device=rows.device)
        self.slid = length > self.block
        rows = rows[:, -self.keep :] if self.slid else rows
        self.n = rows.size(1)
        self.tokens[:, : self.n] = rows
        max_len = min(self.block, self.n + max_steps)
        self.cache = decoder.new_cache(batch, max_len) if cfg.use_cache else None

    def prefill(self) -> torch.Tensor:
        return self.decoder.prefill(self.tokens[:, : self.n], self.cache)

    def close(self) -> None:
        self.decoder.release(self.cache)
        self.cache = None

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row and return the next logits; slides the window when it is full."""
        if self.n == self.block:
            # Learned absolute positions: cached keys cannot be shifted, so the kept tokens are read again.
            kept = self.tokens[:, self.n - self.keep + 1 : self.n].clone()
            self.tokens[:, : self.keep - 1] = kept
            self.tokens[:, self.keep - 1] = tokens
            self.n = self.keep
            self.slid = True
            return self.prefill()
        self.tokens[:, self.n] = tokens
        self.n += 1
        if self.cache is None:
            return self.prefill()
        return self.decoder.step(tokens, self.n - 1, self.cache)


def _run(model: nn.Module, prompts: list[list[int]], cfg: SamplingConfig) -> Iterator[Step]:
    """Generate for rows of possibly different prompt lengths.

    Rows are prefilled up to the shortest prompt; longer prompts feed their remaining tokens one
    per step (forced instead of sampled), so no padding or attention mask is needed.
    """
    gpt = unwrap_model(model)
    device = gpt.transformer.wte.weight.device
    gen = torch.Generator(device=device)
    if cfg.seed is None:
        gen.seed()
    else:
        gen.manual_seed(cfg.seed)
    shortest = min(len(p) for p in prompts)
    pending = [p[shortest:] for p in prompts]  # prompt tokens still to be read, per row
    max_steps = max(len(p) for p in pending) + cfg.max_new_tokens
    with torch.inference_mode():
        rows = torch.tensor([p[:shortest] for p in prompts], dtype=torch.long, device=device)
        window = _Window(decoder_for(gpt, cfg.mode), rows, cfg, max_steps)
    try:
        yield from _decode(window, pending, cfg, gen, max_steps)
    finally:
        window.close()  # also when the caller stops iterating early


def _decode(
    window: _Window, pending: list[list[int]], cfg: SamplingConfig, gen: torch.Generator, max_steps: int
) -> Iterator[Step]:
    """The generation loop of _run: choose a token per row, report it, feed it."""
    B = len(pending)
    device = window.tokens.device
    trackers = [_TextTracker(cfg.stop, cfg.stop_at_eot) for _ in range(B)]
    with torch.inference_mode():
        logits = window.prefill()
    for index in range(max_steps):
        with torch.inference_mode():
            nxt, probs = _choose(logits, cfg, gen)
            forcing = [bool(p) for p in pending]
            if any(forcing):
                forced = [p.pop(0) if p else 0 for p in pending]
                mask = torch.tensor(forcing, device=device)
                nxt = torch.where(mask, torch.tensor(forced, device=device), nxt)
            top = [[] for _ in range(B)]
            if cfg.top_candidates:
                k = min(cfg.top_candidates, logits.size(-1))
                ids = torch.topk(logits, k, dim=-1).indices
                top = [list(zip(i, p)) for i, p in zip(ids.tolist(), probs.gather(-1, ids).tolist())]
        toks = nxt.tolist()  # the one host sync per step: text is needed now for streaming
        tokens, texts = [-1] * B, [""] * B
        for i, tr in enumerate(trackers):
            if forcing[i] or tr.reason:
                top[i] = []
                continue
            tokens[i] = toks[i]
            texts[i] = tr.push(toks[i], cfg.max_new_tokens)
        if any(t >= 0 for t in tokens):
            yield Step(
                index=index,
                tokens=tokens,
                texts=texts,
                top=top,
                context_slid=window.slid,
                finished=[tr.reason is not None for tr in trackers],
                stop_reason=[tr.reason for tr in trackers],
            )
            window.slid = False
        if all(tr.reason for tr in trackers):
            return
        with torch.inference_mode():
            logits = window.feed(nxt)


def stream(model: nn.Module, prompt: str | Sequence[int], cfg: SamplingConfig | None = None) -> Iterator[Step]:
    """Yield one Step per new token for cfg.num_samples samples of one prompt (batched).

    Same seed -> same text (on the same device). Stops per sample at <|endoftext|>, a stop string or
    max_new_tokens; the iterator ends when all samples have stopped.
    """
    return stream_batch(model, [prompt], cfg or SamplingConfig())


def stream_batch(model: nn.Module, prompts: Sequence[str | Sequence[int]], cfg: SamplingConfig) -> Iterator[Step]:
    """Like stream, for several prompts at once: rows are prompt-major (prompt 0's samples first)."""
    cfg = cfg.validate()
    if not prompts:
        raise ValueError("prompts must not be empty")
    if len(prompts) * cfg.num_samples > MAX_SAMPLES:
        raise ValueError(f"at most {MAX_SAMPLES} rows per batch; got {len(prompts)} prompts x {cfg.num_samples}")
    gpt = unwrap_model(model)
    if gpt.training and gpt.config.dropout > 0:
        # Switching the shared model to eval mode here would change it under other users' feet.
        raise ValueError("the model is in training mode, so dropout would randomize sampling; call model.eval() first")
    vocab = gpt.config.vocab_size
    rows = [tokens for p in prompts for tokens in [prompt_tokens(p, vocab)] * cfg.num_samples]  # encode once
    return _run(model, rows, cfg)


def _collect(steps: Iterator[Step], rows: int) -> tuple[list[str], list[list[int]]]:
    texts: list[list[str]] = [[] for _ in range(rows)]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    for step in steps:
        for i in range(rows):
            if step.tokens[i] >= 0:
                tokens[i].append(step.tokens[i])
                texts[i].append(step.texts[i])
    return ["".join(t) for t in texts], tokens


def generate(model: nn.Module, prompt: str | Sequence[int], cfg: SamplingConfig | None = None) -> list[str]:
    """The completions (without the prompt) of cfg.num_samples samples."""
    cfg = (cfg or SamplingConfig()).validate()
    return _collect(stream(model, prompt, cfg), cfg.num_samples)[0]


def generate_tokens(
    model: nn.Module, prompt: str | Sequence[int], cfg: SamplingConfig | None = None
) -> list[list[int]]:
    """The new token ids per sample, including a final <|endoftext|> when that ended the sample."""
    cfg = (cfg or SamplingConfig()).validate()
    return _collect(stream(model, prompt, cfg), cfg.num_samples)[1]


def generate_batch(
    model: nn.Module, prompts: Sequence[str | Sequence[int]], cfg: SamplingConfig | None = None
) -> list[list[str]]:
    """Completions for several prompts in one batch: result[i] holds prompt i's num_samples texts."""
    cfg = (cfg or SamplingConfig()).validate()
    texts = _collect(stream_batch(model, prompts, cfg), len(prompts) * cfg.num_samples)[0]
    n = cfg.num_samples
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
