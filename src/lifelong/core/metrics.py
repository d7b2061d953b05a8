"""Continual-learning metrics over an accuracy matrix.

The accuracy matrix ``R`` is ``T x T``: ``R[i][j]`` is the score on task ``j`` measured right after
training on task ``i`` (notation of Wang et al., "A Comprehensive Survey of Continual Learning",
arXiv 2302.00487). Row ``i`` is one evaluation pass over every task; the diagonal is each task's score
just after it was learned; the last row is the final model.

Scores can point either way: accuracy is higher-is-better, perplexity and loss are lower-is-better.
Every metric whose sign depends on that takes ``higher_is_better`` and flips its convention so the
meaning never changes: ``forgetting > 0`` and ``bwt < 0`` always mean "got worse on old tasks", and
``fwt > 0`` always means "earlier training helped the next task".

All functions are pure, return plain Python floats (never numpy scalars, so results serialise to
JSON as they are) and return ``None`` where a metric is undefined, e.g. transfer with a single task.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lifelong.errors import LifelongError

__all__ = [
    "average_accuracy",
    "average_incremental_accuracy",
    "average_se",
    "backward_transfer",
    "binomial_se",
    "bootstrap_se",
    "compute_forgetting_rate",
    "difference_within_noise",
    "forgetting",
    "forgetting_rate",
    "forward_transfer",
    "forward_transfer_from_scratch",
    "mean_and_se",
    "retention",
    "summarize",
]


def _as_float_array(values: Any, what: str) -> np.ndarray:
    """Convert ``values`` to a float array, refusing anything that is not plain real numbers.

    ``np.asarray(..., dtype=float)`` alone would silently parse strings such as ``"0.5"`` and turn
    booleans into 0/1, which hides a caller's bug; so the element types are checked first.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise LifelongError(f"{what} must be a rectangular grid of numbers ({exc}).") from None
    plain_numbers = arr.dtype.kind in "iuf"
    boxed_numbers = arr.dtype.kind == "O" and all(
        isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in arr.flat
    )
    if not (plain_numbers or boxed_numbers):
        raise LifelongError(f"{what} must contain only real numbers, got values of type {arr.dtype}.")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise LifelongError(f"{what} contains NaN or infinite values; every score must be a finite number.")
    return arr


def _validate_matrix(matrix: ArrayLike) -> np.ndarray:
    """Return ``matrix`` as a ``T x T`` float array, or raise `LifelongError` naming the problem.

    Checked once here so each metric can index freely: the matrix must be non-empty, square
    (one row per training stage and one column per task) and made of finite numbers.
    """
    arr = _as_float_array(matrix, "The accuracy matrix")
    if arr.size == 0:
        raise LifelongError("The accuracy matrix is empty; it needs at least one task.")
    if arr.ndim != 2:
        raise LifelongError(
            f"The accuracy matrix must be 2-dimensional (T x T), got {arr.ndim} dimension(s)."
        )
    rows, cols = arr.shape
    if rows != cols:
        raise LifelongError(
            f"The accuracy matrix must be square (T x T), got {rows} rows and {cols} columns."
        )
    return arr


