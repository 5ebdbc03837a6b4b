"""Reading files that may be damaged: checksums, and array headers checked against file sizes.

Every file gpua writes carries a SHA-256 checksum of what it holds (:func:`digest`: the
canonical JSON of its metadata and the bytes, dtype and shape of each array), verified when it
is read (:func:`verify`): a truncated file, a flipped bit in an array or in the metadata, or a
hand edit is reported as such instead of being used. Files written before checksums existed
(or by hand) have none and are read as they are, with the structural checks below.

Array headers (``.npy`` members, safetensors headers) are checked against the size of the file
before any array is allocated: a header that declares more data than the file holds is a clear
error, not a ``MemoryError`` or a crash deep inside a fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zipfile
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np

from ._errors import ModelFileError

__all__ = [
    "CHECKSUM_KEY",
    "canonical_json",
    "digest",
    "file_digest",
    "file_head",
    "verify",
    "read_npy_header",
    "read_npz",
    "safetensors_layout",
    "streamed_digest",
]

#: The metadata key (or npz member) holding a file's checksum.
CHECKSUM_KEY = "checksum"
_PREFIX = "sha256:"
#: safetensors dtypes as numpy spells them (``dtype.str``), which :func:`digest` hashes; BF16 has no numpy twin.
_ST_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "|i1", "U8": "|u1",
             "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "|b1"}
_BLOCK = 8 << 20
_ST_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
                "U32": 4, "U64": 8, "BOOL": 1}


def canonical_json(obj: Any) -> bytes:
    """``obj`` as JSON with sorted keys and no spaces: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _array_bytes(a) -> tuple[str, tuple[int, ...], memoryview | bytes]:
    if hasattr(a, "detach"):  # torch tensor (bfloat16 has no numpy twin: hash its raw bytes)
        import torch

        t = a.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        return str(t.dtype).replace("torch.", ""), tuple(t.shape), memoryview(raw)
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise TypeError("object arrays have no stable bytes")
    return a.dtype.str, tuple(a.shape), memoryview(a.reshape(-1).view(np.uint8))


def digest(meta: Mapping[str, Any] | None = None, arrays: Mapping[str, Any] | None = None) -> str:
    """``"sha256:<hex>"`` of the canonical JSON of ``meta`` and of every array (name, dtype, shape, bytes).

    Parameters
    ----------
    meta : dict, optional
        JSON-serialisable metadata (the checksum itself left out).
    arrays : dict of str to numpy array or torch tensor, optional
    """
    h = hashlib.sha256()
    h.update(canonical_json(dict(meta or {})))
    for name in sorted(arrays or {}):
        dtype, shape, raw = _array_bytes(arrays[name])
        h.update(canonical_json([name, dtype, list(shape)]))
        h.update(raw)
    return _PREFIX + h.hexdigest()


