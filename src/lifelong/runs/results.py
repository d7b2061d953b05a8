"""The results document: what every run stores in ``results.json`` and every report reads back.

`lifelong run`, `lifelong pretrain` (and `continual_pretrain`) and `lifelong finetune` build it with
`results_document` and store it with `write_results`; `lifelong report` loads it with `read_results`.
Both ends check it against one schema (`DOCUMENT_FIELDS`): a document no report could show is
refused before it is written, and a damaged or hand-edited file is refused on read with one line
naming the file, the field and the fix. ``docs/results.md`` lists the same fields (a test keeps the
two equal). Fields the schema does not name are allowed and ignored, so other tools may add their own.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lifelong.core.checkpoint import atomic_write_json
from lifelong.errors import LifelongError

RESULTS_FILE = "results.json"
READ_FIX = "rerun the command that wrote it with --overwrite"
WRITE_FIX = "nothing was written; give that field a valid value"

# ---- the schema ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a value must be. ``problem(value, T)`` says what is wrong with a value, or None;
    ``words`` is how messages and docs/results.md name the kind."""

    words: str
    problem: Callable[[Any, int], str | None]
    # A list of objects whose fields the schema lists: each element is checked against them.
    listed: bool = False


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    meaning: str
    required: bool = False
    fields: tuple[Field, ...] = ()  # of an object, or of each object of a list


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# No score comes near this; past it a plot's axis span (max - min) overflows to infinity.
NUMBER_MAX = 1e300


def _is_number(value: Any) -> bool:
    # JSON has no NaN or infinity: json.dumps refuses them on write, so a file holding them was not ours.
    # An integer of 400 digits is valid JSON too, and no float.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(value) <= NUMBER_MAX
    except OverflowError:
        return False


