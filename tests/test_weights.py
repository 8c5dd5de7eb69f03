"""core.weights: every kind of source, the precedence between them, and one-line errors; on real folders
written by save_checkpoint and export_hf."""

import json
import os

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.config import ConfigError, TrainConfig, model_config
from core.hf import HFError, export_hf
from core.model import GPT
from core.train import _init_model
from core.weights import WeightsError, load_weights, resolve_run, resolve_source


def _model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config("micro")).eval()


def _same_weights(a: GPT, b: GPT) -> bool:
    x = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a(x).logits, b(x).logits, atol=1e-5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """runs/micro with two checkpoints (steps 1 and 2), an HF export, and models to compare with."""
    root = tmp_path_factory.mktemp("weights")
    old, new = _model(1), _model(2)
    save_checkpoint(root / "runs" / "micro", 1, old, {})
    save_checkpoint(root / "runs" / "micro", 2, new, {})
    export_hf(new, root / "hf")
    return root, old, new


def test_each_kind(world):
    root, old, new = world
    run = root / "runs" / "micro"
    latest = run / "ckpt" / "step-000002"
    assert resolve_source(run).kind == "run" and resolve_source(run).path == latest
    assert resolve_source(run).run_dir == run
    assert resolve_source(run / "ckpt").path == latest  # the ckpt/ folder stands for its run
    first = resolve_source(run / "ckpt" / "step-000001")
    assert first.kind == "checkpoint" and first.path == run / "ckpt" / "step-000001"
    assert resolve_source(root / "hf").kind == "hf_folder"
    for spec in ("gpt2", "openai-community/gpt2"):
        assert resolve_source(spec) == resolve_source(spec, root / "runs")
        assert resolve_source(spec).kind == "hub" and resolve_source(spec).hub_id == spec
    model, source = load_weights(run / "ckpt" / "step-000001")
    assert source == first and not model.training and _same_weights(model, old)
    assert _same_weights(load_weights(run)[0], new) and _same_weights(load_weights(root / "hf")[0], new)


def test_run_names_under_runs_dir(world):
    root, old, _ = world
    runs = root / "runs"
    assert resolve_source("micro", runs) == resolve_source(runs / "micro")
    assert resolve_source("micro/ckpt/step-000001", runs).kind == "checkpoint"
    assert _same_weights(load_weights("micro/ckpt/step-000001", runs_dir=runs)[0], old)
    assert resolve_source("micro").kind == "hub"  # without runs_dir a bare name can only be a hub id


def test_precedence(world, tmp_path, monkeypatch):
    root, _, new = world
    # A checkpoint folder that also looks like a Hugging Face folder is a checkpoint.
    ckpt = root / "runs" / "micro" / "ckpt" / "step-000002"
    both = tmp_path / "both"
    both.mkdir()
    for f in ckpt.iterdir():
        (both / f.name).write_bytes(f.read_bytes())
    (both / "config.json").write_text((root / "hf" / "config.json").read_text())
    assert resolve_source(both).kind == "checkpoint"
    # A local path beats a run of the same name, which beats a hub id of the same name.
    runs = tmp_path / "runs"
    save_checkpoint(runs / "gpt2", 3, new, {})
    assert resolve_source("gpt2", runs).kind == "run"
    monkeypatch.chdir(tmp_path)
    export_hf(new, tmp_path / "gpt2")
    assert resolve_source("gpt2", runs).kind == "hf_folder"
    # org/name is a hub id only while no local folder is called org.
    assert resolve_source("elsewhere/nothing-here").kind == "hub"
    with pytest.raises(WeightsError, match="^no such run or folder: runs/nothing-here$"):
        resolve_source("runs/nothing-here")


@pytest.mark.parametrize("spec", ["./nope", "/no/such/folder", "~/no-such-folder-here", "a/b/c", "a\\b", "-x"])
def test_missing_paths_are_one_line_errors(spec):
    with pytest.raises(WeightsError) as e:
        resolve_source(spec)
    assert str(e.value) == f"no such run or folder: {spec}"
    with pytest.raises(WeightsError, match="^no weights given: pass a run"):
        resolve_source("  ")


def test_folders_without_weights(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    TrainConfig(run_name="fresh").to_json(run / "config.json")
    with pytest.raises(WeightsError, match="no checkpoint in .*fresh yet"):
        resolve_source(run)
    (run / "ckpt").mkdir()
    with pytest.raises(WeightsError, match="no checkpoint in .*fresh yet"):
        resolve_source(run)
    (tmp_path / "other").mkdir()
    with pytest.raises(WeightsError, match="is not a run, a checkpoint or a Hugging Face folder"):
        resolve_source(tmp_path / "other")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WeightsError, match="is a file"):
        resolve_source(tmp_path / "file.txt")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_source(llama).kind == "hf_folder"  # a Hugging Face folder, which loading then refuses
    with pytest.raises(HFError, match="has no model.safetensors"):
        load_weights(llama)


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source("gpt2-playground-tests/does-not-exist")  # deciding needs no network
    assert source.kind == "hub"
    with pytest.raises(HFError) as e:
        load_weights("gpt2-playground-tests/does-not-exist")
    assert "\n" not in str(e.value) and "offline?" in str(e.value) and "local folder" in str(e.value)


def test_resolve_run_stays_inside_the_runs_folder(world, tmp_path):
    root, _, _ = world
    runs = root / "runs"
    assert resolve_run(runs, "micro") == resolve_source(runs / "micro")
    assert resolve_run(runs, "micro/ckpt/step-000001").kind == "checkpoint"
    for name in ("../hf", str(root / "hf"), "micro/../../hf"):
        with pytest.raises(WeightsError, match="outside the runs folder"):
            resolve_run(runs, name)
    os.symlink(root / "hf", tmp_path / "escape")
    with pytest.raises(WeightsError, match="outside the runs folder"):
        resolve_run(tmp_path, "escape")
    with pytest.raises(WeightsError, match="no longer exists"):
        resolve_run(runs, "gpt2")  # never a hub id


def test_trainer_init_from_uses_the_resolver(world):
    root, old, new = world
    logged = []
    cfg = TrainConfig(init_from="micro/ckpt/step-000001", runs_dir=str(root / "runs"), dropout=0.1)
    model = _init_model(cfg, logged.append)
    assert model.training and model.config.dropout == 0.1 and model.transformer.drop.p == 0.1
    assert _same_weights(model.eval(), old)
    assert logged == [
        f"initialized from checkpoint {root / 'runs' / 'micro' / 'ckpt' / 'step-000001'} "
        "(weights only, fresh optimizer)"
    ]
    assert _same_weights(_init_model(TrainConfig(init_from=str(root / "hf")), logged.append).eval(), new)
    with pytest.raises(ConfigError, match="no such run or folder") as e:
        _init_model(TrainConfig(init_from=str(root / "nowhere"), runs_dir=str(root / "runs")), logged.append)
    assert e.value.field == "init_from"
