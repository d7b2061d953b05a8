"""ContinualTrainer: its loss against hand-computed ones, the LLM Fisher, PEFT, the callback, schedules."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from tiny_llama import tiny_llama, training_args
from transformers import LlamaForCausalLM, Trainer, TrainerCallback

from lifelong.errors import LifelongError
from lifelong.llm.batches import PaddingCollator, examples_dataset
from lifelong.llm.callbacks import ForgettingCallback
from lifelong.llm.data import CausalCollator, blocks_dataset
from lifelong.llm.fisher import causal_lm_fisher, sequence_importance
from lifelong.llm.instruct import DISTILL_MASK, Example
from lifelong.llm.schedules import lr_lambda
from lifelong.llm.trainer import ContinualTrainer
from lifelong.strategies import EWC, LwF
from lifelong.strategies.ewc import lm_nll
from lifelong.strategies.teacher import FrozenTeacher

VOCAB = 64


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, 16, seed)


def blocks(n: int = 16, length: int = 12, seed: int = 0, high: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, high, (n, length), generator=torch.Generator().manual_seed(seed))


def trainer_for(model: Any, tmp_path: Path, data: torch.Tensor, **kwargs: Any) -> ContinualTrainer:
    training = kwargs.pop("training_args", None) or training_args(tmp_path)
    return ContinualTrainer(
        model=model,
        args=training,
        train_dataset=blocks_dataset(data),
        data_collator=CausalCollator(),
        **kwargs,
    )


# ---- the loss -----------------------------------------------------------------------------------------


def test_without_penalties_the_loss_is_the_plain_trainers(tmp_path: Path) -> None:
    data = blocks()
    batch = CausalCollator()([{"input_ids": row.tolist()} for row in data[:4]])
    model = tiny_model()
    ours = trainer_for(model, tmp_path, data).compute_loss(model, dict(batch))
    plain = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=blocks_dataset(data),
        data_collator=CausalCollator(),
    ).compute_loss(model, dict(batch))
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(plain))


def test_distillation_is_the_seeds_mix_over_labelled_positions_only(tmp_path: Path) -> None:
    model, old = tiny_model(0), tiny_model(1)
    lwf = LwF(alpha=0.3, temperature=2.0)
    trainer = trainer_for(model, tmp_path, blocks(), strategies=[lwf])
    trainer.before_task()
    lwf.lm_teacher = FrozenTeacher(old)  # a teacher that differs, so the KL is not zero
    ids = blocks(2, 10, seed=5)
    labels = ids.clone()
    labels[0, :6] = -100  # e.g. a prompt: no loss there, no distillation there
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": labels})

    logits = model(input_ids=ids).logits[:, :-1]
    teacher = old(input_ids=ids).logits[:, :-1]
    keep = labels[:, 1:] != -100
    ce = F.cross_entropy(logits[keep], labels[:, 1:][keep])
    p = F.log_softmax(teacher[keep] / 2, -1)
    q = F.log_softmax(logits[keep] / 2, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean()  # per token, only where labelled
    expected = 0.7 * ce + 0.3 * 4 * kl
    assert float(torch.as_tensor(loss).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_soft_rows_are_learned_by_distillation_alone(tmp_path: Path) -> None:
    """A soft row has no label: the LM loss skips it, the KL covers its marked positions, and the
    two are weighed alpha : 1 - alpha at the LM loss's full scale."""
    model, old = tiny_model(0), tiny_model(1)
    lwf = LwF(alpha=0.3, temperature=2.0)
    trainer = trainer_for(model, tmp_path, blocks(), strategies=[lwf])
    trainer.before_task()
    lwf.lm_teacher = FrozenTeacher(old)
    ids = blocks(2, 10, seed=6)
    labels = ids.clone()
    labels[0, :6] = -100
    labels[1] = -100  # the soft row
    distill = labels != -100
    distill[1, 4:] = True  # its answer positions
    items = int((labels[:, 1:] != -100).sum())
    loss = trainer.compute_loss(
        model, {"input_ids": ids, "labels": labels, "distill_mask": distill}, num_items_in_batch=items
    )

    logits, teacher = model(input_ids=ids).logits[:, :-1], old(input_ids=ids).logits[:, :-1]
    labelled, distilled = labels[:, 1:] != -100, distill[:, 1:]
    ce_sum = F.cross_entropy(logits[labelled], labels[:, 1:][labelled], reduction="sum")
    p = F.log_softmax(teacher[distilled] / 2, -1)
    q = F.log_softmax(logits[distilled] / 2, -1)
    kl_sum = (p.exp() * (p - q)).sum()
    expected = (ce_sum + 0.3 / 0.7 * 4 * kl_sum) / items  # plain fine-tuning's scale, the seed's ratio
    assert float(torch.as_tensor(loss).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)

    # The teacher runs only on rows with something to distill: the labelled row is left to its labels.
    seen: list[int] = []
    teacher_copy = lwf.lm_teacher.copy
    assert teacher_copy is not None

    def note_rows(_module: Any, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        seen.append(kwargs["input_ids"].shape[0])

    hook = teacher_copy.register_forward_hook(note_rows, with_kwargs=True)
    undistilled = distill.clone()
    undistilled[0] = False
    trainer.compute_loss(
        model, {"input_ids": ids, "labels": labels, "distill_mask": undistilled}, num_items_in_batch=items
    )
    hook.remove()
    assert seen == [1]

    # A micro-batch of soft rows alone: a finite loss, from the KL only.
    only_soft = trainer.compute_loss(
        model,
        {"input_ids": ids[1:], "labels": labels[1:], "distill_mask": distill[1:]},
        num_items_in_batch=0,
    )
    value = float(torch.as_tensor(only_soft).detach())
    assert math.isfinite(value) and value > 0


def test_the_distill_mask_column_survives_the_trainers_column_filter(tmp_path: Path) -> None:
    """The Trainer drops dataset columns the model's forward does not take; the mask must reach the loss."""
    examples = [
        Example([1, 2, 3, 4], [-100, -100, 3, 4]),
        Example([1, 2, 5, 6], [-100, -100, 5, 6], soft=True),
    ]
    trainer = ContinualTrainer(
        model=tiny_model(),
        args=training_args(tmp_path),
        train_dataset=examples_dataset(examples),
        data_collator=PaddingCollator(0),
        strategies=[LwF()],
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch[DISTILL_MASK].sum(dim=1).tolist()) == [2, 2]  # both answers, soft or not


def test_soft_rows_without_a_teacher_are_refused(tmp_path: Path) -> None:
    model = tiny_model()
    ids = blocks(1, 8)
    with pytest.raises(LifelongError, match="add lwf"):
        trainer_for(model, tmp_path, blocks()).compute_loss(
            model, {"input_ids": ids, "labels": torch.full_like(ids, -100), "distill_mask": ids > -1}
        )


def test_distillation_against_itself_is_zero() -> None:
    logits = torch.randn(2, 5, VOCAB)
    kd, count = LwF.token_distillation(logits, logits.clone(), torch.ones(2, 5, dtype=torch.bool), 2.0)
    assert count == 8 and float(kd) == pytest.approx(0.0, abs=1e-6)


def test_penalties_do_not_depend_on_how_the_batch_is_accumulated(tmp_path: Path) -> None:
    """One step at batch 4 equals one step of 2 x 2 accumulated: LM loss, KL and EWC scale alike."""
    data = blocks(8)
    results = []
    for batch, accumulate in ((4, 1), (2, 2)):
        model = tiny_model()
        ewc = EWC(lambda_ewc=50.0)
        ewc.model = model
        ewc.consolidate({n: torch.full_like(p, 0.5) for n, p in model.named_parameters()})
        with torch.no_grad():  # move away from the anchor so the EWC pull is not zero
            for p in model.parameters():
                p.add_(0.01)
        training = training_args(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulate,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            max_grad_norm=0.0,
        )
        lwf = LwF(alpha=0.5)
        trainer = trainer_for(model, tmp_path, data, strategies=[ewc, lwf], training_args=training)
        trainer.before_task()
        lwf.lm_teacher = FrozenTeacher(tiny_model(3))
        setattr(trainer, "before_task", lambda: None)  # noqa: B010  # keep the differing teacher
        trainer.train()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_strategies_without_a_causal_lm_form_are_refused(tmp_path: Path) -> None:
    for spec, expected in (
        ("replay", "token-share data mixing"),
        ("agem", "no causal-LM form"),
        ("ewc:fisher=exact", "fisher=empirical or fisher=sampled"),
    ):
        with pytest.raises(LifelongError, match=expected):
            trainer_for(tiny_model(), tmp_path, blocks(), strategies=spec)


# ---- EWC ----------------------------------------------------------------------------------------------


def test_fisher_is_a_mean_of_per_sequence_squared_gradients() -> None:
    model, data = tiny_model(), blocks(3, 8)
    fisher = causal_lm_fisher(model, data, "empirical", samples=None)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row in data:
        model.zero_grad()
        logits = model(input_ids=row[None]).logits[0, :-1]
        F.cross_entropy(logits, row[1:]).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            expected[n] += p.grad.square() / 3
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-10), n
    sampled = causal_lm_fisher(model, data, "sampled", samples=2, seed=1)
    assert sampled.keys() == fisher.keys() and not torch.allclose(
        sampled["lm_head.weight"], fisher["lm_head.weight"]
    )


