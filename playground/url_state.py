"""The open tab and the Monitor's run in the page's address (`?tab=monitor&run=NAME`), so that a bookmark opens
the same view and the browser's Back and Forward move between tabs instead of leaving the app.

On load, the address picks the tab and the run (opened: a Python step, before the tabs' own load steps). Then the
browser keeps the address: a new history entry when another tab is selected, the run replaced in place when
another run is picked, and Back/Forward select the tab the address names.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from playground.runs_view import list_runs, run_choices
from playground.tab import AppContext, Tab, bind

# Back/Forward: select the tab the address names (the tab buttons carry Gradio's data-tab-id).
ON_LOAD_JS = """() => {
  window.addEventListener("popstate", () => {
    const tab = new URLSearchParams(location.search).get("tab") || "train";
    const button = document.querySelector(`button[role=tab][data-tab-id="${tab}"]`);
    if (button && button.getAttribute("aria-selected") !== "true") button.click();
  });
}"""

# Another tab was selected (by a click, Back/Forward, or the app): a history entry, unless the address names it.
TAB_CHANGED_JS = """() => setTimeout(() => {
  const button = document.querySelector("button[role=tab][aria-selected=true]");
  const url = new URL(location.href);
  if (!button || url.searchParams.get("tab") === button.dataset.tabId) return;
  url.searchParams.set("tab", button.dataset.tabId);
  history.pushState(null, "", url);
}, 0)"""

# Another run was picked in the Monitor: the address follows it (no history entry of its own).
RUN_CHANGED_JS = """(run) => {
  const url = new URL(location.href);
  if (run) url.searchParams.set("run", run); else url.searchParams.delete("run");
  if (url.href !== location.href) history.replaceState(null, "", url);
}"""


def open_from_address(
    tabs: gr.Tabs, tab_ids: list[str], monitor: Tab, ctx: AppContext, request: gr.Request
) -> dict[Any, Any]:
    """The tab and the Monitor's run the page's address names; unknown ones are ignored (a stale bookmark)."""
    params = request.query_params if request is not None else {}
    out: dict[Any, Any] = {}
    if params.get("tab") in tab_ids:
        out[tabs] = gr.Tabs(selected=params["tab"])
    run, runs = params.get("run"), list_runs(ctx.jobs)
    if run and run in {st.name for st in runs}:
        out[monitor["run"]] = gr.update(choices=run_choices(runs), value=run)
        out[monitor["picked"]] = True  # kept by the Monitor's own load step, as if the user had picked it
    return out or gr.skip()  # Gradio refuses an empty dict for several outputs (a 500 on every plain page load)


def wire(demo: gr.Blocks, tabs: gr.Tabs, tab_ids: list[str], monitor: Tab, ctx: AppContext) -> Any:
    """Keep the address and the view in step; returns the load event the tabs' own load steps follow."""
    tabs.change(None, None, None, js=TAB_CHANGED_JS, queue=False)
    monitor["run"].change(None, monitor["run"], None, js=RUN_CHANGED_JS, queue=False)
    demo.load(None, None, None, js=ON_LOAD_JS, queue=False)
    opened = bind(open_from_address, tabs, tab_ids, monitor, ctx)
    return demo.load(opened, None, [tabs, monitor["run"], monitor["picked"]], show_progress="hidden", queue=False)
