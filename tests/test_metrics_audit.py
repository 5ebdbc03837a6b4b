"""Scores an audit found wrong without a word (each test failed before its fix)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.metrics import classification_report, k_occurrence, mean_per_class_recall, score_summary, topk_accuracy


def test_tied_scores_rank_as_predict_does():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(500, 6))
    S[:, 4] = S[:, 2]  # two classes with one prototype: argmax takes class 2, never 4
    y = rng.integers(0, 6, 500)
    pred = S.argmax(1)
    assert topk_accuracy(y, S, 1) == pytest.approx(np.mean(pred == y))  # was below: ties broken arbitrarily
    assert score_summary(y, S)["acc1"] == pytest.approx(np.mean(pred == y))
    # top-k: the stable order (score descending, index ascending)
    order = np.argsort(-S, axis=1, kind="stable")
    for k in (2, 3):
        assert topk_accuracy(y, S, k) == pytest.approx(np.mean((order[:, :k] == y[:, None]).any(1)))
    np.testing.assert_array_equal(k_occurrence(S, 2), np.bincount(order[:, :2].ravel(), minlength=6))


@pytest.mark.parametrize("labels, message", [([0, 1, -1, 2], "negative values"), ([0, 1, 3, 2], r"outside \[0, 3\)"),
                                             ([0.9, 1.2, 2, 0], "integer class indices")])
def test_metrics_refuse_labels_that_are_not_class_indices(labels, message):
    S = np.eye(4, 3)
    with pytest.raises(GPUAError, match=message):
        topk_accuracy(np.array(labels), S)  # was: acc1 0.5 for the first, 1.0 (truncated) for the last
    if message != r"outside \[0, 3\)":
        with pytest.raises(GPUAError, match=message):
            mean_per_class_recall(np.array(labels), np.array([0, 1, 2, 0]))


def test_a_class_named_like_a_summary_entry_keeps_its_row():
    rep = classification_report([0, 1, 1, 2], [0, 1, 0, 2], classnames=["cat", "accuracy", "macro avg"])
    assert rep["accuracy (class 1)"]["support"] == 2 and rep["macro avg (class 2)"]["recall"] == 1.0
    assert rep["accuracy"] == pytest.approx(0.75)  # the summary figure, not overwritten by the class


@pytest.fixture
def fitted(tmp_path):
    from gpua import GPUA
    from gpua.synthetic import make_planted

    d = make_planted(400, 8, 16, 12, 6, random_state=0)
    model = GPUA(n_steps=10, self_learning=0, random_state=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    model.save(tmp_path / "m.gpua")
    return tmp_path, d, model


def test_labels_beyond_the_models_classes_are_refused(fitted, capsys):
    from gpua.cli import main
    from gpua.features import save_features

    tmp_path, d, _ = fitted
    labels = d.labels.copy()
    labels[:5] = 9  # the model has 8 classes; the file names none, so it is matched by index
    save_features(tmp_path / "t.npz", vfm_features=d.vfm_features, vlm_features=d.vlm_features, labels=labels)
    assert main(["evaluate", "--model", str(tmp_path / "m.gpua"), "--test", str(tmp_path / "t.npz")]) == 2
    assert "labels (mapped onto the model's 8 classes) holds values outside [0, 8)" in capsys.readouterr().err  # was: scored


def test_predictions_csv_ranks_by_scores_not_underflowed_probabilities(fitted):
    from gpua.cli import main

    from gpua.features import save_features

    tmp_path, d, model = fitted
    save_features(tmp_path / "f.npz", vfm_features=d.vfm_features, vlm_features=d.vlm_features, text_prototypes=d.text_prototypes)
    model.set_params(logit_scale=5000.0)  # every probability but the top one underflows to 0 in float32
    model.save(tmp_path / "sharp.gpua")
    assert main(["predict", "--model", str(tmp_path / "sharp.gpua"), "--features", str(tmp_path / "f.npz"),
                 "--out", str(tmp_path / "p.csv"), "--top-k", "4"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    order = np.argsort(-model.decision_function(d.vfm_features, d.vlm_features), axis=1, kind="stable")[:, :4]
    listed = np.array([[int(r[f"top{i}"]) for i in range(1, 5)] for r in rows])
    np.testing.assert_array_equal(listed, order)  # was: the zero-probability classes in index order


def test_hubness_measures_default_to_a_k_below_the_class_count():
    """With 10 classes the default k=10 counted every class in every row: 0.0 ("no hubs") whatever the scores."""
    from gpua._errors import GPUAError
    from gpua.metrics import hubness_skewness, robin_hood_index, score_summary

    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 10))
    S[:, 3] += 2.0  # a hub
    summary = score_summary(rng.integers(0, 10, 300), S)
    assert hubness_skewness(S) == summary["hubness_skewness"] > 0.5  # k = 5, as score_summary (was 0.0)
    assert robin_hood_index(S) == summary["robin_hood_index"] > 0.05
    with pytest.raises(GPUAError, match=r"k=10 counts all 10 classes in every row.* use k < 10"):
        hubness_skewness(S, k=10)
    assert hubness_skewness(S, k=3) > 0
