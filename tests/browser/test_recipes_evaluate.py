"""The Train tab's recipe picker and the Models tab's Evaluate, in a real Chromium against a real `python app.py`."""

from __future__ import annotations

import json

import pytest

from core.jobs import read_evals
from core.recipes import apply_recipe, describe_duration, detect_device, expected_wall_time, recipe_values
from tests.browser.test_train_monitor import pick
from tests.browser.test_ux_train_monitor import field_input, no_gradio_errors, open_train, saved_run
from tests.test_hellaswag_loop import EXAMPLES

pytestmark = pytest.mark.browser


def test_picking_shakespeare_cpu_fills_the_form_and_says_how_long_it_takes(app_server, page):
    open_train(page, app_server())
    pick(page, "train-recipe", "shakespeare-cpu")
    values = recipe_values("shakespeare-cpu", detect_device("cpu"))
    page.wait_for_function(f"() => document.querySelector('#train-max-steps input').value === '{values['max_steps']}'")
    for field in ("batch_size", "seq_len", "warmup_steps", "eval_interval", "ckpt_interval", "sample_interval"):
        assert int(field_input(page, field.replace("_", "-")).input_value()) == values[field], field
    for field in ("lr", "min_lr"):
        assert float(field_input(page, field.replace("_", "-")).input_value()) == values[field], field
    assert field_input(page, "preset").input_value() == values["preset"]

    device = detect_device("cpu")
    when = describe_duration(expected_wall_time(apply_recipe("shakespeare-cpu", device=device), device))
    hint = page.locator("#train-recipe-hint")
    hint.filter(has_text=f"Expected wall time on {device.describe()}: {when}").wait_for()
    assert "tinyshakespeare" in hint.inner_text()
    # the values without a field of their own are in the command Launch runs
    page.locator("#command-preview", has_text="--n-layer 6").wait_for()
    assert "--max-steps 600" in page.locator("#command-preview").inner_text()
    no_gradio_errors(page)


def test_evaluate_puts_the_hellaswag_result_in_the_table(app_server, page, tmp_path):
    runs = tmp_path / "runs"
    saved_run(runs, "scored", step=5)
    hs = tmp_path / "hs.jsonl"
    hs.write_text("".join(json.dumps({"ctx": c, "endings": e, "label": label}) + "\n" for c, e, label in EXAMPLES))
    page.goto(app_server(runs))
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table >> text=step-000005 >> visible=true").first.click()
    page.wait_for_function("() => document.querySelector('#eval-ckpt input').value === 'scored / step-000005'")
    page.locator("#eval-limit input").fill("3")
    page.locator("#eval-file textarea, #eval-file input").first.fill(str(hs))
    page.click("#eval-btn")
    page.locator("#eval-message", has_text="✅").wait_for(timeout=120_000)
    record = read_evals(runs, "scored")[-1]
    assert f"HellaSwag acc_norm {record['acc_norm']:.4f}" in page.locator("#eval-message").inner_text()
    page.locator(f"#models-table >> text={record['acc_norm']:.4f} (n 3) >> visible=true").first.wait_for()
    no_gradio_errors(page)
