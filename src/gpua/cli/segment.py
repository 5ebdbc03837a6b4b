"""``gpua fit-seg``, ``gpua segment`` and ``gpua evaluate-seg``.

- ``fit-seg``: fit patch-level GPUA on an unlabeled image folder and save the model.
- ``segment``: write a PNG label mask and a colour overlay per image (GPUA or ``--zero-shot``).
  Masks are ``<stem>.png`` and ``<stem>_overlay.png``; images whose names would clash
  (``pic.jpg`` and ``pic.png``, or ``pic_overlay.jpg`` beside ``pic.jpg``) keep their extension
  (``pic_jpg.png``, ``pic_png.png``), and names that clash even so (``A.png`` and ``a.png`` on a
  case-insensitive disk) are refused. Files already in ``--out`` are refused before any work
  unless ``--overwrite``, which replaces a segment run's own (marked) files only; an input image,
  or a photo named like a mask, never is replaced.
- ``evaluate-seg``: mIoU / pixel accuracy / per-class IoU of saved masks (``--pred``) or of a
  model run on the fly, against a folder of masks (``--gt``) or an mmseg-layout dataset
  (``--dataset``); ``--json FILE`` writes the scores as JSON (``--json -`` or ``--json`` alone
  prints them).

The class-name file is the one every command reads (:mod:`gpua.data.classnames`): one class per
line, ``name`` or ``name: word, word`` or ``first, word, word``; every word gets a text
prototype, and a class scores the best of its words. Encoders are ``gpua.encoders`` specs
(``offline:dinov2-s``, ``open_clip:ViT-B-16/openai``...) or ``planted:vfm`` / ``planted:vlm``,
the planted stand-ins of :mod:`gpua.segment.planted` (a demo that needs no weights).

A model from ``fit-seg`` records its encoders, templates and classes (``provenance_``, and the
``.seg.json`` sidecar): ``segment --model`` and ``evaluate-seg --model`` read them from it, so
``--vfm`` and ``--vlm`` are needed only to override them (a different value is reported),
``--classnames`` must name the model's classes, and ``--templates`` (the model holds its own
text prototypes) or a ``--vlm`` the model does not read are reported as unused.

``fit-seg`` and ``segment`` read the image files directly in ``--images``: hidden files
(``._x.jpg`` AppleDouble files, as ``classify`` and ``extract`` do) and sub-folders are left out
(the summary says how many sub-folders), and an unreadable image is skipped with a warning
naming it and counted; only a folder with no readable image is an error. When ``segment`` skips
an image whose mask an earlier run left in ``--out`` (``--overwrite``), a note says so: that
mask is not this run's. ``evaluate-seg`` stops at an unreadable image instead, with one line
naming it and how to replace it or leave it out (its ground truth too): a score without one
image is not the ground truth's score, as a missing ``--pred`` mask is refused.

``--dataset custom`` finds its images by any image suffix (``.jpg``, ``.jpeg``, ``.png``...,
any case; two images of one stem are refused) where mmseg's default is ``.jpg``;
``--img-suffix`` names one (mmseg's ``img_suffix``: ``.png``, ``_leftImg8bit.png``), also for
the ``--images`` of ``--gt``, as ``--gt-suffix`` names the masks' (``seg_map_suffix``).

``--threshold P`` is a probability, not a cosine: pixels whose top class probability,
``softmax(100 x score)`` over the classes (a ``--model``'s own ``logit_scale``), is below ``P``
get ``--threshold-label``; the summary says how many pixels it labelled, or the lowest top
probability when it labelled none. ``evaluate-seg --pred`` warns about inference flags
(``--threshold``, ``--crop``...) that cannot change saved masks, refuses a ``--pred`` mask that
is the ground-truth file itself, and warns that ``--images`` is unused with ``--dataset``.

Heavy imports (torch, encoders, PIL, imgviz) happen inside the handlers: every ``gpua``
command imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import functools
import glob
import itertools
import json
import os
import warnings
from pathlib import Path

from .._errors import GPUAError
from .._optional import import_optional
from ..segment.io import make_encoder, no_class_label, write_label_png, write_overlay_png, written_by_segment
from ..params import COUNT
from ._common import (DEFAULT_VFM, DEFAULT_VLM, JsonOutput, add_param_arguments, add_quiet_argument, check_device_flag, check_paths, check_seed_flag, counted,
                      parse_params, positive_int, with_flags)

__all__ = ["add_subcommands"]

#: GPUA parameters `gpua fit-seg` sets differently from the library (patch rows map the VFM
#: alone: at prediction the VLM's patch tokens are coarse and noisy); --param overrides them.
FIT_SEG_DEFAULTS = {"query": "vfm"}

_SEG_META_SUFFIX = ".seg.json"


def add_subcommands(subparsers) -> None:
    """Add ``fit-seg``, ``segment`` and ``evaluate-seg`` to the ``gpua`` parser."""
    p = subparsers.add_parser(
        "fit-seg",
        help="fit patch-level GPUA on an unlabeled image folder (for segmentation)",
        description="Fit GPUA on patch tokens sampled from unlabeled images; no masks are read.",
    )
    p.add_argument("--images", required=True,
                   help="folder of unlabeled images (the fit pool): the files directly in it; hidden files and sub-folders "
                        "are not read, unreadable images are skipped with a warning")
    _add_class_args(p, required=True)
    _add_encoder_args(p, required=False, defaults=True)
    p.add_argument("--out", required=True, help="model file to write (e.g. model.gpua)")
    p.add_argument("--patches-per-image", type=int, default=64, help="patch cells drawn per image (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patch draws (default 0)")
    p.add_argument("--grid", default="coarser", choices=("coarser", "finer"),
                   help="common grid of the two encoders' patch maps (default: the coarser, by area pooling)")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N", help="use only the first N usable images: readable, and at least one encoder patch wide (default: all)")
    add_quiet_argument(p, dest="no_progress")
    add_param_arguments(p, defaults=FIT_SEG_DEFAULTS)  # the patch fit is GPUA(query="vfm", **params)
    p.set_defaults(func=_fit_seg)

    p = subparsers.add_parser(
        "segment",
        help="segment images into the classes of a class-name file",
        description="Write <stem>.png label masks (palette PNG, 255 = no class) and <stem>_overlay.png into --out, "
        "one pair per image directly in --images (hidden files and sub-folders are not read; unreadable images are "
        "skipped with a warning). Images whose output names would clash (pic.jpg and pic.png, or pic_overlay.jpg beside "
        "pic.jpg) keep their extension: pic_jpg.png, pic_png.png. Files already in --out are refused before any work "
        "unless --overwrite, which replaces only the masks and overlays a segment run wrote; an input image, or any "
        "other file, is never replaced.",
    )
    _add_model_args(p)
    p.add_argument("--images", required=True,
                   help="folder of images to segment: the files directly in it (hidden files and sub-folders are not read); "
                        "or one image file")
    _add_class_args(p, required=False)
    _add_encoder_args(p, required=False)
    _add_inference_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-overlay", action="store_true", help="write the label masks only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier segment run's masks and overlays of the same names in --out; without it they "
                        "are refused before any work. Input images, and any file a segment run did not write (a photo "
                        "named like a mask), are never replaced.")
    p.set_defaults(func=_segment)

    p = subparsers.add_parser(
        "evaluate-seg",
        help="mIoU, pixel accuracy and per-class IoU of segmentations",
        description="Score saved masks (--pred) or a model run on the fly (--model / --zero-shot) "
        "against ground-truth masks (--gt) or an mmseg-layout dataset (--dataset).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", help="folder of predicted <stem>.png masks (as written by `gpua segment`)")
    src.add_argument("--model", help="fitted model file from `gpua fit-seg`")
    src.add_argument("--zero-shot", action="store_true", help="dense VLM zero-shot instead of a model")
    p.add_argument("--dataset", help="mmseg dataset preset: voc, voc20, context59, context60, ade20k, coco_stuff, cityscapes, "
                                      "custom (img_dir/SPLIT/<stem>.<any image suffix>, ann_dir/SPLIT/<stem>.png; its classes "
                                      "from --classnames)")
    p.add_argument("--root", help="dataset root (with --dataset)")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--gt", help="folder of ground-truth masks (instead of --dataset)")
    p.add_argument("--images", help="folder of images (with --gt and --model / --zero-shot)")
    p.add_argument("--img-suffix", default=None,
                   help="with --dataset custom or --gt: image file = <stem><suffix>, compared ignoring case, e.g. .jpg or "
                        "_leftImg8bit.png (default: any image suffix, .jpg .jpeg .png ...; two images of one stem are refused)")
    p.add_argument("--gt-suffix", default=None,
                   help="with --gt or --dataset custom: ground-truth file = <stem><suffix>, compared ignoring case (default .png)")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="with --gt or --dataset custom: 0 is unlabelled (0 -> 255, k -> k-1); the other presets set it themselves")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="ground-truth value left unscored (default 255, mmseg's; with more than 255 classes 255 is a class, "
                        "and the default is 65535)")
    _add_class_args(p, required=False)
    _add_encoder_args(p, required=False)
    _add_inference_args(p)
    p.add_argument("--limit", type=int, default=None, help="score only the first N images (default: all)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the scores as JSON to FILE ('-' or no value: print them instead of the table)")
    p.set_defaults(func=_evaluate_seg)


def _prior_per_prompt(prior, owner, n_classes: int) -> list[float]:
    """``--param class_prior``: one weight per class, spread evenly over that class's prompt words
    (the patch fit has one prototype per word), or already one per word."""
    import numpy as np

    p = np.asarray(prior, dtype=np.float64).ravel()
    if p.size == len(owner):
        return p.tolist()
    if p.size != n_classes:
        raise GPUAError(f"--param class_prior has {p.size} entries; give one per class ({n_classes}) or one per prompt word "
                        f"({len(owner)}, in the class file's order).")
    words = np.bincount(owner, minlength=n_classes)
    return (p[owner] / words[owner]).tolist()


def _add_model_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="fitted model file from `gpua fit-seg`")
    g.add_argument("--zero-shot", action="store_true", help="dense VLM zero-shot instead of a model")


def _add_class_args(p, required: bool) -> None:
    from ..data.prompts import DEFAULT_TEMPLATES

    recorded = "" if required else "; default: the model's, with --model"
    p.add_argument("--classnames", required=required, metavar="FILE",
                   help=f"class-name file: one class a line, 'name' or 'name: word, word' (see gpua.data.classnames){recorded}")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help=f"prompt templates: a set name (openai_imagenet, simple...) or a file; default '{DEFAULT_TEMPLATES}' "
                        f"(CLIP's 80 ImageNet templates for folders{recorded})")


def _add_encoder_args(p, required: bool, defaults: bool = False) -> None:
    """``--vfm``, ``--vlm`` and ``--device``; ``defaults``: the offline encoders when not given, as ``classify`` has
    (``fit-seg``), else the ones the model records (``segment``, ``evaluate-seg``)."""
    for flag, role, default in (("--vfm", "VFM", DEFAULT_VFM), ("--vlm", "VLM", DEFAULT_VLM)):
        said = (f" (default: {default}, offline)" if defaults else f", e.g. {default}"
                + ("" if required else f" (default: the one the model records; with --zero-shot, {default})"))
        p.add_argument(flag, required=required, default=default if defaults else None, metavar="ENCODER",
                       help=f"{role} encoder spec{said}")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: auto)")


def _add_inference_args(p) -> None:
    # Refused while parsing (README: counts are checked before any file is read), not once the
    # model and the encoders have loaded.
    p.add_argument("--crop", type=positive_int, default=None, help="sliding-window crop size in pixels (default: whole image)")
    p.add_argument("--stride", type=positive_int, default=None, help="sliding-window stride (default: 2/3 of --crop)")
    p.add_argument("--refine", choices=("none", "affinity"), default="none", help="smooth patch scores by VFM affinity")
    p.add_argument("--affinity-topk", type=positive_int, default=8, help="neighbours used by --refine affinity (default 8)")
    p.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="a probability in [0, 1], not a cosine: pixels whose top class probability is below P get "
                        "--threshold-label. With --zero-shot that probability is softmax(100 x score) over the classes "
                        "(100: CLIP's logit scale), the scores being cosines with the text prototypes (often 0.1-0.3, a few "
                        "hundredths apart): a class 0.01 above the next gets about 0.73, 0.03 above about 0.95. With "
                        "--model it is softmax(s x score), s the scale the model's fit chose on its pool of patches "
                        "(proba_scale, as confident as the VLM's zero-shot there; its logit_scale for a model fitted "
                        "before 2026-12-02). The summary says the scale and how many pixels it labelled (default: off)")
    p.add_argument("--threshold-label", type=int, default=None,
                   help="label for those pixels: a background class index, or 255, no class (default; with more than 255 "
                        "classes pass 65535, the no class of 16-bit masks)")


# --------------------------------------------------------------------------- helpers


def _class_prompts(path: str):
    """(class names, prompt words flat, class of each word) of a class-name file."""
    from ..data.classnames import load_class_prompts
    from ..segment.inference import flatten_class_prompts

    return flatten_class_prompts(*load_class_prompts(path))


def _prototypes(vlm, prompt_names: list[str], templates: list[str]):
    from ..data.prompts import build_text_prototypes

    if not getattr(vlm, "is_vlm", False):
        raise GPUAError("--vlm is a vision-only encoder; text prototypes need a vision-language model.")
    return build_text_prototypes(vlm.encode_text, prompt_names, templates)


def _recorded(given, recorded, option: str, model_path: str):
    """``given`` when set (saying so when the model records another value), else what the model records."""
    if given is not None and recorded is not None and given != recorded:
        warnings.warn(f"{option} {given!r} overrides {recorded!r}, which the model {model_path!r} was fitted with.", stacklevel=2)
    return given if given is not None else recorded


def _show_templates(t: list[str]) -> str:
    return f"{len(t)} template(s): {t[0]!r}{', ...' if len(t) > 1 else ''}"


def _list_images(folder: str, what: str = "--images", one_image: bool = False) -> list[Path]:
    """The image files directly in ``folder``, sorted; hidden files (``._x.jpg``) are left out, as
    ``classify`` and ``extract`` leave them out (:mod:`gpua.data`'s own test), and sub-folders are
    not searched (:func:`_subfolder_note` says how many). With ``one_image``, ``folder`` may
    also be one image file (``segment --images street.jpg``): the list of that file."""
    from ..data import IMAGE_EXTENSIONS
    from ..data._loaders import _is_image_file, _subdirs

    d = Path(folder)
    if one_image and not os.path.exists(d):
        raise GPUAError(f"{what} {folder!r} does not exist; pass a folder of image files or one image file.")
    if one_image and d.is_file():
        if d.name.startswith("."):  # as a folder's listing leaves them out (macOS's ._x.jpg copies are no photos)
            raise GPUAError(f"{what} {folder!r} is a hidden file, which gpua never reads as an image (macOS's ._x.jpg "
                            "AppleDouble copies are named so); rename it without the leading dot.")
        if not _is_image_file(d.parent, d.name):
            raise GPUAError(f"{what} {folder!r} is a file but not an image ({', '.join(IMAGE_EXTENSIONS[:5])}, ...); pass an "
                            "image file or a folder of them.")
        return [d]
    if not d.is_dir():
        raise GPUAError(f"{what} {folder!r} is not a folder; pass a folder of image files"
                        + (" or one image file." if one_image else "."))
    files = sorted(d / e.name for e in os.scandir(d) if e.is_file() and _is_image_file(d, e.name))
    if not files:
        subs = _subdirs(d)
        where = (f"; its {len(subs)} sub-folder(s) (first: {subs[0]!r}) are not searched: pass the sub-folder itself as {what}"
                 if subs else "")
        raise GPUAError(f"{what} {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS[:5])}, ...; hidden files "
                        f"are left out){where}.")
    return files


def _all_too_small(images: str, side: int) -> GPUAError:
    """The error of an ``--images`` whose every readable image is too small to encode (``fit-seg``, ``segment``)."""
    return GPUAError(f"every readable image in --images {images!r} is smaller than one {side}x{side} encoder patch; "
                     "upscale them or pass larger images.")


def _subfolder_note(folder: str, what: str = "--images", skip: Path | None = None) -> str:
    """``"; 2 sub-folder(s) of --images not searched (a, b)"``, or ``""`` (``skip``: a folder not to count, --out)."""
    from ..data._loaders import _subdirs

    d = Path(folder)
    if not d.is_dir():  # one image file (segment --images street.jpg): nothing beside it was meant
        return ""
    subs = [s for s in _subdirs(d) if skip is None or (d / s).resolve() != skip.resolve()]
    if not subs:
        return ""
    shown = ", ".join(subs[:5]) + (", ..." if len(subs) > 5 else "")
    return f"; {len(subs)} sub-folder(s) of {what} not searched ({shown})"


def _read_images(files: list[Path], folder: str, skipped: list[Path]):
    """Yield ``(file, RGB array)`` for each readable file; an unreadable one
    (:class:`gpua.data.UnreadableImageError`) is skipped with a warning naming it and appended to
    ``skipped``. When none is readable, a :class:`GPUAError` says so at the end."""
    from ..data import UnreadableImageError

    n = 0
    for f in files:
        try:
            image = _load_image(f)
        except UnreadableImageError as exc:
            warnings.warn(f"skipped {str(f)!r}, which is not a readable image ({_unreadable_why(exc)}).", stacklevel=2)
            skipped.append(f)
            continue
        n += 1
        yield f, image
    if n == 0:
        first = f" (first: {skipped[0].name!r})" if skipped else ""
        if Path(folder).is_file():
            raise GPUAError(f"--images {folder!r} could not be read; it is truncated, corrupt or not an image: replace it, or "
                            "point --images at a readable image or a folder of them.")
        raise GPUAError(f"none of the {len(skipped)} image(s) in --images {folder!r} could be read{first}; they are truncated, "
                        "corrupt or not images: replace them, or point --images at a folder of readable images.")


def _unreadable_why(exc) -> str:
    """Why an image could not be read, in a few words: the decoder's own error (``OSError: cannot
    identify image file ...``), without :class:`gpua.data.UnreadableImageError`'s Python advice."""
    cause = exc.__cause__
    if cause is None:
        return str(exc).rstrip(".")
    if type(cause).__name__ == "DecompressionBombError":  # a genuine photo, too many pixels for Pillow's guard
        return f"{str(cause).split(', could be')[0]}: more pixels than Pillow decodes; downscale it"
    return f"{type(cause).__name__}: {cause}"


