"""TrainConfig <-> command-line flags, both directions, in one place.

`core.train`, `core.jobs launch` and the Train tab's command preview all go through here, so a field
added to TrainConfig gets its flag everywhere at once: `max_steps` is `--max-steps N`, a bool is
`--compile` / `--no-compile`, an optional field takes `none`, and `extra` takes a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from core.config import TrainConfig

_HINTS = typing.get_type_hints(TrainConfig)
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
NONE_WORDS = ("none", "null")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _base_type(field: str) -> tuple[Any, bool]:
    """(the field's type without Optional, whether None is allowed)."""
    tp = _HINTS[field]
    args = typing.get_args(tp)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _parser_for(field: str) -> Any:
    base, optional = _base_type(field)
    is_dict = base is dict or typing.get_origin(base) is dict

    def parse(text: str) -> Any:
        if optional and text.lower() in (*NONE_WORDS, ""):
            return None
        if is_dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"{flag_name(field)} needs a JSON object: {e}") from e
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"{flag_name(field)} needs a JSON object")
            return value
        return base(text)

    parse.__name__ = "JSON object" if is_dict else getattr(base, "__name__", str(base))  # shown by argparse errors
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field. Flags that are not given are absent from the parsed namespace."""
    defaults = TrainConfig()
    for name in FIELDS:
        if name in skip:
            continue
        shown = f"(default: {getattr(defaults, name)})"
        if _HINTS[name] is bool:
            parser.add_argument(
                flag_name(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=shown
            )
        else:
            parser.add_argument(
                flag_name(name),
                dest=name,
                type=_parser_for(name),
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=shown,
            )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line, already typed."""
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def config_to_flags(cfg: TrainConfig, skip: tuple[str, ...] = ("runs_dir",)) -> list[str]:
    """The flags that rebuild cfg from TrainConfig's defaults (only the fields that differ)."""
    default = TrainConfig()
    flags: list[str] = []
    for name in FIELDS:
        value = getattr(cfg, name)
        if name in skip or value == getattr(default, name):
            continue
        flag = flag_name(name)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            flags += [flag, "none"]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value, sort_keys=True)]
        else:
            flags += [flag, str(value)]
    return flags
