"""UI callbacks without a browser: form validation, command preview, figures from real metrics files, models tab."""

from __future__ import annotations

import inspect
import io
import json
import math
import shlex
from contextlib import redirect_stdout
from pathlib import Path

import gradio as gr
import gradio.utils
import pandas as pd
import pytest
import torch

import app
from core import jobs as jobs_cli
from core.checkpoint import list_checkpoints, save_checkpoint
from core.config import ConfigError, TrainConfig, model_config
from core.jobs import DeviceBusy, Jobs, JobStatus
from core.metrics import MetricsWriter, read_all
from core.model import GPT
from playground import actions, figures, models_tab, monitor_tab, train_tab
from playground.app import build_ui
from playground.tab import AppContext, bind
from playground.train_tab import DEFAULTS, form_to_config
from tests.helpers import wait_for


def form(**overrides):
    return {**DEFAULTS, **overrides}


# ----- Train tab: parameter count, validation next to the field, command preview ---------------------------------


@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_param_count_matches_the_model(preset):
    mc = model_config(preset)
    assert train_tab.param_count(mc) == GPT(mc).num_params()


def test_param_counts_of_the_gpt2_family_without_building_them():
    # The published Hugging Face parameter counts of GPT-2 small, medium, large and XL.
    expected = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    assert {p: train_tab.param_count(model_config(p)) for p in expected} == expected
    assert train_tab.preset_summary("gpt2").startswith("124M parameters · 12 layers · 12 heads")


def test_defaults_make_a_valid_cpu_config(tmp_path):
    cfg = form_to_config(form(), tmp_path)
    assert (cfg.preset, cfg.device, cfg.nproc, cfg.data) == ("tiny", "cpu", 1, "shakespeare")
    assert "**2,048 tokens / step**" in train_tab.batch_summary(cfg)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"total_batch_tokens": 3000}, "total_batch_tokens", "must be a multiple of"),
        ({"seq_len": 4096}, "seq_len", "block_size"),
        ({"min_lr": 0.5}, "min_lr", "between 0 and lr"),
        ({"lr": 0}, "lr", "lr must be > 0"),
        ({"batch_size": None}, "batch_size", "is empty"),
        ({"run_name": "../escape"}, "run_name", "contains '/'"),
        ({"data_source": "local", "data_path": "/no/such/corpus.txt"}, "data_path", "not found"),
        ({"data_source": "local", "data_path": ""}, "data_path", "empty"),
        ({"data_source": "hf", "hf_dataset": ""}, "hf_dataset", "empty"),
        ({"device": "cpu-ddp", "nproc": 1}, "nproc", "2 to 64"),
        ({"init_from": "/no/such/checkpoint"}, "init_from", "not found"),
        ({"seed": -5}, "seed", "seed must be >= 0"),
        ({"batch_size": 2.5}, "batch_size", "batch size must be a whole number, got 2.5; e.g. 2"),
        ({"max_steps": float("inf")}, "max_steps", "must be a finite number"),
        ({"sample_interval": -5}, "sample_interval", "sample_interval must be >= 0"),
        ({"total_batch_tokens": -5}, "total_batch_tokens", "total_batch_tokens must be >= 0"),
    ],
)
def test_invalid_settings_name_their_field(tmp_path, overrides, field, words):
    with pytest.raises(ConfigError) as e:
        form_to_config(form(**overrides), tmp_path)
    assert e.value.field == field
    assert words in str(e.value)


def test_an_empty_corpus_is_refused_by_the_form(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "folder").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "folder" / name).write_text("")
    with pytest.raises(ConfigError, match=r"empty\.txt is empty \(0 bytes\)") as e:
        form_to_config(form(data_source="local", data_path=str(tmp_path / "empty.txt")), tmp_path)
    assert e.value.field == "data_path"
    folder = form(data_source="local", data_path=str(tmp_path / "folder"))
    form_to_config(folder, tmp_path)  # the live preview does not list a folder
    with pytest.raises(ConfigError, match="all 2 files in .* are empty"):
        form_to_config(folder, tmp_path, list_files=True)  # launch does


def test_batch_tokens_error_suggests_a_fix_and_accumulation_is_shown(tmp_path):
    with pytest.raises(ConfigError, match=r"try 4096"):
        form_to_config(form(total_batch_tokens=5000), tmp_path)
    cfg = form_to_config(form(total_batch_tokens=8192, device="cpu-ddp", nproc=2), tmp_path)
    assert cfg.grad_accum_steps(2) == 2
    summary = train_tab.batch_summary(cfg)
    assert "**2** accumulation steps" in summary and "× 2 processes" in summary and "8,192 tokens / step" in summary


