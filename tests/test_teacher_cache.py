"""LwF's teacher cache (``cache=topk``): the KL it gives against the full one (exact at k = V,
unbiased with draws from the rest, short by a known term with the rest lumped), its keys under
shuffling and padding, the teacher run once per example, its memory limit, and its options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from tiny_llama import tiny_llama, training_args
from transformers import LlamaForCausalLM, TrainerCallback

from lifelong.errors import LifelongError
from lifelong.llm.data import CausalCollator, blocks_dataset
from lifelong.llm.trainer import ContinualTrainer
from lifelong.strategies import LwF, build_strategies
from lifelong.strategies.teacher import FrozenTeacher
from lifelong.strategies.teacher_cache import (
    Targets,
    TopKCache,
    kept_distillation,
    largest,
    topk_targets,
)

VOCAB = 64


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, 16, seed)


def tokens(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def trainer_for(
    model: Any, tmp_path: Path, data: torch.Tensor, lwf: LwF, **overrides: Any
) -> ContinualTrainer:
    return ContinualTrainer(
        model=model,
        args=training_args(tmp_path, **overrides),
        train_dataset=blocks_dataset(data),
        data_collator=CausalCollator(),
        strategies=[lwf],
    )


# ---- the KL ------------------------------------------------------------------------------------------


def kept_kl(student: torch.Tensor, kept: Targets) -> torch.Tensor:
    """`kept_distillation` of logits [P, V], each row a position (its sequence's last is a pad)."""
    return kept_distillation(F.pad(student.unsqueeze(1), (0, 0, 0, 1)), None, kept, 2.0)


def confident_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student logits [48, V] of two tiny Llamas, scaled to a trained model's spread."""
    ids = tokens(4, 12, seed=3)
    with torch.no_grad():
        teacher = tiny_model(1)(input_ids=ids).logits.flatten(0, 1) * 20
        student = tiny_model(2)(input_ids=ids).logits.flatten(0, 1) * 20
    return teacher, student


def test_with_k_the_vocabulary_the_kept_kl_is_the_full_kl_and_so_is_its_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(30, VOCAB, generator=generator) * 3
    student = torch.randn(30, VOCAB, generator=generator).requires_grad_()
    approx = kept_kl(student, topk_targets(teacher, VOCAB, 32, 2.0))
    (grad_approx,) = torch.autograd.grad(approx, student)
    full = LwF.distillation_loss(student, teacher, None, 2.0)
    (grad_full,) = torch.autograd.grad(full, student)
    torch.testing.assert_close(approx, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_approx, grad_full, rtol=1e-5, atol=1e-9)


def test_drawn_tokens_estimate_the_rest_without_bias() -> None:
    """k = 8 of 64 tokens and 16 draws from the rest: one draw of the KL is within 15% of the full KL
    on two tiny Llamas (measured: 9% at most in 200 draws, 3% typical), and the mean over 2,000 draws
    is within 1% of it, its gradient within 2% of the exact gradient's scale."""
    teacher, student = confident_pair()
    full = float(LwF.distillation_loss(student, teacher, None, 2.0))
    torch.manual_seed(0)
    once = float(kept_kl(student, topk_targets(teacher, 8, 16, 2.0)))
    assert once == pytest.approx(full, rel=0.15)

    draws = 2000  # every position repeated, each repeat with draws of its own
    many = student.repeat_interleave(draws, dim=0).requires_grad_()
    mean = kept_kl(many, topk_targets(teacher.repeat_interleave(draws, dim=0), 8, 16, 2.0))
    assert float(mean.detach()) == pytest.approx(full, rel=0.01)
    (grad,) = torch.autograd.grad(mean, many)
    exact_input = student.clone().requires_grad_()
    (exact,) = torch.autograd.grad(LwF.distillation_loss(exact_input, teacher, None, 2.0), exact_input)
    per_position = grad.view(len(student), draws, VOCAB).sum(dim=1)  # the mean's gradient, per position
    assert float((per_position - exact).abs().max()) <= 0.02 * float(exact.abs().max())


def test_lumped_the_rest_leaves_out_exactly_the_kl_inside_it() -> None:
    """With no draws (samples=0) the rest is one outcome: the KL is short by the teacher's rest mass
    times the KL between the two models' distributions over the rest, and on two tiny Llamas the
    share of the KL lost stays below the teacher's mass in the rest."""
    teacher, student = confident_pair()
    full = float(LwF.distillation_loss(student, teacher, None, 2.0))
    for k in (8, 16, 32):  # measured: 54%, 35%, 14% short; rest mass 67%, 47%, 22%
        kept = topk_targets(teacher, k, 0, 2.0)
        approx = float(kept_kl(student, kept))
        rest = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, kept.ids, False)
        p, q = F.log_softmax(teacher / 2, -1), F.log_softmax(student / 2, -1)
        p_rest = p.masked_fill(~rest, -torch.inf).log_softmax(-1)  # each within the rest
        q_rest = q.masked_fill(~rest, -torch.inf).log_softmax(-1)
        inside = (p_rest.exp() * (p_rest - q_rest)).nan_to_num().sum(-1)
        rest_mass = kept.rest[:, 0].exp()
        assert full - approx == pytest.approx(float((rest_mass * inside).mean()), rel=1e-4, abs=1e-6)
        assert 0 <= (full - approx) / full <= float(rest_mass.mean())


