"""core.probe against independent references: the model's own logits, hand computations,
transformers' GPT2LMHeadModel on the same weights, and a copy of the model with weights zeroed."""

import copy
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from core.config import model_config
from core.hf import export_hf
from core.model import GPT
from core.probe import (
    ablated,
    ablated_logits,
    ablation_effect,
    compare,
    logit_lens,
    residual_stream,
    token_logprobs,
)

TOKENS = [464, 3797, 3332, 319, 262, 2603, 780, 262, 2603, 373, 5814, 290, 262, 3797, 373, 4692, 13, 383, 3797]


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=3, n_head=4, n_embd=32, block_size=48) | overrides
    m = GPT(model_config("micro", **cfg)).eval()
    with torch.no_grad():  # a wider spread than GPT-2's init: sharp distributions, heads that matter
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return m


@pytest.fixture(scope="module")
def model() -> GPT:
    return _model()


@pytest.fixture(scope="module")
def hf(model, tmp_path_factory) -> GPT2LMHeadModel:
    path = export_hf(model, tmp_path_factory.mktemp("hf"))
    return GPT2LMHeadModel.from_pretrained(path).eval()


def _own_logits(model: GPT, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0][0]


# --- token_logprobs -------------------------------------------------------------------------------
def test_logprobs_are_the_models_own(model):
    r = token_logprobs(model, TOKENS, top=5)
    T = len(TOKENS)
    logits = _own_logits(model, TOKENS)
    expected = F.log_softmax(logits[:-1], dim=-1)[torch.arange(T - 1), torch.tensor(TOKENS[1:])]
    assert r.logprob.shape == (T - 1,) and r.logprob.dtype == np.float32
    np.testing.assert_allclose(r.logprob, expected.numpy(), atol=1e-5)
    assert r.loss == pytest.approx(-expected.double().mean().item(), abs=1e-5)
    assert r.perplexity == pytest.approx(math.exp(r.loss))
    assert r.tokens == TOKENS and not r.truncated and r.n_input == T and r.note == ""
    assert r.logprob.std() > 0.5, "a near-uniform model would make this test prove little"


def test_rank_and_top_by_hand(model):
    r = token_logprobs(model, TOKENS, top=4)
    logits = _own_logits(model, TOKENS).numpy()
    assert r.top_tokens.shape == (len(TOKENS) - 1, 4) and r.top_probs.shape == (len(TOKENS) - 1, 4)
    for i, nxt in enumerate(TOKENS[1:]):
        row = logits[i].astype(np.float64)
        assert r.rank[i] == int((row > row[nxt]).sum()) + 1
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-row, kind="stable")[:4]
        assert r.top_tokens[i].tolist() == order.tolist()
        np.testing.assert_allclose(r.top_probs[i], probs[order], rtol=1e-4, atol=1e-6)
        assert (r.rank[i] == 1) == (r.top_tokens[i, 0] == nxt)
    assert (r.rank > 1).any() and (r.rank >= 1).all()


def test_loss_matches_transformers(model, hf):
    r = token_logprobs(model, TOKENS)
    x = torch.tensor([TOKENS])
    with torch.no_grad():
        loss = hf(x, labels=x).loss.item()
    assert r.loss == pytest.approx(loss, abs=1e-5)
    assert r.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


# --- input handling -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn",
    [
        lambda m, t: token_logprobs(m, t),
        lambda m, t: logit_lens(m, t),
        lambda m, t: compare(m, m, t),
        lambda m, t: ablated_logits(m, t, [(0, 0)]),
        lambda m, t: ablation_effect(m, t, [(0, 0)]),
    ],
    ids=["token_logprobs", "logit_lens", "compare", "ablated_logits", "ablation_effect"],
)
def test_bad_inputs_are_one_line_value_errors(model, fn):
    for tokens, words in (([], "no tokens"), ([464], "single token"), ([464, 50257], "outside the vocabulary")):
        with pytest.raises(ValueError, match=words) as e:
            fn(model, tokens)
        assert "\n" not in str(e.value)


