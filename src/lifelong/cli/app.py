"""The `lifelong` command. Each subcommand is a thin shell over the Python API."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperOption

from lifelong.cli import llm as cli_llm
from lifelong.cli.adapters import adapters_app
from lifelong.cli.options import THREADS_MAX, TrainingOptions, training_command
from lifelong.cli.startup import TRAINING_MODULES, import_quietly
from lifelong.core.distributed import is_main_process, launch, shutdown, without_option, world_size
from lifelong.core.settings import check_count
from lifelong.data import BENCHMARKS
from lifelong.errors import LifelongError
from lifelong.experiment.run import run_experiment
from lifelong.experiment.settings import RunConfig
from lifelong.report import report_runs
from lifelong.report.text import labelled, safe_text, terminal
from lifelong.runs.results import versions
from lifelong.strategies import REGISTRY, strategy_options

app = typer.Typer(
    add_completion=True,
    pretty_exceptions_enable=False,
    help="Continual learning: train task after task without forgetting, and measure what was forgotten.",
)
app.add_typer(adapters_app, name="adapters")
app.command()(cli_llm.pretrain)
app.command()(cli_llm.perplexity)
app.command()(cli_llm.finetune)
console = terminal()
err_console = terminal(stderr=True)


def _print_versions(asked: bool) -> None:
    if asked:
        # Read from the installed packages' metadata: nothing is imported to find a version.
        for package, version in versions().items():
            console.print(f"{package} {version}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_versions,
            is_eager=True,
            help="Print the versions of lifelong, Python, torch and the optional libraries, and exit.",
        ),
    ] = False,
) -> None:
    """Continual learning: train task after task without forgetting, and measure what was forgotten."""


@app.command()
@training_command(RunConfig)
def run(
    settings: dict[str, Any],
    options: TrainingOptions,
    processes: Annotated[
        int, typer.Option(help="Train in this many processes on this machine (torchrun --standalone).")
    ] = 1,
    report: Annotated[
        str,
        typer.Option(
            help="Report to write at the end: html (report.html and report.md with plots), md (report.md "
            "with plots) or none (no plots drawn: quickest; 'lifelong report RUN' draws it later)."
        ),
    ] = "html",
) -> None:
    """Run a continual-learning experiment and print the accuracy matrix and metrics per strategy."""

    options.set_threads()
    if processes != 1:
        check_count("--processes", processes, high=THREADS_MAX)
        if world_size() > 1:
            raise LifelongError(
                "--processes launches the processes itself; drop it under accelerate launch or torchrun"
            )
        sys.exit(launch(processes, without_option(sys.argv[1:], "--processes")))
    config = None
    if options.resume is not None:
        options.refuse_settings(RunConfig, settings)
    else:
        config = options.settings(RunConfig, settings)
    import_quietly(*TRAINING_MODULES)  # once the settings hold; not in a launcher, which only waits
    run_experiment(config, console, show_progress=options.progress, resume=options.resume, report=report)
    shutdown()


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders holding results.json.")],
    out: Annotated[Path | None, typer.Option(help="Combine the runs into one report in this folder.")] = None,
) -> None:
    """Regenerate the HTML and Markdown reports of finished runs, or combine several into one."""

    for path in report_runs(run_dirs, out):
        console.print(f"report written to {safe_text(path)}")


@app.command()
def benchmarks() -> None:
    """List the built-in streams (no download needed) with their options."""

    table = Table(title="built-in benchmarks")
    for column in ("name", "description", "options"):
        table.add_column(column)
    for bench in BENCHMARKS.values():
        table.add_row(safe_text(bench.name), safe_text(bench.description), _options(bench.options()))
    console.print(table)


@app.command()
def strategies() -> None:
    """List the strategies with their options and defaults."""

    table = Table(title="strategies ('a+b' composes two)")
    for column in ("name", "description", "options (defaults)"):
        table.add_column(column)
    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        table.add_row(safe_text(name), safe_text(doc), _options(strategy_options(name)))
    console.print(table)


def _options(options: list[tuple[str, object]]) -> str:
    return safe_text(", ".join(f"{k}={v}" for k, v in options)) or "—"


def _without_type_column(command: Any) -> None:
    """Help that reads whole at 80 columns: the names and help lines say what an option takes, so the
    type column (``<list[str]>``) goes, and its width goes to the help text."""
    for param in command.params:
        if isinstance(param, TyperOption):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _without_type_column(sub)


_OUT_OF_MEMORY = "out of memory; choose smaller sizes (model, batch, buffer, data)"
# Packages of the optional extras, and the extra that installs each: the LLM and adapter commands import
# them when they run.
_EXTRAS = {
    "transformers": "llm",
    "peft": "llm",
    "datasets": "llm",
    "tokenizers": "llm",
    "tensorboard": "tensorboard",
    "torchvision": "vision",
}


# How long a process other than the main one waits, failing, for the main one to say why.
_SAY_IT_FIRST_SECONDS = 5.0


def _fail(message: str, status: int = 2) -> None:
    """One red line (from the main process: every process of a multi-process run meets the same error)
    and exit ``status``."""
    if is_main_process():
        err_console.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)
    elif world_size() > 1:
        # The launcher stops every process when the first one exits: were this one first, the main
        # process could be stopped before its line. It exits after the main one, which ends this wait.
        time.sleep(_SAY_IT_FIRST_SECONDS)
    sys.exit(status)


def _usage_error(err: typer.TyperException) -> None:
    """A usage error in one line with where to read the command's help (or the help itself when a
    command group is given no command)."""
    ctx = getattr(err, "ctx", None)
    status = int(getattr(err, "exit_code", 2))
    if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
        console.print(ctx.get_help(), markup=False, highlight=False)
        sys.exit(status)
    message = " ".join(str(getattr(err, "format_message", err.__str__)()).split()).rstrip(".")
    _fail(message + (f"; see {ctx.command_path} --help" if ctx is not None else ""), status)


def _os_problem(err: OSError) -> str:
    names = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
    reason = err.strerror or type(err).__name__
    return f"cannot use {names}: {reason}" if names else f"the file system refused: {err}"


def main() -> None:
    """Entry point: user errors become one red line and exit status 2, never a traceback."""
    try:
        command = typer.main.get_command(app)
        _without_type_column(command)
        # Not standalone: click's own usage errors (a flag that is not a number, an unknown option) come
        # here too, to be said in one line like every other error.
        status = command.main(prog_name="lifelong", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)  # as click's standalone mode does
    except typer.TyperException as err:  # the parser's own errors (typer's click): usage, bad values
        _usage_error(err)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except LifelongError as err:
        _fail(str(err))
    except OSError as err:  # the file system refused: a path under a file, too long, read-only, full
        _fail(f"{_os_problem(err)}; check the path, its permissions and the free space")
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top not in _EXTRAS:
            raise
        _fail(f'{top} is not installed, and this command needs it; pip install "lifelong[{_EXTRAS[top]}]"')
    except MemoryError:
        _fail(_OUT_OF_MEMORY)
    except RuntimeError as err:  # torch's allocators say so in a RuntimeError
        if "can't allocate memory" not in str(err) and "out of memory" not in str(err):
            raise
        _fail(_OUT_OF_MEMORY)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
