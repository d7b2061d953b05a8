"""A run folder, the same for every command that trains (`run`, `pretrain`, `finetune`).

``run.json`` is written first and names the command, its settings and the files the run owns: its
presence is what proves a folder is a lifelong run, and only what it names is ever deleted (by
``--overwrite``, or when a run that finished no task is abandoned). ``results.json`` is written last:
its presence marks a finished run. In between, ``checkpoints/<k>-<strategy>/task-<i>/`` holds the
state after each task, so ``--resume`` continues after the last complete one. A lock file keeps two
runs out of one folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from lifelong.core.checkpoint import ATOMIC_TEMP, atomic_write_bytes, atomic_write_json, latest_checkpoint
from lifelong.errors import LifelongError

RUN_FILE, RESULTS_FILE, METRICS_LOG, LOCK_FILE = "run.json", "results.json", "metrics.jsonl", ".lock"
CHECKPOINTS = "checkpoints"
RUN_FORMAT = 1
# What every command writes; a command adds its own (pretrain's trainer logs, finetune's adapters).
COMMON_FILES = (RESULTS_FILE, METRICS_LOG, CHECKPOINTS, "report.md", "report.html", "plots", "tensorboard")


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def slug(text: str) -> str:
    """A folder name for a strategy composition (the label stays in run.json and results.json)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)[:80]


