"""A stream from the user's own tabular data: CSV, JSONL or Parquet files.

Each row is one sample: numeric feature columns plus a label column. A single file is split into
tasks by a task column (tasks in order of first appearance) or by groups of ``classes_per_task``
sorted classes; a folder holds one file per task, taken in file-name order (digits compared as
numbers, so ``task2`` comes before ``task10``), each task named after its file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifelong.core.stream import Scenario, Stream, Task, check_split_options, infer_scenario, split_train_test
from lifelong.data.folders import data_files, not_a_file
from lifelong.errors import LifelongError

READERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_SUPPORTED = ", ".join(READERS)


def load_user_stream(
    path: str | os.PathLike[str],
    *,
    label_column: str = "label",
    task_column: str | None = None,
    classes_per_task: int | None = None,
    scenario: Scenario | None = None,
    test_size: float = 0.3,
    seed: int = 0,
) -> Stream:
    """Load a CSV / JSONL / Parquet file (or a folder of them, one per task) as a stream of tasks.

    Labels may be strings or integers; the sorted distinct labels of the whole stream become classes
    ``0..C-1`` and their original values are kept in ``Stream.class_names``. Every other column except
    the label and task columns is a feature and must be numeric. With ``scenario=None`` the stream is
    domain-incremental when every task has the same labels and class-incremental otherwise.
    """
    root = Path(path)
    if not root.exists():
        raise LifelongError(f"data path '{root}' does not exist; check the path")
    check_split_options(scenario, classes_per_task, task_column, label_column)

    parts, name = _task_tables(root, label_column, task_column, classes_per_task)
    feature_columns = _feature_columns(parts, label_column, task_column)
    labels = [rows[label_column] for _, _, rows in parts]
    classes, labels = _class_values(labels)
    tasks = _tasks(parts, labels, classes, feature_columns, test_size, seed)
    scenario = infer_scenario(tasks, scenario, root)
    return Stream(
        name,
        tasks,
        scenario,
        len(classes),
        (len(feature_columns),),
        class_names=[str(c) for c in classes],
    )


def _task_tables(
    root: Path, label_column: str, task_column: str | None, classes_per_task: int | None
) -> tuple[list[tuple[str, str, pd.DataFrame]], str]:
    """(task name, where it came from, its rows) per task, and the stream's name."""
    parts: list[tuple[str, str, pd.DataFrame]]
    if root.is_dir():
        if task_column is not None or classes_per_task is not None:
            raise LifelongError(
                f"'{root}' is a folder, so each file is one task; drop task_column / classes_per_task "
                "or point at a single file"
            )
        parts = [(f.stem, str(f), _read_table(f, label_column)) for f in _task_files(root)]
        name = root.resolve().name or "data"
    else:
        if task_column is not None and classes_per_task is not None:
            raise LifelongError(f"give either --task-column or --classes-per-task for '{root}', not both")
        if task_column is None and classes_per_task is None:
            raise LifelongError(
                f"'{root}' is a single file: give --task-column or --classes-per-task to split it into "
                "tasks, or pass a folder with one file per task"
            )
        table = _read_table(root, label_column)
        if task_column is not None:
            parts = _split_by_task_column(root, table, task_column)
        else:
            groups = _split_by_classes(table, label_column, classes_per_task or 1)
            parts = [(task_name, str(root), rows) for task_name, rows in groups]
        name = root.stem
    return parts, name


def _tasks(
    parts: list[tuple[str, str, pd.DataFrame]],
    labels: list[pd.Series],
    classes: list[Any],
    feature_columns: list[str],
    test_size: float,
    seed: int,
) -> list[Task]:
    """Each task's rows as tensors, its labels as class indices, split into train and test."""
    index = {value: i for i, value in enumerate(classes)}
    tasks: list[Task] = []
    for (task_name, where, rows), raw in zip(parts, labels, strict=True):
        x = _features(rows, feature_columns, where)
        y = raw.map(index).to_numpy(dtype=np.int64)
        _check_class_counts(y, classes, task_name, where, test_size)
        try:
            train, test = split_train_test(x, y, test_size, seed, task_name)
        except LifelongError as err:
            raise LifelongError(f"'{where}': {err}") from None
        tasks.append(Task(task_name, train, test, sorted(int(c) for c in np.unique(y))))
    return tasks


def _task_files(folder: Path) -> list[Path]:
    files = data_files(folder, READERS)
    if not files:
        raise LifelongError(
            f"folder '{folder}' has no data files ({_SUPPORTED}); put one file per task in it"
        )
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise LifelongError(
                f"folder '{folder}' has two files for task '{f.stem}' ({seen[f.stem].name}, {f.name}); "
                "keep one"
            )
        seen[f.stem] = f
    return files


