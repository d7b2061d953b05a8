"""Settings declared once. A settings dataclass field carries its help text and flag names, so the same
declaration serves the command line (`lifelong.cli.options` builds each option from it), YAML files
(the same keys) and Python (the dataclass itself)."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError


def setting(
    default: Any = None,
    help: str = "",
    *flags: str,
    factory: Callable[[], Any] | None = None,
    from_file: Callable[[Any, Path], Any] | None = None,
) -> Any:
    """A settings field: its default, the help line of its option, and its flag names (default:
    ``--field-name``). Fields declared without `setting` are not command-line options.

    ``from_file(value, path)`` turns the value a settings file gives into the field's (for richer YAML,
    such as strategies written as mappings)."""
    metadata = {"help": help, "flags": flags, "from_file": from_file}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The fields of a settings class that are options, with their resolved types.

    A class's own fields come first, then those of its bases, nearest first (`CommonSettings` last): a
    command's help opens with what is particular to it, as dataclass order (bases first) would not."""
    hints = typing.get_type_hints(cls)
    owners = [set(inspect.get_annotations(c)) for c in cls.__mro__]

    def declared_in(field: dataclasses.Field[Any]) -> int:
        return next(i for i, names in enumerate(owners) if field.name in names)

    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    return [(f, hints[f.name]) for f in sorted(fields, key=declared_in)]


@dataclass
class CommonSettings:
    """The settings every command that trains shares (`lifelong run`, `pretrain`, `finetune`), declared
    once so their flags, help lines and defaults are the same everywhere."""

    out: str | None = setting(None, "Run folder.  \\[default: a new folder in runs/]")
    overwrite: bool = setting(False, "Reuse a folder with a finished run.", "--overwrite")
    seed: int = setting(0, "Seed for data splits and order, initial weights and sampling.")
    device: str = setting("auto", "auto, cpu or cuda.")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def check_types(settings: Any) -> None:
    """YAML and saved run files can hold anything: check each value's kind before using it."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        expected = typing.get_type_hints(type(settings))[f.name]
        optional = typing.get_origin(expected) in (typing.Union, types.UnionType)
        kinds = [k for k in typing.get_args(expected) if k is not type(None)] if optional else [expected]
        if value is None and optional:
            continue
        if not any(_is_kind(value, kind) for kind in kinds):
            wanted = " or ".join(_KINDS.get(k, "a list of names") for k in kinds)
            raise LifelongError(f"'{f.name}' must be {wanted}, got {value!r}")


def _is_kind(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True  # a kind the command line does not take (e.g. a mapping): the class checks it