def _validate_vector(values: ArrayLike, length: int, what: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array of ``length`` finite numbers (one per task)."""
    arr = _as_float_array(values, what)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise LifelongError(f"{what} must have one score per task ({length}), got shape {arr.shape}.")
    return arr


def average_accuracy(matrix: ArrayLike, k: int | None = None) -> float:
    """Average accuracy after training task ``k``: ``AA_k = mean_{j<=k} R[k][j]``.

    Wang et al. (arXiv 2302.00487, eq. for AA_k): how good the model is, right after task ``k``, on
    every task seen so far. ``k`` defaults to the last task, i.e. the final model. It is a plain
    mean, so it needs no direction: for perplexity it is the mean perplexity (lower is better).
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    if k is None:
        k = t - 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < t:
        raise LifelongError(f"k must be a task index from 0 to {t - 1}, got {k!r}.")
    return float(np.mean(r[k, : k + 1]))


def average_incremental_accuracy(matrix: ArrayLike) -> float:
    """Average incremental accuracy: ``AIA = mean_k AA_k`` over every training stage ``k``.

    Wang et al. (arXiv 2302.00487; Rebuffi et al. 2017, iCaRL): averaging over the whole sequence
    rewards a learner that was good throughout, not only at the end.
    """
    r = _validate_matrix(matrix)
    return float(np.mean([average_accuracy(r, k) for k in range(r.shape[0])]))


def forgetting(matrix: ArrayLike, higher_is_better: bool = True) -> float | None:
    """Forgetting measure (Chaudhry et al. 2018, "Riemannian Walk"; Wang et al. arXiv 2302.00487).

    For each old task ``j < T-1``: the best score it ever had after being learned, minus its final
    score, ``max_{l in j..T-2} R[l][j] - R[T-1][j]``; the result is the mean over old tasks. Using the
    best earlier score (not just the diagonal) counts knowledge that was gained and later lost. For
    lower-is-better scores this is ``R[T-1][j] - min_{l in j..T-2} R[l][j]``, so a positive value
    always means the final model is worse on old tasks. ``None`` when ``T < 2``: nothing is old yet.
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    if t < 2:
        return None
    final = r[t - 1]
    if higher_is_better:
        per_task = [float(np.max(r[j : t - 1, j]) - final[j]) for j in range(t - 1)]
    else:
        per_task = [float(final[j] - np.min(r[j : t - 1, j])) for j in range(t - 1)]
    return float(np.mean(per_task))


def backward_transfer(matrix: ArrayLike, higher_is_better: bool = True) -> float | None:
    """Backward transfer (Lopez-Paz & Ranzato 2017, GEM; Wang et al. arXiv 2302.00487).

    ``BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])``: how learning later tasks changed old ones compared
    with right after they were learned. Negative means forgetting. For lower-is-better scores the
    difference is negated, so ``bwt < 0`` always means "got worse". ``None`` when ``T < 2``.
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    if t < 2:
        return None
    diffs = r[t - 1, : t - 1] - np.diag(r)[: t - 1]
    value = float(np.mean(diffs))
    return value if higher_is_better else -value


def forward_transfer(
    matrix: ArrayLike, baseline: ArrayLike | None, higher_is_better: bool = True
) -> float | None:
    """Forward transfer as in GEM (Lopez-Paz & Ranzato 2017).

    ``FWT = mean_{j>=1} (R[j-1][j] - baseline[j])``, where ``baseline[j]`` is the score of the randomly
    initialised model on task ``j``: how much training on earlier tasks already helps task ``j``
    before it is seen. ``baseline`` has one entry per task (entry 0 is unused). Negated for
    lower-is-better scores, so ``fwt > 0`` always means positive transfer. ``None`` when there is no
    baseline or ``T < 2``.
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    if baseline is None or t < 2:
        return None
    b = _validate_vector(baseline, t, "The baseline (initial) scores")
    diffs = np.array([r[j - 1, j] - b[j] for j in range(1, t)])
    value = float(np.mean(diffs))
    return value if higher_is_better else -value


def forward_transfer_from_scratch(
    matrix: ArrayLike, scratch: ArrayLike | None, higher_is_better: bool = True
) -> float | None:
    """Forward transfer against training from scratch (Wang et al., arXiv 2302.00487).

    ``FWT = mean_{j>=1} (R[j][j] - scratch[j])``, where ``scratch[j]`` is the score of a model trained
    on task ``j`` alone from scratch: does having learned tasks ``0..j-1`` first make task ``j`` end up
    better than learning it in isolation? ``scratch`` has one entry per task (entry 0 is unused, since
    task 0 has no predecessor). Negated for lower-is-better scores, so ``fwt > 0`` always means
    positive transfer. ``None`` when there are no scratch scores or ``T < 2``.
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    if scratch is None or t < 2:
        return None
    s = _validate_vector(scratch, t, "The from-scratch scores")
    diffs = np.diag(r)[1:] - s[1:]
    value = float(np.mean(diffs))
    return value if higher_is_better else -value


