"""Decoding copies of a GPT with lighter weights: int8 (weight-only, per output channel) and bf16.

Decoding one token at a time is memory-bound: every step reads every weight once (about 500 MB for the
124M model in fp32). Storing the projection and head weights in int8 reads a quarter of that; bf16 half.
The copies share everything they do not convert with the original model (no second fp32 copy), and never
modify it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model import GPT, Conv1D

# torch._weight_int8pack_mm (CPU) gives wrong results or crashes unless the input width is a multiple of 16
# (measured on torch 2.13); other widths, and other devices, dequantize instead.
_PACKED_K_MULTIPLE = 16


class Int8Linear(nn.Module):
    """y = x @ W.T + b with W (out, in) stored as int8 and one fp32 scale per output channel (symmetric).

    On CPU the product runs in torch._weight_int8pack_mm with bf16 activations (its fp32 path is ~6x
    slower); elsewhere the weight is dequantized on the fly (torch.compile fuses that on GPU).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.packed = w.device.type == "cpu" and w.size(1) % _PACKED_K_MULTIPLE == 0
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16) if self.packed else None)

    @classmethod
    def from_conv1d(cls, conv: Conv1D) -> Int8Linear:
        return cls(conv.weight.t(), conv.bias)  # Conv1D stores (in, out)

    def dequantized(self) -> torch.Tensor:
        """The (out, in) fp32 weight these int8 values and scales stand for."""
        return self.weight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.weight.size(0))
        x2 = x.reshape(-1, x.size(-1))
        if self.packed:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight, self.scales_bf16).to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(shape)


class RefinedHead(nn.Module):
    """An LM head with low-precision output whose top candidates' logits are recomputed in fp32.

    int8 and bf16 heads return bf16 logits: rounding steps of 0.25-0.5 at the |logit| of 50-100 a trained
    GPT-2 produces, enough to tie or swap the leading candidates. Recomputing the `refine` largest from the
    fp32 embedding reads refine x n_embd floats per row (196 kB for 124M), next to the head's 39-77 MB.
    """

    def __init__(self, head: nn.Module, weight: torch.Tensor, refine: int = 64) -> None:
        super().__init__()
        self.head = head
        self.weight = weight  # fp32 (vocab, n_embd), shared with the original model: not a buffer, never saved
        self.refine = refine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x).float()
        top = logits.topk(min(self.refine, logits.size(-1)), dim=-1).indices  # (..., k)
        exact = (self.weight[top] @ x.float().unsqueeze(-1)).squeeze(-1)  # (..., k, C) @ (..., C, 1)
        return logits.scatter(-1, top, exact)


def shallow_copy(model: GPT) -> GPT:
    """A copy of the module tree that shares every parameter tensor with model."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def int8_copy(model: GPT) -> GPT:
    """model with every Conv1D projection and the LM head in int8; embeddings, norms and biases shared."""
    q = shallow_copy(model).eval()
    for block in q.transformer.h:
        for parent, name in (
            (block.attn, "c_attn"),
            (block.attn, "c_proj"),
            (block.mlp, "c_fc"),
            (block.mlp, "c_proj"),
        ):
            setattr(parent, name, Int8Linear.from_conv1d(getattr(parent, name)))
    w = model.lm_head.weight.detach()
    q.lm_head = RefinedHead(Int8Linear(w, None), w)  # the tied embedding stays fp32, for lookups and refining
    return q


def bf16_copy(model: GPT) -> GPT:
    """model with all weights in bf16 (its KV caches then hold bf16 too), the head refined in fp32."""
    memo = {id(p): nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False) for p in model.parameters()}
    b = copy.deepcopy(model, memo=memo).eval()
    b.lm_head = RefinedHead(b.lm_head, model.lm_head.weight.detach())
    return b