def test_fsdp_is_offered_with_several_processes_only(tmp_path):
    cfg = form_to_config(form(device="cpu-ddp", nproc=2, parallel="fsdp"), tmp_path)
    assert cfg.parallel == "fsdp" and "× 2 processes (FSDP)" in train_tab.batch_summary(cfg)
    assert "--parallel fsdp" in train_tab.command_preview(cfg, Jobs(tmp_path))
    assert form_to_config(form(device="cpu", parallel="fsdp"), tmp_path).parallel == "ddp"  # one process: plain
    with pytest.raises(ConfigError, match="parallel must be ddp or fsdp") as e:
        form_to_config(form(device="cpu-ddp", nproc=2, parallel="zero"), tmp_path)
    assert e.value.field == "parallel"


def test_local_data_path_is_accepted(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 50)
    cfg = form_to_config(form(batch_size=8.0, seq_len=64.0), tmp_path)  # Gradio sends whole numbers as floats
    assert (cfg.batch_size, cfg.seq_len) == (8, 64) and isinstance(cfg.batch_size, int)
    assert form_to_config(form(data_source="local", data_path=str(corpus)), tmp_path).data == str(corpus)
    cfg = form_to_config(form(data_source="hf", hf_dataset="roneneldan/TinyStories", hf_config=""), tmp_path)
    assert (cfg.data, cfg.data_config, cfg.data_token_budget) == ("hf:roneneldan/TinyStories", None, 10_000_000)


def test_command_preview_is_the_launch_command(tmp_path):
    cfg = form_to_config(form(run_name="ddp-run", device="cpu-ddp", nproc=2, preset="micro", seq_len=32), tmp_path)
    text = train_tab.command_preview(cfg, Jobs(tmp_path))
    exact = Jobs(tmp_path).command_line(cfg)
    assert exact in text
    assert "torch.distributed.run" in exact and "--nproc_per_node=2" in exact
    assert str(tmp_path / "ddp-run" / "config.json") in exact


def test_terminal_line_reproduces_the_same_launch(tmp_path):
    cfg = form_to_config(form(run_name="term", preset="micro", seq_len=32, max_steps=7, lr=3e-4), tmp_path)
    terminal = shlex.split(train_tab.command_preview(cfg, Jobs(tmp_path)).splitlines()[-1])
    assert terminal[:3] == ["python", "-m", "core.jobs"] and "--preset" in terminal and "--max-steps" in terminal
    out = io.StringIO()
    with redirect_stdout(out):
        assert jobs_cli.main([*terminal[3:], "--dry-run"]) == 0
    assert out.getvalue().strip() == Jobs(tmp_path).command_line(cfg)


def test_field_states_mark_only_the_bad_field():
    by_name = train_tab.field_states("micro", ConfigError("lr must be > 0", field="lr"))
    assert list(by_name) == train_tab.FIELDS
    assert by_name["preset"]["info"].startswith("1.63M parameters · 2 layers")
    assert by_name["lr"]["elem_classes"] == ["field-error"] and "lr must be > 0" in by_name["lr"]["info"]
    assert by_name["batch_size"]["elem_classes"] == [] and by_name["batch_size"]["info"] == "Sequences per process"
    # An error about a field the form does not show marks no field (its message goes next to the Launch button).
    unshown = train_tab.field_states("micro", ConfigError("beta1 must be in [0, 1)", field="beta1"))
    assert all(u["elem_classes"] == [] for u in unshown.values())


# ----- figures from a real metrics file ----------------------------------------------------------------------------


def write_run(path: Path, steps: int, base: float = 5.0, eval_every: int = 10, t0: float = 0.0) -> list[dict]:
    w = MetricsWriter(path)
    w.write("status", state="running", step=0, total_steps=steps)
    for s in range(1, steps + 1):
        loss = base * math.exp(-s / steps) + 0.1 * math.sin(s)
        w.write(
            "train",
            step=s,
            total_steps=steps,
            tokens=s * 256,
            loss=loss,
            lr=1e-3,
            grad_norm=1.0 / s,
            tok_per_s=1000.0,
            mfu=None,
            elapsed=float(s),
        )
        if s % eval_every == 0:
            w.write("eval", step=s, val_loss=loss + 0.2)
    w.write("sample", step=steps, text="ROMEO: hello")
    w.close()
    return read_all(path)


def test_ema_is_tensorboards_debiased_average():
    assert figures.ema([2.0, 4.0], 0.0) == [2.0, 4.0]
    out = figures.ema([2.0, None, 4.0], 0.5)
    assert out[0] == pytest.approx(2.0)  # debiasing: the first point is the raw value, not 2 * (1 - s)
    assert out[1] is None
    assert out[2] == pytest.approx((0.5 * 0.5 * 2 + 0.5 * 4) / (1 - 0.25))
    with pytest.raises(ValueError):
        figures.ema([1.0], 1.0)


