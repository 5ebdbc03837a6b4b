"""Streaming per-class statistics (count, mean, covariance) and their exact merge.

A part (a batch, a shard, a federated client) is summarised by, for every class :math:`k`, its
count :math:`n_k`, mean :math:`\\mu_k` and scatter :math:`M_k = \\sum_i (x_i - \\mu_k)(x_i -
\\mu_k)^\\top`. Parts merge exactly by the law of total covariance, so the statistics of a pooled
data set never need the pooled data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._errors import GPUAError, NotFittedError
from .._validation import as_float64, check_labels, check_matrix, check_number
from ..params import COUNT, OptionalOf, check_param

__all__ = ["ClassStatistics", "merge_statistics"]


def check_class_embeddings(class_embeddings, n_classes: int, *, at_least: bool = False) -> np.ndarray:
    """``class_embeddings`` as a matrix with one row per class (``at_least``: that many rows or more), or a
    :class:`GPUAError` naming it (:func:`check_matrix` alone would ask for "one row per image")."""
    E = check_matrix(class_embeddings, "class_embeddings")
    if E.shape[0] < n_classes or (E.shape[0] != n_classes and not at_least):
        raise GPUAError(
            f"class_embeddings has {E.shape[0]} rows for {n_classes} classes; give one row per class, in label order "
            "(row k embeds the name of class k: the text prototypes of the class names)."
        )
    return E


def check_class_labels(y, n_samples: int, n_classes: int, name: str = "y") -> np.ndarray:
    """:func:`~gpua._validation.check_labels`, telling labels beyond ``n_classes`` the fix for class statistics.

    (The generic message speaks of text prototypes, which class statistics and classifiers do not index.)
    """
    return check_labels(y, n_samples, n_classes, name=name, beyond="pass n_classes={needed} or more (the number of classes, "
                        "the same for every part), or number the classes 0, 1, ..., K-1")


def infer_n_classes(y, name: str = "y") -> int:
    """``max(y) + 1`` for class indices ``y``, or a :class:`GPUAError` naming ``name``.

    Negative values are refused here, by name: the generic range check would report them as
    outside ``[0, K)`` with whatever ``K`` its caller had to hand.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise GPUAError(f"{name} must be a non-empty 1-D array of class indices but has shape {y.shape}.")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise GPUAError(f"{name} has dtype {y.dtype} or non-finite values; pass integer class indices.")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):  # continuous targets: not classes at all
        raise GPUAError(f"{name} must hold integer class indices; cast them with .astype(int) if they are indices stored as floats.")
    if y.min() < 0:
        raise GPUAError(
            f"{name} has negative values (smallest: {y.min():g}); labels must be class indices >= 0: "
            "number the classes 0, 1, ..., K-1."
        )
    return int(y.max()) + 1