def _skipped_note(skipped: list[Path], small: list[Path] = ()) -> str:
    return ((f"; {len(skipped)} unreadable image(s) skipped" if skipped else "")
            + (f"; {len(small)} image(s) smaller than one encoder patch skipped" if small else ""))


def _too_small(f: Path, image, side: int, small: list[Path]) -> bool:
    """Whether ``image`` (read from ``f``) is smaller than one ``side`` x ``side`` encoder patch; if
    so it is skipped with a warning naming the file, and appended to ``small``."""
    h, w = image.shape[:2]
    if h >= side and w >= side:
        return False
    warnings.warn(f"skipped {str(f)!r}: {h}x{w} pixels is smaller than one {side}x{side} encoder patch (upscale it to segment it).",
                  stacklevel=2)
    small.append(f)
    return True


def _output_names(files: list[Path], overlay: bool) -> list[list[str]]:
    """The file names ``segment`` writes for each image: ``[mask]`` or ``[mask, overlay]``.

    ``<stem>.png`` and ``<stem>_overlay.png``; an image whose names would equal another image's
    (compared ignoring case, as macOS and Windows disks do) keeps its extension:
    ``<stem>_<ext>.png`` and ``<stem>_<ext>_overlay.png`` (repeated until nothing more changes).
    Names that clash even so are refused (:class:`GPUAError` listing the images), before any work.
    """
    from collections import defaultdict

    qualified: set[int] = set()

    def names(i: int) -> list[str]:
        f = files[i]
        base = f"{f.stem}_{f.suffix[1:]}" if i in qualified else f.stem
        return [f"{base}.png"] + ([f"{base}_overlay.png"] if overlay else [])

    while True:
        owners: dict[str, set[int]] = defaultdict(set)
        for i in range(len(files)):
            for n in names(i):
                owners[n.casefold()].add(i)
        clashes = [sorted(o) for o in owners.values() if len(o) > 1]
        clashing = {i for o in clashes for i in o}
        if not clashing - qualified:
            break
        qualified |= clashing
    if clashes:
        groups = list(dict.fromkeys(tuple(group) for group in clashes))  # the mask and the overlay name clash alike: once
        shown = "; ".join(" and ".join(files[i].name for i in group) for group in groups[:5])
        raise GPUAError(f"--images holds images whose masks would get the same file name even with their extension kept "
                        f"(names are compared ignoring case): {shown}; rename one of each.")
    return [names(i) for i in range(len(files))]


