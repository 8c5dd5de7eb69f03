"""Fixtures for browser tests: a real `python app.py` subprocess on a free port, driven by Debian's Chromium.

Locally the tests skip with a clear message when /usr/bin/chromium is missing; in CI (CI=true) they fail instead,
so a broken CI image can never turn the browser tests into silent skips.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 90


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found; install it with: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI: {message}")
        pytest.skip(message)
    return str(CHROMIUM)


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServers:
    """Factory: `url = app_server(runs_dir)` starts `python app.py`; `app_server.stop(url)` ends it early."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.jobs: list[psutil.Process] = []  # training jobs left running by stop(keep_jobs=True)

    def __call__(self, runs_dir: Path | None = None, port: int | None = None) -> str:
        runs_dir = Path(runs_dir or self.tmp_path / "runs")
        runs_dir.mkdir(parents=True, exist_ok=True)
        port = port or _port()
        log = self.tmp_path / f"app-{port}.log"
        env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--runs-dir", str(runs_dir)]
        with open(log, "wb") as f:  # a file, never an undrained pipe
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        self.procs[url] = (proc, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return url
            except OSError:
                time.sleep(0.3)
        self.stop(url)
        raise RuntimeError(f"app.py did not serve {url} within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")

    def stop(self, url: str, keep_jobs: bool = False) -> None:
        """Terminate the app and every process it started; keep_jobs=True leaves its training jobs running
        (as after a UI crash) until teardown."""
        proc, _ = self.procs.pop(url)
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if keep_jobs:
            self.jobs += children
            children = []
        self._terminate([psutil.Process(proc.pid), *children] if proc.poll() is None else children)
        proc.wait(timeout=10)

    def log(self, url: str) -> str:
        return self.procs[url][1].read_text()

    @staticmethod
    def _terminate(procs: list[psutil.Process]) -> None:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)

    def stop_all(self) -> None:
        for url in list(self.procs):
            self.stop(url)
        self._terminate(self.jobs)


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[AppServers]:
    servers = AppServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="session")
def browser(chromium_path: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(30_000)
    try:
        yield p
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    path = ROOT / "test-output" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
