"""Result tables and JSON: fit several methods on one pool, score them on a test set.

The JSON of one evaluation follows CLIP_benchmark's shape (``metrics: {acc1, acc5,
mean_per_class_recall}``) and adds gpua's own diagnostics beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._atomic import atomic_write_text
from ._errors import GPUAError
from .baselines import list_methods, make_method
from .features import FeatureSet
from .metrics import classification_report

__all__ = ["evaluate_model", "compare_methods", "format_table", "write_json"]


def evaluate_model(model, test: FeatureSet, *, dataset: str = "", model_name: str = "") -> dict[str, Any]:
    """Score a fitted model on a labelled feature set; CLIP_benchmark-shaped dict."""
    test.require("labels", source="the test feature file (labels are needed to score)")
    needs_vlm = getattr(model, "query", "vfm") == "fused" or type(model).__name__ == "VLMZeroShot"
    if needs_vlm:
        test.require("vlm_features", source="the test feature file")
    if type(model).__name__ != "VLMZeroShot":
        test.require("vfm_features", source="the test feature file")
    t0 = time.perf_counter()
    scores = model.decision_function(test.vfm_features, test.vlm_features)
    seconds = time.perf_counter() - t0
    rep = classification_report(scores, test.labels)
    out: dict[str, Any] = {
        "dataset": dataset,
        "model": model_name or type(model).__name__,
        "task": "zeroshot_classification",
        "metrics": {k: rep[k] for k in ("acc1", "acc5", "mean_per_class_recall")},
        "gpua": {
            "hubness_skewness": rep["hubness_skewness"],
            "robin_hood_index": rep["robin_hood_index"],
            "n_samples": int(scores.shape[0]),
            "n_classes": int(scores.shape[1]),
            "predict_seconds": seconds,
            "params": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in model.get_params().items()},
        },
    }
    if test.vlm_features is not None and hasattr(model, "text_prototypes_"):
        zs = test.vlm_features / np.linalg.norm(test.vlm_features, axis=1, keepdims=True)
        zs_scores = zs @ model.text_prototypes_.cpu().numpy().T
        zs_rep = classification_report(zs_scores, test.labels)
        out["gpua"]["zero_shot_metrics"] = {k: zs_rep[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
        out["gpua"]["agreement_with_zero_shot"] = float(np.mean(zs_scores.argmax(1) == scores.argmax(1)))
    hist = getattr(model, "history_", None)
    if hist:
        out["gpua"]["pseudo_label_agreement"] = hist.get("pseudo_label_agreement")
        out["gpua"]["fit_timings"] = hist.get("timings")
    return out


def compare_methods(
    train: FeatureSet,
    test: FeatureSet,
    methods: Sequence[str] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
    return_estimators: bool = False,
):
    """Fit each named method on ``train`` (no labels) and score it on ``test``.

    Returns one row per method: name, acc1, acc5, mean_per_class_recall, hubness, fit seconds
    and, for GPUA variants, pseudo-label accuracy against the train labels when those exist (a
    diagnostic; labels never reach ``fit``). With ``return_estimators``, also a dictionary of
    the fitted estimators by method name (as scikit-learn's ``cross_validate``).
    """
    train.require("vfm_features", "vlm_features", "text_prototypes", source="the training feature file")
    test.require("vfm_features", "vlm_features", "labels", source="the test feature file")
    methods = list(methods) if methods else list_methods()
    rows, fitted = [], {}
    for name in methods:
        est = make_method(name, **(overrides or {}))
        t0 = time.perf_counter()
        est.fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
        fit_s = time.perf_counter() - t0
        fitted[name] = est
        rep = classification_report(est.decision_function(test.vfm_features, test.vlm_features), test.labels)
        row = {"method": name, **rep, "fit_seconds": fit_s}
        if hasattr(est, "pseudo_labels_") and train.labels is not None:
            row["pseudo_label_acc"] = float(np.mean(est.pseudo_labels_ == train.labels))
        rows.append(row)
        if progress:
            print(f"  {name:<16} acc1 {rep['acc1']:.4f}  ({fit_s:.1f} s)", flush=True)
    return (rows, fitted) if return_estimators else rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness", "fit_seconds")) -> str:
    """A plain-text table (percentages for accuracies)."""
    pct = {"acc1", "acc5", "mean_per_class_recall", "pseudo_label_acc"}
    head = [c for c in columns]
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{100 * v:.2f}" if c in pct else f"{v:.2f}"
            cells.append(str(v))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically."""
    if path is None:
        raise GPUAError("path is None; give a file name for the JSON output.")
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
