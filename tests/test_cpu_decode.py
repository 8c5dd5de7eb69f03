"""The default mode's CPU layout (core.cpu_decode): column-split products and the transposed head give the model's
own results, from the model's own weights."""

import pytest
import torch

from core.config import ModelConfig
from core.cpu_decode import SplitConv1D, TransposedHead, column_blocks, column_split_mm, cpu_decode_copy
from core.model import GPT


def _model(pad_vocab: bool = False) -> GPT:
    """One block wide enough to split: c_attn 1536 columns, c_fc 2048, c_proj 512 (in 2 blocks of 256)."""
    torch.manual_seed(0)
    m = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=512, block_size=16, pad_vocab=pad_vocab))
    with torch.no_grad():  # non-zero biases, so a misplaced bias block shows
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def test_column_blocks_are_one_per_thread_and_never_narrow():
    assert column_blocks(2304, 2) == 2 and column_blocks(50304, 16) == 16
    assert column_blocks(768, 16) == 3  # 256 columns each, not 16 x 48
    assert column_blocks(1000, 4) == 2  # 3 does not divide 1000
    assert column_blocks(768, 1) == column_blocks(500, 8) == column_blocks(509, 2) == 1  # one thread; too narrow


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("parts", [1, 2, 4, 5])
def test_column_split_mm_is_the_plain_product(rows, parts):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(rows, 24, generator=g), torch.randn(24, 40, generator=g), torch.randn(40, generator=g)
    by_hand = torch.stack([torch.stack([(x[r] * w[:, c]).sum() for c in range(40)]) for r in range(rows)])
    torch.testing.assert_close(column_split_mm(x, w, b, parts), by_hand + b, rtol=0, atol=1e-5)
    torch.testing.assert_close(column_split_mm(x, w, None, parts), by_hand, rtol=0, atol=1e-5)


def test_copy_shares_the_weights_and_leaves_the_model_untouched():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    c = cpu_decode_copy(m, threads=2)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert [id(p) for p in c.parameters()] == [id(p) for p in m.parameters()]
    convs = [mod for mod in c.modules() if isinstance(mod, SplitConv1D)]
    assert len(convs) == 4 * m.config.n_layer and all(mod.parts == 2 for mod in convs)
    assert cpu_decode_copy(m, threads=1).lm_head.parts == 1
    head = c.lm_head
    assert isinstance(head, TransposedHead) and head.weight_t.is_contiguous()
    vocab = m.config.vocab_size
    assert head.weight_t.size(1) % 64 == 0 and not head.weight_t[:, vocab:].any()  # zero padding, split evenly
    assert torch.equal(head.weight_t[:, :vocab], m.transformer.wte.weight[:vocab].t())


@pytest.mark.parametrize("threads", [2, 3])  # 3: c_attn and the head in 3 blocks, c_fc (2048) and c_proj in 2
@pytest.mark.parametrize("pad_vocab", [False, True])
def test_copy_gives_the_model_logits_when_prefilling_and_decoding(threads, pad_vocab):
    m = _model(pad_vocab=pad_vocab)
    c = cpu_decode_copy(m, threads=threads)
    assert {mod.parts for mod in c.modules() if isinstance(mod, SplitConv1D)} == {2, threads}
    idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for batch in (1, 2):  # one row takes the split products, two the plain ones
            ours, ref = c.new_cache(batch, 13), m.new_cache(batch, 13)
            got, want = c(idx[:batch], cache=ours).logits, m(idx[:batch], cache=ref).logits
            assert got.shape == want.shape == (batch, 12, m.config.vocab_size)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32 rounding
            step = idx[:batch, :1]
            got, want = c(step, pos=12, cache=ours).logits, m(step, pos=12, cache=ref).logits
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32 rounding
