r"""The published GPUA code's method, re-implemented faithfully as a yardstick.

:class:`ReferenceGPUA` reproduces the choices of the reference implementation (github
Yuteam14/GPUA; ``DESIGN.md`` section 3), including those gpua's own :class:`~gpua.GPUA` changes
on purpose (an absolute Sinkhorn tolerance, the identity pull, a fixed step count without early
stopping). It is built from gpua's building blocks with their reference options:
:func:`gpua.ucm.mine_correspondences` (``similarity_kind="neg_euclidean"``, ``solver="swav"``),
:func:`gpua.procrustes.procrustes_from_assignment` and :func:`gpua.procrustes.identity_pull`,
:func:`gpua.refinement.refine` with :func:`gpua.hubness.ths_loss`'s ``distance="euclidean"``,
``include_positive=True``, ``full_sort=True``.

Use it to check gpua against the published math: ``make_method("reference")``, a row of
``gpua compare``, ``gpua demo --methods all``, ``benchmarks/accuracy.py`` and
``benchmarks/fit_speed.py``.
"""

from __future__ import annotations

import math
import time
import numpy as np
import torch

from ._base import AlignmentEstimator, ModelSchema, check_fit_arguments
from ._validation import check_classnames, check_triplet
from ._errors import GPUAError
from .params import COUNT, LOGIT_SCALE, POSITIVE, SEED, TRAINING_NON_NEGATIVE, TRAINING_POSITIVE, DeviceName, Interval, OptionalOf
from .fitting import check_not_one_image
from .procrustes import identity_pull, procrustes_from_assignment
from .query import build_query, mapped_cosines, mapped_rows, pool_mean
from .refinement import RefineConfig, refine
from .ucm import mine_correspondences

__all__ = ["ReferenceGPUA", "reference_query"]


