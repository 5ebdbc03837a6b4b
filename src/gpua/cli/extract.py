"""``gpua extract``: encode a dataset into a feature file or a shard set."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ._common import (add_quiet_argument, add_workers_argument, check_cache_dir, check_device_flag, check_paths, connect_timeout_of, counted, parse_cluster,
                      positive_int, positive_seconds, with_flags)

__all__ = ["add_subcommands"]

_FORMATS = ("auto", "file", "shards")  # as gpua.extract.FORMATS (not imported: it loads numpy)
_ON_ERROR = ("skip", "fail")


def add_subcommands(subparsers) -> None:
    """Add ``gpua extract`` to the ``gpua`` command line."""
    p = subparsers.add_parser(
        "extract",
        help="encode a dataset with a VFM and a VLM into a feature file or a shard set",
        description="Encode every image with both encoders, build text prototypes from the class names, "
        "and write a feature file (--out FILE.npz or FILE.safetensors) or a shard set for datasets too large "
        "for memory (--out DIR, a folder name without a suffix; read by gpua fit --shards DIR). "
        "Interrupted runs resume; finished ones are cached.",
    )
    p.add_argument("--vfm", required=True, metavar="ENCODER", help="vision foundation model, e.g. offline:dinov2-s, timm:vit_small_patch14_dinov2.lvd142m")
    p.add_argument("--vlm", required=True, metavar="ENCODER", help="vision-language model, e.g. open_clip:ViT-B-16/openai, offline:semantic-lite0")
    p.add_argument("--data", required=True, metavar="PATH", help="image folder, CoOp split file, .npz, or cifar10-mini")
    p.add_argument("--split", default=None, help="split to read (train, test, ...)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="where the images lie: the folder a CoOp split file's paths start from, or the folder of "
                        "Fashion-MNIST's idx files (--data fashion-mnist); default: found beside the split file, "
                        "/usr/share/datasets/fashion-mnist")
    p.add_argument("--classnames", default=None, metavar="FILE",
                   help="class-name file (one class a line, 'name' or 'name: word, word') or a dataset name; default: the dataset's")
    p.add_argument("--templates", default="auto", metavar="NAME|FILE",
                   help="prompt templates: openai_imagenet (80), imagenet_select (7), simple (1), a dataset name, or a file; "
                        "default 'auto': a known benchmark's own (CLIP's 18 for cifar10-mini, CoOp's prompt for its 11 "
                        "datasets), else CLIP's 80 ImageNet templates")
    p.add_argument("--out", required=True, metavar="FILE|DIR",
                   help="output: a feature file (.npz or .safetensors) or a shard-set folder (a name without a suffix)")
    p.add_argument("--format", choices=_FORMATS, default="auto",
                   help="auto (by --out's suffix), file, or shards (a shard set even when the folder name has a dot)")
    # Counts are refused while parsing, naming the flag, as classify's and benchmark's --batch-size
    # (the library said "batch_size must be a positive integer").
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    add_workers_argument(p)
    p.add_argument("--shard-size", type=positive_int, default=1024, help="images per resumable part (one task with --cluster); default 1024")
    p.add_argument("--rows-per-shard", type=positive_int, default=None, help="rows per file of a shard set (default 65536)")
    p.add_argument("--shard-storage", choices=("npy", "safetensors"), default=None, help="file format of a shard set's shards (default npy)")
    p.add_argument("--device", default="cpu", help="torch device for the encoders: cpu, cuda, cuda:N or auto")
    p.add_argument("--cache-dir", default=None, help="model cache (default: $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--float16", action="store_true", help="store features in half precision")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="recompute everything")
    p.add_argument("--reuse", action="append", default=None, metavar="FILE|DIR",
                   help="an earlier feature file, shard set or interrupted run's .parts folder whose rows of unchanged "
                        "image files are copied instead of encoded again (same encoders; repeatable). --out itself, its "
                        "interrupted parts and the feature files and parts folders beside it are always tried")
    p.add_argument("--on-error", choices=_ON_ERROR, default="skip", help="unreadable images: skip them or stop")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="encode parts on Dask: 'local', a worker count, or tcp://HOST:8786 (OUT.parts/ must be on shared storage)")
    p.add_argument("--connect-timeout", type=positive_seconds, default=None, metavar="S",
                   help="seconds to wait for --cluster (default 10; only with --cluster)")
    add_quiet_argument(p)
    p.set_defaults(func=_cmd_extract, on_interrupt="the finished parts are kept; the same command resumes from them")


def _cmd_extract(args: argparse.Namespace) -> int:
    from .._errors import GPUAError
    from ..extract import _output_kind, extract_features

    # The library checks these too, naming its own arguments (out, format, dataset); here the flags.
    try:
        kind = _output_kind(Path(args.out).expanduser(), args.format)
    except GPUAError as exc:
        raise GPUAError(_as_flags(str(exc))) from None
    check_paths(args, inputs=("data", "classnames", "templates", "image_root"), outputs=(("out", "features" if kind == "file" else "tree"),),
                served=("out",))
    shard_flags = [f for f, v in (("--rows-per-shard", args.rows_per_shard), ("--shard-storage", args.shard_storage)) if v is not None]
    if kind == "file" and shard_flags:  # they would be ignored without a word: one file is written
        several = len(shard_flags) > 1
        raise GPUAError(f"{' and '.join(shard_flags)} {'apply' if several else 'applies'} to a shard set, but --out {args.out!r} is "
                        f"one feature file; write a shard set (--out DIR, or --format shards) or leave {'them' if several else 'it'} out.")
    shard_options = {k: v for k, v in (("rows_per_shard", args.rows_per_shard), ("shard_storage", args.shard_storage)) if v is not None}
    # Before any encoder loads (and even when the output is up to date: a typo is said, not skipped).
    check_device_flag(args.device)
    # The shard set, and the parts folder beside any output, are gpua's and replaced whole.
    check_cache_dir(args, replaced=[*((("--out", args.out),) if kind != "file" else ()), ("the parts folder", str(Path(args.out).expanduser()) + ".parts")])
    timeout = connect_timeout_of(args)
    before = _stamp(args.out)
    with warnings.catch_warnings(record=True) as caught, _flags_named():
        warnings.simplefilter("always")
        path = extract_features(
            args.vfm, args.vlm, args.data, classnames=args.classnames, templates=args.templates, out=args.out,
            format=args.format, batch_size=args.batch_size, device=args.device, float16=args.float16,
            resume=args.resume, on_error=args.on_error, cache_dir=args.cache_dir, progress=not args.quiet,
            split=args.split, shard_size=args.shard_size, cluster=parse_cluster(args.cluster), connect_timeout=timeout,
            image_root=args.image_root, workers=args.workers, reuse=args.reuse, **shard_options,
        )
    for w in caught:  # through the command line's own display: said once, Pillow's nameless size warning left out
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    unchanged = before is not None and before == _stamp(path)
    if path.is_dir():
        from ..features import ShardedFeatures

        sf = ShardedFeatures(path)
        meta, n_rows, d_vfm, d_vlm = sf.meta, sf.n_samples, sf.widths["vfm_features"], sf.widths["vlm_features"]
        n_classes = len(sf.classnames or [])
        what = f"shard set of {sf.n_shards} shard(s) ({sf.dtype}, {sf.storage}), "
        hint = f"; fit with: gpua fit --shards {path} --out MODEL.gpua"
    else:
        from ..features import load_features

        fs = load_features(path, validate=False)
        meta, n_rows, d_vfm, d_vlm = fs.meta, fs.n_samples, fs.vfm_features.shape[1], fs.vlm_features.shape[1]
        n_classes, what, hint = fs.text_prototypes.shape[0], "", ""
    skipped = meta.get("skipped", {}).get("count", 0)
    reused = 0 if unchanged else (meta.get("reused") or {}).get("rows", 0)
    if unchanged:
        hint += " (same encoders, images, class names and templates: nothing was extracted; --no-resume recomputes)"
    print(
        f"{'up to date' if unchanged else 'wrote'} {path}: {what}{counted(n_rows, 'image')}, vfm {d_vfm}-d, vlm {d_vlm}-d, {counted(n_classes, 'class')}, "
        f"{len(meta.get('templates') or [])} prompt template(s)"
        + (f", {skipped} unreadable image(s) skipped" if skipped else "")
        + (f", {reused} of them copied from earlier outputs (unchanged files)" if reused else "") + hint
    )
    return 0


#: gpua.extract's argument names that its messages write as ``name=value``, and the flags that set them.
_FLAGS = {"out": "--out", "classnames": "--classnames", "vlm": "--vlm", "vfm": "--vfm", "on_error": "--on-error",
          "shard_storage": "--shard-storage", "rows_per_shard": "--rows-per-shard", "image_root": "--image-root",
          "split": "--split"}


def _as_flags(message: str) -> str:
    """``gpua.extract``'s ``out='x.txt' ... format='shards'`` written as the flags: ``--out 'x.txt' ... --format shards``
    (``classnames='x'`` as ``--classnames 'x'``...): the command line has no ``out=``."""
    import re

    # "format='shards' (--format shards)" names both already (and is kept as it is); a bare one is the flag
    message = re.sub(r"(?<![\w-])format='(\w+)'(?! \(--format)", r"--format \1", message)
    message = re.sub(r"^out(?='| ')", "--out", message)  # the output checks' "out '/x/notes' is an existing file"
    message = re.sub(r"^reuse: ", "--reuse ", message)
    # The library's ways to give what a flag cannot (a Python list of names, one image read in Python):
    message = message.replace("classnames= (a list, a file, or a dataset name", "classnames= (a class-name file, or a dataset name")
    message = message.replace("load_dataset reads folders, CoOp split files (.json) and .npz files. To read one image use "
                              "gpua.data.open_image.", "--data takes a folder of images, a CoOp split file (.json) or an .npz "
                              "file: put the image in a folder and pass the folder.")
    return with_flags(message, _FLAGS)


class _flags_named:
    """Re-raise a :class:`GPUAError` of the library with its argument names written as the flags (:func:`_as_flags`)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from .._errors import GPUAError

        if isinstance(exc, GPUAError):
            text = _as_flags(str(exc))
            if text != str(exc):
                try:
                    renamed = type(exc)(text)
                except TypeError:  # a subclass with other arguments
                    renamed = GPUAError(text)
                raise renamed from None
        return False


def _stamp(path) -> tuple | None:
    """What changes when an output is rewritten: the file's (or the shard index's) inode and mtime."""
    from pathlib import Path

    p = Path(path)
    target = p / "index.json" if p.is_dir() else p
    try:
        st = target.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
