"""Result tables and JSON: score a model, fit several methods on one pool, say where a model came from.

The JSON of one evaluation follows CLIP_benchmark's shape (``dataset``, ``task``, ``metrics:
{acc1, acc5, mean_per_class_recall}``), names the two encoders (``vfm``, ``vlm``) as
CLIP_benchmark names its model, and adds gpua's own diagnostics beside it. Test labels are
matched to the model's classes by name (:func:`gpua.data.classnames.match_classes`) before
anything is scored.
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import __version__
from ._atomic import PREDICTIONS_COLUMNS, REPORT_MARK_KEY, atomic_path, atomic_write_text, plot_metadata
from ._errors import GPUAError, warn_user
from ._optional import import_optional
from ._validation import check_classnames
from .baselines import list_methods, make_method
from .data.classnames import match_classes
from .features import FeatureSet
from .metrics import classification_report, confusion_matrix, expected_calibration_error, score_summary

__all__ = [
    "evaluate_model",
    "compare_methods",
    "format_table",
    "format_class_report",
    "plot_confusion_matrix",
    "plot_format",
    "provenance_from_features",
    "encoders_of",
    "check_encoders",
    "check_model_task",
    "model_task",
    "write_json",
    "write_predictions",
]

_PCT = {"acc1", "acc5", "mean_per_class_recall", "pseudo_label_acc"}


def provenance_from_features(meta: dict[str, Any], *, classnames: Sequence[str] | None = None, source: str | None = None) -> dict[str, Any]:
    """The ``provenance_`` of a model fitted on features with this metadata (what ``gpua extract`` writes).

    Parameters
    ----------
    meta : dict
        A feature file's or shard set's ``meta``.
    classnames : sequence of str, optional
        The class names the model was fitted with.
    source : str, optional
        The feature file or shard set's path.

    Returns
    -------
    dict
        ``vfm`` and ``vlm`` (encoder specs), ``templates``, ``classnames``, ``class_prompts``
        (the prompt words of each class), and ``features`` (``path``, ``cache_key``,
        ``dataset``, ``split``, ``n_images``: the images whose rows the features hold, that is
        the rows a model fitted on them saw, and ``n_skipped``: the images of the dataset that
        could not be read, hence have no row); keys whose value is unknown are left out.
    """
    ds = meta.get("dataset") or {}
    # meta["dataset"]["n_images"] counts the dataset's images, the unreadable ones included (it is
    # part of the cache key); the rows are those less the ones extraction skipped.
    n_images = ds.get("n_images")
    skipped = meta.get("skipped")
    n_skipped = skipped.get("count") if isinstance(skipped, dict) else None
    if not (isinstance(n_skipped, int) and not isinstance(n_skipped, bool) and n_skipped >= 0):
        n_skipped = None
    if n_skipped is not None and isinstance(n_images, int) and not isinstance(n_images, bool) and n_images >= n_skipped:
        n_images -= n_skipped
    feats = {
        "path": source,
        "cache_key": meta.get("cache_key"),
        "dataset": ds.get("name"),
        "split": ds.get("split"),
        "n_images": n_images,
        "n_skipped": n_skipped,
    }
    out = {
        "vfm": (meta.get("vfm") or {}).get("spec"),
        "vlm": (meta.get("vlm") or {}).get("spec"),
        "templates": meta.get("templates"),
        "classnames": None if classnames is None else list(classnames),
        "class_prompts": meta.get("class_prompts"),
        "features": {k: v for k, v in feats.items() if v is not None},
    }
    return {k: v for k, v in out.items() if v not in (None, {})}


def encoders_of(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """The (VFM, VLM) encoder specs recorded in a model's ``provenance_`` or a feature file's ``meta``."""
    def spec(v):
        return v.get("spec") if isinstance(v, dict) else v

    return spec(meta.get("vfm")), spec(meta.get("vlm"))


def model_task(model) -> str | None:
    """What a fitted model was fitted for, by its ``provenance_``: ``"segmentation"`` (patch tokens:
    ``gpua fit-seg``, :func:`gpua.segment.inference.fit_patch_gpua`), ``"classification"``
    (whole-image features of a feature file: ``gpua fit``, ``classify``, ``benchmark``), or None
    when it records neither (a model fitted in Python on arrays)."""
    prov = getattr(model, "provenance_", None) or {}
    if prov.get("task") == "segmentation" or "class_of_prototype" in prov:
        return "segmentation"
    return "classification" if isinstance(prov.get("features"), dict) else None


def check_model_task(model, task: str, model_source: str = "the model") -> None:
    """Refuse a model fitted for the other task, before any work (:func:`model_task`).

    A patch-level model's classes are the prompt words of its classes (``background: wall,
    floor`` gives two), fitted on patch tokens: scoring whole-image features with it named the
    words as classes. An image-level model segmented patches it was never fitted on.
    """
    got = model_task(model)
    if got is None or got == task:
        return
    if task == "classification":
        raise GPUAError(f"{model_source} is a patch-level model from `gpua fit-seg` (fitted on patch tokens; its classes are "
                        "its prompt words): it segments images. Use it with `gpua segment` or `gpua evaluate-seg`; to "
                        "classify images, fit a model with `gpua fit` (or `gpua classify --model-out`).")
    raise GPUAError(f"{model_source} was fitted on whole-image features (`gpua fit`, `gpua classify`), not on patch tokens: "
                    "segmentation needs a model from `gpua fit-seg --images POOL --classnames FILE --out seg.gpua`, or "
                    "--zero-shot.")


def check_encoders(
    model, meta: dict[str, Any], *, model_source: str = "the model", data_source: str = "the features"
) -> tuple[tuple[str | None, str | None], tuple[str | None, str | None]]:
    """Warn when features come from other encoders than the ones ``model`` was fitted on.

    The encoders are those its ``provenance_`` and the features' ``meta`` record (a side that
    records none is not checked): a map learnt on one VFM's features means nothing on another's,
    even one of the same width. ``gpua evaluate`` and ``gpua predict`` both check with this.

    Returns
    -------
    ((vfm, vlm) of the model, (vfm, vlm) of the features)
        Encoder specs, None where unknown.
    """
    fitted_on = encoders_of(dict(getattr(model, "provenance_", None) or {}))
    used = encoders_of(meta or {})
    for role, fitted, given in _other_encoders(fitted_on, used):
        warn_user(f"{data_source} holds {role} features of {given!r} but {model_source} was fitted on {fitted!r}; "
                  f"features of different encoders do not fit the model: extract them with {fitted!r}.")
    return fitted_on, used


def _other_encoders(fitted_on, used) -> list[tuple[str, str, str]]:
    """``(role, fitted, given)`` for each of VFM, VLM whose specs both sides record, and differ."""
    return [(role, f, g) for role, f, g in zip(("VFM", "VLM"), fitted_on, used) if f and g and f != g]


def _n_classes(fs: FeatureSet) -> int | None:
    if fs.classnames is not None:
        return len(fs.classnames)
    if fs.text_prototypes is not None:
        return int(fs.text_prototypes.shape[0])
    return None


def _dataset_name(fs: FeatureSet) -> str:
    ds = fs.meta.get("dataset") or {}
    return "/".join(str(ds[k]) for k in ("name", "split") if ds.get(k)) or ""


def _scored_labels(match, test: FeatureSet, n_classes: int, test_name: str) -> np.ndarray:
    """The test labels in the model's class indices, each one of its ``n_classes`` classes.

    A file without class names or prototypes is matched by index, and its labels were checked
    against no class count: one beyond the model's would be scored as a class that does not exist.
    """
    from ._validation import check_labels

    y = match.map_labels(test.labels)
    return check_labels(y, y.shape[0], n_classes, name=f"{test_name}'s labels (mapped onto the model's {n_classes} classes)")


def evaluate_model(
    model,
    test: FeatureSet,
    *,
    dataset: str = "",
    model_name: str = "",
    test_name: str = "the test features",
    report: bool = False,
) -> dict[str, Any]:
    """Score a fitted model on a labelled feature set; a CLIP_benchmark-shaped dict.

    The test labels are matched to the model's classes by name when both sides have names
    (reordered if needed), refused when the names or class counts differ, and matched by index
    with a warning when a side has no names.

    Parameters
    ----------
    model : fitted estimator
    test : FeatureSet
        With ``labels``.
    dataset : str
        The dataset's name in the result (default: the test file's dataset and split).
    model_name : str
        How to call the model (its file), for messages and the ``model_file`` key.
    test_name : str
        How to call the test features in messages.
    report : bool
        Add ``per_class`` (precision, recall, F1, support by class name) and
        ``confusion_matrix`` (rows: true class, columns: predicted, in the model's class order).

    Returns
    -------
    dict
        ``dataset``, ``vfm``, ``vlm``, ``task``, ``metrics`` and ``gpua`` (diagnostics).
    """
    test.require("labels", source=f"{test_name} (labels are needed to score)")
    is_zero_shot = type(model).__name__ == "VLMZeroShot"
    if getattr(model, "query", "vfm") == "fused" or is_zero_shot:
        test.require("vlm_features", source=test_name)
    if not is_zero_shot:
        test.require("vfm_features", source=test_name)
    model_src = f"model {model_name!r}" if model_name else "the model"
    match = match_classes(
        getattr(model, "classnames_", None), test.classnames, n_model=model.n_classes_, n_data=_n_classes(test) or model.n_classes_,
        model_source=model_src, data_source=test_name,
    )
    if match.note:
        warn_user(match.note)
    y = _scored_labels(match, test, model.n_classes_, test_name)
    prov = dict(getattr(model, "provenance_", None) or {})
    (vfm, vlm), (test_vfm, test_vlm) = check_encoders(model, test.meta, model_source=model_src, data_source=test_name)
    t0 = time.perf_counter()
    scores = model.decision_function(test.vfm_features, test.vlm_features)
    seconds = time.perf_counter() - t0
    rep = score_summary(y, scores)
    out: dict[str, Any] = {
        "dataset": dataset or _dataset_name(test),
        "vfm": vfm or test_vfm,
        "vlm": vlm or test_vlm,
        "task": "zeroshot_classification",
        "metrics": {k: rep[k] for k in ("acc1", "acc5", "mean_per_class_recall")},
        "model_file": model_name or None,
        "gpua": {
            "method": type(model).__name__,
            "hubness_skewness": rep["hubness_skewness"],
            "robin_hood_index": rep["robin_hood_index"],
            "n_samples": int(scores.shape[0]),
            "n_classes": int(scores.shape[1]),
            # the probability column's calibration against these labels (gpua.probability: label-free for GPUA)
            "expected_calibration_error": expected_calibration_error(y, model.proba_from_scores(scores)),
            "proba_scale": model._proba_scale(),
            "classes_matched": "by name" + (" (reordered)" if match.reordered else "") if match.by_name else "by index (no names)",
            "predict_seconds": seconds,
            "templates": prov.get("templates"),
            "fit_features": prov.get("features"),
            "params": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in model.get_params().items()},
        },
    }
    other = _other_encoders((vfm, vlm), (test_vfm, test_vlm))
    if other:  # the warning goes to stderr; the result says it too, or it reads as the model's encoders' score
        out["gpua"]["test_encoders_differ"] = {role.lower(): {"model": f, "test": g} for role, f, g in other}
    if test.vlm_features is not None and hasattr(model, "text_prototypes_"):
        zs = test.vlm_features / np.linalg.norm(test.vlm_features, axis=1, keepdims=True)
        zs_scores = zs @ model.text_prototypes_.cpu().numpy().T
        zs_rep = score_summary(y, zs_scores)
        # With its hubness, as the model's row: the hubness the map removes is read against the zero-shot's.
        out["gpua"]["zero_shot_metrics"] = {k: zs_rep[k] for k in ("acc1", "acc5", "mean_per_class_recall", "hubness_skewness")}
        out["gpua"]["agreement_with_zero_shot"] = float(np.mean(zs_scores.argmax(1) == scores.argmax(1)))
    hist = getattr(model, "history_", None)
    if hist:
        out["gpua"]["pseudo_label_agreement"] = hist.get("pseudo_label_agreement")
        out["gpua"]["fit_timings"] = hist.get("timings")
    if report:
        names = list(getattr(model, "classnames_", None) or [str(k) for k in range(scores.shape[1])])
        pred = scores.argmax(1)
        out["per_class"] = classification_report(y, pred, classnames=names)
        out["confusion_matrix"] = {"classnames": names, "rows_true_columns_predicted": confusion_matrix(y, pred, len(names)).tolist()}
    return out


def compare_methods(
    train: FeatureSet,
    test: FeatureSet,
    methods: Sequence[str] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
    return_estimators: bool = False,
    train_name: str = "the training features",
    test_name: str = "the test features",
    on_row: Callable[[dict], None] | None = None,
):
    """Fit each named method on ``train`` (no labels) and score it on ``test``.

    Returns one row per method: name, acc1, acc5, mean_per_class_recall, hubness, fit seconds
    and, for GPUA variants, pseudo-label accuracy against the train labels when those exist (a
    diagnostic; labels never reach ``fit``); ``warnings``, the messages of the warnings its fit
    and scoring raised (also shown as warnings), when there were any. The test labels are matched to the training
    classes by name first (:func:`gpua.data.classnames.match_classes`), and every method name is
    checked before the first fit; a warning says when the two files record other encoders (as
    :func:`check_encoders` does for a model). With ``return_estimators``, also a dictionary of the fitted
    estimators by method name (as scikit-learn's ``cross_validate``). ``on_row`` is called with
    each row as soon as its method is scored, so that a caller keeps the rows done when a later
    method fails or is interrupted (``gpua compare`` writes them).
    """
    train.require("vfm_features", "vlm_features", "text_prototypes", source=train_name)
    test.require("vfm_features", "vlm_features", "labels", source=test_name)
    methods = list(dict.fromkeys(methods)) if methods else list_methods()  # a method named twice is one row
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        raise GPUAError(f"method(s) {unknown} are unknown; choose from {list_methods()}.")
    match = match_classes(train.classnames, test.classnames, n_model=_n_classes(train), n_data=_n_classes(test) or _n_classes(train),
                          model_source=train_name, data_source=test_name)
    if match.note:
        warn_user(match.note)
    y = _scored_labels(match, test, _n_classes(train) or train.text_prototypes.shape[0], test_name)
    # as evaluate and predict check a model's encoders against the features it scores
    for role, fitted_with, given in _other_encoders(encoders_of(train.meta or {}), encoders_of(test.meta or {})):
        warn_user(f"{test_name} holds {role} features of {given!r} but the methods are fitted on {train_name}, extracted with "
                  f"{fitted_with!r}; features of different encoders do not fit them: extract both with one.")
    shared = _shared_rows(train.vfm_features, test.vfm_features)
    if shared:
        warn_user(f"{shared} row(s) of {test_name} are identical to rows of {train_name} (the same images?): the methods "
                  "fit on them, so the test score is optimistic (data leakage). Extract the two from disjoint images.")
    rows, fitted = [], {}
    for name in methods:
        est = make_method(name, **(overrides or {}))
        caught: list = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                est.fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
                fit_s = time.perf_counter() - t0
                rep = score_summary(y, est.decision_function(test.vfm_features, test.vlm_features))
        finally:  # shown as before (a failed fit's too), and kept with the row they qualify
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        fitted[name] = est
        row = {"method": name, **rep, "fit_seconds": fit_s}
        if caught:  # was: a collapsed LFA's 11% row in `compare --json` without the warning that it is unreliable
            row["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
        if hasattr(est, "pseudo_labels_") and train.labels is not None:
            row["pseudo_label_acc"] = float(np.mean(est.pseudo_labels_ == train.labels))
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if progress:
            print(f"  {name:<16} acc1 {100 * rep['acc1']:6.2f}%  fit {fit_s:.1f} s", flush=True)
    return (rows, fitted) if return_estimators else rows


def _shared_rows(A: np.ndarray, B: np.ndarray) -> int:
    """How many rows of ``B`` are bit for bit rows of ``A`` (the same image encoded twice), for the leakage warning.

    Rows are compared as raw bytes (a void view: numpy sorts them, no per-row Python objects).
    Different dtypes or widths share no rows.
    """
    A, B = np.ascontiguousarray(A), np.ascontiguousarray(B)
    if A.dtype != B.dtype or A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        return 0
    row = np.dtype((np.void, A.dtype.itemsize * A.shape[1]))
    return int(np.isin(B.view(row).ravel(), A.view(row).ravel()).sum())


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness", "fit_seconds")) -> str:
    """A plain-text table: accuracies in percent (their headers say so), seconds with ``s``.

    A row with ``n_classes`` of 5 or fewer has its ``acc5`` marked ``*`` and a footnote: every
    label is among 5 guesses then.
    """
    head = [f"{c} (%)" if c in _PCT else c for c in columns]
    body, flagged = [], False
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                if c in _PCT:
                    v = f"{100 * v:.2f}"
                    if c == "acc5" and 0 < int(r.get("n_classes") or 99) <= 5:
                        v, flagged = v + "*", True
                else:
                    v = f"{v:.1f}" if c.endswith("seconds") else f"{v:.2f}"
            cells.append(str(v))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if flagged:
        out.append("* acc5 with 5 classes or fewer is 100% by construction: it says nothing.")
    return "\n".join(out)


def _width(s: str) -> int:
    """Columns ``s`` takes in a terminal: CJK and other wide characters count 2, combining marks 0."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _ljust(s: str, w: int) -> str:
    return s + " " * max(0, w - _width(s))


def _rjust(s: str, w: int) -> str:
    return " " * max(0, w - _width(s)) + s


def format_class_report(report: dict[str, Any], confusion: dict[str, Any] | None = None, *, max_confusion_classes: int = 20) -> str:
    """Per-class precision / recall / F1 / support (percent), then the confusion matrix as a table.

    Parameters
    ----------
    report : dict
        :func:`gpua.metrics.classification_report`'s output.
    confusion : dict, optional
        ``{"classnames": [...], "rows_true_columns_predicted": [[...]]}`` (``evaluate_model``'s
        ``confusion_matrix``); shown when it has at most ``max_confusion_classes`` classes,
        its columns headed by the names' first 8 characters, or numbered (and the rows too)
        when two names share those.

    Classes without test images (support 0) are counted and a line says that they pull the
    macro average down (their recall is 0 by convention, as scikit-learn's).
    """
    rows = [{"class": k, **{m: v[m] for m in ("precision", "recall", "f1-score")}, "support": v["support"]}
            for k, v in report.items() if isinstance(v, dict)]
    names = [r["class"] for r in rows]
    w = max(_width(n) for n in names + ["class"])  # in terminal columns: a CJK name is twice its length
    lines = [f"{'class':<{w}}  precision (%)  recall (%)  f1 (%)  support", "-" * (w + 42)]
    for r in rows:
        if r["class"] == "macro avg":
            lines.append(f"{'accuracy':<{w}}  {'':>13}  {'':>10}  {100 * report['accuracy']:6.2f}  {r['support']:7d}")
        lines.append(f"{_ljust(r['class'], w)}  {100 * r['precision']:13.2f}  {100 * r['recall']:10.2f}  {100 * r['f1-score']:6.2f}  {r['support']:7d}")
    absent = sum(1 for r in rows if r["class"] not in ("macro avg", "weighted avg") and r["support"] == 0)
    if absent:  # the macro avg then differs from evaluate's mean_per_class_recall, which averages the classes present
        lines.append(f"{absent} {'class has' if absent == 1 else 'classes have'} no test images (support 0): recall and F1 0 "
                     "by convention, counted in the macro avg; mean_per_class_recall averages only the classes present.")
    if confusion is not None:
        cn, C = confusion["classnames"], confusion["rows_true_columns_predicted"]
        if len(cn) <= max_confusion_classes:
            short = [n[:8] for n in cn]
            labels = list(cn)
            if len(set(short)) < len(short):  # names alike in their first 8 characters: number the columns
                short = [str(k) for k in range(len(cn))]
                labels = [f"{k:>{len(short[-1])}} {n}" for k, n in enumerate(cn)]
                w = max(w, *(_width(n) for n in labels))
            cw = max(6, *(_width(s) for s in short), *(len(str(v)) for row in C for v in row))
            lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                      f"{'':<{w}}  " + " ".join(_rjust(s, cw) for s in short)]
            lines += [_ljust(n, w) + "  " + " ".join(f"{v:>{cw}}" for v in row) for n, row in zip(labels, C)]
        else:
            lines += ["", f"confusion matrix: {len(cn)} classes, too many to print (it is in the JSON and the plot)."]
    return "\n".join(lines)


# Fonts with wide Unicode coverage that matplotlib falls back to, glyph by glyph, when installed
# (DejaVu Sans, its default, has no CJK): Chinese, Japanese or Korean class names are then drawn.
_FALLBACK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK TC", "Source Han Sans SC",
                   "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Noto Sans",
                   "Arial Unicode MS", "Microsoft YaHei", "SimHei", "Malgun Gothic", "Hiragino Sans", "PingFang SC")