def _check_mask_outputs(out: Path, files: list[Path], names: list[list[str]], overwrite: bool) -> None:
    """Refuse, before any work, an output that is one of the input images (also through links,
    even with --overwrite), one that a segment run did not write (:func:`written_by_segment`: a
    photo named like a mask, even with --overwrite) and, without --overwrite, any output file
    that already exists."""
    from .._atomic import check_output

    if not out.is_dir():
        return
    by_id = {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        by_id[(st.st_dev, st.st_ino)] = f
    existing = []
    inside = out.resolve()
    for n in (n for ns in names for n in ns):
        p = out / n
        if not os.path.lexists(p):
            continue
        existing.append(p)
        try:
            st = p.stat()
            image = by_id.get((st.st_dev, st.st_ino))
        except OSError:
            image = None
        if image is not None or overwrite:  # the same file as an input: check_output names both
            check_output(p, "--out", kind="file", inputs=[("--images", str(image))] if image is not None else ())
        target = Path(os.path.realpath(p))
        if overwrite and p.is_symlink() and inside not in target.parents:
            # A write goes through a link (atomic_path replaces the file it points to): --overwrite
            # replaces the masks in --out, never a file elsewhere that a link there names.
            raise GPUAError(f"--out {str(out)!r} holds {n}, a link to {str(target)!r} outside --out, which --overwrite would "
                            "replace; remove the link (or choose another --out).")
    # --overwrite replaces what a segment run wrote (marked PNGs), never a photo that shares a mask's
    # name (was: `--images f/pic.jpg --out f --overwrite` replaced the user's f/pic.png with a mask)
    foreign = [p for p in existing if os.path.isfile(p) and not written_by_segment(p)]
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise GPUAError(f"--out {str(out)!r} holds {len(foreign)} file(s) under the names this run writes that gpua's segment "
                        f"did not write ({shown}: a photo, a ground-truth mask, or another tool's file); they are never "
                        "replaced, --overwrite included. Move them, or choose another --out (masks of a gpua before "
                        "2026-12-02 carry no mark: delete those yourself).")
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise GPUAError(f"--out {str(out)!r} already holds {len(existing)} of the files this run writes ({shown}); "
                        "pass --overwrite to replace them, or choose another --out.")


def _load_image(path: Path):
    from ..segment.datasets import read_image

    return read_image(path)


def _sidecar(args) -> list[tuple[str, str]]:
    model = getattr(args, "model", None)
    return [("--model's sidecar", model + _SEG_META_SUFFIX)] if model else []


def _save_model(model, path: str, meta: dict) -> None:
    """The estimator's own file, plus a JSON sidecar (with a checksum) with what segmentation needs to reuse it."""
    from .._atomic import atomic_write_text
    from .._integrity import CHECKSUM_KEY, digest

    model.save(path)
    atomic_write_text(path + _SEG_META_SUFFIX, json.dumps({**meta, CHECKSUM_KEY: digest(meta)}, indent=2))


#: Sidecar keys segmentation reads, and what each must be.
_SIDECAR_CHECKS = {
    "grid": (lambda v: v in ("coarser", "finer"), "'coarser' or 'finer'"),
    "prompt_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "classnames": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "class_of_prototype": (
        lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v),
        "a list of class indices",
    ),
}


