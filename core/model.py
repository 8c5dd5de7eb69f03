"""GPT-2 in one readable file: token + position embeddings, pre-LN blocks, tied LM head.

Parameter names and shapes follow OpenAI's checkpoints and Hugging Face's GPT2LMHeadModel
(transformer.h.0.attn.c_attn.weight is (in, out), ...), so GPT-2 weights load as a plain copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import ModelConfig


class KVCache(nn.Module):
    """Preallocated keys/values of one layer (gpt-fast style): (B, H, max_len, D)."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v at positions [pos, pos + T) and return all keys/values up to pos + T."""
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


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
        self.kv_cache: KVCache | None = None

    def forward(
        self, x: torch.Tensor, pos: int = 0, return_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(pos, k, v)
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
        self, x: torch.Tensor, pos: int = 0, return_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs = self.attn(self.ln_1(x), pos, return_attn)
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
        pos: int = 0,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | tuple[torch.Tensor, torch.Tensor | None, list]:
        """Logits (B, T, vocab_size) and the mean cross-entropy loss when targets are given.

        pos is the absolute position of idx[:, 0] (non-zero only when decoding with a KV cache).
        With return_attn the explicit attention path runs and a third value, one (B, H, T, S)
        probability tensor per layer, is returned.
        """
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens exceeds the context window ({self.config.block_size}); "
                "crop the input or use core.generation, which slides the window"
            )
        positions = torch.arange(pos, pos + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        attns = []
        for block in self.transformer.h:
            x, probs = block(x, pos, return_attn)
            if return_attn:
                attns.append(probs)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padded rows are never predicted
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if return_attn:
            return logits, loss, attns
        return logits, loss

    # --- KV cache -------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        max_len = max_len or self.config.block_size
        device = self.transformer.wte.weight.device
        dtype = dtype or self.transformer.wte.weight.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch, self.config.n_head, max_len, self.config.head_dim, device, dtype)

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

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
