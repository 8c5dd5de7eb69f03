"""Issue 17 (Train, Monitor, Models, app shell): what a new user met, reproduced in a real Chromium against a real
`python app.py`, one test per item."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from core.checkpoint import save_checkpoint
from core.config import TrainConfig, model_config
from core.hf import import_to_run
from core.jobs import STOP_TIMEOUT_S, Jobs
from core.metrics import MetricsWriter
from core.model import GPT
from tests.browser.test_train_monitor import pick, plot_points
from tests.helpers import MICRO, run_cmd, train_cmd, wait_for

pytestmark = pytest.mark.browser

ADVANCED = "Evaluation, checkpoints, precision, seed"


def open_train(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#launch-btn")
    page.get_by_text(ADVANCED).click()


def field_input(page, field: str):
    return page.locator(f"#train-{field} input, #train-{field} textarea").first


def no_gradio_errors(page) -> None:
    """Gradio's own rejection shows as an 'Error' badge on the outputs and a toast; the app's never does."""
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert page.get_by_text("Error", exact=True).count() == 0


# ----- 1: out-of-range numbers get the app's message under their field ---------------------------------------------


NEGATIVE = {
    "batch-size": "batch_size must be >= 1",
    "seq-len": "must be between 1 and",
    "total-batch-tokens": "total_batch_tokens must be >= 0",
    "max-steps": "max_steps must be >= 1",
    "warmup-steps": "warmup_steps must be >= 0",
    "eval-interval": "eval_interval must be >= 0",
    "ckpt-interval": "ckpt_interval must be >= 0",
    "sample-interval": "sample_interval must be >= 0",
    "seed": "seed must be >= 0",
}


def test_negative_numbers_get_a_message_under_their_field(app_server, page):
    open_train(page, app_server())
    for field, words in NEGATIVE.items():
        box = field_input(page, field)
        good = box.input_value()
        box.fill("-5")
        error = page.locator(f"#train-{field}.field-error")
        error.wait_for()
        assert words in error.inner_text()
        page.click("#launch-btn")
        page.locator("#train-message", has_text=words).wait_for()
        assert "Not launched" in page.locator("#train-message").inner_text()
        assert page.locator(".field-error").count() == 1  # only this field is marked
        no_gradio_errors(page)
        box.fill(good)
        error.wait_for(state="detached")


# ----- 2: a click on a Models table row fills the Delete and Export pickers ----------------------------------------


def saved_run(runs: Path, name: str, step: int = 7, preset: str = "micro") -> None:
    """A finished run folder with one real checkpoint, made without training."""
    save_checkpoint(runs / name, step, GPT(model_config(preset)), {"val_loss": 3.5})
    TrainConfig(run_name=name, preset=preset).to_json(runs / name / "config.json")


def test_clicking_a_models_row_picks_its_run_and_checkpoint(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    saved_run(runs, "picked-run", step=7)
    saved_run(runs, "other-run", step=9)  # two runs: a picker cannot hold the clicked one by chance
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table >> text=step-000009 >> visible=true").first.wait_for()
    # Once the tab has opened (its refresh picks the newest run and says so in the address): a click during the
    # refresh can still be overwritten by it (a known limit), which is not what this test is about.
    page.wait_for_url(re.compile(r"run=other-run"))
    page.locator("#models-table >> text=step-000007 >> visible=true").first.click()
    page.wait_for_function("() => document.querySelector('#delete-run input').value === 'picked-run'")
    page.wait_for_function("() => document.querySelector('#export-ckpt input').value === 'picked-run / step-000007'")
    no_gradio_errors(page)


# ----- 3, 4, 5: the live preview keeps up with typing and always shows the final value -----------------------------


def type_into(page, field: str, text: str) -> None:
    """Replace a field's value key by key, as fast as the page takes keys (each key is an input event)."""
    box = field_input(page, field)
    box.click()
    box.press("Control+a")
    box.press_sequentially(text, delay=0, timeout=300_000)


def test_preview_shows_the_final_value_of_fast_typing(app_server, page):
    open_train(page, app_server())
    type_into(page, "max-steps", "250")
    page.locator("#command-preview", has_text="--max-steps 250").wait_for(timeout=15_000)
    type_into(page, "run-name", "bad name#")
    page.locator("#train-run-name.field-error", has_text="'bad name#' contains ' #'").wait_for(timeout=15_000)
    type_into(page, "run-name", "a-name-typed-quickly")
    page.locator("#command-preview", has_text="/a-name-typed-quickly/config.json").wait_for(timeout=15_000)
    assert page.locator(".field-error").count() == 0


