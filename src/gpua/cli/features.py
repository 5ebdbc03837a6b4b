"""``gpua fit | evaluate | predict | compare``: the commands that work on feature files.

Every command that reads features takes a feature file (``.npz`` / ``.safetensors``) or a
shard set (a folder written by ``gpua extract --out DIR``). ``gpua fit --shards DIR
[--max-memory 4GB] [--cluster ADDR] [--checkpoint DIR]`` fits on a shard set with
:func:`gpua.stream.fit_streaming`. Test labels are matched to the model's classes by name
(:func:`gpua.data.classnames.match_classes`).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from .._errors import GPUAError, MissingDependencyError
from ._common import (FitProgress, JsonOutput, add_estimator_arguments, add_json_argument, check_device_flag, check_paths, connect_timeout_of, counted,
                      estimator_overrides, fit_rounds_note, parse_cluster, proba_scale_note, positive_int, refinement_note, positive_seconds, self_learning_line)

__all__ = ["add_subcommands", "add_streaming_arguments", "run_streamed_fit"]

_CHUNK_ROWS = 65536  # rows scored at a time when predicting from a shard set
DEFAULT_MAX_MEMORY = "4GB"  # --max-memory of a streamed fit


def _read_features(path: str, require: tuple[str, ...] = ()):
    """A feature file or a shard set (read whole) as a FeatureSet."""
    from ..features import FeatureSet, ShardedFeatures, load_features

    if Path(path).is_dir():
        sf = ShardedFeatures(path)
        fs = FeatureSet(
            vfm_features=sf.read("vfm_features", 0, sf.n_samples).numpy(),
            vlm_features=sf.read("vlm_features", 0, sf.n_samples).numpy(),
            text_prototypes=sf.text_prototypes(),
            labels=sf.labels() if sf.has_labels else None,
            classnames=sf.classnames,
            image_ids=sf.image_ids(),
            meta=sf.meta,
        )
        fs.require(*require, source=f"shard set {path!r}", shard_set=True)
        return fs.validate(f"shard set {path!r}")
    return load_features(path, require=require)


def _check_widths(data, data_name: str, reference, reference_name: str) -> None:
    """Refuse features whose widths differ from the model's (or the training file's), naming both.

    ``reference`` is a fitted model (``n_features_vfm_``, ``n_features_vlm_``) or a FeatureSet;
    the library's own check said "vfm_features has width 20 but 64 was expected" without saying
    which file or which model.
    """
    for key, attr in (("vfm_features", "n_features_vfm_"), ("vlm_features", "n_features_vlm_")):
        arr = getattr(data, key, None)
        want = getattr(reference, attr, None)
        if want is None:
            ref = getattr(reference, key, None)
            want = None if ref is None or getattr(ref, "ndim", 0) != 2 else ref.shape[1]
        if arr is None or getattr(arr, "ndim", 0) != 2 or want is None or int(arr.shape[1]) == int(want):
            continue
        raise GPUAError(f"{data_name} {key} has width {arr.shape[1]} but {reference_name} has {int(want)}; they come from "
                        "different encoders. Use features extracted with the encoders of "
                        f"{reference_name} (gpua extract, same --vfm and --vlm).")


def _agreement_note(h: dict) -> str:
    return (f"the map agrees with its own UCM pseudo-labels on {100 * h['pseudo_label_agreement']:.1f}% of the pool "
            "(a label-free consistency check, not an accuracy)")


def _fit_interrupt_hint(args) -> str | None:
    """What an interrupted ``gpua fit`` left: the UCM rounds saved in ``--checkpoint``, or, before the
    first round had finished, nothing (was: "the rounds done are saved there" for a folder never made)."""
    if getattr(args, "checkpoint", None) is None:  # a streamed fit may keep them; an in-memory one has nothing to keep
        return "pass --checkpoint FOLDER to keep the UCM rounds done when a fit is interrupted" if args.shards else None
    if not Path(args.checkpoint).expanduser().exists():
        return f"no UCM round had finished, so --checkpoint {args.checkpoint!r} holds nothing yet; the same command starts again"
    return "with --checkpoint, the UCM rounds done are saved there; the same command resumes from them"


def _cmd_fit(args) -> int:
    from ..estimator import GPUA
    from ..report import provenance_from_features

    check_paths(args, inputs=("train", "shards", "prototypes"), outputs=(("out", "model"), ("checkpoint", "folder")),
                served=("checkpoint",))
    model = GPUA(**estimator_overrides(args))  # names and values checked against gpua.fitting.PARAMETERS
    if args.train and getattr(args, "shards", None):
        raise GPUAError("give --train FILE or --shards DIR, not both: the fit reads one of them.")
    if getattr(args, "shards", None):
        return run_streamed_fit(args, model)
    if not args.train:
        raise GPUAError("give --train FILE (a feature file) or --shards DIR (a shard set).")
    given = [flag for flag, value in (("--prototypes", args.prototypes), ("--max-memory", args.max_memory),
                                      ("--cluster", args.cluster), ("--checkpoint", args.checkpoint),
                                      ("--connect-timeout", args.connect_timeout)) if value is not None]
    if given:  # the in-memory fit would ignore them without a word
        raise GPUAError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a streamed fit of a shard set "
                        "(--shards DIR); --train fits in memory. "
                        "Leave them out, or write the features as a shard set (gpua extract --out DIR).")
    if Path(args.train).is_dir():
        from ..features._shards import _holds_images

        if _holds_images(Path(args.train)):
            raise GPUAError(f"--train {args.train!r} is a folder of images, not features; encode it first: gpua extract --vfm ... "
                            f"--vlm ... --data {args.train} --out train.npz (or classify it at once: gpua classify --images "
                            f"{args.train}).")
        raise GPUAError(f"--train {args.train!r} is a folder; for a shard set use --shards {args.train}.")
    train = _read_features(args.train, require=("vfm_features", "vlm_features", "text_prototypes"))
    t0 = time.perf_counter()
    with FitProgress(model, not args.no_progress) as progress:
        model.fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames, callback=progress)
    dt = time.perf_counter() - t0
    # Resolved: the model may be moved, and a relative path would then name nothing.
    model.provenance_ = provenance_from_features(train.meta, classnames=train.classnames, source=str(Path(args.train).resolve()))
    model.save(args.out)
    h = model.history_
    print(
        f"fitted on {counted(train.n_samples, 'image')}, {model.n_classes_} classes in {dt:.1f} s "
        f"({fit_rounds_note(h)}, {refinement_note(h)}); {_agreement_note(h)}{proba_scale_note(model)}; "
        f"saved {args.out}"
    )
    if train.classnames is None:
        print("note: the feature file names no classes, so neither does the model; evaluate will match classes by index.")
    return 0


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the streaming options to ``gpua fit``'s parser."""
    g = parser.add_argument_group("streaming and distributed fits (gpua.stream)")
    g.add_argument("--shards", metavar="DIR", help="fit on a shard set (gpua extract / gpua.stream.write_shards) instead of --train")
    g.add_argument("--prototypes", metavar="FILE", help="feature file (or shard set) with text_prototypes (default: those stored "
                                                         "with the shards)")
    g.add_argument("--max-memory", default=None, metavar="SIZE", help=f"memory budget per process (default {DEFAULT_MAX_MEMORY})")
    g.add_argument("--cluster", metavar="ADDRESS", help="run chunk sums on Dask: 'local', a worker count, or tcp://HOST:8786")
    g.add_argument("--connect-timeout", type=positive_seconds, default=None, metavar="S",
                   help="seconds to wait for --cluster (default 10; only with --cluster)")
    g.add_argument("--checkpoint", metavar="DIR", help="save UCM state after every round; re-run with the same DIR to resume")
    g.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars (in-memory fits too)")


