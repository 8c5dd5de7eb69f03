"""python -m core.jobs [--runs-dir DIR] list | status RUN | stop RUN | resume RUN | logs RUN | launch | delete RUN
                                   | export RUN | eval RUN --task hellaswag|perplexity | evals RUN

Exit code 0 on success, 1 with a one-line `error: ...` on stderr when the operation is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from core.cli import add_config_arguments, overrides_from_args
from core.config import ConfigError, TrainConfig
from core.files import write_text_atomic
from core.jobs.errors import JobError
from core.jobs.evaljob import TASKS, eval_status, launch_eval, read_evals
from core.jobs.manager import STOP_TIMEOUT_S, Jobs
from core.jobs.records import JobStatus
from core.metrics import FORMATS, export_records
from core.runs import validate_run_name


def _fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def _print_table(runs: list[JobStatus]) -> None:
    rows = [("NAME", "STATE", "STEP", "LOSS", "VAL", "DEVICE", "STARTED")]
    for s in runs:
        step = f"{_fmt(s.step)}/{_fmt(s.total_steps)}" if s.step is not None else "-"
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started_at)) if s.started_at else "-"
        dev = f"{s.device}x{s.nproc}" if s.device and (s.nproc or 1) > 1 else (s.device or "-")
        rows.append((s.name, s.state, step, _fmt(s.loss, ".4f"), _fmt(s.val_loss, ".4f"), dev, started))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_status(s: JobStatus) -> None:
    print(f"{s.name}: {s.state}" + (f" (pid {s.pid})" if s.active and s.pid else ""))
    if s.step is not None:
        line = f"  step {s.step}/{_fmt(s.total_steps)}  loss {_fmt(s.loss, '.4f')}  val {_fmt(s.val_loss, '.4f')}"
        if s.tok_per_s:
            line += f"  {s.tok_per_s:,.0f} tok/s"
        if s.eta_s is not None:
            line += f"  eta {s.eta_s / 60:.1f} min"
        print(line)
    if s.device:
        procs = f" x{s.nproc} {s.parallel or 'ddp'}" if s.nproc and s.nproc > 1 else ""
        memory = f"  memory {' / '.join(f'{m:,.0f}' for m in s.mem_mb)} MB" if s.mem_mb else ""
        print(f"  device {s.device}{procs}{memory}")
    if s.checkpoint:
        print(f"  checkpoint {s.checkpoint}")
    if s.message:
        print("  " + s.message.replace("\n", "\n  "))
    if s.log_tail and s.log_tail != s.message:
        print("  end of train.log:\n    " + s.log_tail.replace("\n", "\n    "))


def _follow(jobs: Jobs, name: str) -> None:
    """Print train.log as it grows until the job ends (like tail -f, but stops with the job)."""
    path = jobs.run_dir(name) / "train.log"
    offset = path.stat().st_size if path.exists() else 0
    while True:
        active = jobs.status(name).active
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not active:
            return
        time.sleep(0.5)


EXAMPLES = """examples:
  python -m core.jobs launch --preset tiny --max-steps 1000 --run-name tiny-shk
  python -m core.jobs list
  python -m core.jobs logs tiny-shk -f                      follow its log until the job ends
  python -m core.jobs stop tiny-shk                         it saves a checkpoint, then exits
  python -m core.jobs resume tiny-shk
  python -m core.jobs export tiny-shk --format csv -o tiny-shk.csv
  python -m core.jobs --runs-dir ~/runs status tiny-shk --json"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m core.jobs",
        description="Manage background training jobs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs-dir", default="checkpoints", help="the runs folder (default: checkpoints)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="all runs, active first")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="state, step, loss of one run")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("delete", help="delete a run folder")
    p.add_argument("run")
    p = sub.add_parser("stop", help="stop a job (it saves a checkpoint first)")
    p.add_argument("run")
    p.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT_S,
        help=f"seconds before SIGKILL (default {STOP_TIMEOUT_S:g}); longer while a checkpoint is being saved",
    )
    p = sub.add_parser("resume", help="continue a stopped or failed run from its latest checkpoint")
    p.add_argument("run")
    p.add_argument("--allow-concurrent", action="store_true", help="allow a second job on the CPU")
    p = sub.add_parser("logs", help="the end of train.log")
    p.add_argument("run")
    p.add_argument("-n", type=int, default=50, help="lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p = sub.add_parser("export", help="a run's metrics as CSV (one row per record) or JSONL")
    p.add_argument("run")
    p.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or jsonl")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of printing")
    p = sub.add_parser("launch", help="start a training job in the background")
    p.add_argument("--config", help="a TrainConfig JSON file; flags override its fields")
    p.add_argument("--allow-concurrent", action="store_true", help="allow a second job on the CPU")
    p.add_argument("--auto-suffix", action="store_true", help="on a name clash, add -2, -3, ...")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    add_config_arguments(p, skip=("runs_dir",))  # the top-level --runs-dir decides
    p = sub.add_parser("eval", help="evaluate a run's checkpoint in the background (HellaSwag or perplexity)")
    p.add_argument("run")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--limit", type=int, help="hellaswag: only the first N examples")
    p.add_argument("--file", help="hellaswag: a local HellaSwag jsonl file (default: the validation set, downloaded)")
    p.add_argument("--data", help="perplexity: the text file")
    p.add_argument("--checkpoint", help="a checkpoint folder name of the run, e.g. step-000500 (default: the newest)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p = sub.add_parser("evals", help="a run's evaluation job and its results (evals.jsonl)")
    p.add_argument("run")
    return ap


def _list(jobs: Jobs, args: argparse.Namespace) -> None:
    runs = jobs.list_runs()
    if args.json:
        print(json.dumps([s.to_dict() for s in runs], indent=1))
    elif runs:
        _print_table(runs)
    else:
        print(f"no runs in {jobs.runs_dir}")


def _status(jobs: Jobs, args: argparse.Namespace) -> None:
    s = jobs.status(args.run)
    print(json.dumps(s.to_dict(), indent=1)) if args.json else _print_status(s)


def _stop(jobs: Jobs, args: argparse.Namespace) -> None:
    before = jobs.status(args.run)
    if not before.active:
        print(f"{args.run} is not running (state {before.state})")
        return
    print(
        f"stopping {args.run} (waiting up to {args.timeout:g}s for its checkpoint, longer while one is being saved)...",
        flush=True,
    )
    _print_status(jobs.stop(args.run, timeout=args.timeout))


def _resume(jobs: Jobs, args: argparse.Namespace) -> None:
    s = jobs.resume(args.run, allow_concurrent=args.allow_concurrent)
    print(f"resumed {s.name} (pid {s.pid}); follow it with: python -m core.jobs logs {s.name} -f")


def _logs(jobs: Jobs, args: argparse.Namespace) -> None:
    print(jobs.log_tail(args.run, args.n))
    if args.follow:
        _follow(jobs, args.run)


def _delete(jobs: Jobs, args: argparse.Namespace) -> None:
    jobs.delete_run(args.run)
    print(f"deleted {args.run}")


def _export(jobs: Jobs, args: argparse.Namespace) -> None:
    run_dir = Path(jobs.status(args.run).run_dir)  # status refuses a name that is no run
    try:
        text = export_records(run_dir / "metrics.jsonl", args.format)
    except ValueError as e:  # no metrics file
        raise JobError(str(e)) from e
    if args.output:
        try:
            write_text_atomic(Path(args.output), text)
        except OSError as e:
            raise JobError(f"cannot write {args.output} ({e.strerror}); give a file in a folder that exists") from e
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _launch(jobs: Jobs, args: argparse.Namespace) -> None:
    base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    config = TrainConfig.from_dict({**base, **overrides_from_args(args)})
    if args.dry_run:  # refuse what launch would refuse before printing a command that cannot run
        if config.run_name:
            validate_run_name(config.run_name)
        config.validate()
        print(jobs.command_line(config))
        return
    s = jobs.launch(config, allow_concurrent=args.allow_concurrent, auto_suffix=args.auto_suffix)
    print(f"launched {s.name} (pid {s.pid}): {s.command}")
    print(f"follow it with: python -m core.jobs logs {s.name} -f")


def _eval(jobs: Jobs, args: argparse.Namespace) -> None:
    options = dict(limit=args.limit, data=args.data, file=args.file, checkpoint=args.checkpoint, device=args.device)
    st = launch_eval(jobs.runs_dir, args.run, args.task, **options)
    print(f"evaluating {args.run} ({st.task} on {st.checkpoint}) in the background (pid {st.pid})", flush=True)
    while args.wait and st.active:
        time.sleep(0.5)
        st = eval_status(jobs.runs_dir, args.run)
    if not args.wait:
        print(f"the result goes to {jobs.run_dir(args.run) / 'evals.jsonl'}; see: python -m core.jobs evals {args.run}")
    elif st.state == "done":
        print(json.dumps(st.result))
    else:
        raise JobError(f"the evaluation of {args.run!r} failed: {st.message}")


def _evals(jobs: Jobs, args: argparse.Namespace) -> None:
    st = eval_status(jobs.runs_dir, args.run)
    print(f"{args.run}: evaluation {st.state}" + (f" ({st.task} on {st.checkpoint})" if st.task else ""))
    if st.message:
        print("  " + st.message.replace("\n", "\n  "))
    for record in read_evals(jobs.runs_dir, args.run):
        print(json.dumps(record))


COMMANDS = {
    "list": _list,
    "status": _status,
    "stop": _stop,
    "resume": _resume,
    "logs": _logs,
    "delete": _delete,
    "launch": _launch,
    "export": _export,
    "eval": _eval,
    "evals": _evals,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.cmd](Jobs(args.runs_dir), args)
    except (ConfigError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
