"""JSON and JSON Lines from users' files, read alike by every loader.

A record ends at a newline ("\n", or "\r\n") only: JSON strings may hold U+2028, U+0085 or a form feed
raw, which `str.splitlines` would wrongly take for line ends. Nesting too deep for the parser (a file
of 100,000 brackets) is bad input like any other, not a `RecursionError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lifelong.errors import LifelongError


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line of ``text`` that is not blank."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line.removesuffix("\r")


def parse_json(text: str, where: str, fix: str = "fix or remove that line") -> Any:
    """``text`` parsed, or one `LifelongError` naming ``where`` and the ``fix``."""
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" is valid JSON but no character: tokenizers fail on it
        raise LifelongError(f"{where} holds a lone surrogate escape (\\ud800-\\udfff); {fix}") from None
    except ValueError:
        raise LifelongError(f"{where} is not valid JSON; {fix}") from None
    except RecursionError:
        raise LifelongError(f"{where} is JSON nested too deeply to read; {fix}") from None
    return value
