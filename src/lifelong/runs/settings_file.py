"""A command's settings from a YAML file (``--config FILE``) merged with its flags: one loader for every
command that trains. The keys are the settings class's fields (`lifelong.core.settings`), written as
the field name or as the long flag, with ``-`` or ``_``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from lifelong.core.settings import option_fields
from lifelong.core.spec import spec_from_mapping
from lifelong.errors import LifelongError

# A run's settings fit in a few lines; these bounds only stop files built to exhaust memory or the stack.
CONFIG_MAX_BYTES = 1 << 20
CONFIG_MAX_DEPTH = 16

Settings = TypeVar("Settings")


def load_settings_file(path: Path, settings_class: type) -> dict[str, Any]:
    """Read a YAML settings file into ``{field: value}`` for ``settings_class``; unknown keys are refused.

    Anchors and aliases are refused: nine levels of aliases in one kilobyte expand to gigabytes.
    """
    raw = _read_mapping(path)
    names = _key_names(settings_class)
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            known = ", ".join(sorted(fields))
            raise LifelongError(f"config file {path}: unknown key '{key}'; known keys: {known}")
        from_file = fields[name].metadata.get("from_file")
        out[name] = from_file(value, path) if from_file else value
    return out


def make_settings(
    settings_class: type[Settings], file_values: dict[str, Any], flag_values: dict[str, Any]
) -> Settings:
    """Defaults, then the YAML file, then flags given on the command line (None means not given),
    checked by the class's ``validate``."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None and v != []}}
    known = {f.name for f in dataclasses.fields(settings_class)}  # type: ignore[arg-type]
    unknown = sorted(set(merged) - known)
    if unknown:
        raise LifelongError(f"unknown setting '{unknown[0]}'; known settings: {', '.join(sorted(known))}")
    settings = settings_class(**merged)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def compositions_from_file(value: Any, path: Path) -> list[str]:
    """Strategies in YAML: a string, or a list whose items are strings, mappings with ``name``, or lists
    of those (a composition)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        parts = item if isinstance(item, list) else [item]
        if not all(isinstance(p, str | dict) for p in parts):
            raise LifelongError(
                f"config file {path}: strategy entry {item!r} must be a name or a mapping with 'name'"
            )
        out.append("+".join(str(spec_from_mapping(p)) for p in parts))
    return out


def _key_names(settings_class: type) -> dict[str, str]:
    """Each key a file may use (field name, long flags) -> the field it sets: ``strategy`` sets
    ``strategies`` as ``--strategy`` does."""
    names = {f.name: f.name for f in dataclasses.fields(settings_class)}
    for field, _ in option_fields(settings_class):
        for flag in field.metadata["flags"]:
            if flag.startswith("--"):
                names[flag[2:].replace("-", "_")] = field.name
    return names


def _read_mapping(path: Path) -> dict[Any, Any]:
    import yaml  # deferred: only a run given --config reads YAML

    if not path.is_file():
        raise LifelongError(f"config file {path} does not exist; check the path given to --config")
    with path.open("rb") as handle:
        data = handle.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise LifelongError(
            f"config file {path} is larger than {CONFIG_MAX_BYTES // (1 << 20)} MiB; a run's settings fit in a few lines"
        )
    try:
        text = data.decode("utf-8")
        _check_yaml_shape(text, path)
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LifelongError(
            f"config file {path} is not valid YAML ({type(err).__name__}); fix its syntax"
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LifelongError(
            f"config file {path} must be a mapping of keys to values, not {type(raw).__name__}"
        )
    return raw


def _check_yaml_shape(text: str, path: Path) -> None:
    """Refuse anchors, aliases and deep nesting from the token stream, before PyYAML's recursive
    composer builds anything."""
    import yaml

    opening = (
        yaml.BlockSequenceStartToken,
        yaml.BlockMappingStartToken,
        yaml.FlowSequenceStartToken,
        yaml.FlowMappingStartToken,
    )
    closing = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
            raise LifelongError(
                f"config file {path} uses YAML anchors or aliases (&name, *name); write each value out in full"
            )
        if isinstance(token, opening):
            depth += 1
            if depth > CONFIG_MAX_DEPTH:
                raise LifelongError(
                    f"config file {path} is nested more than {CONFIG_MAX_DEPTH} levels deep; "
                    "a run's settings are keys with plain values or short lists"
                )
        elif isinstance(token, closing):
            depth -= 1
