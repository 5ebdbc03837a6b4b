"""``gpua fit | evaluate | predict | compare``: the commands that work on feature files.

``gpua fit --shards DIR [--max-memory 4GB] [--cluster ADDR] [--checkpoint DIR]`` fits on a shard
set with :func:`gpua.stream.fit_streaming`.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from .._atomic import atomic_path
from .._errors import GPUAError
from ._common import add_estimator_arguments, estimator_overrides, parse_cluster

__all__ = ["add_subcommands", "add_streaming_arguments", "run_streamed_fit"]


def _cmd_fit(args) -> int:
    from ..estimator import GPUA
    from ..features import load_features

    model = GPUA(**estimator_overrides(args))  # names and values checked against gpua.fitting.PARAMETERS
    if getattr(args, "shards", None):
        return run_streamed_fit(args, model)
    if not args.train:
        raise GPUAError("give --train FILE (a feature file) or --shards DIR (a shard set).")
    train = load_features(args.train, require=("vfm_features", "vlm_features", "text_prototypes"))
    t0 = time.perf_counter()
    model.fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
    dt = time.perf_counter() - t0
    model.save(args.out)
    h = model.history_
    print(
        f"fitted on {train.n_samples} images, {model.n_classes_} classes in {dt:.1f} s "
        f"(UCM {len(h['ucm'])} rounds, {len(h['refine'])} refinement checkpoints); "
        f"pseudo-label agreement {h['pseudo_label_agreement']:.3f}; saved {args.out}"
    )
    return 0


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the streaming options to ``gpua fit``'s parser."""
    g = parser.add_argument_group("streaming and distributed fits (gpua.stream)")
    g.add_argument("--shards", metavar="DIR", help="fit on a shard set (gpua extract / gpua.stream.write_shards) instead of --train")
    g.add_argument("--prototypes", metavar="FILE", help="feature file with text_prototypes (default: those stored with the shards)")
    g.add_argument("--max-memory", default="4GB", metavar="SIZE", help="memory budget per process, e.g. 4GB (default 4GB)")
    g.add_argument("--cluster", metavar="ADDRESS", help="run chunk sums on Dask: 'local', a worker count, or tcp://HOST:8786")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for --cluster (default 10)")
    g.add_argument("--checkpoint", metavar="DIR", help="save UCM state after every round; re-run with the same DIR to resume")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_streamed_fit(args: argparse.Namespace, model) -> int:
    """Fit ``model`` (a configured GPUA) on ``args.shards`` and save it to ``args.out``.

    Returns
    -------
    int
        Exit code 0 (errors are raised as :class:`GPUAError` for the CLI to print).
    """
    from ..stream import fit_streaming
    from ..features import ShardedFeatures

    shards = ShardedFeatures(args.shards)
    prototypes = classnames = None
    if getattr(args, "prototypes", None):
        from ..features import load_features

        fs = load_features(args.prototypes, require=("text_prototypes",))
        prototypes, classnames = fs.text_prototypes, fs.classnames
    t0 = time.perf_counter()
    fit_streaming(
        model, shards, prototypes, classnames=classnames, max_memory=args.max_memory, cluster=parse_cluster(args.cluster),
        checkpoint=args.checkpoint, progress=not args.no_progress, connect_timeout=args.connect_timeout,
    )
    dt = time.perf_counter() - t0
    model.save(args.out)
    h = model.history_
    s = h["streaming"]
    print(
        f"fitted on {s['n_samples']} images ({shards.n_shards} shards), {model.n_classes_} classes in {dt:.1f} s "
        f"(UCM {len(h['ucm'])} rounds, {s['passes']} chunk passes, {s['n_chunks']} chunks of {s['chunk_rows']} rows, "
        f"cache {s['cache']}, {s['processes']} process(es)); pseudo-label agreement {h['pseudo_label_agreement']:.3f}; saved {args.out}"
    )
    return 0


def _cmd_evaluate(args) -> int:
    from .._base import load_model
    from ..features import load_features
    from ..report import evaluate_model, format_table, write_json

    model = load_model(args.model)
    test = load_features(args.test, require=("labels",))
    res = evaluate_model(model, test, dataset=args.dataset or str(args.test), model_name=str(args.model))
    rows = [{"method": "model", **res["metrics"], "hubness_skewness": res["gpua"]["hubness_skewness"]}]
    if "zero_shot_metrics" in res["gpua"]:
        rows.insert(0, {"method": "vlm_zero_shot", **res["gpua"]["zero_shot_metrics"]})
    print(format_table(rows, ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness")))
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def _cmd_predict(args) -> int:
    from .._base import load_model
    from ..features import load_features

    model = load_model(args.model)
    fs = load_features(args.features)
    proba = model.predict_proba(fs.vfm_features, fs.vlm_features)
    pred = proba.argmax(1)
    names = model.classnames_ or fs.classnames
    with atomic_path(args.out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["row", "image_id", "label", "classname", "probability"])
            for i, (p, pr) in enumerate(zip(pred, proba[np.arange(len(pred)), pred])):
                w.writerow([i, fs.image_ids[i] if fs.image_ids else "", int(p), names[p] if names else "", f"{pr:.6f}"])
    print(f"wrote {len(pred)} predictions to {args.out}")
    return 0


def _cmd_compare(args) -> int:
    from ..baselines import list_methods
    from ..features import load_features
    from ..report import compare_methods, format_table, write_json

    train = load_features(args.train)
    test = load_features(args.test, require=("labels",))
    methods = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    rows = compare_methods(train, test, methods, overrides=estimator_overrides(args), progress=True)
    print(format_table(rows, ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness", "pseudo_label_acc", "fit_seconds")))
    if args.json:
        write_json(args.json, {"train": str(args.train), "test": str(args.test), "results": rows})
        print(f"wrote {args.json}")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("fit", help="learn the map from an unlabeled feature file", description="Fit GPUA on vfm_features, vlm_features and text_prototypes (labels, if present, are ignored).")
    p.add_argument("--train", help="feature file (.npz or .safetensors)")
    p.add_argument("--out", required=True, help="model file to write (.gpua)")
    add_estimator_arguments(p)
    add_streaming_arguments(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("evaluate", help="score a model on a labelled feature file", description="Top-1/top-5/mean per-class recall, hubness, and the VLM zero-shot baseline on the same images.")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True, help="feature file with labels")
    p.add_argument("--json", help="write CLIP_benchmark-shaped results here")
    p.add_argument("--dataset", help="dataset name recorded in the JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict classes for a feature file", description="Write a CSV: row, image_id, label, classname, probability.")
    p.add_argument("--model", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("compare", help="fit and score GPUA, its ablations and baselines", description="Fit each method on --train (no labels) and score it on --test.")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--methods", default="all", help="comma-separated names or 'all' (see gpua.list_methods())")
    p.add_argument("--json")
    add_estimator_arguments(p)
    p.set_defaults(func=_cmd_compare)