def run_streamed_fit(args: argparse.Namespace, model) -> int:
    """Fit ``model`` (a configured GPUA) on ``args.shards`` and save it to ``args.out``.

    Returns
    -------
    int
        Exit code 0 (errors are raised as :class:`GPUAError` for the CLI to print).
    """
    from ..stream import fit_streaming
    from ..features import FeatureSet, ShardedFeatures
    from ..report import provenance_from_features

    if args.max_memory is not None:  # checked now, by its flag, not after the shard set is opened
        from ..stream import parse_memory

        try:
            parse_memory(args.max_memory)
        except GPUAError as exc:
            raise GPUAError(str(exc).replace("max_memory=", "--max-memory ", 1)) from None
    parse_cluster(args.cluster)
    where = Path(args.shards)
    if not where.exists():
        raise GPUAError(f"--shards {args.shards!r} does not exist; pass the folder `gpua extract --out DIR` wrote.")
    if not where.is_dir():
        raise GPUAError(f"--shards {args.shards!r} is a file; a feature file is fitted with --train {args.shards}.")
    shards = ShardedFeatures(args.shards)
    prototypes, classnames, meta = None, shards.classnames, shards.meta
    if getattr(args, "prototypes", None):
        from ..features import load_features
        from ..report import encoders_of

        if Path(args.prototypes).expanduser().is_dir():  # another shard set's prompts: its prototypes alone, not its rows
            other = ShardedFeatures(args.prototypes)
            fs = FeatureSet(text_prototypes=other.text_prototypes(), classnames=other.classnames, meta=other.meta)
            fs.require("text_prototypes", source=f"shard set {args.prototypes!r} (--prototypes)", shard_set=True)
        else:
            fs = load_features(args.prototypes, require=("text_prototypes",))
        prototypes, classnames = fs.text_prototypes, fs.classnames
        if prototypes.shape[1] != shards.widths["vlm_features"]:
            raise GPUAError(f"--prototypes {args.prototypes!r} holds {prototypes.shape[1]}-d text prototypes but the shards' VLM "
                            f"image features are {shards.widths['vlm_features']}-d; encode the prompts with the shards' VLM.")
        from ..stream._fit import _same_prototypes

        if classnames is None and shards.classnames is not None and not _same_prototypes(prototypes, shards.text_prototypes()):
            raise GPUAError(f"--prototypes {args.prototypes!r} names no classes, and the shards' class names may be in another "
                            "order than its rows; write the prototypes with their class names (gpua extract --classnames, "
                            "or save_features(..., classnames=...)).")
        (_, shard_vlm), (_, prototype_vlm) = encoders_of(meta), encoders_of(fs.meta)
        if shard_vlm and prototype_vlm and shard_vlm != prototype_vlm:
            raise GPUAError(f"--prototypes {args.prototypes!r} were encoded by {prototype_vlm} but the shards' image features by "
                            f"{shard_vlm}: text and image features must come from one VLM. Encode the prompts with {shard_vlm}.")
        # the model records the shards' encoders (what made its image features), the file's prompts
        meta = {**meta, **{k: fs.meta[k] for k in ("templates", "class_prompts") if k in fs.meta}}
    elif shards.text_prototypes() is None:
        raise GPUAError(f"--shards {args.shards!r} stores no text prototypes; pass --prototypes FILE (a feature file holding "
                        "text_prototypes of the same VLM), or re-extract the set with --classnames FILE.")
    timeout = connect_timeout_of(args)
    t0 = time.perf_counter()
    def said(entry: dict) -> None:  # the streamed fit draws its own bars; the self-learning lines come from here
        if entry.get("round") and "label_change" in entry and not args.no_progress:
            from tqdm.auto import tqdm

            tqdm.write(self_learning_line(entry))

    fit_streaming(
        model, shards, prototypes, classnames=classnames, max_memory=args.max_memory or DEFAULT_MAX_MEMORY,
        cluster=parse_cluster(args.cluster),
        checkpoint=args.checkpoint, progress=not args.no_progress, connect_timeout=timeout, callback=said,
    )
    dt = time.perf_counter() - t0
    model.provenance_ = provenance_from_features(meta, classnames=model.classnames_, source=str(Path(args.shards).resolve()))
    model.save(args.out)
    h = model.history_
    s = h["streaming"]
    print(
        f"fitted on {counted(s['n_samples'], 'image')} ({counted(shards.n_shards, 'shard')}), {model.n_classes_} classes in {dt:.1f} s"
        f"{' (resumed from --checkpoint: passes count the earlier runs too)' if s.get('resumed') else ''} "
        f"({fit_rounds_note(h)}, {s['passes']} chunk passes, {counted(s['n_chunks'], 'chunk')} of "
        f"{s['chunk_rows']} rows, cache {s['cache']}, {s['processes']} process(es)); {_agreement_note(h)}{proba_scale_note(model)}; "
        f"saved {args.out}"
    )
    return 0


