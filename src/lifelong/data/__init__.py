"""Built-in streams that need no download, by name.

Each builder takes ``seed`` (the train/test split and permutations) plus keyword options with
defaults; ``--benchmark 'permuted-digits:tasks=10'`` binds those options by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifelong.core.spec import Spec, bind, describe_options, parse_spec
from lifelong.core.stream import Stream
from lifelong.data.digits import permuted_digits, split_digits
from lifelong.data.mnist1d import permuted_mnist1d, split_mnist1d
from lifelong.data.text import split_pydoc
from lifelong.errors import LifelongError


@dataclass(frozen=True)
class Benchmark:
    name: str
    build: Callable[..., Stream]

    @property
    def description(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]

    def options(self) -> list[tuple[str, object]]:
        return describe_options(self.build, skip=("seed",))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("split-digits", split_digits),
        Benchmark("permuted-digits", permuted_digits),
        Benchmark("split-mnist1d", split_mnist1d),
        Benchmark("permuted-mnist1d", permuted_mnist1d),
        Benchmark("split-pydoc", split_pydoc),
    )
}


def build_benchmark(spec: str | Spec, seed: int = 0, scenario: str | None = None) -> Stream:
    """Build a named stream; ``scenario`` overrides the benchmark's own where it makes sense."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name not in BENCHMARKS:
        raise LifelongError(f"unknown benchmark '{spec.name}'; choose one of: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[spec.name]
    fixed: dict[str, Any] = {"seed": seed}
    if scenario is not None:
        if "scenario" not in dict(bench.options()):
            raise LifelongError(f"benchmark '{spec.name}' has a fixed scenario; drop --scenario")
        fixed["scenario"] = scenario
    stream: Stream = bind(bench.build, spec, what="benchmark", **fixed)
    return stream
