"""Run names and run folders: nothing built from a user-given name may leave the runs folder."""

import pytest

from core.config import ConfigError
from core.runs import MAX_RUN_NAME, resolve_run_dir, unique_run_name, validate_run_name


@pytest.mark.parametrize("name", ["tiny-shakespeare", "run_1", "gpt2.ft-v2", "A" * MAX_RUN_NAME])
def test_valid_names(name):
    assert validate_run_name(name) == name


@pytest.mark.parametrize(
    "name, says",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        (".hidden", "start with '.'"),
        ("../escape", "'/'"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("/etc", "'/'"),
        ("with space", "' '"),
        ("nul\0byte", "\\x00"),
        ("é", "'é'"),
        ("A" * (MAX_RUN_NAME + 1), f"at most {MAX_RUN_NAME}"),
    ],
)
def test_invalid_names_say_why(name, says):
    with pytest.raises(ConfigError, match="run name") as e:
        validate_run_name(name)
    assert says in str(e.value)


def test_resolve_stays_inside_runs_dir(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    assert resolve_run_dir(runs, "ok") == runs.resolve() / "ok"
    outside = tmp_path / "outside"
    outside.mkdir()
    (runs / "link-out").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the runs folder"):
        resolve_run_dir(runs, "link-out")
    (runs / "real").mkdir()
    (runs / "link-in").symlink_to(runs / "real")  # a link that stays inside is a normal run
    assert resolve_run_dir(runs, "link-in") == runs.resolve() / "link-in"
    for bad in ("../outside", str(outside), "..", "a/../../outside"):
        with pytest.raises(ConfigError):
            resolve_run_dir(runs, bad)


def test_unique_run_name(tmp_path):
    assert unique_run_name(tmp_path, "run") == "run"
    (tmp_path / "run").mkdir()
    (tmp_path / "run-2").mkdir()
    assert unique_run_name(tmp_path, "run") == "run-3"
    long = "x" * MAX_RUN_NAME
    (tmp_path / long).mkdir()
    got = unique_run_name(tmp_path, long)
    assert got.endswith("-2") and len(got) == MAX_RUN_NAME