def test_float16_storage_is_within_rounding_of_the_float32_kl() -> None:
    teacher, student = confident_pair()
    torch.manual_seed(0)
    kept = topk_targets(teacher, 8, 16, 2.0)
    exact = float(kept_kl(student, kept))
    assert float(kept_kl(student, kept.to(torch.float16))) == pytest.approx(exact, rel=2e-3)


@pytest.mark.parametrize(("vocab", "k"), [(2048, 32), (49152, 32), (64, 8), (1000, 32), (100, 8)])
def test_the_two_round_top_k_keeps_the_same_values_as_torch(vocab: int, k: int) -> None:
    """Its values equal torch.topk's, ties (logits rounded to a few levels) and strided rows included,
    and its ids point at them."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(3, 9, vocab, generator=generator) * 4
    for rows in (logits[:, :-1], (logits * 2).round()[:, :-1]):  # a strided view; many ties
        values, ids = largest(rows, k)
        expected = rows.topk(k, dim=-1).values
        assert torch.equal(values.sort(-1).values, expected.sort(-1).values)
        assert torch.equal(rows.gather(-1, ids), values)
        assert bool((ids.sort(-1).values.diff(dim=-1) != 0).all())  # k different ids in every row


def test_kept_targets_match_a_float64_reference_and_overwriting_changes_nothing() -> None:
    """The top-k log-probabilities, the rest's log-mass and its entropy against the same sums taken
    in float64 from the full softmax; ``overwrite`` gives the same targets, with the same draws."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 11, 512, generator=generator) * 6
    torch.manual_seed(0)
    kept = topk_targets(logits[:, :-1], 16, 8, 2.0)
    log_p = F.log_softmax(logits[:, :-1].double() / 2, dim=-1).flatten(0, 1)
    in_rest = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, kept.ids[:, :16], False)
    rest_p = log_p.exp() * in_rest
    mass = rest_p.sum(-1)
    entropy = mass.log() - (rest_p * log_p).sum(-1) / mass
    torch.testing.assert_close(kept.log_p.double(), log_p.gather(-1, kept.ids[:, :16]), rtol=0, atol=2e-6)
    torch.testing.assert_close(
        kept.rest.double(), torch.stack([mass.log(), entropy], -1), rtol=1e-5, atol=1e-5
    )
    assert bool(in_rest.gather(-1, kept.ids[:, 16:]).all())  # the draws come from the rest only
    torch.manual_seed(0)
    again = topk_targets(logits.clone()[:, :-1], 16, 8, 2.0, overwrite=True)
    assert all(torch.equal(a, b) for a, b in zip(kept, again, strict=True))


