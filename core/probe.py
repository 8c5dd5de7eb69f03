"""Look inside a GPT-2: what it expected at each token, what each layer already predicts (logit lens),
which attention heads matter (head ablation) and how two checkpoints differ on the same text.

Everything runs batch 1, under torch.no_grad, in eval mode, on the model's device, and returns plain
dataclasses of numpy arrays and lists (cheap to cache and to send to a UI). The model is only observed
and changed through forward hooks on modules with Hugging Face GPT-2 names (transformer.drop,
transformer.h[i], transformer.h[i].attn.c_proj, transformer.ln_f, lm_head), never through forward
arguments, so it works with any GPT whose forward returns the logits first.

Hooks only act on the thread that installed them: a Gradio request probing (or ablating) a model
does not disturb a concurrent request generating from the same model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.model import GPT, unwrap_model

Head = tuple[int, int]  # (layer, head), both counted from 0


@dataclass
class Scored:
    """The tokens a result is about: the input cut to the model's context window."""

    tokens: list[int]  # the tokens actually scored, T of them
    truncated: bool  # True when the input was longer than the context window and was cut
    n_input: int  # number of input tokens before cutting

    @property
    def note(self) -> str:
        """One line for the UI when the input was cut, else ''."""
        if not self.truncated:
            return ""
        return f"the text has {self.n_input} tokens; only the first {len(self.tokens)} (the context window) are used"


@dataclass
class TokenLogprobs(Scored):
    """Index i is about predicting tokens[i + 1] from tokens[: i + 1] (T - 1 predictions)."""

    logprob: np.ndarray  # (T-1,) float32: log-probability of the token that really came next
    rank: np.ndarray  # (T-1,) int64: its rank among all tokens, 1 = the model's most likely
    top_tokens: np.ndarray  # (T-1, top) int64: the most likely next tokens, most likely first
    top_probs: np.ndarray  # (T-1, top) float32: their probabilities
    loss: float  # mean of -logprob (nats per token): the model's cross-entropy on this text
    perplexity: float  # exp(loss)


@dataclass
class LogitLens(Scored):
    """Layer 0 is the embeddings, layer l > 0 the residual stream after block l - 1; each is read out
    through the final LayerNorm and the LM head. The last layer is the model's own prediction."""

    top_tokens: np.ndarray  # (n_layer + 1, T, top) int64: most likely next tokens at each layer and position
    top_probs: np.ndarray  # (n_layer + 1, T, top) float32: their probabilities
    true_prob: np.ndarray  # (n_layer + 1, T) float32: probability of tokens[i + 1]; NaN in the last column

    @property
    def layer_labels(self) -> list[str]:
        return ["embeddings"] + [f"block {i}" for i in range(self.top_tokens.shape[0] - 1)]


@dataclass
class Comparison(Scored):
    """Per-token loss (-log-probability of tokens[i + 1]) under two models, a and b."""

    loss_a: np.ndarray  # (T-1,) float32
    loss_b: np.ndarray  # (T-1,) float32
    diff: np.ndarray  # (T-1,) float32: loss_b - loss_a; positive where b predicts worse
    mean_a: float
    mean_b: float
    mean_diff: float  # mean_b - mean_a


# --- input and hooks ------------------------------------------------------------------------------
def _check_tokens(tokens: Sequence[int], vocab_size: int) -> None:
    if len(tokens) == 0:
        raise ValueError("no tokens to probe; type some text first")
    if len(tokens) == 1:
        raise ValueError("the text is a single token; type at least two tokens so there is a next token to predict")
    lo, hi = min(tokens), max(tokens)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary (0 .. {vocab_size - 1})")


def _cut(tokens: Sequence[int], *models: GPT) -> tuple[list[int], bool]:
    limit = min(m.config.block_size for m in models)
    return list(tokens[:limit]), len(tokens) > limit


def _device(gpt: GPT) -> torch.device:
    return gpt.transformer.wte.weight.device


