"""Import and export GPT-2 in Hugging Face format (config.json + model.safetensors).

Our parameters have HF's names and shapes (projections are Conv1D, (in, out)), so weights are copied
as they are; only key prefixes, the tied head and padded vocabulary rows need care. Nothing here loads
pickle: .bin files go through torch.load(weights_only=True), which only rebuilds tensors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.config import EOT_TOKEN, PRESETS, ConfigError, ModelConfig, TrainConfig
from core.hf_source import HFError, hf_model_config, is_hub_id  # torch-free, for the UI: see core.hf_source
from core.model import GPT, clean_state_dict, load_clean_state_dict, unwrap_model
from core.runs import resolve_run_dir

IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions


# --- reading ------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path] | None:
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", None)):
        if (folder / single).is_file():
            return [folder / single]
        if index and (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise HFError(f"{folder / index} is not a valid shard index ({e})") from e
            return [folder / s for s in shards]
    return None


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                sd.update(load_file(f))
            else:
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
        except FileNotFoundError as e:
            raise HFError(f"weights file missing: {f}") from e
        except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
            raise HFError(f"weights file {f} is corrupt, truncated or not plain tensors ({e})") from e
    return sd


def hf_to_state_dict(hf_sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face GPT-2 state dict into our clean_state_dict layout."""
    out: dict[str, torch.Tensor] = {}
    head = None
    for key, value in hf_sd.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight":
            head = value
            continue
        name = key if key.startswith("transformer.") else "transformer." + key  # GPT2Model saves unprefixed
        out[name] = value
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise HFError("lm_head.weight differs from transformer.wte.weight; only GPT-2 with a tied head is supported")
    with torch.device("meta"):  # shapes only: no memory, no init time
        expected = clean_state_dict(GPT(config))
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        raise HFError(
            f"weights do not match config.json: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for k, v in expected.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise HFError(f"weight {k} has shape {tuple(out[k].shape)}, config.json implies {tuple(v.shape)}")
    return out


def _one_line(e: Exception, limit: int = 200) -> str:
    """An exception's message on one line (hub errors span several), cut to limit characters."""
    return " ".join(str(e).split())[:limit]


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise HFError("downloading from the hub needs huggingface_hub: pip install huggingface_hub") from e
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors*"]))
        if _weight_files(folder) is None:  # an old repository with only a PyTorch .bin
            folder = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model.bin"]))
    except Exception as e:  # network, offline mode, unknown repo, auth: all end the same way for the user
        raise HFError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {_one_line(e)}); "
            "offline? download it elsewhere and pass the local folder"
        ) from e
    return folder


def _hf_folder(source: str | Path) -> Path:
    """A local Hugging Face GPT-2 folder for a folder path or a hub id (downloaded when online)."""
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise HFError(f"{p} is a file; pass the folder holding config.json and model.safetensors")
        if not (p / "config.json").is_file():
            raise HFError(f"{p} has no config.json; it is not a Hugging Face model folder")
        if _weight_files(p) is None:
            raise HFError(f"{p} has no model.safetensors or pytorch_model.bin")
        return p
    if is_hub_id(str(source)):
        return _download(str(source))
    raise HFError(f"{source} not found: pass a local Hugging Face GPT-2 folder or a hub id such as 'gpt2'")


