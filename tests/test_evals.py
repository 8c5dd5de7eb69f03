"""Evals (core/evals.py, python -m core.eval) against straightforward computations with transformers.GPT2LMHeadModel
on the same weights: HellaSwag choices and accuracies, sliding-window perplexity, file errors, the download,
fixed shapes for torch.compile, the CLI contract, and the DDP split under real torchrun."""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn as nn

from core import eval as eval_cli
from core.config import model_config
from core.data import BUNDLED
from core.evals import (
    HELLASWAG_VAL_URL,
    EvalError,
    HellaSwagExample,
    download_hellaswag,
    ending_losses,
    evaluate_hellaswag,
    load_hellaswag,
    perplexity,
    perplexity_windows,
    read_hellaswag,
    text_perplexity,
)
from core.hf import export_hf
from core.model import GPT
from core.tokenizer import encode
from tests.helpers import ROOT, TORCHRUN, run_cmd

transformers = pytest.importorskip("transformers")

# Made up, in HellaSwag's format; endings of varied lengths; the last context is long enough that the
# micro model (32 tokens of context) has to drop its oldest tokens.
EXAMPLES = [
    ("A man is sitting on a roof.", "he", ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
     "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3),
    ("A woman pours flour into a bowl.", "she", ["adds two eggs and stirs.", "sings.",
     "drives the car to the station and waits for the evening train to arrive.", "is"], 0),
    ("The kids run onto the field.", "they", ["kick the ball", "kick the ball around for a while, laughing loudly.",
     "sleep.", "paint the fence blue and green."], 1),
    ("How to clean a cast iron pan.", "", ["Rinse it with hot water.", "Eat it.",
     "Scrub off any stuck food with coarse salt and a paper towel, then dry it on the stove.", "Sell the pan."], 2),
    ("A dog stands at the edge of a lake.", "the dog", ["jumps in.", "barks at the ducks that swim by.",
     "reads a book.", "is wet"], 1),
    ("Two people are standing on a stage holding violins, and the audience waits quietly while the lights dim "
     "slowly over the hall and someone in the back row coughs twice before the concert begins.", "they",
     ["begin to play a slow tune.", "eat sandwiches.", "play.", "walk off the stage without a word to anyone."], 0),
]  # fmt: skip


def example_records() -> list[dict]:
    out = []
    for i, (ctx_a, ctx_b, endings, label) in enumerate(EXAMPLES):
        out.append(
            {"ind": i, "activity_label": "Test", "ctx_a": ctx_a, "ctx_b": ctx_b,
             "ctx": f"{ctx_a} {ctx_b}" if ctx_b else ctx_a, "split": "val", "split_type": "indomain",
             "label": label, "endings": endings, "source_id": f"test~{i}"}
        )  # fmt: skip
    return out


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def sharp_model(preset: str) -> GPT:
    """A random model with large weights: peaked predictions, so choices have clear margins."""
    torch.manual_seed(0)
    model = GPT(model_config(preset))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def model_pair(preset: str, folder) -> tuple[GPT, nn.Module, object]:
    """(our model, transformers' model on the same weights, the exported HF folder)."""
    model = sharp_model(preset)
    export_hf(model, folder)
    return model, transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval(), folder


@pytest.fixture(scope="module", params=["tiny", "micro"])
def pair(request, tmp_path_factory):
    """Both presets: tiny holds every example; micro (32 tokens) must drop context of the longest."""
    return model_pair(request.param, tmp_path_factory.mktemp(f"hf-{request.param}"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return model_pair("tiny", tmp_path_factory.mktemp("hf-tiny"))


@pytest.fixture(scope="module")
def hs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hs") / "hellaswag_test.jsonl"
    write_jsonl(path, example_records())
    return path


# --- HellaSwag against transformers -------------------------------------------------------------
@torch.no_grad()
def reference_losses(hf, record: dict) -> tuple[list[float], list[float]]:
    """Per ending: summed and mean NLL of its tokens, one example at a time, no padding."""
    block = hf.config.n_positions
    ctx = encode(record["ctx"], allow_special=False)
    sums, means = [], []
    for ending in record["endings"]:
        end = encode(" " + ending, allow_special=False)
        tokens = ctx + end
        cut = max(0, len(tokens) - block)  # only the micro model: keep the newest block tokens
        logp = torch.log_softmax(hf(torch.tensor([tokens[cut:]])).logits[0].double(), dim=-1)
        nll = [-logp[j - 1 - cut, tokens[j]].item() for j in range(max(len(ctx), cut + 1), len(tokens))]
        sums.append(sum(nll))
        means.append(sum(nll) / len(nll))
    return sums, means


def argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def clear_margin(values: list[float]) -> bool:
    a, b = sorted(values)[:2]
    return b - a > 1e-3


@pytest.fixture(scope="module")
def hs_reference(pair) -> list[tuple[list[float], list[float]]]:
    return [reference_losses(pair[1], r) for r in example_records()]


@pytest.mark.parametrize("batch_examples", [1, 4])
def test_hellaswag_choices_and_accuracies_equal_transformers(pair, hs_reference, hs_file, batch_examples):
    model, ref, records = pair[0], hs_reference, example_records()
    assert all(clear_margin(s) and clear_margin(m) for s, m in ref)  # else a choice could flip on rounding
    examples = read_hellaswag(hs_file)
    sums, means = ending_losses(model, examples, batch_examples=batch_examples)
    torch.testing.assert_close(sums, torch.tensor([s for s, _ in ref], dtype=torch.float64), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(means, torch.tensor([m for _, m in ref], dtype=torch.float64), rtol=1e-5, atol=1e-4)

    choices = [argmin(s) for s, _ in ref]
    choices_norm = [argmin(m) for _, m in ref]
    assert sums.argmin(1).tolist() == choices and means.argmin(1).tolist() == choices_norm
    assert choices != choices_norm  # the two accuracies measure different things on this file
    labels = [r["label"] for r in records]
    model.train()
    result = evaluate_hellaswag(model, examples, batch_examples=batch_examples)
    assert model.training  # the caller's mode is restored
    model.eval()
    assert result.n == len(records)
    assert result.correct == sum(c == y for c, y in zip(choices, labels))
    assert result.correct_norm == sum(c == y for c, y in zip(choices_norm, labels))
    assert (result.acc, result.acc_norm) == (result.correct / 6, result.correct_norm / 6)


class ShapeRecorder(nn.Module):
    """Passes calls to the model, noting the input shape of each forward."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.module = model
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, idx: torch.Tensor):
        self.shapes.append(tuple(idx.shape))
        return self.module(idx)


def test_every_forward_of_a_call_has_one_shape(hs_file):
    rec = ShapeRecorder(sharp_model("tiny"))
    examples = read_hellaswag(hs_file)
    evaluate_hellaswag(rec, examples, batch_examples=4)  # 6 examples: a full batch, then 2 + 2 dummy
    evaluate_hellaswag(rec, examples, batch_examples=4)
    assert len(rec.shapes) == 4 and len(set(rec.shapes)) == 1 and rec.shapes[0][0] == 16
    rec.shapes.clear()
    text = encode(" ".join(r["ctx"] for r in example_records()), allow_special=False)  # 86 tokens
    perplexity(rec, text, seq_len=48, stride=20, batch_windows=2)  # 3 windows: the last window and batch are short
    assert rec.shapes == [(2, 48), (2, 48)]


def test_compiled_model_scores_without_recompiling(hs_file):
    """dynamic=False and an error on any recompile: the fixed shapes compile once (eager backend: cheap)."""
    import torch._dynamo

    model = sharp_model("micro")
    examples = read_hellaswag(hs_file)
    want = evaluate_hellaswag(model, examples, batch_examples=4)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert evaluate_hellaswag(compiled, examples, batch_examples=4) == want
        assert evaluate_hellaswag(compiled, examples, batch_examples=4) == want
    torch._dynamo.reset()


@pytest.mark.skipif(
    not os.environ.get("RUN_COMPILE_TESTS"), reason="torch.compile on CPU takes minutes; set RUN_COMPILE_TESTS=1"
)
def test_inductor_compiled_model_gives_the_same_scores(hs_file):
    model = sharp_model("micro")
    examples = read_hellaswag(hs_file)
    sums, means = ending_losses(model, examples)
    csums, cmeans = ending_losses(torch.compile(model), examples)
    torch.testing.assert_close(csums, sums, rtol=1e-4, atol=1e-3)
    assert cmeans.argmin(1).tolist() == means.argmin(1).tolist()


# --- HellaSwag files and the download -------------------------------------------------------------
GOOD = example_records()[0]
BAD_LINES = {
    "invalid JSON": ('{"ctx": "a", "endings": [', "not valid JSON"),
    "not an object": ("[1, 2, 3]", "expected a JSON object"),
    "missing field": (json.dumps({k: v for k, v in GOOD.items() if k != "endings"}), "missing field(s) endings"),
    "missing two": (json.dumps({"ind": 1, "ctx": "x"}), "missing field(s) endings, label"),
    "three endings": (json.dumps({**GOOD, "endings": ["a", "b", "c"]}), "'endings' has 3 entries"),
    "five endings": (json.dumps({**GOOD, "endings": list("abcde")}), "'endings' has 5 entries"),
    "ending not text": (json.dumps({**GOOD, "endings": ["a", "b", 3, "d"]}), "list of 4 strings"),
    "label 4": (json.dumps({**GOOD, "label": 4}), "'label' is 4; it must be 0, 1, 2 or 3"),
    "label -1": (json.dumps({**GOOD, "label": -1}), "'label' is -1"),
    "label text": (json.dumps({**GOOD, "label": "2"}), "'label' is '2'"),
    "empty ctx": (json.dumps({**GOOD, "ctx": ""}), "'ctx' must be a non-empty string"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_gives_one_line_naming_it(tmp_path, case):
    line, problem = BAD_LINES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n")  # the bad one is line 3
    with pytest.raises(EvalError) as e:
        read_hellaswag(path)
    msg = str(e.value)
    assert "\n" not in msg and f"{path} line 3: " in msg and problem in msg, msg
    assert len(read_hellaswag(path, limit=1)) == 1  # --limit stops before the bad line


def test_non_utf8_missing_and_empty_files(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"ctx": "caf\xe9"}\n')
    with pytest.raises(EvalError, match=r"line 2: not UTF-8"):
        read_hellaswag(bad)
    with pytest.raises(EvalError, match="HellaSwag file not found: .*nope.jsonl"):
        read_hellaswag(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalError, match="holds no HellaSwag examples"):
        read_hellaswag(tmp_path / "empty.jsonl")
    with pytest.raises(EvalError, match="limit must be >= 1"):
        read_hellaswag(bad, limit=0)


def test_validation_file_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, hs_file):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(hs_file.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    first = load_hellaswag(None, limit=2, cache_dir=cache)
    again = load_hellaswag(None, cache_dir=cache)
    assert calls == [HELLASWAG_VAL_URL]
    assert (cache / "hellaswag_val.jsonl").read_bytes() == hs_file.read_bytes()
    assert [e.label for e in first] == [3, 0] and len(again) == len(EXAMPLES)
    assert sorted(p.name for p in cache.iterdir()) == ["hellaswag_val.jsonl"]


def test_offline_download_error_names_the_url_and_file_flag(tmp_path):
    url = "http://127.0.0.1:9/hellaswag_val.jsonl"  # nothing listens on port 9: refused at once
    with pytest.raises(EvalError) as e:
        download_hellaswag(tmp_path / "cache", url)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "--file" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind


def test_cli_offline_prints_one_error_line_and_exits_2(tmp_path, monkeypatch, capsys, tiny):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["hellaswag", "--checkpoint", str(tiny[2]), "--cache-dir", str(tmp_path), "--device", "cpu"]
    assert eval_cli.main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert out.err.startswith("error: could not download HellaSwag from " + HELLASWAG_VAL_URL)
    assert "pass --file with a local copy" in out.err


def test_example_checks_its_fields():
    with pytest.raises(EvalError, match="exactly 4"):
        HellaSwagExample("ctx", ("a", "b"), 0)
    assert HellaSwagExample("ctx", ["a", "b", "c", "d"], 3).endings == ("a", "b", "c", "d")


# --- perplexity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,L,S", [(2, 8, 4), (7, 8, 4), (8, 8, 4), (9, 8, 4), (50, 8, 4), (50, 8, 7), (50, 8, 1)])
def test_windows_predict_every_token_once_with_bounded_context(n, L, S):
    windows = perplexity_windows(n, L, S)
    predicted = [j for _, end, first in windows for j in range(first, end)]
    assert predicted == list(range(1, n))
    assert windows[-1][1] == n and [w[0] for w in windows] == [S * i for i in range(len(windows))]
    for i, (start, end, first) in enumerate(windows):
        assert end - start <= L and start < first <= end
        for j in range(first, end):
            assert j - start <= L - 1  # at most L-1 tokens of context
            assert i == 0 or j - start >= L - S - 1  # after the first window, at least L-S-1


@torch.no_grad()
def reference_perplexity(hf, tokens: list[int], L: int, S: int) -> tuple[int, float]:
    """The sliding window with transformers: one window at a time, already predicted labels set to -100."""
    total, count, predicted_to = 0.0, 0, 1
    for start in range(0, len(tokens), S):
        end = min(start + L, len(tokens))
        ids = torch.tensor([tokens[start:end]])
        labels = ids.clone()
        labels[0, : predicted_to - start] = -100
        n = int((labels[0, 1:] != -100).sum())
        total += hf(ids, labels=labels).loss.item() * n
        count += n
        predicted_to = end
        if end == len(tokens):
            break
    return count, total / count


@pytest.fixture(scope="module")
def text() -> str:
    return BUNDLED["shakespeare"].read_text()[:1000]


@pytest.mark.parametrize("seq_len,stride,chars", [(None, None, 1000), (None, 29, 1000), (None, "L-1", 1000),
                                                  (24, 23, 1000), (None, None, 60), (None, 5, 60)])  # fmt: skip
def test_perplexity_equals_transformers_sliding_window(pair, text, seq_len, stride, chars):
    model, hf, _ = pair
    tokens = encode(text[:chars], allow_special=False)
    L = seq_len or model.config.block_size
    S = L - 1 if stride == "L-1" else stride
    assert (chars == 60) == (len(tokens) < L)  # the short text fits in one window
    want_n, want_loss = reference_perplexity(hf, tokens, L, S or L // 2)
    got = text_perplexity(model, text[:chars], seq_len, S, batch_windows=3)
    assert got.tokens == want_n == len(tokens) - 1
    assert got.loss == pytest.approx(want_loss, rel=1e-5)
    assert got.perplexity == pytest.approx(torch.tensor(want_loss).exp().item(), rel=1e-5)


def test_perplexity_settings_that_cannot_work(pair):
    model = pair[0]
    block = model.config.block_size
    tokens = list(range(100, 100 + 3 * block))
    with pytest.raises(EvalError, match=f"stride must be between 1 and seq-len - 1 = {block - 1}, got {block}"):
        perplexity(model, tokens, stride=block)
    with pytest.raises(EvalError, match=f"exceeds the model's context \\({block}\\)"):
        perplexity(model, tokens, seq_len=block + 1)
    with pytest.raises(EvalError, match="has 1 token"):
        text_perplexity(model, "Hi")


# --- the command line ---------------------------------------------------------------------------
def cli(*args: str, launcher: list[str] | None = None):
    return run_cmd([*(launcher or [sys.executable]), "-m", "core.eval", *args], timeout=240)


def test_cli_json_outputs_exactly_the_contract_keys(tiny, hs_file, tmp_path, text):
    model, _, folder = tiny
    out = cli("hellaswag", "--checkpoint", str(folder), "--file", str(hs_file), "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert out.stdout.count("\n") == 1 and list(got) == ["task", "n", "acc", "acc_norm"]
    assert got == evaluate_hellaswag(model, read_hellaswag(hs_file)).to_dict()

    data = tmp_path / "text.txt"
    data.write_text(text)
    out = cli("perplexity", "--checkpoint", str(folder), "--data", str(data), "--seq-len", "100", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert out.stdout.count("\n") == 1 and list(got) == ["task", "tokens", "loss", "perplexity"]
    want = text_perplexity(model, text, seq_len=100).to_dict()
    assert got["task"] == "perplexity" and got["tokens"] == want["tokens"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_cli_errors_are_one_line_with_status_2(tiny, tmp_path, capsys):
    folder = str(tiny[2])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "label": 7}) + "\n")
    cases = [
        (["hellaswag", "--checkpoint", folder, "--file", str(bad)], f"{bad} line 2: 'label' is 7"),
        (["perplexity", "--checkpoint", folder, "--data", str(tmp_path / "none.txt")], "text file not found"),
        (["perplexity", "--checkpoint", str(tmp_path / "nothing"), "--data", str(bad)], "no such run or folder"),
        (["hellaswag", "--checkpoint", folder, "--batch-examples", "0"], "expected a whole number >= 1"),
        (["perplexity", "--checkpoint", folder], "the following arguments are required: --data"),
    ]
    for argv, problem in cases:
        assert exit_status([*argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and problem in err, err


def exit_status(argv: list[str]) -> int:
    try:
        return eval_cli.main(argv)
    except SystemExit as e:  # argparse's errors
        return int(e.code)


# --- DDP ------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, sys
from torch.nn.parallel import DistributedDataParallel as DDP
import core.distributed as D
from core.evals import evaluate_hellaswag, read_hellaswag
from core.weights import load_weights

ctx = D.setup("cpu")
model = DDP(load_weights(sys.argv[1], ctx.device)[0])  # as the trainer holds it; the ranks run 2 and 1 batches
done = []
result = evaluate_hellaswag(model, read_hellaswag(sys.argv[2], limit=5), 2, lambda d, t: done.append(t))
with open(f"{sys.argv[3]}/rank{ctx.rank}.json", "w") as f:
    json.dump({"scored": done[-1], "result": [result.n, result.correct, result.correct_norm]}, f)
D.teardown()
"""


def test_ddp_ranks_split_examples_and_all_reduce_counts(tiny, hs_file, tmp_path):
    model, _, folder = tiny
    single = evaluate_hellaswag(model, read_hellaswag(hs_file, limit=5), batch_examples=2)
    script = tmp_path / "ddp_hellaswag.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = run_cmd([*TORCHRUN, str(script), str(folder), str(hs_file), str(tmp_path)], timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["scored"] for r in ranks] == [3, 2]  # examples 0, 2, 4 and 1, 3
    assert all(r["result"] == [single.n, single.correct, single.correct_norm] for r in ranks)

    out = cli("hellaswag", "--checkpoint", str(folder), "--file", str(hs_file), "--limit", "5", "--json",
              launcher=TORCHRUN)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("\n") == 1 and json.loads(out.stdout) == single.to_dict()  # rank 0 alone prints
    assert "2 processes" in out.stderr
