"""The Models tab's Evaluate: start an evaluation job on a run's checkpoint, follow it, and say how it went.

The job is the one `python -m core.jobs eval` starts (core.jobs.launch_eval); its result lands in the run's
evals.jsonl, where the Models table reads it (core.jobs.checkpoint_scores). Nothing here raises: every refusal
is an Outcome with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import ConfigError, TrainConfig
from core.data import BUNDLED, TEXT_SUFFIXES
from core.jobs import EvalStatus, Jobs, eval_status, launch_eval
from core.paths import UNRESTRICTED, AccessPolicy
from playground.actions import EXPECTED, Outcome

TASK_LABELS = {"hellaswag": "HellaSwag", "perplexity": "Perplexity"}
DEFAULT_LIMIT = 500  # HellaSwag examples: a few minutes on a CPU for the small presets


def run_text_file(run_dir: Path) -> Path | None:
    """The text a run validates on, as one local file: its val_data, else its training data when that is one
    text file (the bundled corpus included); None for a streamed dataset, a folder or an unreadable config."""
    try:
        cfg = TrainConfig.from_json(run_dir / "config.json")
    except ConfigError:
        return None
    for spec in (cfg.val_data, cfg.data):
        if not spec or spec.startswith("hf:"):
            continue
        path = BUNDLED.get(spec, Path(spec).expanduser())
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            return path
    return None


def split_checkpoint(jobs: Jobs, ckpt: str | None) -> tuple[str, str]:
    """(run, checkpoint folder name) of a checkpoint path of this runs folder; ConfigError otherwise."""
    if not ckpt:
        raise ConfigError("pick a checkpoint to evaluate (click a row of the table)", field="ckpt")
    path = Path(ckpt)
    run = path.parent.parent.name
    if path.parent != jobs.run_dir(run) / "ckpt":  # run_dir refuses names outside the runs folder
        raise ConfigError(f"{ckpt} is not a checkpoint of a run in {jobs.runs_dir}", field="ckpt")
    return run, path.name


def _task_options(
    jobs: Jobs, run: str, task: str, limit: float | None, file: str | None, data: str | None, access: AccessPolicy
) -> dict[str, Any]:
    """launch_eval's keyword arguments for the form's values; ConfigError naming what to fix."""
    if task == "hellaswag":
        if limit is None or limit < 1 or float(limit) != int(limit):
            raise ConfigError(f"the example limit must be a whole number >= 1, got {limit}", field="limit")
        if (file or "").strip():
            return {"limit": int(limit), "file": access.check_read(file.strip(), "file")}
        access.check_download("the HellaSwag validation set", "file")
        return {"limit": int(limit)}
    if task != "perplexity":
        raise ConfigError(f"unknown task {task!r}; choose HellaSwag or Perplexity", field="task")
    if (data or "").strip():
        return {"data": access.check_read(data.strip(), "data")}
    own = run_text_file(jobs.run_dir(run))
    if own is None:
        raise ConfigError(f"run {run!r} has no local text file to score (a streamed or folder dataset); give a file")
    return {"data": access.check_read(own, "data")}


def start_eval(
    jobs: Jobs,
    ckpt: str | None,
    task: str,
    limit: float | None = DEFAULT_LIMIT,
    file: str | None = None,
    data: str | None = None,
    access: AccessPolicy = UNRESTRICTED,
) -> tuple[Outcome, str | None]:
    """Start evaluating a checkpoint in the background: (what happened, the run evaluated or None)."""
    try:
        run, name = split_checkpoint(jobs, ckpt)
        options = _task_options(jobs, run, task, limit, file, data, access)
        st = launch_eval(jobs.runs_dir, run, task, checkpoint=name, **options)
    except EXPECTED as e:  # bad settings, a missing file, one already running, no such run
        return Outcome(False, f"Not started: {e}"), None
    what = f"first {options['limit']} examples" if task == "hellaswag" else Path(options["data"]).name
    return (
        Outcome(
            True,
            f"Evaluating **{run} / {name}** ({TASK_LABELS[task]}, {what}) in the background (pid {st.pid}); "
            "the result appears in the table when it is done.",
        ),
        run,
    )


def describe_result(st: EvalStatus) -> str:
    """One line for a finished evaluation job: its scores, or why it failed."""
    where = f"{st.run} / {st.checkpoint}"
    if st.state == "failed":
        return f"⚠ The evaluation of {where} failed: {st.message}"
    r = st.result or {}
    if st.task == "hellaswag" and "acc_norm" in r:
        return f"✅ {where}: HellaSwag acc_norm **{r['acc_norm']:.4f}** (acc {r['acc']:.4f}, {r['n']} examples)"
    if "perplexity" in r:
        return f"✅ {where}: perplexity **{r['perplexity']:.2f}** (loss {r['loss']:.4f}, {r['tokens']:,} tokens)"
    return f"{where}: evaluation {st.state}"


def follow_eval(jobs: Jobs, run: str | None) -> tuple[bool, str | None]:
    """(still running, the line to show once it ended: None while it runs or when there is nothing to follow)."""
    if not run:
        return False, None
    try:
        st = eval_status(jobs.runs_dir, run)
    except EXPECTED as e:  # the run was deleted meanwhile
        return False, f"⚠ {e}"
    if st.active:
        return True, None
    return False, describe_result(st) if st.state != "none" else None
