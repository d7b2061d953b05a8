"""Continual pre-training of tiny-llama under a launcher: ``torchrun ... THIS PROSE CODE OUT_DIR``.

Every process trains its share of the batches; only the main one writes the run folder. Then the
processes split a perplexity evaluation (5 blocks in batches of 2: shares of 2 and 1 batches), and
the main one writes the summed NLL beside the NLL it computes alone in ``OUT_DIR/nll.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from lifelong.core.distributed import all_reduce_sum, group_rank, is_main_process, shutdown
from lifelong.llm.perplexity import token_nll
from lifelong.llm.pretrain import TrainSettings, continual_pretrain


def main() -> None:
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

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).eval()
    blocks = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(0))
    forwards = torch.zeros(2)
    hook = model.register_forward_hook(
        lambda *_: forwards.__setitem__(group_rank(), forwards[group_rank()] + 1)
    )
    shared = token_nll(model, blocks, batch_size=2)
    hook.remove()
    all_reduce_sum(forwards)  # the batches each process ran
    if is_main_process():
        with torch.no_grad():
            logits = model(input_ids=blocks).logits[:, :-1]
            alone = F.cross_entropy(logits.reshape(-1, 64), blocks[:, 1:].reshape(-1), reduction="sum")
        Path(out, "nll.json").write_text(
            json.dumps(
                {
                    "shared": shared,
                    "alone": [float(alone), blocks[:, 1:].numel()],
                    "forwards": forwards.tolist(),
                }
            )
        )


main()  # its objects are gone before the process group closes
shutdown()
