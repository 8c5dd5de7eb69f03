"""Models tab: every run and checkpoint (step, val loss, HellaSwag, perplexity, size, date); evaluate a checkpoint in
the background; delete a run; import GPT-2 from Hugging Face format; export a checkpoint to Hugging Face format."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from core.config import ConfigError, TrainConfig, model_config
from core.jobs import Jobs, checkpoint_scores
from core.paths import UNRESTRICTED, AccessPolicy
from core.runs import list_checkpoints, read_state
from playground import actions, eval_action
from playground.runs_view import folder_size, list_runs, megabytes
from playground.tab import AppContext, OnOpen, Tab, bind

COLUMNS = ["Run", "State", "Model", "Checkpoint", "Step", "Val loss", "HellaSwag", "Perplexity", "Size", "Saved"]
EVAL_TICK_S = 2.0  # an evaluation job is followed at this pace until it ends


def model_label(run_dir: Path, preset: str | None) -> str:
    """The run's preset, or its own shape ('2 layers × 64') when its config.json overrides the preset's (an
    imported model, a run initialized from one)."""
    try:
        mc = TrainConfig.from_json(run_dir / "config.json").model_config()
        base = model_config(preset or "")
    except ConfigError:
        return preset or "—"
    if (mc.n_layer, mc.n_head, mc.n_embd, mc.block_size) == (base.n_layer, base.n_head, base.n_embd, base.block_size):
        return preset or "—"
    return f"{mc.n_layer} layers × {mc.n_embd}"


def score_cells(scores: dict[str, Any]) -> list[str]:
    """The HellaSwag and Perplexity cells of a checkpoint's newest scores (core.jobs.checkpoint_scores); — if none."""
    hellaswag, ppl = scores.get("hellaswag_acc_norm"), scores.get("perplexity")
    return [
        f"{hellaswag:.4f} (n {scores.get('hellaswag_n')})" if isinstance(hellaswag, (int, float)) else "—",
        f"{ppl:.2f}" if isinstance(ppl, (int, float)) else "—",
    ]


def _scores(jobs: Jobs, run: str) -> dict[str, dict[str, Any]]:
    try:
        return checkpoint_scores(jobs.runs_dir, run)
    except Exception:  # an unreadable results file must not hide the run
        return {}


def checkpoint_rows(jobs: Jobs) -> list[list[Any]]:
    """One row per checkpoint, newest first within a run; a run without checkpoints gets one row of dashes. The
    HellaSwag acc_norm is the newest of the training loop's (at the checkpoint's step) and evaluation jobs'."""
    rows = []
    for st in list_runs(jobs):
        ckpts = list_checkpoints(Path(st.run_dir))
        model = model_label(Path(st.run_dir), st.preset)
        if not ckpts:
            rows.append([st.name, st.state, model, "—", None, "—", "—", "—", "—", "—"])
        scores = _scores(jobs, st.name) if ckpts else {}
        for ck in reversed(ckpts):
            try:
                state = read_state(ck)
            except Exception:
                state = {}
            val = f"{state['val_loss']:.4f}" if isinstance(state.get("val_loss"), (int, float)) else "—"
            saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(ck.stat().st_mtime))
            step = state.get("step")
            cells = score_cells(scores.get(ck.name, {}))
            rows.append([st.name, st.state, model, ck.name, step, val, *cells, megabytes(folder_size(ck)), saved])
    return rows


def checkpoint_choices(jobs: Jobs) -> list[tuple[str, str]]:
    return [
        (f"{st.name} / {ck.name}", str(ck))
        for st in list_runs(jobs)
        for ck in reversed(list_checkpoints(Path(st.run_dir)))
    ]


def import_model(jobs: Jobs, source: str, name: str, access: AccessPolicy = UNRESTRICTED) -> tuple[str, Path | None]:
    """Import Hugging Face GPT-2 weights as a new run; (message, run folder or None). `access` says which folders
    and downloads an exposed app may use."""
    from core.hf import import_to_run  # torch: the page is built before it is loaded

    source, name = (source or "").strip(), (name or "").strip()
    if not source:
        return "⚠ Give a Hugging Face GPT-2 folder or a hub id such as `gpt2`.", None
    try:
        path = import_to_run(access.check_model_source(source, "source"), jobs.runs_dir, name)
    except Exception as e:  # outside the allowed folders, HFError (offline, not GPT-2, corrupt), bad name, disk full
        return f"⚠ Import failed: {e}", None
    return (
        f"✅ Imported **{source}** as run **{path.name}**: pick it in Sampling, Attention, or Train → Initialize from.",
        path,
    )


