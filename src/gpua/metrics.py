"""Scores for zero-shot classification and alignment diagnostics.

Labels enter here and nowhere in fitting. The accuracy names follow CLIP_benchmark
(``acc1``, ``acc5``, ``mean_per_class_recall``).
"""

from __future__ import annotations

import numpy as np

from ._errors import GPUAError

__all__ = [
    "topk_accuracy",
    "mean_per_class_recall",
    "k_occurrence",
    "hubness_skewness",
    "robin_hood_index",
    "classification_report",
]


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    S = np.asarray(scores)
    y = np.asarray(labels)
    if S.ndim != 2 or y.ndim != 1 or S.shape[0] != y.shape[0]:
        raise GPUAError(f"scores (n, K) and labels (n,) do not match: {S.shape} vs {y.shape}.")
    return S, y.astype(np.int64)


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores.

    Parameters
    ----------
    scores : array of shape (n_samples, n_classes)
    labels : int array of shape (n_samples,)
    """
    S, y = _scores_labels(scores, labels)
    k = min(k, S.shape[1])
    top = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def mean_per_class_recall(pred, labels, n_classes: int | None = None) -> float:
    """Recall averaged over the classes present in ``labels``."""
    pred = np.asarray(pred)
    y = np.asarray(labels)
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def k_occurrence(scores, k: int = 10) -> np.ndarray:
    r"""How often each column is among a row's ``k`` best: :math:`N_k(c)`.

    For queries (rows) against prototypes (columns) a skewed :math:`N_k` marks hubs: prototypes
    that are near everything.

    Returns
    -------
    counts : int array of shape (n_classes,)
    """
    S = np.asarray(scores)
    k = min(k, S.shape[1])
    top = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return np.bincount(top.ravel(), minlength=S.shape[1])


def hubness_skewness(scores, k: int = 10) -> float:
    r"""Skewness of the k-occurrence distribution (Radovanovic et al., 2010); 0 = no hubs."""
    from scipy.stats import skew

    counts = k_occurrence(scores, k).astype(np.float64)
    if np.allclose(counts, counts[0]):
        return 0.0
    return float(skew(counts))


def robin_hood_index(scores, k: int = 10) -> float:
    r"""Robin Hood index :math:`\tfrac12 \sum_c |N_k(c) - \bar N_k| / \sum_c N_k(c)` in [0, 1).

    The share of k-occurrences that would have to move to make them uniform (Feldbauer et al.,
    2018).
    """
    counts = k_occurrence(scores, k).astype(np.float64)
    return float(0.5 * np.abs(counts - counts.mean()).sum() / counts.sum())


def classification_report(scores, labels, *, hubness_k: int = 10) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall``, hubness skewness and Robin Hood index."""
    S, y = _scores_labels(scores, labels)
    pred = S.argmax(1)
    # k-occurrence over k >= K columns is flat by construction: cap k at half the classes.
    hubness_k = max(1, min(hubness_k, S.shape[1] // 2))
    return {
        "acc1": topk_accuracy(S, y, 1),
        "acc5": topk_accuracy(S, y, 5),
        "mean_per_class_recall": mean_per_class_recall(pred, y),
        "hubness_skewness": hubness_skewness(S, hubness_k),
        "robin_hood_index": robin_hood_index(S, hubness_k),
    }