def test_field_warnings_clear_once_the_value_is_fixed(app_server, page):
    open_train(page, app_server())
    for field, bad, good in (("lr", "0", "0.002"), ("weight-decay", "-1", "0.05"), ("warmup-steps", "-10", "20")):
        type_into(page, field, bad)
        page.locator(f"#train-{field}.field-error").wait_for()
        type_into(page, field, good)
        page.locator(f"#train-{field}.field-error").wait_for(state="detached", timeout=15_000)
    page.get_by_label("Hugging Face dataset").check()
    page.locator("#train-hf-dataset.field-error", has_text="dataset name is empty").wait_for()
    type_into(page, "hf-dataset", "roneneldan/TinyStories")
    page.locator("#train-hf-dataset.field-error").wait_for(state="detached", timeout=15_000)
    page.locator("#command-preview", has_text="--data hf:roneneldan/TinyStories").wait_for()


def test_long_data_path_typed_key_by_key_keeps_the_page_responsive(app_server, page):
    open_train(page, app_server())
    page.get_by_label("Local file or folder").check()
    box = field_input(page, "data-path")
    box.fill("x" * 20_000)  # a paste: one input event
    page.locator("#train-data-path.field-error", has_text="20,000 characters").wait_for()
    previews = []
    page.on("request", lambda r: previews.append(r.url) if "/run/predict" in r.url or "/queue/join" in r.url else None)
    box.press("End")
    box.press_sequentially("y" * 300, delay=0, timeout=300_000)
    typed = time.monotonic()
    page.locator("#train-data-path.field-error", has_text="20,300 characters").wait_for(timeout=15_000)
    behind = time.monotonic() - typed
    assert behind < 5, f"the field message came {behind:.1f}s after the last key"
    assert len(previews) < 100, f"{len(previews)} previews for 300 keys: not debounced"
    assert "yyyy" not in page.locator("#command-preview").inner_text()  # the long text is not rendered live


# ----- 11: the form follows the model: preset -> sequence length, an imported model's own shape ---------------------


