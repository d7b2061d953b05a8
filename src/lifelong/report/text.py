"""Text from users, files and folders made safe for a terminal: every string that did not come from
this package goes through `safe_text` before it reaches a Rich console, so a task named ``[/x]`` or
a column name holding an escape sequence shows literally instead of breaking or steering the output."""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text

# C0 and C1 controls (ESC among them) and DEL; the bidirectional overrides and isolates, which
# reorder what a terminal shows; the Unicode line separators; and lone surrogates, which no terminal
# encoding can write at all.
_UNSEEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _code(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object) -> str:
    """``value`` as text on one line, each control character written as its escape (``\\x1b``)."""
    return _UNSEEN.sub(_code, str(value))


def safe_text(value: object) -> str:
    """``value`` ready to embed in Rich markup: control characters visible, markup shown literally."""
    return escape(visible(value))


def labelled(label: str, style: str, value: object) -> Text:
    """A styled label, then ``value`` as plain text: never read as markup, control characters visible."""
    return Text.assemble((label, style), " ", visible(value))


def terminal(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A console that leaves ``:name:`` alone: Rich would turn a task called ``:warning:`` into an emoji."""
    return Console(stderr=stderr, quiet=quiet, emoji=False)


class DescriptionColumn(ProgressColumn):
    """A progress bar's description as plain text: bars are named after tasks, and task names come
    from the user's data."""

    def render(self, task: Task) -> Text:
        return Text(visible(task.description))
