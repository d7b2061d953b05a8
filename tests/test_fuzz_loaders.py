"""Every loader, fed broken files: each case ends in success or one LifelongError, never a traceback
or a hang. Cases: fixed mutations of a valid file (empty, truncations, bit flips, wrong types) plus
random bytes from hypothesis."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.core.checkpoint import load_checkpoint, save_checkpoint
from lifelong.data.files import load_user_stream
from lifelong.errors import LifelongError
from lifelong.experiment.run import load_run
from lifelong.experiment.settings import load_yaml_config


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):  # pragma: no cover - only on a hang
        raise TimeoutError(f"loader hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(load: Callable[[], object]) -> str:
    """'ok' or 'refused'; anything else (a traceback, a hang) fails the test."""
    with time_limit(20):
        try:
            load()
        except LifelongError as err:
            assert "\n" not in str(err), f"multi-line error: {err}"
            return "refused"
    return "ok"


def valid_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "f0": rng.normal(size=40),
            "f1": rng.normal(size=40),
            "label": [0, 1, 2, 3] * 10,
            "phase": ["a", "b"] * 20,
        }
    )


def valid_bytes(kind: str, tmp: Path) -> bytes:
    path = tmp / f"seed.{kind}"
    table = valid_table()
    if kind == "csv":
        table.to_csv(path, index=False)
    elif kind == "jsonl":
        table.to_json(path, orient="records", lines=True)
    else:
        table.to_parquet(path)
    return path.read_bytes()


def mutations(data: bytes) -> Iterator[bytes]:
    yield b""
    for cut in (1, 7, len(data) // 3, len(data) // 2, len(data) - 1):
        yield data[:cut]
    for pos in (0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - 2):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        yield bytes(flipped)
    yield b"\x00\xff\xfe" * 50
    yield data.replace(b"1", b"x")  # numbers turned into text
    yield data.replace(b"label", b"lable")  # the label column renamed


def load_table(path: Path) -> object:
    return load_user_stream(path, task_column="phase")


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_table_loaders_survive_mutations(tmp_path: Path, kind: str) -> None:
    seen = set()
    for i, data in enumerate(mutations(valid_bytes(kind, tmp_path))):
        path = tmp_path / f"case{i}.{kind}"
        path.write_bytes(data)
        seen.add(outcome(lambda path=path: load_table(path)))
    assert "refused" in seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512), kind=st.sampled_from(["csv", "jsonl", "parquet", "yaml"]))
def test_random_bytes_never_crash_a_loader(tmp_path: Path, data: bytes, kind: str) -> None:
    path = tmp_path / f"random.{kind}"
    path.write_bytes(data)
    if kind == "yaml":
        outcome(lambda: load_yaml_config(path))
    else:
        outcome(lambda: load_table(path))


def test_wrongly_typed_json_records(tmp_path: Path) -> None:
    cases = [
        '{"f0": [1, 2], "label": 0, "phase": "a"}\n',
        '{"f0": {"x": 1}, "label": 0, "phase": "a"}\n',
        "[1, 2, 3]\n",
        '"just a string"\n',
        '{"f0": 1, "label": null, "phase": "a"}\n{"f0": 2, "label": 1, "phase": "a"}\n',
    ]
    for i, text in enumerate(cases):
        path = tmp_path / f"typed{i}.jsonl"
        path.write_text(text)
        assert outcome(lambda path=path: load_table(path)) == "refused"


def test_checkpoint_and_run_files_survive_mutations(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"w": torch.ones(3)}, {"a": 1})
    originals = {p.name: p.read_bytes() for p in folder.iterdir()}
    tried = 0
    for name, data in originals.items():
        for mutated in mutations(data):
            (folder / name).write_bytes(mutated)
            result = outcome(lambda: load_checkpoint(folder))
            if name != "manifest.json":  # any change to a checksummed file must be caught
                assert result == "refused" or mutated == data
            tried += 1
        (folder / name).write_bytes(data)
    assert outcome(lambda: load_checkpoint(folder)) == "ok"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for text in ["", "{", "[]", '{"config": {"epochs": "x"}, "strategies": []}', '{"config": {"nope": 1}}']:
        (run_dir / "run.json").write_text(text)
        assert outcome(lambda: load_run(run_dir)) == "refused"
        tried += 1
    assert tried >= 40


def test_config_files_with_wrong_types(tmp_path: Path) -> None:
    from lifelong.experiment.settings import make_config

    for text in [
        "epochs: [1, 2]\n",
        "strategy: {a: 1}\n",
        "strategy: [[1, 2]]\n",
        "lr: {x: 1}\n",
        "seed: hello\n",
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        assert outcome(lambda path=path: make_config(load_yaml_config(path), {})) == "refused", text
