"""Input checks shared by every entry point.

They turn user mistakes into :class:`~gpua.GPUAError` with the argument's name and a fix, before
any arithmetic can hide them as NaN or as a shape error deep inside torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ._errors import GPUAError, warn_user

#: The arrays a gpua feature file holds one or more of (:func:`gpua.features.load_features`).
FEATURE_KEYS = ("vfm_features", "vlm_features", "text_prototypes")

__all__ = ["as_path", "check_matrix", "refuse_sparse", "check_triplet", "check_prototypes", "check_distinct_rows", "check_strings", "check_classnames", "check_labels", "check_number", "check_callback", "l2_normalize", "ROW_NORM_RANGE"]


def refuse_sparse(A, name: str) -> None:
    """Refuse a scipy sparse matrix or a sparse torch tensor with the call that densifies it.

    Foundation-model features are dense; without this, numpy wraps a sparse matrix in a 0-d
    object array and the message would be about its dtype.
    """
    if type(A).__module__.startswith("scipy.sparse"):
        raise GPUAError(f"{name} is a scipy sparse matrix ({type(A).__name__}); gpua works on dense features: "
                        f"pass {name}.toarray().")
    layout = getattr(A, "layout", None)
    if layout is not None and hasattr(A, "detach") and str(layout) != "torch.strided":
        raise GPUAError(f"{name} is a sparse torch tensor (layout {layout}); gpua works on dense features: "
                        f"pass {name}.to_dense().")


def _tensor_to_numpy(A):
    """A torch tensor as a numpy array (anything else as it is). bfloat16 and the float8 types have
    no numpy dtype: they become float32, which holds them exactly."""
    if not hasattr(A, "detach"):
        return A
    import torch  # loaded already: A is a tensor

    A = A.detach().cpu()
    if A.is_floating_point() and A.dtype not in (torch.float16, torch.float32, torch.float64):
        A = A.float()
    return A.numpy()


def check_matrix(
    A,
    name: str,
    *,
    n_rows: int | None = None,
    n_cols: int | None = None,
    allow_zero_rows: bool = False,
) -> np.ndarray:
    """Return ``A`` as a finite float32 2-D array, or raise a :class:`GPUAError` naming ``name``.

    Parameters
    ----------
    A : array-like of shape (n_rows, n_cols)
    name : str
        The argument's name, used in the message.
    n_rows, n_cols : int, optional
        Required sizes (checked only when given).
    allow_zero_rows : bool
        All-zero rows cannot be L2-normalised; they are refused unless this is set. Without it
        the rows are taken to be L2-normalised later (their scale carries no information), and a
        row whose norm float32 cannot normalise (outside :data:`ROW_NORM_RANGE`, say 1e20 or
        1e-20 entries) is multiplied by a power of two: exactly the same direction, a usable
        scale. With it, rows are used at their own scale and rows too large for float32
        arithmetic are refused.
    """
    if A is None:
        raise GPUAError(f"{name} is None: pass an array of shape (n, d).")
    refuse_sparse(A, name)
    A = _tensor_to_numpy(A)
    try:
        A = np.asarray(A)
    except Exception as exc:  # ragged lists and the like
        raise GPUAError(f"{name} could not be read as an array ({exc}); pass a 2-D numeric array.") from None
    if A.dtype.kind not in "fiub":
        raise GPUAError(f"{name} has dtype {A.dtype}; pass a numeric (float16/float32/float64) array.")
    if A.ndim != 2:
        hint = (
            "reshape it with .reshape(1, -1) if it is one row (one sample), or .reshape(-1, 1) if it is one column "
            "(one feature per sample)."
            if A.ndim == 1
            else "flatten the extra axes first." if A.ndim > 2 else "pass a 2-D array."
        )
        raise GPUAError(f"{name} must be 2-D (n, d) but has shape {A.shape}; {hint}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise GPUAError(f"{name} is empty (shape {A.shape}); pass at least one row and one column.")
    if A.dtype.kind == "f":
        # Checked in the input's own precision: float64 values beyond float32's range are
        # rescaled or reported as too large below, not turned into the inf the cast would make.
        bad = ~np.isfinite(A)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise GPUAError(
                f"{name} contains NaN or inf in {rows.size} row(s) (first: row {rows[0]}); "
                "drop or re-extract those rows."
            )
    A = np.ascontiguousarray(_fix_row_scale(A, name, rescale=not allow_zero_rows), dtype=np.float32)
    if n_rows is not None and A.shape[0] != n_rows:
        raise GPUAError(f"{name} has {A.shape[0]} rows but {n_rows} were expected; pass one row per image, in the same order.")
    if n_cols is not None and A.shape[1] != n_cols:
        raise GPUAError(f"{name} has width {A.shape[1]} but {n_cols} was expected; use features from the same model.")
    if not allow_zero_rows:
        zero = ~np.any(A != 0, axis=1)
        if zero.any():
            first = int(np.nonzero(zero)[0][0])
            raise GPUAError(
                f"{name} has {int(zero.sum())} all-zero row(s) (first: row {first}) that cannot be "
                "normalised; remove them or re-extract those features."
            )
    return A


def as_path(path, name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` with ``~`` expanded, or a :class:`GPUAError` naming ``name``.

    Bytes, open file objects and numbers are refused here, by name (``Path()`` reports them
    with a bare ``TypeError``).
    """
    if isinstance(path, str) or (isinstance(path, os.PathLike) and isinstance(os.fspath(path), str)):
        return Path(path).expanduser()
    hint = " (an open file: pass its name, f.name)" if hasattr(path, "read") or hasattr(path, "write") else ""
    raise GPUAError(f"{name} must be a file name, a str or a pathlib.Path, not a {type(path).__name__}{hint}.")


