"""Fit- and prediction-side levers of GPUA's map, each measured against today's ``GPUA()`` defaults.

The README's "what we tried" paragraphs cite figures for these levers from prototype scripts
kept outside the repository; this script rebuilds them as one re-runnable measurement. Every
lever changes one thing of ``GPUA(random_state=seed)`` (everything else at its default, or at
the ``--base`` parameters: ``--base '{"plan_ridge": null}'`` measures against the defaults before
the plan's ridge projection; same seed) and is scored as ``benchmarks/accuracy.py`` scores a method:

* ``test``: top-1 on the test split (reported; never used to choose anything);
* ``dev``: the criterion a lever would be chosen by: top-1 on the labelled dev split
  (Fashion-MNIST, planted) or, on CIFAR-10 (no dev split), the transductive top-1 on the pool
  scored with the pool's own labels;
* ``pl``: accuracy of the fit's pseudo-labels on the pool (a diagnostic; labels never reach a fit);
* ``pool``: the lever's own predictions on the pool (transductive top-1).

Methods (rows):

* ``gpua``: ``GPUA(random_state=seed)`` as it is (the baseline);
* ``confidence_weighted``: THS refinement with each pool row's loss weighted by its plan
  confidence, the mined plan's row maximum normalised to mean 1 (:func:`confidence_weights`);
* ``curriculum``: THS refinement on the rows whose plan confidence is in the top half of their
  pseudo-class only (:func:`confident_half`);
* ``seed_average``: every refinement run with seeds s, s+1, s+2 and the three maps averaged;
* ``procrustes_self_learning``: self-learning rounds that re-mine with the previous round's
  Procrustes map :math:`W_0` in place of its refined :math:`W`;
* ``reference_last_round``: the kept round's refinement redone the published code's way (400
  steps, batches of 75% of the pool drawn without replacement, no early stopping);
* ``zero_shot_ensemble``: at prediction, the mean of the map's cosine scores and the VLM's
  centred zero-shot cosine scores (:func:`zero_shot_ensemble_scores`);
* ``per_class_bias``: a per-class additive bias learned label-free on the pool, the class
  potential of a balanced Sinkhorn on the pool's mapped scores (:func:`balanced_class_bias`);
* ``prototype_reestimation``: InMaP-style prototypes re-estimated from the softly assigned
  mapped pool, one step (:func:`reestimated_prototypes`);
* ``transductive``: the fit on pool + test features together (no labels), predicting test and dev;
* ``csls``, ``pool_augment``: the GPUA parameters ``retrieval="csls"`` and ``pool_augment=2``;
* ``reference_map``: the published method's map stage (:class:`gpua.ReferenceGPUA`'s query
  :math:`[Z, X]`, hard Procrustes, identity pull, 400-step THS refinement) fitted on the pseudo-labels
  of the ``gpua`` fit (:func:`reference_map`): does the published map generalise beyond GPUA's
  labels as it does beyond its own?
* ``first_mining_lam``: the first mining at ``lam=0.9`` (the published weight of the VLM term),
  the self-learning re-minings at the default ``lam`` (:class:`FirstMiningLamPool`);
* ``lam_ensemble``: at prediction, the sum of the cosine scores of the ``gpua`` fit and of a
  second fit at ``lam=0.9`` (twice the fit time).

The fit-side levers subclass :class:`gpua.fitting.ArrayPool` (the in-memory fit driver) and run
the steps of :func:`gpua.fitting.fit_arrays` around it (:func:`_levers.fit_with_pool`); the
prediction-side levers (``zero_shot_ensemble``, ``per_class_bias``, ``prototype_reestimation``,
``reference_map``, ``lam_ensemble``) re-score or re-map the ``gpua`` fit of the same set and seed
(fits are deterministic given the seed), so their ``fit_seconds`` is that fit's plus their own
post-processing. ``--sets`` also takes the swapped CIFAR-10 sets (``benchmarks/devsets.py``:
fitted on the test photos, scoring the train photos; reported only, outside the mean dev).

    python benchmarks/map_levers.py --sets planted                       # quick
    python benchmarks/map_levers.py --sets cifar-lite2 --methods gpua,per_class_bias,zero_shot_ensemble
    python benchmarks/map_levers.py --seeds 1 --json docs/measurements/map_levers.json   # every set
    python benchmarks/map_levers.py --sets fmnist-dinov2,fmnist-lite2 --json results/fmnist.json   # a run per part...
    python benchmarks/map_levers.py --merge results/cifar.json results/fmnist.json --json results/map_levers.json  # ...joined

The printed tables give, per set, each method's test / dev / pl / pool and its dev change
against ``gpua``; then the mean dev over the four real sets per method (planted apart).
``--json`` gets every row (set, seed, method), the per-(set, method) means, and the mean dev per
method, with the machine record (``benchmarks/_harness.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from _harness import OutputPath, float_tensor, read_results, setup, write_json
from _levers import add_base_argument, base_params, fit_with_pool, set_base_params
from devsets import ALL_SETS, REAL_SETS, SETS, add_set_arguments, cached_devset_seeds, chosen_sets

from gpua import GPUA
from gpua.fitting import ArrayPool, FitConfig, FitState, Mined
from gpua.ot import sinkhorn
from gpua.query import centre_rows, target_prototypes
from gpua.refinement import RefineConfig, refine

METHODS = (
    "gpua", "confidence_weighted", "curriculum", "seed_average", "procrustes_self_learning", "reference_last_round",
    "zero_shot_ensemble", "per_class_bias", "prototype_reestimation", "transductive", "csls", "pool_augment",
    "reference_map", "first_mining_lam", "lam_ensemble",
)
#: Levers that are pure GPUA parameters.
PARAM_LEVERS = {"gpua": {}, "csls": {"retrieval": "csls"}, "pool_augment": {"pool_augment": 2}}
#: Levers applied at prediction to the ``gpua`` fit.
PREDICTION_LEVERS = ("zero_shot_ensemble", "per_class_bias", "prototype_reestimation", "reference_map", "lam_ensemble")
#: Refinement seeds averaged by ``seed_average``.
SEED_AVERAGE_RUNS = 3
#: The published code's refinement (``reference_last_round``): steps and batch fraction.
REFERENCE_STEPS, REFERENCE_BATCH_FRACTION = 400, 0.75
#: The VLM term's weight of ``first_mining_lam``'s first mining and of ``lam_ensemble``'s second fit (the published method's).
PUBLISHED_LAM = 0.9
normalize = torch.nn.functional.normalize


# --- pieces of the fit-side levers ------------------------------------------------------------
def confidence_weights(confidence: torch.Tensor) -> torch.Tensor:
    r"""Per-row weights of confidence-weighted pseudo-labels: the plan confidence normalised to mean 1.

    .. math:: w_i = \frac{c_i}{\frac1N \sum_j c_j}, \qquad c_i = \max_k P_{ik},

    as FixMatch (Sohn et al., NeurIPS 2020) and LFA's re-labelling (Ouali et al., ICCV 2023)
    weigh pseudo-labels by the model's confidence in them, softly instead of by a threshold.

    Parameters
    ----------
    confidence : tensor of shape (n_samples,)
        The mined plan's row maxima (rows sum to one).

    Returns
    -------
    tensor of shape (n_samples,), float32, mean 1
    """
    c = confidence.detach().float().cpu()
    return c / c.mean()


def confident_half(labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    r"""Rows whose plan confidence is in the top half of their pseudo-class (curriculum pseudo-labelling).

    Each pseudo-class :math:`k` with :math:`n_k` rows keeps its :math:`\lceil n_k / 2 \rceil` most
    confident rows, so every class keeps some rows and the class balance of the mined labels is
    kept: the per-class confident-subset selection of curriculum pseudo-labelling (Cascante-Bonilla
    et al., AAAI 2021) and of CLIP self-training methods that pick the top confident samples per
    class (e.g. Huang et al.'s UPL, 2022).

    Parameters
    ----------
    labels : int tensor of shape (n_samples,)
        Pseudo-labels.
    confidence : tensor of shape (n_samples,)

    Returns
    -------
    bool tensor of shape (n_samples,), CPU

    Examples
    --------
    >>> confident_half(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([.9, .2, .5, .3, .8])).tolist()
    [True, False, True, False, True]
    """
    labels, confidence = labels.cpu(), confidence.detach().cpu()
    keep = torch.zeros(labels.shape[0], dtype=torch.bool)
    for k in labels.unique():
        rows = (labels == k).nonzero()[:, 0]
        order = confidence[rows].argsort(descending=True, stable=True)
        keep[rows[order[: math.ceil(rows.numel() / 2)]]] = True
    return keep


class ConfidencePool(ArrayPool):
    """An :class:`~gpua.fitting.ArrayPool` that remembers the last mining's plan confidence.

    :func:`gpua.fitting.run_fit` always refines the correspondences it has just mined, so the
    confidence kept by :meth:`mine` is the one of the pseudo-labels :meth:`refine` receives.
    """

    confidence: torch.Tensor | None = None

    def mine(self, score_map, callback) -> Mined:
        mined = super().mine(score_map, callback)
        self.confidence = mined.confidence
        return mined


class ConfidenceWeightedPool(ConfidencePool):
    """THS refinement with each row's loss weighted by :func:`confidence_weights` (``confidence_weighted``)."""

    def refine(self, W0, labels, config: RefineConfig, callback):
        W, curve = refine(W0, self.Q.__getitem__, self.Q.shape[0], self.Y, labels, config,
                          sample_weight=confidence_weights(self.confidence))
        return W, curve, {"n_rows": 0}


class CurriculumPool(ConfidencePool):
    """THS refinement on :func:`confident_half` of the pool only (``curriculum``)."""

    def refine(self, W0, labels, config: RefineConfig, callback):
        W, curve = refine(W0, self.Q.__getitem__, self.Q.shape[0], self.Y, labels, config,
                          rows_kept=confident_half(labels, self.confidence))
        return W, curve, {"n_rows": 0}


class SeedAveragePool(ArrayPool):
    r"""Each refinement run with seeds :math:`s, s+1, s+2` and the maps averaged (``seed_average``).

    An ensemble of refinements (as weight averaging of fine-tuned models, Wortsman et al.'s model
    soups, ICML 2022, averages runs from one start): every run starts from the same Procrustes
    map :math:`W_0`, so the average stays in one basin.
    """

    def refine(self, W0, labels, config: RefineConfig, callback):
        runs = [super(SeedAveragePool, self).refine(W0, labels, replace(config, random_state=config.seed + j), callback)
                for j in range(SEED_AVERAGE_RUNS)]
        W = torch.stack([r[0] for r in runs]).mean(0)
        return W, runs[0][1], runs[0][2]


class ProcrustesSelfLearningPool(ArrayPool):
    r"""Self-learning rounds that re-mine with the previous round's Procrustes map (``procrustes_self_learning``).

    :func:`gpua.fitting.run_fit` re-mines with the refined map :math:`W` of the previous round;
    this driver swaps in that round's :math:`W_0` (VecMap's self-learning, Artetxe et al., ACL
    2018, re-induces its dictionary from the orthogonal map itself). Predictions still use the
    kept round's refined :math:`W`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds: list[tuple[torch.Tensor, torch.Tensor]] = []  # (refined W, its W0), per refinement

    def refine(self, W0, labels, config: RefineConfig, callback):
        W, curve, augment = super().refine(W0, labels, config, callback)
        self.rounds.append((W, W0))
        return W, curve, augment

    def mine(self, score_map, callback) -> Mined:
        if score_map is not None:
            score_map = next(W0 for W, W0 in self.rounds if W is score_map)
        return super().mine(score_map, callback)


class FirstMiningLamPool(ArrayPool):
    r"""The first mining at :data:`PUBLISHED_LAM`, the self-learning re-minings at the fit's ``lam`` (``first_mining_lam``).

    On CIFAR-10 the published weight of the VLM term wins, on Fashion-MNIST the default's; the
    first mining sets the classes' identities (which cluster is which class) and the re-minings,
    which score with the fitted map in place of :math:`X Y^\top`, sharpen them. This asks whether
    the first plan's weight alone carries CIFAR-10's gain and the re-minings keep Fashion-MNIST's.
    """

    def mine(self, score_map, callback) -> Mined:
        if score_map is not None:
            return super().mine(score_map, callback)
        fitted = self.config
        self.config = replace(fitted, mining=replace(fitted.mining, lam=PUBLISHED_LAM))
        try:
            return super().mine(score_map, callback)
        finally:
            self.config = fitted


def reference_refinement(pool: ArrayPool, config: FitConfig, state: FitState) -> FitState:
    r"""The kept round's refinement redone the published code's way (``reference_last_round``).

    The published GPA code (:class:`gpua.ReferenceGPUA`) refines for 400 steps on batches of 75%
    of the pool drawn without replacement, with no held-out rows and no early stopping. Here the
    kept round's Procrustes map :math:`W_0` and pseudo-labels (``state``, whitened coordinates)
    are refined again with GPUA's loss and settings but ``n_steps=400``, ``batch_fraction=0.75``
    and ``val_fraction=0``; the earlier rounds (and so which round is kept) are as in ``GPUA()``.

    Parameters
    ----------
    pool : ArrayPool
    config : FitConfig
    state : FitState
        From :func:`gpua.fitting.run_fit`, before unwhitening.

    Returns
    -------
    FitState
        ``W`` replaced; ``pseudo_label_agreement`` and the CSLS radii taken again for it.
    """
    labels = torch.as_tensor(state.pseudo_labels)
    ref = replace(config.refinement, n_steps=REFERENCE_STEPS, batch_fraction=REFERENCE_BATCH_FRACTION, val_fraction=0.0)
    W, curve, _ = pool.refine(state.W0.to(pool.Q.device), labels, ref, None)
    agreement, radius = pool.finish(W, labels)
    history = {**state.history, "refine": curve, "pseudo_label_agreement": float(agreement)}
    return replace(state, W=W, proto_radius=radius, history=history)


# --- pieces of the prediction-side levers ------------------------------------------------------
def reference_map(model: GPUA, pool_fs, seed: int) -> Callable[[object], np.ndarray]:
    r"""The published method's map stage fitted on a GPUA fit's pseudo-labels (``reference_map``).

    With :math:`Q = [Z, X]` the published query (:func:`gpua.reference.reference_query`), :math:`Y`
    the L2-normalised text prototypes and :math:`l_i` the fit's pseudo-labels: the hard Procrustes map
    :math:`W_0 = \mathrm{polar}(Q^\top Y_{l})` with :class:`~gpua.ReferenceGPUA`'s identity pull, then
    its THS refinement (:meth:`gpua.ReferenceGPUA.refine_config`, ``random_state=seed``).

    Returns
    -------
    predict : callable
        A feature set -> its top-1 classes under :math:`\mathrm{normalize}(Q W) Y^\top`.
    """
    from gpua import ReferenceGPUA
    from gpua.procrustes import identity_pull, procrustes_from_assignment
    from gpua.query import mapped_cosines
    from gpua.reference import reference_query

    def query(fs):
        return reference_query(float_tensor(fs.vfm_features), float_tensor(fs.vlm_features))  # it normalises each part

    published = ReferenceGPUA(random_state=seed)
    Q, Y = query(pool_fs), normalize(float_tensor(pool_fs.text_prototypes), dim=1)
    labels = torch.as_tensor(np.asarray(model.pseudo_labels_))
    plan = torch.nn.functional.one_hot(labels, Y.shape[0]).float()
    W0 = identity_pull(procrustes_from_assignment(Q, plan, Y, "hard"), float(published.identity_pull))
    W, _ = refine(W0, Q.__getitem__, Q.shape[0], Y, labels, published.refine_config())
    return lambda fs: mapped_cosines(query(fs), W, Y).argmax(1).numpy()


def mapped_rows(model: GPUA, fs) -> torch.Tensor:
    """:math:`\\mathrm{normalize}(Q W)` of a feature set's rows (``model.transform``), as a tensor."""
    return float_tensor(model.transform(fs.vfm_features, fs.vlm_features))


def fitted_prototypes(model: GPUA) -> torch.Tensor:
    """The prototypes a fitted GPUA scores against (:func:`gpua.query.target_prototypes`)."""
    return target_prototypes(model.text_prototypes_.cpu(), model.center_vlm)


def zero_shot_ensemble_scores(model: GPUA, fs) -> torch.Tensor:
    r"""The mean of the map's cosine scores and the VLM's centred zero-shot cosine scores.

    .. math:: s_{ik} = \tfrac12 \big(\cos(q_i W, \tilde y_k) + \cos(\tilde x_i, \tilde y_k)\big),

    :math:`\tilde x_i` the VLM image row centred on the fit pool's mean normalised row
    (:func:`gpua.query.centre_rows` with ``model.vlm_mean_``), :math:`\tilde y_k` the centred
    prototypes (:func:`gpua.query.target_prototypes`): an ensemble of the adapted and the
    zero-shot classifier, as WiSE-FT (Wortsman et al., CVPR 2022) mixes a fine-tuned and a
    zero-shot CLIP (here in score space, weight 1/2).

    Parameters
    ----------
    model : GPUA
        Fitted, with ``center_vlm=True`` (the default).
    fs : FeatureSet
        The rows to score.

    Returns
    -------
    tensor of shape (n_samples, n_classes)
    """
    Yt = fitted_prototypes(model)
    Xc = centre_rows(float_tensor(fs.vlm_features), model.vlm_mean_.cpu())
    return 0.5 * (mapped_rows(model, fs) @ Yt.T + Xc @ Yt.T)


def balanced_class_bias(model: GPUA, pool_fs) -> torch.Tensor:
    r"""A per-class additive bias from a balanced Sinkhorn on the pool's mapped scores.

    With :math:`S_{ik} = \cos(q_i W, \tilde y_k)` on the fit pool, the balanced entropic OT plan
    (:func:`gpua.ot.sinkhorn`, uniform class marginal, ``eps`` the fit's) is
    :math:`\log P_{ik} = S_{ik}/\varepsilon + u_i + v_k`; the bias is :math:`b_k = \varepsilon v_k`,
    added to every row's scores at prediction, so that the pool's predictions are spread over the
    classes as a balanced transport would spread them: the equipartition constraint of SwAV
    (Caron et al., NeurIPS 2020) and the balanced Sinkhorn class assignment of transductive
    few-shot methods (PT-MAP, Hu, Gripon & Pateux, ICANN 2021), kept here as a bias only.

    Parameters
    ----------
    model : GPUA
        Fitted.
    pool_fs : FeatureSet
        The fit pool (labels not read).

    Returns
    -------
    tensor of shape (n_classes,)
    """
    S = mapped_rows(model, pool_fs) @ fitted_prototypes(model).T
    res = sinkhorn(S, float(model.eps), rho=None, tol=float(model.sinkhorn_tol), max_iter=int(model.sinkhorn_max_iter))
    return (float(model.eps) * res.log_v).float().cpu()


def reestimated_prototypes(model: GPUA, pool_fs) -> torch.Tensor:
    r"""Class prototypes re-estimated from the mapped pool, one step (InMaP-style).

    .. math::
        \hat y_k = \mathrm{normalize}\Big(\tilde y_k + \frac{\sum_i a_{ik}\, m_i}{\sum_i a_{ik}}\Big),
        \qquad a_{i\cdot} = \mathrm{softmax}(s\, m_i \tilde Y^\top),\ m_i = \mathrm{normalize}(q_i W),

    :math:`s` the fit's ``logit_scale``: each text prototype moved toward the mean of the mapped
    pool rows softly assigned to it, as InMaP (Qian, Xu & Hu, "Intra-Modal Proxy Learning for
    Zero-Shot Visual Categorization with CLIP", NeurIPS 2023) learns image-space proxies from the
    text classifier's pseudo-labels on the unlabeled images.

    Parameters
    ----------
    model : GPUA
        Fitted.
    pool_fs : FeatureSet
        The fit pool (labels not read).

    Returns
    -------
    tensor of shape (n_classes, d_vlm), rows L2-normalised
    """
    Yt = fitted_prototypes(model)
    M = mapped_rows(model, pool_fs)
    A = torch.softmax(float(model.logit_scale) * (M @ Yt.T), dim=1)  # (N, K)
    means = (A.T @ M) / A.sum(0)[:, None].clamp_min(torch.finfo(A.dtype).tiny)
    return normalize(Yt + means, dim=1)


# --- one method on one set ---------------------------------------------------------------------
class Scored:
    """A fitted method as the table needs it: ``predict(fs)`` and the pool's pseudo-labels."""

    def __init__(self, predict: Callable, pseudo_labels: np.ndarray, seconds: float):
        self.predict, self.pseudo_labels, self.seconds = predict, pseudo_labels, seconds


def _model_scored(model: GPUA, seconds: float, n_pool: int | None = None) -> Scored:
    pseudo = np.asarray(model.pseudo_labels_)
    return Scored(lambda fs: model.predict(fs.vfm_features, fs.vlm_features), pseudo if n_pool is None else pseudo[:n_pool], seconds)


def _timed_fit(fit: Callable[[], GPUA]) -> tuple[GPUA, float]:
    t0 = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - t0


def _concat(a, b):
    """The rows of two feature sets of the same classes, as one unlabeled feature set (labels dropped)."""
    from gpua.features import FeatureSet

    return FeatureSet(vfm_features=np.concatenate([a.vfm_features, b.vfm_features]),
                      vlm_features=np.concatenate([a.vlm_features, b.vlm_features]),
                      text_prototypes=a.text_prototypes, classnames=list(a.classnames))


def run_method(method: str, ds, seed: int, baseline: tuple[GPUA, float] | None = None) -> Scored:
    """Fit ``method`` on ``ds``'s pool (without labels) with ``random_state=seed``.

    ``baseline`` is the ``gpua`` fit of the same set and seed (``(model, seconds)``), which the
    prediction-side levers re-score; it is fitted here when not given.
    """
    pool = ds.pool
    params = base_params(seed)
    if method in PARAM_LEVERS:
        model, seconds = _timed_fit(lambda: GPUA(**{**params, **PARAM_LEVERS[method]}).fit(
            pool.vfm_features, pool.vlm_features, pool.text_prototypes, classnames=pool.classnames))
        return _model_scored(model, seconds)
    pools = {"confidence_weighted": ConfidenceWeightedPool, "curriculum": CurriculumPool, "seed_average": SeedAveragePool,
             "procrustes_self_learning": ProcrustesSelfLearningPool}
    if method in pools:
        return _model_scored(*_timed_fit(lambda: fit_with_pool(params, pool, pools[method])))
    if method == "reference_last_round":
        return _model_scored(*_timed_fit(lambda: fit_with_pool(params, pool, ArrayPool, after=reference_refinement)))
    if method == "first_mining_lam":
        return _model_scored(*_timed_fit(lambda: fit_with_pool(params, pool, FirstMiningLamPool)))
    if method == "transductive":
        both = _concat(pool, ds.test)
        model, seconds = _timed_fit(lambda: GPUA(**params).fit(both.vfm_features, both.vlm_features, both.text_prototypes,
                                                               classnames=both.classnames))
        return _model_scored(model, seconds, n_pool=pool.n_samples)
    if method not in PREDICTION_LEVERS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    model, fit_seconds = baseline if baseline is not None else _timed_fit(
        lambda: GPUA(**params).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes, classnames=pool.classnames))
    t0 = time.perf_counter()
    if method == "zero_shot_ensemble":
        def predict(fs):
            return zero_shot_ensemble_scores(model, fs).argmax(1).numpy()
    elif method == "reference_map":
        predict = reference_map(model, pool, seed)
    elif method == "lam_ensemble":
        second = GPUA(**{**params, "lam": PUBLISHED_LAM}).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes,
                                                            classnames=pool.classnames)

        def predict(fs):
            return (model.decision_function(fs.vfm_features, fs.vlm_features)
                    + second.decision_function(fs.vfm_features, fs.vlm_features)).argmax(1)
    elif method == "per_class_bias":
        bias = balanced_class_bias(model, pool)

        def predict(fs):
            return (mapped_rows(model, fs) @ fitted_prototypes(model).T + bias).argmax(1).numpy()
    else:
        prototypes = reestimated_prototypes(model, pool)

        def predict(fs):
            return (mapped_rows(model, fs) @ prototypes.T).argmax(1).numpy()
    return Scored(predict, np.asarray(model.pseudo_labels_), fit_seconds + time.perf_counter() - t0)


