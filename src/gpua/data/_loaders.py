"""``load_dataset``: one entry point for every on-disk layout gpua reads.

Layouts, tried in this order:

1. ``"cifar10-mini"``: the CIFAR-10 sample embedded in the package (``split="train"/"test"``);
   ``"fashion-mnist"``: Fashion-MNIST's idx files (``/usr/share/datasets/fashion-mnist`` from
   Debian's ``dataset-fashion-mnist``, or the folder given as ``image_root``).
2. An ``.npz`` file of arrays (``images``, optional ``labels``, ``classnames``, ``source_paths``).
3. A CoOp split file ``split_zhou_<Dataset>.json`` (or a folder holding exactly one).
4. A CoOp FGVC-Aircraft folder (``variants.txt`` + ``images_variant_<split>.txt``).
5. A CoOp ImageNet folder (``classnames.txt`` + ``images/<split>/<wnid>/``).
6. An image folder: ``root/<class>/...`` (labeled) or ``root/*.jpg`` (unlabeled).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import stat
import unicodedata
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

from .._errors import GPUAError, warn_user
from ._datasets import HEIF_EXTENSIONS, IMAGE_EXTENSIONS, ArrayImageDataset, FileImageDataset, ImageDataset, decoded_extensions
from ._registry import DatasetInfo, canonical_name, dataset_info, split_file_info
from ._textfiles import clean_edges, read_text
from .classnames import _dedupe_clip_imagenet, _prompt_key, _resolve_classes, get_classnames

__all__ = ["load_dataset", "DEMO_DATASET", "DEMO_SPLITS"]

DEMO_DATASET = "cifar10-mini"
DEMO_SPLITS = ("train", "test")

# Sub-folder names that mean "a split", not "a class".
_SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test", "trainval", "dev",
                          "training", "testing", "eval", "evaluation"})
#: COCO-style split folders: train2017, val2014.
_YEAR_SPLIT = re.compile(r"^(train|val|test|trainval)(19|20)\d\d$")


_WNID = re.compile(r"^n\d{8}$")


def _is_split_name(folder: str) -> bool:
    """Whether a folder name is a split's (``train``, ``Testing``, ``val2017``), not a class's."""
    low = folder.lower()
    return low in _SPLIT_NAMES or bool(_YEAR_SPLIT.match(low))


def load_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    classnames: Sequence[str] | str | os.PathLike | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> ImageDataset:
    """Open a dataset of images, whatever its layout.

    Parameters
    ----------
    path : str or path-like
        ``"cifar10-mini"`` (the embedded demo data), ``"fashion-mnist"`` (its idx files, see
        ``image_root``), an ``.npz`` file, a CoOp split file
        ``split_zhou_<Dataset>.json`` or its folder, a CoOp FGVC-Aircraft or ImageNet folder, or
        an image folder (``root/<class>/*.jpg`` labeled, ``root/*.jpg`` unlabeled).
    split : str, optional
        Which split: a key of the split file, ``"train"``/``"test"`` for the demo data and
        Fashion-MNIST, the
        ``images_variant_<split>.txt`` of FGVC-Aircraft, the ``images/<split>`` of ImageNet
        (``"test"`` reads ``val``, as CoOp does), or a sub-folder of an image folder. Required
        where the source holds several; an error lists the splits present.
    classnames : list of str, str or path-like, optional
        Class names in label order: a list, a class-name file, or a known dataset name (see
        :func:`gpua.data.classnames.get_classnames`). Where the source names its classes (split
        file, npz, variants.txt, classnames.txt) they must match it exactly, or a
        :class:`~gpua.GPUAError` names the first mismatch. For a labeled image folder they must
        be the class-folder names, in any order (their order then defines the labels), or, when
        the folders are WordNet ids (``n01440764``), a class-name file whose every line starts with
        its folder's id (CoOp's ImageNet form ``n01440764 tench``; each folder is named by its own
        line, the file's order defines the labels), or one name per folder in sorted-folder order.
        For an unlabeled folder they are simply attached.
    image_root : str or path-like, optional
        Folder the split file's (or FGVC's) relative image paths start from. By default CoOp's
        folder for the dataset beside the split file (``images/``, ``jpg/``,
        ``101_ObjectCategories/``...), found by looking for the first image. For
        ``"fashion-mnist"``: the folder of its four idx files (default
        ``/usr/share/datasets/fashion-mnist``).
    name : str, optional
        Overrides the dataset name (default: the canonical benchmark name, or the folder / file
        name).

    Returns
    -------
    ImageDataset
        :class:`FileImageDataset` for files on disk, :class:`ArrayImageDataset` for arrays.

    Raises
    ------
    GPUAError
        For a missing path, an empty folder, an unknown or missing split (listing those
        present), class names that do not match the source, or a malformed file.
    """
    resolved = _resolve_classes(classnames)
    # user_ids: the WordNet id of each class, from a class-name file of "n01440764 tench" lines
    user_names, user_ids = (None, None) if resolved is None else (resolved[0], resolved[2])
    if isinstance(path, str) and path.strip().lower() == DEMO_DATASET:
        _no_image_root(image_root, "the embedded demo data")
        ds: ImageDataset = _load_demo(split, user_names)
    elif isinstance(path, str) and canonical_name(path) == "fashion_mnist" and not Path(path).expanduser().exists():
        ds = _load_fashion_mnist(split, image_root, user_names)
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise GPUAError(
                f"dataset path {str(p)!r} does not exist; pass an image folder, a CoOp split file "
                f"(split_zhou_*.json), an .npz file, or {DEMO_DATASET!r}."
            )
        ds = _load_path(p, split, user_names, image_root, user_ids)
    if name is not None:
        ds.name = str(name)
    return ds


def _load_path(
    p: Path, split: str | None, user_names: list[str] | None, image_root: str | os.PathLike | None,
    user_ids: list[str] | None = None,
) -> ImageDataset:
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return _load_split_file(p, split, user_names, image_root)
        if suffix == ".npz":
            _no_image_root(image_root, "an .npz file")
            return _load_npz_path(p, split, user_names)
        raise GPUAError(
            f"{str(p)!r} is a {suffix or 'suffix-less'} file; load_dataset reads folders, CoOp split files "
            "(.json) and .npz files. To read one image use gpua.data.open_image."
        )
    layout = benchmark_layout(p)
    if layout == "split file":
        split_files = sorted(p.glob("split_zhou_*.json"))
        if len(split_files) > 1:
            raise GPUAError(
                f"folder {str(p)!r} holds several split files ({[f.name for f in split_files]}); pass the one to read."
            )
        return _load_split_file(split_files[0], split, user_names, image_root)
    if layout == "fgvc":
        return _load_fgvc(p, split, user_names, image_root)
    _no_image_root(image_root, "an image folder")
    if layout == "imagenet":
        return _load_imagenet(p, split, user_names)
    return _load_image_folder(p, split, user_names, user_ids)


def benchmark_layout(p: Path) -> str | None:
    """How :func:`load_dataset` reads folder ``p`` when it is a benchmark's own layout, whose name is
    then the benchmark's: ``"split file"`` (it holds a CoOp ``split_zhou_*.json``), ``"fgvc"``
    (FGVC-Aircraft's ``variants.txt`` and ``images_variant_*.txt``), ``"imagenet"`` (CoOp ImageNet's
    ``classnames.txt`` and ``images/``); None for a plain image folder, named by its user."""
    if any(p.glob("split_zhou_*.json")):
        return "split file"
    if (p / "variants.txt").is_file() and any(p.glob("images_variant_*.txt")):
        return "fgvc"
    if (p / "classnames.txt").is_file() and (p / "images").is_dir():
        return "imagenet"
    return None


def _no_image_root(image_root, what: str) -> None:
    if image_root is not None:
        raise GPUAError(f"image_root= applies to CoOp split files and FGVC-Aircraft; it means nothing for {what}.")


def _pick_split(split: str | None, present: Sequence[str], source: str) -> str:
    """The requested split, or an error listing the splits present."""
    if split is None:
        raise GPUAError(f"{source} holds the splits {list(present)}; pass split= one of them.")
    if str(split) not in present:
        raise GPUAError(f"{source} has no split {str(split)!r}; the splits present are {list(present)}.")
    return str(split)


def _match_classnames(given: list[str] | None, found: list[str], source: str) -> list[str]:
    """``found`` (the source's names), after checking the user's ``given`` names against them."""
    def nfc(names: list[str]) -> list[str]:  # macOS writes names decomposed (NFD): the same names
        return [unicodedata.normalize("NFC", n) for n in names]

    if given is None or nfc(given) == nfc(found):
        return found
    for i, (g, f) in enumerate(zip(nfc(given), nfc(found))):
        if g != f:
            raise GPUAError(
                f"classnames do not match {source}: class {i} is {g!r} in classnames but {f!r} in {source}. "
                "Leave the class names out to use the names of the source, or fix the list."
            )
    n = min(len(given), len(found))
    extra = given[n] if len(given) > n else found[n]
    raise GPUAError(
        f"classnames has {len(given)} names but {source} has {len(found)} classes; the first {n} agree, "
        f"then {extra!r} is only in {'classnames' if len(given) > n else source}."
    )


def _load_fashion_mnist(split: str | None, root, user_names: list[str] | None) -> ArrayImageDataset:
    from ._fashion_mnist import FASHION_MNIST_SPLITS, read_fashion_mnist

    s = _pick_split(split, FASHION_MNIST_SPLITS, "Fashion-MNIST")
    images, labels = read_fashion_mnist(s, root)
    names = _match_classnames(user_names, get_classnames("fashion_mnist"), "Fashion-MNIST's class list")
    return ArrayImageDataset(images, labels, names, "fashion_mnist", s, [f"{s}/{i}" for i in range(images.shape[0])])


# ---------------------------------------------------------------- arrays (.npz, embedded demo)


def _load_demo(split: str | None, user_names: list[str] | None) -> ArrayImageDataset:
    s = _pick_split(split, DEMO_SPLITS, f"the embedded dataset {DEMO_DATASET!r}")
    res = resources.files("gpua").joinpath("assets", f"cifar10_mini_{s}.npz")
    with res.open("rb") as f:
        return _dataset_from_npz(f, f"cifar10_mini_{s}.npz", DEMO_DATASET, s, user_names)


def _load_npz_path(p: Path, split: str | None, user_names: list[str] | None) -> ArrayImageDataset:
    if split is not None:
        raise GPUAError(
            f"{p.name!r} is one .npz file, which holds one split; pass the file of the split you want and no "
            "split= (split= picks a split from folders and split files)."
        )
    with open(p, "rb") as f:
        return _dataset_from_npz(f, p.name, p.stem, None, user_names)


def _npz_strings(z, key: str, source: str) -> list[str]:
    """An .npz's 1-D string array as a list of str: bytes (``dtype='S'``) decoded as UTF-8.

    Was: ``str()`` of each entry, so bytes became ``"b'airplane'"`` in every class name, prompt
    and image id, and a single string (a 0-d array) was walked letter by letter, one class per
    character.
    """
    a = z[key]
    if a.ndim != 1:
        raise GPUAError(f"{source!r}: {key} is an array of shape {a.shape}; store one entry per "
                        f"{'class' if key == 'classnames' else 'image'}: np.asarray(names, dtype=str), 1-D.")
    if a.dtype.kind == "S":
        try:
            return [v.decode("utf-8") for v in a.tolist()]
        except UnicodeDecodeError as exc:
            raise GPUAError(f"{source!r}: {key} holds bytes that are not UTF-8 ({exc}); store text: "
                            "np.asarray(names, dtype=str).") from None
    if a.dtype.kind == "U" or (a.dtype.kind in "iu" and key != "classnames"):  # numbered images: ids 0, 1, ... as before
        return [str(v) for v in a.tolist()]
    raise GPUAError(f"{source!r}: {key} has dtype {a.dtype}, not text; store np.asarray(names, dtype=str).")


#: The arrays an image .npz may hold (``source_paths`` or ``image_ids``: the images' names).
_NPZ_KEYS = ("images", "labels", "classnames", "source_paths", "image_ids")


def _dataset_from_npz(
    f: IO[bytes], source: str, name: str, split: str | None, user_names: list[str] | None
) -> ArrayImageDataset:
    try:
        z = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise GPUAError(f"{source!r} could not be read as an .npz file ({exc}); it is truncated or not numpy data.") from exc
    if not hasattr(z, "files"):
        raise GPUAError(f"{source!r} holds a single array; save named arrays with np.savez(images=..., labels=...).")
    with z:
        keys = set(z.files)
        if "images" not in keys:
            raise GPUAError(f"{source!r} has no 'images' array (it holds {sorted(keys)}); save images=(N, H, W, 3) uint8.")
        unread = sorted(keys - set(_NPZ_KEYS))
        if unread:  # was: labels saved as 'label', 'targets' or 'y' were dropped without a word (an unlabelled set)
            hint = " (if one holds each image's class, save it as 'labels')" if "labels" not in keys else ""
            warn_user(f"{source!r} holds {unread}, which are not read; gpua reads {list(_NPZ_KEYS)}{hint}.")
        try:
            # Read everything now: the file handle closes when this function returns.
            images = z["images"]
            labels = z["labels"] if "labels" in keys else None
            file_names = _npz_strings(z, "classnames", source) if "classnames" in keys else None
            id_key = next((k for k in ("source_paths", "image_ids") if k in keys), None)
            ids = _npz_strings(z, id_key, source) if id_key else None
        except GPUAError:  # a ValueError too: said as it is, not as "stores strings as Python objects"
            raise
        except ValueError as exc:  # object arrays need pickle, which we never enable
            raise GPUAError(
                f"{source!r} stores strings as Python objects ({exc}); save them as numpy string arrays, "
                "e.g. np.asarray(names, dtype=str)."
            ) from None
    names = user_names if file_names is None else _match_classnames(user_names, file_names, source)
    if labels is not None and names is None:
        raise GPUAError(f"{source!r} has labels but no classnames; pass classnames= (one name per label).")
    if ids is not None and len(ids) != images.shape[0]:
        raise GPUAError(f"{source!r}: {id_key} has {len(ids)} entries but images has {images.shape[0]}.")
    return ArrayImageDataset(images, labels, names, name, split, ids)


# ---------------------------------------------------------------- CoOp split files


def _load_split_file(p: Path, split: str | None, user_names: list[str] | None, image_root) -> FileImageDataset:
    source = f"split file {p.name!r}"
    text = read_text(p, "split")  # UTF-8 (or UTF-16/32 with a byte-order mark); other encodings named with the fix
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise GPUAError(f"{source} could not be read as JSON ({exc}).") from None
    if not isinstance(data, dict) or not any(isinstance(v, list) for v in data.values()):
        raise GPUAError(f"{source} is not a CoOp split file: expected {{'train': [[path, label, classname], ...], ...}}.")
    present = [k for k, v in data.items() if isinstance(v, list)]
    s = _pick_split(split, present, source)
    entries = {k: _split_entries(data[k], k, source) for k in present}
    # Class names come from every split, so that train and test share one label space even when
    # a split misses a class.
    found = _split_classnames(entries, source)
    names = _match_classnames(user_names, found, source)
    if not entries[s]:
        listed = [k for k in present if entries[k]]
        raise GPUAError(f"split {s!r} of {source} lists no images; the splits with images are {listed}.")
    relpaths = [e[0] for e in entries[s]]
    labels = np.array([e[1] for e in entries[s]], dtype=np.int64)
    info = split_file_info(p.name)
    root = _find_image_root(p.parent, info, relpaths, image_root, source)
    _no_repeated_images([(f"entry {i}", e[0], e[1]) for i, e in enumerate(entries[s])], f"{source}, split {s!r}", root)
    _all_listed_files_exist(root, relpaths, f"{source}, split {s!r}")
    ds_name = info.name if info else re.sub(r"^split_zhou_", "", p.stem)
    _warn_split_overlap(source, s, relpaths, {k: [e[0] for e in entries[k]] for k in present if k != s}, root=root)
    return FileImageDataset(root, relpaths, labels, names, ds_name, s)


def _image_keys(paths: Sequence[str], root: Path | None) -> list[str]:
    """What identifies each listed image: its path joined to ``root`` with the folders resolved
    (``a.jpg``, ``./a.jpg``, ``/data/imgs/a.jpg`` and ``x/../a.jpg`` are one image under ``/data/imgs``,
    through symlinked folders too); without a root, the path normalised as a string.

    Each folder is resolved once (a split file of 40,000 images has a few hundred folders): the
    file name itself is not, so two names of one file through a symlinked *file* stay two keys.
    """
    if root is None:
        return [posixpath.normpath(r) for r in paths]
    real: dict[str, str] = {}
    keys = []
    for rel in paths:
        head, tail = os.path.split(os.path.join(os.fspath(root), rel))
        if head not in real:
            real[head] = os.path.realpath(head)
        keys.append(os.path.normcase(os.path.join(real[head], tail)))
    return keys


def _no_repeated_images(located: list[tuple[str, str, int]], source: str, root: Path | None = None) -> None:
    """Refuse a list that names one image twice (``(where, relative path, label)`` items).

    Paths are compared as the file system resolves them under the image folder ``root``
    (:func:`_image_keys`: ``./a.jpg``, ``a.jpg`` and its absolute path are one image): a repeat
    would count the image twice in a pool and a score, or, with another label, contradict itself.
    """
    seen: dict[str, tuple[str, int]] = {}
    for (where, rel, label), key in zip(located, _image_keys([r for _, r, _ in located], root)):
        if key in seen:
            where0, label0 = seen[key]
            labels = f" with the labels {label0} and {label}" if label0 != label else ""
            raise GPUAError(f"{source} lists the image {rel!r} twice ({where0} and {where}{labels}); list each image once "
                            "(remove the repeated entry).")
        seen[key] = (where, label)


def _warn_split_overlap(source: str, split: str, paths: Sequence[str], others: dict[str, Sequence[str]],
                        same_folder: str = "", root: Path | None = None) -> None:
    """One warning when images of ``split`` are also in other splits (``{split: its paths}``): leakage.

    An image in both the training pool and the test split makes the reported test score
    optimistic. It is not refused (a transductive run may mean it), only said: the count, the
    splits, one example and the fix. Paths are compared as :func:`_no_repeated_images` compares
    them (:func:`_image_keys`: resolved under ``root``, the folder they start from, when given;
    else as normalised strings). The warning points
    at the first line outside gpua (:func:`gpua._errors.warn_user`). ``same_folder`` ends the first sentence (why the paths coincide).
    """
    if not others:
        return
    own = dict(zip(_image_keys(paths, root), paths))
    found = []
    for other, theirs in others.items():
        common = own.keys() & set(_image_keys(theirs, root))
        if common:
            first = next(own[k] for k in own if k in common)  # the first in this split's order
            found.append((other, len(common), first))
    if not found:
        return
    said = "; ".join(f"{n} image(s) of split {split!r} are also in split {other!r} (first: {first!r})"
                     for other, n, first in found)
    which = " or ".join(repr(other) for other, _, _ in found)
    warn_user(f"{source}: {said}{same_folder}. An image in both the training pool and the test split makes the test score "
              f"optimistic (data leakage); remove it from {split!r} or from {which}, unless this transductive overlap is "
              "meant.")


def _all_listed_files_exist(root: Path, relpaths: list[str], source: str) -> None:
    """Refuse a list of images some of which are not files under ``root``, naming them.

    Read lazily, a missing image would surface only when encoded, as an image to skip; a path
    of the list that is wrong (a typo, another letter case, a folder) is a mistake in the list.
    """
    top = os.fspath(root)
    missing = [r for r in relpaths if not os.path.isfile(os.path.join(top, r))]
    if not missing:
        return
    shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise GPUAError(
        f"{source}: {len(missing)} of its {len(relpaths)} images are not files under {top!r}: {shown}. "
        "Fix those paths in the list (letter case counts), restore the files, or remove their entries; "
        "if the images lie elsewhere, pass image_root= the folder the paths start from."
    )


def _split_entries(items: list, split: str, source: str) -> list[tuple[str, int, str]]:
    out = []
    for i, e in enumerate(items):
        ok = isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)
        if ok:
            try:
                label = int(e[1])
                ok = label == e[1] and label >= 0 and not isinstance(e[1], bool)  # true is not class 1
            except (TypeError, ValueError, OverflowError):
                ok = False
        if not ok:
            raise GPUAError(
                f"{source}: entry {i} of split {split!r} is {e!r}; expected [relative_path, label >= 0, classname]."
            )
        if not e[0].strip() or not e[2].strip():
            what = "image path" if not e[0].strip() else "class name"
            raise GPUAError(f"{source}: entry {i} of split {split!r} is {e!r}, whose {what} is empty; give every entry "
                            "[relative_path, label, classname].")
        out.append((e[0].replace("\\", "/"), label, e[2]))  # paths written on Windows
    return out


def _split_classnames(entries: dict[str, list[tuple[str, int, str]]], source: str) -> list[str]:
    """The class names of a split file's entries, by label (each label's first spelling).

    A name written composed in one entry and decomposed in another (NFC, NFD: the same text, as
    :func:`_nfc` compares image folders) is one name.
    """
    by_label: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for items in entries.values():
        for _, label, cname in items:
            if _nfc(by_label.setdefault(label, cname)) != _nfc(cname):
                raise GPUAError(f"{source} calls label {label} both {by_label[label]!r} and {cname!r}; give each label one "
                                "class name.")
            if by_name.setdefault(_nfc(cname), label) != label:
                raise GPUAError(f"{source} gives class {cname!r} two labels, {by_name[_nfc(cname)]} and {label}.")
    if not by_label:
        raise GPUAError(f"{source} lists no images.")
    # K labels are 0..K-1 exactly when none below K is missing (no set of range(max label): a
    # stray label of 10**12 would fill the memory).
    missing = next((k for k in range(len(by_label)) if k not in by_label), None)
    if missing is not None:
        raise GPUAError(f"{source} has no image with label {missing}, so that class has no name (its labels run up to "
                        f"{max(by_label)}); labels must be 0..K-1.")
    names = [by_label[k] for k in range(len(by_label))]
    _distinct_prompts(names, lambda i, j: f"{source} names label {i} {names[i]!r} and label {j} {names[j]!r}")
    return names


def _distinct_prompts(names: list[str], pair: Callable[[int, int], str]) -> None:
    """Refuse class names that give one prompt (case, ``_`` versus space, white space, Unicode form).

    Such classes get the same text prototype, so no fit can tell their images apart; the class-name
    files refuse them the same way (:mod:`gpua.data.classnames`). ``pair(i, j)`` says where.
    """
    first: dict[str, int] = {}
    for j, name in enumerate(names):
        i = first.setdefault(_prompt_key(name), j)
        if i != j:
            raise GPUAError(f"{pair(i, j)}, which differ only in case, '_' versus space, white space or Unicode form: "
                            "they give the same prompt, so the two classes cannot be told apart. Give them one name "
                            "(and one label), or rename one.")


#: How many of a list's first images :func:`_find_image_root` looks for: one wrong entry first
#: (another letter case) is then a wrong entry, reported as such, not a wrong folder.
_ROOT_PROBES = 8


def _find_image_root(
    base: Path, info: DatasetInfo | None, relpaths: list[str], image_root, source: str
) -> Path:
    """The folder the listed images' paths start from: ``image_root``, or the first candidate
    folder (CoOp's for the dataset, ``images/``, ``base``) that holds one of the first images.
    The list's own missing images are :func:`_all_listed_files_exist`'s to name."""
    probes = relpaths[:_ROOT_PROBES]
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not root.is_dir():
            raise GPUAError(f"image_root {str(root)!r} is not a folder.")
        if probes and not any((root / r).exists() for r in probes):
            _no_absolute_paths(relpaths, source)
            nor = f" (nor the next {len(probes) - 1})" if len(probes) > 1 else ""
            raise GPUAError(f"image_root {str(root)!r} does not hold {relpaths[0]!r}, the first image of {source}{nor}; pass "
                            "the folder its paths start from, or fix the paths (letter case counts).")
        return root
    candidates = ([base / info.image_dir] if info else []) + [base / "images", base]
    candidates = list(dict.fromkeys(candidates))  # unique, in order
    if not relpaths:
        return next((c for c in candidates if c.is_dir()), base)
    for c in candidates:
        if any((c / r).exists() for r in probes):
            return c
    _no_absolute_paths(relpaths, source)
    tried = ", ".join(repr(str(c)) for c in candidates)
    nor = f" (nor are the next {len(probes) - 1})" if len(probes) > 1 else ""
    raise GPUAError(
        f"the first image of {source}, {relpaths[0]!r}, is not under {tried}{nor}; pass image_root= the folder its "
        "paths start from, or fix the paths of the list (letter case counts)."
    )


def _no_absolute_paths(relpaths: list[str], source: str) -> None:
    """Refuse a list of absolute paths that are not on this machine (another machine's), saying so:
    image_root= cannot help there, since joining a root with an absolute path drops the root (was
    "pass image_root= the folder its paths start from", which then failed again)."""
    first = relpaths[0]
    if posixpath.isabs(first.replace("\\", "/")) or re.match(r"^[A-Za-z]:[\\/]", first):
        raise GPUAError(f"{source} lists absolute paths (first: {first!r}) that are not on this machine; a split file lists "
                        "paths relative to its image folder: rewrite them relative to it (drop the leading folders up to "
                        "the image folder), then pass image_root= that folder if it is not beside the file.")


# ---------------------------------------------------------------- CoOp FGVC-Aircraft and ImageNet


def _load_fgvc(p: Path, split: str | None, user_names: list[str] | None, image_root) -> FileImageDataset:
    prefix = "images_variant_"
    present = sorted(f.stem[len(prefix):] for f in p.glob(prefix + "*.txt"))
    s = _pick_split(split, present, f"FGVC-Aircraft folder {str(p)!r}")
    variants = [line.strip() for line in read_text(p / "variants.txt", "FGVC-Aircraft variants").splitlines() if line.strip()]
    repeated = next((v for i, v in enumerate(variants) if v in variants[:i]), None)
    if repeated is not None:
        raise GPUAError(f"variants.txt of {str(p)!r} names the variant {repeated!r} twice; name each class once.")
    _distinct_prompts(variants, lambda i, j: f"variants.txt of {str(p)!r} names class {i} {variants[i]!r} and class {j} "
                                             f"{variants[j]!r}")
    names = _match_classnames(user_names, variants, "variants.txt")
    lookup = {c: i for i, c in enumerate(variants)}
    located, relpaths, labels = [], [], []
    list_file = p / f"{prefix}{s}.txt"
    for lineno, line in enumerate(read_text(list_file, "FGVC-Aircraft image list").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)  # "1025794 707-320": image id, then the variant
        if len(parts) != 2 or parts[1].strip() not in lookup:
            raise GPUAError(f"{list_file.name} line {lineno} {line!r}: expected '<image id> <variant from variants.txt>'.")
        relpaths.append(parts[0] + ".jpg")
        labels.append(lookup[parts[1].strip()])
        located.append((f"line {lineno}", relpaths[-1], labels[-1]))
    if not relpaths:
        raise GPUAError(f"{list_file.name} of {str(p)!r} lists no images; the split {s!r} is empty.")
    root = _find_image_root(p, dataset_info("fgvc_aircraft"), relpaths, image_root, list_file.name)
    _no_repeated_images(located, list_file.name, root)
    _all_listed_files_exist(root, relpaths, list_file.name)
    _warn_split_overlap(f"FGVC-Aircraft folder {str(p)!r}", s, relpaths, _fgvc_other_splits(p, prefix, present, s), root=root)
    return FileImageDataset(root, relpaths, labels, names, "fgvc_aircraft", s)


def _fgvc_other_splits(p: Path, prefix: str, present: Sequence[str], split: str) -> dict[str, list[str]]:
    """{other split: the image paths its list names}, for the leakage check; an unreadable list is left out."""
    others = {}
    # FGVC-Aircraft ships trainval = train + val: those overlaps are the dataset's own layout, not leakage.
    nested = {"train": {"trainval"}, "val": {"trainval"}, "trainval": {"train", "val"}}.get(split, set())
    for other in present:
        if other == split or other in nested:
            continue
        try:
            text = read_text(p / f"{prefix}{other}.txt", "FGVC-Aircraft image list")
        except (GPUAError, OSError):
            continue  # that split's own load says what is wrong with it
        others[other] = [line.split()[0] + ".jpg" for line in text.splitlines() if line.strip()]
    return others


def _load_imagenet(p: Path, split: str | None, user_names: list[str] | None) -> FileImageDataset:
    images = p / "images"
    present = _subdirs(images)
    if split == "test" and "test" not in present and "val" in present:
        split = "val"  # CoOp evaluates ImageNet on its validation set
    s = _pick_split(split, present, f"ImageNet folder {str(images)!r}")
    # CoOp's labels are the sorted WordNet-id folders, named through classnames.txt; those of
    # every split, so that a label means one class in all of them.
    folders, absent = _split_class_folders(images, present, s)
    mapping = _read_wnid_names(p / "classnames.txt")
    found = _dedupe_clip_imagenet(_names_by_folder(folders, mapping, _place_of(images / s, images, absent), "classnames.txt"))
    _distinct_prompts(found, lambda i, j: f"classnames.txt names {folders[i]!r} {found[i]!r} and {folders[j]!r} {found[j]!r}")
    names = _match_classnames(user_names, found, "classnames.txt")
    files = _walk_class_folders(images / s, folders, loops=_loop_links(images / s, os.scandir(images / s)))
    relpaths, labels = _collect_class_files(images / s, files, absent=absent)
    _utf8_names(images / s, relpaths)
    _warn_shared_class_folders(images, present, s, files, f"ImageNet folder {str(images)!r}")
    return FileImageDataset(images / s, relpaths, labels, names, "imagenet", s)


def _read_wnid_names(path: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(read_text(path, "ImageNet class names").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2:
            raise GPUAError(f"{path.name} line {lineno} {line!r}: expected '<folder> <class name>'.")
        name = parts[1].strip()
        if mapping.setdefault(parts[0], name) != name:
            raise GPUAError(f"{path.name} line {lineno} names the folder {parts[0]!r} {name!r}, but an earlier line "
                            f"{mapping[parts[0]]!r}; give each folder one line.")
    return mapping


def _names_by_folder(folders: Sequence[str], mapping: dict[str, str], place: Callable[[str], Path], source: str) -> list[str]:
    """The class name of each of ``folders`` by its own line of ``source`` (``mapping``: {WordNet id:
    name}, from CoOp's ImageNet classnames.txt or a class-name file in its form), never by position.

    ``place(folder)``: the folder it lies in, for the error naming the first folder without a line.
    """
    unknown = next((f for f in folders if f not in mapping), None)
    if unknown is not None:
        raise GPUAError(f"{source} has no line for the folder {unknown!r} of {str(place(unknown))!r}; add the line "
                        f"'{unknown} <class name>' (or remove the folder).")
    return [mapping[f] for f in folders]


def _place_of(base: Path, root: Path, absent: Sequence[str]) -> Callable[[str], Path]:
    """``place(folder)``: the folder a class folder of split folder ``base`` lies in, for messages:
    ``base``, or, for a class only a sibling split of ``root`` has (``absent``,
    :func:`_split_class_folders`), that sibling."""
    def place(folder: str) -> Path:
        if folder not in absent:
            return base
        return next((root / d for d in _subdirs(root) if root / d != base and (root / d / folder).is_dir()), root)
    return place


def _match_count(names: list[str], folders: list[str], where: Path) -> list[str]:
    if len(names) != len(folders):
        raise GPUAError(
            f"classnames has {len(names)} names but {str(where)!r} has {len(folders)} class folders; give one "
            "name per folder, in sorted-folder order."
        )
    return names


# ---------------------------------------------------------------- image folders


def _is_image(filename: str) -> bool:
    return not filename.startswith(".") and os.path.splitext(filename)[1].lower() in decoded_extensions()


def _is_image_file(folder: str | os.PathLike, filename: str) -> bool:
    """:func:`_is_image`, or a photo saved without a file extension (``IMG_0001`` from some downloads)
    whose content is of a format gpua decodes (:func:`_sniff_image`). Hidden files never are."""
    if _is_image(filename):
        return True
    if filename.startswith(".") or os.path.splitext(filename)[1]:
        return False
    return _sniff_image(os.path.join(os.fspath(folder), filename))


def _decoded_pil_formats() -> tuple[str, ...]:
    """Pillow's names of the formats of :func:`decoded_extensions` that this Pillow reads (JPEG, PNG,
    ... AVIF when it can, HEIF with pillow-heif)."""
    return _pil_formats_of(decoded_extensions())  # registers pillow-heif's opener first, where installed


@functools.lru_cache(maxsize=2)
def _pil_formats_of(extensions: tuple[str, ...]) -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    by_ext = Image.registered_extensions()
    return tuple(sorted({by_ext[e] for e in extensions if e in by_ext and by_ext[e] in Image.OPEN}))


def _sniff_image(path: str) -> bool:
    """Whether a file without an extension is an image of a format gpua decodes, from its header only.

    Pillow identifies it (``Image.open`` reads the header, decodes nothing), tried only against the
    formats gpua reads by ending, so that an extensionless photo is read like its ``.jpg`` twin
    and a file of another kind (text, a PSD, HEIC without pillow-heif) stays out as before. Not a regular file, a
    file that cannot be opened, or no Pillow (the core install decodes no image): not an image.
    """
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
            return False
        from PIL import Image
    except (OSError, ImportError):
        return False
    try:
        with warnings.catch_warnings():  # a header's oddities (EXIF, large sizes) are for the decoding to say
            warnings.simplefilter("ignore")
            with Image.open(path, formats=_decoded_pil_formats()):
                return True
    except Image.DecompressionBombError:  # an image, too large to decode: the extraction names it with the reason
        return True
    except Exception:  # noqa: BLE001 - UnidentifiedImageError, or any error of a plugin on a header it half accepts
        return False


#: Photo formats cameras and phones write that gpua does not decode (Apple's HEIC unless pillow-heif
#: is installed, JPEG XL, raw files): left out of a folder's images, but counted and named, not silently.
_UNREAD_PHOTO_EXTENSIONS = frozenset({
    ".heic", ".heif", ".hif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".raf", ".rw2", ".pef", ".srw",
    # Other image formats found in image collections (icons, textures, scans, layered and vector
    # files, JPEG 2000, HDR, stereo JPEG): not read either, so named rather than left out unseen.
    ".ico", ".icns", ".cur", ".tga", ".dds", ".psd", ".svg", ".svgz", ".jp2", ".j2k", ".jpx", ".jpf", ".jxr", ".wdp",
    ".apng", ".mpo", ".pcx", ".qoi", ".sgi", ".xbm", ".xpm", ".hdr", ".exr",
})


def _is_unread_photo(filename: str) -> bool:
    ext = os.path.splitext(filename)[1].lower()
    return not filename.startswith(".") and ext in _UNREAD_PHOTO_EXTENSIONS and ext not in decoded_extensions()


#: Endings of the files datasets keep beside their images (annotations, arrays, archives, code):
#: never opened to look for a misnamed image, so that a folder of a million annotation files is
#: listed as fast as before.
_NOT_IMAGE_EXTENSIONS = frozenset({
    ".txt", ".json", ".jsonl", ".xml", ".csv", ".tsv", ".md", ".yaml", ".yml", ".html", ".log", ".npy", ".npz", ".pt",
    ".pth", ".pkl", ".mat", ".h5", ".hdf5", ".parquet", ".safetensors", ".zip", ".tar", ".gz", ".py", ".db", ".gpua",
})


def _is_misnamed_image(folder: str | os.PathLike, filename: str) -> bool:
    """Whether a file whose ending is no image's (``x.jpg_large``, ``x.jpeg.1``, ``x.jif``) holds an
    image gpua decodes (:func:`_sniff_image`): left out of the listing, but named."""
    ext = os.path.splitext(filename)[1].lower()
    return (bool(ext) and not filename.startswith(".") and ext not in IMAGE_EXTENSIONS
            and ext not in _UNREAD_PHOTO_EXTENSIONS and ext not in _NOT_IMAGE_EXTENSIONS
            and _sniff_image(os.path.join(os.fspath(folder), filename)))


def _warn_misnamed_images(base: Path, misnamed: list[str]) -> None:
    """One warning naming the images left out for their file endings (a saved tweet's ``.jpg_large``)."""
    if misnamed:
        warn_user(f"left out {len(misnamed)} file(s) of {str(base)!r} that hold images but whose names end otherwise "
                  f"(first: {misnamed[0]!r}); rename them to end in .jpg or .png (as their format is) to include them.")


def _warn_unread_photos(base: Path, unread: list[str]) -> None:
    """One warning naming the photos of a format gpua cannot decode that were left out."""
    if not unread:
        return
    from collections import Counter

    kinds = Counter(os.path.splitext(u)[1].lower() for u in unread)
    warn_user(f"left out {len(unread)} photo(s) of {str(base)!r} in formats gpua does not read "
              f"({', '.join(f'{k}: {c}' for k, c in sorted(kinds.items()))}; first: {unread[0]!r}); convert them to JPEG or "
              f"PNG to include them{heif_install_note(unread)}.")


def heif_install_note(names) -> str:
    """`` (HEIC/HEIF: pip install 'gpua[heif]' reads them)`` when some of the photos ``names`` left
    out are HEIC/HEIF (left out only where pillow-heif is not installed), else ``""``: said after
    "convert them to JPEG or PNG" by every message that counts such photos."""
    heif = any(os.path.splitext(os.fspath(n))[1].lower() in HEIF_EXTENSIONS for n in names)
    return " (HEIC/HEIF: pip install 'gpua[heif]' reads them)" if heif else ""


#: Folders archivers leave beside the photos (macOS's zip metadata): never classes, like hidden ones.
#: So are the metadata folders of NAS boxes and Windows (Synology's @eaDir thumbnails beside every
#: photo, recycle bins), at any depth: their "photos" are thumbnails and deleted files.
_ARCHIVE_LEFTOVERS = ("__MACOSX", "@eaDir", "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot", "$RECYCLE.BIN",
                      "System Volume Information")


def _never_read(name: str) -> bool:
    """Whether a folder called ``name`` is never read, as a class or below one: hidden ones and
    :data:`_ARCHIVE_LEFTOVERS`."""
    return name.startswith(".") or name in _ARCHIVE_LEFTOVERS


#: What marks a folder gpua wrote (file, key, value): a shard set's index, an extraction's parts
#: manifest. Such a folder beside the class folders (``--out photos/feats``, or the
#: ``photos/feats.npz.parts`` an interrupted run leaves) holds features, not a class.
_GPUA_OUTPUT_MARKS = (("index.json", "format", "gpua-shards"), ("manifest.json", "written_by", "gpua extract parts"))


def _is_gpua_output(folder: str) -> bool:
    """Whether ``folder`` is a shard set or an extraction's parts folder written by gpua."""
    for marker, key, value in _GPUA_OUTPUT_MARKS:
        p = os.path.join(folder, marker)
        if not os.path.isfile(p):
            continue
        try:
            with open(p, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get(key) == value:
            return True
    return False


def _class_order(name: str) -> tuple[str, str]:
    """Sort key of folder names: by their composed (NFC) form, so that a copy made on macOS
    (decomposed names, NFD) lists its classes, hence its labels, in the same order as one made
    elsewhere; the name itself breaks ties."""
    return unicodedata.normalize("NFC", name), name


def _is_loop_link(real_folder: str, entry: os.DirEntry) -> bool:
    """Whether ``entry`` (of a folder whose real path is ``real_folder``) is a symlink to that folder
    itself or to one above it (``ln -s . self``): a loop, whose "images" are the folder's own, never
    a class or a split. Links to files (a pool of linked photos) are told apart first, without a
    path resolution each."""
    return entry.is_symlink() and entry.is_dir() and _within(real_folder, os.path.realpath(entry.path))


def _loop_links(folder: str | os.PathLike, entries) -> list[str]:
    """The names of the loop links (:func:`_is_loop_link`) among ``entries`` (``os.scandir(folder)``)
    that would otherwise be read (hidden and metadata folders never are)."""
    real = os.path.realpath(folder)
    return sorted(e.name for e in entries if not _never_read(e.name) and _is_loop_link(real, e))


def _subdirs(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that may be classes or splits, in :func:`_class_order`: not hidden,
    metadata (:data:`_ARCHIVE_LEFTOVERS`), gpua output, or a symlink back to ``folder`` or above."""
    if not folder.is_dir():
        return []
    real = os.path.realpath(folder)
    return sorted((e.name for e in os.scandir(folder)
                   if e.is_dir() and not _never_read(e.name)
                   and not _is_loop_link(real, e) and not _is_gpua_output(e.path)), key=_class_order)


def _split_class_folders(root: Path, present: Sequence[str], split: str) -> tuple[list[str], list[str]]:
    """Class folders of split ``split`` of ``root``, and those of its sibling splits it lacks.

    Labels index the class folders of every split (``root/train``, ``root/test``... and
    ``split`` itself) so that a label means one class in all of them: a test split without one
    class's folder would otherwise shift every later class's label by one. Siblings are the
    sub-folders of ``root`` named like splits (``train``, ``val``, ``test``...).
    """
    own = _subdirs(root / split)
    if split not in present:  # a deeper path ("train/extra"): no siblings to agree with
        return own, []
    siblings = [d for d in present if d != split and _is_split_name(d)]
    own_forms = {_nfc(f) for f in own}  # a sibling copied from macOS spells the same folders decomposed
    extra: dict[str, str] = {}
    for d in siblings:
        for f in _subdirs(root / d):
            if _nfc(f) not in own_forms:
                extra.setdefault(_nfc(f), f)
    if not extra:
        return own, []
    absent = sorted(extra.values(), key=_class_order)
    return sorted([*own, *absent], key=_class_order), absent


def _warn_shared_class_folders(root: Path, present: Sequence[str], split: str, files: dict[str, list[str]],
                               source: str) -> None:
    """Warn when class folders of ``root/split`` are those of a sibling split (one folder, through a symlink).

    The sibling splits are :func:`_split_class_folders`'. Split folders are separate trees, so
    the same file name in two of them (``train/cat/0001.png``, ``test/cat/0001.png``: a CIFAR
    export) is two images; one directory reached from both (``test/dog -> ../train/dog``, or
    ``test -> train``) is the same images, counted from the walk already done: a few stat calls.
    """
    if split not in present:
        return
    siblings = [d for d in present if d != split and _is_split_name(d)]
    if not siblings:
        return
    own = {}
    for f, found in files.items():
        ident = _dir_identity(os.fspath(root / split / f))
        if found and ident is not None:
            own.setdefault(ident, f)
    others: dict[str, list[str]] = {}
    shared: list[str] = []
    for d in siblings:
        same = [own[i] for i in (_dir_identity(os.fspath(root / d / g)) for g in _subdirs(root / d)) if i in own]
        if same:
            others[d] = [f"{f}/{x}" for f in same for x in files[f]]
            shared.extend(f for f in same if f not in shared)
    if others:
        folders = ", ".join(repr(f) for f in shared[:3]) + (", ..." if len(shared) > 3 else "")
        _warn_split_overlap(source, split, [f"{f}/{x}" for f, found in files.items() for x in found], others,
                            same_folder=f" (their class folder(s) {folders} are one folder, through a symlink)")


def _dir_identity(path: str) -> tuple | None:
    """What makes a directory the same one whatever path reaches it; None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_ino:
        return (st.st_dev, st.st_ino)
    return ("path", os.path.normcase(os.path.realpath(path)))  # file systems without inode numbers


def _within(path: str, top: str) -> bool:
    """Whether real path ``path`` is ``top`` or lies below it."""
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _links_into(path: str, trees: Sequence[str]) -> bool:
    """Whether file ``path`` is a symlink to a file inside one of the real folders ``trees`` (listed there)."""
    return os.path.islink(path) and any(_within(os.path.realpath(path), t) for t in trees)


def _warn_dangling_links(base: Path, dangling: Sequence[str]) -> None:
    """One warning naming the image-named symlinks of ``base`` whose target is missing (left out:
    there is nothing to read, and they are no second path to an image listed elsewhere)."""
    if dangling:
        shown = ", ".join(repr(s) for s in dangling[:5]) + (", ..." if len(dangling) > 5 else "")
        warn_user(f"left out {len(dangling)} symlink(s) of {str(base)!r} whose target is missing (moved or deleted): {shown}; "
                  "restore the targets, or remove the links.")


def _walk_class_folders(base: Path, folders: list[str], unread: list[str] | None = None,
                        loops: Sequence[str] = ()) -> dict[str, list[str]]:
    """{class folder: its image files (recursively, sorted, relative to it, ``/``-separated)}.

    Symlinks are followed (CoOp's instructions symlink datasets into place), but every real
    directory is read once: a folder is skipped, with one warning naming it, when it is a
    symlink to a folder that encloses it (a loop) or into a class folder (whose images are
    listed there), or when it was already read through another path; so is an image that is a
    symlink to an image of a class folder (listed there, under its own class). Two class folders
    that are one folder are refused. NAS and Windows metadata folders (``@eaDir``...) are left
    out at every depth. Photos of formats gpua does not decode (:func:`_is_unread_photo`) are
    warned about, or, when ``unread`` is given, appended to it (relative to ``base``) for the
    caller to report; images under other file endings (:func:`_is_misnamed_image`) are warned about.
    ``loops``: the symlinks of ``base`` itself that lead back to it (:func:`_loop_links`, left out of
    ``folders`` by :func:`_subdirs`), named in the same warning as the loops found inside.
    """
    report = unread is None
    unread = [] if unread is None else unread
    tops = {f: base / f for f in folders}
    top_of: dict[tuple, str] = {}
    for name, top in tops.items():
        ident = _dir_identity(os.fspath(top))
        if ident is not None and top_of.setdefault(ident, name) != name:
            # kitty -> cat: every image of one folder would be listed twice, under two labels
            raise GPUAError(f"class folders {top_of[ident]!r} and {name!r} of {str(base)!r} are one folder (through a symlink), "
                            "so each of its images would be listed twice, under two classes; remove the symlink, or give the "
                            "class one name.")
    visited = set(top_of)
    class_trees = [os.path.realpath(t) for t in tops.values()]
    skipped: list[str] = list(loops)
    misnamed: list[str] = []
    dangling: list[str] = []
    special: list[str] = []
    out: dict[str, list[str]] = {}
    for name, top in tops.items():
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            rel = Path(dirpath).relative_to(top)
            keep = []
            for d in sorted(d for d in dirnames if not _never_read(d)):
                sub = os.path.join(dirpath, d)
                if os.path.islink(sub):
                    target, here = os.path.realpath(sub), os.path.realpath(dirpath)
                    if _within(here, target) or any(_within(target, t) for t in class_trees):
                        skipped.append((Path(name) / rel / d).as_posix())
                        continue
                ident = _dir_identity(sub)
                if ident is not None and ident in visited:
                    skipped.append((Path(name) / rel / d).as_posix())
                    continue
                if ident is not None:
                    visited.add(ident)
                keep.append(d)
            dirnames[:] = keep
            images = [f for f in sorted(filenames) if _is_image_file(dirpath, f)]
            for f in list(images):
                try:
                    mode = os.stat(os.path.join(dirpath, f)).st_mode
                except OSError:
                    images.remove(f)  # a symlink whose target is gone: nothing to read, and not a second path to anything
                    dangling.append((Path(name) / rel / f).as_posix())
                    continue
                if not stat.S_ISREG(mode):
                    images.remove(f)  # a FIFO named pic.jpg: opening it waited forever, and Ctrl-C could not stop it (was)
                    special.append((Path(name) / rel / f).as_posix())
            for f in [f for f in images if _links_into(os.path.join(dirpath, f), class_trees)]:
                images.remove(f)  # cat/x.jpg -> ../ship/0.jpg: ship's image, listed there, not a cat too
                skipped.append((Path(name) / rel / f).as_posix())
            found.extend((rel / f).as_posix() for f in images)
            unread.extend((Path(name) / rel / f).as_posix() for f in sorted(filenames) if _is_unread_photo(f))
            misnamed.extend((Path(name) / rel / f).as_posix() for f in sorted(filenames) if _is_misnamed_image(dirpath, f))
        out[name] = found
    if report:
        _warn_unread_photos(base, unread)
    _warn_misnamed_images(base, misnamed)
    _warn_dangling_links(base, dangling)
    if special:
        warn_user(f"skipped {len(special)} file(s) of {str(base)!r} named like images that are not regular files (a named pipe, a "
                  f"device or a socket; first: {special[0]!r}): nothing to read there.")
    if skipped:
        shown = ", ".join(repr(s) for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warn_user(f"skipped {len(skipped)} folder(s) or image(s) of {str(base)!r} that symlinks lead back to (a symlink "
                  f"loop, or a second path to folders or images read elsewhere): {shown}. Each image is listed once.")
    return out


def _collect_class_files(
    base: Path, files: dict[str, list[str]], order: list[int] | None = None, absent: Sequence[str] = ()
) -> tuple[list[str], list[int]]:
    """Relative paths and labels of ``files`` ({class folder: its images}, in label order).

    ``absent``: class folders of the other splits that this split lacks (named in one warning).
    """
    relpaths: list[str] = []
    labels: list[int] = []
    for k, (folder, found) in enumerate(files.items()):
        relpaths.extend(f"{folder}/{f}" for f in found)
        labels.extend([k if order is None else order[k]] * len(found))
    if absent:
        warn_user(f"{str(base)!r} has no folder for {len(absent)} class(es) of its sibling split folders (first: {absent[0]!r}); "
                  "they stay classes with no images here, so that a label means the same class in every split.")
    empty = [folder for folder, found in files.items() if not found and folder not in absent]
    if empty:
        warn_user(f"{len(empty)} class folder(s) of {str(base)!r} hold no images (first: {empty[0]!r}); they stay classes "
                  "with no images, and a fit without labels still gives such a class its share of the photos (GPUA expects "
                  "every class in the pool): remove it from the class names if the photos hold none of it.")
    return relpaths, labels


def _load_image_folder(root: Path, split: str | None, user_names: list[str] | None,
                       user_ids: list[str] | None = None) -> FileImageDataset:
    base = root
    if split is not None:
        base = root / str(split)
        if not base.is_dir() and not _subdirs(root) and any(root.glob("*-idx3-ubyte*")):
            _idx_folder_error(root, split)
        if not base.is_dir():
            raise GPUAError(
                f"image folder {str(root)!r} has no split folder {str(split)!r}; the sub-folders present are "
                f"{_subdirs(root)}."
            )
    folders, absent = _split_class_folders(root, _subdirs(root), str(split)) if split is not None else (_subdirs(base), [])
    _utf8_names(base, folders)  # before they become class names
    entries = list(os.scandir(base))  # one listing of a flat folder of a million
    files_here = sorted(e.name for e in entries if e.is_file())
    loose = [f for f in files_here if _is_image_file(base, f)]
    _warn_dangling_links(base, sorted(e.name for e in entries if e.is_symlink() and not os.path.exists(e.path) and _is_image(e.name)))
    _warn_unread_photos(base, [f for f in files_here if _is_unread_photo(f)])
    _warn_misnamed_images(base, [f for f in files_here if _is_misnamed_image(base, f)])
    splits = [f for f in folders if _is_split_name(f)] if split is None and not loose else []
    if splits and len(splits) == len(folders):
        # root/train/<class>/x.jpg (or flat root/train/x.jpg) read without split= would silently
        # make "train" and "test" classes.
        raise GPUAError(f"image folder {str(base)!r} holds the split folders {folders}; give the folder of one "
                        f"({str(base / folders[0])!r}), or (with `gpua extract`, or in Python) pass split= one of them.")
    if len(splits) > 1:  # train/, test/ and a third folder: classes named like splits are rare, a stray folder is not
        warn_user(f"image folder {str(base)!r} has folders named like splits ({', '.join(map(repr, splits))}) beside "
                  f"{len(folders) - len(splits)} other(s); each is read as a class. If they are splits, pass split= one "
                  "of them (and move the other folders out).")
    files = _walk_class_folders(base, folders, loops=_loop_links(base, entries))  # the one walk of the tree
    labeled = [f for f in folders if files[f]]
    name = root.resolve().name or str(root)
    if loose:
        if labeled:
            raise GPUAError(
                f"image folder {str(base)!r} holds both {len(loose)} loose image(s) (first: {loose[0]!r}) and class "
                f"folders (first: {labeled[0]!r}); move the loose images into class folders, or point at a folder "
                "of one kind."
            )
        # A flat folder of images: an unlabeled pool; class names, if any, come from the user.
        _utf8_names(base, loose)
        return FileImageDataset(base, loose, None, user_names or [], name, split)
    if not labeled and any(base.glob("*-idx3-ubyte*")):
        _idx_folder_error(base, split)
    if not labeled:
        raise GPUAError(
            f"image folder {str(base)!r} holds no images; put them in <folder>/<class>/ (labeled) or directly in "
            f"the folder (unlabeled). Image files end in {', '.join(decoded_extensions())}."
        )
    names, order = _folder_classnames(folders, user_names, base, user_ids, _place_of(base, root, absent))
    relpaths, labels = _collect_class_files(base, files, order, absent)
    _utf8_names(base, relpaths)
    if split is not None:
        _warn_shared_class_folders(root, _subdirs(root), str(split), files, f"image folder {str(root)!r}")
    return FileImageDataset(base, relpaths, labels, names, name, split)


def _utf8_names(base: Path, names: Sequence[str]) -> None:
    """Refuse file and folder names that are not UTF-8 (read undecodable: with surrogate escapes).

    Such a name (written under a Latin-1 / Windows-1252 locale, or unpacked from an old zip)
    opens, but as a class name it cannot be prompted, and as an image id it cannot be written
    to a results file; the error shows its bytes.
    """
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(name)
            raise GPUAError(
                f"the name {raw!r} in {str(base)!r} is not UTF-8 (saved under a Latin-1 / Windows-1252 locale, or "
                "unpacked from an old zip?), so it cannot become a class name or an image id. Rename it in UTF-8, e.g. "
                f"convmv -r -f cp1252 -t utf-8 --notest {str(base)!r}, and load the folder again."
            ) from None


def _idx_folder_error(folder: Path, split: str | None) -> None:
    """The error for a folder of idx files read as an image folder: how to read it as Fashion-MNIST."""
    one = split if split in ("train", "test") else None
    api_split = repr(one) if one else "'train' or 'test'"
    raise GPUAError(
        f"folder {str(folder)!r} holds idx files, not images; for Fashion-MNIST use load_dataset('fashion-mnist', "
        f"split={api_split}, image_root={str(folder)!r}) (gpua extract: --data fashion-mnist --split {one or 'train'} "
        f"--image-root {str(folder)})."
    )


def _nfc(name: str) -> str:
    # macOS writes file names decomposed (NFD: "e" + combining accent); class-name files and
    # code usually hold them composed (NFC). They look identical, so compare them alike.
    return unicodedata.normalize("NFC", name)


def _folder_classnames(
    folders: list[str], user_names: list[str] | None, base: Path, user_ids: list[str] | None = None,
    place: Callable[[str], Path] | None = None,
) -> tuple[list[str], list[int] | None]:
    """Class names and, when the user orders them, each folder's label.

    Folder names match class names up to Unicode normalisation; the user's spelling is kept.
    Without user names, the folder names are the class names, composed (NFC): a dataset copied
    from macOS (decomposed names) gets the same class names as the original.

    ``user_ids``: the WordNet id of each user name (a class-name file of ``n01440764 tench``
    lines): class folders named by such ids take the name of their own line
    (:func:`_names_by_folder`, as CoOp's ImageNet folders do), whatever the order of the lines.
    ``place(folder)``: the folder a class folder lies in (a sibling split's, for a class only that
    split has), for messages; default ``base``.
    """
    place = place or (lambda f: base)

    def two_folders(i: int, j: int) -> str:
        a, b = folders[i], folders[j]
        if place(a) == place(b):
            return f"class folders {a!r} and {b!r} of {str(place(a))!r} are two classes"
        return f"class folders {a!r} (in {str(place(a))!r}) and {b!r} (in {str(place(b))!r}) are two classes"

    by_form: dict[str, str] = {}
    for f in folders:
        other = by_form.setdefault(_nfc(f), f)
        if other != f:
            raise GPUAError(
                f"class folders {other!r} and {f!r} of {str(base)!r} have names that differ only in their Unicode "
                "form (composed vs decomposed accents); rename one of them."
            )
    if user_names is None:
        names = [_nfc(f) for f in folders]
        _distinct_prompts(names, two_folders)
        return names, None
    if user_ids is not None and all(_WNID.match(f) for f in folders):
        return user_names, _wnid_labels(folders, user_names, user_ids, base, place)
    if set(user_names) == set(folders):
        index = {c: i for i, c in enumerate(user_names)}
        return user_names, [index[f] for f in folders]
    index = {_nfc(c): i for i, c in enumerate(user_names)}
    if len(index) == len(user_names) and set(index) == set(by_form):
        return user_names, [index[_nfc(f)] for f in folders]
    # Up to case, '_' versus space and white space too (the spellings that give one prompt):
    # was "class folder 'Cat' is not in classnames" for a folder Cat/ and the class cat.
    keyed = {_prompt_key(c): i for i, c in enumerate(user_names)}
    folder_keys = [_prompt_key(f) for f in folders]
    if len(keyed) == len(user_names) and len(set(folder_keys)) == len(folders) and set(keyed) == set(folder_keys):
        return user_names, [keyed[k] for k in folder_keys]
    if all(_WNID.match(f) for f in folders):
        names = _match_count(user_names, folders, base)
        if names == get_classnames("imagenet"):  # the shipped list is in sorted-id order by construction
            return names, None
        # Plain names for WordNet-id folders can only pair by position; a list in another order
        # scored every photo against another class without a word (was).
        shown = ", ".join(f"{f} -> {c!r}" for f, c in zip(folders[:3], names[:3])) + (", ..." if len(folders) > 3 else "")
        warn_user(f"the class folders of {str(base)!r} are WordNet ids and the class names are plain names, so they are "
                  f"paired by sorted-folder position: {shown}. If that is not each folder's class, the labels and every "
                  "score are wrong; write the names as 'n02121808 cat' lines (the folder's id, then its name) to pair "
                  "them by id.")
        return names, None
    missing = [f for f, k in zip(folders, folder_keys) if _nfc(f) not in index and k not in keyed]
    if missing:
        _unnamed_folder_error(missing, folders, index, place)
    present = set(folder_keys)
    extra = [c for c in user_names if _nfc(c) not in by_form and _prompt_key(c) not in present]
    if extra:
        if _never_read(extra[0]) and (base / extra[0]).is_dir():
            raise GPUAError(
                f"classnames names {extra[0]!r}, a folder of {str(base)!r} that is never read as a class: hidden folders "
                "(starting with '.') and NAS or Windows metadata folders ('@eaDir', '#recycle'...) hold no class's photos. "
                "Rename the folder, and its class name, to a plain name (no leading '.', '@', '#' or '$'), or drop it "
                "from the class names."
            )
        raise GPUAError(f"classnames names {extra[0]!r}, which is not a class folder of {str(base)!r}; create an (empty) "
                        f"folder {extra[0]!r} there to keep the class, or drop it from the class names.")
    raise GPUAError(
        f"classnames holds names, or {str(base)!r} class folders, that differ only in case, '_' versus space or "
        f"their Unicode form (composed vs decomposed accents), so each name cannot name one class folder; give each "
        "name once, and rename folders that differ only so."
    )


def _wnid_labels(folders: list[str], names: list[str], ids: list[str], base: Path, place: Callable[[str], Path]) -> list[int]:
    """The label of each WordNet-id class folder: the position of its own line among the user's
    ``names`` (``ids``: each line's id, unique); a folder without a line, or a line without a
    folder, is refused rather than assigned by position."""
    present = set(folders)
    if not set(ids) & present:
        raise GPUAError(
            f"the WordNet ids of classnames (first: {ids[0]!r}) name none of the class folders of {str(base)!r} (first: "
            f"{folders[0]!r}); fix the ids, or remove them to name the folders in sorted-folder order."
        )
    found = _names_by_folder(folders, dict(zip(ids, names)), place, "classnames")
    extra = next((k for k, wnid in enumerate(ids) if wnid not in present), None)
    if extra is not None:
        raise GPUAError(f"classnames names the folder {ids[extra]!r} ({names[extra]!r}), which is not a class folder of "
                        f"{str(base)!r}; create an (empty) folder {ids[extra]!r} there to keep the class, or drop its line.")
    label = {name: k for k, name in enumerate(names)}  # names are unique (checked when read)
    return [label[name] for name in found]


def _unnamed_folder_error(missing: list[str], folders: list[str], index: dict[str, int], place: Callable[[str], Path]) -> None:
    """Refuse class folders ``missing`` from the user's class names (``index``: {NFC name: label}),
    saying why where a name cannot be written (white space at its ends, a comma)."""
    f = missing[0]
    where = str(place(f))
    if clean_edges(f) != f:
        # Every class-name format reads names without edge white space: no file can name this folder.
        more = sum(clean_edges(m) != m for m in missing) - 1
        raise GPUAError(f"class folder {f!r} of {where!r} has white space at the start or end of its name, which class "
                        f"names are read without, so no class name can match it; rename the folder to {clean_edges(f)!r}"
                        + (f" (and the {more} other folder(s) named so)." if more else "."))
    words = [w for w in (clean_edges(w) for w in f.split(",")) if w]
    if len(words) > 1 and _nfc(words[0]) in index:
        raise GPUAError(
            f"class folder {f!r} of {where!r} is not in classnames, which has the class {words[0]!r}: a class-name line "
            f"{f!r} is the class {words[0]!r} prompted by the words {', '.join(map(repr, words[:-1]))} and {words[-1]!r}. To name this folder "
            f"write the line '{f}: {', '.join(words)}' (the folder's name, ':', then its prompt words)."
        )
    raise GPUAError(
        f"class folder {f!r} of {where!r} is not in classnames; classnames must be the class-folder "
        f"names (in any order). Folders: {folders[:5]}{'...' if len(folders) > 5 else ''}."
        + (" If they are not classes (dates, albums, events), the photos are unlabeled: move them into one flat "
           "folder, which is read as unlabeled photos." if len(missing) == len(folders) else "")
    )
