"""Property-based checks of the metrics: bounds, order invariance, lower-is-better symmetry."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.core import metrics

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, width=32)


@st.composite
def accuracy_matrices(draw: st.DrawFn, min_tasks: int = 1) -> list[list[float]]:
    n = draw(st.integers(min_value=min_tasks, max_value=6))
    return [[draw(scores) for _ in range(n)] for _ in range(n)]


@settings(max_examples=200, deadline=None)
@given(accuracy_matrices())
def test_accuracies_stay_in_bounds(matrix: list[list[float]]) -> None:
    assert 0.0 <= metrics.average_accuracy(matrix) <= 1.0
    assert 0.0 <= metrics.average_incremental_accuracy(matrix) <= 1.0
    f = metrics.forgetting(matrix)
    b = metrics.backward_transfer(matrix)
    if len(matrix) < 2:
        assert f is None and b is None
    else:
        assert f is not None and b is not None
        assert -1.0 <= f <= 1.0 and -1.0 <= b <= 1.0
        # Forgetting measures the drop from the best earlier score, BWT from the score just after
        # training, so forgetting is never smaller than minus BWT.
        assert f >= -b - 1e-9


@settings(max_examples=200, deadline=None)
@given(accuracy_matrices(min_tasks=2))
def test_lower_is_better_mirrors_higher_is_better(matrix: list[list[float]]) -> None:
    """Scoring by -accuracy with lower-is-better must give the same verdicts as by accuracy."""
    negated = (-np.asarray(matrix)).tolist()
    for fn in (metrics.forgetting, metrics.backward_transfer):
        a = fn(matrix)
        b = fn(negated, higher_is_better=False)
        assert a is not None and b is not None and abs(a - b) < 1e-9
    baseline = [0.1] * len(matrix)
    a = metrics.forward_transfer(matrix, baseline)
    b = metrics.forward_transfer(negated, [-0.1] * len(matrix), higher_is_better=False)
    assert a is not None and b is not None and abs(a - b) < 1e-9


@settings(max_examples=200, deadline=None)
@given(accuracy_matrices(min_tasks=2), st.randoms(use_true_random=False))
def test_final_accuracy_ignores_the_order_of_tasks_in_the_last_row(matrix: list[list[float]], rnd) -> None:
    """Relabelling tasks (a permutation of rows and columns together) keeps the final average."""
    n = len(matrix)
    order = list(range(n))
    rnd.shuffle(order)
    permuted = [[matrix[i][j] for j in order] for i in order]
    final = metrics.average_accuracy(matrix)
    last_row_mean = sum(permuted[order.index(n - 1)]) / n
    assert abs(final - last_row_mean) < 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(scores, scores), min_size=1, max_size=8))
def test_forgetting_rate_is_bounded_and_safe_at_zero(pairs: list[tuple[float, float]]) -> None:
    before = [b for b, _ in pairs]
    after = [a for _, a in pairs]
    for b, rate in zip(before, metrics.forgetting_rate(before, after), strict=True):
        if b == 0:
            assert rate is None
        else:
            assert rate is not None and rate <= 1.0 + 1e-9  # cannot lose more than everything
    # Perplexities: a rise is forgetting (positive), a fall is not.
    rates = metrics.forgetting_rate([10.0, 10.0], [20.0, 5.0], higher_is_better=False)
    assert rates[0] is not None and rates[0] > 0
    assert rates[1] is not None and rates[1] < 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=50),
    st.sampled_from(["reservoir", "class-balanced"]),
    st.integers(min_value=0, max_value=2**16),
)
def test_buffers_hold_only_seen_samples_within_size_and_balance(
    chunks: list[int], max_size: int, policy: str, seed: int
) -> None:
    """Whatever the stream: never over size, only rows that were added, and (class-balanced) the
    classes that had to give up slots within one of each other."""
    import torch

    from lifelong.strategies.buffers import ReplayBuffer

    generator = torch.Generator().manual_seed(seed)
    buffer = ReplayBuffer(max_size, policy=policy)  # type: ignore[arg-type]
    seen = 0
    per_class: dict[int, int] = {}
    for task, size in enumerate(chunks):
        ids = torch.arange(seen, seen + size)
        y = (ids % 3) + 3 * task  # three new classes per chunk
        buffer.add(ids.float().unsqueeze(1), y, torch.full_like(y, task), generator=generator)
        for label in y.tolist():
            per_class[label] = per_class.get(label, 0) + 1
        seen += size
        assert len(buffer) == min(seen, max_size)
    memories = buffer.sample(len(buffer), generator)
    stored = memories.x.squeeze(1).long()
    assert len(set(stored.tolist())) == len(stored)  # distinct rows
    assert bool(((stored >= 0) & (stored < seen)).all())
    assert torch.equal(memories.y, (stored % 3) + 3 * memories.task_ids)  # labels travel with their rows
    if policy == "class-balanced":
        counts = {c: int((memories.y == c).sum()) for c in per_class}
        capped = [n for c, n in counts.items() if n < per_class[c]]  # classes that gave up slots
        if capped and max_size >= len(counts):  # fewer slots than classes cannot be balanced
            assert max(capped) - min(capped) <= 1
            # A class keeping all it has may hold one more than a capped one (28 slots, 3 classes: 10/9/9).
            assert max(counts.values()) <= min(capped) + 1
