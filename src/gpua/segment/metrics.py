"""Semantic segmentation scores accumulated over a dataset: mIoU, pixel accuracy, per-class IoU.

Conventions follow mmsegmentation's ``IoUMetric``, so figures compare with published tables:

- one confusion matrix is accumulated over all images (not a mean of per-image mIoUs);
- ground-truth pixels equal to ``ignore_index`` (255) are skipped;
- a class absent from both the prediction and the ground truth of the whole dataset has IoU NaN
  and is left out of the mean (``nanmean``); a class predicted but never present has IoU 0;
- predictions may hold ``ignore_index`` too ("no class", e.g. below a score threshold): such a
  pixel counts as a miss for its ground-truth class and as a hit for no class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .._errors import GPUAError
from .._validation import check_classnames
from ..params import COUNT, check_param

__all__ = ["SegmentationMetric", "SegmentationScores", "check_label_map", "confusion_matrix"]


def check_label_map(
    label,
    n_classes: int,
    name: str = "label",
    *,
    ignore_index: int = 255,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Return ``label`` as an int64 (H, W) map with values in ``[0, n_classes)`` or ``ignore_index``.

    Parameters
    ----------
    label : array-like of shape (H, W)
    n_classes : int
    name : str
        The argument's name, used in the message.
    ignore_index : int
    shape : (int, int), optional
        Required (H, W), e.g. the ground truth's, checked when given.

    Raises
    ------
    GPUAError
        Wrong rank, non-integer values, a size mismatch, or values outside the class list.
    """
    y = np.asarray(label)
    if y.ndim == 3 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim != 2:
        raise GPUAError(f"{name} must be a 2-D (H, W) map of class indices but has shape {y.shape}; "
                        "pass a single-channel (palette or grey) mask, not an RGB rendering.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise GPUAError(f"{name} must hold integer class indices; round or re-export the mask.")
    elif y.dtype.kind not in "iub":
        raise GPUAError(f"{name} has dtype {y.dtype}; pass integer class indices.")
    if shape is not None and tuple(y.shape) != tuple(shape):
        if tuple(y.shape) == tuple(shape)[::-1]:
            # Turned, not resized: a phone photo stored sideways whose mask was drawn on the stored
            # pixels (the prediction is of the upright photo); resizing would score a wrong mask.
            raise GPUAError(
                f"{name} is {y.shape[0]}x{y.shape[1]} but the ground truth is {shape[0]}x{shape[1]}: the same image turned "
                "90 degrees, not resized. Photos are read upright by their EXIF orientation; turn the mask the same way "
                "(or re-export the photo upright, without the tag) rather than resizing."
            )
        raise GPUAError(
            f"{name} is {y.shape[0]}x{y.shape[1]} but the ground truth is {shape[0]}x{shape[1]}; "
            "predict at the ground truth's resolution (resize with nearest-neighbour if needed)."
        )
    y = y.astype(np.int64, copy=False)
    bad = (y != ignore_index) & ((y < 0) | (y >= n_classes))
    if bad.any():
        values = np.unique(y[bad])
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise GPUAError(
            f"{name} holds value(s) {shown} outside the {n_classes} classes [0, {n_classes}) and "
            f"other than the ignore index {ignore_index}; check the class list (e.g. ADE20K and "
            "PASCAL Context 59 need reduce_zero_label) or the mask encoding."
        )
    return y


def check_ignore_index(ignore_index: int, n_classes: int, name: str = "ignore_index") -> int:
    """``ignore_index`` as an int, unless it is also a class index (then its pixels would silently go unscored).

    With 256 classes or more, 255 (mmseg's "no class") is class 255: such label maps are 16-bit
    and mark "no class" with another value, e.g. 65535.
    """
    value = int(ignore_index)
    if 0 <= value < int(n_classes):
        raise GPUAError(f"{name}={value} is also the index of class {value} of the {n_classes}: that class's pixels would be "
                        f"left out of the scores. Pass a value outside [0, {n_classes}) as {name}, e.g. 65535 for 16-bit masks.")
    return value


def confusion_matrix(pred, target, n_classes: int, *, ignore_index: int = 255) -> np.ndarray:
    """Pixel confusion counts of one image.

    Parameters
    ----------
    pred, target : array-like of shape (H, W)
        Predicted and ground-truth class indices (``ignore_index`` allowed in both).
    n_classes : int

    Returns
    -------
    counts : np.ndarray of shape (n_classes, n_classes + 1), int64
        ``counts[t, p]``: pixels of true class ``t`` predicted as ``p``; the last column counts
        true-class pixels predicted as ``ignore_index``.
    """
    check_ignore_index(ignore_index, n_classes)
    t = check_label_map(target, n_classes, "target", ignore_index=ignore_index)
    p = check_label_map(pred, n_classes, "pred", ignore_index=ignore_index, shape=t.shape)
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    p = np.where(p == ignore_index, n_classes, p)
    return np.bincount(t * (n_classes + 1) + p, minlength=n_classes * (n_classes + 1)).reshape(n_classes, n_classes + 1)


@dataclass
class SegmentationScores:
    """Dataset-level scores; fractions in [0, 1] (multiply by 100 for mmseg-style tables).

    Attributes
    ----------
    mIoU : float
        Mean over classes present in the prediction or the ground truth.
    aAcc : float
        Pixel accuracy over all labelled pixels.
    mAcc : float
        Mean per-class recall over classes present in the ground truth.
    iou, acc : np.ndarray of shape (n_classes,)
        Per-class IoU and recall (NaN where undefined).
    confusion : np.ndarray of shape (n_classes, n_classes + 1)
    classnames : list of str or None
    """

    mIoU: float
    aAcc: float
    mAcc: float
    iou: np.ndarray
    acc: np.ndarray
    confusion: np.ndarray
    classnames: list[str] | None = field(default=None)

    def to_dict(self) -> dict:
        """JSON-ready dict: headline scores plus per-class IoU/accuracy keyed by class name."""
        names = self.classnames or [str(i) for i in range(self.iou.size)]

        def clean(v: float) -> float | None:
            return None if np.isnan(v) else round(float(v), 6)

        return {
            "mIoU": clean(self.mIoU),
            "aAcc": clean(self.aAcc),
            "mAcc": clean(self.mAcc),
            "n_classes": int(self.iou.size),
            "n_pixels": int(self.confusion.sum()),
            "per_class": {
                n: {"IoU": clean(i), "Acc": clean(a), "pixels": int(c)}
                for n, i, a, c in zip(names, self.iou, self.acc, self.confusion.sum(1))
            },
        }

    def table(self) -> str:
        """A plain-text table of per-class IoU/accuracy (percent) and the headline scores."""
        names = self.classnames or [str(i) for i in range(self.iou.size)]
        width = max(8, max(len(n) for n in names))
        # percent, said in the headers: the JSON holds fractions (mIoU 0.41 here is 0.0041 there)
        lines = [f"{'class':<{width}}  {'IoU (%)':>7}  {'Acc (%)':>7}"]
        for n, i, a in zip(names, self.iou, self.acc):
            lines.append(f"{n:<{width}}  {_pct(i):>7}  {_pct(a):>7}")
        lines.append(f"mIoU {_pct(self.mIoU)}%  aAcc {_pct(self.aAcc)}%  mAcc {_pct(self.mAcc)}%")
        return "\n".join(lines)


def _pct(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.2f}"


class SegmentationMetric:
    """Accumulates a confusion matrix over images and computes mmseg-style scores.

    Parameters
    ----------
    n_classes : int
    ignore_index : int
        Ground-truth value that is not scored (255 in every mmseg dataset); it may not be a class
        index (with 256 classes or more, use e.g. 65535).
    classnames : sequence of str, optional
        Used in reports.

    Examples
    --------
    >>> m = SegmentationMetric(2)
    >>> m.update([[0, 1]], [[0, 0]])
    >>> round(m.compute().mIoU, 3)   # class 0: IoU 1/2; class 1: predicted, absent -> IoU 0
    0.25
    """

    def __init__(self, n_classes: int, *, ignore_index: int = 255, classnames: Sequence[str] | None = None) -> None:
        check_param("n_classes", n_classes, COUNT)  # 2.7 classes is a mistake, not 2
        self.n_classes = int(n_classes)
        self.ignore_index = check_ignore_index(ignore_index, self.n_classes)
        self.classnames = check_classnames(classnames, self.n_classes)
        self.confusion = np.zeros((self.n_classes, self.n_classes + 1), dtype=np.int64)
        self.n_images = 0

    def update(self, pred, target) -> None:
        """Add one image: ``pred`` and ``target`` of shape (H, W)."""
        self.confusion += confusion_matrix(pred, target, self.n_classes, ignore_index=self.ignore_index)
        self.n_images += 1

    def compute(self) -> SegmentationScores:
        """Scores over every image added so far."""
        conf = self.confusion.astype(np.float64)
        inter = np.diag(conf[:, : self.n_classes])
        area_label = conf.sum(1)
        area_pred = conf[:, : self.n_classes].sum(0)
        union = area_label + area_pred - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / union  # 0/0 -> NaN: class absent from both, left out of the mean
            acc = inter / area_label
        total = area_label.sum()
        return SegmentationScores(
            mIoU=_nanmean(iou),
            aAcc=float(inter.sum() / total) if total else float("nan"),
            mAcc=_nanmean(acc),
            iou=iou,
            acc=acc,
            confusion=self.confusion.copy(),
            classnames=self.classnames,
        )


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
