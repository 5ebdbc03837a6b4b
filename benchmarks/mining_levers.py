r"""Pseudo-label-side levers against today's ``GPUA()``: is the map or the pseudo-labels the bottleneck?

For each development set of ``benchmarks/devsets.py`` (cached features; never extracted here)
and each seed (``random_state``; for ``planted`` also the data draw), every method below is fit
on the unlabeled pool (no labels, except the row marked **oracle**) and scored as in
``benchmarks/accuracy.py``: ``test`` (top-1 on the test split; never used to choose anything),
``dev`` (the labelled dev split, or for CIFAR-10 the transductive top-1 on the pool), ``pl``
(the method's pseudo-labels on the pool against the pool's labels, a diagnostic) and ``pool``
(its transductive top-1 on the pool). All GPUA parameters are at today's defaults (or ``--base``).

Methods (``--methods``, default all):

* ``gpua``: ``GPUA(random_state=seed)`` as it is (the baseline row; every method starts from the
  ``--base`` parameters when given, e.g. ``'{"plan_ridge": null}'`` for the defaults before the
  plan's ridge projection);
* ``true_labels`` (**oracle** diagnostic): the same pipeline with the mined plan replaced by the
  pool's **true** labels (a one-hot plan) for Procrustes and refinement, and no self-learning
  (its re-mining would replace them): the best this map could do with perfect pseudo-labels;
* ``noisy_labels_uniform`` and ``noisy_labels_confusion`` (**oracles**): the same with the true
  labels corrupted, on images drawn at random, exactly as often as the ``gpua`` row's
  pseudo-labels err: as many rows, each to a uniformly drawn other class (uniform), or each true
  class's pseudo-labels shuffled among that class's rows (the same confusion matrix;
  :func:`image_independent_noise`). Beside ``gpua`` they tell whether its
  pseudo-labels' errors cost the map more than random errors of the same rate would: errors a
  linear map of the query reproduces on new photos (image-dependent) rather than noise it
  averages out;
* ``gaussian_miner``: every UCM plan (the first and each self-learning round's) turned into the
  responsibilities of a shared-covariance Gaussian mixture fitted by EM in the pool's top-64
  principal subspace of the whitened query (:func:`gaussian_mixture_em`, started from the plan;
  TransCLIP's mixture term without its Laplacian), then GPUA's Procrustes and refinement on
  those responsibilities;
* ``gaussian_classifier``: the mixture fitted from the **first** UCM plan used as a classifier
  of its own (:func:`mixture_log_posterior` of the test rows in the same subspace): no map;
* ``knn_propagation``: every UCM plan smoothed by label propagation over a symmetric 10-NN
  cosine graph of the pool's VFM rows (:func:`label_propagation`, Zhou et al. 2004 with
  alpha = 0.8, as ZLaP does for zero-shot CLIP), rows renormalised, then Procrustes and
  refinement on it;
* ``knn_propagation_query``: the same on a 10-NN graph of the pool's whitened fused query rows
  (the rows the map is fitted on), whose neighbourhoods carry the VLM half too;
* ``cotrain``: one co-training step (:func:`cotrain_classifier`): a logistic regression on the
  L2-normalised VFM rows trained on the VLM's centred zero-shot argmax on the pool (its C chosen
  by cross-validation on those pseudo-labels, label-free), used as the classifier: no map;
* ``crossfit_logreg``: every UCM plan replaced by out-of-fold class probabilities
  (:func:`out_of_fold_probs`, 5 folds): a multinomial logistic regression (C = 1) on the pool's
  standardised whitened query, trained on the other folds' rows with the plan as soft targets
  (:func:`logreg_probs`), labels each fold; then Procrustes and refinement on those. The
  Confident-Learning / TURTLE idea (Northcutt et al., JAIR 2021; Gadetsky et al., ICML 2024):
  keep the labelling a linear classifier trained on *other* rows generalises to;
* ``crossfit_ridge``: the same with a ridge regression of the plan on [standardised query, 1]
  (:func:`ridge_probs`, penalty 1, intercept free), its out-of-fold scores clipped at 1e-6 and
  rows renormalised;
* ``ridge_projection`` (a control for ``crossfit_ridge``): the same ridge fitted and predicted on
  all rows (:func:`in_sample_probs`, no cross-fitting; each row's own target in its fit): the
  plan's shrunk projection on the linear functions of the query, so that what cross-fitting
  adds beside it shows. It is the prototype of ``GPUA(plan_ridge=1.0)``, today's default
  (:mod:`gpua.projection`; the prototype in float64, the package in the query's float32).

A second, small table (``--kmeans``, on by default) is an **oracle** diagnostic of the pool's
geometry: k-means with K clusters on the pool's Z, X and whitened query Q (each reduced to its
top 64 principal directions), each cluster named by the best one-to-one matching **to the
pool's labels** (:func:`headroom.matched_clusters`), scored on the pool: how much of the classes
the geometry holds on its own.

The last table is the mean dev (and test) over the four real sets per method, beside ``gpua``'s.

    python benchmarks/mining_levers.py --sets planted                                   # quick
    python benchmarks/mining_levers.py --sets cifar-dinov2 --methods gpua,true_labels --no-kmeans
    python benchmarks/mining_levers.py --seeds 1 --json docs/measurements/mining_levers.json

``--json`` gets every row (set, seed, method, oracle flag, test, dev, pl, pool, fit seconds, and
the levers' first-mining pseudo-label accuracy beside UCM's), the per-(set, method) means, the
mean dev over the real sets and the k-means figures, with the machine record.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from _harness import OutputPath, float_tensor, setup, write_json
from _levers import add_base_argument, base_params, fit_with, prepare, set_base_params
from devsets import REAL_SETS, add_set_arguments, cached_devset_seeds, chosen_sets

from gpua import GPUA
from gpua.fitting import ArrayPool, Mined
from gpua.query import pool_mean
from gpua.ucm import class_centres

METHODS = ("gpua", "true_labels", "noisy_labels_uniform", "noisy_labels_confusion", "gaussian_miner", "gaussian_classifier",
           "knn_propagation", "knn_propagation_query", "cotrain", "crossfit_logreg", "crossfit_ridge", "ridge_projection")
#: Rows that read the pool's labels (printed and stored as oracles).
ORACLE_METHODS = ("true_labels", "noisy_labels_uniform", "noisy_labels_confusion")
#: The noisy-label oracles and the kind of noise each draws (:func:`image_independent_noise`).
NOISY_LABEL_METHODS = {"noisy_labels_uniform": "uniform", "noisy_labels_confusion": "confusion"}
#: Principal directions of the query the Gaussian mixture lives in.
GAUSSIAN_COMPONENTS = 64
#: Neighbours, propagation weight and similarity power of the kNN graph (ZLaP's k and alpha; Iscen et al.'s power).
KNN_K, PROPAGATION_ALPHA, KNN_POWER = 10, 0.8, 3.0
#: The co-training classifier's C grid (chosen by cross-validation on the pseudo-labels: label-free).
COTRAIN_CS = (0.1, 1.0, 10.0, 100.0)
#: Folds of the cross-fitted relabeling, the seed of their split, and the classifiers' inverse regularisation.
CROSSFIT_FOLDS, CROSSFIT_SEED, CROSSFIT_C = 5, 0, 1.0
#: The views k-means clusters (the oracle geometry table).
KMEANS_VIEWS = ("Z", "X", "Q whitened")


# --- the oracle: true labels as the plan ---------------------------------------------------------
class TrueLabelPool(ArrayPool):
    """An :class:`ArrayPool` whose "mining" returns the pool's true labels as a one-hot plan (an oracle).

    Parameters
    ----------
    Q, X, Y, V, config
        As :class:`gpua.fitting.ArrayPool`.
    labels : int array of shape (n_samples,)
        The pool's true classes.
    """

    def __init__(self, Q, X, Y, V, config, labels):
        super().__init__(Q, X, Y, V, config)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def mine(self, score_map, callback) -> Mined:
        if score_map is not None:
            raise RuntimeError("the true-label oracle runs without self-learning (its re-mining would replace the labels)")
        P = torch.nn.functional.one_hot(self.labels, self.Y.shape[0]).to(device=self.Q.device, dtype=self.Q.dtype)
        return Mined(self.labels.clone(), torch.ones(len(self.labels)), class_centres(self.Q, P), [], True, payload=P)


def image_independent_noise(labels: np.ndarray, pseudo: np.ndarray, n_classes: int, kind: str, seed: int) -> np.ndarray:
    """ORACLE: ``labels`` made exactly as wrong as ``pseudo``, on images drawn at random.

    Parameters
    ----------
    labels : int array of shape (n_samples,)
        The pool's true classes.
    pseudo : int array of shape (n_samples,)
        A method's pseudo-labels on the same rows; only their number of errors (``"uniform"``)
        or their confusion matrix (``"confusion"``) is kept, not which rows they get wrong.
    n_classes : int
    kind : {"uniform", "confusion"}
        ``"uniform"``: as many rows as ``pseudo`` gets wrong, drawn at random, each given a
        uniformly drawn other class. ``"confusion"``: within each true class, ``pseudo``'s labels
        of that class's rows shuffled among them, so the confusion matrix ``M[c, k] = #{labels =
        c, pseudo = k}`` is ``pseudo``'s exactly, on other images of each class.
    seed : int
        Seeds the draws.

    Returns
    -------
    int array of shape (n_samples,)
    """
    rng = np.random.default_rng(seed)
    labels, pseudo = np.asarray(labels), np.asarray(pseudo)
    noisy = labels.copy()
    if kind == "uniform":
        wrong = rng.choice(len(labels), int(np.sum(pseudo != labels)), replace=False)
        noisy[wrong] = (labels[wrong] + rng.integers(1, n_classes, len(wrong))) % n_classes
        return noisy
    if kind != "confusion":
        raise ValueError(f"kind must be 'uniform' or 'confusion', not {kind!r}")
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        noisy[rows] = pseudo[rng.permutation(rows)]
    return noisy


# --- the Gaussian miner ---------------------------------------------------------------------------
def principal_subspace(Q: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool's mean and top principal directions (PCA by SVD of the centred rows, float64).

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
    n_components : int
        Clipped to ``min(n_samples, d_q)``.

    Returns
    -------
    mean : tensor of shape (d_q,)
    basis : tensor of shape (d_q, m), orthonormal columns, by decreasing variance
    """
    Qd = Q.double()
    mean = Qd.mean(0)
    _, _, Vh = torch.linalg.svd(Qd - mean, full_matrices=False)
    return mean, Vh[: min(int(n_components), *Q.shape)].T