def export_checkpoint(jobs: Jobs, ckpt: str | None, out: str | None, access: AccessPolicy = UNRESTRICTED) -> str:
    """Export a checkpoint of this runs folder to a new Hugging Face folder. Empty `out`: <run>/hf-<checkpoint>, or
    <exports folder>/<run>-<checkpoint> with --exports-dir; a relative `out` lands in the exports folder (the runs
    folder by default), and an exposed app writes nowhere else."""
    from core.hf import export_hf  # torch: the page is built before it is loaded

    if not ckpt:
        return "⚠ Pick a checkpoint to export."
    ck = Path(ckpt)
    try:
        run_dir = jobs.run_dir(ck.parent.parent.name)  # refuses paths outside the runs folder
        if ck.parent != run_dir / "ckpt":
            return f"⚠ {ck} is not a checkpoint of a run in {jobs.runs_dir}"
        if out and out.strip():
            target = access.check_export(out.strip(), jobs.runs_dir, "out_dir")
        elif access.exports_dir:
            target = access.exports_dir / f"{run_dir.name}-{ck.name}"
        else:
            target = run_dir / f"hf-{ck.name}"
        written = export_hf(ck, target)
    except Exception as e:  # outside the exports folder, not empty, disk full
        return f"⚠ Export failed: {e}"
    return f"✅ Exported to `{written}`: `transformers.GPT2LMHeadModel.from_pretrained({str(written)!r})` loads it."


# ----- callbacks: fn(tab, ctx, *inputs) -> {component: value} ------------------------------------------------------


def refresh_models(tab: Tab, ctx: AppContext, run: str | None = None, ckpt: str | None = None) -> dict[Any, Any]:
    """The table and both pickers, keeping the picked run and checkpoint while they still exist."""
    names = [st.name for st in list_runs(ctx.jobs)]
    ckpts = checkpoint_choices(ctx.jobs)
    value = ckpt if ckpt in [v for _, v in ckpts] else None
    return {
        tab["table"]: checkpoint_rows(ctx.jobs),
        tab["run"]: gr.update(choices=names, value=run if run in names else None),
        tab["ckpt"]: gr.update(choices=ckpts, value=value),
        tab["eval_ckpt"]: gr.update(choices=ckpts, value=value),
    }


def pick_row(tab: Tab, ctx: AppContext, rows: Any, evt: gr.SelectData) -> dict[Any, Any]:
    """A clicked table row picks its run (to delete) and its checkpoint (to export and to evaluate)."""
    row = evt.row_value  # the clicked row's cells, by position (the table's value is a DataFrame keyed by header)
    if row is None:
        row = rows.iloc[evt.index[0]].tolist() if hasattr(rows, "iloc") else rows[evt.index[0]]
    name, ck = row[COLUMNS.index("Run")], row[COLUMNS.index("Checkpoint")]
    picked = {tab["run"]: name}
    if ck and ck != "—":
        picked[tab["ckpt"]] = picked[tab["eval_ckpt"]] = str(ctx.jobs.run_dir(name) / "ckpt" / ck)
    return picked


def ask_to_delete(tab: Tab, ctx: AppContext, name: str | None) -> dict[Any, Any]:
    asked = actions.confirm_delete(ctx.jobs, name)
    return {
        tab["confirm_box"]: gr.update(visible=asked.ok),
        tab["confirm_md"]: asked.message if asked.ok else "",
        tab["delete_msg"]: "" if asked.ok else f"⚠ {asked.message}",
    }


def cancel_delete(tab: Tab, ctx: AppContext) -> dict[Any, Any]:
    return {tab["confirm_box"]: gr.update(visible=False), tab["delete_msg"]: ""}


def delete_confirmed(tab: Tab, ctx: AppContext, name: str | None, ckpt: str | None) -> dict[Any, Any]:
    deleted = actions.delete_run(ctx.jobs, name)
    return {
        tab["confirm_box"]: gr.update(visible=False),
        tab["delete_msg"]: f"🗑 {deleted.message}" if deleted.ok else f"⚠ {deleted.message}",
        **refresh_models(tab, ctx, None, ckpt),
    }


def import_and_pick(tab: Tab, ctx: AppContext, source: str, name: str) -> dict[Any, Any]:
    """Import, then show the new run picked with its checkpoint."""
    message, path = import_model(ctx.jobs, source, name, ctx.access)
    if path is None:
        return {tab["import_msg"]: message, **refresh_models(tab, ctx)}
    ckpts = list_checkpoints(path)
    return {tab["import_msg"]: message, **refresh_models(tab, ctx, path.name, str(ckpts[-1]) if ckpts else None)}


