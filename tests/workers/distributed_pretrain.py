"""Continual pre-training of tiny-llama under a launcher: ``torchrun ... THIS PROSE CODE OUT_DIR``.

Every process trains its share of the batches; only the main one writes the run folder.
"""

from __future__ import annotations

import sys

import torch

from lifelong.distributed import shutdown
from lifelong.llm.pretrain import TrainSettings, continual_pretrain

torch.set_num_threads(1)
prose, code, out = sys.argv[1:4]
continual_pretrain(
    "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2",
    code,
    out,
    replay_corpus=prose,
    replay_ratio=0.2,
    strategies="ewc+lwf",
    settings=TrainSettings(block_size=16, batch_size=4, eval_blocks=4, learning_rate=3e-3, device="cpu"),
)
shutdown()
