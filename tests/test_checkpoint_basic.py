"""Checkpoints: round trip, ckpt/latest, corrupt files, config mismatch, and no pickle on the load path."""

import json
import pickle

import pytest
import torch

from core.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from core.config import model_config
from core.model import GPT


def _trained(seed: int = 0) -> tuple[GPT, torch.optim.AdamW]:
    torch.manual_seed(seed)
    m = GPT(model_config("micro"))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 50257, (2, 8))
    m(x, targets=x)[1].backward()
    opt.step()
    return m, opt


def test_round_trip_with_optimizer(tmp_path):
    m, opt = _trained()
    path = save_checkpoint(tmp_path / "run", 3, m, {"loader": {"pos": 17}, "val_loss": 4.5}, optimizer=opt)
    assert path == tmp_path / "run" / "ckpt" / "step-000003"
    ck = load_checkpoint(tmp_path / "run")
    assert ck.state["step"] == 3 and ck.state["loader"] == {"pos": 17}
    assert ck.model_config == m.config
    loaded, _ = load_model(tmp_path / "run")
    for (k, a), b in zip(m.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer_state)
    for p1, p2 in zip(m.parameters(), loaded.parameters()):
        s1, s2 = opt.state[p1], opt2.state[p2]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


def test_latest_resolution_and_pruning(tmp_path):
    m, _ = _trained()
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        save_checkpoint(run, step, m, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["step-000003", "step-000004"]
    assert (run / "ckpt" / "latest").read_text().strip() == "step-000004"
    for p in (run, run / "ckpt", run / "ckpt" / "step-000003"):
        assert resolve_checkpoint(p).name == ("step-000003" if p.name == "step-000003" else "step-000004")
    (run / "ckpt" / ".step-000005.tmp-x").mkdir()  # a write that was killed midway
    assert list_checkpoints(run)[-1].name == "step-000004"


def test_truncated_weights_name_the_file(tmp_path):
    m, _ = _trained()
    path = save_checkpoint(tmp_path / "run", 1, m, {})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_model(tmp_path / "run")
    assert str(weights) in str(e.value)


def test_missing_and_corrupt_state(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "empty")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.json").write_text("{}")  # a run that has not saved yet
    with pytest.raises(CheckpointError, match="no checkpoint in .* yet"):
        load_model(tmp_path / "fresh")
    m, _ = _trained()
    path = save_checkpoint(tmp_path / "run", 1, m, {})
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json is corrupt"):
        load_model(path)


def test_config_mismatch_is_a_clear_error(tmp_path):
    m, _ = _trained()
    path = save_checkpoint(tmp_path / "run", 1, m, {})
    state = json.loads((path / "state.json").read_text())
    state["model_config"]["n_layer"] = 3
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_model(path)


def test_no_pickle_on_the_load_path(tmp_path, monkeypatch):
    m, opt = _trained()
    path = save_checkpoint(tmp_path / "run", 1, m, {}, optimizer=opt)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]

    def forbidden(*a, **k):
        raise AssertionError("pickle used on the load path")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    ck = load_checkpoint(path)
    assert ck.optimizer_state is not None
    load_model(path)


def test_resolve_never_substitutes_another_checkpoint(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 1, GPT(model_config("micro")), {})
    assert resolve_checkpoint(run).name == "step-000001"
    assert resolve_checkpoint(run / "ckpt").name == "step-000001"
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(run / "nonexistent")
    broken = run / "ckpt" / "step-000002"
    broken.mkdir()
    with pytest.raises(CheckpointError, match="state.json is missing"):
        resolve_checkpoint(broken)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path)
