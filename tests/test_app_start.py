"""The app serves its page before torch is loaded (issue 15: app start to a served page in 3 s, where importing
torch alone takes about 1.5 s), then loads the model code in the background.

Each check runs in a fresh interpreter: this test process has torch loaded already."""

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.config import TrainConfig, model_config
from core.metrics import MetricsWriter
from core.model import GPT
from tests.helpers import ROOT, wait_for

HEAVY = ("torch", "transformers", "safetensors")


def _python(code: str, *args: str, timeout: float = 120) -> dict:
    """Run code in a fresh interpreter from the repo root; it prints one JSON line, returned as a dict."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder with a run that has metrics and two checkpoints: what the page-load steps list and read."""
    runs = tmp_path_factory.mktemp("runs")
    run = runs / "micro-run"
    run.mkdir()
    TrainConfig(run_name="micro-run", preset="micro", runs_dir=str(runs)).to_json(run / "config.json")
    writer = MetricsWriter(run / "metrics.jsonl")
    for step in (1, 2):
        writer.write("train", step=step, total_steps=2, tokens=64 * step, loss=10.0 - step, lr=1e-3)
        save_checkpoint(run, step, GPT(model_config("micro")), {"val_loss": 9.5})
    writer.close()
    return runs


def test_the_page_is_built_served_and_loaded_without_torch(runs):
    """Build the app as app.py does, serve it, fetch the page, then run every step the page's load event starts
    (Train, Monitor and Models fill themselves in; the model pickers list the checkpoints): none imports torch."""
    got = _python(
        """
        import asyncio, json, sys, urllib.request
        import app  # sets what app.py sets before building (analytics off)
        from gradio.state_holder import SessionState
        from playground.app import build_ui
        from playground.theme import CSS, THEME

        demo = build_ui(sys.argv[1])
        demo.launch(
            server_port=int(sys.argv[2]), theme=THEME, css=CSS, prevent_thread_lock=True, quiet=True
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/", timeout=30) as page:
            status = page.status
        on_load = [fn for fn in demo.fns.values() if any(event == "load" for _, event in fn.targets)]
        for fn in demo.fns.values():  # the .then steps after them, in order
            if fn.trigger_after in {f._id for f in on_load}:
                on_load.append(fn)
        values = {c["id"]: c.get("props", {}).get("value") for c in demo.config["components"]}
        state = SessionState(demo)
        ran = []
        for fn in on_load:
            if fn.fn is not None:
                asyncio.run(demo.process_api(fn, [values.get(b._id) for b in fn.inputs], state))
                ran.append(fn.name)
        demo.close()
        heavy, limit = [m for m in sys.argv[3:] if m in sys.modules], demo._queue.default_concurrency_limit
        print(json.dumps({"status": status, "ran": ran, "heavy": heavy, "limit": limit}))
        """,
        str(runs),
        str(_free_port()),
        *HEAVY,
    )
    assert got["status"] == 200 and got["limit"] == 4  # app.py's four events at once
    assert {"refresh_run_pickers", "refresh_monitor", "refresh_models", "show_newest_models"} <= set(got["ran"])
    assert got["heavy"] == []


def test_warm_up_loads_the_model_code_in_the_background():
    got = _python(
        """
        import json, sys
        from playground.app import MODEL_MODULES, warm_up

        before = "torch" in sys.modules
        thread = warm_up()
        thread.join(120)
        print(json.dumps({"before": before, "daemon": thread.daemon, "loaded": [m for m in MODEL_MODULES + ("torch",)
                                                                                if m in sys.modules]}))
        """
    )
    from playground.app import MODEL_MODULES

    assert got == {"before": False, "daemon": True, "loaded": [*MODEL_MODULES, "torch"]}


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/<pid>/maps (Linux)")
def test_app_py_serves_then_loads_torch_and_keeps_serving(tmp_path):
    """The real `python app.py`: its page answers, torch's library is then mapped into the process (the warm-up
    ran), and the server still answers after it (the main thread waits on the server)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(tmp_path / "runs")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answers() -> bool:
        assert proc.poll() is None, f"app.py exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def torch_mapped() -> bool:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()

    try:
        wait_for(answers, 120, "app.py's page")
        wait_for(torch_mapped, 120, "the warm-up to load torch", poll=0.2)
        time.sleep(0.5)
        assert answers() and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)


def test_gpu_count_needs_no_torch_without_a_gpu_build():
    """gpu_count answers as torch does; with a PyTorch built without CUDA or ROCm it does so without importing it."""
    got = _python(
        """
        import json, sys
        from core.device import gpu_count, torch_gpu_build

        count, build, imported = gpu_count(), torch_gpu_build(), "torch" in sys.modules
        print(json.dumps({"count": count, "build": build, "imported": imported}))
        """
    )
    assert got["build"] == bool(torch.version.cuda or torch.version.hip)
    assert got["count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert got["imported"] == got["build"]