def _is_text(value: Any) -> bool:
    """A string that is text: ``"\\ud800"`` is valid JSON but no character, and no font can draw it."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _score(value: Any) -> bool:
    return value is None or _is_number(value)


def _simple(words: str, test: Callable[[Any], bool], listed: bool = False) -> Kind:
    return Kind(
        words, lambda value, _t: None if test(value) else f"must be {words}, got {_short(value)}", listed
    )


def _row_problem(value: Any, t: int) -> str | None:
    if not isinstance(value, list) or not all(_score(v) for v in value):
        return f"must be {ROW.words}, got {_short(value)}"
    if len(value) == t:
        return None
    return f"has {len(value)} {'entry' if len(value) == 1 else 'entries'}, but there are {t} tasks: it must have {t}"


def _matrix_problem(value: Any, t: int) -> str | None:
    if not isinstance(value, list) or not all(
        isinstance(r, list) and all(_score(v) for v in r) for r in value
    ):
        return f"must be {MATRIX.words}, got {_short(value)}"
    widths = {len(row) for row in value}
    if len(value) == t and widths == {t}:
        return None
    shape = "empty" if not value else f"{len(value)}x{widths.pop()}" if len(widths) == 1 else "ragged"
    return f"is {shape}, but there are {t} tasks: it must be {t}x{t}"


STRING = _simple("a string", _is_text)
BOOLEAN = _simple("true or false", lambda v: isinstance(v, bool))
NUMBER = _simple("a number", _is_number)
SCORE = _simple("a number or null", _score)
COUNT = _simple(
    "an integer of at least 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
)
OBJECT = _simple("an object", lambda v: isinstance(v, dict))
TEXTS = _simple("an object of strings", lambda v: isinstance(v, dict) and all(map(_is_text, v.values())))
SCORES = _simple(
    "an object of numbers or null", lambda v: isinstance(v, dict) and all(map(_score, v.values()))
)
NAMES = _simple("a list of strings", lambda v: isinstance(v, list) and all(map(_is_text, v)))
TASK_NAMES = _simple(
    "a non-empty list of strings",
    lambda v: isinstance(v, list) and bool(v) and all(map(_is_text, v)),
)
RESULTS = _simple(
    "a non-empty list of objects",
    lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v),
    listed=True,
)
OBJECTS = _simple(
    "a list of objects", lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), listed=True
)
ROW = Kind("a list of T numbers or null", _row_problem)
OPTIONAL_ROW = Kind(
    "null or a list of T numbers or null", lambda v, t: None if v is None else _row_problem(v, t)
)
MATRIX = Kind("a TxT list of rows of numbers or null", _matrix_problem)

METRIC_FIELDS = (
    Field("average_accuracy", SCORE, "mean score over all tasks after the last one"),
    Field("average_incremental_accuracy", SCORE, "mean of that average after every task"),
    Field("forgetting", SCORE, "how much worse the old tasks ended than at their best, mean over them"),
    Field("bwt", SCORE, "backward transfer: how later tasks changed the old ones (negative: forgot)"),
    Field("fwt", SCORE, "forward transfer: how earlier tasks helped later ones; null without initial scores"),
    Field("forgetting_rate", SCORES, "per task name: the share of its just-learned score lost by the end"),
    Field("average_accuracy_se", SCORE, "the standard error of average_accuracy"),
    Field("watch_retention", SCORES, "per watch set name: its final score / its score before training"),
)
SE = "its standard error (binomial for accuracies, bootstrap otherwise)"
WATCH_FIELDS = (
    Field("name", STRING, "the watch set's name", required=True),
    Field("score_name", STRING, "what its score is: acc_norm, the metric, or answer loss"),
    Field("higher_is_better", BOOLEAN, "whether a higher score is better"),
    Field("items", COUNT, "the number of items it is scored on", required=True),
    Field("initial", SCORE, "its score before the first task", required=True),
    Field("initial_se", SCORE, SE),
    Field("scores", ROW, "its score after each task", required=True),
    Field("se", ROW, "the standard error of each of them"),
    Field("initial_loss", SCORE, "its answer loss before the first task"),
    Field("loss", ROW, "its answer loss after each task"),
    Field("loss_se", ROW, "the standard error of each of them (bootstrap)"),
    Field("retention", SCORE, "final score / initial score (initial / final when lower is better)"),
    Field("initial_acc", SCORE, "multiple choice: its unnormalised accuracy before the first task"),
    Field("acc", ROW, "multiple choice: its unnormalised accuracy after each task"),
)
RESULT_FIELDS = (
    Field("strategy", STRING, "the strategy name (its composition)", required=True),
    Field(
        "accuracy_matrix", MATRIX, "the accuracy matrix: row i after task i, column j task j", required=True
    ),
    Field("metrics", OBJECT, "the metrics of the accuracy matrix", fields=METRIC_FIELDS),
    Field("initial_scores", OPTIONAL_ROW, "each task's score before any training"),
    Field("train_seconds", NUMBER, "seconds spent training"),
    Field("eval_seconds", NUMBER, "seconds spent evaluating"),
    Field(
        "loss_matrix", MATRIX, "lifelong finetune: the answer-loss matrix, laid out like the accuracy matrix"
    ),
    Field("initial_loss", ROW, "lifelong finetune: each task's answer loss before any training"),
    Field("loss_metrics", OBJECT, "lifelong finetune: the metrics of the loss matrix", fields=METRIC_FIELDS),
    Field("accuracy_matrix_se", MATRIX, "the standard error of each score of the accuracy matrix"),
    Field("initial_scores_se", OPTIONAL_ROW, "the standard error of each initial score"),
    Field("items", ROW, "the number of items each task is scored on"),
    Field("loss_matrix_se", MATRIX, "lifelong finetune: the standard error of each answer loss (bootstrap)"),
    Field("initial_loss_se", ROW, "lifelong finetune: the standard error of each initial answer loss"),
    Field(
        "watch",
        OBJECTS,
        "watch sets: scored whole before the first task and after each, never trained on",
        fields=WATCH_FIELDS,
    ),
    Field("model", STRING, "lifelong finetune without LoRA: the folder of the final model"),
    Field(
        "adapters",
        OBJECT,
        "lifelong finetune with LoRA: the adapter library",
        fields=(
            Field("root", STRING, "the adapter library's folder", required=True),
            Field("tasks", NAMES, "the tasks with an adapter in it", required=True),
        ),
    ),
    Field(
        "merged",
        OBJECT,
        "lifelong finetune with LoRA and merge: the merged adapter",
        fields=(
            Field("adapter", STRING, "the merged adapter's name in the library", required=True),
            Field("path", STRING, "the merged adapter's folder", required=True),
            Field("scores", ROW, "the merged adapter's score on each task", required=True),
            Field("loss", ROW, "the merged adapter's answer loss on each task", required=True),
            Field("scores_se", ROW, "the standard error of each of those scores"),
            Field(
                "watch",
                OBJECTS,
                "each watch set scored through the merged adapter: score, score_se, loss, loss_se, items (acc)",
            ),
        ),
    ),
    Field(
        "routed",
        OBJECT,
        "lifelong finetune with LoRA: held-out prompts routed to the adapter trained on prompts like them, "
        "else to the bare base, and scored through it",
        fields=(
            Field(
                "by", STRING, "how prompts were routed: prompts (where they sit in the base's hidden space)"
            ),
            Field("right", NUMBER, "the share of all routed prompts sent where they belong", required=True),
            Field(
                "sets",
                OBJECTS,
                "per task, then per watch set: name, expected (its adapter, or __base__), routed_to (counts "
                "per adapter), right (share), and score, score_se, loss, loss_se, items through the routes",
                required=True,
            ),
        ),
    ),
)
# In the order the writers emit them: `results_document` builds the keys in this order too.
DOCUMENT_FIELDS = (
    Field("benchmark", STRING, "the benchmark, or the data the tasks came from"),
    Field("scenario", STRING, "the scenario: class, task or domain (incremental)"),
    Field("tasks", TASK_NAMES, "the task names in stream order; T is their number", required=True),
    Field("higher_is_better", BOOLEAN, "whether a higher score is better (absent: true)"),
    Field("score_name", STRING, "what the score is (absent: accuracy, or score when lower is better)"),
    Field("config", OBJECT, "the settings the run used"),
    Field("processes", COUNT, "lifelong run: the number of processes that trained"),
    Field("versions", TEXTS, "Python, the platform and the installed packages' versions"),
    Field("wall_seconds", NUMBER, "seconds the whole run took"),
    Field("results", RESULTS, "the strategy results, one per strategy", required=True, fields=RESULT_FIELDS),
)


def schema_rows() -> Iterator[tuple[str, str, bool, str]]:
    """Every field as docs/results.md lists it: (path, kind, required, meaning); ``results[].x`` is
    field ``x`` of each entry of ``results``."""

    def walk(fields: tuple[Field, ...], prefix: str) -> Iterator[tuple[str, str, bool, str]]:
        for f in fields:
            path = prefix + f.name
            yield path, f.kind.words, f.required, f.meaning
            yield from walk(f.fields, path + ("[]." if f.kind.listed else "."))

    return walk(DOCUMENT_FIELDS, "")


def _problem(value: dict[str, Any], fields: tuple[Field, ...], prefix: str, t: int) -> str | None:
    """The first thing wrong in ``value`` against ``fields``, as '<path> (<meaning>) <problem>'."""
    for f in fields:
        path = prefix + f.name
        if f.name not in value:
            if f.required:
                return f"{path} ({f.meaning}) is missing"
            continue
        wrong = f.kind.problem(value[f.name], t)
        if wrong is not None:
            return f"{path} ({f.meaning}) {wrong}"
        if not f.fields:
            continue
        inner = value[f.name]
        parts = (
            [(f"{path}[{i}].", item) for i, item in enumerate(inner)]
            if f.kind.listed
            else [(path + ".", inner)]
        )
        for where, item in parts:  # objects: the kinds of fields with fields check that
            found = _problem(item, f.fields, where, t)
            if found is not None:
                return found
    return None


def validate_results(document: Any, source: str, fix: str = READ_FIX) -> dict[str, Any]:
    """``document`` if it matches the schema, else a one-line `LifelongError`: ``source`` (the file),
    the first bad field and ``fix``."""
    if not isinstance(document, dict):
        raise LifelongError(f"{source} is not a results document (a JSON object); {fix}")
    tasks = document.get("tasks")
    # 'tasks' comes before every field sized by it, so a bad one is reported before T is used.
    found = _problem(document, DOCUMENT_FIELDS, "", len(tasks) if isinstance(tasks, list) else 0)
    if found is not None:
        raise LifelongError(f"{source}: {found}; {fix}")
    return document


# ---- building, writing and reading ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "lifelong",
        "torch",
        "numpy",
        "scikit-learn",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def results_document(
    *,
    benchmark: str,
    scenario: str,
    tasks: list[str],
    config: dict[str, Any],
    results: list[dict[str, Any]],
    wall_seconds: float,
    higher_is_better: bool | None = None,
    score_name: str | None = None,
    processes: int | None = None,
) -> dict[str, Any]:
    """A results document with this installation's `versions`; fields left None are left out
    (readers take ``higher_is_better`` as true and the score as an accuracy)."""
    document: dict[str, Any] = {
        "benchmark": benchmark,
        "scenario": scenario,
        "tasks": tasks,
        "higher_is_better": higher_is_better,
        "score_name": score_name,
        "config": config,
        "processes": processes,
        "versions": versions(),
        "wall_seconds": round(wall_seconds, 3),
        "results": results,
    }
    return {key: value for key, value in document.items() if value is not None}


def write_results(run_dir: Path, document: dict[str, Any]) -> Path:
    """results.json, validated, then written last and atomically: its presence marks a finished run."""
    path = Path(run_dir) / RESULTS_FILE
    validate_results(document, str(path), WRITE_FIX)
    atomic_write_json(path, document)
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    """The validated results document of a finished run folder."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise LifelongError(f"run folder {run_dir} does not exist; pass the --out folder of a finished run")
    if not path.is_file():
        if (run_dir / "run.json").is_file():
            raise LifelongError(
                f"{path} does not exist: the run in {run_dir} is unfinished; "
                f"finish it with `lifelong run --resume {run_dir}`, then report it"
            )
        raise LifelongError(f"{path} does not exist; pass the --out folder of a finished `lifelong run`")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise LifelongError(
            f"{path} is not valid JSON ({type(err).__name__}); rerun the experiment with --overwrite"
        ) from None
    return validate_results(document, str(path))
