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
``index.json`` is an unfinished set. ``ShardWriter(..., atomic=True)`` goes further: it writes
into a hidden sibling folder and renames the finished set into place, so the destination is
always either the old set or the complete new one. Readers never keep a mapping open between calls: a read
maps the file, copies the rows out and unmaps, so pages touched by a pass over a million rows
do not stay in the process's resident memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .._atomic import atomic_path, atomic_write_text
from .._errors import GPUAError, ModelFileError
from .._validation import check_classnames, check_labels, check_matrix, check_prototypes

__all__ = ["SHARD_FORMAT", "FEATURE_DTYPES", "ShardedFeatures", "ShardWriter", "write_shards", "check_destination", "check_writer_options"]

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
    """Whether ``path`` holds a gpua shard index."""
    try:
        return json.loads((path / INDEX_NAME).read_text(encoding="utf-8")).get("format") == SHARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _only_shard_files(path: Path) -> bool:
    """Whether every entry of folder ``path`` is a name a shard writer makes (an unfinished set)."""
    return all(
        p.name in (INDEX_NAME, PROTOTYPES_NAME) or p.name.startswith("shard-") or (p.name.startswith(".") and ".tmp" in p.name)
        for p in path.iterdir()
    )


def check_destination(path: str | os.PathLike, *, overwrite: bool, name: str = "path") -> None:
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
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise GPUAError(f"{name}={str(path)!r} is an existing file, but a shard set is a folder; pass a folder name (or delete the file).")
    if _is_shard_set(path):
        if not overwrite:
            raise GPUAError(f"{str(path)!r} already holds a shard set; pass overwrite=True or write to another folder.")
        return
    if not _only_shard_files(path):
        raise GPUAError(
            f"{name}={str(path)!r} is a folder that is not a gpua shard set (it has no {INDEX_NAME} and holds other "
            "files); refusing to replace it. Pass a new or empty folder, or move that folder away."
        )


