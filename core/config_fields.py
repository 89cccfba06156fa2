"""Command-line flags built from a job's config dataclass, so that a new option is one edit.

Each field declares its help (and, where it has a fixed set of values, its choices) in
``field(metadata={"help": ..., "choices": ...})``, as TRL's config classes do. The CLI, the UI
form and the stored job record read the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and how to fix it."""


def config_field(default: Any = dataclasses.MISSING, *, help: str, choices: tuple | None = None, **kwargs: Any):  # noqa: A002
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def field_base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether it is a list) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return field_base_type(args[0])
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _parse_datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


_CONVERTERS = {int: int, float: float, str: str, Path: Path, datetime: _parse_datetime}


def add_config_arguments(
    parser: argparse.ArgumentParser, config_class: type, *, positional: tuple[str, ...] = (), skip: tuple[str, ...] = ()
) -> None:
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        if item.name in skip or "help" not in item.metadata:
            continue
        base, is_list = field_base_type(hints[item.name])
        kwargs: dict[str, Any] = {"help": item.metadata["help"]}
        if "choices" in item.metadata:
            kwargs["choices"] = item.metadata["choices"]
        if item.name in positional:
            parser.add_argument(item.name, type=_CONVERTERS[base], **kwargs)
            continue
        flag = "--" + item.name.replace("_", "-")
        if base is bool:
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=item.default, **kwargs)
            continue
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        default = None if required else item.default
        if required:
            kwargs["required"] = True
        elif default is not None:
            kwargs["help"] += f" (default: {default})"
        if is_list:
            # ``--model A B`` and ``--model A --model B`` both give [A, B].
            kwargs.update(nargs="+", action="extend")
        parser.add_argument(flag, dest=item.name, type=_CONVERTERS[base], default=default, **kwargs)


def config_from_args(config_class: type, args: argparse.Namespace, **overrides: Any):
    """Build ``config_class`` from parsed arguments; its own validation runs as usual."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    values.update(overrides)
    return config_class(**values)
