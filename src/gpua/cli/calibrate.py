"""``gpua calibrate longtail | federated``: calibration experiments on a labelled feature file.

Examples::

    gpua calibrate longtail --features train.npz --test test.npz --imbalance 10 50 100 --json lt.json
    gpua calibrate federated --features train.npz --test test.npz --clients 10 --alpha 0.1 0.5 --json fl.json

Without ``--test`` a stratified 30% of the feature file is held out for scoring.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from .._errors import GPUAError, LongTailCountsError
from .._validation import check_number
from ._common import JsonOutput, add_json_argument, check_paths, with_flags
from ..calibrate import FEDERATED_METHODS, LONGTAIL_METHODS, format_table, run_federated, run_longtail, stratified_split
from ..calibrate._classifier import _Diverged
from ..calibrate._experiments import _check_imbalance
from ..calibrate._federated_calibration import MIN_CLIENT_SAMPLES, check_alpha, max_clients
from ..calibrate._stats import infer_n_classes

__all__ = ["add_subcommands"]


class _Several(argparse.Action):
    """An option of several values, separated by spaces or commas (``--methods plain lda`` =
    ``--methods plain,lda``, as ``compare``'s and ``benchmark``'s ``--methods`` take them; the help
    showed the defaults comma-separated, and ``--imbalance 10,50,100`` was refused).

    ``convert`` reads each value (``float``); ``allowed`` lists the admissible ones. A value given
    twice is kept once, in the order first given (as ``compare`` runs a repeated method once).
    """

    def __init__(self, option_strings, dest, convert=str, allowed=None, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.convert, self.allowed = convert, allowed

    def __call__(self, parser, namespace, values, option_string=None):
        out = []
        for part in (v.strip() for given in values for v in given.split(",")):
            if not part:
                continue
            try:
                value = self.convert(part)
            except ValueError:
                parser.error(f"argument {option_string}: {part!r} is not a number")
            if self.allowed is not None and value not in self.allowed:
                parser.error(f"argument {option_string}: invalid choice: {part!r} (choose from {', '.join(self.allowed)})")
            if value not in out:  # a repeated value would run the same experiment twice
                out.append(value)
        if not out:
            parser.error(f"argument {option_string}: expected at least one value")
        setattr(namespace, self.dest, out)


def add_subcommands(subparsers) -> None:
    """Add ``calibrate`` (with ``longtail`` and ``federated``) to the ``gpua`` parser."""
    p = subparsers.add_parser(
        "calibrate",
        help="geometric distribution calibration: long-tail and federated experiments",
        description="Regenerate class distributions along borrowed covariance shapes, train a linear "
        "classifier on real + generated features, and compare with plain baselines.",
    )
    sub = p.add_subparsers(dest="calibrate_command", metavar="EXPERIMENT")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--features", "--train", dest="features", required=True,
                        help="labelled training feature file (.npz / .safetensors); --train is the same option, as compare names it")
    common.add_argument("--test", help="labelled test feature file (default: hold out a stratified part of --features)")
    common.add_argument("--test-fraction", type=float, default=0.3, help="held-out fraction without --test (default 0.3)")
    common.add_argument("--space", choices=("vfm", "vlm"), default="vfm", help="feature matrix to calibrate (default vfm)")
    common.add_argument("--no-l2", action="store_true", help="do not L2-normalise feature rows first")
    common.add_argument("--weight-decay", type=float, default=1e-3, help="L2 penalty of the logistic regression")
    common.add_argument("--seed", type=int, default=0, help="seed of every random draw (subsets, splits, generated samples)")
    add_json_argument(common, "write the result rows to FILE (atomically)")

    lt = sub.add_parser("longtail", parents=[common], help="long-tailed training subsets, balanced test")
    lt.add_argument("--imbalance", action=_Several, convert=float, default=[10, 50, 100], metavar="R",
                    help="head/tail count ratios, space- or comma-separated")
    lt.add_argument("--methods", action=_Several, allowed=LONGTAIL_METHODS, default=None, metavar="M",
                    help=f"rows to compute, space- or comma-separated: {', '.join(LONGTAIL_METHODS)} (default: all of "
                    "them; calibrate+borrow-text only when --features holds text_prototypes, one per class)")
    lt.add_argument("--donors", type=int, default=3, help="classes a class borrows its shape from")
    lt.add_argument("--class-order", choices=("index", "random"), default="index",
                    help="head = class 0 (CIFAR-10-LT convention), or a seeded random order")
    lt.set_defaults(func=_longtail)

    fl = sub.add_parser("federated", parents=[common], help="Dirichlet-split clients, FedAvg with/without calibration")
    fl.add_argument("--clients", type=int, default=10, help="number of simulated clients")
    fl.add_argument("--alpha", action=_Several, convert=float, default=[0.1, 0.5], metavar="A",
                    help="Dirichlet concentrations, space- or comma-separated (0.1: strong label skew; inf: an even "
                    "split, no label skew; written \"inf\" in --json)")
    fl.add_argument("--methods", action=_Several, allowed=FEDERATED_METHODS, default=list(FEDERATED_METHODS), metavar="M",
                    help=f"rows to compute, space- or comma-separated: {', '.join(FEDERATED_METHODS)} (default: all of them)")
    fl.add_argument("--share", choices=("covariance", "shape"), default="covariance",
                    help="clients send full covariances or only their top-m shape")
    fl.add_argument("--components", type=int, default=5, help="m, eigenpairs sent with --share shape")
    fl.add_argument("--rounds", type=int, default=30, help="FedAvg rounds")
    fl.add_argument("--local-epochs", type=int, default=1, help="epochs each client trains per FedAvg round")
    fl.add_argument("--lr", type=float, default=0.05, help="learning rate of the clients' logistic regression")
    fl.set_defaults(func=_federated)


def _load(args) -> dict:
    """The training and test arrays of the chosen space, the test labels in the training file's class order.

    With ``--test``, the test file's classes are matched to the training file's by name, as
    ``gpua evaluate`` matches a test file to a model's (:func:`~gpua.data.classnames.match_classes`:
    reordered if stored in another order, refused if the names differ), and its encoders are
    checked against the training file's (:func:`~gpua.report.check_encoders`: a warning when
    another VFM or VLM made it). Without ``--test`` a stratified ``--test-fraction`` is held out.
    """
    from types import SimpleNamespace

    from ..data.classnames import match_classes
    from ..report import _n_classes, check_encoders

    check_paths(args, inputs=("features", "test"), outputs=(("json", "table"),))
    key = f"{args.space}_features"
    train_name = f"--features {str(args.features)!r}"
    train = _read(args.features, key, train_name)
    X, y = getattr(train, key), train.labels
    if args.test:
        test_name = f"--test {str(args.test)!r}"
        test = _read(args.test, key, test_name)
        X_test = getattr(test, key)
        if X_test.shape[1] != X.shape[1]:
            raise GPUAError(
                f"{test_name} {key} has width {X_test.shape[1]} but {train_name} has {X.shape[1]}; "
                "extract both with the same encoders."
            )
        n_train, n_test = _n_classes(train), _n_classes(test)
        match = match_classes(train.classnames, test.classnames, n_model=n_train or n_test or 0,
                              n_data=n_test or n_train or 0, model_source=train_name, data_source=test_name)
        if match.note:
            warnings.warn(match.note, stacklevel=2)
        y_test = match.map_labels(test.labels)
        # check_encoders reads a model's provenance_; the training file's meta records the same specs.
        check_encoders(SimpleNamespace(provenance_=train.meta), test.meta, model_source=train_name,
                       data_source=test_name)
    else:
        tr, te = stratified_split(y, args.test_fraction, random_state=args.seed, name="--test-fraction")
        X, X_test, y, y_test = X[tr], X[te], y[tr], y[te]
    return {"X": X, "y": y, "X_test": X_test, "y_test": y_test, "emb": train.text_prototypes, "names": train.classnames}


def _read(path, key: str, name: str):
    """A labelled feature file; negative labels are named with the flag (the generic range check would not)."""
    from ..features import load_features

    fs = load_features(path, require=(key, "labels"), validate=False)
    infer_n_classes(fs.labels, f"{name} labels")
    return fs.validate(f"{name} {str(path)!r}")


def _finish(args, command: str, rows: list[dict], seconds: float, out: JsonOutput) -> int:
    if args.json:  # first: a reader of stdout that stops early (| head) does not lose it
        payload = {
            "command": f"calibrate {command}",
            "features": str(args.features),
            "test": None if args.test is None else str(args.test),
            "space": args.space,
            "l2": not args.no_l2,
            "seed": args.seed,
            "rows": rows,
        }
        out.write(payload)  # strict JSON: NaN and inf as null; --json -: on stdout, alone
    print(format_table(rows))
    print(f"({seconds:.1f} s)")
    return 0


def _check_flags(args, *flags: tuple[str, str, dict]) -> None:
    """The numeric flags, checked before any file is read and named as typed (the library names
    its parameters: ``n_donors``, ``random_state``...)."""
    checks = (("--seed", "seed", dict(integer=True, low=0, fix="a seed such as 0")),
              ("--weight-decay", "weight_decay", dict(low=0, fix="an L2 penalty such as 1e-3")), *flags)
    for flag, attr, kw in checks:
        values = getattr(args, attr)
        for v in values if isinstance(values, list) else [values]:
            check_number(v, flag, **kw)


def _longtail(args) -> int:
    with JsonOutput(args.json) as out:  # --json -: the table and notes go to stderr, the JSON alone to stdout
        return _run_longtail(args, out)


def _federated(args) -> int:
    with JsonOutput(args.json) as out:
        return _run_federated(args, out)


def _run_longtail(args, out: JsonOutput) -> int:
    for r in args.imbalance:  # before any file is read, naming the flag
        _check_imbalance(r, "--imbalance")
    _check_flags(args, ("--donors", "donors", dict(integer=True, low=1, fix="3 is typical")))
    D = _load(args)
    emb = D["emb"]
    names = list(D["names"] or [])
    # The file's classes are its class names (and prototypes), not only those its labels reach:
    # a last class without a row was dropped, and its prototypes blamed (was: "text_prototypes
    # has 5 rows for a different class count").
    n_classes = max(int(max(D["y"].max(), D["y_test"].max())) + 1, len(names))
    empty = np.flatnonzero(np.bincount(D["y"], minlength=n_classes) == 0).tolist()  # one pass, not one per class
    if empty:
        shown = ", ".join(f"{names[k]!r} ({k})" if k < len(names) else str(k) for k in empty[:6]) + (" ..." if len(empty) > 6 else "")
        held = "" if args.test is not None else f" after --test-fraction {args.test_fraction} held out test rows"
        raise GPUAError(f"--features {str(args.features)!r} has no training row of class(es) {shown}{held}, so the long-tail "
                        "profile cannot give them their count; add rows of those classes, or extract the file without them.")
    problem = None
    if emb is None:
        problem = "none are stored there"
    elif emb.shape[0] != n_classes:
        problem = f"it holds {emb.shape[0]} for the {n_classes} classes of the labels"
    if problem and args.methods is not None and "calibrate+borrow-text" in args.methods:
        # It used to be skipped: asked for alone, the table was empty.
        raise GPUAError(
            f"--methods calibrate+borrow-text needs text_prototypes (one per class) in --features {str(args.features)!r}, "
            f"but {problem}; extract the file with a VLM (`gpua extract`), or drop calibrate+borrow-text from --methods."
        )
    if emb is not None and problem:
        print(f"note: text_prototypes has {emb.shape[0]} rows for a different class count; skipping borrowing by text.")
    if problem:
        emb = None
    t0 = time.perf_counter()
    try:
        rows = run_longtail(
            D["X"], D["y"], D["X_test"], D["y_test"], imbalance_ratios=args.imbalance, methods=args.methods,
            class_embeddings=emb, l2=not args.no_l2, weight_decay=args.weight_decay, n_donors=args.donors,
            class_order=args.class_order, random_state=args.seed,
        )
    except LongTailCountsError as exc:
        if args.test is not None:
            raise
        # the counts are the training rows', after the held-out test rows: not the file's
        raise GPUAError(f"{exc} (Counted after --test-fraction {args.test_fraction} held out test rows; pass --test FILE "
                        "to keep every row of --features for training.)") from None
    return _finish(args, "longtail", rows, time.perf_counter() - t0, out)


def _run_federated(args, out: JsonOutput) -> int:
    for a in args.alpha:  # before any file is read, naming the flag; inf is the even split
        check_alpha(a, "--alpha")
    _check_flags(
        args,
        ("--clients", "clients", dict(integer=True, low=1, fix="10 is typical")),
        ("--components", "components", dict(integer=True, low=1, fix="5 is typical")),
        ("--rounds", "rounds", dict(integer=True, low=1, fix="30 is typical")),
        ("--local-epochs", "local_epochs", dict(integer=True, low=1)),
        ("--lr", "lr", dict(low=0, low_open=True, fix="a step size such as 0.05")),
    )
    D = _load(args)
    n_train = int(D["y"].shape[0])
    if args.clients > max_clients(n_train):  # dirichlet_split would name its min_size and n_clients, not the flag
        raise GPUAError(
            f"--clients={args.clients} cannot each hold the {MIN_CLIENT_SAMPLES} samples a client needs: the training "
            f"part has {n_train} rows; pass --clients {max(1, max_clients(n_train))} or fewer."
        )
    width = D["X"].shape[1]
    if args.share == "shape" and args.components > width:  # the library would name n_components
        raise GPUAError(
            f"--components={args.components} eigenpairs with --share shape, but the features have width {width}, so "
            f"at most {width}; pass --components {min(5, width)}, or --share covariance."
        )
    t0 = time.perf_counter()
    try:
        rows = run_federated(
            D["X"], D["y"], D["X_test"], D["y_test"], n_clients=args.clients, alphas=args.alpha, methods=args.methods,
            share=args.share, n_components=args.components, rounds=args.rounds, local_epochs=args.local_epochs,
            lr=args.lr, weight_decay=args.weight_decay, l2=not args.no_l2, random_state=args.seed,
        )
    except _Diverged as e:  # the library names lr= and weight_decay=
        raise GPUAError(with_flags(str(e), {"lr": "--lr", "weight_decay": "--weight-decay"}, bare_names=True)) from None
    return _finish(args, "federated", rows, time.perf_counter() - t0, out)
