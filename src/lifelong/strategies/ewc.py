"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018).

After each task the diagonal Fisher information F says how much each parameter mattered to it;
later tasks pay ``(lambda / 2) * sum F (theta - theta*)^2`` for moving those parameters away from
where that task left them (theta*). F averages *per-sample* squared gradients: the square of a batch
gradient, as the seed sketched it, is not a mean of squares. Linear and convolution layers get them
from one batched backward pass (`sumsq`: squares from each layer's input and output gradient, no
per-sample gradient of the whole model); any other parameter from ``torch.func`` (vmap over grad).

Under plain SGD, weights whose pull would overshoot the anchor in one step are capped (see
`QuadraticPenalty`), so a large lambda holds them in place instead of diverging.

A causal LM (`ContinualTrainer`) gets the same penalty; its Fisher is one gradient *per sequence* of
the sequence's mean next-token NLL (`lm_nll`), ``empirical`` or ``sampled``, on the task's own data.

From your own loop (the seed's API)::

    ewc = EWC(model, lambda_ewc=1000)
    ... train task A ...
    ewc.compute_fisher(loader_a)            # (x, y) batches
    ... on task B: loss = task_loss + ewc.ewc_loss()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.core.distributed import sum_over_processes
from lifelong.core.strategy import IGNORE_INDEX, SequenceMeasure
from lifelong.errors import LifelongError
from lifelong.strategies.anchors import (
    Anchored,
    Forward,
    QuadraticPenalty,
    Tensors,
    add_into,
    combine,
    eval_mode,
    pack,
    per_sample_sum,
    samples_of,
    select_parameters,
    task_batches,
    unpack,
)
from lifelong.strategies.sumsq import SquaredGradients

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.strategy import LMTrainer
    from lifelong.core.stream import Task

FisherKind = Literal["empirical", "exact", "sampled"]
Mode = Literal["classic", "online"]
# Each (sample, class) pair of the exact Fisher costs one gradient. A confident model puts nearly all
# of its mass on a few classes, so the least likely ones, together under this mass, are skipped.
EXACT_TAIL = 1e-6


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row, written out: bit for bit what `F.cross_entropy` gives, in fewer ops
    under vmap than nll_loss's batching rule (5-10% of the Fisher time of the split-digits MLP)."""
    return -logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def lm_nll(kind: str) -> SequenceMeasure:
    """The causal-LM Fisher's measure: one sequence's mean next-token NLL, of the text's own next
    tokens (``empirical``) or of next tokens drawn from the model (``sampled``: the true Fisher's
    expectation, one sample per position)."""
    if kind not in ("empirical", "sampled"):
        raise LifelongError(f"LLM Fisher '{kind}' is unknown; use empirical or sampled")

    def nll(logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if kind == "sampled":
            with torch.no_grad():
                drawn = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            targets = drawn.masked_fill(targets == IGNORE_INDEX, IGNORE_INDEX)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)

    return nll


def _likely_pairs(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, class, probability) of every pair the exact Fisher needs (all but the EXACT_TAIL tail)."""
    p, classes = probs.sort(dim=1, descending=True)
    more_likely = p.cumsum(1) - p
    rows, rank = ((more_likely < 1 - EXACT_TAIL) & (p > 0)).nonzero(as_tuple=True)
    return rows, classes[rows, rank], p[rows, rank]


class EWC(Anchored):
    """Elastic Weight Consolidation: (lambda/2) sum F (theta - theta*)^2, per-sample diagonal Fisher.

    ``fisher``: ``empirical`` uses the true labels (one gradient per sample); ``exact`` takes the
    expectation over the model's own predictive distribution (one gradient per sample and likely
    class); ``sampled`` draws one label from it with the run's RNG. ``mode``: ``classic`` keeps one
    penalty per task, ``online`` one running Fisher decayed by ``gamma``. ``samples`` caps the data
    the Fisher sees (a random subset); ``chunk_size`` rows go through one pass, bounding memory to
    that pass's activations and that many per-sample gradients (layer hooks form those of one layer
    and a few rows at a time: `strategies.sumsq.SAMPLE_ELEMENTS`).
    """

    name = "ewc"
    aliases: ClassVar[dict[str, str]] = {"lambda": "lambda_ewc"}
    lm_task_data = True

    def __init__(
        self,
        model: nn.Module | None = None,
        lambda_ewc: float = 1000.0,
        fisher: FisherKind = "empirical",
        mode: Mode = "classic",
        gamma: float = 1.0,
        chunk_size: int = 256,
        samples: int | None = None,
        trainable_only: bool = True,
    ) -> None:
        if not lambda_ewc >= 0:
            raise LifelongError(f"ewc lambda must be >= 0, got {lambda_ewc}; try lambda=1000")
        if fisher not in get_args(FisherKind):
            raise LifelongError(f"ewc fisher '{fisher}' is unknown; use one of: empirical, exact, sampled")
        if mode not in get_args(Mode):
            raise LifelongError(f"ewc mode '{mode}' is unknown; use classic or online")
        if not 0 < gamma <= 1:
            raise LifelongError(f"ewc gamma must be in (0, 1], got {gamma}; try gamma=1")
        if chunk_size < 1 or (samples is not None and samples < 1):
            raise LifelongError("ewc chunk_size and samples must be positive; try chunk_size=256")
        super().__init__(model)
        self.lambda_ewc, self.fisher, self.mode, self.gamma = lambda_ewc, fisher, mode, gamma
        self.chunk_size, self.samples, self.trainable_only = chunk_size, samples, trainable_only
        # classic: one (F, theta*) per task; online: the single running (F, theta*).
        self.terms: list[tuple[Tensors, Tensors]] = []

    # ---- hooks ------------------------------------------------------------------------------------

    def after_task(self, learner: Learner, task: Task) -> None:
        # A sample cap takes a random subset (from the run's RNG), not the first rows of the task.
        data = task_batches(learner, self.chunk_size, shuffle=self.samples is not None)
        self.consolidate(self.fisher_information(data, forward=learner.forward, generator=learner.generator))

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        """The Fisher of a causal LM *per sequence* (one gradient per packed block, over the positions
        training puts loss on), on the task's own data; ``samples`` sequences (the trainer's default
        when None). ``exact`` has no causal-LM form (one gradient per vocabulary entry per token)."""
        if data is None:
            raise LifelongError("EWC needs the task's data to measure importance; pass train_dataset")
        fisher = trainer.importance(
            data,
            lm_nll(self.fisher),
            power=2,
            samples=self.samples,
            trainable_only=self.trainable_only,
            what="the Fisher information",
        )
        self.model = trainer.model
        self.consolidate(fisher)

    # ---- the seed's API, for users with their own loop ---------------------------------------------

    def compute_fisher(
        self,
        dataloader: Iterable[Sequence[torch.Tensor] | torch.Tensor],
        forward: Forward | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensors:
        """Fisher of the model on ``dataloader``'s (x, y) batches, then anchor at the current weights."""
        fisher = self.fisher_information(dataloader, forward=forward, generator=generator)
        self.consolidate(fisher)
        return fisher

    def ewc_loss(self) -> torch.Tensor:
        """The penalty to add to the task loss (zero before the first `compute_fisher`)."""
        if not self._penalty:
            return torch.zeros((), device=next(self._model().parameters()).device)
        if not self._penalty.bound:
            self._penalty.bind(self._model())
        return self._penalty()

    # ---- the Fisher ---------------------------------------------------------------------------------

    def fisher_information(
        self,
        batches: Iterable[Sequence[torch.Tensor] | torch.Tensor],
        *,
        forward: Forward | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensors:
        """Diagonal Fisher averaged over the samples of (x, y) or (x, y, task_ids) batches.

        ``forward(x, task_ids)`` gives the logits (default: the model itself); ``generator`` draws the
        labels of the ``sampled`` estimator.
        """
        model = self._model()
        device = next(model.parameters()).device
        names = list(select_parameters(model, self.trainable_only))
        squares = SquaredGradients(model, names)  # the layers it can measure without vmap
        total: Tensors = {}
        seen = 0
        with eval_mode(model):
            for x, y, t in samples_of(
                batches, device, self.chunk_size, self.samples, self.fisher == "empirical"
            ):
                add_into(total, self._fisher_sum(model, forward, names, squares, x, y, t, generator))
                seen += len(y)
        total, seen = sum_over_processes(total, seen)
        if seen == 0:
            raise LifelongError("the Fisher information needs at least one sample; the data given was empty")
        return {n: v / seen for n, v in total.items()}

    def _fisher_sum(
        self,
        model: nn.Module,
        forward: Forward | None,
        names: list[str],
        squares: SquaredGradients,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None,
    ) -> Tensors:
        """Sum over the batch of squared per-sample gradients of -log p(label | x)."""
        weight = None
        if self.fisher != "empirical":  # labels from the model's own predictive distribution
            with torch.no_grad():
                probs = torch.softmax((model(x) if forward is None else forward(x, t)).float(), dim=-1)
            if self.fisher == "sampled":
                y = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(x.device)
            else:  # exact: sum_c p_c g_c^2, one weighted (sample, class) pair per class
                rows, y, weight = _likely_pairs(probs)
                x, t = x[rows], t[rows]
        return per_sample_sum(
            model,
            forward,
            names,
            _nll,
            2,
            x,
            t,
            y,
            weight=weight,
            chunk_size=self.chunk_size,
            squares=squares,
        )

    def consolidate(self, fisher: Tensors) -> None:
        """End of a task: protect the current weights with importance ``fisher``."""
        params, fisher = (
            dict(self._model().named_parameters()),
            dict(fisher),
        )  # the caller's dict stays as given
        anchor = {n: params[n].detach().clone() for n in fisher}
        if self.mode == "online" and self.terms:  # F <- gamma F_old + F_new, one anchor (the latest)
            old_fisher, old_anchor = self.terms[0]
            for n, f in old_fisher.items():
                fisher[n] = self.gamma * f + fisher[n] if n in fisher else self.gamma * f
                anchor.setdefault(n, old_anchor[n])
            self.terms = [(fisher, anchor)]
        else:
            self.terms.append((fisher, anchor))
        self._rebuild()

    def _rebuild(self) -> None:
        half = self.lambda_ewc / 2
        if len(self.terms) == 1:
            self._penalty.set(*self.terms[0], scale=half, model=self.model)
        else:
            weight, center, const = combine(self.terms)
            self._penalty.set(weight, center, scale=half, const=half * const, model=self.model)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise LifelongError(
                "EWC has no model; create it as EWC(model, ...) or train it through a Learner"
            )
        return self.model

    # ---- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"mode": self.mode, "terms": len(self.terms)}
        for k, (fisher, anchor) in enumerate(self.terms):
            state |= pack(f"fisher.{k}", fisher) | pack(f"anchor.{k}", anchor)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode", self.mode) != self.mode:
            raise LifelongError(f"saved EWC state is mode={state['mode']}, this EWC is mode={self.mode}")
        count = int(state.get("terms", 0))
        self.terms = [(unpack(state, f"fisher.{k}"), unpack(state, f"anchor.{k}")) for k in range(count)]
        if self.terms:
            self._rebuild()
        else:
            self._penalty = QuadraticPenalty()
