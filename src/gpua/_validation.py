"""Input checks shared by every entry point.

They turn user mistakes into :class:`~gpua.GPUAError` with the argument's name and a fix, before
any arithmetic can hide them as NaN or as a shape error deep inside torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._errors import GPUAError

__all__ = ["check_matrix", "check_triplet", "check_classnames", "check_labels", "l2_normalize"]


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
        All-zero rows cannot be L2-normalised; they are refused unless this is set.
    """
    if A is None:
        raise GPUAError(f"{name} is None: pass an array of shape (n, d).")
    if hasattr(A, "detach"):  # torch tensor
        A = A.detach().cpu().numpy()
    try:
        A = np.asarray(A)
    except Exception as exc:  # ragged lists and the like
        raise GPUAError(f"{name} could not be read as an array ({exc}); pass a 2-D numeric array.") from None
    if A.dtype.kind not in "fiub":
        raise GPUAError(f"{name} has dtype {A.dtype}; pass a numeric (float16/float32/float64) array.")
    if A.ndim != 2:
        raise GPUAError(
            f"{name} must be 2-D (n, d) but has shape {A.shape}; "
            + ("reshape it with .reshape(1, -1) for a single row." if A.ndim == 1 else "flatten the extra axes first.")
        )
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise GPUAError(f"{name} is empty (shape {A.shape}); pass at least one row and one column.")
    A = np.ascontiguousarray(A, dtype=np.float32)
    bad = ~np.isfinite(A)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise GPUAError(
            f"{name} contains NaN or inf in {rows.size} row(s) (first: row {rows[0]}); "
            "drop or re-extract those rows."
        )
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
    return Y


def check_classnames(classnames: Sequence[str] | None, n_classes: int) -> list[str] | None:
    """Check class names: one per class, all distinct."""
    if classnames is None:
        return None
    names = [str(c) for c in np.asarray(classnames).tolist()]
    if len(names) != n_classes:
        raise GPUAError(f"classnames has {len(names)} entries but there are {n_classes} text prototypes; give one name per class.")
    seen: dict[str, int] = {}
    for i, c in enumerate(names):
        if c in seen:
            raise GPUAError(f"classnames has the duplicate name {c!r} (entries {seen[c]} and {i}); class names must be unique.")
        seen[c] = i
    return names


def check_labels(labels, n_samples: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Check integer class labels in ``[0, n_classes)``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise GPUAError(f"{name} must have shape ({n_samples},) but has shape {y.shape}; give one label per row.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise GPUAError(f"{name} must hold integer class indices.")
    elif y.dtype.kind not in "iu":
        raise GPUAError(f"{name} has dtype {y.dtype}; pass integer class indices.")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise GPUAError(f"{name} holds values outside [0, {n_classes}); labels index the text prototypes.")
    return y


def l2_normalize(A: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (inputs already checked to have no zero rows)."""
    return A / np.linalg.norm(A, axis=axis, keepdims=True)
