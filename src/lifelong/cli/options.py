"""Command-line options made from a settings dataclass (`lifelong.core.settings`), and the options every
training command shares, declared once here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lifelong.core.settings import option_fields

# ---- options shared by the commands that train -------------------------------------------------------

ConfigFile = Annotated[Path | None, typer.Option(help="YAML file with the same keys as these flags.")]
Threads = Annotated[
    int | None,
    typer.Option(help="CPU threads per process; 1 is fastest for small models on a busy machine."),
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue the unfinished run in this folder after its last complete task."),
]
ShowProgress = Annotated[bool, typer.Option(help="Show progress bars.")]


def with_settings(settings_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``settings_class``; it receives them as ``settings``.

    A flag left out arrives as None, so a YAML file or the class's own default can fill it.
    """
    fields = [_parameter(f, kind) for f, kind in option_fields(settings_class)]
    names = [p.name for p in fields]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "settings"
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            settings = {name: kwargs.pop(name) for name in names}
            return command(settings=settings, **kwargs)

        # Typer reads a command's options from its signature: the fields' options, then the command's.
        signature = inspect.Signature([*fields, *own])
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return wrapper

    return decorate


def _parameter(field: dataclasses.Field[Any], kind: Any) -> inspect.Parameter:
    help_text = field.metadata["help"]
    default = field.default if field.default is not dataclasses.MISSING else None
    if "[default:" not in help_text and default is not None and default is not False:
        help_text += f"  \\[default: {default}]"
    flags = field.metadata["flags"]
    option = typer.Option(*flags, help=help_text, show_default=False)
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def given_flags(settings_class: type, settings: dict[str, Any]) -> list[str]:
    """The flags of ``settings_class`` given on this command line (as their users typed them)."""
    return [
        (f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0]
        for f, _ in option_fields(settings_class)
        if settings.get(f.name) not in (None, [])
    ]