def test_a_sampled_fisher_draws_alike_however_many_sequences_a_pass_takes() -> None:
    """Batched passes meet the sequences in the loop's order: the same tokens are drawn."""
    model, data = tiny_model(), blocks(5, 8)
    one = sequence_importance(model, data, lm_nll("sampled"), samples=None, seed=3, chunk_tokens=1)
    many = sequence_importance(model, data, lm_nll("sampled"), samples=None, seed=3, chunk_tokens=16)
    for name in one:
        assert torch.allclose(one[name], many[name], rtol=1e-4, atol=1e-10), name


def test_fisher_of_instruction_data_counts_only_answer_positions() -> None:
    """With labels, the Fisher is of the loss training uses; a row with no answer is skipped."""
    from datasets import Dataset

    model, data = tiny_model(), blocks(3, 8)
    labels = data.clone()
    labels[:, :5] = -100  # prompts
    labels[2] = -100  # a row with nothing to learn
    dataset = Dataset.from_dict({"input_ids": data.numpy(), "labels": labels.numpy()})
    fisher = causal_lm_fisher(model, dataset, "empirical", samples=None)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row, target in zip(data[:2], labels[:2], strict=True):
        model.zero_grad()
        logits = model(input_ids=row[None]).logits[0, :-1]
        F.cross_entropy(logits, target[1:]).backward()  # -100 is skipped
        for n, p in model.named_parameters():
            assert p.grad is not None
            expected[n] += p.grad.square() / 2
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], rtol=1e-4, atol=1e-10), n
    nothing = Dataset.from_dict({"input_ids": data[2:].numpy(), "labels": labels[2:].numpy()})
    with pytest.raises(LifelongError, match="no position with a label"):
        causal_lm_fisher(model, nothing, "sampled", samples=None)


