"""The contract every tab module follows.

A tab module exposes `build(ctx: AppContext) -> Tab`, called inside its `gr.Tab`. It lays out its
components, wires its own events to module-level callbacks, and returns a Tab: the components other
tabs may connect to (by name), and what to run when the tab is opened or the page is loaded. Layout
lives in the tab modules; the logic they call lives in `core` and in the shared playground modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs import Jobs


@dataclass(frozen=True)
class AppContext:
    """What every tab gets: the runs folder and the one Jobs manager of this app process."""

    runs_dir: Path
    jobs: Jobs


@dataclass(frozen=True)
class OnOpen:
    """An event to run when the tab is selected and when the page loads: fn(*inputs) -> outputs."""

    fn: Callable[..., Any]
    inputs: Sequence[gr.components.Component]
    outputs: Sequence[gr.components.Component]


@dataclass
class Tab:
    id: str
    components: dict[str, Any] = field(default_factory=dict)
    on_open: list[OnOpen] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.components[name]
