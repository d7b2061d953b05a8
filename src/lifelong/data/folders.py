"""How every loader finds its files in a folder: the same scan and the same natural order (``task2``
before ``task10``), so tasks and corpora come in the order a person reads them."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any


def natural_key(path: Path) -> list[Any]:
    """Sort key: digit runs compare as numbers, the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def data_files(folder: Path, suffixes: Collection[str], *, recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (and its subfolders, with ``recursive``) whose suffix, in lower case, is
    one of ``suffixes``, in natural order."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if p.is_file() and p.suffix.lower() in suffixes), key=natural_key)
