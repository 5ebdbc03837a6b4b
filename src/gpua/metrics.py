"""Scores for zero-shot classification and alignment diagnostics.

Labels enter here and nowhere in fitting. Arguments come in scikit-learn's order: the truth
first (``y_true``), then the predictions (``y_pred``) or the class scores (``y_score``, shape
``(n_samples, n_classes)``). The accuracy names follow CLIP_benchmark (``acc1``, ``acc5``,
``mean_per_class_recall``).

* :func:`topk_accuracy`, :func:`mean_per_class_recall`, :func:`score_summary`: the headline
  figures of one evaluation.
* :func:`confusion_matrix`, :func:`classification_report`: per class (precision, recall, F1,
  support), as scikit-learn's functions of the same names.
* :func:`k_occurrence`, :func:`hubness_skewness`, :func:`robin_hood_index`: hubness.
* :func:`expected_calibration_error`: how far ``predict_proba``'s top probabilities are from
  the accuracy of the rows that have them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._errors import GPUAError
from ._validation import check_classnames, check_labels, check_number

__all__ = [
    "topk_accuracy",
    "mean_per_class_recall",
    "confusion_matrix",
    "classification_report",
    "score_summary",
    "k_occurrence",
    "hubness_skewness",
    "robin_hood_index",
    "capped_hubness_k",
    "expected_calibration_error",
]


def _labels_scores(y_true, y_score, name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and the scores (named ``name`` in messages: ``y_proba`` for probabilities), checked."""
    y = np.asarray(y_true)
    S = np.asarray(y_score)
    if y.ndim == 2 and S.ndim == 1:
        raise GPUAError(
            f"y_true has shape {y.shape} and {name} {S.shape}: pass (y_true, {name}) in scikit-learn's order, "
            "the labels first."
        )
    if S.ndim != 2 or y.ndim != 1 or S.shape[0] != y.shape[0]:
        raise GPUAError(f"y_true (n,) and {name} (n, K) do not match: {y.shape} vs {S.shape}"
                        + (f"; pass one {name} row per sample, over the K classes, not only the top value." if S.ndim == 1 else "."))
    if y.shape[0] == 0:
        raise GPUAError(f"y_true and {name} have no rows: there is nothing to score; pass at least one sample.")
    if S.dtype.kind not in "fiub":
        # strings compare alphabetically, and the ranks would be of the text
        raise GPUAError(f"{name} has dtype {S.dtype}; pass numeric class scores (one float per class).")
    if S.dtype.kind == "f" and np.isnan(S).any():
        rows = np.unique(np.nonzero(np.isnan(S))[0])
        # NaN compares False with everything: such a row ranked its true class first, a sure top-1 hit
        raise GPUAError(
            f"{name} holds NaN in {rows.size} row(s) (first: row {rows[0]}); the scores cannot rank the classes: "
            "re-extract or drop those rows."
        )
    return check_labels(y, y.shape[0], S.shape[1], name="y_true"), S


