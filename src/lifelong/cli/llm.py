"""The language-model commands: ``lifelong pretrain``, ``lifelong finetune`` and ``lifelong perplexity``.

Plain functions with Typer annotations, mounted on the main app in `lifelong.cli.app`. The pretrain and
finetune modules import transformers, datasets and peft when loaded, so the commands import them
when they run: ``lifelong --help`` loads none of those (`tests/test_imports.py`). Perplexity's helpers
are imported when it runs too: the other commands (``lifelong run``) need none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lifelong.cli.options import AllowPickle, TrainingOptions, training_command
from lifelong.cli.startup import TRAINING_MODULES, import_quietly
from lifelong.core.settings import check_count
from lifelong.errors import LifelongError
from lifelong.llm.settings import (
    MODEL_DEFAULTS,
    TINY_DEFAULTS,
    FinetuneConfig,
    PretrainConfig,
    default_threads,
)
from lifelong.report.text import safe_text, terminal
from lifelong.runs.folder import RunFolder

console = terminal()


@training_command(PretrainConfig)
def pretrain(settings: dict[str, Any], options: TrainingOptions) -> None:
    """Continual pre-training of a causal LM over a stream of text domains; prints perplexity and forgetting."""
    import_quietly("lifelong.llm.pretrain")
    from lifelong.llm.pretrain import COMMAND, resume_pretrain, run_pretrain_config

    if options.resume is not None:
        options.refuse_settings(PretrainConfig, settings)
        _prepare(options, _saved_model(options.resume, COMMAND))
        resume_pretrain(options.resume, console=console, progress=options.progress)
        return
    config = options.settings(PretrainConfig, settings)
    _prepare(options, config.model)
    run_pretrain_config(config, console=console, progress=options.progress)


@training_command(FinetuneConfig)
def finetune(settings: dict[str, Any], options: TrainingOptions) -> None:
    """Continual instruction tuning: fine-tune on task after task, score every task after each, compare strategies."""
    import_quietly("lifelong.llm.finetune")
    from lifelong.llm.finetune import COMMAND, resume_finetune, run_finetune_config

    if options.resume is not None:
        options.refuse_settings(FinetuneConfig, settings)
        _prepare(options, _saved_model(options.resume, COMMAND))
        resume_finetune(options.resume, console=console, progress=options.progress)
        return
    config = options.settings(FinetuneConfig, settings)
    _prepare(options, config.model)
    run_finetune_config(config, console=console, progress=options.progress)


def _prepare(options: TrainingOptions, model: str) -> None:
    """Once the settings hold: torch's threads (defaulting by model) and the modules training loads."""
    options.set_threads(default_threads(model))
    import_quietly(*TRAINING_MODULES)


def _saved_model(run_dir: Path, command: str) -> str:
    """The model of the run that --resume continues: its thread count defaults by model."""
    saved = RunFolder.resume(run_dir, command, main=False).saved["settings"]
    return str(saved.get("model", ""))


def perplexity(
    model: Annotated[str, typer.Option(help="A local model folder, tiny-llama or smollm2-135m.")],
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_pickle: AllowPickle = False,
) -> None:
    """Perplexity of a causal LM on each text (lower is better), as a table."""
    import torch

    from lifelong.llm.corpora import load_corpus
    from lifelong.llm.data import pack
    from lifelong.llm.models import (
        check_positions,
        is_tiny_llama,
        load_model,
        resolve_model_folder,
        to_device,
        vocab_size,
    )
    from lifelong.llm.perplexity import from_nll, token_nll

    if split not in ("all", "heldout"):
        raise LifelongError(f"--split is 'all' or 'heldout', got '{split}'")
    if device not in ("auto", "cpu", "cuda"):
        raise LifelongError(f"--device must be auto, cpu or cuda, got '{device}'")
    check_count("--block-size", block_size, low=2)
    check_count("--batch-size", batch_size)
    check_count("--max-blocks", max_blocks)
    defaults = TINY_DEFAULTS if is_tiny_llama(model) else MODEL_DEFAULTS
    size = (
        block_size
        if block_size is not None
        else _trained_block_size(resolve_model_folder(model)) or defaults["block_size"]
    )
    corpora = [
        load_corpus(d, text_field=text_field, one_doc_per_line=lines) for d in data or ["prose", "code"]
    ]
    loaded, tokenizer = load_model(model, allow_pickle=allow_pickle)
    check_positions(loaded, int(size), "--block-size")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise LifelongError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    to_device(loaded, "cuda" if use_cuda else "cpu")
    vocab = vocab_size(loaded)
    table = Table(title=f"perplexity of {safe_text(model)} (lower is better)")
    for column in ("text", "source", "blocks", "tokens", "perplexity"):
        table.add_column(column, justify="left" if column in ("text", "source") else "right")
    for corpus in corpora:
        packed = pack(corpus, tokenizer, int(size), vocab)
        blocks = packed.heldout if split == "heldout" else torch.cat([packed.train, packed.heldout])
        if max_blocks is not None:
            blocks = blocks[:max_blocks]
        total, count = token_nll(loaded, blocks, batch_size)
        table.add_row(
            safe_text(corpus.name),
            safe_text(corpus.origin),
            str(len(blocks)),
            f"{count:,}",
            f"{from_nll(total, count):.2f}",
        )
    console.print(table)


def _trained_block_size(folder: Path) -> int | None:
    """The block size a `lifelong pretrain` checkpoint was trained with (saved in its perplexity.json)."""
    try:
        value = json.loads((folder / "perplexity.json").read_text(encoding="utf-8")).get("block_size")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 1 else None
