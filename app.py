"""GPT-2 Playground: `python app.py` serves the UI on http://127.0.0.1:7860 (see --help)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from core.paths import AccessPolicy, is_exposed

# Gradio phones home unless told not to; the app must start offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Four events at once (Gradio's default is one). Said here, not with demo.queue(...): that builds Gradio's server app
# once more, ~2% of the start.
os.environ.setdefault("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "4")

AUTH_ENV = "GPT2_PLAYGROUND_AUTH"  # user:password, kept out of the process list
EXAMPLES = f"""examples:
  python app.py                                   this machine only, as free as a terminal
  python app.py --host 0.0.0.0 --auth-file ~/.gpt2-users --data-dir ~/corpora
                                                  on the network: a login from a file (one user:password per line,
                                                  chmod 600), the UI reads only checkpoints/, data/ and ~/corpora
  {AUTH_ENV}=alice:s3cret python app.py --share --allow-downloads --exports-dir ~/exports
                                                  a public link; visitors may make it download from the hub;
                                                  exports go to ~/exports
  gpt2-playground --port 8080 --runs-dir ~/runs   installed (pip install .): another port and runs folder

Scripts and notebooks drive the same app through its named API (gradio_client or curl): docs/api.md.

Exposed (--host beyond 127.0.0.1/localhost/::1, or --share), the UI reads local paths only under the runs folder,
data/, each --data-dir and --exports-dir; writes exports only into --exports-dir (default: the runs folder); and
downloads from the Hugging Face hub only with --allow-downloads."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Train, watch, probe and sample GPT-2 in the browser.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--runs-dir", default="checkpoints", help="folder of training runs (default checkpoints)")
    ap.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    ap.add_argument(
        "--auth-file",
        metavar="FILE",
        help=f"require a login: one user:password per line, several users allowed (or set ${AUTH_ENV}=user:password)",
    )
    ap.add_argument(
        "--auth",
        metavar="USER:PASS",
        help="require this login; other users of this machine can read it in the process list: prefer --auth-file",
    )
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
    if args.auth is not None and _login(args.auth) is None:
        ap.error("--auth must look like user:password")
    for folder in args.data_dir:
        if not Path(folder).expanduser().is_dir():
            ap.error(f"--data-dir {folder} is not a folder; create it or fix the path")
    return args


def _login(text: str) -> tuple[str, str] | None:
    """(user, password) of a 'user:password' text (the password may hold ':'), None when malformed."""
    user, sep, password = text.strip().partition(":")
    return (user.strip(), password) if sep and user.strip() and password else None


def _fail(message: str) -> NoReturn:
    """Stop like argparse does: one line on stderr, exit status 2 (never echoing a secret)."""
    print(f"app.py: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _logins_from_file(name: str) -> list[tuple[str, str]]:
    path = Path(name).expanduser()
    try:
        text = path.read_text()
        private = path.stat().st_mode & 0o077 == 0
    except OSError as e:
        _fail(f"--auth-file: cannot read {path} ({e.strerror}); give a file of user:password lines")
    if not private:
        print(f"warning: {path} is readable by other users; chmod 600 {path}", file=sys.stderr, flush=True)
    logins = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        login = _login(line)
        if login is None:
            _fail(f"--auth-file {path} line {n} is not user:password; write one login per line")
        logins.append(login)
    if not logins:
        _fail(f"--auth-file {path} holds no user:password line")
    return logins


def credentials(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """Every (user, password) the app accepts: --auth-file's lines, then ${AUTH_ENV}, then --auth (with a warning:
    the command line is visible to every user of this machine). Malformed input stops the app (exit 2)."""
    logins = _logins_from_file(args.auth_file) if args.auth_file else []
    if env.get(AUTH_ENV):
        login = _login(env[AUTH_ENV])
        if login is None:
            _fail(f"${AUTH_ENV} must look like user:password")
        logins.append(login)
    if args.auth:
        print(
            "warning: --auth puts the password in the process list, where other users of this machine can read it; "
            f"use --auth-file FILE or ${AUTH_ENV}=user:password instead",
            file=sys.stderr,
            flush=True,
        )
        logins.append(_login(args.auth))
    return logins


def access_policy(args: argparse.Namespace) -> AccessPolicy:
    """What the UI may touch: everything on loopback; exposed, only the allowed folders (see core.paths)."""
    return AccessPolicy.for_app(
        args.runs_dir,
        exposed=is_exposed(args.host, args.share),
        data_dirs=args.data_dir,
        allow_downloads=args.allow_downloads,
        exports_dir=args.exports_dir,
    )


def exposure_warning(args: argparse.Namespace, logins: Sequence[tuple[str, str]]) -> str | None:
    """A loud warning when the app is reachable beyond this machine without a login."""
    if not is_exposed(args.host, args.share) or logins:
        return None
    bar = "!" * 78
    where = "a public share link" if args.share else args.host
    return (
        f"{bar}\nWARNING: serving on {where} without a login.\n"
        "Anyone who can reach it can start jobs on this machine and delete runs.\n"
        f"Add --auth-file FILE (user:password lines) or set {AUTH_ENV}=user:password.\n{bar}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logins = credentials(args)
    warning = exposure_warning(args, logins)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # Starting allocates millions of objects (Gradio and its imports, the page) and frees few: the collector's passes
    # over them are ~15% of the start. It runs again once the page is served.
    gc.disable()
    from playground.app import build_ui, warm_up
    from playground.theme import CSS, THEME

    access = access_policy(args)
    if access.exports_dir:
        access.exports_dir.mkdir(parents=True, exist_ok=True)
    if access.exposed:
        print("Exposed: the UI reads local paths only under " + ", ".join(map(str, access.allowed)), flush=True)
        downloads = "allowed" if access.allow_downloads else "off (--allow-downloads)"
        print(f"Exposed: hub downloads {downloads}", flush=True)
    demo = build_ui(args.runs_dir, access)
    print(f"GPT-2 Playground: runs folder {os.path.abspath(args.runs_dir)}", flush=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=logins or None,
        theme=THEME,
        css=CSS,
        footer_links=["api", "settings"],
        show_error=False,
        prevent_thread_lock=True,  # to start the warm-up once the server answers
    )
    gc.enable()
    warm_up()  # torch, while the page loads: the first click that runs a model does not wait for it
    demo.block_thread()


if __name__ == "__main__":
    main()