@contextmanager
def _eval_mode(gpt: GPT) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; a model that was training is put back afterwards."""
    was_training = gpt.training
    gpt.eval()
    try:
        yield
    finally:
        gpt.train(was_training)


@contextmanager
def _thread_hook(module: torch.nn.Module, hook: Callable, pre: bool = False) -> Iterator[None]:
    """A forward (pre-)hook that acts only on forwards run by the calling thread; removed on exit."""
    owner = threading.get_ident()

    def filtered(mod, *args):
        return hook(mod, *args) if threading.get_ident() == owner else None

    handle = module.register_forward_pre_hook(filtered) if pre else module.register_forward_hook(filtered)
    try:
        yield
    finally:
        handle.remove()


def _logits(gpt: GPT, tokens: list[int]) -> torch.Tensor:
    """(T, vocab_size) float32 logits of one sequence."""
    idx = torch.tensor([tokens], dtype=torch.long, device=_device(gpt))
    with torch.no_grad(), _eval_mode(gpt):
        return gpt(idx)[0][0].float()


def _next_token_logprobs(logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """(T-1,) log p(tokens[i + 1] | tokens[: i + 1]) from (T, V) logits."""
    targets = torch.tensor(tokens[1:], device=logits.device)
    return F.log_softmax(logits[:-1], dim=-1).gather(1, targets[:, None])[:, 0]


# --- token log-probabilities ----------------------------------------------------------------------
def token_logprobs(model: torch.nn.Module, tokens: Sequence[int], top: int = 5) -> TokenLogprobs:
    """How likely the model found each token of a text, its rank, and what it expected instead."""
    gpt = unwrap_model(model)
    _check_tokens(tokens, gpt.config.vocab_size)
    kept, truncated = _cut(tokens, gpt)
    logits = _logits(gpt, kept)[:-1]  # the last position predicts a token that is not in the text
    targets = torch.tensor(kept[1:], device=logits.device)
    logprobs = F.log_softmax(logits, dim=-1)
    true_lp = logprobs.gather(1, targets[:, None])[:, 0]
    # Rank from the logits themselves: a token outranks the true one only if its logit is strictly larger.
    rank = (logits > logits.gather(1, targets[:, None])).sum(1) + 1
    top_lp, top_ids = logprobs.topk(min(top, logits.size(1)), dim=-1)
    loss = -true_lp.double().mean().item()
    return TokenLogprobs(
        tokens=kept,
        truncated=truncated,
        n_input=len(tokens),
        logprob=true_lp.cpu().numpy(),
        rank=rank.cpu().numpy().astype(np.int64),
        top_tokens=top_ids.cpu().numpy().astype(np.int64),
        top_probs=top_lp.exp().cpu().numpy(),
        loss=loss,
        perplexity=math.exp(loss),
    )


# --- logit lens -----------------------------------------------------------------------------------
@contextmanager
def residual_stream(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the residual stream of the calling thread's next forward: a list that fills with
    n_layer + 1 tensors (B, T, C): the embeddings (the output of transformer.drop), then the output
    of each block. Hooks are removed on exit."""
    gpt = unwrap_model(model)
    states: list[torch.Tensor] = []

    def keep(_module, _args, output):
        states.append((output[0] if isinstance(output, tuple) else output).detach())

    with ExitStack() as stack:
        for module in (gpt.transformer.drop, *gpt.transformer.h):
            stack.enter_context(_thread_hook(module, keep))
        yield states


def logit_lens(model: torch.nn.Module, tokens: Sequence[int], top: int = 3) -> LogitLens:
    """What each layer would predict if the model stopped there (nostalgebraist, 2020)."""
    gpt = unwrap_model(model)
    _check_tokens(tokens, gpt.config.vocab_size)
    kept, truncated = _cut(tokens, gpt)
    with residual_stream(gpt) as states:
        _logits(gpt, kept)
    n_states = gpt.config.n_layer + 1
    if len(states) != n_states:
        raise RuntimeError(f"captured {len(states)} residual states, expected {n_states}; was the forward re-entered?")
    targets = torch.tensor(kept[1:], device=_device(gpt))
    V, k = gpt.config.vocab_size, min(top, gpt.config.vocab_size)
    top_tokens, top_probs, true_prob = [], [], []
    with torch.no_grad(), _eval_mode(gpt):
        for x in states:  # one layer at a time: all at once would be (n_layer + 1) x T x V floats
            probs = F.softmax(gpt.lm_head(gpt.transformer.ln_f(x[0]))[:, :V].float(), dim=-1)
            p, ids = probs.topk(k, dim=-1)
            top_tokens.append(ids)
            top_probs.append(p)
            nan = torch.full((1,), float("nan"), device=probs.device)
            true_prob.append(torch.cat([probs[:-1].gather(1, targets[:, None])[:, 0], nan]))
    return LogitLens(
        tokens=kept,
        truncated=truncated,
        n_input=len(tokens),
        top_tokens=torch.stack(top_tokens).cpu().numpy().astype(np.int64),
        top_probs=torch.stack(top_probs).cpu().numpy(),
        true_prob=torch.stack(true_prob).cpu().numpy(),
    )


