r"""Federated calibration (GGEUR, CVPR 2025): clients share statistics, never features.

Protocol, one round before training:

1. each client :math:`i` sends, per class :math:`k`, :math:`(n_{ik}, \mu_{ik}, \Sigma_{ik})`, or
   :math:`\Sigma_{ik}` compressed to its top-:math:`m` shape and trace
   (:func:`client_statistics`);
2. the server merges them exactly by the law of total covariance and calibrates one global
   covariance per class (:class:`FederatedCalibration`), then broadcasts the factors
   :math:`L_k` and, for the multi-domain variant, the client prototypes :math:`\mu_{ik}`;
3. each client fills its classes to a target count around its own samples (``anchors="local"``,
   the single-domain algorithm) or around its own samples *and* the other clients' prototypes
   (``anchors="prototypes"``, the multi-domain algorithm: a class a client never saw, or saw
   only in its own domain, is generated where the other clients have it);
4. FedAvg trains a linear classifier on real + generated features (:func:`fedavg`).

Client splits: :func:`dirichlet_split` (label skew, :math:`p_k \sim \mathrm{Dir}(\alpha)` over
clients per class) and :func:`domain_split` (each client holds one domain).
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np

from .._errors import GPUAError, NotFittedError
from .._validation import check_labels, check_number
from ._calibrator import DistributionCalibrator
from ._classifier import LinearClassifier, _Diverged, smaller_lr
from ._sampling import as_rng
from ._stats import ClassStatistics, check_parts, infer_n_classes, merge_statistics

__all__ = ["dirichlet_split", "max_clients", "domain_split", "client_statistics", "FederatedCalibration", "fedavg"]

#: FedAvg has diverged when the global model's mean training loss exceeds this many times
#: :math:`\ln K`, the loss of its all-zero start (which predicts every class equally).
DIVERGED_LOSS_RATIO = 10.0

#: The fewest samples :func:`dirichlet_split` gives a client by default (``min_size``).
MIN_CLIENT_SAMPLES = 2


def check_alpha(value, name: str = "alpha") -> float:
    """A Dirichlet concentration: a positive number or ``inf`` (the even split), else a :class:`GPUAError` naming ``name``."""
    return check_number(value, name, low=0, low_open=True, allow_inf=True,
                        fix="a Dirichlet concentration (0.1: strong label skew, inf: an even split)")


def max_clients(n_samples: int, min_size: int = MIN_CLIENT_SAMPLES) -> int:
    """The most clients among which ``n_samples`` rows can be split with ``min_size`` rows each."""
    return int(n_samples) if min_size == 0 else int(n_samples) // int(min_size)


def dirichlet_split(
    y,
    n_clients: int,
    alpha: float,
    *,
    domains=None,
    min_size: int = MIN_CLIENT_SAMPLES,
    max_tries: int = 1000,
    random_state=None,
) -> list[np.ndarray]:
    r"""Split sample indices among clients with Dirichlet label skew.

    For every class, the fractions of its samples going to each client are drawn from
    :math:`\mathrm{Dir}(\alpha, \dots, \alpha)`; small :math:`\alpha` (0.1) gives clients that
    see one or two classes, large :math:`\alpha` approaches an i.i.d. split. Draws are repeated
    until every client holds at least ``min_size`` samples (the usual protocol of Hsu et al.
    2019 and of the GGEUR code).

    Parameters
    ----------
    y : int array of shape (n,)
        Labels.
    n_clients : int
    alpha : float
        Concentration; ``numpy.inf`` splits each class evenly at random (no label skew).
    domains : int array of shape (n,), optional
        Domain of each sample. Client :math:`i` is then assigned domain :math:`i \bmod G` and
        only that domain's samples are split among that domain's clients (label and domain
        skew together).
    min_size : int
        Fewest samples a client may hold.
    max_tries : int
        Draws before giving up with a :class:`GPUAError`.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    list of n_clients int arrays
        Sample indices of each client (disjoint, covering all samples of the used domains).
    """
    rng = as_rng(random_state)
    y = np.asarray(y)
    y = check_labels(y, y.shape[0], infer_n_classes(y), name="y")
    check_number(n_clients, "n_clients", integer=True, low=1)
    alpha = check_alpha(alpha)
    check_number(min_size, "min_size", integer=True, low=0, fix="the fewest samples a client may hold, e.g. 2")
    check_number(max_tries, "max_tries", integer=True, low=1)
    dom = np.zeros(y.shape[0], np.int64) if domains is None else check_labels(
        domains, y.shape[0], infer_n_classes(domains, "domains"), name="domains"
    )
    n_domains = int(dom.max()) + 1
    if n_clients < n_domains:
        raise GPUAError(f"n_clients={n_clients} is fewer than the {n_domains} domains; give each domain a client.")
    owners = [np.arange(g, n_clients, n_domains) for g in range(n_domains)]
    for g, cl in enumerate(owners):  # no draw can do it: say so now, not after max_tries draws
        rows = int(np.count_nonzero(dom == g))
        most = max_clients(rows, min_size)
        if cl.size > most:
            where = "" if n_domains == 1 else f" of domain {g}"
            fewer = "" if most == 0 else (
                f"pass n_clients={most} or fewer, " if n_domains == 1 else f"pass fewer n_clients (domain {g} can feed {most}), "
            )
            raise GPUAError(
                f"the {rows} samples{where} cannot give each of its {cl.size} clients min_size={min_size} samples; "
                f"{fewer}or a smaller min_size."
            )
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for g in range(n_domains):
            cl = owners[g]
            for k in np.unique(y[dom == g]):
                idx = rng.permutation(np.nonzero((dom == g) & (y == k))[0])
                p = np.full(cl.size, 1.0 / cl.size) if np.isinf(alpha) else rng.dirichlet(np.full(cl.size, alpha))
                cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
                for c, chunk in zip(cl, np.split(idx, cuts)):
                    parts[c].append(chunk)
        out = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
        if min(o.size for o in out) >= min_size:
            return out
    raise GPUAError(
        f"could not give every one of {n_clients} clients at least {min_size} samples in "
        f"{max_tries} draws at alpha={alpha}; use fewer clients or a larger alpha (or a smaller min_size)."
    )


def domain_split(domains, n_clients: int, *, random_state=None) -> list[np.ndarray]:
    """Domain skew only: client :math:`i` holds a random share of domain :math:`i \\bmod G`."""
    domains = np.asarray(domains)
    return dirichlet_split(np.zeros(domains.shape[0], np.int64), n_clients, np.inf, domains=domains, min_size=1, random_state=random_state)


def client_statistics(
    X,
    y,
    n_classes: int,
    *,
    share: Literal["covariance", "shape"] = "covariance",
    n_components: int = 5,
) -> ClassStatistics:
    """What one client sends: per-class count, mean and covariance (or its top-m shape + trace).

    Parameters
    ----------
    X : array of shape (n, d)
    y : int array of shape (n,)
    n_classes : int
        The federation's class count (so that every message has the same classes).
    share : {"covariance", "shape"}
        Send the full :math:`d \\times d` covariance, or only ``n_components`` eigenpairs and the
        trace (:math:`m(d + 1) + 1` numbers; the server rebuilds an isotropic remainder).

    A client without rows (``X`` of shape (0, d), ``y`` empty: what :func:`dirichlet_split`
    gives with ``min_size=0``) sends zero counts, which the merge weighs by 0; its index stays
    its own, as :meth:`FederatedCalibration.augment` needs (was: refused as empty, so that
    dropping it renumbered the clients after it).
    """
    if share not in ("covariance", "shape"):
        raise GPUAError(f"share={share!r} is not an option; use 'covariance' or 'shape'.")
    shape = getattr(X, "shape", None) or np.shape(X)
    if len(shape) == 2 and shape[0] == 0 and shape[1] > 0 and np.size(y) == 0:
        check_number(n_classes, "n_classes", integer=True, low=1)
        k, d = int(n_classes), int(shape[1])
        stats = ClassStatistics.from_moments(np.zeros(k, np.int64), np.zeros((k, d)), np.zeros((k, d, d)))
    else:
        stats = ClassStatistics(n_classes).fit(X, y)
    return stats if share == "covariance" else stats.compress(n_components)


class FederatedCalibration:
    r"""The server: merges client statistics, calibrates global class shapes, guides clients.

    Parameters
    ----------
    n_classes : int
        The federation's class count.
    calibrator : DistributionCalibrator, optional
        Applied to the merged statistics (its settings: shrinkage, borrowing, components,
        scale, seed). Default: ``DistributionCalibrator(borrow=None)``, since merged classes are
        usually well sampled; give one with ``borrow="mean"`` for a long-tailed federation.
    missing : {"raise", "skip"}
        A class no client has any sample of: refuse, or leave it out of generation.

    Attributes
    ----------
    statistics_ : ClassStatistics
        Merged statistics (exactly those of the pooled data when clients share covariances).
    calibrator_ : DistributionCalibrator
        A fitted copy of ``calibrator``; its ``factors_`` are what is broadcast.
    client_counts_ : int array of shape (n_clients, n_classes)
    client_means_ : array of shape (n_clients, n_classes, d)
        Client prototypes :math:`\mu_{ik}`.
    """

    def __init__(
        self,
        n_classes: int,
        *,
        calibrator: DistributionCalibrator | None = None,
        missing: Literal["raise", "skip"] = "raise",
    ) -> None:
        self.n_classes = n_classes
        self.calibrator = calibrator
        self.missing = missing

    def fit(self, messages: Sequence[ClassStatistics], *, class_embeddings=None) -> "FederatedCalibration":
        """Merge the clients' messages (one :class:`ClassStatistics` each) and calibrate.

        ``class_embeddings`` (K, d_t): text prototypes, for a calibrator with ``borrow="text"``.
        """
        check_number(self.n_classes, "n_classes", integer=True, low=1, fix="the federation's class count")
        messages = check_parts(messages, "messages")
        for i, m in enumerate(messages):
            if m.n_classes_ > self.n_classes:
                raise GPUAError(
                    f"messages[{i}] has {m.n_classes_} classes but the server expects n_classes={self.n_classes}; "
                    "build every client's statistics with the federation's n_classes."
                )
        if self.missing not in ("raise", "skip"):
            raise GPUAError(f"missing={self.missing!r} is not an option; use 'raise' or 'skip'.")
        merged = merge_statistics(messages, n_classes=self.n_classes)
        absent = np.nonzero(merged.count_ == 0)[0]
        if absent.size and self.missing == "raise":
            raise GPUAError(
                f"no client shared anything about class(es) {absent.tolist()}, so they have no mean or "
                "covariance; check n_classes and the clients' labels, or pass missing='skip' to leave "
                "them out of generation."
            )
        if self.calibrator is not None and not isinstance(self.calibrator, DistributionCalibrator):
            raise GPUAError(
                f"calibrator is a {type(self.calibrator).__name__}; pass a DistributionCalibrator (its settings are "
                "applied to the merged statistics), or None for DistributionCalibrator(borrow=None)."
            )
        template = self.calibrator if self.calibrator is not None else DistributionCalibrator(borrow=None)
        self.statistics_ = merged
        self.calibrator_ = copy.deepcopy(template).fit_statistics(merged, class_embeddings=class_embeddings, missing="skip")
        padded = [m.padded_moments(self.n_classes) for m in messages]
        self.client_counts_ = np.stack([p[0] for p in padded])
        self.client_means_ = np.stack([p[1] for p in padded])
        return self

    def augment(
        self,
        client: int,
        X,
        y,
        *,
        target: Literal["max"] | int = "max",
        anchors: Literal["local", "prototypes"] = "local",
        random_state=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generated samples for client ``client`` holding ``X`` (n, d), ``y`` (n,).

        ``anchors="local"`` fills the classes the client has; ``"prototypes"`` fills every class,
        anchoring on local samples (weight 1 each) and other clients' prototypes (weight
        :math:`n_{jk}` each).

        ``random_state`` (None, an int or a Generator) seeds this call; None takes the
        calibrator's ``random_state``, and when that is an int each client gets its own stream
        of it, ``default_rng((seed, client))``, as :func:`run_federated` seeds them (was: the
        one seed gave every client the same noise and anchor draws, so the pooled synthetic
        samples of two clients moved together).
        """
        if not hasattr(self, "calibrator_"):
            raise NotFittedError("FederatedCalibration is not fitted; call fit(messages) first.")
        if anchors not in ("local", "prototypes"):
            raise GPUAError(f"anchors={anchors!r} is not an option; use 'local' or 'prototypes'.")
        n_clients = self.client_counts_.shape[0]
        # 1.5 matched no client (its own prototypes were added to its samples), True was client 1.
        check_number(client, "client", integer=True, low=0, high=n_clients - 1,
                     fix=f"the index of this client's message in the {n_clients} given to fit")
        protos = None
        if anchors == "prototypes":
            protos = {}
            others = np.arange(self.client_counts_.shape[0]) != client
            for k in range(self.n_classes):
                has = others & (self.client_counts_[:, k] > 0)
                if has.any():
                    protos[k] = (self.client_means_[has, k], self.client_counts_[has, k].astype(np.float64))
        if random_state is None and _is_seed(self.calibrator_.random_state):
            random_state = np.random.default_rng((int(self.calibrator_.random_state), int(client)))
        return self.calibrator_.sample(X, y, target=target, prototypes=protos, random_state=random_state)


