"""The GPT-2 model: attention paths, init, tied head, parameter count, config errors, compile, KV cache."""

import math
import os

import pytest
import torch

from core.config import ConfigError, ModelConfig, model_config
from core.generation import SamplingConfig, generate_tokens
from core.hf import state_dict_to_hf
from core.model import GPT, GPTOutput, clean_state_dict, load_clean_state_dict


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(model_config("micro", **kw)).eval()


def _tokens(B: int = 2, T: int = 20) -> torch.Tensor:
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(0))


def test_explicit_attention_equals_sdpa_and_is_causal():
    m = _model()
    x = _tokens()
    with torch.no_grad():
        fast, loss, none = m(x)
        slow, _, attns = m(x, return_attn=True)
    assert loss is None and none is None
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    assert len(attns) == 2
    for a in attns:
        assert a.shape == (2, 2, 20, 20)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 20))
        assert a.triu(diagonal=1).abs().max() == 0


def test_cached_decoding_equals_full_forward_both_paths():
    m = _model()
    x = _tokens(T=12)
    keys = set(m.state_dict())
    with torch.no_grad():
        full = m(x).logits
        for explicit in (False, True):
            cache = m.new_cache(2)
            out = [m(x[:, :5], pos=0, cache=cache, return_attn=explicit).logits]
            out += [m(x[:, t : t + 1], pos=t, cache=cache, return_attn=explicit).logits for t in range(5, 12)]
            torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-5)
        # A chunk of several new tokens after a cached prefix (the masked SDPA path), and last_only.
        cache = m.new_cache(2, max_len=12)
        m(x[:, :5], cache=cache)
        chunk = m(x[:, 5:12], pos=5, cache=cache).logits
        torch.testing.assert_close(chunk, full[:, 5:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(x, last_only=True).logits, full[:, -1:], atol=1e-5, rtol=1e-5)
    assert set(m.state_dict()) == keys  # the cache is the caller's: nothing was attached to the model
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for mod in m.modules() for v in vars(mod).values())


def test_forward_returns_one_shape_and_checks_the_cache():
    m = _model()
    x = _tokens(T=8)
    out = m(x, x)
    assert isinstance(out, GPTOutput) and out.loss.dim() == 0 and out.attentions is None
    assert out.logits is None  # with targets the loss is chunked and the logits are not made
    both = m(x, x, return_logits=True)
    assert both.logits.shape == (2, 8, 50257) and torch.allclose(both.loss, out.loss, atol=1e-6)
    cache = m.new_cache(2, max_len=8)
    assert cache.k.shape == (2, 2, 2, 8, 16) and cache.k.dtype == torch.float32
    assert m.new_cache(1, max_len=1000).max_len == 32  # never longer than the context window
    with pytest.raises(ValueError, match="KV cache holds 2 rows x 8 positions"):
        m(x[:, :1], pos=8, cache=cache)
    with pytest.raises(ValueError, match="KV cache holds 2 rows"):
        m(x[:1], cache=cache)
    with pytest.raises(ValueError, match="last_only"):
        m(x, x, last_only=True)
    with pytest.raises(ValueError, match="pos"):
        m(x, pos=-1)


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    L = 12
    m = GPT(ModelConfig(n_layer=L, n_head=4, n_embd=256, block_size=64))
    resid = torch.cat(
        [torch.cat([b.attn.c_proj.weight.flatten(), b.mlp.c_proj.weight.flatten()]) for b in m.transformer.h]
    )
    assert resid.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.03)
    assert m.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert m.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert m.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert all(b.attn.c_attn.bias.abs().max() == 0 and b.mlp.c_fc.bias.abs().max() == 0 for b in m.transformer.h)


def test_tied_head_is_one_tensor():
    m = _model()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert "lm_head.weight" not in clean_state_dict(m)


@pytest.mark.parametrize("pad", [False, True])
def test_gpt2_parameter_count_and_flops(pad):
    with torch.device("meta"):  # shapes only: counting needs no memory and no init
        m = GPT(model_config("gpt2", pad_vocab=pad))
    assert m.num_params() == 124_439_808
    n = m.num_params(non_embedding=True)
    assert n == 124_439_808 - 1024 * 768
    assert m.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_embd=100, n_head=3), "divisible"),
        (dict(block_size=0), "block_size"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_configs_raise(kw, match):
    with pytest.raises(ConfigError, match=match):
        model_config("micro", **kw)
    with pytest.raises(ConfigError, match=match):
        GPT(ModelConfig(**{**model_config("micro").to_dict(), **kw}))


def test_unknown_preset_and_too_long_input():
    with pytest.raises(ConfigError, match="unknown preset"):
        model_config("gpt5")
    with pytest.raises(ValueError, match="context window"):
        _model()(_tokens(1, 33))


def test_padded_vocab_is_never_predicted_sampled_or_exported():
    m = _model(pad_vocab=True)
    assert m.transformer.wte.weight.shape[0] == 50304
    with torch.no_grad():  # make the padded rows win every argmax if they were not cut off
        m.transformer.wte.weight[50257:] = 10.0
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.fill_(1.0)
        logits = m(_tokens()).logits
    assert logits.shape[-1] == 50257
    toks = generate_tokens(m, "Hi", SamplingConfig(max_new_tokens=5, temperature=2.0, seed=0, stop_at_eot=False))
    assert max(toks[0]) < 50257
    assert state_dict_to_hf(m)["transformer.wte.weight"].shape == (50257, 32)
    assert m.num_params() == _model().num_params()


def test_compiled_model_state_dict_has_no_prefix():
    m = _model()
    compiled = torch.compile(m)  # wrapping is lazy: no compilation happens here
    sd = clean_state_dict(compiled)
    assert sd.keys() == clean_state_dict(m).keys()
    assert not any(k.startswith("_orig_mod.") for k in sd)
    fresh = GPT(model_config("micro"))
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())  # what a naive save would write
    load_clean_state_dict(fresh, compiled.state_dict())
    assert torch.equal(fresh.transformer.wte.weight, m.transformer.wte.weight)


@pytest.mark.skipif(
    not os.environ.get("RUN_COMPILE_TESTS"), reason="torch.compile on CPU takes minutes; set RUN_COMPILE_TESTS=1"
)
def test_compiled_forward_matches_eager():
    m = _model()
    x = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x).logits, m(x).logits, atol=1e-4, rtol=1e-4)