def test_ewc_consolidates_after_each_task_and_pulls_back(tmp_path: Path) -> None:
    model = tiny_model()
    ewc = EWC(lambda_ewc=10.0)
    trainer = trainer_for(model, tmp_path, blocks(), strategies=[ewc], fisher_samples=4)
    trainer.train_task()
    assert len(ewc.terms) == 1 and trainer.task_index == 1
    assert float(ewc.ewc_loss().detach()) == pytest.approx(0.0, abs=1e-12)  # at its own anchor
    trainer.train_task(blocks_dataset(blocks(seed=9)))
    assert len(ewc.terms) == 2 and float(ewc.ewc_loss().detach()) > 0
    assert any("ewc_penalty" in entry for entry in trainer.state.log_history)


# ---- PEFT ---------------------------------------------------------------------------------------------


def test_peft_penalties_cover_adapter_weights_only(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_model(),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ewc = EWC(lambda_ewc=10.0, trainable_only=False)  # even asked for all weights: adapters only
    trainer = trainer_for(model, tmp_path, blocks(), strategies=[ewc, LwF()], fisher_samples=4)
    trainer.train_task()
    ((fisher, _),) = ewc.terms
    assert fisher and all("lora_" in n for n in fisher)
    teacher = FrozenTeacher(model)
    assert teacher.copy is None and teacher.saved.keys() == fisher.keys()  # the base is shared, not copied
    ids = {"input_ids": blocks(2, 6)}
    model.eval()
    with torch.no_grad():
        before = model(**ids).logits
        adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)  # the student moves on; the teacher keeps the adapters as they were
        assert not torch.allclose(model(**ids).logits, before)
    assert torch.allclose(teacher.logits(model, ids), before, atol=1e-6)
    for n, p in model.named_parameters():  # the teacher's forward changed nothing of the student
        if n in adapters:
            assert torch.equal(p, adapters[n] + 0.05), n
    model.train()
    trainer.train_task(blocks_dataset(blocks(seed=4)))
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n


