"""The language-model commands: ``lifelong pretrain``, ``lifelong finetune`` and ``lifelong perplexity``.

Plain functions with Typer annotations, mounted on the main app in `lifelong.cli.app`. Heavy imports
(transformers, datasets) happen inside them, so ``lifelong --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lifelong.errors import LifelongError
from lifelong.llm.models import is_tiny_llama
from lifelong.runs.folder import RunFolder

console = Console()

# The from-scratch tiny-llama demo needs a larger LR, and a longer first (pretraining) domain, than
# continuing a real model does; these apply only when --model is tiny-llama.
TINY_DEFAULTS = {"block_size": 64, "batch_size": 16, "first_epochs": 3.0}
MODEL_DEFAULTS = {"block_size": 128, "batch_size": 4}
DEFAULT_STRATEGIES = ["naive", "replay", "lwf", "ewc"]


# Options the LLM commands share.
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Reuse a folder with a finished run.")]
Schedule = Annotated[str, typer.Option(help="LR schedule: rewarm-cosine, infinite or constant.")]
WarmupRatio = Annotated[float, typer.Option(help="Share of each task's steps spent warming up.")]
GradAccum = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
ReportTo = Annotated[str, typer.Option(help="Trainer logging integrations: none, tensorboard, wandb, ...")]
Seed = Annotated[int, typer.Option(help="Seed for weights, data order and sampling.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Tensorboard = Annotated[
    bool, typer.Option("--tensorboard", help="Also log every task's scores to TensorBoard (RUN/tensorboard).")
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue the unfinished run in this folder after its last complete task."),
]


def refuse_settings_with_resume(ctx: typer.Context, allowed: set[str]) -> None:
    """A resumed run keeps the settings in its run.json: a settings flag given with --resume is refused."""

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)  # by name: Typer brings its own copy of click's enum
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    flags = [p.opts[0] for p in ctx.command.params if p.name not in allowed and given(p.name or "")]
    if flags:
        raise LifelongError(f"--resume continues a run with its own saved settings; drop {', '.join(flags)}")


def pretrain(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help="tiny-llama (built locally; 'tiny-llama:hidden=192,layers=4') or a local model folder."
        ),
    ] = "tiny-llama",
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            "--corpus",
            "-c",
            help="One domain of the stream, in order (repeatable): .txt, .jsonl, .parquet, a folder of them, "
            "a saved dataset, or the built-in prose / code.  \\[default: prose, then code]",
        ),
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="naive, replay, ewc or lwf (distill); 'replay+ewc' composes; 'ewc:lambda=100'; repeat to "
            "compare.  \\[default: naive, replay, lwf, ewc]",
        ),
    ] = None,
    replay_ratio: Annotated[
        float | None,
        typer.Option(
            help="Share of training tokens replayed from earlier domains, in [0, 1).  \\[default: 0.2]"
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run folder.  \\[default: runs/pretrain-<time>]")] = None,
    overwrite: Overwrite = False,
    epochs: Annotated[float, typer.Option(help="Epochs per domain.")] = 1.0,
    first_epochs: Annotated[
        float | None,
        typer.Option(help="Epochs of the first domain.  \\[default: 3 for tiny-llama, else --epochs]"),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Max learning rate.  \\[default: 1e-5; 2e-3 for tiny-llama]")
    ] = None,
    schedule: Schedule = "rewarm-cosine",
    warmup_ratio: WarmupRatio = 0.1,
    block_size: Annotated[
        int | None, typer.Option(help="Tokens per training block.  \\[default: 128; 64 for tiny-llama]")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Blocks per batch.  \\[default: 4; 16 for tiny-llama]")
    ] = None,
    grad_accum: GradAccum = 1,
    eval_blocks: Annotated[
        int | None, typer.Option(help="Held-out blocks per domain for perplexity.  \\[default: all]")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Log earlier domains' perplexity every N steps while training.")
    ] = None,
    stop_ratio: Annotated[
        float | None,
        typer.Option(help="Stop a task once an earlier domain's perplexity exceeds this x its start."),
    ] = None,
    report_to: ReportTo = "none",
    text_field: Annotated[
        str, typer.Option(help="Text field of .jsonl / .parquet / saved datasets.")
    ] = "text",
    lines: Annotated[bool, typer.Option("--lines", help="Each line of a .txt file is one document.")] = False,
    seed: Seed = 0,
    device: Device = "auto",
    tensorboard: Tensorboard = False,
    resume: Resume = None,
) -> None:
    """Continual pre-training of a causal LM over a stream of text domains; prints perplexity and forgetting."""
    from datetime import datetime

    from lifelong.llm.pretrain import TrainSettings, resume_pretrain, run_pretrain

    if resume is not None:
        refuse_settings_with_resume(ctx, {"resume"})
        resume_pretrain(resume, console=console)
        return
    if replay_ratio is not None and strategy and not any("replay" in s for s in strategy):
        raise LifelongError(
            "--replay-ratio sets the ratio of 'replay' in --strategy; add it, e.g. -s replay+ewc"
        )
    tiny = is_tiny_llama(model)
    defaults: dict[str, float] = dict(TINY_DEFAULTS if tiny else MODEL_DEFAULTS)
    settings = TrainSettings(
        block_size=block_size or int(defaults["block_size"]),
        batch_size=batch_size or int(defaults["batch_size"]),
        epochs=epochs,
        first_epochs=first_epochs if first_epochs is not None else defaults.get("first_epochs"),
        learning_rate=lr,  # None: 1e-5, or 2e-3 for tiny-llama (TrainSettings resolves it per model)
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        gradient_accumulation_steps=grad_accum,
        seed=seed,
        device=device,
        eval_blocks=eval_blocks,
        eval_every=eval_every,
        stop_ratio=stop_ratio,
        report_to=report_to,
    )
    run_pretrain(
        model=model,
        corpora=corpus or ["prose", "code"],
        compositions=strategy or DEFAULT_STRATEGIES,
        out=out or f"runs/pretrain-{datetime.now():%Y%m%d-%H%M%S}",
        replay_ratio=0.2 if replay_ratio is None else replay_ratio,
        settings=settings,
        overwrite=overwrite,
        console=console,
        text_field=text_field,
        one_doc_per_line=lines,
        tensorboard=tensorboard,
    )


def perplexity(
    model: Annotated[str, typer.Option(help="A local model folder (or tiny-llama).")],
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Text to score (repeatable): .txt, .jsonl, .parquet, a folder, a saved dataset, or prose / code.  "
            "[default: prose, code]",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(help="all blocks, or heldout: the tenth `lifelong pretrain` scores (never trained on)."),
    ] = "all",
    block_size: Annotated[
        int | None,
        typer.Option(help="Tokens per block.  \\[default: the checkpoint's training block size, else 128]"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Blocks per forward pass.")] = 16,
    max_blocks: Annotated[int | None, typer.Option(help="Score at most this many blocks per text.")] = None,
    text_field: Annotated[
        str, typer.Option(help="Text field of .jsonl / .parquet / saved datasets.")
    ] = "text",
    lines: Annotated[bool, typer.Option("--lines", help="Each line of a .txt file is one document.")] = False,
    device: Device = "auto",
) -> None:
    """Perplexity of a causal LM on each text (lower is better), as a table."""
    import torch

    from lifelong.llm.corpora import load_corpus
    from lifelong.llm.data import pack
    from lifelong.llm.models import load_model, resolve_model_folder, to_device, vocab_size
    from lifelong.llm.perplexity import from_nll, token_nll

    if split not in ("all", "heldout"):
        raise LifelongError(f"--split is 'all' or 'heldout', got '{split}'")
    if device not in ("auto", "cpu", "cuda"):
        raise LifelongError(f"--device must be auto, cpu or cuda, got '{device}'")
    defaults = TINY_DEFAULTS if is_tiny_llama(model) else MODEL_DEFAULTS
    size = block_size or _trained_block_size(resolve_model_folder(model)) or defaults["block_size"]
    corpora = [
        load_corpus(d, text_field=text_field, one_doc_per_line=lines) for d in data or ["prose", "code"]
    ]
    loaded, tokenizer = load_model(model)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise LifelongError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    to_device(loaded, "cuda" if use_cuda else "cpu")
    vocab = vocab_size(loaded)
    table = Table(title=f"perplexity of {model} (lower is better)")
    for column in ("text", "source", "blocks", "tokens", "perplexity"):
        table.add_column(column, justify="left" if column in ("text", "source") else "right")
    for corpus in corpora:
        packed = pack(corpus, tokenizer, int(size), vocab)
        blocks = packed.heldout if split == "heldout" else torch.cat([packed.train, packed.heldout])
        if max_blocks is not None:
            blocks = blocks[:max_blocks]
        total, count = token_nll(loaded, blocks, batch_size)
        table.add_row(
            corpus.name, corpus.origin, str(len(blocks)), f"{count:,}", f"{from_nll(total, count):.2f}"
        )
    console.print(table)


def _trained_block_size(folder: Path) -> int | None:
    """The block size a `lifelong pretrain` checkpoint was trained with (saved in its perplexity.json)."""
    try:
        value = json.loads((folder / "perplexity.json").read_text(encoding="utf-8")).get("block_size")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 1 else None


def finetune(
    ctx: typer.Context,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="One task of the stream, in order (repeatable): a .jsonl file of {prompt, completion}, "
            "{messages} or {text} records, or the built-in skills (three tasks).  \\[default: skills]",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="tiny-llama (built locally) or a local model folder (model + tokenizer).")
    ] = "tiny-llama",
    replay: Annotated[
        list[str] | None,
        typer.Option(
            "--replay",
            help="Data the model already learned (repeatable .jsonl): replayed by 'replay' and scored.",
        ),
    ] = None,
    replay_ratio: Annotated[
        float | None,
        typer.Option(
            help="Share of training examples replayed (replay, self-replay, lwf:prompts=earlier).  \\[default: 0.1]"
        ),
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help="naive, replay, self-replay, lwf, ewc; 'replay+lwf' composes; 'self-replay:ratio=0.2'; "
            "'lwf:prompts=earlier' distills on the model's answers to earlier prompts instead; "
            "repeat to compare.  \\[default: replay with --replay, else naive]",
        ),
    ] = None,
    self_replay_prompts: Annotated[
        str | None,
        typer.Option(
            help="JSONL of {prompt} or {messages} records that self-replay (and lwf:prompts=earlier) asks the model."
        ),
    ] = None,
    lora: Annotated[
        bool, typer.Option("--lora", help="Train a LoRA adapter (base frozen); keep one per task.")
    ] = False,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.  \\[default: 16]")] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="With --lora: also merge the task adapters and score the merge.")
    ] = False,
    metric: Annotated[
        str, typer.Option(help="exact (exact match), or module:function of (prediction, reference).")
    ] = "exact",
    out: Annotated[str | None, typer.Option(help="Run folder.  \\[default: runs/finetune-<time>]")] = None,
    overwrite: Overwrite = False,
    epochs: Annotated[
        float | None, typer.Option(help="Epochs per task.  \\[default: 1; 8 for tiny-llama]")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Max learning rate.  \\[default: 1e-5; 2e-4 with --lora; 3e-3 for tiny-llama]"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Examples per batch.  \\[default: 4; 32 for tiny-llama]")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per example.  \\[default: 256; 64 for tiny-llama]")
    ] = None,
    packing: Annotated[
        bool, typer.Option("--packing", help="Join examples into equal blocks of --block-size tokens.")
    ] = False,
    block_size: Annotated[int, typer.Option(help="Tokens per packed block.")] = 128,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Bound on generated answer tokens.  \\[default: 64; 16 for tiny-llama]")
    ] = None,
    eval_examples: Annotated[
        int | None, typer.Option(help="Held-out examples scored per task.  \\[default: all]")
    ] = None,
    schedule: Schedule = "rewarm-cosine",
    warmup_ratio: WarmupRatio = 0.1,
    grad_accum: GradAccum = 1,
    report_to: ReportTo = "none",
    seed: Seed = 0,
    device: Device = "auto",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads.  \\[default: torch's; 1 for tiny-llama, fastest for it]"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while a task trains.")] = True,
    tensorboard: Tensorboard = False,
    resume: Resume = None,
) -> None:
    """Continual instruction tuning: fine-tune on task after task, score every task after each, compare strategies."""
    from dataclasses import replace
    from datetime import datetime

    from lifelong.llm.finetune import FinetuneSettings, finetune, resume_finetune, tiny_skills_settings

    if resume is not None:
        refuse_settings_with_resume(ctx, {"resume", "threads", "progress"})
        model = str(RunFolder.resume(resume, "finetune", main=False).saved["settings"].get("model", model))
        _set_threads(threads, model)
        resume_finetune(resume, console=console, progress=progress)
        return
    if (
        replay_ratio is not None
        and strategy
        and not any("replay" in s or "prompts=earlier" in s for s in strategy)
    ):
        raise LifelongError(
            "--replay-ratio sets the share of 'replay', 'self-replay' or 'lwf:prompts=earlier' in --strategy; "
            "add one, e.g. -s replay"
        )
    if lora_r is not None and not lora:
        raise LifelongError("--lora-r sets the rank of the LoRA adapters; add --lora")
    _set_threads(threads, model)
    base = tiny_skills_settings() if is_tiny_llama(model) else FinetuneSettings()
    given: dict[str, Any] = {
        "epochs": epochs,
        "learning_rate": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "max_new_tokens": max_new_tokens,
    }
    settings = replace(
        base,
        **{k: v for k, v in given.items() if v is not None},
        packing=packing,
        block_size=block_size,
        eval_examples=eval_examples,
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        gradient_accumulation_steps=grad_accum,
        report_to=report_to,
        seed=seed,
        device=device,
    )
    finetune(
        model,
        data or ["skills"],
        out or f"runs/finetune-{datetime.now():%Y%m%d-%H%M%S}",
        strategies=strategy,
        replay=replay,
        replay_ratio=0.1 if replay_ratio is None else replay_ratio,
        self_replay_prompts=self_replay_prompts,
        lora={"r": lora_r} if lora and lora_r is not None else lora,
        merge=merge,
        metric=metric,
        settings=settings,
        overwrite=overwrite,
        console=console,
        progress=progress,
        tensorboard=tensorboard,
    )


def _set_threads(threads: int | None, model: str) -> None:
    if threads is None and is_tiny_llama(model):
        threads = 1  # on a busy CPU, threads of a model this small mostly wait for each other (40x slower)
    if threads is not None:
        if threads < 1:
            raise LifelongError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