def test_loss_figure_from_metrics_file(tmp_path):
    records = write_run(tmp_path / "metrics.jsonl", 50)
    fig = figures.loss_figure({"run": records}, smoothing=0.6)
    raw, smooth, val = fig.data
    assert len(raw.x) == 50 and raw.opacity < 0.5
    expected = figures.ema([r["loss"] for r in records if r["kind"] == "train"], 0.6)
    assert list(smooth.y) == pytest.approx(expected)
    assert list(val.x) == [10, 20, 30, 40, 50] and val.mode == "lines+markers"
    assert fig.layout.uirevision == "loss" and fig.layout.yaxis.type == "linear"
    assert figures.loss_figure({"run": records}, log_y=True).layout.yaxis.type == "log"


def test_x_axis_tokens_and_time(tmp_path):
    records = write_run(tmp_path / "metrics.jsonl", 20)
    fig = figures.loss_figure({"run": records}, x_axis="tokens")
    assert list(fig.data[2].x) == [10 * 256, 20 * 256]  # eval points placed at the tokens of their step
    assert fig.layout.xaxis.title.text == "Tokens"
    fig = figures.loss_figure({"run": records}, x_axis="time")
    assert all(x >= 0 for x in fig.data[0].x) and fig.layout.xaxis.title.text == "Wall time (min)"


def test_downsampling_keeps_first_last_and_spikes():
    n = 20_000
    values = [1.0] * n
    values[12_345] = 50.0  # a loss spike must survive thinning
    keep = figures.downsample_indices(n, 500, values)
    assert keep[0] == 0 and keep[-1] == n - 1 and 12_345 in keep and len(keep) <= 500
    assert figures.downsample_indices(10, 500) == list(range(10))


def test_long_run_draws_few_points_but_keeps_the_data(tmp_path):
    records = write_run(tmp_path / "metrics.jsonl", 5000, eval_every=1000)
    fig = figures.loss_figure({"run": records}, max_points=400)
    assert len(fig.data[0].x) <= 400 and fig.data[0].x[0] == 1 and fig.data[0].x[-1] == 5000
    assert sum(r["kind"] == "train" for r in records) == 5000


def test_comparing_two_runs(tmp_path):
    a = write_run(tmp_path / "a.jsonl", 30, base=5.0)
    b = write_run(tmp_path / "b.jsonl", 20, base=4.0)
    fig = figures.loss_figure({"a": a, "b": b})
    names = [t.name for t in fig.data]
    assert "a loss" in names and "b loss" in names and "a val" in names and "b val" in names
    colors = {t.legendgroup: t.line.color for t in fig.data}
    assert colors["a"] != colors["b"]
    health = figures.health_figure({"a": a, "b": b})
    titles = [ann.text for ann in health.layout.annotations]
    assert titles == ["Learning rate", "Gradient norm", "Tokens / s"]  # no MFU panel: the trainer did not know it


