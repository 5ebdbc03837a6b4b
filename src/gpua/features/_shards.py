r"""Feature matrices on disk as row shards, memory-mapped and read in row chunks.

A shard set is a folder::

    index.json                          format, row counts, widths, dtype, class names
    shard-000000.vfm_features.npy       (n_0, d_vfm)   storage "npy": one file per key
    shard-000000.vlm_features.npy       (n_0, d_vlm)
    shard-000000.labels.npy             (n_0,) int64    optional, never read by a fit
    shard-000000.image_ids.json         n_0 strings     optional (JSON list), never read by a fit
    shard-000001....
    text_prototypes.npy                 (K, d_vlm)      optional, float32

or, with storage ``"safetensors"``, one ``shard-000000.safetensors`` per shard holding the
feature and label keys (image ids stay in their JSON files). Feature dtypes: ``float16``, ``bfloat16`` or ``float32`` (``npy`` has no bfloat16, so
bfloat16 shards hold the raw 16-bit patterns as ``uint16`` and the index says ``bfloat16``).
Reads convert to float32 on the target device, so computation accumulates in float32 or
float64 whatever the storage.

Every shard file is written atomically (:func:`gpua._atomic.atomic_path`) and the index last,
so a crash never leaves a half-written shard under its final name, and a folder without
``index.json`` is an unfinished set. The index records a SHA-256 checksum of every file of the
set (``files``) and of itself (``checksum``); readers check the index at once and each file the
first time they map it (once per process and version of the file: a Dask worker's per-task
readers do not hash it again), and check every header against the file's size, so a truncated or
damaged shard is named instead of read (sets written before checksums existed are read with the
structural checks alone). A file removed, truncated or replaced after a reader read its layout
is refused by that reader, never read as rows of the set it opened. ``ShardWriter(..., atomic=True)`` (and :func:`write_shards`, always,
and any writer that replaces an existing set) goes further: it writes into a hidden sibling
folder and renames the finished set into place, so the destination is always either the old
set or the complete new one; a writer killed between the two renames of that swap leaves both
sets complete and hidden, and the next reader or writer puts the new one in place
(:func:`recover_shard_set`). Only folders that hold nothing but shard files are ever deleted.
Readers never keep a mapping open between calls: a read maps the file, copies the rows out and
unmaps, so pages touched by a pass over a million rows do not stay in the process's resident
memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .._atomic import TEMP_MARK, atomic_path, atomic_write_text
from .._errors import GPUAError, ModelFileError, warn_user
from .._integrity import CHECKSUM_KEY, digest, file_digest, read_npy_header, safetensors_layout
from .._integrity import verify as verify_checksum
from .._validation import as_path, check_classnames, check_labels, check_matrix, check_prototypes, check_strings, is_int
from ._io import _check_precision, certified_meta

__all__ = [
    "SHARD_FORMAT", "FEATURE_DTYPES", "ShardedFeatures", "ShardWriter", "write_shards", "check_destination",
    "check_writer_options", "recover_shard_set",
]

SHARD_FORMAT = "gpua-shards"
SHARD_FORMAT_VERSION = 1
FEATURE_DTYPES = ("float16", "bfloat16", "float32")
STORAGES = ("npy", "safetensors")
_FEATURE_KEYS = ("vfm_features", "vlm_features")
INDEX_NAME = "index.json"
PROTOTYPES_NAME = "text_prototypes.npy"
IDS_KEY = "image_ids"

# numpy dtype of the bytes on disk, and the torch dtype they are reinterpreted as.
_DISK = {"float16": (np.float16, torch.float16), "bfloat16": (np.uint16, torch.bfloat16), "float32": (np.float32, torch.float32)}
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "I64": "int64"}
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.")
#: The whole names of the shard files a writer makes (:func:`_shard_file`): only these are gpua's
#: to delete (was: any name starting "shard-", so a WebDataset's shard-000000.tar went too; then
#: any shard-000000.<word>.npy or .json, so a user's shard-000000.captions.json went too).
_OWN_SHARD_RE = re.compile(rf"^shard-\d{{6,}}\.(?:safetensors|(?:{'|'.join((*_FEATURE_KEYS, 'labels'))})\.npy|{IDS_KEY}\.json)$")
_FIX_INDEX = "re-write the shard set (or, if you edited index.json on purpose, delete its 'checksum' entry)"

#: Files verified against their recorded checksum in this process, as ``(path, checksum, identity)``
#: (:func:`_identity`). A Dask worker unpickles a new reader for every task; without this memo each
#: task would hash every shard file it reads once more (a whole shard per chunk read, every pass).
#: A file replaced or rewritten since has another identity and is hashed again.
_VERIFIED: set[tuple[str, str, tuple[int, ...]]] = set()


def _identity(f: Path) -> tuple[int, ...]:
    """Device, inode, size and modification time of ``f``: changes when the file is replaced or rewritten."""
    st = os.stat(f)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _shard_file(i: int, key: str, storage: str) -> str:
    if key == IDS_KEY:  # strings: JSON whatever the storage (neither npy nor safetensors holds them well)
        return f"shard-{i:06d}.{IDS_KEY}.json"
    return f"shard-{i:06d}.safetensors" if storage == "safetensors" else f"shard-{i:06d}.{key}.npy"


def check_writer_options(dtype: str, storage: str, rows_per_shard) -> None:
    """The ShardWriter arguments that can be checked before any row exists."""
    if dtype not in FEATURE_DTYPES:
        raise GPUAError(f"dtype={dtype!r} is unknown; use one of {FEATURE_DTYPES}.")
    if storage not in STORAGES:
        raise GPUAError(f"storage={storage!r} is unknown; use one of {STORAGES}.")
    if isinstance(rows_per_shard, bool) or not (isinstance(rows_per_shard, (int, np.integer)) and rows_per_shard >= 1):
        raise GPUAError(f"rows_per_shard={rows_per_shard!r} must be a positive integer (try 65536).")


def _is_shard_set(path: Path) -> bool:
    """Whether ``path`` holds a gpua shard index (a finished set: the index is written last)."""
    try:
        return json.loads((path / INDEX_NAME).read_text(encoding="utf-8")).get("format") == SHARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _foreign_entries(path: Path) -> list[str]:
    """The entries of folder ``path`` (sorted names) that are not files of a name a shard writer makes (gpua's marker)."""
    return sorted(
        p.name for p in path.iterdir()
        if not (p.is_file() and not p.is_symlink()
                and (p.name in (INDEX_NAME, PROTOTYPES_NAME) or _OWN_SHARD_RE.match(p.name)
                     or (p.name.startswith(".") and TEMP_MARK in p.name)))
    )


def _only_shard_files(path: Path) -> bool:
    """Whether every entry of folder ``path`` is a file of a name a shard writer makes (gpua's marker)."""
    return not _foreign_entries(path)


def _holds_images(path: Path, look: int = 200) -> bool:
    """Whether folder ``path`` holds image files (or class folders of them) among its first ``look``
    entries: photos given where features go."""
    from ..data._loaders import _is_image

    try:
        for n, e in enumerate(os.scandir(path)):
            if n >= look:
                return False
            if e.is_file() and _is_image(e.name):
                return True
            if e.is_dir() and not e.name.startswith("."):
                if any(_is_image(name) for name in itertools.islice(os.listdir(e.path), look)):
                    return True
    except OSError:
        return False
    return False


def _hidden(final: Path, tag: str) -> Path:
    """The sibling folder an atomic writer of ``final`` uses: ``.<name>.partial`` or ``.<name>.old``."""
    return final.parent / f".{final.name}.{tag}"


def _remove_set(path: Path) -> None:
    """Delete a folder of shard files (a set, or a writer's leftovers); anything else is refused."""
    if not path.exists():
        return
    if not path.is_dir() or path.is_symlink() or not _only_shard_files(path):
        raise GPUAError(
            f"{str(path)!r} holds files that gpua did not write; refusing to delete it. Move it away and run again."
        )
    shutil.rmtree(path)


def recover_shard_set(path: str | os.PathLike) -> bool:
    """Put back a finished set that an atomic writer killed mid-swap left hidden beside ``path``.

    An atomic :class:`ShardWriter` installs its set with two renames (the old set to
    ``.<name>.old``, the new one from ``.<name>.partial``); killed between them, ``path`` is
    missing while both sets are complete. When ``path`` holds no finished set (missing, or an
    empty folder), the new set is renamed into place (and the old one, which it replaces,
    removed), or failing that the old one is. Readers and writers call this first.

    Returns
    -------
    bool
        Whether a set was put back.
    """
    final = Path(path).expanduser()
    if final.exists() and not (final.is_dir() and not final.is_symlink() and not any(final.iterdir())):
        return False  # a finished set, or something else that is not ours to move
    for tag in ("partial", "old"):  # the newer set first: its writer had finished writing it
        hidden = _hidden(final, tag)
        if not (_is_shard_set(hidden) and _only_shard_files(hidden)):
            continue
        try:
            if final.exists():
                final.rmdir()
            os.replace(hidden, final)
        except OSError:
            if not _is_shard_set(final):  # not another process restoring it at the same moment
                raise GPUAError(f"a finished shard set is hidden in {str(hidden)!r} but could not be moved to {str(final)!r}; rename it yourself.") from None
        if tag == "partial" and _is_shard_set(_hidden(final, "old")):
            _remove_set(_hidden(final, "old"))  # the set the installed one was written to replace
        return True
    return False


def check_destination(path: str | os.PathLike, *, overwrite: bool, name: str = "path", recover: bool = True) -> None:
    """Refuse a destination that replacing with a shard set would destroy.

    A missing path, an empty folder, or a folder of shard files only (with ``overwrite=True``
    when it holds a finished set) may be replaced; a file or any other folder may not: nothing a
    user made is deleted by a writer.

    Parameters
    ----------
    path : str or Path
    overwrite : bool
        Whether an existing shard set may be replaced.
    name : str
        The argument's name, used in the messages.
    recover : bool
        First put back a set that a killed atomic writer left hidden (:func:`recover_shard_set`).
    """
    path = Path(path).expanduser()
    if recover:
        recover_shard_set(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise GPUAError(f"{name}={str(path)!r} is an existing file, but a shard set is a folder; pass a folder name (or delete the file).")
    if _is_shard_set(path):
        if not overwrite:
            raise GPUAError(f"{str(path)!r} already holds a shard set; pass overwrite=True or write to another folder.")
        foreign = _foreign_entries(path)
        if foreign:
            shown = ", ".join(map(repr, foreign[:3])) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise GPUAError(
                f"{name}={str(path)!r} is a shard set that also holds other files (not written by gpua: {shown}); refusing "
                "to replace it with everything in it. Move those files away, or write to another folder."
            )
        return
    if not _only_shard_files(path):
        # a folder with an index.json of another tool has one: say whose it is not (was: "it has no index.json")
        index = f"its {INDEX_NAME} is not gpua's" if (path / INDEX_NAME).exists() else f"it has no {INDEX_NAME}"
        raise GPUAError(
            f"{name}={str(path)!r} is a folder that is not a gpua shard set ({index} and it holds other "
            "files); refusing to replace it. Pass a new or empty folder, or move that folder away."
        )


def _to_disk(A: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows -> the on-disk representation of ``dtype`` (bfloat16 as its bit pattern)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return np.ascontiguousarray(A, dtype=_DISK[dtype][0])


def _check_index(index: dict, where: str) -> None:
    """Check every key of a shard index a reader uses: present (when required) and of its type."""

    def bad(key: str, want: str) -> ModelFileError:
        return ModelFileError(f"{where} has {key}={str(index.get(key, '<missing>'))[:80]!r} where {want} is needed; {_FIX_INDEX}.")

    if index.get("storage") not in STORAGES:
        raise bad("storage", f"one of {STORAGES}")
    if index.get("dtype") not in FEATURE_DTYPES:
        raise bad("dtype", f"one of {FEATURE_DTYPES}")
    widths = index.get("widths")
    if not (isinstance(widths, dict) and all(is_int(widths.get(k)) and widths[k] >= 1 for k in _FEATURE_KEYS)):
        raise bad("widths", f"an object with positive integer {list(_FEATURE_KEYS)}")
    rows = index.get("shard_rows")
    if not (isinstance(rows, list) and rows and all(is_int(r) and r >= 1 for r in rows)):
        raise bad("shard_rows", "a non-empty list of positive row counts")
    if "n_samples" in index and not (is_int(index["n_samples"]) and index["n_samples"] == sum(rows)):
        raise bad("n_samples", f"the sum of shard_rows ({sum(rows)})")
    for key in ("labels", IDS_KEY):
        if not isinstance(index.get(key, False), bool):
            raise bad(key, "true or false")
    names = index.get("classnames")
    if names is not None and not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
        raise bad("classnames", "a list of strings (or null)")
    if not isinstance(index.get("meta", {}), dict):
        raise bad("meta", "an object")
    files = index.get("files", {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise bad("files", "an object of file checksums")


@dataclass(frozen=True)
class _Array:
    """Where one key of one shard lies on disk: enough to memory-map it."""

    path: str
    dtype: str  # numpy dtype string of the bytes
    shape: tuple[int, ...]
    offset: int | None  # None: an .npy file (numpy reads its own header)

    def map(self) -> np.ndarray:
        if self.offset is None:
            return np.load(self.path, mmap_mode="r")
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


class ShardedFeatures:
    r"""A shard set on disk: the VFM and VLM features of :math:`N` images, in row shards.

    Parameters
    ----------
    path : str or Path
        The shard folder (or its ``index.json``).
    check : bool
        Check at once that every shard file exists with the row count, width and dtype the index
        gives (headers only, no data read). Errors name the shard and the file.
    verify : bool
        Verify each file against the checksum the index records for it, the first time it is
        read (one extra read of each file per reader). ``False`` skips that (the structural
        checks stay).

    Attributes
    ----------
    path : Path
    n_samples : int
    widths : dict
        ``{"vfm_features": d_vfm, "vlm_features": d_vlm}``.
    dtype : str
        Storage dtype of the features.
    shard_rows : list of int
    offsets : int array of shape (n_shards + 1,)
        First global row of each shard, and ``n_samples`` last.
    has_labels : bool
    has_image_ids : bool
        Whether :meth:`image_ids` can name the rows (sets written with ``image_ids``).
    classnames : list of str or None
    meta : dict
    """

    # Lets ``GPUA.fit`` recognise a streaming source without importing this package.
    _gpua_streaming_source = True

    def __init__(self, path: str | os.PathLike, *, check: bool = True, verify: bool = True):
        path = as_path(path)
        if path.name == INDEX_NAME:
            path = path.parent
        self.path = path
        index_path = path / INDEX_NAME
        if not index_path.is_file():
            recover_shard_set(path)
        if not index_path.is_file():
            if _holds_images(path):  # photos where features go: was sent to "write an index.json" into the photo folder
                raise ModelFileError(f"{str(path)!r} is a folder of images, not features; encode it first: gpua extract --vfm ... "
                                     f"--vlm ... --data {str(path)!r} --out feats.npz (or classify it at once: gpua classify "
                                     f"--images {str(path)!r}).")
            if path.is_file():  # a feature file where a shard set goes (was: "shard set 'a.npz' has no index.json")
                raise ModelFileError(f"{str(path)!r} is a file, not a shard set (a folder with {INDEX_NAME}); fit a feature file in "
                                     "memory (GPUA().fit, gpua fit --train FILE), or write it as shards first with "
                                     "gpua.stream.write_shards.")
            hint = " (it holds shard files but no index: the writer did not finish; re-run it)" if path.is_dir() and any(path.glob("shard-*")) else ""
            raise ModelFileError(f"shard set {str(path)!r} has no {INDEX_NAME}{hint}; write one with `gpua extract --out DIR` or gpua.stream.write_shards.")
        where = f"shard index {str(index_path)!r}"
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelFileError(f"{where} is unreadable ({exc}); re-write the shard set.") from None
        if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
            fmt = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise ModelFileError(f"{str(index_path)!r} is not a gpua shard index (format {fmt!r}).")
        version = index.get("format_version", 1)
        if not is_int(version) or version < 1:
            raise ModelFileError(f"{where} has format_version {version!r}, not a positive integer; {_FIX_INDEX}.")
        if version > SHARD_FORMAT_VERSION:
            raise ModelFileError(f"{str(index_path)!r} has shard format {version}; this gpua reads {SHARD_FORMAT_VERSION} and older: upgrade gpua.")
        stored = index.pop(CHECKSUM_KEY, None)
        if stored is not None:
            verify_checksum(stored, digest(index), where, _FIX_INDEX)
        _check_index(index, where)
        self._index = index
        self._index_checksum = stored if stored is not None else digest(index)
        self.dtype = index["dtype"]
        self.storage = index["storage"]
        self.widths = {k: int(index["widths"][k]) for k in _FEATURE_KEYS}
        self.has_labels = bool(index.get("labels", False))
        self.has_image_ids = bool(index.get(IDS_KEY, False))  # absent from sets written before ids existed
        self.shard_rows = [int(s) for s in index["shard_rows"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self.n_samples = int(self.offsets[-1])
        self.classnames = index.get("classnames")
        self.meta = index.get("meta", {})
        self._files: dict[str, str] = index.get("files", {})  # file name -> checksum (absent in older sets)
        self._verify = bool(verify)
        self._verified: set[str] = set()
        self._arrays: list[dict[str, _Array]] | None = None
        self._identities: dict[str, tuple[int, ...]] = {}  # file name -> _identity when its layout was read
        if check:
            self._layout()

    # --- layout ----------------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[str, ...]:
        return _FEATURE_KEYS + (("labels",) if self.has_labels else ())

    @property
    def n_shards(self) -> int:
        return len(self.shard_rows)

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return (
            f"ShardedFeatures({str(self.path)!r}, n_samples={self.n_samples}, shards={self.n_shards}, "
            f"vfm={self.widths['vfm_features']}, vlm={self.widths['vlm_features']}, dtype={self.dtype})"
        )

    def __getstate__(self):
        # Workers re-open the set from its path (shared storage); the layout is re-read there,
        # and the index's checksum tells them whether it is still the set the fit started on.
        # The path is absolute: a worker (and the scheduler) resolve a relative one against
        # their own working folder.
        if "_pickled" in self.__dict__:  # unpickled where the set is not visible (a Dask scheduler): passed on as is
            return dict(self.__dict__["_pickled"])
        return {"path": str(self.path.absolute()), "index_checksum": self._index_checksum}

    def __setstate__(self, state):
        if not (Path(state["path"]) / INDEX_NAME).is_file():
            # Not visible from this process: the Dask scheduler unpickles every task's arguments
            # but reads no rows, and often has no access to the workers' shared storage. The
            # set is opened at its first use instead (__getattr__), which says what is wrong.
            self.__dict__["_pickled"] = dict(state)
            return
        self._reopen(state)

    def __getattr__(self, name):
        # Only for attributes not found the normal way: those of a set unpickled but not yet opened.
        state = self.__dict__.get("_pickled")
        if state is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            self._reopen(state)
        except ModelFileError as exc:
            raise ModelFileError(
                f"{str(exc).rstrip('.')}. (This process was sent the shard set {state['path']!r} by a fit: every Dask "
                "worker must see it at that same absolute path, on shared storage.)"
            ) from None
        del self.__dict__["_pickled"]
        return getattr(self, name)

    def _reopen(self, state) -> None:
        self.__init__(state["path"], check=False)
        expected = state.get("index_checksum")
        if expected is not None and expected != self._index_checksum:
            raise ModelFileError(
                f"shard set {str(self.path)!r} was replaced after the fit opened it (its index changed), so this task "
                "would read other rows than the others; re-run the fit on the set as it is now."
            )

    def fingerprint(self) -> str:
        """A string that changes when the features a fit reads change, in value or row order.

        It holds the layout (shard rows, widths, dtype, storage) and the SHA-256 checksum of
        every feature file (``"files"`` in the index, recorded at write time), so it costs no
        read of shard data; readers check each file against that checksum the first time they
        map it. A set written before the index recorded checksums has its feature files hashed
        here instead (one read of their bytes). The files of labels (``npy`` storage) and
        image ids are left out, since a fit does not read them, and so is ``text_prototypes.npy``:
        a checkpoint fingerprints the prototypes the fit is given. So is the folder's path: a set
        moved or copied elsewhere holds the same data.

        Returns
        -------
        str
        """
        files = {_shard_file(i, key, self.storage): i for i in range(self.n_shards) for key in _FEATURE_KEYS}
        return json.dumps(
            {
                **{k: self._index[k] for k in ("shard_rows", "widths", "dtype", "storage")},
                "files": {name: self._files.get(name) or self._file_checksum(i, name) for name, i in files.items()},
            },
            sort_keys=True,
        )

    def _file_checksum(self, i: int, name: str) -> str:
        """SHA-256 of shard ``i``'s file ``name``, read from disk (for sets whose index records none)."""
        f = self.path / name
        self._require_file(i, f)
        try:
            return file_digest(f)
        except OSError as exc:
            raise ModelFileError(f"shard {i} file {str(f)!r} is unreadable ({exc}); re-write the shard set.") from None

    def _expected(self, key: str, i: int) -> tuple[tuple[int, ...], str]:
        if key == "labels":
            return (self.shard_rows[i],), "int64"
        return (self.shard_rows[i], self.widths[key]), np.dtype(_DISK[self.dtype][0]).str

    def _layout(self) -> list[dict[str, _Array]]:
        """Locate every key of every shard and check its shape and dtype against the index."""
        if self._arrays is not None:
            return self._arrays
        self._check_no_extra_shards()
        out = []
        for i in range(self.n_shards):
            arrays: dict[str, _Array] = {}
            if self.storage == "safetensors":
                f = self.path / _shard_file(i, "", "safetensors")
                self._require_file(i, f)
                header, _, start = safetensors_layout(f, f"shard {i} file {str(f)!r}")
                for key in self.keys:
                    if key not in header:
                        raise ModelFileError(f"shard {i} file {str(f)!r} has no {key!r}; re-write shard {i}.")
                    h = header[key]
                    dt = _ST_DTYPES.get(h["dtype"])
                    if dt is None:
                        raise ModelFileError(f"shard {i} file {str(f)!r} stores {key!r} as {h['dtype']}; re-write shard {i}.")
                    np_dt = np.dtype(np.int64 if dt == "int64" else _DISK[dt][0]).str
                    arrays[key] = _Array(str(f), np_dt, tuple(h["shape"]), start + int(h["data_offsets"][0]))
            else:
                for key in self.keys:
                    f = self.path / _shard_file(i, key, "npy")
                    self._require_file(i, f)
                    try:
                        with open(f, "rb") as fh:  # header only, no data; its declared size is checked against the file's
                            shape, fortran, dt, _ = read_npy_header(fh, os.path.getsize(f), f"shard {i} file {str(f)!r}")
                    except OSError as exc:
                        raise ModelFileError(f"shard {i} file {str(f)!r} is unreadable ({exc}); re-write shard {i}.") from None
                    if fortran and len(shape) > 1:
                        raise ModelFileError(f"shard {i} file {str(f)!r} is stored in Fortran order; re-write shard {i} (np.save of a C-ordered array).")
                    arrays[key] = _Array(str(f), dt.str, tuple(shape), None)
            for key, arr in arrays.items():
                shape, dt = self._expected(key, i)
                if len(arr.shape) == 2 and len(shape) == 2 and arr.shape[1] != shape[1]:
                    raise ModelFileError(
                        f"shard {i} ({Path(arr.path).name}): {key} has width {arr.shape[1]} but the index says "
                        f"{shape[1]}; this shard comes from another model or run: re-extract shard {i}."
                    )
                if arr.shape != shape:
                    raise ModelFileError(
                        f"shard {i} ({Path(arr.path).name}): {key} has shape {arr.shape} but the index says {shape}; "
                        f"re-write shard {i} or rebuild the index."
                    )
                if np.dtype(arr.dtype) != np.dtype(dt):
                    raise ModelFileError(
                        f"shard {i} ({Path(arr.path).name}): {key} is stored as {np.dtype(arr.dtype).name} but the index "
                        f"says {self.dtype if key != 'labels' else 'int64'}; re-write shard {i}."
                    )
            if self.has_image_ids:
                self._require_file(i, self.path / _shard_file(i, IDS_KEY, self.storage))
            for arr in arrays.values():
                with contextlib.suppress(OSError):  # gone since its header was read: _map says so
                    self._identities.setdefault(Path(arr.path).name, _identity(Path(arr.path)))
            out.append(arrays)
        self._arrays = out
        return out

    def _check_no_extra_shards(self) -> None:
        """Refuse shard files the index does not list: fitting on a subset would be silent."""
        extra = sorted({int(m[1]) for p in self.path.iterdir() if (m := _SHARD_RE.match(p.name)) and int(m[1]) >= self.n_shards})
        if extra:
            raise ModelFileError(
                f"shard set {str(self.path)!r}: its index lists {self.n_shards} shard(s) but the folder also holds shard "
                f"{extra[0]}{' and others' if len(extra) > 1 else ''}; the index is stale or was edited. Re-write the "
                "shard set, or move the extra shard files away."
            )

    def _checked(self, f: Path, i: int | None = None) -> None:
        """Verify file ``f`` against the checksum the index records for it (once per file and reader)."""
        if not self._verify or f.name in self._verified or f.name not in self._files:
            return
        what = f"shard {i} file {str(f)!r}" if i is not None else f"{str(f)!r} of shard set {str(self.path)!r}"
        try:
            memo = (str(f.absolute()), self._files[f.name], _identity(f))
            if memo not in _VERIFIED:  # this version of the file was not verified in this process yet
                actual = file_digest(f)
                verify_checksum(self._files[f.name], actual, what, "re-write the shard set (or re-extract those rows)")
                _VERIFIED.add(memo)
        except OSError as exc:
            raise ModelFileError(f"{what} is unreadable ({exc}); re-write the shard set.") from None
        self._verified.add(f.name)

    def verify_all(self) -> None:
        """Verify every file the index records against its checksum now (one read of the whole set).

        Raises
        ------
        ModelFileError
            Naming the first file that is missing, unreadable or does not match.
        """
        for name in self._files:
            self._checked(self.path / name)

    def _map(self, i: int, key: str) -> np.ndarray:
        """Shard ``i``'s array ``key``, memory-mapped; a file changed since its layout was read is refused.

        The layout (shapes, offsets) and the checksum were checked once, so a file removed,
        truncated or replaced afterwards (a set re-written in place while a fit reads it) would
        otherwise fail deep inside numpy, or silently mix rows of two sets.
        """
        arr = self._layout()[i][key]
        f = Path(arr.path)
        self._checked(f, i)
        changed = f"shard {i} file {str(f)!r} was removed, truncated or replaced after this reader opened the shard set"
        fix = "open the shard set again (and restart a fit that was reading it), or re-write it"
        try:
            same = f.name not in self._identities or _identity(f) == self._identities[f.name]
            m = arr.map() if same else None
        except (OSError, ValueError) as exc:  # gone, or shorter than its header says (numpy's mmap)
            raise ModelFileError(f"{changed} ({exc}); {fix}.") from None
        if m is None:
            raise ModelFileError(f"{changed}; {fix}.")
        return m

    def _require_file(self, i: int, f: Path) -> None:
        if not f.is_file():
            raise ModelFileError(
                f"shard {i} of {str(self.path)!r} is missing: {f.name!r} does not exist; restore it, re-run the "
                "extraction for those rows, or re-write the shard set."
            )

    # --- reading ---------------------------------------------------------------------------------
    def _locate(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, first local row, last local row + 1) covering global rows [start, stop)."""
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            lo = start - int(self.offsets[i])
            hi = min(stop, int(self.offsets[i + 1])) - int(self.offsets[i])
            if hi > lo:
                yield i, lo, hi
            start = int(self.offsets[i]) + hi
            i += 1

    def _as_tensor(self, raw: np.ndarray, key: str, device, dtype) -> torch.Tensor:
        if key == "labels":
            return torch.from_numpy(np.ascontiguousarray(raw)).to(device)
        t = torch.from_numpy(np.ascontiguousarray(raw))
        if self.dtype == "bfloat16":
            t = t.view(torch.int16).view(torch.bfloat16)
        # Convert on the device: half the bytes to move, and the GPU does the cast.
        return t.to(device).to(dtype)

    def read(self, key: str, start: int, stop: int, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Rows ``[start, stop)`` of ``key`` as a tensor.

        Parameters
        ----------
        key : {"vfm_features", "vlm_features", "labels"}
        start, stop : int
            Global row range.
        device : str or torch.device
        dtype : torch.dtype
            Of the returned features (labels are int64).

        Returns
        -------
        tensor of shape (stop - start, width) or (stop - start,)
        """
        self._check_key(key)
        if not 0 <= start <= stop <= self.n_samples:
            raise GPUAError(f"rows [{start}, {stop}) are outside the shard set's [0, {self.n_samples}).")
        pieces = []
        for i, lo, hi in self._locate(start, stop):
            m = self._map(i, key)
            pieces.append(np.array(m[lo:hi]))  # copy, then drop the mapping
            del m
        if not pieces:
            width = () if key == "labels" else (self.widths[key],)
            pieces = [np.empty((0,) + width, dtype=np.int64 if key == "labels" else _DISK[self.dtype][0])]
        raw = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return self._as_tensor(raw, key, device, dtype)

    def take(self, key: str, indices, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """Rows at arbitrary global ``indices`` (any order, repeats allowed), as a tensor.

        Parameters
        ----------
        indices : int array or tensor of shape (m,)

        Returns
        -------
        tensor of shape (m, width) or (m,)
        """
        self._check_key(key)
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise GPUAError(f"row indices must lie in [0, {self.n_samples}).")
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        shard_of = np.searchsorted(self.offsets, sorted_idx, side="right") - 1
        self._layout()
        width = () if key == "labels" else (self.widths[key],)
        raw = np.empty((idx.size,) + width, dtype=np.int64 if key == "labels" else _DISK[self.dtype][0])
        bounds = np.searchsorted(shard_of, np.arange(self.n_shards + 1))
        for i in np.unique(shard_of):
            a, b = bounds[i], bounds[i + 1]
            m = self._map(i, key)
            raw[order[a:b]] = m[sorted_idx[a:b] - self.offsets[i]]
            del m
        return self._as_tensor(raw, key, device, dtype)

    def _check_key(self, key: str) -> None:
        if key not in self.keys:
            raise GPUAError(f"key {key!r} is not in the shard set {str(self.path)!r}; it holds {list(self.keys)}.")

    def labels(self) -> np.ndarray:
        """All labels (for scoring only), int64 array of shape (n_samples,)."""
        return self.read("labels", 0, self.n_samples).numpy()

    def image_ids(self, start: int = 0, stop: int | None = None) -> list[str] | None:
        """The image ids of rows ``[start, stop)`` (default: all), or None for a set stored without ids.

        Returns
        -------
        list of str of length stop - start, or None
        """
        if not self.has_image_ids:
            return None
        stop = self.n_samples if stop is None else stop
        if not 0 <= start <= stop <= self.n_samples:
            raise GPUAError(f"rows [{start}, {stop}) are outside the shard set's [0, {self.n_samples}).")
        ids: list[str] = []
        for i, lo, hi in self._locate(start, stop):
            f = self.path / _shard_file(i, IDS_KEY, self.storage)
            self._require_file(i, f)
            self._checked(f, i)
            try:
                names = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise ModelFileError(f"shard {i} file {str(f)!r} is corrupt ({exc}); re-write shard {i}.") from None
            if not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
                raise ModelFileError(f"shard {i} file {str(f)!r} is not a JSON list of strings; re-write shard {i}.")
            if len(names) != self.shard_rows[i]:
                raise ModelFileError(f"shard {i} file {str(f)!r} names {len(names)} images but the index says {self.shard_rows[i]} rows; re-write shard {i}.")
            ids.extend(names[lo:hi])
        return ids

    def text_prototypes(self) -> np.ndarray | None:
        """The prototypes stored with the set, float32 array of shape (n_classes, d_vlm), or None."""
        p = self.path / PROTOTYPES_NAME
        what = f"{str(p)!r} of shard set {str(self.path)!r}"
        if not p.is_file():
            if PROTOTYPES_NAME in self._files:  # the writer stored them (the index records their checksum)
                raise ModelFileError(
                    f"{what} is missing, though the set was written with its text prototypes; restore it, re-write "
                    "the shard set, or give the prototypes yourself (gpua fit --prototypes FILE, or text_prototypes=)."
                )
            return None
        self._checked(p)
        try:
            with open(p, "rb") as fh:
                shape, fortran, dt, _ = read_npy_header(fh, os.path.getsize(p), what)
                Y = np.load(p, allow_pickle=False)
        except OSError as exc:
            raise ModelFileError(f"{what} is unreadable ({exc}); re-write the shard set.") from None
        if Y.ndim != 2 or Y.dtype.kind != "f" or Y.shape[1] != self.widths["vlm_features"] or not np.all(np.isfinite(Y)):
            raise ModelFileError(
                f"{what} holds an array of shape {Y.shape} ({Y.dtype}) where finite (K, {self.widths['vlm_features']}) "
                "float prototypes were expected; re-write the shard set."
            )
        if self.classnames is not None and len(self.classnames) != Y.shape[0]:
            raise ModelFileError(f"{what} holds {Y.shape[0]} prototypes but the index names {len(self.classnames)} classes; re-write the shard set.")
        return Y.astype(np.float32)

    def iter_rows(self, chunk_rows: int, keys: Sequence[str] = _FEATURE_KEYS, *, device="cpu") -> Iterator[tuple[int, int, tuple[torch.Tensor, ...]]]:
        """Yield ``(start, stop, tensors)`` over consecutive row chunks of at most ``chunk_rows``."""
        for s in range(0, self.n_samples, int(chunk_rows)):
            e = min(self.n_samples, s + int(chunk_rows))
            yield s, e, tuple(self.read(k, s, e, device=device) for k in keys)


class ShardWriter:
    r"""Write a shard set batch by batch (``gpua extract`` feeds it as images are encoded).

    .. code-block:: python

        with ShardWriter("feats/", dtype="float16", rows_per_shard=65536) as w:
            for Z, X in batches:
                w.append(Z, X)
        shards = w.result          # a ShardedFeatures

    Parameters
    ----------
    path : str or Path
        The folder to write (created).
    dtype : {"float16", "bfloat16", "float32"}
        Storage of the features.
    rows_per_shard : int
        Rows per shard file (the last may be shorter).
    storage : {"npy", "safetensors"}
    text_prototypes : array of shape (n_classes, d_vlm), optional
        Stored beside the shards (float32) so that a fit needs only the folder.
    classnames : sequence of str, optional
    meta : dict, optional
        Free-form provenance (encoders, weights, preprocessing). The writer's ``meta`` attribute
        may be updated until :meth:`close`, which stores it in the index.
    overwrite : bool
        Replace an existing shard set at ``path``. The replacement is always atomic (as with
        ``atomic=True``): the old set stays whole and readable until :meth:`close` installs the
        complete new one, whatever happens before (an error in the ``with`` block, a writer
        never closed or killed).
    atomic : bool
        Write into a hidden sibling folder (``.<name>.partial``) and rename the finished set onto
        ``path`` at :meth:`close`: readers of ``path`` see the old set or the complete new one,
        never a mix, and an error inside the ``with`` block removes the partial folder. ``path``
        must then be new, an empty folder, or a shard set of gpua's files only (with
        ``overwrite=True``); any other folder or a file is refused (``check_destination``). A set
        that a writer killed mid-swap left hidden is put back first. One writer per path at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: str = "float16",
        rows_per_shard: int = 65536,
        storage: str = "npy",
        text_prototypes=None,
        classnames: Sequence[str] | None = None,
        meta: dict | None = None,
        overwrite: bool = False,
        atomic: bool = False,
    ):
        check_writer_options(dtype, storage, rows_per_shard)
        # Expanded here as atomic_path expands each file's name (was: the files went to
        # $HOME/.<name>.partial, and a literal ./~/<name> folder was made and found empty).
        self.path = as_path(path)
        if self.path.name == INDEX_NAME:  # the reader takes the set's index.json for the set: so does the writer
            self.path = self.path.parent
        if meta is not None and not isinstance(meta, dict):
            raise GPUAError(f"meta is a {type(meta).__name__}; pass a dict of JSON values (or None).")
        self._final: Path | None = None
        self._overwrite = bool(overwrite)
        if not atomic:
            recover_shard_set(self.path)  # a set a killed atomic writer left hidden is the user's
            if (self.path / INDEX_NAME).is_file():
                if not overwrite:
                    raise GPUAError(f"{str(self.path)!r} already holds a shard set; pass overwrite=True or write to another folder.")
                atomic = True  # replacing a set in place would destroy it before the new one exists
            elif self.path.is_dir() and (left := [p.name for p in self.path.iterdir() if _OWN_SHARD_RE.match(p.name)]):
                # An interrupted writer's shards without an index: this set's index would list its
                # own and the reader refuse the rest as "stale or edited" (was, after all the work).
                if not _only_shard_files(self.path):
                    raise GPUAError(f"{str(self.path)!r} holds shard files without an {INDEX_NAME} (an interrupted writer's, "
                                    f"first: {sorted(left)[0]!r}) beside other files; move them away, or write to another folder.")
                warn_user(f"removing the {len(left)} shard file(s) an interrupted writer left in {str(self.path)!r} (no "
                          f"{INDEX_NAME}), before writing the new set there.")
                _remove_set(self.path)
        if atomic:
            check_destination(self.path, overwrite=overwrite)  # puts back a set a killed writer left hidden
            self._final = self.path
            self.path = _hidden(self.path, "partial")
            # What a killed atomic writer of this path left: removed only if it holds shard files
            # alone (and after check_destination, which refuses to replace a finished set unless
            # overwrite=True).
            _remove_set(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dtype, self.storage, self.rows_per_shard = dtype, storage, int(rows_per_shard)
        self.meta = dict(meta or {})
        self.text_prototypes = None if text_prototypes is None else check_matrix(text_prototypes, "text_prototypes")
        self.classnames = None
        if classnames is not None:
            k = len(classnames) if self.text_prototypes is None else self.text_prototypes.shape[0]
            self.classnames = check_classnames(classnames, k)
        # Labels index the classes: K when the prototypes or the class names give it (as save_features).
        self._n_classes = np.iinfo(np.int64).max
        if self.text_prototypes is not None:
            self._n_classes = self.text_prototypes.shape[0]
        elif self.classnames is not None:
            self._n_classes = len(self.classnames)
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._widths: dict[str, int] | None = None
        self._given: dict[str, bool] = {}  # optional key -> given with the first batch
        self._shard_rows: list[int] = []
        self._digests: dict[str, str] = {}  # file name -> checksum, stored in the index
        self.result: ShardedFeatures | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._final is not None and self.result is None and self.path.exists():
            _remove_set(self.path)  # the destination was never touched

    @property
    def n_written(self) -> int:
        """Rows in completed shard files."""
        return int(sum(self._shard_rows))

    def append(self, vfm_features, vlm_features, labels=None, image_ids=None) -> None:
        """Add rows (the same images in both matrices, same order).

        Parameters
        ----------
        vfm_features : array of shape (m, d_vfm)
        vlm_features : array of shape (m, d_vlm)
        labels : int array of shape (m,), optional
            Give labels with every batch or with none; in ``[0, K)`` when ``text_prototypes``
            (K rows) or ``classnames`` (K names) were given.
        image_ids : sequence of m str, optional
            The rows' image ids (:meth:`ShardedFeatures.image_ids`); with every batch or none.

        Raises
        ------
        GPUAError
            For a batch that cannot be stored as given (a feature row that ``dtype`` turns into
            inf or all zeros included); nothing of a refused batch is kept and the writer stays
            usable.
        """
        if self.result is not None:
            raise GPUAError("this ShardWriter is closed; open a new one to write more rows.")
        row0 = self.n_written + self._buffered
        Z = check_matrix(vfm_features, "vfm_features")
        X = check_matrix(vlm_features, "vlm_features", n_rows=Z.shape[0])
        widths = {"vfm_features": Z.shape[1], "vlm_features": X.shape[1]}
        if self._widths is None:
            if self.text_prototypes is not None:
                check_prototypes(self.text_prototypes, X.shape[1])
        elif widths != self._widths:
            raise GPUAError(f"rows from {row0} have widths {widths} but earlier rows had {self._widths}; every batch must come from the same models.")
        for name, value in (("labels", labels), (IDS_KEY, image_ids)):
            has, had = value is not None, self._given.get(name, value is not None)
            if has != had:
                raise GPUAError(f"{name} were {'given' if had else 'not given'} for earlier rows but {'given' if has else 'not'} at row {row0}; give {name} with every batch or none.")
        batch = {k: self._stored(A, k, row0) for k, A in (("vfm_features", Z), ("vlm_features", X))}
        if labels is not None:
            batch["labels"] = check_labels(labels, Z.shape[0], self._n_classes)
        if image_ids is not None:
            ids = np.asarray(check_strings(image_ids, "image_ids", "row"), dtype=object)  # object: no fixed-width padding
            if ids.shape != (Z.shape[0],):
                raise GPUAError(f"image_ids has {ids.size} entries for {Z.shape[0]} rows (from row {row0}); give one id per row.")
            batch[IDS_KEY] = ids
        # Every check passed: only now does the batch change the writer's state.
        self._widths = widths
        for name, value in (("labels", labels), (IDS_KEY, image_ids)):
            self._given.setdefault(name, value is not None)
        for k, v in batch.items():
            self._buf.setdefault(k, []).append(v)
        self._buffered += Z.shape[0]
        while self._buffered >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _stored(self, A: np.ndarray, key: str, row0: int) -> np.ndarray:
        """Checked float32 rows ``A`` (from row ``row0``) as stored on disk, refused if a row is lost.

        float16 turns entries above 65504 into inf and rows of tiny entries into zeros, which no
        fit can use; the check is :func:`gpua.features._io._check_precision`, as for
        ``save_features(..., float16=True)``. bfloat16 has float32's exponent range and
        :func:`~gpua._validation.check_matrix` keeps every row's norm within what float32
        normalises, so neither can happen there (nor in float32).
        """
        with np.errstate(over="ignore", under="ignore"):  # overflow and underflow are reported below, by row
            out = _to_disk(A, self.dtype)
        if self.dtype == "float16":
            name = key if row0 == 0 else f"{key}[{row0}:{row0 + A.shape[0]}]"  # rows are numbered within the batch
            try:
                _check_precision(out, A, name, float16=False)
            except GPUAError as exc:
                raise GPUAError(f"{str(exc).rstrip('.')}; or store the features as float32 (dtype='float32').") from None
        return out

    def _flush(self, n: int) -> None:
        i = len(self._shard_rows)
        arrays = {}
        for k, parts in self._buf.items():
            whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
            arrays[k], rest = whole[:n], whole[n:]
            self._buf[k] = [rest] if len(rest) else []
        ids = arrays.pop(IDS_KEY, None)
        if ids is not None:
            f = self.path / _shard_file(i, IDS_KEY, self.storage)
            with self._file(f) as tmp:
                tmp.write_text(json.dumps(ids.tolist()), encoding="utf-8")
        out = arrays  # already in the on-disk representation (append)
        if self.storage == "safetensors":
            from safetensors.torch import save_file

            def tensor(k, v):  # safetensors stores bfloat16 natively: reinterpret the bit pattern
                t = torch.from_numpy(np.ascontiguousarray(v))
                return t.view(torch.int16).view(torch.bfloat16) if k != "labels" and self.dtype == "bfloat16" else t

            f = self.path / _shard_file(i, "", "safetensors")
            with self._file(f) as tmp:
                save_file({k: tensor(k, v) for k, v in out.items()}, str(tmp))
        else:
            for k, v in out.items():
                f = self.path / _shard_file(i, k, "npy")
                with self._file(f, suffix=".npy") as tmp:
                    np.save(tmp, v)
        self._shard_rows.append(n)
        self._buffered -= n

    @contextlib.contextmanager
    def _file(self, f: Path, suffix: str = ""):
        """Write one file of the set atomically and record its checksum for the index."""
        with atomic_path(f, suffix=suffix) as tmp:
            yield tmp
            self._digests[f.name] = file_digest(tmp)

    def close(self) -> ShardedFeatures:
        """Write the last (short) shard and the index; return the readable set."""
        if self.result is not None:
            return self.result
        if self._buffered:
            self._flush(self._buffered)
        if not self._shard_rows:
            raise GPUAError("no rows were appended; a shard set needs at least one row.")
        if self.text_prototypes is not None:
            with self._file(self.path / PROTOTYPES_NAME, suffix=".npy") as tmp:
                np.save(tmp, self.text_prototypes)
        index = {
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "storage": self.storage,
            "dtype": self.dtype,
            "widths": self._widths,
            "labels": bool(self._given.get("labels")),
            IDS_KEY: bool(self._given.get(IDS_KEY)),
            "shard_rows": self._shard_rows,
            "n_samples": self.n_written,
            "classnames": self.classnames,
            "meta": certified_meta(self.meta),
            "files": dict(sorted(self._digests.items())),
        }
        try:
            index[CHECKSUM_KEY] = digest(index)
        except (TypeError, ValueError) as exc:
            raise GPUAError(f"the shard set's meta cannot be written as JSON ({exc}); give JSON values only.") from None
        atomic_write_text(self.path / INDEX_NAME, json.dumps(index, indent=1))
        if self._final is not None:
            self._install()
        self.result = ShardedFeatures(self.path)
        return self.result

    def _install(self) -> None:
        """Rename the finished partial folder onto the destination (atomic mode).

        Two renames: the old set (if any) to ``.<name>.old``, then the new one into place. Killed
        between them, both sets are complete and hidden; :func:`recover_shard_set` (run by every
        reader and writer of the path) installs the new one.
        """
        final = self._final
        # Again: something may have appeared there meanwhile. (No recovery: the finished set
        # hidden beside the destination is this writer's own.)
        check_destination(final, overwrite=self._overwrite, recover=False)
        old = _hidden(final, "old")
        _remove_set(old)  # a set replaced earlier whose writer was killed before removing it
        if final.exists():
            os.replace(final, old)  # a folder cannot be renamed onto a non-empty one: move the old set aside
        try:
            os.replace(self.path, final)
        except FileNotFoundError:
            if not _is_shard_set(final):  # a reader's recover_shard_set may have installed it first
                raise
        _remove_set(old)
        self.path, self._final = final, None


def write_shards(
    path: str | os.PathLike,
    vfm_features,
    vlm_features,
    labels=None,
    *,
    image_ids: Sequence[str] | None = None,
    rows_per_shard: int = 65536,
    dtype: str = "float16",
    storage: str = "npy",
    text_prototypes=None,
    classnames: Sequence[str] | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
) -> ShardedFeatures:
    """Write in-memory features as a shard set, atomically (see :class:`ShardWriter` for the parameters).

    The set is written beside ``path`` and swapped in when complete: killed at any point, ``path``
    holds the old set whole (or, killed mid-swap, the next reader puts the new one in place).

    Parameters
    ----------
    path : str or Path
    vfm_features : array of shape (n_samples, d_vfm)
    vlm_features : array of shape (n_samples, d_vlm)
    labels : int array of shape (n_samples,), optional
    image_ids : sequence of n_samples str, optional

    Returns
    -------
    ShardedFeatures
    """
    n = np.shape(vfm_features)[0] if hasattr(vfm_features, "shape") else len(vfm_features)
    # Atomic: a set being replaced stays whole until the new one is complete, even if killed.
    with ShardWriter(
        path, dtype=dtype, rows_per_shard=rows_per_shard, storage=storage, text_prototypes=text_prototypes,
        classnames=classnames, meta=meta, overwrite=overwrite, atomic=True,
    ) as w:
        step = max(1, int(rows_per_shard))
        for s in range(0, n, step):
            w.append(
                vfm_features[s : s + step], vlm_features[s : s + step], None if labels is None else labels[s : s + step],
                None if image_ids is None else image_ids[s : s + step],
            )
    return w.result
