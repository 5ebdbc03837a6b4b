"""Class names of the CoOp benchmark datasets and of CIFAR, and class-name files.

The lists ship as text files beside this module (one name per line, in label order); their
sources are in ``SOURCES.md`` there. For the CoOp datasets the names are those CoOp stores in its
split files (``split_zhou_<Dataset>.json``), underscores included: CoOp, and
:func:`gpua.data.prompts.build_text_prototypes`, replace ``_`` with a space only when writing the
prompt. ImageNet's are CLIP's cleaned names, except that the two pairs CLIP names identically get
their WordNet lemma (index 744 ``"projectile"``, 836 ``"sunglass"``), because gpua refuses
duplicate class names.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from importlib import resources
from typing import Sequence

from ..._errors import GPUAError
from ..._validation import check_classnames
from .._registry import COOP_DATASETS, KNOWN_DATASETS, canonical_name
from .._textfiles import read_string_list

__all__ = ["COOP_DATASETS", "KNOWN_DATASETS", "get_classnames", "load_classnames", "resolve_classnames"]

# CoOp's ImageNet classnames.txt prefixes every line with the WordNet id: "n01440764 tench".
_WNID_LINE = re.compile(r"^n\d{8}\s+(\S.*)$")


@lru_cache(maxsize=None)
def _read_shipped(name: str) -> tuple[str, ...]:
    text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def get_classnames(dataset_name: str) -> list[str]:
    """The class names of a benchmark dataset, in label order.

    Parameters
    ----------
    dataset_name : str
        One of :data:`KNOWN_DATASETS` (``imagenet``, ``caltech101``, ``oxford_pets``,
        ``stanford_cars``, ``oxford_flowers``, ``food101``, ``fgvc_aircraft``, ``sun397``,
        ``dtd``, ``eurosat``, ``ucf101``, ``cifar10``, ``cifar100``) or an alias such as CoOp's
        class names (``"OxfordPets"``, ``"DescribableTextures"``) or ``"flowers102"``; case,
        ``-`` and ``_`` are ignored.

    Returns
    -------
    list of str
        A fresh list (safe to modify).

    Raises
    ------
    GPUAError
        For an unknown name; the message lists the known ones.
    """
    canon = canonical_name(dataset_name)
    if canon is None:
        raise GPUAError(
            f"no class-name list is shipped for dataset {dataset_name!r}; known: {', '.join(KNOWN_DATASETS)}. "
            "For another dataset pass a file to load_classnames, or let load_dataset read them from the data."
        )
    return list(_read_shipped(canon))


def load_classnames(path: str | os.PathLike) -> list[str]:
    """Read class names from a file, in label order.

    Parameters
    ----------
    path : str or path-like
        A text file with one name per line (blank lines skipped; CoOp's ImageNet
        ``classnames.txt`` lines ``"n01440764 tench"`` lose their WordNet id when every line has
        one), a JSON list of strings, or a JSON object keyed by class index (Flowers-102's
        ``cat_to_name.json``).

    Raises
    ------
    GPUAError
        When the file is missing, empty or malformed, or names a class twice.
    """
    names = read_string_list(path, "class names", index_dict=True)
    matches = [_WNID_LINE.match(n) for n in names]
    if all(matches):
        names = [m.group(1).strip() for m in matches]  # type: ignore[union-attr]
    try:
        check_classnames(names, len(names))
    except GPUAError as exc:
        raise GPUAError(f"class-name file {str(path)!r}: {exc}") from None
    return names


def resolve_classnames(classnames: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    """Turn a user's ``classnames=`` argument into a checked list (or None).

    A list is used as given; a path to an existing file is read with :func:`load_classnames`; any
    other string is taken as a dataset name for :func:`get_classnames`.
    """
    if classnames is None:
        return None
    if isinstance(classnames, (str, os.PathLike)):
        if os.path.isfile(classnames):
            return load_classnames(classnames)
        if canonical_name(str(classnames)) is not None:
            return get_classnames(str(classnames))
        raise GPUAError(
            f"classnames={str(classnames)!r} is neither a file nor a known dataset ({', '.join(KNOWN_DATASETS)}); "
            "pass a list of names, a class-name file, or a dataset name."
        )
    names = [str(c) for c in classnames]
    if any(not n.strip() for n in names):
        raise GPUAError("classnames holds an empty name; every class needs a non-empty name.")
    return check_classnames(names, len(names))
