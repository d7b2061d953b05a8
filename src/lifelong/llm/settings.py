"""The settings of `lifelong pretrain` and `lifelong finetune`, each declared once: every field is a flag
of its command (help line and default here), a key of its YAML file (``--config``), and an argument of
the dataclass for Python users (`run_pretrain_config`, `run_finetune_config`).

A default of None on a field means "by model": the from-scratch ``tiny-llama`` demo needs other values
than continuing a real model (a larger learning rate, longer first domain, smaller blocks). They are
resolved in one place, `PretrainConfig.train_settings` / `FinetuneConfig.finetune_settings`, and the
help line names both values. Light on purpose: the command line imports this module to build its
options, so it loads no transformers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from lifelong.core.settings import EPOCHS_MAX, CommonSettings, check_types, setting
from lifelong.errors import LifelongError
from lifelong.llm.finetune_data import FinetuneSettings, tiny_skills_settings
from lifelong.llm.models import is_tiny_llama
from lifelong.llm.training import TrainSettings
from lifelong.models.hf import ALLOW_PICKLE_HELP
from lifelong.runs.settings_file import compositions_from_file

# The from-scratch tiny-llama demo needs a longer first (pretraining) domain and smaller blocks than
# continuing a real model does (its learning rates are resolved in `lifelong.llm.training`).
TINY_DEFAULTS = {"block_size": 64, "batch_size": 16, "first_epochs": 3.0}
MODEL_DEFAULTS = {"block_size": 128, "batch_size": 4}
DEFAULT_STRATEGIES = ["naive", "replay", "lwf", "ewc"]
PRETRAIN_REPLAY_RATIO = 0.2
FINETUNE_REPLAY_RATIO = 0.1


def default_threads(model: str) -> int | None:
    """CPU threads for a run of ``model`` when --threads is not given: 1 for tiny-llama, else the cores
    that other processes leave idle (None: torch's own choice, which follows ``OMP_NUM_THREADS``)."""
    # On a busy CPU, threads of a model as small as tiny-llama mostly wait for each other (40x slower);
    # so do a 135M model's on a 2-core machine that another job keeps busy (5x slower with 2 than 1).
    if is_tiny_llama(model):
        return 1
    return None if os.environ.get("OMP_NUM_THREADS") else idle_cores()


def idle_cores() -> int | None:
    """This process's cores less the system's load over the last minute, at least 1 (None: unknown)."""
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        load = os.getloadavg()[0]
    except OSError:
        return None
    return None if not cores else max(1, min(cores, int(cores - load + 0.5)))


_LR_HELP = "Learning rate (the schedule's peak)."


@dataclass
class _LanguageModelSettings(CommonSettings):
    """What both commands declare alike: how each task trains and where it logs."""

    schedule: str = setting("rewarm-cosine", "LR schedule: rewarm-cosine, infinite or constant.")
    warmup_ratio: float = setting(0.1, "Share of each task's steps spent warming up.")
    grad_accum: int = setting(1, "Gradient accumulation steps.", limits=(None, 10_000))
    report_to: str = setting("none", "Trainer logging integrations: none, tensorboard, wandb, ...")
    tensorboard: bool = setting(
        False, "Also log every task's scores to TensorBoard (RUN/tensorboard).", "--tensorboard"
    )
    eval: list[str] = setting(
        None,
        "A watch set (repeatable), scored whole before the first task and after each, never trained on: "
        "a .jsonl of {prompt, choices, answer} (multiple choice) or --data records, the built-in general, "
        "or none.  \\[default: general for a pretrained chat model, else none]",
        "--eval",
        factory=list,
    )
    allow_pickle: bool = setting(False, ALLOW_PICKLE_HELP, "--allow-pickle")
    precision: str = setting(
        "no", "Mixed precision of training: no, bf16 or fp16 (fp16 on a CUDA GPU only); weights stay float32."
    )

    def _train_fields(self) -> dict[str, Any]:
        """The `TrainSettings` fields these settings give directly, whatever the model."""
        names = ("schedule", "warmup_ratio", "report_to", "seed", "device", "precision")
        return {
            **{name: getattr(self, name) for name in names},
            "gradient_accumulation_steps": self.grad_accum,
        }


@dataclass
class PretrainConfig(_LanguageModelSettings):
    """Everything `lifelong pretrain` needs: continual pre-training over a stream of text domains."""

    model: str = setting(
        "tiny-llama",
        "tiny-llama (built locally; options as 'tiny-llama:layers=4'), smollm2-135m or a local model folder.",
    )
    corpus: list[str] = setting(
        None,
        "One domain of the stream, in order (repeatable): .txt, .jsonl, .parquet, a folder of them, "
        "a saved dataset, or the built-in prose / code.  \\[default: prose, then code]",
        "--corpus",
        "-c",
        factory=lambda: ["prose", "code"],
    )
    strategies: list[str] = setting(
        None,
        "naive, replay, ewc, si, mas or lwf (distill); 'replay+ewc' composes; 'ewc:lambda=100'; repeat to "
        "compare.  \\[default: naive, replay, lwf, ewc]",
        "--strategy",
        "-s",
        factory=lambda: list(DEFAULT_STRATEGIES),
        from_file=compositions_from_file,
    )
    replay_ratio: float | None = setting(
        None, "Share of training tokens replayed from earlier domains, in [0, 1).  \\[default: 0.2]"
    )
    epochs: float = setting(1.0, "Epochs per domain.", limits=(None, EPOCHS_MAX))
    first_epochs: float | None = setting(
        None,
        "Epochs of the first domain.  \\[default: 3 for tiny-llama, else --epochs]",
        limits=(None, EPOCHS_MAX),
    )
    lr: float | None = setting(None, f"{_LR_HELP}  \\[default: 1e-5; 2e-3 for tiny-llama]")
    block_size: int | None = setting(None, "Tokens per training block.  \\[default: 128; 64 for tiny-llama]")
    batch_size: int | None = setting(None, "Blocks per batch.  \\[default: 4; 16 for tiny-llama]")
    eval_blocks: int | None = setting(None, "Held-out blocks per domain for perplexity.  \\[default: all]")
    eval_every: int | None = setting(None, "Log earlier domains' perplexity every N steps while training.")
    stop_ratio: float | None = setting(
        None, "Stop a task once an earlier domain's perplexity exceeds this x its start."
    )
    text_field: str = setting("text", "Text field of .jsonl / .parquet / saved datasets.")
    lines: bool = setting(False, "Each line of a .txt file is one document.", "--lines")

    def validate(self) -> PretrainConfig:
        check_types(self)
        if self.replay_ratio is not None and not any("replay" in s for s in self.strategies):
            raise LifelongError(
                "--replay-ratio sets the ratio of 'replay' in --strategy; add it, e.g. -s replay+ewc"
            )
        self.train_settings().validate()
        return self

    def train_settings(self) -> TrainSettings:
        """How each domain trains, with the model's defaults filled in (the LR stays None: by model)."""
        defaults: dict[str, float] = dict(TINY_DEFAULTS if is_tiny_llama(self.model) else MODEL_DEFAULTS)
        return TrainSettings(
            **self._train_fields(),
            block_size=self.block_size or int(defaults["block_size"]),
            batch_size=self.batch_size or int(defaults["batch_size"]),
            epochs=self.epochs,
            first_epochs=self.first_epochs if self.first_epochs is not None else defaults.get("first_epochs"),
            learning_rate=self.lr,
            eval_blocks=self.eval_blocks,
            eval_every=self.eval_every,
            stop_ratio=self.stop_ratio,
        )

    @property
    def ratio(self) -> float:
        return PRETRAIN_REPLAY_RATIO if self.replay_ratio is None else self.replay_ratio


@dataclass
class FinetuneConfig(_LanguageModelSettings):
    """Everything `lifelong finetune` needs: continual instruction tuning over a stream of tasks."""

    data: list[str] = setting(
        None,
        "One task of the stream, in order (repeatable): a .jsonl file of {prompt, completion}, "
        "{messages}, {prompt, choices, answer} or {text} records, or the built-in skills (three tasks).  \\[default: skills]",
        "--data",
        "-d",
        factory=lambda: ["skills"],
    )
    model: str = setting(
        "tiny-llama", "tiny-llama (built locally), smollm2-135m (a real chat model) or a local model folder."
    )
    replay: list[str] = setting(
        None,
        "Data the model already learned (repeatable .jsonl): replayed by 'replay' and scored.",
        "--replay",
        factory=list,
    )
    replay_ratio: float | None = setting(
        None,
        "Share of training examples replayed (replay, self-replay, lwf:prompts=earlier).  \\[default: 0.1]",
    )
    strategies: list[str] = setting(
        None,
        "naive, replay, self-replay, lwf, ewc; 'replay+lwf' composes; 'self-replay:ratio=0.2'; "
        "'lwf:prompts=earlier' distills on the model's answers to earlier prompts instead; "
        "repeat to compare.  \\[default: replay with --replay, else naive]",
        "--strategy",
        "-s",
        factory=list,
        from_file=compositions_from_file,
    )
    self_replay_prompts: str | None = setting(
        None,
        "JSONL of {prompt} or {messages} records that self-replay (and lwf:prompts=earlier) asks the model.",
    )
    lora: bool = setting(False, "Train a LoRA adapter (base frozen); keep one per task.", "--lora")
    lora_r: int | None = setting(None, "LoRA rank.  \\[default: 16]", limits=(1, 4096))
    merge: bool = setting(False, "With --lora: also merge the task adapters and score the merge.", "--merge")
    metric: str = setting("exact", "exact (exact match), or module:function of (prediction, reference).")
    epochs: float | None = setting(
        None, "Epochs per task.  \\[default: 1; 8 for tiny-llama]", limits=(None, EPOCHS_MAX)
    )
    lr: float | None = setting(None, f"{_LR_HELP}  \\[default: 1e-5; 2e-4 with --lora; 3e-3 for tiny-llama]")
    batch_size: int | None = setting(None, "Examples per batch.  \\[default: 4; 32 for tiny-llama]")
    max_length: int | None = setting(None, "Tokens per example.  \\[default: 256; 64 for tiny-llama]")
    packing: bool = setting(False, "Join examples into equal blocks of --block-size tokens.", "--packing")
    block_size: int = setting(128, "Tokens per packed block.")
    max_new_tokens: int | None = setting(
        None, "Bound on generated answer tokens.  \\[default: 64; 16 for tiny-llama]", limits=(1, 100_000)
    )
    eval_examples: int | None = setting(None, "Held-out examples scored per task.  \\[default: all]")

    def validate(self) -> FinetuneConfig:
        check_types(self)
        replays = any("replay" in s or "prompts=earlier" in s for s in self.strategies)
        if self.replay_ratio is not None and self.strategies and not replays:
            raise LifelongError(
                "--replay-ratio sets the share of 'replay', 'self-replay' or 'lwf:prompts=earlier' "
                "in --strategy; add one, e.g. -s replay"
            )
        if self.lora_r is not None and not self.lora:
            raise LifelongError("--lora-r sets the rank of the LoRA adapters; add --lora")
        self.finetune_settings().validate()
        return self

    def finetune_settings(self) -> FinetuneSettings:
        """How each task trains: the model's defaults, then what was given (the LR may stay None: by model)."""
        base = tiny_skills_settings() if is_tiny_llama(self.model) else FinetuneSettings()
        by_model: dict[str, Any] = {
            "epochs": self.epochs,
            "learning_rate": self.lr,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
        }
        return dataclasses.replace(
            base,
            **{k: v for k, v in by_model.items() if v is not None},
            **self._train_fields(),
            packing=self.packing,
            block_size=self.block_size,
            eval_examples=self.eval_examples,
        )

    @property
    def ratio(self) -> float:
        return FINETUNE_REPLAY_RATIO if self.replay_ratio is None else self.replay_ratio

    @property
    def lora_setting(self) -> bool | dict[str, Any]:
        """What `finetune`'s ``lora=`` takes: True, or the LoRA fields given (the rank)."""
        return {"r": self.lora_r} if self.lora and self.lora_r is not None else self.lora
