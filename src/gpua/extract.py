"""From images to a feature file: ``extract_features`` and the ``gpua extract`` command.

Every image of a dataset is encoded by a vision foundation model (VFM) and a vision-language
model (VLM); the VLM's text tower turns the class names into prompt-ensembled text prototypes.
The result is one feature file (:func:`gpua.features.save_features`) holding
``vfm_features``, ``vlm_features``, ``text_prototypes``, ``labels``, ``classnames`` and
``image_ids``, with both encoders' metadata.

Long runs are safe to interrupt: work is written in shards under ``<out>.parts/`` (each shard
atomically), and a re-run with the same inputs continues after the last complete shard. A
re-run whose output already exists with the same cache key returns at once. The key hashes both
encoders' metadata (model, weights, preprocessing, library versions), the dataset's identity
(name, split, image ids, labels, and the files' sizes and modification times or the pixel
array), the class names and the templates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from ._atomic import atomic_path, atomic_write_text
from ._errors import GPUAError
from .features import save_features

__all__ = ["extract_features", "add_subcommands", "FORMAT_VERSION"]

#: Bumped when the feature-file layout or the extraction procedure changes (invalidates caches).
FORMAT_VERSION = 1
_ON_ERROR = ("skip", "fail")
_DEFAULT_TEMPLATES = ("a photo of a {}.",)


# -- inputs -------------------------------------------------------------------------------------
def _open_dataset(dataset: Any, split: str | None, classnames: Any):
    """A dataset object (``len``, ``image_id``, ``label``, ``load_image``, ``classnames``, ``name``)."""
    from .data import load_dataset
    from .data.classnames import resolve_classnames

    if isinstance(dataset, (str, os.PathLike)):
        return load_dataset(dataset, split=split, classnames=classnames)
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


def _label(ds, i: int) -> int:
    """Image ``i``'s class index, -1 when unknown (unlabeled sets, or objects without ``label``)."""
    y = ds.label(i) if hasattr(ds, "label") else None
    return -1 if y is None else int(y)


def _resolve_templates(templates: Any, ds) -> list[str]:
    from .data.prompts import get_templates

    if templates is not None:
        return get_templates(templates)
    try:  # a known benchmark has its own templates (CoOp's, or CLIP's for CIFAR)
        return get_templates(getattr(ds, "name", "") or "")
    except GPUAError:
        return list(_DEFAULT_TEMPLATES)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _dataset_identity(ds, ids: list[str], labels: list[int]) -> dict[str, Any]:
    """What identifies the images: names, ids, labels, and the files' stat or the pixels."""
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
        stats = []
        for i in range(len(ids)):
            try:
                st = os.stat(ds.path(i))
                stats.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append(None)
        ident["files_sha256"] = _sha(stats)
    elif callable(getattr(ds, "array", None)):
        a = np.ascontiguousarray(ds.array())
        ident["pixels_sha256"] = hashlib.sha256(a.view(np.uint8).reshape(-1).data).hexdigest()
    return ident