def _rate(before: float, after: float, higher_is_better: bool) -> float | None:
    """One relative forgetting rate; ``None`` where ``before == 0`` (the seed divided by zero there).

    The denominator is ``|before|`` so that the sign keeps its meaning (positive = worse) even for
    scores that can be negative, such as log-likelihoods; for positive scores it is exactly ``before``.
    """
    if before == 0:
        return None
    change = (before - after) if higher_is_better else (after - before)
    return float(change / abs(before))


def forgetting_rate(
    before: Sequence[float], after: Sequence[float], higher_is_better: bool = True
) -> list[float | None]:
    """The seed's relative forgetting rate per task: ``(before - after) / before``.

    Relative, so tasks on different scales compare: 0.2 means the task lost 20% of its score. For
    lower-is-better scores it is ``(after - before) / before``: a perplexity that rises is forgetting
    and comes out positive. Where ``before == 0`` the rate is undefined and reported as ``None``
    instead of dividing by zero. ``before`` and ``after`` must have the same length.
    """
    b = _as_float_array(list(before), "The scores before")
    a = _as_float_array(list(after), "The scores after")
    if b.ndim != 1 or a.ndim != 1 or b.shape != a.shape:
        raise LifelongError(
            f"The scores before and after must be two flat lists of the same length, got shapes "
            f"{b.shape} and {a.shape}."
        )
    return [_rate(float(x), float(y), higher_is_better) for x, y in zip(b, a, strict=True)]


def compute_forgetting_rate(
    scores_before: Mapping[str, float], scores_after: Mapping[str, float], higher_is_better: bool = True
) -> dict[str, float | None]:
    """Relative forgetting rate per named task, with the seed's name and shape (dicts by task name).

    Same definition as `forgetting_rate`. A task present in one dict but not the other raises
    `LifelongError` naming it, since silently skipping it would hide a missing evaluation. The result
    follows the order of ``scores_before``.
    """
    for name in scores_before:
        if name not in scores_after:
            raise LifelongError(f"Task {name!r} has a score before but none after; evaluate it on both.")
    for name in scores_after:
        if name not in scores_before:
            raise LifelongError(f"Task {name!r} has a score after but none before; evaluate it on both.")
    names = list(scores_before)
    rates = forgetting_rate(
        [scores_before[n] for n in names], [scores_after[n] for n in names], higher_is_better
    )
    return dict(zip(names, rates, strict=True))


def _per_task(scores: ArrayLike | Mapping[str, float] | None, names: list[str]) -> ArrayLike | None:
    """Accept baseline scores either as a list in task order or as a dict keyed by task name."""
    if scores is None or not isinstance(scores, Mapping):
        return scores
    missing = [n for n in names if n not in scores]
    if missing:
        raise LifelongError(f"No baseline score for task(s) {', '.join(map(repr, missing))}.")
    return [scores[n] for n in names]


