"""From a folder of photos to predictions in one call: ``classify_folder`` (the ``gpua classify`` command).

1. Both encoders encode the photos (cached: a re-run with the same photos, encoders, class
   names and templates reads the features back, see :func:`gpua.extract.extract_features`).
2. A method (GPUA by default) is fitted on the pool: the folder itself by default
   (transductive: the photos to classify are also the unlabeled pool; no label is read), or
   another folder (``pool=``).
3. Every photo gets its class probabilities; the result writes a CSV.

The folder is flat (``DIR/*.jpg``: unlabeled) or has one sub-folder per class (``DIR/<class>/``:
labelled, the labels are then reported against, never fitted on). The class-name file is the
format of :mod:`gpua.data.classnames`: ``automobile: car, automobile`` names the folder
``automobile`` and prompts with "car" and "automobile". The default encoders are the offline
ones (``offline:dinov2-s`` and ``offline:semantic-lite0``): they install from PyPI and need no
network, so this runs on a fresh machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import GPUAError, NoReadableImageError, warn_user

__all__ = ["DEFAULT_VFM", "DEFAULT_VLM", "Classification", "classify_folder", "feature_cache_path", "check_methods", "check_classes",
           "check_method_overrides", "unlabeled_pool", "undecoded_photos", "is_undecoded_format"]

DEFAULT_VFM = "offline:dinov2-s"
DEFAULT_VLM = "offline:semantic-lite0"


def check_methods(methods: Sequence[str], option: str = "method") -> list[str]:
    """The method names, checked against :func:`gpua.list_methods` before any work starts."""
    from .baselines import list_methods

    methods = [m.strip() for m in methods if m and m.strip()]
    unknown = [m for m in methods if m not in list_methods()]
    if not methods:
        raise GPUAError(f"{option} names no method; choose from {list_methods()}.")
    if unknown:
        raise GPUAError(f"{option}: {unknown} {'is' if len(unknown) == 1 else 'are'} unknown; choose from {list_methods()}.")
    return methods


def check_method_overrides(method: str, overrides: Mapping[str, Any] | None, n_classes: int, option: str = "overrides") -> None:
    """Refuse, before any photo is encoded, overrides that ``method`` would not apply or that
    cannot fit ``n_classes`` classes.

    One method runs here, so an override it leaves out (``zero_shot`` takes no ``lam``;
    ``lambda_1`` keeps ``lam=1``) would be a setting the output claims without having run it.
    A ``class_prior`` must give one weight per class (checked at fit time otherwise, after
    the encoding).
    """
    from .baselines import REFINEMENT_ONLY, unused_overrides
    from .fitting import check_class_prior_size

    overrides = dict(overrides or {})
    unused = unused_overrides(method, overrides)
    if unused:
        shown = ", ".join(f"{k}={overrides[k]!r}" for k in unused)
        if method == "gpua" and set(unused) <= REFINEMENT_ONLY:  # was: "... or use --method gpua", to a gpua run
            raise GPUAError(f"{option}: {shown} shape(s) the THS refinement, which refine=False turns off; drop it, or refine.")
        raise GPUAError(f"{option}: method {method!r} does not apply {shown} (it takes no such parameter, or sets it itself); "
                        "drop it, or use --method gpua.")
    check_class_prior_size(overrides.get("class_prior"), n_classes, f"{option}: class_prior")


def _shell_word(text: str) -> str:
    """``text`` quoted for a POSIX shell when it needs it (a class name in a suggested command)."""
    import shlex

    return shlex.quote(text.strip())


def check_classes(classnames: Any, option: str = "classnames", hint: str = "give two or more classes, one a line") -> list[str]:
    """The class names (a file, list, dict or dataset name), read and checked before any image is encoded.

    Raises
    ------
    GPUAError
        Naming ``option`` when they hold fewer than 2 classes (no text prototypes to choose
        between), or as :func:`gpua.data.classnames.resolve_classnames` for a file it cannot read.
    """
    import re

    from .data.classnames import resolve_classnames

    try:
        names = resolve_classnames(classnames) or []
    except GPUAError as exc:  # said with the caller's name for the argument (the flag, on the command line)
        if option == "classnames":
            raise
        message = re.sub(r"(?<![\w-])classnames=", f"{option} ", str(exc))
        # a flag takes no Python list: say how to make the file the names were meant for
        message = message.replace("pass a list of names, a class-name file, or a dataset name.",
                                  "give a class-name file (one class a line) or a dataset name"
                                  + (f"; for these names: printf '%s\\n' {' '.join(_shell_word(n) for n in str(classnames).split(','))} "
                                     f"> classes.txt, then {option} classes.txt." if "," in str(classnames) else "."))
        raise GPUAError(message) from None
    if len(names) < 2:
        shown = f" {str(classnames)!r}" if isinstance(classnames, (str, os.PathLike)) else ""
        raise GPUAError(f"{option}{shown} names {len(names)} class ({', '.join(map(repr, names)) or 'none'}); at least 2 classes are "
                        f"needed to classify anything: {hint}{_one_line_of_words(classnames)}.")
    return names


def _one_line_of_words(classnames) -> str:
    """A hint when a class-name file's one class came from a line of commas (``cat, dog, ship``: the
    class ``cat`` prompted by three words, not three classes); '' otherwise."""
    if not isinstance(classnames, (str, os.PathLike)) or not os.path.isfile(classnames):
        return ""
    try:
        lines = [ln.strip() for ln in Path(classnames).read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeError):
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1 or "," not in lines[0]:
        return ""
    return (f" (its one line {lines[0]!r} is one class, prompted by each of its comma-separated words: put each class on a "
            "line of its own)")


def unlabeled_pool(folder: str | os.PathLike, option: str = "pool"):
    """Every image file below ``folder`` (recursively), as one unlabeled pool.

    Sub-folders are not read as classes: a pool's labels are never used, so ``photos/2023/``
    and ``photos/2024/`` are as good as class folders. The image ids are the paths relative to
    ``folder``.

    Returns
    -------
    gpua.data.FileImageDataset
        Without labels or class names (the caller's class names are given to the extraction).
    """
    from .data import FileImageDataset, decoded_extensions
    from .data._loaders import _walk_class_folders, heif_install_note

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise GPUAError(f"{option} {str(root)!r} is not a folder; pass a folder of photos (any layout, no labels read).")
    top = root.resolve()
    files = _walk_class_folders(top.parent, [top.name])[top.name]  # the image-folder walk, the pool as one "folder"
    if not files:
        undecoded = _scan_folder(root)[0]
        if undecoded:
            raise GPUAError(f"{option} {str(root)!r} holds no photo gpua decodes: its {len(undecoded)} photo(s) are in formats it "
                            f"does not read ({_format_counts(undecoded)}; first: {undecoded[0]!r}); convert them to JPEG or "
                            f"PNG{heif_install_note(undecoded)}.")
        raise GPUAError(f"{option} {str(root)!r} holds no images (looked in every sub-folder); image files end in "
                        f"{', '.join(decoded_extensions())}.")
    return FileImageDataset(root, files, None, [], top.name or str(root))


#: Endings among the formats gpua's image listing leaves out (``gpua.data._loaders._UNREAD_PHOTO_EXTENSIONS``:
#: HEIC/HEIF without pillow-heif, JPEG XL, camera raw, and others), told apart in the reason the CSV row
#: of such a photo gives (HEIC/HEIF: ``gpua.data.HEIF_EXTENSIONS``).
_RAW = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".raf", ".rw2", ".pef", ".srw")


def is_undecoded_format(image_id: str | os.PathLike) -> bool:
    """Whether a photo is of a format gpua counts but does not decode (HEIC/HEIF, JPEG XL, camera raw...)."""
    from .data._loaders import _is_unread_photo

    return _is_unread_photo(Path(image_id).name)


def _undecoded_reason(image_id: str) -> str:
    """The CSV ``error`` of a photo of a format gpua does not decode: the format, and how to include it."""
    from .data import HEIF_EXTENSIONS

    ext = Path(image_id).suffix
    low = ext.lower()
    if low in HEIF_EXTENSIONS:
        return (f"UnsupportedFormat: {ext} is HEIC/HEIF (a phone's photo format), which gpua decodes with the pillow-heif "
                "package, not installed here: pip install 'gpua[heif]' (or convert it to JPEG or PNG: macOS sips -s format "
                "jpeg; Linux heif-convert) and run again.")
    if low == ".jxl":
        return (f"UnsupportedFormat: {ext} is JPEG XL, which gpua does not decode; convert it to JPEG or PNG (djxl FILE OUT.png) "
                "and run again.")
    if low in _RAW:
        return (f"UnsupportedFormat: {ext} is a camera raw file, which gpua does not decode; export it as JPEG or PNG (darktable, "
                "RawTherapee, your camera's software) and run again.")
    return f"UnsupportedFormat: {ext} is an image format gpua does not decode; convert it to JPEG or PNG and run again."


def _pillow_reads_avif() -> bool:
    """Whether the installed Pillow decodes AVIF (its own ``avif`` module: recent releases)."""
    try:
        from PIL import features
    except ImportError:
        return False
    return "avif" in getattr(features, "modules", {}) and bool(features.check_module("avif"))


def _unreadable_rows(fs) -> list[tuple[str, str]]:
    """``(image_id, reason)`` of each photo an extraction skipped as unreadable (``meta["skipped"]``), the reason explained."""
    return [(str(e.get("image_id")), _explain_unreadable(str(e.get("image_id")), str(e.get("error", ""))))
            for e in (fs.meta.get("skipped") or {}).get("images", [])]


def _explain_unreadable(image_id: str, error: str) -> str:
    """An extraction's error for an unreadable photo, with the cause when it is a missing decoder (AVIF)."""
    if Path(image_id).suffix.lower() == ".avif" and not _pillow_reads_avif():
        return (f"{error} This Pillow cannot decode AVIF at all: upgrade it (pip install -U pillow; recent releases read "
                "AVIF) and run again.")
    return error


def undecoded_photos(folder: str | os.PathLike) -> list[str]:
    """The photos below an image folder that its listing leaves out for their format (HEIC/HEIF, JPEG XL, raw).

    The folder is read as :func:`gpua.data.load_dataset` reads an image folder: its loose files,
    then every sub-folder (not hidden, not ``__MACOSX``, not one gpua wrote) recursively,
    symlinks followed but every real folder read once. The listing itself only warns about them;
    here each one is named so that :func:`classify_folder` can give it a row.

    Returns
    -------
    list of str
        Their paths relative to ``folder`` (``/``-separated, as image ids), in the listing's order.
    """
    return _scan_folder(folder)[0]


def _scan_folder(folder: str | os.PathLike) -> tuple[list[str], int]:
    """``(undecoded photos, number of image files)`` below ``folder``, read as :func:`undecoded_photos` says."""
    from .data._loaders import _is_image_file, _is_unread_photo, _subdirs, _walk_class_folders

    base = Path(folder).expanduser()
    if not base.is_dir():
        return [], 0
    loose = [e.name for e in os.scandir(base) if e.is_file()]
    found = sorted(f for f in loose if _is_unread_photo(f))
    with warnings.catch_warnings():  # the folder's listing says these (symlink loops); here only counted
        warnings.simplefilter("ignore")
        files = _walk_class_folders(base, _subdirs(base), unread=found)  # the listing's own walk
    return found, sum(_is_image_file(base, f) for f in loose) + sum(map(len, files.values()))


def _format_counts(image_ids: Sequence[str]) -> str:
    """``.cr2: 1, .heic: 2``: how many photos of each ending."""
    from collections import Counter

    return ", ".join(f"{k}: {c}" for k, c in sorted(Counter(Path(i).suffix.lower() for i in image_ids).items()))


#: The listing's own warning about photos of formats gpua does not decode (one per listing:
#: classify lists its folder twice); classify_folder says it once, naming where each one is.
_LISTING_WARNING = r"left out \d+ photo\(s\) of .* in formats gpua does not read"


def feature_cache_path(kind: str, name: str, vfm: str, vlm: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a command caches the features of one image set: ``<cache>/<kind>/<name>__<vfm>__<vlm>.npz``.

    ``<cache>`` is ``cache_dir``, else ``$GPUA_CACHE_DIR``, else the user cache folder
    (:func:`gpua.encoders.cache_dir`). The file is only a location: whether it still holds the
    right features is decided by its cache key (:func:`gpua.extract.extract_features`). A command
    that extracted there tags the cache folder as gpua's (:func:`gpua.encoders._derived.mark_cache`:
    `gpua cache clean` cleans only such a folder); a path asked only to read a file tags nothing.
    """
    from .encoders import cache_dir as cache_root

    tag = f"{name}__{vfm}__{vlm}"
    for ch in ':/\\?&=" ':
        tag = tag.replace(ch, "-")
    raw = tag.encode("utf-8", "surrogateescape")
    if len(raw) > _CACHE_NAME_BYTES:  # local models' specs are paths: two deep ones passed the 255-byte name limit
        digest = hashlib.sha256(raw).hexdigest()[:16]
        tag = f"{raw[:_CACHE_NAME_BYTES - 17].decode('utf-8', 'ignore')}-{digest}"
    return cache_root(cache_dir) / kind / f"{tag}.npz"


#: The longest cache file stem, in bytes: a file name stops at 255 on most file systems, and the
#: cache's lock file (``.<name>.gpua-lock``) and parts folder (``<name>.parts``) add to it.
_CACHE_NAME_BYTES = 200


#: Photos encoded between two saves of a classify run's work: an interrupted run resumes from
#: the last saved part (extract's 1,024 lost up to a thousand photos' encoding on a laptop).
CLASSIFY_PART_IMAGES = 256


def _folder_of(source) -> Path:
    """The folder of a path (str or path-like) or of a dataset object (its ``root``).

    Paths are told apart by type, not by a ``root`` attribute: every :class:`pathlib.Path` has
    one too (``""`` for a relative path), which once named the working directory for them.
    """
    return Path(source).expanduser() if isinstance(source, (str, os.PathLike)) else Path(source.root)


def _folder_tag(folder: Path) -> str:
    """A readable, unique cache name for a folder: its name plus a hash of its absolute path."""
    resolved = str(folder.expanduser().resolve())
    return f"{folder.expanduser().resolve().name or 'root'}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"


def _classify_templates(templates: Any, classnames: Any) -> list[str]:
    """The one template list of a classify run, for its photos and its pool alike.

    ``"auto"`` takes a benchmark's templates only when ``classnames`` names the benchmark: a
    user's folder called ``sun`` or ``flowers`` is not that benchmark, and a pool folder named
    otherwise than the photos' would have given the fit other prototypes than the zero-shot.
    """
    from .data.prompts import benchmark_named_by, resolve_templates

    return resolve_templates(templates, benchmark_named_by(classnames))


def _prompts_tag(classnames: Any, templates: Any) -> str:
    """A short hash of the text side of a classify run's features: the class names with their
    prompt words, and the templates.

    It names the cache file beside the folder's tag: runs of one folder with other class files
    (or templates) keep a file each, instead of taking turns replacing one (re-encoding every
    photo each time, and reading another run's file when two ran side by side). Only a name:
    whether the file holds the right features is still its cache key's to say. Arguments that
    cannot be read hash as given (the extraction reports them).
    """
    from .data.classnames import resolve_class_prompts
    from .data.prompts import resolve_templates

    try:
        prompts: Any = resolve_class_prompts(classnames)
    except (GPUAError, OSError):
        prompts = repr(classnames)
    try:
        temps: Any = resolve_templates(templates)
    except (GPUAError, OSError):
        temps = repr(templates)
    return hashlib.sha256(json.dumps([prompts, temps], default=str).encode()).hexdigest()[:8]


@dataclass
class Classification:
    """The result of :func:`classify_folder`.

    Attributes
    ----------
    image_ids : list of str
        The photos, relative to the folder.
    proba : array of shape (n_images, n_classes)
        Class probabilities (the model's ``predict_proba``).
    class_scores : array of shape (n_images, n_classes) or None
        Class scores (its ``decision_function``): predictions, rankings and :meth:`scores` use
        them (probabilities can tie at 0 where scores do not).
    classnames : list of str
    labels : int array of shape (n_images,) or None
        The true classes of a labelled folder (class sub-folders); never used to fit.
    model : fitted estimator
        With ``provenance_`` (encoders, templates, class names, the pool's feature file).
    features, pool_features : Path
        The cached feature files of the photos and of the pool.
    seconds : dict
        ``extract``, ``fit`` and ``predict`` times.
    zero_shot : int array of shape (n_images,) or None
        The VLM's own zero-shot class per photo, for comparison: GPUA's fit assumes the classes
        about equally frequent among the photos it is fitted on, zero-shot assumes nothing.
    unreadable : list of (str, str)
        The photos of the folder that were not classified (image id, reason), not in
        ``image_ids``: those that could not be read (the extraction's error), then those of a
        format gpua does not decode (HEIC/HEIF, JPEG XL, camera raw: :func:`undecoded_photos`),
        whose reason names the format and how to convert it. :meth:`to_csv` lists every one
        with an empty prediction and the reason, so each photo of the folder has a row.
    """

    image_ids: list[str]
    proba: np.ndarray
    classnames: list[str]
    labels: np.ndarray | None
    model: Any
    features: Path
    pool_features: Path
    seconds: dict[str, float] = field(default_factory=dict)
    zero_shot: np.ndarray | None = None
    class_scores: np.ndarray | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def _ranked(self) -> np.ndarray:
        return self.class_scores if self.class_scores is not None else self.proba

    @property
    def predictions(self) -> np.ndarray:
        """Class index per photo, int array of shape (n_images,)."""
        return self._ranked.argmax(1)

    def scores(self) -> dict[str, float] | None:
        """acc1, acc5 and mean per-class recall against the folder's labels (None when unlabelled)."""
        if self.labels is None:
            return None
        from .metrics import score_summary

        s = score_summary(self.labels, self._ranked)
        return {k: s[k] for k in ("acc1", "acc5", "mean_per_class_recall", "n_classes")}

    def to_csv(self, path: str | os.PathLike, top_k: int = 5) -> int:
        """Write ``image, prediction, probability, top1, top1_probability, ..., label`` (label when known).

        The photos that were not classified (:attr:`unreadable`: unreadable, or of a format gpua
        does not decode) get a row too, with empty predictions and the reason in an ``error``
        column: every photo of the folder has exactly one row. The count returned is of the
        classified photos.
        """
        from .report import write_predictions

        return write_predictions(path, [(self.image_ids, self.proba, self.labels, self._ranked)], self.classnames, top_k=top_k,
                                 unreadable=self.unreadable)


def classify_folder(
    images: str | os.PathLike,
    classnames: Sequence[str] | Mapping[str, Sequence[str]] | str | os.PathLike,
    *,
    vfm: str = DEFAULT_VFM,
    vlm: str = DEFAULT_VLM,
    templates: str | os.PathLike | Sequence[str] | None = None,
    pool: str | os.PathLike | None = None,
    method: str = "gpua",
    overrides: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    callback=None,
    workers: int | None = None,
) -> Classification:
    """Classify every photo of a folder into the given classes.

    Parameters
    ----------
    images : path
        A flat folder of photos, or one with a sub-folder per class (named as the classes).
    classnames : file, list, dict or dataset name
        The classes (:func:`gpua.data.classnames.resolve_class_prompts`); a class-name file may
        give each class its prompt words (``automobile: car, automobile``).
    vfm, vlm : str
        Encoder specs (:func:`gpua.encoders.list_encoders`); default the offline ones.
    templates : name, file or list, optional
        Prompt templates; default ``"auto"`` (:func:`gpua.data.prompts.resolve_templates`): a
        benchmark's own when ``classnames`` names one (``"cifar10"``), else CLIP's 80 ImageNet
        templates, whatever the folders are called; one list for the photos and the pool.
    pool : path or dataset, optional
        Folder of photos to fit on, read as one unlabeled pool (every image below it, whatever
        its sub-folders are called: :func:`unlabeled_pool`), or what :func:`unlabeled_pool`
        returns; default ``images`` itself.
    method : str
        A name of :func:`gpua.list_methods` (``"gpua"``, ``"zero_shot"``...).
    overrides : dict, optional
        GPUA parameters.
    cache_dir : path, optional
        Root of the feature cache (default ``$GPUA_CACHE_DIR`` or the user cache); features go to
        ``<cache>/classify/``.
    device, batch_size, progress
        As :func:`gpua.extract.extract_features`.
    callback : callable, optional
        Passed to GPUA's ``fit`` (progress display).
    workers : int, optional
        Threads that decode and prepare the photos (:func:`gpua.extract.extract_features`).

    Returns
    -------
    Classification
        Every photo of ``images`` is in its ``image_ids`` (classified) or its ``unreadable``
        (with the reason): unreadable files, and photos of a format gpua does not decode
        (HEIC/HEIF, JPEG XL, camera raw), which a warning counts once.

    Raises
    ------
    GPUAError
        For an unknown method or fewer than 2 classes (before any image is read), a folder that
        is missing or holds no photos (or only photos of formats gpua does not decode), class
        folders of ``images`` that are not the class names, or a pool smaller than the number
        of classes.
    """
    from .baselines import make_method
    from .data._loaders import heif_install_note
    from .cache import feature_cache_used
    from .extract import extract_features
    from .features import load_features
    from .report import provenance_from_features

    check_methods([method])
    names = check_classes(classnames)
    check_method_overrides(method, overrides, len(names))
    folder = Path(images).expanduser()  # "~/photos" from Python, as the shell expands it (was: "is not a folder")
    if not folder.is_dir():
        raise GPUAError(f"images={str(folder)!r} is not a folder; pass a folder of photos (flat, or one sub-folder per class).")
    if pool is not None and not isinstance(pool, (str, os.PathLike)) and getattr(pool, "root", None) is None:
        raise GPUAError(f"pool= is a {type(pool).__name__}; pass a folder of photos or gpua.classify.unlabeled_pool(folder).")
    pool_root = None if pool is None else _folder_of(pool)
    same = pool_root is None or (pool_root.is_dir() and pool_root.resolve() == folder.resolve())
    # Zero-shot fits nothing: a pool would be encoded for no use.
    same = same or method == "zero_shot"
    # Another pool folder is read as unlabeled images: its sub-folders need not be the classes.
    sources = {"images": folder} if same else {
        "images": folder, "pool": unlabeled_pool(pool) if isinstance(pool, (str, os.PathLike)) else pool}
    # Photos the listing leaves out for their format (HEIC, raw...) get a row too: found now, said once.
    undecoded, n_images = _scan_folder(folder)
    if undecoded and not n_images:
        raise GPUAError(f"images={str(folder)!r} holds no photo gpua decodes: its {len(undecoded)} photo(s) are in formats it "
                        f"does not read ({_format_counts(undecoded)}; first: {undecoded[0]!r}); convert them to JPEG or "
                        f"PNG{heif_install_note(undecoded)}.")
    if method != "zero_shot":  # before any photo is encoded: a fit needs a photo per class at least
        from .data import load_dataset

        fit_on = sources.get("pool", folder)
        with _quiet_listing():
            n_photos = len(fit_on) if not isinstance(fit_on, (str, os.PathLike)) else len(load_dataset(fit_on, classnames=classnames))
        if n_photos < len(names):
            more = (f" (and {len(undecoded)} in formats gpua does not decode: {_format_counts(undecoded)}; "
                    f"convert them to JPEG or PNG{heif_install_note(undecoded)})" if undecoded and "pool" not in sources else "")
            raise GPUAError(f"{'the pool' if 'pool' in sources else 'images'} {str(_folder_of(fit_on))!r} holds {n_photos} photo(s)"
                            f"{more} for {len(names)} classes; a fit needs at least one per class: {_FEW_PHOTOS_FIX}.")
    templates = _classify_templates(templates, classnames)
    t0 = time.perf_counter()
    paths, loaded = {}, {}
    prompts_tag = _prompts_tag(classnames, templates)
    for key, where in sources.items():
        # The pool role has its own file: the same folder read as photos (with their labels)
        # and as a pool (unlabeled) has two cache keys, which would overwrite each other.
        tag = f"{_folder_tag(_folder_of(where))}{'-pool' if key == 'pool' else ''}-{prompts_tag}"
        out = feature_cache_path("classify", tag, vfm, vlm, cache_dir)
        try:
            with _quiet_listing() if key == "images" else contextlib.nullcontext():
                paths[key] = extract_features(vfm, vlm, where, classnames=classnames, templates=templates, out=out,
                                              device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
                                              shard_size=CLASSIFY_PART_IMAGES, workers=workers)
            # Read at once, before the next extraction: a `gpua cache clean --features` meanwhile
            # would remove a cache this run reused and had not read yet.
            loaded[key] = load_features(paths[key])
            feature_cache_used(out)  # gpua's cache, and its age for `gpua cache clean` is the time since this use
        except NoReadableImageError as exc:
            # "none of the 5 images could be read": of which folder, when two are encoded
            raise GPUAError(f"{key} {str(_folder_of(where))!r}: {exc}") from None
    if undecoded:
        warn_user(f"{len(undecoded)} photo(s) of {str(folder)!r} are in formats gpua does not decode ({_format_counts(undecoded)}; "
                  f"first: {undecoded[0]!r}); they are not classified, and Classification.unreadable (the CSV) names each "
                  f"with the reason. Convert them to JPEG or PNG{heif_install_note(undecoded)} to include them.")
    paths.setdefault("pool", paths["images"])
    extract_s = time.perf_counter() - t0
    feats = loaded["images"]
    pool_fs = loaded.get("pool", feats)
    if method != "zero_shot" and pool_fs.n_samples < len(names):  # photos listed, but too few of them readable
        skipped = len(_unreadable_rows(pool_fs))
        raise GPUAError(f"{'the pool' if 'pool' in sources else 'images'} {str(_folder_of(sources.get('pool', folder)))!r} holds "
                        f"{pool_fs.n_samples} readable photo(s) ({skipped} could not be read) for {len(names)} classes; a fit "
                        f"needs at least one per class: {_FEW_PHOTOS_FIX}.")
    pool_skipped = _unreadable_rows(pool_fs) if "pool" in sources and method != "zero_shot" else []
    if pool_skipped:  # the images' own are rows of the CSV; the pool's are said here or nowhere
        first, reason = pool_skipped[0]
        warn_user(f"the pool {str(_folder_of(sources['pool']))!r}: {len(pool_skipped)} of {pool_fs.n_samples + len(pool_skipped)} "
                  f"photo(s) could not be read and were left out of the fit (first: {first!r}: {reason.rstrip('.')}).")
    t1 = time.perf_counter()
    est = make_method(method, **(overrides or {}))
    kw = {"callback": callback} if callback is not None and "callback" in inspect.signature(est.fit).parameters else {}
    # Labels, when the pool has them, are never passed: fit sees the features and prototypes only.
    est.fit(pool_fs.vfm_features, pool_fs.vlm_features, pool_fs.text_prototypes, classnames=pool_fs.classnames, **kw)
    fit_s = time.perf_counter() - t1
    est.provenance_ = provenance_from_features(pool_fs.meta, classnames=pool_fs.classnames, source=str(paths["pool"]))
    t2 = time.perf_counter()
    scores = est.decision_function(feats.vfm_features, feats.vlm_features)
    proba = est.proba_from_scores(scores)
    predict_s = time.perf_counter() - t2
    zero_shot = make_method("zero_shot").fit(feats.vfm_features, feats.vlm_features, feats.text_prototypes)
    return Classification(
        image_ids=feats.image_ids or [str(i) for i in range(feats.n_samples)],
        proba=proba,
        classnames=list(feats.classnames or []),
        labels=feats.labels,
        model=est,
        features=paths["images"],
        pool_features=paths["pool"],
        seconds={"extract": extract_s, "fit": fit_s, "predict": predict_s},
        zero_shot=zero_shot.predict(feats.vfm_features, feats.vlm_features),
        class_scores=scores,
        unreadable=_unreadable_rows(feats) + [(image_id, _undecoded_reason(image_id)) for image_id in undecoded],
    )


#: What to do when a folder has fewer photos than classes (``gpua classify`` writes the arguments as its flags).
_FEW_PHOTOS_FIX = "add photos, fit on a larger folder (pool=FOLDER), or use method='zero_shot'"


@contextlib.contextmanager
def _quiet_listing():
    """Hold back the listing's warning about photos of formats gpua does not decode (classify says it once, itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LISTING_WARNING)
        yield