#: Every key `gpua fit-seg` writes to the sidecar (a key outside this list means a damaged file).
_SIDECAR_KEYS = (*_SIDECAR_CHECKS, "task", "templates", "vfm", "vlm", "patches_per_image", "seed", "n_images", "images")


def _read_sidecar(meta_path: Path) -> dict:
    """The ``.seg.json`` sidecar of a model: a JSON object whose keys are checked before use."""
    from .._errors import ModelFileError
    from .._integrity import CHECKSUM_KEY, digest, verify

    where = f"segmentation sidecar {str(meta_path)!r}"
    fix = "re-run `gpua fit-seg`, or delete the sidecar to use the model with default settings"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{where} is not readable JSON ({type(exc).__name__}: {exc}); {fix}.") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{where} holds a JSON {type(meta).__name__}, not an object; {fix}.")
    stored = meta.pop(CHECKSUM_KEY, None)
    verify(stored, digest(meta) if stored is not None else "", where, fix)
    unknown = sorted(set(meta) - set(_SIDECAR_KEYS))
    if unknown:
        raise ModelFileError(f"{where} has unknown keys {unknown}; {fix}.")
    return _check_seg_meta(meta, where, fix)


def _check_seg_meta(meta: dict, where: str, fix: str) -> dict:
    """``meta`` (a sidecar's, or a model's ``provenance_``) if the keys segmentation reads are well formed."""
    from .._errors import ModelFileError

    for key, (ok, want) in _SIDECAR_CHECKS.items():
        if key in meta and not ok(meta[key]):
            raise ModelFileError(f"{where} has {key}={str(meta[key])[:60]!r} where {want} is needed; {fix}.")
    if "prompt_names" in meta and "class_of_prototype" in meta and len(meta["prompt_names"]) != len(meta["class_of_prototype"]):
        raise ModelFileError(f"{where} has {len(meta['prompt_names'])} prompt names but {len(meta['class_of_prototype'])} class indices; {fix}.")
    return meta


def _load_model(path: str):
    """The model and what it records (its ``provenance_``, over the ``.seg.json`` sidecar of older files)."""
    from .. import load_model
    from ..report import check_model_task

    if os.path.isdir(path):
        raise GPUAError(f"--model {path!r} is a folder, not a model file; pass the .gpua file `gpua fit-seg --out` wrote.")
    if not os.path.isfile(path):
        raise GPUAError(f"--model {path!r} does not exist; fit one with `gpua fit-seg`.")
    model = load_model(path)
    check_model_task(model, "segmentation", f"--model {path!r}")
    meta_path = Path(path + _SEG_META_SUFFIX)
    meta = _read_sidecar(meta_path) if meta_path.is_file() else {}
    names = getattr(model, "classnames_", None)
    if meta.get("prompt_names") is not None and names is not None and list(meta["prompt_names"]) != list(names):
        # a sidecar left beside a model another fit wrote since (gpua fit --out over a fit-seg model):
        # its class list would name the new model's classes wrongly
        warnings.warn(f"{str(meta_path)!r} was written for another model (its prompts {meta['prompt_names'][:4]}... are not "
                      f"the model's {list(names)[:4]}...); it is ignored: delete it, or re-run `gpua fit-seg`.", stacklevel=2)
        meta = {}
    meta = {**meta, **(getattr(model, "provenance_", None) or {})}
    return model, _check_seg_meta(meta, f"model {path!r}", "re-run `gpua fit-seg`")


def _segmenter(args, classes=None):
    """A DenseSegmenter from the parsed arguments (model or zero-shot), and the class names.

    ``classes`` is ``(classnames, prompt_names, class_of_prototype)`` from ``--classnames`` or the
    ground truth; with ``--model`` and none given, the model's own.
    """
    import numpy as np

    from ..data.prompts import resolve_templates
    from ..segment.inference import DenseSegmenter

    if args.threshold is None and args.threshold_label is not None:  # was: accepted, and nothing labelled with it
        raise GPUAError(f"--threshold-label {args.threshold_label} labels the pixels below --threshold, and no --threshold is "
                        "given: add --threshold P, or drop --threshold-label.")
    model, rec = None, {}
    if getattr(args, "model", None):
        model, rec = _load_model(args.model)
        fitted = rec.get("prompt_names") or getattr(model, "classnames_", None)
        if classes is None:
            if not rec.get("classnames") or rec.get("class_of_prototype") is None:
                raise GPUAError(f"the model {args.model!r} records no class list; pass --classnames (the file used with `gpua fit-seg`).")
            classes = (list(rec["classnames"]), list(rec["prompt_names"]), np.asarray(rec["class_of_prototype"], dtype=np.int64))
        elif fitted and list(fitted) != list(classes[1]):
            raise GPUAError(
                f"--classnames gives the prompts {classes[1][:4]}... but the model was fitted with "
                f"{list(fitted)[:4]}...; pass the class-name file used with `gpua fit-seg` (or leave --classnames out)."
            )
        uses_vlm = str(getattr(model, "query", "vfm")).lower() != "vfm"
        uses_vfm = True
    else:
        if classes is None:
            raise GPUAError("--zero-shot needs --classnames (one class a line), the classes to segment into.")
        uses_vlm, uses_vfm = True, args.refine == "affinity"
        if args.vfm is not None and not uses_vfm:
            warnings.warn("--vfm is not used by --zero-shot without --refine affinity (the VLM segments alone); "
                          "add --refine affinity to smooth its scores by the VFM's patch affinities.", stacklevel=2)
    classnames, prompt_names, owner = classes
    vlm = vfm = Y = None
    if uses_vlm or model is None:
        spec = _recorded(args.vlm, rec.get("vlm"), "--vlm", args.model) if model is not None else args.vlm or DEFAULT_VLM
        if not spec:  # a model that records none (--zero-shot takes the offline one)
            raise GPUAError("--vlm is required (the model records none); pass the VLM encoder spec.")
        vlm = make_encoder(spec, args.device)
    if uses_vfm:
        spec = _recorded(args.vfm, rec.get("vfm"), "--vfm", args.model) if model is not None else args.vfm or DEFAULT_VFM
        if not spec:  # a model that records none (--zero-shot takes the offline one)
            raise GPUAError("--vfm is required (the model records none); pass the VFM encoder spec.")
        vfm = make_encoder(spec, args.device)
    if model is None:
        Y = _prototypes(vlm, prompt_names, resolve_templates(args.templates))
    else:
        fitted_templates = rec.get("templates")
        if isinstance(fitted_templates, str):  # older sidecars record the set's name
            fitted_templates = resolve_templates(fitted_templates)
        if args.templates is not None and (not fitted_templates or resolve_templates(args.templates) != fitted_templates):
            built = f"built from {_show_templates(fitted_templates)}" if fitted_templates else "with templates it does not record"
            warnings.warn(f"--templates is not used with --model: the model holds its text prototypes, {built}.", stacklevel=2)
        if args.vlm is not None and not uses_vlm:
            warnings.warn("--vlm is not used with this model: it maps the VFM's patch features alone (query='vfm').", stacklevel=2)
    try:
        seg = DenseSegmenter(
            vfm,
            vlm,
            Y,
            model=model,
            class_of_prototype=owner,
            uses_vlm=uses_vlm if model is not None else None,
            crop_size=args.crop,
            stride=args.stride,
            grid=rec.get("grid", "coarser"),
            refine=None if args.refine == "none" else args.refine,
            affinity_topk=args.affinity_topk,
            score_threshold=args.threshold,
            threshold_label=255 if args.threshold_label is None else args.threshold_label,
        )
    except GPUAError as exc:  # said with the command's flags, not the Python arguments
        # Whole names only: a flag already written (--stride) is not rewritten (was "----stride").
        raise GPUAError(with_flags(str(exc), _SEGMENTER_FLAGS, bare_names=True)) from None
    return seg, classnames


