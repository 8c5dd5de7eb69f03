"""Cross-entropy of a linear head, computed chunk by chunk so no (rows x vocabulary) tensor is ever whole.

The plain loss makes the (N, V) logits, keeps their softmax for backward, then makes an (N, V) gradient:
for GPT-2 at batch 4 x 256 tokens that is three 200 MB tensors. Here the rows go through in chunks of about
CHUNK_BYTES of fp32 logits, and for each chunk the forward pass computes the loss and, right away, its
gradients with respect to the hidden states and the head weight (Liger-Kernel's fused linear
cross-entropy); the backward pass only scales them by the incoming gradient.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 64 * 2**20  # fp32 logits of one chunk; a few chunks per GPT-2 step keeps the matmuls large
IGNORE_INDEX = -1


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of logits = hidden @ weight.T against targets, positions with target -1 left out.

    hidden (N, C); weight (V_padded, C), its rows from vocab_size on being padding that is never predicted;
    targets (N,). Equals F.cross_entropy(F.linear(hidden, weight)[:, :vocab_size].float(), targets,
    ignore_index=-1) and its gradients within rounding: under autocast the logits are computed in the
    autocast dtype as the plain head would, softmax and loss in fp32. chunk_rows: rows per chunk (default:
    about CHUNK_BYTES of fp32 logits).
    """
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * weight.size(0)))
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, vocab_size, rows, dtype)
    return _chunked_loss(hidden, weight, targets, vocab_size, rows, dtype, (False, False))[0]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one chunked forward pass; backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, rows, dtype):  # noqa: ANN001, ANN205
        wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        loss, grad_h, grad_w = _chunked_loss(hidden, weight, targets, vocab_size, rows, dtype, wanted)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return _scaled(grad_h, grad_out, h_dtype), _scaled(grad_w, grad_out, w_dtype), None, None, None, None


def _scaled(grad: torch.Tensor | None, grad_out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """grad * grad_out in `dtype`, cast first (a bf16 gradient is scaled in fp32); never in place of grad."""
    if grad is None:
        return None
    return grad * grad_out if grad.dtype == dtype else grad.to(dtype).mul_(grad_out)


def _chunked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    rows: int,
    dtype: torch.dtype,
    wanted: tuple[bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(mean loss, d loss / d hidden or None, d loss / d weight or None), about `rows` rows at a time.

    d hidden is fp32. d weight is summed over the chunks in the compute dtype (by in-place matmuls; an fp32
    sum would cost a full pass over the weight per chunk), in fp32 for fp16, whose small terms underflow
    before a loss scaler has multiplied them.
    """
    with torch.autocast(hidden.device.type, enabled=False):  # every dtype below is chosen explicitly
        h, w = hidden.to(dtype), weight.to(dtype)
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum()  # all ignored -> 0/0 = nan, as F.cross_entropy gives
        picks = targets.clamp(min=0)[:, None]  # any index for ignored rows; their terms are zeroed
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if wanted[0] else None
        sum_dtype = torch.float32 if dtype == torch.float16 else dtype
        grad_w = torch.zeros(w.shape, dtype=sum_dtype, device=h.device) if wanted[1] else None
        rows = -(-h.size(0) // -(-h.size(0) // rows))  # equal chunks: no small last one
        for s in range(0, h.size(0), rows):
            hc, pc, vc = h[s : s + rows], picks[s : s + rows], valid[s : s + rows]
            z = (hc @ w.T).float()  # (n, V_padded) logits, fp32 for the softmax
            z[:, vocab_size:] = float("-inf")  # padded rows: probability 0, gradient 0
            lse = torch.logsumexp(z, dim=1)
            loss += ((lse - z.gather(1, pc)[:, 0]) * vc).sum()
            if grad_h is None and grad_w is None:
                continue
            # (softmax - one-hot) / n_valid, in place of the logits; ignored rows shifted by +inf to 0.
            shift = torch.where(vc, lse + n_valid.log(), float("inf"))
            d = z.sub_(shift[:, None]).exp_()
            d.scatter_add_(1, pc, -(vc / n_valid)[:, None])
            d = d.to(dtype)  # rounded where the plain head's gradient is
            if grad_h is not None:
                grad_h[s : s + rows] = d @ w
            if grad_w is not None and d.dtype == grad_w.dtype:
                grad_w.addmm_(d.T, hc)
            elif grad_w is not None:
                grad_w += d.T @ hc
        return loss / n_valid, grad_h, grad_w
