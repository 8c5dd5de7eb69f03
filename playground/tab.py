"""The contract every tab module follows.

A tab module exposes `build(ctx: AppContext) -> Tab`, called inside its `gr.Tab`. It lays out its
components, wires its own events to module-level callbacks, and returns a Tab: its components by name
(callbacks key their outputs by them, other tabs connect to them), and what to run when the tab is
opened or the page is loaded. Callbacks are plain functions `fn(tab, ctx, *inputs) -> {component:
value}` bound with `bind`; a component left out of the returned dict keeps its value. Layout lives in
the tab modules; the logic they call lives in `core` and in the shared playground modules.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.jobs import Jobs
from core.paths import UNRESTRICTED, AccessPolicy

# For clicks whose event data says what was clicked (a head in a grid, a prompt token): each click runs, in the order
# made, one at a time. Gradio's default ("once") drops a click made while the one before is pending, though the
# browser already shows it; "always_last" replays a click without its data; and with several running at once the
# first click's answer can arrive last.
IN_TURN: dict[str, Any] = {"trigger_mode": "multiple", "concurrency_limit": 1}


@dataclass(frozen=True)
class AppContext:
    """What every tab gets: the runs folder, the one Jobs manager of this app process, and what the UI may touch
    on this machine (local paths, downloads: see core.paths)."""

    runs_dir: Path
    jobs: Jobs
    access: AccessPolicy = UNRESTRICTED

    @classmethod
    def for_runs_dir(cls, runs_dir: str | Path, access: AccessPolicy = UNRESTRICTED) -> AppContext:
        """The context of one runs folder (created if missing), with its Jobs."""
        path = Path(runs_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, Jobs(path), access)


@dataclass(frozen=True)
class OnOpen:
    """An event to run when the tab is selected and when the page loads: fn(*inputs) -> outputs.

    A tab's on_open steps run in order, each after the previous one finished.
    """

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


def bind(fn: Callable[..., Any], *first: Any) -> Callable[..., Any]:
    """fn with its first arguments fixed (usually the Tab and the AppContext), as a plain function.

    Unlike functools.partial, the result keeps fn's name (Gradio names the API endpoint after it), its
    remaining signature and its type hints (Gradio finds gr.Request / gr.SelectData parameters through them),
    and stays a generator function when fn is one (Gradio streams only those).
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            yield from fn(*first, *args, **kwargs)

    else:

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return fn(*first, *args, **kwargs)

    params = list(inspect.signature(fn).parameters.values())[len(first) :]
    bound.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return bound
