"""Background jobs with real trainer processes (micro preset, CPU, gloo): launch, watch, stop, kill, resume,
reattach from another process, stale pids, unsafe names, and the CLI."""

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from core.config import ConfigError, TrainConfig
from core.jobs import (
    JOB_ENV,
    DeviceBusy,
    JobError,
    Jobs,
    NameTaken,
    NotAJob,
    NothingToResume,
    RunActive,
    RunNotFound,
    manager,
)
from core.jobs.state import START_GRACE_S
from core.metrics import MetricsWriter, export_records, read_all
from tests.helpers import ROOT, records, run_cmd, wait_for

HAVE_TRAINER = (ROOT / "core" / "train.py").is_file()
needs_trainer = pytest.mark.skipif(not HAVE_TRAINER, reason="core/train.py not there yet")


def micro(name: str, **kw) -> TrainConfig:
    """A run that trains until stopped (fast micro steps), checkpointing now and then."""
    base = dict(
        run_name=name,
        preset="micro",
        batch_size=4,
        max_steps=1_000_000,
        warmup_steps=10,
        eval_interval=0,
        ckpt_interval=0,
        device="cpu",
        data="shakespeare",
    )
    base.update(kw)
    return TrainConfig(**base)


def procs_with_job_id(job_id: str) -> list[int]:
    """Every live (non-zombie) process carrying the job id, found independently of core.jobs."""
    needle = f"{JOB_ENV}={job_id}".encode()
    found = []
    for pid in psutil.pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if needle in env and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def job_record(jobs: Jobs, name: str) -> dict:
    return json.loads((jobs.run_dir(name) / "status.json").read_text())


def train_steps(jobs: Jobs, name: str) -> list[int]:
    return [r["step"] for r in records(jobs.run_dir(name), "train")]


def cli(runs: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, "-m", "core.jobs", "--runs-dir", str(runs), *args], timeout=timeout)


@pytest.fixture
def jobs(tmp_path):
    j = Jobs(tmp_path / "runs")
    yield j
    for st in j.list_runs():  # never leave a trainer behind, whatever the test did
        if st.active and st.source == "job":
            j.stop(st.name, timeout=5)


# ----- without a trainer process -------------------------------------------------------------------------


def test_command_for_is_the_exact_cli(jobs):
    one = jobs.command_for(micro("a"))
    assert one == [sys.executable, "-m", "core.train", "--config", str(jobs.runs_dir / "a" / "config.json")]
    ddp = jobs.command_for(micro("b", nproc=2))
    assert ddp[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ddp[5:] == ["-m", "core.train", "--config", str(jobs.runs_dir / "b" / "config.json")]
    assert jobs.command_for(micro("a"), resume=True)[-2:] == ["--resume", str(jobs.runs_dir / "a")]
    assert "core.train --config" in jobs.command_line(micro("a"))


def test_bad_launches_are_refused_before_anything_runs(jobs):
    with pytest.raises(ConfigError, match="run name"):
        jobs.launch(micro("../escape"))
    with pytest.raises(ConfigError, match="batch_size"):
        jobs.launch(micro("bad", batch_size=0))
    (jobs.runs_dir / "taken").mkdir()
    with pytest.raises(NameTaken, match="already exists") as e:
        jobs.launch(micro("taken"))
    assert e.value.name == "taken"
    assert sorted(p.name for p in jobs.runs_dir.iterdir() if not p.name.startswith(".")) == ["taken"]


def test_stale_status_json_is_never_our_job(jobs):
    """A pid in status.json that now belongs to another process (or a zombie) does not count as running."""
    sleeper = subprocess.Popen(["sleep", "60"])
    quitter = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: psutil.Process(quitter.pid).status() == psutil.STATUS_ZOMBIE, 10, "a zombie")
        cases = {
            "reused-by-sleep": (sleeper.pid, psutil.Process(sleeper.pid).create_time() - 100),
            "reused-by-me": (os.getpid(), psutil.Process().create_time() + 5),
            "zombie": (quitter.pid, psutil.Process(quitter.pid).create_time()),
            "gone": (2**22 + 17, time.time() - 60),
        }
        for name, (pid, start) in cases.items():
            run = jobs.runs_dir / name
            run.mkdir()
            record = dict(job_id="f" * 32, state="running", pid=pid, pgid=pid, start_time=start)
            record.update(launched_at=time.time() - 30, device="cpu", nproc=1)
            (run / "status.json").write_text(json.dumps(record))
            (run / "train.log").write_text("step 1 | loss 10.9\nKilled\n")
            st = jobs.status(name)
            assert st.state == "failed", (name, st)
            assert "ended without a final status" in st.message and "Killed" in st.log_tail
        assert sleeper.poll() is None  # and nothing was signalled along the way
        with pytest.raises(NothingToResume, match="no checkpoint"):
            jobs.resume("reused-by-sleep")  # no checkpoint: refused with a reason
        jobs.delete_run("reused-by-sleep")  # failed runs can be deleted; the sleeper is untouched
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        quitter.wait()