def imported_run(runs: Path, name: str) -> Path:
    """A 2-layer, 64-wide GPT-2 written by transformers and imported as a run (as the Models tab does)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = runs.parent / f"hf-{name}"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64)).save_pretrained(folder)
    return import_to_run(folder, runs, name)


def seq_len_is(page, value: str) -> None:
    page.wait_for_function("(v) => document.querySelector('#train-seq-len input').value === v", arg=value)


def test_the_form_follows_the_model(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    run_dir = imported_run(runs, "small-import")
    open_train(page, app_server(runs))
    pick(page, "train-preset", "micro")
    seq_len_is(page, "32")
    pick(page, "train-preset", "tiny")
    seq_len_is(page, "128")  # the sequence length follows the preset's context...
    type_into(page, "seq-len", "64")
    pick(page, "train-preset", "small")
    page.locator("#train-preset", has_text="6 layers").wait_for()
    seq_len_is(page, "64")  # ...unless the user set it
    assert page.locator(".field-error").count() == 0

    pick(page, "train-init-from", "small-import (step-000000)")
    preset = page.locator("#train-preset")
    preset.filter(has_text="2 layers · 2 heads · width 64 · context 64").wait_for()
    assert "small-import" in preset.inner_text()
    seq_len_is(page, "64")
    page.locator("#command-preview", has_text=f"--init-from {run_dir}").wait_for()

    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table >> text=small-import >> visible=true").first.wait_for()
    assert page.locator("#models-table >> text=2 layers × 64 >> visible=true").count() == 1
    assert page.locator("#models-table >> text=gpt2 >> visible=true").count() == 0


# ----- 14: a fraction in a whole-number field, an empty corpus, Stop on a finished run ------------------------------


def test_fractions_empty_files_and_stopping_a_finished_run_are_answered(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    saved_run(runs, "finished")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    open_train(page, app_server(runs))
    field_input(page, "batch-size").fill("2.5")
    page.locator("#train-batch-size.field-error", has_text="batch size must be a whole number, got 2.5").wait_for()
    field_input(page, "batch-size").fill("16")
    page.locator("#train-batch-size.field-error").wait_for(state="detached")

    page.get_by_label("Local file or folder").check()
    field_input(page, "data-path").fill(str(empty))
    page.locator("#train-data-path.field-error", has_text="is empty").wait_for()
    page.click("#launch-btn")
    page.locator("#train-message", has_text="Not launched").wait_for()
    assert len(list(runs.iterdir())) == 1  # nothing was launched

    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-status [data-state='done']")
    kill_after = page.locator("#monitor-stop-timeout input")
    assert float(kill_after.input_value()) == STOP_TIMEOUT_S
    kill_after.fill("0")
    page.click("#monitor-stop")
    page.locator(".toast-body", has_text="Stop timeout must be between 1 and 86400 seconds, got 0").wait_for()
    kill_after.fill("45")
    page.click("#monitor-stop")
    page.locator(".toast-body", has_text="finished is already done: there is nothing to stop").wait_for()


# ----- 12: a run that diverged before its first checkpoint says so -------------------------------------------------


def test_a_diverged_run_without_checkpoint_says_what_is_true(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    diverge = ["--lr", "1e4", "--warmup-steps", "0", "--grad-clip", "0", "--ckpt-interval", "0", "--eval-interval", "0"]
    out = run_cmd(train_cmd(runs, *MICRO, "--batch-size", "2", "--max-steps", "60", "--run-name", "nan", *diverge))
    assert out.returncode == 1 and "loss became" in out.stdout + out.stderr, out.stderr[-2000:]
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Monitor").click()
    failure = page.locator("#monitor-status .failure")
    failure.wait_for()
    assert "loss became" in failure.inner_text() and "No checkpoint was saved" in failure.inner_text()
    assert "checkpoint is kept" not in failure.inner_text()
    page.click("#monitor-resume")
    page.locator(".toast-body", has_text="no checkpoint to resume from").wait_for()


# ----- 13: a busy device: the refusal names the app's checkbox, not a CLI flag --------------------------------------


@pytest.fixture
def job(tmp_path):
    """start(runs, name): a micro job training for long in the background (stopped at teardown)."""
    started: list[tuple[Jobs, str]] = []

    def start(runs: Path, name: str) -> Jobs:
        jobs = Jobs(runs)
        cfg = TrainConfig(
            run_name=name,
            preset="micro",
            batch_size=2,
            max_steps=100_000,
            warmup_steps=2,
            eval_interval=0,
            ckpt_interval=0,
            device="cpu",
        )
        jobs.launch(cfg)
        started.append((jobs, name))
        return jobs

    yield start
    for jobs, name in started:
        jobs.stop(name, timeout=10)


def stopped_run(runs: Path, name: str) -> None:
    """A run that was stopped after its checkpoint: Resume would continue it."""
    saved_run(runs, name, step=3)
    w = MetricsWriter(runs / name / "metrics.jsonl")
    w.write("status", state="stopped", step=3, total_steps=100)
    w.close()


def test_a_busy_device_refusal_names_the_checkbox(app_server, page, tmp_path, job):
    runs = tmp_path / "runs"
    stopped_run(runs, "paused")
    job(runs, "busy")
    open_train(page, app_server(runs))
    page.click("#launch-btn")
    message = page.locator("#train-message", has_text="Not launched")
    message.wait_for()
    assert "'busy'" in message.inner_text() and "tick Allow alongside another job" in message.inner_text()
    assert "--allow-concurrent" not in message.inner_text()

    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-status [data-state]")  # opened: its pickers are filled
    pick(page, "monitor-run", "paused  ·  stopped")
    page.wait_for_selector("#monitor-status [data-state='stopped']")
    page.click("#monitor-resume")
    toast = page.locator(".toast-body", has_text="already training on cpu")
    toast.wait_for()
    assert "Allow alongside another job" in toast.inner_text() and "--allow-concurrent" not in toast.inner_text()


# ----- 6, 7, 8: pickers and labels follow the runs as they are now, in every browser tab ----------------------------


def failed_run(runs: Path, name: str) -> None:
    (runs / name).mkdir(parents=True)
    TrainConfig(run_name=name, preset="micro").to_json(runs / name / "config.json")
    w = MetricsWriter(runs / name / "metrics.jsonl")
    w.write("status", state="failed", step=0, message="out of memory")
    w.close()


def picked(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").first.input_value()


def wait_picked(page, elem_id: str, label: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([id, label]) => document.querySelector(`#${id} input`).value === label", arg=[elem_id, label], timeout=timeout
    )


def card_state(page, state: str, timeout: float = 90_000) -> None:
    page.wait_for_selector(f"#monitor-status [data-state='{state}']", timeout=timeout)


def test_a_page_opened_later_picks_the_running_run(app_server, page, tmp_path, job):
    runs = tmp_path / "runs"
    failed_run(runs, "old-failed")
    url = app_server(runs)
    job(runs, "from-terminal")  # started after the app, as from a terminal
    page.goto(url)
    page.get_by_role("tab", name="Monitor").click()
    wait_picked(page, "monitor-run", "from-terminal  ·  running")
    card_state(page, "running")
    page.get_by_role("tab", name="Train").click()
    wait_picked(page, "train-run-picker", "from-terminal  ·  running")


def compare_options(page) -> list[str]:
    page.locator("#monitor-compare input").first.click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return options


def test_run_labels_follow_the_state_and_compare_leaves_out_the_main_run(app_server, page, tmp_path, job):
    runs = tmp_path / "runs"
    saved_run(runs, "other")
    job(runs, "live")
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Monitor").click()
    card_state(page, "running")
    wait_picked(page, "monitor-run", "live  ·  running")
    options = compare_options(page)
    assert any(o.startswith("other") for o in options) and not any(o.startswith("live") for o in options), options

    page.click("#monitor-stop")
    card_state(page, "stopped")
    wait_picked(page, "monitor-run", "live  ·  stopped", timeout=15_000)  # the label follows the card
    page.click("#monitor-resume")
    card_state(page, "running")
    wait_picked(page, "monitor-run", "live  ·  running", timeout=15_000)

    page.get_by_role("tab", name="Train").click()
    pick(page, "train-run-picker", "live  ·  running")
    summary = page.locator("#train-run-summary")
    summary.filter(has_text="running").wait_for()
    page.click("#train-stop")
    summary.filter(has_text="stopped · step").wait_for(timeout=90_000)  # not left at "stopping"
    wait_picked(page, "train-run-picker", "live  ·  stopped", timeout=15_000)


def status_step(page) -> int:
    text = page.locator("#monitor-status .stat b").first.inner_text()  # "1,234 / 100,000"
    return int(text.split("/")[0].strip().replace(",", "").replace("—", "0"))


def test_a_second_browser_tab_follows_a_stop_and_resume_made_in_the_first(app_server, browser, page, tmp_path, job):
    runs = tmp_path / "runs"
    job(runs, "live")
    url = app_server(runs)
    second = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        for p in (page, second):
            p.goto(url)
            p.get_by_role("tab", name="Monitor").click()
            card_state(p, "running")
        page.click("#monitor-stop")
        for p in (page, second):
            card_state(p, "stopped")
        page.click("#monitor-resume")
        card_state(second, "running", timeout=60_000)  # the second tab woke up by itself
        before = status_step(second)
        wait_for(lambda: status_step(second) > before, 60, "the second tab's step to grow", poll=0.5)
    finally:
        second.context.close()


# ----- 9: a zoomed chart keeps its zoom while the run's curve grows --------------------------------------------------

AXIS_RANGE = """() => { const d = document.querySelector('#loss-plot .js-plotly-plot');
                        return d && d._fullLayout ? d._fullLayout.xaxis.range.slice() : null; }"""


def test_monitor_zoom_survives_refreshes(app_server, page, tmp_path, job):
    runs = tmp_path / "runs"
    job(runs, "live")
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Monitor").click()
    wait_for(lambda: plot_points(page) > 20, 120, "20 loss points", poll=0.5)
    drag = page.locator("#loss-plot .nsewdrag").first.bounding_box()
    x, y = drag["x"] + drag["width"] * 0.2, drag["y"] + drag["height"] * 0.2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + drag["width"] * 0.3, y + drag["height"] * 0.5, steps=8)
    page.mouse.up()
    zoomed = wait_for(lambda: (r := page.evaluate(AXIS_RANGE)) and r[0] > 1.5 and r, 10, "the zoom")
    points = plot_points(page)
    wait_for(lambda: plot_points(page) > points, 60, "a refresh with new points", poll=0.5)
    page.wait_for_timeout(1000)
    assert page.evaluate(AXIS_RANGE) == pytest.approx(zoomed)
    page.mouse.dblclick(x, y)  # plotly's reset: the chart follows the whole run again
    points = plot_points(page)
    wait_for(lambda: plot_points(page) > points, 60, "a refresh after the reset", poll=0.5)
    page.wait_for_timeout(1000)
    assert page.evaluate(AXIS_RANGE)[0] == pytest.approx(1, abs=1)


# ----- 15: readable log ticks; a run that failed after one step shows its point and why -----------------------------


def metrics_run(runs: Path, name: str, records: list[tuple[str, dict]]) -> None:
    (runs / name).mkdir(parents=True)
    TrainConfig(run_name=name, preset="micro").to_json(runs / name / "config.json")
    w = MetricsWriter(runs / name / "metrics.jsonl")
    for kind, fields in records:
        w.write(kind, **fields)
    w.close()


def pick_run(page, elem_id: str, name: str) -> None:
    """Pick a run in a run picker, whatever state its label says."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(name)} ")).click()