class RunFolder:
    """One run's folder. `create` starts a run there, `resume` reopens an unfinished one; either holds
    the folder's lock until `release` (a process that dies releases it with its file handles)."""

    def __init__(self, path: Path, command: str, saved: dict[str, Any], *, created: bool) -> None:
        self.path, self.command, self.saved, self.created = path, command, saved, created
        self._lock: IO[str] | None = None

    # ---- opening ----------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        command: str,
        settings: dict[str, Any],
        *,
        overwrite: bool = False,
        own: Sequence[str] = (),
        main: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> RunFolder:
        """Start a run in ``path``: new, empty, or an earlier run of ``command`` (with ``overwrite``).

        ``settings`` go into run.json for `resume`; ``own`` names files this command writes besides
        the common ones. In a multi-process run every process checks the folder, then waits at
        ``barrier`` so that none reads it after the main one (``main=True``) has started writing.
        """
        existing = _read_run_file(path, command)
        if existing is not None and not overwrite:
            _refuse_if_in_use(path)
            if (path / RESULTS_FILE).exists():
                raise LifelongError(
                    f"{path} already holds a finished run; pass --overwrite or choose another --out"
                )
            raise LifelongError(
                f"{path} holds an unfinished run; continue it with --resume {path}, or pass --overwrite"
            )
        created = not path.exists()
        folder = cls(path, command, {"settings": settings}, created=created)
        if barrier is not None:
            barrier()
        if not main:
            return folder
        folder._acquire()
        owned = sorted({*COMMON_FILES, *own})
        if existing is not None:  # ours, proven by its run.json: of the names it lists, only those
            # this command writes go (a hand-edited list naming "..", "/home" or "data" is not obeyed)
            listed = existing.get("files", COMMON_FILES)
            for name in owned if not isinstance(listed, list) else [n for n in owned if n in listed]:
                _remove(path / name)
        folder.saved = {"format": RUN_FORMAT, "command": command, "files": owned, "settings": settings}
        atomic_write_json(path / RUN_FILE, folder.saved)
        return folder

    def describe(self, key: str, value: dict[str, Any]) -> None:
        """Add what the run found once it started (how its stream was cut) to run.json, atomically."""
        self.saved = {**self.saved, key: value}
        atomic_write_json(self.path / RUN_FILE, self.saved)

    @classmethod
    def resume(cls, path: Path, command: str, *, main: bool = True) -> RunFolder:
        """Reopen the unfinished ``command`` run in ``path``; its settings are ``saved["settings"]``."""
        saved = _read_run_file(path, command)
        if saved is None:
            raise LifelongError(
                f"{path} has no {RUN_FILE}; --resume takes the folder of a run started earlier"
            )
        if (path / RESULTS_FILE).exists():
            raise LifelongError(f"{path} holds a finished run; there is nothing to resume")
        if not isinstance(saved.get("settings"), dict):
            raise LifelongError(f"{path / RUN_FILE} is damaged; start a new run instead of resuming this one")
        folder = cls(path, command, saved, created=False)
        if main:
            folder._acquire()
        return folder

    def _acquire(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise LifelongError(f"{self.path} is a file, not a run folder; choose another path")
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / LOCK_FILE).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LifelongError(
                f"{self.path} is in use by a run of process {holder}; wait for it or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        # Holding the lock, no write is under way here: a temporary file left is a crashed write's.
        for stale in self.path.rglob(".*.tmp"):
            if ATOMIC_TEMP.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
                stale.unlink()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
            (self.path / LOCK_FILE).unlink(missing_ok=True)

    def abandon(self) -> bool:
        """After a failure: remove a folder this run created if no task finished in it. True if removed."""
        self.release()
        if self.created and not any(self.checkpoints()):
            shutil.rmtree(self.path, ignore_errors=True)
            return True
        return False

    @contextmanager
    def running(self) -> Iterator[RunFolder]:
        """Around a run's work: released when it ends; after a failure `abandon`-ed, and a user error
        after which this run completed tasks says how to continue them (not one met before any task
        finished, such as bad input at a resume: resuming again would meet it again)."""
        before = set(self.checkpoints())
        try:
            yield self
        except BaseException as err:
            finished = set(self.checkpoints()) - before
            if not self.abandon() and isinstance(err, LifelongError) and finished:
                raise LifelongError(
                    f"{err}; the last complete task is kept: continue with --resume {self.path}"
                ) from None
            raise
        self.release()

    # ---- what a run writes ----------------------------------------------------------------------------

    def strategy_dir(self, index: int, composition: str) -> Path:
        return strategy_dir(self.path, index, composition)

    def checkpoints(self) -> Iterator[Path]:
        """Every complete task checkpoint of the run."""
        for folder in sorted((self.path / CHECKPOINTS).glob("*")):
            latest = latest_checkpoint(folder) if folder.is_dir() else None
            if latest is not None:
                yield latest

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append ``record``. If the last line is the same strategy's same task, an earlier attempt
        logged it and crashed before the checkpoint commit; the resumed run's line replaces it."""
        path = self.path / METRICS_LOG
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
        if lines and _metrics_key(lines[-1]) == (record.get("strategy"), record.get("after_task")):
            atomic_write_bytes(path, "".join(lines[:-1]).encode("utf-8"))
        with path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")

    def tensorboard(self, name: str) -> Any:
        """A TensorBoard writer for one strategy's curves under ``tensorboard/<name>``."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LifelongError(
                "--tensorboard needs the tensorboard package; pip install 'lifelong[tensorboard]'"
            ) from None
        return SummaryWriter(log_dir=str(self.path / "tensorboard" / name))


def _metrics_key(line: str) -> tuple[Any, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return (record.get("strategy"), record.get("after_task")) if isinstance(record, dict) else None


def strategy_dir(run_dir: Path, index: int, composition: str) -> Path:
    """Where the ``index``-th strategy composition of a run keeps its checkpoints."""
    return run_dir / CHECKPOINTS / f"{index}-{slug(composition)}"


def _refuse_if_in_use(path: Path) -> None:
    """A run holding ``path`` right now is named as such, not as an unfinished run to resume."""
    lock = path / LOCK_FILE
    if not lock.is_file():
        return
    with lock.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise LifelongError(
                f"{path} is in use by a run of process {holder}; wait for it or choose another --out"
            ) from None


def keep_only(folder: Path, newest: str) -> None:
    """Drop every ``task-*`` checkpoint in ``folder`` but ``newest`` (the last complete one)."""
    for older in folder.glob("task-*"):
        if older.name != newest:
            shutil.rmtree(older, ignore_errors=True)


def _read_run_file(path: Path, command: str) -> dict[str, Any] | None:
    """The run.json of an earlier run of ``command`` in ``path``; None for a new or empty folder.

    Anything else — a folder holding files that no run wrote, a run of another command — is refused:
    a command deletes only what it can prove it wrote.
    """
    if path.exists() and not path.is_dir():
        raise LifelongError(f"{path} is a file, not a run folder; choose another path")
    run_file = path / RUN_FILE
    if not run_file.is_file():
        if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()):
            raise LifelongError(
                f"{path} is not empty and holds no lifelong run; choose a new or empty folder for --out"
            )
        return None
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise LifelongError(f"{run_file} is damaged; start a new run instead of resuming this one") from None
    if not isinstance(saved, dict):
        raise LifelongError(f"{run_file} is damaged; start a new run instead of resuming this one")
    if "format" not in saved and _is_early_run_file(saved):  # before run.json named its command
        # Upgraded whole (format included), so a rewrite (`describe`) is read as this format again.
        saved = {"format": RUN_FORMAT, "command": "run", "files": list(COMMON_FILES), "settings": saved}
    if saved.get("format") != RUN_FORMAT:  # a run.json of the user's own, say: no proof of a run
        raise LifelongError(
            f"{path} holds a {RUN_FILE} that lifelong did not write; choose a new or empty folder for --out"
        )
    found = saved.get("command")
    if found != command:
        raise LifelongError(
            f"{path} holds a 'lifelong {found}' run, not a '{command}' one; choose another --out"
        )
    return saved


def _is_early_run_file(saved: dict[str, Any]) -> bool:
    """The whole of an early `lifelong run`'s run.json: its settings alone, in exactly this shape (a
    user's own run.json, say ``{"lr": 0.1}``, is no proof that a run wrote the folder)."""
    strategies = saved.get("strategies")
    return (
        set(saved) <= {"config", "strategies", "stream"}
        and isinstance(saved.get("config"), dict)
        and isinstance(strategies, list)
        and all(isinstance(s, str) for s in strategies)
    )


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