def _to_disk(A: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows -> the on-disk representation of ``dtype`` (bfloat16 as its bit pattern)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return np.ascontiguousarray(A, dtype=_DISK[dtype][0])


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header: ``{name: {"dtype", "shape", "data_offsets"}}`` and the data start.

    The format is an 8-byte little-endian header length, a JSON header, then the raw data; reading
    it here lets a shard be memory-mapped by numpy exactly like an ``.npy`` file.
    """
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


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

    def __init__(self, path: str | os.PathLike, *, check: bool = True):
        path = Path(path)
        if path.name == INDEX_NAME:
            path = path.parent
        self.path = path
        index_path = path / INDEX_NAME
        if not index_path.is_file():
            hint = " (it holds shard files but no index: the writer did not finish; re-run it)" if path.is_dir() and any(path.glob("shard-*")) else ""
            raise ModelFileError(f"shard set {str(path)!r} has no {INDEX_NAME}{hint}; write one with `gpua extract --out DIR` or gpua.stream.write_shards.")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{str(index_path)!r} is unreadable ({exc}); re-write the shard set.") from None
        if index.get("format") != SHARD_FORMAT:
            raise ModelFileError(f"{str(index_path)!r} is not a gpua shard index (format {index.get('format')!r}).")
        if int(index.get("format_version", -1)) > SHARD_FORMAT_VERSION:
            raise ModelFileError(f"{str(index_path)!r} has shard format {index.get('format_version')}; this gpua reads {SHARD_FORMAT_VERSION} and older: upgrade gpua.")
        self._index = index
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
        if self.dtype not in FEATURE_DTYPES or self.storage not in STORAGES:
            raise ModelFileError(f"{str(index_path)!r} names dtype {self.dtype!r} / storage {self.storage!r}; known: {FEATURE_DTYPES} / {STORAGES}.")
        self._arrays: list[dict[str, _Array]] | None = None
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
        # Workers re-open the set from its path (shared storage); the layout is re-read there.
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"], check=False)

    def fingerprint(self) -> str:
        """A string that changes when the index (rows, widths, dtype, files) changes."""
        return json.dumps({k: self._index[k] for k in ("shard_rows", "widths", "dtype", "storage")}, sort_keys=True) + str(self.path.resolve())

    def _expected(self, key: str, i: int) -> tuple[tuple[int, ...], str]:
        if key == "labels":
            return (self.shard_rows[i],), "int64"
        return (self.shard_rows[i], self.widths[key]), np.dtype(_DISK[self.dtype][0]).str

    def _layout(self) -> list[dict[str, _Array]]:
        """Locate every key of every shard and check its shape and dtype against the index."""
        if self._arrays is not None:
            return self._arrays
        out = []
        for i in range(self.n_shards):
            arrays: dict[str, _Array] = {}
            if self.storage == "safetensors":
                f = self.path / _shard_file(i, "", "safetensors")
                self._require_file(i, f)
                try:
                    header, start = _safetensors_header(f)
                except (OSError, ValueError, struct.error) as exc:
                    raise ModelFileError(f"shard {i} file {str(f)!r} is corrupt ({exc}); re-write shard {i}.") from None
                for key in self.keys:
                    if key not in header:
                        raise ModelFileError(f"shard {i} file {str(f)!r} has no {key!r}; re-write shard {i}.")
                    h = header[key]
                    dt = _ST_DTYPES.get(h["dtype"], h["dtype"])
                    np_dt = np.dtype(np.int64 if dt == "int64" else _DISK[dt][0]).str
                    arrays[key] = _Array(str(f), np_dt, tuple(h["shape"]), start + int(h["data_offsets"][0]))
            else:
                for key in self.keys:
                    f = self.path / _shard_file(i, key, "npy")
                    self._require_file(i, f)
                    try:
                        with open(f, "rb") as fh:
                            major, _ = np.lib.format.read_magic(fh)
                            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                            shape, _, dt = read_header(fh)  # header only, no data
                    except (OSError, ValueError) as exc:
                        raise ModelFileError(f"shard {i} file {str(f)!r} is corrupt ({exc}); re-write shard {i}.") from None
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
            out.append(arrays)
        self._arrays = out
        return out

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
        layout = self._layout()
        pieces = []
        for i, lo, hi in self._locate(start, stop):
            m = layout[i][key].map()
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
        layout = self._layout()
        width = () if key == "labels" else (self.widths[key],)
        raw = np.empty((idx.size,) + width, dtype=np.int64 if key == "labels" else _DISK[self.dtype][0])
        bounds = np.searchsorted(shard_of, np.arange(self.n_shards + 1))
        for i in np.unique(shard_of):
            a, b = bounds[i], bounds[i + 1]
            m = layout[i][key].map()
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
            try:
                names = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"shard {i} file {str(f)!r} is corrupt ({exc}); re-write shard {i}.") from None
            if len(names) != self.shard_rows[i]:
                raise ModelFileError(f"shard {i} file {str(f)!r} names {len(names)} images but the index says {self.shard_rows[i]} rows; re-write shard {i}.")
            ids.extend(names[lo:hi])
        return ids

    def text_prototypes(self) -> np.ndarray | None:
        """The prototypes stored with the set, float32 array of shape (n_classes, d_vlm), or None."""
        p = self.path / PROTOTYPES_NAME
        return np.load(p).astype(np.float32) if p.is_file() else None

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
        Replace an existing shard set at ``path``.
    atomic : bool
        Write into a hidden sibling folder (``.<name>.partial``) and rename the finished set onto
        ``path`` at :meth:`close`: readers of ``path`` see the old set or the complete new one,
        never a mix, and an error inside the ``with`` block removes the partial folder. ``path``
        must then be new, an empty folder, or a shard set (with ``overwrite=True``); any other
        folder or a file is refused (``check_destination``). One writer per path at a time.
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
        self.path = Path(path)
        self._final: Path | None = None
        self._overwrite = bool(overwrite)
        if atomic:
            check_destination(self.path, overwrite=overwrite)
            self._final = self.path
            self.path = self.path.parent / f".{self.path.name}.partial"
            if self.path.exists():  # what a killed atomic writer of this path left
                shutil.rmtree(self.path)
        old = self.path / INDEX_NAME
        self._stale: list[Path] = []
        if old.is_file():
            if not overwrite:
                raise GPUAError(f"{str(self.path)!r} already holds a shard set; pass overwrite=True or write to another folder.")
            self._stale = [p for p in self.path.glob("shard-*") if p.is_file()]
            old.unlink()  # the folder is an unfinished set until the new index lands
        self.path.mkdir(parents=True, exist_ok=True)
        self.dtype, self.storage, self.rows_per_shard = dtype, storage, int(rows_per_shard)
        self.meta = dict(meta or {})
        self.classnames = None if classnames is None else [str(c) for c in classnames]
        self.text_prototypes = None if text_prototypes is None else check_matrix(text_prototypes, "text_prototypes")
        if self.classnames is not None and self.text_prototypes is not None:
            check_classnames(self.classnames, self.text_prototypes.shape[0])
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._widths: dict[str, int] | None = None
        self._given: dict[str, bool] = {}  # optional key -> given with the first batch
        self._shard_rows: list[int] = []
        self._written: set[Path] = set()
        self.result: ShardedFeatures | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._final is not None and self.result is None:
            shutil.rmtree(self.path, ignore_errors=True)  # the destination was never touched

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
            Give labels with every batch or with none.
        image_ids : sequence of m str, optional
            The rows' image ids (:meth:`ShardedFeatures.image_ids`); with every batch or none.
        """
        if self.result is not None:
            raise GPUAError("this ShardWriter is closed; open a new one to write more rows.")
        row0 = self.n_written + self._buffered
        Z = check_matrix(vfm_features, "vfm_features")
        X = check_matrix(vlm_features, "vlm_features", n_rows=Z.shape[0])
        widths = {"vfm_features": Z.shape[1], "vlm_features": X.shape[1]}
        if self._widths is None:
            self._widths = widths
            if self.text_prototypes is not None:
                check_prototypes(self.text_prototypes, X.shape[1])
        elif widths != self._widths:
            raise GPUAError(f"rows from {row0} have widths {widths} but earlier rows had {self._widths}; every batch must come from the same models.")
        for name, value in (("labels", labels), (IDS_KEY, image_ids)):
            has, had = value is not None, self._given.setdefault(name, value is not None)
            if has != had:
                raise GPUAError(f"{name} were {'given' if had else 'not given'} for earlier rows but {'given' if has else 'not'} at row {row0}; give {name} with every batch or none.")
        batch = {"vfm_features": Z, "vlm_features": X}
        if labels is not None:
            batch["labels"] = check_labels(labels, Z.shape[0], np.iinfo(np.int64).max)
        if image_ids is not None:
            ids = np.asarray([str(s) for s in image_ids], dtype=object)  # object: no fixed-width padding
            if ids.shape != (Z.shape[0],):
                raise GPUAError(f"image_ids has {ids.size} entries for {Z.shape[0]} rows (from row {row0}); give one id per row.")
            batch[IDS_KEY] = ids
        for k, v in batch.items():
            self._buf.setdefault(k, []).append(v)
        self._buffered += Z.shape[0]
        while self._buffered >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

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
            atomic_write_text(f, json.dumps(ids.tolist()))
            self._written.add(f)
        out = {k: (v if k == "labels" else _to_disk(v, self.dtype)) for k, v in arrays.items()}
        if self.storage == "safetensors":
            from safetensors.torch import save_file

            def tensor(k, v):  # safetensors stores bfloat16 natively: reinterpret the bit pattern
                t = torch.from_numpy(np.ascontiguousarray(v))
                return t.view(torch.int16).view(torch.bfloat16) if k != "labels" and self.dtype == "bfloat16" else t

            f = self.path / _shard_file(i, "", "safetensors")
            with atomic_path(f) as tmp:
                save_file({k: tensor(k, v) for k, v in out.items()}, str(tmp))
            self._written.add(f)
        else:
            for k, v in out.items():
                f = self.path / _shard_file(i, k, "npy")
                with atomic_path(f, suffix=".npy") as tmp:
                    np.save(tmp, v)
                self._written.add(f)
        self._shard_rows.append(n)
        self._buffered -= n

    def close(self) -> ShardedFeatures:
        """Write the last (short) shard and the index; return the readable set."""
        if self.result is not None:
            return self.result
        if self._buffered:
            self._flush(self._buffered)
        if not self._shard_rows:
            raise GPUAError("no rows were appended; a shard set needs at least one row.")
        if self.text_prototypes is not None:
            with atomic_path(self.path / PROTOTYPES_NAME, suffix=".npy") as tmp:
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
            "meta": self.meta,
        }
        atomic_write_text(self.path / INDEX_NAME, json.dumps(index, indent=1))
        for p in self._stale:  # shards of the replaced set that the new one does not reuse
            if p not in self._written and p.exists():
                p.unlink()
        if self._final is not None:
            self._install()
        self.result = ShardedFeatures(self.path)
        return self.result

    def _install(self) -> None:
        """Rename the finished partial folder onto the destination (atomic mode)."""
        final = self._final
        check_destination(final, overwrite=self._overwrite)  # again: something may have appeared there meanwhile
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            # A folder cannot be renamed onto a non-empty one: move the old set aside first. A
            # crash between the two renames leaves the old set in .<name>.old, not deleted.
            os.replace(final, old)
        os.replace(self.path, final)
        shutil.rmtree(old, ignore_errors=True)
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
    """Write in-memory features as a shard set (see :class:`ShardWriter` for the parameters).

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
    with ShardWriter(
        path, dtype=dtype, rows_per_shard=rows_per_shard, storage=storage, text_prototypes=text_prototypes,
        classnames=classnames, meta=meta, overwrite=overwrite,
    ) as w:
        step = max(1, int(rows_per_shard))
        for s in range(0, n, step):
            w.append(
                vfm_features[s : s + step], vlm_features[s : s + step], None if labels is None else labels[s : s + step],
                None if image_ids is None else image_ids[s : s + step],
            )
    return w.result