def test_health_figure_shows_mfu_in_percent_when_known(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl")
    for s in (1, 2):
        w.write("train", step=s, tokens=s, loss=3.0, lr=1e-3, grad_norm=1.0, tok_per_s=10.0, mfu=0.42)
    w.close()
    fig = figures.health_figure({"r": read_all(tmp_path / "m.jsonl")})
    assert fig.layout.annotations[-1].text == "MFU (%)"
    assert list(fig.data[-1].y) == pytest.approx([42.0, 42.0])


def test_a_run_that_failed_after_one_step_shows_its_point_and_why(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl")
    w.write("train", step=1, tokens=64, loss=10.8, lr=1e-3, grad_norm=2.0, tok_per_s=10.0)
    w.write("status", state="failed", step=1, message="CUDA out of memory.\nTried to allocate 2 GiB")
    w.close()
    records = read_all(tmp_path / "m.jsonl")
    fig = figures.loss_figure({"run": records}, log_y=True)
    assert "markers" in fig.data[0].mode and "markers" in figures.health_figure({"run": records}).data[0].mode
    assert [a.text for a in fig.layout.annotations] == ["failed at step 1: CUDA out of memory."]
    assert fig.layout.yaxis.tickformat == "~g"  # log ticks print 0.3, not "3"
    assert figures.failures({"a": records, "b": []}) == ["a failed at step 1: CUDA out of memory."]
    only_status = [r for r in records if r["kind"] == "status"]
    assert "failed at step 1" in figures.loss_figure({"run": only_status}).layout.annotations[0].text


def test_empty_run_gets_a_message_not_an_empty_axis():
    fig = figures.loss_figure({"run": []})
    assert "No training steps recorded yet" in fig.layout.annotations[0].text


# ----- Monitor tab: incremental reading, status card ----------------------------------------------------------------


def test_monitor_reads_only_new_lines(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(run_name="r1").to_dict()))
    w = MetricsWriter(run / "metrics.jsonl")
    for s in range(3):
        w.write("train", step=s, loss=1.0)
    cache = monitor_tab.MonitorCache()
    jobs = Jobs(tmp_path)
    records, new = monitor_tab.read_runs(jobs, cache, ["r1"])
    assert new == 3 and len(records["r1"]) == 3
    w.write("train", step=3, loss=1.0)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a record being written: left for the next tick
    records, new = monitor_tab.read_runs(jobs, cache, ["r1"])
    assert new == 1 and [r["step"] for r in records["r1"]] == [0, 1, 2, 3]
    _, new = monitor_tab.read_runs(jobs, cache, ["r1", "missing-run"])
    assert new == 0


def test_status_card():
    st = JobStatus(
        name="r<1>",
        state="failed",
        step=50,
        total_steps=200,
        tokens=12800,
        loss=2.5,
        val_loss=2.7,
        tok_per_s=1234.0,
        elapsed=75,
        message="CUDA out of memory <boom>",
    )
    html = monitor_tab.status_html(st)
    assert "data-state='failed'" in html and "50 / 200" in html and "width:25.0%" in html
    assert "&lt;boom&gt;" in html and "r&lt;1&gt;" in html and "1m 15s" in html and "2.7000" in html
    assert "No run selected" in monitor_tab.status_html(None)
    sharded = JobStatus(name="xl", state="running", device="cuda", nproc=2, parallel="fsdp", mem_mb=[20480.4, 20101])
    html = monitor_tab.status_html(sharded)
    assert "cuda × 2 FSDP" in html and "memory per rank" in html and "20,480 · 20,101 MB" in html
    assert "<span>memory</span><b>812 MB</b>" in monitor_tab.status_html(
        JobStatus(name="a", state="done", mem_mb=[812])
    )
    assert monitor_tab.last_sample([{"kind": "sample", "step": 9, "text": "hi"}]) == "[step 9]\nhi"


# ----- Models tab: list, export, import, delete (real checkpoints and files) ----------------------------------------


def test_models_tab_list_export_import_delete(tmp_path):
    runs = tmp_path / "runs"
    jobs = Jobs(runs)
    torch.manual_seed(0)
    model = GPT(model_config("micro"))
    save_checkpoint(runs / "mine", 10, model, {"val_loss": 3.25})
    TrainConfig(run_name="mine", preset="micro").to_json(runs / "mine" / "config.json")
    rows = models_tab.checkpoint_rows(jobs)
    assert rows[0][:8] == ["mine", "done", "micro", "step-000010", 10, "3.2500", "—", "—"]
    assert rows[0][8].endswith(" MB")

    ckpt = str(list_checkpoints(runs / "mine")[-1])
    assert models_tab.checkpoint_choices(jobs) == [("mine / step-000010", ckpt)]
    msg = models_tab.export_checkpoint(jobs, ckpt, "")
    out = runs / "mine" / "hf-step-000010"
    assert msg.startswith("✅") and (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert models_tab.export_checkpoint(jobs, str(tmp_path), "").startswith("⚠")  # not a checkpoint of a run

    msg, path = models_tab.import_model(jobs, str(out), "reimported")
    assert msg.startswith("✅") and path == runs / "reimported"
    assert {r[0] for r in models_tab.checkpoint_rows(jobs)} == {"mine", "reimported"}
    msg, path = models_tab.import_model(jobs, "no-such-org/no-such-model", "x")
    assert path is None and "Import failed" in msg and "offline" in msg
    assert "already exists" in models_tab.import_model(jobs, str(out), "reimported")[0]

    refused = actions.delete_run(jobs, "../outside")
    assert not refused.ok and "Not deleted" in refused.message
    assert actions.delete_run(jobs, "reimported") == actions.Outcome(True, "Deleted **reimported**.")
    assert not (runs / "reimported").exists() and (runs / "mine").exists()


# ----- the tab contract: bound callbacks, outputs keyed by component, shared run actions ---------------------------


def test_bind_keeps_name_signature_and_event_hints():
    def pick(tab, ctx, rows: list, evt: gr.SelectData) -> tuple:
        return tab, ctx, rows, evt

    bound = bind(pick, "T", "C")
    assert bound.__name__ == "pick"  # Gradio names the API endpoint after it
    assert list(inspect.signature(bound).parameters) == ["rows", "evt"]
    assert gradio.utils.get_type_hints(bound)["evt"] is gr.SelectData  # so Gradio passes the event data in
    assert bound([1], "e") == ("T", "C", [1], "e")

    def stream(prefix, n):
        yield from (f"{prefix}{i}" for i in range(n))

    streamed = bind(stream, "x")
    assert inspect.isgeneratorfunction(streamed) and list(streamed(2)) == ["x0", "x1"]


def test_actions_say_why_they_did_nothing(tmp_path):
    jobs = Jobs(tmp_path)
    for action in (actions.stop_run, actions.resume_run, actions.delete_run):
        assert not action(jobs, "no-such-run").ok
    assert actions.stop_run(jobs, None) == actions.Outcome(False, "Pick a run first.")
    assert actions.resume_run(jobs, "") == actions.Outcome(False, "Pick a run first.")
    assert "no run named 'ghost'" in actions.resume_run(jobs, "ghost").message
    save_checkpoint(tmp_path / "idle", 3, GPT(model_config("micro")), {})
    (tmp_path / "empty").mkdir()
    assert "no checkpoint" in actions.resume_run(jobs, "empty").message
    assert actions.stop_run(jobs, "idle") == actions.Outcome(False, "idle is already done: there is nothing to stop.")
    busy = actions.device_busy(DeviceBusy("cpu", "other", 42), actions.TICK_ALONGSIDE)
    assert busy.startswith("run 'other' is already training on cpu") and busy.endswith(
        "or tick *Allow alongside another job* (both jobs get slower)."
    )
    assert "Allow" not in actions.device_busy(DeviceBusy("cuda", "other", 42), actions.TICK_ALONGSIDE)
    asked = actions.confirm_delete(jobs, "idle")
    assert asked.ok and "Delete run **idle** with its 1 checkpoint," in asked.message
    assert actions.confirm_delete(jobs, None) == actions.Outcome(False, "Pick a run to delete.")


def built(tmp_path, module):
    """A tab built for real (inside Blocks) over a runs folder in tmp_path, and its context."""
    ctx = AppContext.for_runs_dir(tmp_path / "runs")
    with gr.Blocks():
        tab = module.build(ctx)
    return tab, ctx


def test_train_callbacks_put_errors_next_to_their_field(tmp_path):
    tab, ctx = built(tmp_path, train_tab)
    values = [form(total_batch_tokens=100)[name] for name in train_tab.FIELDS]
    out = train_tab.preview_form(tab, ctx, *values)
    assert out[tab["total_batch_tokens"]]["elem_classes"] == ["field-error"]
    assert out[tab["message"]] == "⚠ Fix the highlighted field before launching." and tab["command"] not in out

    (ctx.runs_dir / "taken").mkdir()  # a taken name is refused by core.jobs, next to the name field
    values = [form(run_name="taken", preset="micro", seq_len=32)[name] for name in train_tab.FIELDS]
    out = train_tab.launch_run(tab, ctx, *values)
    assert out[tab["run_name"]]["elem_classes"] == ["field-error"] and "already exists" in out[tab["run_name"]]["info"]
    assert out[tab["message"]].startswith("⚠ Not launched: a run named 'taken'") and tab["launched"] not in out
    assert train_tab.resume_picked_run(tab, ctx, "taken")[tab["run_md"]].startswith("⚠ Could not resume taken")
    assert train_tab.stop_picked_run(tab, ctx, None, 30) == {tab["run_md"]: "⚠ Pick a run first."}
    refused = train_tab.stop_picked_run(tab, ctx, "taken", 0)[tab["run_md"]]
    assert refused == "⚠ Stop timeout must be between 1 and 86400 seconds, got 0."
    watched = train_tab.watch_picked_run(tab, ctx, None, None)
    assert watched[tab["run_md"]] == "Pick a run to stop or resume it." and not watched[tab["manage_timer"]].active
    watched = train_tab.watch_picked_run(tab, ctx, "taken", None)  # a folder with no run in it: not active
    assert watched[tab["run_md"]].startswith("**unknown**") and not watched[tab["manage_timer"]].active
    assert watched[tab["labelled"]] == "unknown" and watched[tab["run_picker"]]["value"] == "taken"
    assert tab["run_picker"] not in train_tab.watch_picked_run(tab, ctx, "taken", "unknown")  # label up to date
    pickers = train_tab.refresh_run_pickers(tab, ctx, "gone", True)
    assert pickers[tab["run_picker"]]["value"] is None and pickers[tab["init_from"]]["choices"][0][1] == "scratch"
    follows = {"micro": {tab["seq_len"]: 32, tab["seq_len_follows"]: 32}}
    assert train_tab.follow_model(tab, ctx, "micro", "scratch", 128, 128) == follows["micro"]
    assert train_tab.follow_model(tab, ctx, "tiny", "scratch", 32, 32)[tab["seq_len"]] == 128  # it follows...
    assert train_tab.follow_model(tab, ctx, "tiny", "scratch", 16, 32) == gr.skip()  # ...unless typed
    assert train_tab.follow_model(tab, ctx, "micro", "scratch", 64, 128) == follows["micro"]  # typed, too long
    shown = train_tab.show_data_fields(tab, ctx, "hf")
    assert not shown[tab["data_path"]]["visible"] and shown[tab["hf_row"]]["visible"]
    assert train_tab.show_nproc(tab, ctx, "cpu-ddp")[tab["nproc"]]["visible"]
    assert train_tab.show_nproc(tab, ctx, "gpus-ddp")[tab["parallel"]]["visible"]
    assert not train_tab.show_nproc(tab, ctx, "cpu")[tab["parallel"]]["visible"]


def test_preview_sends_only_what_changed_since_the_last_view(tmp_path):
    tab, ctx = built(tmp_path, train_tab)
    first = train_tab.preview_form(tab, ctx, *[form()[n] for n in train_tab.FIELDS], None)
    assert all(tab[n] in first for n in train_tab.FIELDS)  # nothing shown yet: the whole form
    shown = first[tab["shown"]]
    steps = train_tab.preview_form(tab, ctx, *[form(max_steps=250)[n] for n in train_tab.FIELDS], shown)
    assert set(steps) == {tab["command"], tab["batch_md"], tab["shown"]} and "--max-steps 250" in steps[tab["command"]]
    shown = steps[tab["shown"]]
    bad = train_tab.preview_form(tab, ctx, *[form(max_steps=250, lr=0)[n] for n in train_tab.FIELDS], shown)
    assert set(bad) == {tab["lr"], tab["batch_md"], tab["message"], tab["shown"]}  # the last command stays
    assert bad[tab["lr"]]["elem_classes"] == ["field-error"] and bad[tab["shown"]].command == shown.command
    fixed = train_tab.preview_form(tab, ctx, *[form(max_steps=250)[n] for n in train_tab.FIELDS], bad[tab["shown"]])
    assert fixed[tab["lr"]] == {"__type__": "update", "info": "Peak, after warmup", "elem_classes": []}
    assert fixed[tab["message"]] == "" and tab["command"] not in fixed  # the same command as before the error
    long_path = form(data_source="local", data_path="x" * 20_000)
    out = train_tab.preview_form(tab, ctx, *[long_path[n] for n in train_tab.FIELDS])
    assert "20,000 characters long" in out[tab["data_path"]]["info"]


def test_launch_marks_the_run_for_monitor(tmp_path):
    train, ctx = built(tmp_path, train_tab)
    with gr.Blocks():
        monitor = monitor_tab.build(ctx)
    values = [
        form(run_name="short", preset="micro", seq_len=32, max_steps=2, eval_interval=0)[n] for n in train_tab.FIELDS
    ]
    try:
        out = train_tab.launch_run(train, ctx, *values)
        assert out[train["message"]].startswith("✅ Launched **short**")
        name, when = out[train["launched"]]  # a (run, time) tuple, not a string to split
        assert name == "short" and isinstance(when, float)
        shown = monitor_tab.show_launched_run(monitor, ctx, out[train["launched"]], ["short"])
        assert shown[monitor["run"]]["value"] == "short" and shown[monitor["compare"]]["value"] == []
        wait_for(lambda: not ctx.jobs.status("short").active, 120, "the 2-step run to end")
    finally:
        ctx.jobs.stop("short", timeout=5)
    assert monitor_tab.show_launched_run(monitor, ctx, None, []) == gr.skip()


def test_monitor_redraws_when_the_metrics_file_is_replaced(tmp_path):
    tab, ctx = built(tmp_path, monitor_tab)
    run = ctx.runs_dir / "r1"
    run.mkdir()
    TrainConfig(run_name="r1").to_json(run / "config.json")
    write_run(run / "metrics.jsonl", 20)
    view = ("r1", [], 0.6, "step", False)
    out = monitor_tab.refresh_monitor(tab, ctx, *view, None)
    cache = out[tab["cache"]]
    assert len(out[tab["loss_plot"]].data[0].x) == 20
    again = monitor_tab.refresh_monitor(tab, ctx, *view, cache)
    assert tab["loss_plot"] not in again  # nothing new: the plot (and its zoom) stays
    (run / "metrics.jsonl").unlink()  # deleted and launched again under the same name
    write_run(run / "metrics.jsonl", 5)
    replaced = monitor_tab.refresh_monitor(tab, ctx, *view, cache)
    assert len(replaced[tab["loss_plot"]].data[0].x) == 5 and len(cache.runs["r1"].records) == 1 + 5 + 1


def test_models_callbacks_pick_ask_and_delete(tmp_path):
    tab, ctx = built(tmp_path, models_tab)
    save_checkpoint(ctx.runs_dir / "old", 7, GPT(model_config("micro")), {})
    listing = models_tab.refresh_models(tab, ctx)
    rows = listing[tab["table"]]
    assert [r[:5] for r in rows] == [["old", "done", "—", "step-000007", 7]]
    picked = models_tab.pick_row(tab, ctx, rows, gr.SelectData(tab["table"], {"index": [0, 2], "value": "—"}))
    ckpt = str(ctx.runs_dir / "old" / "ckpt" / "step-000007")
    assert picked == {tab["run"]: "old", tab["ckpt"]: ckpt, tab["eval_ckpt"]: ckpt}  # to export and to evaluate
    # What the browser sends: the table as a DataFrame keyed by its headers, and the clicked row's cells.
    frame = pd.DataFrame(rows, columns=models_tab.COLUMNS)
    clicked = gr.SelectData(tab["table"], {"index": [0, 2], "value": "—", "row_value": rows[0]})
    assert models_tab.pick_row(tab, ctx, frame, clicked) == picked
    no_row_value = gr.SelectData(tab["table"], {"index": [0, 2], "value": "—"})
    assert models_tab.pick_row(tab, ctx, frame, no_row_value) == picked

    asked = models_tab.ask_to_delete(tab, ctx, "old")
    assert (
        asked[tab["confirm_box"]]["visible"] and "Delete run **old** with its 1 checkpoint" in asked[tab["confirm_md"]]
    )
    out = models_tab.delete_confirmed(tab, ctx, "old", ckpt)
    assert out[tab["delete_msg"]] == "🗑 Deleted **old**." and not out[tab["confirm_box"]]["visible"]
    assert out[tab["table"]] == [] and out[tab["ckpt"]]["value"] is None and not (ctx.runs_dir / "old").exists()
    assert models_tab.ask_to_delete(tab, ctx, "old")[tab["delete_msg"]].startswith("⚠ no run named 'old'")


def test_app_opens_each_tab_with_its_on_open_steps(tmp_path):
    demo = build_ui(tmp_path / "runs")
    loads = {i for i, fn in demo.fns.items() if any(event == "load" for _, event in fn.targets)}
    after_load = {fn.name for fn in demo.fns.values() if fn.trigger_after in loads}  # after the address is read
    assert {"open_from_address"} <= {demo.fns[i].name for i in loads}
    assert {"refresh_run_pickers", "refresh_run_choices", "refresh_models"} <= after_load
    followers = [fn for fn in demo.fns.values() if fn.name == "show_launched_run"]
    assert len(followers) == 1 and [e for _, e in followers[0].targets] == ["change"]


# ----- app.py flags -------------------------------------------------------------------------------------------------


def test_app_flags_and_exposure_warning():
    args = app.parse_args([])
    assert (args.host, args.port, args.runs_dir, args.share, args.auth) == (
        "127.0.0.1",
        7860,
        "checkpoints",
        False,
        None,
    )
    assert app.exposure_warning(args, []) is None
    assert "without a login" in app.exposure_warning(app.parse_args(["--host", "0.0.0.0"]), [])
    assert "public share link" in app.exposure_warning(app.parse_args(["--share"]), [])
    exposed = app.parse_args(["--host", "0.0.0.0", "--auth", "a:b"])
    assert app.exposure_warning(exposed, app.credentials(exposed, {})) is None
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "no-colon"])