def score_row(ds, method: str, seed: int, scored: Scored) -> dict:
    """One row: a fitted method scored on test, dev (or the pool, where there is no dev split), its pseudo-labels and the pool."""
    pool = ds.pool
    pool_acc = float(np.mean(scored.predict(pool) == pool.labels))
    return {
        "set": ds.name, "seed": seed, "method": method,
        "test": float(np.mean(scored.predict(ds.test) == ds.test.labels)),
        "dev": float(np.mean(scored.predict(ds.dev) == ds.dev.labels)) if ds.dev is not None else pool_acc,
        "pl": float(np.mean(scored.pseudo_labels == pool.labels)),
        "pool": pool_acc,
        "fit_seconds": scored.seconds,
    }


def evaluate(ds, method: str, seed: int, baseline: tuple[GPUA, float] | None = None) -> dict:
    """One row: ``method`` fitted on ``ds.pool`` (no labels) and scored (:func:`score_row`).

    ``baseline``: the ``gpua`` fit of the same set and seed, which the ``gpua`` row and the
    prediction-side levers then use instead of fitting it again.
    """
    if method == "gpua" and baseline is not None:
        return score_row(ds, method, seed, _model_scored(*baseline))
    return score_row(ds, method, seed, run_method(method, ds, seed, baseline))


