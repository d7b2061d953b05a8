"""Every metric against values worked out by hand on small explicit matrices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from lifelong.core.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    compute_forgetting_rate,
    forgetting,
    forgetting_rate,
    forward_transfer,
    forward_transfer_from_scratch,
    summarize,
)
from lifelong.errors import LifelongError

# Accuracy (higher is better). R[i][j] = accuracy on task j after training task i.
# R[1][0] = 0.95 > R[0][0] so forgetting must use the best earlier score, not the diagonal;
# R[0][1] = 0.85 > R[1][1] sits *before* task 1 was trained, so forgetting must ignore it.
ACC = [
    [0.90, 0.85, 0.20],
    [0.95, 0.80, 0.30],
    [0.60, 0.50, 0.90],
]
ACC_INITIAL = [0.10, 0.50, 0.20]  # random-init model on each task (GEM baseline)
ACC_SCRATCH = [0.00, 0.70, 0.95]  # each task trained alone from scratch (entry 0 unused)

# Perplexity (lower is better): old tasks get worse (rise) as training moves on.
PPL = [
    [10.0, 50.0, 60.0],
    [8.0, 12.0, 40.0],
    [14.0, 18.0, 11.0],
]
PPL_INITIAL = [100.0, 100.0, 100.0]
PPL_SCRATCH = [0.0, 15.0, 10.0]

NAMES = ["a", "b", "c"]


# ---------------------------------------------------------------- average accuracy


def test_average_accuracy_each_row() -> None:
    assert average_accuracy(ACC, 0) == pytest.approx(0.90)  # 0.90 / 1
    assert average_accuracy(ACC, 1) == pytest.approx(0.875)  # (0.95 + 0.80) / 2
    assert average_accuracy(ACC, 2) == pytest.approx(2.0 / 3.0)  # (0.60 + 0.50 + 0.90) / 3


def test_average_accuracy_defaults_to_last_row() -> None:
    assert average_accuracy(ACC) == pytest.approx(2.0 / 3.0)
    assert average_accuracy(ACC) == average_accuracy(ACC, 2)


@pytest.mark.parametrize("k", [-1, 3, 1.0, True])
def test_average_accuracy_rejects_bad_k(k: Any) -> None:
    with pytest.raises(LifelongError, match="k must be a task index from 0 to 2"):
        average_accuracy(ACC, k)


def test_average_incremental_accuracy() -> None:
    # (0.90 + 0.875 + 2/3) / 3 = (1.775 + 0.666...) / 3 = 2.441666... / 3 = 0.813888...
    assert average_incremental_accuracy(ACC) == pytest.approx((0.90 + 0.875 + 2.0 / 3.0) / 3.0)
    assert average_incremental_accuracy(ACC) == pytest.approx(0.8138888889)


# ---------------------------------------------------------------- forgetting and bwt


def test_forgetting_higher_is_better() -> None:
    # task 0: max(R[0][0], R[1][0]) - R[2][0] = max(0.90, 0.95) - 0.60 = 0.35
    # task 1: max(R[1][1])          - R[2][1] = 0.80 - 0.50           = 0.30
    #   (R[0][1] = 0.85 is before task 1 was learned and must not count; with it this would be 0.35)
    # mean = (0.35 + 0.30) / 2 = 0.325
    assert forgetting(ACC) == pytest.approx(0.325)


def test_backward_transfer_higher_is_better() -> None:
    # ((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2 = ((0.60 - 0.90) + (0.50 - 0.80)) / 2 = -0.30
    assert backward_transfer(ACC) == pytest.approx(-0.30)


def test_forgetting_lower_is_better_is_positive_when_perplexity_rises() -> None:
    # task 0: R[2][0] - min(R[0][0], R[1][0]) = 14 - min(10, 8) = 6
    # task 1: R[2][1] - min(R[1][1])          = 18 - 12         = 6
    # mean = 6 (> 0: worse on old tasks)
    assert forgetting(PPL, higher_is_better=False) == pytest.approx(6.0)


def test_backward_transfer_lower_is_better_is_negative_when_perplexity_rises() -> None:
    # -(((14 - 10) + (18 - 12)) / 2) = -((4 + 6) / 2) = -5 (< 0: worse on old tasks)
    assert backward_transfer(PPL, higher_is_better=False) == pytest.approx(-5.0)


def test_improving_on_old_tasks_gives_negative_forgetting_and_positive_bwt() -> None:
    # Accuracy on task 0 goes 0.5 -> 0.7: forgetting = 0.5 - 0.7 = -0.2, bwt = 0.7 - 0.5 = +0.2
    assert forgetting([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(-0.2)
    assert backward_transfer([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(0.2)
    # Perplexity on task 0 goes 20 -> 15: forgetting = 15 - 20 = -5, bwt = -(15 - 20) = +5
    assert forgetting([[20.0, 90.0], [15.0, 9.0]], higher_is_better=False) == pytest.approx(-5.0)
    assert backward_transfer([[20.0, 90.0], [15.0, 9.0]], higher_is_better=False) == pytest.approx(5.0)


def test_lower_is_better_mirrors_higher_is_better() -> None:
    # Negating scores turns accuracy into a lower-is-better score with the same story, so every
    # direction-aware metric must come out identical.
    neg = (-np.array(ACC)).tolist()
    neg_initial = [-x for x in ACC_INITIAL]
    neg_scratch = [-x for x in ACC_SCRATCH]
    assert forgetting(neg, higher_is_better=False) == pytest.approx(forgetting(ACC))
    assert backward_transfer(neg, higher_is_better=False) == pytest.approx(backward_transfer(ACC))
    assert forward_transfer(neg, neg_initial, higher_is_better=False) == pytest.approx(
        forward_transfer(ACC, ACC_INITIAL)
    )
    assert forward_transfer_from_scratch(neg, neg_scratch, higher_is_better=False) == pytest.approx(
        forward_transfer_from_scratch(ACC, ACC_SCRATCH)
    )


# ---------------------------------------------------------------- forward transfer


def test_forward_transfer_gem() -> None:
    # ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2 = ((0.85 - 0.50) + (0.30 - 0.20)) / 2 = 0.45 / 2 = 0.225
    assert forward_transfer(ACC, ACC_INITIAL) == pytest.approx(0.225)


def test_forward_transfer_gem_lower_is_better() -> None:
    # -(((50 - 100) + (40 - 100)) / 2) = -(-110 / 2) = 55 (> 0: earlier tasks helped)
    assert forward_transfer(PPL, PPL_INITIAL, higher_is_better=False) == pytest.approx(55.0)


def test_forward_transfer_from_scratch() -> None:
    # ((R[1][1] - s[1]) + (R[2][2] - s[2])) / 2 = ((0.80 - 0.70) + (0.90 - 0.95)) / 2 = 0.05 / 2 = 0.025
    assert forward_transfer_from_scratch(ACC, ACC_SCRATCH) == pytest.approx(0.025)


def test_forward_transfer_from_scratch_lower_is_better() -> None:
    # -(((12 - 15) + (11 - 10)) / 2) = -(-2 / 2) = 1
    assert forward_transfer_from_scratch(PPL, PPL_SCRATCH, higher_is_better=False) == pytest.approx(1.0)


def test_forward_transfer_without_baseline_is_none() -> None:
    assert forward_transfer(ACC, None) is None
    assert forward_transfer_from_scratch(ACC, None) is None


def test_forward_transfer_baseline_wrong_length_raises() -> None:
    with pytest.raises(LifelongError, match="one score per task"):
        forward_transfer(ACC, [0.1, 0.2])
    with pytest.raises(LifelongError, match="one score per task"):
        forward_transfer_from_scratch(ACC, [0.1, 0.2, 0.3, 0.4])


def test_forward_transfer_baseline_nan_raises() -> None:
    with pytest.raises(LifelongError, match="NaN"):
        forward_transfer(ACC, [0.1, math.nan, 0.2])


# ---------------------------------------------------------------- single task


def test_single_task_metrics() -> None:
    one = [[0.7]]
    assert average_accuracy(one) == pytest.approx(0.7)
    assert average_incremental_accuracy(one) == pytest.approx(0.7)
    assert forgetting(one) is None
    assert backward_transfer(one) is None
    assert forgetting(one, higher_is_better=False) is None
    assert backward_transfer(one, higher_is_better=False) is None
    assert forward_transfer(one, [0.1]) is None
    assert forward_transfer_from_scratch(one, [0.5]) is None


# ---------------------------------------------------------------- forgetting rate


def test_forgetting_rate_higher_is_better() -> None:
    # (0.9 - 0.6) / 0.9 = 1/3 ; (0.8 - 0.5) / 0.8 = 0.375 ; (0.9 - 0.9) / 0.9 = 0
    rates = forgetting_rate([0.9, 0.8, 0.9], [0.6, 0.5, 0.9])
    assert rates == pytest.approx([1.0 / 3.0, 0.375, 0.0])


def test_forgetting_rate_lower_is_better() -> None:
    # (14 - 10) / 10 = 0.4 ; (18 - 12) / 12 = 0.5 ; (9 - 12) / 12 = -0.25 (perplexity fell: improved)
    rates = forgetting_rate([10.0, 12.0, 12.0], [14.0, 18.0, 9.0], higher_is_better=False)
    assert rates == pytest.approx([0.4, 0.5, -0.25])


def test_forgetting_rate_zero_before_is_none() -> None:
    # before = 0 -> undefined (the seed divided by zero here); (0.5 - 0.25) / 0.5 = 0.5
    rates = forgetting_rate([0.0, 0.5], [0.2, 0.25])
    assert rates[0] is None
    assert rates[1] == pytest.approx(0.5)
    # lower-is-better: (0.25 - 0.5) / 0.5 = -0.5
    rates = forgetting_rate([0.0, 0.5], [0.2, 0.25], higher_is_better=False)
    assert rates[0] is None
    assert rates[1] == pytest.approx(-0.5)


def test_forgetting_rate_negative_scores_keep_sign_meaning() -> None:
    # log-likelihood (higher is better) drops -2 -> -3: (-2 - -3) / |-2| = 0.5 > 0, i.e. forgetting
    assert forgetting_rate([-2.0], [-3.0]) == pytest.approx([0.5])


def test_forgetting_rate_length_mismatch_raises() -> None:
    with pytest.raises(LifelongError, match="same length"):
        forgetting_rate([0.9, 0.8], [0.5])


def test_compute_forgetting_rate_by_name() -> None:
    # a: (0.8 - 0.6) / 0.8 = 0.25 ; b: before 0 -> None ; c: (0.5 - 0.5) / 0.5 = 0
    result = compute_forgetting_rate({"a": 0.8, "b": 0.0, "c": 0.5}, {"c": 0.5, "b": 0.3, "a": 0.6})
    assert list(result) == ["a", "b", "c"]
    assert result["a"] == pytest.approx(0.25)
    assert result["b"] is None
    assert result["c"] == pytest.approx(0.0)


def test_compute_forgetting_rate_lower_is_better() -> None:
    # (30 - 20) / 20 = 0.5
    result = compute_forgetting_rate({"wiki": 20.0}, {"wiki": 30.0}, higher_is_better=False)
    assert result == {"wiki": pytest.approx(0.5)}


def test_compute_forgetting_rate_missing_after_raises() -> None:
    with pytest.raises(LifelongError, match="'b'"):
        compute_forgetting_rate({"a": 0.8, "b": 0.7}, {"a": 0.6})


def test_compute_forgetting_rate_missing_before_raises() -> None:
    with pytest.raises(LifelongError, match="'z'"):
        compute_forgetting_rate({"a": 0.8}, {"a": 0.6, "z": 0.1})


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "square"),
        ([[0.1, 0.2], [0.3]], "rectangular"),
        ([[0.1, math.nan], [0.3, 0.4]], "NaN"),
        (np.array([[0.1, 0.2], [np.inf, 0.4]]), "NaN or infinite"),
        ([], "empty"),
        ([[]], "empty"),
        ([0.1, 0.2], "2-dimensional"),
        ([["0.1", "0.2"], ["0.3", "0.4"]], "real numbers"),
        ([[True, False], [False, True]], "real numbers"),
    ],
)
def test_bad_matrix_raises(matrix: Any, message: str) -> None:
    with pytest.raises(LifelongError, match=message):
        average_accuracy(matrix)
    with pytest.raises(LifelongError, match=message):
        summarize(matrix, ["a", "b"])


def test_error_message_is_one_line() -> None:
    with pytest.raises(LifelongError) as info:
        forgetting([[0.1, 0.2], [0.3]])
    assert "\n" not in str(info.value)


def test_numpy_input_gives_plain_python_floats() -> None:
    arr = np.array(ACC, dtype=np.float32)
    values = [
        average_accuracy(arr),
        average_incremental_accuracy(arr),
        forgetting(arr),
        backward_transfer(arr),
        forward_transfer(arr, np.array(ACC_INITIAL)),
        forward_transfer_from_scratch(arr, np.array(ACC_SCRATCH)),
    ]
    assert all(type(v) is float for v in values)
    assert all(type(v) is float for v in forgetting_rate(np.diag(arr).tolist(), arr[2].tolist()))
    assert forgetting(arr) == pytest.approx(0.325, abs=1e-6)


def test_integer_matrix_accepted() -> None:
    # forgetting: max(R[0][0]) - R[1][0] = 2 - 1 = 1
    assert forgetting([[2, 0], [1, 3]]) == pytest.approx(1.0)


# ---------------------------------------------------------------- summarize


def test_summarize_keys_and_values_with_scratch() -> None:
    result = summarize(ACC, NAMES, initial_scores=ACC_INITIAL, scratch_scores=ACC_SCRATCH)
    assert set(result) == {
        "average_accuracy",
        "average_incremental_accuracy",
        "forgetting",
        "bwt",
        "fwt",
        "forgetting_rate",
    }
    assert result["average_accuracy"] == pytest.approx(2.0 / 3.0)
    assert result["average_incremental_accuracy"] == pytest.approx(0.8138888889)
    assert result["forgetting"] == pytest.approx(0.325)
    assert result["bwt"] == pytest.approx(-0.30)
    assert result["fwt"] == pytest.approx(0.025)  # scratch wins over initial (0.225)
    # before = diag (0.90, 0.80, 0.90), after = last row (0.60, 0.50, 0.90)
    assert result["forgetting_rate"] == {
        "a": pytest.approx(1.0 / 3.0),
        "b": pytest.approx(0.375),
        "c": pytest.approx(0.0),
    }


def test_summarize_fwt_falls_back_to_initial_then_none() -> None:
    assert summarize(ACC, NAMES, initial_scores=ACC_INITIAL)["fwt"] == pytest.approx(0.225)
    assert summarize(ACC, NAMES)["fwt"] is None


def test_summarize_accepts_baselines_keyed_by_task_name() -> None:
    scratch = {"c": 0.95, "a": 0.0, "b": 0.70}
    assert summarize(ACC, NAMES, scratch_scores=scratch)["fwt"] == pytest.approx(0.025)
    with pytest.raises(LifelongError, match="'c'"):
        summarize(ACC, NAMES, initial_scores={"a": 0.1, "b": 0.5})


def test_summarize_perplexity() -> None:
    result = summarize(PPL, NAMES, higher_is_better=False, initial_scores=PPL_INITIAL)
    assert result["average_accuracy"] == pytest.approx(43.0 / 3.0)  # (14 + 18 + 11) / 3
    assert result["forgetting"] == pytest.approx(6.0)
    assert result["bwt"] == pytest.approx(-5.0)
    assert result["fwt"] == pytest.approx(55.0)
    # (14 - 10) / 10 = 0.4 ; (18 - 12) / 12 = 0.5 ; (11 - 11) / 11 = 0
    assert result["forgetting_rate"] == {
        "a": pytest.approx(0.4),
        "b": pytest.approx(0.5),
        "c": pytest.approx(0.0),
    }


def test_summarize_single_task() -> None:
    result = summarize([[0.7]], ["only"], initial_scores=[0.1])
    assert result["average_accuracy"] == pytest.approx(0.7)
    assert result["forgetting"] is None
    assert result["bwt"] is None
    assert result["fwt"] is None
    assert result["forgetting_rate"] == {"only": 0.0}


def test_summarize_is_json_serialisable() -> None:
    import json

    result = summarize(np.array(ACC), NAMES, scratch_scores=np.array(ACC_SCRATCH))
    assert json.loads(json.dumps(result))["forgetting"] == pytest.approx(0.325)


def test_summarize_task_name_count_must_match() -> None:
    with pytest.raises(LifelongError, match="2 task name"):
        summarize(ACC, ["a", "b"])
    with pytest.raises(LifelongError, match="unique"):
        summarize(ACC, ["a", "a", "b"])