def merge_moments(
    counts: np.ndarray, means: np.ndarray, scatters: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Merge the moments of ``P`` parts along axis 0 by the law of total covariance.

    Parameters
    ----------
    counts : array of shape (P, K)
    means : array of shape (P, K, d)
    scatters : array of shape (P, K, d, d)

    Returns
    -------
    count : (K,), mean : (K, d), scatter : (K, d, d)
        .. math::
            n = \sum_i n_i,\quad \mu = \sum_i n_i \mu_i / n,\quad
            M = \sum_i M_i + \sum_i n_i (\mu_i - \mu)(\mu_i - \mu)^\top

        which, divided by :math:`n`, is
        :math:`\Sigma = \sum_i n_i \Sigma_i / n + \sum_i n_i (\mu_i - \mu)(\mu_i - \mu)^\top / n`.
    """
    count = counts.sum(axis=0)
    safe = np.maximum(count, 1)[:, None]
    mean = np.einsum("pk,pkd->kd", counts, means) / safe
    # Parts with n_i = 0 have a meaningless mean; their weight n_i = 0 removes them.
    dev = (means - mean[None]) * np.sqrt(counts)[..., None]
    scatter = scatters.sum(axis=0) + np.einsum("pki,pkj->kij", dev, dev)
    return count, mean, scatter


class ClassStatistics:
    r"""Per-class count, mean and covariance, accumulated in float64 over streamed batches.

    Parameters
    ----------
    n_classes : int, optional
        Number of classes :math:`K`. When omitted it is ``max(label) + 1`` and grows with later
        batches; give it when parts must line up (federated clients that miss some classes).

    Attributes
    ----------
    count_ : int array of shape (n_classes,)
        :math:`n_k`.
    mean_ : float64 array of shape (n_classes, n_features)
        :math:`\mu_k` (zero for a class with no samples).
    scatter_ : float64 array of shape (n_classes, n_features, n_features)
        :math:`M_k = \sum_{i: y_i = k} (x_i - \mu_k)(x_i - \mu_k)^\top`.
    n_features_in_ : int
        :math:`d`.

    Notes
    -----
    Memory is :math:`8 K d^2` bytes (10 classes at d = 768: 47 MB; 1000 classes: 4.7 GB).
    Batches are merged with :func:`merge_moments` (Chan et al.'s pairwise update), whose error
    does not grow with the number of batches the way a running sum of :math:`x x^\top` does.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((200, 4)), rng.integers(0, 3, 200)
    >>> stats = ClassStatistics(n_classes=3).partial_fit(X[:100], y[:100]).partial_fit(X[100:], y[100:])
    >>> stats.covariance_.shape
    (3, 4, 4)
    """

    def __init__(self, n_classes: int | None = None) -> None:
        self.n_classes = n_classes

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_moments(cls, count, mean, covariance) -> "ClassStatistics":
        """Statistics from shared moments: counts (K,), means (K, d), covariances (K, d, d).

        ``covariance`` is the population covariance :math:`M_k / n_k` (``ddof=0``), the one
        clients share. It is checked: same sizes, finite, symmetric.
        """
        count = np.asarray(count)
        if count.ndim != 1 or count.dtype.kind not in "iuf" or np.any(count < 0) or np.any(count != np.round(count)):
            raise GPUAError("count must be a 1-D array of non-negative integers, one per class.")
        count = count.astype(np.int64)
        k = count.shape[0]
        mean = as_float64(mean, "mean")
        if mean.shape[0] != k:
            raise GPUAError(f"mean has {mean.shape[0]} rows for {k} counts; give one mean per class.")
        d = mean.shape[1]
        cov = np.asarray(covariance, dtype=np.float64)
        if cov.shape != (k, d, d):
            raise GPUAError(
                f"covariance has shape {cov.shape} but ({k}, {d}, {d}) was expected from count and mean; "
                "share one d x d covariance per class, from features of the same width."
            )
        if not np.all(np.isfinite(cov)):
            raise GPUAError("covariance contains NaN or inf; recompute it from finite features.")
        asym = np.abs(cov - cov.transpose(0, 2, 1)).max(axis=(1, 2))
        tol = 1e-6 * np.maximum(np.abs(cov).max(axis=(1, 2)), 1e-300)
        if np.any(asym > tol):
            bad = int(np.argmax(asym > tol))
            raise GPUAError(f"covariance of class {bad} is not symmetric; pass (C + C.T) / 2 if it is a rounding matter.")
        self = cls(n_classes=k)
        self.count_ = count
        self.mean_ = np.where(count[:, None] > 0, mean, 0.0)
        self.scatter_ = cov * count[:, None, None]
        self.n_features_in_ = d
        return self

    def fit(self, X, y) -> "ClassStatistics":
        """Reset, then accumulate ``X`` (n, d) with labels ``y`` (n,). Returns self."""
        for attr in ("count_", "mean_", "scatter_", "n_features_in_"):
            self.__dict__.pop(attr, None)
        return self.partial_fit(X, y)

    def partial_fit(self, X, y) -> "ClassStatistics":
        """Add one batch: ``X`` of shape (n, d), integer labels ``y`` of shape (n,). Returns self."""
        check_param("n_classes", self.n_classes, OptionalOf(COUNT))
        d_seen = getattr(self, "n_features_in_", None)
        X = as_float64(X, "X")
        if d_seen is not None and X.shape[1] != d_seen:
            raise GPUAError(
                f"X has {X.shape[1]} features but earlier batches had {d_seen}; "
                "all parts must come from the same encoder and feature space."
            )
        k = self.n_classes if self.n_classes is not None else max(infer_n_classes(y), self._k())
        y = check_class_labels(y, X.shape[0], k, name="y")
        batch = self._batch_moments(X, y, k)
        if d_seen is None:
            self.count_, self.mean_, self.scatter_ = batch
            self.n_features_in_ = X.shape[1]
        else:
            own = self.padded_moments(k)
            self.count_, self.mean_, self.scatter_ = merge_moments(
                *(np.stack([a, b]) for a, b in zip(own, batch))
            )
        return self

    @staticmethod
    def _batch_moments(X: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = X.shape[1]
        count = np.bincount(y, minlength=k).astype(np.int64)
        mean = np.zeros((k, d))
        scatter = np.zeros((k, d, d))
        order = np.argsort(y, kind="stable")  # one sort, not one boolean mask per class
        bounds = np.concatenate([[0], np.cumsum(count)])
        for c in np.nonzero(count)[0]:
            Xc = X[order[bounds[c] : bounds[c + 1]]]
            mean[c] = Xc.mean(axis=0)
            D = Xc - mean[c]  # centred first: a raw sum of x x^T cancels catastrophically
            scatter[c] = D.T @ D
        return count, mean, scatter

    # -- merging -------------------------------------------------------------------------
    def merge(self, *others: "ClassStatistics") -> "ClassStatistics":
        """Exact statistics of the union of this part and ``others`` (a new object)."""
        return merge_statistics([self, *others])

    # -- reading -------------------------------------------------------------------------
    def _k(self) -> int:
        return 0 if "count_" not in self.__dict__ else int(self.count_.shape[0])

    def check_fitted(self) -> None:
        """Raise :class:`~gpua.NotFittedError` when no rows have been added yet."""
        if "count_" not in self.__dict__:
            raise NotFittedError("ClassStatistics is empty; call fit or partial_fit first.")

    def padded_moments(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Moments padded with empty classes up to ``k`` classes."""
        self.check_fitted()
        extra = k - self._k()
        if extra < 0:
            raise GPUAError(f"statistics hold {self._k()} classes but n_classes={k}; pass the larger n_classes.")
        d = self.n_features_in_
        return (
            np.concatenate([self.count_, np.zeros(extra, np.int64)]),
            np.concatenate([self.mean_, np.zeros((extra, d))]),
            np.concatenate([self.scatter_, np.zeros((extra, d, d))]),
        )

    @property
    def n_classes_(self) -> int:
        self.check_fitted()
        return self._k()

    @property
    def covariance_(self) -> np.ndarray:
        """Population covariances :math:`M_k / n_k`, shape (K, d, d); zero where :math:`n_k = 0`."""
        return self.covariance(ddof=0)

    def covariance(self, ddof: int = 0) -> np.ndarray:
        """Covariances :math:`M_k / (n_k - \\mathrm{ddof})`, zero where that is not positive.

        ``ddof``: 0 (population, what clients share) or 1 (unbiased); an integer >= 0.
        """
        self.check_fitted()
        check_number(ddof, "ddof", integer=True, low=0, fix="0 for the population covariance, 1 for the unbiased one")
        denom = self.count_ - ddof
        out = np.zeros_like(self.scatter_)
        ok = denom > 0
        out[ok] = self.scatter_[ok] / denom[ok, None, None]
        return out

    def affine(self, shift, scale: float) -> "ClassStatistics":
        r"""Statistics of :math:`(x - \mathrm{shift}) / \mathrm{scale}`, from these alone (a new object)."""
        self.check_fitted()
        shift = np.asarray(shift, dtype=np.float64)
        if shift.shape not in ((), (self.n_features_in_,)):
            raise GPUAError(f"shift has shape {shift.shape}; pass a scalar or a ({self.n_features_in_},) vector.")
        if not np.all(np.isfinite(shift)):
            raise GPUAError("shift contains NaN or inf; pass a finite centre (see global_standardizer).")
        if not (float(scale) > 0 and np.isfinite(float(scale))):
            raise GPUAError(f"scale={scale!r} must be a finite positive number.")
        out = ClassStatistics(self.n_classes)
        out.count_ = self.count_.copy()
        out.mean_ = np.where(self.count_[:, None] > 0, (self.mean_ - shift) / scale, 0.0)
        out.scatter_ = self.scatter_ / float(scale) ** 2
        out.n_features_in_ = self.n_features_in_
        return out

    def compress(self, n_components: int) -> "ClassStatistics":
        """What a client shares when it sends only the top-``n_components`` shape per class.

        Each covariance becomes its top-:math:`m` eigenpairs plus an isotropic remainder that
        keeps the trace (see :meth:`CovarianceShape.covariance`). Counts and means are kept.
        """
        from ._shape import covariance_shape  # late: _shape imports this module

        cov = self.covariance_
        low = np.stack([covariance_shape(c, n_components).covariance() for c in cov])
        return ClassStatistics.from_moments(self.count_, self.mean_, low)

    def __repr__(self) -> str:
        if "count_" not in self.__dict__:
            return f"ClassStatistics(n_classes={self.n_classes})"
        return f"ClassStatistics(n_classes={self._k()}, n_features={self.n_features_in_}, n_samples={int(self.count_.sum())})"


def check_parts(parts, name: str = "parts") -> list[ClassStatistics]:
    """``parts`` as a non-empty list of fitted :class:`ClassStatistics`, or a :class:`GPUAError`."""
    if isinstance(parts, ClassStatistics):  # iterating it raised "'ClassStatistics' object is not iterable"
        raise GPUAError(f"{name} is one ClassStatistics; pass a list of them ([stats] for a single part).")
    parts = list(parts)
    if not parts:
        raise GPUAError(f"{name} is empty; pass at least one fitted ClassStatistics (see client_statistics).")
    for i, p in enumerate(parts):
        if not isinstance(p, ClassStatistics):
            raise GPUAError(f"{name}[{i}] is a {type(p).__name__}; pass ClassStatistics objects (see client_statistics).")
        p.check_fitted()
    return parts


def merge_statistics(parts: Sequence[ClassStatistics], n_classes: int | None = None) -> ClassStatistics:
    r"""Exact statistics of the union of ``parts``, by the law of total covariance.

    .. math::
        \Sigma_k = \frac{1}{n_k}\sum_i n_{ik}\Sigma_{ik}
                 + \frac{1}{n_k}\sum_i n_{ik}(\mu_{ik} - \mu_k)(\mu_{ik} - \mu_k)^\top

    Parameters
    ----------
    parts : sequence of ClassStatistics
        Fitted statistics of disjoint parts; missing trailing classes are padded as empty.
    n_classes : int, optional
        Number of classes of the result (default: the largest among the parts).

    Returns
    -------
    ClassStatistics
    """
    parts = check_parts(parts)
    check_param("n_classes", n_classes, OptionalOf(COUNT))
    widths = {p.n_features_in_ for p in parts}
    if len(widths) > 1:
        detail = ", ".join(f"part {i}: {p.n_features_in_}" for i, p in enumerate(parts))
        raise GPUAError(
            f"parts have different feature widths ({detail}); every part must use the same encoder "
            "and feature space."
        )
    k = max(p._k() for p in parts) if n_classes is None else n_classes
    padded = [p.padded_moments(k) for p in parts]
    count, mean, scatter = merge_moments(*(np.stack(a) for a in zip(*padded)))
    out = ClassStatistics(n_classes=k)
    out.count_, out.mean_, out.scatter_ = count, mean, scatter
    out.n_features_in_ = widths.pop()
    return out
