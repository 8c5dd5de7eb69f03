"""Security defects from the hardening review (items 9-13), each reproduced here (they failed before the fix).

Exposed means bound beyond loopback (--host 0.0.0.0, --share): every visitor is a remote user.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.config import ConfigError, model_config
from core.hf import export_hf
from core.model import GPT
from core.paths import AccessPolicy
from playground import models_tab
from playground.train_tab import DEFAULTS, form_to_config


def form(**overrides):
    return {**DEFAULTS, **overrides}


@pytest.fixture
def site(tmp_path):
    """A runs folder with one run, a shared --data-dir with a corpus and a GPT-2 folder, and a private folder
    (a secret file, a secret GPT-2 folder) the app must not reach when exposed."""
    runs, shared, private = tmp_path / "runs", tmp_path / "shared", tmp_path / "private"
    for d in (runs, shared, private):
        d.mkdir()
    torch.manual_seed(0)
    model = GPT(model_config("micro"))
    save_checkpoint(runs / "mine", 3, model, {})
    (shared / "corpus.txt").write_text("to be or not to be\n" * 20)
    export_hf(model, shared / "gpt2-folder")
    (private / "secret.txt").write_text("the password is hunter2\n" * 20)
    export_hf(model, private / "gpt2-secret")
    (shared / "escape.txt").symlink_to(private / "secret.txt")  # a link inside an allowed folder leading out
    return runs, shared, private


def exposed(runs: Path, *data_dirs: Path, allow_downloads: bool = False) -> AccessPolicy:
    return AccessPolicy.for_app(runs, exposed=True, data_dirs=data_dirs, allow_downloads=allow_downloads)


def refusal(call, field: str) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field
    return str(e.value)


# --- 10. local paths read anywhere ---------------------------------------------------------------------------------


def test_exposed_data_path_outside_the_allowed_folders_is_refused_without_telling_if_it_exists(site):
    runs, shared, private = site
    access = exposed(runs, shared)
    outside = {
        "existing": private / "secret.txt",
        "missing": private / "nope.txt",
        "dotdot": f"{shared}/../private/secret.txt",
        "symlink": shared / "escape.txt",
    }
    messages = {}
    for kind, path in outside.items():
        values = form(data_source="local", data_path=str(path))
        message = refusal(lambda v=values: form_to_config(v, runs, access=access), "data_path")
        messages[kind] = message.replace(str(path), "<path>")
        assert "allowed folders" in message and str(shared) in message and "--data-dir" in message
    assert len(set(messages.values())) == 1, messages  # one answer whether or not the file exists

    cfg = form_to_config(form(data_source="local", data_path=str(shared / "corpus.txt")), runs, access=access)
    assert cfg.data == str((shared / "corpus.txt").resolve())  # the trainer reads exactly the checked file
    bundled = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"
    assert form_to_config(form(data_source="local", data_path=str(bundled)), runs, access=access).data
    # On loopback the app stays as free as a terminal.
    local = form_to_config(form(data_source="local", data_path=str(private / "secret.txt")), runs)
    assert local.data == str(private / "secret.txt")


def test_exposed_init_from_is_confined_to_the_allowed_folders(site):
    runs, shared, private = site
    access = exposed(runs, shared)
    messages = set()
    for path in (private / "gpt2-secret", private / "missing", Path("/etc")):
        values = form(init_from=str(path))
        message = refusal(lambda v=values: form_to_config(v, runs, access=access), "init_from")
        messages.add(message.replace(str(path), "<path>"))
        assert "allowed folders" in message
    assert len(messages) == 1
    # (seq_len 32: the form checks it against the context of the weights, a micro model's here)
    for ok in (runs / "mine", shared / "gpt2-folder"):
        cfg = form_to_config(form(init_from=str(ok), seq_len=32), runs, access=access)
        assert cfg.init_from == str(ok.resolve())
    assert form_to_config(form(init_from=str(private / "gpt2-secret"), seq_len=32), runs).init_from  # loopback: free


def test_exposed_import_box_reads_only_allowed_folders(site):
    runs, shared, private = site
    jobs = models_tab.Jobs(runs)
    access = exposed(runs, shared)
    answers = set()
    for path in (private / "gpt2-secret", private / "missing", f"{shared}/../private/gpt2-secret"):
        message, made = models_tab.import_model(jobs, str(path), "stolen", access)
        assert made is None and "allowed folders" in message
        answers.add(message.replace(str(path), "<path>"))
    assert len(answers) == 1 and not (runs / "stolen").exists()
    message, made = models_tab.import_model(jobs, str(shared / "gpt2-folder"), "shared-gpt2", access)
    assert message.startswith("✅") and made == runs / "shared-gpt2"
    message, made = models_tab.import_model(jobs, str(private / "gpt2-secret"), "local", AccessPolicy())
    assert message.startswith("✅"), message  # loopback: free


def test_policy_resolves_symlinks_and_dotdot_before_checking(site, monkeypatch):
    runs, shared, private = site
    access = exposed(runs, shared)
    assert access.check_read(str(shared / "corpus.txt"), "data_path") == (shared / "corpus.txt").resolve()
    assert access.check_read(str(runs / "mine"), "init_from") == (runs / "mine").resolve()
    monkeypatch.chdir(shared)
    assert access.check_read("corpus.txt", "data_path") == (shared / "corpus.txt").resolve()  # relative: from cwd
    for sneaky in ("../private/secret.txt", "escape.txt", str(private), "/", "~"):
        refusal(lambda s=sneaky: access.check_read(s, "data_path"), "data_path")
    assert not AccessPolicy().exposed and AccessPolicy().check_read("/etc/hosts", "data_path") == Path("/etc/hosts")


def test_app_builds_the_policy_from_its_flags(tmp_path):
    import app

    corpora, more = tmp_path / "corpora", tmp_path / "more"
    corpora.mkdir(), more.mkdir()
    runs = tmp_path / "runs"
    args = app.parse_args(
        ["--runs-dir", str(runs), "--host", "0.0.0.0", "--data-dir", str(corpora), "--data-dir", str(more)]
    )
    access = app.access_policy(args)
    bundled = Path(app.__file__).resolve().parent / "data"
    assert access.exposed and set(access.allowed) == {runs.resolve(), bundled, corpora, more}
    assert app.access_policy(app.parse_args(["--share"])).exposed
    assert not app.access_policy(app.parse_args(["--host", "localhost"])).exposed
    with pytest.raises(SystemExit):
        app.parse_args(["--data-dir", str(tmp_path / "missing")])


# --- 11. hub downloads on demand -----------------------------------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch):
    """Records each hub download asked for (and fails it, as offline); the test checks none happened."""
    import core.hf

    asked = []

    def download(repo_id):
        asked.append(repo_id)
        raise core.hf.HFError(f"could not download {repo_id!r} (offline)")

    monkeypatch.setattr(core.hf, "_download", download)
    return asked


def test_exposed_app_downloads_nothing_from_the_hub_unless_allowed(site, no_hub):
    runs, shared, _ = site
    access = exposed(runs, shared)
    hf_data = form(data_source="hf", hf_dataset="HuggingFaceFW/fineweb-edu")
    for call, field in (
        (lambda: form_to_config(hf_data, runs, access=access), "hf_dataset"),
        (lambda: form_to_config(form(init_from="gpt2"), runs, access=access), "init_from"),
        (lambda: form_to_config(form(init_from="openai-community/gpt2-xl"), runs, access=access), "init_from"),
    ):
        assert "--allow-downloads" in refusal(call, field)
    message, made = models_tab.import_model(models_tab.Jobs(runs), "gpt2", "from-hub", access)
    assert made is None and "hub downloads are off" in message and "--allow-downloads" in message
    assert no_hub == []

    allowed = exposed(runs, shared, allow_downloads=True)
    assert form_to_config(hf_data, runs, access=allowed).data == "hf:HuggingFaceFW/fineweb-edu"
    assert form_to_config(form(init_from="gpt2"), runs, access=allowed).init_from == "gpt2"
    message, made = models_tab.import_model(models_tab.Jobs(runs), "gpt2", "from-hub", allowed)
    assert made is None and "offline" in message and no_hub == ["gpt2"]
    # On loopback the hub is there as before.
    assert form_to_config(hf_data, runs).data == "hf:HuggingFaceFW/fineweb-edu"
    assert form_to_config(form(init_from="gpt2"), runs).init_from == "gpt2"


def test_a_hub_like_name_of_a_local_folder_outside_is_neither_read_nor_downloaded(site, no_hub, monkeypatch):
    runs, shared, private = site
    monkeypatch.chdir(private)  # "gpt2-secret" is both a hub-like name and a folder here
    message, made = models_tab.import_model(models_tab.Jobs(runs), "gpt2-secret", "x", exposed(runs, shared))
    assert made is None and "--allow-downloads" in message
    message, made = models_tab.import_model(
        models_tab.Jobs(runs), "gpt2-secret", "x", exposed(runs, shared, allow_downloads=True)
    )
    assert made is None and "allowed folders" in message and no_hub == []


def test_allow_downloads_and_exports_dir_flags():
    import app

    assert not app.access_policy(app.parse_args(["--host", "0.0.0.0"])).downloads_allowed
    assert app.access_policy(app.parse_args(["--exports-dir", "~/exports"])).exports_dir == Path.home() / "exports"
    assert app.access_policy(app.parse_args(["--host", "0.0.0.0", "--allow-downloads"])).downloads_allowed
    assert app.access_policy(app.parse_args([])).downloads_allowed  # loopback


# --- 9. export writes anywhere -------------------------------------------------------------------------------------


def test_exposed_export_box_writes_only_into_the_exports_folder(site):
    runs, shared, private = site
    jobs = models_tab.Jobs(runs)
    ckpt = str(runs / "mine" / "ckpt" / "step-000003")
    access = exposed(runs, shared)
    for target in (private / "planted", "../escaped", str(shared / "x"), "~/planted"):
        message = models_tab.export_checkpoint(jobs, ckpt, str(target), access)
        assert message.startswith("⚠") and "exports go only into" in message and str(runs) in message, message
    assert not (private / "planted").exists() and not (runs.parent / "escaped").exists()
    assert not (shared / "x").exists() and not (Path.home() / "planted").exists()

    assert models_tab.export_checkpoint(jobs, ckpt, "mine-hf", access).startswith("✅")  # a name: in the runs folder
    assert (runs / "mine-hf" / "config.json").is_file()
    assert models_tab.export_checkpoint(jobs, ckpt, "", access).startswith("✅")
    assert (runs / "mine" / "hf-step-000003" / "model.safetensors").is_file()

    exports = shared / "exports"
    configured = AccessPolicy.for_app(runs, exposed=True, exports_dir=exports)
    assert models_tab.export_checkpoint(jobs, ckpt, "", configured).startswith("✅")
    assert (exports / "mine-step-000003" / "config.json").is_file()
    assert models_tab.export_checkpoint(jobs, ckpt, "again", configured).startswith("✅")
    assert (exports / "again" / "config.json").is_file()
    assert models_tab.export_checkpoint(jobs, ckpt, str(runs / "y"), configured).startswith("⚠")
    assert configured.check_read(str(exports / "again"), "source")  # what was exported can be imported back
    # On loopback an absolute folder anywhere is still fine.
    assert models_tab.export_checkpoint(jobs, ckpt, str(private / "mine"), AccessPolicy()).startswith("✅")


def test_export_never_overwrites_a_folder_that_holds_files(site):
    runs, _, private = site
    model = GPT(model_config("micro"))
    other = runs / "other"
    save_checkpoint(other, 1, model, {})
    (other / "config.json").write_text('{"run_name": "other"}')
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    message = models_tab.export_checkpoint(
        models_tab.Jobs(runs), str(runs / "mine" / "ckpt" / "step-000003"), str(other), AccessPolicy()
    )
    assert message.startswith("⚠") and "not empty" in message
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    with pytest.raises(Exception, match="not empty"):
        export_hf(model, private / "gpt2-secret")  # the library refuses too
    (private / "empty").mkdir()
    assert export_hf(model, private / "empty") == private / "empty"  # an empty folder is fine
    assert (private / "empty" / "config.json").is_file()


def test_a_failed_export_leaves_nothing_behind(site, monkeypatch):
    import core.hf

    runs, _, private = site

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a tensor")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.hf, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_hf(GPT(model_config("micro")), private / "new" / "export")
    assert list((private / "new").iterdir()) == []  # no half-written export, no temporary folder


# --- 12. the password in `ps` --------------------------------------------------------------------------------------


def test_credentials_from_a_file_and_the_environment(tmp_path, capsys):
    import app

    secrets = tmp_path / "users"
    secrets.write_text("# who may log in\nalice:pa:ss word\n\n  bob:hunter2  \n")
    secrets.chmod(0o600)
    args = app.parse_args(["--auth-file", str(secrets)])
    assert app.credentials(args, {}) == [("alice", "pa:ss word"), ("bob", "hunter2")]
    env = {"GPT2_PLAYGROUND_AUTH": "carol:xyz"}
    assert app.credentials(app.parse_args([]), env) == [("carol", "xyz")]
    assert app.credentials(args, env) == [("alice", "pa:ss word"), ("bob", "hunter2"), ("carol", "xyz")]
    assert app.credentials(app.parse_args([]), {}) == []
    assert capsys.readouterr().err == ""

    assert app.credentials(app.parse_args(["--auth", "dave:on-cmdline"]), {}) == [("dave", "on-cmdline")]
    warned = capsys.readouterr().err
    assert "--auth" in warned and "process list" in warned and "--auth-file" in warned and "on-cmdline" not in warned

    bad = tmp_path / "bad"
    bad.write_text("alice:ok\nno-colon-s3cret\n")
    with pytest.raises(SystemExit):
        app.credentials(app.parse_args(["--auth-file", str(bad)]), {})
    said = capsys.readouterr().err
    assert "line 2" in said and "s3cret" not in said
    with pytest.raises(SystemExit):
        app.credentials(app.parse_args([]), {"GPT2_PLAYGROUND_AUTH": "nopassword:"})
    with pytest.raises(SystemExit):
        app.credentials(app.parse_args(["--auth-file", str(tmp_path / "missing")]), {})
    assert "cannot read" in capsys.readouterr().err

    secrets.chmod(0o644)
    app.credentials(args, {})
    assert "readable by other users" in capsys.readouterr().err
    exposed_args = app.parse_args(["--host", "0.0.0.0", "--auth-file", str(secrets)])
    assert app.exposure_warning(exposed_args, app.credentials(exposed_args, {})) is None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_with_an_auth_file_keeps_the_secret_out_of_its_command_line(tmp_path):
    import http.cookiejar
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.helpers import ROOT, wait_for

    secrets = tmp_path / "users"
    secrets.write_text("alice:correct-horse-battery\n")
    secrets.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GPT2_PLAYGROUND_AUTH": "bob:staple-from-env"}
    cmd = [
        sys.executable,
        "app.py",
        "--port",
        str(port),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--auth-file",
        str(secrets),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def status(path: str, opener=None) -> int | None:
        try:
            with (opener or urllib.request.build_opener()).open(url + path, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            return None

    try:
        wait_for(lambda: status("/config"), 180, "the app to serve")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "--auth-file" in cmdline and "correct-horse" not in cmdline and "staple" not in cmdline
        assert status("/config") == 401  # no login, no app
        for user, password, ok in (
            ("alice", "wrong", False),
            ("alice", "correct-horse-battery", True),
            ("bob", "staple-from-env", True),
        ):
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
            form_data = urllib.parse.urlencode({"username": user, "password": password}).encode()
            try:
                opener.open(url + "/login", data=form_data, timeout=10)
            except urllib.error.HTTPError as e:
                assert not ok and e.code in (400, 401)
            assert (status("/config", opener) == 200) is ok, user
    finally:
        proc.terminate()
        proc.wait(30)


# --- 13. a filesystem walk per keystroke ---------------------------------------------------------------------------


@pytest.fixture
def big_folder(tmp_path):
    """A corpus folder of 1,200 files in 12 subfolders."""
    root = tmp_path / "big"
    for d in range(12):
        sub = root / f"part-{d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"doc-{i}.txt").write_text("some text\n")
    return root


def test_live_preview_checks_the_data_path_without_listing_it(tmp_path, big_folder, monkeypatch):
    import os

    from playground import train_tab
    from playground.tab import AppContext

    ctx = AppContext.for_runs_dir(tmp_path / "runs")
    with gr_blocks():
        tab = train_tab.build(ctx)
    listed = []
    scandir = os.scandir

    def counting_scandir(path="."):
        listed.append(Path(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    for typed in ("/", str(big_folder), str(big_folder / "part-3")):  # each keystroke runs the preview
        out = train_tab.preview_form(
            tab, ctx, *[form(data_source="local", data_path=typed)[n] for n in train_tab.FIELDS]
        )
        assert out[tab["message"]] == "", out[tab["message"]]
    assert not [p for p in listed if p == Path("/") or p.is_relative_to(big_folder)], listed
    missing = form(data_source="local", data_path=str(big_folder / "nope"))
    out = train_tab.preview_form(tab, ctx, *[missing[n] for n in train_tab.FIELDS])
    assert "not found" in out[tab["data_path"]]["info"]  # the cheap check still answers at once


def test_launch_lists_the_data_folder_with_a_cap(tmp_path, big_folder, monkeypatch):
    import core.data
    from playground import train_tab
    from playground.tab import AppContext

    ctx = AppContext.for_runs_dir(tmp_path / "runs")
    with gr_blocks():
        tab = train_tab.build(ctx)
    monkeypatch.setattr(train_tab, "MAX_LISTED_FILES", 1000)
    values = form(data_source="local", data_path=str(big_folder), run_name="big", preset="micro", seq_len=32)
    out = train_tab.launch_run(tab, ctx, *[values[n] for n in train_tab.FIELDS])
    assert out[tab["message"]].startswith("⚠ Not launched:") and "more than 1,000 files" in out[tab["message"]]
    assert "more than 1,000 files" in out[tab["data_path"]]["info"] and not (ctx.runs_dir / "big").exists()
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.md").write_text("not a corpus")
    values = form(data_source="local", data_path=str(empty), run_name="empty")
    out = train_tab.launch_run(tab, ctx, *[values[n] for n in train_tab.FIELDS])
    assert "holds no .txt/.jsonl/.parquet files" in out[tab["data_path"]]["info"]
    # The CLI's listing has no cap: it reads what it is given.
    assert len(core.data.source_files(str(big_folder))) == 1200


def gr_blocks():
    import gradio as gr

    return gr.Blocks()


def test_models_tab_hints_say_what_an_exposed_app_allows(tmp_path):
    from playground.tab import AppContext

    runs, exports = tmp_path / "runs", tmp_path / "exports"
    ctx = AppContext.for_runs_dir(runs, AccessPolicy.for_app(runs, exposed=True, exports_dir=exports))
    with gr_blocks():
        tab = models_tab.build(ctx)
    assert "hub downloads are off" in tab["source"].info
    assert tab["out_dir"].placeholder == f"empty: {exports}/<run>-<checkpoint>" and str(exports) in tab["out_dir"].info
    with gr_blocks():
        tab = models_tab.build(AppContext.for_runs_dir(runs))
    assert "downloads" in tab["source"].info and "the runs folder" in tab["out_dir"].info