class _Labeller:
    """Labels of one image after another from a DenseSegmenter, counting the pixels ``--threshold``
    labels (their top class probability is below it) for the summary: a threshold on the wrong
    scale (a cosine) labels none, and the summary says so with the lowest probability seen."""

    def __init__(self, seg, classnames) -> None:
        self.seg, self.classnames = seg, list(classnames)
        self.below = self.pixels = 0
        self.lowest = 1.0

    def __call__(self, image):
        import numpy as np

        seg = self.seg
        bands = []
        for _, scores in seg.iter_scores(image):  # a band of rows at a time: a large photo's whole scores are GBs
            top = seg.top_probability(scores) if seg.score_threshold is not None else None
            bands.append(seg.labels_from_scores(scores, top))  # the softmax once per band, not here and there
            if top is not None:
                self.below += int((top < float(seg.score_threshold)).sum())
                self.pixels += int(top.numel())
                self.lowest = min(self.lowest, float(top.min()))
        return np.concatenate(bands, axis=0)

    def note(self) -> str:
        """``"; --threshold 0.5 labelled 812 of 5,376 pixels (15.1%) as no class (255)"`` (or that it labelled
        none, with the lowest top probability seen), or ``""`` without a threshold."""
        seg = self.seg
        if seg.score_threshold is None or not self.pixels:
            return ""
        k = seg.threshold_label
        what = f"as {self.classnames[k]!r}" if 0 <= k < len(self.classnames) else f"as no class ({k})"
        if not self.below:
            return (f"; --threshold {seg.score_threshold:g} labelled no pixel: every top class probability was at least "
                    f"{self.lowest:.3f} (softmax({1 / seg.temperature:.3g} x score) over the classes, not a cosine), so only a "
                    "--threshold above that labels some")
        return (f"; --threshold {seg.score_threshold:g} labelled {self.below:,} of {self.pixels:,} pixels "
                f"({100 * self.below / self.pixels:.1f}%) {what} (top class probability softmax({1 / seg.temperature:.3g} x score))")


#: DenseSegmenter's arguments and the flags that set them, for its error messages.
_SEGMENTER_FLAGS = {"crop_size": "--crop", "stride": "--stride", "affinity_topk": "--affinity-topk",
                    "score_threshold": "--threshold", "threshold_label": "--threshold-label"}


# --------------------------------------------------------------------------- handlers


def _fit_seg(args: argparse.Namespace) -> int:
    from ..data.prompts import resolve_templates
    from ..estimator import GPUA
    from ..segment.inference import fit_patch_gpua
    from ._common import FitProgress

    from .._atomic import _is_segmentation_sidecar

    sidecar = Path(args.out + _SEG_META_SUFFIX).expanduser()
    if (sidecar.exists() or sidecar.is_symlink()) and not (sidecar.is_file() and _is_segmentation_sidecar(sidecar)):
        # was: "... Choose another --out's sidecar (models end in .gpua)"
        raise GPUAError(f"--out {args.out!r}: {str(sidecar)!r}, where fit-seg writes the model's sidecar, is a file gpua did not "
                        "write; nothing was written. Choose another --out, or delete that file first if it may go.")
    check_paths(args, inputs=("images", "classnames", "templates"), outputs=(("out", "model"),),
                extra_outputs=(("--out's sidecar", args.out + _SEG_META_SUFFIX, "model"),))
    from ..params import check_param
    from ..segment.inference import min_image_side

    params = {**FIT_SEG_DEFAULTS, **parse_params(args.param)}  # checked before any encoder loads
    check_seed_flag(args.seed)
    check_device_flag(args.device)
    check_param("--patches-per-image", args.patches_per_image, COUNT)
    classnames, prompt_names, owner = _class_prompts(args.classnames)
    if params.get("class_prior") is not None and not isinstance(params["class_prior"], str):  # "estimate" / "zero_shot" are per word already
        params["class_prior"] = _prior_per_prompt(params["class_prior"], owner, len(classnames))
    files = _list_images(args.images)
    skipped: list[Path] = []
    reader = _read_images(files, args.images, skipped)
    first = next(reader)  # before the encoders load: a folder of no readable image is said at once
    vfm, vlm = make_encoder(args.vfm, args.device), make_encoder(args.vlm, args.device)
    small: list[Path] = []
    side = min_image_side((vfm, vlm))
    used = 0

    def pool():
        """The readable images large enough to encode, read as the encoders take them: a pool of
        large photos is never in memory at once (was: every one read whole first, about 14 MB of
        memory per 2-megapixel photo)."""
        nonlocal used
        source = itertools.chain([first], reader)
        # Counted in images used, not read: one too small to encode is not one of the N (was); and
        # checked before the next is read, which would be decoded (or warned about) for nothing.
        while args.max_images is None or used < args.max_images:
            f, image = next(source, (None, None))
            if f is None:
                break
            if not _too_small(f, image, side, small):
                used += 1
                yield image
        if not used:
            raise _all_too_small(args.images, side)

    templates = resolve_templates(args.templates)
    Y = _prototypes(vlm, prompt_names, templates)
    estimator = GPUA(**params)
    with FitProgress(estimator, not args.no_progress) as progress:
        model = fit_patch_gpua(
            vfm, vlm, pool(), Y, patches_per_image=args.patches_per_image, seed=args.seed, grid=args.grid, classnames=prompt_names,
            class_of_prototype=owner, estimator=estimator, callback=progress, progress=not args.no_progress,
        )
    meta = {
        "task": "segmentation",
        "classnames": classnames,
        "prompt_names": prompt_names,
        "class_of_prototype": owner.tolist(),
        "templates": templates,
        "vfm": args.vfm,
        "vlm": args.vlm,
        "grid": args.grid,
        "patches_per_image": args.patches_per_image,
        "seed": args.seed,
        "n_images": used,
        "images": str(args.images),
    }
    model.provenance_ = meta
    _save_model(model, args.out, meta)
    print(f"fitted patch-level GPUA on {counted(used, 'image')} ({len(classnames)} classes, {len(prompt_names)} prompts); wrote {args.out}"
          f"{_skipped_note(skipped, small)}{_subfolder_note(args.images)}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    check_paths(args, inputs=("model", "images", "classnames", "templates"), outputs=(("out", "folder"),),
                extra_inputs=_sidecar(args))
    check_device_flag(args.device)
    classes = _class_prompts(args.classnames) if args.classnames else None
    if classes is None and not args.model:  # said before the output checks, as _segmenter says it
        raise GPUAError("--zero-shot needs --classnames (one class a line), the classes to segment into.")
    files = _list_images(args.images, one_image=True)
    out = Path(args.out)
    names = _output_names(files, overlay=not args.no_overlay)
    _check_mask_outputs(out, files, names, args.overwrite)
    import_optional("imgviz", "gpua segment (its masks' palette and overlays)")  # said before any model loads
    renamed = [(f, ns[0]) for f, ns in zip(files, names) if ns[0] != f"{f.stem}.png"]
    if renamed:
        shown = ", ".join(f"{f.name} -> {n}" for f, n in renamed[:6]) + (", ..." if len(renamed) > 6 else "")
        print(f"note: {len(renamed)} image(s) would share output names, so their masks keep the extension: {shown}")
    seg, classnames = _segmenter(args, classes)
    labeller = _Labeller(seg, classnames)
    by_file = dict(zip(files, names))
    skipped: list[Path] = []
    small: list[Path] = []
    side = seg.min_image_side
    n = 0
    for f, image in _read_images(files, args.images, skipped):
        if _too_small(f, image, side, small):
            continue
        label = labeller(image)
        write_label_png(out / by_file[f][0], label, len(classnames), classnames)  # creates --out with the first mask
        if not args.no_overlay:
            write_overlay_png(out / by_file[f][1], image, label, classnames)
        n += 1
    if not n:  # was: "segmented 0 image(s)", exit 0, and no --out (fit-seg says this as an error)
        raise _all_too_small(args.images, side)
    print(f"segmented {n} image(s) into {counted(len(classnames), 'class')}; masks in {out}"
          f"{_skipped_note(skipped, small)}{labeller.note()}{_subfolder_note(args.images, skip=out)}")
    # Without --overwrite an existing output is refused before any work, so a mask of a skipped
    # image in --out is an earlier run's: `evaluate-seg --pred` would score it as this run's.
    old = [out / name for f in (*skipped, *small) for name in by_file[f] if (out / name).is_file()]
    if old:
        print(f"note: {len(old)} file(s) from an earlier run stay in {out} for image(s) skipped now (first: {old[0].name}); "
              "they are not this run's masks: delete them, or `gpua evaluate-seg --pred` scores them")
    if args.no_overlay:  # an earlier run's overlays would show other masks than the ones just written
        stale = [out / f"{ns[0][:-len('.png')]}_overlay.png" for ns in names]
        stale = [p for p in stale if p.is_file()]
        if stale:
            print(f"note: {len(stale)} overlay(s) from an earlier run stay in {out} (first: {stale[0].name}) and show its masks, "
                  "not these; delete them, or run without --no-overlay")
    return 0


