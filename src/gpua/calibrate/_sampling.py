r"""Generate features along a class's covariance shape, around anchor points.

.. math::
    x_{\mathrm{new}} = a + s \sum_{j} \varepsilon_j \sqrt{\lambda_j}\, \xi_j,
    \qquad \varepsilon_j \sim N(0, 1),

drawn as :math:`a + s\, L \varepsilon`, :math:`\varepsilon \sim N(0, I)` (:func:`sample_around`):
the same distribution for any :math:`L` with :math:`L L^\top = \sum_j \lambda_j \xi_j \xi_j^\top`
(with :math:`L = \sum_j \sqrt{\lambda_j}\, \xi_j \xi_j^\top`, :math:`\varepsilon_j = \xi_j^\top
\varepsilon`). Here :math:`a` is a real sample of the class (or another client's class
prototype), :math:`s` a spread multiplier (1 in the paper), and :math:`L` the symmetric square
root of the covariance, factorised once per class (:func:`~._shape.psd_factor`), or the OAS
factor of :func:`~._shape.oas_factor`.
The authors' code factorises the covariance again for every generated sample and scales by
:math:`\lambda_j` taken in ascending order; here the factor is computed once and the
eigenvalues are matched to their own eigenvectors.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from .._errors import GPUAError
from .._validation import as_float64
from ..params import POSITIVE, check_param
from ._params import RANDOM_STATE
from ._stats import check_class_labels

__all__ = ["sample_around", "fill_to_target", "as_rng"]


def as_rng(random_state) -> np.random.Generator:
    """``None``, an int seed or a ``Generator`` -> a ``Generator`` (a given one is used as is).

    Anything else is a :class:`GPUAError` naming ``random_state`` (numpy's own error for a
    negative seed names nothing, and a bool or float would be taken as a seed).
    """
    check_param("random_state", random_state, RANDOM_STATE)
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def sample_around(
    anchors: np.ndarray,
    factor: np.ndarray,
    n_samples: int,
    *,
    anchor_weights: np.ndarray | None = None,
    scale: float = 1.0,
    random_state=None,
) -> np.ndarray:
    r"""Draw ``n_samples`` points :math:`x = a + s L\varepsilon` around ``anchors``.

    :math:`a` an anchor row, :math:`\varepsilon \sim N(0, I_r)` drawn per point.

    Parameters
    ----------
    anchors : array of shape (n_anchors, d)
        Centres (real samples of the class, or class prototypes); at least one row. A single
        anchor is a ``(1, d)`` array too (``anchor.reshape(1, -1)``).
    factor : array of shape (d, r)
        :math:`L` with :math:`L L^\top = \Sigma` (or its top-r part).
    n_samples : int
        How many points to draw.
    anchor_weights : array of shape (n_anchors,), optional
        Relative probability of each anchor. Without weights the anchors are used in turn
        over random permutations, so each real sample anchors the same number of points (up
        to one): the generated set then spreads over the class instead of clumping on a few
        samples, which i.i.d. choice does at small counts.
    scale : float
        :math:`s`, multiplies the spread (finite, > 0).
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    array of shape (n_samples, d), float32

    Raises
    ------
    GPUAError
        When ``anchors`` is not a 2-D array with at least one row, ``anchors`` or ``factor``
        holds NaN or inf, ``factor`` is for another width, ``n_samples`` is not an integer, or
        ``anchor_weights`` are not ``n_anchors`` finite non-negative numbers with a positive sum.
    """
    check_param("scale", scale, POSITIVE)
    rng = as_rng(random_state)
    anchors = np.asarray(anchors)
    if anchors.ndim != 2 or anchors.shape[0] == 0:
        raise GPUAError(
            f"anchors must be a 2-D array of shape (n_anchors, d) with at least one row but has shape "
            f"{anchors.shape}; pass a single anchor as anchor.reshape(1, -1)."
        )
    n_anchors, d = anchors.shape
    factor = np.asarray(factor.detach().cpu().numpy() if hasattr(factor, "detach") else factor)
    if factor.ndim != 2:
        raise GPUAError(f"factor must be a 2-D (d, r) array L with L L^T the covariance, but has shape {factor.shape}.")
    if factor.shape[0] != d:
        raise GPUAError(f"factor has {factor.shape[0]} rows but anchors have width {d}; use one feature space.")
    # Named here: NaN in either would otherwise surface as the overflow error below, blaming scale.
    for name, a in (("anchors", anchors), ("factor", factor)):
        if a.dtype.kind not in "fiub" or not np.all(np.isfinite(a)):
            raise GPUAError(f"{name} contains NaN or inf (or is not numeric); compute it from finite features.")
    if isinstance(n_samples, (bool, np.bool_)) or not isinstance(n_samples, (int, np.integer)):
        raise GPUAError(f"n_samples={n_samples!r} must be an integer (the number of points to draw).")
    if n_samples <= 0:
        return np.zeros((0, d), np.float32)
    if anchor_weights is None:
        reps = -(-n_samples // n_anchors)
        idx = np.concatenate([rng.permutation(n_anchors) for _ in range(reps)])[:n_samples]
    else:
        w = np.asarray(anchor_weights, dtype=np.float64)
        if w.shape != (n_anchors,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise GPUAError(
                f"anchor_weights has {w.size} value(s) for {n_anchors} anchors; give one finite, non-negative "
                "weight per anchor, not all zero (or none, to use the anchors in turn)."
            )
        idx = rng.choice(n_anchors, size=n_samples, p=w / w.sum())
    eps = rng.standard_normal((n_samples, factor.shape[1]))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, naming scale
        out = (anchors[idx].astype(np.float64) + scale * (eps @ factor.T)).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise GPUAError(
            f"generated features are NaN or inf: scale={scale!r} times the class spread, added to the anchors, "
            "overflows float32; use a smaller scale (1.0 keeps the calibrated spread), or standardise the features."
        )
    return out


def fill_to_target(
    X: np.ndarray,
    y: np.ndarray,
    factors: Sequence[np.ndarray | None],
    target,
    *,
    prototypes: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    scale: float = 1.0,
    random_state=None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Generate features so that every class reaches ``target`` samples (real + generated).

    Parameters
    ----------
    X : array of shape (n, d)
        Real features.
    y : int array of shape (n,)
        Their labels in ``[0, K)``.
    factors : sequence of K arrays of shape (d, r), or None
        Per-class factor :math:`L_k`; ``None`` for a class that cannot be generated.
    target : int, array of shape (K,) or "max"
        Wanted count per class (whole numbers >= 0); classes already at or above it get nothing.
        ``"max"``: the largest class count in ``y``.
    prototypes : mapping class -> (anchors (P, d), weights (P,)), optional
        Extra anchors for a class: other clients' (other domains') class means, each weighted
        by its sample count. Anchors are then drawn with probability proportional to weight,
        local real samples weighing 1 each, so the anchor mixture follows the global class
        distribution. A class with no local sample is generated around prototypes alone.
    scale : float
        Spread multiplier :math:`s`.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    X_new : float32 array of shape (n_new, d)
    y_new : int64 array of shape (n_new,)
        Generated samples only (concatenate with ``X``, ``y`` to train).
    """
    rng = as_rng(random_state)
    K = len(factors)
    X = as_float64(X, "X")  # a list of rows, NaN... are named here, not deep in numpy
    d = X.shape[1]
    y = check_class_labels(y, X.shape[0], K, name="y")
    counts = np.bincount(y, minlength=K)
    targets = _check_target(target, counts, K)
    prototypes = _check_prototypes(prototypes, K, d)
    _check_size(targets, counts, d, target)
    out_X, out_y = [], []
    for k in range(K):
        need = int(targets[k] - counts[k])
        if need <= 0:
            continue
        local = X[y == k]
        extra = prototypes.get(k)
        if local.shape[0] == 0 and (extra is None or len(extra[0]) == 0):
            continue  # nothing of this class here to anchor on: left as it is
        if factors[k] is None:
            raise GPUAError(
                f"class {k} has samples here but no covariance to generate from; fit the calibrator "
                f"on statistics that include class {k}, or drop those samples."
            )
        if extra is None or len(extra[0]) == 0:
            gen = sample_around(local, factors[k], need, scale=scale, random_state=rng)
        else:
            anchors = np.concatenate([local, np.asarray(extra[0], dtype=local.dtype if local.size else np.float64)])
            weights = np.concatenate([np.ones(local.shape[0]), np.asarray(extra[1], dtype=np.float64)])
            gen = sample_around(anchors, factors[k], need, anchor_weights=weights, scale=scale, random_state=rng)
        out_X.append(gen)
        out_y.append(np.full(need, k, dtype=np.int64))
    if not out_X:
        return np.zeros((0, d), np.float32), np.zeros(0, np.int64)
    return np.concatenate(out_X), np.concatenate(out_y)


