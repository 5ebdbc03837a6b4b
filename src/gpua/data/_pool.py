"""Fit pools: the unlabeled images GPUA is fitted on."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from .._errors import GPUAError, warn_user
from ._datasets import ImageDataset

__all__ = ["sample_pool"]

_D = TypeVar("_D", bound=ImageDataset)


def sample_pool(
    ds: _D,
    n_per_class: int = 16,
    seed: int = 0,
    class_balanced: bool = True,
    *,
    size: int | None = None,
    role: str = "the pool",
) -> _D:
    """Draw a fit pool from a dataset (typically its train split).

    Parameters
    ----------
    ds : ImageDataset
        The dataset to draw from.
    n_per_class : int
        Images per class: 16 reproduces the paper's 16-shot pool (CoOp's few-shot protocol).
    seed : int or None
        Seed of the draw; the same seed gives the same pool (None: a fresh draw each call).
    class_balanced : bool
        ``True``: ``n_per_class`` images of every class, drawn at random within each class.
        **This uses the labels** to balance the pool, as the paper's 16-shot protocol does (the
        pool's labels are then not used for fitting, but its class balance is label
        information). A class with fewer images gives all it has (with a warning); unlabeled
        images (label -1) are never drawn.
        ``False``: a class-blind uniform draw of ``n_per_class * n_classes`` images (or
        ``size``) from the whole dataset, labels unused: the honest unsupervised setting,
        whose class proportions follow the data.
    size : int, optional
        Pool size for ``class_balanced=False`` (default ``n_per_class * n_classes``, capped at
        ``len(ds)``; a ``size`` above ``len(ds)`` takes every image, with a warning). Needed when
        the dataset has no class names.
    role : str
        What the draw is, in the warnings (``"the test subset"`` where a benchmark draws one).

    Returns
    -------
    ImageDataset
        ``ds.subset(indices)`` with the indices in dataset order: same kind, same class names.

    Raises
    ------
    GPUAError
        For something other than a dataset, an empty dataset, a non-positive
        ``n_per_class``/``size``, a ``seed`` that is not an integer, a ``class_balanced`` that is
        not a bool, or a class-balanced pool of a dataset without labels.
    """
    if not isinstance(ds, ImageDataset):
        raise GPUAError(f"ds is a {type(ds).__name__}; pass a dataset of gpua.data.load_dataset.")
    if not isinstance(n_per_class, (int, np.integer)) or isinstance(n_per_class, bool) or n_per_class < 1:
        raise GPUAError(f"n_per_class must be a positive integer, got {n_per_class!r}.")
    if not isinstance(class_balanced, (bool, np.bool_)):
        # "no" or "False" would read as true: a balanced pool, which uses the labels.
        raise GPUAError(f"class_balanced must be True or False, got {class_balanced!r}.")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
        raise GPUAError(f"seed must be a non-negative integer or None, got {seed!r}.")
    if not len(ds):
        raise GPUAError(f"the dataset {ds.name!r} holds no images; draw the pool from a split that has some.")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        n_total = size if size is not None else int(n_per_class) * ds.n_classes
        if size is None and ds.n_classes == 0:
            raise GPUAError("the dataset has no class names, so n_per_class * n_classes is undefined; pass size=.")
        if not isinstance(n_total, (int, np.integer)) or isinstance(n_total, bool) or n_total < 1:
            raise GPUAError(f"size must be a positive integer, got {size!r}.")
        if size is not None and size > len(ds):
            warn_user(f"size={size} is more than the {len(ds)} images of the dataset; {role} takes all of them.")
        picked = rng.choice(len(ds), size=min(int(n_total), len(ds)), replace=False)
        return ds.subset(np.sort(picked))
    if size is not None:
        raise GPUAError("size= is for class_balanced=False; a balanced pool has n_per_class images per class.")
    y = ds.labels
    if ds.n_classes == 0 or not np.any(y >= 0):
        raise GPUAError(
            "a class-balanced pool needs labels and the dataset has none; use class_balanced=False for a "
            "class-blind pool."
        )
    chosen = []
    short = []
    # Classes in label order, one generator: the pool depends only on (dataset, seed).
    for k in range(ds.n_classes):
        members = np.flatnonzero(y == k)
        if members.size < n_per_class:
            short.append((ds.classnames[k], int(members.size)))
        chosen.append(rng.choice(members, size=min(int(n_per_class), members.size), replace=False))
    if short:
        warn_user(f"{len(short)} class(es) have fewer than {n_per_class} images (first: {short[0][0]!r} with "
                  f"{short[0][1]}); {role} takes all of theirs.")
    return ds.subset(np.sort(np.concatenate(chosen)))