#: SegmentationDataset's arguments that `--dataset custom` sets by flags, for its error messages.
_CUSTOM_DATASET_FLAGS = {"img_suffix": "--img-suffix", "seg_map_suffix": "--gt-suffix"}


def _open_dataset(args: argparse.Namespace, entries, overrides: dict):
    """``load_segmentation_dataset`` with its errors said in the command's flags: ``--dataset
    custom``'s suffix flags, and no suffix advice for a preset (which sets its own suffixes)."""
    import re

    from ..segment.datasets import load_segmentation_dataset

    try:
        return load_segmentation_dataset(args.dataset, args.root, args.split, classnames=entries, **overrides)
    except GPUAError as exc:
        message = str(exc)
        if args.dataset == "custom":
            message = with_flags(message, _CUSTOM_DATASET_FLAGS, bare_names=True)
        else:
            message = re.sub(r", or set img_suffix(?:=\S+?| to the one to read)(?=\.$)", "", message)
            message = re.sub(r" \(img_suffix names [^)]*\)", "", message)
            message = message.replace(": set seg_map_suffix if yours end otherwise", "")
        raise GPUAError(message) from None


def _ground_truth(args: argparse.Namespace):
    """What ``evaluate-seg`` scores against, from ``--dataset`` or ``--gt``.

    Returns
    -------
    classnames : list of str
    load_gt : callable ``(path, ignore_index=...)`` -> label map
    pairs : list of (stem, image path or None, mask path)
    leave_out : callable ``(stem, image path, mask path)`` -> str
        How to leave one image out of the evaluation (said when it cannot be read).
    """
    from ..segment.datasets import read_label

    if args.gt_suffix is not None and not args.gt_suffix.strip():
        raise GPUAError("--gt-suffix is empty; it ends each ground-truth file's name after the image's stem, e.g. .png.")
    if args.img_suffix is not None and not args.img_suffix.strip():
        raise GPUAError("--img-suffix is empty; it ends each image file's name after its stem, e.g. .jpg (leave it out for "
                        "any image suffix).")
    entries = _class_prompts(args.classnames)[0] if args.classnames else None
    if args.dataset:
        from ..segment.datasets import DATASET_PRESETS

        if not args.root:
            raise GPUAError("--dataset needs --root, the dataset's root folder.")
        overrides = {}
        if args.dataset == "custom":
            if entries is None:
                raise GPUAError("--dataset custom needs --classnames, a file naming its classes in label order (one a line).")
            overrides = {"reduce_zero_label": bool(args.reduce_zero_label)}
            if args.gt_suffix is not None:
                overrides["seg_map_suffix"] = args.gt_suffix
            if args.img_suffix is not None:
                overrides["img_suffix"] = args.img_suffix
        else:
            given = [flag for flag, on in (("--img-suffix", args.img_suffix is not None), ("--gt-suffix", args.gt_suffix is not None),
                                           ("--reduce-zero-label", args.reduce_zero_label)) if on]
            if given:
                raise GPUAError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --gt and --dataset custom; --dataset {args.dataset} sets its own. "
                                "Leave them out (or describe the layout with --dataset custom).")
            preset = DATASET_PRESETS.get(args.dataset)
            if entries is not None and preset is not None and len(entries) != len(preset.classnames):
                raise GPUAError(f"--classnames has {len(entries)} classes but --dataset {args.dataset} has {len(preset.classnames)}; "
                                "give one line per dataset class, in its label order (or leave --classnames out).")
        ds = _open_dataset(args, entries, overrides)
        # Masks are looked up by the image's path below the image folder (``scene1/0001.png``), and by its
        # name alone where no other image of the dataset shares it (_prediction_names).
        pairs = [(rel, img, ann) for rel, (img, ann) in zip(ds.rel_stems, ds.items)]
        preset = DATASET_PRESETS.get(args.dataset)
        split_file = Path(args.root) / preset.split_file.format(split=args.split) if preset and preset.split_file else None

        def leave_out(stem, img, ann) -> str:
            if split_file is not None:
                return f"remove its line {stem!r} from the split file {str(split_file)!r} to score the others"
            return f"remove it (and its label map {ann.name}) from the dataset to score the others"

        return ds.classnames, functools.partial(read_label, reduce_zero_label=ds.reduce_zero_label), pairs, leave_out
    if not args.gt:
        raise GPUAError("give the ground truth: --dataset NAME --root DIR, or --gt DIR --classnames FILE.")
    if entries is None and getattr(args, "model", None):
        entries = _load_model(args.model)[1].get("classnames")  # the classes the model records, as `segment` reads them
    if entries is None:
        raise GPUAError("--gt needs --classnames (one class a line) to know the number of classes.")
    gt_dir = Path(args.gt)
    if not gt_dir.is_dir():
        raise GPUAError(f"--gt {args.gt!r} is not a folder of masks.")
    suffix = args.gt_suffix if args.gt_suffix is not None else ".png"
    reduce = bool(args.reduce_zero_label)
    images: dict[str, list[Path]] = {}
    for stem, p in _image_stems(args.images, args.img_suffix) if args.images else []:
        images.setdefault(stem, []).append(p)
    pairs, seen = [], {}
    # Hidden files (macOS's ._x.png) are left out, as --images leaves them out; suffixes match
    # ignoring case (X.PNG is a mask too).
    for entry in sorted(os.scandir(gt_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.lower().endswith(suffix.lower()) or not entry.is_file():
            continue
        stem = entry.name[: -len(suffix)]
        if stem in seen:  # x.png and x.PNG: one image (or predicted mask) would be scored twice
            raise GPUAError(f"--gt holds {seen[stem]} and {entry.name}, two masks of one image {stem!r}; keep one of them.")
        seen[stem] = entry.name
        found = images.get(stem, [])
        # pic.jpg and pic.png: which one pic.png's mask describes is a guess, and with --pred which
        # of `segment`'s pic_jpg.png and pic_png.png to score (was: the first, without a word)
        if len(found) > 1:
            raise GPUAError(f"--images holds {' and '.join(f.name for f in found)}, {len(found)} images for the ground truth "
                            f"{entry.name}; keep one image per mask name in --images, or choose one with --img-suffix.")
        pairs.append((stem, found[0] if found else None, gt_dir / entry.name))
    if not pairs:
        raise GPUAError(f"--gt {args.gt!r} holds no files ending in {suffix!r} (hidden files are left out); "
                        "name the masks' ending with --gt-suffix.")

    def leave_out(stem, img, ann) -> str:
        return f"remove it and its ground truth {str(ann)!r} to score the others"

    return entries, functools.partial(read_label, reduce_zero_label=reduce), pairs, leave_out


def _image_stems(folder: str, suffix: str | None) -> list[tuple[str, Path]]:
    """``(stem, file)`` of the images in ``folder`` (:func:`_list_images`): the name without its
    extension, or without ``suffix`` (``--img-suffix``, compared ignoring case) when given, when
    only images ending in it are kept."""
    files = _list_images(folder)
    if suffix is None:
        return [(f.stem, f) for f in files]
    n, low = len(suffix), suffix.lower()
    kept = [(f.name[:-n], f) for f in files if f.name.lower().endswith(low) and len(f.name) > n]
    if not kept:
        raise GPUAError(f"--images {folder!r} holds no image ending in {suffix!r} (ignoring case), --img-suffix; its {len(files)} "
                        f"image(s) end otherwise (first: {files[0].name}): change --img-suffix, or leave it out for any image "
                        "suffix.")
    return kept


def _check_same_classes(model_classes: list[str], gt_classes: list[str], gt_what: str) -> None:
    """Refuse a model whose classes are the ground truth's in another order; warn where names differ.

    Masks hold class indices, so a model fitted with its class file in another order would be
    scored against the wrong classes without a word. Names are compared as prompts spell them
    (``pottedplant`` = ``potted plant``), ignoring case.
    """
    from ..segment.datasets import prompt_name

    def key(name: str) -> str:
        return " ".join(prompt_name(name).replace("_", " ").casefold().split())

    model_keys, gt_keys = [key(c) for c in model_classes], [key(c) for c in gt_classes]
    moved = [(i, model_classes[i], gt_keys.index(k)) for i, k in enumerate(model_keys) if k in gt_keys and gt_keys[i] != k]
    if moved:
        shown = "; ".join(f"the model's class {i} is {name!r}, which is class {j} of {gt_what}" for i, name, j in moved[:3])
        raise GPUAError(f"the model's classes are {gt_what}'s in another order ({shown}): its masks would be scored against the "
                        f"wrong classes. Fit it with a class file in {gt_what}'s label order.")
    differ = [(m, g) for m, g, km, kg in zip(model_classes, gt_classes, model_keys, gt_keys) if km != kg]
    if differ:
        shown = ", ".join(f"{m!r} as {g!r}" for m, g in differ[:4]) + (", ..." if len(differ) > 4 else "")
        warnings.warn(f"{len(differ)} of the model's class names differ from {gt_what}'s; classes are matched by their "
                      f"index, so it scores {shown}.", stacklevel=2)


def _check_mask_classes(mask: Path, gt_classes: list[str], gt_what: str) -> None:
    """Refuse ``--pred`` masks whose recorded classes (:func:`gpua.segment.io.mask_classnames`) are
    not ``gt_what``'s: was scored one name off without a word when a class file had an extra
    ``background`` line. Masks that record none (another tool's, an earlier release's) are taken as given."""
    from ..segment.io import mask_classnames

    recorded = mask_classnames(mask)
    if recorded is None:
        return
    if len(recorded) != len(gt_classes):
        shown = ", ".join(map(repr, recorded[:5])) + (", ..." if len(recorded) > 5 else "")
        raise GPUAError(f"--pred's masks were written by `gpua segment` for {counted(len(recorded), 'class')} ({shown}; "
                        f"{str(mask)!r} records them) but {gt_what} gives {len(gt_classes)}: their labels would be scored as "
                        f"other classes. Give the class file the masks were segmented with, in its order.")
    _check_same_classes(recorded, gt_classes, gt_what)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _repeated(names) -> frozenset[str]:
    """The names that occur two or more times in ``names``."""
    from collections import Counter

    return frozenset(n for n, c in Counter(names).items() if c > 1)


def _shared_names(pairs: list[tuple[str, Path | None, Path]]) -> frozenset[str]:
    """The names (file name without folders, or the image's own stem) that two or more images share."""
    return _repeated(n for stem, img, _ in pairs for n in {Path(stem).name, *([Path(img).stem] if img is not None else [])})


def _shared_files(pairs: list[tuple[str, Path | None, Path]]) -> frozenset[str]:
    """The image file names (extension kept) that two or more images share (in other sub-folders)."""
    return _repeated(Path(img).name for _, img, _ in pairs if img is not None)


def _prediction_names(stem: str, img_path: Path | None, shared: frozenset[str], shared_files: frozenset[str] = frozenset()) -> list[str]:
    """Where in --pred an image's mask may be, first match wins: ``<stem>.png`` (``stem`` may hold
    sub-folders: ``scene1/0001``), then by file name alone, ``<name>.png`` (what `gpua segment`
    writes) and ``<image's stem>.png`` (mmseg drops the image suffix), each only where no other
    image has that name: two images of one name in two sub-folders would share one mask; last
    ``<image's stem>_<ext>.png``, what `gpua segment` writes for images that share a stem
    (``pic.jpg`` beside ``pic.png``), unless another image has the same file name
    (``shared_files``)."""
    names = [f"{stem}.png"]
    for name in (Path(stem).name, Path(img_path).stem if img_path is not None else None):
        if name is not None and name not in shared and f"{name}.png" not in names:
            names.append(f"{name}.png")
    if img_path is not None and Path(img_path).suffix and Path(img_path).name not in shared_files:
        names.append(f"{Path(img_path).stem}_{Path(img_path).suffix[1:]}.png")
    return names


def _no_prediction(pred_path: Path, img_path, stem: str, ann: Path, leave_out) -> str:
    """The error for a ground truth without its mask in --pred; when its image is unreadable
    (`gpua segment` skipped it) it says so, and what to do with the image."""
    from ..data import UnreadableImageError

    message = f"--pred has no mask {pred_path.name} for ground truth {ann.name}"
    if img_path is not None and Path(img_path).is_file():
        try:
            _load_image(img_path)
        except UnreadableImageError as exc:
            return (f"{message}: its image {str(img_path)!r} is not a readable image ({_unreadable_why(exc)}), which `gpua "
                    f"segment` skipped; replace it with a readable copy and segment it, or {leave_out(stem, img_path, ann)}.")
    if img_path is None:
        # `segment` names the masks of pic.jpg and pic.png pic_jpg.png and pic_png.png: which one is
        # this ground truth's only the images say.
        from ..data import decoded_extensions

        base, endings = Path(stem).name, {e.lstrip(".").lower() for e in decoded_extensions()}
        kept = sorted(p.name for p in pred_path.parent.glob(f"{glob.escape(base)}_*.png")
                      if p.name[len(base) + 1: -len(".png")].lower() in endings)
        if kept:
            return (f"{message}, but holds {', '.join(kept[:4])}: the masks `gpua segment` writes for images that share the "
                    "name; pass their folder as --images (and --img-suffix to say which image the ground truth describes).")
    return f"{message}; segment every image first."


#: evaluate-seg's flags that only a model run on the fly reads, with their defaults.
_INFERENCE_DEFAULTS = {"vfm": None, "vlm": None, "templates": None, "device": None, "crop": None, "stride": None,
                       "refine": "none", "affinity_topk": 8, "threshold": None, "threshold_label": None}


def _warn_unused_evaluate_flags(args: argparse.Namespace) -> None:
    """Warn about flags that change nothing: inference flags with --pred (the masks are made; a
    --threshold there left the score as it was without a word), and --images with --dataset."""
    if args.pred:
        given = [f"--{k.replace('_', '-')}" for k, default in _INFERENCE_DEFAULTS.items() if getattr(args, k, default) != default]
        if given:
            warnings.warn(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not used with --pred: its masks are scored as "
                          "they are. Pass them to `gpua segment` (or score a model on the fly with --model / --zero-shot).",
                          stacklevel=2)
    if args.dataset and args.images:
        warnings.warn(f"--images is not used with --dataset: the images are read from --root {args.root!r}; leave it out.",
                      stacklevel=2)


def _evaluate_seg(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import UnreadableImageError
    from ..segment.datasets import read_label
    from ..segment.metrics import SegmentationMetric, check_ignore_index

    check_paths(args, inputs=("pred", "model", "gt", "images", "classnames", "templates", "root"),
                extra_inputs=_sidecar(args), extra_outputs=[("--json", args.json, "table")] if args.json not in (None, "-") else [])
    if args.limit is not None and args.limit < 1:
        raise GPUAError(f"--limit {args.limit} must be 1 or more (leave it out to score every image).")
    _warn_unused_evaluate_flags(args)
    if not args.pred:
        check_device_flag(args.device)
    classnames, load_gt, pairs, leave_out = _ground_truth(args)
    pairs = pairs[: args.limit]
    lossy = [ann for _, _, ann in pairs if Path(ann).suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif")]
    if lossy:  # JPEG's compression blurs class indices at every edge: pixels scored against wrong classes
        warnings.warn(f"{len(lossy)} ground-truth mask(s) are JPEG files (first: {Path(lossy[0]).name}), whose lossy compression "
                      "changes class indices along class edges, so those pixels are scored against the wrong classes; export "
                      "the masks as PNG.", stacklevel=2)
    # "No class" in predictions (a --threshold's pixels, masks written by `segment`), and the ground
    # truth's default ignore index: a miss for the ground truth's class whatever --ignore-index says.
    no_class = no_class_label(len(classnames))
    ignore = args.ignore_index if args.ignore_index is not None else no_class
    ignore = check_ignore_index(ignore, len(classnames), "--ignore-index")  # a class index would go unscored
    n_ignored = 0
    metric = SegmentationMetric(len(classnames), classnames=classnames, ignore_index=ignore)
    seg = labeller = None
    if not args.pred:
        if args.classnames:
            classes = _class_prompts(args.classnames)
            if len(classes[0]) != len(classnames):
                raise GPUAError(f"--classnames has {len(classes[0])} classes but the ground truth has {len(classnames)}; give one line per class.")
        elif args.model:
            classes = None  # the model's own
        else:
            from ..segment.datasets import prompt_name
            from ..segment.inference import parse_class_prompts

            classes = parse_class_prompts([prompt_name(c) for c in classnames])
        seg, model_classes = _segmenter(args, classes)
        if len(model_classes) != len(classnames):
            # A model's classes are its own (--classnames may only name them): the fix is another
            # model or another ground truth, not another class file (was: "pass --classnames", which
            # the class check then refused).
            gt = f"--dataset {args.dataset}" if args.dataset else "the ground truth"
            raise GPUAError(f"the model segments into {counted(len(model_classes), 'class')} but {gt} has {len(classnames)}; "
                            f"score it on ground truth of its own classes, or fit a model with {gt}'s classes in their label "
                            "order (`gpua fit-seg --classnames`; VOC's 20 classes without background for voc20).")
        _check_same_classes(list(model_classes), list(classnames), f"--dataset {args.dataset}" if args.dataset else "--classnames")
        labeller = _Labeller(seg, classnames)
    shared_names, shared_files = _shared_names(pairs), _shared_files(pairs)
    pred_classes_checked = False
    for stem, img_path, ann in pairs:
        # Read with the ignore index in effect: --reduce-zero-label turns 0 into it (it turned 0
        # into 255, a class of its own past 255 classes, and left --ignore-index's pixels scored).
        gt = load_gt(ann, ignore_index=ignore)
        if seg is None:
            names = _prediction_names(stem, img_path, shared_names, shared_files)
            pred_path = next((Path(args.pred) / n for n in names if (Path(args.pred) / n).is_file()), Path(args.pred) / names[0])
            if not pred_path.is_file():
                if len(names) == 1 and Path(stem).name in shared_names:
                    raise GPUAError(f"--pred has no mask {names[0]} for image {str(img_path)!r}, and its file name is that of "
                                    f"other images of the dataset in other sub-folders, so a mask {Path(names[0]).name} in --pred "
                                    "could be any of theirs; put each mask at its image's path below the image folder "
                                    f"({names[0]} here).")
                raise GPUAError(_no_prediction(pred_path, img_path, stem, ann, leave_out))
            if _same_file(pred_path, ann):  # --pred pointed at the ground truth: 100% without a word
                raise GPUAError(f"--pred's mask {str(pred_path)!r} is the ground truth {str(ann)!r} itself, which would score "
                                "100%; pass the folder `gpua segment` wrote as --pred (to check the masks, score a copy).")
            if not pred_classes_checked:  # segment records its masks' classes: the class file must be those
                _check_mask_classes(pred_path, list(classnames), f"--dataset {args.dataset}" if args.dataset else "--classnames")
                pred_classes_checked = True
            pred = read_label(pred_path)
        else:
            if img_path is None:
                raise GPUAError(f"no image for ground truth {ann.name}; pass --images with the images of --gt.")
            try:
                image = _load_image(img_path)
            except UnreadableImageError as exc:
                # Refused, where `segment` skips it: a score without one image is not the ground
                # truth's score, as --pred refuses a missing mask. One line, no Python advice.
                raise GPUAError(f"{str(img_path)!r} is not a readable image ({_unreadable_why(exc)}); it is truncated, corrupt "
                                f"or not an image: replace it with a readable copy, or {leave_out(stem, img_path, ann)}.") from None
            if gt.shape != image.shape[:2]:  # both arrays (read_label, read_image)
                # was: "pred is HxW but the ground truth ...; predict at the ground truth's resolution", a fix
                # for --pred masks: with --model gpua predicts, at the image's size
                (gh, gw), (ih, iw) = gt.shape, image.shape[:2]
                raise GPUAError(f"{stem}: the image {str(img_path)!r} is {ih}x{iw} but its ground truth "
                                f"{str(ann)!r} is {gh}x{gw}; a mask has its image's size: pair each image with its own mask, "
                                "or resize the mask to the image (nearest-neighbour).")
            try:
                pred = labeller(image)
            except GPUAError as exc:  # e.g. "image[0] is 3x60 pixels, smaller than one patch": name the file
                raise GPUAError(f"{img_path}: {exc}") from None
        if ignore != no_class:
            pred = np.where(np.asarray(pred) == no_class, ignore, pred)
        try:
            metric.update(pred, gt)
        except GPUAError as exc:
            raise GPUAError(f"{stem}: {exc}") from None
        n_ignored += int(np.count_nonzero(np.asarray(gt) == ignore))
    scores = metric.compute()
    binary_suspect = args.gt and not args.reduce_zero_label and len(classnames) > 1  # --gt: one's own masks
    if binary_suspect and n_ignored and metric.confusion[0].sum() and not metric.confusion[1:].sum():
        warnings.warn(f"every scored ground-truth pixel is class 0 ({classnames[0]!r}) and {n_ignored} pixel(s) hold the ignore "
                      f"index {ignore}, which are not scored; if {ignore} marks the foreground (binary 0/{ignore} masks), map it to "
                      "its class index first (e.g. mask // 255 for class 1).", stacklevel=2)
    result = scores.to_dict()
    result["n_images"] = metric.n_images
    threshold_note = labeller.note() if labeller is not None else ""
    with JsonOutput(args.json) as out:  # --json -: the JSON alone on stdout, the table on stderr
        out.write(result)  # first: a reader of stdout that stops early (| head) does not lose it
        print(scores.table())
        print(f"{metric.n_images} image(s){threshold_note}")
    return 0
