"""Streams from the user's own CSV / JSONL / Parquet files, and every way such input can be wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lifelong.core.stream import Stream
from lifelong.data.files import load_user_stream
from lifelong.errors import LifelongError


def frame(labels: list[Any], per_class: int = 10, seed: int = 0, **extra: Any) -> pd.DataFrame:
    """``per_class`` rows of each label, three float features; f0 holds the label's position in ``labels``."""
    rng = np.random.default_rng(seed)
    rows = [(i, label) for i, label in enumerate(labels) for _ in range(per_class)]
    df = pd.DataFrame(
        {
            "f0": [float(i) for i, _ in rows],
            "f1": rng.normal(size=len(rows)),
            "f2": rng.normal(size=len(rows)),
            "label": [label for _, label in rows],
        }
    )
    for name, value in extra.items():
        df[name] = value
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        df.to_json(path, orient="records")
    else:
        df.to_parquet(path, index=False)
    return path


def error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(LifelongError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def labels_of(stream: Stream, i: int) -> set[int]:
    task = stream[i]
    return set(task.train.tensors[1].tolist()) | set(task.test.tensors[1].tolist())


def all_x(stream: Stream) -> list[torch.Tensor]:
    return [t for task in stream for part in (task.train, task.test) for t in part.tensors]


# ---- loading ------------------------------------------------------------------------------------


def test_csv_with_task_column_in_order_of_appearance(tmp_path: Path) -> None:
    df = pd.concat([frame([0, 1], domain="winter"), frame([0, 1], seed=1, domain="summer")])
    path = write(df, tmp_path / "seasons.csv")
    stream = load_user_stream(path, task_column="domain")
    assert stream.name == "seasons"
    assert [t.name for t in stream] == ["winter", "summer"]
    assert stream.input_shape == (3,)  # the task column is not a feature
    assert stream.num_classes == 2
    assert stream.scenario == "domain"  # same labels in every task
    for task in stream:
        x, y = task.train.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3,)
        assert len(task.train) + len(task.test) == 20
        assert len(task.test) == 6
        assert set(task.test.tensors[1].tolist()) == {0, 1}


def test_jsonl_with_classes_per_task(tmp_path: Path) -> None:
    path = write(frame([5, 3, 1, 0, 4, 2]), tmp_path / "six.jsonl")
    stream = load_user_stream(path, classes_per_task=2)
    assert [t.classes for t in stream] == [[0, 1], [2, 3], [4, 5]]
    assert [labels_of(stream, i) for i in range(3)] == [{0, 1}, {2, 3}, {4, 5}]
    assert stream.scenario == "class"  # the label sets differ
    assert stream.class_names == ["0", "1", "2", "3", "4", "5"]
    assert stream[0].name == "task0:0,1"


def test_classes_per_task_leaves_a_smaller_last_task(tmp_path: Path) -> None:
    path = write(frame([0, 1, 2, 3, 4]), tmp_path / "five.csv")
    stream = load_user_stream(path, classes_per_task=2)
    assert [t.classes for t in stream] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet(tmp_path: Path, suffix: str) -> None:
    df = pd.concat([frame([0, 1], task=1), frame([2, 3], task=2)])
    df["flag"] = df["f1"] > 0  # bool features are fine
    stream = load_user_stream(write(df, tmp_path / f"data{suffix}"), task_column="task")
    assert [t.name for t in stream] == ["1", "2"]
    assert stream.input_shape == (4,)
    assert stream.num_classes == 4
    assert [t.classes for t in stream] == [[0, 1], [2, 3]]


def test_json_array_file(tmp_path: Path) -> None:
    path = write(frame([0, 1, 2, 3]), tmp_path / "records.json")
    assert json.loads(path.read_text())[0]["label"] == 0
    stream = load_user_stream(path, classes_per_task=2)
    assert len(stream) == 2


def test_folder_one_file_per_task_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "my-tasks"
    folder.mkdir()
    write(frame([0, 1], seed=10), folder / "task10.csv")
    write(frame([0, 1], seed=2), folder / "task2.csv")
    write(frame([0, 1], seed=1), folder / "task1.csv")
    write(frame([0, 1], seed=3), folder / "task3.jsonl")
    (folder / "README.txt").write_text("not data")
    stream = load_user_stream(folder)
    assert stream.name == "my-tasks"
    assert [t.name for t in stream] == ["task1", "task2", "task3", "task10"]
    assert stream.scenario == "domain"


