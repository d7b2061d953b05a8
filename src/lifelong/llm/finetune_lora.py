"""`lifelong finetune --lora`: one LoRA adapter trains through the whole stream, on the frozen base, and
its state after each task is kept in an `AdapterLibrary` under that task's name.

The training adapter keeps one name (`LORA_ADAPTER`) through the stream, so EWC's anchors and the
distillation teacher keep pointing at the weights that train; each task's state is a frozen copy
beside it. A checkpoint needs only the training adapter's tensors: the base never changes, and the
task copies are in the library on disk, which loads them again when a merge needs them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lifelong.adapters import AdapterLibrary, peft_call
from lifelong.adapters.routing import PromptSignature, fit_signature, prompt_embeddings
from lifelong.errors import LifelongError
from lifelong.llm.instruct import Example
from lifelong.llm.models import offline, resolve_model_folder

LORA_LR = 2e-4  # the usual LoRA rate for a pretrained model; full fine-tuning continues at DEFAULT_LR
LORA_ADAPTER = "_stream"  # the adapter that trains; task names cannot start with "_", so no clash


def with_lora(
    model: Any, root: Path, tokenizer: Any, options: Mapping[str, Any]
) -> tuple[AdapterLibrary, Any]:
    """An `AdapterLibrary` in ``root`` and ``model`` wrapped with the one training adapter."""
    from peft import get_peft_model

    library = AdapterLibrary(model, root, tokenizer=tokenizer)
    try:
        config = library.default_lora(**options)
    except (TypeError, ValueError) as err:
        raise LifelongError(f"bad LoRA option: {err}") from None
    with peft_call():
        peft = get_peft_model(model, config, adapter_name=LORA_ADAPTER)
    library.peft_model = peft  # the library saves, loads and merges through the same PEFT model
    return library, peft


def training_adapter(peft: Any) -> dict[str, torch.Tensor]:
    """The training adapter's weights by parameter name: the model part of a LoRA run's checkpoint."""
    return {n: p for n, p in peft.named_parameters() if f".{LORA_ADAPTER}." in n}


def load_training_adapter(peft: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    params = training_adapter(peft)
    if set(params) != set(tensors):
        raise LifelongError(
            "the checkpoint's LoRA adapter does not fit this run's model; resume with the original settings"
        )
    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(tensors[name])


def keep_adapters(library: AdapterLibrary, tasks: Collection[str]) -> None:
    """Delete every adapter of the library but those of ``tasks``: what a killed run saved after its
    last checkpoint (a task's adapter, the merge) is made again."""
    for info in library.list():
        if info.task not in tasks:
            library.delete(info.task)


def store_adapter(
    library: AdapterLibrary,
    peft: Any,
    task: str,
    size: int,
    score: float | None,
    loss: float,
    signature: PromptSignature,
) -> None:
    """Copy the training adapter's current weights into an adapter named ``task`` and save it in the
    library, with where its training prompts sit (what routing by prompts compares new ones with)."""
    config = copy.deepcopy(peft.peft_config[LORA_ADAPTER])
    with peft_call():
        peft.add_adapter(task, config)
    source = training_adapter(peft)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if f".{task}." in name:
                parameter.copy_(source[name.replace(f".{task}.", f".{LORA_ADAPTER}.")])
                parameter.requires_grad_(False)
    peft.set_adapter(LORA_ADAPTER)  # PEFT's set_adapter leaves only the active adapter trainable
    library.add(
        task,
        config,
        {
            "training": {"continual": True, "after": task},
            "router": signature.to_json(),
            "data_size": size,
            "eval": {
                "metric": "exact match" if score is not None else "loss",
                "value": score if score is not None else loss,
                "loss": loss,
                "split": "heldout",
            },
        },
    )


def prompts_of(examples: Sequence[Example]) -> list[list[int]]:
    """What generation starts from for each example (the whole example for plain text): what routing
    by prompts compares."""
    return [e.prompt_ids or e.input_ids for e in examples]


def signature_of(peft: Any, examples: Sequence[Example]) -> PromptSignature:
    """Where the prompts of a task's training ``examples`` sit in the bare base's hidden space."""
    return fit_signature(prompt_embeddings(peft, prompts_of(examples), pad_id=0))


@contextlib.contextmanager
def answering_through(library: AdapterLibrary, peft: Any, adapter: str | None) -> Iterator[None]:
    """``peft`` answers through ``adapter`` (a stored task's, the training one, or None: the bare base),
    then trains on through the training adapter."""
    if adapter is None:
        with peft.disable_adapter():
            yield
        return
    if adapter != LORA_ADAPTER:
        library.load(adapter)
    try:
        yield
    finally:
        peft.set_adapter(LORA_ADAPTER)  # also makes the training adapter, and it alone, trainable again


def load_task_adapter(model: str | Path, root: str | Path, task: str) -> Any:
    """The base of ``model`` with the adapter ``task`` of a finetune run's library, ready to evaluate."""
    library = AdapterLibrary(resolve_model_folder(model), root)
    with offline():  # no weight-loading progress bar
        return library.load(task)
