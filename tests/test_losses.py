"""The chunked linear cross-entropy (core.losses) against the plain full-logits F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import core.losses
from core.config import model_config
from core.losses import linear_cross_entropy
from core.model import GPT

N, C, V_PADDED, V = 45, 24, 128, 100  # padded head rows V..127 are never predicted


def _inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, C, generator=g, dtype=dtype, requires_grad=True)
    weight = (0.3 * torch.randn(V_PADDED, C, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::4] = -1  # ignored positions
    return hidden, weight, targets


def _plain(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight)[:, :V].float(), targets, ignore_index=-1)


def _loss_and_grads(loss_fn, *args) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    hidden, weight, _ = args
    loss = loss_fn(*args)
    return (loss.detach(), *torch.autograd.grad(2.5 * loss, (hidden, weight)))  # a grad_output other than 1


@pytest.mark.parametrize("chunk_rows", [1, 7, 16, N, 1000])
def test_equals_plain_cross_entropy_for_any_chunking(chunk_rows):
    args = _inputs()
    want = _loss_and_grads(_plain, *args)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, V, chunk_rows), *args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert got[2][V:].abs().max() == 0  # padded rows get no gradient, as the plain path's slice gives
    assert got[1].dtype == got[2].dtype == torch.float32


def test_matches_plain_path_under_cpu_bf16_autocast():
    args = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(_plain, *args)
        got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, V, 7), *args)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)  # same bf16 logits, fp32 softmax
    for g, w in zip(got[1:], want[1:]):  # bf16 gradient products: chunks round at different places
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3 * w.abs().max().item())
    fp32 = _loss_and_grads(_plain, *args)
    assert (got[0] - fp32[0]).abs() > 1e-5  # the autocast dtype was really used


def test_no_grad_gives_the_same_loss_without_a_graph():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, V, 7)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, _plain(hidden, weight, targets).detach(), rtol=1e-6, atol=1e-6)


def test_all_ignored_gives_nan_like_cross_entropy():
    hidden, weight, targets = _inputs()
    loss = linear_cross_entropy(hidden, weight, torch.full_like(targets, -1), V, 7)
    assert torch.isnan(loss) and torch.isnan(_plain(hidden, weight, torch.full_like(targets, -1)))


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_full_vocabulary_tensor_is_made():
    hidden, weight, targets = _inputs()
    with _LargestTensor() as plain:
        _loss_and_grads(_plain, hidden, weight, targets)
    with _LargestTensor() as chunked:
        _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, V, 7), hidden, weight, targets)
    assert plain.numel >= N * V
    assert chunked.numel == max(7 * V_PADDED, V_PADDED * C)  # one chunk's logits, or the head's gradient


def _model_grads(model: GPT, x: torch.Tensor, y: torch.Tensor, chunked: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    if chunked:
        out = model(x, y)
        assert out.logits is None
        loss = out.loss
    else:
        logits = model(x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_model_gradients_equal_the_plain_loss(autocast, monkeypatch):
    torch.manual_seed(0)
    model = GPT(model_config("micro", pad_vocab=True)).train()
    assert model.config.padded_vocab_size > model.config.vocab_size
    monkeypatch.setattr(core.losses, "CHUNK_BYTES", 10 * 4 * model.config.padded_vocab_size)  # 10-row chunks
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50257, (3, 19), generator=g)
    y = torch.randint(0, 50257, (3, 19), generator=g)
    y[:, :5] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        want_loss, want = _model_grads(model, x, y, chunked=False)
        got_loss, got = _model_grads(model, x, y, chunked=True)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        scale = want[name].abs().max().item()
        tol = dict(rtol=1e-2, atol=1e-2 * scale) if autocast else dict(rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(got[name], want[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
