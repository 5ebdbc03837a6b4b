"""Geometric distribution calibration: long-tail and federated figures.

Long tail: imbalance ratios 10, 50, 100 on the training split, balanced test split, accuracy on
all / head / tail classes for plain logistic regression, class re-weighting, shrinkage LDA and
calibration (own shapes; shapes borrowed by class mean; by text embedding when the feature
file has text prototypes). Federated: 10 clients, Dirichlet alpha 0.1 and 0.5, FedAvg of a
linear classifier with and without calibration, plus LDA from the merged statistics and a
centralised reference.

Data sets (``--data``, several allowed):

* ``synthetic``: Gaussian classes whose covariances share one shape (gpua.calibrate.make_shape_gaussians);
* ``synthetic-domains``: the same with 4 domains (clients hold one domain each);
* ``digits``: scikit-learn's 8x8 digits (1797 x 64 pixels, standardised), 50/50 stratified split;
* ``fashion-mnist``: the idx files under ``--fashion-mnist DIR`` (Debian's dataset-fashion-mnist
  layout), PCA to ``--pca`` dimensions fitted on the training images;
* a path to a gpua feature file (``train.npz``, with ``--test test.npz`` or a stratified split).

Every entry (and ``--test``) is checked before the first one runs: a name that is neither a
built-in set nor an existing file ends the script with one line.

Usage::

    python benchmarks/calibration.py --data synthetic digits [--json results.json]

Timing, the machine record and the JSON file come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from _harness import OutputPath, machine_line, timer, write_json

from gpua.calibrate import (
    ClassStatistics,
    format_table,
    make_shape_gaussians,
    run_federated,
    run_longtail,
    shape_similarity_matrix,
    stratified_split,
)


#: The ``--data`` entries that are not a feature file.
BUILT_IN = ("synthetic", "synthetic-domains", "digits", "fashion-mnist")
#: The idx files ``fashion-mnist`` reads under ``--fashion-mnist DIR``.
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")


def check_data(p: argparse.ArgumentParser, args) -> None:
    """Refuse (``p.error``: one line, exit 2) a ``--data`` entry that is neither a built-in set nor an
    existing file, ``fashion-mnist`` without its idx files, and a ``--test`` that is no file, before
    any set runs (a typo was found only when its turn came, after the sets before it had run)."""
    import difflib

    for name in args.data:
        if name == "fashion-mnist":
            root = Path(args.fashion_mnist)
            absent = [f for f in FASHION_MNIST_FILES if not (root / f).is_file()]
            if absent:
                p.error(f"--data fashion-mnist: no {', '.join(absent)} under --fashion-mnist {str(root)!r}; pass --fashion-mnist DIR "
                        "(Debian's dataset-fashion-mnist layout)")
        elif name not in BUILT_IN and not Path(name).expanduser().is_file():
            near = difflib.get_close_matches(name, BUILT_IN, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            p.error(f"--data {name!r} is neither a built-in data set ({', '.join(BUILT_IN)}) nor an existing feature file; {hint}"
                    "give a built-in name or the path of a gpua feature file")
    if args.test and not Path(args.test).expanduser().is_file():
        p.error(f"--test {args.test!r} is not an existing file; give the test feature file of the feature-file --data entry")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _pca(X: np.ndarray, X_test: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mu = X.mean(axis=0)
    _, _, Vt = np.linalg.svd(X - mu, full_matrices=False)
    P = Vt[:k].T
    return ((X - mu) @ P).astype(np.float32), ((X_test - mu) @ P).astype(np.float32)


def load(name: str, args) -> dict:
    """A data set as dict(X, y, X_test, y_test, domains, emb, note)."""
    if name in ("synthetic", "synthetic-domains"):
        g = 4 if name == "synthetic-domains" else 1
        D = make_shape_gaussians(
            n_classes=10, n_features=args.synthetic_dim, n_train_per_class=500, n_test_per_class=300,
            n_domains=g, class_sep=4.0, domain_shift=3.0 if g > 1 else 0.0, random_state=args.seed,
        )
        note = f"10 Gaussian classes, d={args.synthetic_dim}, shared shape" + (", 4 domains" if g > 1 else "")
        return dict(X=D["X"], y=D["y"], X_test=D["X_test"], y_test=D["y_test"],
                    domains=D["domains"] if g > 1 else None, emb=None, note=note)
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        tr, te = stratified_split(y, 0.5, random_state=args.seed)
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-3  # pixel standardisation, train statistics only
        Xs = ((X - mu) / sd).astype(np.float32)
        return dict(X=Xs[tr], y=y[tr], X_test=Xs[te], y_test=y[te], domains=None, emb=None,
                    note="sklearn digits 8x8 pixels, standardised, 50/50 split")
    if name == "fashion-mnist":
        root = Path(args.fashion_mnist)
        if not (root / "train-images-idx3-ubyte.gz").exists():
            raise SystemExit(f"fashion-mnist: no idx files under {root}; pass --fashion-mnist DIR.")
        X = _read_idx(root / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
        y = _read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
        Xt = _read_idx(root / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
        yt = _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        X, Xt = _pca(X, Xt, args.pca)
        return dict(X=X, y=y, X_test=Xt, y_test=yt, domains=None, emb=None,
                    note=f"Fashion-MNIST pixels, PCA {args.pca} (fit on train)")
    from gpua.features import load_features

    fs = load_features(name, require=("labels",))
    space = f"{args.space}_features"
    fs.require(space, source=name)
    X, y = getattr(fs, space), fs.labels
    if args.test:
        ft = load_features(args.test, require=("labels", space))
        Xt, yt = getattr(ft, space), ft.labels
    else:
        tr, te = stratified_split(y, 0.3, random_state=args.seed)
        X, Xt, y, yt = X[tr], X[te], y[tr], y[te]
    return dict(X=X, y=y, X_test=Xt, y_test=yt, domains=None, emb=fs.text_prototypes,
                note=f"{name} ({args.space} features, L2-normalised)", l2=True)


def _average(runs: list[list[dict]]) -> list[dict]:
    """Mean over seeds of rows that line up (same order), with the spread of "all"."""
    out = []
    for rows in zip(*runs):
        row = dict(rows[0])
        for k in ("all", "head", "tail", "seconds", "n_generated"):
            if k in row:
                vals = [r[k] for r in rows]
                row[k] = float(np.mean(vals))
        row["all_std"] = float(np.std([r["all"] for r in rows]))
        row["seeds"] = len(rows)
        out.append(row)
    return out


def _shape_premise(X: np.ndarray, y: np.ndarray, m: int = 5) -> str:
    """Do classes share a shape here? Mean S(A, B) between classes vs random directions."""
    stats = ClassStatistics().fit(X, y)
    S = shape_similarity_matrix(stats.covariance_, m)
    K = S.shape[0]
    off = (S.sum() - np.trace(S)) / (K * (K - 1))
    rand = m * np.sqrt(2 / (np.pi * X.shape[1]))  # E|u . v| for random unit vectors, m times
    return f"shape similarity S (m={m}) between classes: mean {off:.2f} of {m} (random directions: {rand:.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["synthetic", "synthetic-domains", "digits"],
                   help=f"data sets, run in turn: {', '.join(BUILT_IN)}, or the path of a gpua feature file")
    p.add_argument("--test", help="test feature file for a feature-file data set")
    p.add_argument("--space", choices=("vfm", "vlm"), default="vfm")
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--pca", type=int, default=64)
    p.add_argument("--synthetic-dim", type=int, default=32)
    p.add_argument("--imbalance", type=float, nargs="+", default=[10, 50, 100])
    p.add_argument("--class-order", choices=("index", "random"), default="index",
                   help="which classes are the head: class 0 first (CIFAR-10-LT), or random per seed")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--skip", choices=("longtail", "federated"), action="append", default=[])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="results are averaged over these")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small SGD steps run best on one)")
    p.add_argument("--json", action=OutputPath)
    args = p.parse_args(argv)
    check_data(p, args)
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    results = {"argv": sys.argv[1:] if argv is None else list(argv), "seeds": args.seeds, "data": {}}
    for name in args.data:
        lt_runs, fl_runs = [], []
        t_lt = t_fl = 0.0
        for seed in args.seeds:
            args.seed = seed
            D = load(name, args)
            if seed == args.seeds[0]:
                print(f"\n== {name}: {D['note']}; train {D['X'].shape}, test {D['X_test'].shape}")
                print(_shape_premise(D["X"], D["y"]))
            l2 = D.get("l2", False)
            if "longtail" not in args.skip:
                with timer() as t:
                    lt_runs.append(run_longtail(D["X"], D["y"], D["X_test"], D["y_test"], imbalance_ratios=args.imbalance,
                                                class_embeddings=D["emb"], l2=l2, class_order=args.class_order,
                                                random_state=seed))
                t_lt += t.seconds
            if "federated" not in args.skip:
                with timer() as t:
                    fl_runs.append(run_federated(D["X"], D["y"], D["X_test"], D["y_test"], n_clients=args.clients,
                                                 alphas=args.alpha, domains=D["domains"], rounds=args.rounds, l2=l2,
                                                 random_state=seed))
                t_fl += t.seconds
        out = results["data"][name] = {"note": D["note"]}
        seeds = f"mean of {len(args.seeds)} seeds"
        if lt_runs:
            rows = out["longtail"] = _average(lt_runs)
            print(f"-- long tail, {seeds} ({t_lt:.0f} s)\n" + format_table(rows))
        if fl_runs:
            rows = out["federated"] = _average(fl_runs)
            print(f"-- federated, {args.clients} clients, {seeds} ({t_fl:.0f} s)\n" + format_table(rows))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
