"""fp32 decoding laid out for the CPU: the same weights and maths as the model, in the shapes MKL runs fastest
for one token at a time.

Decoding one token reads every weight once per step (about 500 MB for the 124M model), so its speed is how
fast the vector-matrix products stream their weights. Two things hold MKL back there (measured on a
2-core EPYC, 124M):

- the tied LM head: with the embedding's (vocab, n_embd) layout MKL computes one dot product per row, at
  about half the bandwidth of the (n_embd, vocab) layout (11 vs 6 ms per token). The copy keeps the head
  transposed: a second fp32 copy of the head (154 MB for 124M), made once per model.
- threads: MKL runs a one-row product on one thread however many torch has. Split into one block of output
  columns per thread, as one batched product, it uses them all: 18 -> 15 ms for the 48 projections, 6.4 ->
  4.3 ms for the head, on 2 threads. Blocks narrower than MIN_BLOCK_COLUMNS lost more than they gained
  (16 blocks of 48-192 columns: 20.5 ms), and on one thread splitting only costs, so neither is done.

The copy shares every parameter with the model, never modifies it, and gives its logits up to fp32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from core.model import GPT, Conv1D
from core.quant import shallow_copy

MIN_BLOCK_COLUMNS = 256


def column_blocks(n_out: int, threads: int) -> int:
    """How many blocks a one-row product with n_out output columns is split into: at most one per thread, each
    at least MIN_BLOCK_COLUMNS wide, all the same width; 1: not split."""
    for parts in range(min(threads, n_out // MIN_BLOCK_COLUMNS), 1, -1):
        if n_out % parts == 0:
            return parts
    return 1


def column_split_mm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, parts: int) -> torch.Tensor:
    """x @ w (+ bias) for x (rows, in) and w (in, out); one row is computed in `parts` blocks of columns (parts
    divides out)."""
    n_in, n_out = w.shape
    if x.size(0) != 1 or parts == 1:
        return x @ w if bias is None else torch.addmm(bias, x, w)
    blocks = w.view(n_in, parts, n_out // parts).transpose(0, 1)  # (parts, in, out / parts), no copy
    rows = x.expand(parts, 1, n_in)
    y = torch.bmm(rows, blocks) if bias is None else torch.baddbmm(bias.view(parts, 1, -1), rows, blocks)
    return y.view(1, n_out)  # (parts, 1, out / parts) in order is the row


class SplitConv1D(nn.Module):
    """A Conv1D (its weight and bias shared, not copied) whose one-row products run in column blocks."""

    def __init__(self, conv: Conv1D, threads: int) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.parts = column_blocks(conv.weight.size(1), threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = column_split_mm(x.reshape(-1, x.size(-1)), self.weight, self.bias, self.parts)
        return y.view(*x.shape[:-1], self.weight.size(1))


class TransposedHead(nn.Module):
    """The tied LM head, x @ W.T, read from a (n_embd, padded vocab) copy of the (vocab, n_embd) embedding W.

    The columns are padded with zeros to a multiple of 64, so they split evenly in blocks; the logits of the
    padding are cut off.
    """

    def __init__(self, weight: torch.Tensor, vocab_size: int, threads: int) -> None:
        super().__init__()
        w = weight.detach()[:vocab_size]
        padded = math.ceil(vocab_size / 64) * 64
        weight_t = torch.zeros(w.size(1), padded, dtype=w.dtype, device=w.device)
        weight_t[:, :vocab_size] = w.t()
        self.register_buffer("weight_t", weight_t)
        self.vocab_size, self.parts = vocab_size, column_blocks(padded, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = column_split_mm(x.reshape(-1, x.size(-1)), self.weight_t, None, self.parts)
        return y.view(*x.shape[:-1], -1)[..., : self.vocab_size]


def cpu_decode_copy(model: GPT, threads: int | None = None) -> GPT:
    """model with its projections in column blocks (SplitConv1D) and its head transposed (TransposedHead).

    threads: the threads the products are split for; None: torch's thread count now.
    """
    threads = threads or torch.get_num_threads()
    c = shallow_copy(model)
    for parent in list(c.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, name, SplitConv1D(child, threads))
    c.lm_head = TransposedHead(model.lm_head.weight, model.config.vocab_size, threads)
    return c