def test_folder_with_differing_labels_is_class_incremental(tmp_path: Path) -> None:
    write(frame(["cat", "dog"]), tmp_path / "a.csv")
    write(frame(["ant", "bee"]), tmp_path / "b.csv")
    stream = load_user_stream(tmp_path)
    assert stream.scenario == "class"
    assert stream.class_names == ["ant", "bee", "cat", "dog"]
    assert [t.classes for t in stream] == [[2, 3], [0, 1]]


def test_string_labels_map_to_sorted_ids(tmp_path: Path) -> None:
    names = ["dog", "cat", "bird"]
    df = frame(names, task="only")
    stream = load_user_stream(write(df, tmp_path / "pets.csv"), task_column="task")
    assert stream.class_names == ["bird", "cat", "dog"]
    assert stream.num_classes == 3
    x, y = stream[0].train.tensors
    # f0 is each row's position in `names`; its label id must be that name's sorted position
    expected = torch.tensor([stream.class_names.index(names[int(i)]) for i in x[:, 0]])
    assert torch.equal(y, expected)


def test_mixed_number_and_string_labels_compare_as_text(tmp_path: Path) -> None:
    write(frame([1, 2]), tmp_path / "a.csv")
    write(frame(["x", "y"]), tmp_path / "b.csv")
    stream = load_user_stream(tmp_path)
    assert stream.class_names == ["1", "2", "x", "y"]


def test_scenario_inference_and_override(tmp_path: Path) -> None:
    same = write(pd.concat([frame([0, 1], t="a"), frame([0, 1], t="b")]), tmp_path / "same.csv")
    differ = write(pd.concat([frame([0, 1], t="a"), frame([1, 2], t="b")]), tmp_path / "differ.csv")
    assert load_user_stream(same, task_column="t").scenario == "domain"
    assert load_user_stream(differ, task_column="t").scenario == "class"
    assert load_user_stream(same, task_column="t", scenario="class").scenario == "class"
    task_stream = load_user_stream(differ, task_column="t", scenario="task")
    assert task_stream.scenario == "task"
    assert task_stream.class_mask().tolist() == [[True, True, False], [False, True, True]]
    message = error(load_user_stream, differ, task_column="t", scenario="domain")
    assert "same labels in every task" in message and "differ.csv" in message


def test_seeded_split(tmp_path: Path) -> None:
    path = write(frame([0, 1, 2, 3], per_class=20), tmp_path / "d.csv")
    a = load_user_stream(path, classes_per_task=2, seed=0)
    b = load_user_stream(path, classes_per_task=2, seed=0)
    c = load_user_stream(path, classes_per_task=2, seed=1)
    assert all(torch.equal(s, t) for s, t in zip(all_x(a), all_x(b), strict=True))
    assert not torch.equal(a[0].train.tensors[0], c[0].train.tensors[0])
    small = load_user_stream(path, classes_per_task=2, test_size=0.5)
    assert len(small[0].test) == 20


# ---- bad input: one LifelongError line that names the file and the fix ---------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert "does not exist" in error(load_user_stream, tmp_path / "nope.csv", task_column="t")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("whatever")
    message = error(load_user_stream, path, task_column="t")
    assert "unsupported extension" in message and ".csv" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.parquet", b"this is not parquet at all"),
        ("bad.jsonl", b'{"f0": 1, "label": 0}\n{broken'),
        ("bad.csv", b"f0,label\n1,0\n1,0,3,4\n"),
    ],
)
def test_corrupt_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    message = error(load_user_stream, path, task_column="t")
    assert "cannot read" in message and name in message


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    assert "is empty" in error(load_user_stream, path, classes_per_task=2)