def _labels_pred(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if y.ndim != 1 or p.shape != y.shape:
        raise GPUAError(
            f"y_true and y_pred must be 1-D arrays of the same length, got {y.shape} and {p.shape} "
            "(for class scores use topk_accuracy / score_summary)."
        )
    unbounded = np.iinfo(np.int64).max  # no class count here: integers >= 0, checked as such
    return check_labels(y, y.shape[0], unbounded, name="y_true"), check_labels(p, p.shape[0], unbounded, name="y_pred")


#: The summary entries of :func:`classification_report` (scikit-learn's keys).
_SUMMARY_KEYS = ("accuracy", "macro avg", "weighted avg")


def _ranks_above(y_score: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""How many classes rank above the true class in each row: a higher score, or an equal score
    and a lower index.

    That is the estimators' ``predict`` order (``argmax`` takes the first of tied maxima), so a row is a
    top-1 hit exactly when it is predicted right, whatever ties the scores hold.

    Returns
    -------
    int array of shape (n_samples,)
    """
    true = y_score[np.arange(y.shape[0]), y][:, None]
    earlier = np.arange(y_score.shape[1])[None, :] < y[:, None]
    return ((y_score > true) | ((y_score == true) & earlier)).sum(1)


def topk_accuracy(y_true, y_score, k: int | Sequence[int] = 1) -> float | tuple[float, ...]:
    """Fraction of rows whose true label is among the ``k`` highest scores.

    Parameters
    ----------
    y_true : int array of shape (n_samples,)
    y_score : array of shape (n_samples, n_classes)
    k : int or sequence of int
        One ``k``, or several (``k=(1, 5)`` gives the pair ``(acc1, acc5)``). A ``k`` at or
        above ``n_classes`` gives 1.0: the figure says nothing then.

    Returns
    -------
    float, or a tuple of floats (one per ``k``) when ``k`` is a sequence
    """
    y, S = _labels_scores(y_true, y_score)
    ks = (k,) if np.isscalar(k) else tuple(k)
    if not ks or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in ks):
        raise GPUAError(f"k={k!r} must be a positive integer or a sequence of them, e.g. k=(1, 5).")
    above = _ranks_above(S, y)
    out = tuple(float(np.mean(above < int(v))) for v in ks)
    return out[0] if np.isscalar(k) else out


def mean_per_class_recall(y_true, y_pred) -> float:
    """Recall averaged over the classes present in ``y_true`` (CLIP_benchmark's figure).

    Parameters
    ----------
    y_true, y_pred : int arrays of shape (n_samples,)
    """
    y, p = _labels_pred(y_true, y_pred)
    if y.size == 0:
        raise GPUAError("y_true is empty: there is no class to average the recall over; pass at least one sample.")
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))


def expected_calibration_error(y_true, y_proba, *, n_bins: int = 15) -> float:
    r"""Expected calibration error of the top probability (Guo et al., 2017: equal-width bins).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|I_b|}{n} \Big| \frac1{|I_b|}\sum_{i \in I_b} [\hat y_i = y_i]
        - \frac1{|I_b|}\sum_{i \in I_b} \max_k p_{ik} \Big|,

    with :math:`I_b` the rows whose top probability lies in :math:`((b-1)/B,\ b/B]`. 0 when, in
    every bin, the mean top probability is the accuracy; a model that says 1 for every row and
    is right in 60% of them has 0.4.

    Parameters
    ----------
    y_true : int array of shape (n_samples,)
    y_proba : array of shape (n_samples, n_classes)
        Class probabilities (``predict_proba``), rows summing to one.
    n_bins : int >= 1, default=15

    Returns
    -------
    float

    Examples
    --------
    >>> expected_calibration_error([0, 1], [[0.9, 0.1], [0.8, 0.2]], n_bins=10)
    0.45
    """
    y, P = _labels_scores(y_true, y_proba, "y_proba")
    n_bins = int(check_number(n_bins, "n_bins", integer=True, low=1))
    P = P.astype(np.float64)
    sums = P.sum(1)
    if (P < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
        row = int(np.nonzero((P < 0).any(1) | ~np.isclose(sums, 1.0, atol=1e-3))[0][0])
        raise GPUAError(
            f"y_proba row {row} is not a probability distribution (sum {sums[row]:.4g}, min {P[row].min():.4g}); "
            "pass predict_proba's output, not decision_function's scores."
        )
    top = P.max(1)
    right = (P.argmax(1) == y).astype(np.float64)
    bins = np.clip(np.ceil(top * n_bins).astype(int) - 1, 0, n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        rows = bins == b
        error += rows.mean() * abs(right[rows].mean() - top[rows].mean())
    return float(error)


def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (scikit-learn's layout).

    Parameters
    ----------
    y_true, y_pred : int arrays of shape (n_samples,)
    n_classes : int, optional
        Default: one more than the largest label or prediction.

    Returns
    -------
    int array of shape (n_classes, n_classes)
    """
    y, p = _labels_pred(y_true, y_pred)
    if n_classes is not None:
        # 3.5 used to be truncated to 3 classes without a word
        n_classes = check_number(n_classes, "n_classes", integer=True, low=0, fix="the number of classes, e.g. len(classnames)")
    K = int(max(y.max(initial=-1), p.max(initial=-1)) + 1) if n_classes is None else int(n_classes)
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= K):
        raise GPUAError(f"labels and predictions must lie in [0, {K}); got [{min(y.min(), p.min())}, {max(y.max(), p.max())}].")
    return np.bincount(y * K + p, minlength=K * K).reshape(K, K)


def classification_report(y_true, y_pred, *, classnames: Sequence[str] | None = None, n_classes: int | None = None) -> dict:
    """Precision, recall, F1 and support per class, as scikit-learn's ``output_dict=True`` form.

    Parameters
    ----------
    y_true, y_pred : int arrays of shape (n_samples,)
    classnames : sequence of str, optional
        Keys of the per-class entries (default ``"0"``, ``"1"``...); their count fixes ``n_classes``.
    n_classes : int, optional

    Returns
    -------
    dict
        ``{name: {"precision", "recall", "f1-score", "support"}}`` for every class, then
        ``"accuracy"``, ``"macro avg"`` and ``"weighted avg"``. A class never predicted has
        precision 0 (scikit-learn's ``zero_division=0``); a class absent from ``y_true`` has
        support 0 and recall 0. A class named like a summary entry (``"accuracy"``...) is keyed
        ``"accuracy (class 3)"``, so neither overwrites the other.
    """
    if classnames is not None:
        # a repeated name used to key two classes to one entry (the earlier one lost without a word),
        # and one string was read as one class per character
        classnames = check_classnames(classnames, len(classnames) if not isinstance(classnames, (str, bytes)) else 1)
        n_classes = len(classnames)
    C = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    tp, support, predicted = np.diag(C), C.sum(1), C.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    names = [str(c) for c in classnames] if classnames is not None else [str(k) for k in range(C.shape[0])]
    names = [f"{n} (class {k})" if n in _SUMMARY_KEYS else n for k, n in enumerate(names)]
    out: dict = {
        n: {"precision": float(precision[k]), "recall": float(recall[k]), "f1-score": float(f1[k]), "support": int(support[k])}
        for k, n in enumerate(names)
    }
    total = support.sum()
    out["accuracy"] = float(tp.sum() / total) if total else 0.0
    w = support / total if total else np.zeros_like(support)
    for key, avg in (("macro avg", lambda a: float(a.mean())), ("weighted avg", lambda a: float((a * w).sum()))):
        out[key] = {"precision": avg(precision), "recall": avg(recall), "f1-score": avg(f1), "support": int(total)}
    return out


def score_summary(y_true, y_score, *, hubness_k: int = 10) -> dict[str, float]:
    """The headline figures of one evaluation from the class scores.

    Returns
    -------
    dict
        ``acc1``, ``acc5``, ``mean_per_class_recall``, ``hubness_skewness``,
        ``robin_hood_index`` and ``n_classes`` (with 5 classes or fewer ``acc5`` is 1.0 by
        construction; :func:`gpua.report.format_table` flags it).
    """
    y, S = _labels_scores(y_true, y_score)
    acc1, acc5 = topk_accuracy(y, S, k=(1, 5))
    hubness_k = capped_hubness_k(hubness_k, S.shape[1])
    return {
        "acc1": acc1,
        "acc5": acc5,
        "mean_per_class_recall": mean_per_class_recall(y, S.argmax(1)),
        "hubness_skewness": hubness_skewness(S, hubness_k),
        "robin_hood_index": robin_hood_index(S, hubness_k),
        "n_classes": int(S.shape[1]),
    }


def k_occurrence(scores, k: int | None = None) -> np.ndarray:
    r"""How often each column is among a row's ``k`` best: :math:`N_k(c)`.

    .. math::
        N_k(c) = \#\{i : c \in \mathrm{top}_k(s_{i\cdot})\}


    For queries (rows) against prototypes (columns) a skewed :math:`N_k` marks hubs: prototypes
    that are near everything. Ties go to the lower column index. THS's training-time hubness
    :math:`h_c` (:func:`gpua.hubness.hub_occupancy`) is :math:`N_k(c) / N` of a batch.

    Parameters
    ----------
    scores : array of shape (n_samples, n_classes)
    k : int >= 1 and < n_classes, optional
        Default ``min(10, n_classes // 2)`` (:func:`capped_hubness_k`), as :func:`score_summary`;
        a ``k`` of ``n_classes`` or more (every class in every row) is refused.

    Returns
    -------
    counts : int array of shape (n_classes,)
    """
    S = np.asarray(scores)
    if S.ndim != 2 or S.shape[0] == 0 or S.dtype.kind not in "fiub":
        raise GPUAError(f"scores must be a non-empty numeric (n_samples, n_classes) matrix, got shape {S.shape} and dtype {S.dtype}.")
    k = _hubness_k(S, k)
    if S.dtype.kind == "f" and np.isnan(S).any():
        raise GPUAError("scores hold NaN; they cannot rank the classes: re-extract or drop those rows.")
    # a stable sort: tied scores go to the lower index, as predict()'s argmax does (argpartition
    # would break them arbitrarily)
    top = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.bincount(top.ravel(), minlength=S.shape[1])


def capped_hubness_k(k: int, n_classes: int) -> int:
    """``k`` capped at half the classes (at least 1): k-occurrence over ``k >= K`` columns counts every
    class in every row, flat whatever the scores. With 10 classes, ``k=10`` becomes 5."""
    return max(1, min(int(k), n_classes // 2))


def _hubness_k(scores, k: int | None) -> int:
    """The ``k`` of :func:`k_occurrence`, :func:`hubness_skewness` and :func:`robin_hood_index`: ``None`` is
    ``capped_hubness_k(10, K)``; a ``k`` of ``K`` or more is refused (it measures nothing)."""
    K = np.asarray(scores).shape[-1] if np.ndim(scores) == 2 else None
    if k is None:
        return capped_hubness_k(10, K) if K else 10
    k = check_number(k, "k", integer=True, low=1, fix="the number of nearest columns counted per row, e.g. 10")
    if K is not None and K > 1 and k >= K:
        raise GPUAError(f"k={k} counts all {K} classes in every row, so every class occurs equally often and the measure is 0 "
                        f"whatever the scores; use k < {K} (leave it out: min(10, K // 2) = {capped_hubness_k(10, K)}).")
    return k


def hubness_skewness(scores, k: int | None = None) -> float:
    r"""Skewness of the k-occurrence distribution (Radovanovic et al., 2010); 0 = no hubs.

    .. math::
        S_{N_k} = \frac{\frac1K \sum_c (N_k(c) - \bar N_k)^3}
                       {\big(\frac1K \sum_c (N_k(c) - \bar N_k)^2\big)^{3/2}}

    over the :math:`K` columns (:func:`k_occurrence`; the population moments of
    ``scipy.stats.skew``); 0 when every column occurs equally often.

    Parameters
    ----------
    scores : array of shape (n_samples, n_classes)
    k : int >= 1 and < n_classes, optional
        Default ``min(10, n_classes // 2)`` (:func:`capped_hubness_k`), as :func:`score_summary`.

    Returns
    -------
    float
    """
    from scipy.stats import skew

    counts = k_occurrence(scores, k)
    if np.all(counts == counts[0]):  # integer counts: exactly equal, not allclose's 1e-5 relative (a million rows and 10 more was 0.0)
        return 0.0
    counts = counts.astype(np.float64)
    return float(skew(counts))


def robin_hood_index(scores, k: int | None = None) -> float:
    r"""Robin Hood index :math:`\tfrac12 \sum_c |N_k(c) - \bar N_k| / \sum_c N_k(c)` in [0, 1).

    The share of k-occurrences that would have to move to make them uniform (Feldbauer et al.,
    2018).

    Parameters
    ----------
    scores : array of shape (n_samples, n_classes)
    k : int >= 1 and < n_classes, optional
        Default ``min(10, n_classes // 2)``, as :func:`hubness_skewness`.

    Returns
    -------
    float
    """
    counts = k_occurrence(scores, k).astype(np.float64)
    return float(0.5 * np.abs(counts - counts.mean()).sum() / counts.sum())