def _cmd_evaluate(args) -> int:
    check_paths(args, inputs=("model", "test"), outputs=(("json", "table"), ("plot", "plot")))
    with JsonOutput(args.json) as out:  # --json -: the table goes to stderr, the JSON alone to stdout
        return _evaluate(args, out)


def _evaluate(args, out: JsonOutput) -> int:
    from .._base import load_model
    from ..report import check_model_task, evaluate_model, format_class_report, format_table, plot_confusion_matrix, plot_format

    check_device_flag(args.device)
    if args.plot:
        try:  # a suffix matplotlib cannot write is said before the evaluation, not after it
            plot_format(args.plot)
        except MissingDependencyError as exc:  # was: "--the confusion-matrix plot needs matplotlib"
            raise MissingDependencyError(f"--plot {args.plot!r}: {exc} Or drop --plot.") from None
        except GPUAError as exc:  # "plot 'cm.txt': ..." with the flag's name; any other (matplotlib's settings) after it
            raise GPUAError(f"--{exc}" if str(exc).startswith("plot ") else f"--plot {args.plot!r}: {exc}") from None
    model = load_model(args.model, device=args.device)
    check_model_task(model, "classification", f"--model {args.model!r}")
    test = _read_features(args.test, require=("labels",))
    _check_widths(test, f"--test {args.test!r}", model, f"the model {args.model!r}")
    res = evaluate_model(model, test, dataset=args.dataset or "", model_name=str(args.model), test_name=f"--test {args.test!r}",
                         report=args.report or bool(args.plot))
    n_classes = res["gpua"]["n_classes"]
    rows = [{"method": f"model ({res['gpua']['method']})", **res["metrics"], "hubness_skewness": res["gpua"]["hubness_skewness"], "n_classes": n_classes}]
    if "zero_shot_metrics" in res["gpua"]:
        rows.insert(0, {"method": "vlm_zero_shot", **res["gpua"]["zero_shot_metrics"], "n_classes": n_classes})
    confusion, per_class = res.get("confusion_matrix"), res.get("per_class")
    if args.json:  # first: a reader of stdout that stops early (| head) or a plot that fails leaves the scores written
        if not args.report:
            res.pop("per_class", None)
            res.pop("confusion_matrix", None)
        out.write(res)
    print(f"dataset {res['dataset'] or '?'}: {res['gpua']['n_samples']} images, {n_classes} classes (matched {res['gpua']['classes_matched']}); "
          f"VFM {res['vfm'] or '?'}, VLM {res['vlm'] or '?'}")
    print(format_table(rows, ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness")))
    if args.report:
        print()
        print(format_class_report(per_class, confusion))
    if args.plot:
        plot_confusion_matrix(args.plot, confusion, title=f"{res['dataset'] or Path(args.test).name}: {Path(args.model).name}")
        print(f"wrote {args.plot}")
    return 0


def _prediction_chunks(model, source: str, model_name: str = "the model"):
    """``(image ids, probabilities, labels or None, scores)`` chunks of a feature file or a shard set, its class names, class count, meta and labels.

    The labels (all of them, and each chunk's) are the file's own class indices, in its class
    list's order, as stored: :func:`_predict` checks them and maps them onto the model's classes,
    or leaves them out.
    """
    from ..features import ShardedFeatures, load_features

    if Path(source).is_dir():
        sf = ShardedFeatures(source)
        names = sf.classnames
        _check_widths(_Widths(sf.widths), f"--features {source!r}", model, model_name)

        labels = sf.labels() if sf.has_labels else None

        def gen():
            for s, e, (Z, X) in sf.iter_rows(_CHUNK_ROWS):
                ids = sf.image_ids(s, e) or [str(i) for i in range(s, e)]
                scores = model.decision_function(Z.numpy(), X.numpy())
                yield ids, model.proba_from_scores(scores), None if labels is None else labels[s:e], scores

        return gen(), names, (None if sf.text_prototypes() is None else sf.text_prototypes().shape[0]), sf.meta, labels
    fs = load_features(source, require=("vfm_features",))
    _check_widths(fs, f"--features {source!r}", model, model_name)
    ids = fs.image_ids or [str(i) for i in range(fs.n_samples)]
    n_k = None if fs.text_prototypes is None else fs.text_prototypes.shape[0]
    scores = model.decision_function(fs.vfm_features, fs.vlm_features)
    return iter([(ids, model.proba_from_scores(scores), fs.labels, scores)]), fs.classnames, n_k, fs.meta, fs.labels


def _label_match(model, file_names, file_k, labels, model_source: str, data_source: str):
    """How a feature file's labels name the model's classes, for ``predict``'s label column; None
    when the column is left out (a warning says why where there are labels).

    The file's classes are matched to the model's by name (:func:`match_classes`), in any order;
    a file of some of the model's classes, or with classes the model lacks but no row labelled
    with one, keeps its column (:func:`classes_by_name`). A file naming no classes is matched by
    index, with a warning. Predictions never depend on it: they are the model's classes.
    """
    from .._validation import check_labels
    from ..data.classnames import ClassMatch, classes_by_name, match_classes

    names, n_model = model.classnames_, model.n_classes_
    n_data = n_model if file_names is None and file_k is None else len(file_names) if file_names else file_k
    try:
        match = match_classes(names, file_names, n_model=n_model, n_data=n_data, model_source=model_source,
                              data_source=data_source)
    except GPUAError as exc:
        if names is None or file_names is None:  # class counts differ, no names to match by
            warnings.warn(f"{exc} The predictions are the model's classes; the file's labels are not used.", stacklevel=2)
            return None
        match = ClassMatch(classes_by_name(names, file_names), True)
        lacking = [c for c, k in zip(file_names, match.index) if k < 0]
        if lacking:
            shown = ", ".join(repr(c) for c in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
            warnings.warn(f"{data_source} names {len(lacking)} class(es) that {model_source} does not have ({shown}); every "
                          "image is predicted among the model's classes.", stacklevel=2)
    if labels is None:
        return None
    try:  # the file's labels index its own classes
        check_labels(labels, labels.shape[0], n_data, name=f"{data_source}'s labels")
    except GPUAError as exc:
        warnings.warn(f"{exc} The label column is left out; the predictions are written.", stacklevel=2)
        return None
    if match.index is not None and (match.index[labels] < 0).any():
        first = file_names[int(labels[match.index[labels] < 0][0])]
        warnings.warn(f"{data_source} labels images with classes {model_source} does not have (first: {first!r}); the "
                      "label column is left out, the predictions are written.", stacklevel=2)
        return None
    if match.note:
        warnings.warn(f"the label column: {match.note}", stacklevel=2)
    return match


class _Widths:
    """A shard set's widths, shaped as :func:`_check_widths` reads them (``.vfm_features.shape[1]``)."""

    def __init__(self, widths: dict) -> None:
        import numpy as np

        for key in ("vfm_features", "vlm_features"):
            if widths.get(key) is not None:
                setattr(self, key, np.empty((0, int(widths[key]))))


def _cmd_predict(args) -> int:
    from ._common import STDOUT, CsvOutput

    # --out -: the CSV alone on stdout (no file named "-"), the notes on stderr
    check_paths(args, inputs=("model", "features"), outputs=() if args.out == STDOUT else (("out", "table"),))
    check_device_flag(args.device)
    with CsvOutput(args.out) as out:
        return _predict(args, out)


def _predict(args, out) -> int:
    from .._base import load_model
    from ..report import check_encoders, check_model_task, write_predictions

    model = load_model(args.model, device=args.device)
    check_model_task(model, "classification", f"--model {args.model!r}")
    chunks, file_names, file_k, meta, labels = _prediction_chunks(model, args.features, f"the model {args.model!r}")
    check_encoders(model, meta, model_source=f"model {args.model!r}", data_source=f"--features {args.features!r}")
    names = model.classnames_
    # A label column beside the predictions, as gpua classify writes for a labelled folder, named as the model's classes
    match = _label_match(model, file_names, file_k, labels, f"model {args.model!r}", f"--features {args.features!r}")
    with_labels = match is not None
    chunks = ((ids, proba, match.map_labels(y) if with_labels else None, scores) for ids, proba, y, scores in chunks)
    if names is None:
        if file_names is not None and len(file_names) == model.n_classes_:
            warnings.warn("the model names no classes; naming its predictions with the feature file's class names, "
                          "assumed to be in the model's order.", stacklevel=1)
            names = file_names
        else:
            warnings.warn("the model names no classes; the predictions are class indices.", stacklevel=1)
    n = out.write_with(lambda path: write_predictions(path, chunks, names, top_k=args.top_k))
    cut = (f"; --top-k {args.top_k} is more than the model's {model.n_classes_} classes, so every class is listed"
           if args.top_k > model.n_classes_ else "")
    label = ", label (the file's labels, named as the model's classes)" if with_labels else ""
    print(f"wrote {n} predictions to {out.name} (columns image, prediction, probability, top-{min(args.top_k, model.n_classes_)} "
          f"classes{label}){cut}")
    return 0


def _cmd_compare(args) -> int:
    check_paths(args, inputs=("train", "test"), outputs=(("json", "table"),))
    with JsonOutput(args.json) as out:  # --json -: the table and notes go to stderr, the JSON alone to stdout
        return _compare(args, out)


def _compare(args, out: JsonOutput) -> int:
    from ..baselines import list_methods, override_notes
    from ..report import compare_methods, format_table

    methods = list_methods() if args.methods.strip() == "all" else list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    if not methods:  # the library reads an empty list as every method: a typo would start them all
        raise GPUAError(f"--methods {args.methods!r} names no method; give comma-separated names from {list_methods()}, or 'all'.")
    if "all" in methods:  # was "['all'] unknown; choose from ... or 'all'"
        raise GPUAError(f"--methods {args.methods!r}: 'all' (every method) cannot be combined with other names; give 'all' "
                        "alone, or the names.")
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:  # before any file is read
        raise GPUAError(f"--methods: {unknown} unknown; choose from {list_methods()} or 'all'.")
    overrides = estimator_overrides(args)
    notes = override_notes(methods, overrides, "--methods")  # one set of overrides serves every row
    for note in notes:
        print(note)
    train = _read_features(args.train)
    test = _read_features(args.test, require=("labels",))
    _check_widths(test, f"--test {args.test!r}", train, f"--train {args.train!r}")
    from .. import __version__
    from ..report import encoders_of

    vfm, vlm = encoders_of(train.meta or {})
    head = {"train": str(args.train), "test": str(args.test), "vfm": vfm, "vlm": vlm, "gpua_version": __version__,
            "params": overrides, "notes": [n.removeprefix("note: ") for n in notes]}
    done: list[dict] = []
    try:
        rows = compare_methods(train, test, methods, overrides=overrides, progress=not args.quiet, on_row=done.append,
                               train_name=f"--train {args.train!r}", test_name=f"--test {args.test!r}")
    except (Exception, KeyboardInterrupt) as exc:  # minutes of fits done: keep their rows, say which method stopped
        if len(done) == len(methods):  # every method scored (the last one's progress line failed): the whole result
            out.write({**head, "results": done, "complete": True})
        elif done:
            stopped = methods[len(done)]
            out.write({**head, "results": done, "complete": False,
                       "stopped": {"method": stopped, "error": str(exc) or type(exc).__name__,
                                   "not_run": methods[len(done) + 1:]}})
            print(f"{stopped} stopped the comparison; the JSON holds the {counted(len(done), 'method')} scored before it "
                  "(\"complete\": false).", file=sys.stderr)
        raise
    # the JSON first: a reader of stdout that stops early (| head) does not lose it
    out.write({**head, "results": rows, "complete": True})
    print(format_table(rows, ("method", "acc1", "acc5", "mean_per_class_recall", "hubness_skewness", "pseudo_label_acc", "fit_seconds")))
    return 0


def _add_model_device_argument(p) -> None:
    p.add_argument("--device", help="torch device to predict on: cpu, cuda, cuda:N or auto (default: the one the model was "
                                    "fitted with; --device cpu loads a model fitted on a GPU on a machine without one)")


def add_subcommands(sub) -> None:
    p = sub.add_parser("fit", help="learn the map from an unlabeled feature file", description="Fit GPUA on vfm_features, vlm_features and text_prototypes (labels, if present, are ignored).")
    p.add_argument("--train", help="feature file (.npz or .safetensors)")
    p.add_argument("--out", required=True, help="model file to write (.gpua)")
    add_estimator_arguments(p)
    add_streaming_arguments(p)
    p.set_defaults(func=_cmd_fit, on_interrupt=_fit_interrupt_hint)

    p = sub.add_parser("evaluate", help="score a model on a labelled feature file",
                       description="Top-1/top-5/mean per-class recall, hubness, and the VLM zero-shot baseline on the same images. "
                       "Test labels are matched to the model's classes by name.")
    p.add_argument("--model", required=True, help="model file (.gpua) from gpua fit")
    p.add_argument("--test", required=True, help="labelled feature file or shard set")
    add_json_argument(p, "write CLIP_benchmark-shaped results (dataset, vfm, vlm, task, metrics) to FILE")
    p.add_argument("--dataset", help="dataset name recorded in the JSON (default: the one the test features record)")
    p.add_argument("--report", action="store_true", help="also per-class precision, recall, F1 and the confusion matrix")
    p.add_argument("--plot", metavar="FILE", help="write the confusion matrix as an image, in the format its suffix names "
                                                   "(.png, .pdf, .svg, .jpg...; PNG without one)")
    _add_model_device_argument(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict classes for a feature file or shard set",
                       description="Write a CSV: image, prediction, probability, and the top-k classes with their probabilities. "
                       "Warns when the features name other classes, or come from other encoders, than the model's.")
    p.add_argument("--model", required=True, help="model file (.gpua) from gpua fit")
    p.add_argument("--features", required=True, help="feature file or shard set")
    p.add_argument("--out", required=True,
                   help="CSV file to write ('-': write the CSV to stdout, and the rest of the output to stderr)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes listed per image")
    _add_model_device_argument(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("compare", help="fit and score GPUA, its ablations and baselines", description="Fit each method on --train (no labels) and score it on --test.")
    p.add_argument("--train", required=True, help="feature file or shard set to fit on (labels unused)")
    p.add_argument("--test", required=True, help="labelled feature file or shard set to score on")
    p.add_argument("--methods", default="all", help="comma-separated names or 'all' (see gpua.list_methods())")
    add_json_argument(p, "write the result rows to FILE")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress lines (one per method as it is scored)")
    add_estimator_arguments(p)
    p.set_defaults(func=_cmd_compare)
