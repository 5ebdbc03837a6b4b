"""Segmentation files and encoders: label PNGs, colour overlays, and encoder specs.

:func:`make_encoder` accepts the planted stand-ins (``planted:vfm``, ``planted:vlm``, from
:mod:`gpua.segment.planted`) beside every :func:`gpua.encoders.create_encoder` spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._optional import import_optional

__all__ = ["NO_CLASS", "NO_CLASS_16BIT", "no_class_label", "make_encoder", "write_label_png", "write_overlay_png",
           "written_by_segment", "mask_classnames"]

#: "No class" in a label mask: mmseg's 255 in 8-bit masks (at most 255 classes); with 256
#: classes or more, 255 is a class and the masks are 16-bit, so "no class" is 65535.
NO_CLASS, NO_CLASS_16BIT = 255, 65535


def no_class_label(n_classes: int) -> int:
    """The "no class" label of a mask of ``n_classes`` classes: 255, or 65535 once 255 is a class (16-bit masks)."""
    return NO_CLASS if n_classes <= NO_CLASS else NO_CLASS_16BIT


def make_encoder(spec: str, device: str | None = None):
    """An encoder from a spec: any :func:`gpua.encoders.create_encoder` spec, the planted
    stand-ins ``planted:vfm`` / ``planted:vlm`` included."""
    from ..encoders import create_encoder

    return create_encoder(spec, device=device) if device else create_encoder(spec)


#: The PNG text key that marks a file gpua's segmentation wrote, and its values: ``segment
#: --overwrite`` replaces such files only (a photo of the same name in ``--out`` is the user's).
PNG_MARK_KEY = "gpua"
PNG_MARKS = ("segment mask", "segment overlay")
#: The PNG text key of a mask's class names (a JSON list, index by index): what its labels mean.
PNG_CLASSES_KEY = "gpua classes"


def _write_png(path: Path, array, palette=None, mark: str | None = None, classnames=None) -> None:
    from .._atomic import atomic_path

    PIL = import_optional("PIL.Image", "writing PNGs")
    im = PIL.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    info = None
    if mark is not None:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(PNG_MARK_KEY, mark)
        if classnames is not None:  # UTF-8 (an iTXt chunk): class names need not be Latin-1
            info.add_itxt(PNG_CLASSES_KEY, json.dumps([str(c) for c in classnames], ensure_ascii=False))
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG", pnginfo=info)


def written_by_segment(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a mask or an overlay that gpua's segmentation wrote.

    Those files carry a PNG text mark (:data:`PNG_MARK_KEY`). Anything else is not: a photo, an
    unreadable file, and also a palette PNG of the VOC colours without the mark, which is what a
    data set's ground-truth masks look like (as do the masks of releases before the mark, which
    ``gpua segment --overwrite`` therefore leaves to be removed by hand).
    """
    return _segment_png_text(path).get(PNG_MARK_KEY) in PNG_MARKS


def _segment_png_text(path: str | os.PathLike) -> dict:
    """The text chunks of a PNG gpua's segmentation wrote (``{}`` for anything else: another PNG,
    a photo, an unreadable file)."""
    Image = import_optional("PIL.Image", "reading the PNGs gpua's segmentation wrote")
    try:
        with Image.open(path) as im:
            text = dict(im.info) if im.format == "PNG" else {}
    except Exception:  # unreadable, or not an image: not a file gpua wrote
        return {}
    return text if text.get(PNG_MARK_KEY) in PNG_MARKS else {}


