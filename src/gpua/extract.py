"""From images to features on disk: ``extract_features`` (the ``gpua extract`` command).

Every image of a dataset is encoded by a vision foundation model (VFM) and a vision-language
model (VLM); the VLM's text tower turns the class names into prompt-ensembled text prototypes.
The result holds ``vfm_features``, ``vlm_features``, ``text_prototypes``, ``labels``,
``classnames`` and ``image_ids``, with both encoders' metadata, as either

* one feature file (:func:`gpua.features.save_features`), when ``out`` ends in ``.npz`` or
  ``.safetensors``, or
* a shard set (:class:`gpua.stream.ShardedFeatures`: memory-mapped row shards and an index),
  when ``out`` is a folder name without a suffix (or ``format="shards"``). That is the form
  for datasets whose features do not fit in memory: ``gpua fit --shards DIR`` reads it in
  row chunks.

Long runs are safe to interrupt: work is written in parts of ``shard_size`` images under
``<out>.parts/`` (each part atomically), and a re-run with the same inputs continues after the
last complete part; one with other inputs (a class file fixed) copies those parts' rows of the
images that have not changed (``reuse=``). Two runs into the same ``out`` take turns (an ``flock`` on
``.<out>.gpua-lock`` beside it, removed by its holder): the second waits, then finds the
first one's output. The parts can be encoded by the workers of a Dask cluster (``cluster=``);
they then write to ``<out>.parts/`` themselves, so it must lie on storage the workers share. A
re-run whose output already exists with the same cache key returns at once, writing nothing (so an
output on read-only storage serves it too). The key hashes both
encoders' metadata (model, weights, preprocessing, library versions), the dataset's identity
(name, split, image ids, labels, and the files' sizes, modification and status-change times,
or the pixel array and its shape), the class names and the templates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np

from . import __version__
from ._atomic import TEMP_MARK, _resolve, atomic_path, atomic_write_text, check_output, check_writable
from ._errors import GPUAError, NoReadableImageError, warn_user
from ._integrity import read_npz
from .data._datasets import DECODE_VERSION
from .features import save_features
from .features._io import writing_extraction

__all__ = ["extract_features", "default_workers", "FORMAT_VERSION", "FORMATS", "ON_ERROR"]

#: Bumped when the feature-file layout or the extraction procedure changes (invalidates caches).
FORMAT_VERSION = 1
ON_ERROR = ("skip", "fail")
FORMATS = ("auto", "file", "shards")
_FILE_SUFFIXES = (".npz", ".safetensors")


# -- inputs -------------------------------------------------------------------------------------
#: The most image-decoding threads an extraction takes (``workers``, ``--workers``).
MAX_WORKERS = 256

def _open_dataset(dataset: Any, split: str | None, classnames: Any, image_root: Any = None):
    """A dataset object (``len``, ``image_id``, ``label``, ``load_image``, ``classnames``, ``name``)."""
    from .data import load_dataset
    from .data.classnames import resolve_classnames

    if isinstance(dataset, (str, os.PathLike)):
        return load_dataset(dataset, split=split, classnames=classnames, image_root=image_root)
    if image_root is not None:
        raise GPUAError("image_root= applies to a dataset path; a dataset object already knows where its images are.")
    for attr in ("__len__", "image_id", "load_image"):
        if not hasattr(dataset, attr):
            raise GPUAError(
                f"dataset of type {type(dataset).__name__} has no {attr!r}; pass a path or a gpua.data dataset "
                "(gpua.data.load_dataset)."
            )
    if split is not None:
        raise GPUAError("split= applies to a dataset path; for a dataset object, pass the split you want.")
    names = resolve_classnames(classnames)
    if names is not None:
        have = list(getattr(dataset, "classnames", []) or [])
        if have and len(have) != len(names):
            raise GPUAError(f"classnames has {len(names)} names but the dataset has {len(have)} classes; give one name per class.")
        dataset.classnames = names
    return dataset


def _class_words(classnames: Any, names: list[str]) -> list[list[str]] | None:
    """The prompt words of each class from a class-name file or dict (``automobile: car, automobile``),
    or None when every class is prompted by its own name."""
    from .data.classnames import resolve_class_prompts

    resolved = None if classnames is None or isinstance(classnames, (list, tuple)) else resolve_class_prompts(classnames)
    if resolved is None or resolved[0] != names or all(w == [n] for n, w in zip(*resolved)):
        return None
    return resolved[1]


def _refuse_coinciding_classes(Y: np.ndarray, names: list[str], vlm) -> None:
    """Refuse classes whose text prototypes point the same way: no image could ever be told to be
    one rather than the other. It happens when the VLM's tokenizer reads their prompts as one text
    (an uncased WordPiece vocabulary maps emoji and most CJK characters to ``[UNK]``, and drops
    accents: "café" is "cafe"), and a warning at the fit came too late to say which classes."""
    from ._validation import coinciding_rows

    groups = coinciding_rows(Y)
    if not groups:
        return
    shown = ", ".join(repr(names[k]) for k in groups[0][:6]) + (" ..." if len(groups[0]) > 6 else "")
    more = f" ({len(groups) - 1} more such group(s))" if len(groups) > 1 else ""
    raise GPUAError(
        f"the VLM {getattr(vlm, 'spec', None) or getattr(vlm, 'name', 'encoder')!r} encodes the prompts of the classes "
        f"{shown} identically{more}: its tokenizer reads them as one text (characters it does not know, such as emoji or "
        f"many non-Latin scripts, or accents it drops), so they could never be told apart. Give each class prompt words "
        f"this VLM reads, in a class-name file: one line per class, the name, ':', then its words ('{names[groups[0][0]]}: "
        "cat' names the class by its folder and prompts it with 'cat')."
    )


def _label(ds, i: int) -> int:
    """Image ``i``'s class index, -1 when unknown (unlabeled sets, or objects without ``label``)."""
    y = ds.label(i) if hasattr(ds, "label") else None
    return -1 if y is None else int(y)


def _resolve_templates(templates: Any, ds, dataset: Any = None, classnames: Any = None) -> list[str]:
    """The templates of an extraction; ``"auto"`` takes a benchmark's own only for a benchmark.

    A benchmark is known by a CoOp split file (or a benchmark folder holding one, FGVC-Aircraft's
    or CoOp ImageNet's layout), the embedded demo data or Fashion-MNIST (their names are the
    benchmark's), or by ``classnames`` naming one (``classnames="cifar10"``), as
    ``classify`` knows it; never by an image folder's or an .npz file's own name (was: a folder
    called ``pets``, ``food`` or ``flowers`` took that benchmark's one CoOp prompt, and
    ``classnames="cifar10"`` on a folder called ``photos`` did not take CIFAR's 18).
    """
    from .data._loaders import benchmark_layout
    from .data._registry import canonical_name
    from .data.prompts import benchmark_named_by, resolve_templates

    named_by_file = False
    if isinstance(dataset, (str, os.PathLike)):
        p = Path(dataset).expanduser()
        named_by_file = (p.is_dir() and benchmark_layout(p) is None) or p.suffix.lower() == ".npz"
    benchmark = None if named_by_file else getattr(ds, "name", None)
    if benchmark is None or canonical_name(str(benchmark)) is None:
        benchmark = benchmark_named_by(classnames) or benchmark
    return resolve_templates(templates, benchmark)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _remove_leftovers(out: Path, keys: set[str]) -> None:
    """Delete what a run killed after publishing ``out`` left beside it (called under ``out``'s
    lock, with ``out`` up to date): its parts (``<out>.parts``, a second full copy of the
    features; only when their manifest holds ``out``'s own cache key (``keys``), so another extraction's
    resumable work stays) and the set it replaced (``.<out>.old``, hidden, a whole old shard set)."""
    from .features._shards import _hidden, _is_shard_set, _only_shard_files, _remove_set

    parts = _Parts(str(out) + ".parts")
    if parts.dir.is_dir() and parts.is_ours() and (parts.manifest() or {}).get("cache_key") in keys:
        parts.remove()
    old = _hidden(out, "old")
    if _is_shard_set(out) and _is_shard_set(old) and _only_shard_files(old):
        _remove_set(old)


def _check_up_to_date(out: Path, meta: dict, kind: str, rows_per_shard: int, storage: str, on_error: str) -> None:
    """What an up-to-date output's options say but its stored features cannot honour, said rather than ignored.

    ``on_error="fail"`` with images the stored features skipped is an error (a changed image
    file changes the cache key, so replacing it re-extracts); a shard set of another layout
    (rows per shard, storage) is kept, with a warning: its features are the same. ``meta`` is
    the output's, as :func:`_stored_meta` read it (the set's files checked then).
    """
    from .features import ShardedFeatures

    if kind == "shards":
        sf = ShardedFeatures(out, check=False)  # its layout, from the index alone
        # the last shard holds the remainder: every other one has exactly rows_per_shard rows
        layout_rows = sf.shard_rows[0] if sf.n_shards > 1 else None
        rows_differ = (layout_rows is not None and layout_rows != rows_per_shard) or (sf.n_shards == 1 and sf.shard_rows[0] > rows_per_shard)
        asked = ([f"rows_per_shard={rows_per_shard} (--rows-per-shard)"] if rows_differ else []) \
            + ([f"shard_storage={storage!r} (--shard-storage)"] if sf.storage != storage else [])
        if asked:  # only the settings that differ from the stored set's are named
            warn_user(f"{str(out)!r} already holds these features ({layout_rows or sf.shard_rows[0]} rows per shard, "
                      f"{sf.storage}); {' and '.join(asked)} {'apply' if len(asked) > 1 else 'applies'} when a set is "
                      f"written and {'change' if len(asked) > 1 else 'changes'} nothing here. Pass another out (--out) "
                      "(or delete this set) to write that layout.")
    skipped = (meta.get("skipped") or {}).get("count", 0)
    if on_error == "fail" and skipped:
        first = ((meta.get("skipped") or {}).get("images") or [{}])[0].get("image_id")
        raise GPUAError(f"on_error='fail', but the up-to-date features in {str(out)!r} were extracted skipping {skipped} "
                        f"unreadable image(s) (first: {first!r}); replace or remove them (a changed file is re-extracted), "
                        "or allow skipping with on_error='skip'.")


def _file_stamps(ds, n: int) -> list[tuple[int, ...] | None] | None:
    """Each image file's :func:`_file_stamp` (None for one that cannot be stat'ed), or None when
    ``ds`` has no files (no ``path``)."""
    if not callable(getattr(ds, "path", None)):
        return None
    stamps: list[tuple[int, ...] | None] = []
    for i in range(n):
        try:
            stamps.append(_file_stamp(os.stat(ds.path(i))))
        except OSError:
            stamps.append(None)
    return stamps


