"""Writing an adapter library's folders: each one whole in a single rename, and nothing deleted or
replaced that does not hold lifelong's record (``lifelong.json``), so a user's own folder never goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.adapters.peft_calls import _quiet_warnings
from lifelong.adapters.store import (
    CONFIG_FILE,
    EXPORTS,
    META_FILE,
    META_FORMAT,
    WEIGHTS_FILE,
    adapter_folder,
    check_task_name,
    utc_now,
)
from lifelong.core.checkpoint import atomic_write_json, sha256_file
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import PeftModel


def written_here(folder: Path) -> bool:
    """Whether ``folder`` is one this library wrote (an adapter or an export): it holds our record.
    Only such a folder is ever deleted or replaced; anything else is the user's."""
    try:
        record = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "format" in record


def refuse_unless_written_here(folder: Path, action: str) -> None:
    if not written_here(folder):
        raise LifelongError(
            f"{folder} has no {META_FILE}: it is not a folder lifelong saved, so it will not {action} it; "
            "move or remove it yourself, or choose another name"
        )


def check_new_adapter(root: Path, task: str, *, overwrite: bool) -> None:
    """``root/<task>`` may take a new adapter: a valid name, free, or (``overwrite``) one lifelong saved."""
    target = root / check_task_name(task)
    if not target.exists():
        return
    if not overwrite:
        raise LifelongError(
            f"an adapter for task '{task}' already exists in {root}; pass --overwrite (overwrite=True) or delete it"
        )
    refuse_unless_written_here(target, "replace")


def check_deletable(folder: Path) -> None:
    """A link may always go (what it points to stays); a folder only if lifelong saved it."""
    if not folder.is_symlink():
        refuse_unless_written_here(folder, "delete")


def delete_adapter(root: str | Path, task: str) -> None:
    """Remove ``root/<task>`` (a broken adapter too) in one rename, so it is never half-deleted."""
    folder = adapter_folder(Path(root), task)
    check_deletable(folder)
    trash = folder.with_name(f".deleted-{task}-{os.getpid()}")
    os.replace(folder, trash)
    if trash.is_symlink():  # a linked adapter: the link goes, what it points to is not ours to delete
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _staging_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new hidden folder in ``parent`` to write into; whatever is left in it is removed afterwards."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is renamed away first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_adapter(peft: PeftModel, root: Path, task: str, meta: dict[str, Any], *, overwrite: bool) -> None:
    """Write ``peft``'s adapter ``task`` with ``meta`` and its checksum to ``root/<task>`` in one rename."""
    root.mkdir(parents=True, exist_ok=True)
    with _staging_folder(root, f".tmp-{task}-") as staging:
        with _quiet_warnings():
            peft.save_pretrained(str(staging), selected_adapters=[task])
        # PEFT writes a non-default adapter into a subfolder named after it.
        written = staging / task if (staging / task / CONFIG_FILE).is_file() else staging
        (written / "README.md").unlink(missing_ok=True)
        meta["weights_sha256"] = sha256_file(written / WEIGHTS_FILE)
        atomic_write_json(written / META_FILE, meta)
        _fsync_tree(written)
        target = root / task
        if target.exists() and not overwrite:
            raise LifelongError(
                f"an adapter for task '{task}' appeared in {root} meanwhile; nothing was saved"
            )
        if target.exists():
            refuse_unless_written_here(target, "replace")
        _replace_folder(written, target)


def _overlap(where: Path, folder: Path) -> str | None:
    """How the resolved path ``where`` overlaps ``folder``: "is", "holds", "is inside", or None."""
    kept = folder.resolve()
    if where == kept:
        return "is"
    if where in kept.parents:
        return "holds"
    return "is inside" if kept in where.parents else None


def check_export_target(target: Path, root: Path, base: Path | None, *, overwrite: bool) -> None:
    """Refuse an export folder that is a file, names no folder, is not empty (unless ``overwrite``), or
    whose replacement would take the library, one of its adapters, the base model or the current
    folder with it; only ``root/_exports/<name>`` may lie inside the library."""
    if target.name in ("", ".", ".."):
        raise LifelongError(
            f"export folder '{target}' names no new folder; give a path such as exported/model"
        )
    if target.exists() and not target.is_dir():
        raise LifelongError(f"export folder {target} is a file; choose a folder path")
    where = target.resolve()
    in_exports = (root.resolve() / EXPORTS) in where.parents
    guarded = (
        ("the adapter library", root, in_exports),
        ("the base model's folder", base, False),
        ("the current folder", Path.cwd(), True),
    )
    for what, folder, may_be_inside in guarded:
        relation = _overlap(where, folder) if folder is not None else None
        if relation is not None and not (relation == "is inside" and may_be_inside):
            raise LifelongError(
                f"export folder {target} {relation} {what} {folder}, which the export would replace; "
                f"choose a folder outside it (or under {root / EXPORTS})"
            )
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise LifelongError(
                f"{target} already exists and is not empty; pass --overwrite (overwrite=True) or another folder"
            )
        refuse_unless_written_here(target, "replace")


def save_export(model: Any, tokenizer: Any, target: Path, task: str, adapter_meta: dict[str, Any]) -> None:
    """Write ``model`` (``save_pretrained``), ``tokenizer`` and a record of the adapter ``task`` it was
    exported from to ``target`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_folder(target.parent, f".{target.name}.") as staging:
        with _quiet_warnings():
            model.save_pretrained(str(staging), safe_serialization=True)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(staging))
        atomic_write_json(
            staging / META_FILE,
            {"format": META_FORMAT, "exported_from": task, "adapter": adapter_meta, "created": utc_now()},
        )
        _fsync_tree(staging)
        _replace_folder(staging, target)
