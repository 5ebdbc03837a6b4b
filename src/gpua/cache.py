"""What gpua keeps in its cache folder, and cleaning it (``gpua cache``).

The cache (``cache_dir``, else ``$GPUA_CACHE_DIR``, else the user cache folder:
:func:`gpua.encoders.cache_dir`) holds three kinds of things:

- **derived model files** (``onnx/``, ``offline/``, ``semantic-lite0/``): graphs cut or exported
  from local weights, re-made from them on the next use (:mod:`gpua.encoders._derived`). Each
  is ``current``, ``stale`` (a source changed or is gone), ``unrecorded`` (written by a release
  before the records and not used since: a run that uses it records it) or ``elsewhere``
  (another machine's or container's, sharing the cache, in use there).
- **feature caches** (``classify/``, ``benchmark/``, ``demo/``): the features those commands
  extract on the way, each an ``.npz``, and the ``.parts`` folders of extractions into them
  (listed apart: a resumable run's work); re-extracted on the next use, which takes time but
  loses nothing.
- **downloads** (``hf/``, ``open_clip/``, ``timm/``): weights fetched from a hub. Never removed
  here: a machine without network access cannot fetch them again.

:func:`clean_cache` removes the stale derived files (another machine's once unused for a week),
records without their file and temp files that killed writers left; unrecorded derived files
(``unrecorded=True``) and feature caches (``features=True``, optionally only those not written
for ``older_than_days``) only when asked, skipping any a running gpua writes. It cleans the
default cache folder, or another that gpua tagged as its cache
(:data:`~gpua.encoders._derived.CACHE_TAG`, written when gpua writes a model file or features
there), and only what gpua writes there: a derived file by its name and format, a feature file
by its name and its extraction's cache key, a parts folder by its manifest. Nothing else is
touched.
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
from ._integrity import file_head

__all__ = ["CacheEntry", "DOWNLOAD_FOLDERS", "FEATURE_FOLDERS", "cache_entries", "clean_cache", "feature_cache_used"]

#: Cache sub-folders of the feature files that the commands extract on the way (and re-extract
#: when missing). ``benchmarks/devsets.py``'s ``devsets/`` is not one: it never re-extracts.
FEATURE_FOLDERS = ("classify", "benchmark", "demo")
#: Cache sub-folders of weights downloaded from a hub (never removed by :func:`clean_cache`).
DOWNLOAD_FOLDERS = ("hf", "open_clip", "timm")
_DAY_S = 24 * 3600
#: An unrecorded derived file this recent may be an earlier release's write in progress: kept.
_UNRECORDED_GRACE_S = 600
#: The name of a derived file (:mod:`gpua.encoders._derived`): a stem, a 16-digit key, the format's ending.
_DERIVED_NAME = re.compile(r"^.+-[0-9a-f]{16}\.(onnx|npy)$")
#: The name of a feature cache (:func:`gpua.classify.feature_cache_path`): ``<name>__<vfm>__<vlm>.npz``,
#: or a long one shortened to 200 bytes and a 16-digit hash.
_FEATURE_NAME = re.compile(r"^(.+__.+__.+|.+-[0-9a-f]{16})\.npz$")


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache.

    Attributes
    ----------
    path : Path
        The file or folder.
    kind : {"derived", "features", "download", "temp", "other"}
    state : str
        ``derived``: ``current``, ``stale``, ``unrecorded``, ``elsewhere`` or ``orphan`` (a
        record whose file is gone); ``features``: ``complete``, ``partial`` (a resumable run's
        parts without their output) or ``busy`` (a running extraction holds it); ``temp``:
        ``stale`` (its writer is gone) or ``busy``; ``download`` and ``other``: ``kept``.
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
        """Whether :func:`clean_cache` removes it unasked: a stale derived file, a record without its
        file, a killed writer's temp file (unrecorded files and feature caches go when asked)."""
        return (self.kind == "derived" and self.state in ("stale", "orphan")) or (self.kind, self.state) == ("temp", "stale")


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