# --- tables ------------------------------------------------------------------------------------
def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (set, method), in first-seen order."""
    out = []
    for s, m in dict.fromkeys((r["set"], r["method"]) for r in rows):
        group = [r for r in rows if (r["set"], r["method"]) == (s, m)]
        entry = {"set": s, "method": m, "seeds": [r["seed"] for r in group]}
        for f in ("test", "dev", "pl", "pool", "fit_seconds"):
            vals = np.array([r[f] for r in group], dtype=float)
            entry[f], entry[f + "_std"] = float(vals.mean()), float(vals.std())
        out.append(entry)
    return out


def mean_dev(summary: list[dict]) -> dict[str, dict]:
    """Per method: the mean dev over the real sets it was measured on, and its difference to ``gpua``'s on the same sets."""
    methods = list(dict.fromkeys(e["method"] for e in summary))
    dev = {(e["set"], e["method"]): e["dev"] for e in summary}
    out = {}
    for m in methods:
        sets = [s for s in REAL_SETS if (s, m) in dev]
        if not sets:
            continue
        entry = {"sets": sets, "dev": float(np.mean([dev[s, m] for s in sets]))}
        if all((s, "gpua") in dev for s in sets):
            entry["vs_gpua"] = entry["dev"] - float(np.mean([dev[s, "gpua"] for s in sets]))
        out[m] = entry
    return out