def test_an_imported_model_shows_its_own_shape(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.hf import import_to_run

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64)).save_pretrained(tmp_path / "hf")
    run = import_to_run(tmp_path / "hf", tmp_path / "runs", "imp")
    assert TrainConfig.from_json(run / "config.json").preset == "micro"  # the nearest preset, not gpt2
    assert models_tab.model_label(run, "micro") == "2 layers × 64"
    assert models_tab.model_label(run.parent / "missing", "tiny") == "tiny"
    for init in (str(run), str(tmp_path / "hf")):  # a run and a Hugging Face folder: read without the weights
        cfg = form_to_config(form(init_from=init, seq_len=64), tmp_path / "runs")
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 2, 64, 64)
    with pytest.raises(ConfigError, match=r"block_size \(64\)"):
        form_to_config(form(init_from=str(run), seq_len=128), tmp_path / "runs")  # the weights' context counts
    hint = train_tab.model_hint(form(init_from=str(run)), tmp_path / "runs", train_tab.UNRESTRICTED)
    assert hint.startswith("imp's model: ") and "2 layers · 2 heads · width 64 · context 64" in hint
    assert train_tab.model_hint(form(preset="micro"), tmp_path, train_tab.UNRESTRICTED).startswith("1.63M parameters")


def test_a_failed_run_says_whether_it_can_be_resumed(tmp_path):
    jobs = Jobs(tmp_path)
    for name, with_checkpoint in (("kept", True), ("none", False)):
        if with_checkpoint:
            save_checkpoint(tmp_path / name, 4, GPT(model_config("micro")), {})
        (tmp_path / name).mkdir(exist_ok=True)
        TrainConfig(run_name=name, preset="micro").to_json(tmp_path / name / "config.json")
        w = MetricsWriter(tmp_path / name / "metrics.jsonl")
        w.write("status", state="failed", step=5, message="loss became nan at step 5: lower --lr")
        w.close()
    kept, none = jobs.status("kept"), jobs.status("none")
    assert kept.state == none.state == "failed"
    assert kept.message.startswith("loss became nan") and "checkpoint (step-000004) is kept" in kept.message
    assert "No checkpoint was saved, so there is nothing to resume" in none.message
    assert "nothing to resume" not in kept.message and "is kept" not in none.message


