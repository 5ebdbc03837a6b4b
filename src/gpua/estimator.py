r"""The GPUA estimator: UCM -> Procrustes -> THS refinement, and prediction.

.. code-block:: python

    model = GPUA().fit(vfm_features, vlm_features, text_prototypes)   # no labels
    pred = model.predict(vfm_test, vlm_test)  # the default query="fused" reads both

Query modes: ``query="vfm"`` maps :math:`Q = Z` (the paper's text); ``query="fused"`` maps
:math:`Q = [Z, X]` (the published code's choice, a learned fusion that needs VLM features at
prediction too). Both are L2-normalised per part, concatenated, normalised again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ._base import AlignmentEstimator, ModelSchema, check_fit_arguments
from ._errors import GPUAError
from ._validation import check_callback
from .features import ShardedFeatures
from .fitting import ORTHOGONALITY, PARAMETERS, fit_arrays, set_fitted_state
from .hubness import csls_scores
from .params import check_param
from .query import build_query, mapped_cosines, mapped_rows, target_prototypes

__all__ = ["GPUA", "ORTHOGONALITY"]


def _shard_set_at(path: str | os.PathLike) -> ShardedFeatures:
    """The shard set in folder ``path`` (``fit``'s ``vfm_features`` given as a path), or a clear error."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return ShardedFeatures(folder)
    what = "is a file" if folder.exists() else "does not exist"
    raise GPUAError(
        f"vfm_features={str(path)!r} {what}; a path given to fit must be a shard set folder (gpua.stream.write_shards). "
        "For a feature file, pass its arrays: fs = gpua.features.load_features(path); model.fit(fs.vfm_features, fs.vlm_features, fs.text_prototypes)."
    )


class GPUA(AlignmentEstimator):
    r"""Geometry-Preserving Unsupervised Alignment of a VFM into a VLM's text space.

    Fits a linear map :math:`W` (d_q x d_vlm) from unlabeled paired features. The query
    :math:`Q` (:func:`gpua.query.build_query`) is first centred and whitened on the pool
    (``center``, ``whiten``: :func:`gpua.query.whitening_map`); then three steps:

    1. UCM: soft correspondences :math:`P` by entropic OT on
       :math:`(1-\lambda)\,\mathrm{sim}(Q, C) + \lambda\, \mathrm{sim}(X, Y)`, alternating with
       closed-form centres :math:`C` (:func:`gpua.ucm.mine_correspondences`);
    2. GPA: :math:`W_0 = U V^\top` from :math:`\mathrm{SVD}(Q^\top P Y)`
       (:func:`gpua.procrustes.procrustes_from_assignment`), completed from the pool's
       query-to-VLM cross-covariance where :math:`Q^\top P Y` leaves it free
       (:func:`gpua.procrustes.procrustes_map`);
    3. THS refinement of :math:`W` on mini-batches (:func:`gpua.refinement.refine`), stopped by
       a label-free rule: the THS loss on a held-out slice of the pool, against its
       pseudo-labels;

    and, optionally, self-learning rounds: UCM again with the fitted map's own scores
    :math:`\mathrm{normalize}(Q W) Y^\top` in place of :math:`X Y^\top`, then steps 2-3 again,
    a round being rolled back when its pseudo-labels agree less with the VFM's neighbourhoods
    (:func:`gpua.fitting.knn_label_consistency`). The fit itself is :func:`gpua.fitting.fit_arrays`
    (the same core as :func:`gpua.stream.fit_streaming` and :func:`gpua.stream.fit_federated`);
    each parameter's range is declared once in :data:`gpua.fitting.PARAMETERS` and checked at
    every fit (``gpua fit --list-params`` prints them).

    Parameters
    ----------
    query : {"fused", "vfm"}, default="fused"
        Map :math:`[Z, X]` (on the demo's real CIFAR-10 features it beats ``"vfm"`` by about 20
        points; see the README) or :math:`Z` alone (the paper's text; needs no VLM at prediction).
    lam : float in [0, 1], default=0.7
        Weight :math:`\lambda` of the VLM term in UCM's fused score. (The paper's 0.9 leaves
        the VFM's class centres too little say; 0.7 was chosen on the development sets: see
        the README's accuracy section.)
    eps : float > 0, default=0.02
        Entropic regularisation of UCM's OT, in score units (a sharper plan than the paper's
        0.05, chosen with ``lam``).
    similarity : {"cosine", "neg_euclidean"}, default="cosine"
        Score form; ``"neg_euclidean"`` is :math:`-\|a-b\|/\tau` with ``temperature``.
    temperature : float > 0, default=0.1
        :math:`\tau` of ``similarity="neg_euclidean"``.
    class_prior : array of shape (n_classes,), "estimate", "zero_shot" or None, default=None
        Class marginal for OT (None: uniform). ``"estimate"``, for a pool far from balanced (a
        long-tailed folder of photos): fit once under the uniform prior, estimate the pool's
        class frequencies from that fit's probabilities by EM (:func:`gpua.prior.em_class_prior`)
        and centre each modality on the class-balanced mean (:func:`gpua.prior.balanced_mean`),
        then fit again with both; twice the fit time, in-memory fits only. It costs a little on
        balanced pools. ``"zero_shot"``: the same estimate from the VLM's zero-shot
        probabilities instead of a first fit (one fit; streamed and federated fits too, the
        former from a seeded sample of rows when the pool's probabilities do not fit half of
        ``max_memory``, the latter by EM steps summed client by client); far better on strongly
        long-tailed pools, clearly worse on balanced ones, where the VLM's class biases read as
        imbalance. Labels are never used (README, "Imbalanced folders").
    rho : float > 0 or None, default=0.03
        Semi-relaxed class marginal: the plan's class masses pay a KL penalty of weight
        :math:`\rho` for leaving ``class_prior`` instead of being held to it exactly (None).
        A loose marginal lets the pseudo-labels follow the pool's own class frequencies and
        the scores' confidence (chosen on the development sets' dev criterion, the README's
        accuracy section; on long-tailed pools it loses far less than the exact marginal).
    plan_ridge : float > 0 or None, default=1.0
        Replace each mined plan by its ridge least-squares projection on the affine functions
        of the standardised query, with this penalty (:func:`gpua.projection.ridge_projection`;
        clipped at 1e-6, rows renormalised); None keeps the plan as mined. A least-squares
        probe trained on the plan and read back on the same rows: it keeps the labelling a
        linear function of the query can hold (chosen on the development sets' dev criterion,
        the README's accuracy section). Streamed and federated fits sum its moments over
        chunks and clients.
    n_init_per_class : int >= 1, default=8
        Samples per class for the confident centre initialisation.
    max_outer : int >= 1, default=20
        UCM rounds at most (10 until ``rho``'s default: with the relaxed marginal small pools,
        such as a folder of a few hundred photos or a patch pool, took more than 10 to settle).
    tol : float > 0, default=0.005
        Plan change (the fraction of the pool's mass that moves between rounds) that ends UCM;
        a few times ``sinkhorn_tol``, below which the change is the Sinkhorn solutions' own slack.
    sinkhorn_tol : float > 0, default=0.001
        Relative class-marginal error at which Sinkhorn stops (0.1% is far below what moves a
        pseudo-label, and the sharp default ``eps`` needs about 1,000 iterations to reach it).
    sinkhorn_max_iter : int >= 1, default=2000
        Sinkhorn's iteration cap (a :class:`~gpua.ConvergenceWarning` says when it is reached).
    solver : {"torch", "pot"}, default="torch"
        Sinkhorn kernel: gpua's own, or POT's ``sinkhorn_log`` (in-memory fits only).
    assignment : {"soft", "hard"}, default="soft"
        Procrustes target from the full plan or its argmax.
    procrustes_completion : {"crosscov", "svd"}, default="crosscov"
        With fewer classes than the widths, :math:`Q^\top P Y` fixes :math:`W_0` only on the
        span it reaches. ``"crosscov"`` fills the rest from the pool's query-to-VLM
        cross-covariance :math:`Q^\top X` (:func:`gpua.procrustes.procrustes_map`): the same
        for every driver and summation order, so in-memory, streamed and federated fits of one
        pool predict alike. ``"svd"``: whatever the SVD returns (releases up to 2026-12-01; a
        perturbation of the sum's last bits, another chunking, moved it, and refinement carried
        that into other predictions).
    center : bool, default=True
        Subtract the pool mean of the normalised VFM features (VecMap's "center"). The
        whitening's directions come from the query's second moment, so it is meant to run on
        centred rows (VecMap centres before whitening).
    center_vlm : bool, default=True
        Centre each VLM modality on its own mean (:func:`gpua.query.centre_rows`): the image
        features on the pool's, the text prototypes on theirs. It removes the direction the two
        modalities share across all classes (the "modality gap"), which otherwise dominates
        every cosine; the map targets the centred prototypes.
    whiten : "auto", int >= 1 or None, default="auto"
        Whiten the query on the pool before mining and mapping (VecMap's whitening,
        :func:`gpua.query.whitening_map`): keep its top :math:`d` principal directions, each
        scaled by :math:`(\sigma_j^2 + s\,\bar\sigma^2)^{-1/2}` with :math:`s` = ``whiten_shrink``.
        ``"auto"``: :math:`d = \min(d_q, n, \max(128, 2K))` (:func:`gpua.query.whitening_width`;
        a narrower projection merges classes when they are many); an int: that :math:`d`
        (clipped to the pool size and the query's width); None: no whitening. The fitted ``W_``
        includes the whitening, so prediction and model files are as without it; streamed and
        federated fits sum the query's second moment over chunks and clients. Chosen on the
        development sets with ``center=True`` (dev accuracy up on four of five sets, level on
        the fifth; README, "Defaults and what we measured"), and it makes the fit several times
        faster where :math:`d < d_q`. ``history_`` describes the fit in the whitened space (its
        ``orthogonality_error`` is of the map before folding).
    whiten_shrink : float >= 0, default=2.0
        :math:`s`: 0 whitens the kept directions fully, large values only project on them.
    refine : bool, default=True
        Run THS refinement after Procrustes.
    n_steps : int >= 0, default=300
        Refinement steps at most (0: none).
    batch_size : int >= 1, default=1024
        Rows per refinement step.
    lr : float in (0, 1000000], default=0.0005
        AdamW learning rate, on a cosine schedule to ``lr * 1e-3``.
    weight_decay : float in [0, 1000000], default=0.0005
        AdamW weight decay.
    k : int >= 1, default=3
        THS: wrong prototypes per sample (at most ``n_classes - 1`` are used).
    margin_scale : float in (0, 1000000], default=2.0
        THS: :math:`s` of the semantic margin :math:`(1 - y_l^\top y_c)/s`.
    hubness_weight : float in [0, 1000000], default=2.0
        THS: :math:`\beta` of the hubness term (0 drops it).
    orthogonality : {"none", "penalty", "project"}, default="none"
        Leave :math:`W` free during refinement (the label-free early stopping guards against
        memorising pseudo-labels and measured best), keep it near (semi-)orthogonal by
        :math:`\gamma\|W^\top W - I\|_F^2 / d` (:math:`d` the map's smaller side), or project it
        on the nearest (semi-)orthogonal map after every step (an SVD per step: slow for wide
        maps).
    ortho_weight : float in [0, 1000000], default=1.0
        :math:`\gamma`.
    noise_std : float in [0, 1000000], default=0.035
        Gaussian input noise, applied to a batch with probability 1/2.
    dropout : float in [0, 1), default=0.05
        Input dropout, applied to a batch with probability 1/2.
    val_fraction : float in [0, 0.5), default=0.1
        Label-free early stopping: the fraction of the pool held out; its THS loss against its
        pseudo-labels is evaluated every ``eval_every`` steps and the best map is kept. No row is
        held out when this is 0, when it rounds to no row, or when the pool has fewer than 50
        rows: refinement then runs all ``n_steps`` and keeps the last map.
    eval_every : int >= 1, default=10
        Steps between held-out evaluations.
    patience : int >= 1, default=5
        Evaluations without improvement before refinement stops.
    refine_tol : float in [0, 1), default=0.01
        Relative decrease of the held-out loss that counts as an improvement for early stopping
        (scikit-learn's ``tol`` with ``n_iter_no_change``): 0 keeps stepping while the loss
        creeps down; the default stops once ``patience`` evaluations gain less than 1% each.
    pool_augment : int >= 0, default=0
        Synthetic query rows per pseudo-class added to the refinement's training rows (0 adds
        none; used only when refinement runs). For a few-shot pool: each pseudo-class :math:`k`
        (the plan's argmax) is calibrated from its training rows :math:`\{q_i\}` alone, as in
        geometric distribution calibration (:mod:`gpua.calibrate`):
        :math:`\tilde q = q_a + L_k \varepsilon`, :math:`\varepsilon \sim N(0, I)`, with anchors
        :math:`q_a` the class's rows in turn, :math:`L_k L_k^\top = (1-\rho_k) S_k + \rho_k
        \tfrac{\operatorname{tr} S_k}{d_q} I` the OAS-shrunk covariance (:func:`gpua.calibrate.oas_factor`:
        :math:`d_q` is up to 1664 with about 100 rows per class, so the raw :math:`S_k` is
        rank-deficient), then :math:`\tilde q` is L2-normalised like every real query. The
        held-out rows of early stopping neither anchor nor shape them, and never include them.
        A pseudo-class with fewer than two training rows gets none. ``history_["pool_augment"]``
        records the counts and each class's :math:`\rho_k`. In-memory fits only:
        :func:`gpua.stream.fit_streaming` refuses it; in :func:`gpua.stream.fit_federated`
        each client augments its own rows in its local refinement.
    self_learning : int >= 0, default=2
        Self-learning rounds at most after the fit (0: none). Each round re-mines the
        correspondences with :math:`\mathrm{normalize}(Q W) Y^\top` as UCM's VLM term, then
        Procrustes and refinement again (its Sinkhorn starts from the previous round's class
        potential); a round that lowers the label-free criterion (the
        fraction of each row's 10 nearest VFM neighbours sharing its pseudo-label, on up to
        2,000 sampled rows) is rolled back and the rounds stop. ``history_["self_learning"]``
        records each round.
    self_learning_tol : float in [0, 1), default=0.01
        A round whose re-mining changed fewer than this fraction of the pool's pseudo-labels (or
        none) has settled: it is not refitted (its map would barely move), the previous round is
        kept and the rounds stop.
    retrieval : {"cosine", "csls"}, default="cosine"
        Prediction by cosine, or CSLS with prototype radii measured on the fit pool.
    csls_k : int >= 1, default=10
        Neighbours of the CSLS radii.
    logit_scale : float in (0, 10000], default=100.0
        The VLM's logit scale (CLIP's 100): the scale of its zero-shot probabilities, which
        ``class_prior="zero_shot"`` estimates from and ``proba_scale="auto"`` matches.
    proba_scale : "auto", float in (0, 10000] or None, default="auto"
        Scale of :meth:`predict_proba`'s softmax of the class scores. ``"auto"``: chosen by the
        fit without labels, the scale at which GPUA's mean top probability on the pool equals
        the VLM zero-shot's at ``logit_scale`` (:mod:`gpua.probability`; ``proba_scale_``,
        ``history_["proba_scale"]``). A number: that scale. None: ``logit_scale``, as before
        2026-12-02, at which GPUA's mapped cosines give a top probability near 1 in most rows.
    device : str or torch.device, default="cpu"
        Torch device of the fit and the learned tensors (``"cuda"``, ``"cuda:1"``, ``"auto"``).
    random_state : int in [0, 9223372036854775807] or None, default=0
        Seed of refinement (batches, noise, the held-out split, ``pool_augment``'s rows) and of
        the self-learning criterion's sample.
        None draws a fresh seed each fit (kept in ``history_["random_state"]``).
    verbose : bool, default=False
        Print a line per UCM round, refinement evaluation and self-learning round on stderr
        (and progress bars in a streamed fit).

    Attributes
    ----------
    W_ : tensor of shape (d_q, d_vlm)
        The learned map. Whitened (the default): :math:`M W` with :math:`M` the pool's
        whitening and :math:`W` the map fitted in the whitened coordinates: its Procrustes start
        :math:`W_0` is (semi-)orthogonal, and refinement leaves :math:`W` free unless
        ``orthogonality`` says otherwise (``history_["orthogonality_error"]``;
        ``history_["whiten_components"]`` is :math:`M`'s width).
    W0_ : tensor of shape (d_q, d_vlm)
        The Procrustes map before refinement (of the kept self-learning round), :math:`M W_0` when whitened.
    text_prototypes_ : tensor of shape (n_classes, d_vlm)
    centres_ : tensor of shape (n_classes, d_q)
    vfm_mean_ : tensor of shape (d_vfm,) or None
    vlm_mean_ : tensor of shape (d_vlm,) or None
        The pool's mean normalised VLM row (``center_vlm=True``).
    proto_radius_ : tensor of shape (n_classes,) or None
        CSLS prototype radii (``retrieval="csls"``).
    pseudo_labels_ : int array of shape (n_samples,)
        The pool's mined pseudo-labels (of the kept round). A diagnostic of the fit: model files
        do not hold them (a loaded model has none; predict the pool to label it).
    pseudo_confidence_ : array of shape (n_samples,)
        Their plan mass (not in model files either).
    proba_scale_ : float or None
        The scale ``proba_scale="auto"`` chose (None when the fit had another ``proba_scale``).
    history_ : dict
        ``ucm`` (rounds), ``ucm_converged``, ``refine`` (held-out curve), ``pool_augment``,
        ``self_learning`` (per round: ``round``, ``label_change``, ``criterion``, ``kept``,
        ``refit``), ``pseudo_label_agreement`` (the fraction of the pool whose cosine argmax under
        ``W_`` is its pseudo-label, whatever ``retrieval``), ``orthogonality_error`` (of the map
        in the whitened coordinates), ``random_state`` (the seed used),
        ``timings``; ``streaming`` or ``federated`` from those drivers; with
        ``class_prior="estimate"`` or ``"zero_shot"``, ``class_prior_estimate`` (``prior``: the
        estimated class frequencies the fit used; ``first_fit_pseudo_label_counts`` or
        ``zero_shot_counts``: the argmax counts of the probabilities it was estimated from; a
        streamed fit's also ``rows_estimated_from``) and ``timings["class_prior_estimate_s"]``
        (the first fit, if any, and the estimate); with ``proba_scale="auto"``, ``proba_scale``
        (``scale``, ``zero_shot_mean_top_probability``, ``rows``: :func:`gpua.probability.matched_scale`)
        and ``timings["proba_scale_s"]``.
    n_features_vfm_, n_features_vlm_, n_classes_ : int
    classnames_ : list of str or None

    Examples
    --------
    >>> from gpua import GPUA
    >>> from gpua.synthetic import make_planted
    >>> train, test = make_planted(n_samples=600, n_classes=8, random_state=0).split(400)
    >>> model = GPUA(n_steps=20).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    >>> model.W_.shape
    torch.Size([96, 32])
    >>> model.score(test.vfm_features, test.labels, test.vlm_features) > 0.9
    True
    """

    _schema = ModelSchema(
        tensors={
            "W_": ("n_features_query", "n_features_vlm"),
            "W0_": ("n_features_query", "n_features_vlm"),
            "text_prototypes_": ("n_classes", "n_features_vlm"),
            "centres_": ("n_classes", "n_features_query"),
            "vfm_mean_": ("n_features_vfm",),
            "vlm_mean_": ("n_features_vlm",),
            "proto_radius_": ("n_classes",),
        },
        optional=("vfm_mean_", "vlm_mean_", "proto_radius_"),
        needed_by={"vfm_mean_": "center", "vlm_mean_": "center_vlm"},
        state={"history_": dict, "proba_scale_": float},
        positive=("proba_scale_",),
    )
    _parameter_constraints = PARAMETERS
    # Parameters a model file may lack (saved before they existed): the value those fits ran with.
    _params_before_added = {"center_vlm": False, "whiten": None, "plan_ridge": None, "procrustes_completion": "svd", "proba_scale": None}
    _fitted_layout = ("query", "center_vlm", "csls_k")

    def __init__(
        self,
        *,
        query: str = "fused",
        lam: float = 0.7,
        eps: float = 0.02,
        similarity: str = "cosine",
        temperature: float = 0.1,
        class_prior=None,
        rho: float | None = 0.03,
        plan_ridge: float | None = 1.0,
        n_init_per_class: int = 8,
        max_outer: int = 20,
        tol: float = 5e-3,
        sinkhorn_tol: float = 1e-3,
        sinkhorn_max_iter: int = 2000,
        solver: str = "torch",
        assignment: str = "soft",
        procrustes_completion: str = "crosscov",
        center: bool = True,
        center_vlm: bool = True,
        whiten: int | str | None = "auto",
        whiten_shrink: float = 2.0,
        refine: bool = True,
        n_steps: int = 300,
        batch_size: int = 1024,
        lr: float = 5e-4,
        weight_decay: float = 5e-4,
        k: int = 3,
        margin_scale: float = 2.0,
        hubness_weight: float = 2.0,
        orthogonality: str = "none",
        ortho_weight: float = 1.0,
        noise_std: float = 0.035,
        dropout: float = 0.05,
        val_fraction: float = 0.1,
        eval_every: int = 10,
        patience: int = 5,
        refine_tol: float = 0.01,
        pool_augment: int = 0,
        self_learning: int = 2,
        self_learning_tol: float = 0.01,
        retrieval: str = "cosine",
        csls_k: int = 10,
        logit_scale: float = 100.0,
        proba_scale: float | str | None = "auto",
        device: str = "cpu",
        random_state: int | None = 0,
        verbose: bool = False,
    ):
        self.query = query
        self.lam = lam
        self.eps = eps
        self.similarity = similarity
        self.temperature = temperature
        self.class_prior = class_prior
        self.rho = rho
        self.plan_ridge = plan_ridge
        self.n_init_per_class = n_init_per_class
        self.max_outer = max_outer
        self.tol = tol
        self.sinkhorn_tol = sinkhorn_tol
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.solver = solver
        self.assignment = assignment
        self.procrustes_completion = procrustes_completion
        self.center = center
        self.center_vlm = center_vlm
        self.whiten = whiten
        self.whiten_shrink = whiten_shrink
        self.refine = refine
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.k = k
        self.margin_scale = margin_scale
        self.hubness_weight = hubness_weight
        self.orthogonality = orthogonality
        self.ortho_weight = ortho_weight
        self.noise_std = noise_std
        self.dropout = dropout
        self.val_fraction = val_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.refine_tol = refine_tol
        self.pool_augment = pool_augment
        self.self_learning = self_learning
        self.self_learning_tol = self_learning_tol
        self.retrieval = retrieval
        self.csls_k = csls_k
        self.logit_scale = logit_scale
        self.proba_scale = proba_scale
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------
    def _query(self, Z, X) -> torch.Tensor:
        Zt = self._tensor(Z)
        Xt = None if X is None else self._tensor(X)
        return build_query(Zt, Xt, self.query, getattr(self, "vfm_mean_", None), getattr(self, "vlm_mean_", None))

    def fit(
        self,
        vfm_features,
        vlm_features=None,
        text_prototypes=None,
        classnames=None,
        callback: Callable | None = None,
        *,
        max_memory: str | int | None = None,
        cluster=None,
        checkpoint=None,
    ) -> "GPUA":
        """Learn the map from unlabeled paired features.

        Parameters
        ----------
        vfm_features : array or tensor of shape (n_samples, d_vfm), or ShardedFeatures
            A shard set (:class:`gpua.features.ShardedFeatures`, or the path of its folder) is
            fitted chunk by chunk by :func:`gpua.stream.fit_streaming` (``GPUA().fit(shards)``),
            with ``vlm_features=None`` (the shards hold both) and the streaming options below.
        vlm_features : array or tensor of shape (n_samples, d_vlm), or None
            Same images, same order (None for a shard set).
        text_prototypes : array or tensor of shape (n_classes, d_vlm)
            (Optional for a shard set that stores them.)
        classnames : sequence of str, optional
        callback : callable, optional
            Called with a dict after each UCM round, refinement evaluation and self-learning
            round.
        max_memory : str or int, optional
            Shard sets only: the memory budget per process (default ``"4GB"``).
        cluster : None, "local", int, str or distributed.Client, optional
            Shard sets only: run the chunk sums on Dask.
        checkpoint : str or Path, optional
            Shard sets only: resumable UCM state folder.

        Torch tensors are used where they are when they are on ``device`` (a CUDA fit of CUDA
        tensors never copies them through the host).

        Returns
        -------
        self
        """
        check_callback(callback)
        if isinstance(vfm_features, (str, os.PathLike)):
            vfm_features = _shard_set_at(vfm_features)
        if isinstance(vfm_features, ShardedFeatures):
            from .stream import fit_streaming  # gpua.stream imports the core, never this module

            options = {n: v for n, v in (("max_memory", max_memory), ("cluster", cluster), ("checkpoint", checkpoint)) if v is not None}
            return fit_streaming(
                self, vfm_features, text_prototypes, vlm_features=vlm_features, classnames=classnames, callback=callback,
                progress=self.verbose, **options,
            )
        given = [n for n, v in (("max_memory", max_memory), ("cluster", cluster), ("checkpoint", checkpoint)) if v is not None]
        if given:
            raise GPUAError(
                f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a shard set (gpua.features.ShardedFeatures) only; for arrays, call "
                "gpua.stream.fit_streaming(model, (vfm_features, vlm_features), text_prototypes, max_memory=...) to fit them in chunks."
            )
        check_fit_arguments(vlm_features, text_prototypes)
        if vlm_features is None:
            raise GPUAError(
                "vlm_features is None: fit needs the VLM image features of the same images, an array of shape "
                "(n_samples, d_vlm) (UCM scores them against text_prototypes, whatever the query); only a shard set "
                "is fitted without them, GPUA().fit(shards), since its shards hold both."
            )
        state = fit_arrays(self.get_params(), vfm_features, vlm_features, text_prototypes, classnames, callback)
        return set_fitted_state(self, state, [(len(state.pseudo_labels), lambda idx: (_rows(vfm_features, idx), _rows(vlm_features, idx)))])

    # ------------------------------------------------------------------------------------------
    def transform(self, vfm_features, vlm_features=None) -> np.ndarray:
        """Map features into the VLM text space: L2-normalised :math:`Q W`.

        Returns
        -------
        mapped : array of shape (n_samples, d_vlm)
        """
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=self.query == "fused")
        return mapped_rows(self._query(Z, X), self.W_).cpu().numpy()

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=self.query == "fused")
        check_param("retrieval", self.retrieval, PARAMETERS["retrieval"])  # set_params after fit is not checked by fit
        sims = mapped_cosines(self._query(Z, X), self.W_, target_prototypes(self.text_prototypes_, self.center_vlm))
        if self.retrieval == "csls":
            if self.proto_radius_ is None:
                raise GPUAError(
                    "retrieval='csls' needs the prototypes' CSLS radii, which a fit computes only with retrieval='csls'; "
                    "fit again with retrieval='csls', or set retrieval='cosine'."
                )
            r_query = sims.topk(min(self.csls_k, sims.shape[1]), dim=1).values.mean(1)
            return csls_scores(sims, r_query, self.proto_radius_)
        return sims

    def _proba_scale(self) -> float:
        check_param("proba_scale", self.proba_scale, PARAMETERS["proba_scale"])  # set_params after fit is not checked by fit
        if self.proba_scale != "auto":
            return super()._proba_scale() if self.proba_scale is None else float(self.proba_scale)
        scale = getattr(self, "proba_scale_", None)
        if scale is None:
            raise GPUAError(
                "proba_scale='auto' reads the scale a fit chooses on its pool, and this model's fit chose none (it was fitted, "
                "or saved by a gpua before 2026-12-02, with another proba_scale); set a number or None (logit_scale) with "
                "set_params, or fit again."
            )
        return float(scale)


def _rows(A, idx: torch.Tensor):
    """Rows ``idx`` of a fit's input (an array, a tensor, or nested lists), without copying the rest."""
    if isinstance(A, torch.Tensor):
        return A[idx.to(A.device)]
    return np.asarray(A)[idx.numpy()]
