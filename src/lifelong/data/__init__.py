"""Built-in streams that need no download, by name.

Each builder takes ``seed`` (the train/test split and permutations) plus keyword options with
defaults; ``--benchmark 'permuted-digits:tasks=10'`` binds those options by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifelong.core.spec import Spec, bind, describe_options, parse_spec
from lifelong.core.stream import Stream
from lifelong.data.digits import permuted_digits, split_digits
from lifelong.data.mnist1d import permuted_mnist1d, split_mnist1d
from lifelong.data.text import split_pydoc
from lifelong.data.vision import (
    permuted_mnist,
    rotated_mnist,
    split_cifar10,
    split_cifar100,
    split_fashion_mnist,
    split_mnist,
)
from lifelong.errors import LifelongError


@dataclass(frozen=True)
class Benchmark:
    name: str
    build: Callable[..., Stream]

    @property
    def description(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]

    def options(self) -> list[tuple[str, object]]:
        return describe_options(self.build, skip=("seed", *FILE_OPTIONS))

    @property
    def reads_files(self) -> bool:
        return "data_root" in inspect.signature(self.build).parameters


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("split-digits", split_digits),
        Benchmark("permuted-digits", permuted_digits),
        Benchmark("split-mnist1d", split_mnist1d),
        Benchmark("permuted-mnist1d", permuted_mnist1d),
        Benchmark("split-pydoc", split_pydoc),
        Benchmark("split-mnist", split_mnist),
        Benchmark("permuted-mnist", permuted_mnist),
        Benchmark("rotated-mnist", rotated_mnist),
        Benchmark("split-fashion-mnist", split_fashion_mnist),
        Benchmark("split-cifar10", split_cifar10),
        Benchmark("split-cifar100", split_cifar100),
    )
}
# Where an image stream's files are: flags of their own (--data-root, --download), not stream options.
FILE_OPTIONS = ("data_root", "download")


def build_benchmark(
    spec: str | Spec, seed: int = 0, scenario: str | None = None, files: dict[str, Any] | None = None
) -> Stream:
    """Build a named stream; ``scenario`` overrides the benchmark's own where it makes sense; ``files``
    (``data_root``, ``download``) says where an image stream's files are."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name not in BENCHMARKS:
        raise LifelongError(f"unknown benchmark '{spec.name}'; choose one of: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[spec.name]
    fixed: dict[str, Any] = {"seed": seed}
    if scenario is not None:
        if "scenario" not in dict(bench.options()):
            raise LifelongError(f"benchmark '{spec.name}' has a fixed scenario; drop --scenario")
        fixed["scenario"] = scenario
    given = {key: value for key, value in (files or {}).items() if value}
    if given and not bench.reads_files:
        flags = " and ".join("--" + key.replace("_", "-") for key in given)
        raise LifelongError(f"benchmark '{spec.name}' ships with lifelong and reads no files; drop {flags}")
    if bench.reads_files:
        fixed.update(given)
    stream: Stream = bind(bench.build, spec, what="benchmark", skip=FILE_OPTIONS, **fixed)
    return stream