def test_list_runs_is_lenient(jobs):
    runs = jobs.runs_dir
    cli_done = runs / "by-hand"
    cli_done.mkdir()
    (cli_done / "config.json").write_text(json.dumps(micro("by-hand").to_dict()))
    lines = [
        {"kind": "status", "state": "running", "step": 0, "total_steps": 5, "time": 1.0},
        {"kind": "train", "step": 5, "total_steps": 5, "loss": 3.5, "tokens": 640, "time": 2.0},
        {"kind": "eval", "step": 5, "val_loss": 3.75, "time": 2.0},
        {"kind": "status", "state": "done", "step": 5, "total_steps": 5, "time": 3.0},
    ]
    (cli_done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    stale = runs / "by-hand-killed"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text(json.dumps({"kind": "status", "state": "running", "time": 1.0}) + "\n")
    os.utime(stale / "metrics.jsonl", (time.time() - 3600, time.time() - 3600))
    live = runs / "by-hand-live"
    live.mkdir()
    (live / "metrics.jsonl").write_text(json.dumps({"kind": "status", "state": "running", "time": 1.0}) + "\n")
    imported = runs / "gpt2-imported" / "ckpt" / "step-000000"
    imported.mkdir(parents=True)
    (imported / "state.json").write_text("{}")
    broken = runs / "broken"
    broken.mkdir()
    (broken / "status.json").write_text("{not json")
    (broken / "config.json").write_bytes(b"\xff\xfe")
    (broken / "metrics.jsonl").write_bytes(b'{"kind": "train", "step": 1, "loss": 2.0}\n\xff garbage\n{"kind":')
    (runs / "not-a-run").mkdir()  # empty folder
    (runs / ".hidden").mkdir()
    (runs / "stray-file.txt").write_text("x")
    (runs / "bad name").mkdir()
    (runs / "bad name" / "config.json").write_text("{}")

    by_name = {s.name: s for s in jobs.list_runs()}
    assert set(by_name) == {"by-hand", "by-hand-killed", "by-hand-live", "gpt2-imported", "broken"}
    assert list(by_name)[0] == "by-hand-live"  # active runs first
    done = by_name["by-hand"]
    assert (done.state, done.source, done.step, done.loss, done.val_loss) == ("done", "cli", 5, 3.5, 3.75)
    assert by_name["by-hand-killed"].state == "failed" and "no progress" in by_name["by-hand-killed"].message
    assert by_name["by-hand-live"].state == "running"
    assert (by_name["gpt2-imported"].state, by_name["gpt2-imported"].source) == ("done", "imported")
    assert by_name["broken"].step == 1  # the readable part of a damaged log still counts
    with pytest.raises(NotAJob, match="started by hand"):
        jobs.stop("by-hand-live")
    with pytest.raises(RunActive, match="running") as e:
        jobs.delete_run("by-hand-live")
    assert (e.value.name, e.value.state) == ("by-hand-live", "running")

    out = cli(runs, "list")
    assert out.returncode == 0, out.stderr
    assert "by-hand" in out.stdout and "gpt2-imported" in out.stdout and "bad name" not in out.stdout


def test_metrics_reader_leaves_a_partial_line(jobs):
    run = jobs.runs_dir / "partial"
    run.mkdir()
    path = run / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    assert [r["step"] for r in jobs.read_new_metrics("partial")] == [1]
    assert jobs.read_new_metrics("partial") == []
    with open(path, "a") as f:
        f.write('ep": 2}\n{"kind": "train", "step": 3}\n')
    assert [r["step"] for r in jobs.read_new_metrics("partial")] == [2, 3]
    assert [r["step"] for r in jobs.reader("partial").read_new()] == [1, 2, 3]  # a new reader starts over


def test_status_forgets_a_replaced_metrics_file(jobs):
    """A run deleted and made again under the same name (by hand, so no delete_run) shows only the new run."""
    run = jobs.runs_dir / "again"
    run.mkdir()
    old = [
        {"kind": "train", "step": 7, "total_steps": 9, "loss": 4.0, "time": 1.0},
        {"kind": "eval", "step": 7, "val_loss": 4.5, "time": 1.0},
        {"kind": "status", "state": "done", "step": 9, "total_steps": 9, "time": 2.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert (jobs.status("again").state, jobs.status("again").val_loss) == ("done", 4.5)
    fresh = run / "metrics.new"
    fresh.write_text(
        json.dumps({"kind": "status", "state": "running", "step": 0, "total_steps": 3, "time": 5.0}) + "\n"
    )
    os.replace(fresh, run / "metrics.jsonl")
    st = jobs.status("again")
    assert (st.state, st.step, st.total_steps, st.loss, st.val_loss) == ("running", 0, 3, None, None)


def test_delete_refuses_anything_outside_the_runs_folder(jobs, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (jobs.runs_dir / "escape").symlink_to(victim)
    for bad in ("../precious", str(victim), "..", ".", "", "escape", "a/../../precious"):
        with pytest.raises((ConfigError, JobError)):
            jobs.delete_run(bad)
    assert (victim / "keep.txt").read_text() == "keep"
    inside = jobs.runs_dir / "inside"
    inside.mkdir()
    (jobs.runs_dir / "alias").symlink_to(inside)
    jobs.delete_run("alias")  # a link inside the folder: only the link goes
    assert inside.is_dir() and not (jobs.runs_dir / "alias").exists()
    with pytest.raises(RunNotFound, match="no run named"):
        jobs.delete_run("never-existed")
    out = cli(jobs.runs_dir, "delete", "../precious")
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert (victim / "keep.txt").exists()


def test_cli_reports_errors_without_tracebacks(jobs):
    for args in (("status", "nope"), ("stop", "../x"), ("resume", "nope"), ("logs", "nope")):
        out = cli(jobs.runs_dir, *args)
        assert out.returncode == 1, args
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    out = cli(jobs.runs_dir, "launch", "--preset", "micro", "--run-name", "x", "--nproc", "2", "--dry-run")
    assert out.returncode == 0 and "torch.distributed.run --standalone --nproc_per_node=2" in out.stdout
    out = cli(jobs.runs_dir, "launch", "--preset", "nope", "--run-name", "x")
    assert out.returncode == 1 and "unknown preset" in out.stderr
    for bad in (("--run-name", "../x"), ("--run-name", "ok", "--batch-size", "0")):  # refused before printing
        out = cli(jobs.runs_dir, "launch", "--preset", "micro", *bad, "--dry-run")
        assert out.returncode == 1 and out.stdout == "" and out.stderr.startswith("error: "), out


def test_export_writes_the_metrics_as_csv_and_jsonl(jobs, tmp_path):
    run = jobs.runs_dir / "exported"
    writer = MetricsWriter(run / "metrics.jsonl")
    writer.write("status", state="running", step=0, total_steps=2)
    writer.write("train", step=1, loss=10.5, lr=1e-3, mfu=None)
    writer.write("sample", step=1, text='ROMEO:\nsay "hi", then')
    writer.write("eval", step=2, val_loss=float("nan"))  # written as null
    writer.close()
    written = read_all(run / "metrics.jsonl")

    out = cli(jobs.runs_dir, "export", "exported", "--format", "jsonl")
    assert out.returncode == 0 and [json.loads(line) for line in out.stdout.splitlines()] == written

    out = cli(jobs.runs_dir, "export", "exported")  # csv by default
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    header = out.stdout.splitlines()[0].split(",")
    assert header[:3] == ["kind", "step", "time"] and set(header) == {k for r in written for k in r}
    assert [r["kind"] for r in rows] == ["status", "train", "sample", "eval"]
    assert rows[1]["loss"] == "10.5" and rows[1]["mfu"] == "" and rows[1]["state"] == ""
    assert rows[2]["text"] == 'ROMEO:\nsay "hi", then' and rows[3]["val_loss"] == ""
    assert all(float(r["time"]) == w["time"] for r, w in zip(rows, written))

    target = tmp_path / "m.csv"
    out = cli(jobs.runs_dir, "export", "exported", "-o", str(target))
    assert out.returncode == 0 and target.read_text() == export_records(run / "metrics.jsonl", "csv")
    for args in (("export", "nope"), ("export", "exported", "-o", str(tmp_path / "no" / "m.csv"))):
        out = cli(jobs.runs_dir, *args)
        assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out
    (jobs.runs_dir / "imported").mkdir()
    out = cli(jobs.runs_dir, "export", "imported")
    assert out.returncode == 1 and "no metrics" in out.stderr


# ----- a fake trainer: a tiny script in the trainer's place, launched as a real job ------------------------

# argv: run folder, mode, seconds the save takes. Modes: "saver" saves a checkpoint on SIGTERM (marking it with
# core.runlock.saving, the way the trainer does) and exits; "deaf" ignores SIGTERM and never saves.
FAKE_TRAINER = """
import json, signal, sys, time
from pathlib import Path
from core.runlock import saving
run, mode, save_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "deaf" else lambda *_: stop.append(1))
(run / "fake.started").write_text("")
while not stop:
    time.sleep(0.05)
with saving(run, 7):
    time.sleep(save_s)
    (run / "fake.saved").write_text("")
with open(run / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"kind": "status", "state": "stopped", "step": 7, "time": time.time()}) + "\\n")
"""


def use_fake_trainer(jobs: Jobs, monkeypatch, mode: str = "saver", save_s: float = 0) -> None:
    """Make jobs launch FAKE_TRAINER instead of core.train (everything else is the real launch)."""

    def command_for(config: TrainConfig, resume: bool = False) -> list[str]:
        return [sys.executable, "-c", FAKE_TRAINER, str(jobs.runs_dir / config.run_name), mode, str(save_s)]

    monkeypatch.setattr(jobs, "command_for", command_for)


def launch_fake(jobs: Jobs, name: str) -> dict:
    jobs.launch(micro(name))
    wait_for(lambda: (jobs.run_dir(name) / "fake.started").exists(), 30, "the fake trainer to start")
    return job_record(jobs, name)


def test_stop_waits_for_a_checkpoint_being_saved(jobs, monkeypatch):
    """The save outlasts the stop timeout: stop keeps waiting instead of SIGKILLing it half-written."""
    use_fake_trainer(jobs, monkeypatch, "saver", save_s=4)
    rec = launch_fake(jobs, "saver")
    t0 = time.monotonic()
    st = jobs.stop("saver", timeout=1)
    assert time.monotonic() - t0 >= 3.5
    assert (jobs.run_dir("saver") / "fake.saved").exists(), "the save was cut short"
    assert (st.state, st.exit_code, st.message) == ("stopped", 0, ""), st
    assert "killed" not in job_record(jobs, "saver")
    assert_all_gone(rec["job_id"], rec["pid"])


def test_stop_kills_a_job_that_is_not_saving_after_the_timeout(jobs, monkeypatch, tmp_path):
    """A trainer deaf to SIGTERM is killed after --timeout (honoured by the CLI); a marker left by a dead saver
    does not extend the wait, and is cleaned."""
    use_fake_trainer(jobs, monkeypatch, "deaf")
    rec = launch_fake(jobs, "deaf")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    marker = {"pid": gone.pid, "start_time": time.time() - 5, "step": 3, "since": time.time() - 5}
    (jobs.run_dir("deaf") / ".saving").write_text(json.dumps(marker))
    t0 = time.monotonic()
    out = cli(jobs.runs_dir, "stop", "deaf", "--timeout", "1")
    assert time.monotonic() - t0 < 20, "the timeout was not honoured"
    assert out.returncode == 0 and "deaf: stopped" in out.stdout and "killed" in out.stdout, out.stdout + out.stderr
    assert job_record(jobs, "deaf")["killed"] is True
    assert not (jobs.run_dir("deaf") / ".saving").exists()
    assert_all_gone(rec["job_id"], rec["pid"])


def test_the_ui_stop_honours_its_timeout_field(jobs, monkeypatch):
    """Stop from the UI (and the API) takes the "Kill after (s)" value: a trainer deaf to SIGTERM is killed after it,
    not after the 30 s default; a value that cannot work is refused with a message and stops nothing."""
    from playground import actions

    use_fake_trainer(jobs, monkeypatch, "deaf")
    rec = launch_fake(jobs, "deaf")
    for bad in (0, -5, None, 10**9):
        refused = actions.stop_run(jobs, "deaf", bad)
        assert not refused.ok and refused.message.startswith("Stop timeout must be between 1 and"), refused
    assert job_record(jobs, "deaf")["state"] == "running"
    t0 = time.monotonic()
    assert actions.stop_run(jobs, "deaf", 2).ok
    st = wait_for(lambda: None if (s := jobs.status("deaf")).active else s, 25, "the deaf trainer to be killed")
    assert 1.5 <= time.monotonic() - t0 < 20, "the UI's timeout was not used"
    assert st.state == "stopped" and job_record(jobs, "deaf")["killed"] is True
    assert_all_gone(rec["job_id"], rec["pid"])


def test_a_save_that_never_ends_is_killed_at_the_cap(jobs, monkeypatch):
    monkeypatch.setattr(manager, "SAVE_WAIT_CAP_S", 2)
    use_fake_trainer(jobs, monkeypatch, "saver", save_s=120)
    rec = launch_fake(jobs, "hung")
    t0 = time.monotonic()
    st = jobs.stop("hung", timeout=1)
    assert 2.5 <= time.monotonic() - t0 < 20
    assert st.state == "stopped" and "was killed" in st.message, st
    assert not (jobs.run_dir("hung") / "fake.saved").exists()
    assert_all_gone(rec["job_id"], rec["pid"])


def test_a_trainer_whose_pid_was_never_recorded_is_found_and_adopted(jobs, monkeypatch):
    """Recording the pid after the start fails (disk full; the same as a launcher that died right there): past
    the start grace the job is found by its job id and adopted, not declared failed with its trainer running."""
    use_fake_trainer(jobs, monkeypatch, "saver")
    real_write = manager.write_status

    def disk_full_for_the_pid(run_dir: Path, record: dict) -> None:
        if record.get("pid") is not None:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(run_dir, record)

    monkeypatch.setattr(manager, "write_status", disk_full_for_the_pid)
    with pytest.raises(OSError, match="No space left"):
        jobs.launch(micro("lost"))
    monkeypatch.setattr(manager, "write_status", real_write)
    wait_for(lambda: (jobs.run_dir("lost") / "fake.started").exists(), 30, "the fake trainer to start")
    rec = job_record(jobs, "lost")
    assert rec["pid"] is None
    [pid] = procs_with_job_id(rec["job_id"])

    later = Jobs(jobs.runs_dir, clock=lambda: time.time() + START_GRACE_S + 5)
    st = later.status("lost")
    assert (st.state, st.pid) == ("running", pid), st
    rec = job_record(jobs, "lost")
    assert (rec["state"], rec["pid"], rec["pgid"]) == ("running", pid, pid)
    assert rec["start_time"] == pytest.approx(psutil.Process(pid).create_time(), abs=0.05)
    with pytest.raises(DeviceBusy, match="'lost'"):
        later.launch(micro("second"))  # the device is busy: no second job on top of it
    with pytest.raises(RunActive):
        later.resume("lost")
    st = later.stop("lost", timeout=10)
    assert st.state == "stopped" and (jobs.run_dir("lost") / "fake.saved").exists(), st
    assert_all_gone(rec["job_id"], pid)


# Holds a lock the way its owner would: argv[1] "jobs" (Jobs' launch lock, as a launch or resume in progress
# does) or "run" (the per-run lock, as a trainer started by hand does), on the path argv[2]; until stdin closes.
LOCK_HOLDER = """
import fcntl, sys
from core.runlock import hold_run_lock
if sys.argv[1] == "jobs":
    f = open(sys.argv[2], "a")
    fcntl.flock(f, fcntl.LOCK_EX)
else:
    lock = hold_run_lock(sys.argv[2])
print("held", flush=True)
sys.stdin.read()
"""


def hold(kind: str, path: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, kind, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline() == "held\n"
    return p


def a_stopped_run(jobs: Jobs, name: str) -> Path:
    """A run that was trained by hand and stopped: config, a checkpoint, a final status."""
    run = jobs.runs_dir / name
    (run / "ckpt" / "step-000005").mkdir(parents=True)
    (run / "ckpt" / "step-000005" / "state.json").write_text("{}")
    (run / "config.json").write_text(json.dumps(micro(name).to_dict()))
    status = {"kind": "status", "state": "stopped", "step": 5, "time": time.time() - 60}
    (run / "metrics.jsonl").write_text(json.dumps(status) + "\n")
    return run


def test_delete_waits_for_a_launch_in_progress(jobs):
    """Delete takes the lock launch and resume take, so it cannot slip in between a resume's check and its start."""
    run = a_stopped_run(jobs, "old")
    holder = hold("jobs", jobs.runs_dir / ".jobs.lock")
    try:
        deleter = threading.Thread(target=jobs.delete_run, args=("old",))
        deleter.start()
        time.sleep(1)
        assert deleter.is_alive() and run.is_dir(), "delete did not wait for the launch lock"
    finally:
        holder.communicate("")
    deleter.join(30)
    assert not deleter.is_alive() and not run.exists()


def test_resume_and_delete_refuse_a_run_a_trainer_is_writing(jobs, monkeypatch):
    """`python -m core.train --resume RUN` typed in a terminal holds the run lock (here still preparing data, so
    its metrics say nothing new): no second writer from a resume, no delete under its feet."""
    use_fake_trainer(jobs, monkeypatch)
    run = a_stopped_run(jobs, "typed")
    holder = hold("run", run)
    try:
        assert jobs.status("typed").state == "stopped"  # all the metrics know
        with pytest.raises(RunActive, match=rf"'typed' is still running \(written by pid {holder.pid}\)"):
            jobs.resume("typed")
        assert not (run / "status.json").exists(), "a second writer was started"
        with pytest.raises(RunActive, match=f"pid {holder.pid}"):
            jobs.delete_run("typed")
        assert (run / "ckpt" / "step-000005" / "state.json").is_file()
        out = cli(jobs.runs_dir, "delete", "typed")
        assert out.returncode == 1 and f"pid {holder.pid}" in out.stderr and run.is_dir()
    finally:
        holder.kill()  # the lock goes with the process
        holder.wait()
    jobs.delete_run("typed")
    assert not run.exists()


# ----- real trainer processes ---------------------------------------------------------------------------

REATTACH = """
import json, sys
from core.jobs import Jobs
jobs = Jobs(sys.argv[1])
runs = jobs.list_runs()
records = jobs.read_new_metrics(runs[0].name)
print(json.dumps({"runs": [[s.name, s.state, s.pid, s.step] for s in runs],
                  "train": [r["step"] for r in records if r["kind"] == "train"]}))
"""


def assert_seen_from_another_process(jobs: Jobs, name: str, pid: int, n_train: int) -> None:
    """Another process (the UI after a restart, a terminal) sees the running job and its metrics."""
    out = subprocess.run(
        [sys.executable, "-c", REATTACH, str(jobs.runs_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["runs"][0][:3] == [name, "running", pid] and len(seen["train"]) >= n_train
    out = cli(jobs.runs_dir, "status", name)
    assert out.returncode == 0 and f"{name}: running (pid {pid})" in out.stdout
    out = cli(jobs.runs_dir, "logs", name, "-n", "3")
    assert out.returncode == 0 and "loss" in out.stdout


def steps_after(jobs: Jobs, name: str, since: float) -> list[int]:
    return [r["step"] for r in records(jobs.run_dir(name), "train") if r["time"] >= since]


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_all_gone(job_id: str, pid: int) -> None:
    assert procs_with_job_id(job_id) == [] and dead(pid)


@needs_trainer
@pytest.mark.slow
def test_single_process_job_lifecycle(jobs):
    name = "solo"
    st = jobs.launch(micro(name))
    rec = job_record(jobs, name)
    assert st.state == "running" and st.pid == rec["pid"] == rec["pgid"] and rec["start_time"] and rec["job_id"]
    run = jobs.run_dir(name)
    assert (run / "command.txt").read_text().strip() == jobs.command_line(micro(name))
    assert TrainConfig.from_json(run / "config.json").runs_dir == str(jobs.runs_dir)

    # metrics appear and grow; the incremental reader only returns new records
    wait_for(lambda: len(train_steps(jobs, name)) >= 3, 120, "the first train records")
    first = [r["step"] for r in jobs.read_new_metrics(name) if r["kind"] == "train"]
    wait_for(lambda: len(train_steps(jobs, name)) > len(first) + 1, 60, "more train records")
    more = [r["step"] for r in jobs.read_new_metrics(name) if r["kind"] == "train"]
    assert first and more and more[0] == first[-1] + 1
    st = jobs.status(name)
    assert (st.state, st.source, st.device, st.nproc) == ("running", "job", "cpu", 1)
    assert st.step >= more[-1] and st.loss > 0 and st.tok_per_s > 0 and st.total_steps == 1_000_000

    # one CPU job at a time unless asked; a running run cannot be deleted
    with pytest.raises(DeviceBusy, match=r"'solo' .*already training on cpu.*allow concurrent") as e:
        jobs.launch(micro("second"))
    assert (e.value.holder, e.value.device) == ("solo", "cpu")
    assert not (jobs.runs_dir / "second").exists()
    with pytest.raises(RunActive, match="stop it before deleting"):
        jobs.delete_run(name)
    with pytest.raises(RunActive, match="stop it before resuming"):
        jobs.resume(name)

    assert_seen_from_another_process(jobs, name, st.pid, len(first + more))

    # stop: SIGTERM -> the trainer saves a checkpoint, status stopped, nothing left of the job
    t0 = time.monotonic()
    st = jobs.stop(name, timeout=60)
    assert time.monotonic() - t0 < 60
    assert st.state == "stopped", st
    assert_all_gone(rec["job_id"], rec["pid"])
    stopped_at = st.step
    assert st.checkpoint == f"step-{stopped_at:06d}" and (run / "ckpt" / st.checkpoint / "model.safetensors").is_file()

    # resume continues from that checkpoint
    t_resume = time.time()
    st = jobs.resume(name)
    assert st.state == "running" and "--resume" in st.command
    wait_for(lambda: len(steps_after(jobs, name, t_resume)) >= 2, 120, "train records after resume")
    assert steps_after(jobs, name, t_resume)[0] == stopped_at + 1

    # kill -9: failed, with the end of train.log as the reason; the run folder is intact
    rec = job_record(jobs, name)
    os.kill(rec["pid"], signal.SIGKILL)
    st = wait_for(lambda: (s := jobs.status(name)).state == "failed" and s, 30, "state failed after kill -9")
    assert "ended without a final status (exit code -9)" in st.message and "loss" in st.log_tail
    for f in ("config.json", "command.txt", "train.log", "metrics.jsonl", f"ckpt/step-{stopped_at:06d}/state.json"):
        assert (run / f).is_file(), f
    assert_all_gone(rec["job_id"], rec["pid"])
    out = cli(jobs.runs_dir, "status", name)
    assert "solo: failed" in out.stdout and "end of train.log:" in out.stdout and "loss" in out.stdout

    # resume after the crash (from the CLI) starts again from the last checkpoint
    t_resume = time.time()
    out = cli(jobs.runs_dir, "resume", name)
    assert out.returncode == 0 and "resumed solo" in out.stdout, out.stderr
    wait_for(lambda: len(steps_after(jobs, name, t_resume)) >= 2, 120, "train records after the second resume")
    assert steps_after(jobs, name, t_resume)[0] == stopped_at + 1

    # a trainer that does not react to SIGTERM (here: frozen with SIGSTOP) is killed after the timeout
    rec = job_record(jobs, name)
    os.kill(rec["pid"], signal.SIGSTOP)
    out = cli(jobs.runs_dir, "stop", name, "--timeout", "2")
    assert out.returncode == 0 and "solo: stopped" in out.stdout and "killed" in out.stdout, out.stdout + out.stderr
    assert_all_gone(rec["job_id"], rec["pid"])
    assert jobs.status(name).state == "stopped"
    out = cli(jobs.runs_dir, "list")
    assert out.returncode == 0 and "solo" in out.stdout and "stopped" in out.stdout


@needs_trainer
@pytest.mark.slow
def test_ddp_job_stop_and_orphaned_workers(jobs):
    name = "ddp"
    st = jobs.launch(micro(name, nproc=2))
    rec = job_record(jobs, name)
    assert "torch.distributed.run" in st.command and st.nproc == 2
    wait_for(lambda: len(train_steps(jobs, name)) >= 2, 180, "DDP train records")
    assert len(procs_with_job_id(rec["job_id"])) >= 3  # torchrun agent + 2 workers (own sessions)

    # stop without waiting (how the UI does it), then watch the state settle
    t0 = time.monotonic()
    assert jobs.stop(name, timeout=60, wait=False).state == "stopping"
    st = wait_for(lambda: (s := jobs.status(name)).state != "stopping" and s, 60, "the DDP job to stop")
    assert time.monotonic() - t0 < 60
    assert st.state == "stopped" and st.checkpoint == f"step-{st.step:06d}", st
    assert_all_gone(rec["job_id"], rec["pid"])

    # the torchrun agent killed with -9 leaves its workers running: still our job, and stop finds them
    st = jobs.resume(name)
    rec = job_record(jobs, name)
    wait_for(lambda: len(procs_with_job_id(rec["job_id"])) >= 3, 120, "the DDP workers")
    t_resume = time.time()
    wait_for(lambda: steps_after(jobs, name, t_resume), 120, "train records after resume")
    os.kill(rec["pid"], signal.SIGKILL)
    wait_for(lambda: dead(rec["pid"]), 10, "the agent to die")
    st = jobs.status(name)
    assert st.state == "running" and "launcher" in st.message and "gone" in st.message, st
    st = jobs.stop(name, timeout=60)
    assert st.state == "stopped", st
    assert_all_gone(rec["job_id"], rec["pid"])


@needs_trainer
@pytest.mark.slow
def test_jobs_that_end_by_themselves(jobs, tmp_path):
    """A short run ends done; a config that validates but cannot train (missing corpus) ends failed with the
    trainer's own message."""
    st = jobs.launch(micro("short", max_steps=3))
    st = wait_for(lambda: (s := jobs.status("short")).state == "done" and s, 120, "the short job to finish")
    assert (st.step, st.total_steps, st.exit_code, st.checkpoint) == (3, 3, 0, "step-000003")
    with pytest.raises(NothingToResume, match="already finished all 3 steps"):
        jobs.resume("short")

    missing = tmp_path / "no-such-corpus.txt"
    jobs.launch(micro("bad-data", data=str(missing)))
    st = wait_for(lambda: (s := jobs.status("bad-data")).state == "failed" and s, 120, "the job to fail")
    assert str(missing) in st.message and "Traceback" not in st.message, st.message
    assert st.exit_code not in (0, None) and str(missing) in st.log_tail
    out = cli(jobs.runs_dir, "logs", "bad-data", "-f")  # follow on an ended job prints the log and returns
    assert out.returncode == 0 and str(missing) in out.stdout