def test_header_only_file(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("f0,f1,label\n")
    assert "has no rows" in error(load_user_stream, path, classes_per_task=2)


def test_missing_label_column(tmp_path: Path) -> None:
    path = write(frame([0, 1]).rename(columns={"label": "target"}), tmp_path / "d.csv")
    message = error(load_user_stream, path, classes_per_task=1)
    assert "no label column 'label'" in message
    assert "f0, f1, f2, target" in message and "label_column" in message
    assert len(load_user_stream(path, classes_per_task=1, label_column="target")) == 2


def test_missing_task_column(tmp_path: Path) -> None:
    path = write(frame([0, 1]), tmp_path / "d.csv")
    message = error(load_user_stream, path, task_column="domain")
    assert "no task column 'domain'" in message and "d.csv" in message


def test_non_numeric_features(tmp_path: Path) -> None:
    path = write(frame([0, 1], colour="red", when="2024-01-01"), tmp_path / "d.csv")
    message = error(load_user_stream, path, classes_per_task=1)
    assert "colour, when" in message and "not numeric" in message


def test_missing_feature_values(tmp_path: Path) -> None:
    df = frame([0, 1])
    df.loc[3, "f1"] = np.nan
    message = error(load_user_stream, write(df, tmp_path / "d.csv"), classes_per_task=1)
    assert "f1" in message and "missing values" in message and "f0" not in message


def test_infinite_feature_values(tmp_path: Path) -> None:
    df = frame([0, 1])
    df.loc[3, "f2"] = np.inf
    message = error(load_user_stream, write(df, tmp_path / "d.parquet"), classes_per_task=1)
    assert "f2" in message and "infinite" in message


def test_missing_labels(tmp_path: Path) -> None:
    df = frame([0.0, 1.0])
    df.loc[0, "label"] = np.nan
    message = error(load_user_stream, write(df, tmp_path / "d.csv"), classes_per_task=1)
    assert "label column 'label' is empty in 1 row" in message


def test_missing_task_values(tmp_path: Path) -> None:
    df = frame([0, 1], t="a")
    df.loc[0, "t"] = None
    message = error(load_user_stream, write(df, tmp_path / "d.csv"), task_column="t")
    assert "task column 't' is empty in 1 row" in message


def test_no_feature_columns(tmp_path: Path) -> None:
    path = write(frame([0, 1])[["label"]], tmp_path / "d.csv")
    assert "no feature columns" in error(load_user_stream, path, classes_per_task=1)


def test_single_file_needs_a_way_to_split(tmp_path: Path) -> None:
    path = write(frame([0, 1], t="a"), tmp_path / "d.csv")
    message = error(load_user_stream, path)
    assert "--task-column" in message and "--classes-per-task" in message
    assert "not both" in error(load_user_stream, path, task_column="t", classes_per_task=1)
    assert "both 'label'" in error(load_user_stream, path, task_column="label")


def test_folder_takes_no_split_option(tmp_path: Path) -> None:
    write(frame([0, 1], t="a"), tmp_path / "a.csv")
    assert "is a folder" in error(load_user_stream, tmp_path, task_column="t")
    assert "is a folder" in error(load_user_stream, tmp_path, classes_per_task=1)


def test_task_with_no_samples(tmp_path: Path) -> None:
    write(frame([0, 1]), tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("f0,f1,f2,label\n")
    message = error(load_user_stream, tmp_path)
    assert "b.csv" in message and "no samples" in message


def test_class_too_small_to_split(tmp_path: Path) -> None:
    df = pd.concat([frame(["cat", "dog"]), frame(["eel"], per_class=1)])
    message = error(load_user_stream, write(df, tmp_path / "d.csv"), classes_per_task=3)
    assert "class 'eel'" in message and "too few" in message and "d.csv" in message


def test_test_split_too_small_for_every_class(tmp_path: Path) -> None:
    path = write(frame([0, 1, 2], per_class=2), tmp_path / "d.csv")
    message = error(load_user_stream, path, classes_per_task=3, test_size=0.1)
    assert "too few" in message and "d.csv" in message


def test_folder_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert "no data files" in error(load_user_stream, tmp_path)


def test_folder_with_mismatched_columns(tmp_path: Path) -> None:
    write(frame([0, 1]), tmp_path / "a.csv")
    write(frame([0, 1], f3=1.0), tmp_path / "b.csv")
    message = error(load_user_stream, tmp_path)
    assert "same columns" in message and "b.csv" in message


def test_folder_with_two_files_for_one_task(tmp_path: Path) -> None:
    write(frame([0, 1]), tmp_path / "a.csv")
    write(frame([0, 1]), tmp_path / "a.jsonl")
    assert "two files for task 'a'" in error(load_user_stream, tmp_path)


def test_bad_options(tmp_path: Path) -> None:
    path = write(frame([0, 1]), tmp_path / "d.csv")
    assert "at least 1" in error(load_user_stream, path, classes_per_task=0)
    assert "unknown scenario" in error(load_user_stream, path, classes_per_task=1, scenario="sideways")
    assert "test size" in error(load_user_stream, path, classes_per_task=1, test_size=1.0)
