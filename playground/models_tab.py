"""Models tab: every run and checkpoint (step, val loss, size, date); delete a run; import GPT-2 from Hugging Face
format; export a checkpoint to Hugging Face format."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from core.checkpoint import list_checkpoints, read_state
from core.hf import export_hf, import_to_run
from playground.runs_view import jobs_for, list_runs

COLUMNS = ["Run", "State", "Preset", "Checkpoint", "Step", "Val loss", "Size", "Saved"]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.0f} kB"


def checkpoint_rows(runs_dir: Path) -> list[list[Any]]:
    """One row per checkpoint, newest first within a run; a run without checkpoints gets one row of dashes."""
    rows = []
    for st in list_runs(runs_dir):
        ckpts = list_checkpoints(Path(st.run_dir))
        if not ckpts:
            rows.append([st.name, st.state, st.preset or "—", "—", None, "—", "—", "—"])
        for ck in reversed(ckpts):
            try:
                state = read_state(ck)
            except Exception:
                state = {}
            val = f"{state['val_loss']:.4f}" if isinstance(state.get("val_loss"), (int, float)) else "—"
            saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(ck.stat().st_mtime))
            step = state.get("step")
            rows.append([st.name, st.state, st.preset or "—", ck.name, step, val, _mb(_size(ck)), saved])
    return rows


def checkpoint_choices(runs_dir: Path) -> list[tuple[str, str]]:
    return [
        (f"{st.name} / {ck.name}", str(ck))
        for st in list_runs(runs_dir)
        for ck in reversed(list_checkpoints(Path(st.run_dir)))
    ]


def delete_summary(runs_dir: Path, name: str) -> str:
    path = jobs_for(runs_dir).run_dir(name)
    n = len(list_checkpoints(path))
    return (
        f"Delete run **{name}** with its {n} checkpoint{'s' if n != 1 else ''}, logs and metrics "
        f"({_mb(_size(path))})? This cannot be undone."
    )


def delete_run(runs_dir: Path, name: str | None) -> str:
    try:
        jobs_for(runs_dir).delete_run(name or "")
    except Exception as e:  # active run, unknown name, unsafe name: say so
        return f"⚠ Not deleted: {e}"
    return f"🗑 Deleted **{name}**."


def import_model(runs_dir: Path, source: str, name: str) -> tuple[str, Path | None]:
    """Import Hugging Face GPT-2 weights as a new run; (message, run folder or None)."""
    source, name = (source or "").strip(), (name or "").strip()
    if not source:
        return "⚠ Give a Hugging Face GPT-2 folder or a hub id such as `gpt2`.", None
    try:
        path = import_to_run(source, runs_dir, name)
    except Exception as e:  # HFError (offline, not GPT-2, corrupt), bad name, disk full
        return f"⚠ Import failed: {e}", None
    return (
        f"✅ Imported **{source}** as run **{path.name}**: pick it in Sampling, Attention, or Train → Initialize from.",
        path,
    )


def export_checkpoint(runs_dir: Path, ckpt: str | None, out: str | None) -> str:
    """Export a checkpoint of this runs folder to a Hugging Face folder (default: <run>/hf-<checkpoint>)."""
    if not ckpt:
        return "⚠ Pick a checkpoint to export."
    ck = Path(ckpt)
    try:
        run_dir = jobs_for(runs_dir).run_dir(ck.parent.parent.name)  # refuses paths outside the runs folder
        if ck.parent != run_dir / "ckpt":
            return f"⚠ {ck} is not a checkpoint of a run in {runs_dir}"
        target = Path(out.strip()).expanduser() if out and out.strip() else run_dir / f"hf-{ck.name}"
        written = export_hf(ck, target)
    except Exception as e:
        return f"⚠ Export failed: {e}"
    return f"✅ Exported to `{written}`: `transformers.GPT2LMHeadModel.from_pretrained({str(written)!r})` loads it."


def build_tab(runs_dir: Path) -> tuple[Callable[..., tuple[Any, Any, Any]], list[Any], list[Any]]:
    """Build the tab; returns its refresh callback with inputs and outputs (run when the tab is opened)."""
    jobs = jobs_for(runs_dir)
    with gr.Row(equal_height=True):
        gr.Markdown("### Runs and checkpoints")
        refresh_btn = gr.Button("↻ Refresh", size="sm", variant="secondary", scale=0, min_width=110)
    table = gr.Dataframe(
        checkpoint_rows(runs_dir),
        headers=COLUMNS,
        datatype=["str", "str", "str", "str", "number", "str", "str", "str"],
        interactive=False,
        wrap=True,
        elem_id="models-table",
        max_height=420,
    )
    gr.Markdown("Click a row to pick its run and checkpoint below.", elem_classes=["hint"])
    with gr.Row(equal_height=False):
        with gr.Column():
            with gr.Group():
                gr.Markdown("#### Delete a run", padding=True)
                run = gr.Dropdown([st.name for st in list_runs(runs_dir)], label="Run", elem_id="delete-run")
            delete_btn = gr.Button("Delete…", elem_classes=["danger"], elem_id="delete-btn")
            with gr.Group(visible=False) as confirm_box:
                confirm_md = gr.Markdown(padding=True)
                with gr.Row():
                    confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="delete-confirm")
                    cancel_btn = gr.Button("Cancel", elem_id="delete-cancel")
            delete_msg = gr.Markdown()
        with gr.Column():
            with gr.Group():
                gr.Markdown("#### Import GPT-2 (Hugging Face format)", padding=True)
                source = gr.Textbox(
                    label="Folder or hub id",
                    placeholder="gpt2   or   /path/to/folder-with-config.json",
                    info="A hub id downloads (needs internet); a folder works offline",
                )
                import_name = gr.Textbox("gpt2-imported", label="New run name")
            import_btn = gr.Button("Import", variant="primary")
            import_msg = gr.Markdown()
        with gr.Column():
            with gr.Group():
                gr.Markdown("#### Export to Hugging Face format", padding=True)
                ckpt = gr.Dropdown(checkpoint_choices(runs_dir), label="Checkpoint", elem_id="export-ckpt")
                out_dir = gr.Textbox(
                    label="Output folder",
                    placeholder="empty: <run>/hf-<checkpoint>",
                    info="config.json + model.safetensors, loadable by transformers",
                )
            export_btn = gr.Button("Export", variant="secondary")
            export_msg = gr.Markdown()

    def refresh(current_run: str | None = None, current_ckpt: str | None = None) -> tuple[Any, Any, Any]:
        names = [st.name for st in list_runs(runs_dir)]
        ckpts = checkpoint_choices(runs_dir)
        return (
            checkpoint_rows(runs_dir),
            gr.update(choices=names, value=current_run if current_run in names else None),
            gr.update(choices=ckpts, value=current_ckpt if current_ckpt in [v for _, v in ckpts] else None),
        )

    refresh_outputs = [table, run, ckpt]
    refresh_btn.click(refresh, [run, ckpt], refresh_outputs)

    def pick_row(evt: gr.SelectData, rows: Any) -> tuple[Any, Any]:
        row = rows.iloc[evt.index[0]] if hasattr(rows, "iloc") else rows[evt.index[0]]
        name, ck = row[0], row[3]
        path = str(jobs.run_dir(name) / "ckpt" / ck) if ck and ck != "—" else None
        return gr.update(value=name), gr.update(value=path) if path else gr.update()

    table.select(pick_row, table, [run, ckpt])

    def ask(name: str | None) -> tuple[Any, str, str]:
        if not name:
            return gr.update(visible=False), "", "⚠ Pick a run to delete."
        try:
            st = jobs.status(name)
            if st.active:
                return gr.update(visible=False), "", f"⚠ **{name}** is {st.state}; stop it first (Monitor tab)."
            return gr.update(visible=True), delete_summary(runs_dir, name), ""
        except Exception as e:
            return gr.update(visible=False), "", f"⚠ {e}"

    def delete(name: str | None, current_ckpt: str | None) -> list[Any]:
        return [gr.update(visible=False), delete_run(runs_dir, name), *refresh(None, current_ckpt)]

    delete_btn.click(ask, run, [confirm_box, confirm_md, delete_msg])
    cancel_btn.click(lambda: (gr.update(visible=False), ""), None, [confirm_box, delete_msg])
    confirm_btn.click(delete, [run, ckpt], [confirm_box, delete_msg, *refresh_outputs])

    def do_import(src: str, name: str) -> list[Any]:
        msg, path = import_model(runs_dir, src, name)
        if path is None:
            return [msg, *refresh()]
        ckpts = list_checkpoints(path)
        return [msg, *refresh(path.name, str(ckpts[-1]) if ckpts else None)]

    import_btn.click(do_import, [source, import_name], [import_msg, *refresh_outputs], concurrency_limit=1)

    export_btn.click(lambda c, o: export_checkpoint(runs_dir, c, o), [ckpt, out_dir], export_msg, concurrency_limit=1)
    return refresh, [run, ckpt], refresh_outputs