def test_long_inputs_are_cut_to_the_window_with_a_note(model):
    long = (TOKENS * 4)[:60]  # the window is 48
    r = token_logprobs(model, long)
    assert r.truncated and r.n_input == 60 and r.tokens == long[:48] and r.logprob.shape == (47,)
    assert "60 tokens" in r.note and "48" in r.note
    np.testing.assert_allclose(r.logprob, token_logprobs(model, long[:48]).logprob)
    lens = logit_lens(model, long)
    assert lens.truncated and lens.true_prob.shape == (4, 48)
    c = compare(model, _model(seed=1, block_size=40), long)  # cut to the smaller window
    assert c.truncated and c.tokens == long[:40] and c.loss_a.shape == (39,)
    assert ablated_logits(model, long, []).shape == (48, 50257)


def test_training_model_is_probed_in_eval_mode_and_left_training():
    m = _model(dropout=0.5).train()
    a = token_logprobs(m, TOKENS)
    b = token_logprobs(m, TOKENS)
    np.testing.assert_array_equal(a.logprob, b.logprob)  # no dropout noise
    assert m.training


# --- logit lens -----------------------------------------------------------------------------------
def test_lens_last_layer_is_the_output_distribution(model):
    r = logit_lens(model, TOKENS, top=3)
    T, L = len(TOKENS), model.config.n_layer
    assert r.top_tokens.shape == (L + 1, T, 3) and r.top_probs.shape == (L + 1, T, 3)
    assert r.true_prob.shape == (L + 1, T) and np.isnan(r.true_prob[:, -1]).all()
    assert r.layer_labels == ["embeddings", "block 0", "block 1", "block 2"]
    probs = F.softmax(_own_logits(model, TOKENS), dim=-1)
    p, ids = probs.topk(3, dim=-1)
    np.testing.assert_allclose(r.top_probs[-1], p.numpy(), atol=1e-5)
    assert r.top_tokens[-1].tolist() == ids.tolist()
    np.testing.assert_allclose(r.true_prob[-1, :-1], probs[torch.arange(T - 1), TOKENS[1:]].numpy(), atol=1e-5)
    lp = token_logprobs(model, TOKENS).logprob
    np.testing.assert_allclose(np.log(r.true_prob[-1, :-1]), lp, atol=1e-4)


def test_lens_matches_transformers_hidden_states(model, hf):
    r = logit_lens(model, TOKENS, top=3)
    T = len(TOKENS)
    with torch.no_grad():
        hs = hf(torch.tensor([TOKENS]), output_hidden_states=True).hidden_states
        assert len(hs) == model.config.n_layer + 1
        for layer in range(len(hs)):
            h = hs[layer][0]
            if layer < len(hs) - 1:  # HF's last hidden state already has ln_f applied
                h = hf.transformer.ln_f(h)
            probs = F.softmax(hf.lm_head(h), dim=-1)
            np.testing.assert_allclose(r.top_probs[layer], probs.topk(3, dim=-1).values.numpy(), atol=1e-5)
            true = probs[torch.arange(T - 1), TOKENS[1:]].numpy()
            np.testing.assert_allclose(r.true_prob[layer, :-1], true, atol=1e-5)
    assert not np.allclose(r.true_prob[1], r.true_prob[-1]), "layers should differ in a random model"


def test_lens_with_padded_vocabulary_never_predicts_padding():
    m = _model(pad_vocab=True)
    assert m.config.padded_vocab_size > m.config.vocab_size
    with torch.no_grad():
        m.lm_head.weight[m.config.vocab_size :] = 100.0  # padding rows would win every position
    r = logit_lens(m, TOKENS, top=3)
    assert r.top_tokens.max() < m.config.vocab_size
    np.testing.assert_allclose(r.top_probs[-1].sum(-1) <= 1 + 1e-6, True)
    assert token_logprobs(m, TOKENS).top_tokens.max() < m.config.vocab_size


def test_residual_stream_hooks_are_removed(model):
    with residual_stream(model) as states:
        _own_logits(model, TOKENS)
    assert len(states) == model.config.n_layer + 1 and states[0].shape == (1, len(TOKENS), 32)
    _own_logits(model, TOKENS)
    assert len(states) == model.config.n_layer + 1
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- head ablation --------------------------------------------------------------------------------
def _zeroed_copy(model: GPT, heads: list[tuple[int, int]]) -> GPT:
    """The independent reference: c_proj.weight is (in, out), so the rows of a head are its output features."""
    ref = copy.deepcopy(model)
    d = model.config.head_dim
    with torch.no_grad():
        for layer, head in heads:
            ref.transformer.h[layer].attn.c_proj.weight[head * d : (head + 1) * d] = 0
    return ref


