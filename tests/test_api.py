"""The named API (playground/api.py) driven by gradio_client against a real `python app.py`: view_api lists only the
named endpoints, a micro run is launched, polled, sampled and looked into through it, and every answer equals what
core computes itself on the same checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client

from app import AUTH_ENV
from core.attention import attention_maps, induction_scores, previous_token_scores
from core.generation import SamplingConfig, filter_probs, generate, prompt_tokens
from core.metrics import export_records
from core.paths import AccessPolicy
from core.tokenizer import encode, token_str
from core.weights import load_weights
from playground import api
from playground.tab import AppContext
from tests.browser.conftest import AppServers
from tests.helpers import CACHE, wait_for

pytestmark = pytest.mark.slow

RUN = "api-micro"
MICRO = {
    "run_name": RUN,
    "preset": "micro",
    "max_steps": 6,
    "ckpt_interval": 3,
    "eval_interval": 3,
    "eval_batches": 2,
    "warmup_steps": 2,
    "batch_size": 4,
    "data_cache": CACHE,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    servers = AppServers(tmp_path_factory.mktemp("api"))
    try:
        url = servers()
        yield Client(url, verbose=False), servers.tmp_path / "runs"
    finally:
        servers.stop_all()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return server[0]


@pytest.fixture(scope="module")
def runs_dir(server) -> Path:
    return server[1]


@pytest.fixture(scope="module")
def trained(client: Client, runs_dir: Path) -> list[dict]:
    """The micro run, launched through /launch and polled through /status until done; its /checkpoints."""
    answer = client.predict(MICRO, api_name="/launch")
    assert answer.get("run") == RUN, answer
    final = wait_for(
        lambda: (s := client.predict(RUN, api_name="/status"))["state"] not in ("running", "stopping") and s,
        240,
        "the micro run to end",
        poll=1.0,
    )
    assert final["state"] == "done" and final["step"] == 6, final
    return client.predict(RUN, api_name="/checkpoints")


def test_view_api_lists_exactly_the_named_endpoints(client: Client):
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {f"/{name}" for name in api.ENDPOINTS}
    assert not info["unnamed_endpoints"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert params == [
        "model",
        "prompt",
        "temperature",
        "top_k",
        "top_p",
        "max_new_tokens",
        "seed",
        "num_samples",
        "stop",
        "mode",
    ]


def test_runs_status_and_checkpoints_of_a_launched_run(client: Client, trained: list[dict]):
    assert [(c["step"], c["latest"]) for c in trained] == [(3, False), (6, True)]
    assert all(c["model"] == f"{RUN}/ckpt/{c['name']}" and c["val_loss"] > 0 for c in trained)
    (run,) = client.predict(api_name="/runs")
    assert run["name"] == RUN and run["state"] == "done" and run["step"] == 6 and run["loss"] > 0
    resumed = client.predict(RUN, api_name="/resume")
    assert not resumed["ok"] and RUN in resumed["message"], resumed


def test_generate_streams_what_core_generates_for_the_same_seed(client: Client, runs_dir: Path, trained: list[dict]):
    model = trained[0]["model"]  # the older checkpoint: a checkpoint, not only a run, can be named
    prompt, stop = "ROMEO:", ["\n\n"]
    job = client.submit(model, prompt, 0.9, 20, 0.95, 24, 1234, 2, stop, api_name="/generate")
    final = job.result()
    streamed = job.outputs()
    ours, _ = load_weights(runs_dir / model)
    cfg = SamplingConfig(
        max_new_tokens=24, temperature=0.9, top_k=20, top_p=0.95, seed=1234, num_samples=2, stop=tuple(stop)
    )
    assert final == generate(ours, prompt, cfg)
    assert len(streamed) > 1 and streamed[-1] == final
    assert all(text.startswith(before) for early in streamed for text, before in zip(final, early))
    # A speed mode reaches core.generation: the same text as core in that mode.
    int8 = client.predict(model, prompt, 0.9, 20, 0.95, 24, 1234, 2, stop, "int8", api_name="/generate")
    assert int8 == generate(ours, prompt, dataclasses.replace(cfg, mode="int8"))


def test_next_token_probs_equal_the_filtered_softmax(client: Client, runs_dir: Path, trained: list[dict]):
    got = client.predict(RUN, "To be, or not", 0.7, 5, 1.0, 8, api_name="/next_token_probs")
    model, _ = load_weights(runs_dir / RUN)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_tokens("To be, or not")])).logits[0, -1]
    sampled = filter_probs(logits[None], SamplingConfig(temperature=0.7, top_k=5))[0]
    top = torch.topk(logits, 8).indices.tolist()
    assert [c["token"] for c in got] == top and [c["text"] for c in got] == [token_str(t) for t in top]
    np.testing.assert_allclose([c["probability"] for c in got], sampled[top].tolist(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([c["model_probability"] for c in got], logits.softmax(-1)[top].tolist(), rtol=1e-5)
    assert sum(c["probability"] for c in got[:5]) == pytest.approx(1.0) and got[5]["probability"] == 0


def test_attention_equals_core_attention(client: Client, runs_dir: Path, trained: list[dict]):
    text = "the cat sat. the cat sat."
    got = client.predict(RUN, text, 1, 1, api_name="/attention")
    model, _ = load_weights(runs_dir / RUN)
    ref = attention_maps(model, encode(text))
    assert got["tokens"] == ref.tokens and got["labels"] == ref.labels
    assert (got["n_layer"], got["n_head"], got["layer"], got["head"]) == (2, 2, 1, 1)
    np.testing.assert_allclose(got["map"], ref.probs[1, 1], atol=1e-6)
    np.testing.assert_allclose(got["entropy"], ref.entropy, atol=1e-6)
    np.testing.assert_allclose(got["previous_token"], previous_token_scores(ref.probs), atol=1e-6)
    np.testing.assert_allclose(got["induction"], induction_scores(ref.probs, ref.tokens), atol=1e-6)
    no_repeat = client.predict(RUN, "one two", api_name="/attention")
    assert no_repeat["induction"] == [[None, None], [None, None]]  # JSON has no NaN


def test_export_equals_the_metrics_file_as_csv_and_jsonl(client: Client, runs_dir: Path, trained: list[dict]):
    for fmt in ("csv", "jsonl"):
        assert client.predict(RUN, fmt, api_name="/export") == export_records(runs_dir / RUN / "metrics.jsonl", fmt)


def test_refusals_are_one_line_messages(client: Client):
    bad_lr = client.predict({"preset": "micro", "lr": -1}, api_name="/launch")
    assert bad_lr == {"error": "lr must be > 0", "field": "lr"}
    assert client.predict({"preset": "gpt5"}, api_name="/launch")["field"] == "preset"
    assert client.predict({"preset": "micro", "typo": 1}, api_name="/launch")["field"] == "typo"
    for args, name, words in (
        (("nope",), "/status", "no run named 'nope'"),
        (("nope", "hi"), "/generate", "'nope'"),
        ((RUN, "hi", 0.5, None, 1.0, 9999), "/generate", "max_new_tokens must be between 1 and 2048"),
        ((RUN, "hi", 0.5, None, 1.0, 9, None, 1, None, "fp8"), "/generate", "mode must be one of default, compiled"),
        ((RUN, "hi", -1.0), "/next_token_probs", "temperature"),
        ((RUN, ""), "/attention", "text is empty"),
        ((RUN, "xml"), "/export", "format must be one of csv, jsonl"),
    ):
        with pytest.raises(Exception, match=words) as e:
            client.predict(*args, api_name=name)
        assert "Traceback" not in str(e.value)


def test_stop_and_resume_a_run(client: Client, runs_dir: Path, trained: list[dict]):
    long = {**MICRO, "run_name": "api-long", "max_steps": 100_000, "ckpt_interval": 0, "eval_interval": 0}
    assert client.predict(long, api_name="/launch").get("run") == "api-long"
    wait_for(lambda: (client.predict("api-long", api_name="/status")["step"] or 0) > 0, 120, "a first step")
    refused = client.predict("api-long", 0, api_name="/stop")  # timeout_s
    assert not refused["ok"] and "Stop timeout must be between 1 and" in refused["message"], refused
    assert client.predict("api-long", api_name="/status")["state"] == "running"
    stopped = client.predict("api-long", 60, api_name="/stop")
    assert stopped["ok"], stopped
    wait_for(lambda: client.predict("api-long", api_name="/status")["state"] == "stopped", 120, "the stop", poll=0.5)
    resumed = client.predict("api-long", api_name="/resume")
    assert resumed["ok"], resumed
    assert client.predict("api-long", api_name="/status")["state"] == "running"
    stopped = client.predict("api-long", api_name="/stop")
    assert stopped["ok"], stopped
    wait_for(lambda: client.predict("api-long", api_name="/status")["state"] == "stopped", 120, "the second stop")


def test_an_exposed_app_launches_only_allowed_paths(tmp_path: Path):
    runs = tmp_path / "runs"
    ctx = AppContext.for_runs_dir(runs, AccessPolicy.for_app(runs, exposed=True))
    outside = tmp_path / "outside.txt"
    outside.write_text("secret text")
    for config, field in (
        ({"data": str(outside)}, "data"),
        ({"val_data": str(outside)}, "val_data"),
        ({"data": "hf:some/dataset"}, "data"),
        ({"init_from": str(tmp_path)}, "init_from"),
        ({"data_cache": str(tmp_path / "cache")}, "data_cache"),
    ):
        answer = api.launch(ctx, {"preset": "micro", **config})
        assert answer["field"] == field and "shared" in answer["error"], answer
    assert not any(runs.iterdir())  # nothing was launched


@pytest.fixture
def auth_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(AUTH_ENV, "alice:s3cret")  # app.py's login, as --auth-file gives it
    servers = AppServers(tmp_path)
    try:
        yield servers()
    finally:
        servers.stop_all()


def test_a_login_protects_the_api(auth_server: str):
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a plain ValueError or an HTTP error)
        Client(auth_server, verbose=False).predict(api_name="/runs")
    assert Client(auth_server, auth=("alice", "s3cret"), verbose=False).predict(api_name="/runs") == []
