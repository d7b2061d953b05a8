"""Streams from Hugging Face datasets: save_to_disk folders and ``hf:`` names, all offline."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

datasets = pytest.importorskip("datasets")

from lifelong.data.hf_datasets import load_hf_stream  # noqa: E402
from lifelong.data.text import encode  # noqa: E402
from lifelong.errors import LifelongError  # noqa: E402

# Class ids in an order that is not alphabetical: the stream must keep the ids' order, not sort names.
TOPICS = ["world", "sports", "business", "science"]
WORDS = {
    "world": "nations summit treaty border embassy minister",
    "sports": "match goal league coach stadium season",
    "business": "market shares profit bank merger stocks",
    "science": "cells atoms orbit lab genome physics",
}
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def no_bars_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No progress bars in the captured output, and nothing cached outside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    yield
    if bars:
        datasets.utils.enable_progress_bars()


def sentences(topic: str, n: int, start: int) -> list[str]:
    words = WORDS[topic].split()
    return [f"{words[i % 6]} {words[(i + 1) % 6]} report {i}" for i in range(start, start + n)]


def text_split(per_class: int, start: int) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=TOPICS)}
    )
    rows = [(s, label) for label, topic in enumerate(TOPICS) for s in sentences(topic, per_class, start)]
    return datasets.Dataset.from_dict(
        {"text": [s for s, _ in rows], "label": [y for _, y in rows]}, features=features
    )


@pytest.fixture
def news(tmp_path: Path) -> Path:
    """12 train and 4 test sentences per topic, saved as a DatasetDict."""
    folder = tmp_path / "news"
    datasets.DatasetDict({"train": text_split(12, 0), "test": text_split(4, 100)}).save_to_disk(folder)
    return folder


def numeric(n: int = 40) -> datasets.Dataset:
    """Two features and a label; ``period`` names the task, its first row 'evening'."""
    return datasets.Dataset.from_dict(
        {
            "f0": [float(i % 2) for i in range(n)],
            "f1": [float(i) / n for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "period": ["evening" if i % 4 < 2 else "morning" for i in range(n)],
        }
    )


def one_line_error(cli: Cli, *args: str) -> str:
    code, _, err = cli("run", "-s", "naive", "--epochs", "1", "--report", "none", "--no-progress", *args)
    assert code == 2, err
    assert err.strip() and "\n" not in err.strip() and "Traceback" not in err, err
    return err


def test_text_dataset_dict_runs_end_to_end_through_the_cli(cli: Cli, news: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "-s", "naive", "--epochs", "1", "--report", "none", "--no-progress", "--out", str(out),
        "--data", str(news), "--classes-per-task", "2", "--model", "tiny-bert:hidden=16,layers=1,heads=2",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["tasks"] == ["task0:world,sports", "task1:business,science"]  # ClassLabel names, id order
    (result,) = doc["results"]
    assert len(result["accuracy_matrix"]) == 2 and all(len(row) == 2 for row in result["accuracy_matrix"])


def test_each_task_tests_on_the_test_split_rows_of_its_classes(news: Path) -> None:
    stream = load_hf_stream(str(news), classes_per_task=2, tokenizer="bytes", max_length=32)
    assert stream.name == "news" and stream.class_names == TOPICS and stream.num_classes == 4
    assert stream.input_shape == (32,) and stream.default_model == "tiny-bert" and stream.scenario == "class"
    for task, group in zip(stream, (TOPICS[:2], TOPICS[2:]), strict=True):
        expected = [s for topic in group for s in sentences(topic, 4, 100)]
        x, y = task.test.tensors
        assert x.dtype == torch.long and len(task.train) == 24
        assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, encode(expected, 32, "bytes").tolist()))
        assert sorted(set(y.tolist())) == task.classes == [TOPICS.index(t) for t in group]


def test_a_single_numeric_dataset_splits_by_task_column_at_random(tmp_path: Path) -> None:
    numeric().save_to_disk(tmp_path / "sensors")
    stream = load_hf_stream(str(tmp_path / "sensors"), task_column="period", test_size=0.25, seed=1)
    assert [task.name for task in stream] == ["evening", "morning"]  # order of first appearance
    assert stream.input_shape == (2,) and stream.default_model == "mlp" and stream.scenario == "domain"
    for task in stream:
        (x_train, y_train), (x_test, y_test) = task.train.tensors, task.test.tensors
        assert x_train.dtype == torch.float32 and x_train.shape == (15, 2) and x_test.shape == (5, 2)
        assert set(y_test.tolist()) == {0, 1}  # stratified: both classes in the test rows
        assert torch.equal(x_train[:, 0].long(), y_train) and torch.equal(x_test[:, 0].long(), y_test)


def test_hf_prefix_loads_a_local_folder_of_jsonl_files(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    for part in ("part1", "part2"):
        rows = [
            {"review": f"{word} {part} {i}", "stars": word, "shop": shop}
            for shop in ("north", "south")
            for word in ("good", "bad")
            for i in range(5)
        ]
        (folder / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stream = load_hf_stream(
        f"hf:{folder}", text_column="review", label_column="stars", task_column="shop", tokenizer="bytes"
    )
    assert stream.name == "reviews" and stream.class_names == ["bad", "good"]
    assert [task.name for task in stream] == ["north", "south"]
    assert [len(task.train) + len(task.test) for task in stream] == [20, 20]
    assert stream.input_shape == (128,) and stream[0].train.tensors[0].dtype == torch.long


def test_an_unlabelled_test_split_gives_way_to_validation(tmp_path: Path) -> None:
    unlabelled = text_split(2, 200).map(lambda row: {"label": -1})
    folder = tmp_path / "glue-like"
    datasets.DatasetDict(
        {"train": text_split(6, 0), "validation": text_split(3, 100), "test": unlabelled}
    ).save_to_disk(folder)
    stream = load_hf_stream(str(folder), classes_per_task=4, tokenizer="bytes")
    assert len(stream[0].test) == 12 and set(stream[0].test.tensors[1].tolist()) == {0, 1, 2, 3}


def test_missing_text_column_names_the_columns(cli: Cli, news: Path) -> None:
    err = one_line_error(cli, "--data", str(news), "--classes-per-task", "2", "--text-column", "body")
    assert "no text column 'body'" in err and "text, label" in err


def test_text_column_of_numbers_is_refused(tmp_path: Path) -> None:
    numeric().save_to_disk(tmp_path / "sensors")
    with pytest.raises(LifelongError, match=r"text column 'f1' holds .*not strings"):
        load_hf_stream(str(tmp_path / "sensors"), text_column="f1", task_column="period")


def test_an_empty_dataset_is_refused(tmp_path: Path) -> None:
    # `Dataset.from_dict` with no rows saves a folder that `load_from_disk` cannot read: filter instead.
    numeric().filter(lambda row: False).save_to_disk(tmp_path / "empty")
    with pytest.raises(LifelongError, match="has no rows"):
        load_hf_stream(str(tmp_path / "empty"), task_column="period")


def test_unknown_hub_name_fails_at_once_offline(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    # `datasets` reads these at import, which an earlier test did: the loader must read them anew.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_error(cli, "--data", "hf:no-such-org/no-such-dataset:cfg", "--classes-per-task", "2")
    assert "not in the local cache and the hub cannot be reached" in err and "save_to_disk" in err


def test_a_damaged_saved_folder_is_one_error_line(cli: Cli, news: Path) -> None:
    (news / "dataset_dict.json").write_text("{garbage")
    err = one_line_error(cli, "--data", str(news), "--classes-per-task", "2")
    assert "cannot load" in err and "save_to_disk" in err


def test_a_dataset_dict_with_odd_splits_lists_them(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    datasets.DatasetDict({"alpha": text_split(3, 0), "beta": text_split(3, 50)}).save_to_disk(folder)
    err = one_line_error(cli, "--data", str(folder), "--classes-per-task", "2")
    assert "alpha, beta" in err and "'train'" in err


def test_an_image_dataset_becomes_an_image_stream(cli: Cli, tmp_path: Path) -> None:
    from PIL import Image

    levels = [0, 40, 80, 120, 160, 200, 240, 255]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "mid", "light", "white"])}
    )

    def split(rows: int) -> Any:
        labels = [i % 4 for i in range(rows)]
        pictures = [Image.new("L", (5, 5), levels[2 * label + i % 2]) for i, label in enumerate(labels)]
        return datasets.Dataset.from_dict({"image": pictures, "label": labels}, features=features)

    datasets.DatasetDict({"train": split(24), "test": split(8)}).save_to_disk(str(tmp_path / "pictures"))
    stream = load_hf_stream(str(tmp_path / "pictures"), classes_per_task=2)
    x = stream[0].train.tensors[0]
    assert x.dtype == torch.uint8 and stream.input_shape == (1, 5, 5) and stream.augmentable
    assert [task.name for task in stream] == ["task0:dark,mid", "task1:light,white"]
    assert len(stream[0].test) == 4 and stream.normalize is not None
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "--data", str(tmp_path / "pictures"), "--classes-per-task", "2", "--image-size", "8",
        "-s", "naive", "--epochs", "1", "--report", "none", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["results"][0]["accuracy_matrix"][1][1] >= 0
    numbers = datasets.Dataset.from_dict({"a": [0.0, 1.0] * 6, "label": [0, 1] * 6})
    numbers.save_to_disk(str(tmp_path / "numbers"))
    with pytest.raises(LifelongError, match="--image-size resizes images"):
        load_hf_stream(str(tmp_path / "numbers"), classes_per_task=1, image_size=8)