def _read_table(path: Path, label_column: str) -> pd.DataFrame:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise LifelongError(
            f"'{path}' has an unsupported extension '{path.suffix}'; use one of: {_SUPPORTED}"
        )
    if not path.is_file():  # a pipe would read as empty, or block
        raise LifelongError(f"'{path}' is {not_a_file(path)}; give a data file or a folder of them")
    if path.stat().st_size == 0:
        raise LifelongError(f"'{path}' is empty; give it a header and rows of data")
    try:
        if kind == "csv":
            table = pd.read_csv(path)
        elif kind == "parquet":
            table = pd.read_parquet(path)
        elif kind == "json" and _starts_with(path, "["):
            table = pd.read_json(path, orient="records")
        else:
            table = pd.read_json(path, lines=True)
    except Exception as err:
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise LifelongError(
            f"cannot read '{path}' as {kind.upper()} ({detail}); check that the file is valid {kind.upper()}"
        ) from None
    if not isinstance(table, pd.DataFrame):
        raise LifelongError(f"'{path}' does not hold a table of rows; write one JSON object per line")
    if len(table) == 0:
        raise LifelongError(f"'{path}' has no rows, so its task has no samples; add rows or remove the file")
    table.columns = [str(c) for c in table.columns]
    if label_column not in table.columns:
        present = ", ".join(table.columns)
        raise LifelongError(
            f"'{path}' has no label column '{label_column}'; its columns are: {present}; "
            "name the label column with label_column=..."
        )
    missing = int(table[label_column].isna().sum())
    if missing:
        raise LifelongError(
            f"'{path}': label column '{label_column}' is empty in {missing} row(s); "
            "fill in or drop those rows"
        )
    _check_plain_values(table[label_column], f"'{path}': label column '{label_column}'")
    return table


def _check_plain_values(column: pd.Series, what: str) -> None:
    """Labels and task names are plain values: a list or mapping in a cell (JSON ``[1]``, a Parquet
    struct) names no class."""
    nested = column.map(lambda value: isinstance(value, list | tuple | dict | np.ndarray))
    if nested.any():
        row = int(np.flatnonzero(nested.to_numpy())[0])
        raise LifelongError(
            f"{what} holds a list or mapping in row {row + 1}; give each row one number or name there"
        )


def _starts_with(path: Path, char: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(1024).lstrip()
    return head[:1] == char.encode()


def _split_by_task_column(
    path: Path, table: pd.DataFrame, task_column: str
) -> list[tuple[str, str, pd.DataFrame]]:
    if task_column not in table.columns:
        present = ", ".join(table.columns)
        raise LifelongError(
            f"'{path}' has no task column '{task_column}'; its columns are: {present}; "
            "name the task column with task_column=..."
        )
    tasks = table[task_column]
    missing = int(tasks.isna().sum())
    if missing:
        raise LifelongError(
            f"'{path}': task column '{task_column}' is empty in {missing} row(s); fill in or drop those rows"
        )
    _check_plain_values(tasks, f"'{path}': task column '{task_column}'")
    return [(str(value), str(path), table[tasks == value]) for value in pd.unique(tasks)]


def _split_by_classes(
    table: pd.DataFrame, label_column: str, classes_per_task: int
) -> list[tuple[str, pd.DataFrame]]:
    classes, _ = _class_values([table[label_column]])
    labels = table[label_column] if not isinstance(classes[0], str) else table[label_column].astype(str)
    out: list[tuple[str, pd.DataFrame]] = []
    for start in range(0, len(classes), classes_per_task):
        group = classes[start : start + classes_per_task]
        name = f"task{len(out)}:" + ",".join(str(c) for c in group)
        out.append((name, table[labels.isin(group)]))
    return out


def _class_values(labels: Sequence[pd.Series]) -> tuple[list[Any], list[pd.Series]]:
    """Sorted distinct labels over all tasks; mixed kinds (numbers and strings) are compared as strings."""
    values = pd.unique(pd.concat(labels, ignore_index=True))
    try:
        return sorted(values.tolist()), list(labels)
    except TypeError:
        as_text = [s.astype(str) for s in labels]
        return sorted(pd.unique(pd.concat(as_text, ignore_index=True)).tolist()), as_text


def _feature_columns(
    parts: list[tuple[str, str, pd.DataFrame]], label_column: str, task_column: str | None
) -> list[str]:
    reserved = {label_column, task_column}
    first_where, first = parts[0][1], parts[0][2]
    columns = [c for c in first.columns if c not in reserved]
    if not columns:
        raise LifelongError(
            f"'{first_where}' has no feature columns besides '{label_column}'; add numeric feature columns"
        )
    for _, where, rows in parts[1:]:
        other = [c for c in rows.columns if c not in reserved]
        if set(other) != set(columns):
            raise LifelongError(
                f"'{where}' has feature columns {', '.join(other)} but '{first_where}' has "
                f"{', '.join(columns)}; every task file needs the same columns"
            )
    return columns


def _features(rows: pd.DataFrame, columns: list[str], where: str) -> np.ndarray:
    data = rows[columns]
    bad = [c for c in columns if not pd.api.types.is_numeric_dtype(data[c])]
    if bad:
        raise LifelongError(
            f"'{where}': feature column(s) {', '.join(bad)} are not numeric; "
            "convert them to numbers or drop them"
        )
    missing = [c for c in columns if data[c].isna().any()]
    if missing:
        raise LifelongError(
            f"'{where}': feature column(s) {', '.join(missing)} have missing values (NaN); "
            "fill in or drop those rows"
        )
    x = data.to_numpy(dtype=np.float32)
    infinite = [c for c, ok in zip(columns, np.isfinite(x).all(axis=0), strict=True) if not ok]
    if infinite:
        raise LifelongError(
            f"'{where}': feature column(s) {', '.join(infinite)} have infinite values (or values too large "
            "for float32); fix or drop those rows"
        )
    return x


def _check_class_counts(y: np.ndarray, classes: list[Any], task: str, where: str, test_size: float) -> None:
    """Name the user's own label (not its class id) when a class is too small to split."""
    ids, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        rare = classes[int(ids[counts.argmin()])]
        raise LifelongError(
            f"'{where}': task '{task}' has only {counts.min()} sample(s) of class '{rare}', too few for a "
            f"stratified train/test split at test size {test_size}; add samples of that class or drop it"
        )