@dataclass
class GaussianMixture:
    """A shared-covariance Gaussian mixture (:func:`gaussian_mixture_em`); all float64."""

    means: torch.Tensor  # (n_classes, m)
    chol: torch.Tensor  # (m, m): Cholesky factor of the shared covariance
    log_prior: torch.Tensor  # (n_classes,)
    resp: torch.Tensor  # (n_samples, n_classes): the last E-step's responsibilities
    n_iter: int
    converged: bool


def mixture_log_posterior(F: torch.Tensor, means: torch.Tensor, chol: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    r"""Log posterior of each class under a shared-covariance Gaussian mixture (LDA's discriminant).

    .. math::
        \log p(k \mid f) = \log \pi_k - \tfrac12 (f - \mu_k)^\top \Sigma^{-1} (f - \mu_k) - \log Z(f)

    (the shared :math:`\log\det\Sigma` cancels in the normalisation).

    Parameters
    ----------
    F : tensor of shape (n_samples, m)
    means : tensor of shape (n_classes, m)
    chol : tensor of shape (m, m)
        Lower Cholesky factor :math:`L` of :math:`\Sigma = L L^\top`.
    log_prior : tensor of shape (n_classes,)

    Returns
    -------
    tensor of shape (n_samples, n_classes), float64, rows log-normalised
    """
    A = torch.linalg.solve_triangular(chol, F.double().T, upper=False).T  # whitened rows L^{-1} f
    B = torch.linalg.solve_triangular(chol, means.T, upper=False).T
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return torch.log_softmax(log_prior[None, :] - 0.5 * d2, dim=1)


def gaussian_mixture_em(F: torch.Tensor, R0: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-4,
                        reg: float = 1e-4) -> GaussianMixture:
    r"""EM for a Gaussian mixture with one covariance shared by the classes (LDA-style), from responsibilities.

    The Gaussian mixture term of TransCLIP (Zanella, Gérin & Ben Ayed, "Boosting Vision-Language
    Models with Transduction", CVPR 2024 / NeurIPS 2024), without its Laplacian (and without its
    KL term to the zero-shot posterior: the start ``R0``, a UCM plan, carries the text signal).
    Here the shared covariance is full (LDA), in a low-dimensional principal subspace. Alternates

    .. math::
        N_k = \sum_i r_{ik},\quad \pi_k = N_k / n,\quad \mu_k = \frac{\sum_i r_{ik} f_i}{N_k},\quad
        \Sigma = \frac1n \sum_{ik} r_{ik} (f_i - \mu_k)(f_i - \mu_k)^\top + \delta I,\\
        r_{ik} \propto \pi_k\, \mathcal N(f_i; \mu_k, \Sigma),

    (M-step first, from ``R0``), :math:`\delta` = ``reg`` times the mean variance, until the
    responsibilities move less than ``tol`` (:math:`\tfrac{1}{2n}\sum_{ik} |r_{ik} - r^{\mathrm{old}}_{ik}|`)
    or after ``max_iter`` E-steps.

    Parameters
    ----------
    F : tensor of shape (n_samples, m)
        The pool's rows in the subspace.
    R0 : tensor of shape (n_samples, n_classes)
        Starting responsibilities (rows summing to one: a UCM plan).
    max_iter : int
    tol : float
    reg : float
        Ridge on the covariance, relative to its mean variance.

    Returns
    -------
    GaussianMixture
    """
    F = F.double()
    R = R0.double() / R0.double().sum(1, keepdim=True).clamp_min(1e-300)
    n, m = F.shape
    G = F.T @ F
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        Nk = R.sum(0)
        means = (R.T @ F) / Nk.clamp_min(1e-12)[:, None]
        cov = (G - (means.T * Nk) @ means) / n  # sum_ik r_ik (f_i - mu_k)(f_i - mu_k)^T / n, rows of R summing to 1
        cov = 0.5 * (cov + cov.T) + reg * float(torch.diagonal(cov).mean().clamp_min(1e-12)) * torch.eye(m, dtype=F.dtype)
        chol = torch.linalg.cholesky(cov)
        log_prior = torch.log((Nk / n).clamp_min(1e-300))
        R_new = mixture_log_posterior(F, means, chol, log_prior).exp()
        change = 0.5 * float((R_new - R).abs().sum()) / n
        R = R_new
        if change < tol:
            converged = True
            break
    return GaussianMixture(means, chol, log_prior, R, it, converged)


class GaussianPool(ArrayPool):
    """An :class:`ArrayPool` whose every mining is UCM followed by :func:`gaussian_mixture_em` from its plan.

    The mixture lives in the pool's top ``n_components`` principal directions of the (whitened)
    query :math:`Q`; its responsibilities are the plan Procrustes and refinement fit to. The
    first mining's mixture is kept (``first``) for the classifier row.
    """

    def __init__(self, Q, X, Y, V, config, n_components: int = GAUSSIAN_COMPONENTS):
        super().__init__(Q, X, Y, V, config)
        self.mean, self.basis = principal_subspace(Q, n_components)
        self.F = (Q.double() - self.mean) @ self.basis
        self.first: GaussianMixture | None = None
        self.first_ucm_labels: torch.Tensor | None = None
        self.minings: list[dict] = []

    def project(self, Q: torch.Tensor) -> torch.Tensor:
        return (Q.double() - self.mean) @ self.basis

    def mine(self, score_map, callback) -> Mined:
        ucm = super().mine(score_map, callback)
        mix = gaussian_mixture_em(self.F, ucm.payload)
        if self.first is None:
            self.first, self.first_ucm_labels = mix, ucm.labels
        self.minings.append({"em_iter": mix.n_iter, "em_converged": mix.converged,
                             "labels_changed_by_em": float((mix.resp.argmax(1).cpu() != ucm.labels).double().mean())})
        P = mix.resp.to(self.Q.dtype)
        conf, labels = P.max(1)
        return Mined(labels.cpu(), conf.cpu(), class_centres(self.Q, P), ucm.history, ucm.converged, payload=P)

    def classify(self, Q: torch.Tensor) -> np.ndarray:
        """The first mixture's MAP classes of query rows ``Q`` (n, d_q): the classifier row, no map."""
        mix = self.first
        return mixture_log_posterior(self.project(Q), mix.means, mix.chol, mix.log_prior).argmax(1).cpu().numpy()


# --- kNN label propagation ------------------------------------------------------------------------
def knn_graph(V: torch.Tensor, k: int = KNN_K, power: float = KNN_POWER) -> torch.Tensor:
    r"""Symmetrically normalised affinity of a symmetric cosine kNN graph, dense.

    :math:`A_{ij} = \max(0, v_i^\top v_j)^\gamma` for the :math:`k` nearest neighbours :math:`j`
    of :math:`i` (itself excluded), 0 elsewhere; :math:`W = A + A^\top`;
    :math:`S = D^{-1/2} W D^{-1/2}`, :math:`D = \mathrm{diag}(W \mathbf 1)`. The power
    :math:`\gamma` = ``power`` is Iscen et al.'s ("Label Propagation for Deep Semi-supervised
    Learning", CVPR 2019), which ZLaP (Stojnic, Kalantidis & Tolias, CVPR 2024) follows.

    Parameters
    ----------
    V : tensor of shape (n_samples, d)
        Rows L2-normalised.
    k : int
    power : float

    Returns
    -------
    S : tensor of shape (n_samples, n_samples), float64, symmetric
    """
    Vd = V.double()
    sims = Vd @ Vd.T
    sims.fill_diagonal_(float("-inf"))
    top = sims.topk(min(int(k), V.shape[0] - 1), dim=1)
    A = torch.zeros_like(sims)
    A.scatter_(1, top.indices, top.values.clamp_min(0.0).pow(power))
    W = A + A.T
    d = W.sum(1).clamp_min(1e-12).rsqrt()
    return d[:, None] * W * d[None, :]


def label_propagation(S: torch.Tensor, P0: torch.Tensor, alpha: float = PROPAGATION_ALPHA,
                      lu: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    r"""Zhou et al.'s label spreading of a soft labelling, closed form, rows renormalised.

    .. math::
        F = (1 - \alpha)(I - \alpha S)^{-1} P_0,\qquad P_{ik} = F_{ik} / \textstyle\sum_l F_{il}

    (Zhou, Bousquet, Lal, Weston & Schölkopf, "Learning with Local and Global Consistency",
    NeurIPS 2004; ZLaP, Stojnic et al., CVPR 2024, propagates zero-shot CLIP labels so). ``F``
    is the fixed point of :math:`F = \alpha S F + (1 - \alpha) P_0`; non-negative, as
    :math:`(I - \alpha S)^{-1} = \sum_t \alpha^t S^t`.

    Parameters
    ----------
    S : tensor of shape (n_samples, n_samples)
        :func:`knn_graph`.
    P0 : tensor of shape (n_samples, n_classes)
        The labelling to spread (a UCM plan).
    alpha : float in (0, 1)
    lu : (LU, pivots), optional
        :func:`torch.linalg.lu_factor` of :math:`I - \alpha S`, to reuse across calls.

    Returns
    -------
    P : tensor of shape (n_samples, n_classes), float64, rows summing to one
    """
    if lu is None:
        lu = torch.linalg.lu_factor(torch.eye(S.shape[0], dtype=torch.float64) - alpha * S.double())
    F = (1.0 - alpha) * torch.linalg.lu_solve(*lu, P0.double().cpu())
    F = F.clamp_min(0.0)
    return F / F.sum(1, keepdim=True).clamp_min(1e-300)


class PropagationPool(ArrayPool):
    """An :class:`ArrayPool` whose every mining is UCM followed by :func:`label_propagation` of its plan.

    The graph is the pool's VFM rows ``V_graph`` (normalised, centred as the fit centres them);
    the propagated plan is what Procrustes and refinement fit to.
    """

    def __init__(self, Q, X, Y, V, config, V_graph: torch.Tensor, k: int = KNN_K, alpha: float = PROPAGATION_ALPHA):
        super().__init__(Q, X, Y, V, config)
        self.S = knn_graph(V_graph.cpu(), k)
        self.alpha = alpha
        self.lu = torch.linalg.lu_factor(torch.eye(self.S.shape[0], dtype=torch.float64) - alpha * self.S)
        self.first_ucm_labels: torch.Tensor | None = None
        self.first_labels: torch.Tensor | None = None
        self.minings: list[dict] = []

    def mine(self, score_map, callback) -> Mined:
        ucm = super().mine(score_map, callback)
        P = label_propagation(self.S, ucm.payload, self.alpha, self.lu).to(device=self.Q.device, dtype=self.Q.dtype)
        conf, labels = P.max(1)
        if self.first_labels is None:
            self.first_ucm_labels, self.first_labels = ucm.labels, labels.cpu()
        self.minings.append({"labels_changed_by_propagation": float((labels.cpu() != ucm.labels).double().mean())})
        return Mined(labels.cpu(), conf.cpu(), class_centres(self.Q, P), ucm.history, ucm.converged, payload=P)


# --- co-training ----------------------------------------------------------------------------------
def cotrain_classifier(pool, *, Cs=COTRAIN_CS, max_iter: int = 3000):
    r"""One co-training step from the VLM view to the VFM view: a classifier of the VFM rows.

    Blum & Mitchell's co-training ("Combining Labeled and Unlabeled Data with Co-Training",
    COLT 1998), one step: the VLM view labels the pool (its centred zero-shot argmax, the image
    rows centred on the pool mean of the normalised X, the prototypes on their own mean, as
    :func:`gpua.query.centre_rows` and :func:`gpua.query.target_prototypes`), and a multinomial
    logistic regression on the L2-normalised VFM rows :math:`Z` learns them. Its inverse
    regularisation :math:`C` is chosen label-free, by 5-fold cross-validated agreement with
    those same pseudo-labels (the first best of ``Cs``).

    Parameters
    ----------
    pool : FeatureSet
        The unlabeled pool (its labels are not read).
    Cs : sequence of float
        The :math:`C` grid.
    max_iter : int
        L-BFGS iterations of the logistic regression.

    Returns
    -------
    predict : callable
        ``FeatureSet -> int array``: the classifier on a split's VFM rows.
    pseudo : int array of shape (n_samples,)
        The zero-shot labels it was trained on.
    C : float
        The chosen :math:`C`.
    """
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from headroom import centred_zero_shot_scores

    pseudo = centred_zero_shot_scores(pool, pool_mean(float_tensor(pool.vlm_features))).argmax(1).numpy()

    def rows(fs) -> np.ndarray:
        return torch.nn.functional.normalize(float_tensor(fs.vfm_features), dim=1).numpy()

    Zp = rows(pool)
    with warnings.catch_warnings():  # a pseudo-class with fewer rows than folds: sklearn says so; not an error
        warnings.filterwarnings("ignore", message="The least populated class")
        agreement = [cross_val_score(LogisticRegression(C=C, max_iter=max_iter), Zp, pseudo, cv=5, scoring="accuracy").mean()
                     for C in Cs]
    C = float(Cs[int(np.argmax(agreement))])  # the first best: the most regularised of equals
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(Zp, pseudo)
    return (lambda fs: clf.predict(rows(fs))), pseudo, C


# --- cross-fitted relabeling ----------------------------------------------------------------------
def _rows_normalised(P: torch.Tensor) -> torch.Tensor:
    return P / P.sum(1, keepdim=True).clamp_min(1e-300)


def soft_logreg(F: torch.Tensor, T: torch.Tensor, C: float = CROSSFIT_C, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Multinomial logistic regression on soft targets, L2 penalty as scikit-learn's ``C``.

    Minimises, by full-batch L-BFGS (strong Wolfe line search) in float64 from zero,

    .. math::
        \frac1n \Big[ -\sum_i \sum_k T_{ik} \log \mathrm{softmax}(f_i^\top W + b)_k
        + \frac{1}{2C} \|W\|_F^2 \Big],

    scikit-learn's objective :math:`C \sum_i \mathrm{CE}_i + \tfrac12 \|W\|_F^2` divided by
    :math:`Cn`, with soft targets (the intercept :math:`b` unpenalised).

    Parameters
    ----------
    F : tensor of shape (n_samples, d)
    T : tensor of shape (n_samples, n_classes)
        Rows summing to one.
    C : float
        Inverse regularisation.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    W : tensor of shape (d, n_classes), float64
    b : tensor of shape (n_classes,), float64
    """
    F, T = F.double(), T.double()
    n, d = F.shape
    W = torch.zeros(d, T.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(T.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(T * torch.log_softmax(F @ W + b, dim=1)).sum() / n + (W * W).sum() / (2.0 * C * n)
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def logreg_probs(F_train: torch.Tensor, T_train: torch.Tensor, F_test: torch.Tensor, C: float = CROSSFIT_C) -> torch.Tensor:
    r""":func:`soft_logreg` fitted on ``(F_train, T_train)``; its class probabilities of ``F_test``.

    .. math::
        O_{ik} = \mathrm{softmax}(f_i^\top W + b)_k,\qquad (W, b) = \mathrm{soft\_logreg}(F_{\mathrm{train}}, T_{\mathrm{train}}, C)

    Parameters
    ----------
    F_train : tensor of shape (n_train, d), float64
    T_train : tensor of shape (n_train, n_classes), float64
        Rows summing to one.
    F_test : tensor of shape (n_test, d), float64
    C : float

    Returns
    -------
    tensor of shape (n_test, n_classes), float64, rows summing to one
    """
    W, b = soft_logreg(F_train, T_train, C)
    return torch.softmax(F_test @ W + b, dim=1)


def ridge_probs(F_train: torch.Tensor, T_train: torch.Tensor, F_test: torch.Tensor, C: float = CROSSFIT_C) -> torch.Tensor:
    r"""Ridge regression of ``T_train`` on ``[F_train, 1]``; its scores of ``F_test`` clipped and renormalised.

    With :math:`A = [F_{\mathrm{train}}, \mathbf 1]` and :math:`\Lambda = \mathrm{diag}(1, \dots, 1, 0)`
    (the intercept unpenalised),

    .. math::
        B = \big(A^\top A + \Lambda / C\big)^{-1} A^\top T_{\mathrm{train}},\qquad
        S = \max\big([F_{\mathrm{test}}, \mathbf 1]\, B,\ 10^{-6}\big),\qquad
        O_{ik} = S_{ik} / \textstyle\sum_l S_{il}.

    Parameters
    ----------
    F_train : tensor of shape (n_train, d), float64
    T_train : tensor of shape (n_train, n_classes), float64
    F_test : tensor of shape (n_test, d), float64
    C : float
        Inverse ridge penalty.

    Returns
    -------
    tensor of shape (n_test, n_classes), float64, rows summing to one
    """
    A = torch.cat([F_train, torch.ones(F_train.shape[0], 1, dtype=torch.float64)], 1)
    reg = torch.eye(A.shape[1], dtype=torch.float64) / C
    reg[-1, -1] = 0.0
    B = torch.linalg.solve(A.T @ A + reg, A.T @ T_train)
    S = (torch.cat([F_test, torch.ones(F_test.shape[0], 1, dtype=torch.float64)], 1) @ B).clamp_min(1e-6)
    return S / S.sum(1, keepdim=True)


#: The classifiers of the relabeling: ``(F_train, T_train, F_test) -> probabilities of F_test``.
CROSSFIT_CLASSIFIERS = {"logreg": logreg_probs, "ridge": ridge_probs}
#: The relabeling methods: name -> (classifier, cross-fitted?).
CROSSFIT_METHODS = {"crossfit_logreg": ("logreg", True), "crossfit_ridge": ("ridge", True), "ridge_projection": ("ridge", False)}


def out_of_fold_probs(F: torch.Tensor, P: torch.Tensor, classify: Callable = logreg_probs, *,
                      folds: int = CROSSFIT_FOLDS, seed: int = CROSSFIT_SEED) -> torch.Tensor:
    r"""Every row's class probabilities from a classifier trained on the other folds' rows, with ``P`` as targets.

    The rows are split at random (``seed``) into ``folds`` folds :math:`I_1, \dots, I_F` of equal
    size (to one row); with :math:`g` = ``classify`` and :math:`\bar P` the rows of ``P``
    normalised to sum to one,

    .. math::
        O_{I_f} = g\big(F_{-I_f},\ \bar P_{-I_f},\ F_{I_f}\big),\qquad f = 1, \dots, F,

    so no row's probabilities depend on its own target.

    Parameters
    ----------
    F : tensor of shape (n_samples, d)
    P : tensor of shape (n_samples, n_classes)
        The labelling to learn (a plan); non-negative rows.
    classify : callable
        :func:`logreg_probs` or :func:`ridge_probs` (or one like them).
    folds : int
    seed : int
        The split's generator seed.

    Returns
    -------
    O : tensor of shape (n_samples, n_classes), float64
    """
    n, K = P.shape
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[perm] = torch.arange(n) % folds
    F, P = F.double(), P.double()
    out = torch.zeros(n, K, dtype=torch.float64)
    for f in range(folds):
        test, train = fold_of == f, fold_of != f
        out[test] = classify(F[train], _rows_normalised(P[train]), F[test])
    return out


def in_sample_probs(F: torch.Tensor, P: torch.Tensor, classify: Callable = ridge_probs) -> torch.Tensor:
    r"""The control of :func:`out_of_fold_probs`: the classifier trained on all rows labels the same rows.

    .. math::
        O = g\big(F,\ \bar P,\ F\big)

    (for :func:`ridge_probs`, :math:`\bar P`'s projection on the linear functions of :math:`F`,
    shrunk, clipped and renormalised).

    Parameters
    ----------
    F : tensor of shape (n_samples, d)
    P : tensor of shape (n_samples, n_classes)
    classify : callable

    Returns
    -------
    O : tensor of shape (n_samples, n_classes), float64
    """
    F = F.double()
    return classify(F, _rows_normalised(P.double()), F)


class CrossFitPool(ArrayPool):
    """An :class:`ArrayPool` whose every mining is UCM followed by relabeling its plan with a linear classifier.

    The classifier's rows are the pool's whitened query standardised per column; its targets the
    plan (rows normalised). With ``cross_fit`` the plan is replaced by :func:`out_of_fold_probs`
    (the fold split is the same in every mining), without by :func:`in_sample_probs`; rows
    renormalised, it is what Procrustes and refinement fit to. The pool's labels are not read.

    Parameters
    ----------
    Q, X, Y, V, config
        As :class:`gpua.fitting.ArrayPool`.
    classifier : {"logreg", "ridge"}
        :data:`CROSSFIT_CLASSIFIERS`.
    cross_fit : bool
    C : float
        The classifier's inverse regularisation.
    """

    def __init__(self, Q, X, Y, V, config, classifier: str = "logreg", cross_fit: bool = True, C: float = CROSSFIT_C):
        super().__init__(Q, X, Y, V, config)
        Qd = Q.double().cpu()
        self.F = (Qd - Qd.mean(0)) / Qd.std(0).clamp_min(1e-12)
        base = CROSSFIT_CLASSIFIERS[classifier]
        self.classify = lambda F_train, T_train, F_test: base(F_train, T_train, F_test, C)
        self.cross_fit = bool(cross_fit)
        self.first_ucm_labels: torch.Tensor | None = None
        self.first_labels: torch.Tensor | None = None
        self.minings: list[dict] = []

    def mine(self, score_map, callback) -> Mined:
        ucm = super().mine(score_map, callback)
        plan = _rows_normalised(ucm.payload.double().cpu())
        if self.cross_fit:
            O = out_of_fold_probs(self.F, plan, self.classify)
        else:
            O = in_sample_probs(self.F, plan, self.classify)
        P = _rows_normalised(O).to(device=self.Q.device, dtype=self.Q.dtype)
        conf, labels = P.max(1)
        if self.first_labels is None:
            self.first_ucm_labels, self.first_labels = ucm.labels, labels.cpu()
        self.minings.append({"labels_changed_by_relabeling": float((labels.cpu() != ucm.labels).double().mean())})
        return Mined(labels.cpu(), conf.cpu(), class_centres(self.Q, P), ucm.history, ucm.converged, payload=P)


# --- scoring --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """A fitted method: how it labels a split, its pool pseudo-labels, its fit time, and extras for the JSON."""

    predict: Callable[[Any], np.ndarray]
    pseudo: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)


def _accuracy(pred, labels) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def score(ds, method: str, seed: int, outcome: Outcome) -> dict:
    """One row: test, dev (the dev split, or the pool for CIFAR), pl and pool accuracies (fractions)."""
    pool_acc = _accuracy(outcome.predict(ds.pool), ds.pool.labels)
    return {
        "set": ds.name, "seed": seed, "method": method, "oracle": method in ORACLE_METHODS,
        "test": _accuracy(outcome.predict(ds.test), ds.test.labels),
        "dev": _accuracy(outcome.predict(ds.dev), ds.dev.labels) if ds.dev is not None else pool_acc,
        "pl": _accuracy(outcome.pseudo, ds.pool.labels), "pool": pool_acc, "fit_seconds": outcome.seconds,
        **outcome.extra,
    }


def _model_outcome(model: GPUA, seconds: float, extra: dict | None = None) -> Outcome:
    return Outcome(lambda fs: model.predict(fs.vfm_features, fs.vlm_features), np.asarray(model.pseudo_labels_), seconds, extra or {})


def _self_learning(model: GPUA) -> dict:
    rounds = model.history_.get("self_learning", [])
    return {"self_learning_kept": sum(1 for r in rounds[1:] if r["kept"])}


def fit_gpua(pool, seed: int) -> Outcome:
    """The baseline row: ``GPUA(random_state=seed)`` as it is (on the ``--base`` parameters)."""
    t0 = time.perf_counter()
    model = GPUA(**base_params(seed)).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes, classnames=pool.classnames)
    return _model_outcome(model, time.perf_counter() - t0, _self_learning(model))


def fit_true_labels(pool, seed: int, labels: np.ndarray | None = None) -> Outcome:
    """ORACLE: today's pipeline with the pool's true labels (or ``labels``) as the plan, no self-learning."""
    t0 = time.perf_counter()
    prep = prepare(GPUA(**base_params(seed, self_learning=0)).get_params(), pool)
    model = fit_with(prep, TrueLabelPool(*prep.rows(), labels=pool.labels if labels is None else labels))
    return _model_outcome(model, time.perf_counter() - t0)


def fit_noisy_labels(pool, seed: int, kind: str, pseudo: np.ndarray) -> Outcome:
    """ORACLE: :func:`fit_true_labels` on the true labels corrupted exactly as often as ``pseudo`` errs
    (:func:`image_independent_noise`); ``label_accuracy`` records how right the drawn labels are."""
    labels = image_independent_noise(pool.labels, pseudo, len(pool.text_prototypes), kind, seed)
    outcome = fit_true_labels(pool, seed, labels)
    outcome.extra["label_accuracy"] = _accuracy(labels, pool.labels)
    return outcome


def fit_gaussian(pool, seed: int, with_map: bool = True) -> tuple[Outcome | None, Outcome]:
    """``gaussian_miner`` (None unless ``with_map``) and ``gaussian_classifier``, from one :class:`GaussianPool`."""
    t0 = time.perf_counter()
    prep = prepare(GPUA(**base_params(seed)).get_params(), pool)
    driver = GaussianPool(*prep.rows())
    miner = None
    if with_map:
        model = fit_with(prep, driver)
        miner = _model_outcome(model, time.perf_counter() - t0, {
            "first_pl_ucm": _accuracy(driver.first_ucm_labels.numpy(), pool.labels),
            "first_pl_lever": _accuracy(driver.first.resp.argmax(1).cpu().numpy(), pool.labels),
            "minings": driver.minings, **_self_learning(model)})
    else:
        driver.mine(None, None)
    classifier = Outcome(lambda fs: driver.classify(prep.query(fs)), driver.first.resp.argmax(1).cpu().numpy(),
                         time.perf_counter() - t0, {"em_iter": driver.first.n_iter, "em_converged": driver.first.converged})
    return miner, classifier


def fit_propagation(pool, seed: int, graph: str = "vfm") -> Outcome:
    """``knn_propagation`` (``graph="vfm"``: the VFM rows) and ``knn_propagation_query`` (``"query"``: the
    whitened fused query the fit maps): every UCM plan spread over that kNN graph, then today's
    Procrustes and refinement."""
    t0 = time.perf_counter()
    prep = prepare(GPUA(**base_params(seed)).get_params(), pool)
    driver = PropagationPool(*prep.rows(), V_graph=prep.vfm_rows(pool) if graph == "vfm" else prep.pool.Q)
    model = fit_with(prep, driver)
    return _model_outcome(model, time.perf_counter() - t0, {
        "first_pl_ucm": _accuracy(driver.first_ucm_labels.numpy(), pool.labels),
        "first_pl_lever": _accuracy(driver.first_labels.numpy(), pool.labels),
        "minings": driver.minings, **_self_learning(model)})


def fit_crossfit(pool, seed: int, method: str) -> Outcome:
    """``crossfit_logreg``, ``crossfit_ridge`` or ``ridge_projection`` (:data:`CROSSFIT_METHODS`): every UCM plan
    relabeled by a :class:`CrossFitPool`, then today's Procrustes and refinement.

    The relabeling starts from UCM's plan as mined (``plan_ridge=None`` under ``--base``): it takes
    the place of the package's own projection (``ridge_projection`` is its prototype, in float64)."""
    classifier, cross_fit = CROSSFIT_METHODS[method]
    t0 = time.perf_counter()
    prep = prepare(GPUA(**base_params(seed, plan_ridge=None)).get_params(), pool)
    driver = CrossFitPool(*prep.rows(), classifier=classifier, cross_fit=cross_fit)
    model = fit_with(prep, driver)
    return _model_outcome(model, time.perf_counter() - t0, {
        "first_pl_ucm": _accuracy(driver.first_ucm_labels.numpy(), pool.labels),
        "first_pl_lever": _accuracy(driver.first_labels.numpy(), pool.labels),
        "minings": driver.minings, **_self_learning(model)})


def fit_cotrain(pool) -> Outcome:
    """``cotrain``: :func:`cotrain_classifier`."""
    t0 = time.perf_counter()
    predict, pseudo, C = cotrain_classifier(pool)
    return Outcome(predict, pseudo, time.perf_counter() - t0, {"C": C})


def run_methods(ds, methods: list[str], seed: int) -> dict[str, Outcome]:
    """Fit every method of ``methods`` on ``ds.pool`` (its labels only for the oracle) with ``random_state=seed``."""
    pool = ds.pool
    out: dict[str, Outcome] = {}
    if "gpua" in methods:
        out["gpua"] = fit_gpua(pool, seed)
    if "true_labels" in methods:
        out["true_labels"] = fit_true_labels(pool, seed)
    for m, kind in NOISY_LABEL_METHODS.items():
        if m in methods:
            if "gpua" not in out:  # the noise copies the gpua row's error rates
                out["gpua"] = fit_gpua(pool, seed)
            out[m] = fit_noisy_labels(pool, seed, kind, out["gpua"].pseudo)
    if "gaussian_miner" in methods or "gaussian_classifier" in methods:
        out["gaussian_miner"], out["gaussian_classifier"] = fit_gaussian(pool, seed, "gaussian_miner" in methods)
    if "knn_propagation" in methods:
        out["knn_propagation"] = fit_propagation(pool, seed)
    if "knn_propagation_query" in methods:
        out["knn_propagation_query"] = fit_propagation(pool, seed, graph="query")
    if "cotrain" in methods:
        out["cotrain"] = fit_cotrain(pool)
    for m in CROSSFIT_METHODS:
        if m in methods:
            out[m] = fit_crossfit(pool, seed, m)
    return {m: out[m] for m in methods}


def kmeans_geometry(pool, labels_for_naming: np.ndarray) -> dict[str, float]:
    """ORACLE: pool accuracy of k-means on Z, X and the whitened query, clusters named with the pool's labels."""
    from headroom import matched_clusters

    prep = prepare(GPUA(**base_params(0)).get_params(), pool)
    normalize = torch.nn.functional.normalize
    views = {"Z": normalize(float_tensor(pool.vfm_features), dim=1), "X": normalize(float_tensor(pool.vlm_features), dim=1),
             "Q whitened": prep.pool.Q.cpu()}
    K = len(pool.text_prototypes)
    return {name: matched_clusters(V.double().numpy(), labels_for_naming, K) for name, V in views.items()}


# --- summaries and tables -------------------------------------------------------------------------
FIELDS = ("test", "dev", "pl", "pool", "fit_seconds")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (set, method), in first-seen order."""
    out = []
    for s, m in dict.fromkeys((r["set"], r["method"]) for r in rows):
        group = [r for r in rows if (r["set"], r["method"]) == (s, m)]
        entry = {"set": s, "method": m, "oracle": m in ORACLE_METHODS, "seeds": [r["seed"] for r in group]}
        for f in FIELDS:
            vals = np.array([r[f] for r in group], dtype=float)
            entry[f], entry[f"{f}_std"] = float(vals.mean()), float(vals.std())
        out.append(entry)
    return out


def mean_over_real_sets(summary: list[dict]) -> dict[str, dict]:
    """Per method: the mean dev and test over the real sets it ran on (``n_sets`` says how many of the four)."""
    out = {}
    for m in dict.fromkeys(e["method"] for e in summary):
        group = [e for e in summary if e["method"] == m and e["set"] in REAL_SETS]
        if group:
            out[m] = {"dev": float(np.mean([e["dev"] for e in group])), "test": float(np.mean([e["test"] for e in group])),
                      "n_sets": len(group), "sets": [e["set"] for e in group], "oracle": m in ORACLE_METHODS}
    return out


def _label(method: str) -> str:
    return f"{method} (ORACLE)" if method in ORACLE_METHODS else method


def table(summary: list[dict], means: dict[str, dict], notes: dict[str, str]) -> str:
    """The per-set tables (test / dev / pl / pool) and the mean dev over the real sets."""
    lines = []
    for s in dict.fromkeys(e["set"] for e in summary):
        group = [e for e in summary if e["set"] == s]
        n = len(group[0]["seeds"])
        base = next((e for e in group if e["method"] == "gpua"), None)
        lines += ["", f"{s}  (dev: {notes[s]}; {n} seed{'s' if n > 1 else ''}, mean" + (" ± std)" if n > 1 else ")"), "",
                  "| method | test | dev | dev vs gpua | pseudo-labels (pool) | pool (transductive) | fit s |",
                  "|---|---|---|---|---|---|---|"]

        def cell(e, f):
            return f"{100 * e[f]:.2f}" + (f" ± {100 * e[f + '_std']:.2f}" if n > 1 else "")

        for e in group:
            delta = "" if base is None or e is base else f"{100 * (e['dev'] - base['dev']):+.2f}"
            lines.append(f"| {_label(e['method'])} | {cell(e, 'test')} | {cell(e, 'dev')} | {delta} | {cell(e, 'pl')} | "
                         f"{cell(e, 'pool')} | {e['fit_seconds']:.1f} |")
    if means:
        base = means.get("gpua")
        lines += ["", "Mean over the real sets (dev criterion; test beside it, never used to choose)", "",
                  "| method | mean dev | vs gpua | mean test | real sets |", "|---|---|---|---|---|"]
        for m, e in means.items():
            comparable = base is not None and m != "gpua" and e["sets"] == base["sets"]
            delta = f"{100 * (e['dev'] - base['dev']):+.2f}" if comparable else ""
            lines.append(f"| {_label(m)} | {100 * e['dev']:.2f} | {delta} | {100 * e['test']:.2f} | {e['n_sets']} of {len(REAL_SETS)} |")
    return "\n".join(lines)


def kmeans_table(kmeans: dict[str, list[dict]], summary: list[dict]) -> str:
    """ORACLE: the k-means geometry per set (mean over seeds), beside GPUA's pseudo-labels when that row ran."""
    gpua_pl = {e["set"]: e["pl"] for e in summary if e["method"] == "gpua"}
    lines = ["", "ORACLE diagnostic: how much of the classes the pool's geometry holds (k-means, K clusters, top 64 "
             "principal directions, clusters named by the best one-to-one matching to the POOL'S LABELS; pool top-1 %)", "",
             "| set | " + " | ".join(f"k-means {v}" for v in KMEANS_VIEWS) + " | GPUA pseudo-labels |",
             "|---|" + "---|" * (len(KMEANS_VIEWS) + 1)]
    for s, per_seed in kmeans.items():
        cells = [f"{100 * np.mean([r[v] for r in per_seed]):.2f}" for v in KMEANS_VIEWS]
        pl = f"{100 * gpua_pl[s]:.2f}" if s in gpua_pl else ""
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {pl} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS} (the oracles: {ORACLE_METHODS})")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (GPUA's random_state; planted: also the data draw)")
    ap.add_argument("--kmeans", action=argparse.BooleanOptionalAction, default=True,
                    help="the ORACLE k-means geometry table (clusters named with the pool's labels)")
    ap.add_argument("--json", action=OutputPath, default=None, help="write every row, the means and the k-means figures here (atomically)")
    add_base_argument(ap)
    args = ap.parse_args(argv)
    set_base_params(ap, args)
    sets = chosen_sets(ap, args)
    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        ap.error(f"unknown method(s) {bad}; choose a comma-separated subset of {METHODS}")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    setup(args)
    t_start = time.perf_counter()
    rows, notes, kmeans = [], {}, {}
    devsets = cached_devset_seeds(sets, args.seeds, args.cache_dir)
    for s, seed, ds in devsets:
        notes[s] = ds.dev_note
        for m, outcome in run_methods(ds, methods, seed).items():
            row = score(ds, m, seed, outcome)
            rows.append(row)
            print(f"{s:14s} seed {seed}  {_label(m):22s} test {100 * row['test']:.2f}  dev {100 * row['dev']:.2f}  "
                  f"pl {100 * row['pl']:.2f}  pool {100 * row['pool']:.2f}  ({row['fit_seconds']:.1f} s)", flush=True)
        if args.kmeans:
            kmeans.setdefault(s, []).append({"seed": seed, **kmeans_geometry(ds.pool, ds.pool.labels)})
    devsets.finish(bool(rows), args.json)
    summary = summarise(rows)
    means = mean_over_real_sets(summary)
    print(table(summary, means, notes))
    if kmeans:
        print(kmeans_table(kmeans, summary))
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        write_json(args.json, {"args": {"sets": sets, "methods": methods, "seeds": args.seeds, "kmeans": args.kmeans, "base": base_params(0)},
                               "missing_sets": devsets.missing_sets,
                               "oracle_methods": list(ORACLE_METHODS), "rows": rows, "summary": summary,
                               "mean_over_real_sets": means, "kmeans_oracle": kmeans, "wall_seconds": wall})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
