"""What gpua keeps in its cache folder, and cleaning it (``gpua cache``).

The cache (``cache_dir``, else ``$GPUA_CACHE_DIR``, else the user cache folder:
:func:`gpua.encoders.cache_dir`) holds three kinds of things:

- **derived model files** (``onnx/``, ``offline/``, ``semantic-lite0/``): graphs cut or exported
  from local weights, re-made from them on the next use (:mod:`gpua.encoders._derived`). Each
  is ``current``, ``stale`` (a source changed or is gone: no run will read it again) or
  ``unrecorded`` (written by a release before the records; re-made on use if still needed).
- **feature caches** (``classify/``, ``benchmark/``, ``demo/``, ``devsets/``): the features the
  commands extract on the way, each an ``.npz`` and, while a run is resumable, its ``.parts``
  folder; re-extracted on the next use, which takes time but loses nothing.
- **downloads** (``hf/``, ``open_clip/``, ``timm/``): weights fetched from a hub. Never removed
  here: a machine without network access cannot fetch them again.

:func:`clean_cache` removes the stale and unrecorded derived files always, and the feature
caches only when asked (``features=True``, optionally only those unused for ``older_than_days``),
skipping any a running extraction holds. Nothing else is touched: not the downloads, not a file
in these folders that gpua did not write (a derived file by its name, a feature file by its
keys, a parts folder by its manifest), nor anything else in the cache folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ._errors import GPUAError

__all__ = ["CacheEntry", "DOWNLOAD_FOLDERS", "FEATURE_FOLDERS", "cache_entries", "clean_cache"]

#: Cache sub-folders of feature files that the commands extract on the way.
FEATURE_FOLDERS = ("classify", "benchmark", "demo", "devsets")
#: Cache sub-folders of weights downloaded from a hub (never removed by :func:`clean_cache`).
DOWNLOAD_FOLDERS = ("hf", "open_clip", "timm")
_DAY_S = 24 * 3600


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache.

    Attributes
    ----------
    path : Path
        The file or folder.
    kind : {"derived", "features", "download", "other"}
    state : str
        ``derived``: ``current``, ``stale`` or ``unrecorded``; ``features``: ``complete`` or
        ``partial`` (a resumable run's parts without their output); ``download`` and ``other``:
        ``kept``.
    bytes : int
        Size on disk (a folder's files summed; a feature cache with its parts).
    why : str
        The state in words.
    mtime : float
        Last modification (seconds since the epoch): a feature cache is rewritten by each
        extraction into it, not by a run that reuses it.
    """

    path: Path
    kind: str
    state: str
    bytes: int
    why: str
    mtime: float

    @property
    def removable(self) -> bool:
        """Whether :func:`clean_cache` removes it without being asked for feature caches."""
        return self.kind == "derived" and self.state != "current"


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _visible(folder: Path) -> list[Path]:
    """``folder``'s entries, without hidden ones (locks, temp files) and records."""
    from .encoders._derived import RECORD_SUFFIX

    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / n for n in names if not n.startswith(".") and not n.endswith(RECORD_SUFFIX)]


#: The name of a derived file (:mod:`gpua.encoders._derived`): a stem, a 16-digit key, the format's ending.
_DERIVED_NAME = re.compile(r"^.+-[0-9a-f]{16}\.(onnx|npy)$")


def _other(p: Path) -> CacheEntry:
    return CacheEntry(p, "other", "kept", _size(p), "not gpua's (not removed)", _mtime(p))


def _derived_entries(folder: Path) -> Iterator[CacheEntry]:
    from .encoders._derived import derived_state

    for p in _visible(folder):
        if not (p.is_file() and not p.is_symlink() and _DERIVED_NAME.match(p.name)):
            yield _other(p)  # a file of a name gpua never gives is someone else's: never removed
            continue
        state, why = derived_state(p)
        yield CacheEntry(p, "derived", state, _size(p), why, _mtime(p))


