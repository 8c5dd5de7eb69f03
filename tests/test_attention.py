"""core.attention: attention maps from the explicit path, per-head scores, the induction probe."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.attention import (
    attention_maps,
    induction_scores,
    induction_targets,
    previous_token_scores,
    repeated_random_tokens,
)
from core.config import EOT_TOKEN, model_config
from core.model import GPT
from core.tokenizer import decode, encode


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    # Larger init than GPT-2's so attention is far from uniform and the checks below are not trivial.
    m = GPT(model_config("micro", block_size=64, n_head=4)).eval()
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.c_attn.weight.mul_(25)
    return m


def test_maps_are_causal_distributions(model):
    tokens = encode("The cat sat on the mat because the mat was warm and the cat was cold.")
    r = attention_maps(model, tokens)
    T = len(tokens)
    assert r.probs.shape == (2, 4, T, T) and r.probs.dtype == np.float32
    assert r.tokens == tokens and len(r.labels) == T and not r.truncated and r.n_input == T
    assert np.all(np.triu(r.probs, k=1) == 0), "a query attended to a future token"
    np.testing.assert_allclose(r.probs.sum(-1), 1.0, atol=1e-5)
    assert r.probs[..., 0, 0] == pytest.approx(1.0)  # the first token can only see itself
    assert r.probs.std() > 0.05  # not uniform: the test model has sharp heads
    assert r.entropy.shape == (2, 4)
    assert np.all(r.entropy >= 0) and np.all(r.entropy <= math.log(T) + 1e-5)


def test_entropy_is_mean_row_entropy(model):
    tokens = encode("to be or not to be, that is the question")
    r = attention_maps(model, tokens)
    p = r.probs.astype(np.float64)
    rows = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
    np.testing.assert_allclose(r.entropy, rows.mean(-1), rtol=1e-4, atol=1e-5)


def test_layer0_matches_a_manual_softmax(model):
    """The maps are softmax(QK^T / sqrt(d) + causal mask) of layer 0, recomputed here by hand."""
    tokens = encode("hello world, hello again")
    r = attention_maps(model, tokens)
    T, H = len(tokens), model.config.n_head
    with torch.no_grad():
        idx = torch.tensor([tokens])
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
        q, k, _ = model.transformer.h[0].attn.c_attn(model.transformer.h[0].ln_1(x)).split(model.config.n_embd, 2)
        q, k = (t.view(1, T, H, -1).transpose(1, 2) for t in (q, k))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        expected = F.softmax(scores, -1)[0].numpy()
    np.testing.assert_allclose(r.probs[0], expected, atol=1e-5)


def test_truncation_to_cap_and_context(model):
    tokens = list(range(100, 200))
    r = attention_maps(model, tokens, max_tokens=10)
    assert r.probs.shape[-1] == 10 and r.tokens == tokens[:10] and r.truncated and r.n_input == 100
    r = attention_maps(model, tokens)  # the context window (64) is below the default cap (256)
    assert r.probs.shape[-1] == 64 and r.truncated
    r = attention_maps(model, tokens[:64])
    assert not r.truncated
    with pytest.raises(ValueError, match="no tokens"):
        attention_maps(model, [])


def test_previous_token_and_induction_scores_on_ideal_heads():
    tokens = [EOT_TOKEN, 11, 12, 13, 14, 11, 12, 13, 14]
    T = len(tokens)
    prev = np.zeros((T, T), np.float32)
    prev[0, 0] = 1
    prev[np.arange(1, T), np.arange(T - 1)] = 1
    induction = np.eye(T, dtype=np.float32)  # attend to self unless a target exists
    for i, keys in enumerate(induction_targets(tokens)):
        if keys:
            induction[i] = 0
            induction[i, keys[-1]] = 1
    probs = np.stack([prev, induction])[None]  # (1 layer, 2 heads, T, T)
    np.testing.assert_allclose(previous_token_scores(probs)[0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(induction_scores(probs, tokens)[0], [0.0, 1.0], atol=1e-6)
    assert induction_targets(tokens)[5] == [2]  # the second 11 -> the 12 after the first 11
    assert np.isnan(induction_scores(probs, [1, 2, 3, 4, 5, 6, 7, 8, 9])).all()


def test_repeated_random_tokens():
    tokens = repeated_random_tokens(30, seed=3)
    assert len(tokens) == 61 and tokens[0] == EOT_TOKEN
    assert tokens[1:31] == tokens[31:] and len(set(tokens[1:31])) == 30
    assert tokens == repeated_random_tokens(30, seed=3) and tokens != repeated_random_tokens(30, seed=4)
    # The text round-trips, so the UI can put it in the text box and get the same tokens back.
    assert encode(decode(tokens)) == tokens
    with pytest.raises(ValueError):
        repeated_random_tokens(0)