def _dataset_identity(ds, ids: list[str], labels: list[int], stamps: list | None = None) -> dict[str, Any]:
    """What identifies the images: names, ids, labels, and the files' stat (``stamps``, from
    :func:`_file_stamps`; taken here when not given) or the pixels."""
    ident: dict[str, Any] = {
        "type": type(ds).__name__,
        "name": getattr(ds, "name", None),
        "split": getattr(ds, "split", None),
        "n_images": len(ids),
        "image_ids_sha256": _sha(ids),
        "labels_sha256": _sha(labels),
    }
    if getattr(ds, "root", None) is not None:
        ident["root"] = str(Path(ds.root).resolve())
    if callable(getattr(ds, "path", None)):
        ident["files_sha256"] = _sha(_file_stamps(ds, len(ids)) if stamps is None else stamps)
    elif callable(getattr(ds, "array", None)):
        a = np.ascontiguousarray(ds.array())
        # The shape too: the same bytes read as other image sizes are other images.
        ident["pixels_sha256"] = hashlib.sha256(repr(a.shape).encode() + a.view(np.uint8).reshape(-1).data).hexdigest()
    return ident


def _file_stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when an image file's content does: size, modification time and, where the
    OS keeps one, the status-change time. Tools that edit a photo but keep its modification
    time (``exiftool -P``, ``cp -p``, ``rsync -t``; an EXIF rotation keeps the size too) cannot
    set the latter, which a write or a rename onto the file always renews. (Windows reports the
    creation time there, which a file replaced by a new one renews too.)"""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _output_kind(out: Path, format: str) -> str:
    """``"file"`` or ``"shards"``: what ``out`` names, by the rule documented in extract_features."""
    if format not in FORMATS:
        raise GPUAError(f"format={format!r} must be one of {FORMATS}.")
    suffix = out.suffix.lower()
    if format == "file" or (format == "auto" and suffix in _FILE_SUFFIXES):
        if suffix not in _FILE_SUFFIXES:
            raise GPUAError(f"out={str(out)!r} must end in .npz or .safetensors for format='file'.")
        if out.is_dir():
            raise GPUAError(f"out={str(out)!r} is an existing folder; a feature file needs a file name (or use a shard set: drop the suffix).")
        return "file"
    if suffix in _FILE_SUFFIXES:  # format="shards" with a file name: a contradiction, not a guess
        raise GPUAError(f"out={str(out)!r} ends in {out.suffix} but format='shards' writes a folder; drop the suffix, or pass format='file'.")
    if format == "auto" and suffix:
        raise GPUAError(
            f"out={str(out)!r} must end in .npz or .safetensors (one feature file) or be a folder name without a "
            f"suffix (a shard set); for a folder whose name contains a dot, pass format='shards' (--format shards)."
        )
    return "shards"


def _unwritable(path: Path, name: str, kind: str) -> GPUAError | None:
    """:func:`check_writable`'s refusal of ``path``, returned instead of raised (None: it can be written)."""
    try:
        check_writable(_resolve(path), name, kind)
    except GPUAError as exc:
        return exc
    return None


def _read_meta(path: Path) -> dict:
    """An existing output's ``meta``, without reading its arrays."""
    if path.is_dir():
        from .features import ShardedFeatures

        # check=True: a set with a missing or truncated shard file is not a cache hit.
        return ShardedFeatures(path, check=True).meta
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["meta"])) if "meta" in f.files else {}
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))


def _stored_meta(path: Path) -> dict | None:
    """An existing output's metadata (its ``cache_key`` says whose features it holds), or None."""
    try:
        meta = _read_meta(path)
    except Exception:  # unreadable or foreign output: not a cache hit, it will be rewritten
        return None
    return meta if isinstance(meta, dict) else None


def _damage(out: Path) -> str | None:
    """Why an output whose metadata makes it a cache hit cannot be used (a checksum that does not
    match, a file that cannot be read), or None when it is whole. Reads the whole output once,
    a block or a shard at a time (memory of one, not of the features): seconds for gigabytes,
    against the hours of the extraction it saves."""
    from ._integrity import streamed_digest, verify
    from .features import ShardedFeatures, load_features
    from .features._io import _FIX

    try:
        if out.is_dir():
            ShardedFeatures(out, check=True, verify=True).verify_all()
        else:
            where = f"feature file {str(out)!r}"
            got = streamed_digest(out, where)
            if got is None or got[0] is None:  # an array it cannot hash in blocks, or no checksum: read whole
                load_features(out, validate=False)
            else:
                verify(got[0], got[1], where, _FIX)
    except (GPUAError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return str(exc).rstrip(".")
    return None


def _lock_path(out: Path) -> Path:
    """The lock file of output ``out``: ``.<name>.gpua-lock`` beside it (hidden: no loader reads it)."""
    return out.parent / f".{out.name}.gpua-lock"


class _OutputLock:
    """Hold ``out``'s lock (``flock`` on :func:`_lock_path`) exclusively: one writer of ``out`` at a time.

    A second run into the same output (the same command started twice, or two ``gpua classify``
    runs of one folder) would otherwise empty the first one's parts folder, mix its parts or text
    prototypes into its own, or remove the parts it is still reading. It waits instead (saying
    so once), then finds the first run's output, up to date or not. The lock file is removed
    by its holder as it finishes (a waiter then locks the new one); a run that dies releases the
    lock with its process and leaves the empty file, which the next run reuses and removes.
    ``wait=False`` (an output on storage this process cannot write, which can only be read as
    a cache hit) takes no lock; ``block=False`` takes it only if no other run holds it (then
    :attr:`busy` is set and :attr:`fd` stays None); nor does a platform without ``flock`` or a folder where the
    lock file cannot be made (best effort: written unlocked, as before locks existed).

    Not the ``filelock`` package's lock (the benchmark's results use it): its lock file stays,
    and this one sits beside the user's own output, so its holder removes it, which needs the
    check of :meth:`__enter__` (the file locked is the one still there) that ``filelock`` does not make.
    """

    def __init__(self, out: Path, *, wait: bool = True, block: bool = True):
        self.out, self.wait, self.block, self.file, self.fd = out, wait, block, _lock_path(out), None
        #: Whether another run held the lock (``block=False``: this one returned without it).
        self.busy = False

    def __enter__(self) -> "_OutputLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        said = False
        while self.wait and self.fd is None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)  # a new cache folder: made now, not by the parts
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                return self
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not self.block:  # `gpua cache clean`: a run is writing this output; leave it
                        os.close(fd)
                        self.busy = True
                        return self
                    if not said:
                        warn_user(f"another gpua run is writing {str(self.out)!r} (it holds {str(self.file)!r}); waiting for it "
                                  "to finish, then this run uses its features if they are the ones wanted, or replaces them.")
                        said = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    now = os.stat(self.file)
                except FileNotFoundError:
                    now = None
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                self.fd = fd
            else:
                os.close(fd)  # its holder removed that file as it finished: lock the one there now
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.file)  # while still held: a waiter on this file sees it gone and locks anew
            os.close(self.fd)
            self.fd = None


