"""The causal-LM side: text data and packing, `ContinualTrainer`, continual pre-training, continual
instruction tuning (`finetune`), perplexity.

Needs the ``llm`` extra (``pip install 'lifelong[llm]'``: transformers, datasets, peft, accelerate,
tokenizers)::

    from lifelong.llm import ContinualTrainer, continual_pretrain, load_model, perplexities

    result = continual_pretrain("tiny-llama", "code", "runs/cpt", replay_corpus="prose", replay_ratio=0.2)
    print(result.before, result.after)   # perplexity per domain

    from lifelong.llm import finetune, resume_finetune
    finetune("tiny-llama", "skills", "runs/skills", strategies=["naive", "replay", "lwf", "self-replay"])
    resume_finetune("runs/skills")       # after a crash: continues after the last complete tasks

Names are imported on first use, so ``import lifelong.llm.data`` does not pull in transformers. The
single-corpus ``perplexity`` function lives in `lifelong.llm.perplexity` (the module's name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifelong.core.exports import lazy_getattr

if TYPE_CHECKING:
    from lifelong.llm.callbacks import ForgettingCallback
    from lifelong.llm.corpora import Corpus, builtin_corpus, load_corpus
    from lifelong.llm.data import CausalCollator, PackedCorpus, mix_by_token_share, pack
    from lifelong.llm.finetune import finetune, resume_finetune, run_finetune_config
    from lifelong.llm.finetune_data import FinetuneSettings
    from lifelong.llm.fisher import causal_lm_fisher
    from lifelong.llm.models import build_tiny_llama, load_model
    from lifelong.llm.perplexity import perplexities
    from lifelong.llm.pretrain import resume_pretrain, run_pretrain, run_pretrain_config
    from lifelong.llm.pretrain_task import TaskResult, continual_pretrain
    from lifelong.llm.schedules import lr_lambda, make_scheduler
    from lifelong.llm.settings import FinetuneConfig, PretrainConfig
    from lifelong.llm.trainer import ContinualTrainer
    from lifelong.llm.training import TrainSettings

_WHERE = {
    "ForgettingCallback": "callbacks",
    "CausalCollator": "data",
    "Corpus": "corpora",
    "PackedCorpus": "data",
    "builtin_corpus": "corpora",
    "load_corpus": "corpora",
    "mix_by_token_share": "data",
    "pack": "data",
    "FinetuneSettings": "finetune_data",
    "finetune": "finetune",
    "resume_finetune": "finetune",
    "run_finetune_config": "finetune",
    "FinetuneConfig": "settings",
    "PretrainConfig": "settings",
    "build_tiny_llama": "models",
    "load_model": "models",
    "perplexities": "perplexity",
    "TaskResult": "pretrain_task",
    "TrainSettings": "training",
    "continual_pretrain": "pretrain_task",
    "resume_pretrain": "pretrain",
    "run_pretrain": "pretrain",
    "run_pretrain_config": "pretrain",
    "lr_lambda": "schedules",
    "make_scheduler": "schedules",
    "ContinualTrainer": "trainer",
    "causal_lm_fisher": "fisher",
}

__all__ = [
    "CausalCollator",
    "ContinualTrainer",
    "Corpus",
    "FinetuneConfig",
    "FinetuneSettings",
    "ForgettingCallback",
    "PackedCorpus",
    "PretrainConfig",
    "TaskResult",
    "TrainSettings",
    "build_tiny_llama",
    "builtin_corpus",
    "causal_lm_fisher",
    "continual_pretrain",
    "finetune",
    "load_corpus",
    "load_model",
    "lr_lambda",
    "make_scheduler",
    "mix_by_token_share",
    "pack",
    "perplexities",
    "resume_finetune",
    "resume_pretrain",
    "run_finetune_config",
    "run_pretrain",
    "run_pretrain_config",
]


__getattr__ = lazy_getattr(__name__, {name: f"lifelong.llm.{module}" for name, module in _WHERE.items()})
