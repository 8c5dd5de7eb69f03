"""Hugging Face interop against the real transformers GPT2LMHeadModel (random small weights, fp32)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from core.checkpoint import load_model, read_state, save_checkpoint
from core.config import model_config
from core.generation import SamplingConfig, generate_tokens
from core.hf import HFError, export_hf, import_to_run, load_hf_gpt2
from core.model import GPT


def _hf_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    # A larger init spread than GPT-2's 0.02 so a random model's greedy output is not one repeated token.
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, initializer_range=0.3)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    model = _hf_model()
    model.save_pretrained(path)
    return path, model


def _batch() -> torch.Tensor:
    return torch.randint(0, 50257, (3, 24), generator=torch.Generator().manual_seed(1))


def test_logits_match_transformers(hf_dir):
    path, hf = hf_dir
    ours = load_hf_gpt2(path)
    x = _batch()
    with torch.no_grad():
        diff = (hf(x).logits - ours(x).logits).abs().max().item()
    assert diff < 1e-5


def test_greedy_generation_token_identical(hf_dir):
    path, hf = hf_dir
    ours = load_hf_gpt2(path)
    prompt = [15496, 995, 11, 616]
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=30, do_sample=False, pad_token_id=50256, eos_token_id=None
        )[0, len(prompt) :].tolist()
    got = generate_tokens(ours, prompt, SamplingConfig(max_new_tokens=30, temperature=0, stop_at_eot=False))[0]
    assert len(set(ref)) > 3, "reference output is degenerate; the comparison would prove little"
    assert got == ref


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    torch.manual_seed(0)
    ours = GPT(model_config("micro", pad_vocab=True)).eval()  # padded rows must not be exported
    export_hf(ours, tmp_path / "out")
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.transformer.wte.weight.shape == (50257, 32)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied on load
    x = _batch()
    with torch.no_grad():
        assert (hf.eval()(x).logits - ours(x).logits).abs().max().item() < 1e-5


def test_export_from_a_run_folder_and_reimport(tmp_path):
    torch.manual_seed(0)
    model = GPT(model_config("micro", bias=False)).eval()  # no biases: exported as zeros
    save_checkpoint(tmp_path / "run", 7, model, {})
    export_hf(tmp_path / "run", tmp_path / "hf")
    back = load_hf_gpt2(tmp_path / "hf")
    x = _batch()
    with torch.no_grad():
        assert (back(x).logits - model(x).logits).abs().max().item() < 1e-5


def test_pytorch_model_bin_without_prefix_and_with_mask_buffers(tmp_path, hf_dir):
    _, hf = hf_dir
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # old transformers versions stored these
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ours = load_hf_gpt2(tmp_path)
    x = _batch()
    with torch.no_grad():
        assert (hf(x).logits - ours(x).logits).abs().max().item() < 1e-5


def test_import_to_run_is_a_loadable_run(tmp_path, hf_dir):
    path, hf = hf_dir
    run = import_to_run(path, tmp_path / "runs", "gpt2-imported")
    assert run == tmp_path / "runs" / "gpt2-imported"
    state = read_state(run / "ckpt" / "step-000000")
    assert state["imported"] is True and state["source"] == str(path)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["extra"]["imported"] is True and cfg["n_embd"] == 32
    model, _ = load_model(run)
    x = _batch()
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max().item() < 1e-5
    with pytest.raises(HFError, match="already exists"):
        import_to_run(path, tmp_path / "runs", "gpt2-imported")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["gpt2-imported"]  # no leftovers


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", ".hidden", "a\\b", "x" * 65])
def test_import_rejects_bad_run_names(tmp_path, hf_dir, name):
    with pytest.raises(HFError, match="run name"):
        import_to_run(hf_dir[0], tmp_path / "runs", name)
    assert not (tmp_path / "runs").exists()


def test_offline_hub_id_gives_a_clear_message():
    with pytest.raises(HFError, match="offline\\?.*local folder"):
        load_hf_gpt2("gpt2-playground-tests/does-not-exist")


def test_bad_folders(tmp_path, hf_dir):
    with pytest.raises(HFError, match="not found"):
        load_hf_gpt2(tmp_path / "missing")
    with pytest.raises(HFError, match="no config.json"):
        load_hf_gpt2(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((hf_dir[0] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg))
    data = (hf_dir[0] / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HFError, match="corrupt"):
        load_hf_gpt2(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(HFError, match="activation_function"):
        load_hf_gpt2(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(HFError, match="only GPT-2"):
        load_hf_gpt2(bad)


def test_shape_mismatch_names_the_weight(tmp_path, hf_dir):
    cfg = json.loads((hf_dir[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_positions": 32}))
    sd = {k: v.contiguous() for k, v in hf_dir[1].state_dict().items() if k != "lm_head.weight"}
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFError, match="transformer.wpe.weight"):
        load_hf_gpt2(tmp_path)