def _is_seed(value) -> bool:
    """An int seed (numpy's integers too), not a bool, None or a Generator."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def fedavg(
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    *,
    rounds: int = 30,
    local_epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    device: str | None = "cpu",
    random_state=None,
) -> LinearClassifier:
    r"""FedAvg (McMahan et al. 2017) of a linear classifier.

    Every round each client runs ``local_epochs`` of SGD from the global :math:`(W, b)`; the
    server averages the results weighted by client sample counts,
    :math:`W \leftarrow \sum_i n_i W_i / \sum_i n_i`.

    Parameters
    ----------
    clients : sequence of (X_i (n_i, d), y_i (n_i,))
        Each client's training features (real, or real + generated).
    n_classes : int
    rounds, local_epochs, lr, batch_size, weight_decay, device
        Training settings (see :class:`LinearClassifier`, solver "sgd").
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    LinearClassifier
        The global model.

    Raises
    ------
    GPUAError
        When the training diverges (``lr`` too large): a local fit's weights become NaN or inf,
        or, after a round, the global model's mean cross-entropy on all clients' training samples
        is not finite or exceeds ``DIVERGED_LOSS_RATIO`` (10) times :math:`\ln K`, the loss of the
        all-zero start. A linear model trained with a workable ``lr`` stays below :math:`\ln K`;
        one ten times worse than guessing on its own training data has blown up (its weights grow
        without bound while staying finite, and it scores chance or below on test data). The
        check costs one forward pass over the clients' samples per round and stops the training
        at the first round it fails. An error rather than a warning: the model is meaningless,
        and in a sweep a warning scrolls by while the number lands in the results table; a sweep
        over ``lr`` can catch :class:`GPUAError` and record the setting as diverged.
    """
    check_number(rounds, "rounds", integer=True, low=1, fix="FedAvg needs at least one round (30 is typical)")
    check_number(n_classes, "n_classes", integer=True, low=2, fix="the federation's class count")
    rng = as_rng(random_state)
    clients = list(clients)
    for i, c in enumerate(clients):
        if not (isinstance(c, (tuple, list)) and len(c) == 2):
            raise GPUAError(
                f"clients[{i}] is a {type(c).__name__}; pass (X_i, y_i) pairs, one per client: features (n_i, d) "
                "and their labels (n_i,)."
            )
    data = [(X, y) for X, y in clients if len(y) > 0]
    if not data:
        raise GPUAError("clients hold no samples; pass at least one non-empty (X, y).")
    for i, (X, y) in enumerate(clients):
        if len(y) > 0 and np.ndim(X) != 2:
            raise GPUAError(
                f"clients[{i}] has features of shape {np.shape(X)}; each client's X must be 2-D (n_i, d) "
                "(reshape one row with .reshape(1, -1))."
            )
    widths = {np.shape(X)[1] for X, _ in data}
    if len(widths) > 1:
        raise GPUAError(f"clients have features of widths {sorted(widths)}; all must use one feature space.")
    d = widths.pop()
    sizes = np.array([len(y) for _, y in data], dtype=np.float64)
    W = np.zeros((n_classes, d), np.float32)
    b = np.zeros(n_classes, np.float32)
    local = LinearClassifier(
        solver="sgd", epochs=local_epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        device=device, random_state=rng,
    )
    limit = DIVERGED_LOSS_RATIO * np.log(n_classes)
    for r in range(int(rounds)):
        Ws, bs = [], []
        for X, y in data:
            try:
                local.fit(X, y, n_classes=n_classes, coef_init=W, intercept_init=b)
            except _Diverged as e:
                raise _fedavg_diverged(lr, f"in round {r + 1} of {int(rounds)} {e.detail}", weight_decay) from None
            Ws.append(local.coef_)
            bs.append(local.intercept_)
        W = np.einsum("c,ckd->kd", sizes, np.stack(Ws)) / sizes.sum()
        b = np.einsum("c,ck->k", sizes, np.stack(bs)) / sizes.sum()
        loss = _mean_cross_entropy(data, W, b)
        if not loss <= limit:  # NaN too
            raise _fedavg_diverged(
                lr, f"in round {r + 1} of {int(rounds)} (the global model's mean training loss is {loss:.3g}, more "
                f"than {DIVERGED_LOSS_RATIO:g} x ln K = {limit:.3g}, the loss of its untrained start: its weights are "
                "blowing up)", weight_decay,
            )
    model = LinearClassifier(weight_decay=weight_decay, device=device)
    model.coef_, model.intercept_ = W.astype(np.float32), b.astype(np.float32)
    model.n_classes_, model.n_features_in_ = n_classes, d
    return model


def _mean_cross_entropy(data, W: np.ndarray, b: np.ndarray) -> float:
    """Mean cross-entropy of the linear model (W, b) over all the clients' samples (float64)."""
    from scipy.special import logsumexp

    total, n = 0.0, 0
    W64, b64 = np.asarray(W, np.float64), np.asarray(b, np.float64)
    with np.errstate(all="ignore"):  # blown-up weights: inf / NaN here is the answer, not a warning
        for X, y in data:
            s = np.asarray(X) @ W64.T + b64
            y = np.asarray(y, np.int64)
            total += float((logsumexp(s, axis=1) - s[np.arange(y.size), y]).sum())
            n += y.size
    return total / n


def _fedavg_diverged(lr, detail: str, weight_decay: float = 0.0) -> _Diverged:
    if weight_decay > 1 and lr * weight_decay >= 1:
        # an unusual penalty: each step scales the weights by (1 - lr * weight_decay), which a smaller lr only delays
        fix = (f"lr x weight_decay = {lr * weight_decay:g} makes every step overshoot the penalty's minimum; use a "
               f"weight_decay below {1 / lr:g} (an L2 penalty such as 1e-3)")
    else:
        fix = f"use a smaller lr (try lr={smaller_lr(lr):g}), or standardise the features"
    return _Diverged(f"FedAvg diverged {detail} with lr={float(lr):g}; {fix}.", lr=float(lr), detail=detail)


# Federated GPUA itself (unlabeled clients, one map) is gpua.stream.fit_federated.
