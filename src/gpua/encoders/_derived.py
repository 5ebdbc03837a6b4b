"""Model files that gpua derives from a user's local files, and their records.

The encoders cache what is slow to make and cheap to keep: a graph cut from an ONNX file
(``<cache>/onnx``), an EfficientNet-Lite network exported to ONNX (``<cache>/offline``), the
sentence embeddings of the ImageNet names (``<cache>/semantic-lite0``). Each is keyed by the
:func:`~gpua.encoders._registry.file_fingerprint` of its sources, so a source that changes
(a package reinstalled, a fine-tune saved over a checkpoint) gets a new file, and nothing said
the old one could go: every reinstall of the offline weights left another 85 MB graph behind.

:func:`derived_file` writes such a file atomically with a record beside it
(``<file>.gpua-source.json``: the recipe, i.e. what was derived from which path, and the
sources' fingerprints), then removes the files of the same recipe that older fingerprints
made: one file per recipe stays. :func:`derived_state` reads a record back for ``gpua cache``:
``current`` while every source keeps its fingerprint, ``stale`` once one changed or is gone,
``unrecorded`` for a file written before records existed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._atomic import atomic_path, atomic_write_text
from ._registry import file_fingerprint

__all__ = ["DERIVED_FOLDERS", "RECORD_SUFFIX", "derived_file", "derived_state", "record_path"]

#: The cache's sub-folders that hold derived model files (each re-made from its sources on use).
DERIVED_FOLDERS = ("onnx", "offline", "semantic-lite0")
#: What a derived file's record adds to its name.
RECORD_SUFFIX = ".gpua-source.json"
_FORMAT = "gpua-derived/1"


def record_path(target: str | os.PathLike) -> Path:
    """The record of derived file ``target``: ``<target>.gpua-source.json`` beside it."""
    target = Path(target)
    return target.with_name(target.name + RECORD_SUFFIX)


def _read_record(record: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


@contextlib.contextmanager
def derived_file(target: str | os.PathLike, recipe: Any, fingerprints: Sequence[dict[str, Any]], suffix: str = "") -> Iterator[Path]:
    """Write derived file ``target`` atomically (:func:`~gpua._atomic.atomic_path`), then record it
    and remove what the same recipe derived from earlier versions of its sources.

    Parameters
    ----------
    target : path
        The derived file; its name holds a key of ``recipe`` and ``fingerprints``.
    recipe : JSON-able
        What was derived from what, without the sources' versions (``[source path, input node,
        output nodes]``): two files of one recipe differ only by the sources' fingerprints, and
        the newer one supersedes the other.
    fingerprints : sequence of dict
        :func:`~gpua.encoders._registry.file_fingerprint` of each source, as the key used them.
    suffix : str
        The temp file's ending, for writers that insist on one.

    Yields
    ------
    Path
        The temp path to write.
    """
    target = Path(target)
    with atomic_path(target, suffix=suffix) as tmp:
        yield tmp
    recipe = json.loads(json.dumps(recipe))  # as it reads back (tuples become lists), for the comparison below
    atomic_write_text(record_path(target), json.dumps({"format": _FORMAT, "recipe": recipe, "sources": list(fingerprints)}, indent=1))
    for other in target.parent.glob("*" + RECORD_SUFFIX):
        superseded = other.with_name(other.name[: -len(RECORD_SUFFIX)])
        if superseded == target or (_read_record(other) or {}).get("recipe") != recipe:
            continue
        # The file first: a record without its file is nothing, a file without its record is
        # an unrecorded one (that `gpua cache clean` removes), never a file taken for current.
        with contextlib.suppress(FileNotFoundError):
            superseded.unlink()
        with contextlib.suppress(FileNotFoundError):
            other.unlink()


def derived_state(path: str | os.PathLike) -> tuple[str, str]:
    """Whether derived file ``path`` is still the one its sources would make.

    Returns
    -------
    state : {"current", "stale", "unrecorded"}
    why : str
        In words: the sources, or the one that changed or is gone.
    """
    record = _read_record(record_path(path))
    if record is None:
        return "unrecorded", "written before gpua recorded the sources of what it derives"
    sources = [s for s in record.get("sources") or () if isinstance(s, dict)]
    for was in sources:
        where = was.get("path")
        if not where or not Path(where).exists():
            return "stale", f"its source {where!r} is gone"
        if file_fingerprint(where) != was:
            return "stale", f"its source {where!r} changed since"
    return "current", "from " + ", ".join(repr(s.get("path")) for s in sources)