_PLOT_NAME_CHARS = 40  # longer class names are cut (with "…") on the plot's axes


def plot_format(path: str | Path) -> str:
    """The file format a plot written to ``path`` gets: its suffix (``png``, ``pdf``, ``svg``, ``jpg``...), PNG without one.

    Needs matplotlib. A suffix matplotlib cannot write raises :class:`GPUAError` naming the ones it can.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    FigureCanvasBase = import_optional("matplotlib.backend_bases", "the confusion-matrix plot").FigureCanvasBase
    supported = dict(FigureCanvasBase.get_supported_filetypes())
    if not _has_latex():  # .pgf is written by running LaTeX: without it, a traceback after the evaluation
        supported.pop("pgf", None)
    if suffix not in supported:
        why = (f"matplotlib writes .pgf files by running {_texsystem()}, which is not installed" if suffix == "pgf"
               else f"matplotlib cannot write .{suffix} files")
        raise GPUAError(f"plot {str(path)!r}: {why}; use one of "
                        f"{', '.join('.' + k for k in sorted(supported))}, or no suffix for a PNG.")
    return suffix


def _texsystem() -> str:
    """The LaTeX program matplotlib's PGF writer runs (``rcParams["pgf.texsystem"]``, xelatex by default)."""
    import matplotlib

    return str(matplotlib.rcParams["pgf.texsystem"])


