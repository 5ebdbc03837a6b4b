import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    hubness_skewness,
    k_occurrence,
    mean_per_class_recall,
    robin_hood_index,
    score_summary,
    topk_accuracy,
)


def test_topk_by_hand_in_sklearn_order():
    S = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    y = np.array([0, 1, 1, 2])
    assert topk_accuracy(y, S, 1) == 0.5
    assert topk_accuracy(y, S, 2) == 0.75
    assert topk_accuracy(y, S, k=(1, 2, 3)) == (0.5, 0.75, 1.0)
    assert topk_accuracy(y, S, k=(1, 5)) == (0.5, 1.0)  # k above K: 1.0
    with pytest.raises(GPUAError, match="scikit-learn's order"):
        topk_accuracy(S, y)
    with pytest.raises(GPUAError, match="positive integer"):
        topk_accuracy(y, S, k=0)


def test_topk_matches_sklearn():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(0)
    S = rng.random((300, 12))
    y = rng.integers(0, 12, 300)
    for k in (1, 2, 5):
        assert topk_accuracy(y, S, k) == pytest.approx(top_k_accuracy_score(y, S, k=k, labels=np.arange(12)))


def test_mean_per_class_recall_weights_classes_equally():
    y = np.array([0] * 9 + [1])
    pred = np.zeros(10, dtype=int)
    assert mean_per_class_recall(y, pred) == pytest.approx(0.5)
    # the order matters: swapped, this would be the mean precision over predicted classes (0.9)
    assert mean_per_class_recall(pred, y) != pytest.approx(0.5)


def test_confusion_and_per_class_report_match_sklearn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    p[p == 3] = 2  # class 3 never predicted: precision 0, as zero_division=0
    np.testing.assert_array_equal(confusion_matrix(y, p, 4), skm.confusion_matrix(y, p, labels=range(4)))
    ours = classification_report(y, p, classnames=["a", "b", "c", "d"])
    ref = skm.classification_report(y, p, labels=range(4), target_names=["a", "b", "c", "d"], output_dict=True, zero_division=0)
    for name in ("a", "b", "c", "d", "macro avg", "weighted avg"):
        for key in ("precision", "recall", "f1-score", "support"):
            assert ours[name][key] == pytest.approx(ref[name][key]), (name, key)
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])


def test_k_occurrence_and_hubs():
    S = np.zeros((100, 5))
    S[:, 0] = 1.0  # class 0 is everyone's nearest: a hub
    S[np.arange(100), 1 + np.arange(100) % 4] = 0.5
    assert k_occurrence(S, 1)[0] == 100
    assert robin_hood_index(S, 1) == pytest.approx(0.8)
    flat = np.eye(5).repeat(20, axis=0)
    assert robin_hood_index(flat, 1) == 0.0
    assert hubness_skewness(flat, 1) == 0.0
    S2 = np.random.default_rng(0).random((200, 20))
    S2[:, 3] += 0.5
    assert hubness_skewness(S2, 2) > hubness_skewness(np.random.default_rng(0).random((200, 20)), 2)


def test_k_occurrence_defaults_to_half_the_classes_and_refuses_k_of_every_class():
    S = np.random.default_rng(0).normal(size=(50, 10))
    assert k_occurrence(S).sum() == 50 * 5  # min(10, K // 2) per row, as hubness_skewness and robin_hood_index
    np.testing.assert_array_equal(k_occurrence(S), k_occurrence(S, 5))
    S4 = np.random.default_rng(0).normal(size=(50, 4))
    for k in (4, 10):  # was cut to 4 quietly: every class counted in every row, [50 50 50 50] whatever the scores
        with pytest.raises(GPUAError, match=f"k={k} counts all 4 classes"):
            k_occurrence(S4, k)
    assert k_occurrence(S4, 3).sum() == 150


def test_summary_keys():
    rep = score_summary(np.arange(4), np.eye(4))
    assert rep["acc1"] == rep["acc5"] == rep["mean_per_class_recall"] == 1.0
    assert rep["n_classes"] == 4


def test_expected_calibration_error_by_hand_and_its_extremes():
    # bins of 1/10: a right row at 0.9 and a wrong one at 0.8, each half the rows
    assert expected_calibration_error([0, 1], [[0.9, 0.1], [0.8, 0.2]], n_bins=10) == pytest.approx(0.45)
    # a model sure of every row and right in 60% of them: 0.4
    y = np.array([0, 0, 0, 1, 1])
    P = np.tile([1.0, 0.0], (5, 1))
    assert expected_calibration_error(y, P) == pytest.approx(0.4)
    # calibrated by construction: in each bin the accuracy is the mean top probability
    rng = np.random.default_rng(0)
    top = rng.choice([0.55, 0.75, 0.95], size=20000)
    P = np.stack([top, 1 - top], axis=1)
    y = np.where(rng.random(20000) < top, 0, 1)
    assert expected_calibration_error(y, P) < 0.02


def test_expected_calibration_error_refuses_scores_and_bad_bins():
    with pytest.raises(GPUAError, match="not a probability distribution.*predict_proba"):
        expected_calibration_error([0, 1], [[0.3, 0.1], [0.2, 0.25]])
    with pytest.raises(GPUAError, match="n_bins"):
        expected_calibration_error([0], [[1.0, 0.0]], n_bins=0)
    with pytest.raises(GPUAError, match="scikit-learn's order"):
        expected_calibration_error([[1.0, 0.0]], [0])


def test_calibration_error_names_its_argument_and_a_top_probability_vector():
    """Was: "y_true (n,) and y_score (n, K) do not match: (2,) vs (2,)" for predict_proba's top column alone."""
    from gpua.metrics import expected_calibration_error

    with pytest.raises(GPUAError, match=r"y_proba \(n, K\) do not match: \(2,\) vs \(2,\); pass one y_proba row per sample"):
        expected_calibration_error([0, 1], [0.9, 0.8])
    with pytest.raises(GPUAError, match="y_proba holds NaN"):
        expected_calibration_error([0, 1], [[np.nan, 0.5], [0.5, 0.5]])
