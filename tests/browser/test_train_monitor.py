"""Train -> Monitor -> Stop -> Resume -> restart, in a real Chromium against a real `python app.py` and real jobs."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.browser

# Micro model, tiny batches: several steps land between two 2 s refreshes even on two busy cores; many steps so
# the job is still running when the test presses Stop (which makes the trainer save a checkpoint).
SETTINGS = {
    "batch-size": "2",
    "max-steps": "100000",
    "eval-interval": "10",
    "ckpt-interval": "0",
    "sample-interval": "100",
}


def plot_points(page) -> int:
    """Points drawn in the loss chart (all traces)."""
    return page.evaluate(
        """() => { const d = document.querySelector('#loss-plot .js-plotly-plot');
                   return d && d.data ? d.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : 0; }"""
    )


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def fill_form(page, run_name: str) -> None:
    pick(page, "train-preset", "micro")
    page.wait_for_function("() => document.querySelector('#train-seq-len input').value === '32'")
    page.locator("#train-run-name textarea, #train-run-name input").first.fill(run_name)
    page.get_by_text("Evaluation, checkpoints, precision, seed").click()
    for field, value in SETTINGS.items():
        page.locator(f"#train-{field} input").fill(value)
    # The command preview follows each field a round trip later (slow on a busy machine): wait for the last one.
    page.locator("#command-preview", has_text="--sample-interval 100").wait_for()


def launch_and_watch(page) -> int:
    page.click("#launch-btn")
    page.wait_for_selector("#train-message:has-text('Launched')", timeout=60_000)
    # The launched run opens in Monitor and its curve grows from one refresh to the next.
    page.wait_for_selector("#monitor-status [data-state='running']", timeout=60_000)
    first = wait_for(lambda: plot_points(page), 120, "the first loss points", poll=0.5)
    return wait_for(lambda: (n := plot_points(page)) > first and n, 60, f"more than {first} loss points", poll=0.5)


def stop_and_wait(page) -> None:
    page.click("#monitor-stop")
    page.wait_for_selector("#monitor-status [data-state='stopped']", timeout=90_000)


def test_launch_watch_stop_and_reattach(app_server, page, tmp_path, screenshot_dir):
    runs = tmp_path / "runs"
    url = app_server(runs)
    page.goto(url)
    page.wait_for_selector("#launch-btn")
    page.screenshot(path=str(screenshot_dir / "train.png"), full_page=True)

    # A bad value is refused next to its field, with the fix in the message; the launch button starts nothing.
    page.locator("#train-total-batch-tokens input").fill("100")
    error = page.locator("#train-total-batch-tokens.field-error")
    error.wait_for()
    assert "must be a multiple" in error.inner_text()
    page.locator("#train-total-batch-tokens input").fill("0")
    page.locator("#train-total-batch-tokens.field-error").wait_for(state="detached")

    fill_form(page, "ui-single")
    command = page.locator("#command-preview").inner_text()
    assert "core.train" in command and "--preset micro" in command and "--batch-size 2" in command
    launch_and_watch(page)
    stop_and_wait(page)
    assert (runs / "ui-single" / "ckpt" / "latest").is_file()  # the trainer saved a checkpoint on stop

    # Resume continues from that checkpoint: running again, and the same curve keeps growing.
    stopped_at = wait_for(lambda: plot_points(page), 10, "the stopped curve", poll=0.5)
    page.click("#monitor-resume")
    page.wait_for_selector("#monitor-status [data-state='running']", timeout=60_000)
    points = wait_for(lambda: (n := plot_points(page)) > stopped_at and n, 90, "the resumed curve to grow", poll=0.5)
    page.screenshot(path=str(screenshot_dir / "monitor.png"), full_page=True)
    stop_and_wait(page)

    # A fresh app process on the same runs folder lists the run with its curve.
    app_server.stop(url)
    url = app_server(runs)
    page.goto(url)
    page.get_by_role("tab", name="Monitor").click()
    page.wait_for_selector("#monitor-status [data-state='stopped']")
    assert "ui-single" in page.locator("#monitor-run input").first.input_value()
    wait_for(lambda: plot_points(page) >= points, 30, "the curve after the restart", poll=0.5)
    page.get_by_role("tab", name="Models").click()
    page.locator("#models-table >> text=ui-single >> visible=true").first.wait_for()
    page.screenshot(path=str(screenshot_dir / "models.png"), full_page=True)


def test_cpu_ddp_job(app_server, page, tmp_path, screenshot_dir):
    runs = tmp_path / "runs"
    page.goto(app_server(runs))
    page.wait_for_selector("#launch-btn")
    fill_form(page, "ui-ddp")
    page.get_by_label("CPU · DDP (gloo)").check()
    page.locator("#train-nproc").wait_for()
    page.locator("#command-preview", has_text="torch.distributed.run").wait_for()
    command = page.locator("#command-preview").inner_text()
    assert "torch.distributed.run" in command and "--nproc_per_node=2" in command
    launch_and_watch(page)
    page.screenshot(path=str(screenshot_dir / "monitor-ddp.png"), full_page=True)
    assert "cpu × 2" in page.locator("#monitor-status").inner_text()
    stop_and_wait(page)