def test_masked_tokens_of_the_teacher_keep_the_targets_finite() -> None:
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    logits[:, 30:] = -torch.inf  # e.g. padding rows of the vocabulary, masked
    kept = topk_targets(logits, 8, 4, 2.0)
    assert all(bool(t.isfinite().all()) for t in (kept.log_p, kept.rest))
    assert bool((kept.ids < 30).all())  # neither kept nor drawn


def test_the_kept_kl_of_a_bfloat16_student_and_its_single_backward() -> None:
    """A bfloat16 student gets the float32 student's gradient to bfloat16 rounding; the backward runs
    once (it reuses the saved softmax in place), and a second one is refused, not silently wrong."""
    teacher, student = confident_pair()
    torch.manual_seed(0)
    kept = topk_targets(teacher, 8, 16, 2.0).to(torch.float16)
    exact_input = student.clone().requires_grad_()
    (exact,) = torch.autograd.grad(kept_kl(exact_input, kept), exact_input)
    low = student.to(torch.bfloat16).requires_grad_()
    loss = kept_kl(low, kept)
    (grad,) = torch.autograd.grad(loss, low)
    assert grad.dtype == torch.bfloat16
    assert float((grad.float() - exact).abs().max()) <= 0.01 * float(exact.abs().max())
    once = student.clone().requires_grad_()
    loss = kept_kl(once, kept)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_cached_loss_equals_the_per_step_loss_when_k_is_the_vocabulary(tmp_path: Path) -> None:
    ids = tokens(3, 10, seed=5)
    labels = ids.clone()
    labels[0, :6] = -100  # a prompt: distilled only where labelled, cached or not
    losses = []
    for lwf in (LwF(alpha=0.3), LwF(alpha=0.3, cache="topk", k=VOCAB)):
        model = tiny_model(0)
        trainer = trainer_for(model, tmp_path, ids, lwf)
        trainer.before_task()
        lwf.lm_teacher = FrozenTeacher(tiny_model(1))  # a teacher that differs, so the KL is not zero
        for _ in range(2):  # with the cache: fills it, then reads it
            loss = trainer.compute_loss(model, {"input_ids": ids, "labels": labels})
            losses.append(float(torch.as_tensor(loss).detach()))
    exact, filled, read = losses[0], losses[2], losses[3]
    assert losses[1] == exact
    assert filled == read  # whether computed this step or read back: the same targets
    assert read == pytest.approx(exact, rel=1e-4)  # float16 log-probabilities


# ---- keys and the teacher's runs ----------------------------------------------------------------------


