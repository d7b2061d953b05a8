"""A run's settings: command-line flags and YAML keys are the same names, validated in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifelong.core.distributed import PRECISIONS
from lifelong.core.learner import OPTIMIZERS
from lifelong.core.spec import spec_from_mapping
from lifelong.core.stream import SCENARIOS
from lifelong.errors import LifelongError


@dataclass
class RunConfig:
    """Everything `lifelong run` needs; ``strategies`` holds one composition string per strategy run."""

    benchmark: str = "split-digits"
    strategies: list[str] = field(default_factory=list)
    model: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    scenario: str | None = None
    data: str | None = None
    label_column: str = "label"
    task_column: str | None = None
    classes_per_task: int | None = None
    test_size: float = 0.3
    tensorboard: bool = False
    precision: str = "no"

    def validate(self) -> RunConfig:
        self._check_types()
        if self.epochs < 1:
            raise LifelongError(f"epochs must be a positive integer, got {self.epochs}; try --epochs 5")
        if self.batch_size < 1:
            raise LifelongError(
                f"batch size must be a positive integer, got {self.batch_size}; try --batch-size 32"
            )
        if not self.lr > 0:
            raise LifelongError(f"learning rate must be positive, got {self.lr}; try --lr 0.001")
        if self.optimizer not in OPTIMIZERS:
            raise LifelongError(
                f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise LifelongError(f"unknown device '{self.device}'; choose one of: auto, cpu, cuda")
        if self.precision not in PRECISIONS:
            raise LifelongError(
                f"unknown precision '{self.precision}'; choose one of: {', '.join(PRECISIONS)}"
            )
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise LifelongError(f"unknown scenario '{self.scenario}'; choose one of: {', '.join(SCENARIOS)}")
        if not 0 < self.test_size < 1:
            raise LifelongError(
                f"test size must be between 0 and 1, got {self.test_size}; try --test-size 0.3"
            )
        if self.classes_per_task is not None and self.classes_per_task < 1:
            raise LifelongError(f"classes per task must be at least 1, got {self.classes_per_task}")
        return self

    def _check_types(self) -> None:
        """YAML and saved run files can hold anything: check each value's kind before using it."""
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), str(f.type)
            if value is None and "None" in expected:
                continue
            if expected.startswith("bool"):
                ok = isinstance(value, bool)
            elif expected.startswith("int"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif expected.startswith("float"):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            elif expected.startswith("str"):
                ok = isinstance(value, str)
            else:  # list[str]
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if not ok:
                kind = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text"}.get(
                    expected.split(" ")[0], "a list of names"
                )
                raise LifelongError(f"'{f.name}' must be {kind}, got {value!r}")

    @property
    def stream_name(self) -> str:
        return Path(self.data).stem if self.data else self.benchmark.partition(":")[0]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read a YAML config; keys are the long flag names with ``-`` or ``_``; ``strategy`` may be a list."""
    import yaml

    if not path.is_file():
        raise LifelongError(f"config file {path} does not exist; check the path given to --config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    known = {f.name for f in dataclasses.fields(RunConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name == "strategy":
            name = "strategies"
        if name not in known:
            raise LifelongError(
                f"config file {path}: unknown key '{key}'; known keys: {', '.join(sorted(known))}"
            )
        out[name] = _normalise_strategies(value, path) if name == "strategies" else value
    return out


def _normalise_strategies(value: Any, path: Path) -> list[str]:
    """YAML strategies: a string, or a list whose items are strings, mappings with ``name``, or lists
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


def make_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults, then the YAML file, then flags given on the command line (None means not given)."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None and v != []}}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise LifelongError(f"unknown setting '{unknown[0]}'; known settings: {', '.join(sorted(known))}")
    return RunConfig(**merged).validate()
