"""What an adapter folder's two JSON files must hold: ``lifelong.json`` (our record) and
``adapter_config.json`` (PEFT's). Both are read by every command that lists or loads adapters, so
one file with a wrongly typed field is named in one line instead of failing deep inside a listing
or inside PEFT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError

_TEXT, _NUMBER, _COUNT = "text", "number", "count"
# What each field of lifelong.json holds, where present (None is allowed for all but the containers).
_META_FIELDS: dict[str, Any] = {
    "kind": _TEXT,
    "model_kind": _TEXT,
    "created": _TEXT,
    "method": _TEXT,
    "data_size": _COUNT,
    "parameters": _COUNT,
    "parents": [_TEXT],
    "weights": [_NUMBER],
    "eval": {"metric": _TEXT, "value": _NUMBER},
    "lora": {"r": _COUNT, "alpha": _NUMBER, "dropout": _NUMBER, "target_modules": [_TEXT]},
    "base": {"name": _TEXT, "config_hash": _TEXT},
}


def wrongly_typed(
    meta: dict[str, Any], schema: dict[str, Any] = _META_FIELDS, prefix: str = ""
) -> str | None:
    """The first field of ``meta`` whose value is not of the kind ``schema`` gives (dotted), or None."""
    for key, kind in schema.items():
        value = meta.get(key)
        if value is None and not isinstance(kind, dict | list):
            continue
        if isinstance(kind, dict):
            if value is not None and not isinstance(value, dict):
                return prefix + key
            inner = wrongly_typed(value or {}, kind, f"{prefix}{key}.")
            if inner is not None:
                return inner
        elif isinstance(kind, list):
            if value is not None and not (isinstance(value, list) and all(_is(v, kind[0]) for v in value)):
                return prefix + key
        elif not _is(value, kind):
            return prefix + key
    return None


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _COUNT:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def checked_lora_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` as JSON, refused in one line unless it is a LoRA config PEFT can build
    a model from (its checksum is not kept: PEFT writes it, so its fields are checked instead)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise LifelongError(f"{path} is damaged; retrain the adapter or delete it") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise LifelongError(f"{path} is not a LoRA adapter's config ({kind!r}); retrain the adapter")
    targets = config.get("target_modules")
    wrong = wrongly_typed(config, {"r": _COUNT, "lora_alpha": _NUMBER, "lora_dropout": _NUMBER})
    if not (
        targets is None
        or _is(targets, _TEXT)
        or (isinstance(targets, list) and all(_is(t, _TEXT) for t in targets))
    ):
        wrong = wrong or "target_modules"
    for name, kind in (("rank_pattern", _COUNT), ("alpha_pattern", _NUMBER)):
        pattern = config.get(name) or {}
        if not isinstance(pattern, dict) or not all(_is(v, kind) for v in pattern.values()):
            wrong = wrong or name
    if wrong is None and not (_is(config.get("r"), _COUNT) and config["r"] >= 1):
        wrong = "r"
    if wrong is not None:
        raise LifelongError(
            f"{path}: '{wrong}' has the wrong kind of value; retrain the adapter or delete it"
        )
    return config
