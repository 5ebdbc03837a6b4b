"""Model files that gpua derives from a user's local files, and their records.

The encoders cache what is slow to make and cheap to keep: a graph cut from an ONNX file
(``<cache>/onnx``), an EfficientNet-Lite network exported to ONNX (``<cache>/offline``), the
sentence embeddings of the ImageNet names (``<cache>/semantic-lite0``). Each is keyed by the
:func:`~gpua.encoders._registry.file_fingerprint` of its sources, so a source that changes
(a package reinstalled, a fine-tune saved over a checkpoint) gets a new file, and nothing said
the old one could go: every reinstall of the offline weights left another 85 MB graph behind.

:func:`derived_file` writes such a file atomically with a record beside it
(``<file>.gpua-source.json``: the recipe, i.e. what was derived from which path, the machine,
and the sources' fingerprints), then removes the files of the same recipe that older
fingerprints made: one file per recipe and machine stays. A machine is a host name and a pid
namespace (:data:`gpua._atomic._HOST`): a cache shared over the network, where one path holds
other files on each machine (or in each container), keeps each one's file; another machine's
file of the same recipe is removed once unused for :data:`OTHER_MACHINE_UNUSED_S` (a container
gets a new name at each start, and its files would otherwise stay for ever). Each use of a file
(:func:`adopt`) touches its record, so the record's age is the time since the file was last
used. :func:`derived_state` reads a record back for ``gpua cache``: ``current`` while every
source keeps its fingerprint, ``stale`` once one changed or is gone (or, another machine's,
once unused that long, or the file no longer has the size it was written with),
``elsewhere`` for another machine's file in use, ``unrecorded`` for a file written before
records existed.

A derived file found damaged (:func:`damage`: cut short since it was written; or the reader's
own check failed) is removed with its record by :func:`discard`, with a warning naming it, and
its maker makes it again: was, a truncated cut graph gave onnxruntime's InvalidProtobuf
traceback, or an "ONNX file ... could not be read; pass an .onnx model file" for
``offline:semantic-lite0``, which names no file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._atomic import _HOST, _NAME_MAX, atomic_path, atomic_write_text
from .._errors import GPUAError, warn_user
from ._registry import file_fingerprint

__all__ = ["CACHE_TAG", "DERIVED_FOLDERS", "OTHER_MACHINE_UNUSED_S", "RECORD_SUFFIX", "adopt", "damage", "derived_file",
           "derived_name", "derived_state", "discard", "mark_cache", "record_path"]

#: The cache's sub-folders that hold derived model files (each re-made from its sources on use).
DERIVED_FOLDERS = ("onnx", "offline", "semantic-lite0")
#: What a derived file's record adds to its name.
RECORD_SUFFIX = ".gpua-source.json"
#: Another machine's file of a recipe is superseded, and `gpua cache clean` removes it, once its
#: record has not been touched (used) for this long.
OTHER_MACHINE_UNUSED_S = 7 * 24 * 3600
_FORMAT = "gpua-derived/1"


def derived_name(stem: str, key: str, suffix: str) -> str:
    """``<stem>-<key><suffix>``, the stem shortened (whole characters) so that the record's name,
    ``RECORD_SUFFIX`` longer, still fits in 255 bytes (was: a model file of a 220-byte stem cut,
    then failed on its record's name)."""
    tail = f"-{key}{suffix}"
    room = _NAME_MAX - len(os.fsencode(tail + RECORD_SUFFIX))
    stem = stem.lstrip(".") or "model"  # a hidden name would hide the file from `gpua cache` too
    raw = os.fsencode(stem)
    if len(raw) > room:
        stem = raw[:room].decode("utf-8", "ignore") or "model"
    return stem + tail


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


#: The file that marks a folder as gpua's cache: ``gpua cache clean`` cleans a folder other than
#: the default cache only when it holds one. Not the Cache Directory Tagging Specification's
#: ``CACHEDIR.TAG``: backup tools skip a folder holding that, and a ``--cache-dir`` pointed at a
#: project folder would have dropped the project from its backups.
CACHE_TAG = ".gpua-cache"
CACHE_TAG_TEXT = "This folder is a gpua cache: models derived from local weights, and extracted features.\n"


def mark_cache(root: str | os.PathLike) -> None:
    """Tag ``root`` as gpua's cache folder (:data:`CACHE_TAG`), once; best effort (a read-only
    cache is used as it is)."""
    tag = Path(root) / CACHE_TAG
    if tag.is_file():
        return
    with contextlib.suppress(OSError, GPUAError):
        tag.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tag, CACHE_TAG_TEXT)


def _record_text(recipe: Any, fingerprints: Sequence[dict[str, Any]], size: int | None = None) -> str:
    record = {"format": _FORMAT, "recipe": recipe, "machine": _HOST, "host": socket.gethostname(), "sources": list(fingerprints)}
    if size is not None:  # the size the file was written with: a file cut short since is told by it (see damage)
        record["bytes"] = size
    return json.dumps(record, indent=1)


def damage(target: str | os.PathLike) -> str | None:
    """Why derived file ``target`` is damaged, in words, or None when the cheap checks pass.

    Only what costs no read of the file: it is empty, or its size differs from the one its
    record says it was written with (a copy or a disk cut short; records of earlier releases
    say none). The readers check the rest by loading it, and :func:`discard` what fails.
    """
    target = Path(target)
    try:
        size = target.stat().st_size
    except OSError:
        return None  # gone: nothing to discard, the maker makes it
    if size == 0:
        return "it is empty"
    written = (_read_record(record_path(target)) or {}).get("bytes")
    if isinstance(written, int) and not isinstance(written, bool) and written != size:
        return f"it has {size} bytes, not the {written} it was written with"
    return None


