r"""The GPUA estimator: UCM -> Procrustes -> THS refinement, and prediction.

.. code-block:: python

    model = GPUA().fit(vfm_features, vlm_features, text_prototypes)   # no labels
    pred = model.predict(vfm_test, vlm_test)  # the default query="fused" reads both

Query modes: ``query="vfm"`` maps :math:`Q = Z` (the paper's text); ``query="fused"`` maps
:math:`Q = [Z, X]` (the published code's choice, a learned fusion that needs VLM features at
prediction too). Both are L2-normalised per part, concatenated, normalised again.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from ._base import AlignmentEstimator, ModelSchema
from ._errors import GPUAError
from ._validation import check_classnames, check_triplet
from .hubness import csls_scores, neighbourhood_radius, semantic_margins, ths_loss
from .procrustes import orthogonality_error, polar_factor, procrustes_from_assignment
from .query import QUERY_MODES, build_query
from .ucm import SIMILARITIES, mine_correspondences

__all__ = ["GPUA", "ORTHOGONALITY"]

ORTHOGONALITY = ("penalty", "project", "none")


class GPUA(AlignmentEstimator):
    r"""Geometry-Preserving Unsupervised Alignment of a VFM into a VLM's text space.

    Fits a linear map :math:`W` (d_q x d_vlm) from unlabeled paired features, in three steps:

    1. UCM: soft correspondences :math:`P` by entropic OT on
       :math:`(1-\lambda)\,\mathrm{sim}(Q, C) + \lambda\, \mathrm{sim}(X, Y)`, alternating with
       closed-form centres :math:`C` (:func:`gpua.ucm.mine_correspondences`);
    2. GPA: :math:`W_0 = U V^\top` from :math:`\mathrm{SVD}(Q^\top P Y)`
       (:func:`gpua.procrustes.procrustes_from_assignment`);
    3. THS refinement of :math:`W` on mini-batches (:func:`gpua.hubness.ths_loss`), kept close
       to orthogonal by a penalty (or a projection), stopped by a label-free rule: the THS loss
       on a held-out slice of the pool, against its pseudo-labels.

    Parameters
    ----------
    query : {"fused", "vfm"}
        Map :math:`[Z, X]` (default: on the demo's real CIFAR-10 features it beats ``"vfm"``
        by about 20 points; see the README) or :math:`Z` alone (the paper's text; needs no VLM
        at prediction).
    lam : float
        Weight :math:`\lambda` of the VLM term in UCM's fused score.
    eps : float
        Entropic regularisation of UCM's OT, in score units.
    similarity : {"cosine", "neg_euclidean"}
        Score form; ``"neg_euclidean"`` is :math:`-\|a-b\|/\tau` with ``temperature``.
    temperature : float
    class_prior : array of shape (n_classes,), optional
        Class marginal for OT (default uniform).
    rho : float, optional
        Semi-relaxed class marginal (KL weight) for unknown or imbalanced priors.
    n_init_per_class : int
        Samples per class for the confident centre initialisation.
    max_outer, tol : int, float
        UCM rounds at most, and the plan change that ends them.
    sinkhorn_tol, sinkhorn_max_iter : float, int
        Relative class-marginal error at which Sinkhorn stops, and its iteration cap.
    solver : {"torch", "pot"}
    assignment : {"soft", "hard"}
        Procrustes target from the full plan or its argmax.
    center : bool
        Subtract the pool mean of the normalised VFM features (VecMap's "center").
    refine : bool
        Run THS refinement after Procrustes.
    n_steps, batch_size, lr, weight_decay : int, int, float, float
        AdamW with a cosine schedule to ``lr * 1e-3``.
    k, margin_scale, hubness_weight : int, float, float
        THS: wrong prototypes per sample, :math:`s`, :math:`\beta`.
    orthogonality : {"none", "penalty", "project"}
        Leave :math:`W` free during refinement (default; the label-free early stopping guards
        against memorising pseudo-labels and measured best), keep it near (semi-)orthogonal by
        :math:`\gamma\|W^\top W - I\|_F^2`, or project it on the nearest (semi-)orthogonal
        map after every step (an SVD per step: slow for wide maps).
    ortho_weight : float
        :math:`\gamma`.
    noise_std, dropout : float
        Input augmentation, each applied to a batch with probability 1/2.
    val_fraction, eval_every, patience : float, int, int
        Label-free early stopping: hold out this fraction of the pool, evaluate its THS loss
        every ``eval_every`` steps, keep the best map, stop after ``patience`` evaluations
        without improvement.
    refine_tol : float
        Relative decrease of the held-out loss that counts as an improvement for early stopping
        (scikit-learn's ``tol`` with ``n_iter_no_change``): 0 keeps stepping while the loss
        creeps down; the default stops once ``patience`` evaluations gain less than 1% each.
    pool_augment : int
        Synthetic query rows per pseudo-class added to the refinement's training rows (0, the
        default, adds none; used only when refinement runs). For a few-shot pool: each
        pseudo-class :math:`k` (the plan's argmax) is calibrated from its training rows
        :math:`\{q_i\}` alone, as in geometric distribution calibration (:mod:`gpua.calibrate`):
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
    retrieval : {"cosine", "csls"}
        Prediction by cosine, or CSLS with prototype radii measured on the fit pool.
    csls_k : int
    logit_scale : float
        Scale of :meth:`predict_proba`'s softmax.
    device : str
    random_state : int or None
    verbose : bool

    Attributes
    ----------
    W_ : tensor of shape (d_q, d_vlm)
        The learned map.
    W0_ : tensor of shape (d_q, d_vlm)
        The Procrustes map before refinement.
    text_prototypes_ : tensor of shape (n_classes, d_vlm)
    centres_ : tensor of shape (n_classes, d_q)
    pseudo_labels_ : int array of shape (n_samples,)
    pseudo_confidence_ : array of shape (n_samples,)
    history_ : dict
        UCM rounds, refinement curve, timings.
    n_features_vfm_, n_features_vlm_, n_classes_ : int
    classnames_ : list of str or None
    """

    _schema = ModelSchema(
        tensors={
            "W_": ("n_features_query", "n_features_vlm"),
            "W0_": ("n_features_query", "n_features_vlm"),
            "text_prototypes_": ("n_classes", "n_features_vlm"),
            "centres_": ("n_classes", "n_features_query"),
            "vfm_mean_": ("n_features_vfm",),
            "proto_radius_": ("n_classes",),
        },
        optional=("vfm_mean_", "proto_radius_"),
        state={"history_": dict},
    )

    def __init__(
        self,
        *,
        query: str = "fused",
        lam: float = 0.9,
        eps: float = 0.05,
        similarity: str = "cosine",
        temperature: float = 0.1,
        class_prior=None,
        rho: float | None = None,
        n_init_per_class: int = 8,
        max_outer: int = 10,
        tol: float = 1e-3,
        sinkhorn_tol: float = 1e-5,
        sinkhorn_max_iter: int = 2000,
        solver: str = "torch",
        assignment: str = "soft",
        center: bool = False,
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
        retrieval: str = "cosine",
        csls_k: int = 10,
        logit_scale: float = 100.0,
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
        self.n_init_per_class = n_init_per_class
        self.max_outer = max_outer
        self.tol = tol
        self.sinkhorn_tol = sinkhorn_tol
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.solver = solver
        self.assignment = assignment
        self.center = center
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
        self.retrieval = retrieval
        self.csls_k = csls_k
        self.logit_scale = logit_scale
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        def choice(name, options):
            if getattr(self, name) not in options:
                raise GPUAError(f"{name}={getattr(self, name)!r} is unknown; use one of {tuple(options)}.")

        choice("query", QUERY_MODES)
        choice("similarity", SIMILARITIES)
        choice("assignment", ("soft", "hard"))
        choice("orthogonality", ORTHOGONALITY)
        choice("retrieval", ("cosine", "csls"))
        choice("solver", ("torch", "pot"))
        if not (isinstance(self.lam, (int, float)) and 0.0 <= self.lam <= 1.0):
            raise GPUAError(f"lam={self.lam!r} must lie in [0, 1] (the VLM term's weight; default 0.9).")
        for name in ("eps", "temperature", "lr", "tol", "sinkhorn_tol", "margin_scale", "logit_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise GPUAError(f"{name}={v!r} must be a positive number.")
        for name in ("n_steps", "batch_size", "k", "max_outer", "n_init_per_class", "eval_every", "csls_k"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= (0 if name == "n_steps" else 1)):
                raise GPUAError(f"{name}={v!r} must be a positive integer.")
        if not 0.0 <= self.val_fraction < 0.5:
            raise GPUAError(f"val_fraction={self.val_fraction!r} must lie in [0, 0.5).")
        if not (isinstance(self.refine_tol, (int, float)) and 0.0 <= self.refine_tol < 1.0):
            raise GPUAError(f"refine_tol={self.refine_tol!r} must lie in [0, 1) (relative loss decrease; 0 disables it).")
        if isinstance(self.pool_augment, bool) or not (isinstance(self.pool_augment, (int, np.integer)) and self.pool_augment >= 0):
            raise GPUAError(
                f"pool_augment={self.pool_augment!r} must be a non-negative integer: synthetic query rows per "
                "pseudo-class added before refinement (0 turns it off; 16 to 64 for a few-shot pool)."
            )

    def _query(self, Z, X) -> torch.Tensor:
        Zt = self._tensor(Z)
        Xt = None if X is None else self._tensor(X)
        return build_query(Zt, Xt, self.query, getattr(self, "vfm_mean_", None))

    def fit(self, vfm_features, vlm_features, text_prototypes, classnames=None, callback: Callable | None = None) -> "GPUA":
        """Learn the map from unlabeled paired features.

        Parameters
        ----------
        vfm_features : array of shape (n_samples, d_vfm)
        vlm_features : array of shape (n_samples, d_vlm)
            Same images, same order.
        text_prototypes : array of shape (n_classes, d_vlm)
        classnames : sequence of str, optional
        callback : callable, optional
            Called with a dict after each UCM round and each refinement evaluation.

        Returns
        -------
        self
        """
        if getattr(vfm_features, "_gpua_streaming_source", False):  # a gpua.stream.ShardedFeatures
            from .stream import fit_streaming
            return fit_streaming(self, vfm_features, text_prototypes, vlm_features=vlm_features, classnames=classnames, callback=callback, progress=self.verbose)
        self._check_params()
        Z, X, Y = check_triplet(vfm_features, vlm_features, text_prototypes)
        self.classnames_ = check_classnames(classnames, Y.shape[0])
        if self.class_prior is not None and len(np.asarray(self.class_prior)) != Y.shape[0]:
            raise GPUAError(f"class_prior has {len(np.asarray(self.class_prior))} entries for {Y.shape[0]} classes; give one per class.")
        if X.shape[0] < Y.shape[0]:
            raise GPUAError(
                f"vfm_features has {X.shape[0]} rows but there are {Y.shape[0]} classes; the unlabeled pool needs "
                "at least one image per class (16 per class is the paper's few-shot pool)."
            )
        self.n_features_vfm_, self.n_features_vlm_, self.n_classes_ = Z.shape[1], X.shape[1], Y.shape[0]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        normalize = torch.nn.functional.normalize
        if self.center:
            self.vfm_mean_ = normalize(self._tensor(Z), dim=1).mean(0)
        else:
            self.vfm_mean_ = None
        Q = self._query(Z, X)
        Xt = normalize(self._tensor(X), dim=1)
        Yt = normalize(self._tensor(Y), dim=1)
        ucm = mine_correspondences(
            Q, Xt, Yt, lam=float(self.lam), eps=float(self.eps), similarity_kind=self.similarity,
            temperature=float(self.temperature), class_prior=self.class_prior, rho=self.rho,
            n_init_per_class=int(self.n_init_per_class), max_outer=int(self.max_outer), tol=float(self.tol),
            sinkhorn_tol=float(self.sinkhorn_tol), sinkhorn_max_iter=int(self.sinkhorn_max_iter),
            solver=self.solver, callback=callback,
        )
        timings["ucm_s"] = time.perf_counter() - t0
        plan = ucm.plan
        conf, labels = plan.max(1)
        self.pseudo_labels_ = labels.cpu().numpy()
        self.pseudo_confidence_ = conf.cpu().numpy()
        self.centres_ = ucm.centres
        t1 = time.perf_counter()
        self.W0_ = procrustes_from_assignment(Q, plan, Yt, self.assignment)
        del plan, ucm.plan
        timings["procrustes_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        augment: dict[str, Any] = {"n_rows": 0}
        if self.refine and self.n_steps > 0:
            self.W_, curve = self._refine(lambda idx: Q[idx], Q.shape[0], Yt, labels, callback, augment)
        else:
            self.W_, curve = self.W0_.clone(), []
        timings["refine_s"] = time.perf_counter() - t2
        self.text_prototypes_ = Yt
        self.proto_radius_ = (
            neighbourhood_radius(Yt, normalize(Q @ self.W_, dim=1), self.csls_k) if self.retrieval == "csls" else None
        )
        with torch.no_grad():
            pool_pred = (torch.nn.functional.normalize(Q @ self.W_, dim=1) @ Yt.T).argmax(1)
        self.history_ = {
            "pseudo_label_agreement": float((pool_pred == labels).float().mean()),
            "ucm": ucm.history,
            "ucm_converged": ucm.converged,
            "refine": curve,
            "pool_augment": augment,
            "orthogonality_error": orthogonality_error(self.W_),
            "timings": timings,
        }
        return self

    def _refine(
        self,
        rows: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        Y: torch.Tensor,
        labels: torch.Tensor,
        callback,
        augment: dict | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """THS fine-tuning of W0 with label-free early stopping (see the class docstring).

        ``rows(idx)`` returns the query rows ``idx`` (an index tensor) on the model's device, so
        the pool may live in memory or be streamed from shards. With ``pool_augment`` the
        training rows are read once and extended by :meth:`_synthetic_rows`; ``augment``, when
        given, is updated with its record.
        """
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if self.random_state is None else int(self.random_state))
        dev = Y.device
        perm = torch.randperm(n, generator=gen)
        n_val = int(round(self.val_fraction * n)) if n >= 50 else 0
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        margins = semantic_margins(Y, self.margin_scale)
        W = torch.nn.Parameter(self.W0_.clone())
        opt = torch.optim.AdamW([W], lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.n_steps), eta_min=self.lr * 1e-3)
        eye = torch.eye(min(W.shape), dtype=W.dtype, device=W.device)
        gram = (lambda M: M.T @ M) if W.shape[0] >= W.shape[1] else (lambda M: M @ M.T)
        labels = labels.cpu()
        train_rows, train_labels = rows, labels
        if self.pool_augment:
            # From the training rows only: the held-out rows that decide early stopping must
            # neither anchor nor shape the synthetic rows.
            real = rows(train_idx)
            Q_syn, y_syn, record = self._synthetic_rows(real, labels[train_idx], Y.shape[0])
            bank = torch.cat([real, Q_syn.to(device=real.device, dtype=real.dtype)])
            train_labels = torch.cat([labels[train_idx], y_syn])
            train_rows, train_idx = bank.__getitem__, torch.arange(bank.shape[0])
            if augment is not None:
                augment.update(record)
        bs = min(int(self.batch_size), train_idx.numel())

        def loss_on(idx, Wm):
            return ths_loss(rows(idx) @ Wm, Y, labels[idx].to(dev), margins, k=self.k, hubness_weight=self.hubness_weight)

        best_W, best_val, bad, curve = W.detach().clone(), float("inf"), 0, []
        if n_val:
            with torch.no_grad():
                best_val = float(loss_on(val_idx, W))
            curve.append({"step": 0, "val_loss": best_val})
        for step in range(1, self.n_steps + 1):
            pick = train_idx[torch.randint(train_idx.numel(), (bs,), generator=gen)]
            q = train_rows(pick)
            if self.noise_std and torch.rand((), generator=gen) < 0.5:
                q = q + self.noise_std * torch.randn(q.shape, generator=gen).to(q.device)
            if self.dropout and torch.rand((), generator=gen) < 0.5:
                drop = (torch.rand(q.shape, generator=gen) < self.dropout).to(q.device)
                q = q.masked_fill(drop, 0.0).mul_(1.0 / (1.0 - self.dropout))  # half the time of q * keep / (1 - p)
            loss = ths_loss(q @ W, Y, train_labels[pick].to(dev), margins, k=self.k, hubness_weight=self.hubness_weight)
            if self.orthogonality == "penalty":
                loss = loss + self.ortho_weight * ((gram(W) - eye) ** 2).sum() / eye.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if self.orthogonality == "project":
                with torch.no_grad():
                    W.copy_(polar_factor(W))
            if n_val and (step % self.eval_every == 0 or step == self.n_steps):
                with torch.no_grad():
                    val = float(loss_on(val_idx, W))
                entry = {"step": step, "train_loss": float(loss.detach()), "val_loss": val}
                curve.append(entry)
                if callback is not None:
                    callback(entry)
                # As scikit-learn's early stopping: any decrease updates the kept map, but only a
                # decrease of more than refine_tol (relative) resets the patience counter.
                bad = 0 if val < best_val - max(1e-6, self.refine_tol * abs(best_val)) else bad + 1
                if val < best_val:
                    best_val, best_W = val, W.detach().clone()
                if bad >= self.patience:
                    break
        if not n_val:
            best_W = W.detach().clone()
        return best_W, curve

    def _synthetic_rows(self, Q: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        r"""``pool_augment`` calibrated rows per pseudo-class around the rows ``Q`` (see the class docstring).

        Parameters
        ----------
        Q : tensor of shape (n, d_q)
            The refinement's training rows.
        labels : int tensor of shape (n,)
            Their hard pseudo-labels.
        n_classes : int

        Returns
        -------
        Q_syn : float32 tensor of shape (n_syn, d_q)
            Rows L2-normalised.
        y_syn : int64 tensor of shape (n_syn,)
        record : dict
            ``n_rows`` (n_syn), ``per_class`` (rows per class), ``oas_shrinkage`` (:math:`\rho_k`,
            None for a class with fewer than two rows).
        """
        from .calibrate import oas_factor, sample_around  # late: gpua.calibrate imports the package

        # Its own stream: refinement's torch generator is not touched, so the batches drawn
        # afterwards depend on the pool size only.
        rng = np.random.default_rng(0 if self.random_state is None else int(self.random_state))
        X = Q.detach().cpu().double().numpy()
        y = labels.cpu().numpy()
        m = int(self.pool_augment)
        out, per_class, rhos = [], [], []
        for k in range(n_classes):
            Xk = X[y == k]
            if Xk.shape[0] < 2:  # no covariance to calibrate from
                per_class.append(0)
                rhos.append(None)
                continue
            L, rho = oas_factor(Xk)
            out.append(sample_around(Xk, L, m, random_state=rng))
            per_class.append(m)
            rhos.append(rho)
        d = X.shape[1]
        Q_syn = torch.from_numpy(np.concatenate(out) if out else np.zeros((0, d), np.float32))
        y_syn = torch.repeat_interleave(torch.arange(n_classes), torch.tensor(per_class))
        record = {"n_rows": int(sum(per_class)), "per_class": per_class, "oas_shrinkage": rhos}
        return torch.nn.functional.normalize(Q_syn, dim=1), y_syn, record

    # ------------------------------------------------------------------------------------------
    def transform(self, vfm_features, vlm_features=None) -> np.ndarray:
        """Map features into the VLM text space: L2-normalised :math:`Q W`.

        Returns
        -------
        mapped : array of shape (n_samples, d_vlm)
        """
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=self.query == "fused")
        return torch.nn.functional.normalize(self._query(Z, X) @ self.W_, dim=1).cpu().numpy()

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=self.query == "fused")
        M = torch.nn.functional.normalize(self._query(Z, X) @ self.W_, dim=1)
        sims = M @ self.text_prototypes_.T
        if self.retrieval == "csls":
            r_query = sims.topk(min(self.csls_k, sims.shape[1]), dim=1).values.mean(1)
            return csls_scores(sims, r_query, self.proto_radius_)
        return sims
