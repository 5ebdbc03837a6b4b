"""Patch-level GPUA for open-vocabulary semantic segmentation.

Fitting
    Both encoders are run on an unlabeled image pool. Their patch grids usually differ
    (DINOv2-S/14 gives 16x16 at 224 pixels, a CLIP/stand-in 7x7 or 14x14), so both feature maps
    are resampled to one common grid, by default the *coarser* one, by area pooling
    (``adaptive_avg_pool2d``: each coarse cell is the mean of the fine patches it covers, the
    feature of a larger region) and bilinearly where a grid must grow. A seeded random subset of
    cells per image becomes the rows of ``Z`` (VFM) and ``X`` (VLM) that GPUA is fitted on.
Prediction
    Patch scores are cosines ``cos(Q W, Y_k)`` from the fitted model. A model whose query is the
    VFM alone needs no VLM at test time and predicts on the VFM's own (finer) grid; a model that
    also reads ``X`` predicts on the common grid. Scores may be smoothed by VFM patch affinities
    (each patch takes the softmax-weighted mean of its ``top-k`` most similar patches' scores),
    are upsampled bilinearly to pixels, and are averaged over overlapping windows when the
    image is processed as sliding crops (mmseg's ``slide`` mode), which bounds memory on large
    images. The dense VLM zero-shot baseline is the same pipeline with ``cos(X, Y_k)``.
Classes and background
    Several prompts may stand for one class (synonyms, or a background prompt set: "sky, wall,
    floor, ..." all mapping to ``background``): ``class_of_prototype`` maps prototype rows to
    classes and a class scores the max over its prompts. Optionally, pixels whose top
    probability ``softmax(scores / temperature)`` falls below ``score_threshold`` get
    ``threshold_label`` (background, or 255 for "no class"). The threshold is a probability,
    not a score: the temperature is CLIP's (0.01, a logit scale of 100) for the zero-shot, whose
    cosines of 0.1-0.3 a few hundredths apart then give top probabilities from about 1 / K to
    near 1, or one over a model's probability scale (its ``predict_proba``'s: a GPUA's
    ``proba_scale_``, chosen by its fit on the pool of patches).

Encoders are anything with ``encode_patches(images) -> (N, h, w, d)`` (numpy or torch), e.g.
``gpua.encoders.create_encoder(spec)`` or :class:`gpua.segment.planted.PlantedPatchEncoder`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._errors import GPUAError, warn_user
from .._validation import check_matrix
from ..data.classnames import parse_class_entries
from ..params import COUNT, POSITIVE, check_param
from .io import NO_CLASS, NO_CLASS_16BIT, no_class_label

__all__ = [
    "DenseSegmenter",
    "check_grid",
    "common_grid",
    "dense_view",
    "encode_grids",
    "fit_patch_gpua",
    "min_image_side",
    "model_probability_scale",
    "parse_class_prompts",
    "flatten_class_prompts",
    "resample_grid",
    "sample_patch_features",
    "sliding_windows",
]


# --------------------------------------------------------------------------- grids


def resample_grid(feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a batch of feature maps to ``size``.

    Parameters
    ----------
    feats : torch.Tensor of shape (N, h, w, d)
    size : (int, int)
        Target grid ``(h', w')``.

    Returns
    -------
    torch.Tensor of shape (N, h', w', d)
        Area pooling (mean of the covered cells) where both axes shrink, bilinear
        (``align_corners=False``, antialiased) otherwise; the input itself when sizes match.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(feats.shape[1:3]) == size:
        return feats
    x = feats.permute(0, 3, 1, 2)
    if size[0] <= x.shape[2] and size[1] <= x.shape[3]:
        x = F.adaptive_avg_pool2d(x, size)
    else:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous()


def check_grid(grid) -> str | tuple[int, int]:
    """``grid`` as the segmentation functions take it: ``"coarser"``, ``"finer"`` or an (h, w) pair of
    positive ints; anything else a :class:`GPUAError` naming it (was: stored unchecked, and an (h,)
    or (0, w) pair failed deep inside on a reshape or an index)."""
    if isinstance(grid, str) and grid in ("coarser", "finer"):
        return grid
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in grid):
        return (int(grid[0]), int(grid[1]))
    raise GPUAError(f"grid={grid!r}; use 'coarser', 'finer' or an (h, w) pair of positive ints.")


def common_grid(a: tuple[int, int], b: tuple[int, int], how: str = "coarser") -> tuple[int, int]:
    """The grid both feature maps are resampled to: per axis the smaller ("coarser") or larger."""
    if how == "coarser":
        return (min(a[0], b[0]), min(a[1], b[1]))
    if how == "finer":
        return (max(a[0], b[0]), max(a[1], b[1]))
    raise GPUAError(f"grid={how!r} is not a grid rule; use 'coarser', 'finer' or an (h, w) pair.")


def _as_images(images) -> list[np.ndarray]:
    """Images -> list of uint8 (H, W, 3) arrays (accepts one image, a stack, a list, PIL images).

    Other dtypes are scaled as image files are (:func:`gpua.data.to_rgb`): 16-bit values by
    255 / 65535, floats in [0, 1] by 255; clipping would turn a 16-bit photo white. PIL images
    are converted by that same function (PIL's own ``convert("RGB")`` saturates 16-bit grey and
    puts transparent pixels on black, where image files put them on white). They are taken as
    stored, as encoders take them: an EXIF orientation is not applied (read files with
    :func:`gpua.segment.read_image` for the upright photo a viewer shows).
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    out = [_as_image(im, i) for i, im in enumerate(images)]
    if not out:
        raise GPUAError("images is empty; pass at least one image.")
    return out


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two prototype matrices have the same rows up to their lengths (a model keeps its own normalised)."""
    return tuple(a.shape) == tuple(b.shape) and bool(torch.allclose(F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1), atol=1e-5))


def _as_image(im, i: int) -> np.ndarray:
    """``images[i]`` as a uint8 (H, W, 3) array (see :func:`_as_images`)."""
    from ..data._datasets import as_uint8, to_rgb

    a = np.asarray(to_rgb(im)) if hasattr(im, "convert") else np.asarray(im)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise GPUAError(f"images[{i}] has shape {a.shape}; pass (H, W, 3) RGB images.")
    if a.dtype.kind not in "buif":
        raise GPUAError(f"images[{i}] has dtype {a.dtype}; pass numeric pixel values (uint8, uint16 or float).")
    return as_uint8(a)


def _patch_size(encoder) -> int:
    p = getattr(encoder, "patch_size", None)
    if p is None:
        p = (getattr(encoder, "metadata", lambda: {})() or {}).get("patch_size", 1)
    return int(p[0] if isinstance(p, (tuple, list)) else p or 1)


def min_image_side(encoders: Sequence) -> int:
    """The smallest height and width an image may have for ``encoders``: one patch of the coarsest."""
    return max(_patch_size(e) for e in encoders if e is not None)


def _check_image_size(images: list[np.ndarray], encoders: Sequence, what: str = "images", first: int = 0) -> None:
    """Refuse an image smaller than one encoder patch; ``first``: the index of ``images[0]`` in the caller's sequence."""
    need = min_image_side(encoders)
    for i, im in enumerate(images, start=first):
        if im.shape[0] < need or im.shape[1] < need:
            raise GPUAError(
                f"{what}[{i}] is {im.shape[0]}x{im.shape[1]} pixels, smaller than one {need}x{need} "
                "encoder patch; drop it or upscale it first."
            )


