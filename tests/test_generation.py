"""KV-cache sampling: determinism, filters, cache vs recompute, sliding window, stop rules, CLI."""

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from core import sample as sample_cli
from core.checkpoint import save_checkpoint
from core.config import EOT_TOKEN, model_config
from core.generation import (
    SamplingConfig,
    filter_probs,
    generate,
    generate_batch,
    generate_tokens,
    stream,
    window_keep,
)
from core.hf import export_hf
from core.model import GPT
from core.tokenizer import encode

ROOT = Path(__file__).resolve().parent.parent


def _model(block_size: int = 32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(model_config("micro", block_size=block_size))
    with torch.no_grad():  # spread the weights so a random model's greedy output varies
        for p in m.parameters():
            p.mul_(8.0)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False, **kw)


def test_greedy_is_deterministic_and_varied(model):
    a = generate_tokens(model, "Hello world", greedy(20))
    assert a == generate_tokens(model, "Hello world", greedy(20))
    assert len(set(a[0])) > 3


def test_seed_reproduces_and_differs(model):
    cfg = SamplingConfig(max_new_tokens=20, seed=1, stop_at_eot=False)
    assert generate(model, "Hi", cfg) == generate(model, "Hi", cfg)
    assert generate(model, "Hi", cfg) != generate(model, "Hi", SamplingConfig(max_new_tokens=20, seed=2))
    three = generate(model, "Hi", SamplingConfig(max_new_tokens=20, seed=1, num_samples=3, stop_at_eot=False))
    assert len(set(three)) == 3


def test_top_k_1_and_tiny_top_p_equal_greedy(model):
    ref = generate_tokens(model, "The", greedy(15))
    assert generate_tokens(model, "The", SamplingConfig(max_new_tokens=15, top_k=1, seed=3, stop_at_eot=False)) == ref
    assert (
        generate_tokens(model, "The", SamplingConfig(max_new_tokens=15, top_p=1e-6, seed=3, stop_at_eot=False)) == ref
    )


def test_filter_probs():
    logits = torch.randn(4, 50257, generator=torch.Generator().manual_seed(0)) * 3
    for cfg in [SamplingConfig(), SamplingConfig(temperature=0.5, top_k=7), SamplingConfig(top_p=0.3)]:
        p = filter_probs(logits, cfg)
        torch.testing.assert_close(p.sum(-1), torch.ones(4))
    p = filter_probs(logits, SamplingConfig(top_k=7))
    assert ((p > 0).sum(-1) == 7).all()
    assert torch.equal(p.argmax(-1), logits.argmax(-1))
    g = filter_probs(logits, SamplingConfig(temperature=0))
    assert torch.equal(g, torch.nn.functional.one_hot(logits.argmax(-1), 50257).float())
    # top-p keeps the smallest set reaching the mass: probs 0.5, 0.3, 0.2
    small = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert (filter_probs(small, SamplingConfig(top_p=0.5)) > 0).sum() == 1
    assert (filter_probs(small, SamplingConfig(top_p=0.7)) > 0).sum() == 2
    assert (filter_probs(small, SamplingConfig(top_p=0.81)) > 0).sum() == 3
    sharp = filter_probs(small, SamplingConfig(temperature=0.5))[0, 0]
    assert sharp > 0.5


def test_kv_cache_equals_recompute(model):
    prompt = encode("To be, or not to be")
    cached = generate_tokens(model, prompt, greedy(40))  # 46 tokens > block 32: slides too
    plain = generate_tokens(model, prompt, greedy(40, use_cache=False))
    assert cached == plain


def _reference_sliding(model: GPT, prompt: list[int], n: int, keep: int) -> list[int]:
    """Greedy without a cache: the window holds the last tokens, cut to `keep` when it overflows."""
    block = model.config.block_size
    window = prompt[-keep:] if len(prompt) > block else list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            tok = int(model(torch.tensor([window])).logits[0, -1].argmax())
            out.append(tok)
            window.append(tok)
            if len(window) > block:
                window = window[-keep:]
    return out


