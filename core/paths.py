"""Which local paths the app may read and write, and whether it may download from the Hugging Face hub.

On this machine only (127.0.0.1, the default) the app is as free as a terminal. Exposed (--host beyond loopback, or
--share) every visitor is a remote user, so a path typed into the UI must lie under an allowed folder (the runs
folder, the bundled data folder, each --data-dir, the exports folder), and hub downloads need --allow-downloads.
Paths are resolved (symlinks, '..') before they are checked, and a refusal reads the same whether or not the path
exists. Built once in app.py from its flags; the tabs get it through AppContext. No gradio here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError
from core.hf_source import HUB_ID  # the loader's own rule for what a hub id looks like

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED_CORPUS_DIR = Path(__file__).resolve().parent / "assets"  # the packaged corpus (core.data.BUNDLED)


def is_exposed(host: str, share: bool) -> bool:
    """True when visitors from other machines can reach the app."""
    return share or host not in LOOPBACK_HOSTS


@dataclass(frozen=True)
class AccessPolicy:
    """What the UI may touch on this machine; the default is loopback's freedom."""

    exposed: bool = False
    allowed: tuple[Path, ...] = ()  # resolved folders; only consulted when exposed
    allow_downloads: bool = False  # only consulted when exposed: on loopback the hub is always allowed
    exports_dir: Path | None = None  # where the UI writes exports (--exports-dir); None: the runs folder

    @classmethod
    def for_app(
        cls,
        runs_dir: str | Path,
        *,
        exposed: bool,
        data_dirs: Iterable[str | Path] = (),
        allow_downloads: bool = False,
        exports_dir: str | Path | None = None,
    ) -> AccessPolicy:
        """The policy of an app over `runs_dir`: the runs folder, the bundled data and the exports folder are always
        allowed to read."""
        exports = Path(exports_dir).expanduser().resolve() if exports_dir is not None else None
        folders = [Path(runs_dir), BUNDLED_DATA_DIR, BUNDLED_CORPUS_DIR, *(Path(d) for d in data_dirs)]
        folders += [exports] if exports else []
        allowed = tuple(dict.fromkeys(p.expanduser().resolve() for p in folders))
        return cls(exposed=exposed, allowed=allowed, allow_downloads=allow_downloads, exports_dir=exports)

    @property
    def downloads_allowed(self) -> bool:
        return not self.exposed or self.allow_downloads

    def allows(self, path: Path) -> bool:
        """True when `path` (resolved) lies in an allowed folder, or the app is not exposed."""
        return not self.exposed or any(path.is_relative_to(folder) for folder in self.allowed)

    def outside(self, path: str | Path, field: str) -> ConfigError:
        """The refusal of a path outside the allowed folders; it does not say whether the path exists."""
        folders = ", ".join(str(p) for p in self.allowed)
        return ConfigError(
            f"{path}: this server is shared, so it only reads the allowed folders ({folders}); put the files "
            "in one of them, or restart the app with --data-dir FOLDER",
            field=field,
        )

    def check_read(self, path: str | Path, field: str) -> Path:
        """The path the app may read for `field`: resolved when exposed (so the checked file is the one used),
        else as given (with ~ expanded). ConfigError(field=field) when exposed and outside the allowed folders."""
        p = Path(path).expanduser()
        if not self.exposed:
            return p
        resolved = p.resolve()
        if not self.allows(resolved):
            raise self.outside(path, field)
        return resolved

    def check_download(self, what: str, field: str) -> None:
        """ConfigError(field=field) when this app may not download `what` from the Hugging Face hub."""
        if not self.downloads_allowed:
            raise ConfigError(
                f"{what}: this server is shared and hub downloads are off; put the files in an allowed folder, "
                "or restart the app with --allow-downloads",
                field=field,
            )

    def check_export(self, path: str | Path, runs_dir: str | Path, field: str) -> Path:
        """Where an export typed into `field` is written. A relative path lands in the exports folder (--exports-dir,
        else the runs folder); exposed, nothing may land outside that folder (ConfigError(field=field))."""
        root = self.exports_dir or Path(runs_dir).expanduser()
        target = root / Path(path).expanduser()  # an absolute path stays as it is
        if not self.exposed:
            return target
        resolved = target.resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise ConfigError(
                f"{path}: this server is shared, so exports go only into {root}; give a folder name inside it",
                field=field,
            )
        return resolved

    def check_model_source(self, source: str, field: str) -> str:
        """What to hand a GPT-2 loader for a folder or hub id typed into `field`: as typed on loopback; exposed, a
        folder under the allowed folders (resolved), or a hub id (a bare name that is no local path) when downloads
        are allowed. A hub-like name of a local folder outside is refused rather than read."""
        if not self.exposed:
            return source
        path = Path(source).expanduser().resolve()
        if self.allows(path) and path.exists():
            return str(path)
        if HUB_ID.match(source) and not source.startswith((".", "~")):
            # Downloads off: one answer whether or not a local folder has this name, so nothing is revealed.
            self.check_download(f"hub model {source!r}", field)
            if not path.exists():
                return source
        if not self.allows(path):
            raise self.outside(source, field)
        return str(path)  # an allowed folder that does not exist: the loader says so


UNRESTRICTED = AccessPolicy()  # loopback: as free as a terminal