def _read_cache_key(path: Path) -> str | None:
    """The ``cache_key`` stored in an existing feature file's metadata, without reading its arrays."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return json.loads(str(f["meta"])).get("cache_key") if "meta" in f.files else None
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}")).get("cache_key")
    except Exception:  # unreadable or foreign file: not a cache hit, it will be rewritten
        return None


# -- shards -------------------------------------------------------------------------------------
class _Parts:
    """The ``<out>.parts/`` folder: a manifest with the cache key, and one npz per shard."""

    def __init__(self, out: Path, key: str, shard_size: int, resume: bool):
        self.dir = Path(str(out) + ".parts")
        self.shard_size = shard_size
        manifest = self.dir / "manifest.json"
        want = {"cache_key": key, "shard_size": shard_size, "format": FORMAT_VERSION}
        have = None
        if manifest.is_file():
            try:
                have = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                have = None
        if self.dir.exists() and (not resume or have != want):
            shutil.rmtree(self.dir)  # another run's (or a stale) work: never mix it in
        self.dir.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            atomic_write_text(manifest, json.dumps(want))

    def shard_path(self, i: int) -> Path:
        return self.dir / f"shard-{i:06d}.npz"

    def load(self, i: int, ids: list[str]) -> dict[str, np.ndarray] | None:
        """Shard ``i``, or None when missing, unreadable or not about these images (then it is redone)."""
        p = self.shard_path(i)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as f:
                shard = {k: f[k] for k in f.files}
        except Exception:  # a shard the OS lost half of
            return None
        try:
            rows = {len(shard[k]) for k in ("index", "image_ids", "vfm", "vlm")}
            same = [str(v) for v in shard["image_ids"]] == [ids[j] for j in shard["index"]]
        except (KeyError, IndexError, TypeError):
            return None
        return shard if len(rows) == 1 and same else None

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

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _encode_shard(vfm, vlm, ds, indices: range, ids: list[str], batch_size: int, on_error: str, bar) -> dict[str, np.ndarray]:
    """Encode images ``indices`` with both encoders; unreadable images are skipped or fail."""
    from .encoders._preprocess import as_image_list

    Z, X, kept, bad_idx, bad_err = [], [], [], [], []
    for start in range(indices.start, indices.stop, batch_size):
        images, rows = [], []
        for i in range(start, min(start + batch_size, indices.stop)):
            try:
                img = ds.load_image(i)
                images.extend(as_image_list([img], name=f"image {ids[i]!r}"))
                rows.append(i)
            except (ValueError, OSError, SyntaxError) as exc:  # GPUAError is a ValueError; PIL raises the others
                if on_error == "fail":
                    raise GPUAError(
                        f"image {ids[i]!r} (index {i}) could not be read: {exc}. Fix or remove the file, or pass "
                        "on_error='skip' (--on-error skip) to leave unreadable images out."
                    ) from exc
                bad_idx.append(i)
                bad_err.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
        if images:
            # Both encoders see the very same decoded images, so their rows share the ids in `rows`.
            z = vfm.encode_images(images, batch_size=batch_size)
            x = vlm.encode_images(images, batch_size=batch_size)
            if z.shape[0] != len(rows) or x.shape[0] != len(rows):
                raise GPUAError(f"the encoders returned {z.shape[0]} and {x.shape[0]} rows for {len(rows)} images; "
                                "an encoder must return one row per image, in order.")
            Z.append(z)
            X.append(x)
            kept.extend(rows)
        if bar is not None:
            bar.update(min(start + batch_size, indices.stop) - start)
    return {
        "index": np.asarray(kept, dtype=np.int64),
        "image_ids": np.asarray([ids[i] for i in kept], dtype=str),
        "vfm": np.concatenate(Z) if Z else np.zeros((0, vfm.embed_dim), np.float32),
        "vlm": np.concatenate(X) if X else np.zeros((0, vlm.embed_dim), np.float32),
        "skipped_index": np.asarray(bad_idx, dtype=np.int64),
        "skipped_error": np.asarray(bad_err, dtype=str),
    }


# -- the entry point ----------------------------------------------------------------------------
def extract_features(
    vfm: Any,
    vlm: Any,
    dataset: Any,
    classnames: Sequence[str] | str | os.PathLike | None = None,
    templates: Sequence[str] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    batch_size: int = 64,
    device: str = "cpu",
    float16: bool = False,
    resume: bool = True,
    on_error: str = "skip",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    split: str | None = None,
    shard_size: int = 1024,
    on_shard: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode a dataset with a VFM and a VLM and write a GPUA feature file.

    Parameters
    ----------
    vfm, vlm : str or Encoder
        Encoder specs (``"offline:dinov2-s"``, ``"open_clip:ViT-B-16/openai"``, see
        :func:`gpua.encoders.list_encoders`) or encoder objects. ``vlm`` must have a text tower.
    dataset : path, str or dataset object
        Anything :func:`gpua.data.load_dataset` opens (image folder, CoOp split file, ``.npz``,
        ``"cifar10-mini"``), or a dataset object with ``len``, ``image_id(i)``, ``label(i)``,
        ``load_image(i)``, ``classnames`` and ``name``.
    classnames : list of str, file or dataset name, optional
        Class names in label order; default: the dataset's.
    templates : name, file or list of str, optional
        Prompt templates with a ``{}`` placeholder (:func:`gpua.data.prompts.get_templates`);
        default: the dataset's own templates when it is a known benchmark, else
        ``["a photo of a {}."]``.
    out : path
        ``.npz`` or ``.safetensors`` output file.
    batch_size : int
        Images per forward pass.
    device : str
        Device for encoders created from specs.
    float16 : bool
        Store the feature matrices in half precision (half the file size).
    resume : bool
        Continue from the shards of an interrupted run and return at once when ``out`` already
        holds these features. ``False`` recomputes everything.
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
        Images per resumable shard.
    on_shard : callable, optional
        Called as ``on_shard(shard_index, n_images_done)`` after each shard is written (progress
        reporting; an exception raised there stops the run with the shard kept).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    GPUAError
        For bad arguments, a vision-only ``vlm``, missing class names, an unreadable image with
        ``on_error="fail"``, or a dataset none of whose images can be read.
    """
    from .encoders import create_encoder
    from .encoders._base import _check_batch_size

    if on_error not in _ON_ERROR:
        raise GPUAError(f"on_error={on_error!r} must be one of {_ON_ERROR}.")
    batch_size = _check_batch_size(batch_size)
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise GPUAError(f"shard_size must be a positive integer, got {shard_size!r}.")
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".npz", ".safetensors"):
        raise GPUAError(f"out={str(out)!r} must end in .npz or .safetensors.")

    ds = _open_dataset(dataset, split, classnames)
    names = list(getattr(ds, "classnames", []) or [])
    if not names:
        raise GPUAError(
            f"dataset {getattr(ds, 'name', '')!r} has no class names, so there is nothing to build text prototypes "
            "from; pass classnames= (a list, a file, or a dataset name such as 'cifar10')."
        )
    temps = _resolve_templates(templates, ds)
    n = len(ds)
    if n == 0:
        raise GPUAError("dataset holds no images; check the path and split.")
    ids = [str(ds.image_id(i)) for i in range(n)]
    if len(set(ids)) != n:
        from collections import Counter

        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise GPUAError(f"dataset image ids are not unique ({dup!r} repeats); feature rows are keyed by image id.")
    labels = [_label(ds, i) for i in range(n)]

    vfm = create_encoder(vfm, device=device, cache_dir=cache_dir)
    vlm = create_encoder(vlm, device=device, cache_dir=cache_dir)
    if not vlm.is_vlm:
        raise GPUAError(f"vlm={vlm.spec!r} is vision-only; the VLM must encode text, e.g. 'open_clip:ViT-B-16/openai'.")

    identity = _dataset_identity(ds, ids, labels)
    key = _sha({
        "format": FORMAT_VERSION,
        "vfm": vfm.metadata(),
        "vlm": vlm.metadata(),
        "dataset": identity,
        "classnames": names,
        "templates": temps,
        "float16": bool(float16),
    })
    if resume and out.is_file() and _read_cache_key(out) == key:
        return out

    parts = _Parts(out, key, int(shard_size), resume)
    shards = [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    results: list[dict[str, np.ndarray] | None] = [parts.load(i, ids) for i in range(len(shards))]
    done = sum(len(r) for r, res in zip(shards, results) if res is not None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done, desc=f"extract {getattr(ds, 'name', '')}", unit="img")
    try:
        for i, rng in enumerate(shards):
            if results[i] is not None:
                continue
            results[i] = _encode_shard(vfm, vlm, ds, rng, ids, batch_size, on_error, bar)
            parts.save(i, results[i])
            done += len(rng)
            if on_shard is not None:
                on_shard(i, done)
    finally:
        if bar is not None:
            bar.close()

    index = np.concatenate([r["index"] for r in results])
    Z = np.concatenate([r["vfm"] for r in results])
    X = np.concatenate([r["vlm"] for r in results])
    if not (Z.shape[0] == X.shape[0] == index.shape[0]) or Z.shape[1] != vfm.embed_dim or X.shape[1] != vlm.embed_dim:
        raise GPUAError(f"the shards in {str(parts.dir)!r} are inconsistent; delete that folder and run again.")
    skipped = [(int(j), str(e)) for r in results for j, e in zip(r["skipped_index"], r["skipped_error"])]
    if index.size == 0:
        raise GPUAError(f"none of the {n} images could be read (first: {ids[skipped[0][0]]!r}: {skipped[0][1]}).")
    if skipped:
        shown = ", ".join(ids[j] for j, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {n}: {shown} (all listed in meta['skipped']).", stacklevel=2)

    Y = parts.load_text()
    if Y is None or Y.shape != (len(names), vlm.embed_dim):
        from .data.prompts import build_text_prototypes

        Y = build_text_prototypes(vlm.encode_text, names, temps, progress=progress)
        parts.save_text(Y)

    y = np.asarray([labels[j] for j in index], dtype=np.int64)
    if (y < 0).any():
        if (y >= 0).any():
            warnings.warn(f"{int((y < 0).sum())} of {y.size} images have no label; the file stores no labels.", stacklevel=2)
        y = None
    meta = {
        "gpua_version": __version__,
        "format": FORMAT_VERSION,
        "cache_key": key,
        "vfm": vfm.metadata(),
        "vlm": vlm.metadata(),
        # Where the images came from is provenance, not identity (a moved file keeps its cache key).
        "dataset": {**identity, "source": str(dataset) if isinstance(dataset, (str, os.PathLike)) else None},
        "templates": temps,
        "float16": bool(float16),
        "skipped": {"count": len(skipped), "images": [{"index": j, "image_id": ids[j], "error": e} for j, e in skipped]},
    }
    save_features(
        out, vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=y, classnames=names,
        image_ids=[ids[j] for j in index], meta=meta, float16=float16,
    )
    parts.remove()
    return out


# -- command line -------------------------------------------------------------------------------
def add_subcommands(subparsers) -> None:
    """Add ``gpua extract`` to the ``gpua`` command line."""
    p = subparsers.add_parser(
        "extract",
        help="encode a dataset with a VFM and a VLM into a feature file",
        description="Encode every image with both encoders, build text prototypes from the class names, "
        "and write a feature file (.npz or .safetensors). Interrupted runs resume; finished ones are cached.",
    )
    p.add_argument("--vfm", required=True, metavar="ENCODER", help="vision foundation model, e.g. offline:dinov2-s, timm:vit_small_patch14_dinov2.lvd142m")
    p.add_argument("--vlm", required=True, metavar="ENCODER", help="vision-language model, e.g. open_clip:ViT-B-16/openai, offline:semantic-lite0")
    p.add_argument("--data", required=True, metavar="PATH", help="image folder, CoOp split file, .npz, or cifar10-mini")
    p.add_argument("--split", default=None, help="split to read (train, test, ...)")
    p.add_argument("--classnames", default=None, metavar="FILE", help="class names (file or dataset name); default: the dataset's")
    p.add_argument("--templates", default=None, metavar="NAME|FILE", help="prompt templates: openai_imagenet, simple, a dataset name, or a file")
    p.add_argument("--out", required=True, metavar="FILE", help="output feature file (.npz or .safetensors)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="model cache (default: $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--float16", action="store_true", help="store features in half precision")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="recompute everything")
    p.add_argument("--on-error", choices=_ON_ERROR, default="skip", help="unreadable images: skip them or stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = extract_features(
            args.vfm, args.vlm, args.data, classnames=args.classnames, templates=args.templates, out=args.out,
            batch_size=args.batch_size, device=args.device, float16=args.float16, resume=args.resume,
            on_error=args.on_error, cache_dir=args.cache_dir, progress=not args.quiet, split=args.split,
            shard_size=args.shard_size,
        )
    for w in caught:
        print(f"gpua extract: warning: {w.message}", file=sys.stderr)
    from .features import load_features

    fs = load_features(path, validate=False)
    skipped = fs.meta.get("skipped", {}).get("count", 0)
    print(
        f"wrote {path}: {fs.n_samples} images, vfm {fs.vfm_features.shape[1]}-d, vlm {fs.vlm_features.shape[1]}-d, "
        f"{fs.text_prototypes.shape[0]} classes" + (f", {skipped} unreadable image(s) skipped" if skipped else "")
    )
    return 0
