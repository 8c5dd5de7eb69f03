"""Sampling modes: int8/bf16 weight copies, the static-shape (compiled) decode step, their quality vs fp32, the CLI."""

import gc
import logging
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from core import decode_modes
from core.checkpoint import save_checkpoint
from core.config import model_config
from core.cpu_decode import SplitConv1D, TransposedHead
from core.decode_modes import StaticKVCache, _static_step, compare_with_default, decode_step, decoder_for, prefill
from core.generation import SamplingConfig, generate, generate_batch, generate_tokens, stream
from core.model import GPT
from core.quant import Int8Linear, RefinedHead, bf16_copy, int8_copy

ROOT = Path(__file__).resolve().parent.parent
PROMPT = torch.randint(0, 50257, (16,), generator=torch.Generator().manual_seed(0)).tolist()

# (max logit difference, min greedy agreement) for the tiny preset (random weights, logits of std ~0.5),
# teacher-forced over 100 steps. Measured here: bf16 0.009 and 99 %, int8 0.018 and 100 %; the bounds leave
# room for other CPUs' kernels.
QUALITY = {"bf16": (0.05, 0.95), "int8": (0.08, 0.95)}


def _model(preset: str = "tiny", seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config(preset, **overrides)).eval()


@pytest.fixture(scope="module")
def tiny() -> GPT:
    return _model()


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False, **kw)


# --- int8 weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_in", [64, 50])  # 64: torch._weight_int8pack_mm; 50: the dequantizing fallback
def test_int8_linear_is_per_channel_symmetric_quantization(n_in):
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(24, n_in, generator=g), torch.randn(24, generator=g), torch.randn(3, 5, n_in, generator=g)
    lin = Int8Linear(w, b)
    assert lin.packed == (n_in == 64)
    scale = w.abs().max(dim=1).values / 127  # by hand: one scale per output row, symmetric, +-127
    assert torch.equal(lin.weight, torch.round(w / scale[:, None]).to(torch.int8))
    assert (lin.dequantized() - w).abs().le(scale[:, None] / 2 + 1e-7).all()  # rounding error <= half a step
    ref = x @ lin.dequantized().t() + b
    tol = 1e-2 * ref.abs().max() if lin.packed else 1e-5  # the packed kernel takes bf16 activations
    torch.testing.assert_close(lin(x), ref, atol=tol, rtol=0)