def reference_query(Z: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    r"""The published code's query :math:`Q = [\hat Z, \hat X]`, each part L2-normalised.

    Not renormalised after the concatenation: every row has norm :math:`\sqrt 2`. Computed as
    :math:`\sqrt 2` times gpua's ``"fused"`` query (:func:`gpua.query.build_query`), which is the
    same concatenation divided by its norm :math:`\sqrt 2`.

    Parameters
    ----------
    Z : tensor of shape (n_samples, d_vfm)
    X : tensor of shape (n_samples, d_vlm)

    Returns
    -------
    Q : tensor of shape (n_samples, d_vfm + d_vlm)

    Examples
    --------
    >>> import torch
    >>> [round(v, 4) for v in reference_query(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]]))[0].tolist()]
    [0.6, 0.8, 0.0, 1.0]
    """
    return build_query(Z, X, "fused").mul_(math.sqrt(2.0))


class ReferenceGPUA(AlignmentEstimator):
    r"""The published GPUA code's method: the yardstick gpua's defaults are measured against.

    Every default below is the reference code's (its per-dataset overrides aside); changing a
    parameter leaves the reference.

    1. **Query** :math:`Q = [\hat Z, \hat X]` (:func:`reference_query`): VFM and VLM image
       features, each L2-normalised, concatenated, *not* renormalised (:math:`\|q_i\| = \sqrt 2`).
    2. **Centre initialisation**: the VLM's zero-shot posterior
       :math:`\pi = \mathrm{softmax}(100\, \hat X Y^\top)`; for each class :math:`k` its
       ``n_init_per_class`` = 8 most confident samples :math:`T_k`,
       :math:`C_k = \mathrm{normalize}\big(\sum_{i \in T_k} \pi_{ik} q_i\big)`
       (:func:`gpua.ucm.confident_centres`).
    3. **UCM**, ``n_rounds`` = 3 rounds exactly (no convergence test) of

       .. math::
           S_{ik} = (1 - \lambda) \Big(-\frac{\|q_i - C_k\|_2}{\tau}\Big)
                  + \lambda \Big(-\frac{\|\hat x_i - y_k\|_2}{\tau}\Big),
           \qquad \lambda = 0.9,\ \tau = 0.1,

       (exact Euclidean distances: :math:`\|q_i\| = \sqrt 2` against unit centres), then the
       SwAV-style Sinkhorn (:func:`gpua.ot.sinkhorn`, ``solver="swav"``):
       :math:`P \propto \exp((S - \max_k S_{ik}) / \varepsilon)`, :math:`\varepsilon = 0.05`,
       alternately scaling classes to :math:`1/K` and samples to :math:`1/N`, at most
       ``sinkhorn_max_iter`` = 50 iterations, stopped once
       :math:`\max_{ik} |P^{(t)}_{ik} - P^{(t-1)}_{ik}| < 10^{-5}` (absolute, on a plan summing
       to one); uniform marginals. Then
       :math:`C_k = \mathrm{normalize}(\sum_i P_{ik} q_i / \sum_i P_{ik})`, renormalised every
       round.
    4. **Hard labels** :math:`l_i = \arg\max_k P_{ik}`; **Procrustes**
       :math:`W_0 = U V^\top`, :math:`U \Sigma V^\top = \mathrm{SVD}(Q^\top Y_{[l]})` (target
       row :math:`y_{l_i}`), then the **identity pull** of its top-left square block
       (:func:`gpua.procrustes.identity_pull`, :math:`\beta` = ``identity_pull`` = 0.9):
       :math:`W_{0[:m,:m]} \leftarrow 0.1\, W_{0[:m,:m]} + 0.9\, I_m`,
       :math:`m = \min(d_q, d_t)`.
    5. **Refinement** (:func:`gpua.refinement.refine`), ``n_steps`` = 400 steps, no held-out
       rows, no early stopping, no re-orthogonalisation: each step a batch of
       ``int(0.75 N)`` rows drawn without replacement; with probability 1/2 Gaussian noise
       :math:`q \leftarrow q + 0.035\,\xi`; with probability 1/2 dropout
       :math:`q \leftarrow q \odot m / 0.95`, :math:`m_j \sim \mathrm{Bernoulli}(0.95)`; AdamW
       (lr :math:`5\cdot10^{-4}`, weight decay :math:`5\cdot10^{-4}`, betas (0.9, 0.999),
       eps :math:`10^{-8}`) with a cosine schedule from lr to :math:`10^{-7}` over the 400
       steps, on the THS loss (:func:`gpua.hubness.ths_loss` with ``distance="euclidean"``,
       ``include_positive=True``, ``full_sort=True``):

       .. math::
           \mathcal L = \frac{1}{B k} \sum_{i} \sum_{c \in \mathcal N_k(i)}
               \big[\, d_{i l_i} + \frac{1 - y_{l_i}^\top y_c}{s} + \beta_h h_c - d_{ic} \,\big]_+,
           \qquad d_{ic} = \|\widehat{q_i W} - y_c\|_2,

       :math:`\mathcal N_k(i)` the :math:`k = 3` nearest prototypes of all :math:`K` (found by
       a full sort; the pseudo-label's own may be among them), :math:`s = 2`,
       :math:`\beta_h = 2`, :math:`h_c` the fraction of the batch whose :math:`k` nearest
       prototypes include :math:`c` (recomputed per batch).
    6. **Prediction** :math:`\arg\max_k \cos(q W, y_k)`.

    **No ConvergenceWarning.** The 50-iteration cap and the absolute tolerance are the published
    code's choices, and on large pools the cap (or the early absolute stop) leaves the class
    marginals far off: that is what the yardstick measures, not a fault to warn about at every
    fit. Each UCM round's Sinkhorn iterations and relative class-marginal error are recorded in
    ``history_["ucm"]``, and ``history_["sinkhorn_capped"]`` counts the rounds the cap ended.

    Parameters
    ----------
    lam : float in [0, 1], default=0.9
        Weight :math:`\lambda` of the VLM term of UCM's score.
    temperature : float > 0, default=0.1
        :math:`\tau` of the negative distances.
    eps : float > 0, default=0.05
        Entropic regularisation of the Sinkhorn step.
    n_init_per_class : int >= 1, default=8
        Confident samples per class of the centre initialisation.
    n_rounds : int >= 1, default=3
        UCM rounds, all run (1 to 5 per dataset in the published code).
    sinkhorn_max_iter : int >= 1, default=50
        Sinkhorn's iteration cap.
    sinkhorn_tol : float > 0, default=1e-05
        Absolute tolerance on the largest change of a plan entry.
    identity_pull : float in [0, 1], default=0.9
        :math:`\beta` of step 4 (0: none).
    n_steps : int >= 0, default=400
        Refinement steps (100 to 1000 per dataset in the published code; 0: none).
    batch_fraction : float in (0, 1], default=0.75
        Rows per refinement step, as a fraction of the pool.
    lr : float in (0, 1000000], default=0.0005
        AdamW learning rate.
    lr_min : float in [0, 1000000], default=1e-07
        End of the cosine schedule.
    weight_decay : float in [0, 1000000], default=0.0005
        AdamW weight decay.
    noise_std : float in [0, 1000000], default=0.035
        Gaussian input noise, applied to a batch with probability 1/2.
    dropout : float in [0, 1), default=0.05
        Input dropout, applied to a batch with probability 1/2.
    k : int >= 1, default=3
        THS: nearest prototypes per sample.
    margin_scale : float in (0, 1000000], default=2.0
        THS: :math:`s` of the semantic margin.
    hubness_weight : float in [0, 1000000], default=2.0
        THS: :math:`\beta_h` of the hubness term.
    logit_scale : float in (0, 10000], default=100.0
        Scale of :meth:`predict_proba`'s softmax (not used in fitting).
    device : str or torch.device, default="cpu"
        Torch device of the fit and the learned tensors.
    random_state : int in [0, 9223372036854775807] or None, default=0
        Seed of the batches, noise and dropout (the original draws them from the global RNGs);
        None draws a fresh seed each fit (kept in ``history_["random_state"]``).

    Attributes
    ----------
    W_, W0_ : tensor of shape (d_vfm + d_vlm, d_vlm)
        The refined map, and the Procrustes map after the identity pull.
    text_prototypes_ : tensor of shape (n_classes, d_vlm)
    centres_ : tensor of shape (n_classes, d_vfm + d_vlm)
    pseudo_labels_ : int array of shape (n_samples,)
    pseudo_confidence_ : array of shape (n_samples,)
    history_ : dict
        ``ucm`` (per round: ``plan_change``, ``sinkhorn_iter``, ``marginal_error``),
        ``sinkhorn_capped``, ``pseudo_label_agreement`` (the map's pool predictions against the
        pseudo-labels), ``timings``.
    n_features_vfm_, n_features_vlm_, n_classes_ : int
    classnames_ : list of str or None

    Examples
    --------
    >>> from gpua import ReferenceGPUA
    >>> from gpua.synthetic import make_planted
    >>> train, test = make_planted(n_samples=600, n_classes=8, random_state=0).split(400)
    >>> model = ReferenceGPUA(n_steps=20).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    >>> model.W_.shape, len(model.history_["ucm"])
    (torch.Size([96, 32]), 3)
    """

    _schema = ModelSchema(
        tensors={
            "W_": ("n_features_query", "n_features_vlm"),
            "W0_": ("n_features_query", "n_features_vlm"),
            "text_prototypes_": ("n_classes", "n_features_vlm"),
            "centres_": ("n_classes", "n_features_query"),
        },
        state={"history_": dict},
    )
    _parameter_constraints = {
        "lam": Interval(float, 0, 1),
        "temperature": POSITIVE,
        "eps": POSITIVE,
        "n_init_per_class": COUNT,
        "n_rounds": COUNT,
        "sinkhorn_max_iter": COUNT,
        "sinkhorn_tol": POSITIVE,
        "identity_pull": Interval(float, 0, 1),
        "n_steps": Interval(int, 0, None),
        "batch_fraction": Interval(float, 0, 1, closed="right"),
        "lr": TRAINING_POSITIVE,
        "lr_min": TRAINING_NON_NEGATIVE,
        "weight_decay": TRAINING_NON_NEGATIVE,
        "noise_std": TRAINING_NON_NEGATIVE,
        "dropout": Interval(float, 0, 1, closed="left"),
        "k": COUNT,
        "margin_scale": TRAINING_POSITIVE,
        "hubness_weight": TRAINING_NON_NEGATIVE,
        "logit_scale": LOGIT_SCALE,
        "device": DeviceName(),
        "random_state": OptionalOf(SEED),
    }
    #: Prediction reads both feature sets (report and CLI look at ``query``).
    query = "fused"

    def __init__(
        self,
        *,
        lam: float = 0.9,
        temperature: float = 0.1,
        eps: float = 0.05,
        n_init_per_class: int = 8,
        n_rounds: int = 3,
        sinkhorn_max_iter: int = 50,
        sinkhorn_tol: float = 1e-5,
        identity_pull: float = 0.9,
        n_steps: int = 400,
        batch_fraction: float = 0.75,
        lr: float = 5e-4,
        lr_min: float = 1e-7,
        weight_decay: float = 5e-4,
        noise_std: float = 0.035,
        dropout: float = 0.05,
        k: int = 3,
        margin_scale: float = 2.0,
        hubness_weight: float = 2.0,
        logit_scale: float = 100.0,
        device: str = "cpu",
        random_state: int | None = 0,
    ):
        self.lam = lam
        self.temperature = temperature
        self.eps = eps
        self.n_init_per_class = n_init_per_class
        self.n_rounds = n_rounds
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.sinkhorn_tol = sinkhorn_tol
        self.identity_pull = identity_pull
        self.n_steps = n_steps
        self.batch_fraction = batch_fraction
        self.lr = lr
        self.lr_min = lr_min
        self.weight_decay = weight_decay
        self.noise_std = noise_std
        self.dropout = dropout
        self.k = k
        self.margin_scale = margin_scale
        self.hubness_weight = hubness_weight
        self.logit_scale = logit_scale
        self.device = device
        self.random_state = random_state

    def _model_dims(self) -> dict[str, int]:
        return {**super()._model_dims(), "n_features_query": self.n_features_vfm_ + self.n_features_vlm_}

    def refine_config(self) -> RefineConfig:
        """Step 5's settings for :func:`gpua.refinement.refine`: no held-out rows, the published loss."""
        return RefineConfig(
            n_steps=int(self.n_steps), batch_size=1, lr=float(self.lr), weight_decay=float(self.weight_decay), k=int(self.k),
            margin_scale=float(self.margin_scale), hubness_weight=float(self.hubness_weight), orthogonality="none",
            ortho_weight=0.0, noise_std=float(self.noise_std), dropout=float(self.dropout), val_fraction=0.0, eval_every=1,
            patience=1, refine_tol=0.0, pool_augment=0, random_state=self.random_state,
            batch_fraction=float(self.batch_fraction), lr_min=float(self.lr_min), distance="euclidean",
            include_positive=True, full_sort=True,
        )

    def fit(self, vfm_features, vlm_features, text_prototypes, classnames=None) -> "ReferenceGPUA":
        """Learn the map from unlabeled paired features, the published code's way.

        Parameters
        ----------
        vfm_features : array of shape (n_samples, d_vfm)
        vlm_features : array of shape (n_samples, d_vlm)
        text_prototypes : array of shape (n_classes, d_vlm)
        classnames : sequence of str, optional

        Returns
        -------
        self
        """
        self._validate_params()
        check_fit_arguments(vlm_features, text_prototypes)
        Z, X, Y = check_triplet(vfm_features, vlm_features, text_prototypes)
        names = check_classnames(classnames, Y.shape[0])
        if X.shape[0] < Y.shape[0]:
            raise GPUAError(
                f"vfm_features has {X.shape[0]} rows but there are {Y.shape[0]} classes; the unlabeled pool needs "
                "at least one image per class."
            )
        normalize = torch.nn.functional.normalize
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        Xt = normalize(self._tensor(X), dim=1)
        Yt = normalize(self._tensor(Y), dim=1)
        Zt = self._tensor(Z)
        check_not_one_image(Zt.shape[0], pool_mean(Zt), pool_mean(Xt))  # as GPUA says it, not as NaN scores
        Q = reference_query(Zt, Xt)
        # tol=0: never "converged", so exactly n_rounds rounds run.
        ucm = mine_correspondences(
            Q, Xt, Yt, lam=float(self.lam), eps=float(self.eps), similarity_kind="neg_euclidean",
            temperature=float(self.temperature), n_init_per_class=int(self.n_init_per_class),
            max_outer=int(self.n_rounds), tol=0.0, sinkhorn_tol=float(self.sinkhorn_tol),
            sinkhorn_max_iter=int(self.sinkhorn_max_iter), solver="swav",
        )
        conf, labels = ucm.plan.max(1)
        t1 = time.perf_counter()
        W0 = identity_pull(procrustes_from_assignment(Q, ucm.plan, Yt, "hard"), float(self.identity_pull))
        del ucm.plan
        t2 = time.perf_counter()
        config = self.refine_config()  # its seed drawn once here when random_state is None, and recorded below
        W, _ = refine(W0, Q.__getitem__, Q.shape[0], Yt, labels, config)
        t3 = time.perf_counter()
        with torch.no_grad():
            pool_pred = mapped_cosines(Q, W, Yt).argmax(1)
        timings.update(ucm_s=t1 - t0, procrustes_s=t2 - t1, refine_s=t3 - t2)
        self.n_features_vfm_, self.n_features_vlm_, self.n_classes_ = Z.shape[1], X.shape[1], Y.shape[0]
        self.classnames_ = names
        self.W_, self.W0_, self.text_prototypes_, self.centres_ = W, W0, Yt, ucm.centres
        self.pseudo_labels_ = labels.cpu().numpy()
        self.pseudo_confidence_ = conf.cpu().numpy()
        self.history_ = {
            "ucm": ucm.history,
            "sinkhorn_capped": sum(h["sinkhorn_iter"] >= int(self.sinkhorn_max_iter) for h in ucm.history),
            "pseudo_label_agreement": float((pool_pred == labels).float().mean()),
            "timings": timings,
            "random_state": config.seed,  # replays this fit with random_state=None's draw (was not kept)
        }
        self._record_fit()  # as every estimator's fit: a refit forgets the provenance of the data fitted before
        return self

    def transform(self, vfm_features, vlm_features=None) -> np.ndarray:
        """Map features into the VLM text space: L2-normalised :math:`Q W`.

        Returns
        -------
        mapped : array of shape (n_samples, d_vlm)
        """
        return self._mapped(vfm_features, vlm_features).cpu().numpy()

    def _mapped(self, vfm_features, vlm_features) -> torch.Tensor:
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=True)
        return mapped_rows(reference_query(self._tensor(Z), self._tensor(X)), self.W_)

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:
        return self._mapped(vfm_features, vlm_features) @ self.text_prototypes_.T