def test_monitor_ticks_send_only_what_changed(tmp_path):
    tab, ctx = built(tmp_path, monitor_tab)
    save_checkpoint(ctx.runs_dir / "done-run", 3, GPT(model_config("micro")), {})
    (ctx.runs_dir / "failed-run").mkdir()
    w = MetricsWriter(ctx.runs_dir / "failed-run" / "metrics.jsonl")
    w.write("status", state="failed", step=0, message="boom")
    w.close()
    opened = monitor_tab.refresh_run_choices(tab, ctx, "failed-run", ["done-run"], False)
    main = opened[tab["run"]]["value"]  # not picked by the user: the first run of the list
    assert main == monitor_tab.list_runs(ctx.jobs)[0].name
    assert [v for _, v in opened[tab["compare"]]["choices"]] == [n for n in ("done-run", "failed-run") if n != main]
    assert monitor_tab.refresh_run_choices(tab, ctx, "failed-run", [], True)[tab["run"]]["value"] == "failed-run"

    view = ("done-run", ["done-run", "failed-run"], 0.6, "step", False)
    first = monitor_tab.refresh_monitor(tab, ctx, *view, None)
    assert first[tab["compare"]]["value"] == ["failed-run"]  # the main run is left out of Compare with
    assert ("done-run  ·  done", "done-run") in first[tab["run"]]["choices"]
    timer = first[tab["timer"]]
    assert timer.active and timer.value == monitor_tab.IDLE_TICK_S  # nothing active: a slow look, never off
    cache = first[tab["cache"]]
    again = monitor_tab.refresh_monitor(tab, ctx, "done-run", ["failed-run"], 0.6, "step", False, cache)
    assert set(again) == {tab["cache"]}  # nothing changed: nothing re-rendered
    swapped = monitor_tab.refresh_monitor(tab, ctx, "failed-run", ["failed-run"], 0.6, "step", False, cache)
    assert swapped[tab["compare"]]["value"] == [] and "failed-run" not in str(swapped[tab["compare"]]["choices"])