def load_hf_gpt2(source: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Our GPT (eval mode) with the weights of a Hugging Face GPT-2 folder or hub id."""
    folder = _hf_folder(source)
    try:
        hf_cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HFError(f"{folder / 'config.json'} is not valid JSON ({e})") from e
    config = hf_model_config(hf_cfg)
    sd = hf_to_state_dict(_read_weights(_weight_files(folder) or []), config)
    model = GPT(config)
    load_clean_state_dict(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.to(device).eval()


# --- writing ------------------------------------------------------------------------------------
def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights in HF GPT2LMHeadModel layout: padded vocab rows dropped.

    The head is tied, so (like save_pretrained) only transformer.wte.weight is stored. A model
    trained without biases gets zero biases, which computes the same function.
    """
    c = model.config
    out: dict[str, torch.Tensor] = {}
    for key, value in clean_state_dict(model).items():
        value = value.detach()
        if key == "transformer.wte.weight":
            value = value[: c.vocab_size]
        out[key] = value.contiguous().cpu().clone()
    if not c.bias:
        for i in range(c.n_layer):
            p = f"transformer.h.{i}."
            sizes = {"ln_1": c.n_embd, "ln_2": c.n_embd, "attn.c_attn": 3 * c.n_embd, "attn.c_proj": c.n_embd}
            sizes |= {"mlp.c_fc": 4 * c.n_embd, "mlp.c_proj": c.n_embd}
            for name, size in sizes.items():
                out.setdefault(f"{p}{name}.bias", torch.zeros(size, dtype=out[f"{p}ln_1.weight"].dtype))
        out.setdefault("transformer.ln_f.bias", torch.zeros(c.n_embd, dtype=out["transformer.ln_f.weight"].dtype))
    return out


def export_hf(model_or_path: nn.Module | str | Path, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads.

    model_or_path: a GPT (also compiled/DDP-wrapped), or a run / checkpoint folder of this project.
    out_dir must be new or empty: nothing is overwritten. The files are written into a temporary folder beside it
    and renamed into place, so a failed or killed export leaves no half-written folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFError(
            f"{out} already exists and is not empty; export into a new or empty folder (nothing is overwritten)"
        )
    if isinstance(model_or_path, nn.Module):
        model = unwrap_model(model_or_path)
    else:
        from core.checkpoint import load_model

        model, _ = load_model(model_or_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.urandom(4).hex()}"
    tmp.mkdir()  # not mkdtemp: the export gets the umask's permissions, not 0700
    try:
        tensors = state_dict_to_hf(model)
        dtype = tensors["transformer.wte.weight"].dtype
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2) + "\n")
        os.rename(tmp, out)  # onto a missing or empty folder; fails if out was filled meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _closest_preset(config: ModelConfig) -> str:
    """The preset of the same shape, else the one nearest in size (layers x width^2, on a log scale); config.json
    keeps the real shape in n_layer/n_head/n_embd/block_size, so this is only the name a listing starts from."""
    for name, p in PRESETS.items():
        if (p["n_layer"], p["n_head"], p["n_embd"]) == (config.n_layer, config.n_head, config.n_embd):
            return name
    size = math.log(config.n_layer * config.n_embd**2)
    return min(PRESETS, key=lambda name: abs(math.log(PRESETS[name]["n_layer"] * PRESETS[name]["n_embd"] ** 2) - size))


def import_to_run(source: str | Path, runs_dir: str | Path, name: str) -> Path:
    """Import GPT-2 weights as a run folder (<runs_dir>/<name>/ckpt/step-000000 + config.json).

    The folder is built under a temporary name and renamed at the end, so the UI never lists a
    half-written import, and an existing run is never overwritten.
    """
    from core.checkpoint import save_checkpoint

    try:
        final = resolve_run_dir(runs_dir, name)
    except ConfigError as e:
        raise HFError(str(e)) from e
    runs = Path(runs_dir)
    if final.exists():
        raise HFError(f"a run named {name!r} already exists in {runs}; choose another name")
    model = load_hf_gpt2(source)
    c = model.config
    runs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=runs, prefix=f".import-{name}-"))
    try:
        save_checkpoint(tmp, 0, model, {"source": str(source), "imported": True})
        train = TrainConfig(
            run_name=name,
            runs_dir=str(runs),
            preset=_closest_preset(c),
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            block_size=c.block_size,
            pad_vocab=False,
            init_from=str(source),
            extra={"imported": True, "source": str(source), "model_config": c.to_dict()},
        )
        train.to_json(tmp / "config.json")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