def dense_view(encoder):
    """The encoder, or a shallow copy of it whose preprocessing tiles the whole input.

    Classification preprocessing resizes the short side and centre-crops (DINO even resizes to
    256 and crops 224), so patches would cover only the middle of a crop and would no longer
    line up with its pixels. The copy resizes each input to exactly the network's input size
    instead ("squash", no crop): the grid then covers the whole crop, a square crop is not
    distorted, and a non-square one is stretched rather than cut. Encoders without a
    ``preprocess`` attribute (e.g. the planted ones) are used as they are.
    """
    pre = getattr(encoder, "preprocess", None)
    if pre is None or not dataclasses.is_dataclass(pre) or not hasattr(pre, "input_size"):
        return encoder
    size = tuple(pre.input_size)
    if getattr(pre, "resize_mode", None) == "squash" and tuple(getattr(pre, "resize", ()) or ()) == size:
        return encoder
    view = copy.copy(encoder)
    view.preprocess = dataclasses.replace(pre, resize_mode="squash", resize=size)
    return view


def _patches(encoder, images: list[np.ndarray], name: str) -> torch.Tensor:
    out = dense_view(encoder).encode_patches(np.stack(images))
    t = out.detach().float().cpu() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float32))
    if t.ndim != 4 or t.shape[0] != len(images) or min(t.shape[1:3]) < 1:
        raise GPUAError(f"the {name} encoder returned patch features of shape {tuple(t.shape)}; expected (N, h, w, d).")
    return t


