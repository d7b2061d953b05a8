"""LoRA accumulation: a library of per-task PEFT LoRA adapters on one frozen base model.

One adapter per task, trained with the base frozen, stored on disk as PEFT writes it plus a record
of where it came from::

    root/<task>/adapter_model.safetensors   the LoRA matrices (and, for a classifier, its own head)
    root/<task>/adapter_config.json         PEFT's LoraConfig
    root/<task>/lifelong.json               task, base model name and config hash, training arguments,
                                            data size, eval score, created time, parents of a merge,
                                            and the SHA-256 of the weights file

A task's adapter is never touched by another task's training, so forgetting is zero by
construction as long as the right adapter is used; `AdapterLibrary.route` picks it when the task is
not given (lowest loss for a causal LM, highest confidence for a classifier).

Why ``merge(method="cat")`` is the default
------------------------------------------
A LoRA adapter changes a weight matrix by ``ΔW = s·B·A`` (``B`` is ``d×r``, ``A`` is ``r×k``, ``s =
alpha/r``). The merge a user means by "adapter 1 with weight w1 plus adapter 2 with weight w2" is
``w1·s1·B1A1 + w2·s2·B2A2``. ``cat`` produces exactly that: it stacks the factors,
``B = [B1 | B2]`` and ``A = [w1·s1·A1 ; w2·s2·A2]``, so ``B·A = w1·s1·B1A1 + w2·s2·B2A2`` with no
approximation, for any ranks (the merged rank is r1 + r2).

Averaging the ``A`` and ``B`` matrices separately, as the seed's ``merge_adapters`` did (over the
whole state dict, base weights included), gives ``((B1 + B2)/2)·((A1 + A2)/2) = (B1A1 + B2A2 + B1A2
+ B2A1)/4``: half the intended update plus two cross terms ``B1A2`` and ``B2A1`` that neither
adapter ever learned (``B1A1 + B2A2 ≠ (B1 + B2)(A1 + A2)/4``). PEFT's ``linear`` has the same cross
terms (it sums ``√(w·s)``-scaled ``A`` and ``B`` separately), which is why it needs equal ranks and is
only an approximation; ``ties``, ``dare_*`` and ``magnitude_prune`` prune and sum the factors the
same way. ``svd`` computes the exact sum and then truncates it to a rank (exact only when that rank
is enough).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F

from lifelong.core.checkpoint import atomic_write_json, sha256_file
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

ModelKind = Literal["causal-lm", "classification"]
MergeMethod = Literal["cat", "linear", "svd", "ties", "dare_ties", "dare_linear", "magnitude_prune"]
MERGE_METHODS: tuple[str, ...] = (
    "cat",
    "linear",
    "svd",
    "ties",
    "dare_ties",
    "dare_linear",
    "magnitude_prune",
)
SAME_RANK_METHODS = frozenset({"linear", "ties", "dare_ties", "dare_linear", "magnitude_prune"})
DENSITY_METHODS = frozenset({"ties", "dare_ties", "dare_linear", "magnitude_prune"})

WEIGHTS_FILE, CONFIG_FILE, META_FILE = "adapter_model.safetensors", "adapter_config.json", "lifelong.json"
META_FORMAT = 1
EXPORTS = "_exports"  # default home of merge_and_unload folders; no task name starts with "_"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# The seed's choice for Llama-style models, and the usual attention projections elsewhere; any other
# architecture falls back to PEFT's own table.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
}
LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "lr": 5e-4,
    "batch_size": 8,
    "max_length": 128,
    "weight_decay": 0.0,
    "seed": 0,
}
# Config keys that change when a config is saved, reloaded or run, not when the model changes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_attn_implementation_internal",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
    }
)


# ---- records ------------------------------------------------------------------------------------------


@dataclass
class AdapterInfo:
    """What `AdapterLibrary.list` reports for one adapter folder (from its ``lifelong.json``)."""

    task: str
    path: Path
    kind: str = "trained"  # "trained" or "merged"
    model_kind: str = ""
    r: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    base_name: str = ""
    base_hash: str = ""
    data_size: int | None = None
    eval: dict[str, Any] | None = None
    parents: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    method: str | None = None
    parameters: int | None = None
    size_bytes: int = 0
    created: str = ""
    problem: str | None = None  # why the adapter cannot be loaded, if it cannot

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


@dataclass
class RouteResult:
    """Which adapter `AdapterLibrary.route` picked for each example, and why.

    ``scores[i]`` is the chosen adapter's score for example i; ``all_scores[i, k]`` that of
    ``tasks[k]``. ``metric`` is ``"loss"`` (causal LM: mean token loss, lower wins) or ``"confidence"``
    (classifier: highest softmax probability among the adapter's own labels, higher wins).
    ``predictions`` holds the chosen adapter's predicted label (classifiers only).
    """

    tasks: list[str]
    choices: list[str]
    scores: list[float]
    all_scores: torch.Tensor
    metric: str
    predictions: list[int] | None = None

    def to_json(self) -> list[dict[str, Any]]:
        rows = []
        for i, choice in enumerate(self.choices):
            row: dict[str, Any] = {"choice": choice, self.metric: self.scores[i]}
            row["scores"] = dict(zip(self.tasks, self.all_scores[i].tolist(), strict=True))
            if self.predictions is not None:
                row["prediction"] = self.predictions[i]
            rows.append(row)
        return rows


@dataclass
class Encoded:
    """Examples as right-padded tensors; ``labels`` is one class per example (classifiers only)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(
        self, rows: torch.Tensor | slice, device: torch.device, kind: ModelKind
    ) -> dict[str, torch.Tensor]:
        ids, mask = self.input_ids[rows], self.attention_mask[rows]
        # Right padding: columns past the longest example of this batch are padding in every row.
        width = max(int(mask.sum(dim=1).max()), 1)
        out = {"input_ids": ids[:, :width].to(device), "attention_mask": mask[:, :width].to(device)}
        if kind == "causal-lm":
            out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
        elif self.labels is not None:
            out["labels"] = self.labels[rows].to(device)
        return out


# ---- helpers ------------------------------------------------------------------------------------------


def config_hash(config: PretrainedConfig) -> str:
    """A short hash of a model config, stable across save/load (volatile keys are left out)."""
    values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_kind_of(architecture: str) -> ModelKind | None:
    if architecture.endswith("ForSequenceClassification"):
        return "classification"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return None


def check_task_name(task: str) -> str:
    """Task names become folder names and PEFT adapter names (module-dict keys, no dots)."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
        raise LifelongError(
            f"task name {task!r} is not allowed; use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if task in "lora_":  # PEFT finds adapters by key; a name inside its prefix breaks loading
        raise LifelongError(f"task name '{task}' is too close to PEFT's 'lora_' prefix; choose a longer name")
    return task


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def read_meta(folder: Path) -> dict[str, Any]:
    """The ``lifelong.json`` of one adapter folder, or a `LifelongError` that says what is wrong."""
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(meta, dict)
            or meta.get("format") != META_FORMAT
            or not isinstance(meta.get("base"), dict)
        ):
            raise ValueError("not a lifelong adapter record")
    except FileNotFoundError:
        raise LifelongError(
            f"{folder} has no {META_FILE}, so it was not saved by AdapterLibrary; retrain the adapter or delete the folder"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise LifelongError(f"{path} is damaged; retrain the adapter or delete the folder") from None
    return meta


def _rank(config: Mapping[str, Any]) -> int:
    pattern = config.get("rank_pattern") or {}
    return max([int(config["r"]), *(int(v) for v in pattern.values())])


def adapter_folder(root: Path, task: str) -> Path:
    """``root/<task>``, refusing a task that has no adapter there (with the list of those that do)."""
    folder = root / check_task_name(task)
    if not folder.is_dir():
        known = ", ".join(i.task for i in list_adapters(root) if i.ok) or "none yet"
        raise LifelongError(f"unknown task '{task}': {root} has no adapter for it (adapters: {known})")
    return folder


def adapter_problem(
    folder: Path, meta: dict[str, Any], base_hash: str | None, base_name: str = ""
) -> str | None:
    """Why the adapter in ``folder`` cannot be loaded on the base with ``base_hash``, or None (no weights read)."""
    task, base = folder.name, meta["base"]
    if base_hash is not None and base.get("config_hash") != base_hash:
        return (
            f"adapter '{task}' was trained on base model {base.get('name')!r} (config {base.get('config_hash')}), "
            f"not on this library's base {base_name!r} (config {base_hash}); load it with its own base model"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            return (
                f"adapter '{task}' has no {name}; retrain it or delete it (lifelong adapters delete {task})"
            )
    return None


def inspect_adapter(folder: Path, base_hash: str | None = None, base_name: str = "") -> AdapterInfo:
    """The `AdapterInfo` of one adapter folder; ``base_hash`` also checks it belongs to that base."""
    task = folder.name
    try:
        meta = read_meta(folder)
    except LifelongError as err:
        return AdapterInfo(task, folder, problem=str(err))
    lora = meta.get("lora", {})
    weights = folder / WEIGHTS_FILE
    return AdapterInfo(
        task=task,
        path=folder,
        kind=meta.get("kind", "trained"),
        model_kind=meta.get("model_kind", ""),
        r=lora.get("r"),
        alpha=lora.get("alpha"),
        target_modules=list(lora.get("target_modules", [])),
        base_name=meta["base"].get("name", ""),
        base_hash=meta["base"].get("config_hash", ""),
        data_size=meta.get("data_size"),
        eval=meta.get("eval"),
        parents=list(meta.get("parents", [])),
        weights=list(meta.get("weights", [])),
        method=meta.get("method"),
        parameters=meta.get("parameters"),
        size_bytes=weights.stat().st_size if weights.is_file() else 0,
        created=meta.get("created", ""),
        problem=adapter_problem(folder, meta, base_hash, base_name),
    )


def list_adapters(root: str | Path, base_hash: str | None = None, base_name: str = "") -> list[AdapterInfo]:
    """Every adapter folder under ``root`` by name, without loading a model (hidden and ``_`` folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and TASK_NAME.fullmatch(p.name))
    return [inspect_adapter(p, base_hash, base_name) for p in folders]


def delete_adapter(root: str | Path, task: str) -> None:
    """Remove ``root/<task>`` (a broken adapter too) in one rename, so it is never half-deleted."""
    folder = adapter_folder(Path(root), task)
    trash = folder.with_name(f".deleted-{task}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---- the library --------------------------------------------------------------------------------------


class AdapterLibrary:
    """Per-task LoRA adapters for one base model, kept in the folder ``root``.

    ``base_model`` is a local model folder (loaded on first use, offline) or a built
    ``PreTrainedModel``; either a causal LM (``...ForCausalLM``) or a sequence classifier
    (``...ForSequenceClassification``). A model of another class (a bare encoder such as MiniLM's
    ``BertModel``) is loaded as a classifier with ``kind="classification", num_labels=N``.

    The library keeps one PEFT model in memory, the base with every loaded adapter attached; `load`
    switches which adapter is active. PEFT wraps the base in place, so a built model passed in gets
    LoRA layers (inactive unless an adapter is active). The base's own weights never change.
    """

    def __init__(
        self,
        base_model: str | Path | PreTrainedModel,
        root: str | Path,
        *,
        kind: ModelKind | None = None,
        num_labels: int | None = None,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise LifelongError(f"adapter root {self.root} is a file, not a folder; choose another path")
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self._base: PreTrainedModel | None = None
        self._base_path: Path | None = None
        self._peft: PeftModel | None = None
        self._loaded: set[str] = set()
        if isinstance(base_model, str | Path):
            self._base_path = Path(base_model)
            self.config = self._read_config(self._base_path)
            architecture = (self.config.architectures or ["?"])[0]
            self.base_name = str(base_model)
        else:
            self._base = base_model
            self.config = base_model.config
            architecture = type(base_model).__name__
            self.base_name = str(getattr(self.config, "_name_or_path", "") or architecture)
        found = kind or model_kind_of(architecture)
        if found not in ("causal-lm", "classification"):
            raise LifelongError(
                f"base model is a {architecture}; AdapterLibrary needs a causal LM (...ForCausalLM) or a sequence "
                "classifier (...ForSequenceClassification); for a bare encoder pass kind='classification', num_labels=N"
            )
        self.kind: ModelKind = found
        self.architecture = architecture
        self.base_hash = config_hash(self.config)
        if device is not None:
            self.device = torch.device(device)
        elif self._base is not None:
            self.device = next(self._base.parameters()).device
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self._base is not None:
            self._prepare_base(self._base)

    # ---- the base model -------------------------------------------------------------------------------

    def _read_config(self, path: Path) -> PretrainedConfig:
        from transformers import AutoConfig

        if not (path / "config.json").is_file():
            raise LifelongError(
                f"base model folder {path} has no config.json; give a saved Hugging Face model folder"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach for the network
        extra = {"num_labels": self.num_labels} if self.num_labels else {}
        try:
            return AutoConfig.from_pretrained(str(path), local_files_only=True, **extra)
        except (OSError, ValueError) as err:
            raise LifelongError(f"cannot read the config of base model {path}: {err}") from None

    @property
    def base(self) -> PreTrainedModel:
        """The base model, loaded on first use and frozen (with adapters attached once any is loaded)."""
        if self._base is None:
            assert self._base_path is not None
            from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

            auto = AutoModelForCausalLM if self.kind == "causal-lm" else AutoModelForSequenceClassification
            try:
                self._base = auto.from_pretrained(
                    str(self._base_path), config=self.config, local_files_only=True
                )
            except (OSError, ValueError) as err:
                raise LifelongError(f"cannot load base model {self._base_path}: {err}") from None
            if self.tokenizer is None:
                self.tokenizer = self._folder_tokenizer()
            self._prepare_base(self._base)
        assert self._base is not None
        return self._base

    def _prepare_base(self, model: PreTrainedModel) -> None:
        cast(torch.nn.Module, model).to(self.device)
        for parameter in model.parameters():
            parameter.requires_grad_(False)  # the base is frozen for good; only adapters ever train
        model.eval()

    def _folder_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        assert self._base_path is not None
        if not any(
            (self._base_path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        ):
            return None
        try:
            return AutoTokenizer.from_pretrained(str(self._base_path), local_files_only=True)
        except (OSError, ValueError):
            return None

    @property
    def peft_model(self) -> PeftModel | None:
        """The PEFT model holding every loaded adapter (None until the first adapter is loaded)."""
        return self._peft

    @peft_model.setter
    def peft_model(self, model: PeftModel) -> None:
        """Adopt a PEFT model over this library's base (one trained in your own loop): the library
        then saves, loads and merges through it."""
        self._peft = model

    def add(self, task: str, config: LoraConfig, details: Mapping[str, Any] | None = None) -> AdapterInfo:
        """Save the adapter ``task`` of `peft_model`, trained outside `train`, into the library as if
        `train` had written it; ``details`` (data size, scores, how it was trained) join its metadata."""
        meta = self._record(task, config, kind="trained") | dict(details or {})
        self._save(task, meta, overwrite=False)
        self._loaded.add(task)
        return self.info(task)

    # ---- listing --------------------------------------------------------------------------------------

    def list(self) -> builtins.list[AdapterInfo]:
        """Every adapter folder under ``root``, by task name; a broken one says why in ``problem``."""
        return list_adapters(self.root, self.base_hash, self.base_name)

    def tasks(self) -> builtins.list[str]:
        """Names of the adapters that can be loaded."""
        return [info.task for info in self.list() if info.ok]

    def info(self, task: str) -> AdapterInfo:
        return inspect_adapter(self._folder(task), self.base_hash, self.base_name)

    def _folder(self, task: str) -> Path:
        return self.root / check_task_name(task)

    def _meta(self, task: str) -> dict[str, Any]:
        """The record of an existing adapter, refusing unknown tasks and adapters of other bases."""
        folder = adapter_folder(self.root, task)
        meta = read_meta(folder)
        problem = adapter_problem(folder, meta, self.base_hash, self.base_name)
        if problem:
            raise LifelongError(problem)
        return meta

    # ---- loading --------------------------------------------------------------------------------------

    def load(self, task: str) -> PeftModel:
        """Base plus ``task``'s adapter, active, frozen and in eval mode, ready for inference."""
        meta = self._meta(task)
        self._attach(task, meta)
        peft = self._require_peft()
        peft.set_adapter(task, inference_mode=True)
        self._freeze()
        peft.eval()
        return peft

    def _attach(self, task: str, meta: dict[str, Any]) -> None:
        """Load ``task``'s weights into the PEFT model once, after checking the file is the one saved."""
        if task in self._loaded:
            return
        from safetensors import SafetensorError, safe_open

        folder = self._folder(task)
        weights = folder / WEIGHTS_FILE
        expected = meta.get("weights_sha256")
        if expected and sha256_file(weights) != expected:
            raise LifelongError(
                f"{weights} does not match the checksum in its {META_FILE} (changed or truncated); "
                f"retrain the adapter or delete it (lifelong adapters delete {task})"
            )
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise LifelongError(
                f"{weights} cannot be read ({err}); retrain the adapter or delete it"
            ) from None
        config = self._read_lora_config(folder)
        base = self.base
        added = False
        try:
            if self._peft is None:
                from peft import get_peft_model

                with _peft_call():
                    self._peft = get_peft_model(base, config, adapter_name=task)
            else:
                with _peft_call():
                    self._peft.add_adapter(task, config)
            added = True
            result = self._peft.load_adapter(str(folder), adapter_name=task, is_trainable=False)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k or "modules_to_save" in k]
            if result.missing_keys or unexpected:
                raise ValueError(
                    f"{len(result.missing_keys)} missing and {len(unexpected)} unexpected tensors"
                )
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            if added:
                self._drop(task)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LifelongError(
                f"adapter '{task}' does not fit base model {self.base_name!r} ({first[:200]}); "
                "load it with the base it was trained on, or retrain it"
            ) from None
        self._loaded.add(task)

    def _read_lora_config(self, folder: Path) -> LoraConfig:
        from peft import LoraConfig

        try:
            config = LoraConfig.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as err:
            raise LifelongError(
                f"{folder / CONFIG_FILE} cannot be read ({err}); retrain the adapter"
            ) from None
        config.inference_mode = True
        return config

    def _require_peft(self) -> PeftModel:
        if self._peft is None:
            raise LifelongError("no adapter is loaded yet; train one or load one first")
        return self._peft

    def _drop(self, task: str) -> None:
        """Remove ``task``'s adapter from memory (the PEFT model stays, possibly with no adapter)."""
        self._loaded.discard(task)
        if self._peft is not None and task in self._peft.peft_config:
            with _quiet_warnings():
                self._peft.delete_adapter(task)

    def _freeze(self) -> None:
        assert self._peft is not None
        for parameter in self._peft.parameters():
            parameter.requires_grad_(False)

    # ---- data -----------------------------------------------------------------------------------------

    def encode(self, data: Any, *, max_length: int = 128, labels: bool | None = None) -> Encoded:
        """Examples in any accepted form -> padded tensors.

        Accepted: an `Encoded`; a mapping or Hugging Face ``datasets.Dataset`` with ``input_ids`` (and
        ``attention_mask``) or ``text`` columns, plus ``label``/``labels`` for a classifier; or a
        sequence of strings, token-id lists, ``(text_or_ids, label)`` pairs or such mappings. Text
        needs a tokenizer (the base folder's, or ``tokenizer=``).
        """
        if isinstance(data, Encoded):
            return data
        need_labels = self.kind == "classification" if labels is None else labels
        rows = list(_rows(data))
        if not rows:
            raise LifelongError("the dataset is empty; give at least one example")
        texts = [i for i, (item, _) in enumerate(rows) if isinstance(item, str)]
        ids: builtins.list[builtins.list[int]] = [[] for _ in rows]
        if texts:
            tokenizer = self.tokenizer
            if tokenizer is None and self._base_path is not None:
                tokenizer = self.tokenizer = self._folder_tokenizer()
            if tokenizer is None:
                raise LifelongError(
                    "the examples are text but there is no tokenizer; save one in the base folder, pass "
                    "AdapterLibrary(..., tokenizer=...), or give input_ids"
                )
            encoded = tokenizer(
                [cast(str, rows[i][0]) for i in texts], truncation=True, max_length=max_length
            )
            for i, row_ids in zip(texts, encoded["input_ids"], strict=True):
                ids[i] = list(row_ids)
        for i, (item, _) in enumerate(rows):
            if not isinstance(item, str):
                ids[i] = [int(t) for t in item][:max_length]
        if any(not row for row in ids):
            raise LifelongError("an example has no tokens; drop empty examples")
        vocab = int(getattr(self.config, "vocab_size", 0) or 0)
        top = max(max(row) for row in ids)
        if min(min(row) for row in ids) < 0 or (vocab and top >= vocab):
            raise LifelongError(
                f"token id {top} is outside the base model's vocabulary of {vocab}; use its tokenizer"
            )
        pad = self._pad_id()
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        label_tensor = None
        if need_labels:
            missing = [i for i, (_, label) in enumerate(rows) if label is None]
            if missing:
                raise LifelongError(
                    f"example {missing[0]} has no label; a classifier needs a label per example"
                )
            values = [int(cast(int, label)) for _, label in rows]
            num_labels = self._num_labels()
            bad = [v for v in values if not 0 <= v < num_labels]
            if bad:
                raise LifelongError(
                    f"label {bad[0]} is outside the model's {num_labels} labels (0..{num_labels - 1})"
                )
            label_tensor = torch.tensor(values, dtype=torch.long)
        return Encoded(input_ids, mask, label_tensor)

    def _num_labels(self) -> int:
        return int(getattr(self.config, "num_labels", 0) or 0)

    def _pad_id(self) -> int:
        for source in (self.tokenizer, self.config):
            value = getattr(source, "pad_token_id", None)
            if isinstance(value, int):
                return value
        return 0

    # ---- training -------------------------------------------------------------------------------------

    def default_lora(self, **overrides: Any) -> LoraConfig:
        """r=16, alpha=32, dropout 0.05 on the architecture's attention projections (see DEFAULT_TARGETS)."""
        from peft import LoraConfig
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

        model_type = getattr(self.config, "model_type", "")
        targets = DEFAULT_TARGETS.get(model_type) or PEFT_TARGETS.get(model_type)
        if targets is None and "target_modules" not in overrides:
            raise LifelongError(
                f"no default LoRA target modules for model type '{model_type}'; pass lora={{'target_modules': [...]}}"
            )
        values = {**LORA_DEFAULTS, "target_modules": list(targets or []), **overrides}
        values.setdefault("fan_in_fan_out", model_type == "gpt2")  # GPT-2's Conv1D stores W transposed
        return LoraConfig(task_type=self._task_type(), **values)

    def _task_type(self) -> str:
        # The task type makes PEFT save a classifier's head with the adapter (modules_to_save).
        return "CAUSAL_LM" if self.kind == "causal-lm" else "SEQ_CLS"

    def train(
        self,
        task: str,
        dataset: Any,
        lora: LoraConfig | Mapping[str, Any] | None = None,
        *,
        eval_dataset: Any = None,
        overwrite: bool = False,
        **training_args: Any,
    ) -> AdapterInfo:
        """Train one LoRA adapter for ``task`` with the base frozen, and save it to ``root/<task>``.

        ``lora``: a ``LoraConfig`` (used as given) or a mapping of LoraConfig fields over the defaults.
        ``training_args``: epochs=3, lr=5e-4, batch_size=8, max_length=128, weight_decay=0.0, seed=0.
        The eval score is measured on ``eval_dataset``, else on the training data.

        A plain AdamW loop rather than the HF ``Trainer``: the data is already in memory as tensors,
        an adapter trains in seconds, and the loop is the whole story in twenty lines, with no output
        folders, logging integrations or accelerate state of its own; it repeats exactly for a seed.
        """
        check_task_name(task)
        unknown = sorted(set(training_args) - set(TRAINING_DEFAULTS))
        if unknown:
            raise LifelongError(
                f"unknown training argument(s) {', '.join(unknown)}; use: {', '.join(TRAINING_DEFAULTS)}"
            )
        args = {**TRAINING_DEFAULTS, **training_args}
        if args["epochs"] < 1 or args["batch_size"] < 1 or not args["lr"] > 0:
            raise LifelongError(f"epochs and batch_size must be at least 1 and lr positive, got {args}")
        folder = self.root / task
        if folder.exists() and not overwrite:
            raise LifelongError(
                f"an adapter for task '{task}' already exists in {self.root}; pass overwrite=True or delete it"
            )
        data = self.encode(dataset, max_length=args["max_length"])
        held_out = (
            self.encode(eval_dataset, max_length=args["max_length"]) if eval_dataset is not None else None
        )
        config = self._lora_config(lora)
        base = self.base
        if task in self._loaded or (self._peft is not None and task in self._peft.peft_config):
            self._drop(task)  # overwrite: the old adapter stays on disk until the new one replaces it
        with _seeded(int(args["seed"]), self.device):
            try:
                try:
                    with _peft_call():
                        if self._peft is None:
                            from peft import get_peft_model

                            self._peft = get_peft_model(base, config, adapter_name=task)
                        else:
                            self._peft.add_adapter(task, config)
                except ValueError as err:  # e.g. r=0, or target modules this model does not have
                    raise LifelongError(
                        f"PEFT cannot add adapter '{task}' with this LoRA config: {err}"
                    ) from None
                assert self._peft is not None
                self._freeze()
                self._peft.set_adapter(task)  # trainable: only this adapter (and its head copy)
                self._fit(data, args)
                self._freeze()
                self._peft.eval()
                scored_on = held_out if held_out is not None else data
                score = self._score(task, scored_on)
                meta = self._record(task, config, kind="trained")
                meta |= {
                    "training": args,
                    "data_size": len(data),
                    "labels": sorted(set(data.labels.tolist())) if data.labels is not None else None,
                    "eval": {
                        **score,
                        "split": "eval" if held_out is not None else "train",
                        "size": len(scored_on),
                    },
                }
                self._save(task, meta, overwrite=overwrite)
            except BaseException:
                self._drop(task)
                raise
        self._loaded.add(task)
        return self.info(task)

    def _lora_config(self, lora: LoraConfig | Mapping[str, Any] | None) -> LoraConfig:
        from peft import LoraConfig

        if lora is None:
            return self.default_lora()
        if isinstance(lora, LoraConfig):
            config = copy.deepcopy(lora)
            if config.task_type is None:
                config.task_type = self._task_type()
            return config
        if isinstance(lora, Mapping):
            try:
                return self.default_lora(**dict(lora))
            except (TypeError, ValueError) as err:  # an unknown field, or one LoraConfig refuses
                raise LifelongError(f"bad LoRA option: {err}") from None
        raise LifelongError(
            f"lora must be a peft LoraConfig or a mapping of its fields, got {type(lora).__name__}"
        )

    def _fit(self, data: Encoded, args: dict[str, Any]) -> None:
        peft = self._require_peft()
        params = [p for p in peft.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=float(args["lr"]), weight_decay=float(args["weight_decay"]))
        generator = torch.Generator().manual_seed(int(args["seed"]))
        peft.train()
        for epoch in range(int(args["epochs"])):
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), int(args["batch_size"])):
                batch = data.batch(order[start : start + int(args["batch_size"])], self.device, self.kind)
                loss = peft(**batch).loss
                if not torch.isfinite(loss):
                    raise LifelongError(
                        f"loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate (lr)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        peft.eval()

    # ---- scoring ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, task: str, data: Encoded, batch_size: int = 32) -> dict[str, Any]:
        """Accuracy (classifier) or mean token loss (causal LM) of ``task``'s adapter on ``data``."""
        peft = self._require_peft()
        peft.set_adapter(task, inference_mode=True)
        self._freeze()
        peft.eval()
        if self.kind == "classification":
            if data.labels is None:
                raise LifelongError("scoring a classifier needs labels")
            correct = 0
            for start in range(0, len(data), batch_size):
                batch = data.batch(slice(start, start + batch_size), self.device, self.kind)
                logits = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
            return {"metric": "accuracy", "value": correct / len(data), "higher_is_better": True}
        total = count = 0.0
        for start in range(0, len(data), batch_size):
            batch = data.batch(slice(start, start + batch_size), self.device, self.kind)
            logits = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            sums, counts = _token_losses(logits, batch["input_ids"], batch["attention_mask"])
            total += float(sums.sum())
            count += float(counts.sum())
        return {"metric": "loss", "value": total / max(count, 1.0), "higher_is_better": False}

    def evaluate(self, task: str, dataset: Any, *, max_length: int = 128) -> float:
        """``task``'s score on ``dataset`` with its own adapter: accuracy, or mean token loss for a causal LM."""
        data = self.encode(dataset, max_length=max_length)
        self.load(task)
        return float(self._score(task, data)["value"])

    # ---- per-sample adapters and routing ------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, inputs: Any, adapters: str | Sequence[str], *, max_length: int = 128) -> torch.Tensor:
        """Logits with example i through adapter ``adapters[i]``, all in one batch (PEFT ``adapter_names``).

        ``"__base__"`` means the bare base model. Causal LM: ``[N, length, vocab]`` (right-padded).
        """
        data = self.encode(inputs, max_length=max_length, labels=False)
        names = [adapters] * len(data) if isinstance(adapters, str) else list(adapters)
        if len(names) != len(data):
            raise LifelongError(
                f"got {len(names)} adapter names for {len(data)} examples; give one per example"
            )
        for name in set(names) - {"__base__"}:
            self._attach(name, self._meta(name))
        peft = self._require_peft()
        peft.eval()
        batch = data.batch(slice(None), self.device, self.kind)
        return self._mixed_logits(batch["input_ids"], batch["attention_mask"], names)

    def _mixed_logits(self, ids: torch.Tensor, mask: torch.Tensor, names: builtins.list[str]) -> torch.Tensor:
        """One forward pass with a per-sample adapter; one pass per adapter where PEFT cannot mix
        them (DoRA adapters, merged weights), with the same result."""
        peft = self._require_peft()
        # Ask first rather than catch PEFT's refusal: a refused call leaves its forward hooks behind.
        if not any(getattr(peft.peft_config[n], "use_dora", False) for n in set(names) - {"__base__"}):
            logits: torch.Tensor = peft(input_ids=ids, attention_mask=mask, adapter_names=names).logits
            return logits
        active = peft.active_adapters
        parts: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=ids.device)
            if name == "__base__":
                with peft.disable_adapter():
                    parts[name] = peft(input_ids=ids[rows], attention_mask=mask[rows]).logits
            else:
                peft.set_adapter(name, inference_mode=True)
                parts[name] = peft(input_ids=ids[rows], attention_mask=mask[rows]).logits
        peft.set_adapter(active[0], inference_mode=True)
        self._freeze()
        first = next(iter(parts.values()))
        out = first.new_empty((len(names), *first.shape[1:]))
        for name, value in parts.items():
            out[[i for i, n in enumerate(names) if n == name]] = value
        return out

    @torch.no_grad()
    def route(
        self, inputs: Any, tasks: Sequence[str] | None = None, *, batch_size: int = 32, max_length: int = 128
    ) -> RouteResult:
        """For each example, the adapter that explains it best: lowest loss (causal LM) or highest
        confidence (classifier: softmax probability of its best label among the labels it was trained on).

        Every candidate scores every example in one forward pass per chunk: the chunk is repeated once
        per adapter and PEFT's per-sample ``adapter_names`` sends each copy through its adapter.
        ``tasks`` defaults to every trained (not merged) adapter on disk.
        """
        candidates = (
            list(tasks)
            if tasks is not None
            else [i.task for i in self.list() if i.ok and i.kind == "trained"]
        )
        if not candidates:
            raise LifelongError(f"there are no adapters to route between in {self.root}; train some first")
        metas = {task: self._meta(task) for task in candidates}
        data = self.encode(inputs, max_length=max_length, labels=False)
        for task in candidates:
            self._attach(task, metas[task])
        peft = self._require_peft()
        peft.eval()
        own_labels = None
        if self.kind == "classification":
            own_labels = torch.zeros(len(candidates), self._num_labels(), dtype=torch.bool)
            for k, task in enumerate(candidates):
                labels = metas[task].get("labels") or list(range(self._num_labels()))
                own_labels[k, labels] = True
            own_labels = own_labels.to(self.device)
        k = len(candidates)
        chunk = max(1, batch_size // k)
        scores, predictions = [], []
        for start in range(0, len(data), chunk):
            batch = data.batch(slice(start, start + chunk), self.device, self.kind)
            n = len(batch["input_ids"])
            names = [task for task in candidates for _ in range(n)]
            ids = batch["input_ids"].repeat(k, 1)
            mask = batch["attention_mask"].repeat(k, 1)
            logits = self._mixed_logits(ids, mask, names)
            if own_labels is None:
                sums, counts = _token_losses(logits, ids, mask)
                scores.append((sums / counts.clamp(min=1.0)).view(k, n).T)
            else:
                allowed = own_labels.repeat_interleave(n, dim=0)
                probs = logits.float().masked_fill(~allowed, -math.inf).softmax(dim=-1)
                best, label = probs.max(dim=-1)
                scores.append(best.view(k, n).T)
                predictions.append(label.view(k, n).T)
        all_scores = torch.cat(scores).cpu()
        pick = all_scores.argmin(dim=1) if own_labels is None else all_scores.argmax(dim=1)
        rows = torch.arange(len(all_scores))
        return RouteResult(
            tasks=candidates,
            choices=[candidates[int(i)] for i in pick],
            scores=all_scores[rows, pick].tolist(),
            all_scores=all_scores,
            metric="loss" if own_labels is None else "confidence",
            predictions=None if own_labels is None else torch.cat(predictions).cpu()[rows, pick].tolist(),
        )

    # ---- merging --------------------------------------------------------------------------------------

    def merge(
        self,
        tasks: Sequence[str],
        weights: Sequence[float] | None = None,
        method: MergeMethod = "cat",
        name: str | None = None,
        *,
        density: float | None = None,
        svd_rank: int | None = None,
        seed: int = 0,
    ) -> AdapterInfo:
        """A new adapter from a weighted merge of ``tasks`` (PEFT ``add_weighted_adapter``), saved and active.

        ``weights`` default to equal shares (1/n each). ``method``: ``cat`` (default, exact: the weighted
        sum of the updates, see the module docstring), ``linear``, ``svd``, ``ties``, ``dare_ties``,
        ``dare_linear``, ``magnitude_prune``; ``density`` (default 0.5) is the share of values that
        ``ties``/``dare_*``/``magnitude_prune`` keep, ``svd_rank`` the rank ``svd`` keeps (default: the
        largest parent rank). ``seed`` fixes DARE's random drops. Causal-LM adapters only: each
        classifier adapter has its own head, and heads cannot be merged.
        """
        tasks = [check_task_name(t) for t in tasks]
        if method not in MERGE_METHODS:
            raise LifelongError(f"unknown merge method '{method}'; choose one of: {', '.join(MERGE_METHODS)}")
        if not tasks or len(set(tasks)) != len(tasks):
            raise LifelongError(f"merge needs one or more distinct tasks, got {tasks}")
        weights = [1.0 / len(tasks)] * len(tasks) if weights is None else [float(w) for w in weights]
        if len(weights) != len(tasks) or not all(math.isfinite(w) for w in weights):
            raise LifelongError(
                f"merge needs one finite weight per task: {len(tasks)} tasks, weights {weights}"
            )
        if density is not None and not 0.0 < density <= 1.0:
            raise LifelongError(f"density must be in (0, 1], got {density}")
        name = check_task_name(name or f"{'-'.join(tasks)}-{method}"[:64].rstrip("-_"))
        if (self.root / name).exists():
            raise LifelongError(f"an adapter named '{name}' already exists in {self.root}; pass another name")
        if self.kind == "classification":
            raise LifelongError(
                "classifier adapters each carry their own head (modules_to_save), and PEFT cannot merge heads; "
                "merge causal-LM adapters, or use route() to pick a classifier's adapter per example"
            )
        metas = {task: read_meta(adapter_folder(self.root, task)) for task in tasks}
        bases = {t: (m["base"].get("config_hash"), m["base"].get("name")) for t, m in metas.items()}
        if len({h for h, _ in bases.values()}) > 1:
            listed = ", ".join(f"{t} on {n!r} ({h})" for t, (h, n) in bases.items())
            raise LifelongError(f"cannot merge adapters trained on different base models: {listed}")
        for task in tasks:
            self._meta(task)  # also refuses a foreign base or missing files
        ranks = {task: _rank(self._adapter_config(task)) for task in tasks}
        if method in SAME_RANK_METHODS and len(set(ranks.values())) > 1:
            listed = ", ".join(f"{t} r={r}" for t, r in ranks.items())
            raise LifelongError(
                f"method '{method}' combines the LoRA factors themselves and needs equal ranks, got {listed}; "
                "use method='cat' (exact, any ranks) or 'svd'"
            )
        if method in DENSITY_METHODS and density is None:
            density = 0.5
        for task in tasks:
            self._attach(task, metas[task])
        peft = self._require_peft()
        if name in peft.peft_config:
            self._drop(name)  # a stale in-memory copy; add_weighted_adapter would silently keep it
        try:
            with _seeded(seed, self.device), _peft_call():
                peft.add_weighted_adapter(
                    adapters=tasks,
                    weights=weights,
                    adapter_name=name,
                    combination_type=method,
                    svd_rank=svd_rank,
                    svd_full_matrices=False,  # the same leading singular vectors, much cheaper
                    density=density,
                )
            peft.set_adapter(name)
            self._freeze()
            peft.eval()
            meta = self._record(name, cast("LoraConfig", peft.peft_config[name]), kind="merged")
            meta |= {
                "parents": tasks,
                "weights": weights,
                "method": method,
                "density": density,
                "svd_rank": svd_rank,
            }
            self._save(name, meta, overwrite=False)
        except ValueError as err:  # PEFT's own refusals (e.g. target modules of different types)
            self._drop(name)
            raise LifelongError(f"PEFT cannot merge {tasks} with '{method}': {err}") from None
        except BaseException:
            self._drop(name)
            raise
        self._loaded.add(name)
        return self.info(name)

    def _adapter_config(self, task: str) -> dict[str, Any]:
        path = self._folder(task) / CONFIG_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            _rank(config)
        except (OSError, ValueError, KeyError, TypeError):
            raise LifelongError(f"{path} is damaged; retrain the adapter or delete it") from None
        return cast(dict[str, Any], config)

    # ---- export and delete ----------------------------------------------------------------------------

    def merge_and_unload(self, task: str, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """A plain standalone model folder: the base with ``task``'s update folded into its weights.

        Works on a copy, so the library's base stays untouched. The folder (default
        ``root/_exports/<task>``) loads with ``AutoModel...from_pretrained`` and needs no PEFT.
        """
        meta = self._meta(task)
        target = Path(out) if out is not None else self.root / EXPORTS / task
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise LifelongError(
                f"{target} already exists and is not empty; pass overwrite=True or another folder"
            )
        self.load(task)
        peft = self._require_peft()
        clone = copy.deepcopy(peft)
        clone.set_adapter(task)
        with _quiet_warnings():
            merged = clone.merge_and_unload(adapter_names=[task])
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with _quiet_warnings():
                merged.save_pretrained(str(staging), safe_serialization=True)
            if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(str(staging))
            atomic_write_json(
                staging / META_FILE,
                {"format": META_FORMAT, "exported_from": task, "adapter": meta, "created": _now()},
            )
            _fsync_tree(staging)
            _replace_folder(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def delete(self, task: str) -> None:
        """Remove ``task``'s adapter from memory and from disk (a broken one too)."""
        adapter_folder(self.root, task)
        self._drop(task)
        delete_adapter(self.root, task)

    # ---- saving ---------------------------------------------------------------------------------------

    def _record(self, task: str, config: LoraConfig, kind: str) -> dict[str, Any]:
        peft = self._require_peft()
        targets = config.target_modules
        target_list = sorted(targets) if isinstance(targets, set | list | tuple) else [str(targets)]
        return {
            "format": META_FORMAT,
            "task": task,
            "kind": kind,
            "model_kind": self.kind,
            "base": {"name": self.base_name, "config_hash": self.base_hash, "class": self.architecture},
            "lora": {
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                "target_modules": target_list,
                "modules_to_save": sorted(config.modules_to_save or []),
            },
            "parameters": sum(p.numel() for n, p in peft.named_parameters() if f".{task}." in f"{n}."),
            "created": _now(),
            "versions": _versions(),
        }

    def _save(self, task: str, meta: dict[str, Any], *, overwrite: bool) -> None:
        """Write the adapter into a hidden staging folder, then rename it into place in one step."""
        peft = self._require_peft()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{task}-", dir=self.root))
        try:
            with _quiet_warnings():
                peft.save_pretrained(str(staging), selected_adapters=[task])
            # PEFT writes a non-default adapter into a subfolder named after it.
            written = staging / task if (staging / task / CONFIG_FILE).is_file() else staging
            (written / "README.md").unlink(missing_ok=True)
            meta["weights_sha256"] = sha256_file(written / WEIGHTS_FILE)
            atomic_write_json(written / META_FILE, meta)
            _fsync_tree(written)
            target = self.root / task
            if target.exists() and not overwrite:
                raise LifelongError(
                    f"an adapter for task '{task}' appeared in {self.root} meanwhile; nothing was saved"
                )
            _replace_folder(written, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is renamed away first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rows(data: Any) -> Iterator[tuple[str | Sequence[int], int | None]]:
    """(text or token ids, label or None) for every example of any accepted dataset form."""
    if isinstance(data, str):
        yield data, None
        return
    if hasattr(data, "column_names") and hasattr(data, "to_dict"):  # a datasets.Dataset
        data = data.to_dict()
    if isinstance(data, Mapping):
        columns = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
        source = columns.get("input_ids", columns.get("text"))
        if source is None:
            raise LifelongError(f"the dataset has columns {sorted(columns)}; give 'input_ids' or 'text'")
        labels = columns.get("labels", columns.get("label"))
        masks = columns.get("attention_mask")
        for i, item in enumerate(source):
            if masks is not None and not isinstance(item, str):
                item = [t for t, m in zip(item, masks[i], strict=False) if m]
            yield item, (None if labels is None else labels[i])
        return
    if isinstance(data, torch.Tensor):
        data = data.tolist()
    for item in data:
        if isinstance(item, str):
            yield item, None
        elif isinstance(item, Mapping):
            source = item.get("input_ids", item.get("text"))
            if source is None:
                raise LifelongError(f"an example has keys {sorted(item)}; give 'input_ids' or 'text'")
            if isinstance(source, torch.Tensor):
                source = source.tolist()
            label = item.get("labels", item.get("label"))
            yield source, (None if label is None else int(label))
        elif isinstance(item, tuple) and len(item) == 2 and _is_label(item[1]):
            source = item[0].tolist() if isinstance(item[0], torch.Tensor) else item[0]
            yield source, int(item[1])
        elif isinstance(item, Sequence | torch.Tensor):
            yield (item.tolist() if isinstance(item, torch.Tensor) else list(item)), None
        else:
            raise LifelongError(
                f"cannot read an example of type {type(item).__name__}; give text, ids or dicts"
            )


def _is_label(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, torch.Tensor) and value.dim() == 0)


def _token_losses(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of next-token losses, number of predicted tokens)."""
    targets = ids[:, 1:]
    valid = mask[:, 1:].bool()
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    losses = losses.masked_fill(~valid, 0.0)
    return losses.sum(dim=1), valid.sum(dim=1).to(losses.dtype)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for LoRA's initialisation and dropout without disturbing the caller's RNG."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _peft_call() -> Iterator[None]:
    """PEFT 0.21 asks transformers 5 for a deprecated attribute whenever it wraps a model; that
    FutureWarning is theirs to fix and says nothing to a user of the library."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """PEFT's and transformers' warnings and progress bars, which say nothing a user can act on here."""
    import warnings

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
