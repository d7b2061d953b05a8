"""Command-line options made from a settings dataclass (`lifelong.core.settings`), and the options every
training command shares, declared once here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lifelong.core.settings import check_count, option_fields
from lifelong.errors import LifelongError
from lifelong.models.hf import ALLOW_PICKLE_HELP
from lifelong.runs.settings_file import load_settings_file, make_settings

# ---- options shared by the commands that train -------------------------------------------------------
# Their settings (--out, --overwrite, --seed, --device) are `CommonSettings` fields; these four are not
# settings of the run (a resumed run may change them), and `training_command` gives them to each command.

ConfigFile = Annotated[Path | None, typer.Option(help="YAML file with the same keys as these flags.")]
Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads per process; 1 is fastest for small models on a busy machine.  "
        "\\[default: pretrain, finetune: the cores other processes leave idle (1 for tiny-llama); run: torch's]"
    ),
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue the unfinished run in this folder after its last complete task."),
]
ShowProgress = Annotated[bool, typer.Option(help="Show progress bars.")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help=ALLOW_PICKLE_HELP)]

Settings = TypeVar("Settings")
THREADS_MAX = 4096  # more than any machine has cores; torch cannot take a count past an int


@dataclass
class TrainingOptions:
    """What every command that trains is given besides its settings."""

    config: Path | None = None
    threads: int | None = None
    resume: Path | None = None
    progress: bool = True

    def settings(self, settings_class: type[Settings], given: dict[str, Any]) -> Settings:
        """A new run's settings: the class's defaults, then --config, then the flags ``given``."""
        file_values = load_settings_file(self.config, settings_class) if self.config else {}
        return make_settings(settings_class, file_values, given)

    def refuse_settings(self, settings_class: type, given: dict[str, Any]) -> None:
        """--resume continues a run with its own saved settings: a settings flag beside it is refused."""
        flags = given_flags(settings_class, given) + (["--config"] if self.config is not None else [])
        if flags:
            raise LifelongError(
                f"--resume continues a run with its own saved settings; drop {', '.join(flags)}"
            )

    def set_threads(self, default: int | None = None) -> None:
        """torch's CPU threads: --threads, else ``default`` (None: torch's own choice)."""
        threads = self.threads if self.threads is not None else default
        if threads is None:
            return
        check_count("--threads", threads, high=THREADS_MAX)
        import torch  # deferred: `lifelong --help` loads no torch

        torch.set_num_threads(threads)


_COMMON = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("config", ConfigFile, None),
        ("threads", Threads, None),
        ("resume", Resume, None),
        ("progress", ShowProgress, True),
    )
]


def training_command(settings_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command that trains: one option per field of ``settings_class`` (given as ``settings``, see
    `with_settings`) and the common options --config, --threads, --resume and --progress (given as
    ``options``, a `TrainingOptions`)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*, config: Any, threads: Any, resume: Any, progress: Any, **kwargs: Any) -> Any:
            return command(options=TrainingOptions(config, threads, resume, progress), **kwargs)

        own = [p for p in _parameters(command) if p.name != "options"]
        _set_signature(wrapper, [*_COMMON, *own])
        return with_settings(settings_class)(wrapper)

    return decorate


def with_settings(settings_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``settings_class``; it receives them as ``settings``.

    A flag left out arrives as None, so a YAML file or the class's own default can fill it.
    """
    fields = [_parameter(f, kind) for f, kind in option_fields(settings_class)]
    names = [p.name for p in fields]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in _parameters(command) if p.name != "settings"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            settings = {name: kwargs.pop(name) for name in names}
            return command(settings=settings, **kwargs)

        _set_signature(wrapper, [*fields, *own])  # the fields' options, then the command's
        return wrapper

    return decorate


def _parameters(command: Callable[..., Any]) -> list[inspect.Parameter]:
    return [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(command, eval_str=True).parameters.values()
    ]


def _set_signature(function: Callable[..., Any], parameters: list[inspect.Parameter]) -> None:
    """Typer reads a command's options from its signature."""
    signature = inspect.Signature(parameters)
    function.__signature__ = signature  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}


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