def test_copies_share_weights_and_leave_the_model_untouched(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q, b = int8_copy(tiny), bf16_copy(tiny)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    assert q.transformer.wte.weight is tiny.transformer.wte.weight  # lookups share the fp32 embedding
    assert q.transformer.h[0].ln_1.weight is tiny.transformer.h[0].ln_1.weight
    assert isinstance(q.transformer.h[0].mlp.c_fc, Int8Linear) and isinstance(q.lm_head, RefinedHead)
    assert tiny.transformer.h[0].mlp.c_fc.weight.dtype == torch.float32
    assert b.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16 and b.new_cache(1, 4).k.dtype == torch.bfloat16


def test_refined_head_keeps_the_ranking_when_logits_are_large():
    """Trained GPT-2s give logits of magnitude 50-100, where bf16 output rounds in steps of 0.25-0.5."""
    m = _model(seed=3)
    with torch.no_grad():  # logits of std ~3 (x10), all shifted by ~+80 (a common direction in the head rows
        d = torch.randn(m.config.n_embd, generator=torch.Generator().manual_seed(1))  # and the final LN bias)
        d /= d.norm()
        m.transformer.wte.weight.mul_(10).add_(8 * d)
        m.transformer.ln_f.bias.copy_(10 * d)
    h = m.transformer.ln_f(torch.randn(200, m.config.n_embd, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        exact = m.lm_head(h)[:, : m.config.vocab_size]
        assert exact.mean() > 60
        head = int8_copy(m).lm_head
        rounded = head.head(h)[:, : m.config.vocab_size].float()
        refined = head(h)[:, : m.config.vocab_size]
    assert (rounded.argmax(-1) == exact.argmax(-1)).float().mean() < 0.9  # without refining: ties and swaps
    assert torch.equal(refined.argmax(-1), exact.argmax(-1))
    assert (refined.topk(8).values - exact.topk(8).values).abs().max() < 1e-3
    for mode in ("int8", "bf16"):
        assert compare_with_default(m, mode, PROMPT, 40).agreement >= 0.95


# --- quality vs fp32 ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_fast_modes_follow_fp32(tiny, mode):
    max_diff, min_agreement = QUALITY[mode]
    q = compare_with_default(tiny, mode, PROMPT, 100)
    assert q.steps == 100 and q.agreement >= min_agreement and 0 < q.max_logit_diff < max_diff, q
    free = generate_tokens(tiny, PROMPT, greedy(24, mode=mode))[0]  # free-running, through the full generation path
    ref = generate_tokens(tiny, PROMPT, greedy(24))[0]
    assert sum(a == b for a, b in zip(free, ref)) >= 0.9 * len(ref)


def test_default_mode_is_the_fp32_model_in_the_cpu_layout(tiny):
    q = compare_with_default(tiny, "default", PROMPT, 10)
    assert q == (0.0, 1.0, 10)
    d = decoder_for(tiny).model
    assert [id(p) for p in d.parameters()] == [id(p) for p in tiny.parameters()]  # every weight shared, fp32
    assert isinstance(d.lm_head, TransposedHead) and isinstance(d.transformer.h[0].mlp.c_fc, SplitConv1D)
    assert decoder_for(tiny).model is d  # built once


def test_default_mode_off_the_cpu_runs_the_model_itself():
    m = GPT(model_config("micro")).to("meta")  # no MKL there: the model as it is
    assert decoder_for(m).model is m


def test_default_mode_follows_in_place_weight_changes():
    m = _model("micro")
    first = decoder_for(m).model
    with torch.no_grad():
        m.transformer.wte.weight.mul_(2)  # an optimizer step on the tied embedding, say
    second = decoder_for(m).model
    assert second is not first
    vocab = m.config.vocab_size
    assert torch.equal(second.lm_head.weight_t[:, :vocab], m.transformer.wte.weight[:vocab].t())


def test_decoders_are_reused_until_the_weights_change():
    m = _model("micro")
    alive = weakref.ref(m)
    first = decoder_for(m, "int8").model
    assert decoder_for(m, "int8").model is first
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight.mul_(2)  # in place: the int8 copy is stale now
    second = decoder_for(m, "int8").model
    assert second is not first
    torch.testing.assert_close(
        second.transformer.h[0].mlp.c_fc.dequantized().t(),
        m.transformer.h[0].mlp.c_fc.weight,
        atol=second.transformer.h[0].mlp.c_fc.scales.max().item(),
        rtol=0,
    )
    decoder_for(m, "compiled")
    assert set(decode_modes._built[m]) == {"int8", "compiled"}
    del m, first, second
    gc.collect()
    assert alive() is None  # the cached copies and the compiled step do not keep the model alive


def test_bad_mode_is_one_clear_message(tiny):
    with pytest.raises(
        ValueError, match="mode must be one of default, compiled, bf16, int8, int8-compiled; got 'fast'"
    ):
        stream(tiny, "x", SamplingConfig(mode="fast"))
    with pytest.raises(ValueError, match="use_cache=False needs mode='default'"):
        stream(tiny, "x", SamplingConfig(mode="int8", use_cache=False))


# --- the static-shape step (compiled mode) --------------------------------------------------------
def test_static_step_equals_the_sliced_decode_step(tiny):
    """Eager: attending over the whole cache through the position mask gives the sliced step's logits,
    even with garbage left in the cache beyond the current position (from an earlier, longer sequence)."""
    with torch.inference_mode():
        ids = torch.tensor([PROMPT[:6], PROMPT[6:12]])
        sliced, static = tiny.new_cache(2, 20), StaticKVCache(tiny, 2, 64)
        static.k.normal_(), static.v.normal_()
        torch.testing.assert_close(prefill(tiny, ids, static), prefill(tiny, ids, sliced))
        tok = ids[:, -1]
        for pos in range(6, 20):
            want = decode_step(tiny, tok, pos, sliced)
            got = _static_step(tiny, tok[:, None], torch.tensor([pos]), *static.layers)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            tok = want.argmax(-1)


def test_compiled_mode_falls_back_with_one_warning_line(tiny, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler found\nsecond line of details")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    m = _model(seed=5)  # a fresh model: decoder_for builds its compiled step with the broken torch.compile
    with caplog.at_level(logging.WARNING, logger="core.decode_modes"):
        got = generate_tokens(m, PROMPT, greedy(12, mode="compiled"))
        again = generate_tokens(m, PROMPT, greedy(12, mode="compiled"))
    assert got == again == generate_tokens(m, PROMPT, greedy(12))
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["compiled decoding unavailable (RuntimeError: no C++ compiler found); decoding uncompiled"]
    assert decoder_for(m, "compiled").compile_failure == "RuntimeError: no C++ compiler found"
    assert decoder_for(m, "int8").compile_failure is None


def test_static_cache_lengths_are_few_powers_of_two(tiny):
    step = decoder_for(tiny, "compiled").static
    assert [step.cache_len(n) for n in (1, 64, 65, 100, 128, 129, 1000)] == [64, 64, 128, 128, 128, 128, 128]
    cache = step.acquire(1, 70)
    step.release(cache)
    assert step.acquire(1, 100) is cache  # same shape: the pooled cache comes back


@pytest.mark.skipif(
    not os.environ.get("RUN_COMPILE_TESTS"), reason="torch.compile on CPU takes minutes here; set RUN_COMPILE_TESTS=1"
)
def test_compiled_modes_give_the_eager_tokens():
    """Compiles three shapes (micro fp32 batch 1 and 3, int8 batch 1): about 2 minutes on 2 busy CPU cores."""
    m = _model("micro", seed=1)
    with torch.no_grad():  # spread the weights so a random model's greedy output varies
        for p in m.parameters():
            p.mul_(8.0)
    got = generate_tokens(m, PROMPT, greedy(40, mode="compiled"))  # 56 tokens > block 32: the window slides
    assert decoder_for(m, "compiled").compile_failure is None
    assert got == generate_tokens(m, PROMPT, greedy(40))
    sampled = SamplingConfig(max_new_tokens=30, seed=3, top_k=50, stop_at_eot=False)
    assert generate(m, "Hi", sampled) == generate(m, "Hi", SamplingConfig(**{**vars(sampled), "mode": "compiled"}))
    prompts = ["To be, or not to be", "a", "The king said"]  # different lengths: forced tokens, batch 3
    assert generate_batch(m, prompts, greedy(12, mode="compiled")) == generate_batch(m, prompts, greedy(12))
    int8 = generate_tokens(m, PROMPT, greedy(40, mode="int8-compiled"))
    assert decoder_for(m, "int8-compiled").compile_failure is None
    assert int8 == generate_tokens(m, PROMPT, greedy(40, mode="int8"))


# --- command line -------------------------------------------------------------------------------
def test_cli_mode_flag(tmp_path):
    m = _model("micro", seed=2)
    run = tmp_path / "micro"
    save_checkpoint(run, 1, m, {})
    base = [sys.executable, "-m", "core.sample", "--checkpoint", str(run), "--prompt", "Hi", "--temperature", "0"]
    r = subprocess.run(
        [*base, "--mode", "int8", "--max-new-tokens", "10", "--no-echo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == generate(m, "Hi", SamplingConfig(max_new_tokens=10, temperature=0, mode="int8"))[0] + "\n"
    assert "mode int8" in r.stderr
    r = subprocess.run([*base, "--mode", "int4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice: 'int4'" in r.stderr and "Traceback" not in r.stderr