def summarize(
    matrix: ArrayLike,
    task_names: Sequence[str],
    higher_is_better: bool = True,
    initial_scores: ArrayLike | Mapping[str, float] | None = None,
    scratch_scores: ArrayLike | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Every metric of a run in one JSON-ready dict.

    Keys: ``average_accuracy`` (final row), ``average_incremental_accuracy``, ``forgetting``, ``bwt``,
    ``fwt`` and ``forgetting_rate`` (``{task_name: rate}`` from ``before = R[j][j]`` to
    ``after = R[T-1][j]``). ``fwt`` prefers the from-scratch definition (Wang et al.) when
    ``scratch_scores`` is given, else GEM's against ``initial_scores`` (the untrained model), else
    ``None``. Baseline scores may be a list in task order or a dict keyed by task name.
    """
    r = _validate_matrix(matrix)
    t = r.shape[0]
    names = list(task_names)
    if len(names) != t:
        raise LifelongError(f"Got {len(names)} task name(s) for a {t} x {t} accuracy matrix; need {t}.")
    if len(set(names)) != len(names):
        raise LifelongError(f"Task names must be unique, got {names}.")
    fwt: float | None
    if scratch_scores is not None:
        fwt = forward_transfer_from_scratch(r, _per_task(scratch_scores, names), higher_is_better)
    elif initial_scores is not None:
        fwt = forward_transfer(r, _per_task(initial_scores, names), higher_is_better)
    else:
        fwt = None
    rates = forgetting_rate(list(np.diag(r)), list(r[t - 1]), higher_is_better)
    return {
        "average_accuracy": average_accuracy(r),
        "average_incremental_accuracy": average_incremental_accuracy(r),
        "forgetting": forgetting(r, higher_is_better),
        "bwt": backward_transfer(r, higher_is_better),
        "fwt": fwt,
        "forgetting_rate": dict(zip(names, rates, strict=True)),
    }


# ---- uncertainty ------------------------------------------------------------------------------------------

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` items: ``sqrt(p (1 - p) / n)``."""
    if n < 1:
        raise LifelongError(f"a standard error needs at least one item, got n={n}")
    return float(np.sqrt(max(p * (1 - p), 0.0) / n))


def bootstrap_se(
    values: Sequence[float],
    weights: Sequence[float] | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """Bootstrap standard error of the weighted mean ``sum(w v) / sum(w)`` of ``values`` (items resampled).

    The weights let a pooled mean, such as a loss averaged over all answer tokens, be resampled by
    item: ``values`` are the items' mean losses and ``weights`` their token counts. The seed is fixed,
    so the same scores always get the same error.
    """
    v = _as_float_array(list(values), "The values")
    w = np.ones_like(v) if weights is None else _as_float_array(list(weights), "The weights")
    if v.ndim != 1 or v.shape != w.shape or v.size == 0:
        raise LifelongError("bootstrap_se needs a non-empty flat list of values and as many weights")
    picks = np.random.default_rng(seed).integers(0, v.size, size=(samples, v.size))
    totals = w[picks].sum(axis=1)
    kept = totals > 0  # a resample of weightless items only has no mean
    means = (w * v)[picks].sum(axis=1)[kept] / totals[kept]
    return float(np.std(means, ddof=1)) if means.size > 1 else 0.0


def mean_and_se(values: Sequence[float], weights: Sequence[float] | None = None) -> tuple[float, float]:
    """(weighted mean, its standard error): binomial where every value is 0 or 1 and the weights are
    equal (an accuracy), else `bootstrap_se`."""
    v = _as_float_array(list(values), "The values")
    if v.ndim != 1 or v.size == 0:
        raise LifelongError("a mean needs a non-empty flat list of values")
    w = np.ones_like(v) if weights is None else _as_float_array(list(weights), "The weights")
    mean = float((w * v).sum() / w.sum())
    if np.all((v == 0) | (v == 1)) and np.all(w == w[0]):
        return mean, binomial_se(mean, int(v.size))
    return mean, bootstrap_se(v.tolist(), w.tolist())


def average_se(errors: Sequence[float]) -> float:
    """Standard error of the mean of independent scores with these errors: ``sqrt(sum se^2) / n``."""
    e = _as_float_array(list(errors), "The standard errors")
    if e.ndim != 1 or e.size == 0:
        raise LifelongError("average_se needs a non-empty flat list of standard errors")
    return float(np.sqrt(np.sum(e**2)) / e.size)


def difference_within_noise(a: float, se_a: float, b: float, se_b: float, sigmas: float = 2.0) -> bool:
    """True when ``|a - b| <= sigmas * sqrt(se_a^2 + se_b^2)``: the two scores are not told apart
    (two equal scores never differ, even with no error)."""
    return bool(abs(a - b) <= sigmas * np.hypot(se_a, se_b))


def retention(initial: float, final: float, higher_is_better: bool = True) -> float | None:
    """How much of a score the model kept: ``final / initial`` (``initial / final`` when lower is
    better, so 1 = kept, below 1 = lost either way); ``None`` where the ratio is undefined."""
    numerator, denominator = (final, initial) if higher_is_better else (initial, final)
    if denominator == 0:
        return None
    return float(numerator / denominator)