@pytest.mark.parametrize("prompt_len", [5, 40])
def test_dynamic_context_growth(prompt_len):
    m = _model(block_size=16, seed=1)
    prompt = [int(t) for t in torch.randint(0, 50257, (prompt_len,), generator=torch.Generator().manual_seed(2))]
    steps = list(stream(m, prompt, greedy(50)))
    assert [s.index for s in steps] == list(range(50))
    got = [s.tokens[0] for s in steps]
    assert got == _reference_sliding(m, prompt, 50, keep=8)  # default keep = block_size // 2
    slid = [s.index for s in steps if s.context_slid]
    assert slid[0] == (0 if prompt_len > 16 else 17 - prompt_len) and len(slid) >= 4
    custom = [s.tokens[0] for s in stream(m, prompt, greedy(50, window_keep=15))]
    assert custom == _reference_sliding(m, prompt, 50, keep=15)


def test_stop_strings_cut_the_text_even_across_tokens(model):
    full = generate(model, "Once", greedy(30))[0]
    stop = full[10:16]  # six characters, usually spanning two or more tokens
    start = full.find(stop)
    steps = list(stream(model, "Once", greedy(30, stop=(stop, "never-appears"))))
    streamed = "".join(s.texts[0] for s in steps)
    assert streamed == full[:start]
    assert steps[-1].stop_reason == ["stop"] and steps[-1].finished == [True]
    assert generate(model, "Once", greedy(30, stop=(stop,))) == [full[:start]]


def test_eot_stops_and_is_not_printed():
    m = _model()
    with torch.no_grad():  # every position predicts <|endoftext|>: the final LN outputs its embedding
        m.transformer.ln_f.weight.zero_()
        m.transformer.wte.weight[EOT_TOKEN] = 1.0
        m.transformer.ln_f.bias.copy_(m.transformer.wte.weight[EOT_TOKEN])
    steps = list(stream(m, "Hello", SamplingConfig(max_new_tokens=10, temperature=0)))
    assert len(steps) == 1 and steps[0].tokens == [EOT_TOKEN] and steps[0].texts == [""]
    assert steps[0].stop_reason == ["eot"]
    assert generate(m, "Hello", greedy(3)) == ["<|endoftext|>" * 3]


def test_top_candidates(model):
    steps = list(stream(model, "Hi", SamplingConfig(max_new_tokens=5, top_k=3, seed=0, top_candidates=5)))
    for s in steps:
        top = s.top[0]
        assert len(top) == 5
        probs = [p for _, p in top]
        assert probs[3] == probs[4] == 0.0  # cut by top-k, still listed in the model's order
        assert abs(sum(probs) - 1) < 1e-5 and s.tokens[0] in [t for t, p in top if p > 0]
    g = next(iter(stream(model, "Hi", greedy(1, top_candidates=2))))
    assert g.top[0][0] == (g.tokens[0], 1.0)


def test_batch_of_different_prompts_matches_single_runs(model):
    prompts = ["a", "Hello there my good friend", "The king"]
    got = generate_batch(model, prompts, greedy(12))
    assert got == [generate(model, p, greedy(12)) for p in prompts]


def test_empty_prompt_starts_from_eot(model):
    assert generate_tokens(model, "", greedy(5)) == generate_tokens(model, [EOT_TOKEN], greedy(5))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_samples=0), "num_samples"),
        (dict(stop=("",)), "stop"),
        (dict(seed=-1), "seed"),
        (dict(mode="fast"), "mode"),
    ],
)
def test_bad_arguments_raise(model, kwargs, field):
    with pytest.raises(ValueError, match=field):
        stream(model, "x", SamplingConfig(**kwargs))


def test_bad_prompt_ids_raise(model):
    with pytest.raises(ValueError, match="token ids"):
        stream(model, [1, 50257], SamplingConfig())


def test_model_is_left_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # micro has no dropout: training mode computes the same function
    it = stream(model, "Hello", SamplingConfig(max_new_tokens=10, seed=0))
    next(it)
    assert model.training  # generation never switches a shared model's mode
    it.close()
    model.eval()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    dropout = GPT(model_config("micro", dropout=0.1)).train()
    with pytest.raises(ValueError, match="training mode"):
        stream(dropout, "Hello", SamplingConfig())
    assert dropout.training