def table(summary: list[dict], means: dict[str, dict]) -> str:
    """Markdown: one table per set (test, dev, pl, pool, dev vs gpua, fit s), then the mean dev per method."""
    lines = []
    for s in dict.fromkeys(e["set"] for e in summary):
        group = [e for e in summary if e["set"] == s]
        base = next((e["dev"] for e in group if e["method"] == "gpua"), None)
        n = len(group[0]["seeds"])
        lines += ["", f"{s}  ({n} seed{'s' if n > 1 else ''}, mean; %)", "",
                  "| method | test | dev | pl | pool | dev vs gpua | fit s |", "|---|---|---|---|---|---|---|"]
        for e in group:
            delta = "" if base is None or e["method"] == "gpua" else f"{100 * (e['dev'] - base):+.2f}"
            lines.append(f"| {e['method']} | {100 * e['test']:.2f} | {100 * e['dev']:.2f} | {100 * e['pl']:.2f} | "
                         f"{100 * e['pool']:.2f} | {delta} | {e['fit_seconds']:.1f} |")
    if means:
        lines += ["", "mean dev over the real sets (%; planted apart)", "", "| method | sets | mean dev | vs gpua |", "|---|---|---|---|"]
        for m, e in means.items():
            delta = f"{100 * e['vs_gpua']:+.2f}" if "vs_gpua" in e and m != "gpua" else ""
            lines.append(f"| {m} | {len(e['sets'])} | {100 * e['dev']:.2f} | {delta} |")
    return "\n".join(lines)