# -- shards -------------------------------------------------------------------------------------
class _Parts:
    """The ``<out>.parts/`` folder: a manifest with the cache key, and one npz per part.

    ``_Parts(folder)`` only names the folder (what a Dask worker needs to write a part);
    :meth:`open` prepares it for a run. The manifest also records what lets the parts lend
    their rows to another extraction (``"lend"``: the encoders, decoding, precision, image
    folder and stat time, as an output's meta records them): when a run with other inputs opens
    the folder, an interrupted run's finished parts are set aside in it as ``lend-<g>-*.npz``
    (with ``lend-<g>.json``, and its text prototypes as ``lend-<g>-text.npy``) rather than
    deleted, and lend the rows of the images that have not changed and the prototypes of the
    classes prompted the same (:class:`_PartFiles`); the folder goes, those files with it, once
    its output is written.
    """

    #: The small arrays of a part: which images it holds and which it skipped.
    SUMMARY = ("index", "image_ids", "skipped_index", "skipped_error")

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        self.key: str | None = None  # the manifest's cache key, once opened

    #: The mark of a parts folder: its manifest says who wrote it.
    MARK = "gpua extract parts"

    @classmethod
    def of(cls, out: Path) -> "_Parts":
        return cls(str(out) + ".parts")

    def check(self) -> None:
        """Refuse, before any work, a ``<out>.parts`` that gpua did not make (it would be deleted)."""
        if not self.dir.exists() and not self.dir.is_symlink():
            return
        if not self.is_ours():
            raise GPUAError(
                f"{str(self.dir)!r} exists but is not a parts folder written by gpua extract (no gpua manifest, or "
                "files gpua does not write); gpua uses that name for its resumable work and never deletes what it did "
                "not make. Move that folder away, or choose another --out."
            )

    def is_ours(self) -> bool:
        """A folder with gpua's manifest that holds nothing but the files gpua writes there; or one
        that holds nothing but gpua's temp files and set-aside parts (or nothing): what a run
        killed between making the folder and writing its manifest, or while removing or resetting
        it (:meth:`remove` takes the manifest last), leaves. Removing such a folder loses nothing
        anyone made."""
        if not self.dir.is_dir() or self.dir.is_symlink():
            return False
        files = list(self.dir.iterdir())
        if not all(p.is_file() and not p.is_symlink() and self._own_name(p.name) for p in files):
            return False
        m = self.manifest()
        return (isinstance(m, dict) and isinstance(m.get("cache_key"), str)) or all(
            self._temp_name(p.name) or self._lend_name(p.name) for p in files)

    @staticmethod
    def _temp_name(name: str) -> bool:
        return name.startswith(".") and TEMP_MARK in name

    @staticmethod
    def _lend_name(name: str) -> bool:
        return name.startswith("lend-") and name.endswith((".npz", ".npy", ".json"))

    @classmethod
    def _own_name(cls, name: str) -> bool:
        return (
            name in ("manifest.json", "text_prototypes.npy")
            or (name.startswith("shard-") and name.endswith(".npz"))
            or (name.startswith(".") and TEMP_MARK in name)
            or cls._lend_name(name)
        )

    @classmethod
    def open(cls, out: Path, key: str, shard_size: int, resume: bool, also: Collection[str] = (),
             lend: dict | None = None) -> "_Parts":
        """The parts folder of ``out``, emptied unless it holds this run's resumable work (its
        manifest has ``key``, or one of ``also``: the key an earlier release gave the same inputs);
        ``parts.key`` is the manifest's key. With ``resume``, another run's finished parts that
        can lend rows are set aside in the folder (:meth:`_set_aside`), not deleted; ``lend`` is
        this run's record of that kind, written to a new manifest."""
        parts = cls.of(out)
        parts.check()
        manifest = parts.dir / "manifest.json"
        have = parts.manifest() or {}
        key = have["cache_key"] if have.get("cache_key") in also else key
        want = {"cache_key": key, "shard_size": shard_size, "format": FORMAT_VERSION, "written_by": cls.MARK}
        if parts.dir.exists() and (not resume or not have or {k: have.get(k) for k in want if k != "written_by"}
                                   != {k: v for k, v in want.items() if k != "written_by"}):
            done = sorted(parts.dir.glob("shard-*.npz"))
            if resume and done and isinstance(have.get("lend"), dict):
                parts._set_aside(have["lend"], done)  # their rows stand for unchanged images (_PartFiles)
            elif resume and done:  # was: hours of encoding dropped without a word
                warn_user(f"discarding the {len(done)} finished part(s) in {str(parts.dir)!r}: they are an earlier "
                          "run's, with other inputs (images, encoders or their weights, class names, templates, or "
                          "--shard-size), and cannot lend rows (their images are not files, or an earlier gpua "
                          "release wrote them).")
            parts.remove(keep_lent=resume)  # another run's (or a stale) work: never mixed in, only lent
        parts.dir.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            # default=str as the cache key hashes them (_sha): an encoder's metadata compares the same once read back.
            atomic_write_text(manifest, json.dumps({**want, **({"lend": lend} if lend else {})}, default=str))
        parts.key = key
        return parts

    def _set_aside(self, lend: dict, done: list[Path]) -> None:
        """Keep another run's finished parts ``done`` as generation ``g`` of lending parts:
        ``lend-<g>.json`` (their ``lend`` record) first, then each part renamed to ``lend-<g>-<i>.npz``.
        A run killed in between leaves the rest as parts, which the next run sets aside in turn."""
        g = 1 + max((gen for gen, _ in self.lend_generations()), default=0)
        atomic_write_text(self.dir / f"lend-{g}.json", json.dumps({"written_by": self.MARK, "lend": lend}, default=str))
        for p in done:
            os.replace(p, self.dir / f"lend-{g}-{p.name[len('shard-'):]}")
        with contextlib.suppress(FileNotFoundError):  # no text prototypes: a run stopped before it saved them
            os.replace(self.dir / "text_prototypes.npy", _PartFiles(self.dir, f"lend-{g}-").text_file())

    def lend_generations(self) -> list[tuple[int, dict | None]]:
        """The set-aside generations ``(g, their lend record or None when unreadable)``, newest first."""
        found = []
        for p in self.dir.glob("lend-*.json"):
            g = p.name[len("lend-") : -len(".json")]
            if not g.isdigit():
                continue
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                rec = None
            lend = rec.get("lend") if isinstance(rec, dict) and rec.get("written_by") == self.MARK else None
            found.append((int(g), lend if isinstance(lend, dict) else None))
        return sorted(found, reverse=True)

    def lenders(self, *, own: bool) -> list[tuple["_PartFiles", dict]]:
        """The sources of rows this folder holds, ``(files, lend record)``, newest first: its
        set-aside generations, and with ``own=False`` (another output's folder) its own parts too."""
        found = []
        lend = None if own else (self.manifest() or {}).get("lend")
        if isinstance(lend, dict):
            found.append((_PartFiles(self.dir, "shard-"), lend))
        return found + [(_PartFiles(self.dir, f"lend-{g}-"), lend) for g, lend in self.lend_generations() if lend is not None]

    def manifest(self) -> dict | None:
        try:
            m = json.loads((self.dir / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return m if isinstance(m, dict) else None

    def shard_path(self, i: int) -> Path:
        return self.dir / f"shard-{i:06d}.npz"

    def _read(self, i: int, ids, keys: Sequence[str] | None) -> dict[str, np.ndarray] | None:
        """``keys`` (None: all) of part ``i``, or None when missing, unreadable or not about these images."""
        p = self.shard_path(i)
        if not p.is_file():
            return None
        try:  # only the members asked for, each header checked against the member's size
            part = read_npz(p, f"part {i}", keys)
        except GPUAError:  # a part the OS lost half of, or one from an older layout
            return None
        if keys is not None and set(part) != set(keys):
            return None
        try:
            rows = {len(part[k]) for k in ("index", "image_ids", "vfm", "vlm") if k in part}
            same = [str(v) for v in part["image_ids"]] == [ids[j] for j in part["index"]]
        except (KeyError, IndexError, TypeError):
            return None
        return part if len(rows) == 1 and same else None

    def load(self, i: int, ids) -> dict[str, np.ndarray] | None:
        """Part ``i`` with its features, or None when it must be (re)done."""
        return self._read(i, ids, None)

    def summary(self, i: int, ids) -> dict[str, np.ndarray] | None:
        """Part ``i``'s :attr:`SUMMARY` arrays without its features (cheap), or None when it must be (re)done."""
        return self._read(i, ids, self.SUMMARY)

    def save(self, i: int, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.shard_path(i), suffix=".npz") as tmp:
            np.savez(tmp, **arrays)

    def load_text(self) -> np.ndarray | None:
        p = self.dir / "text_prototypes.npy"
        try:
            return np.load(p) if p.is_file() else None
        except (OSError, ValueError):
            return None

    def save_text(self, Y: np.ndarray) -> None:
        with atomic_path(self.dir / "text_prototypes.npy", suffix=".npy") as tmp:
            np.save(tmp, Y)

    def remove(self, keep_lent: bool = False) -> None:
        """Delete the folder, which must be gpua's own (:meth:`is_ours`); anything else is refused.
        ``keep_lent``: empty it but for its set-aside parts (``lend-*``), and keep the folder."""
        if not self.dir.exists():
            return
        self.check()
        # The manifest last: a run killed part way leaves a folder that is still recognisably
        # gpua's (the manifest, or nothing but temp files and set-aside parts), which the next run
        # replaces instead of refusing.
        for p in sorted(self.dir.iterdir(), key=lambda p: p.name == "manifest.json"):
            if not (keep_lent and self._lend_name(p.name)):
                p.unlink(missing_ok=True)
        if not keep_lent:
            self.dir.rmdir()


def _gpuas_loader(ds) -> bool:
    """Whether ``ds`` reads its images with the ``load_image`` of one of gpua's datasets (files, or
    an array): safe in threads. A subclass with a ``load_image`` of its own is one's own dataset."""
    from .data import ArrayImageDataset, FileImageDataset

    load = getattr(type(ds), "load_image", None)
    return load is not None and any(load is base.load_image for base in (FileImageDataset, ArrayImageDataset))


def default_workers() -> int:
    """Threads that decode and prepare images when ``workers`` is not given: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class _ImageLoader:
    """A dataset's images decoded and prepared for both encoders in ``workers`` threads, one
    batch ahead of the encoding (Pillow's decoders and resampling release the GIL).

    An item is ``(prepared, error)``: ``prepared`` holds, per encoder, the image prepared by
    its ``preprocess`` (an encoder :func:`_takes_prepared` accepts) or the RGB image (any other
    encoder object, to its own ``encode_images``); ``error`` is the exception of an image that cannot be read (``prepared`` None).
    The rows do not depend on ``workers``: each image is prepared alone, and batched as before.
    """

    def __init__(self, ds, ids: list[str], encoders: tuple[Any, Any], workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.ds, self.ids = ds, ids
        self.prepared = [_takes_prepared(enc) for enc in encoders]
        self.prepare = [enc.preprocess.transform_one if ok else None for enc, ok in zip(encoders, self.prepared)]
        if all(self.prepared) and encoders[0].preprocess == encoders[1].preprocess:
            self.prepare[1] = "same"  # one preparation serves both (the same float32 array)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="gpua-images") if workers > 1 else None

    def one(self, i: int) -> tuple[tuple | None, BaseException | None]:
        from .encoders import as_image_list

        try:
            image = as_image_list([self.ds.load_image(i)], name=f"image {self.ids[i]!r}")[0]
        except (ValueError, OSError, SyntaxError) as exc:  # GPUAError is a ValueError; PIL raises the others
            return None, exc
        try:  # one image that cannot be prepared (memory, a resampling error) is skipped, named, as an unreadable one
            first = image if self.prepare[0] is None else self.prepare[0](image)
            second = first if self.prepare[1] == "same" else image if self.prepare[1] is None else self.prepare[1](image)
        except (MemoryError, ValueError, OSError) as exc:
            return None, OSError(f"image {self.ids[i]!r} ({image.size[0]}x{image.size[1]} pixels) could not be prepared for "
                                 f"the encoders ({type(exc).__name__}: {exc})")
        return (first, second), None

    def batches(self, indices: Sequence[int], batch_size: int):
        """``[(i, (prepared, error)), ...]`` per batch of ``indices``, the next batch prepared meanwhile."""
        starts = range(0, len(indices), batch_size)

        def submit(start: int):
            idx = indices[start:start + batch_size]
            return idx, None if self.pool is None else [self.pool.submit(self.one, i) for i in idx]

        pending = submit(starts[0]) if len(starts) else None
        for j in range(len(starts)):
            idx, futures = pending
            pending = submit(starts[j + 1]) if j + 1 < len(starts) else None
            yield list(zip(idx, [self.one(i) for i in idx] if futures is None else [f.result() for f in futures]))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _takes_prepared(encoder) -> bool:
    """Whether extraction may prepare ``encoder``'s images itself (in threads) and call its
    :meth:`~gpua.encoders.Encoder.encode_prepared`: an :class:`~gpua.encoders.Encoder` whose
    ``encode_images`` is the base class's (gpua's ``preprocess``, then ``_embed``), or one that
    defines its own ``encode_prepared``. Any other (an ``encode_images`` of its own, a preparation
    that is not an :class:`~gpua.encoders.ImagePreprocess` call) gets the RGB images, as before threads."""
    from .encoders import Encoder, ImagePreprocess

    pre = getattr(encoder, "preprocess", None)
    if not isinstance(encoder, Encoder) or not isinstance(pre, ImagePreprocess) or type(pre).__call__ is not ImagePreprocess.__call__:
        return False
    cls = type(encoder)
    return cls.encode_prepared is not Encoder.encode_prepared or (cls.encode_images is Encoder.encode_images and cls._run is Encoder._run)


def _encode_prepared(encoder, prepared: list, batch_size: int, is_prepared: bool) -> np.ndarray:
    if is_prepared:
        return encoder.encode_prepared(np.stack(prepared))
    return encoder.encode_images(prepared, batch_size=batch_size)


def _image_error(image_id: str, i: int, what: str, reason: str) -> GPUAError:
    """``on_error="fail"``'s error for image ``i``, which could not be ``what`` (read, encoded): the
    reason, then the fix (the reason's own, when it gives one)."""
    reason = reason.strip().rstrip(".")
    fix = "Or pass" if "remove it" in reason else "Fix or remove the file, or pass"
    return GPUAError(f"image {image_id!r} (index {i}) could not be {what}: {reason}. {fix} on_error='skip' to leave such "
                     "images out.")


def _encode_batch(vfm, vlm, good: list, batch_size: int, is_prepared: tuple[bool, bool], encoded_before: bool = True):
    """Encode a batch's readable images ``good`` (``(index, (vfm_input, vlm_input))`` pairs) with both encoders.

    Yields ``(rows, Z, X, None)`` for encoded rows, or ``([index], None, None, error)`` for an
    image an encoder refuses (a :class:`GPUAError`, e.g. smaller than one of its patches): when
    the whole batch is refused, each image is encoded alone, so that the error names the image
    and the rest of the batch is kept. When every image of a batch fails alone too and no image
    was ``encoded_before`` (in this part), the encoder itself is at fault, not the images: its
    error is raised as it is, rather than pinned on each image in turn.
    """
    if not good:
        return
    rows = [i for i, _ in good]
    try:
        z = _encode_prepared(vfm, [p[0] for _, p in good], batch_size, is_prepared[0])
        x = _encode_prepared(vlm, [p[1] for _, p in good], batch_size, is_prepared[1])
    except GPUAError as exc:
        if len(good) == 1:
            yield rows, None, None, exc
            return
        alone = [r for one in good for r in _encode_batch(vfm, vlm, [one], batch_size, is_prepared)]
        if not encoded_before and all(r[3] is not None for r in alone):
            raise
        yield from alone
        return
    if z.shape[0] != len(rows) or x.shape[0] != len(rows):
        raise GPUAError(f"the encoders returned {z.shape[0]} and {x.shape[0]} rows for {len(rows)} images; "
                        "an encoder must return one row per image, in order.")
    yield rows, z, x, None


#: Characters of an unreadable image's error kept in the features' ``meta["skipped"]`` (and in
#: ``gpua classify``'s CSV): 300 cut a deep folder's message before its fix.
_ERROR_CHARS = 2000


def _encode_shard(vfm, vlm, ds, indices: Sequence[int], ids: list[str], batch_size: int, on_error: str, bar,
                  workers: int = 1) -> dict[str, np.ndarray]:
    """Encode images ``indices`` with both encoders; unreadable images are skipped or fail.

    ``workers`` threads decode and prepare the images (:class:`_ImageLoader`); the rows are the
    same whatever their number.
    """
    Z, X, kept, bad_idx, bad_err = [], [], [], [], []
    loader = _ImageLoader(ds, ids, (vfm, vlm), workers)
    try:
        for batch in loader.batches(indices, batch_size):
            good = []
            for i, (prepared, exc) in batch:
                if exc is None:
                    good.append((i, prepared))
                    continue
                if on_error == "fail":
                    raise _image_error(ids[i], i, "read", str(exc)) from exc
                bad_idx.append(i)
                # Bounded (it is stored with the features), but long enough for a deep path and the fix after it.
                bad_err.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:_ERROR_CHARS])
            for rows, z, x, exc in _encode_batch(vfm, vlm, good, batch_size, loader.prepared, encoded_before=bool(kept)):
                if exc is None:  # both encoders saw the very same decoded images, so their rows share the ids in `rows`
                    finite = np.isfinite(z).all(1) & np.isfinite(x).all(1)
                    for j in np.flatnonzero(~finite):
                        # Was: kept, and the whole run refused at the end ("vfm_features contains NaN or inf in 1
                        # row(s) (first: row 10)"), naming no image, and every resume refused again.
                        i, which = rows[j], " and ".join(n for n, a in (("VFM", z), ("VLM", x)) if not np.isfinite(a[j]).all())
                        reason = (f"the {which} encoder gave NaN or inf features for it (a blank or constant image can make an "
                                  "encoder that normalises its input divide by zero)")
                        if on_error == "fail":
                            raise _image_error(ids[i], i, "encoded", reason)
                        bad_idx.append(i)
                        bad_err.append(f"GPUAError: {reason}"[:_ERROR_CHARS])
                    if not finite.all():
                        z, x, rows = z[finite], x[finite], [r for r, ok in zip(rows, finite) if ok]
                    Z.append(z)
                    X.append(x)
                    kept.extend(rows)
                    continue
                i = rows[0]
                if on_error == "fail":
                    raise _image_error(ids[i], i, "encoded", str(exc)) from exc
                bad_idx.append(i)
                bad_err.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:_ERROR_CHARS])
            if bar is not None:
                bar.update(len(batch))
    finally:
        loader.close()
    part = _empty_part((vfm.embed_dim, vlm.embed_dim))
    part.update(index=np.asarray(kept, dtype=np.int64), image_ids=np.asarray([ids[i] for i in kept], dtype=str),
                skipped_index=np.asarray(bad_idx, dtype=np.int64), skipped_error=np.asarray(bad_err, dtype=str))
    if Z:
        part.update(vfm=np.concatenate(Z), vlm=np.concatenate(X))
    return part


