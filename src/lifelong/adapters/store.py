"""The on-disk form of an adapter library: one folder per task, as PEFT writes it plus a record::

    root/<task>/adapter_model.safetensors   the LoRA matrices (and, for a classifier, its own head)
    root/<task>/adapter_config.json         PEFT's LoraConfig
    root/<task>/lifelong.json               task, base model name and config hash, training arguments,
                                            data size, eval score, created time, parents of a merge,
                                            and the SHA-256 of the weights file

Everything here reads or writes those folders without loading a model. A folder is written in a
hidden staging folder and renamed into place in one step, so a task's name never holds half an adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.adapters.peft_calls import _quiet_warnings
from lifelong.adapters.records import checked_lora_config, wrongly_typed
from lifelong.core.checkpoint import atomic_write_json, sha256_file
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PretrainedConfig

WEIGHTS_FILE, CONFIG_FILE, META_FILE = "adapter_model.safetensors", "adapter_config.json", "lifelong.json"
META_FORMAT = 1
EXPORTS = "_exports"  # default home of merge_and_unload folders; no task name starts with "_"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# Config keys that change when a config is saved, reloaded or run, not when the model changes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
    }
)


@dataclass
class AdapterInfo:
    """What `AdapterLibrary.list` reports for one adapter folder (from its ``lifelong.json``)."""

    task: str
    path: Path
    kind: str = "trained"  # "trained" or "merged"
    model_kind: str = ""
    r: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    base_name: str = ""
    base_hash: str = ""
    data_size: int | None = None
    eval: dict[str, Any] | None = None
    parents: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    method: str | None = None
    parameters: int | None = None
    size_bytes: int = 0
    created: str = ""
    problem: str | None = None  # why the adapter cannot be loaded, if it cannot

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


# ---- names and records ----------------------------------------------------------------------------------


def config_hash(config: PretrainedConfig) -> str:
    """A short hash of a model config, stable across save/load (volatile keys are left out)."""
    values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_task_name(task: str) -> str:
    """Task names become folder names and PEFT adapter names (module-dict keys, no dots)."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise LifelongError(
            f"task name {task!r} is not allowed; use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if task in "lora_":  # PEFT finds adapters by key; a name inside its prefix breaks loading
        raise LifelongError(f"task name '{task}' is too close to PEFT's 'lora_' prefix; choose a longer name")
    return task


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def adapter_record(
    peft: PeftModel, task: str, config: LoraConfig, *, kind: str, model_kind: str, base: dict[str, str]
) -> dict[str, Any]:
    """The ``lifelong.json`` of ``peft``'s adapter ``task``, less the checksum that saving adds."""
    targets = config.target_modules
    target_list = sorted(targets) if isinstance(targets, set | list | tuple) else [str(targets)]
    return {
        "format": META_FORMAT,
        "task": task,
        "kind": kind,
        "model_kind": model_kind,
        "base": base,
        "lora": {
            "r": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": target_list,
            "modules_to_save": sorted(config.modules_to_save or []),
        },
        "parameters": sum(p.numel() for n, p in peft.named_parameters() if f".{task}." in f"{n}."),
        "created": _now(),
        "versions": _versions(),
    }


# ---- reading ------------------------------------------------------------------------------------------


