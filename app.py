"""GPT-2 Playground: `python app.py` serves the UI on http://127.0.0.1:7860 (see --help)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.paths import AccessPolicy, is_exposed

# Gradio phones home unless told not to; the app must start offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train, watch, probe and sample GPT-2 in the browser.")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--runs-dir", default="checkpoints", help="folder of training runs (default checkpoints)")
    ap.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    ap.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --host/--share)")
    ap.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="FOLDER",
        help="exposed app: also let the UI read this folder (repeatable; the runs folder and data/ always)",
    )
    ap.add_argument(
        "--allow-downloads",
        action="store_true",
        help="exposed app: let visitors make this server download models and datasets from the Hugging Face hub",
    )
    ap.add_argument(
        "--exports-dir",
        metavar="FOLDER",
        help="where the Models tab writes Hugging Face exports (default: the runs folder); an exposed app writes "
        "nowhere else",
    )
    args = ap.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not all(args.auth.split(":", 1))):
        ap.error("--auth must look like user:password")
    for folder in args.data_dir:
        if not Path(folder).expanduser().is_dir():
            ap.error(f"--data-dir {folder} is not a folder; create it or fix the path")
    return args


def access_policy(args: argparse.Namespace) -> AccessPolicy:
    """What the UI may touch: everything on loopback; exposed, only the allowed folders (see core.paths)."""
    return AccessPolicy.for_app(
        args.runs_dir,
        exposed=is_exposed(args.host, args.share),
        data_dirs=args.data_dir,
        allow_downloads=args.allow_downloads,
        exports_dir=args.exports_dir,
    )


def exposure_warning(args: argparse.Namespace) -> str | None:
    """A loud warning when the app is reachable beyond this machine without a login."""
    if not is_exposed(args.host, args.share) or args.auth:
        return None
    bar = "!" * 78
    where = "a public share link" if args.share else args.host
    return (
        f"{bar}\nWARNING: serving on {where} without --auth.\n"
        "Anyone who can reach it can start jobs on this machine and delete runs.\n"
        f"Add --auth user:password.\n{bar}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warning = exposure_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from playground.app import build_ui
    from playground.theme import CSS, THEME

    access = access_policy(args)
    if access.exports_dir:
        access.exports_dir.mkdir(parents=True, exist_ok=True)
    if access.exposed:
        print("Exposed: the UI reads local paths only under " + ", ".join(map(str, access.allowed)), flush=True)
        print(
            f"Exposed: hub downloads {'allowed' if access.allow_downloads else 'off (--allow-downloads)'}", flush=True
        )
    demo = build_ui(args.runs_dir, access)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"GPT-2 Playground: runs folder {os.path.abspath(args.runs_dir)}", flush=True)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        theme=THEME,
        css=CSS,
        footer_links=["api", "settings"],
        show_error=False,
    )


if __name__ == "__main__":
    main()