def discard(target: str | os.PathLike, why: str) -> None:
    """Remove damaged derived file ``target`` and its record, with a warning naming it and ``why``;
    its maker then makes it again.

    A file that will not go (another user's, in a shared cache) stays: the new one replaces it
    atomically when it is made.
    """
    target = Path(target)
    warn_user(f"gpua's derived file {str(target)!r} is damaged ({why}); it is removed and made again.")
    for path in (target, record_path(target)):  # the file first, as in derived_file
        with contextlib.suppress(OSError):  # gone already, or not ours: the new file is renamed over it
            path.unlink()


def _unused_for(record: Path) -> float:
    """Seconds since the file of ``record`` was last made or used (the record's modification time)."""
    try:
        return time.time() - record.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def derived_file(target: str | os.PathLike, recipe: Any, fingerprints: Sequence[dict[str, Any]], suffix: str = "") -> Iterator[Path]:
    """Write derived file ``target`` atomically (:func:`~gpua._atomic.atomic_path`) with its
    record, then remove what the same recipe derived on this machine from earlier versions of its
    sources.

    Parameters
    ----------
    target : path
        The derived file, in a sub-folder of the cache folder; its name holds a key of
        ``recipe`` and ``fingerprints``.
    recipe : JSON-able
        What was derived from what, without the sources' versions (``[source path, input node,
        output nodes]``): two files of one recipe and one machine differ only by the sources'
        fingerprints, and the newer one supersedes the other (another machine's, once unused
        for :data:`OTHER_MACHINE_UNUSED_S`).
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
    recipe = json.loads(json.dumps(recipe))  # as it reads back (tuples become lists), for the comparison below
    with atomic_path(target, suffix=suffix) as tmp:
        yield tmp
        # The record first, then the file's rename: a file of ours is never seen without its
        # record (`gpua cache clean` removes unrecorded files, and one between the two steps
        # would have been taken for an earlier release's).
        atomic_write_text(record_path(target), _record_text(recipe, fingerprints, Path(tmp).stat().st_size))
    mark_cache(target.parent.parent)
    for other in target.parent.glob("*" + RECORD_SUFFIX):
        superseded = other.with_name(other.name[: -len(RECORD_SUFFIX)])
        was = _read_record(other) or {}
        if superseded == target or was.get("recipe") != recipe:
            continue
        if was.get("machine", _HOST) != _HOST and _unused_for(other) < OTHER_MACHINE_UNUSED_S:
            continue  # another machine's file, in use there
        # The file first: a record without its file is nothing, a file without its record is
        # an unrecorded one, never a file taken for current.
        # Removing is tidying: a file that will not go (another user's, in a shared cache) stays.
        for path in (superseded, other):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                warn_user(f"could not remove {str(path)!r}, made from an earlier version of {recipe[0] if isinstance(recipe, list) else recipe!r} "
                          f"({exc.strerror or exc}); it takes space until `gpua cache clean` or its owner removes it.")
                break


def adopt(target: str | os.PathLike, recipe: Any, fingerprints: Sequence[dict[str, Any]]) -> None:
    """A use of derived file ``target``, found in the cache under the key of ``fingerprints``:
    touch its record (its age is the time since the last use), or write the record an earlier
    release did not (the key match proves what the file was made from). Best effort: a
    read-only cache is used as it is."""
    record = record_path(target)
    was = _read_record(record)
    with contextlib.suppress(OSError, GPUAError):
        if was is not None and was.get("machine") == _HOST:
            os.utime(record)
        else:  # none, an unreadable one, or another machine's: the file is this machine's too now
            atomic_write_text(record, _record_text(json.loads(json.dumps(recipe)), fingerprints))
    mark_cache(Path(target).parent.parent)


def derived_state(path: str | os.PathLike) -> tuple[str, str]:
    """Whether derived file ``path`` is still the one its sources would make.

    Returns
    -------
    state : {"current", "stale", "unrecorded", "elsewhere"}
        ``elsewhere``: another machine's file in use, whose sources cannot be checked here;
        ``stale`` also for a file whose size is no longer the one it was written with
        (:func:`damage`).
    why : str
        In words: the sources, or the one that changed or is gone.
    """
    record = _read_record(record_path(path))
    if record is None:
        return "unrecorded", "written before gpua recorded the sources of what it derives, and not used since"
    if record.get("machine", _HOST) != _HOST:
        days = _unused_for(record_path(path)) / 86400
        where = f"made on {record.get('host')!r}"
        if days * 86400 >= OTHER_MACHINE_UNUSED_S:
            return "stale", f"{where} and unused for {days:.0f} days"
        return "elsewhere", f"{where} (another machine or container), whose files this one cannot check; used {days:.1f} days ago"
    damaged = damage(path)
    if damaged:  # was: listed as current, while every use failed on it
        return "stale", f"damaged: {damaged}; made again at its next use"
    sources = [s for s in record.get("sources") or () if isinstance(s, dict)]
    for was in sources:
        where = was.get("path")
        if not where or not Path(where).exists():
            return "stale", f"its source {where!r} is gone"
        if file_fingerprint(where) != was:
            return "stale", f"its source {where!r} changed since"
    return "current", "from " + ", ".join(repr(s.get("path")) for s in sources)
