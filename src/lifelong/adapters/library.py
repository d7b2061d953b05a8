"""`AdapterLibrary`: the one object users hold; it keeps the PEFT model and hands each job to its module."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from lifelong.adapters import merging, routing, saving, store, training
from lifelong.adapters.base import (
    ModelKind,
    check_kind,
    choose_device,
    folder_tokenizer,
    load_base_model,
    prepare_base,
    read_base_config,
)
from lifelong.adapters.peft_calls import _peft_call, _quiet_warnings, _seeded, freeze
from lifelong.adapters.routing import RouteResult
from lifelong.adapters.store import AdapterInfo
from lifelong.adapters.training import Encoded
from lifelong.errors import LifelongError
from lifelong.models.smollm2 import is_smollm2, smollm2_folder

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel


class AdapterLibrary:
    """Per-task LoRA adapters for one base model, kept in the folder ``root``.

    ``base_model`` is a local model folder (loaded on first use, offline), ``"smollm2-135m"`` or a built
    ``PreTrainedModel``; either a causal LM (``...ForCausalLM``) or a sequence classifier
    (``...ForSequenceClassification``). A model of another class (a bare encoder such as MiniLM's
    ``BertModel``) is loaded as a classifier with ``kind="classification", num_labels=N``.

    The library keeps one PEFT model in memory, the base with every loaded adapter attached; `load`
    switches which adapter is active. PEFT wraps the base in place, so a built model passed in gets
    LoRA layers (inactive unless an adapter is active). The base's own weights never change.

    A base folder loads from safetensors only; ``allow_pickle=True`` also loads one whose weights are
    only pickles (``pytorch_model.bin``), which can run code: pass it only for a folder you trust.
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
        allow_pickle: bool = False,
    ) -> None:
        self.root = Path(root)
        self.allow_pickle = allow_pickle
        if self.root.exists() and not self.root.is_dir():
            raise LifelongError(f"adapter root {self.root} is a file, not a folder; choose another path")
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self._base: PreTrainedModel | None = None
        self._base_path: Path | None = None
        self._peft: PeftModel | None = None
        self._loaded: set[str] = set()
        if isinstance(base_model, str | Path):
            self._base_path = smollm2_folder() if is_smollm2(base_model) else Path(base_model)
            self.config = read_base_config(self._base_path, self.num_labels)
            architecture = (self.config.architectures or ["?"])[0]
            self.base_name = str(base_model)
        else:
            self._base = base_model
            self.config = base_model.config
            architecture = type(base_model).__name__
            self.base_name = str(getattr(self.config, "_name_or_path", "") or architecture)
        self.kind: ModelKind = check_kind(architecture, kind)
        self.architecture = architecture
        self.base_hash = store.config_hash(self.config)
        self.device = choose_device(device, self._base)
        if self._base is not None:
            prepare_base(self._base, self.device)

    # ---- the base model and the PEFT model over it ----------------------------------------------------

    @property
    def base(self) -> PreTrainedModel:
        """The base model, loaded on first use and frozen (with adapters attached once any is loaded)."""
        if self._base is None:
            assert self._base_path is not None
            self._base = load_base_model(self._base_path, self.config, self.kind, self.allow_pickle)
            if self.tokenizer is None:
                self.tokenizer = folder_tokenizer(self._base_path)
            prepare_base(self._base, self.device)
        assert self._base is not None
        return self._base

    @property
    def peft_model(self) -> PeftModel | None:
        """The PEFT model holding every loaded adapter (None until the first adapter is loaded)."""
        return self._peft

    @peft_model.setter
    def peft_model(self, model: PeftModel) -> None:
        """Adopt a PEFT model over this library's base (one trained in your own loop): the library
        then saves, loads and merges through it."""
        self._peft = model

    def _require_peft(self) -> PeftModel:
        if self._peft is None:
            raise LifelongError("no adapter is loaded yet; train one or load one first")
        return self._peft

    def _add_to_peft(self, base: PreTrainedModel, task: str, config: LoraConfig) -> PeftModel:
        """A new adapter ``task``; the first one wraps ``base`` in the PEFT model."""
        with _peft_call():
            if self._peft is None:
                from peft import get_peft_model

                self._peft = get_peft_model(base, config, adapter_name=task)
            else:
                self._peft.add_adapter(task, config)
        return self._peft

    def _drop(self, task: str) -> None:
        """Remove ``task``'s adapter from memory (the PEFT model stays, possibly with no adapter)."""
        self._loaded.discard(task)
        if self._peft is not None and task in self._peft.peft_config:
            with _quiet_warnings():
                self._peft.delete_adapter(task)

    def add(self, task: str, config: LoraConfig, details: Mapping[str, Any] | None = None) -> AdapterInfo:
        """Save the adapter ``task`` of `peft_model`, trained outside `train`, into the library as if
        `train` had written it; ``details`` (data size, scores, how it was trained) join its metadata."""
        meta = self._record(task, config, kind="trained") | dict(details or {})
        saving.save_adapter(self._require_peft(), self.root, task, meta, overwrite=False)
        self._loaded.add(task)
        return self.info(task)

    def _record(self, task: str, config: LoraConfig, kind: str) -> dict[str, Any]:
        base = {"name": self.base_name, "config_hash": self.base_hash, "class": self.architecture}
        return store.adapter_record(
            self._require_peft(), task, config, kind=kind, model_kind=self.kind, base=base
        )

    # ---- listing --------------------------------------------------------------------------------------

    def list(self) -> builtins.list[AdapterInfo]:
        """Every adapter folder under ``root``, by task name; a broken one says why in ``problem``."""
        return store.list_adapters(self.root, self.base_hash, self.base_name)

    def tasks(self) -> builtins.list[str]:
        """Names of the adapters that can be loaded."""
        return [info.task for info in self.list() if info.ok]

    def info(self, task: str) -> AdapterInfo:
        return store.inspect_adapter(self._folder(task), self.base_hash, self.base_name)

    def _folder(self, task: str) -> Path:
        return self.root / store.check_task_name(task)

    def _meta(self, task: str) -> dict[str, Any]:
        """The record of an existing adapter, refusing unknown tasks and adapters of other bases."""
        folder = store.adapter_folder(self.root, task)
        meta = store.read_meta(folder)
        problem = store.adapter_problem(folder, meta, self.base_hash, self.base_name)
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
        freeze(peft)
        peft.eval()
        return peft

    def _attach(self, task: str, meta: dict[str, Any]) -> None:
        """Load ``task``'s weights into the PEFT model once, after checking the file is the one saved."""
        if task in self._loaded:
            return
        folder = self._folder(task)
        store.check_weights(folder, meta)
        config = store.read_lora_config(folder)
        base = self.base
        added = False
        try:
            peft = self._add_to_peft(base, task, config)
            added = True
            result = peft.load_adapter(str(folder), adapter_name=task, is_trainable=False)
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

    # ---- data and training ----------------------------------------------------------------------------

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
        examples = training.read_examples(data)
        if any(isinstance(item, str) for item, _ in examples) and self.tokenizer is None:
            if self._base_path is not None:
                self.tokenizer = folder_tokenizer(self._base_path)
            if self.tokenizer is None:
                raise LifelongError(
                    "the examples are text but there is no tokenizer; save one in the base folder, pass "
                    "AdapterLibrary(..., tokenizer=...), or give input_ids"
                )
        return training.encode_examples(
            examples,
            tokenizer=self.tokenizer,
            config=self.config,
            max_length=max_length,
            need_labels=need_labels,
        )

    def default_lora(self, **overrides: Any) -> LoraConfig:
        """r=16, alpha=32, dropout 0.05 on the architecture's attention projections (see DEFAULT_TARGETS)."""
        return training.default_lora(self.config, self.kind, **overrides)

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
        saving.check_new_adapter(self.root, task, overwrite=overwrite)  # before training, not after
        args = training.training_arguments(training_args)
        data = self.encode(dataset, max_length=args["max_length"])
        held_out = (
            self.encode(eval_dataset, max_length=args["max_length"]) if eval_dataset is not None else None
        )
        config = training.lora_config(lora, self.config, self.kind)
        base = self.base
        if task in self._loaded or (self._peft is not None and task in self._peft.peft_config):
            self._drop(task)  # overwrite: the old adapter stays on disk until the new one replaces it
        with _seeded(int(args["seed"]), self.device):
            try:
                try:
                    peft = self._add_to_peft(base, task, config)
                except ValueError as err:  # e.g. r=0, or target modules this model does not have
                    raise LifelongError(
                        f"PEFT cannot add adapter '{task}' with this LoRA config: {err}"
                    ) from None
                details = training.train_adapter(peft, task, data, held_out, args, self.device, self.kind)
                if self.kind == "causal-lm":
                    embedded = routing.encoded_embeddings(peft, data)
                    details["router"] = routing.fit_signature(embedded).to_json()
                meta = self._record(task, config, kind="trained") | details
                saving.save_adapter(peft, self.root, task, meta, overwrite=overwrite)
            except BaseException:
                self._drop(task)
                raise
        self._loaded.add(task)
        return self.info(task)

    def evaluate(self, task: str, dataset: Any, *, max_length: int = 128) -> float:
        """``task``'s score on ``dataset`` with its own adapter: accuracy, or mean token loss for a causal LM."""
        data = self.encode(dataset, max_length=max_length)
        self.load(task)
        return float(training.score(self._require_peft(), task, data, self.device, self.kind)["value"])

    # ---- per-sample adapters and routing ----------------------------------------------------------------

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
        for name in set(names) - {routing.BASE}:
            self._attach(name, self._meta(name))
        peft = self._require_peft()
        peft.eval()
        batch = data.batch(slice(None), self.device, self.kind)
        return routing.mixed_logits(peft, batch["input_ids"], batch["attention_mask"], names)

    @torch.no_grad()
    def route(
        self,
        inputs: Any,
        tasks: Sequence[str] | None = None,
        *,
        by: Literal["loss", "prompts"] = "loss",
        batch_size: int = 32,
        max_length: int = 128,
    ) -> RouteResult:
        """For each example, the adapter that explains it best.

        ``by="loss"``: every candidate scores every example in one forward pass per chunk (the chunk
        repeated once per adapter, PEFT's per-sample ``adapter_names`` sending each copy through its
        adapter); lowest loss wins (causal LM), or highest confidence (classifier: softmax probability
        of its best label among the labels it was trained on). ``by="prompts"`` (causal LM): where the
        example sits in the bare base's hidden space against where each adapter's training data sat
        (`routing.PromptSignature`, recorded when it was trained); outside every adapter's radius it
        goes to the bare base, ``"__base__"``: a question no adapter was trained for.
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
        if by == "prompts":
            if self.kind != "causal-lm":
                raise LifelongError("routing by prompts is for causal-LM adapters; route classifiers by loss")
            embedded = routing.encoded_embeddings(self._peft or self.base, data, batch_size)
            return routing.route_by_signature(embedded, self.signatures(candidates))
        for task in candidates:
            self._attach(task, metas[task])
        peft = self._require_peft()
        peft.eval()
        own_labels = None
        if self.kind == "classification":
            own_labels = routing.own_label_mask(
                metas, candidates, training.num_labels_of(self.config), self.device
            )
        return routing.route_examples(
            peft, data, candidates, own_labels, batch_size=batch_size, device=self.device, kind=self.kind
        )

    def signature(self, task: str) -> routing.PromptSignature | None:
        """Where ``task``'s training examples sat, as recorded when it was trained (None: not recorded)."""
        value = self._meta(task).get("router")
        return routing.PromptSignature.from_json(value) if value else None

    def signatures(self, tasks: Sequence[str]) -> dict[str, routing.PromptSignature]:
        """Where each adapter's training prompts sit, as recorded when it was trained."""
        return routing.signatures({task: self._meta(task) for task in tasks})

    # ---- merging, export and delete -------------------------------------------------------------------

    def merge(
        self,
        tasks: Sequence[str],
        weights: Sequence[float] | None = None,
        method: merging.MergeMethod = "cat",
        name: str | None = None,
        *,
        density: float | None = None,
        svd_rank: int | None = None,
        seed: int = 0,
    ) -> AdapterInfo:
        """A new adapter from a weighted merge of ``tasks`` (PEFT ``add_weighted_adapter``), saved and active.

        ``weights`` default to equal shares (1/n each). ``method``: ``cat`` (default, exact: the weighted
        sum of the updates, see `lifelong.adapters.merging`), ``linear``, ``svd``, ``ties``, ``dare_ties``,
        ``dare_linear``, ``magnitude_prune``; ``density`` (default 0.5) is the share of values that
        ``ties``/``dare_*``/``magnitude_prune`` keep, ``svd_rank`` the rank ``svd`` keeps (default: the
        largest parent rank). ``seed`` fixes DARE's random drops. Causal-LM adapters only: each
        classifier adapter has its own head, and heads cannot be merged.
        """
        plan = merging.plan_merge(tasks, weights, method, name, density=density, svd_rank=svd_rank)
        metas = merging.merge_parents(self.root, plan, self.kind, self._meta)
        for task in plan.tasks:
            self._attach(task, metas[task])
        peft = self._require_peft()
        if plan.name in peft.peft_config:
            self._drop(plan.name)  # a stale in-memory copy; add_weighted_adapter would silently keep it
        try:
            with _seeded(seed, self.device):
                merging.add_merged_adapter(peft, plan)
            config = cast("LoraConfig", peft.peft_config[plan.name])
            meta = self._record(plan.name, config, kind="merged") | plan.details()
            saving.save_adapter(peft, self.root, plan.name, meta, overwrite=False)
        except ValueError as err:  # PEFT's own refusals (e.g. target modules of different types)
            self._drop(plan.name)
            raise LifelongError(f"PEFT cannot merge {plan.tasks} with '{plan.method}': {err}") from None
        except BaseException:
            self._drop(plan.name)
            raise
        self._loaded.add(plan.name)
        return self.info(plan.name)

    def merge_and_unload(self, task: str, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """A plain standalone model folder: the base with ``task``'s update folded into its weights.

        Works on a copy, so the library's base stays untouched. The folder (default
        ``root/_exports/<task>``) loads with ``AutoModel...from_pretrained`` and needs no PEFT.
        """
        meta = self._meta(task)
        target = Path(out) if out is not None else self.root / store.EXPORTS / task
        saving.check_export_target(target, self.root, self._base_path, overwrite=overwrite)
        self.load(task)
        merging.export_merged(self._require_peft(), task, target, self.tokenizer, meta)
        return target

    def delete(self, task: str) -> None:
        """Remove ``task``'s adapter from memory and from disk (a broken one too)."""
        store.adapter_folder(self.root, task)
        self._drop(task)
        saving.delete_adapter(self.root, task)
