"""GPT-2 in one readable file: token + position embeddings, pre-LN blocks, tied LM head.

Parameter names and shapes follow OpenAI's checkpoints and Hugging Face's GPT2LMHeadModel
(transformer.h.0.attn.c_attn.weight is (in, out), ...), so GPT-2 weights load as a plain copy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import ModelConfig
from core.losses import linear_cross_entropy


class GPTOutput(NamedTuple):
    """What GPT.forward returns, always these three fields."""

    logits: torch.Tensor | None  # (B, T, vocab_size), (B, 1, vocab_size) with last_only; None: see forward
    loss: torch.Tensor | None  # mean cross-entropy; None without targets
    attentions: list[torch.Tensor] | None  # one (B, H, T, S) probability tensor per layer; None without return_attn


class KVCache:
    """Keys and values of every layer for one batch of sequences, owned by the caller (gpt-fast style).

    The model keeps no state: a caller makes a cache (GPT.new_cache), passes it to each forward with the
    absolute position of the first new token, and drops it when done. So any number of generations can
    run on one model at the same time, each with its own cache.
    """

    def __init__(
        self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device=None, dtype=None
    ) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)  # preallocated: decoding never reallocates
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def batch(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's (B, H, max_len, D) key and value buffers (views: writes land in the cache)."""
        return self.k[i], self.v[i]


class Conv1D(nn.Module):
    """GPT-2's projection: y = x @ W + b with W stored (in, out) -- nn.Linear's maths, transposed storage.

    The (in, out) layout is the one GPT-2 checkpoints use, and it makes batch-1 decoding (a
    memory-bound vector-matrix product) about 15% faster on CPU than nn.Linear's (out, in).
    """

    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.weight.size(1))
        x = x.reshape(-1, x.size(-1))
        y = x @ self.weight if self.bias is None else torch.addmm(self.bias, x, self.weight)
        return y.view(shape)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Conv1D(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE = True  # marks a residual projection for the depth-scaled init
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        pos: int = 0,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """kv: this layer's cache buffers (KVCache.layer); the new keys/values are written at [pos, pos + T)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv is not None:
            k_buf, v_buf = kv
            k_buf[:, :, pos : pos + T] = k
            v_buf[:, :, pos : pos + T] = v
            # A slice up to the last written position, not the whole buffer: no mask needed for T == 1.
            k, v = k_buf[:, :, : pos + T], v_buf[:, :, : pos + T]
        S = k.size(2)  # keys visible: past (cached) + current
        probs = None
        if return_attn:
            # Explicit path: the same maths as SDPA, but the probabilities are kept for the UI.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            scores = scores.masked_fill(~_causal_mask(T, S, x.device), float("-inf"))
            probs = F.softmax(scores, dim=-1)
            y = F.dropout(probs, self.dropout, self.training) @ v
        else:
            drop = self.dropout if self.training else 0.0
            if T == S:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
            elif T == 1:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # one query sees all keys
            else:
                mask = _causal_mask(T, S, x.device)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), probs


def _causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) boolean mask: query i (at absolute position S - T + i) sees keys 0 .. S - T + i."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 used the tanh approximation of GELU; exact GELU would break weight compatibility.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        pos: int = 0,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(self.ln_1(x), pos, kv, return_attn)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, probs


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one tensor, not a copy
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, Conv1D)):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE", False):
                # GPT-2: residual projections scaled by 1/sqrt(N), N = residual adds = 2 per layer.
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        pos: int = 0,
        cache: KVCache | None = None,
        return_attn: bool = False,
        last_only: bool = False,
        return_logits: bool = False,
    ) -> GPTOutput:
        """Logits for idx (B, T); with targets (B, T), the mean cross-entropy loss (targets of -1 left out).

        model(idx) returns the logits and loss None. model(idx, targets) returns the loss and logits None:
        the loss is then computed chunk by chunk from the final hidden states (core.losses), so the
        B x T x vocab logits, softmax and gradient are never all alive at once -- the training step's biggest
        tensors. model(idx, targets, return_logits=True) returns both, the loss computed from the full logits
        (same value within fp32 rounding). return_logits has no effect without targets.

        pos: the absolute position of idx[:, 0]. cache: keys/values of the positions before pos (from
        earlier calls) are read from it and those of idx are written into it. return_attn: run the explicit
        attention path and return its probabilities. last_only: logits of the last position only, (B, 1, V)
        -- a prompt's prefill then skips the head's (T, n_embd) x (n_embd, vocab) product for positions
        nobody reads.
        """
        T = idx.size(1)
        self._check_inputs(idx, targets, pos, cache, last_only)
        positions = torch.arange(pos, pos + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        attns = [] if return_attn else None
        for i, block in enumerate(self.transformer.h):
            x, probs = block(x, pos, cache.layer(i) if cache is not None else None, return_attn)
            if attns is not None:
                attns.append(probs)
        if last_only:
            x = x[:, -1:]
        x = self.transformer.ln_f(x)
        if targets is not None and not return_logits:
            h = x.reshape(-1, x.size(-1))
            loss = linear_cross_entropy(h, self.lm_head.weight, targets.reshape(-1), self.config.vocab_size)
            return GPTOutput(None, loss, attns)
        logits = self.lm_head(x)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padded rows are never predicted
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return GPTOutput(logits, loss, attns)

    def _check_inputs(
        self, idx: torch.Tensor, targets: torch.Tensor | None, pos: int, cache: KVCache | None, last_only: bool
    ) -> None:
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens exceeds the context window ({self.config.block_size}); "
                "crop the input or use core.generation, which slides the window"
            )
        if pos < 0:
            raise ValueError(f"pos is the absolute position of idx[:, 0] and must be >= 0, got {pos}")
        if cache is not None and (cache.batch != B or pos + T > cache.max_len):
            raise ValueError(
                f"the KV cache holds {cache.batch} rows x {cache.max_len} positions; this call needs {B} rows x "
                f"{pos + T}; make one with model.new_cache({B}, max_len={pos + T})"
            )
        if targets is not None and last_only:
            raise ValueError("last_only computes one position's logits; the loss needs all of them")

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to max_len (default: block_size) positions, on the
        model's device, in the weights' dtype unless given."""
        c = self.config
        w = self.transformer.wte.weight
        max_len = min(max_len or c.block_size, c.block_size)
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, device=w.device, dtype=dtype or w.dtype)

    # --- accounting -----------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted the GPT-2 way: tied head once, padded vocabulary rows excluded."""
        n = sum(p.numel() for p in self.parameters())
        n -= (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_head * c.head_dim * T


def unwrap_model(model: nn.Module) -> GPT:
    """The plain GPT inside DDP/FSDP (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with no wrapper prefixes and the tied head stored once (as the embedding)."""
    sd = unwrap_model(model).state_dict()
    sd.pop("lm_head.weight", None)
    return sd


def load_clean_state_dict(model: GPT, sd: dict[str, torch.Tensor]) -> None:
    """Load a clean_state_dict (strict, so a mismatched checkpoint fails loudly)."""
    sd = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in sd.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    unwrap_model(model).load_state_dict(sd, strict=True)