def _has_latex() -> bool:
    """Whether :func:`_texsystem` is installed."""
    import shutil

    return shutil.which(_texsystem()) is not None


def _plot_fonts() -> list[str]:
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [f for f in _FALLBACK_FONTS if f in have]


def _short_name(name: Any, n: int = _PLOT_NAME_CHARS) -> str:
    s = " ".join(str(name).split())  # a newline or tab in a name would break the axis
    return s if len(s) <= n else s[: n - 1] + "…"


def plot_confusion_matrix(path: str | Path, confusion: dict[str, Any], *, title: str = "") -> Path:
    """Write the confusion matrix as an image (rows normalised to recall; counts annotated up to 20 classes).

    The format follows ``path``'s suffix (``.png``, ``.pdf``, ``.svg``, ``.jpg``...; PNG when it has
    none); one matplotlib cannot write raises :class:`GPUAError` before anything is drawn. Needs
    matplotlib (``pip install gpua[plots]``). Written atomically (a temp file renamed onto ``path``,
    whose missing folders are made). The figure is drawn without pyplot, so the caller's backend (a
    notebook's, say) is left as it was and nothing is kept once it is saved; class names and the
    title are written as they are (a ``$`` is not read as TeX math), names longer than 40 characters
    cut with "…". With many classes the labels get smaller, then only every n-th class is labelled
    (the axis label says so). A class without test images is a row of zeros. Characters no installed
    font has (CJK without a CJK font, say) give one warning, not one per character and draw.
    """
    Figure = import_optional("matplotlib.figure", "the confusion-matrix plot").Figure
    import matplotlib
    import textwrap

    fmt = plot_format(path)
    names, C = confusion["classnames"], np.asarray(confusion["rows_true_columns_predicted"], dtype=np.float64)
    R = C / np.maximum(C.sum(1, keepdims=True), 1)
    K = len(names)
    labels = [_short_name(n) for n in names]
    longest = max((len(s) for s in labels), default=0)
    size = min(4 + 0.45 * K, 30) + min(longest, _PLOT_NAME_CHARS) * 0.06  # room for the tick labels
    per = 0.7 * size * 72 / max(K, 1)  # points of axis per class, roughly
    fontsize = min(8.0, max(5.0, 0.85 * per))
    step = max(1, int(np.ceil(1.15 * fontsize / per)))  # label every step-th class, so that labels do not overlap
    ticks = list(range(0, K, step))
    every = "" if step == 1 else f" (every {step}th class labelled)" if step > 3 else f" (every {['', '', 'second', 'third'][step]} class labelled)"
    glyphs: list[str] = []
    with matplotlib.rc_context({"font.family": _plot_fonts()}), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = Figure(figsize=(size, size))
        ax = fig.subplots()
        im = ax.imshow(R, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        # parse_math=False: "$5 or $10" was drawn as math, and a name like "$\foo$" stopped the plot
        ax.set_xticks(ticks, [labels[k] for k in ticks], rotation=90, fontsize=fontsize, parse_math=False)
        ax.set_yticks(ticks, [labels[k] for k in ticks], fontsize=fontsize, parse_math=False)
        ax.set_xlabel("predicted class" + every)
        ax.set_ylabel("true class" + every)
        if K <= 20:
            for i in range(K):
                for j in range(K):
                    if C[i, j]:
                        ax.text(j, i, int(C[i, j]), ha="center", va="center", fontsize=7, color="white" if R[i, j] > 0.5 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
        ax.set_title(textwrap.fill(title or "confusion matrix", max(20, int(size * 72 / 9))), parse_math=False)
        fig.tight_layout()
        with atomic_path(path, suffix="." + fmt) as tmp:
            if fmt == "svgz":  # matplotlib's gzip header would name the temporary file (gunzip -N restores that name)
                import gzip
                import io

                svg = io.BytesIO()
                fig.savefig(svg, dpi=110, format="svg", metadata=plot_metadata("svg"))
                with open(tmp, "wb") as raw, gzip.GzipFile(Path(path).name, "wb", fileobj=raw, mtime=0) as packed:
                    packed.write(svg.getvalue())
            else:  # marked where the format can carry it: a later run replaces only a plot gpua wrote
                fig.savefig(tmp, dpi=110, format=fmt, metadata=plot_metadata(fmt))
        fig.clear()  # drop the artists now, not at the next garbage collection
    for w in caught:
        m = str(w.message)
        if issubclass(w.category, UserWarning) and m.startswith("Glyph ") and "missing from font" in m:
            glyphs.append(m)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if glyphs:
        warn_user(f"{path}: {len(set(glyphs))} character(s) of the class names or title are in no installed font and are "
                  "drawn as boxes; install a font that has them (Noto Sans CJK for Chinese, Japanese, Korean).")
    return Path(path).expanduser()


def write_predictions(
    path: str | Path,
    chunks: Iterable[tuple],
    classnames: Sequence[str] | None,
    *,
    top_k: int = 5,
    unreadable: Sequence[tuple[str, str]] = (),
) -> int:
    """Write a predictions CSV atomically, chunk by chunk.

    Columns: ``image``, ``prediction`` (a class name, or the class index without names),
    ``probability``, then ``top1``, ``top1_probability`` ... ``topK``, ``topK_probability``,
    and ``label`` (the true class) when the chunks carry labels. With ``unreadable`` images, a
    last column ``error``: each of them gets a row with empty predictions and the reason, so the
    file lists every image a user gave (empty for the others).

    Image ids and class names are written as they are (CSV-quoted where they hold commas, quotes
    or line breaks), so the file joins back to the images: no spreadsheet formula escaping, which
    would change an id such as ``=a.jpg`` or ``-1.png``. A spreadsheet may read a cell starting
    with ``=``, ``+``, ``-`` or ``@`` as a formula: import the file with its columns as text.

    Parameters
    ----------
    path : str or Path
    chunks : iterable of (image ids, probabilities of shape (n, K), labels of shape (n,) or None[, scores of shape (n, K)])
        Labels, when given, are class indices of the same K classes. The classes are ranked by
        the scores when a chunk carries them (the model's ``decision_function``): float32
        probabilities tie at 0 once a large logit scale separates the scores, and ties would be
        listed in class order. Without scores, by the probabilities.
    classnames : sequence of str, optional
        One per class (K of them, checked); without them, classes are named by index.
    top_k : int
        At least 1; capped at K.
    unreadable : sequence of (image id, error message), optional
        Images that could not be read (an extraction's ``meta["skipped"]``), listed after the
        predicted ones; with labels, an id ``<class>/<file>`` of a class folder gets that label.

    Returns
    -------
    int
        Rows with a prediction written (the unreadable images' rows not counted).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise GPUAError(f"top_k={top_k!r} must be a positive integer.")
    from .data.classnames import _prompt_key

    n = 0
    folder_label: dict[str, str] = {}  # top folder -> the label its readable photos carry ("" when they differ)
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            header_done = False
            for ids, proba, labels, *scores in chunks:
                proba = np.asarray(proba)
                rank_by = np.asarray(scores[0]) if scores else proba
                k = min(int(top_k), proba.shape[1])
                if not header_done:
                    # one name per column: too few names stopped on an IndexError, more named the classes
                    # from a longer list without a word (and a numpy array of names stopped on its truth value)
                    names = check_classnames(classnames, proba.shape[1])
                    name = (lambda c: names[c]) if names is not None else (lambda c: str(int(c)))  # noqa: E731
                    tops = [c for i in range(1, k + 1) for c in (f"top{i}", f"top{i}_probability")]
                    header = [*PREDICTIONS_COLUMNS, *tops] + (["label"] if labels is not None else [])
                    w.writerow(header + (["error"] if unreadable else []))
                    header_done, with_labels = True, labels is not None
                order = np.argsort(-rank_by, axis=1, kind="stable")[:, :k]
                for i, row in enumerate(order):
                    tops = [c for j in row for c in (name(j), f"{proba[i, j]:.6f}")]
                    extra = [name(labels[i])] if with_labels and labels is not None else []
                    if extra and unreadable:
                        # A folder is a class folder when all its photos share a label (SUN397's a/abbey/x.jpg: not "a")
                        folder = _class_folder(ids[i])
                        if folder_label.setdefault(folder, extra[0]) != extra[0]:
                            folder_label[folder] = ""
                    w.writerow([ids[i], name(row[0]), f"{proba[i, row[0]]:.6f}", *tops, *extra] + ([""] if unreadable else []))
                n += proba.shape[0]
            if unreadable:
                if not header_done:
                    raise GPUAError("write_predictions: no predicted rows to write beside the unreadable images.")
                keyed = {_prompt_key(c): c for c in names or []}
                for image_id, error in unreadable:
                    # A labelled folder names the class of an unreadable photo too: <class>/<file>; its
                    # readable photos' label (was the folder's name only when it was a class name as
                    # spelled, so a WordNet-id or decomposed-accent folder's unreadable photo had none),
                    # else the class its name spells.
                    folder = _class_folder(image_id)
                    label = ""
                    if with_labels and folder is not None:
                        label = folder_label[folder] if folder in folder_label else keyed.get(_prompt_key(folder), "")
                    cells = [image_id] + [""] * (len(header) - 1)
                    if with_labels:
                        cells[-1] = label
                    w.writerow(cells + [error])
    return n


def _class_folder(image_id) -> str | None:
    """The class folder of an image id ``<class>/<file>`` (None for a flat folder's ``<file>``)."""
    parts = str(image_id).replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else None


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON: NaN and inf as ``null``, numpy scalars and arrays as plain numbers and lists.

    (``json.dumps`` writes ``NaN`` / ``Infinity``, which strict readers such as JavaScript and jq refuse.)
    """
    return json.dumps(_plain(obj), indent=indent, default=_json_default, allow_nan=False)


def mark_report(obj: Any) -> Any:
    """``obj`` with ``"written_by": "gpua <version>"`` as its first key when it is a dict (else as it is).

    The mark is how a later run knows a JSON file for a report it may replace
    (:func:`gpua._atomic.check_report_target`); any other file at that path is left alone.
    """
    if not isinstance(obj, dict):
        return obj
    return {REPORT_MARK_KEY: f"gpua {__version__}", **{k: v for k, v in obj.items() if k != REPORT_MARK_KEY}}


def write_json(path: str | Path, obj: Any) -> Path:
    """Write :func:`json_text` of ``obj``, marked by :func:`mark_report`, atomically."""
    if path is None:
        raise GPUAError("path is None; give a file name for the JSON output.")
    atomic_write_text(path, json_text(mark_report(obj)) + "\n")
    return Path(path)


def _plain(o):
    """``o`` with numpy scalars and arrays as Python's, non-finite floats as None."""
    if isinstance(o, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
