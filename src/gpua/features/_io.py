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
Arrays may be float16 or float32; they are returned as float32 (as stored with
``load_features(..., validate=False)``). (A safetensors file written by
another tool may also hold bfloat16 or float8 arrays, which numpy has no type for: they are
read through torch, exactly.)
"""

from __future__ import annotations

import contextlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import _is_model_file, atomic_path, check_output
from .._errors import GPUAError, ModelFileError, warn_user
from .._integrity import CHECKSUM_KEY, digest, read_npz, verify
from .._validation import FEATURE_KEYS, as_path, check_classnames, check_labels, check_matrix, check_prototypes, check_strings

__all__ = ["FEATURE_KEYS", "FeatureSet", "load_features", "save_features"]

#: Set while :mod:`gpua.extract` writes its output, the one writer whose ``meta["cache_key"]``
#: certifies the arrays: the key says which images, encoders and prompts made them.
_WRITING_EXTRACTION: ContextVar[bool] = ContextVar("gpua_writing_extraction", default=False)


@contextlib.contextmanager
def writing_extraction():
    """Within: :func:`save_features` and shard writers keep a ``meta["cache_key"]`` (gpua.extract's own writes)."""
    token = _WRITING_EXTRACTION.set(True)
    try:
        yield
    finally:
        _WRITING_EXTRACTION.reset(token)


#: The entries of an extraction's ``meta`` that vouch for its arrays: ``cache_key`` (which images,
#: encoders and prompts made them) and ``stat_time_ns`` (since when each image file is known
#: unchanged, which lets a later extraction copy its rows: ``gpua.extract.extract_features``'s ``reuse``).
CERTIFYING_META = ("cache_key", "stat_time_ns")


def certified_meta(meta: dict) -> dict:
    """``meta`` as a feature file written outside an extraction stores it: without the entries of
    :data:`CERTIFYING_META`.

    A file saved with :func:`save_features` (or a shard set written by :func:`write_shards`)
    holds the arrays given, which need not be those the key describes (a loaded file trimmed or
    edited, then saved with its ``meta``); with the key kept, ``gpua extract`` into that path
    took it for up to date and kept the edited features, and with the stat time kept a later
    extraction would copy the edited rows as encodings. Without them, the next extraction there
    extracts again.
    """
    if any(k in meta for k in CERTIFYING_META) and not _WRITING_EXTRACTION.get():
        return {k: v for k, v in meta.items() if k not in CERTIFYING_META}
    return meta


_ARRAY_KEYS = FEATURE_KEYS + ("labels",)
_STRING_KEYS = ("classnames", "image_ids")
_FIX = "re-create it (gpua extract, or gpua.features.save_features)"
#: The largest JSON header a safetensors reader accepts (the ``safetensors`` package's
#: ``MAX_HEADER_SIZE``): class names, image ids and meta are stored there.
_ST_HEADER_MAX = 100_000_000


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

    def require(self, *keys: str, source: str = "the feature file", shard_set: bool = False) -> None:
        """Raise a :class:`GPUAError` naming the missing keys and the keys present, and how to write
        them (``shard_set``: the rows were read from a shard set, which ``write_shards`` writes)."""
        missing = [k for k in keys if getattr(self, k) is None]
        if missing:
            present = [k for k in _ARRAY_KEYS + _STRING_KEYS if getattr(self, k) is not None]
            writer = f"gpua.stream.write_shards(..., {missing[0]}=...)" if shard_set else "gpua.features.save_features"
            # A flat folder's extraction has no labels: the fix is another folder layout, not another writer.
            flat = (" (an extraction of a folder without class sub-folders has none: extract a folder with one sub-folder "
                    "per class, or a dataset with labels)" if "labels" in missing else "")
            raise GPUAError(
                f"{source} has no {', '.join(repr(k) for k in missing)}; it holds {present}. "
                f"Write it with {writer} or `gpua extract`{flat}."
            )

    def validate(self, source: str | None = None) -> "FeatureSet":
        """Check shapes against each other (labels and class names included); return self.

        ``source`` (``"feature file 'x.npz'"``) starts each error's message, so that a command
        reading several files says which one is damaged.
        """
        try:
            return self._validate()
        except GPUAError as exc:
            if source is None:
                raise
            raise GPUAError(f"{source}: {exc}") from None

    def _validate(self) -> "FeatureSet":
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

    Everything is checked before the file is touched: with the checks :func:`load_features`
    applies (:meth:`FeatureSet.validate`), and for what the cast to the stored precision and
    the string and JSON encodings would change. Whatever is written loads back, with the values
    given; a refused save leaves a file already at ``path`` as it was.

    Parameters
    ----------
    path : str or Path
        The file to write, ending in ``.npz`` or ``.safetensors``; an existing file is replaced.
    features : FeatureSet, optional
        What to write; or pass the arrays by keyword instead (not both).
    **arrays
        ``vfm_features``, ``vlm_features``, ``text_prototypes``, ``labels``, ``classnames``,
        ``image_ids`` (see the module's table) and ``meta`` (a dict stored as JSON; numpy
        scalars and arrays in it are stored as plain numbers and lists).
        ``float16=True`` stores the feature matrices in half precision.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    GPUAError
        When the file would not load back or would hold other values than those given: shapes
        that disagree, NaN or inf, all-zero rows, values beyond the stored precision (float16's
        65504, float32's 3.4e38) or rows that become all zeros in it, labels that are not integer
        class indices, class names or image ids that are not strings (bytes, None) or hold a NUL
        character, ``meta`` that JSON cannot store; and when ``path`` is a folder, lies under a
        file or cannot be written.
    """
    float16 = bool(arrays.pop("float16", False))
    if features is None:
        meta = arrays.pop("meta", {})
        unknown = set(arrays) - set(_ARRAY_KEYS + _STRING_KEYS)
        if unknown:
            raise GPUAError(f"save_features got unknown key(s) {sorted(unknown)}; known keys: {list(_ARRAY_KEYS + _STRING_KEYS)}.")
        features = FeatureSet(meta={} if meta is None else meta, **arrays)
    elif not isinstance(features, FeatureSet):
        raise GPUAError(
            f"features must be a FeatureSet, not a {type(features).__name__}; pass the arrays by keyword "
            "(save_features(path, vfm_features=Z, ...)) or as FeatureSet(...)."
        )
    elif arrays:
        raise GPUAError(
            f"save_features got either a FeatureSet or the arrays by keyword, not both (also got {sorted(arrays)}); "
            "set them on the FeatureSet (dataclasses.replace(features, ...)) or pass everything by keyword."
        )
    if all(getattr(features, k) is None for k in FEATURE_KEYS):
        # load_features refuses such a file, and a later save of features over it was refused as a
        # file of someone else's arrays (was: written, then neither readable nor replaceable).
        raise GPUAError(f"save_features got none of the feature keys {list(FEATURE_KEYS)}; a feature file holds at least one "
                        "of them (labels, class names and ids are stored beside features, not alone).")
    path = as_path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors"):
        raise GPUAError(f"path {str(path)!r} must end in .npz or .safetensors.")
    # A folder, a path under a file or an unwritable folder is refused before the checks and the
    # casts of large arrays, as the commands refuse their outputs before any work.
    check_output(path, "path", kind="file", holds="features")
    out, strings, meta_json = _stored_contents(features, float16)
    if suffix == ".npz":
        for k, v in strings.items():
            out[k] = np.asarray(v, dtype=str)
        out["meta"] = np.asarray(meta_json)
        out[CHECKSUM_KEY] = np.asarray(digest(None, out))
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **out)
    else:
        from safetensors.numpy import save_file

        metadata = {"meta": meta_json, **{k: json.dumps(v) for k, v in strings.items()}}
        tensors = {k: np.ascontiguousarray(v) for k, v in out.items()}
        metadata[CHECKSUM_KEY] = digest(metadata, tensors)
        _check_header_size(path, metadata, len(tensors))
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:  # safetensors' own error type; its size check, should ours miss
            if "header too large" not in str(exc).lower():
                raise
            _check_header_size(path, metadata, len(tensors), limit=0)
    return path


def _check_header_size(path: Path, metadata: dict[str, str], n_tensors: int, limit: int = _ST_HEADER_MAX) -> None:
    """Refuse strings that would overflow a safetensors header: the file could not be written (or read)."""
    size = len(json.dumps({"__metadata__": metadata}, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    size += 256 * n_tensors  # each tensor's entry: name, dtype, shape, offsets
    if size > limit:
        raise GPUAError(
            f"path {str(path)!r}: the class names, image ids and meta take {size:,} bytes, more than the "
            f"{_ST_HEADER_MAX:,} a safetensors header holds; save to a .npz file (no such limit), or write a "
            "shard set (gpua.features.write_shards), or shorten meta."
        )


def _stored_contents(features: FeatureSet, float16: bool) -> tuple[dict[str, np.ndarray], dict[str, list[str]], str]:
    """The arrays, string lists and meta JSON to write, each checked to load back as given.

    The caller's :class:`FeatureSet` is left as it is: the checks run on a copy, and the feature
    matrices are stored from the caller's values (not from the copy, whose rows validation may
    have rescaled).
    """
    image_ids = None if features.image_ids is None else check_strings(features.image_ids, "image_ids", "row")
    meta_json = _meta_json(certified_meta({} if features.meta is None else features.meta))
    checked = replace(features, image_ids=image_ids).validate()  # replace: validate() sets the copy's attributes
    if checked.classnames is not None:
        check_strings(checked.classnames, "classnames", "class")
    labels = checked.labels
    if labels is not None and checked.vfm_features is None and checked.vlm_features is None:
        # validate() checks labels against the feature rows; without them, their type and range still matter.
        n_classes = np.iinfo(np.int64).max
        if checked.text_prototypes is not None:
            n_classes = checked.text_prototypes.shape[0]
        elif checked.classnames is not None:
            n_classes = len(checked.classnames)
        labels = check_labels(labels, np.size(labels), n_classes)
    out: dict[str, np.ndarray] = {}
    dtype = np.dtype(np.float16 if float16 else np.float32)
    for k in FEATURE_KEYS:
        given = getattr(features, k)
        if given is None:
            continue
        given = given.detach().cpu().numpy() if hasattr(given, "detach") else np.asarray(given)
        with np.errstate(over="ignore", under="ignore"):  # overflow and underflow are reported below, by name
            stored = given.astype(dtype, copy=False)  # no copy of float32 input: nothing writes to it
        _check_precision(stored, given, k, float16)
        out[k] = stored
    if labels is not None:
        out["labels"] = labels
    strings = {"classnames": checked.classnames, "image_ids": image_ids}
    return out, {k: v for k, v in strings.items() if v is not None}, meta_json


def _check_precision(stored: np.ndarray, given: np.ndarray, name: str, float16: bool) -> None:
    """Refuse a cast to the stored dtype that makes a row unreadable.

    ``given`` passed :func:`~gpua._validation.check_matrix` (finite, no all-zero row), so a
    non-finite stored entry is an overflow of the cast and an all-zero stored row an underflow:
    either file would be refused by :func:`load_features`.
    """
    dt = stored.dtype.name
    fix = (
        "divide each row by its largest entry first, e.g. A / np.abs(A).max(axis=1, keepdims=True) (rows are "
        "L2-normalised when used, so this keeps what they mean)" + ("; or save without float16=True" if float16 else "")
    )
    limits = np.finfo(stored.dtype)
    with np.errstate(invalid="ignore"):
        top = np.abs(stored.astype(np.float64)).max(axis=1)
    problems = (
        (~np.isfinite(stored).all(axis=1), f"with values too large for {dt}", f"{dt} holds at most {float(limits.max):.5g}", ""),
        (~np.any(stored != 0, axis=1), f"that become all zeros in {dt}", f"{dt}'s smallest is {float(limits.smallest_subnormal):.3g}",
         ", and a zero row cannot be normalised"),
        # every entry subnormal: a few bits each (a row of entries near 1e-6 kept 17 distinct values, cosine 0.987 to itself)
        ((top > 0) & (top < float(limits.smallest_normal)), f"whose entries all fall below {dt}'s normal range",
         f"{dt}'s smallest normal is {float(limits.smallest_normal):.3g}", ", where its entries keep only a few bits"),
    )
    for bad, what, limit, why in problems:
        if bad.any():
            rows = np.nonzero(bad)[0]
            largest = float(np.abs(given[rows[0]].astype(np.float64)).max())
            raise GPUAError(f"{name} has {rows.size} row(s) {what} (first: row {rows[0]}, largest |value| {largest:.3g}; {limit}){why}; {fix}.")


def _meta_json(meta: Any) -> str:
    """``meta`` as JSON; numpy scalars and arrays become plain numbers and lists."""
    if not isinstance(meta, dict):
        raise GPUAError(f"meta must be a dict (stored as a JSON object) but is a {type(meta).__name__}; wrap it, e.g. {{'info': ...}}.")

    def plain(value: Any) -> Any:
        if isinstance(value, (np.generic, np.ndarray)):
            return value.tolist()  # np.bytes_ and datetimes stay unserialisable: refused below
        raise TypeError(f"it holds a value of type {type(value).__name__}: {repr(value)[:60]}")

    def one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise GPUAError(
                f"meta has two keys that JSON stores as the same string {dup!r} (such as 1 and '1', or True and "
                "'true'): one value would be lost; rename one of them."
            )
        return dict(pairs)

    try:
        text = json.dumps(meta, default=plain)
        json.loads(text, object_pairs_hook=one_value_per_key)  # JSON keys are strings: 1 and "1" would collide
        return text
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, GPUAError):
            raise
        raise GPUAError(
            f"meta cannot be stored as JSON ({exc}); keep it to str, int, float, bool, None, lists and dicts "
            "(convert other values with str())."
        ) from None


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

    arrays: dict[str, Any] = {}
    torch_only: list[str] = []  # bfloat16, float8: numpy has no such type
    try:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                try:
                    arrays[k] = f.get_tensor(k)
                except (TypeError, AttributeError):  # "data type 'bfloat16' not understood", "no attribute 'float8_e4m3fn'"
                    torch_only.append(k)
            md = dict(f.metadata() or {})
        if torch_only:
            with safe_open(str(path), framework="pt") as f:
                arrays.update({k: f.get_tensor(k) for k in torch_only})
    except Exception as exc:  # safetensors raises SafetensorError (and others) for bad headers and short files
        raise ModelFileError(f"{where} is corrupt or truncated ({type(exc).__name__}: {exc}); {_FIX}.") from None
    stored = md.pop(CHECKSUM_KEY, None)
    if stored is not None:
        verify(stored, digest(md, arrays), where, _FIX)
    for k in torch_only:  # float32 holds every bfloat16 and float8 value exactly
        t = arrays[k]
        if not t.is_floating_point():
            raise ModelFileError(f"{where} holds {k!r} of type {t.dtype}, which numpy cannot hold; store it as a numpy type.")
        arrays[k] = t.float().numpy()
    for k, a in arrays.items():
        # Once a package has imported ml_dtypes (onnx does), numpy reads bfloat16 and float8 itself,
        # as types the checks downstream do not take: the same exact float32 conversion.
        if isinstance(a, np.ndarray) and a.dtype.kind == "V" and a.dtype.name.startswith(("bfloat16", "float8")):
            arrays[k] = a.astype(np.float32)
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


def _check_keys(arrays: dict[str, Any], path: Path, where: str) -> None:
    """Refuse a file with none of the feature keys (a misspelt key, a model file renamed), which would
    read as an empty FeatureSet; warn about keys that are not read beside the ones that are."""
    unknown = sorted(k for k in arrays if k not in _ARRAY_KEYS + _STRING_KEYS)
    if not any(k in arrays for k in FEATURE_KEYS):
        if unknown and all(k.endswith("_") for k in unknown):  # W_, proto_radius_: a fitted model's tensors
            raise GPUAError(f"{where} holds a fitted model's arrays ({unknown[:4]}), not features; read it with "
                            "gpua.load_model.")
        raise GPUAError(f"{where} holds none of the feature keys {list(FEATURE_KEYS)} (its keys: {sorted(arrays)}); "
                        f"save features with those names (gpua.features.save_features, or np.savez({path.name!r}, vfm_features=Z, ...)).")
    if unknown:
        warn_user(f"{where} holds key(s) {unknown} that are not read (the keys read are {list(_ARRAY_KEYS + _STRING_KEYS)}); "
                  "rename them if they are misspelt.")


def load_features(path: str | Path, *, require: tuple[str, ...] = (), validate: bool = True) -> FeatureSet:
    """Read a feature file written by :func:`save_features` (or by hand with named keys).

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.safetensors`` file.
    require : tuple of str
        Keys that must be present (a clear error lists the keys the file has).
    validate : bool
        Check shapes, finiteness and label ranges, and cast the feature matrices to float32;
        ``False`` returns them as stored (float16 included) and unchecked.
    """
    path = as_path(path)
    where = f"feature file {str(path)!r}"
    if not path.exists():
        raise GPUAError(f"{where} does not exist; check the path.")
    if path.is_dir():
        raise GPUAError(f"{where} is a folder; a shard set is read with gpua.features.ShardedFeatures (gpua fit --shards DIR).")
    if _is_model_file(path):  # whatever its name: model.save() takes any suffix
        raise GPUAError(f"{where} is a gpua model (written by model.save or gpua fit), not features; pass it where a model "
                        "goes (gpua.load_model, --model).")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays, meta = _read_npz(path, where)
    elif suffix == ".safetensors":
        arrays, meta = _read_safetensors(path, where)
    else:
        raise GPUAError(f"{where} must end in .npz or .safetensors"
                        + ("; it is a model file, which is not read as features." if suffix == ".gpua" else "."))
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
    _check_keys(arrays, path, where)
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
    return fs.validate(where) if validate else fs