def test_entries_follow_the_example_under_shuffling_and_other_padding() -> None:
    teacher = tiny_model(1).eval()
    lengths = [5, 9, 7, 3]
    rows = [tokens(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]

    def batch(order: list[int], width: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = torch.zeros(len(order), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        keep = torch.zeros(len(order), width - 1, dtype=torch.bool)
        for slot, i in enumerate(order):
            ids[slot, : lengths[i]], attention[slot, : lengths[i]] = rows[i], 1
            keep[slot, 1 : lengths[i] - 1] = True  # all but the first token, as a prompt would be
        return {"input_ids": ids, "attention_mask": attention}, keep

    def run_teacher(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return teacher(**inputs).logits

    cache = TopKCache(k=8, samples=4, temperature=2.0, limit_bytes=2**20, dtype=torch.float32)
    inputs, keep = batch([0, 1, 2, 3], 9)
    first = cache.targets(inputs, keep, lambda: run_teacher(inputs))

    def by_row(kept: Targets, keep: torch.Tensor) -> list[Targets]:
        counts = keep.sum(1).tolist()
        return [Targets(*parts) for parts in zip(*(t.split(counts) for t in kept), strict=True)]

    def no_teacher() -> torch.Tensor:
        raise AssertionError("every row is cached: the teacher must not run")

    order = [2, 0, 3, 1]
    shuffled, shuffled_keep = batch(order, 12)
    again = by_row(cache.targets(shuffled, shuffled_keep, no_teacher), shuffled_keep)
    for slot, i in enumerate(order):
        assert all(torch.equal(a, b) for a, b in zip(again[slot], by_row(first, keep)[i], strict=True))
    assert cache.teacher_calls == 1

    # Another set of distilled positions for the same tokens is another entry: the teacher runs.
    other_keep = shuffled_keep.clone()
    other_keep[0, 1] = False
    cache.targets(shuffled, other_keep, lambda: run_teacher(shuffled))
    assert cache.teacher_calls == 2


def test_the_teacher_runs_in_the_first_epoch_only(tmp_path: Path) -> None:
    calls: list[int] = []

    class Count(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            assert lwf.lm_cache is not None
            calls.append(lwf.lm_cache.teacher_calls)

    lwf = LwF(cache="topk", k=8)
    trainer = trainer_for(tiny_model(0), tmp_path, tokens(8, 10), lwf, max_steps=6)  # 3 epochs of 2 steps
    trainer.add_callback(Count())
    trainer.train()
    assert calls == [2] and lwf.lm_cache is None  # freed with the task


def test_past_its_limit_the_cache_recomputes_and_warns_once() -> None:
    per_position = 4 * 2 + 2 * 2 + 4 * 4  # float16 top-4 log-probabilities, rest mass and entropy; ids
    cache = TopKCache(k=4, samples=0, temperature=2.0, limit_bytes=2 * 9 * per_position)  # two rows of 9
    ids = tokens(4, 10)
    logits = torch.randn(4, 10, VOCAB)
    with pytest.warns(UserWarning, match="its limit") as caught:
        first = cache.targets({"input_ids": ids}, None, logits.clone)  # each call's its own copy
        second = cache.targets({"input_ids": ids}, None, logits.clone)
    assert len(caught) == 1 and len(cache.entries) == 2 and cache.teacher_calls == 2
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ---- inference mode ---------------------------------------------------------------------------------


def test_a_copied_teacher_runs_in_inference_mode_and_the_student_still_learns(tmp_path: Path) -> None:
    model = tiny_model(0)
    ids = tokens(2, 8)
    logits = FrozenTeacher(tiny_model(1)).logits(model, {"input_ids": ids})
    assert logits.is_inference() and not logits.requires_grad
    lwf = LwF(alpha=0.5)
    trainer = trainer_for(model, tmp_path, ids, lwf)
    trainer.before_task()
    lwf.lm_teacher = FrozenTeacher(tiny_model(1))
    trainer.compute_loss(model, {"input_ids": ids, "labels": ids}).backward()  # type: ignore[union-attr]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lwf:cache=full", "strategy 'lwf' option 'cache' is 'full'; use one of: none, topk"),
        ("lwf:cache=topk,k=0", "lwf k must be a whole number of at least 1, got 0; try 32"),
        ("lwf:samples=-1", "lwf samples must be a whole number of at least 0, got -1; try 32"),
        ("lwf:cache_mb=-5", "lwf cache_mb must be a whole number of at least 1, got -5; try 1024"),
        ("lwf:k=many", "strategy 'lwf' option 'k' must be a number (int), got 'many'"),
    ],
)
def test_bad_cache_options_are_refused_in_one_line(spec: str, message: str) -> None:
    with pytest.raises(LifelongError) as caught:
        build_strategies(spec)
    assert str(caught.value) == message


def test_cache_options_bind_and_the_classifier_form_refuses_a_cache() -> None:
    (lwf,) = build_strategies("lwf:cache=topk,k=16,samples=0,cache_mb=64")
    assert isinstance(lwf, LwF) and (lwf.cache, lwf.k, lwf.samples, lwf.cache_mb) == ("topk", 16, 0, 64)
    with pytest.raises(LifelongError, match=r"^lwf cache is 'all'; use one of: none, topk$"):
        LwF(cache="all")  # type: ignore[arg-type]
    with pytest.raises(LifelongError, match="for language models"):
        lwf.before_task(None, None)  # type: ignore[arg-type]