def encode_grids(vfm, vlm, images, *, grid: str | tuple[int, int] = "coarser") -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' patch features of same-size images, resampled to one grid.

    Parameters
    ----------
    vfm, vlm : encoders with ``encode_patches``
    images : sequence of uint8 (H, W, 3) arrays of one size
    grid : "coarser", "finer" or (h, w)

    Returns
    -------
    Z : torch.Tensor of shape (N, h, w, d_vfm)
    X : torch.Tensor of shape (N, h, w, d_vlm)
    """
    grid = check_grid(grid)
    imgs = _as_images(images)
    _check_image_size(imgs, (vfm, vlm))
    Z, X = _patches(vfm, imgs, "vfm"), _patches(vlm, imgs, "vlm")
    hw = grid if isinstance(grid, tuple) else common_grid(tuple(Z.shape[1:3]), tuple(X.shape[1:3]), grid)
    return resample_grid(Z, hw), resample_grid(X, hw)


def _same_size_batches(images: Iterable[np.ndarray], batch_size: int):
    """Consecutive runs of same-size images, at most ``batch_size`` long, in input order; an
    iterator is read as the batches are taken (one batch of it in memory at a time)."""
    batch: list[np.ndarray] = []
    for im in images:
        if batch and (len(batch) == batch_size or im.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(im)
    if batch:
        yield batch


# --------------------------------------------------------------------------- fitting


def sample_patch_features(
    vfm,
    vlm,
    images,
    *,
    patches_per_image: int = 64,
    seed: int = 0,
    grid: str | tuple[int, int] = "coarser",
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Paired VFM/VLM patch features sampled from an unlabeled image pool.

    Parameters
    ----------
    vfm, vlm : encoders with ``encode_patches``
    images : sequence or iterator of uint8 (H, W, 3) arrays
        A sequence is checked whole before any encoding; an iterator (a generator reading image
        files, say) is read batch by batch, so that a large pool of large photos is never in
        memory at once, and each image is checked as it comes. The result is the same.
    patches_per_image : int
        Cells drawn per image without replacement (all of them when the grid is smaller).
    seed : int
        Seeds the cell draws; the result depends only on it and the inputs.
    grid : "coarser", "finer" or (h, w)
        Common grid (see :func:`encode_grids`).
    batch_size : int
        Images per encoder call.
    progress : bool
        Show a tqdm bar over the images.

    Returns
    -------
    Z : np.ndarray of shape (M, d_vfm), float32
    X : np.ndarray of shape (M, d_vlm), float32
        Row ``i`` of both describes the same image cell.
    """
    if int(patches_per_image) < 1:
        raise GPUAError(f"patches_per_image={patches_per_image}; draw at least 1 patch per image.")
    grid = check_grid(grid)  # before any image is encoded
    if isinstance(images, Iterator):
        imgs: Iterable[np.ndarray] = (_as_image(im, i) for i, im in enumerate(images))
        total = None
    else:
        imgs = _as_images(images)
        _check_image_size(imgs, (vfm, vlm))  # all first: the batches' own check would number images within a batch
        total = len(imgs)
    rng = np.random.default_rng(seed)
    zs, xs = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="patch features", unit="img", leave=False, dynamic_ncols=True)
    for batch in _same_size_batches(imgs, batch_size):
        if total is None:
            _check_image_size(batch, (vfm, vlm), first=len(zs))  # zs: one entry per image so far
        Zg, Xg = encode_grids(vfm, vlm, batch, grid=grid)
        if bar is not None:
            bar.update(len(batch))
        n_cells = Zg.shape[1] * Zg.shape[2]
        for z, x in zip(Zg.reshape(len(batch), n_cells, -1), Xg.reshape(len(batch), n_cells, -1)):
            idx = np.sort(rng.choice(n_cells, size=min(int(patches_per_image), n_cells), replace=False))
            zs.append(z[idx].numpy())
            xs.append(x[idx].numpy())
    if bar is not None:
        bar.close()
    if not zs:
        raise GPUAError("images is empty; pass at least one image.")
    return np.concatenate(zs), np.concatenate(xs)


def fit_patch_gpua(
    vfm,
    vlm,
    images,
    prototypes,
    *,
    patches_per_image: int = 64,
    seed: int = 0,
    grid: str | tuple[int, int] = "coarser",
    estimator=None,
    batch_size: int = 16,
    classnames: Sequence[str] | None = None,
    class_of_prototype: Sequence[int] | None = None,
    callback=None,
    progress: bool = False,
):
    """Fit GPUA on patch tokens of an unlabeled image pool.

    Parameters
    ----------
    vfm, vlm : encoders with ``encode_patches``
    images : sequence or iterator of uint8 (H, W, 3) arrays
        The unlabeled pool; no masks are used. An iterator is read batch by batch
        (:func:`sample_patch_features`).
    prototypes : array of shape (M, d_vlm)
        Text prototypes (one row per prompt set; see :class:`DenseSegmenter` for synonyms).
    patches_per_image, seed, grid, batch_size
        See :func:`sample_patch_features`.
    estimator : object with ``fit(Z, X, Y)``, optional
        Default ``gpua.GPUA(query="vfm")``.
    classnames : sequence of str, optional
        One name per prototype row, stored in the model (``fit(..., classnames=...)``).
    class_of_prototype : sequence of int of shape (M,), optional
        The class of each prototype row, when a class has several (synonyms, or a background
        of several prompts: :func:`parse_class_prompts`' third result). Recorded in the model's
        ``provenance_``, where :class:`DenseSegmenter` finds it: without it each row is a class
        of its own, and the labels of a model whose first class has three prompts count rows,
        not classes.
    callback : callable, optional
        Passed to the estimator's ``fit`` (GPUA calls it after each UCM round and refinement
        evaluation: progress display).
    progress : bool
        Show a progress bar while the patch features are encoded.

    Returns
    -------
    The fitted estimator.
    """
    owner = None
    if class_of_prototype is not None:  # before any image is encoded, as DenseSegmenter will read it
        rows = check_matrix(prototypes, "prototypes").shape[0]
        owner = np.asarray(class_of_prototype)
        if owner.ndim != 1 or owner.shape[0] != rows or owner.dtype.kind not in "iu" or owner.min(initial=0) < 0:
            raise GPUAError(f"class_of_prototype must hold one non-negative class index per prototype row ({rows}); "
                            f"got {owner.shape[0] if owner.ndim == 1 else owner.shape} value(s) of dtype {owner.dtype}.")
        missing = np.setdiff1d(np.arange(int(owner.max()) + 1), owner)
        if missing.size:
            raise GPUAError(f"class_of_prototype numbers the classes 0..{int(owner.max())} but class(es) "
                            f"{missing[:8].tolist()} have no prototype row; renumber the classes without gaps.")
    Z, X = sample_patch_features(vfm, vlm, images, patches_per_image=patches_per_image, seed=seed, grid=grid, batch_size=batch_size,
                                 progress=progress)
    if estimator is None:
        from .. import GPUA  # the core estimator; imported late so this module loads without it

        estimator = GPUA(query="vfm")
    Y = check_matrix(prototypes, "prototypes", n_cols=X.shape[1])
    kw = {} if callback is None else {"callback": callback}
    if classnames is not None:
        kw["classnames"] = list(classnames)
    model = estimator.fit(Z, X, Y, **kw)
    # a patch-level model says so: `gpua predict` and `evaluate` refuse it (gpua.report.check_model_task)
    model.provenance_ = {**(getattr(model, "provenance_", None) or {}), "task": "segmentation",
                         **({} if owner is None else {"class_of_prototype": owner.tolist()})}
    return model