def _empty_part(widths: tuple[int, int]) -> dict[str, np.ndarray]:
    """A part with no rows (every image of its range lent, or none readable)."""
    return {
        "index": np.zeros(0, np.int64),
        "image_ids": np.zeros(0, dtype=str),
        "vfm": np.zeros((0, widths[0]), np.float32),
        "vlm": np.zeros((0, widths[1]), np.float32),
        "skipped_index": np.zeros(0, np.int64),
        "skipped_error": np.zeros(0, dtype=str),
    }


# -- rows of earlier extractions ----------------------------------------------------------------
#: How long before an earlier output stat'ed its images a file must have last changed for that
#: output's row of it to be reused: file systems keep coarse times (FAT: 2 s) and a file server's
#: clock may run behind this machine's, so a file changed just before (or, by those clocks, just
#: after) is encoded again rather than trusted.
REUSE_MARGIN_NS = 10 * 10**9

#: What reading an earlier output may raise; such an output lends no rows (it is only a shortcut).
_UNREADABLE = (GPUAError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _lent_prototypes(candidates: Sequence[tuple[Path, dict | None]], prompts: list[list[str]], templates: list[str],
                     vlm_meta: dict, float16: bool, width: int) -> tuple[dict[int, np.ndarray], list[str]]:
    """Text prototypes of earlier outputs for the classes prompted as here: ``{class index: row}``,
    and the outputs that lent them (with how many each).

    A class's prototype depends on its prompt words, the templates and the VLM alone
    (:func:`gpua.data.prompts.build_text_prototypes` encodes each class's prompts apart), so an
    output of the same VLM (weights compared as the cache key does), templates, precision and
    extraction procedure lends the row of each class whose words it prompted the same; one
    class added to a class file encodes that class's prompts only. Outputs that cannot be read
    lend nothing (they are only a shortcut). ``candidates`` are ``(path, its stored meta or None)``.
    """
    want = {tuple(words): k for k, words in enumerate(prompts)}
    got: dict[int, np.ndarray] = {}
    sources: list[str] = []
    for path, meta in candidates:
        if len(got) == len(want):
            break
        if (meta is None or meta.get("format") != FORMAT_VERSION or meta.get("templates") != list(templates)
                or bool(meta.get("float16")) != bool(float16) or not _same_encoder(meta.get("vlm"), vlm_meta)
                or not isinstance(meta.get("class_prompts"), list)):
            continue
        try:
            Y = _stored_prototypes(path)
        except _UNREADABLE:
            continue
        if Y is None or Y.ndim != 2 or Y.shape != (len(meta["class_prompts"]), width):
            continue
        before = len(got)
        for r, words in enumerate(meta["class_prompts"]):
            k = want.get(tuple(words)) if isinstance(words, list) else None
            if k is not None and k not in got and np.isfinite(Y[r]).all():
                got[k] = np.asarray(Y[r], np.float32)
        if len(got) > before:
            sources.append(f"{path} ({len(got) - before} prototypes)")
    return got, sources


def _stored_prototypes(path: "Path | _PartFiles") -> np.ndarray | None:
    """An output's text prototypes, read alone (not its features)."""
    if isinstance(path, _PartFiles):
        text = path.text_file()
        return np.asarray(np.load(text, allow_pickle=False), np.float32) if text.is_file() else None
    if path.is_dir():
        from .features import ShardedFeatures

        return ShardedFeatures(path, check=True).text_prototypes()
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as f:  # one member read: zip checks its CRC
            return np.asarray(f["text_prototypes"], np.float32) if "text_prototypes" in f.files else None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return np.asarray(f.get_tensor("text_prototypes"), np.float32) if "text_prototypes" in f.keys() else None


def _reuse_paths(reuse: Any) -> list[Path]:
    """``reuse=`` as paths, or a :class:`GPUAError` naming what is wrong with it."""
    if reuse is None:
        return []
    if isinstance(reuse, (str, os.PathLike)):
        reuse = [reuse]
    try:
        paths = list(reuse)
    except TypeError:
        raise GPUAError(f"reuse={reuse!r} must be a list of feature files or shard sets (paths).") from None
    bad = next((p for p in paths if not isinstance(p, (str, os.PathLike))), None)
    if bad is not None:
        raise GPUAError(f"reuse holds {bad!r}, which is not a path; pass earlier feature files or shard sets (paths).")
    missing = next((p for p in paths if not Path(p).expanduser().exists()), None)
    if missing is not None:
        raise GPUAError(f"reuse: {str(missing)!r} does not exist; pass an earlier feature file or shard set, or drop it.")
    return [Path(p).expanduser() for p in paths]


def _beside(out: Path) -> list[Path]:
    """The feature files in ``out``'s folder other than ``out``, newest first (rows they may lend)."""
    try:
        found = [(p.stat().st_mtime_ns, p) for p in out.parent.iterdir()
                 if p.suffix.lower() in _FILE_SUFFIXES and p.name != out.name and not p.name.startswith(".") and p.is_file()]
    except OSError:
        return []
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def _beside_parts(out: Path) -> list[tuple["_PartFiles", dict]]:
    """The lending parts (:meth:`_Parts.lenders`) of the other outputs in ``out``'s folder: an
    interrupted extraction's, newest first. A folder whose extraction is running now is left
    alone (it may finish and remove the folder while its rows are being read)."""
    try:
        folders = [q for q in out.parent.iterdir() if q.name.endswith(".parts") and not q.name.startswith(".")
                   and q.name != f"{out.name}.parts" and q.is_dir()]
    except OSError:
        return []
    found = []
    for q in folders:
        parts = _Parts(q)
        try:
            if not parts.is_ours():
                continue
            with _OutputLock(q.with_name(q.name[: -len(".parts")]), block=False) as lock:
                if lock.busy:
                    continue
            found.append(((q / "manifest.json").stat().st_mtime_ns, parts.lenders(own=False)))
        except OSError:
            continue
    return [src for _, srcs in sorted(found, key=lambda t: t[0], reverse=True) for src in srcs]


def _named_candidates(path: Path) -> list[tuple[Any, bool, dict | None]]:
    """The lenders of a ``reuse=`` path: the output there, or an interrupted extraction's parts folder's parts."""
    parts = _Parts(path)
    if path.is_dir() and parts.is_ours() and parts.manifest() is not None:
        return [(src, True, meta) for src, meta in parts.lenders(own=False)] or [(path, True, None)]
    return [(path, True, _candidate_meta(path))]


def _candidate_meta(path: Path) -> dict | None:
    """An earlier output's stored meta, read once for both the text and the image rows it may lend (None: no output there)."""
    return _stored_meta(path) if path.exists() else None


def _same_encoder(theirs: Any, mine: dict) -> bool:
    """Whether an output's encoder metadata is this run's encoder's, as the cache key compares them (:func:`_portable`)."""
    return _sha(_portable(theirs)) == _sha(_portable(mine))


def _lendable(meta: dict | None, encoders: tuple[dict, dict], float16: bool) -> str | None:
    """Why an earlier output's rows cannot stand for this extraction's (None: they can, image by image)."""
    if meta is None:
        return "it is not a feature output gpua can read"
    if meta.get("format") != FORMAT_VERSION or meta.get("decode") != DECODE_VERSION or not isinstance(meta.get("stat_time_ns"), int):
        return "it was written by another gpua release (its images' decoding or stat time is not recorded)"
    if not isinstance((meta.get("dataset") or {}).get("root"), str):
        return "its images are not files under a folder"
    if bool(meta.get("float16")) != bool(float16):
        return "it stores the features in another precision (float16)"
    for name, mine in zip(("vfm", "vlm"), encoders):
        if not _same_encoder(meta.get(name), mine):
            return f"it was encoded with another {name.upper()} (or other weights)"
    return None


class _ReusedRows:
    r"""Rows of earlier extractions that stand for encoding their images again.

    An earlier output (a feature file or shard set written by :func:`extract_features`) lends its
    row of an image when it was encoded by the same encoders (their metadata as the cache key
    compares it, :func:`_portable`), the same image decoding and precision, from the same file
    (its absolute path), and that file has not changed since the output stat'ed its images: its
    modification and status-change times lie more than :data:`REUSE_MARGIN_NS` before that
    moment (a write or a rename onto the file always renews the latter). Class names, prompts,
    labels and the other images play no part: a new class file, or one photo added to a folder,
    encodes only what is new.

    A feature file's lent rows are held here (the file is read whole, as a file output is
    assembled whole); a shard set's are read part by part (:meth:`merged`), so that re-extracting
    a shard set holds one part in memory, as extracting it does.

    Attributes
    ----------
    index : array of shape (n_lent,)
        Dataset indices with a lent row, sorted.
    where : array of shape (n_lent, 2)
        For each, the lending output (its number in :attr:`stores`) and the row there.
    stores : list of callables
        ``store(rows) -> (vfm rows, vlm rows)``, float32, one per lending output.
    sources : list of str
        The lending outputs, with how many rows each.
    """

    def __init__(self):
        self.index = np.zeros(0, np.int64)
        self.where = np.zeros((0, 2), np.int64)
        self.stores: list[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = []
        self.sources: list[str] = []

    def __len__(self) -> int:
        return int(self.index.size)

    @classmethod
    def find(cls, candidates: Sequence[tuple[Path, bool, dict | None]], *, root: str | None, ids: list[str], stamps: list | None,
             encoders: tuple[dict, dict], float16: bool, widths: tuple[int, int]) -> "_ReusedRows":
        """The rows ``candidates`` lend, the first to hold an image lending it.

        ``candidates`` are ``(path, explicit, its stored meta or None)``: an output the caller named
        (``reuse=``) that lends nothing gets a warning saying why; one found by gpua (``out``
        itself, the feature files beside it) does not.
        """
        found = cls()
        if root is None or stamps is None:
            # rows are lent by image file: a data set of pixel arrays (cifar10-mini) has none (was: no word)
            for path, explicit, _ in candidates:
                if explicit:
                    warn_user(f"reuse: {str(path)!r} lends no features (this data set's images are not files, and rows are "
                              "lent by image file: only image folders and split files reuse rows); its images are encoded "
                              "again.")
            return found
        need = {str(Path(root) / image_id): j for j, image_id in enumerate(ids) if stamps[j] is not None}
        index, where = [], []
        seen: set[Any] = set()
        for path, explicit, meta in candidates:
            resolved = (_resolve(path.folder), path.prefix) if isinstance(path, _PartFiles) else _resolve(path)
            if resolved in seen or not need:
                continue
            seen.add(resolved)
            lent = _rows_lent(path, meta, need, Path(root), stamps, encoders, float16, widths)
            if isinstance(lent, str) or lent[0].size == 0:
                if explicit:
                    why = lent if isinstance(lent, str) else ("none of its images is one of these, unchanged since it was "
                                                              "written")
                    # the other sources may still lend the rows (was: "its images are encoded again" beside
                    # a summary that counted them copied)
                    warn_user(f"reuse: {str(path)!r} lends no features ({why}); it is ignored.")
                continue
            j, rows, store = lent
            for k in j:
                del need[str(Path(root) / ids[k])]
            index.append(j)
            where.append(np.stack([np.full(j.size, len(found.stores)), rows], 1))
            found.stores.append(store)
            found.sources.append(f"{path} ({j.size} rows)")
        if index:
            j = np.concatenate(index)
            order = np.argsort(j)
            found.index, found.where = j[order], np.concatenate(where)[order]
        return found

    def split(self, indices: range) -> tuple[slice, list[int] | range]:
        """Where in :attr:`index` the lent rows of ``indices`` are, and the indices left to encode."""
        lo, hi = (int(k) for k in np.searchsorted(self.index, [indices.start, indices.stop]))
        if lo == hi:
            return slice(lo, hi), indices
        lent = set(self.index[lo:hi].tolist())
        return slice(lo, hi), [i for i in indices if i not in lent]

    def merged(self, part: dict[str, np.ndarray], lent: slice, ids: list[str]) -> dict[str, np.ndarray]:
        """An encoded part with the lent rows ``lent`` (a slice of :attr:`index`) put in their places (dataset order)."""
        if lent.start == lent.stop:
            return part
        where = self.where[lent]
        Z = np.empty((where.shape[0], part["vfm"].shape[1]), np.float32)
        X = np.empty((where.shape[0], part["vlm"].shape[1]), np.float32)
        for s in np.unique(where[:, 0]):
            mine = where[:, 0] == s
            Z[mine], X[mine] = self.stores[s](where[mine, 1])
        index = np.concatenate([part["index"], self.index[lent]])
        order = np.argsort(index, kind="stable")
        index = index[order]
        return {
            **part,
            "index": index,
            "image_ids": np.asarray([ids[i] for i in index], dtype=str),
            "vfm": np.concatenate([part["vfm"], Z])[order],
            "vlm": np.concatenate([part["vlm"], X])[order],
        }


def _rows_lent(path: "Path | _PartFiles", meta: dict | None, need: dict[str, int], root: Path, stamps: list,
               encoders: tuple[dict, dict], float16: bool, widths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Callable] | str:
    """``(dataset indices, their rows there, store)`` that the output at ``path`` (its stored
    ``meta``), or an interrupted run's parts (:class:`_PartFiles`, their lend record), lends
    (:class:`_ReusedRows`), or why it lends none. Its features are read only when its images'
    folder holds ``root`` or lies in it (no image can be shared otherwise)."""
    from .features import ShardedFeatures, load_features

    if meta is None and not (isinstance(path, _PartFiles) or path.exists()):
        return "it does not exist"
    why = _lendable(meta, encoders, float16)
    if why is not None:
        return why
    limit = meta["stat_time_ns"] - REUSE_MARGIN_NS
    src_root = Path(meta["dataset"]["root"])
    if not (src_root == root or src_root in root.parents or root in src_root.parents):
        return f"its images lie in {str(src_root)!r}, apart from these"
    if isinstance(path, _PartFiles):
        return path.rows_lent(need, src_root, stamps, limit, widths)
    try:
        if path.is_dir():
            sf = ShardedFeatures(path, check=True, verify=True)
            sf.verify_all()  # a damaged shard found now lends nothing, not half a run later
            src_ids, widths_there = sf.image_ids() or [], (sf.widths.get("vfm_features"), sf.widths.get("vlm_features"))
        else:
            fs = load_features(path, validate=False)  # checks the file's checksum
            src_ids = fs.image_ids or []
            widths_there = tuple(None if a is None else a.shape[1] for a in (fs.vfm_features, fs.vlm_features))
        if tuple(widths_there) != tuple(widths):
            return "its features have other widths"
        idx, rows = _unchanged_rows(src_ids, need, src_root, stamps, limit)
        if path.is_dir():
            def store(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                try:
                    return tuple(sf.take(key, r).numpy() for key in ("vfm_features", "vlm_features"))
                except _UNREADABLE as exc:  # removed or replaced since (it was whole): the run stops, its parts kept
                    raise _gone_part_way(path, exc) from exc

            return idx, rows, store
        # A file is read whole: keep its lent rows, numbered 0.., and drop the rest.
        Z, X = (np.asarray(a[rows], dtype=np.float32) for a in (fs.vfm_features, fs.vlm_features))
    except _UNREADABLE as exc:
        return f"it cannot be read: {str(exc).rstrip('.')}"
    return idx, np.arange(len(rows), dtype=np.int64), lambda r: (Z[r], X[r])


def _unchanged_rows(src_ids: Sequence, need: dict[str, int], src_root: Path, stamps: list, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dataset indices, rows)`` of a lender's images ``src_ids`` (relative to ``src_root``)
    that this run needs and whose files changed before ``limit`` (mtime and ctime, ns)."""
    idx, rows = [], []
    for r, image_id in enumerate(src_ids):
        j = need.get(str(src_root / str(image_id)))
        if j is not None and max(stamps[j][1], stamps[j][2]) < limit:  # (size, mtime, ctime)
            rows.append(r)
            idx.append(j)
    return np.asarray(idx, np.int64), np.asarray(rows, np.int64)


def _gone_part_way(source: Any, exc: BaseException) -> GPUAError:
    return GPUAError(f"reuse: {str(source)!r} could not be read part way ({str(exc).rstrip('.')}); run the same command "
                     "again: it resumes, and takes from that output only what is there then.")


class _PartFiles:
    """One run's finished parts in a parts folder (:class:`_Parts`), as a lender of rows: another
    output's ``shard-*.npz``, or a generation set aside, ``lend-<g>-*.npz``. Each part's image ids
    are read to find the rows (its features stay on disk); the features of a part are read when
    its rows are copied, one part at a time."""

    def __init__(self, folder: Path, prefix: str):
        self.folder, self.prefix = Path(folder), prefix

    def __str__(self) -> str:  # the folder (its name ends in .parts): a set-aside generation is part of it
        return str(self.folder)

    def text_file(self) -> Path:
        """The text prototypes of these parts' run (``text_prototypes.npy``, or ``lend-<g>-text.npy`` set aside)."""
        return self.folder / ("text_prototypes.npy" if self.prefix == "shard-" else f"{self.prefix}text.npy")

    def rows_lent(self, need: dict[str, int], src_root: Path, stamps: list, limit: int,
                  widths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Callable] | str:
        """As :func:`_rows_lent`: the rows are numbered through the parts in order; a part that
        cannot be read lends nothing."""
        spans, idx, rows, first = [], [], [], 0
        for f in sorted(self.folder.glob(f"{self.prefix}*.npz")):
            try:
                src_ids = read_npz(f, "part", ("image_ids",))["image_ids"]
            except _UNREADABLE:
                continue
            j, r = _unchanged_rows(src_ids, need, src_root, stamps, limit)
            idx.append(j)
            rows.append(r + first)
            spans.append((f, first, len(src_ids)))
            first += len(src_ids)
        if not spans:
            return "none of its parts can be read"

        def store(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            Z, X = np.empty((r.size, widths[0]), np.float32), np.empty((r.size, widths[1]), np.float32)
            for f, a, m in spans:
                mine = (r >= a) & (r < a + m)
                if not mine.any():
                    continue
                try:
                    part = read_npz(f, "part", ("vfm", "vlm"))
                    Z[mine], X[mine] = part["vfm"][r[mine] - a], part["vlm"][r[mine] - a]
                except (*_UNREADABLE, IndexError) as exc:  # removed since, or damaged: the run stops, its own parts kept
                    raise _gone_part_way(self, exc) from exc
            return Z, X

        return np.concatenate(idx), np.concatenate(rows), store


# -- Dask ---------------------------------------------------------------------------------------
#: Encoders built on this (worker) process, keyed by (spec, device, cache_dir): a worker loads
#: each model once, not once per part.
_WORKER_ENCODERS: dict[tuple[str, str, str | None], Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_encoder(spec: str, device: str, cache_dir, entries: dict[str, Any]):
    from .encoders import create_encoder, list_encoders, register_encoder

    key = (spec, device, None if cache_dir is None else str(cache_dir))
    with _WORKER_LOCK:
        if key not in _WORKER_ENCODERS:
            known = set(list_encoders())
            for name, factory in entries.items():
                if name not in known:
                    register_encoder(name, factory)
            _WORKER_ENCODERS[key] = create_encoder(spec, device=device, cache_dir=cache_dir)
        return _WORKER_ENCODERS[key]


def _encode_part_task(i: int, start: int, stop: int, ds, specs: tuple[str, str], device: str, cache_dir,
                      entries: dict[str, Any], batch_size: int, on_error: str, parts_dir: str, key: str,
                      workers: int = 1) -> dict[str, Any]:
    """Run on a Dask worker: encode images ``[start, stop)`` as part ``i`` and write it to ``parts_dir``.

    Returns only small metadata (rows kept and skipped, and the hashes of the worker's encoder
    metadata); the features travel through the shared folder, not the scheduler.
    """
    vfm, vlm = (_worker_encoder(s, device, cache_dir, entries) for s in specs)
    ids = {j: str(ds.image_id(j)) for j in range(start, stop)}  # this part's ids only, not the dataset's
    arrays = _encode_shard(vfm, vlm, ds, range(start, stop), ids, batch_size, on_error, None, workers)
    parts = _Parts(parts_dir)
    if (parts.manifest() or {}).get("cache_key") != key:
        # The client restarted with other inputs (or the folder is not shared): do not mix this part in.
        raise GPUAError(f"the parts folder {parts_dir!r} does not belong to this extraction (its manifest has another "
                        "cache key, or this worker does not see it); it must lie on storage every worker shares.")
    parts.save(i, arrays)
    return {"kept": int(arrays["index"].size), "skipped": int(arrays["skipped_index"].size),
            "metadata": (_sha(_portable(vfm.metadata())), _sha(_portable(vlm.metadata())))}


def _portable(meta: Any) -> Any:
    """Encoder metadata without the local files' identity (``changed``: status-change time and inode,
    :func:`gpua.encoders.file_fingerprint`), which differs between two copies of one file: what a
    worker's encoder is compared by (a worker may hold its own copy of the weights)."""
    from .encoders._registry import FILE_IDENTITY

    if isinstance(meta, dict):
        return {k: _portable(v) for k, v in meta.items() if k != FILE_IDENTITY}
    if isinstance(meta, (list, tuple)):
        return [_portable(v) for v in meta]
    return meta


def _encode_on_cluster(cluster, connect_timeout: float, todo: list[int], ranges: list[range], ds, specs: tuple[str, str],
                       metadata: tuple[dict, dict], device: str, cache_dir, batch_size: int, on_error: str,
                       parts: _Parts, key: str, on_part: Callable[[int], None], workers: int = 1) -> None:
    """Encode parts ``todo`` on a Dask cluster; ``on_part(i)`` as each finishes (completion order)."""
    from .encoders import registry_entries
    from .stream import connect

    ex = connect(cluster, timeout=connect_timeout)
    try:
        from distributed import as_completed

        client = ex.client
        ds_ref = ex.broadcast(ds)  # one copy per worker, not one per task
        entries = registry_entries(specs)
        parts_dir = str(parts.dir.resolve())  # workers may run elsewhere: no relative paths
        futures = {
            client.submit(_encode_part_task, i, ranges[i].start, ranges[i].stop, ds_ref, specs, device, cache_dir, entries,
                          batch_size, on_error, parts_dir, key, workers, pure=False): i
            for i in todo
        }
        want = (_sha(_portable(metadata[0])), _sha(_portable(metadata[1])))
        differ = set()
        try:
            for fut in as_completed(list(futures), loop=client.loop):  # loop: our client is not the default one
                info = fut.result()  # re-raises a task's error here (its finished parts are kept)
                differ.update(name for name, a, b in zip(("vfm", "vlm"), info["metadata"], want) if a != b)
                on_part(futures[fut])
        except BaseException:
            client.cancel(list(futures))
            raise
        if differ:
            warn_user(f"the workers' {' and '.join(sorted(differ))} metadata differs from this process's (library versions, "
                      "weights or model files); the features may not match the cache key. Install the same versions and "
                      "model files on every worker.")
    finally:
        ex.close()


# -- the entry point ----------------------------------------------------------------------------
def extract_features(
    vfm: Any,
    vlm: Any,
    dataset: Any,
    classnames: Sequence[str] | str | os.PathLike | None = None,
    templates: Sequence[str] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    format: str = "auto",
    batch_size: int = 64,
    device: str = "cpu",
    float16: bool = False,
    resume: bool = True,
    on_error: str = "skip",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    split: str | None = None,
    shard_size: int = 1024,
    rows_per_shard: int = 65536,
    shard_storage: str = "npy",
    cluster: Any = None,
    connect_timeout: float = 10.0,
    on_shard: Callable[[int, int], None] | None = None,
    image_root: str | os.PathLike | None = None,
    workers: int | None = None,
    reuse: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Encode a dataset with a VFM and a VLM and write a feature file or a shard set.

    Parameters
    ----------
    vfm, vlm : str or Encoder
        Encoder specs (``"offline:dinov2-s"``, ``"open_clip:ViT-B-16/openai"``, see
        :func:`gpua.encoders.list_encoders`) or encoder objects. ``vlm`` must have a text tower.
        With ``cluster``, specs only (each worker builds its own encoders from them).
    dataset : path, str or dataset object
        Anything :func:`gpua.data.load_dataset` opens (image folder, CoOp split file, ``.npz``,
        ``"cifar10-mini"``), or a dataset object with ``len``, ``image_id(i)``, ``label(i)``,
        ``load_image(i)``, ``classnames`` and ``name``.
    classnames : list of str, file or dataset name, optional
        Class names in label order; default: the dataset's.
    templates : name, file or list of str, optional
        Prompt templates with a ``{}`` placeholder (:func:`gpua.data.prompts.get_templates`);
        default (``None`` or ``"auto"``, :func:`gpua.data.prompts.resolve_templates`): the
        dataset's own templates when it is a known benchmark, else CLIP's 80 ImageNet templates.
    out : path
        Where to write. With ``format="auto"``: a name ending in ``.npz`` or ``.safetensors`` is
        one feature file; a name without a suffix is a shard-set folder
        (:class:`gpua.stream.ShardedFeatures`); any other suffix is refused as ambiguous. An
        existing folder is replaced only when it is a shard set (or empty): any other folder is
        refused, never deleted.
    format : {"auto", "file", "shards"}
        ``"shards"`` writes a shard set whatever the folder name (say ``"feats.v2"``), but
        refuses ``.npz`` / ``.safetensors`` names; ``"file"`` insists on a feature file.
    batch_size : int
        Images per forward pass.
    device : str
        Device for encoders created from specs (on every worker too, with ``cluster``).
    float16 : bool
        Store the feature matrices in half precision (half the size; shard sets then have dtype
        ``"float16"``, else ``"float32"``).
    resume : bool
        Continue from the parts of an interrupted run and return at once when ``out`` already
        holds these features; when it holds features of other images or class names (a photo
        added, a class file edited), copy its rows of the images that have not changed instead of
        encoding them again (and those of ``reuse``). ``False`` recomputes everything.
    on_error : {"skip", "fail"}
        Unreadable or truncated images are left out (counted, named in a warning and in
        ``meta["skipped"]``) or stop the run with an error naming the image.
    cache_dir : path, optional
        Model cache for encoders created from specs (downloads, cut ONNX graphs); default
        ``$GPUA_CACHE_DIR`` or the user cache folder.
    progress : bool
        Show tqdm progress bars.
    split : str, optional
        The split to read when ``dataset`` is a path (``"train"``, ``"test"``...).
    shard_size : int
        Images per resumable part under ``<out>.parts/`` (the unit of resumption, and one task
        on a cluster).
    rows_per_shard : int
        Rows per file of a shard set (:class:`gpua.stream.ShardWriter`); ignored for a file.
    shard_storage : {"npy", "safetensors"}
        File format of a shard set's shards; ignored for a file.
    cluster : None, "local", int, str or distributed.Client
        Encode the parts on Dask workers (:func:`gpua.stream.fit_streaming` takes the same
        values): ``"local"`` or a worker count starts a ``LocalCluster`` of processes,
        ``"tcp://host:8786"`` connects to a scheduler. Each worker builds the encoders once
        from their specs and writes its parts to ``<out>.parts/``, which must therefore lie on
        storage shared by this process and every worker; this process builds the encoders too
        (for the cache key and the text prototypes) and assembles the output. The result
        equals a run without ``cluster``. The dataset object is sent to each worker once (an
        image folder as its list of paths, an in-memory array whole).
    connect_timeout : float
        Seconds to wait for a ``cluster`` scheduler before a :class:`GPUAError`.
    on_shard : callable, optional
        Called as ``on_shard(part_index, n_images_done)`` after each part is written (progress
        reporting; in completion order on a cluster; an exception raised there stops the run
        with the parts kept).
    image_root : path, optional
        Where the images of a dataset path lie (:func:`gpua.data.load_dataset`): the folder a
        CoOp split file's relative paths start from, or the folder of Fashion-MNIST's idx files
        (``dataset="fashion-mnist"``).
    workers : int, optional
        Threads that decode the images and prepare them for the encoders (resize, crop,
        normalise), a batch ahead of the encoding; default :func:`default_workers` (the CPU
        count, at most 8) for gpua's datasets (image folders, split files, arrays), ``1`` for a
        dataset object of one's own, whose ``load_image`` must be thread-safe for more. ``1``
        does it all in this thread. The features are the same whatever the number: it only sets
        how fast a GPU is fed (``benchmarks/extract_workers.py``). With ``cluster``, per worker
        process, and ``1`` by default (the worker processes decode in parallel already).
    reuse : list of paths, optional
        Earlier feature files or shard sets whose rows may stand for encoding an image again:
        a row is copied when that output was extracted with the same encoders, image decoding and
        precision, from the same image file, and the file has not changed since (its modification
        and status-change times lie more than :data:`REUSE_MARGIN_NS` before the moment that
        output stat'ed its images; outputs of earlier releases, which do not record that moment,
        lend no rows). Class names play no part in it. The text prototype of a class is copied
        from an output of the same VLM, templates and precision that prompted the class with the
        same words. ``out`` itself is always tried first (with ``resume``), then the finished
        parts of an interrupted run into ``out`` with other inputs (set aside, not discarded), and
        the feature files beside ``out`` last, newest first (a classify run's cache files of the
        folder with other class files), then the parts folders of interrupted extractions beside
        it (a parts folder may be named here too); an output named here that lends no row gets a
        warning saying why. Only
        images stored as files (folders, split files) are copied; ``meta["reused"]`` counts the
        rows and prototypes taken. On a cluster, parts whose every image is lent are written
        here and the others encoded whole by the workers.

    Returns
    -------
    Path
        ``out``: the feature file (:func:`gpua.features.load_features`) or the shard-set folder
        (:class:`gpua.stream.ShardedFeatures`; its ``meta`` and ``image_ids()`` hold what the
        file's do).

    Raises
    ------
    GPUAError
        For bad arguments, an ambiguous or occupied ``out``, encoder objects with ``cluster``, a
        vision-only ``vlm``, missing class names, an unreadable image with ``on_error="fail"``,
        a cluster that does not answer, or a dataset none of whose images can be read.
    """
    from .encoders import check_batch_size, create_encoder
    from .features import check_destination, check_writer_options

    if on_error not in ON_ERROR:
        raise GPUAError(f"on_error={on_error!r} must be one of {ON_ERROR}.")
    batch_size = check_batch_size(batch_size)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or not 1 <= workers <= MAX_WORKERS):
        raise GPUAError(f"workers={workers!r} must be an integer from 1 to {MAX_WORKERS} (threads that decode images; 1: none).")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise GPUAError(f"shard_size must be a positive integer, got {shard_size!r}.")
    reuse = _reuse_paths(reuse)
    if reuse and not resume:
        raise GPUAError("reuse= copies earlier rows and resume=False encodes every image again; pass one of them "
                        "(--reuse or --no-resume).")
    out = Path(out).expanduser()
    kind = _output_kind(out, format)
    # Checked now, not after hours of encoding: the output may not destroy an input, its parts
    # folder must be gpua's own, and both must be writable. An existing output that may be up to
    # date is the exception to the last: read-only storage (a shared dataset folder, a read-only
    # mount) serves a cache hit as it is, so there the writability error waits for the key
    # comparison below, which comes before any image is encoded.
    inputs = [(name, v) for name, v in (("dataset", dataset), ("classnames", classnames), ("templates", templates),
                                        ("image_root", image_root))
              if isinstance(v, (str, os.PathLike))]
    outputs = [(out, "out", "file" if kind == "file" else "tree"), (_Parts.of(out).dir, "out's parts folder", "tree")]
    for path, name, path_kind in outputs:
        check_output(path, name, kind=path_kind, inputs=inputs, writable=False, holds="features")
    unwritable = next((e for e in (_unwritable(*o) for o in outputs) if e is not None), None)
    stored = None
    if unwritable is not None:
        stored = _stored_meta(out) if resume and out.exists() else None
        if stored is None or not isinstance(stored.get("cache_key"), str):
            raise unwritable  # nothing there could be a cache hit: refused now, as any unwritable output
    try:
        _Parts.of(out).check()
    except GPUAError:
        # Another run may be writing or removing that folder this instant (its listing then names
        # a part it renames or a file it removes): judged again once that run is done.
        with _OutputLock(out, wait=unwritable is None):
            _Parts.of(out).check()
    if kind == "shards":
        check_writer_options("float16" if float16 else "float32", shard_storage, rows_per_shard)
        check_destination(out, overwrite=True, name="out")
    if cluster is not None:
        for name, enc in (("vfm", vfm), ("vlm", vlm)):
            if not isinstance(enc, str):
                raise GPUAError(
                    f"{name} is a {type(enc).__name__} object, but cluster= needs encoder specs (strings such as "
                    "'open_clip:ViT-B-16/openai') so that each worker can build its own; register a custom encoder "
                    "with gpua.encoders.register_encoder and pass its name."
                )

    ds = _open_dataset(dataset, split, classnames, image_root)
    if workers is None:
        # A dataset object of one's own may read through one shared handle (a zip or HDF5 file):
        # its load_image runs in threads only when asked for.
        # On a cluster each worker process decodes its own parts already: threads on top would
        # put the CPU count's threads in every process of a machine.
        workers = default_workers() if _gpuas_loader(ds) and cluster is None else 1
    workers = int(workers)
    names = list(getattr(ds, "classnames", []) or [])
    words = _class_words(classnames, names)
    if not names:
        raise GPUAError(
            f"dataset {getattr(ds, 'name', '')!r} has no class names, so there is nothing to build text prototypes "
            "from; pass classnames= (a list, a file, or a dataset name such as 'cifar10')."
        )
    if len(names) < 2:  # checked before any image is encoded: the feature file could not be written
        raise GPUAError(
            f"classnames name {len(names)} class ({names[0]!r}); a feature file holds text prototypes of at least 2 classes "
            "to tell apart: pass classnames= with every class the images may belong to."
        )
    temps = _resolve_templates(templates, ds, dataset, classnames)
    n = len(ds)
    if n == 0:
        raise GPUAError("dataset holds no images; check the path and split.")
    ids = [str(ds.image_id(i)) for i in range(n)]
    if len(set(ids)) != n:
        from collections import Counter

        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise GPUAError(f"dataset image ids are not unique ({dup!r} repeats); feature rows are keyed by image id.")
    labels = [_label(ds, i) for i in range(n)]

    specs = (vfm, vlm)
    vfm = create_encoder(vfm, device=device, cache_dir=cache_dir)
    vlm = create_encoder(vlm, device=device, cache_dir=cache_dir)
    if not vlm.is_vlm:
        raise GPUAError(f"vlm={vlm.spec!r} is vision-only; the VLM must encode text, e.g. 'offline:semantic-lite0' (offline) or "
                        "'open_clip:ViT-B-16/openai'.")

    stat_time_ns = time.time_ns()  # before the stat: a file changed after this moment may differ from its row
    stamps = _file_stamps(ds, n)
    identity = _dataset_identity(ds, ids, labels, stamps)
    # Read once: a local model's metadata stats every file of its folder.
    vfm_meta, vlm_meta = vfm.metadata(), vlm.metadata()

    # The same key for a file and a shard set: it identifies the features, not their container.
    def key_of(encoder_meta: Callable[[Any], Any]) -> str:
        return _sha({
            "format": FORMAT_VERSION,
            "decode": DECODE_VERSION,
            "vfm": encoder_meta(vfm_meta),
            "vlm": encoder_meta(vlm_meta),
            "dataset": identity,
            "classnames": names,
            "templates": temps,
            "float16": bool(float16),
            **({"class_prompts": words} if words else {}),  # absent when every class is its own prompt: keys stay as they were
        })

    key = key_of(lambda meta: meta)
    # The key the release before the fingerprints' ``changed`` field (status-change time, inode)
    # gave the same inputs: its outputs and parts are taken as that release took them, not
    # re-encoded (hours with a large VFM). Equal to ``key`` for encoders without local files.
    keys = {key, key_of(_portable)}
    # One writer per output at a time: from the cache check to the parts' removal, a second run
    # into the same out (the same command twice, or classify with two class files side by side)
    # waits here, then finds the first one's output (a cache hit) or replaces it whole.
    with _OutputLock(out, wait=unwritable is None):
        if stored is None:  # read above only when the output cannot be written
            stored = _stored_meta(out) if resume and out.exists() else None
        damage = _damage(out) if stored is not None and stored.get("cache_key") in keys else None
        if damage is not None:
            # Was a cache hit: every run said "up to date", and then failed on the damage.
            if unwritable is not None:
                raise GPUAError(f"{str(out)!r} holds these features but is damaged ({damage}), and it cannot be rewritten "
                                f"here ({unwritable}); extract to another --out.")
            warn_user(f"{str(out)!r} holds these features but is damaged ({damage}); extracting them again.")
            stored = None
        if stored is not None and stored.get("cache_key") in keys:
            _check_up_to_date(out, stored, kind, rows_per_shard, shard_storage, on_error)
            if unwritable is None:
                _remove_leftovers(out, keys)
            return out
        if unwritable is not None:  # not up to date, so it would be rewritten: still before any image is encoded
            raise unwritable

        prompts = words or [[c] for c in names]  # each class's prompt words
        # What lets these parts lend their rows to a run with other inputs, should this one be interrupted.
        lend = {"format": FORMAT_VERSION, "decode": DECODE_VERSION, "float16": bool(float16), "vfm": vfm_meta,
                "vlm": vlm_meta, "dataset": {"root": identity["root"]}, "stat_time_ns": stat_time_ns,
                "templates": temps, "class_prompts": prompts} \
            if stamps is not None and isinstance(identity.get("root"), str) else None
        parts = _Parts.open(out, key, int(shard_size), resume, also=keys, lend=lend)
        # `out` first: it holds the last run's rows of this folder (before a photo was added); then
        # the parts of an interrupted run into `out` with other inputs, set aside in its parts
        # folder; then the outputs named, then the feature files beside `out` (classify's cache
        # files of this folder with other class files), newest first, and the parts of interrupted
        # extractions into them.
        # Each one's meta is read once here (`out`'s was, above), for the text and the image rows alike.
        candidates = ([(out, False, stored)] + [(src, False, meta) for src, meta in parts.lenders(own=True)]
                      + [c for p in reuse for c in _named_candidates(p)]
                      + [(p, False, _candidate_meta(p)) for p in _beside(out)]
                      + [(src, False, meta) for src, meta in _beside_parts(out)]) if resume else []
        # The text side first (seconds): classes the VLM cannot tell apart are refused before any
        # image is encoded (their fix, prompt words, changes the key: encoded parts would be lost).
        Y = parts.load_text()
        lent_text: dict[int, np.ndarray] = {}
        text_sources: list[str] = []
        if Y is None or Y.shape != (len(names), vlm.embed_dim):
            from .data.prompts import build_text_prototypes

            lent_text, text_sources = _lent_prototypes([(p, meta) for p, _, meta in candidates], prompts, temps, vlm_meta,
                                                       float16, vlm.embed_dim)
            Y = np.empty((len(names), vlm.embed_dim), np.float32)
            for k, row in lent_text.items():
                Y[k] = row
            todo_text = [k for k in range(len(names)) if k not in lent_text]
            if todo_text:  # each class's prototype is its own prompts' alone: the others' need not be encoded again
                Y[todo_text] = build_text_prototypes(vlm.encode_text, [names[k] for k in todo_text], temps, progress=progress,
                                                     synonyms=None if words is None else [words[k] for k in todo_text])
            _refuse_coinciding_classes(Y, names, vlm)
            parts.save_text(Y)
        ranges = [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
        # Only the parts' small arrays are read to see what is done; features stay on disk until assembly.
        todo = [i for i in range(len(ranges)) if parts.summary(i, ids) is None]
        done = n - sum(len(ranges[i]) for i in todo)
        widths = (vfm.embed_dim, vlm.embed_dim)
        lent = _ReusedRows()
        if todo and candidates:
            lent = _ReusedRows.find(candidates, root=identity.get("root"), ids=ids, stamps=stamps,
                                    encoders=(vfm_meta, vlm_meta), float16=float16, widths=widths)
        if (len(lent) or lent_text) and progress:
            from tqdm.auto import tqdm

            what = ([f"the features of {len(lent)} of {n} images"] if len(lent) else []) + \
                ([f"the text prototypes of {len(lent_text)} of {len(names)} classes"] if lent_text else [])
            tqdm.write(f"reusing {' and '.join(what)} from earlier outputs: {'; '.join(text_sources + lent.sources)}")
        reused = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=done, desc=f"extract {getattr(ds, 'name', '')}", unit="img")

        def part_done(i: int) -> None:
            nonlocal done
            done += len(ranges[i])
            if bar is not None and cluster is not None:  # locally, _encode_shard ticks per batch
                bar.update(len(ranges[i]))
            if on_shard is not None:
                on_shard(i, done)

        split = {i: lent.split(ranges[i]) for i in todo}  # each part's lent rows and the images left to encode

        def encode_here(i: int) -> None:
            """Part ``i`` in this process: its lent rows copied, the others encoded (the bar ticks per batch)."""
            nonlocal reused
            rows, rest = split[i]
            part = _encode_shard(vfm, vlm, ds, rest, ids, batch_size, on_error, bar, workers) if len(rest) else _empty_part(widths)
            parts.save(i, lent.merged(part, rows, ids))
            reused += rows.stop - rows.start
            if bar is not None and cluster is None:  # on a cluster, part_done ticks whole parts
                bar.update(rows.stop - rows.start)
            part_done(i)

        try:
            if cluster is None:
                for i in todo:
                    encode_here(i)
            else:
                lent_whole = {i for i in todo if not len(split[i][1])}  # nothing to send to a worker
                for i in sorted(lent_whole):
                    encode_here(i)
                todo = [i for i in todo if i not in lent_whole]
                if todo:
                    _encode_on_cluster(cluster, connect_timeout, todo, ranges, ds, specs, (vfm_meta, vlm_meta), device,
                                       cache_dir, batch_size, on_error, parts, parts.key, part_done, workers)
        finally:
            if bar is not None:
                bar.close()

        summaries = [parts.summary(i, ids) for i in range(len(ranges))]
        missing = [i for i, s in enumerate(summaries) if s is None]
        if missing:
            where = " (written by the workers: the folder must lie on storage this process and every worker share)" if cluster is not None else ""
            raise GPUAError(f"part {missing[0]} is missing or unreadable in {str(parts.dir)!r}{where}; run again to redo it.")
        index = np.concatenate([s["index"] for s in summaries])
        skipped = [(int(j), str(e)) for s in summaries for j, e in zip(s["skipped_index"], s["skipped_error"])]
        del summaries
        if index.size == 0:
            raise NoReadableImageError(f"none of the {n} images could be read (first: {ids[skipped[0][0]]!r}: {skipped[0][1]}).")
        if skipped and on_error == "fail":  # parts written by a run that skipped, resumed by one that must not
            j, err = skipped[0]
            raise _image_error(ids[j], j, "read or encoded", err.split(": ", 1)[-1])
        if skipped:
            shown = ", ".join(ids[j] for j, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            warn_user(f"skipped {len(skipped)} unreadable image(s) of {n}: {shown} (all listed in meta['skipped']).")

        y = np.asarray([labels[j] for j in index], dtype=np.int64)
        if (y < 0).any():
            if (y >= 0).any():
                warn_user(f"{int((y < 0).sum())} of {y.size} images have no label; the output stores no labels.")
            y = None
        meta = {
            "gpua_version": __version__,
            "format": FORMAT_VERSION,
            "cache_key": key,
            "vfm": vfm_meta,
            "vlm": vlm_meta,
            # Where the images came from is provenance, not identity (a moved file keeps its cache key).
            "dataset": {**identity, "source": str(dataset) if isinstance(dataset, (str, os.PathLike)) else None},
            "templates": temps,
            "class_prompts": prompts,
            "float16": bool(float16),
            "skipped": {"count": len(skipped), "images": [{"index": j, "image_id": ids[j], "error": e} for j, e in skipped]},
            # What lets a later run reuse these rows (_ReusedRows): how the images were decoded,
            # and when their files were stat'ed for this key.
            "decode": DECODE_VERSION,
            **({"stat_time_ns": stat_time_ns} if stamps is not None else {}),
            # Rows and prototypes copied from earlier outputs (provenance; the arrays equal an encoding's).
            **({"reused": {"rows": reused, "prototypes": len(lent_text), "from": text_sources + lent.sources}}
               if reused or lent_text else {}),
        }
        if kind == "file":
            # One matrix per encoder, filled part by part: the parts are never all in memory at once.
            Z = np.empty((index.size, widths[0]), np.float32)
            X = np.empty((index.size, widths[1]), np.float32)
            for r0, r1, part in _assemble(parts, ranges, ids, widths):
                Z[r0:r1], X[r0:r1] = part["vfm"], part["vlm"]
            with writing_extraction():  # the one writer whose cache key stays: it certifies these arrays
                save_features(
                    out, vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=y, classnames=names,
                    image_ids=[ids[j] for j in index], meta=meta, float16=float16,
                )
        else:
            from .features import ShardWriter

            # atomic: the rows go to a hidden sibling folder, renamed onto `out` once complete.
            with writing_extraction(), ShardWriter(
                out, dtype="float16" if float16 else "float32", rows_per_shard=rows_per_shard, storage=shard_storage,
                text_prototypes=Y, classnames=names, meta=meta, overwrite=True, atomic=True,
            ) as writer:
                for r0, r1, part in _assemble(parts, ranges, ids, widths):
                    if r1 > r0:  # a part whose images were all unreadable adds no rows
                        writer.append(part["vfm"], part["vlm"], labels=None if y is None else y[r0:r1], image_ids=part["image_ids"])
        parts.remove()
        return out


def _assemble(parts: _Parts, ranges: list[range], ids: list[str], widths: tuple[int, int]):
    """Yield ``(first row, last row + 1, part)`` for every part in order, one part in memory at a time."""
    row = 0
    for i in range(len(ranges)):
        part = parts.load(i, ids)
        if part is None or part["vfm"].shape[1:] != (widths[0],) or part["vlm"].shape[1:] != (widths[1],):
            # Its summary read fine, its features did not (a damaged byte): only this part is
            # redone, so remove it rather than have the user delete every finished part.
            parts.shard_path(i).unlink(missing_ok=True)
            raise GPUAError(f"part {i} in {str(parts.dir)!r} ({len(ranges[i])} images) was damaged on disk and has been "
                            "removed; run the same command again: it re-encodes that part only and resumes the rest.")
        m = part["index"].size
        yield row, row + m, part
        row += m
        del part  # drop it before the next is read