# --- head ablation --------------------------------------------------------------------------------
def _check_heads(gpt: GPT, heads: Iterable[Head]) -> dict[int, list[int]]:
    """{layer: sorted heads}, or a ValueError naming the first pair out of range."""
    n_layer, n_head = gpt.config.n_layer, gpt.config.n_head
    by_layer: dict[int, set[int]] = {}
    for pair in heads:
        layer, head = (int(v) for v in pair)
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(
                f"head ({layer}, {head}) does not exist: this model has layers 0 .. {n_layer - 1} "
                f"and heads 0 .. {n_head - 1}"
            )
        by_layer.setdefault(layer, set()).add(head)
    return {layer: sorted(hs) for layer, hs in by_layer.items()}


@contextmanager
def ablated(model: torch.nn.Module, heads: Iterable[Head]) -> Iterator[None]:
    """Zero the output of the given (layer, head) pairs before the attention output projection.

    The stored weights never change: a forward pre-hook on transformer.h[layer].attn.c_proj zeroes the
    head's slice of its input. While active it affects every forward of this model run by the thread
    that entered it (and no other thread's); prefer ablated_logits / ablation_effect, which run the
    forward themselves.
    """
    gpt = unwrap_model(model)
    d = gpt.config.head_dim

    def zero_heads(hs: list[int]) -> Callable:
        def hook(_module, args):
            y = args[0].clone()
            for h in hs:
                y[..., h * d : (h + 1) * d] = 0
            return (y, *args[1:])

        return hook

    with ExitStack() as stack:
        for layer, hs in _check_heads(gpt, heads).items():
            stack.enter_context(_thread_hook(gpt.transformer.h[layer].attn.c_proj, zero_heads(hs), pre=True))
        yield


def ablated_logits(model: torch.nn.Module, tokens: Sequence[int], heads: Iterable[Head]) -> np.ndarray:
    """(T, vocab_size) float32 logits with the given heads ablated (T: the tokens cut to the window)."""
    gpt = unwrap_model(model)
    _check_tokens(tokens, gpt.config.vocab_size)
    kept, _ = _cut(tokens, gpt)
    with ablated(gpt, heads):
        return _logits(gpt, kept).cpu().numpy()


def ablation_effect(model: torch.nn.Module, tokens: Sequence[int], heads: Iterable[Head]) -> Comparison:
    """Per-token loss of the model as it is (a) and with the heads ablated (b); diff > 0: the heads helped."""
    gpt = unwrap_model(model)
    _check_tokens(tokens, gpt.config.vocab_size)
    heads = list(heads)
    _check_heads(gpt, heads)  # before any forward: a bad pair fails fast
    kept, truncated = _cut(tokens, gpt)
    clean = -_next_token_logprobs(_logits(gpt, kept), kept)
    with ablated(gpt, heads):
        hurt = -_next_token_logprobs(_logits(gpt, kept), kept)
    return _comparison(kept, truncated, len(tokens), clean, hurt)


# --- two models -----------------------------------------------------------------------------------
def compare(model_a: torch.nn.Module, model_b: torch.nn.Module, tokens: Sequence[int]) -> Comparison:
    """Per-token loss of two models (e.g. two checkpoints of one run) on the same text.

    The text is cut to the smaller of the two context windows; each model runs on its own device.
    """
    a, b = unwrap_model(model_a), unwrap_model(model_b)
    _check_tokens(tokens, min(a.config.vocab_size, b.config.vocab_size))
    kept, truncated = _cut(tokens, a, b)
    loss_a = -_next_token_logprobs(_logits(a, kept), kept)
    loss_b = -_next_token_logprobs(_logits(b, kept), kept)
    return _comparison(kept, truncated, len(tokens), loss_a, loss_b.to(loss_a.device))


def _comparison(kept: list[int], truncated: bool, n_input: int, a: torch.Tensor, b: torch.Tensor) -> Comparison:
    loss_a, loss_b = a.cpu().numpy(), b.cpu().numpy()
    mean_a, mean_b = float(loss_a.astype(np.float64).mean()), float(loss_b.astype(np.float64).mean())
    return Comparison(
        tokens=kept,
        truncated=truncated,
        n_input=n_input,
        loss_a=loss_a,
        loss_b=loss_b,
        diff=loss_b - loss_a,
        mean_a=mean_a,
        mean_b=mean_b,
        mean_diff=mean_b - mean_a,
    )
