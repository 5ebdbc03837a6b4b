r"""Long-tail and federated experiments: the protocols behind the CLI and the benchmark.

Long tail: keep :math:`n_k = \lfloor n_{\max}\, r^{-k/(K-1)} \rfloor` training samples of class
:math:`k` (at least one; CIFAR-10-LT's exponential profile, imbalance ratio :math:`r`; the head
count :math:`n_{\max}` is the largest every class can give its share of), test on
the untouched balanced test set, and report accuracy on all classes, on the head (the 30% of
classes with the most training samples) and on the tail (the 30% with the fewest).

Federated: split the training set among clients with :func:`dirichlet_split`, then compare
FedAvg on real features with FedAvg on real + calibrated features, the one-shot LDA the merged
statistics give for free, and a centralised logistic regression as a reference ceiling.

Features are preprocessed once: optional L2 normalisation (foundation-model features are
compared by cosine), then centring and a single global scale so the total variance per
dimension is 1. A scalar scale keeps every covariance shape intact (whitening would not), and
mean and scale follow from the merged statistics, so a federation can compute them too.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from .._errors import GPUAError, LongTailCountsError, warn_user
from .._validation import check_labels, check_matrix, check_number
from ..params import Interval
from ._calibrator import DistributionCalibrator
from ._classifier import LinearClassifier, ShrinkageLDA
from ._federated_calibration import FederatedCalibration, check_alpha, client_statistics, dirichlet_split, fedavg
from ._sampling import as_rng
from ._stats import ClassStatistics, check_class_embeddings, infer_n_classes, merge_statistics

__all__ = [
    "LONGTAIL_METHODS",
    "FEDERATED_METHODS",
    "longtail_indices",
    "stratified_split",
    "head_tail_classes",
    "group_accuracy",
    "global_standardizer",
    "make_shape_gaussians",
    "run_longtail",
    "run_federated",
    "format_table",
]

LONGTAIL_METHODS = ("plain", "reweight", "lda", "calibrate", "calibrate+borrow", "calibrate+borrow-text")
FEDERATED_METHODS = ("fedavg", "fedavg+calibrate", "fedavg+calibrate+prototypes", "lda-merged", "centralised")


def longtail_indices(
    y,
    imbalance: float,
    *,
    n_max: int | None = None,
    n_classes: int | None = None,
    class_order: str = "index",
    random_state=None,
) -> np.ndarray:
    r"""Indices of a long-tailed subset: class :math:`k` keeps :math:`\lfloor n_{\max} r^{-k/(K-1)}\rfloor`.

    Parameters
    ----------
    y : int array of shape (n,)
    imbalance : float
        :math:`r = n_0 / n_{K-1} \ge 1` (finite).
    n_max : int, optional
        Count of the head class. Default: the largest count for which every class can give
        its share at its rank, :math:`\lfloor \min_k c_k\, r^{\mathrm{rank}_k/(K-1)} \rfloor`
        for class counts :math:`c_k`. On balanced classes that is the class count (the head
        keeps all its samples); a small class low in the profile limits the head to what keeps
        the profile's ratio exact, no further.
    n_classes : int, optional
        Number of classes :math:`K` (default: ``max(y) + 1``).
    class_order : {"index", "random"}
        Rank of each class in the profile: class index (CIFAR-10-LT's convention: class 0 is
        the head), or a seeded random permutation (so that which classes are the tail, and how
        hard they happen to be, varies with the seed).
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    int array
        Sorted indices into ``y``.

    Raises
    ------
    GPUAError
        When a class in ``[0, K)`` has no sample, when the default head count would be a
        single sample (a class with too few samples for its rank: named, with the fix), or
        when an explicit ``n_max`` asks a class for more samples than it has.
    """
    rng = as_rng(random_state)
    y = np.asarray(y)
    K = infer_n_classes(y, "y") if n_classes is None else check_number(n_classes, "n_classes", integer=True, low=1)
    y = check_labels(y, y.shape[0], K, name="y")
    imbalance = _check_imbalance(imbalance, "imbalance")
    if class_order not in ("index", "random"):
        raise GPUAError(f"class_order={class_order!r} is not an option; use 'index' or 'random'.")
    counts = np.bincount(y, minlength=K)
    _check_every_class(counts, "y")
    rank = np.arange(K) if class_order == "index" else rng.permutation(K)
    share = imbalance ** (-rank / max(K - 1, 1))  # of the head count, per class
    room = counts / share  # the largest head count class k can give its share of
    if n_max is None:
        n_max = int(np.floor(room.min()))
        if n_max < 2 and K > 1:
            few = np.nonzero(room < 2)[0]
            raise LongTailCountsError(
                f"class(es) {few.tolist()} have {counts[few].tolist()} sample(s), too few for their place in the "
                f"long-tail profile: the head could keep only {n_max} sample, which cuts every class to one. "
                "Add samples of those classes, or leave them out (and number the other classes 0..K-1)."
            )
    else:
        n_max = check_number(n_max, "n_max", integer=True, low=1)
    wanted = np.floor(n_max * share).astype(np.int64)
    keep = np.maximum(wanted, 1)
    if (wanted < 1).any():
        # The profile asked for less than one sample of its tail: every class keeps one, so the
        # cut's head/tail ratio is not the one asked (was: the row reported the ratio asked).
        warn_user(f"imbalance {imbalance:g} asks the tail class(es) for less than one of the head's {n_max} sample(s): "
                  f"{int((wanted < 1).sum())} class(es) keep one each, so this cut's head/tail ratio is {keep.max() / keep.min():g}, "
                  "and its profile is no longer exponential. Use a ratio of at most the head count, or more data.")
    over = np.nonzero(keep > counts)[0]
    if over.size:
        raise GPUAError(
            f"n_max={n_max} asks class(es) {over.tolist()} for {keep[over].tolist()} sample(s) but they have "
            f"{counts[over].tolist()}; lower n_max, or leave it unset (the default, {int(np.floor(room.min()))}, "
            "is the largest that keeps the profile's ratio exact)."
        )
    idx = [rng.choice(np.nonzero(y == k)[0], keep[k], replace=False) for k in range(K)]
    return np.sort(np.concatenate(idx))


def _check_imbalance(value, name: str) -> float:
    """An imbalance ratio: a finite number >= 1, or a :class:`GPUAError` naming ``name``."""
    if not Interval(float, 1, None).accepts(value):
        raise GPUAError(
            f"{name}={value!r} must be a finite number >= 1; the head/tail count ratio, e.g. 10, 50 or 100."
        )
    return float(value)


def _check_every_class(counts: np.ndarray, name: str) -> None:
    """Refuse classes with no sample: a long-tail profile gives every class a rank and a count."""
    empty = np.nonzero(counts == 0)[0]
    if empty.size:
        raise LongTailCountsError(
            f"no sample of class(es) {empty.tolist()} in {name} (of {counts.size} classes), so the long-tail "
            "profile cannot give them their count; add training samples of those classes, or leave the classes "
            "out (and number the others 0..K-1)."
        )


def stratified_split(
    y, test_fraction: float, *, random_state=None, name: str = "test_fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices with the same class proportions (``test_fraction`` of each class).

    Parameters
    ----------
    y : int array of shape (n,)
    test_fraction : float
        Share of each class held out, in (0, 1): ``round(test_fraction * n_k)`` samples of
        class :math:`k`.
    random_state : None, int or numpy.random.Generator
    name : str
        What to call ``test_fraction`` in messages (the CLI passes its flag).

    Returns
    -------
    train, test : int arrays
        Sorted indices into ``y``.

    Raises
    ------
    GPUAError
        When ``test_fraction`` is not in (0, 1), would hold out every sample of a class
        (leaving it nothing to train on), or would hold out nothing at all; the message says
        which fraction works.
    """
    if not Interval(float, 0, 1, closed="neither").accepts(test_fraction):
        raise GPUAError(
            f"{name}={test_fraction!r} must be a number between 0 and 1 (exclusive): the share of each class "
            "held out, e.g. 0.3."
        )
    rng = as_rng(random_state)
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    n_test = np.array([int(round(test_fraction * c)) for c in counts], dtype=np.int64)
    # round(f c) <= c - 1 for f <= (c - 1) / c (a one-sample class stays for f < 0.5), and
    # round(f c_max) >= 1 for f >= 1 / c_max: three decimals, rounded inwards.
    hi = math.floor(min((c - 1) / c if c >= 2 else 0.49 for c in counts) * 1000 + 1e-9) / 1000
    lo = math.ceil(1000 / counts.max() - 1e-9) / 1000
    too_small = "the classes are too small to split; use a separate test set"
    lost = np.nonzero(n_test == counts)[0]
    if lost.size:
        raise GPUAError(
            f"{name}={test_fraction!r} would hold out every sample of class(es) {classes[lost].tolist()} "
            f"({counts[lost].tolist()} sample(s)), leaving them nothing to train on "
            f"({int((counts - n_test).sum())} of the {y.size} rows left for training); "
            + (f"use a smaller {name}, at most {hi:g}." if lo <= hi else too_small + ".")
        )
    if n_test.sum() == 0:
        raise GPUAError(
            f"{name}={test_fraction!r} holds out no row (the largest class has {counts.max()} samples); "
            + (f"use a larger {name}, at least {lo:g}." if lo <= hi else too_small + ".")
        )
    train, test = [], []
    for k, n_k in zip(classes, n_test):
        idx = rng.permutation(np.nonzero(y == k)[0])
        test.append(idx[:n_k])
        train.append(idx[n_k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def head_tail_classes(counts, fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Head and tail class indices: the ``fraction`` of classes with the most / fewest samples."""
    counts = np.asarray(counts)
    g = max(1, int(round(fraction * counts.size)))
    order = np.argsort(-counts, kind="stable")
    return np.sort(order[:g]), np.sort(order[-g:])


def group_accuracy(y_true, y_pred, head=None, tail=None) -> dict[str, float]:
    """Top-1 accuracy on all test samples, and on those whose true class is head / tail."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise GPUAError(
            f"y_pred has {y_pred.size} values for {y_true.size} in y_true; give one prediction per test sample (both 1-D)."
        )
    out = {"all": float(np.mean(y_true == y_pred))}
    for name, group in (("head", head), ("tail", tail)):
        if group is not None:
            m = np.isin(y_true, group)
            out[name] = float(np.mean(y_true[m] == y_pred[m])) if m.any() else float("nan")
    return out


def _warn_untested_groups(y_test: np.ndarray, groups: dict, imbalance) -> None:
    """Say when head or tail classes have no test sample: their accuracy is NaN, or an average over fewer classes."""
    tested = set(np.unique(y_test).tolist())
    for name, group in groups.items():
        missing = [int(k) for k in group if int(k) not in tested]
        if missing:
            what = "is NaN (no test sample of any)" if len(missing) == len(group) else "averages over the others only"
            warn_user(f"at imbalance {imbalance:g}, {len(missing)} of the {len(group)} {name} class(es) have no test sample "
                      f"(first: class {missing[0]}), so the {name} accuracy {what}; give the test split samples of every class.")


def global_standardizer(statistics: ClassStatistics) -> tuple[np.ndarray, float]:
    r"""Global mean :math:`\mu` and scalar scale :math:`\sqrt{\operatorname{tr}\Sigma / d}` from class statistics.

    By the law of total covariance over classes,
    :math:`n \operatorname{tr}\Sigma = \sum_k \operatorname{tr} M_k + \sum_k n_k \|\mu_k - \mu\|^2`.
    """
    n = statistics.count_.astype(np.float64)
    total = max(n.sum(), 1.0)
    mu = n @ statistics.mean_ / total
    within = np.trace(statistics.scatter_, axis1=1, axis2=2).sum()
    between = n @ np.sum((statistics.mean_ - mu) ** 2, axis=1)
    d = mu.shape[0]
    return mu, float(np.sqrt(max((within + between) / total / d, 1e-300)))


def _preprocess(X, X_test, *, l2: bool):
    if l2:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        X_test = X_test / np.maximum(np.linalg.norm(X_test, axis=1, keepdims=True), 1e-12)
    return X, X_test


def make_shape_gaussians(
    n_classes: int = 10,
    n_features: int = 32,
    n_train_per_class: int = 500,
    n_test_per_class: int = 200,
    *,
    n_domains: int = 1,
    class_sep: float = 2.5,
    shape_noise: float = 0.15,
    decay: float = 1.0,
    domain_shift: float = 2.0,
    random_state=None,
) -> dict[str, np.ndarray]:
    r"""Gaussian classes whose covariances share one shape, with optional domain shifts.

    Class :math:`k` has covariance :math:`c_k Q_k \Lambda Q_k^\top` with
    :math:`\Lambda \propto \mathrm{diag}(j^{-\mathrm{decay}})` scaled to trace :math:`d`, :math:`Q_k` a random rotation ``Q``
    perturbed by ``shape_noise`` per axis (so shapes are similar, not equal) and :math:`c_k \in [0.7,
    1.3]`; means are spread ``class_sep`` apart on average along random directions. Domain
    :math:`g` adds one offset of norm ``domain_shift`` to all its samples.

    Returns
    -------
    dict with X (n, d), y (n,), domains (n,), X_test, y_test, domains_test, covariances (K, d, d)
    """
    rng = as_rng(random_state)
    d, K = n_features, n_classes
    lam = np.arange(1, d + 1, dtype=np.float64) ** -decay
    lam *= d / lam.sum()  # total variance d: unit variance per dimension on average
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    covs, factors = [], []
    for _ in range(K):
        # noise / sqrt(d): each axis moves by about shape_noise in norm, whatever d is
        Qk = np.linalg.qr(Q + shape_noise / np.sqrt(d) * rng.standard_normal((d, d)))[0]
        Qk *= np.sign(np.sum(Qk * Q, axis=0))  # qr may flip columns; keep them near Q's
        c = rng.uniform(0.7, 1.3)
        covs.append(c * (Qk * lam) @ Qk.T)
        factors.append(np.sqrt(c) * Qk * np.sqrt(lam))
    means = rng.standard_normal((K, d)) * class_sep / np.sqrt(2.0 * d)  # E|mu_i - mu_j| ~ class_sep
    offsets = rng.standard_normal((n_domains, d))
    offsets *= domain_shift / np.maximum(np.linalg.norm(offsets, axis=1, keepdims=True), 1e-12)

    def draw(n_per):
        X, y, g = [], [], []
        for k in range(K):
            for dom in range(n_domains):
                m = n_per // n_domains + (dom < n_per % n_domains)
                X.append(means[k] + offsets[dom] + rng.standard_normal((m, d)) @ factors[k].T)
                y.append(np.full(m, k))
                g.append(np.full(m, dom))
        return np.concatenate(X).astype(np.float32), np.concatenate(y), np.concatenate(g)

    X, y, g = draw(n_train_per_class)
    Xt, yt, gt = draw(n_test_per_class)
    return {"X": X, "y": y, "domains": g, "X_test": Xt, "y_test": yt, "domains_test": gt, "covariances": np.stack(covs)}


def _check_training_options(*, weight_decay, lr=None, rounds=None, local_epochs=None, batch_size=None) -> None:
    """The classifier and FedAvg numbers, checked before any data is touched."""
    check_number(weight_decay, "weight_decay", low=0, fix="an L2 penalty such as 1e-3")
    if lr is not None:
        check_number(lr, "lr", low=0, low_open=True, fix="a step size such as 0.05")
    for name, v in (("rounds", rounds), ("local_epochs", local_epochs), ("batch_size", batch_size)):
        if v is not None:
            check_number(v, name, integer=True, low=1)


def _as_list(values, name: str) -> list:
    """A sequence option given as one value (``methods="plain"``, ``imbalance_ratios=10``) as a list of it.

    A string was read letter by letter, a number raised "'int' object is not iterable".
    """
    if isinstance(values, (str, bytes, int, float, np.integer, np.floating)):
        return [values]
    try:
        return list(values)
    except TypeError:
        raise GPUAError(f"{name}={values!r} must be a list of values (or a single one).") from None


def _prepare(X, y, X_test, y_test, *, methods, known, l2, class_embeddings=None):
    """Checked, optionally L2-normalised train / test arrays, class count and embeddings."""
    unknown = set(methods) - set(known)
    if unknown:
        raise GPUAError(f"methods {sorted(unknown)} are unknown; choose from {list(known)}.")
    X, y, X_test, y_test, K, emb = _check_split(X, y, X_test, y_test, class_embeddings)
    X, X_test = _preprocess(X, X_test, l2=l2)
    return X, y, X_test, y_test, K, emb


def _check_split(X, y, X_test, y_test, class_embeddings=None):
    X = check_matrix(X, "features", allow_zero_rows=True)
    X_test = check_matrix(X_test, "test features", n_cols=X.shape[1], allow_zero_rows=True)
    K = max(infer_n_classes(y, "labels"), infer_n_classes(y_test, "test labels"))
    y = check_labels(y, X.shape[0], K, name="labels")
    y_test = check_labels(y_test, X_test.shape[0], K, name="test labels")
    if class_embeddings is not None:
        class_embeddings = check_class_embeddings(class_embeddings, K, at_least=True)  # more rows: more classes
        K = class_embeddings.shape[0]
    return X, y, X_test, y_test, K, class_embeddings


def run_longtail(
    X,
    y,
    X_test,
    y_test,
    *,
    imbalance_ratios: Sequence[float] = (10, 50, 100),
    methods: Sequence[str] | None = None,
    class_embeddings=None,
    l2: bool = False,
    weight_decay: float = 1e-3,
    n_donors: int = 3,
    borrow_strength="auto",
    class_order: str = "index",
    random_state=0,
) -> list[dict]:
    """Long-tailed training subsets of (X, y), scored on the balanced (X_test, y_test).

    Parameters
    ----------
    X, y : arrays of shape (n, d), (n,)
        Full (balanced) training set; a long-tailed subset is drawn per imbalance ratio.
    X_test, y_test : arrays of shape (m, d), (m,)
    imbalance_ratios : float or sequence of float
    methods : str or sequence of str, optional
        Any of :data:`LONGTAIL_METHODS`: ``plain`` logistic regression, ``reweight`` (balanced
        class weights), ``lda`` (OAS-shrinkage LDA, uniform priors), ``calibrate`` (own class
        shapes, OAS), ``calibrate+borrow`` (donors by class mean), ``calibrate+borrow-text``
        (donors by ``class_embeddings``, which it needs). Default: all of them,
        ``calibrate+borrow-text`` only when ``class_embeddings`` are given.
    class_embeddings : array of shape (K, d_t), optional
        Text prototypes.
    l2 : bool
        L2-normalise rows first.
    weight_decay : float
        Of the logistic regression.
    n_donors, borrow_strength
        Of :class:`DistributionCalibrator`.
    class_order : {"index", "random"}
        Which classes form the head (see :func:`longtail_indices`).
    random_state : int

    Returns
    -------
    list of dict
        One row per (imbalance, method): ``imbalance, method, all, head, tail, n_train,
        n_generated, seconds``.

    Raises
    ------
    GPUAError
        For an option out of range, and when a class (of the ``K`` the labels, test labels and
        ``class_embeddings`` imply) has no training sample: the profile must give it a count.
    """
    imbalance_ratios = _as_list(imbalance_ratios, "imbalance_ratios")
    for r in imbalance_ratios:
        _check_imbalance(r, "imbalance ratio")
    if methods is None:
        methods = [m for m in LONGTAIL_METHODS if m != "calibrate+borrow-text" or class_embeddings is not None]
    methods = _as_list(methods, "methods")
    if "calibrate+borrow-text" in methods and class_embeddings is None:
        # It used to be skipped: asked for alone, the result was no row at all.
        raise GPUAError(
            "calibrate+borrow-text needs class_embeddings (one text prototype per class) to pick donors; pass them, "
            "or use calibrate+borrow (donors by class mean)."
        )
    _check_training_options(weight_decay=weight_decay)
    check_number(n_donors, "n_donors", integer=True, low=1)
    X, y, X_test, y_test, K, emb = _prepare(
        X, y, X_test, y_test, methods=methods, known=LONGTAIL_METHODS, l2=l2, class_embeddings=class_embeddings
    )
    _check_every_class(np.bincount(y, minlength=K), "labels")
    rows = []
    for r in imbalance_ratios:
        idx = longtail_indices(y, r, n_classes=K, class_order=class_order, random_state=random_state)
        Xr, yr = X[idx], y[idx]
        stats = ClassStatistics(K).fit(Xr, yr)
        mu, s = global_standardizer(stats)
        Xr = ((Xr - mu) / s).astype(np.float32)
        Xt = ((X_test - mu) / s).astype(np.float32)
        counts = np.bincount(yr, minlength=K)
        head, tail = head_tail_classes(counts)
        _warn_untested_groups(y_test, {"head": head, "tail": tail}, r)
        for m in methods:
            t0 = time.perf_counter()
            n_gen = 0
            if m == "lda":
                model = ShrinkageLDA(priors="uniform").fit(Xr, yr, n_classes=K)
            elif m in ("plain", "reweight"):
                model = LinearClassifier(weight_decay=weight_decay, class_weight="balanced" if m == "reweight" else None)
                model.fit(Xr, yr, n_classes=K)
            else:
                borrow = {"calibrate": None, "calibrate+borrow": "mean", "calibrate+borrow-text": "text"}[m]
                cal = DistributionCalibrator(
                    borrow=borrow, n_donors=n_donors, borrow_strength=borrow_strength, random_state=random_state
                )
                cal.fit(Xr, yr, n_classes=K, class_embeddings=emb)
                Xg, yg = cal.sample(Xr, yr)
                n_gen = int(yg.size)
                model = LinearClassifier(weight_decay=weight_decay).fit(
                    np.concatenate([Xr, Xg]), np.concatenate([yr, yg]), n_classes=K
                )
            acc = group_accuracy(y_test, model.predict(Xt), head, tail)
            rows.append({
                "setting": "longtail", "imbalance": float(r), "method": m, **acc,
                "n_train": int(yr.size), "n_generated": n_gen, "seconds": round(time.perf_counter() - t0, 3),
            })
    return rows


def run_federated(
    X,
    y,
    X_test,
    y_test,
    *,
    n_clients: int = 10,
    alphas: Sequence[float] = (0.1, 0.5),
    domains=None,
    methods: Sequence[str] = FEDERATED_METHODS,
    share: str = "covariance",
    n_components: int = 5,
    target: int | str = "max",
    rounds: int = 30,
    local_epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 1e-3,
    l2: bool = False,
    random_state=0,
) -> list[dict]:
    """Dirichlet-split federations of (X, y), scored on (X_test, y_test).

    Parameters
    ----------
    X, y, X_test, y_test : arrays
        Pooled training set (split among clients) and test set.
    n_clients : int
    alphas : float or sequence of float
        Dirichlet concentrations (> 0), one federation each; ``inf`` (``float("inf")`` or
        ``numpy.inf``) splits every class evenly among the clients (no label skew, the i.i.d.
        baseline of a label-skew study).
    domains : int array of shape (n,), optional
        Domain of each training sample: clients then hold one domain each (label and domain skew).
    methods : str or sequence of str
        Any of :data:`FEDERATED_METHODS`.
    share : {"covariance", "shape"}
        What clients send (see :func:`client_statistics`).
    n_components : int
        Eigenpairs sent with ``share="shape"``.
    target : "max" or int
        Per-class count each client fills to (``"max"``: its own largest class count).
    rounds, local_epochs, lr, batch_size, weight_decay
        FedAvg settings.
    l2 : bool
        L2-normalise rows first.
    random_state : int
        Seed (>= 0) of the split, the generated samples (client :math:`c` draws from the stream
        seeded with ``(random_state, c)``) and FedAvg.

    Returns
    -------
    list of dict
        One row per (alpha, method): ``alpha, method, all, n_train, n_generated, seconds``.
        ``alpha`` is a float, or the string ``"inf"`` for the even split: strict JSON
        (:func:`gpua.report.json_text`, ``gpua calibrate federated --json``) has no infinity and
        would write a float inf as ``null``, which reads as a missing value. ``float(row["alpha"])``
        gives the number back for every row.
    """
    check_number(n_clients, "n_clients", integer=True, low=1)
    alphas = _as_list(alphas, "alphas")
    methods = _as_list(methods, "methods")
    # An int: each client's stream is seeded with (random_state, client), so None cannot do.
    check_number(random_state, "random_state", integer=True, low=0, fix="a seed such as 0")
    alphas = [check_alpha(a, "alpha") for a in alphas]  # inf: dirichlet_split's even (i.i.d.) split
    check_number(n_components, "n_components", integer=True, low=1)
    _check_training_options(weight_decay=weight_decay, lr=lr, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size)
    X, y, X_test, y_test, K, _ = _prepare(X, y, X_test, y_test, methods=methods, known=FEDERATED_METHODS, l2=l2)
    rows = []
    for alpha in alphas:
        split = dirichlet_split(y, n_clients, alpha, domains=domains, random_state=random_state)
        messages = [client_statistics(X[i], y[i], K, share=share, n_components=n_components) for i in split]
        mu, s = global_standardizer(merge_statistics(messages, n_classes=K))
        Xs = ((X - mu) / s).astype(np.float32)
        Xt = ((X_test - mu) / s).astype(np.float32)
        # Clients standardise with the broadcast (mu, s); their statistics transform exactly.
        messages = [m.affine(mu, s) for m in messages]
        server = FederatedCalibration(
            K, calibrator=DistributionCalibrator(borrow=None, random_state=random_state), missing="skip"
        ).fit(messages)
        fed_kw = dict(rounds=rounds, local_epochs=local_epochs, lr=lr, batch_size=batch_size,
                      weight_decay=weight_decay, random_state=random_state)
        for m in methods:
            t0 = time.perf_counter()
            n_gen = 0
            n_train = int(y.size)
            if m == "lda-merged":
                model = ShrinkageLDA(priors="empirical").fit_statistics(server.statistics_)
            elif m == "centralised":
                model = LinearClassifier(weight_decay=weight_decay).fit(Xs, y, n_classes=K)
            else:
                clients = []
                for c, i in enumerate(split):
                    Xc, yc = Xs[i], y[i]
                    if m != "fedavg":
                        anchors = "prototypes" if m.endswith("prototypes") else "local"
                        Xg, yg = server.augment(c, Xc, yc, target=target, anchors=anchors, random_state=np.random.default_rng((int(random_state), c)))
                        n_gen += int(yg.size)
                        Xc, yc = np.concatenate([Xc, Xg]), np.concatenate([yc, yg])
                    clients.append((Xc, yc))
                model = fedavg(clients, K, **fed_kw)
            acc = group_accuracy(y_test, model.predict(Xt))
            rows.append({
                "setting": "federated", "alpha": alpha if math.isfinite(alpha) else "inf", "clients": n_clients, "method": m, **acc,
                "n_train": n_train, "n_generated": n_gen, "seconds": round(time.perf_counter() - t0, 3),
            })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of result rows (accuracies in percent)."""
    if not rows:
        return "(no results)"
    order = ("imbalance", "alpha", "clients", "method", "all", "all_std", "head", "tail", "n_train", "n_generated", "seconds")
    keys = [k for k in order if any(k in r for r in rows)]

    def cell(r, k):
        v = r.get(k, "")
        if k in ("all", "head", "tail", "all_std") and isinstance(v, float):
            return ("+-" if k == "all_std" else "") + f"{100 * v:.1f}"
        if k in ("imbalance", "alpha") and isinstance(v, float):
            return f"{v:g}"
        if k in ("seconds", "n_generated") and isinstance(v, float):
            return f"{v:.2f}" if k == "seconds" else f"{v:.0f}"
        return str(v)

    # The headers say the scale, as `gpua evaluate`'s "acc1 (%)" does (the JSON holds fractions).
    header = [f"{k} (%)" if k in ("all", "head", "tail", "all_std") else k for k in keys]
    table = [header] + [[cell(r, k) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) if i != keys.index("method") else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