def export_picked(tab: Tab, ctx: AppContext, ckpt: str | None, out: str | None) -> dict[Any, Any]:
    return {tab["export_msg"]: export_checkpoint(ctx.jobs, ckpt, out, ctx.access)}


def show_task_fields(tab: Tab, ctx: AppContext, task: str) -> dict[Any, Any]:
    return {
        tab["hellaswag_row"]: gr.update(visible=task == "hellaswag"),
        tab["data"]: gr.update(visible=task != "hellaswag"),
    }


def evaluate_picked(
    tab: Tab, ctx: AppContext, ckpt: str | None, task: str, limit: float | None, file: str | None, data: str | None
) -> dict[Any, Any]:
    """Start an evaluation job on the picked checkpoint; the timer follows it until its result is in."""
    started, run = eval_action.start_eval(ctx.jobs, ckpt, task, limit, file, data, ctx.access)
    if not started.ok:
        return {tab["eval_msg"]: f"⚠ {started.message}"}
    return {tab["eval_msg"]: f"⏳ {started.message}", tab["eval_run"]: run, tab["eval_timer"]: gr.Timer(active=True)}


def watch_eval(tab: Tab, ctx: AppContext, run: str | None) -> dict[Any, Any]:
    """While the evaluation runs: nothing changes. Once it ended: its result (or why it failed) and the table."""
    running, line = eval_action.follow_eval(ctx.jobs, run)
    if running:
        return {}
    out: dict[Any, Any] = {tab["eval_timer"]: gr.Timer(active=False), tab["eval_run"]: None}
    if line is not None:
        out |= {tab["eval_msg"]: line, tab["table"]: checkpoint_rows(ctx.jobs)}
    return out


# ----- layout and wiring --------------------------------------------------------------------------------------------


def _layout_table(ctx: AppContext) -> dict[str, Any]:
    with gr.Row(equal_height=True):
        gr.Markdown("### Runs and checkpoints")
        refresh_btn = gr.Button("↻ Refresh", size="sm", variant="secondary", scale=0, min_width=110)
    table = gr.Dataframe(
        checkpoint_rows(ctx.jobs),
        headers=COLUMNS,
        datatype=["str", "str", "str", "str", "number", "str", "str", "str", "str", "str"],
        interactive=False,
        wrap=True,
        elem_id="models-table",
        max_height=420,
    )
    gr.Markdown("Click a row to pick its run and checkpoint below.", elem_classes=["hint"])
    return {"refresh_btn": refresh_btn, "table": table}


def _layout_delete(ctx: AppContext) -> dict[str, Any]:
    with gr.Group():
        gr.Markdown("#### Delete a run", padding=True)
        run = gr.Dropdown([st.name for st in list_runs(ctx.jobs)], label="Run", elem_id="delete-run")
    delete_btn = gr.Button("Delete…", elem_classes=["danger"], elem_id="delete-btn")
    with gr.Group(visible=False) as confirm_box:
        confirm_md = gr.Markdown(padding=True)
        with gr.Row():
            confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="delete-confirm")
            cancel_btn = gr.Button("Cancel", elem_id="delete-cancel")
    delete_msg = gr.Markdown()
    return {
        "run": run,
        "delete_btn": delete_btn,
        "confirm_box": confirm_box,
        "confirm_md": confirm_md,
        "confirm_btn": confirm_btn,
        "cancel_btn": cancel_btn,
        "delete_msg": delete_msg,
    }


def _layout_import(ctx: AppContext) -> dict[str, Any]:
    with gr.Group():
        gr.Markdown("#### Import GPT-2 (Hugging Face format)", padding=True)
        source = gr.Textbox(
            label="Folder or hub id",
            placeholder="gpt2   or   /path/to/folder-with-config.json",
            info="A hub id downloads (needs internet); a folder works offline"
            if ctx.access.downloads_allowed
            else "A folder under the allowed folders (hub downloads are off on this server)",
        )
        import_name = gr.Textbox("gpt2-imported", label="New run name")
    import_btn = gr.Button("Import", variant="primary")
    return {"source": source, "import_name": import_name, "import_btn": import_btn, "import_msg": gr.Markdown()}