def test_window_keep():
    assert window_keep(32) == 16  # half the window by default
    assert window_keep(32, 15) == 15
    assert window_keep(32, 40) == 31  # the next token must still fit
    assert window_keep(2) == window_keep(1, 5) == 1


def test_threads_generating_on_one_model_match_sequential_runs(model):
    jobs = [("Hello", 1), ("The king said", 2), ("Once upon", 3), ("", 4)]

    def run(prompt: str, seed: int) -> list[list[int]]:
        cfg = SamplingConfig(max_new_tokens=40, seed=seed, num_samples=2, stop_at_eot=False, top_k=100)
        return generate_tokens(model, prompt, cfg)

    sequential = [run(*job) for job in jobs]
    start = threading.Barrier(len(jobs))

    def together(job: tuple[str, int]) -> list[list[int]]:
        start.wait()  # all threads decode at the same time, step by step
        return run(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(together, jobs))
    assert concurrent == sequential
    assert len({str(t) for t in sequential}) == len(jobs)


def test_interleaved_streams_do_not_disturb_each_other(model):
    a, b = stream(model, "Hello", greedy(10)), stream(model, "The king said", greedy(10))
    pairs = list(zip(a, b))
    assert [p[0].tokens[0] for p in pairs] == generate_tokens(model, "Hello", greedy(10))[0]
    assert [p[1].tokens[0] for p in pairs] == generate_tokens(model, "The king said", greedy(10))[0]


# --- CLI ----------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core.sample", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model):
    run = tmp_path_factory.mktemp("runs") / "micro"
    save_checkpoint(run, 5, model, {})
    return run


def test_cli_streams_a_checkpoint(run_dir, model):
    r = _cli("--checkpoint", str(run_dir), "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    expected = generate(model, "Hello", SamplingConfig(max_new_tokens=12, temperature=0))[0]
    assert r.stdout == "Hello" + expected + "\n"
    assert "tokens/s" in r.stderr
    r = _cli("--checkpoint", str(run_dir / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_cli_seed_and_hf_folder(tmp_path, model, run_dir, capsys):
    # In-process through the same main() the subprocess runs, to keep the suite fast.
    seeded = ["--checkpoint", str(run_dir / "ckpt" / "step-000005"), "--seed", "4", "--no-echo", "--top-k", "50"]
    outs = []
    for _ in range(2):
        assert sample_cli.main([*seeded, "--max-new-tokens", "8"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()
    by_name = ["--checkpoint", "micro/ckpt/step-000005", "--runs-dir", str(run_dir.parent), *seeded[2:]]
    assert sample_cli.main([*by_name, "--max-new-tokens", "8"]) == 0  # a run name under --runs-dir
    assert capsys.readouterr().out == outs[0]
    export_hf(model, tmp_path / "hf")
    assert sample_cli.main(["--checkpoint", str(tmp_path / "hf"), "--num-samples", "2", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2


def test_cli_errors_are_one_line(tmp_path, run_dir, capsys):
    assert sample_cli.main(["--checkpoint", str(run_dir), "--top-p", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "top_p must be in (0, 1]" in err
    broken = tmp_path / "broken"
    save_checkpoint(broken, 1, _model(), {})
    weights = broken / "ckpt" / "step-000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert sample_cli.main(["--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        sample_cli.main(["--checkpoint", str(run_dir), "--top-k", "x"])
    assert e.value.code == 2


def test_sampled_frequencies_follow_the_filtered_distribution():
    from core.generation import _choose

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0]]).repeat(40000, 1)
    for cfg in [SamplingConfig(seed=0), SamplingConfig(seed=0, top_k=3, temperature=0.7), SamplingConfig(top_p=0.6)]:
        tokens, _ = _choose(logits, cfg, torch.Generator().manual_seed(0))
        freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
        assert (freq - filter_probs(logits[:1], cfg)[0]).abs().max() < 0.01
