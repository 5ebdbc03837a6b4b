"""``gpua classify``: from a folder of photos to a predictions CSV, in one command.

Extracts the features (cached), fits the method on the pool (the folder itself by default,
without labels) and predicts every photo; see :func:`gpua.classify.classify_folder`.
"""

from __future__ import annotations

import argparse
from collections import Counter

from ._common import add_estimator_arguments, add_extraction_arguments, check_paths, estimator_overrides, positive_int

__all__ = ["add_subcommands"]

# As gpua.classify.DEFAULT_VFM / DEFAULT_VLM (not imported here: building the parser stays cheap).
_DEFAULT_VFM = "offline:dinov2-s"
_DEFAULT_VLM = "offline:semantic-lite0"


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
    p.add_argument("--out", required=True, metavar="FILE.csv", help="predictions CSV to write")
    p.add_argument("--vfm", default=_DEFAULT_VFM, metavar="ENCODER", help="vision foundation model")
    p.add_argument("--vlm", default=_DEFAULT_VLM, metavar="ENCODER", help="vision-language model")
    p.add_argument("--pool", metavar="DIR", help="folder of photos to fit on, read as unlabeled: every image below it, whatever its "
                   "sub-folders are called (default: --images itself)")
    p.add_argument("--method", default="gpua", help="a method of gpua.list_methods(): gpua, zero_shot, procrustes_only...")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes listed per photo")
    p.add_argument("--model-out", metavar="FILE.gpua", help="also save the fitted model (for gpua predict / evaluate)")
    add_extraction_arguments(p)
    add_estimator_arguments(p)
    p.set_defaults(func=_cmd_classify)


def _cmd_classify(args: argparse.Namespace) -> int:
    from ..classify import check_classes, check_methods, classify_folder, unlabeled_pool
    from ._common import FitProgress

    check_paths(args, inputs=("images", "classnames", "templates", "pool"), outputs=(("out", "file"), ("model_out", "file")))
    check_methods([args.method], "--method")
    check_classes(args.classnames, "--classnames")  # before any photo is encoded
    pool = None if args.pool is None else unlabeled_pool(args.pool, "--pool")  # every image below it, no labels read
    overrides = estimator_overrides(args)
    device = overrides.pop("device", "cpu")
    with FitProgress(None, not args.quiet) as progress:
        res = classify_folder(
            args.images, args.classnames, vfm=args.vfm, vlm=args.vlm, templates=args.templates, pool=pool, method=args.method,
            overrides={**overrides, "device": device}, cache_dir=args.cache_dir, device=device, batch_size=args.batch_size,
            progress=not args.quiet, callback=progress,
        )
    n = res.to_csv(args.out, top_k=args.top_k)
    if args.model_out:
        res.model.save(args.model_out)
    counts = Counter(res.classnames[k] for k in res.predictions.tolist())
    shown = ", ".join(f"{name} {c}" for name, c in counts.most_common(6))
    zero_shot = Counter(res.classnames[k] for k in res.zero_shot.tolist())
    s = res.seconds
    print(f"classified {n} photos into {len(res.classnames)} classes with {args.method} "
          f"(VFM {args.vfm}, VLM {args.vlm}; fitted on {'--pool ' + args.pool if args.pool else 'the photos themselves, no labels'}); "
          f"extract {s['extract']:.1f} s, fit {s['fit']:.1f} s")
    print(f"predicted: {shown}{' ...' if len(counts) > 6 else ''}")
    if res.unreadable:
        first, error = res.unreadable[0]
        print(f"{len(res.unreadable)} photo(s) could not be read and were not classified (first: {first!r}: {error}); "
              f"{args.out} lists them with an empty prediction and the error" + (", and the scores below leave them out"
                                                                                  if res.labels is not None else ""))
    if args.method != "zero_shot":  # GPUA's fit takes the classes as about equally frequent; zero-shot does not
        print("VLM zero-shot would predict: " + ", ".join(f"{name} {c}" for name, c in zero_shot.most_common(6))
              + (" ..." if len(zero_shot) > 6 else "") + " (far apart on a folder whose classes are far from equally frequent: "
              "see 'Imbalanced folders' in the README)")
    scores = res.scores()
    if scores is not None:
        flag = " (acc5 says nothing with 5 classes or fewer)" if scores["n_classes"] <= 5 else ""
        print(f"the folder is labelled (class sub-folders): acc1 {100 * scores['acc1']:.2f}%, acc5 {100 * scores['acc5']:.2f}%{flag}, "
              f"mean per-class recall {100 * scores['mean_per_class_recall']:.2f}% (labels used only to score)")
    print(f"features cached in {res.features}" + ("" if res.pool_features == res.features else f" and {res.pool_features}"))
    print(f"wrote {args.out}" + (f" and {args.model_out}" if args.model_out else ""))
    return 0
