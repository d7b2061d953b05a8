"""The help a newcomer reads: every command's --help whole at 80 columns, every option in it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperOption

from lifelong.cli.app import app


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


ALL = sorted(commands(typer.main.get_command(app)), key=lambda item: item[0])


@pytest.mark.parametrize("path, command", ALL, ids=[" ".join(p) or "lifelong" for p, _ in ALL])
def test_help_reads_whole_at_80_columns(cli, monkeypatch: pytest.MonkeyPatch, path, command) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(*path, "--help")
    assert code == 0
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for param in command.params:
        if isinstance(param, TyperOption):
            for flag in param.opts + param.secondary_opts:
                assert flag in out, f"{flag} missing from lifelong {' '.join(path)} --help"
