"""Parse ``name:key=value,key=value`` specs and bind them to a constructor's keyword options.

One grammar serves strategies (``replay:buffer_size=200+ewc:lambda=100``), benchmarks
(``permuted-digits:tasks=10``) and models (``mlp:hidden=512``), so the command line, YAML configs and
`lifelong strategies` all describe options the same way: straight from the constructor's signature.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from lifelong.core.settings import COUNT_MAX, shown
from lifelong.errors import LifelongError


@dataclass(frozen=True)
class Spec:
    """One named component and its options, still as the user wrote them."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def parse_spec(text: str) -> Spec:
    """``"ewc:lambda=1000,fisher=exact"`` -> ``Spec("ewc", {"lambda": "1000", "fisher": "exact"})``."""
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise LifelongError(f"empty name in '{text}'; write it as name:key=value,key=value")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise LifelongError(f"option '{item}' in '{text}' is not key=value; write it as {name}:key=value")
        key = key.strip().replace("-", "_")
        if key in options:
            raise LifelongError(f"option '{key}' is given twice in '{text}'; keep one")
        options[key] = value.strip()
    return Spec(name, options)


def parse_composition(text: str) -> list[Spec]:
    """``"replay:buffer_size=200+ewc"`` -> two specs, applied together."""
    # A '+' joins two strategies only when a name follows it, so "der++" stays one name.
    return [parse_spec(part) for part in re.split(r"\+(?=[A-Za-z_])", text)]


def spec_from_mapping(item: str | Mapping[str, Any]) -> Spec:
    """A YAML entry: either a spec string or a mapping with a ``name`` key and options beside it."""
    if isinstance(item, str):
        return parse_spec(item)
    if "name" not in item:
        raise LifelongError(
            f"entry {dict(item)} has no 'name' key; write it as {{name: replay, buffer_size: 200}}"
        )
    options = {str(k).replace("-", "_"): v for k, v in item.items() if k != "name"}
    return Spec(str(item["name"]), options)


def describe_options(
    factory: Callable[..., Any], skip: tuple[str, ...] = (), aliases: Mapping[str, str] | None = None
) -> list[tuple[str, Any]]:
    """(option name as users spell it, default) for every keyword option of ``factory``."""
    public = {v: k for k, v in (aliases or {}).items()}
    out = []
    for param in inspect.signature(factory).parameters.values():
        if param.name in skip or param.name == "self" or param.default is inspect.Parameter.empty:
            continue
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        out.append((public.get(param.name, param.name), param.default))
    return out


def bind(
    factory: Callable[..., Any],
    spec: Spec,
    *,
    what: str,
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, str] | None = None,
    **fixed: Any,
) -> Any:
    """Call ``factory(**fixed, **options)`` with each option cast to the type its default implies.

    An unknown option or a value of the wrong kind raises one `LifelongError` naming the allowed options.
    """
    if not spec.options:  # the common case, and a signature costs more than a small model's build
        return factory(**fixed)
    aliases = dict(aliases or {})
    params = inspect.signature(factory).parameters
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    kwargs: dict[str, Any] = {}
    for key, raw in spec.options.items():
        target = aliases.get(key, key)
        if target not in params or target in skip or target in fixed or target == "self":
            allowed = describe_options(factory, skip=skip + tuple(fixed), aliases=aliases)
            raise LifelongError(
                f"{what} '{spec.name}' has no option '{key}'; its options are: "
                f"{', '.join(name for name, _ in allowed) or '(none)'}"
            )
        kwargs[target] = _cast(
            raw, params[target].default, hints.get(target), f"{what} '{spec.name}' option '{key}'"
        )
    return factory(**fixed, **kwargs)


def _cast(raw: Any, default: Any, hint: Any, where: str) -> Any:
    choices = _literal_choices(hint)
    if choices:
        value = raw if not isinstance(raw, str) else next((c for c in choices if str(c) == raw), raw)
        if value not in choices:
            raise LifelongError(f"{where} is '{raw}'; use one of: {', '.join(map(str, choices))}")
        return value
    if not isinstance(raw, str):
        kind = type(default) if default is not None else None
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if kind is not None and not isinstance(raw, kind):
            raise LifelongError(f"{where} must be {kind.__name__}, got {raw!r}")
        return _checked_number(raw, where) if isinstance(raw, int | float) else raw
    if isinstance(default, bool):
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise LifelongError(f"{where} must be true or false, got '{raw}'")
    for kind in (int, float) if default is None else (type(default),):
        if kind in (int, float):
            try:
                return _checked_number(kind(raw), where)
            except ValueError:
                if default is not None:
                    raise LifelongError(f"{where} must be a number ({kind.__name__}), got '{raw}'") from None
    if default is None and raw.lower() in ("none", "null"):
        return None
    return raw


def _checked_number(number: float, where: str) -> float:
    """Every numeric option is finite and an integer (a count, a size) fits `COUNT_MAX`: inf, nan or 10**20 would only fail
    later, deep inside training."""
    if isinstance(number, float) and not math.isfinite(number):
        raise LifelongError(f"{where} must be a finite number, got {number}")
    if isinstance(number, int) and abs(number) > COUNT_MAX:
        raise LifelongError(f"{where} must be at most {COUNT_MAX:,} in size, got {shown(number)}")
    return number


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    if hint is None:
        return ()
    if get_origin(hint) is typing.Literal:
        return get_args(hint)
    for arg in get_args(hint):  # Optional[Literal[...]]
        if get_origin(arg) is typing.Literal:
            return get_args(arg)
    return ()
