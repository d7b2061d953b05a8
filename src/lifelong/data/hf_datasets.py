"""A stream from a Hugging Face dataset: ``hf:NAME[:CONFIG]`` or a folder written by ``save_to_disk``.

Rows become samples as in `lifelong.data.files` (tasks by a task column or by ``classes_per_task``);
a ``ClassLabel`` keeps its names. A text column is tokenized for the text models; without one every
other column is a numeric feature. A ``train`` split with a ``test`` (else ``validation``) split gives
each task's train and test rows; a single split is divided at random, stratified by class.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from lifelong.core.stream import Scenario, Stream, Task, check_split_options, infer_scenario, split_train_test
from lifelong.data import files
from lifelong.data.image_folders import channel_stats, decode_image, stack_images
from lifelong.data.text import encode, resolve_tokenizer
from lifelong.errors import LifelongError

HF_PREFIX = "hf:"
TEXT_COLUMNS = ("text", "sentence", "content")
TEST_SPLITS = ("test", "validation")
# What a damaged or foreign folder makes `datasets` raise: it reads its JSON and Arrow files unchecked.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_dict.json", "state.json", "dataset_info.json")
    )


def load_hf_stream(
    source: str,
    *,
    text_column: str | None = None,
    label_column: str = "label",
    task_column: str | None = None,
    classes_per_task: int | None = None,
    scenario: Scenario | None = None,
    test_size: float = 0.3,
    seed: int = 0,
    max_length: int = 128,
    tokenizer: str = "auto",
    image_size: int | None = None,
) -> Stream:
    """Load ``hf:NAME``, ``hf:NAME:CONFIG`` (`datasets.load_dataset`) or a ``save_to_disk`` folder.

    A dataset in the local cache is used as it is; the hub is asked only for one that is not there.
    """
    check_split_options(scenario, classes_per_task, task_column, label_column)
    if (task_column is None) == (classes_per_task is None):
        raise LifelongError(f"give one of --task-column or --classes-per-task to split '{source}' into tasks")
    splits, name = _load(source)
    train, test = _pick_splits(splits, source, label_column)
    table, is_test = _table(train, test, source, label_column)
    features = train.features
    if task_column is not None and _names(features.get(task_column)):
        table[task_column] = features[task_column].int2str(table[task_column].tolist())
    text = _text_column(features, text_column, label_column, task_column, source)
    images = [column for column, feature in features.items() if type(feature).__name__ == "Image"]
    if image_size is not None and (text is not None or not images):
        raise LifelongError(
            f"--image-size resizes images, and '{source}' is read as text or numbers; drop it"
        )
    classes, (labels,) = files._class_values([table[label_column]])
    label_names = _names(features[label_column])
    class_names = [label_names[c] if label_names else str(c) for c in classes]
    if task_column is not None:
        parts = files._split_by_task_column(Path(source), table, task_column)
    else:  # tasks named by class names (a ClassLabel's, not its ids), in groups as files.py makes them
        k = classes_per_task or 1
        groups = files._split_by_classes(table, label_column, k)
        parts = [
            (f"task{i}:" + ",".join(class_names[i * k : (i + 1) * k]), source, rows)
            for i, (_, rows) in enumerate(groups)
        ]
    shape: tuple[int, ...]
    if text is not None:
        x = _encode(table[text], text, max_length, tokenizer, source)
        shape, model = (max_length,), "minilm" if resolve_tokenizer(tokenizer) == "minilm" else "tiny-bert"
    elif images:  # pixels as the image folders keep them: uint8, normalised by the model
        x = _decode_images(table[images[0]], images[0], image_size, source)
        shape, model = tuple(x.shape[1:]), "cnn"
    else:
        columns = files._feature_columns(parts, label_column, task_column)
        x = torch.tensor(files._features(table, columns, source))
        shape, model = (len(columns),), "mlp"
    y = torch.tensor(labels.map({value: i for i, value in enumerate(classes)}).to_numpy(), dtype=torch.long)
    split = {"test_size": test_size, "seed": seed}
    tasks = [
        _task(task, np.array(rows.index), x, y, is_test, class_names, source, **split)
        for task, _, rows in parts
    ]
    scenario = infer_scenario(tasks, scenario, source)
    if text is None and images:
        stats = channel_stats(tasks[0].train.tensors[0])  # type: ignore[attr-defined]
        return Stream(
            name, tasks, scenario, len(classes), shape, class_names, model, normalize=stats, augmentable=True
        )
    return Stream(name, tasks, scenario, len(classes), shape, class_names, model)


def _load(source: str) -> tuple[dict[str, Any], str]:
    """The dataset's splits by name (a lone `Dataset` is one split) and the stream's name."""
    import datasets

    if source.startswith(HF_PREFIX):
        name, config = _hub_name(source)
        loaded = _load_hub(datasets, name, config, source)
        title = Path(name).resolve().name if Path(name).exists() else name
        title += f":{config}" if config else ""
    else:
        try:
            with _quiet(datasets, offline=True):
                loaded = datasets.load_from_disk(source)
        except _UNREADABLE as err:
            raise LifelongError(
                f"cannot load '{source}' as a folder written by save_to_disk ({_detail(err)}); "
                "write it again with save_to_disk"
            ) from None
        title = Path(source).resolve().name or "data"
    return ({"data": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)), title


def _hub_name(source: str) -> tuple[str, str | None]:
    rest = source[len(HF_PREFIX) :]
    name, config = rest, None
    if ":" in rest and not Path(rest).exists():  # a local folder's path may hold a ':'
        name, _, config = rest.rpartition(":")
    if not name.strip() or config == "":
        raise LifelongError(f"'{source}' names no dataset; write hf:NAME or hf:NAME:CONFIG, e.g. hf:ag_news")
    return name, config


def _load_hub(datasets: Any, name: str, config: str | None, source: str) -> Any:
    """The cache first, so a dataset used before loads offline at once; then the hub, unless offline."""
    offline = datasets.config.HF_HUB_OFFLINE or any(  # `datasets` reads these at import: maybe set since
        os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    for hub_allowed in (False, True):
        try:
            with _quiet(datasets, offline=not hub_allowed):
                return datasets.load_dataset(name, config)
        except (datasets.exceptions.DatasetsError, RuntimeError, *_UNREADABLE) as err:
            if hub_allowed or offline or Path(name).exists():
                _raise_load_error(err, source)
    raise AssertionError("unreachable: the hub attempt returns or raises")


def _raise_load_error(err: Exception, source: str) -> NoReturn:
    if isinstance(err, RuntimeError) and "scripts are no longer supported" not in str(err):
        raise err  # not the user's input: a fault to see in full
    if isinstance(err, ConnectionError):
        raise LifelongError(
            f"'{source}' is not in the local cache and the hub cannot be reached; save it with "
            "save_to_disk on a machine online and pass the folder"
        ) from None
    raise LifelongError(
        f"cannot load '{source}' ({_detail(err)}); check its name, config and files"
    ) from None


@contextmanager
def _quiet(datasets: Any, offline: bool) -> Iterator[None]:
    """No cache notices, retry warnings or progress bars among the command's lines; with ``offline``
    no network either (set here: `datasets` and the hub read their variables only at import)."""
    import huggingface_hub.constants as hub

    loggers = {logger: logger.level for logger in map(logging.getLogger, ("datasets", "huggingface_hub"))}
    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE, datasets.utils.are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    datasets.utils.disable_progress_bars()
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for logger, level in loggers.items():
            logger.setLevel(level)
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved[:2]
        if not saved[2]:
            datasets.utils.enable_progress_bars()


def _pick_splits(splits: dict[str, Any], source: str, label_column: str) -> tuple[Any, Any | None]:
    if len(splits) == 1:
        return next(iter(splits.values())), None
    for name in TEST_SPLITS:
        test = splits.get(name)
        # A test split without labels (all -1, as in GLUE) cannot score; the validation split can.
        unlabelled = test is not None and _names(test.features.get(label_column)) and len(test)
        if "train" in splits and test is not None and not (unlabelled and max(test[label_column]) < 0):
            return splits["train"], test
    raise LifelongError(
        f"'{source}' has the splits {', '.join(splits) or 'none'}; give it a 'train' split and a labelled "
        "'test' or 'validation' split, or a single split to divide at random"
    )


def _table(train: Any, test: Any | None, source: str, label: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """All rows in one table (train rows first) and which of them are test-split rows, if any."""
    frames = [split.to_pandas() for split in (train, test) if split is not None]
    table = pd.concat(frames, ignore_index=True)
    if len(table) == 0:
        raise LifelongError(f"'{source}' has no rows; give it rows of data")
    if label not in table.columns:
        raise LifelongError(
            f"'{source}' has no label column '{label}'; its columns are: {', '.join(table.columns)}; "
            "name the label column with --label-column"
        )
    unlabelled = table[label].isna() | (table[label].lt(0) if _names(train.features[label]) else False)
    if unlabelled.any():
        raise LifelongError(
            f"'{source}': label column '{label}' has no label in {int(unlabelled.sum())} row(s) "
            "(empty or -1); drop those rows"
        )
    files._check_plain_values(table[label], f"'{source}': label column '{label}'")
    return table, (np.arange(len(table)) >= len(frames[0])) if test is not None else None


def _text_column(
    features: Any, text_column: str | None, label_column: str, task_column: str | None, source: str
) -> str | None:
    def is_text(column: str) -> bool:
        feature = features.get(column)
        return getattr(feature, "dtype", None) in ("string", "large_string") and not _names(feature)

    if text_column is None:
        found = [c for c in TEXT_COLUMNS if c in features and c not in (label_column, task_column)]
        return next((c for c in found if is_text(c)), None)
    if text_column not in features:
        raise LifelongError(
            f"'{source}' has no text column '{text_column}'; its columns are: {', '.join(features)}; "
            "name the text column with --text-column"
        )
    if not is_text(text_column):
        raise LifelongError(
            f"'{source}': text column '{text_column}' holds {features[text_column]}, not strings; "
            "name a column of strings with --text-column"
        )
    return text_column


def _decode_images(column: pd.Series, name: str, size: int | None, source: str) -> torch.Tensor:
    """An ``Image`` column (each cell the file's bytes or its path, as `to_pandas` gives them) as uint8
    ``[N, C, H, W]``, decoded once."""
    pixels = []
    for row, cell in enumerate(column):
        where = f"row {row} of column '{name}' of '{source}'"
        data = cell.get("bytes") or cell.get("path") if isinstance(cell, dict) else None
        if not data:
            raise LifelongError(f"{where} holds no image; fill it or drop the row")
        pixels.append(decode_image(io.BytesIO(data) if isinstance(data, bytes) else Path(data), size, where))
    return torch.from_numpy(stack_images(pixels))


def _encode(texts: pd.Series, column: str, max_length: int, tokenizer: str, source: str) -> torch.Tensor:
    if texts.isna().any():
        raise LifelongError(
            f"'{source}': text column '{column}' is empty in {int(texts.isna().sum())} row(s); "
            "fill in or drop those rows"
        )
    return encode(texts.tolist(), max_length, tokenizer)


def _names(feature: Any) -> list[str]:
    """A ``ClassLabel``'s names, in class-id order; none for any other feature."""
    return list(feature.names) if type(feature).__name__ == "ClassLabel" else []


def _task(
    name: str,
    rows: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    is_test: np.ndarray | None,
    names: list[str],
    source: str,
    **split: Any,
) -> Task:
    """The task of the table's ``rows``: tested on its test-split rows, else on a stratified random part."""
    if is_test is not None:
        train_rows, test_rows = rows[~is_test[rows]], rows[is_test[rows]]
        for which, chosen in (("train", train_rows), ("test", test_rows)):
            if len(chosen) == 0:
                raise LifelongError(
                    f"'{source}': task '{name}' has no rows in the {which} split; give it rows there"
                )
    else:
        files._check_class_counts(y[rows].numpy(), names, name, source, split["test_size"])
        # Split row numbers, not the inputs: `split_train_test` makes floats, and token ids stay int64.
        parts = split_train_test(rows[:, None].astype(np.float64), y[rows].numpy(), task_name=name, **split)
        train_rows, test_rows = (part.tensors[0][:, 0].long().numpy() for part in parts)
    return Task(
        name,
        TensorDataset(x[train_rows], y[train_rows]),
        TensorDataset(x[test_rows], y[test_rows]),
        sorted(set(y[rows].tolist())),
    )


def _detail(err: Exception) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__