def _feature_entries(folder: Path) -> Iterator[CacheEntry]:
    """The feature files in ``folder`` and their parts folders (:class:`gpua.extract._Parts`); only
    what gpua writes there counts (a feature file by its keys, parts by their manifest)."""
    from ._atomic import _is_feature_file
    from .extract import _Parts

    entries = _visible(folder)
    outputs = {p for p in entries if p.is_file() and not p.is_symlink() and _is_feature_file(p)}
    for p in entries:
        parts = _Parts(p if p.name.endswith(".parts") else p.with_name(p.name + ".parts"))
        if p in outputs:
            size = _size(p) + (_size(parts.dir) if parts.is_ours() else 0)
            yield CacheEntry(p, "features", "complete", size, "re-extracted on its next use", _mtime(p))
        elif p.name.endswith(".parts") and parts.is_ours():
            if p.with_name(p.name[: -len(".parts")]) not in outputs:
                yield CacheEntry(p, "features", "partial", _size(p), "an interrupted extraction's parts (a rerun resumes from them)", _mtime(p))
        else:
            yield _other(p)


def _root(cache_dir) -> Path:
    from .encoders import cache_dir as cache_root

    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise GPUAError(f"cache_dir {str(root)!r} is a file, not gpua's cache folder; pass the cache folder (or none: "
                        "$GPUA_CACHE_DIR, else the user cache).")
    return root


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Everything in the cache folder, each with its kind, state and size.

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`gpua.encoders.cache_dir` (``$GPUA_CACHE_DIR``, else the user cache).

    Returns
    -------
    list of CacheEntry
        Derived model files and feature caches one by one; each download folder and each other
        top-level entry as one.
    """
    from .encoders._derived import DERIVED_FOLDERS

    root = _root(cache_dir)
    out: list[CacheEntry] = []
    for top in _visible(root):
        if top.is_dir() and not top.is_symlink() and top.name in DERIVED_FOLDERS:
            out.extend(_derived_entries(top))
        elif top.is_dir() and not top.is_symlink() and top.name in FEATURE_FOLDERS:
            out.extend(_feature_entries(top))
        elif top.name in DOWNLOAD_FOLDERS:
            out.append(CacheEntry(top, "download", "kept", _size(top), "downloaded weights (not removed: they may not be fetched again)", _mtime(top)))
        else:
            out.append(_other(top))
    return out


def _remove_features(entry: CacheEntry) -> bool:
    """Remove a feature cache (its output and parts) unless a running extraction holds it."""
    from ._atomic import _is_feature_file
    from .extract import _OutputLock, _Parts

    out = entry.path if entry.state == "complete" else entry.path.with_name(entry.path.name[: -len(".parts")])
    with _OutputLock(out, block=False) as lock:
        if lock.busy:
            return False
        parts = _Parts.of(out)
        if parts.is_ours():
            parts.remove()
        if out.is_file() and not out.is_symlink() and _is_feature_file(out):
            out.unlink()
    return True


def clean_cache(cache_dir: str | os.PathLike | None = None, *, features: bool = False, older_than_days: float | None = None,
                dry_run: bool = False) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove what the cache holds and no run needs: stale and unrecorded derived model files,
    and, when asked, feature caches.

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`gpua.encoders.cache_dir`.
    features : bool
        Also remove feature caches (complete and partial), which the next run re-extracts.
    older_than_days : float, optional
        With ``features``: only those not written for this many days.
    dry_run : bool
        Remove nothing; return what would go.

    Returns
    -------
    removed : list of CacheEntry
        What was removed (with ``dry_run``, what would be).
    skipped : list of CacheEntry
        Feature caches that a running extraction holds, left as they are.
    """
    if older_than_days is not None:
        from ._validation import check_number

        older_than_days = check_number(older_than_days, "older_than_days", low=0, fix="days, e.g. 30")
        if not features:
            raise GPUAError("older_than_days applies to feature caches only; pass features=True (--features) with it.")
    cutoff = None if older_than_days is None else time.time() - older_than_days * _DAY_S
    removed: list[CacheEntry] = []
    skipped: list[CacheEntry] = []
    from .encoders._derived import record_path

    for entry in cache_entries(cache_dir):
        if entry.removable:
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    record_path(entry.path).unlink()
            removed.append(entry)
        elif entry.kind == "features" and features and (cutoff is None or entry.mtime < cutoff):
            if dry_run or _remove_features(entry):
                removed.append(entry)
            else:
                skipped.append(entry)
    return removed, skipped