def _names(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _temp_entries(folder: Path, temps: list[tuple[Path, bool]] | None = None) -> Iterator[CacheEntry]:
    """``folder``'s gpua temp files (``temps``: :func:`gpua._atomic.gpua_temps` of it, when already listed)."""
    from ._atomic import gpua_temps

    for path, stale in gpua_temps(folder) if temps is None else temps:
        why = "left by a writer that was killed" if stale else "a running gpua is writing it"
        yield CacheEntry(path, "temp", "stale" if stale else "busy", _size(path), why, _mtime(path))


def _other(p: Path) -> CacheEntry:
    return CacheEntry(p, "other", "kept", _size(p), "not gpua's (not removed)", _mtime(p))


def _looks_derived(p: Path) -> bool:
    """A file of a derived file's name and format: an .npy array, or an ONNX model (a protobuf
    whose first field, ir_version, is a varint: byte 0x08)."""
    if not (p.is_file() and not p.is_symlink() and _DERIVED_NAME.match(p.name)):
        return False
    head = file_head(p, 6)
    return head == b"\x93NUMPY" if p.suffix == ".npy" else head[:1] == b"\x08"


def _derived_entries(folder: Path, now: float) -> Iterator[CacheEntry]:
    from ._atomic import gpua_temps
    from .encoders._derived import RECORD_SUFFIX, derived_state

    names = _names(folder)
    present = set(names)
    temps = gpua_temps(folder)
    for name in names:
        p = folder / name
        if name.startswith("."):
            continue  # temp files (listed apart) and hidden files, which gpua never writes here
        if name.endswith(RECORD_SUFFIX):
            target = name[: -len(RECORD_SUFFIX)]
            if target not in present and p.is_file() and not p.is_symlink():
                # A derived file's record is written before the file takes its name: a young
                # record, or one whose file a live writer is still writing, is no orphan.
                writing = any(not stale and t.name.startswith(f".{target}") for t, stale in temps)
                if writing or now - _mtime(p) < _UNRECORDED_GRACE_S:
                    yield CacheEntry(p, "derived", "busy", _size(p), "the record of a file being written", _mtime(p))
                else:
                    yield CacheEntry(p, "derived", "orphan", _size(p), "a record whose file is gone", _mtime(p))
            continue
        if not _looks_derived(p):
            yield _other(p)  # a file of a name or format gpua never gives is someone else's: never removed
            continue
        state, why = derived_state(p)
        if state == "unrecorded" and now - _mtime(p) < _UNRECORDED_GRACE_S:
            state, why = "busy", "unrecorded and minutes old: maybe an earlier release writing it"
        yield CacheEntry(p, "derived", state, _size(p), why, _mtime(p))
    yield from _temp_entries(folder, temps)


def _held(out: Path) -> bool:
    """Whether a running extraction holds output ``out``'s lock."""
    from .extract import _OutputLock

    with _OutputLock(out, block=False) as lock:
        return lock.busy


def _extraction_meta(p: Path) -> dict | None:
    """The meta of a feature file of a feature cache's name that ``gpua extract`` wrote (it holds the
    cache key), or None for anything else."""
    from ._atomic import _is_feature_file
    from .extract import _stored_meta

    if not (p.is_file() and not p.is_symlink() and _FEATURE_NAME.match(p.name) and _is_feature_file(p)):
        return None
    meta = _stored_meta(p)
    return meta if isinstance((meta or {}).get("cache_key"), str) else None


def _is_extraction_output(p: Path) -> bool:
    """A feature file of a feature cache's name that ``gpua extract`` wrote (its meta holds the cache key)."""
    return _extraction_meta(p) is not None


def _feature_entries(folder: Path) -> Iterator[CacheEntry]:
    """The feature caches in ``folder``, and the parts folders (:class:`gpua.extract._Parts`) of
    extractions into them, each its own entry with its own age: parts beside a complete output
    are a later extraction's work (or a killed run's leftovers), not part of that output."""
    from .extract import _Parts

    for name in (n for n in _names(folder) if not n.startswith(".")):  # locks and temp files: hidden
        p = folder / name
        meta = _extraction_meta(p)
        if meta is not None:
            busy = _held(p)
            yield CacheEntry(p, "features", "busy" if busy else "complete", _size(p),
                             "a running extraction is writing it" if busy else _feature_source(meta), _mtime(p))
        elif name.endswith(".parts") and _FEATURE_NAME.match(name[: -len(".parts")]) and _Parts(p).is_ours():
            busy = _held(p.with_name(name[: -len(".parts")]))
            why = "a running extraction is writing it" if busy else "an extraction's parts, kept for a rerun to resume from"
            yield CacheEntry(p, "features", "busy" if busy else "partial", _size(p), why, _mtime(p))
        else:
            yield _other(p)
    yield from _temp_entries(folder)


def _feature_source(meta: dict) -> str:
    """Whose features a cache file holds, from its meta: ``"9 images of '/home/me/photos'"``.

    A classify cache's name holds only its folder's name and a hash of its path (two folders
    called ``photos`` get two caches): the listing names the folder itself, and says when it is
    gone (the cache then serves no run, and ``clean --features`` is the way to drop it).
    """
    dataset, prompts = meta.get("dataset"), meta.get("class_prompts")
    # one cache per class file (and templates) of a folder: the class count tells them apart
    classes = f", {len(prompts)} class{'' if len(prompts) == 1 else 'es'}" if isinstance(prompts, list) else ""
    if not isinstance(dataset, dict):
        return "its images unrecorded" + classes
    n = dataset.get("n_images")
    images = f"{n} image{'' if n == 1 else 's'}" if isinstance(n, int) else "the images"
    root = dataset.get("root")
    if isinstance(root, str) and root:
        return f"{images} of {root!r}{classes}" + ("" if Path(root).is_dir() else "; the folder is gone")
    name = " ".join(str(dataset[k]) for k in ("name", "split") if dataset.get(k))
    return (f"{images} of {name}" if name else images) + classes


def feature_cache_used(path: str | os.PathLike) -> None:
    """A command wrote or reused feature cache ``path`` (``<cache>/<kind>/<name>.npz``): tag the cache
    folder as gpua's, and touch the file, so that its age is the time since its last use (was:
    since it was written; ``clean --features --older-than 30`` removed a cache used every day,
    and one a running command had just reused). Best effort: a read-only cache stays as it is."""
    from .encoders._derived import mark_cache

    path = Path(path)
    with contextlib.suppress(OSError):
        os.utime(path)
    mark_cache(path.parent.parent)


def _root(cache_dir) -> tuple[Path, bool]:
    """The cache folder, and whether it is the default one (no ``cache_dir``, no ``$GPUA_CACHE_DIR``)."""
    from .encoders import cache_dir as cache_root

    try:
        root = cache_root(cache_dir)
    except RuntimeError as exc:  # expanduser of ~nosuchuser
        raise GPUAError(f"cache_dir {str(cache_dir)!r} cannot be read as a folder ({exc}); pass the cache folder's path.") from None
    if root.exists() and not root.is_dir():
        raise GPUAError(f"cache_dir {str(root)!r} is a file, not gpua's cache folder; pass the cache folder (or none: "
                        "$GPUA_CACHE_DIR, else the user cache).")
    default = cache_dir is None and not os.environ.get("GPUA_CACHE_DIR")
    return root, default


def _is_ours(root: Path, default: bool) -> bool:
    """The default cache folder is gpua's by its place; another one by gpua's cache tag."""
    from .encoders._derived import CACHE_TAG

    if default:
        return True
    return (root / CACHE_TAG).is_file()  # any content: `touch DIR/.gpua-cache` tags a folder by hand


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Everything in the cache folder, each with its kind, state and size.

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`gpua.encoders.cache_dir` (``$GPUA_CACHE_DIR``, else the user cache).

    Returns
    -------
    list of CacheEntry
        Derived model files, feature caches and temp files one by one; each download folder and
        each other top-level entry as one. Sub-folders that are links to folders elsewhere (a
        cache spread over disks) are read through.
    """
    from .encoders._derived import DERIVED_FOLDERS

    root, _ = _root(cache_dir)
    now = time.time()
    out: list[CacheEntry] = []
    for name in _names(root):
        top = root / name
        if name.startswith("."):  # the cache's tag, locks, temp files (listed below)
            continue
        if name in DERIVED_FOLDERS and top.is_dir():
            out.extend(_derived_entries(top, now))
        elif name in FEATURE_FOLDERS and top.is_dir():
            out.extend(_feature_entries(top))
        elif name in DOWNLOAD_FOLDERS and top.is_dir():
            where = top.resolve() if top.is_symlink() else top
            out.append(CacheEntry(top, "download", "kept", _size(where), "downloaded weights (not removed: they may not be fetched again)",
                                  _mtime(top)))
        else:
            out.append(_other(top))
    out.extend(_temp_entries(root))
    return out


def _remove(entry: CacheEntry) -> bool:
    """Remove a derived file (with its record), a record or a temp file; False when its state
    changed since it was listed (a run recorded or re-made it meanwhile): then it stays."""
    from .encoders._derived import RECORD_SUFFIX, derived_state, record_path

    if entry.kind == "derived" and entry.state != "orphan":
        if derived_state(entry.path)[0] != entry.state:
            return False
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            record_path(entry.path).unlink()
    else:
        if entry.state == "orphan" and entry.path.with_name(entry.path.name[: -len(RECORD_SUFFIX)]).exists():
            return False  # its file has come
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
    return True


def _remove_features(entry: CacheEntry) -> bool:
    """Remove a feature cache (the output alone, or the parts folder alone) unless a running
    extraction holds it, or it was written or used since it was listed (checked under the lock)."""
    from .extract import _OutputLock, _Parts

    partial = entry.state == "partial"
    out = entry.path.with_name(entry.path.name[: -len(".parts")]) if partial else entry.path
    with _OutputLock(out, block=False) as lock:
        # Written or used since it was listed (its time moved): a run needs it now.
        if lock.busy or not entry.path.exists() or _mtime(entry.path) != entry.mtime:
            return False
        if partial:
            parts = _Parts(entry.path)
            if not parts.is_ours():
                return False
            parts.remove()
        elif _is_extraction_output(out):
            out.unlink()
        else:
            return False
    return True


def clean_cache(cache_dir: str | os.PathLike | None = None, *, features: bool = False, unrecorded: bool = False,
                older_than_days: float | None = None, dry_run: bool = False,
                ) -> tuple[list[CacheEntry], list[CacheEntry], list[tuple[CacheEntry, str]]]:
    """Remove what the cache holds and no run needs: stale derived model files, records without
    their file, killed writers' temp files, and, when asked, unrecorded derived files and feature
    caches.

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`gpua.encoders.cache_dir`. Other than the default cache folder, it must
        be one gpua tagged as its cache (it does with the first file it writes there).
    features : bool
        Also remove feature caches (complete and partial), which the next run re-extracts.
    unrecorded : bool
        Also remove derived files an earlier release wrote that no run has used since (a run
        that uses one records it; one removed is made anew when needed: seconds of CPU). Not by
        default: an older gpua sharing the cache never records its files.
    older_than_days : float, optional
        With ``features``: only those no command has written or reused for this many days
        (:func:`feature_cache_used` touches a cache at each use).
    dry_run : bool
        Remove nothing; return what would go.

    Returns
    -------
    removed : list of CacheEntry
        What was removed (with ``dry_run``, what would be).
    skipped : list of CacheEntry
        Feature caches that a running extraction holds, left as they are.
    failed : list of (CacheEntry, str)
        What could not be removed, and why; the others were removed all the same.
    """
    if older_than_days is not None:
        from ._validation import check_number

        older_than_days = check_number(older_than_days, "older_than_days", low=0, fix="days, e.g. 30")
        if not features:
            raise GPUAError("older_than_days applies to feature caches only; pass features=True (--features) with it.")
    root, default = _root(cache_dir)
    cutoff = None if older_than_days is None else time.time() - older_than_days * _DAY_S
    removed: list[CacheEntry] = []
    skipped: list[CacheEntry] = []
    failed: list[tuple[CacheEntry, str]] = []
    entries = cache_entries(cache_dir)
    chosen = [e for e in entries
              if e.removable or (unrecorded and (e.kind, e.state) == ("derived", "unrecorded"))
              or (e.kind == "features" and features and (e.state == "busy" or cutoff is None or e.mtime < cutoff))]
    # An untagged folder holding anything is refused even with nothing to remove: "removed 0 entries"
    # from a mistyped --cache-dir (a project folder) read as a clean cache. An empty one has nothing to say.
    if entries and not _is_ours(root, default):
        from .encoders._derived import CACHE_TAG

        raise GPUAError(f"{str(root)!r} is not tagged as gpua's cache folder (it holds no {CACHE_TAG}), so nothing there is "
                        "removed: check the folder (cache_dir / --cache-dir / $GPUA_CACHE_DIR). gpua tags a cache folder when it "
                        f"writes a model file or features there; to tag this one by hand, create the empty file {str(root / CACHE_TAG)!r}.")
    for entry in chosen:
        if entry.state == "busy":
            skipped.append(entry)
            continue
        if dry_run:
            removed.append(entry)
            continue
        try:
            if entry.kind == "features":
                if not _remove_features(entry):
                    skipped.append(entry)
                    continue
            elif not _remove(entry):
                continue  # a run recorded, used or finished it since it was listed: it stays
        except OSError as exc:  # one that will not go (permissions, a read-only disk): said, and the rest go on
            failed.append((entry, exc.strerror or str(exc)))
            continue
        removed.append(entry)
    return removed, skipped, failed
