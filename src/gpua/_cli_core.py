"""``gpua fit | evaluate | predict | compare``: the feature-level commands."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time

import numpy as np

from ._atomic import atomic_path
from ._errors import GPUAError

__all__ = ["add_subcommands", "parse_params"]


def parse_params(pairs: list[str] | None) -> dict:
    """``["lam=0.8", "refine=false"]`` -> ``{"lam": 0.8, "refine": False}`` (values parsed as JSON)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise GPUAError(f"--param {p!r} must look like NAME=VALUE, e.g. --param lam=0.8.")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
    return out


def _estimator_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPUA parameters (defaults are the library's)")
    g.add_argument("--query", choices=["vfm", "fused"], help="map VFM features alone, or [VFM, VLM]")
    g.add_argument("--lam", type=float, help="weight of the VLM term in UCM (default 0.9)")
    g.add_argument("--eps", type=float, help="entropic regularisation of the OT step")
    g.add_argument("--n-steps", type=int, help="refinement steps at most")
    g.add_argument("--no-refine", action="store_true", help="Procrustes only, no THS refinement")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--seed", type=int, help="random_state")
    g.add_argument("--param", action="append", metavar="NAME=VALUE", help="any other GPUA parameter (repeatable)")


def _overrides(args) -> dict:
    kw = parse_params(args.param)
    for name, attr in (("query", "query"), ("lam", "lam"), ("eps", "eps"), ("n_steps", "n_steps"), ("device", "device"), ("random_state", "seed")):
        v = getattr(args, attr, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "no_refine", False):
        kw["refine"] = False
    return kw


def _cmd_fit(args) -> int:
    from .estimator import GPUA
    from .features import load_features

    kw = _overrides(args)
    try:
        model = GPUA(**kw)
    except TypeError as exc:
        raise GPUAError(f"--param: {exc}; see `help(gpua.GPUA)` for the parameter names.") from None
    if getattr(args, "shards", None):
        from .stream.cli import run_fit

        return run_fit(args, model)
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


def _cmd_evaluate(args) -> int:
    from ._base import load_model
    from .features import load_features
    from .report import evaluate_model, format_table, write_json

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
    from ._base import load_model
    from .features import load_features

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
    from .baselines import list_methods
    from .features import load_features
    from .report import compare_methods, format_table, write_json

    train = load_features(args.train)
    test = load_features(args.test, require=("labels",))
    methods = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    rows = compare_methods(train, test, methods, overrides=_overrides(args), progress=True)
    print(format_table(rows, ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness", "pseudo_label_acc", "fit_seconds")))
    if args.json:
        write_json(args.json, {"train": str(args.train), "test": str(args.test), "results": rows})
        print(f"wrote {args.json}")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("fit", help="learn the map from an unlabeled feature file", description="Fit GPUA on vfm_features, vlm_features and text_prototypes (labels, if present, are ignored).")
    p.add_argument("--train", help="feature file (.npz or .safetensors)")
    p.add_argument("--out", required=True, help="model file to write (.gpua)")
    _estimator_args(p)
    from .stream.cli import add_cli_arguments

    add_cli_arguments(p)
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
    _estimator_args(p)
    p.set_defaults(func=_cmd_compare)
