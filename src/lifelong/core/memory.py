"""Refusing an allocation the machine cannot hold, before it is asked for (a failed one may take the
machine's swap, or the process, down with it instead of raising)."""

from __future__ import annotations

import os

from lifelong.errors import LifelongError


def physical_memory() -> int | None:
    """Bytes of memory this machine has; None where the system does not say (not POSIX)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(needed: int, what: str, fix: str) -> None:
    """Raise one line naming ``what`` needs ``needed`` bytes and ``fix``, when that exceeds the memory."""
    total = physical_memory()
    if total is not None and needed > total:
        raise LifelongError(
            f"{what} needs {needed / 2**30:,.1f} GiB, more than this machine's {total / 2**30:,.1f} GiB; {fix}"
        )
