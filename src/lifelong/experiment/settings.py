"""A run's settings: command-line flags and YAML keys are the same names, validated in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.core.distributed import PRECISIONS
from lifelong.core.learner import OPTIMIZERS
from lifelong.core.settings import check_types, setting
from lifelong.core.spec import spec_from_mapping
from lifelong.core.stream import SCENARIOS
from lifelong.errors import LifelongError


@dataclass
class RunConfig:
    """Everything `lifelong run` needs; ``strategies`` holds one composition string per strategy run.

    Each field is also a flag of `lifelong run` and a key of its YAML config (``strategy`` or
    ``strategies``), with the help line declared here.
    """

    benchmark: str = setting(
        "split-digits", "Built-in stream, e.g. split-digits or 'permuted-digits:tasks=10'."
    )
    strategies: list[str] = setting(
        None,
        "Strategy to run (repeatable); 'a+b' composes; 'replay:buffer_size=200'.  \\[default: all]",
        "--strategy",
        "-s",
        factory=list,
    )
    model: str | None = setting(None, "Model: mlp, cnn1d, with options 'mlp:hidden=512'.")
    epochs: int = setting(10, "Epochs per task.")
    batch_size: int = setting(32, "Batch size.")
    lr: float = setting(1e-3, "Learning rate.")
    optimizer: str = setting("adam", "sgd, adam or adamw.")
    seed: int = setting(0, "Seed for splits, initial weights and batches.")
    device: str = setting("auto", "auto, cpu or cuda.")
    out: str | None = setting(None, "Run folder.  \\[default: runs/<benchmark>-<time>]")
    overwrite: bool = setting(False, "Reuse a folder with a finished run.", "--overwrite")
    scenario: str | None = setting(None, "class, task or domain (incremental).")
    data: str | None = setting(None, "Your data: a CSV/JSONL/Parquet file or a folder of them.")
    label_column: str = setting("label", "Label column of --data.")
    task_column: str | None = setting(None, "Column of --data that names each row's task.")
    classes_per_task: int | None = setting(None, "Split --data into tasks of this many classes.")
    test_size: float = setting(0.3, "Held-out share of each task.")
    tensorboard: bool = setting(False, "Also log every evaluation to TensorBoard.", "--tensorboard")
    precision: str = setting("no", "Mixed precision: no, bf16 or fp16.")

    def validate(self) -> RunConfig:
        check_types(self)
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

    @property
    def stream_name(self) -> str:
        return Path(self.data).stem if self.data else self.benchmark.partition(":")[0]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A run's settings fit in a few lines; these bounds only stop files built to exhaust memory or the stack.
CONFIG_MAX_BYTES = 1 << 20
CONFIG_MAX_DEPTH = 16


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read a YAML config; keys are the long flag names with ``-`` or ``_``; ``strategy`` may be a list.

    Anchors and aliases are refused: nine levels of aliases in one kilobyte expand to gigabytes.
    """
    import yaml

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
