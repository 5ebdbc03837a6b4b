"""``gpua classify``: from a folder of photos to a predictions CSV, in one command.

Extracts the features (cached), fits the method on the pool (the folder itself by default,
without labels) and predicts every photo; see :func:`gpua.classify.classify_folder`.
"""

from __future__ import annotations

import argparse
from collections import Counter

from ._common import (DEFAULT_VFM, DEFAULT_VLM, STDOUT, CsvOutput, add_estimator_arguments, add_extraction_arguments, check_paths,
                      estimator_overrides, positive_int, proba_scale_note)

__all__ = ["add_subcommands"]


def add_subcommands(subparsers) -> None:
    """Add ``gpua classify`` to the ``gpua`` parser."""
    p = subparsers.add_parser(
        "classify",
        help="classify a folder of photos into your classes (extract, fit, predict in one command)",
        description="Encode the photos of --images (cached), fit the method on the pool (the folder itself by default, "
        "no labels read) and write one CSV row per photo: image, prediction, probability, the top-k classes, and label "
        "when the folder has one sub-folder per class. Works offline with the default encoders.",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of photos: flat, or one sub-folder per class")
    p.add_argument("--classnames", required=True, metavar="FILE",
                   help="class-name file: one class a line, 'name' or 'name: word, word' (a folder's name, then its prompt words)")
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="predictions CSV to write ('-': write the CSV to stdout, and the rest of the output to stderr)")
    p.add_argument("--vfm", default=DEFAULT_VFM, metavar="ENCODER", help="vision foundation model")
    p.add_argument("--vlm", default=DEFAULT_VLM, metavar="ENCODER", help="vision-language model")
    p.add_argument("--pool", metavar="DIR", help="folder of photos to fit on, read as unlabeled: every image below it, whatever its "
                   "sub-folders are called (default: --images itself)")
    p.add_argument("--method", default="gpua", help="a method of gpua.list_methods(): gpua, zero_shot, procrustes_only...")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes listed per photo")
    p.add_argument("--model-out", metavar="FILE.gpua", help="also save the fitted model (for gpua predict / evaluate)")
    add_extraction_arguments(p, benchmark="those of the benchmark --classnames names, e.g. cifar10")
    add_estimator_arguments(p)
    p.set_defaults(func=_cmd_classify, on_interrupt="the photos are saved in parts of 256 as they are encoded; the same command "
                   "resumes from the last part saved (a run stopped before its first 256 starts again)")


#: What an interruption leaves once every photo is encoded (the fit's first report says so).
FIT_INTERRUPTED = "every photo's features are cached; the same command reads them back and only the fit runs again"


def _fit_started(args: argparse.Namespace, progress):
    """``progress`` as the fit's callback, switching the interruption line to :data:`FIT_INTERRUPTED`
    at the fit's first report (the encoding is then over: "photos saved every 256" is no longer what
    a Ctrl-C leaves)."""

    def callback(entry: dict) -> None:
        args.on_interrupt = FIT_INTERRUPTED
        progress(entry)

    return callback


def _zero_shot_differs(ours: Counter, zero_shot: Counter, n: int) -> bool:
    """Whether the two methods' class counts are far apart (total variation above 0.2)."""
    return n > 0 and sum(abs(ours[k] - zero_shot[k]) for k in set(ours) | set(zero_shot)) / (2 * n) > 0.2


def _cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._errors import GPUAError
    from ..classify import check_classes, check_method_overrides, check_methods, unlabeled_pool
    from ._common import check_cache_dir

    # --out -: the CSV alone on stdout (no file named "-"), the summary on stderr
    check_paths(args, inputs=("images", "classnames", "templates", "pool"),
                outputs=(("model_out", "model"),) if args.out == STDOUT else (("out", "table"), ("model_out", "model")))
    if not Path(args.images).expanduser().is_dir():
        raise GPUAError(f"--images {args.images!r} is not a folder; pass a folder of photos (flat, or one sub-folder per class).")
    check_cache_dir(args)
    check_methods([args.method], "--method")
    names = check_classes(args.classnames, "--classnames")  # before any photo is encoded
    pool = None if args.pool is None else unlabeled_pool(args.pool, "--pool")  # every image below it, no labels read
    overrides = estimator_overrides(args)
    check_method_overrides(args.method, overrides, len(names), f"--method {args.method}")
    device = overrides.pop("device", "cpu")
    with CsvOutput(args.out) as out:
        return _classify(args, pool, overrides, device, out)


