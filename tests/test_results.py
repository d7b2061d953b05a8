"""The results document: built once, validated on write and on read, documented in docs/results.md."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lifelong.errors import LifelongError
from lifelong.runs.results import (
    DOCUMENT_FIELDS,
    read_results,
    results_document,
    schema_rows,
    validate_results,
    write_results,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def document(**changes: Any) -> dict[str, Any]:
    """A small valid document with every kind of field a writer produces."""
    metrics = {
        "average_accuracy": 0.5,
        "average_incremental_accuracy": 0.6,
        "forgetting": 0.2,
        "bwt": -0.2,
        "fwt": None,
        "forgetting_rate": {"a": 0.25, "b": None},
    }
    result = {
        "strategy": "replay",
        "accuracy_matrix": [[0.9, None], [0.7, 0.8]],
        "metrics": metrics,
        "initial_scores": None,
        "train_seconds": 1.5,
        "eval_seconds": 0.25,
        "loss_matrix": [[1.0, 2.0], [1.5, 1.0]],
        "initial_loss": [2.0, 2.5],
        "loss_metrics": metrics,
        "adapters": {"root": "out/adapters/replay", "tasks": ["a", "b"]},
        "merged": {
            "adapter": "merged",
            "path": "out/adapters/replay/merged",
            "scores": [0.5, None],
            "loss": [1, 2],
        },
    }
    built = results_document(
        benchmark="finetune:a,b",
        scenario="task",
        tasks=["a", "b"],
        higher_is_better=True,
        score_name="exact",
        config={"seed": 0},
        wall_seconds=3.0,  # a stored field of the schema: nothing here is timed
        results=[result, {"strategy": "naive", "accuracy_matrix": [[1, 0], [0, 1]]}],
    )
    built.update(changes)
    return built


def test_a_built_document_round_trips(tmp_path: Path) -> None:
    built = document()
    assert list(built) == [
        "benchmark", "scenario", "tasks", "higher_is_better", "score_name", "config", "versions",
        "wall_seconds", "results",
    ]  # fmt: skip
    assert built["config"] == {"seed": 0} and built["versions"]["python"]
    assert write_results(tmp_path, built) == tmp_path / "results.json"
    assert read_results(tmp_path) == built


def test_unset_fields_are_left_out_in_schema_order() -> None:
    built = results_document(
        benchmark="b", scenario="class", tasks=["t"], config={}, results=[], wall_seconds=1, processes=2
    )
    assert list(built) == [
        "benchmark",
        "scenario",
        "tasks",
        "config",
        "processes",
        "versions",
        "wall_seconds",
        "results",
    ]
    order = [f.name for f in DOCUMENT_FIELDS]
    assert sorted(built, key=order.index) == list(built)


def test_fields_the_schema_does_not_name_are_kept(tmp_path: Path) -> None:
    extra = document(notes="by hand")
    extra["results"][0]["seeds"] = [0, 1]
    write_results(tmp_path, extra)
    assert read_results(tmp_path) == extra


def _parent(doc: dict[str, Any], path: str) -> tuple[Any, str]:
    """The container of the field at a dotted path ('results.0.metrics') and the field's key."""
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if part.isdigit() else doc[part]
    return doc, last


def drop(path: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        parent, key = _parent(doc, path)
        del parent[key]

    return change


def put(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        parent, key = _parent(doc, path)
        parent[key] = value

    return change


# (change, the field the message must name, what it must say)
BAD = [
    (drop("tasks"), "tasks", "is missing"),
    (put("tasks", []), "tasks", "must be a non-empty list of strings"),
    (drop("results.1.accuracy_matrix"), "results[1].accuracy_matrix", "is missing"),
    (
        put("results.0.accuracy_matrix", [[1.0, 2.0]]),
        "results[0].accuracy_matrix",
        "is 1x2, but there are 2 tasks",
    ),
    (
        put("results.0.accuracy_matrix", [[1.0, "x"], [1.0, 1.0]]),
        "results[0].accuracy_matrix",
        "got [[1.0, 'x']",
    ),
    (
        put("results.0.accuracy_matrix", [[1.0, float("nan")], [1.0, 1.0]]),
        "results[0].accuracy_matrix",
        "numbers",
    ),
    (put("results.0.strategy", 3), "results[0].strategy", "must be a string, got 3"),
    (put("results", [{"strategy": "a"}, 7]), "results", "must be a non-empty list of objects"),
    (put("wall_seconds", "fast"), "wall_seconds", "must be a number, got 'fast'"),
    (put("config", []), "config", "must be an object"),
    (put("versions", {"torch": 2}), "versions", "must be an object of strings"),
    (put("processes", 0), "processes", "must be an integer of at least 1"),
    (put("higher_is_better", "yes"), "higher_is_better", "must be true or false"),
    (put("results.0.initial_loss", [1.0]), "results[0].initial_loss", "has 1 entry, but there are 2 tasks"),
    (
        put("results.0.metrics.forgetting_rate", {"a": "x"}),
        "results[0].metrics.forgetting_rate",
        "numbers or null",
    ),
    (drop("results.0.adapters.root"), "results[0].adapters.root", "is missing"),
    (put("results.0.merged.scores", "high"), "results[0].merged.scores", "a list of T numbers"),
]


@pytest.mark.parametrize(("change", "field", "says"), BAD)
def test_a_bad_file_is_refused_on_read_in_one_line(
    tmp_path: Path, change: Any, field: str, says: str
) -> None:
    bad = document()
    change(bad)
    (tmp_path / "results.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(LifelongError) as err:
        read_results(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'results.json'}: {field} (")
    assert says in message and message.endswith("; rerun the command that wrote it with --overwrite")


@pytest.mark.parametrize(("change", "field", "says"), BAD)
def test_write_refuses_an_invalid_document(tmp_path: Path, change: Any, field: str, says: str) -> None:
    bad = document()
    change(bad)
    with pytest.raises(LifelongError) as err:
        write_results(tmp_path, bad)
    message = str(err.value)
    assert "\n" not in message and f": {field} (" in message and says in message
    assert "nothing was written" in message
    assert not list(tmp_path.iterdir())


def test_not_a_document_at_all(tmp_path: Path) -> None:
    for value in ([1, 2], "results", None):
        with pytest.raises(LifelongError, match="is not a results document"):
            validate_results(value, "x.json")
    with pytest.raises(LifelongError, match="is not a results document"):
        write_results(tmp_path, [])  # type: ignore[arg-type]


def test_validation_leaves_the_document_alone() -> None:
    built = document()
    before = copy.deepcopy(built)
    assert validate_results(built, "x") is built and built == before


def test_the_docs_list_every_field_of_the_schema() -> None:
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \| (yes|no) \| (.+?) \|$", DOCS.read_text("utf-8"), re.M)
    documented = [(path, kind, required == "yes", meaning) for path, kind, required, meaning in rows]
    assert documented == list(schema_rows())
