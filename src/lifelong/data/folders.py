"""How every loader finds its files in a folder: the same scan and the same natural order (``task2``
before ``task10``), so tasks and corpora come in the order a person reads them."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError


def natural_key(path: Path) -> list[Any]:
    """Sort key: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def data_files(folder: Path, suffixes: Collection[str], *, recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (and its subfolders, with ``recursive``) whose suffix, in lower case, is
    one of ``suffixes``, in natural order."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    named = [p for p in found if p.suffix.lower() in suffixes]
    for path in named:  # a name that promises data but holds none is said, not skipped in silence
        if not path.is_file() and not (recursive and path.is_dir()):
            raise LifelongError(
                f"'{path}' is named like a data file but is {not_a_file(path)}; remove or rename it"
            )
    return sorted((p for p in named if p.is_file()), key=natural_key)


def not_a_file(path: Path) -> str:
    """What ``path`` is instead of a regular file, in words."""
    if path.is_symlink() and not path.exists():
        return "a broken link (or a loop of links)"
    if path.is_dir():
        return "a folder"
    if path.exists():
        return "not a regular file (a pipe, socket or device)"
    return "missing"