def file_head(path: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` bytes of a file (fewer when it is shorter), or ``b""`` when it cannot be read:
    enough to tell a format by its magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a whole file's bytes (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return _PREFIX + h.hexdigest()


def verify(expected: Any, actual: str, what: str, fix: str) -> None:
    """Raise a :class:`ModelFileError` when a stored checksum is malformed or differs from ``actual``.

    Parameters
    ----------
    expected : the stored checksum (None: a file written before checksums; nothing to verify)
    actual : str
        The checksum of what was read.
    what : str
        The file, for the message (``"model file 'm.gpua'"``).
    fix : str
        What to do (``"re-run `gpua fit`"``).
    """
    if expected is None:
        return
    if not (isinstance(expected, str) and expected.startswith(_PREFIX)):
        raise ModelFileError(f"{what} has a malformed checksum {str(expected)[:80]!r}; it is corrupt: {fix}.")
    if expected != actual:
        raise ModelFileError(
            f"{what} does not match its checksum: it is corrupt (a truncated copy or a flipped bit) or was edited "
            f"after gpua wrote it; {fix}."
        )


# -- .npy / .npz ----------------------------------------------------------------------------------
def read_npy_header(fh: BinaryIO, available: int, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse an ``.npy`` header and check that the data it declares fits in ``available`` bytes.

    Parameters
    ----------
    fh : binary file positioned at the start of the ``.npy`` data
    available : int
        Bytes of the whole ``.npy`` (header included).
    what : str
        The file, for messages.

    Returns
    -------
    shape, fortran_order, dtype, header_length
    """
    try:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh, max_header_size=1 << 16)
    except Exception as exc:  # numpy parses the header with Python's tokenizer: any error means a bad header
        raise ModelFileError(f"{what} has an unreadable array header ({exc}); it is corrupt.") from None
    if dtype.hasobject:
        raise ModelFileError(
            f"{what} holds Python objects (pickled data), which gpua never loads; save plain numeric or string arrays."
        )
    header = fh.tell() if hasattr(fh, "tell") else 0
    need = math.prod(shape) * dtype.itemsize
    if header + need != available:
        raise ModelFileError(
            f"{what} declares an array of shape {shape} ({dtype}, {need} bytes) but holds {max(available - header, 0)} "
            "bytes of data; it is truncated or corrupt."
        )
    return tuple(shape), bool(fortran), dtype, header


def _zip_declared_entries(path: str | os.PathLike, size: int) -> int | None:
    """The entry count an archive's end-of-central-directory record declares (None: not found, or ZIP64)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (22 + 65535)))
        tail = fh.read()
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) < i + 12:
        return None
    (count,) = struct.unpack("<H", tail[i + 10 : i + 12])
    return None if count == 0xFFFF else count


def _npz_members(zf: zipfile.ZipFile, path: str | os.PathLike, size: int, what: str) -> list[zipfile.ZipInfo]:
    """An open npz archive's members, each checked to be an ``.npy`` no larger than the file, and
    their count against the count the archive declares."""
    infos = zf.infolist()
    declared = _zip_declared_entries(path, size)
    if declared is not None and declared != len(infos):
        # zipfile lists what its central directory parse reached, silently: a damaged
        # length field there hides members.
        raise ModelFileError(f"{what} declares {declared} arrays but its directory lists {len(infos)}; it is corrupt.")
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ModelFileError(f"{what} holds {info.filename!r}, which is not an array; it is not an npz feature file.")
        if info.compress_size > size:
            raise ModelFileError(f"{what}: member {info.filename!r} declares more bytes than the file holds; it is truncated.")
    return infos


def read_npz(path: str | os.PathLike, what: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (all, or ``keys``), each header checked before its data is read.

    Raises
    ------
    ModelFileError
        For a file that is not a zip archive, a truncated or corrupt one, a member that is not
        an ``.npy`` array, an array header that declares more data than the member holds, or
        pickled (object) arrays.
    """
    size = os.path.getsize(path)
    wanted = None if keys is None else set(keys)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in _npz_members(zf, path, size, what):
                name = info.filename[:-4]
                if wanted is not None and name not in wanted:
                    continue
                with zf.open(info) as fh:
                    shape, fortran, dtype, _ = read_npy_header(fh, info.file_size, f"{what} member {name!r}")
                    a = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
                    raw = memoryview(a.reshape(-1, order="A").view(np.uint8)) if a.size else memoryview(b"")
                    got = 0
                    while got < len(raw):
                        n = fh.readinto(raw[got:])
                        if not n:
                            raise ModelFileError(f"{what}: member {name!r} ends early; the file is truncated.")
                        got += n
                    if fh.read(1):
                        raise ModelFileError(f"{what}: member {name!r} holds more bytes than its header declares; it is corrupt.")
                out[name] = a
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, struct.error, UnicodeDecodeError) as exc:
        # zipfile checks each member's CRC-32 as it is read: flipped bits end here.
        raise ModelFileError(f"{what} is not a readable npz archive ({type(exc).__name__}: {exc}); it is corrupt or truncated.") from None
    return out


def streamed_digest(path: str | os.PathLike, what: str) -> tuple[str | None, str] | None:
    """A feature file's stored checksum and the :func:`digest` of what it holds, read in blocks of
    8 MiB: one block in memory, not the file's arrays (what :func:`read_npz` and a safetensors
    load hold). ``(None, digest)`` for a file without a checksum; ``None`` when the file holds an
    array this cannot hash without loading it (Fortran order, a dtype numpy lacks): read it whole.

    Raises
    ------
    ModelFileError
        For a truncated or corrupt file, as :func:`read_npz` and :func:`safetensors_layout`.
    """
    if str(path).lower().endswith(".safetensors"):
        return _streamed_digest_safetensors(path, what)
    size = os.path.getsize(path)
    h = hashlib.sha256(canonical_json({}))
    stored = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(_npz_members(zf, path, size, what), key=lambda i: i.filename[:-4]):  # digest()'s order: by name
                name = info.filename[:-4]
                with zf.open(info) as fh:
                    shape, fortran, dtype, _ = read_npy_header(fh, info.file_size, f"{what} member {name!r}")
                    if fortran and len(shape) > 1:
                        return None
                    if name == CHECKSUM_KEY:
                        a = np.frombuffer(fh.read(), dtype=dtype).reshape(shape)
                        stored = str(a) if a.ndim == 0 and a.dtype.kind == "U" else repr(a)
                        continue
                    # digest() hashes np.ascontiguousarray(a), which makes a 0-d array 1-d
                    h.update(canonical_json([name, dtype.str, list(shape) or [1]]))
                    for block in iter(lambda: fh.read(_BLOCK), b""):  # zipfile checks the CRC-32 at the end
                        h.update(block)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{what} is not a readable npz archive ({type(exc).__name__}: {exc}); it is corrupt or truncated.") from None
    return stored, _PREFIX + h.hexdigest()


def _streamed_digest_safetensors(path: str | os.PathLike, what: str) -> tuple[str | None, str] | None:
    header, metadata, start = safetensors_layout(path, what)
    if any(t["dtype"] not in _ST_NUMPY for t in header.values()):
        return None
    metadata = dict(metadata)
    stored = metadata.pop(CHECKSUM_KEY, None)
    h = hashlib.sha256(canonical_json(metadata))
    with open(path, "rb") as fh:
        for name in sorted(header):
            t = header[name]
            h.update(canonical_json([name, _ST_NUMPY[t["dtype"]], list(t["shape"]) or [1]]))
            b, e = t["data_offsets"]
            fh.seek(start + b)
            while b < e:
                block = fh.read(min(_BLOCK, e - b))
                if not block:
                    raise ModelFileError(f"{what}: {name!r} ends early; the file is truncated.")
                h.update(block)
                b += len(block)
    return stored, _PREFIX + h.hexdigest()


# -- safetensors ----------------------------------------------------------------------------------
def safetensors_layout(path: str | os.PathLike, what: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and check a safetensors header without reading the data.

    The format is an 8-byte little-endian header length, a JSON header
    ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``, then the data.

    Returns
    -------
    tensors : dict
        ``{name: {"dtype", "shape", "data_offsets"}}``, every entry checked: a known dtype, a
        shape of non-negative integers, offsets inside the file whose length is the shape's.
    metadata : dict of str
    data_start : int
        Byte offset of the data section.
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{what} is {size} bytes, too short for a safetensors header; it is truncated.")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ModelFileError(f"{what} declares a {n}-byte header but holds {size} bytes; it is truncated or corrupt.")
            header = json.loads(fh.read(n))
    except ModelFileError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{what} has an unreadable safetensors header ({type(exc).__name__}: {exc}); it is corrupt.") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{what} has a safetensors header that is not a JSON object; it is corrupt.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{what} has malformed safetensors metadata; it is corrupt.")
    data = size - 8 - n
    for name, h in header.items():
        ok = (
            isinstance(h, dict)
            and h.get("dtype") in _ST_ITEMSIZE
            and isinstance(h.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in h["shape"])
            and isinstance(h.get("data_offsets"), list)
            and len(h["data_offsets"]) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in h["data_offsets"])
        )
        if not ok:
            raise ModelFileError(f"{what}: the header entry of {name!r} is malformed; the file is corrupt.")
        b, e = h["data_offsets"]
        need = math.prod(h["shape"]) * _ST_ITEMSIZE[h["dtype"]]
        if not (0 <= b <= e <= data) or e - b != need:
            raise ModelFileError(
                f"{what}: {name!r} declares shape {h['shape']} ({need} bytes) at bytes [{b}, {e}) of a {data}-byte data "
                "section; the file is truncated or corrupt."
            )
    return header, metadata, 8 + n
