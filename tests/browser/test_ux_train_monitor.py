"""Issue 17 (Train, Monitor, Models, app shell): what a new user met, reproduced in a real Chromium against a real
`python app.py`, one test per item."""

from __future__ import annotations

import pytest

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