@pytest.mark.parametrize("heads", [[(0, 1)], [(1, 0), (1, 3), (2, 2)], [(0, 0), (0, 1), (0, 2), (0, 3)]])
def test_ablation_equals_zeroed_projection_rows(model, heads):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = ablated_logits(model, TOKENS, heads)
    ref = _own_logits(_zeroed_copy(model, heads), TOKENS).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(got - _own_logits(model, TOKENS).numpy()).max() > 1e-2, "ablation changed nothing"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_ablating_nothing_changes_nothing(model):
    np.testing.assert_array_equal(ablated_logits(model, TOKENS, []), _own_logits(model, TOKENS).numpy())


def test_ablated_context_and_removal_on_error(model):
    heads = [(2, 1)]
    ref = _own_logits(_zeroed_copy(model, heads), TOKENS)
    with ablated(model, heads):
        np.testing.assert_allclose(_own_logits(model, TOKENS), ref, atol=1e-5)
    with pytest.raises(KeyError), ablated(model, heads):
        raise KeyError("boom")
    assert not any(m._forward_pre_hooks for m in model.modules())
    np.testing.assert_array_equal(ablated_logits(model, TOKENS, []), _own_logits(model, TOKENS).numpy())


def test_ablation_only_affects_the_entering_thread(model):
    clean = _own_logits(model, TOKENS)
    seen = {}
    with ablated(model, [(0, 0), (1, 1)]):
        worker = threading.Thread(target=lambda: seen.setdefault("other", _own_logits(model, TOKENS)))
        worker.start()
        worker.join()
        mine = _own_logits(model, TOKENS)
    torch.testing.assert_close(seen["other"], clean, rtol=0, atol=0)
    assert (mine - clean).abs().max() > 1e-2


@pytest.mark.parametrize("bad", [(3, 0), (0, 4), (-1, 0)])
def test_bad_heads_are_named(model, bad):
    with pytest.raises(ValueError, match=rf"head \({bad[0]}, {bad[1]}\) does not exist"):
        ablated_logits(model, TOKENS, [bad])
    with pytest.raises(ValueError, match="does not exist"), ablated(model, [(0, 0), bad]):
        pass
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_ablation_effect_is_clean_versus_ablated_loss(model):
    heads = [(1, 2), (2, 0)]
    r = ablation_effect(model, TOKENS, heads)
    np.testing.assert_allclose(r.loss_a, -token_logprobs(model, TOKENS).logprob, atol=1e-6)
    ref = torch.from_numpy(ablated_logits(model, TOKENS, heads))
    hurt = -F.log_softmax(ref[:-1], dim=-1)[torch.arange(len(TOKENS) - 1), TOKENS[1:]]
    np.testing.assert_allclose(r.loss_b, hurt.numpy(), atol=1e-5)
    np.testing.assert_allclose(r.diff, r.loss_b - r.loss_a)
    assert r.mean_diff == pytest.approx(r.mean_b - r.mean_a) and abs(r.mean_diff) > 1e-3


# --- compare --------------------------------------------------------------------------------------
def test_compare_two_models_against_their_own_logprobs(model):
    other = _model(seed=7)
    r = compare(model, other, TOKENS)
    a, b = token_logprobs(model, TOKENS), token_logprobs(other, TOKENS)
    np.testing.assert_allclose(r.loss_a, -a.logprob, atol=1e-6)
    np.testing.assert_allclose(r.loss_b, -b.logprob, atol=1e-6)
    np.testing.assert_allclose(r.diff, -b.logprob + a.logprob, atol=1e-5)
    assert r.mean_a == pytest.approx(a.loss, abs=1e-5) and r.mean_b == pytest.approx(b.loss, abs=1e-5)
    assert r.mean_diff == pytest.approx(b.loss - a.loss, abs=1e-5) and abs(r.mean_diff) > 1e-2
    assert r.tokens == TOKENS and not r.truncated
    same = compare(model, model, TOKENS)
    assert np.all(same.diff == 0) and same.mean_diff == 0