#: Row L2 norms outside this range cannot be normalised in float32 (squares overflow above it,
#: and below it the norm falls under torch's normalisation epsilon, 1e-12).
ROW_NORM_RANGE = (1e-10, 1e18)


def row_scale_suspects(amax, width: int):
    """Rows whose largest |entry| ``amax`` (array or tensor, float64) may put their norm outside :data:`ROW_NORM_RANGE`.

    A row's norm lies in ``[amax, amax sqrt(width)]``: only rows near either end need a look.
    """
    lo, hi = ROW_NORM_RANGE
    return (amax * math.sqrt(width) > hi) | ((amax > 0) & (amax < lo))


def _fix_row_scale(A: np.ndarray, name: str, rescale: bool) -> np.ndarray:
    """Rows whose scale float32 normalisation cannot handle: rescaled exactly, or refused.

    With ``rescale`` (rows that will be L2-normalised, whose scale carries no information), such
    a row is multiplied by the power of two that brings its largest entry into [0.5, 1): the
    direction is kept bit for bit and normalising no longer returns zeros. Otherwise (features
    used at their own scale) rows too large for float32 arithmetic are refused.
    """
    lo, hi = ROW_NORM_RANGE
    amax = np.maximum(A.max(axis=1).astype(np.float64), -A.min(axis=1).astype(np.float64))
    suspect = np.nonzero(row_scale_suspects(amax, A.shape[1]))[0]
    if suspect.size == 0:
        return A
    # Exact norms in float64 after dividing each row by its largest entry: no overflow for any input.
    scale = amax[suspect]
    norms = np.linalg.norm(A[suspect].astype(np.float64) / scale[:, None], axis=1) * scale
    bad = (norms > hi) | ((norms > 0) & (norms < lo)) if rescale else norms > hi
    rows = suspect[bad]
    if rows.size == 0:
        return A
    if not rescale:
        raise GPUAError(
            f"{name} has {rows.size} row(s) whose L2 norm is too large for float32 arithmetic (row {rows[0]}: "
            f"{norms[bad][0]:.3g}, above {hi:g}); divide the features by a constant, e.g. A / np.abs(A).max()."
        )
    out = np.array(A, dtype=np.float64 if A.dtype.kind != "f" or A.dtype.itemsize > 4 else np.float32)
    _, exponent = np.frexp(amax[rows])
    out[rows] = np.ldexp(out[rows], -exponent[:, None])
    return out