def _classify(args: argparse.Namespace, pool, overrides: dict, device: str, out: CsvOutput) -> int:
    import warnings

    from .._errors import GPUAError
    from ..baselines import unused_overrides
    from ..classify import _format_counts, classify_folder, is_undecoded_format
    from ..data._loaders import heif_install_note
    from ._common import FitProgress, with_flags

    with FitProgress(None, not args.quiet) as progress, warnings.catch_warnings():
        # The summary below names the unreadable photos and those of formats gpua does not decode
        # (and the CSV lists them): not twice.
        warnings.filterwarnings("ignore", message=r"skipped \d+ unreadable image")
        warnings.filterwarnings("ignore", message=r"\d+ photo\(s\) of .* are in formats gpua does not decode")
        try:
            res = classify_folder(
                args.images, args.classnames, vfm=args.vfm, vlm=args.vlm, templates=args.templates, pool=pool, method=args.method,
                overrides={**overrides, "device": device}, cache_dir=args.cache_dir, device=device, batch_size=args.batch_size,
                progress=not args.quiet, callback=_fit_started(args, progress), workers=args.workers,
            )
        except GPUAError as exc:  # the encoders' checks name the flags (was "vlm='offline:dinov2-s' is vision-only")
            raise GPUAError(with_flags(str(exc), {"vlm": "--vlm", "vfm": "--vfm", "pool": "--pool", "method": "--method"})) from None
    n = out.write_with(lambda path: res.to_csv(path, top_k=args.top_k))
    if args.model_out:
        res.model.save(args.model_out)
    counts = Counter(res.classnames[k] for k in res.predictions.tolist())
    shown = ", ".join(f"{name} {c}" for name, c in counts.most_common(6))
    zero_shot = Counter(res.classnames[k] for k in res.zero_shot.tolist())
    s = res.seconds
    fitted = ("zero-shot: nothing fitted" + ("; --pool not used" if args.pool else "") if args.method == "zero_shot"
              else "fitted on " + ("--pool " + args.pool if args.pool else "the photos themselves, no labels")
              + proba_scale_note(res.model))
    of = f" of {n + len(res.unreadable)}" if res.unreadable else ""  # the others are named below, and in the CSV
    photos = "photo" if n + len(res.unreadable) == 1 else "photos"
    print(f"classified {n}{of} {photos} into {len(res.classnames)} classes with {args.method} "
          f"(VFM {args.vfm}, VLM {args.vlm}; {fitted}); extract {s['extract']:.1f} s, fit {s['fit']:.1f} s")
    print(f"predicted: {shown}{' ...' if len(counts) > 6 else ''}")
    scored = ", and the scores below leave them out" if res.labels is not None else ""
    csv_name = "the CSV on stdout" if out.to_stdout else args.out
    undecoded = [image_id for image_id, _ in res.unreadable if is_undecoded_format(image_id)]
    unreadable = [(image_id, error) for image_id, error in res.unreadable if not is_undecoded_format(image_id)]
    if unreadable:
        first, error = unreadable[0]
        print(f"{len(unreadable)} photo(s) could not be read or encoded and were not classified (first: {first!r}: {error}); "
              f"{csv_name} lists them with an empty prediction and the error{scored}")
    if undecoded:
        print(f"{len(undecoded)} photo(s) are in formats gpua does not decode and were not classified "
              f"({_format_counts(undecoded)}; first: {undecoded[0]!r}): convert them to JPEG or PNG{heif_install_note(undecoded)} "
              "to include them; "
              f"{csv_name} lists them with an empty prediction and the reason{scored}")
    if args.method != "zero_shot":  # GPUA's fit takes the classes as about equally frequent; zero-shot does not
        far = _zero_shot_differs(counts, zero_shot, n)
        print("VLM zero-shot would predict: " + ", ".join(f"{name} {c}" for name, c in zero_shot.most_common(6))
              + (" ..." if len(zero_shot) > 6 else "")
              # The two causes look alike without labels: a VLM favouring some classes on a balanced
              # folder (common: the zero-shot's counts are then the worse guess) or a skewed folder.
              + (" (far apart: either the VLM favours some classes, common on balanced folders, where GPUA's counts "
                 "are the better guess, or the folder's classes are far from equally frequent"
                 + ("" if "class_prior" in overrides or unused_overrides(args.method, {"class_prior": "estimate"})
                    else ": if you know they are, try --param class_prior=estimate, or "
                    "class_prior=zero_shot if the folder is strongly long-tailed")
                 + "; see 'Imbalanced folders' in the README)" if far else ""))
    scores = res.scores()
    if scores is not None:
        flag = " (acc5 says nothing with 5 classes or fewer)" if scores["n_classes"] <= 5 else ""
        zs = "" if args.method == "zero_shot" else f"; VLM zero-shot acc1 {100 * float((res.zero_shot == res.labels).mean()):.2f}%"
        print(f"the folder is labelled (class sub-folders): acc1 {100 * scores['acc1']:.2f}%, acc5 {100 * scores['acc5']:.2f}%{flag}, "
              f"mean per-class recall {100 * scores['mean_per_class_recall']:.2f}%{zs} (labels used only to score)")
    print(f"features cached in {res.features}" + ("" if res.pool_features == res.features else f" and {res.pool_features}"))
    wrote = ([] if out.to_stdout else [args.out]) + ([args.model_out] if args.model_out else [])
    if wrote:
        print(f"wrote {' and '.join(wrote)}")
    return 0
