"""Watch sets: data a run only scores, whole, before its first task and after every task; it is never
trained on, replayed or asked for self-replay. They answer "what did the model forget of what it knew?".

A watch set is a JSONL file of records in `finetune`'s formats, multiple choice included, or the built-in
``general``: general-knowledge questions a small chat model answers (world facts, arithmetic, word
meanings, following an instruction), mostly multiple choice, shipped with the package. It is scored by
default when the model is a pretrained chat model: its tokenizer has a chat template and it has at least
`PRETRAINED_MIN_PARAMETERS` parameters, which no model built from a tiny config has. ``SET:items=N``
scores N of a set's items, evenly spaced (``general:items=60``: a sixth of it, for a quick run).

Each set is scored like a finetune task (`measure_task`): acc_norm for multiple choice, the metric on
generated answers, or the answer loss for plain text; every score with its standard error and count.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.core.metrics import average_se, retention
from lifelong.errors import LifelongError
from lifelong.llm.answers import Metric, exact_match
from lifelong.llm.finetune_data import FinetuneSettings, Prepared, measure_task, prepare, score_name_of
from lifelong.llm.instruct import InstructionTask, read_records
from lifelong.llm.training import TrainSettings

GENERAL = "general"
NONE = "none"
BUILT_IN = {GENERAL: Path(__file__).with_name("watch") / "general.jsonl"}
PRETRAINED_MIN_PARAMETERS = 50_000_000


def chosen_sources(given: Sequence[str] | None, model: Any, tokenizer: Any) -> list[str]:
    """The watch sets a run scores: those given; none for ``["none"]``; by default ``general`` for a
    pretrained chat model, else none."""
    if given:
        names = [str(g) for g in given]
        if NONE in names:
            if len(names) > 1:
                raise LifelongError("--eval none turns the watch sets off; give it alone or leave it out")
            return []
        return names
    if given is not None:  # an empty list given in Python: none
        return []
    pretrained = sum(p.numel() for p in model.parameters()) >= PRETRAINED_MIN_PARAMETERS
    return [GENERAL] if pretrained and getattr(tokenizer, "chat_template", None) else []


@dataclass
class Watch:
    """The watch sets of a run in tokens, and how they are scored (the run's metric and settings)."""

    sources: list[str]  # as given: files, or general
    sets: list[Prepared]
    metric: Metric
    metric_name: str
    settings: FinetuneSettings

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    def measure(self, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
        """Every set scored whole: one `Measure` each, as a plain dict (what a checkpoint keeps)."""
        return [
            dataclasses.asdict(measure_task(model, s, tokenizer, self.metric, self.settings))
            for s in self.sets
        ]

    def results(
        self, initial: list[dict[str, Any]], rows: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Per set, what results.json keeps: its scores before the first task and after each, with errors."""
        out = []
        for k, task in enumerate(self.sets):
            name = score_name_of(task, self.metric_name)
            by_loss = task.choices is None and not task.answered
            key, error = ("loss", "loss_se") if by_loss else ("score", "score_se")
            first, after = initial[k], [row[k] for row in rows]
            entry = {
                "name": task.name,
                "score_name": name,
                "higher_is_better": not by_loss,
                "items": first["items"],
                "initial": first[key],
                "initial_se": first[error],
                "scores": [m[key] for m in after],
                "se": [m[error] for m in after],
                "initial_loss": first["loss"],
                "loss": [m["loss"] for m in after],
                "loss_se": [m["loss_se"] for m in after],
                "retention": retention(first[key], after[-1][key], not by_loss) if after else None,
            }
            if task.choices is not None:
                entry["initial_acc"], entry["acc"] = first["acc"], [m["acc"] for m in after]
            out.append(entry)
        return out


def load_watch(
    sources: Sequence[str],
    tokenizer: Any,
    settings: FinetuneSettings,
    metric: Metric,
    metric_name: str,
) -> Watch:
    """The sets of ``sources`` (files or ``general``), each read once and tokenized whole."""
    whole = dataclasses.replace(settings, eval_examples=None)  # a watch set is scored whole, never capped
    sets: list[Prepared] = []
    for source in sources:
        path, items = _sampled(source)
        records = read_records(path)
        if items is not None:
            # Evenly spaced, so a sample of a file grouped by kind (as general is) keeps every kind.
            records = [records[k * len(records) // items] for k in range(min(items, len(records)))]
        name, k = path.stem, 2
        while name in {s.name for s in sets}:
            name, k = f"{path.stem}-{k}", k + 1
        task = InstructionTask(name, [], records, str(source))
        sets.append(prepare(task, tokenizer, whole, keep=0))
    return Watch(list(sources), sets, metric, metric_name, settings)


def _sampled(source: str) -> tuple[Path, int | None]:
    """A watch set's file, and how many of its items ``SET:items=N`` asks for (None: all)."""
    match = re.fullmatch(r"(.+):items=(\w+)", source)
    if Path(source).exists() or match is None:
        name, items = source, None
    else:
        name, count = match.groups()
        if not count.isdigit() or int(count) < 1:
            raise LifelongError(f"{source}: items= is how many of the set's items to score, at least 1")
        items = int(count)
    return (BUILT_IN[name] if name in BUILT_IN and not Path(name).exists() else Path(name)), items


def pretrain_watch(given: Sequence[str] | None, model: Any, tokenizer: Any, settings: TrainSettings) -> Watch:
    """`lifelong pretrain`'s watch sets, scored as finetune scores its tasks (exact match for answers),
    each record cut to a training block."""
    scoring = FinetuneSettings(
        max_length=settings.block_size, eval_batch_size=settings.eval_batch_size, seed=settings.seed
    )
    return load_watch(chosen_sources(given, model, tokenizer), tokenizer, scoring, exact_match, "exact match")


def add_uncertainty(record: dict[str, Any]) -> None:
    """Into a result's metrics: the standard error of its final average score (and loss), and each
    watch set's retention (final / initial score)."""
    for errors, metrics in (("accuracy_matrix_se", "metrics"), ("loss_matrix_se", "loss_metrics")):
        rows = record.get(errors)
        if rows and metrics in record and all(e is not None for e in rows[-1]):
            record[metrics]["average_accuracy_se"] = average_se(rows[-1])
    if record.get("watch"):
        record["metrics"]["watch_retention"] = {w["name"]: w["retention"] for w in record["watch"]}
