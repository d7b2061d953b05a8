"""LoRA accumulation: a library of per-task PEFT LoRA adapters on one frozen base model.

One adapter per task, trained with the base frozen, stored on disk as PEFT writes it plus a record
of where it came from (the layout is in `lifelong.adapters.store`). A task's adapter is never touched
by another task's training, so forgetting is zero by construction as long as the right adapter is
used; `AdapterLibrary.route` picks it when the task is not given (lowest loss for a causal LM,
highest confidence for a classifier).

Where things live (each module imports only those above it)::

    peft_calls.py  PEFT and transformers called quietly and seeded; freezing weights
    base.py        the frozen base model: its kind, config, weights and tokenizer, loaded offline
    store.py       the on-disk format: folders, lifelong.json, checksums, listing, atomic writes
    training.py    examples encoded as tensors, LoRA configs, the training loop and its score
    routing.py     per-sample adapters in one batch, and picking the adapter per example
    merging.py     merging adapters (and why ``cat`` is the default), merge_and_unload's export
    library.py     AdapterLibrary, the object that holds the PEFT model and calls the modules above

Importing this package loads torch only; transformers, PEFT and safetensors load on first use.
"""

from lifelong.adapters.base import ModelKind, model_kind_of
from lifelong.adapters.library import AdapterLibrary
from lifelong.adapters.merging import DENSITY_METHODS, MERGE_METHODS, SAME_RANK_METHODS, MergeMethod

# Public for lifelong.llm, which wraps its own PEFT calls in it.
from lifelong.adapters.peft_calls import _peft_call as peft_call
from lifelong.adapters.routing import RouteResult
from lifelong.adapters.saving import check_deletable, delete_adapter
from lifelong.adapters.store import (
    CONFIG_FILE,
    EXPORTS,
    META_FILE,
    META_FORMAT,
    TASK_NAME,
    WEIGHTS_FILE,
    AdapterInfo,
    adapter_folder,
    adapter_problem,
    check_task_name,
    config_hash,
    inspect_adapter,
    list_adapters,
    read_meta,
)
from lifelong.adapters.training import DEFAULT_TARGETS, LORA_DEFAULTS, TRAINING_DEFAULTS, Encoded

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_TARGETS",
    "DENSITY_METHODS",
    "EXPORTS",
    "LORA_DEFAULTS",
    "MERGE_METHODS",
    "META_FILE",
    "META_FORMAT",
    "SAME_RANK_METHODS",
    "TASK_NAME",
    "TRAINING_DEFAULTS",
    "WEIGHTS_FILE",
    "AdapterInfo",
    "AdapterLibrary",
    "Encoded",
    "MergeMethod",
    "ModelKind",
    "RouteResult",
    "adapter_folder",
    "adapter_problem",
    "check_deletable",
    "check_task_name",
    "config_hash",
    "delete_adapter",
    "inspect_adapter",
    "list_adapters",
    "model_kind_of",
    "peft_call",
    "read_meta",
]
