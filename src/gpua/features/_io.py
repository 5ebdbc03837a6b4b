"""Read and write feature files.

A feature file holds named arrays (never positional ``arr_0``):

======================  ==================  ===========================================
key                     shape               meaning
======================  ==================  ===========================================
``vfm_features``        (N, d_v)            vision foundation model image features
``vlm_features``        (N, d_t)            vision-language model image features
``text_prototypes``     (K, d_t)            one text embedding per class
``labels`` (optional)   (N,) int            read only to score, never to fit
``classnames`` (opt.)   (K,) str            class names, unique
``image_ids`` (opt.)    (N,) str            the image each row came from
======================  ==================  ===========================================

Formats: ``.npz`` (numpy) and ``.safetensors`` (string arrays go to the JSON metadata there).
Arrays may be float16 or float32; they are returned as float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from .._errors import GPUAError, ModelFileError
from .._integrity import CHECKSUM_KEY, digest, read_npz, verify
from .._validation import check_classnames, check_labels, check_matrix, check_prototypes

__all__ = ["FEATURE_KEYS", "FeatureSet", "load_features", "save_features"]

FEATURE_KEYS = ("vfm_features", "vlm_features", "text_prototypes")
_ARRAY_KEYS = FEATURE_KEYS + ("labels",)
_STRING_KEYS = ("classnames", "image_ids")
_FIX = "re-create it (gpua extract, or gpua.features.save_features)"


@dataclass
class FeatureSet:
    """The three GPUA inputs of one image set, plus optional labels, names and metadata.

    Attributes
    ----------
    vfm_features : array of shape (n_samples, d_vfm) or None
    vlm_features : array of shape (n_samples, d_vlm) or None
    text_prototypes : array of shape (n_classes, d_vlm) or None
    labels : int array of shape (n_samples,) or None
    classnames : list of str of length n_classes or None
    image_ids : list of str of length n_samples or None
    meta : dict
        Free-form provenance (encoders, weights, preprocessing, dataset).
    """

    vfm_features: np.ndarray | None = None
    vlm_features: np.ndarray | None = None
    text_prototypes: np.ndarray | None = None
    labels: np.ndarray | None = None
    classnames: list[str] | None = None
    image_ids: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        for a in (self.vfm_features, self.vlm_features, self.labels):
            if a is not None:
                return int(a.shape[0])
        return 0

    def require(self, *keys: str, source: str = "the feature file") -> None:
        """Raise a :class:`GPUAError` naming the missing keys and the keys present."""
        missing = [k for k in keys if getattr(self, k) is None]
        if missing:
            present = [k for k in _ARRAY_KEYS + _STRING_KEYS if getattr(self, k) is not None]
            raise GPUAError(
                f"{source} has no {', '.join(repr(k) for k in missing)}; it holds {present}. "
                "Write the file with gpua.features.save_features or `gpua extract`."
            )

    def validate(self) -> "FeatureSet":
        """Check shapes against each other (labels and class names included); return self."""
        n = None
        if self.vfm_features is not None:
            self.vfm_features = check_matrix(self.vfm_features, "vfm_features")
            n = self.vfm_features.shape[0]
        if self.vlm_features is not None:
            self.vlm_features = check_matrix(self.vlm_features, "vlm_features", n_rows=n)
            n = self.vlm_features.shape[0]
        k = None
        if self.text_prototypes is not None:
            d_t = None if self.vlm_features is None else self.vlm_features.shape[1]
            self.text_prototypes = (
                check_prototypes(self.text_prototypes, d_t) if d_t else check_matrix(self.text_prototypes, "text_prototypes")
            )
            k = self.text_prototypes.shape[0]
        if self.classnames is not None:
            self.classnames = check_classnames(self.classnames, k if k is not None else len(self.classnames))
            k = len(self.classnames) if k is None else k
        if self.labels is not None and n is not None:
            self.labels = check_labels(self.labels, n, k if k is not None else np.iinfo(np.int64).max)
        if self.image_ids is not None and n is not None and len(self.image_ids) != n:
            raise GPUAError(f"image_ids has {len(self.image_ids)} entries for {n} feature rows; give one id per row.")
        return self


def save_features(path: str | Path, features: FeatureSet | None = None, **arrays: Any) -> Path:
    """Write a feature file atomically (``.npz`` or ``.safetensors``, chosen by the suffix).

    Either pass a :class:`FeatureSet` or the arrays by keyword (``vfm_features=...``).
    ``float16=True`` stores the feature matrices in half precision.
    """
    float16 = bool(arrays.pop("float16", False))
    if features is None:
        meta = arrays.pop("meta", {}) or {}
        unknown = set(arrays) - set(_ARRAY_KEYS + _STRING_KEYS)
        if unknown:
            raise GPUAError(f"save_features got unknown key(s) {sorted(unknown)}; known keys: {list(_ARRAY_KEYS + _STRING_KEYS)}.")
        features = FeatureSet(meta=meta, **arrays)
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for k in FEATURE_KEYS:
        a = getattr(features, k)
        if a is not None:
            a = np.asarray(a)
            out[k] = a.astype(np.float16 if float16 else np.float32)
    if features.labels is not None:
        out["labels"] = np.asarray(features.labels, dtype=np.int64)
    strings = {k: [str(s) for s in getattr(features, k)] for k in _STRING_KEYS if getattr(features, k) is not None}
    suffix = path.suffix.lower()
    if suffix == ".npz":
        for k, v in strings.items():
            out[k] = np.asarray(v, dtype=str)
        out["meta"] = np.asarray(json.dumps(features.meta))
        out[CHECKSUM_KEY] = np.asarray(digest(None, out))
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **out)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        metadata = {"meta": json.dumps(features.meta), **{k: json.dumps(v) for k, v in strings.items()}}
        arrays = {k: np.ascontiguousarray(v) for k, v in out.items()}
        metadata[CHECKSUM_KEY] = digest(metadata, arrays)
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata=metadata)
    else:
        raise GPUAError(f"path {str(path)!r} must end in .npz or .safetensors.")
    return path


def _read_npz(path: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays: dict[str, Any] = read_npz(path, where)
    stored = arrays.pop(CHECKSUM_KEY, None)
    if stored is not None:
        stored = str(stored) if stored.ndim == 0 and stored.dtype.kind == "U" else repr(stored)
        verify(stored, digest(None, arrays), where, _FIX)
    meta: Any = {}
    if "meta" in arrays:
        m = arrays.pop("meta")
        if m.ndim != 0 or m.dtype.kind != "U":
            raise ModelFileError(f"{where} has a 'meta' entry that is not one JSON string; {_FIX}.")
        meta = _json(str(m), where, "meta")
    for k in _STRING_KEYS:
        if k in arrays:
            a = arrays[k]
            if a.ndim != 1 or a.dtype.kind != "U":
                raise ModelFileError(f"{where} holds {k!r} of shape {a.shape} ({a.dtype}); it must be a 1-D array of strings, one per entry.")
            arrays[k] = [str(x) for x in a.tolist()]
    return arrays, meta


def _read_safetensors(path: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            arrays: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}
            md = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises SafetensorError (and others) for bad headers and short files
        raise ModelFileError(f"{where} is corrupt or truncated ({type(exc).__name__}: {exc}); {_FIX}.") from None
    stored = md.pop(CHECKSUM_KEY, None)
    if stored is not None:
        verify(stored, digest(md, arrays), where, _FIX)
    meta = _json(md.get("meta", "{}"), where, "meta")
    for k in _STRING_KEYS:
        if k in md:
            v = _json(md[k], where, k)
            if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise ModelFileError(f"{where} holds {k!r} that is not a JSON list of strings; {_FIX}.")
            arrays[k] = v
    return arrays, meta


def _json(text: str, where: str, key: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ModelFileError(f"{where} holds {key!r} that is not valid JSON; {_FIX}.") from None


def load_features(path: str | Path, *, require: tuple[str, ...] = (), validate: bool = True) -> FeatureSet:
    """Read a feature file written by :func:`save_features` (or by hand with named keys).

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.safetensors`` file.
    require : tuple of str
        Keys that must be present (a clear error lists the keys the file has).
    validate : bool
        Check shapes, finiteness and label ranges.
    """
    path = Path(path)
    where = f"feature file {str(path)!r}"
    if not path.exists():
        raise GPUAError(f"{where} does not exist; check the path.")
    if path.is_dir():
        raise GPUAError(f"{where} is a folder; a shard set is read with gpua.features.ShardedFeatures (gpua fit --shards DIR).")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays, meta = _read_npz(path, where)
    elif suffix == ".safetensors":
        arrays, meta = _read_safetensors(path, where)
    else:
        raise GPUAError(f"path {str(path)!r} must end in .npz or .safetensors.")
    if not isinstance(meta, dict):
        raise ModelFileError(f"{where} has a 'meta' that is a JSON {type(meta).__name__}, not an object; {_FIX}.")
    if "text_embeddings" in arrays and "text_prototypes" not in arrays:
        arrays["text_prototypes"] = arrays.pop("text_embeddings")
    positional = [k for k in arrays if k.startswith("arr_")]
    if positional and not any(k in arrays for k in FEATURE_KEYS):
        raise GPUAError(
            f"{str(path)!r} holds positional arrays {positional}; save with named keys "
            f"{list(FEATURE_KEYS)} (np.savez(path, vfm_features=Z, ...))."
        )
    fs = FeatureSet(
        vfm_features=arrays.get("vfm_features"),
        vlm_features=arrays.get("vlm_features"),
        text_prototypes=arrays.get("text_prototypes"),
        labels=arrays.get("labels"),
        classnames=arrays.get("classnames"),
        image_ids=arrays.get("image_ids"),
        meta=meta,
    )
    fs.require(*require, source=f"feature file {str(path)!r}")
    return fs.validate() if validate else fs