def test_monitor_offers_the_runs_metrics_as_csv_and_jsonl(tmp_path):
    from core.metrics import MetricsWriter, export_records
    from playground import monitor_tab
    from playground.tab import AppContext, Tab

    ctx = AppContext.for_runs_dir(tmp_path)
    w = MetricsWriter(tmp_path / "m" / "metrics.jsonl")
    w.write("train", step=1, loss=5.0)
    w.write("eval", step=1, val_loss=5.5)
    w.close()
    tab = Tab("monitor", {"download_csv": object(), "download_jsonl": object()})
    out = monitor_tab.metrics_files(tab, ctx, "m")
    for fmt in ("csv", "jsonl"):
        shown = Path(out[tab[f"download_{fmt}"]]).read_text()
        assert shown == export_records(tmp_path / "m" / "metrics.jsonl", fmt)
    assert set(monitor_tab.metrics_files(tab, ctx, None).values()) == {None}


def test_monitor_keeps_a_bounded_number_of_records_per_run():
    from playground.monitor_tab import thin_records

    records = [{"kind": "train", "step": i} for i in range(1, 11)] + [{"kind": "eval", "step": 10}]
    kept = thin_records(records)
    assert [r["step"] for r in kept if r["kind"] == "train"] == [1, 3, 5, 7, 9, 10]
    assert kept[-1] == {"kind": "eval", "step": 10}