def mask_classnames(path: str | os.PathLike) -> list[str] | None:
    """The class names a mask ``gpua segment`` wrote records (label ``k`` is ``names[k]``), or None
    for any other file (a ground-truth mask, a mask of a release before 2026-12-02)."""
    text = _segment_png_text(path)
    if text.get(PNG_MARK_KEY) != "segment mask" or not isinstance(text.get(PNG_CLASSES_KEY), str):
        return None
    try:
        names = json.loads(text[PNG_CLASSES_KEY])
    except (ValueError, RecursionError):  # a damaged record: no names to check against
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def write_label_png(path: str | os.PathLike, label, n_classes: int | None = None, classnames=None) -> None:
    """Save an (H, W) label map atomically: a palette PNG (VOC colours) for up to 256 labels,
    a 16-bit greyscale PNG beyond.

    Parameters
    ----------
    path : str or os.PathLike
    label : array-like of shape (H, W)
        Integer class indices in ``[0, 65535]`` (255, the datasets' ignore / "no class" label,
        included); integer-valued floats and bools are accepted.
    n_classes : int, optional
        The classes the map is of. With more than 255 (where 255 is a class and "no class" is
        65535: :func:`no_class_label`) the PNG is 16-bit whatever the values, so that every mask
        of one run has one format and class 255 is never read as another tool's "ignore" (was:
        8-bit whenever this image's labels stayed at or below 255). Default: by the values.
    classnames : sequence of str, optional
        The name of each label, recorded in the PNG (:func:`mask_classnames`): ``gpua
        evaluate-seg --pred`` checks its class file against them.

    Raises
    ------
    GPUAError
        If ``label`` is not 2-D or holds values a PNG cannot store exactly (negative, above
        65535, fractional, NaN): casting would wrap or truncate them silently (-1 -> 65535).
    """
    import numpy as np

    from .._errors import GPUAError

    label = np.asarray(label)
    if label.ndim != 2:
        raise GPUAError(f"label must be a 2-D (H, W) map of class indices but has shape {label.shape}; "
                        "pass one image's labels (e.g. scores.argmax(0)).")
    if label.dtype.kind == "f":
        fractional = ~np.isfinite(label) | (label != np.round(label))
        if fractional.any():
            raise GPUAError(f"label must hold integer class indices but holds {float(label[fractional][0])}; "
                            "round it (np.rint) or pass the argmax of the scores.")
    elif label.dtype.kind not in "iub":
        raise GPUAError(f"label has dtype {label.dtype}; pass integer class indices.")
    lo, hi = label.min(initial=0), label.max(initial=0)
    if lo < 0 or hi > 65535:
        shown = ", ".join(str(v) for v in np.unique(label[(label < 0) | (label > 65535)])[:8])
        raise GPUAError(f"label holds {shown} outside [0, 65535], which a PNG cannot store (a 16-bit one at most); "
                        "map such pixels to a class index first, e.g. 255 for \"no class\".")
    if hi <= 255 and (n_classes is None or int(n_classes) <= NO_CLASS):
        colours = import_optional("imgviz", "writing label PNGs (their VOC palette)").label_colormap()
        _write_png(Path(path), label.astype(np.uint8), colours.flatten().tolist(), mark="segment mask", classnames=classnames)
    else:
        _write_png(Path(path), label.astype(np.uint16), mark="segment mask", classnames=classnames)


def _label_colours(n: int):
    """(n, 3) uint8 colours of labels ``0 .. n - 1``: the VOC palette (imgviz's, that of the mask
    PNGs) extended past 256 by the same bit interleaving, for 16-bit masks (more than 255 classes,
    "no class" 65535)."""
    import numpy as np

    ids = np.arange(int(n), dtype=np.int64)
    cmap = np.zeros((ids.size, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            cmap[:, c] |= ((ids >> (3 * j + c)) & 1) << (7 - j)
    return cmap.astype(np.uint8)


def write_overlay_png(path: str | os.PathLike, image, label, classnames: list[str] | None = None) -> None:
    """Save the image with its labels blended in colour (imgviz), atomically.

    Labels take the colours of :func:`write_label_png`'s palette (VOC's); labels of 256 and above
    (16-bit masks: more than 255 classes, "no class" 65535) get colours by the same rule. The
    image is scaled as image files are (16-bit by 255 / 65535, floats in [0, 1] by 255; an alpha
    channel dropped), as the segmenter reads it.
    """
    import numpy as np

    from .._errors import GPUAError
    from ..data._datasets import as_uint8, to_rgb

    imgviz = import_optional("imgviz", "writing overlay PNGs")

    a = np.asarray(to_rgb(image)) if hasattr(image, "convert") else np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype.kind not in "buif":
        raise GPUAError(f"image has shape {a.shape} and dtype {a.dtype}; pass an (H, W, 3) RGB image of numeric pixels.")
    image = as_uint8(a)  # a float image in [0, 1] was cast to 0 (a black photo), a 16-bit one saturated
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise GPUAError(f"label has shape {label.shape} but the image is {image.shape[0]}x{image.shape[1]}; "
                        "pass the mask the segmenter predicted for this image.")
    hi = int(label.max(initial=0))
    colours = None if hi < 256 else _label_colours(hi + 1)  # imgviz's own palette stops at 256 labels
    names = {k: n for k, n in enumerate(classnames or [])}  # 255 / 65535 ("no class") stays unnamed
    rgb = imgviz.label2rgb(label, image=image, alpha=0.5, label_names=names or None,
                           font_size=max(10, image.shape[0] // 30), colormap=colours)
    _write_png(Path(path), np.ascontiguousarray(rgb[..., :3]).astype(np.uint8), mark="segment overlay")