def _check_target(target, counts: np.ndarray, K: int) -> np.ndarray:
    """``target`` as K whole counts >= 0 (``"max"``: the largest of ``counts``), or a :class:`GPUAError`.

    A float was truncated (12.7 -> 12), a negative count generated nothing silently, and a
    wrong number of counts raised numpy's broadcast error.
    """
    if isinstance(target, str) and target == "max":
        return np.full(K, int(counts.max()) if counts.size else 0, np.int64)
    t = np.asarray(target)
    if t.shape not in ((), (K,)):
        raise GPUAError(f"target has shape {t.shape}; give one count, or one per class ({K}), or 'max'.")
    if t.dtype.kind not in "iuf" or not np.all(np.isfinite(t)) or np.any(t != np.round(t)) or np.any(t < 0):
        shown = f"={target!r}" if t.ndim == 0 else f" {t.tolist()[:5]}"
        raise GPUAError(
            f"target{shown} must be a whole number >= 0 of samples per class (real ones included), one or one per "
            "class, or 'max'."
        )
    return np.broadcast_to(t.astype(np.int64), (K,))


def _check_prototypes(prototypes, K: int, d: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``prototypes`` as ``{class index: (anchors (P, d), weights (P,))}``, or a :class:`GPUAError` naming it.

    A key that is no class index (a class name, an index of another class count) used to be
    ignored: its anchors were never used, and nothing said so.
    """
    if prototypes is None:
        return {}
    if not isinstance(prototypes, Mapping):
        raise GPUAError(
            f"prototypes is a {type(prototypes).__name__}; pass a mapping {{class index: (anchors (P, {d}), "
            "weights (P,))}, e.g. other clients' class means with their counts."
        )
    out = {}
    for key, value in prototypes.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or not 0 <= key < K:
            raise GPUAError(
                f"prototypes has key {key!r}, which is no class here; key them by class index 0..{K - 1} "
                "(the labels of y, not class names)."
            )
        k = int(key)
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise GPUAError(
                f"prototypes for class {k} is a {type(value).__name__}; give a pair (anchors (P, {d}), weights (P,)): "
                "class means of this feature space, one weight (a sample count) each."
            )
        P, w = np.asarray(value[0]), np.asarray(value[1])
        if P.size == 0:
            continue  # no anchors: as if the class had no entry
        if P.ndim != 2 or P.shape[1] != d or w.shape != (P.shape[0],):
            raise GPUAError(
                f"prototypes for class {k} are anchors of shape {P.shape} with weights of shape {w.shape}; "
                f"give (anchors (P, {d}), weights (P,)): class means of this feature space, one weight each."
            )
        if w.dtype.kind not in "iuf" or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise GPUAError(
                f"prototypes for class {k} have weights {w.tolist()[:5]}; give finite, non-negative weights (the "
                "sample count behind each anchor), not all zero."
            )
        out[k] = (P, w.astype(np.float64))
    return out


def _check_size(targets: np.ndarray, counts: np.ndarray, d: int, target) -> None:
    """Refuse a fill whose output alone would not fit in this machine's memory.

    ``target=10**12`` (a slip of the keyboard) otherwise runs a Python loop over billions of
    anchor permutations and then dies of a ``MemoryError`` (or the OOM killer), saying nothing.
    """
    n_new = int(np.maximum(targets - counts, 0).sum())
    nbytes = 4.0 * n_new * d  # the float32 output; drawing needs more on top
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no limit known
        return
    if nbytes > memory:
        raise GPUAError(
            f"target={target!r} would generate {n_new} samples of width {d} ({nbytes / 1e9:.3g} GB), more than this "
            f"machine's memory ({memory / 1e9:.3g} GB); lower target (\"max\" fills every class to the largest "
            "class count)."
        )