def model_probability_scale(model) -> float:
    """The softmax scale of a model's probabilities, which ``DenseSegmenter``'s threshold reads.

    The scale of the model's own ``predict_proba`` (``_proba_scale``): for a GPUA with
    ``proba_scale="auto"``, the one its fit chose on its pool, which for a patch-level model
    (:func:`fit_patch_gpua`, ``gpua fit-seg``) is a pool of patches; else ``logit_scale`` (a
    model saved before 2026-12-02). At CLIP's 100 the map's cosines, whose top class leads the
    next by tenths, saturate: a threshold of 0.999 marked 2% of a photo's pixels
    (``benchmarks/segment_threshold.py``). A model without either (a duck-typed one) gets CLIP's 100.
    """
    read = getattr(model, "_proba_scale", None)
    scale = read() if callable(read) else getattr(model, "logit_scale", None)
    ok = isinstance(scale, (int, float, np.number)) and not isinstance(scale, bool) and 0 < float(scale) < math.inf
    return float(scale) if ok else 100.0


def parse_class_prompts(entries: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Lines of a class-name file -> class names, prompt names, class of each.

    Parameters
    ----------
    entries : sequence of str
        One entry per class in the format of :mod:`gpua.data.classnames`, e.g.
        ``["background, sky, wall, floor", "cat", "dog: dog, puppy"]``.

    Returns
    -------
    classnames : list of str
        The name of each class (``["background", "cat", "dog"]``).
    prompt_names : list of str
        Every prompt word, in order (one text prototype each).
    class_of_prototype : np.ndarray of shape (len(prompt_names),), int64
        The class index of each prompt name.
    """
    return flatten_class_prompts(*parse_class_entries(entries))


def flatten_class_prompts(classnames: Sequence[str], words: Sequence[Sequence[str]]) -> tuple[list[str], list[str], np.ndarray]:
    """Class names and each class's prompt words -> class names, every word, the class of each word."""
    prompts = [w for ws in words for w in ws]
    owner = np.repeat(np.arange(len(words), dtype=np.int64), [len(ws) for ws in words])
    return list(classnames), prompts, owner


# --------------------------------------------------------------------------- windows


def sliding_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmseg ``slide`` windows ``(y1, y2, x1, x2)`` of one size covering an image.

    Windows step by ``stride``; the last one in each direction is shifted back to end at the
    border, so every window has size ``min(crop, image)`` and the image is covered exactly.

    Raises
    ------
    GPUAError
        If ``stride`` exceeds ``crop`` along an axis: the windows would skip the pixels between
        them (see :func:`_check_stride`).
    """
    _check_stride(crop, stride, "crop", "stride")
    ch, cw = min(crop[0], height), min(crop[1], width)
    sh, sw = stride
    n_y = max(height - ch + sh - 1, 0) // sh + 1
    n_x = max(width - cw + sw - 1, 0) // sw + 1
    out = []
    for iy in range(n_y):
        for ix in range(n_x):
            y2, x2 = min(iy * sh + ch, height), min(ix * sw + cw, width)
            out.append((y2 - ch, y2, x2 - cw, x2))
    return out


def _check_stride(crop: tuple[int, int], stride: tuple[int, int], crop_name: str, stride_name: str, hint: str = "") -> None:
    """Refuse a stride larger than the crop: windows that far apart leave unscored pixels.

    The last window is already flush with the border, so a stride up to the crop covers every
    pixel; beyond it no placement of windows ``stride`` apart can, and the pixels between them
    would get 0/0 = NaN scores. Refusing is clearer than silently shrinking the stride.
    """
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise GPUAError(
            f"{stride_name}={tuple(stride)} is larger than {crop_name}={tuple(crop)}: windows that far apart "
            f"skip the pixels between them; use a {stride_name} of at most the crop size (overlapping windows "
            f"are averaged){hint}."
        )


def _linear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation from ``n_in`` to ``n_out`` samples,
    ``align_corners=False``: the per-axis weights of ``F.interpolate(mode="bilinear")``, got by
    interpolating the unit vectors (channel ``i`` of the identity is sample ``i``'s weight)."""
    eye = torch.eye(n_in, dtype=torch.float32)[None]  # (1, n_in, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def _pair(v, name: str) -> tuple[int, int] | None:
    if v is None:
        return None
    a = (int(v), int(v)) if np.isscalar(v) else tuple(int(t) for t in v)
    if len(a) != 2 or min(a) < 1:
        raise GPUAError(f"{name}={v!r}; give a positive int or an (h, w) pair of positive ints.")
    return a  # type: ignore[return-value]


# --------------------------------------------------------------------------- segmenter


class DenseSegmenter:
    """Per-pixel class scores and labels from patch-level GPUA or dense VLM zero-shot.

    Parameters
    ----------
    vfm : encoder or None
        Needed by a GPUA model and by ``refine="affinity"``.
    vlm : encoder or None
        Needed for zero-shot and by models whose query reads the VLM features.
    prototypes : array of shape (M, d_vlm)
        Text prototypes, one row per prompt set. With a ``model`` only their row count is read
        (it may be None): the model scores the prototypes it was fitted with, and other ones
        than those get a warning.
    model : fitted GPUA (or any object with ``decision_function(Z, X)``), optional
        ``None`` gives dense VLM zero-shot: ``cos(X, Y)``.
    class_of_prototype : sequence of int of shape (M,), optional
        The class each prototype row stands for (default: a ``gpua fit-seg`` model's recorded
        ``provenance_["class_of_prototype"]``, else row ``i`` is class ``i``). A class scores the
        max over its rows; the classes are ``0 .. max``, each with at least one row.
    uses_vlm : bool, optional
        Whether the model reads ``X``; inferred from ``model.query`` when not given ("vfm" means
        no). A model that does not is run on the VFM's own grid.
    crop_size, stride : int or (int, int), optional
        Sliding-window inference; ``None`` processes each image whole. ``stride`` defaults to
        two thirds of the crop and may not exceed it (the windows must cover the image).
    grid : "coarser", "finer" or (h, w)
        Common grid when both encoders are needed.
    refine : {None, "affinity"}
        Smooth patch scores with the VFM patch affinity (top-k neighbours, softmax weights).
    affinity_topk : int
        Neighbours each patch averages over (itself included), at least 1.
    affinity_temperature : float
        Temperature of the softmax over the top-k cosine affinities, > 0.
    score_threshold : float in [0, 1], optional
        Pixels whose top class probability (:meth:`top_probability`: ``softmax(scores /
        temperature)`` over the classes, not the cosine scores themselves) is below it get
        ``threshold_label``.
    threshold_label : int
        Label for those pixels (a background class index, or 255 "no class"; with 256 classes
        or more, 255 is a class and "no class" is 65535).
    temperature : float > 0, optional
        Score temperature for probabilities. Default: one over the model's probability scale
        (:func:`model_probability_scale`: its ``predict_proba``'s, for a GPUA the scale its fit
        chose on its pool of patches), else 0.01, CLIP's logit scale of 100 (zero-shot).
    batch_size : int
        Crops per encoder call.
    """

    def __init__(
        self,
        vfm=None,
        vlm=None,
        prototypes=None,
        *,
        model=None,
        class_of_prototype: Sequence[int] | None = None,
        uses_vlm: bool | None = None,
        crop_size: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        grid: str | tuple[int, int] = "coarser",
        refine: str | None = None,
        affinity_topk: int = 8,
        affinity_temperature: float = 0.05,
        score_threshold: float | None = None,
        threshold_label: int = 255,
        temperature: float | None = None,
        batch_size: int = 4,
    ) -> None:
        self.model = model
        if model is not None and uses_vlm is None:
            uses_vlm = str(getattr(model, "query", "vfm")).lower() != "vfm"
        self.uses_vlm = bool(uses_vlm) if model is not None else True
        self.uses_vfm = model is not None or refine == "affinity"
        if self.uses_vfm and vfm is None:
            raise GPUAError("vfm is None but a GPUA model or refine='affinity' needs the VFM encoder; pass vfm=.")
        if self.uses_vlm and vlm is None:
            raise GPUAError("vlm is None but zero-shot (model=None) or a model reading X needs the VLM encoder; pass vlm=.")
        self.vfm, self.vlm = vfm, vlm
        self.Y = None if prototypes is None else torch.as_tensor(check_matrix(prototypes, "prototypes"))
        if self.Y is None and model is None:
            raise GPUAError("prototypes is None; zero-shot segmentation needs the text prototypes.")
        own = getattr(model, "text_prototypes_", None) if model is not None else None
        if self.Y is not None and own is not None and not _same_rows(torch.as_tensor(own).detach().cpu(), self.Y):
            # A model scores its own text prototypes; others given here would only set the class count.
            warn_user(f"prototypes is not used with a model: it scores the {own.shape[0]} text prototypes it was fitted with, "
                      "not these. To segment into other classes, fit a model on their prototypes, or pass model=None "
                      "(zero-shot).")
        # Without prototypes the model's own classes are the rows (one class each, by default).
        m = self.Y.shape[0] if self.Y is not None else getattr(model, "n_classes_", None)
        if m is None and class_of_prototype is None:
            raise GPUAError("the model has no n_classes_ (is it fitted?) and no prototypes or class_of_prototype were given; "
                            "pass a fitted model, or class_of_prototype with the class of each of its prototype rows.")
        if class_of_prototype is None and model is not None:
            # A `gpua fit-seg` model records which class each of its prompt rows belongs to
            # (synonyms share one); one class per row would shift every class after a synonym.
            # The model scores its own rows, so that holds with prototypes passed too.
            recorded = (getattr(model, "provenance_", None) or {}).get("class_of_prototype")
            if recorded is not None and len(recorded) == m:
                class_of_prototype = recorded
        cop = np.arange(m) if class_of_prototype is None else np.asarray(class_of_prototype, dtype=np.int64)
        if cop.ndim != 1 or (m is not None and cop.size != m) or cop.size == 0 or cop.min() < 0:
            raise GPUAError(f"class_of_prototype must hold one non-negative class index per prototype row ({m}).")
        # A class with no row would score -inf everywhere, and bilinear upsampling turns -inf
        # into NaN, which argmax then picks: a gap in the numbering is refused instead.
        missing = np.setdiff1d(np.arange(int(cop.max()) + 1), cop)
        if missing.size:
            shown = ", ".join(str(k) for k in missing[:8]) + (", ..." if missing.size > 8 else "")
            raise GPUAError(
                f"class_of_prototype numbers the classes 0..{int(cop.max())} but class {shown} has no prototype row; "
                "give every class at least one prompt, or renumber the classes without gaps."
            )
        self.class_of_prototype = torch.as_tensor(cop)
        self.n_classes = int(cop.max()) + 1
        self.crop_size = _pair(crop_size, "crop_size")
        if self.crop_size is None and stride is not None:
            raise GPUAError(f"stride={stride!r} is given without crop_size, and whole images have no windows to step; "
                            "pass crop_size too (sliding-window inference), or drop stride.")
        self.stride = _pair(stride, "stride") or (
            None if self.crop_size is None else tuple(max(1, math.ceil(c * 2 / 3)) for c in self.crop_size)
        )
        if self.crop_size is not None:
            _check_stride(self.crop_size, self.stride, "crop_size", "stride", ", or leave it unset for two thirds of the crop")
            side = self.min_image_side
            if min(self.crop_size) < side:
                raise GPUAError(f"crop_size={crop_size!r} is smaller than one {side}x{side} encoder patch, so no window could be "
                                f"encoded; use a crop of at least {side} pixels (a few patches wide), or leave it unset.")
        self.grid = check_grid(grid)
        if refine not in (None, "none", "affinity"):
            raise GPUAError(f"refine={refine!r}; use None or 'affinity'.")
        self.refine = None if refine == "none" else refine
        # Checked even without refine="affinity": a bad value is a mistake either way, and
        # temperature 0 or top-0 would otherwise turn every score into NaN.
        check_param("affinity_topk", affinity_topk, COUNT)
        check_param("affinity_temperature", affinity_temperature, POSITIVE)
        self.affinity_topk = int(affinity_topk)
        self.affinity_temperature = float(affinity_temperature)
        if score_threshold is not None and not 0.0 <= float(score_threshold) <= 1.0:
            raise GPUAError(f"score_threshold={score_threshold}; it is a probability, between 0 and 1.")
        self.score_threshold = score_threshold
        self.threshold_label = int(threshold_label)
        no_class = no_class_label(self.n_classes)
        if self.threshold_label != no_class and not 0 <= self.threshold_label < self.n_classes:
            raise GPUAError(f"threshold_label={threshold_label}; use a class index in [0, {self.n_classes}) or {no_class} (no class).")
        if score_threshold is not None and self.n_classes > NO_CLASS and self.threshold_label == NO_CLASS:
            raise GPUAError(f"threshold_label=255 is class 255's index here ({self.n_classes} classes), not \"no class\"; pass "
                            f"threshold_label={NO_CLASS_16BIT} for no class (masks of this many classes are 16-bit), or a "
                            "background class's index.")
        if temperature is None:
            temperature = 1.0 / model_probability_scale(model) if model is not None else 0.01
        check_param("temperature", temperature, POSITIVE)
        self.temperature = float(temperature)
        self.batch_size = max(1, int(batch_size))

    # -- scores on the patch grid

    def _encoders(self) -> list:
        return [e for e, used in ((self.vfm, self.uses_vfm), (self.vlm, self.uses_vlm)) if used]

    @property
    def min_image_side(self) -> int:
        """The smallest height and width :meth:`predict` takes: one patch of the coarsest encoder used."""
        return min_image_side(self._encoders())

    def grid_scores(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Class scores of same-size crops on the patch grid.

        Returns
        -------
        torch.Tensor of shape (B, K, h, w)
        """
        Z = X = None
        if self.uses_vfm and self.uses_vlm:
            Z, X = encode_grids(self.vfm, self.vlm, crops, grid=self.grid)
        elif self.uses_vlm:
            X = _patches(self.vlm, crops, "vlm")
        else:
            Z = _patches(self.vfm, crops, "vfm")
        B, h, w = (Z if Z is not None else X).shape[:3]
        if self.model is None:
            if X.shape[-1] != self.Y.shape[1]:
                raise GPUAError(
                    f"prototypes has width {self.Y.shape[1]} but the vlm encoder's patch features have width "
                    f"{X.shape[-1]}; encode the class prompts with the same vision-language model as the images."
                )
            Xn = F.normalize(X.reshape(B * h * w, -1), dim=-1)
            s = Xn @ F.normalize(self.Y, dim=-1).T
        else:
            self._check_model_widths(Z, X)
            Zf = Z.reshape(B * h * w, -1).numpy()
            Xf = X.reshape(B * h * w, -1).numpy() if self.uses_vlm else None
            s = torch.as_tensor(np.asarray(self.model.decision_function(Zf, Xf), dtype=np.float32))
        s = self._per_class(s).reshape(B, h, w, -1)
        if self.refine == "affinity":
            if Z is None or tuple(Z.shape[1:3]) != (h, w):
                Z = resample_grid(_patches(self.vfm, crops, "vfm"), (h, w))
            s = torch.stack([self._affinity_smooth(si.reshape(h * w, -1), zi.reshape(h * w, -1)) for si, zi in zip(s, Z)])
            s = s.reshape(B, h, w, -1)
        return s.permute(0, 3, 1, 2).contiguous()

    def _check_model_widths(self, Z: torch.Tensor | None, X: torch.Tensor | None) -> None:
        """The encoders' patch widths against the model's: an encoder other than the fitted one is
        named as the encoder (was the library's "vfm_features has width 16 but 24 was expected")."""
        for kind, grid, attr in (("vfm", Z, "n_features_vfm_"), ("vlm", X, "n_features_vlm_")):
            want = getattr(self.model, attr, None)
            if grid is not None and want is not None and grid.shape[-1] != int(want):
                encoder = getattr(self, kind)
                raise GPUAError(
                    f"the {kind.upper()} encoder {getattr(encoder, 'spec', type(encoder).__name__)!r} gives patch "
                    f"features {grid.shape[-1]} wide but the model was fitted on {int(want)}-wide ones; use the "
                    f"encoder it was fitted with (its .seg.json sidecar records it, and `--model` uses that one "
                    f"when --{kind} is left out)."
                )

    def _per_class(self, s: torch.Tensor) -> torch.Tensor:
        """(P, M) prompt scores -> (P, K) class scores, the max over each class's prompts."""
        if s.shape[1] != self.class_of_prototype.numel():
            raise GPUAError(
                f"the model scores {s.shape[1]} prototypes but class_of_prototype has "
                f"{self.class_of_prototype.numel()} entries; use the class list the model was fitted with."
            )
        if s.shape[1] == self.n_classes and bool((self.class_of_prototype == torch.arange(self.n_classes)).all()):
            return s
        out = torch.full((s.shape[0], self.n_classes), -torch.inf)
        return out.scatter_reduce(1, self.class_of_prototype.expand_as(s), s, reduce="amax")

    def _affinity_smooth(self, s: torch.Tensor, z: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Each patch's scores become the softmax(affinity / T)-weighted mean over its top-k
        most VFM-similar patches (itself included); chunked so large grids stay in memory."""
        zn = F.normalize(z, dim=-1)
        k = min(self.affinity_topk, zn.shape[0])
        out = torch.empty_like(s)
        for a in range(0, zn.shape[0], chunk):
            sim = zn[a : a + chunk] @ zn.T
            val, idx = sim.topk(k, dim=1)
            # Shifted by each row's top affinity (topk sorts it first) before the division: the
            # softmax is unchanged, but a tiny temperature gives -inf (weight 0), never inf - inf.
            wgt = torch.softmax((val - val[:, :1]) / self.affinity_temperature, dim=1)
            out[a : a + chunk] = (wgt[..., None] * s[idx]).sum(1)
        return out

    # -- pixels

    #: Bytes of float32 scores one band of rows may hold: a 12-megapixel photo of 150 classes
    #: holds 7 GB of scores whole (and its softmax as much again), a band of them 64 MB.
    band_bytes: int = 64 * 2**20

    def iter_scores(self, image) -> Iterator[tuple[int, torch.Tensor]]:
        """Per-pixel class scores of one image, one band of rows at a time.

        Scores are made and handed out band by band, so memory grows with the image's width
        and the number of classes, not with its area (:meth:`predict` holds one band of
        scores and the (H, W) labels; :meth:`predict_scores` joins every band).

        Parameters
        ----------
        image : uint8 array of shape (H, W, 3)

        Yields
        ------
        y0 : int
            The first image row of the band.
        scores : torch.Tensor of shape (K, rows, W), float32
            Patch scores upsampled bilinearly (``align_corners=False``, as ``F.interpolate``)
            to the band's pixels; with ``crop_size``, averaged over the overlapping windows
            (a band is handed out once no later window covers it). Bands cover the image
            top to bottom, without gaps.
        """
        (img,) = _as_images([image])
        _check_image_size([img], self._encoders(), what="image")
        H, W = img.shape[:2]
        if self.crop_size is None:
            yield from self._whole_image_bands(self.grid_scores([img])[0], H, W)
        else:
            yield from self._window_bands(img)

    def _band_rows(self, width: int) -> int:
        return max(1, self.band_bytes // (4 * self.n_classes * width))

    def _whole_image_bands(self, s: torch.Tensor, H: int, W: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(K, h, w) grid scores -> bands of (K, rows, W) bilinear pixel scores.

        Bilinear upsampling is separable, ``S_pix = A_y S A_x^T`` with ``A`` the (out, in) 1-D
        interpolation weights; each band is ``(A_y[rows] S) A_x^T``, so only the grid and one
        band are held (``S A_x^T`` first would be (K, h, W): 490 MB for a 3000 x 4000 photo of
        150 classes on a 14-pixel grid).
        """
        cols = _linear_weights(s.shape[2], W).T  # (w, W)
        rows = _linear_weights(s.shape[1], H)  # (H, h)
        step = self._band_rows(W)
        for y0 in range(0, H, step):
            yield y0, (rows[y0 : y0 + step] @ s) @ cols

    def _window_bands(self, img: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """Sliding-window scores averaged where windows overlap, handed out a band at a time.

        Windows come row of windows by row of windows (:func:`sliding_windows`), so when a
        window starts at row ``y1`` no later one covers a row above it: the rows above are
        final. The windows that may still cover a row are kept on their patch grid, (K, h, w)
        each, and a band of final rows is upsampled from them when it is handed out
        (:meth:`_band_of_windows`), so memory is one band of ``band_bytes`` plus the grids of
        about two rows of windows, not a crop's height of full-width pixel scores (that was
        K x (crop + stride) x W float32: 900 MB for a 4000-pixel-wide photo of 150 classes, crop 224, stride 149).
        """
        H, W = img.shape[:2]
        windows = sliding_windows(H, W, self.crop_size, self.stride)
        ch, cw = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]  # every window's size
        step = self._band_rows(W)
        pending: list[tuple[tuple[int, int, int, int], torch.Tensor]] = []  # windows that may cover rows >= top
        weights: tuple[torch.Tensor, torch.Tensor] | None = None
        top = 0  # the first image row not handed out yet
        for b in range(0, len(windows), self.batch_size):
            wins = windows[b : b + self.batch_size]
            s = self.grid_scores([img[y1:y2, x1:x2] for y1, y2, x1, x2 in wins])
            if weights is None:  # (crop_h, h) and (w, crop_w): F.interpolate's bilinear, one axis each
                weights = (_linear_weights(s.shape[2], ch), _linear_weights(s.shape[3], cw).T)
            for win, si in zip(wins, s):
                if win[0] > top:  # rows above y1 get no more windows
                    for y0 in range(top, win[0], step):
                        yield y0, self._band_of_windows(pending, weights, y0, min(y0 + step, win[0]), W)
                    top = win[0]
                    pending = [p for p in pending if p[0][1] > top]
                pending.append((win, si))
        for y0 in range(top, H, step):
            yield y0, self._band_of_windows(pending, weights, y0, min(y0 + step, H), W)

    def _band_of_windows(
        self,
        windows: list[tuple[tuple[int, int, int, int], torch.Tensor]],
        weights: tuple[torch.Tensor, torch.Tensor],
        y0: int,
        y1: int,
        width: int,
    ) -> torch.Tensor:
        """Image rows ``y0:y1`` of the windows' bilinearly upsampled scores, averaged where they
        overlap: ``(A_y[rows] S) A_x^T`` per window (as :meth:`_whole_image_bands`), (K, rows, W)."""
        rows_w, cols_w = weights
        acc = torch.zeros((self.n_classes, y1 - y0, width), dtype=torch.float32)
        count = torch.zeros((1, y1 - y0, width), dtype=torch.float32)
        for (wy1, wy2, wx1, wx2), s in windows:
            a, b = max(y0, wy1), min(y1, wy2)
            if a < b:
                acc[:, a - y0 : b - y0, wx1:wx2] += (rows_w[a - wy1 : b - wy1] @ s) @ cols_w
                count[:, a - y0 : b - y0, wx1:wx2] += 1
        return acc.div_(count)

    def predict_scores(self, image) -> torch.Tensor:
        """Per-pixel class scores of one image, whole (:meth:`iter_scores` joined).

        Parameters
        ----------
        image : uint8 array of shape (H, W, 3)

        Returns
        -------
        torch.Tensor of shape (K, H, W), float32
            Patch scores upsampled bilinearly to each window's pixels and averaged over
            overlapping windows. A large image's whole scores are large (4 K H W bytes):
            :meth:`predict` and :meth:`iter_scores` hold one band at a time.
        """
        return torch.cat([band for _, band in self.iter_scores(image)], dim=1)

    def labels_from_scores(self, scores: torch.Tensor, top: torch.Tensor | None = None) -> np.ndarray:
        """(K, H, W) scores -> (H, W) int64 labels, with the score threshold applied.

        ``top`` is :meth:`top_probability` of ``scores`` when the caller has it already (a softmax
        over every pixel's classes is not computed twice).

        Raises
        ------
        GPUAError
            If a pixel's scores hold NaN or inf: argmax would pick a label from them silently.
        """
        bad = ~torch.isfinite(scores).all(0)
        if bool(bad.any()):
            raise GPUAError(
                f"the class scores hold NaN or inf at {int(bad.sum())} of {bad.numel()} pixels, which cannot be "
                "labelled; check that the encoders' patch features and the model's decision_function are finite "
                "(e.g. refit a model fitted on non-finite features)."
            )
        labels = scores.argmax(0)
        if self.score_threshold is not None:
            top = self.top_probability(scores) if top is None else top
            labels[top < float(self.score_threshold)] = self.threshold_label
        return labels.numpy().astype(np.int64)

    def top_probability(self, scores: torch.Tensor) -> torch.Tensor:
        """The probability ``score_threshold`` is compared with: each pixel's top class probability.

        Parameters
        ----------
        scores : torch.Tensor of shape (K, H, W)
            Class scores (:meth:`predict_scores`: cosines, or the model's decision scores).

        Returns
        -------
        torch.Tensor of shape (H, W), float32
            ``max_k softmax(scores / temperature)_k``, in ``[1 / K, 1]``.
        """
        # Shifted by each pixel's top score first (same softmax): a tiny temperature then
        # gives -inf, weight 0, rather than inf - inf = NaN, which no threshold would catch.
        return torch.softmax((scores - scores.amax(0)) / self.temperature, dim=0).amax(0)

    def predict(self, image) -> np.ndarray:
        """(H, W) int64 class labels of one uint8 (H, W, 3) image (scored a band of rows at a
        time: :meth:`iter_scores`)."""
        return np.concatenate([self.labels_from_scores(band) for _, band in self.iter_scores(image)], axis=0)