# ---- ForgettingCallback ------------------------------------------------------------------------------------


def test_forgetting_callback_logs_through_the_trainer_and_stops_early(tmp_path: Path) -> None:
    # Uniform random tokens: an untrained model is near-uniform on them, and any training makes it
    # worse there, so the old domain's perplexity rises from the first steps.
    old = blocks(8, 12, seed=11)
    callback = ForgettingCallback({"old": old}, every=1, stop_ratio=1.0005)
    seen: list[dict[str, float]] = []

    class Spy(TrainerCallback):  # as reporting integrations are
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            seen.append(dict(logs))

    text = torch.arange(VOCAB // 2).repeat(40)[: 16 * 12].view(16, 12)  # a very learnable pattern
    trainer = trainer_for(
        tiny_model(),
        tmp_path,
        text,
        callbacks=[callback, Spy()],
        training_args=training_args(tmp_path, max_steps=40),
    )
    output = trainer.train()
    assert callback.stopped is not None and callback.stopped.domain == "old"
    assert output.global_step < 40  # stopped early
    logged = [entry["perplexity/old"] for entry in seen if "perplexity/old" in entry]
    assert len(logged) >= 2 and logged[-1] > logged[0]
    assert any("perplexity/old" in entry for entry in trainer.state.log_history)


def test_forgetting_callback_needs_a_trainer_to_log_through(tmp_path: Path) -> None:
    plain = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=blocks_dataset(blocks()),
        data_collator=CausalCollator(),
        callbacks=[ForgettingCallback({"old": blocks(2)})],
    )
    with pytest.raises(LifelongError, match="attach"):
        plain.train()
    with pytest.raises(LifelongError, match="above 1"):
        ForgettingCallback({"old": blocks(2)}, stop_ratio=0.9)


# ---- schedules ---------------------------------------------------------------------------------------------


def test_rewarm_cosine_and_infinite_schedules() -> None:
    cosine = [lr_lambda("rewarm-cosine", 100, 10, min_lr_ratio=0.1)(s) for s in range(100)]
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(cosine[9:]))
    assert cosine[-1] == pytest.approx(0.1, abs=1e-3)
    assert cosine[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))

    infinite = [lr_lambda("infinite", 100, 10, min_lr_ratio=0.0, anneal_ratio=0.2)(s) for s in range(100)]
    assert infinite[9] == 1.0 and infinite[50] == 1.0 and infinite[79] == 1.0
    assert infinite[80] < 1.0 and infinite[-1] == pytest.approx(0.0)
    with pytest.raises(LifelongError, match="unknown LR schedule"):
        lr_lambda("linear", 10, 1)


def test_trainer_uses_the_lambda_schedule(tmp_path: Path) -> None:
    trainer = trainer_for(
        tiny_model(),
        tmp_path,
        blocks(),
        lr_schedule="infinite",
        training_args=training_args(tmp_path, max_steps=10, warmup_steps=0.2, learning_rate=1.0),
    )
    trainer.train()
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert max(rates) == pytest.approx(1.0) and rates[0] < 1.0


def test_bf16_trains_under_autocast_and_leaves_a_float32_model(tmp_path: Path) -> None:
    """Mixed precision: the training forward runs in bfloat16 (Accelerate's autocast around the model's
    forward); after each task the model's own forward is back, so EWC's Fisher (measured right after,
    which compared a bf16 recorded output with a float32 one and failed), evaluation and the next
    task see float32, and a second task does not stack a second wrapper on the first."""
    model = tiny_model()
    dtypes: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    ewc = EWC(lambda_ewc=1.0)
    training = training_args(tmp_path, bf16=True)
    trainer = trainer_for(model, tmp_path, blocks(), strategies=[ewc], training_args=training)
    for _ in range(2):
        trainer.train_task()
        assert torch.bfloat16 in dtypes and "_original_forward" not in model.__dict__
        dtypes.clear()
        model(input_ids=blocks(2))
        assert dtypes == [torch.float32]
        dtypes.clear()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(ewc.terms) == 2 and all(torch.isfinite(f).all() for f in ewc.terms[-1][0].values())
