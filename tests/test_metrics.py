import numpy as np
import pytest

from gpua.metrics import (
    classification_report,
    hubness_skewness,
    k_occurrence,
    mean_per_class_recall,
    robin_hood_index,
    topk_accuracy,
)


def test_topk_by_hand():
    S = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    y = np.array([0, 1, 1, 2])
    assert topk_accuracy(S, y, 1) == 0.5
    assert topk_accuracy(S, y, 2) == 0.75
    assert topk_accuracy(S, y, 3) == 1.0


def test_mean_per_class_recall_weights_classes_equally():
    y = np.array([0] * 9 + [1])
    pred = np.zeros(10, dtype=int)
    assert mean_per_class_recall(pred, y) == pytest.approx(0.5)


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


def test_report_keys():
    rep = classification_report(np.eye(4), np.arange(4))
    assert rep["acc1"] == rep["acc5"] == rep["mean_per_class_recall"] == 1.0
