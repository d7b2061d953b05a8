"""Settings declared once. A settings dataclass field carries its help text and flag names, so the same
declaration serves the command line (`lifelong.cli.options` builds each option from it), YAML files
(the same keys) and Python (the dataclass itself)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
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
    limits: tuple[float | None, float | None] = (None, None),
) -> Any:
    """A settings field: its default, the help line of its option, and its flag names (default:
    ``--field-name``). Fields declared without `setting` are not command-line options.

    ``from_file(value, path)`` turns the value a settings file gives into the field's (for richer YAML,
    such as strategies written as mappings). ``limits`` bound a number from below and above (inclusive;
    None: no bound), checked by `check_types` with the other checks every setting gets."""
    metadata = {"help": help, "flags": flags, "from_file": from_file, "limits": limits}
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


# numpy and scikit-learn take seeds in [0, 2**32).
SEED_MAX = 2**32 - 1
# Sizes and counts beyond this are typing mistakes, and torch cannot hold them in an int64 anyway.
COUNT_MAX = 10**9
# Ten thousand passes over one task is far past any use; more is a slip of the keyboard that would run for ever.
EPOCHS_MAX = 10_000


@dataclass
class CommonSettings:
    """The settings every command that trains shares (`lifelong run`, `pretrain`, `finetune`), declared
    once so their flags, help lines and defaults are the same everywhere."""

    out: str | None = setting(None, "Run folder.  \\[default: a new folder in runs/]")
    overwrite: bool = setting(False, "Reuse a folder with a finished run.", "--overwrite")
    seed: int = setting(
        0, "Seed for data splits and order, initial weights and sampling.", limits=(0, SEED_MAX)
    )
    device: str = setting("auto", "auto, cpu or cuda.")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def check_types(settings: Any) -> None:
    """YAML, saved run files and flags can hold anything: check each value's kind and range before using
    it. Every number must be finite, every integer at most `COUNT_MAX` in size, and within its field's
    ``limits``."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        expected = hints[f.name]
        optional = typing.get_origin(expected) in (typing.Union, types.UnionType)
        kinds = [k for k in typing.get_args(expected) if k is not type(None)] if optional else [expected]
        if value is None and optional:
            continue
        if not any(_is_kind(value, kind) for kind in kinds):
            wanted = " or ".join(_KINDS.get(k, "a list of names") for k in kinds)
            raise LifelongError(f"'{f.name}' must be {wanted}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_range(f, value)


def _check_range(field: dataclasses.Field[Any], value: float) -> None:
    flag = (field.metadata.get("flags") or (f"--{field.name.replace('_', '-')}",))[0]
    if isinstance(value, float) and not math.isfinite(value):
        raise LifelongError(f"{flag} must be a finite number, got {value}")
    low, high = field.metadata.get("limits", (None, None))
    if isinstance(value, int) and abs(value) > COUNT_MAX and high is None:
        raise LifelongError(f"{flag} must be at most {COUNT_MAX:,} in size, got {shown(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = (
            f"at most {shown(high)}"
            if low is None
            else f"between {shown(low)} and {shown(high or COUNT_MAX)}"
        )
        default = "" if field.default in (None, dataclasses.MISSING) else f"; the default is {field.default}"
        raise LifelongError(f"{flag} must be {span}, got {shown(value)}{default}")


def check_count(flag: str, value: int | None, low: int = 1, high: int = COUNT_MAX) -> None:
    """A count given as a plain option (not a settings field) is in ``[low, high]``; None is "not given"."""
    if value is not None and not low <= value <= high:
        raise LifelongError(f"{flag} must be between {shown(low)} and {shown(high)}, got {shown(value)}")


def check_least(values: Mapping[str, Any], strictly: bool = False, **lows: float) -> None:
    """Each named value at least (``strictly``: above) its low, None allowed, named as the option that
    sets it: ``batch_size (--batch-size) must be at least 1, got 0``."""
    for name, low in lows.items():
        value = values[name]
        if value is not None and not (value > low if strictly else value >= low):  # nan fails too
            bound = ("positive" if low == 0 else f"above {low}") if strictly else f"at least {low}"
            raise LifelongError(f"{name} (--{name.replace('_', '-')}) must be {bound}, got {value}")


def shown(number: float) -> str:
    """A number as an error line shows it: whole, unless it is too long to read (or for `str`)."""
    if isinstance(number, int) and abs(number) >= 10**15:
        return f"{'-' if number < 0 else ''}about 10^{int(abs(number).bit_length() * math.log10(2))}"
    return repr(number) if isinstance(number, float) else str(number)


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
