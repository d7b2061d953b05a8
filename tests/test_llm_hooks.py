"""The strategies' causal-LM hooks: the trainer drives any strategy that declares a causal-LM form and
refuses the others in one line; SI and MAS on a causal LM against their closed forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from tiny_llama import tiny_llama, training_args
from transformers import LlamaForCausalLM, TrainerCallback

from lifelong.core.strategy import LMBatch, LMTrainer, Strategy
from lifelong.errors import LifelongError
from lifelong.llm.data import CausalCollator, blocks_dataset
from lifelong.llm.fisher import OutsideTrainer
from lifelong.llm.trainer import ContinualTrainer
from lifelong.strategies import MAS, SI, LwF

VOCAB = 32


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, 8, seed)


def blocks(n: int = 8, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def trainer_for(model: Any, tmp_path: Path, data: torch.Tensor, **kwargs: Any) -> ContinualTrainer:
    return ContinualTrainer(
        model=model,
        args=training_args(tmp_path, **kwargs.pop("training", {})),
        train_dataset=blocks_dataset(data),
        data_collator=CausalCollator(),
        **kwargs,
    )


def lm_loss(model: Any, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


# ---- any strategy, no dispatch on types -----------------------------------------------------------------


class Shrink(Strategy):
    """A strategy the trainer has never heard of: pulls the logits towards 0, and notes its calls."""

    name = "shrink"
    supports = frozenset({"classifier", "causal-lm"})

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.calls: list[str] = []
        self.data: Any = None

    def lm_before_task(self, trainer: LMTrainer) -> None:
        self.calls.append("before_task")

    def lm_penalty(self, trainer: LMTrainer, batch: LMBatch, outputs: Any) -> torch.Tensor | float:
        self.calls.append("penalty")
        value: torch.Tensor = outputs.logits.square().mean()
        trainer.note("shrink", value)
        return self.weight * value

    def lm_after_backward(self, trainer: LMTrainer) -> None:
        self.calls.append("after_backward")

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        self.calls.append("after_task")
        self.data = data


def test_a_strategy_defined_anywhere_is_driven_through_its_lm_hooks(tmp_path: Path) -> None:
    model, data = tiny_model(), blocks()
    shrink = Shrink(0.1)
    trainer = trainer_for(model, tmp_path, data, strategies=[shrink])
    ids = blocks(2, 8, seed=3)
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
    expected = lm_loss(model, ids) + 0.1 * model(input_ids=ids).logits.square().mean()
    assert float(torch.as_tensor(loss).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)

    shrink.calls.clear()
    own = data[:3]
    trainer.train_task(fisher_dataset=own)
    assert shrink.calls == ["before_task", *["penalty", "after_backward"] * 2, "after_task"]
    assert shrink.data is own
    assert any("shrink" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize("name", ["der++", "agem", "joint", "lora"])
def test_a_strategy_without_a_causal_lm_form_is_refused_in_one_line(tmp_path: Path, name: str) -> None:
    with pytest.raises(LifelongError) as refused:
        trainer_for(tiny_model(), tmp_path, blocks(), strategies=name)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"strategy '{name}' has no causal-LM form")
    assert message.endswith("use naive, ewc, si, mas, lwf (distill) or replay")


def test_a_classifier_only_strategy_object_is_refused(tmp_path: Path) -> None:
    class Classic(Shrink):
        name = "classic"
        supports = frozenset({"classifier"})

    with pytest.raises(LifelongError, match="strategy 'classic' has no causal-LM form"):
        trainer_for(tiny_model(), tmp_path, blocks(), strategies=[Classic(1.0)])


def test_under_sharded_parameters_each_strategy_keeping_weights_is_named(tmp_path: Path) -> None:
    trainer = trainer_for(tiny_model(), tmp_path, blocks(), strategies="naive+si+lwf")
    trainer.is_fsdp_enabled = True
    with pytest.raises(LifelongError, match=r"^si and lwf need whole parameters on every process"):
        trainer._refuse_sharded_parameters()
    alone = trainer_for(tiny_model(), tmp_path, blocks(), strategies=[Shrink(1.0), LwF(alpha=0.0)])
    alone.is_fsdp_enabled = True
    alone._refuse_sharded_parameters()  # nothing kept: no teacher when alpha is 0


# ---- MAS ------------------------------------------------------------------------------------------------


def test_mas_on_a_causal_lm_is_output_sensitivity_per_sequence(tmp_path: Path) -> None:
    """Omega = mean over sequences of |d (mean over positions of ||logits_t||^2) / d theta|; then the
    penalty is lambda * sum Omega (theta - theta*)^2."""
    model, data = tiny_model(), blocks(3, 8)
    mas = MAS(lambda_mas=2.0)
    trainer = trainer_for(model, tmp_path, data, strategies=[mas], training={"max_steps": 1})
    trainer.train_task()
    assert mas.tasks == 1

    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row in data:
        model.zero_grad()
        model(input_ids=row[None]).logits[0, :-1].square().sum(-1).mean().backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            expected[n] += p.grad.abs() / 3
    for n, omega in expected.items():
        assert torch.allclose(mas.importance[n], omega, rtol=1e-4, atol=1e-9), n

    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    penalty = 2.0 * sum(
        (mas.importance[n] * (p.detach() - anchor[n]).square()).sum() for n, p in model.named_parameters()
    )
    ids = blocks(2, 8, seed=5)
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
    assert float(torch.as_tensor(loss).detach() - lm_loss(model, ids).detach()) == pytest.approx(
        float(penalty), rel=1e-4
    )
    trainer.train_task(blocks_dataset(blocks(seed=4)))
    assert mas.tasks == 2 and any("mas_penalty" in entry for entry in trainer.state.log_history)


def test_protecting_old_data_measures_it_once(tmp_path: Path) -> None:
    model, data = tiny_model(), blocks(3, 8)
    mas, si, lwf = MAS(), SI(), LwF()
    for strategy in (mas, si, lwf):
        strategy.lm_protect(OutsideTrainer(model, seed=0), data)
    assert mas.tasks == 1 and si.tasks == 0 and lwf.lm_teacher is None  # SI needs a path: none here
    first = {n: v.clone() for n, v in mas.importance.items()}
    mas.lm_protect(OutsideTrainer(model, seed=1), data)  # already protects something
    assert mas.tasks == 1 and all(torch.equal(first[n], v) for n, v in mas.importance.items())


# ---- SI -------------------------------------------------------------------------------------------------


def test_si_on_a_causal_lm_integrates_every_optimizer_step(tmp_path: Path) -> None:
    """Plain SGD at a constant rate moves each weight by -lr g per step, so SI's path integral is
    omega = sum lr g^2 over the steps' whole (accumulated) gradients, and the importance
    omega / (Delta^2 + xi); later the penalty is c * sum Omega (theta - theta*)^2."""
    model, lr, xi = tiny_model(), 0.5, 0.1
    si = SI(c=3.0, xi=xi)
    grads: list[dict[str, torch.Tensor]] = []

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            grads.append(
                {
                    n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                    for n, p in model.named_parameters()
                }
            )

    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    training = {
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "optim": "sgd",
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
    }
    trainer = trainer_for(
        model, tmp_path, blocks(), strategies=[si], callbacks=[Gradients()], training=training
    )
    trainer.train_task()
    assert len(grads) == 3 and si.tasks == 1
    assert float(sum(v.sum() for v in si.importance.values())) > 0
    for n, p in model.named_parameters():
        omega = sum(lr * g[n].square() for g in grads)
        expected = omega / ((p.detach() - start[n]).square() + xi)
        assert torch.allclose(si.importance[n], expected, rtol=1e-3, atol=1e-9), n
        assert torch.equal(si.anchor[n], p.detach())

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    penalty = 3.0 * sum(
        (si.importance[n] * (p.detach() - si.anchor[n]).square()).sum() for n, p in model.named_parameters()
    )
    value = si.lm_penalty(trainer, LMBatch({}, None, per_step=0.5), None)
    assert float(torch.as_tensor(value).detach()) == pytest.approx(0.5 * float(penalty), rel=1e-5)