def read_meta(folder: Path) -> dict[str, Any]:
    """The ``lifelong.json`` of one adapter folder, or a `LifelongError` that says what is wrong."""
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(meta, dict)
            or meta.get("format") != META_FORMAT
            or not isinstance(meta.get("base"), dict)
        ):
            raise ValueError("not a lifelong adapter record")
    except FileNotFoundError:
        raise LifelongError(
            f"{folder} has no {META_FILE}, so it was not saved by AdapterLibrary; retrain the adapter or delete the folder"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise LifelongError(f"{path} is damaged; retrain the adapter or delete the folder") from None
    wrong = wrongly_typed(meta)
    if wrong is not None:
        raise LifelongError(
            f"{path}: '{wrong}' has the wrong kind of value; retrain the adapter or delete the folder"
        )
    return meta


def adapter_rank(folder: Path) -> int:
    """The largest LoRA rank in ``folder``'s ``adapter_config.json`` (its rank_pattern included)."""
    config = checked_lora_config(folder / CONFIG_FILE)
    return max([int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


def read_lora_config(folder: Path) -> LoraConfig:
    """``adapter_config.json`` as PEFT's LoraConfig, for inference."""
    from peft import LoraConfig

    checked_lora_config(folder / CONFIG_FILE)
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise LifelongError(f"{folder / CONFIG_FILE} cannot be read ({err}); retrain the adapter") from None
    config.inference_mode = True
    return config


def check_weights(folder: Path, meta: dict[str, Any]) -> None:
    """Refuse a weights file that is not the one saved (its checksum) or that safetensors cannot open."""
    from safetensors import SafetensorError, safe_open

    weights = folder / WEIGHTS_FILE
    expected = meta.get("weights_sha256")
    if not expected or not isinstance(expected, str):
        raise LifelongError(_no_checksum(folder))
    if sha256_file(weights) != expected:
        raise LifelongError(
            f"{weights} does not match the checksum in its {META_FILE} (changed or truncated); "
            f"retrain the adapter or delete it (lifelong adapters delete {folder.name})"
        )
    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise LifelongError(f"{weights} cannot be read ({err}); retrain the adapter or delete it") from None


def _no_checksum(folder: Path) -> str:
    # Every adapter this package saves has one; without it a changed file would load unchecked.
    return (
        f"adapter '{folder.name}' has no weights_sha256 in its {META_FILE}, so its weights cannot be "
        f"verified; retrain the adapter or delete it (lifelong adapters delete {folder.name})"
    )


def adapter_folder(root: Path, task: str) -> Path:
    """``root/<task>``, refusing a task that has no adapter there (with the list of those that do)."""
    folder = root / check_task_name(task)
    if not folder.is_dir():
        known = ", ".join(i.task for i in list_adapters(root) if i.ok) or "none yet"
        raise LifelongError(f"unknown task '{task}': {root} has no adapter for it (adapters: {known})")
    return folder


def adapter_problem(
    folder: Path, meta: dict[str, Any], base_hash: str | None, base_name: str = ""
) -> str | None:
    """Why the adapter in ``folder`` cannot be loaded on the base with ``base_hash``, or None (no weights read)."""
    task, base = folder.name, meta["base"]
    if base_hash is not None and base.get("config_hash") != base_hash:
        return (
            f"adapter '{task}' was trained on base model {base.get('name')!r} (config {base.get('config_hash')}), "
            f"not on this library's base {base_name!r} (config {base_hash}); load it with its own base model"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            return (
                f"adapter '{task}' has no {name}; retrain it or delete it (lifelong adapters delete {task})"
            )
    checksum = meta.get("weights_sha256")
    if not checksum or not isinstance(checksum, str):
        return _no_checksum(folder)
    return None


def inspect_adapter(folder: Path, base_hash: str | None = None, base_name: str = "") -> AdapterInfo:
    """The `AdapterInfo` of one adapter folder; ``base_hash`` also checks it belongs to that base."""
    task = folder.name
    try:
        meta = read_meta(folder)
    except LifelongError as err:
        return AdapterInfo(task, folder, problem=str(err))
    lora = meta.get("lora") or {}
    weights = folder / WEIGHTS_FILE
    problem = adapter_problem(folder, meta, base_hash, base_name)
    if problem is None:  # a truncated or changed weights file is no more "ok" in a list than at load
        try:
            check_weights(folder, meta)
        except LifelongError as err:
            problem = str(err)
    return AdapterInfo(
        task=task,
        path=folder,
        kind=meta.get("kind") or "trained",
        model_kind=meta.get("model_kind") or "",
        r=lora.get("r"),
        alpha=lora.get("alpha"),
        target_modules=list(lora.get("target_modules") or []),
        base_name=meta["base"].get("name") or "",
        base_hash=meta["base"].get("config_hash") or "",
        data_size=meta.get("data_size"),
        eval=meta.get("eval"),
        parents=list(meta.get("parents") or []),
        weights=list(meta.get("weights") or []),
        method=meta.get("method"),
        parameters=meta.get("parameters"),
        size_bytes=weights.stat().st_size if weights.is_file() else 0,
        created=meta.get("created") or "",
        problem=problem,
    )


def list_adapters(root: str | Path, base_hash: str | None = None, base_name: str = "") -> list[AdapterInfo]:
    """Every adapter folder under ``root`` by name, without loading a model (hidden and ``_`` folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and TASK_NAME.fullmatch(p.name))
    return [inspect_adapter(p, base_hash, base_name) for p in folders]


# ---- writing ------------------------------------------------------------------------------------------


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
            {"format": META_FORMAT, "exported_from": task, "adapter": adapter_meta, "created": _now()},
        )
        _fsync_tree(staging)
        _replace_folder(staging, target)