def merged_rows(ap: argparse.ArgumentParser, paths: list[str]) -> tuple[list[dict], float, list[dict]]:
    """The rows of earlier ``--json`` files of this script, joined (a (set, seed, method) found twice is a usage error)."""
    rows, wall, parts, seen, bases = [], 0.0, [], set(), {}
    for path, data in zip(paths, read_results(ap, paths, "map_levers.py")):
        if not isinstance(data.get("args"), dict):
            ap.error(f"--merge {path}: not a map_levers.py --json file (KeyError: 'args')")
        file_rows, file_args = data["rows"], data["args"]
        # A file written before --base existed ran on the defaults of its day, before plan_ridge.
        bases[str(path)] = file_args.get("base", {"plan_ridge": None, "random_state": 0})
        if len({json.dumps(b, sort_keys=True) for b in bases.values()}) > 1:
            ap.error(f"--merge: the files ran on different --base parameters ({bases}); merge runs of one base")
        for r in file_rows:
            key = (r["set"], r["seed"], r["method"])
            if key in seen:
                ap.error(f"--merge: {key} is in more than one file")
            seen.add(key)
        rows += file_rows
        wall += float(data.get("wall_seconds", 0.0))
        parts.append({"file": str(path), **file_args})
    return rows, wall, parts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, ALL_SETS, SETS)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (GPUA random_state; planted: also the data draw)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="fit nothing: join the rows of earlier --json files of this script (e.g. sets run one by one) and print "
                         "(and with --json write) their tables")
    ap.add_argument("--json", action=OutputPath, default=None, help="write every row, the means and the mean dev here (atomically)")
    add_base_argument(ap)
    args = ap.parse_args(argv)
    set_base_params(ap, args)
    sets = chosen_sets(ap, args, ALL_SETS)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHODS}")
    if not methods or len(set(methods)) < len(methods):
        ap.error("--methods must name at least one method, each once")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if args.merge:
        rows, wall, parts = merged_rows(ap, args.merge)
        record = {"merged_from": parts}
    else:
        setup(args)
        t_start = time.perf_counter()
        rows = []
        devsets = cached_devset_seeds(sets, args.seeds, args.cache_dir)
        for s, seed, ds in devsets:
            baseline = None
            if any(m in PREDICTION_LEVERS for m in methods):
                pool = ds.pool
                baseline = _timed_fit(lambda: GPUA(**base_params(seed)).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes,
                                                                          classnames=pool.classnames))
            for m in methods:
                row = evaluate(ds, m, seed, baseline)
                rows.append(row)
                print(f"{s:14s} seed {seed}  {m:25s} test {100 * row['test']:.2f}  dev {100 * row['dev']:.2f}  "
                      f"pl {100 * row['pl']:.2f}  pool {100 * row['pool']:.2f}  ({row['fit_seconds']:.1f} s)", flush=True)
        devsets.finish(bool(rows), args.json)
        wall = time.perf_counter() - t_start
        record = {"sets": sets, "missing_sets": devsets.missing_sets, "methods": methods, "seeds": args.seeds, "base": base_params(0)}
    summary = summarise(rows)
    means = mean_dev(summary)
    print(table(summary, means))
    print(f"\nwall time {wall:.0f} s" + (" (the merged runs' sum)" if args.merge else ""))
    if args.json:
        write_json(args.json, {"args": record, "rows": rows, "summary": summary, "mean_dev": means, "wall_seconds": wall})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