def check_triplet(Z, X, Y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the three GPUA inputs against each other.

    Parameters
    ----------
    Z : array of shape (n_samples, d_vfm)
        Vision foundation model features.
    X : array of shape (n_samples, d_vlm)
        Vision-language model image features of the same images, same order.
    Y : array of shape (n_classes, d_vlm)
        Text prototypes, one per class.
    """
    Z = check_matrix(Z, "vfm_features")
    X = check_matrix(X, "vlm_features")
    if X.shape[0] != Z.shape[0]:
        raise GPUAError(
            f"vfm_features has {Z.shape[0]} rows but vlm_features has {X.shape[0]}; both must hold "
            "the same images in the same order."
        )
    Y = check_prototypes(Y, X.shape[1])
    return Z, X, Y


def check_prototypes(Y, d_vlm: int) -> np.ndarray:
    """Check text prototypes against the VLM width ``d_vlm``."""
    Y = check_matrix(Y, "text_prototypes")
    if Y.shape[1] != d_vlm:
        raise GPUAError(
            f"text_prototypes has width {Y.shape[1]} but vlm_features has width {d_vlm}; "
            "encode the class prompts with the same vision-language model as the images."
        )
    if Y.shape[0] < 2:
        raise GPUAError(f"text_prototypes has {Y.shape[0]} class; at least 2 classes are needed.")
    check_distinct_rows(Y, "text_prototypes")
    return Y


def check_distinct_rows(Y: np.ndarray, name: str, tol: float = 1e-6) -> None:
    """Warn when two rows point the same way (cosine above ``1 - tol``): their classes cannot be told apart.

    Scores against such prototypes tie on every image up to float rounding (a matrix product
    does not promise bit-equal columns for equal rows), so the predictions, and GPUA's balanced
    pseudo-labels, fall on either class arbitrarily: two classes that are one. A warning, not an
    error: two synonyms of one class (segmentation's prompt sets, merged per class) may coincide
    harmlessly.
    """
    groups = coinciding_rows(Y, tol)
    if groups:
        i, j = groups[0][:2]
        Yn = l2_normalize(np.asarray(Y[[i, j]], dtype=np.float64))
        warn_user(f"{name} rows {i} and {j} point the same way (cosine {float(Yn[0] @ Yn[1]):.7f}): their classes cannot be "
                  "told apart, and images fall on either of the two arbitrarily. Give each class its own prompt, or merge "
                  "the two classes (harmless if both rows are prompts of one class).")


def coinciding_rows(Y: np.ndarray, tol: float = 1e-6) -> list[list[int]]:
    """The groups of rows of ``Y`` that point the same way (cosine above ``1 - tol`` with the
    group's first row), each sorted, in the order of their first row; rows alone are left out.

    >>> coinciding_rows(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]))
    [[0, 2]]
    """
    Yn = l2_normalize(np.asarray(Y, dtype=np.float64))
    same = (Yn @ Yn.T) > 1.0 - tol
    groups, taken = [], np.zeros(len(Yn), dtype=bool)
    for i in range(len(Yn)):
        if not taken[i]:
            members = np.flatnonzero(same[i] & ~taken)
            taken[members] = True
            if members.size > 1:
                groups.append([int(k) for k in members])
    return groups


def check_strings(values, name: str, per: str) -> list[str]:
    """``values`` as a list of str, refusing what would be stored as something else.

    ``str()`` would store bytes as ``"b'cat'"`` and None as ``'None'``, and numpy drops the
    trailing NUL characters of a string array when it reads one back.
    """
    if isinstance(values, (str, bytes)):
        raise GPUAError(f"{name} is one string ({values[:40]!r}); pass a list with one entry per {per}.")
    try:
        arr = values if isinstance(values, np.ndarray) else np.asarray(list(values), dtype=object)
    except TypeError:
        raise GPUAError(f"{name} is of type {type(values).__name__}; pass a list with one string per {per}.") from None
    if arr.ndim != 1:
        raise GPUAError(f"{name} must be a flat list (one string per {per}) but has shape {arr.shape}; flatten it first.")
    strings = arr.tolist()
    kinds = sorted({type(s).__name__ for s in strings if not isinstance(s, str)})
    if kinds:
        raise GPUAError(
            f"{name} must hold strings but holds {kinds}; pass one str per {per} (decode bytes with .decode(), "
            "write numbers with str(), give every entry a value)."
        )
    for i, s in enumerate(strings):
        if "\0" in s:
            raise GPUAError(
                f"{name} entry {i} ({s[:40]!r}) holds a NUL character, which feature files cannot keep; remove it "
                "(e.g. s.replace('\\0', ''))."
            )
    return [str(s) for s in strings]


def check_classnames(classnames: Sequence[str] | None, n_classes: int) -> list[str] | None:
    """Check class names: a flat sequence of strings, one per class, all distinct."""
    if classnames is None:
        return None
    if isinstance(classnames, (str, bytes)):
        raise GPUAError(f"classnames is one string ({classnames[:40]!r}); pass a list with one name per class.")
    arr = np.asarray(classnames, dtype=object) if not isinstance(classnames, np.ndarray) else classnames
    if arr.ndim != 1:
        raise GPUAError(f"classnames must be a flat list (one name per class) but has shape {arr.shape}; flatten it first.")
    kinds = {type(c).__name__ for c in arr.tolist() if not isinstance(c, (str, np.str_))}
    if kinds:
        # GPUA().fit(Z, X, Y, y): labels in classnames' place (a fit takes no labels; was not said)
        numbers = all(isinstance(c, (int, float, np.number)) and not isinstance(c, bool) for c in arr.tolist())
        labels = (" (numbers: if these are labels, leave them out: the fit is unsupervised, and labels only score "
                  "its predictions)") if numbers else ""
        raise GPUAError(f"classnames must hold strings but holds {sorted(kinds)}{labels}; pass one name (a str) per class.")
    names = [str(c) for c in arr.tolist()]
    if len(names) != n_classes:
        raise GPUAError(f"classnames has {len(names)} entries but there are {n_classes} text prototypes; give one name per class.")
    seen: dict[str, int] = {}
    for i, c in enumerate(names):
        if c in seen:
            raise GPUAError(f"classnames has the duplicate name {c!r} (entries {seen[c]} and {i}); class names must be unique.")
        seen[c] = i
    return names


def as_float64(X, name: str, *, n_cols: int | None = None) -> np.ndarray:
    """Check ``X`` with :func:`check_matrix`, return it as float64.

    ``check_matrix`` returns float32; float64 input is taken as given, and integer input is
    converted to float64 directly (float32 holds integers only up to :math:`2^{24}`), so that
    accumulated moments keep their precision. Zero rows are accepted: the calibration statistics
    that use this normalise nothing.
    """
    X = _tensor_to_numpy(X)
    checked = check_matrix(X, name, n_cols=n_cols, allow_zero_rows=True)
    raw = np.asarray(X)
    if raw.dtype == np.float64:
        return raw
    return raw.astype(np.float64) if raw.dtype.kind in "iu" else checked.astype(np.float64)


def check_labels(labels, n_samples: int, n_classes: int, name: str = "labels",
                 beyond: str = "labels index the text prototypes") -> np.ndarray:
    """Check integer class labels in ``[0, n_classes)``.

    ``beyond`` is the fix a label of ``n_classes`` or more is told; ``{needed}`` in it becomes
    the largest label plus one.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise GPUAError(f"{name} must have shape ({n_samples},) but has shape {y.shape}; give one label per row.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise GPUAError(f"{name} must hold integer class indices; cast them with .astype(int) if they are indices stored as floats.")
    elif y.dtype.kind not in "iu":
        raise GPUAError(f"{name} has dtype {y.dtype}; pass integer class indices.")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise GPUAError(f"{name} holds negative values (smallest: {int(y.min())}); labels must be class indices >= 0: "
                        "number the classes 0, 1, ..., K-1.")
    if y.size and y.max() >= n_classes:
        raise GPUAError(f"{name} holds values outside [0, {n_classes}) (largest: {int(y.max())}); "
                        + beyond.format(needed=int(y.max()) + 1) + ".")
    return y


def check_callback(callback) -> None:
    """Refuse a ``callback`` that cannot be called, before a fit runs (it is first called after a UCM round)."""
    if callback is not None and not callable(callback):
        raise GPUAError(f"callback={callback!r} is not callable; pass a function of one argument (a dict per UCM round and "
                        "refinement evaluation), or None.")


def l2_normalize(A: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (inputs already checked to have no zero rows)."""
    return A / np.linalg.norm(A, axis=axis, keepdims=True)


def _finite(value) -> bool:
    """Whether a number is finite as a float (an int beyond float's range, 10**400, is not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


#: The largest integer an option may hold: torch and numpy take signed 64-bit integers.
INT64_MAX = 2**63 - 1


def is_int(value) -> bool:
    """A Python or numpy integer; booleans are not."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A finite Python or numpy real number (integers included, booleans not)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) and _finite(value)


def in_range(
    value,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """Whether ``value`` is a 64-bit integer (``integer=True``) or a finite real, between the bounds.

    The one test behind :func:`check_number` and :class:`gpua.params.Interval`. A bound of None
    is no bound; ``low_open`` / ``high_open`` exclude the bound itself.
    """
    if integer:
        if not is_int(value) or abs(int(value)) > INT64_MAX:
            return False
        v: float | int = int(value)  # compared as an integer: float(2**63 - 1) rounds up past an int64 bound
    elif is_real(value):
        v = float(value)
    else:
        return False
    if low is not None and (v <= low if low_open else v < low):
        return False
    return high is None or (v < high if high_open else v <= high)


def check_number(
    value,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    allow_inf: bool = False,
    fix: str = "",
) -> float | int:
    """Check a scalar option: a finite number (an integer if asked) within ``[low, high]``.

    Parameters
    ----------
    value : the option's value
    name : str
        The option's name, for the message.
    integer : bool
        Require an integer (booleans are refused either way; at most 64 bits).
    low, high : float, optional
        Bounds, inclusive; ``low_open=True`` excludes ``low``.
    allow_inf : bool
        Also accept ``+inf`` as the top of a range with no ``high`` (a Dirichlet concentration's
        even split, say); ``-inf`` and NaN stay refused.
    fix : str
        Appended to the message (a typical value, say).

    Returns
    -------
    int or float
    """
    top = allow_inf and high is None and not integer
    ok = in_range(value, integer=integer, low=low, high=high, low_open=low_open) or (
        top and isinstance(value, (float, np.floating)) and value == math.inf
    )
    if not ok:
        kind = "an integer" if integer else "a number" if top else "a finite number"
        rng = ""
        if low is not None or high is not None:
            left = "(" if low_open else "["
            right = "]" if high is not None or top else ")"  # a finite number never reaches an open infinity
            rng = f" in {left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        big = " (it is beyond a 64-bit integer)" if integer and is_int(value) and abs(int(value)) > INT64_MAX else ""
        raise GPUAError(f"{name}={value!r} must be {kind}{rng}{big}{'; ' + fix if fix else ''}.")
    return int(value) if integer else float(value)
