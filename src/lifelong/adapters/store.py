"""The on-disk form of an adapter library: one folder per task, as PEFT writes it plus a record::

    root/<task>/adapter_model.safetensors   the LoRA matrices (and, for a classifier, its own head)
    root/<task>/adapter_config.json         PEFT's LoraConfig
    root/<task>/lifelong.json               task, base model name and config hash, training arguments,
                                            data size, eval score, created time, parents of a merge,
                                            and the SHA-256 of the weights file

Everything here reads those folders (and names them) without loading a model; writing them is
`lifelong.adapters.saving`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.adapters.records import checked_lora_config, wrongly_typed
from lifelong.core.checkpoint import sha256_file
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


def utc_now() -> str:
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
        "created": utc_now(),
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