def tick_labels(page, chart: str, axis: str) -> list[float]:
    texts = page.eval_on_selector_all(f"#{chart} .{axis}tick text", "els => els.map(e => e.textContent)")
    return [float(t.replace("−", "-").replace(",", "")) for t in texts]


def test_log_ticks_read_as_numbers_and_a_one_step_failure_shows_its_point(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    train = dict(total_steps=300, lr=1e-3, tok_per_s=1000.0)
    decaying = [
        ("train", dict(step=s, tokens=64 * s, loss=5 - s / 100, grad_norm=0.3 + 12 * 0.95**s, **train))
        for s in range(1, 301)
    ]
    metrics_run(runs, "decaying", decaying)
    metrics_run(
        runs,
        "one-step",
        [
            ("train", dict(step=1, tokens=64, loss=10.8, grad_norm=2.0, **train)),
            ("status", dict(state="failed", step=1, message="CUDA out of memory. Tried to allocate 2 GiB")),
        ],
    )
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-status [data-state]")  # opened: its pickers are filled
    pick_run(page, "monitor-run", "decaying")
    page.wait_for_selector("#monitor-status:has-text('decaying')")
    page.get_by_label("Log scale (loss, grad norm)").check()
    page.wait_for_function(
        "() => document.querySelector('#health-plot .js-plotly-plot')?._fullLayout.yaxis2.type === 'log'"
    )
    labels = tick_labels(page, "health-plot", "y2")  # the gradient norm panel, from 0.3 to 12
    assert len(labels) >= 3 and labels == sorted(set(labels)), labels  # "3" must not stand for 0.3
    assert labels[0] < 1 < labels[-1]

    pick_run(page, "monitor-run", "one-step")
    page.wait_for_selector("#monitor-status [data-state='failed']")
    page.locator("#loss-plot .point").first.wait_for()  # the one step is drawn
    page.locator("#health-plot .point").first.wait_for()
    assert "out of memory" in page.locator("#loss-plot .annotation").first.text_content()


# ----- 16: the address holds the tab and the run: bookmarks, Back and Forward ---------------------------------------


def selected_tab(page, tab_id: str) -> None:
    page.wait_for_selector(f"button[role=tab][data-tab-id='{tab_id}'][aria-selected='true']")


def test_the_address_holds_the_tab_and_the_run(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    saved_run(runs, "bookmarked")
    saved_run(runs, "newest")
    url = app_server(runs)
    page.goto(url + "?tab=monitor&run=bookmarked")  # a bookmark
    selected_tab(page, "monitor")
    page.wait_for_selector("#monitor-status:has-text('bookmarked')")
    wait_picked(page, "monitor-run", "bookmarked  ·  done")

    page.get_by_role("tab", name="Models").click()
    page.wait_for_url("**tab=models**")
    page.go_back()  # stays in the app, on the tab before
    selected_tab(page, "monitor")
    assert "tab=monitor" in page.url
    page.go_forward()
    selected_tab(page, "models")

    page.get_by_role("tab", name="Monitor").click()
    pick_run(page, "monitor-run", "newest")
    page.wait_for_url("**run=newest**")