def _layout_export(ctx: AppContext) -> dict[str, Any]:
    exports = ctx.access.exports_dir
    with gr.Group():
        gr.Markdown("#### Export to Hugging Face format", padding=True)
        ckpt = gr.Dropdown(checkpoint_choices(ctx.jobs), label="Checkpoint", elem_id="export-ckpt")
        out_dir = gr.Textbox(
            label="Output folder",
            placeholder=f"empty: {exports}/<run>-<checkpoint>" if exports else "empty: <run>/hf-<checkpoint>",
            info=f"A new folder; a name alone goes into {exports or 'the runs folder'}. "
            "config.json + model.safetensors, loadable by transformers",
        )
    export_btn = gr.Button("Export", variant="secondary")
    return {"ckpt": ckpt, "out_dir": out_dir, "export_btn": export_btn, "export_msg": gr.Markdown()}


def _layout_evaluate(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Group():
        gr.Markdown("#### Evaluate a checkpoint (in the background)", padding=True)
        with gr.Row():
            c["eval_ckpt"] = gr.Dropdown(checkpoint_choices(ctx.jobs), label="Checkpoint", elem_id="eval-ckpt", scale=2)
            c["task"] = gr.Radio(
                [(label, key) for key, label in eval_action.TASK_LABELS.items()],
                value="hellaswag",
                label="Task",
                elem_id="eval-task",
                scale=1,
            )
        with gr.Row() as c["hellaswag_row"]:
            c["limit"] = gr.Number(
                eval_action.DEFAULT_LIMIT,
                label="Examples",
                info="HellaSwag on the first N examples of the file",
                elem_id="eval-limit",
            )
            c["file"] = gr.Textbox(
                label="HellaSwag file",
                placeholder="empty: the validation set, downloaded once",
                info="A local hellaswag_val.jsonl (offline machines)",
                elem_id="eval-file",
                scale=2,
            )
        c["data"] = gr.Textbox(
            label="Text file",
            placeholder="empty: the run's own text (its val data, else its training file)",
            info="Perplexity with a sliding window over the model's context",
            visible=False,
            elem_id="eval-data",
        )
    c["eval_btn"] = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
    c["eval_msg"] = gr.Markdown(elem_id="eval-message")
    c["eval_run"] = gr.State(None)  # the run whose evaluation this session follows
    c["eval_timer"] = gr.Timer(EVAL_TICK_S, active=False)
    return c


def _wire_evaluate(tab: Tab, ctx: AppContext) -> None:
    tab["task"].change(bind(show_task_fields, tab, ctx), tab["task"], [tab["hellaswag_row"], tab["data"]], queue=False)
    eval_in = [tab["eval_ckpt"], tab["task"], tab["limit"], tab["file"], tab["data"]]
    followed = [tab["eval_msg"], tab["eval_run"], tab["eval_timer"]]
    tab["eval_btn"].click(bind(evaluate_picked, tab, ctx), eval_in, followed, concurrency_limit=1)
    tab["eval_timer"].tick(
        bind(watch_eval, tab, ctx), tab["eval_run"], [*followed, tab["table"]], show_progress="hidden"
    )


def _wire(tab: Tab, ctx: AppContext) -> None:
    picked = [tab["run"], tab["ckpt"]]
    listing = [tab["table"], *picked, tab["eval_ckpt"]]
    confirm = [tab["confirm_box"], tab["confirm_md"], tab["delete_msg"]]
    tab["refresh_btn"].click(bind(refresh_models, tab, ctx), picked, listing)
    tab["table"].select(bind(pick_row, tab, ctx), tab["table"], [*picked, tab["eval_ckpt"]])
    tab["delete_btn"].click(bind(ask_to_delete, tab, ctx), tab["run"], confirm)
    tab["cancel_btn"].click(bind(cancel_delete, tab, ctx), None, [tab["confirm_box"], tab["delete_msg"]])
    tab["confirm_btn"].click(
        bind(delete_confirmed, tab, ctx), picked, [tab["confirm_box"], tab["delete_msg"], *listing]
    )
    tab["import_btn"].click(
        bind(import_and_pick, tab, ctx),
        [tab["source"], tab["import_name"]],
        [tab["import_msg"], *listing],
        concurrency_limit=1,
    )
    tab["export_btn"].click(
        bind(export_picked, tab, ctx), [tab["ckpt"], tab["out_dir"]], tab["export_msg"], concurrency_limit=1
    )
    tab.on_open.append(OnOpen(bind(refresh_models, tab, ctx), picked, listing))
    _wire_evaluate(tab, ctx)


def build(ctx: AppContext) -> Tab:
    tab = Tab("models", _layout_table(ctx))
    tab.components |= _layout_evaluate(ctx)
    with gr.Row(equal_height=False):
        with gr.Column():
            tab.components |= _layout_delete(ctx)
        with gr.Column():
            tab.components |= _layout_import(ctx)
        with gr.Column():
            tab.components |= _layout_export(ctx)
    _wire(tab, ctx)
    return tab
