r"""The GPUA fit, written once for every driver: check, mine, map, refine, self-learn, set state.

``GPUA.fit`` (arrays in memory), :func:`gpua.stream.fit_streaming` (chunks within a memory
budget, here or on Dask) and :func:`gpua.stream.fit_federated` (clients' aggregates) differ only
in *where the rows are*. Each is a thin driver (an object with the methods of
:class:`FitDriver`) around :func:`run_fit`, which holds the one sequence of the method, as
dask-ml's ``KMeans.fit`` delegates to ``k_means(...)``:

1. :func:`check_entry`: every parameter against :data:`PARAMETERS` (its type and range,
   declared once), and the pool against the classes;
2. UCM (``driver.mine``): soft correspondences on the fused score
   :math:`(1-\lambda)\,\mathrm{sim}(Q, C) + \lambda\,\mathrm{sim}(X, Y)`;
3. Procrustes (``driver.procrustes``): :math:`W_0 = \mathrm{polar}(Q^\top P Y)`;
4. THS refinement (``driver.refine``, which calls :func:`gpua.refinement.refine`);
5. optional **self-learning rounds** (:func:`self_learning_rounds`): mine again with the fitted
   map's own scores :math:`\mathrm{normalize}(Q W) Y^\top` in place of the VLM term
   :math:`X Y^\top` (VecMap's self-learning), then Procrustes and refinement again; a round
   whose pseudo-labels are less consistent with the VFM's neighbourhoods
   (:func:`knn_label_consistency`, label-free) is rolled back and the rounds stop, and a round
   whose re-mined labels barely moved (``self_learning_tol``) ends them without a refit;
6. :class:`~gpua.ConvergenceWarning` when Sinkhorn or UCM stopped at their caps;
7. :func:`set_fitted_state`: the same learned attributes and ``history_`` keys for every driver.

Before step 2 each driver centres and whitens the query on the pool (``center``, ``whiten``:
:func:`gpua.query.whitening_map` in memory, chunk sums in the others), and the
whitening is folded into the maps when :func:`run_fit` returns (:func:`unwhiten`, before
:func:`set_fitted_state`), so steps 2-6 never know of it.

This module imports neither :mod:`gpua.estimator` nor :mod:`gpua.stream`; both import it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch

from ._backend import as_tensor, resolve_device
from ._errors import ConvergenceWarning, GPUAError, warn_user
from ._validation import _fix_row_scale, check_classnames, check_distinct_rows, check_matrix, check_triplet, refuse_sparse, row_scale_suspects
from .hubness import neighbourhood_radius
from .params import COUNT, LOGIT_SCALE, NON_NEGATIVE, POSITIVE, SEED, TRAINING_NON_NEGATIVE, TRAINING_POSITIVE, AnyOf, Boolean, Constraint, DeviceName, Interval, OptionalOf, Options, Weights, check_params
from .prior import PRIOR_ESTIMATES, balanced_mean, em_class_prior
from .probability import PROBA_SCALE_ROWS, estimator_confidence_sums, matched_scale
from .procrustes import COMPLETIONS, orthogonality_error, procrustes_from_assignment, query_vlm_cross
from .projection import projected_plan, query_moments, ridge_projection
from .query import (
    QUERY_MODES, build_query, centre_rows, mapped_cosines, mapped_rows, pool_mean, target_prototypes, whitening_map,
    whitening_width, zero_shot_cosines,
)
from .refinement import RefineConfig, refine
from .ucm import SIMILARITIES, class_centres, mine_correspondences

__all__ = [
    "PARAMETERS",
    "ORTHOGONALITY",
    "MiningConfig",
    "FitConfig",
    "check_entry",
    "check_fit_arrays",
    "Mined",
    "FitDriver",
    "FitState",
    "run_fit",
    "self_learning_rounds",
    "consistency_sample",
    "knn_label_consistency",
    "label_consistency",
    "convergence_problems",
    "set_fitted_state",
    "proba_sample",
    "ArrayPool",
    "fit_arrays",
]

ORTHOGONALITY = ("penalty", "project", "none")

#: Every :class:`gpua.GPUA` parameter's admissible values (defaults: the signature's).
PARAMETERS: dict[str, Constraint] = {
    "query": Options(QUERY_MODES),
    "lam": Interval(float, 0, 1),
    "eps": POSITIVE,
    "similarity": Options(SIMILARITIES),
    "temperature": POSITIVE,
    "class_prior": OptionalOf(AnyOf((Options(PRIOR_ESTIMATES), Weights()))),
    "rho": OptionalOf(POSITIVE),
    "plan_ridge": OptionalOf(POSITIVE),
    "n_init_per_class": COUNT,
    "max_outer": COUNT,
    "tol": POSITIVE,
    "sinkhorn_tol": POSITIVE,
    "sinkhorn_max_iter": COUNT,
    "solver": Options(("torch", "pot")),
    "assignment": Options(("soft", "hard")),
    "procrustes_completion": Options(COMPLETIONS),
    "center": Boolean(),
    "center_vlm": Boolean(),
    "whiten": OptionalOf(AnyOf((COUNT, Options(("auto",))))),
    "whiten_shrink": NON_NEGATIVE,
    "refine": Boolean(),
    "n_steps": Interval(int, 0, None),
    "batch_size": COUNT,
    "lr": TRAINING_POSITIVE,
    "weight_decay": TRAINING_NON_NEGATIVE,
    "k": COUNT,
    "margin_scale": TRAINING_POSITIVE,
    "hubness_weight": TRAINING_NON_NEGATIVE,
    "orthogonality": Options(ORTHOGONALITY),
    "ortho_weight": TRAINING_NON_NEGATIVE,
    "noise_std": TRAINING_NON_NEGATIVE,
    "dropout": Interval(float, 0, 1, closed="left"),
    "val_fraction": Interval(float, 0, 0.5, closed="left"),
    "eval_every": COUNT,
    "patience": COUNT,
    "refine_tol": Interval(float, 0, 1, closed="left"),
    "pool_augment": Interval(int, 0, None),
    "self_learning": Interval(int, 0, None),
    "self_learning_tol": Interval(float, 0, 1, closed="left"),
    "retrieval": Options(("cosine", "csls")),
    "csls_k": COUNT,
    "logit_scale": LOGIT_SCALE,
    "proba_scale": OptionalOf(AnyOf((LOGIT_SCALE, Options(("auto",))))),
    "device": DeviceName(),
    "random_state": OptionalOf(SEED),
    "verbose": Boolean(),
}

#: Settings that change nothing while another parameter has one of some values: name ->
#: (the other parameter, those values, why). A command line that gives one there is refused
#: (:func:`gpua.cli._common.estimator_overrides`), as a refinement setting with ``refine=False`` is.
IDLE_UNDER: dict[str, tuple[str, tuple, str]] = {
    "whiten_shrink": ("whiten", (None,), "whitens nothing"),
    "csls_k": ("retrieval", ("cosine",), "ranks by plain cosine, with no neighbourhoods"),
    "self_learning_tol": ("self_learning", (0,), "runs no self-learning round"),
    "temperature": ("similarity", ("cosine",), "takes no temperature (only neg_euclidean does)"),
}

#: Neighbours per row of the self-learning criterion, and its subsample's size at most.
CONSISTENCY_K = 10
CONSISTENCY_ROWS = 2000


# --- configuration and the one entry check ---------------------------------------------------
@dataclass(frozen=True)
class MiningConfig:
    """UCM's settings (the :class:`gpua.GPUA` parameters of the same names)."""

    lam: float
    eps: float
    similarity: str
    temperature: float
    class_prior: Any
    rho: float | None
    plan_ridge: float | None
    n_init_per_class: int
    max_outer: int
    tol: float
    sinkhorn_tol: float
    sinkhorn_max_iter: int
    solver: str
    assignment: str
    procrustes_completion: str  # Procrustes' as ``assignment`` is: both shape W0 from the mined plan

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "MiningConfig":
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def ucm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gpua.ucm.mine_correspondences`."""
        return dict(
            lam=float(self.lam), eps=float(self.eps), similarity_kind=self.similarity, temperature=float(self.temperature),
            class_prior=self.class_prior, rho=self.rho, n_init_per_class=int(self.n_init_per_class),
            max_outer=int(self.max_outer), tol=float(self.tol), sinkhorn_tol=float(self.sinkhorn_tol),
            sinkhorn_max_iter=int(self.sinkhorn_max_iter), solver=self.solver,
        )


@dataclass(frozen=True)
class FitConfig:
    """A checked parameter set, split by stage (built by :func:`check_entry`)."""

    query: str
    center: bool
    center_vlm: bool
    whiten: int | str | None
    whiten_shrink: float
    refine: bool
    retrieval: str
    csls_k: int
    device: torch.device
    verbose: bool
    self_learning: int
    self_learning_tol: float
    mining: MiningConfig
    refinement: RefineConfig

    @property
    def refine_on(self) -> bool:
        return bool(self.refine and self.refinement.n_steps > 0)

    @property
    def csls_k_used(self) -> int:
        """``csls_k`` when prototype radii are needed (``retrieval="csls"``), else 0."""
        return int(self.csls_k) if self.retrieval == "csls" else 0


_DRIVERS = ("memory", "streamed", "federated")


def check_class_prior_size(prior, n_classes: int, name: str = "class_prior") -> None:
    """Refuse a ``class_prior`` that does not give one weight per class (None or a string, which
    the parameter check refuses by name, pass here)."""
    if prior is None or isinstance(prior, str):
        return
    size = int(np.asarray(prior.detach().cpu() if hasattr(prior, "detach") else prior, dtype=object).size)
    if size != n_classes:
        raise GPUAError(f"{name} has {size} weight(s) for {n_classes} classes; give one weight per class, in the order of the classes.")


def check_entry(params: dict[str, Any], n_samples: int, n_classes: int, *, driver: str = "memory") -> FitConfig:
    """The entry check of every GPUA fit: parameters, then the pool against the classes.

    Parameters
    ----------
    params : dict
        The estimator's ``get_params()``.
    n_samples, n_classes : int
        Rows of the unlabeled pool (all clients together) and text prototypes.
    driver : {"memory", "streamed", "federated"}
        Streamed and federated fits run their own chunked Sinkhorn (``solver="torch"``); a
        streamed fit cannot augment the pool (it never holds every row of a pseudo-class).

    Returns
    -------
    FitConfig

    Raises
    ------
    GPUAError
        A parameter outside its range (the message names it and the range), a ``class_prior``
        of the wrong length, a pool smaller than the number of classes, or a setting the driver
        cannot run.
    """
    if driver not in _DRIVERS:
        raise GPUAError(f"driver={driver!r} is unknown; use one of {_DRIVERS}.")  # pragma: no cover - internal
    check_params(PARAMETERS, params, "GPUA")
    check_class_prior_size(params["class_prior"], n_classes)
    if n_samples < n_classes:
        raise GPUAError(
            f"the unlabeled pool has {n_samples} rows but there are {n_classes} classes; it needs "
            "at least one image per class (16 per class is the paper's few-shot pool)."
        )
    if params["center_vlm"] and n_classes < 2:
        raise GPUAError(
            "center_vlm=True centres the text prototypes on their mean, which needs at least 2 classes; "
            "pass more text prototypes, or set center_vlm=False."
        )
    if driver != "memory" and params["solver"] != "torch":
        raise GPUAError(f"solver={params['solver']!r}: {driver} fits run their own chunked Sinkhorn; use solver='torch'.")
    whiten = params["whiten"]
    if whiten is not None and not isinstance(whiten, str) and int(whiten) < n_classes:
        # Fewer whitened directions than classes cannot keep the classes apart (README: "The
        # width must exceed the classes"); a user's choice, so said, not refused.
        warn_user(f"whiten={whiten} keeps fewer directions than the {n_classes} classes: classes will merge; "
                  f"use whiten='auto' (at least 2 x classes) or an int of {2 * n_classes} or more.")
    if driver != "memory" and isinstance(params["class_prior"], str) and params["class_prior"] == "estimate":
        raise GPUAError(
            f"class_prior='estimate' needs a first whole fit and every row's scores under it, which a {driver} fit "
            "does not repeat; use class_prior='zero_shot' (the VLM's zero-shot probabilities: for strongly long-tailed "
            "pools), pass the class frequencies as a list (counts or fractions, in class order), or fit GPUA on in-memory arrays."
        )
    if driver == "streamed" and params["pool_augment"]:
        raise GPUAError(
            f"pool_augment={params['pool_augment']}: augmenting the pool is in-memory only (its per-pseudo-class "
            "statistics need every training row at once, which a streamed fit never holds); set pool_augment=0, "
            "or fit GPUA on in-memory arrays."
        )
    return FitConfig(
        query=params["query"], center=bool(params["center"]), center_vlm=bool(params["center_vlm"]),
        whiten=params["whiten"], whiten_shrink=float(params["whiten_shrink"]),
        refine=bool(params["refine"]), retrieval=params["retrieval"],
        csls_k=int(params["csls_k"]), device=resolve_device(params["device"]), verbose=bool(params["verbose"]),
        self_learning=int(params["self_learning"]), self_learning_tol=float(params["self_learning_tol"]),
        mining=MiningConfig.from_params(params), refinement=RefineConfig.from_params(params),
    )


def _rescaled_rows(A: torch.Tensor, name: str) -> torch.Tensor:
    """``A`` with the rows float32 cannot normalise rescaled exactly, as arrays are (:func:`gpua._validation._fix_row_scale`).

    Only the suspect rows (:func:`gpua._validation.row_scale_suspects`) visit the host; the
    tensor is returned as it is when there are none.
    """
    suspect = row_scale_suspects(A.abs().amax(1).double(), A.shape[1]).nonzero()[:, 0]
    if suspect.numel() == 0:
        return A
    rows = _fix_row_scale(A[suspect].cpu().numpy(), name, rescale=True)
    out = A.to(torch.float64 if A.dtype == torch.float64 else torch.float32, copy=True)
    out[suspect] = torch.from_numpy(np.asarray(rows)).to(device=out.device, dtype=out.dtype)
    return out


def _device_matrix(A: torch.Tensor, name: str, device: torch.device, n_rows: int | None = None, n_cols: int | None = None) -> torch.Tensor:
    """A torch tensor checked where it lives (no copy through the host), as float32 on ``device``."""
    refuse_sparse(A, name)
    if A.ndim != 2 or A.shape[0] == 0 or A.shape[1] == 0:
        raise GPUAError(f"{name} must be a non-empty 2-D (n, d) tensor but has shape {tuple(A.shape)}.")
    if A.is_complex() or A.dtype == torch.bool:
        raise GPUAError(f"{name} has dtype {A.dtype}; pass a real floating-point tensor.")
    A = A.detach()
    if A.is_floating_point():
        # Checked in the tensor's own precision: float64 values beyond float32's range are
        # rescaled below, not turned into the inf the cast would make.
        bad = ~torch.isfinite(A).all(1)
        if bool(bad.any()):
            raise GPUAError(f"{name} contains NaN or inf in {int(bad.sum())} row(s) (first: row {int(bad.nonzero()[0, 0])}); drop or re-extract those rows.")
        A = _rescaled_rows(A, name)
    A = A.to(device=device, dtype=torch.float32)
    zero = ~(A != 0).any(1)
    if bool(zero.any()):
        raise GPUAError(f"{name} has {int(zero.sum())} all-zero row(s) (first: row {int(zero.nonzero()[0, 0])}) that cannot be normalised; remove them.")
    if n_rows is not None and A.shape[0] != n_rows:
        raise GPUAError(f"{name} has {A.shape[0]} rows but {n_rows} were expected; pass one row per image, in the same order.")
    if n_cols is not None and A.shape[1] != n_cols:
        raise GPUAError(f"{name} has width {A.shape[1]} but {n_cols} was expected; use features from the same model.")
    return A


def check_not_one_image(n_samples: int, vfm_mean: torch.Tensor, vlm_mean: torch.Tensor | None) -> None:
    """Refuse a pool whose query rows all point one way (one photo copied, a constant feature file).

    Every row would get the same scores, so the fit could only give every image one class; with
    ``center=True`` the centred rows are all zero and the map learns nothing, silently. Told from
    the pool means of the normalised rows (:func:`gpua.query.pool_mean`), whose norm is 1 exactly
    when every row is the same direction: no copy of the rows. ``vlm_mean`` is None for
    ``query="vfm"`` (only the VFM rows make the query then).
    """
    same = all(float(m.double().norm()) >= 1 - 1e-6 for m in (vfm_mean, vlm_mean) if m is not None)
    if same and n_samples > 1:
        what = "vfm_features" + (" and vlm_features" if vlm_mean is not None else "")
        raise GPUAError(f"every row of {what} points the same way ({n_samples} copies of one image?): there is nothing to align "
                        "and every image would get one class; fit on a pool of distinct images.")


def check_distinct_images(Z: torch.Tensor, X: torch.Tensor, n_classes: int) -> None:
    """Refuse an in-memory pool of fewer distinct images than classes (a few photos copied many times).

    The balanced plan would still give every class its share of the copies, and the fit would run
    to a map that predicts at chance, silently; :func:`check_entry` refuses fewer *rows* than
    classes, this the same for distinct ``(vfm, vlm)`` rows. Rows that differ in their first
    columns are distinct; only when those leave too few are whole rows told apart, by a random
    projection summed in float64 chunk by chunk (no copy of the pool). Distinct rows collide with
    probability zero; copies project equally, unless a kernel rounds one row apart from another,
    which can only count a copy as distinct: the check may then pass a bad pool, never refuse a
    good one.
    """
    prefix = torch.cat([Z[:, :16], X[:, :16]], dim=1)
    if int(torch.unique(prefix, dim=0).shape[0]) >= n_classes:
        return
    g = torch.Generator(device="cpu").manual_seed(0)
    r_z, r_x = (torch.randn(A.shape[1], generator=g, dtype=torch.float64).to(A.device) for A in (Z, X))
    step = 4096
    proj = torch.cat([Z[i:i + step].double() @ r_z + X[i:i + step].double() @ r_x for i in range(0, Z.shape[0], step)])
    n_distinct = int(torch.unique(proj).shape[0])
    if n_distinct < n_classes:
        raise GPUAError(
            f"the unlabeled pool has {Z.shape[0]} rows but only {n_distinct} distinct images (the others are copies) for "
            f"{n_classes} classes; it needs at least one image per class (16 per class is the paper's few-shot pool): "
            "fit on distinct images."
        )


def check_fit_arrays(Z, X, Y, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three inputs of an in-memory fit as float32 tensors on ``device``, checked.

    Arrays are checked by :func:`gpua._validation.check_triplet`; torch tensors are checked on
    their own device and moved to ``device`` at most once (CUDA tensors given to a CUDA fit never
    pass through the host).
    """
    if not any(isinstance(A, torch.Tensor) for A in (Z, X, Y)):
        Z, X, Y = check_triplet(Z, X, Y)
        return as_tensor(Z, device), as_tensor(X, device), as_tensor(Y, device)
    def tensor(A, name: str) -> torch.Tensor:  # the inputs given as arrays or lists get the array checks' messages
        return A if isinstance(A, torch.Tensor) else torch.as_tensor(check_matrix(A, name))

    Zt = _device_matrix(tensor(Z, "vfm_features"), "vfm_features", device)
    Xt = _device_matrix(tensor(X, "vlm_features"), "vlm_features", device, n_rows=Zt.shape[0])
    Yt = _device_matrix(tensor(Y, "text_prototypes"), "text_prototypes", device, n_cols=Xt.shape[1])
    if Yt.shape[0] < 2:
        raise GPUAError(f"text_prototypes has {Yt.shape[0]} class; at least 2 classes are needed.")
    check_distinct_rows(Yt.cpu().numpy(), "text_prototypes")
    return Zt, Xt, Yt


# --- what a driver provides ------------------------------------------------------------------
@dataclass
class Mined:
    """One UCM run as the core needs it, whichever driver ran it.

    Attributes
    ----------
    labels : int64 tensor of shape (n_samples,), CPU
        Argmax of the plan (pseudo-labels).
    confidence : float32 tensor of shape (n_samples,), CPU
        Max of the plan's rows (rows sum to one).
    centres : tensor of shape (n_classes, d_q)
    history : list of dict
        Per UCM round: ``round``, ``plan_change``, ``sinkhorn_iter``, ``marginal_error``.
    converged : bool
    payload : object
        The driver's own input to :meth:`FitDriver.procrustes` (the plan, or
        :math:`Q^\\top P Y`); dropped once used.
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    centres: torch.Tensor
    history: list[dict]
    converged: bool
    payload: Any = None


class FitDriver(Protocol):
    """Where the rows are: the operations :func:`run_fit` asks of a driver."""

    def mine(self, score_map: torch.Tensor | None, callback: Callable | None) -> Mined:
        """UCM with the VLM term :math:`X Y^\\top`, or with :math:`\\mathrm{normalize}(Q W) Y^\\top` for ``score_map=W``."""

    def procrustes(self, mined: Mined) -> torch.Tensor:
        """:math:`W_0` from the mined correspondences."""

    def refine(self, W0: torch.Tensor, labels: torch.Tensor, config: RefineConfig, callback: Callable | None) -> tuple[torch.Tensor, list[dict], dict]:
        """(map, refinement record, ``pool_augment`` record)."""

    def consistency(self, labels: torch.Tensor) -> float:
        """:func:`knn_label_consistency` of the pool's pseudo-labels."""

    def finish(self, W: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        """(agreement of the map's cosine-argmax pool predictions with ``labels``, whatever ``retrieval``; CSLS prototype radii or None)."""


@dataclass
class _Round:
    mined: Mined
    W0: torch.Tensor
    W: torch.Tensor
    curve: list[dict]
    augment: dict


@dataclass
class FitState:
    """Everything a fit learns; :func:`set_fitted_state` sets each as ``<name>_`` on the estimator."""

    W: torch.Tensor
    W0: torch.Tensor
    centres: torch.Tensor
    text_prototypes: torch.Tensor
    vfm_mean: torch.Tensor | None
    vlm_mean: torch.Tensor | None
    proto_radius: torch.Tensor | None
    pseudo_labels: np.ndarray
    pseudo_confidence: np.ndarray
    n_features_vfm: int
    n_features_vlm: int
    n_classes: int
    classnames: list[str] | None
    history: dict = field(default_factory=dict)


def set_fitted_state(estimator, state: FitState, proba_pool: Sequence[tuple[int, Callable[[torch.Tensor], tuple[Any, Any]]]]):
    """Set ``W_``, ``W0_``, ``centres_``... ``history_`` from ``state``, then ``proba_scale_``; return ``estimator``.

    The one place where a fit's learned attributes are written, for every driver.

    Parameters
    ----------
    estimator : GPUA
    state : FitState
    proba_pool : sequence of (int, callable)
        Where the pool's rows are, for ``proba_scale="auto"``: ``(n_rows, rows)`` per part (the
        pool, or each federated client), ``rows(ids) -> (vfm_rows, vlm_rows)`` of the part's own
        row ids. Each part's :func:`proba_sample` under the fit's seed is read (with
        ``proba_scale="auto"`` only).
    """
    for f in fields(state):
        setattr(estimator, f.name + "_", getattr(state, f.name))
    estimator._record_fit()
    estimator.proba_scale_ = None
    if estimator.proba_scale == "auto":  # the map and the radii are set: the scale is of the fitted scores
        t = time.perf_counter()
        seed = estimator.history_["random_state"]
        found = matched_scale(estimator_confidence_sums(estimator, *rows(proba_sample(n, seed))) for n, rows in proba_pool)
        estimator.proba_scale_ = found["scale"]
        estimator.history_["proba_scale"] = found
        estimator.history_.setdefault("timings", {})["proba_scale_s"] = time.perf_counter() - t
    return estimator


def proba_sample(n: int, random_state: int | None) -> torch.Tensor:
    """Sorted ids of the pool rows ``proba_scale="auto"`` is chosen on: a seeded sample of at most
    :data:`gpua.probability.PROBA_SCALE_ROWS` of ``n`` (the fit's own seed, ``history_["random_state"]``)."""
    return consistency_sample(n, PROBA_SCALE_ROWS, 0 if random_state is None else int(random_state))


# --- verbose lines ---------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _stage_callback(stage: str, verbose: bool, callback: Callable | None) -> Callable | None:
    """The user's callback, preceded by a line on stderr per entry when ``verbose``."""
    if not verbose:
        return callback

    def say(entry: dict) -> None:
        print(f"[GPUA] {stage}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in entry.items() if not isinstance(v, (list, dict))),
              file=sys.stderr, flush=True)
        if callback is not None:
            callback(entry)

    return say


# --- the core --------------------------------------------------------------------------------
def _mine(driver: FitDriver, config: FitConfig, score_map, callback, timings: dict[str, float]) -> Mined:
    t0 = time.perf_counter()
    mined = driver.mine(score_map, _stage_callback("UCM round", config.verbose, callback))
    timings["ucm_s"] = timings.get("ucm_s", 0.0) + time.perf_counter() - t0
    return mined


def _map(driver: FitDriver, config: FitConfig, mined: Mined, callback, timings: dict[str, float]) -> _Round:
    """Procrustes and refinement on ``mined``'s correspondences: a round."""
    t1 = time.perf_counter()
    W0 = driver.procrustes(mined)
    mined.payload = None
    t2 = time.perf_counter()
    if config.refine_on:
        W, curve, augment = driver.refine(W0, mined.labels, config.refinement, _stage_callback("refinement", config.verbose, callback))
    else:
        W, curve, augment = W0.clone(), [], {"n_rows": 0}
    t3 = time.perf_counter()
    for key, dt in (("procrustes_s", t2 - t1), ("refine_s", t3 - t2)):
        timings[key] = timings.get(key, 0.0) + dt
    return _Round(mined, W0, W, curve, augment)


def self_learning_rounds(
    first,
    first_labels: torch.Tensor,
    remine: Callable[[Any], Any],
    refit: Callable[[Any], Any],
    labels_of: Callable[[Any], torch.Tensor],
    criterion: Callable[[torch.Tensor], float],
    rounds: int,
    tol: float,
    callback: Callable | None = None,
) -> tuple[Any, list[dict]]:
    r"""Re-mine, re-map, keep or roll back: the self-learning loop, whatever a round holds.

    Round :math:`r` re-mines with the previous round's map (``remine(previous)``), giving the
    pseudo-labels :math:`\hat l^{(r)}` and the changed fraction
    :math:`\delta^{(r)} = \frac1N \#\{i: \hat l^{(r)}_i \ne \hat l^{(r-1)}_i\}`. If
    :math:`\delta^{(r)} < ` ``tol`` (or nothing changed) the labels have settled: the loop stops
    and keeps the previous round, without refitting a map that would barely move. Otherwise
    ``refit`` maps the new correspondences and the label-free ``criterion`` :math:`c^{(r)}` is
    taken; if :math:`c^{(r)} < c^{(r-1)}` the round is rolled back (the previous round is kept)
    and the loop stops, else it is kept and the next round runs.

    Parameters
    ----------
    first : object
        Round 0 (the plain fit).
    first_labels : int64 tensor of shape (n_samples,)
        Its pseudo-labels.
    remine : callable
        ``previous round -> correspondences`` mined with its map.
    refit : callable
        ``correspondences -> round``: the map fitted to them.
    labels_of : callable
        Correspondences -> their pseudo-labels, int64 tensor of shape (n_samples,).
    criterion : callable
        Pseudo-labels -> consistency score (higher is better), e.g. :func:`knn_label_consistency`.
    rounds : int
        Rounds at most (0: none).
    tol : float in [0, 1)
    callback : callable, optional
        Called with each round's record.

    Returns
    -------
    kept : object
        The last kept round.
    records : list of dict
        Round 0 then one per round run: ``round``, ``label_change`` (None for round 0),
        ``criterion`` (None for a settled round, which is not refitted), ``kept``, ``refit``.

    Examples
    --------
    >>> import torch
    >>> labels = {0: torch.tensor([0, 0, 1, 1]), 1: torch.tensor([0, 1, 1, 1]), 2: torch.tensor([1, 1, 1, 1])}
    >>> score = {0: 0.5, 1: 0.75, 2: 0.25}   # a criterion by round, for the example
    >>> kept, rec = self_learning_rounds(0, labels[0], lambda r: r + 1, lambda m: m, labels.get,
    ...                                  lambda l: score[int(l.sum()) - 2], 5, 0.0)
    >>> kept, [(r["round"], r["kept"]) for r in rec]
    (1, [(0, True), (1, True), (2, False)])
    >>> kept, rec = self_learning_rounds(0, labels[0], lambda r: 0, lambda m: m, labels.get, len, 5, 0.0)
    >>> kept, rec[-1]                       # round 1 re-mines the same labels: settled, not refitted
    (0, {'round': 1, 'label_change': 0.0, 'criterion': None, 'kept': False, 'refit': False})
    """
    prev = first
    prev_labels = first_labels.cpu()
    prev_score = float(criterion(prev_labels))
    records = [{"round": 0, "label_change": None, "criterion": prev_score, "kept": True, "refit": True}]
    for r in range(1, int(rounds) + 1):
        mined = remine(prev)
        labels = labels_of(mined).cpu()
        change = float((labels != prev_labels).double().mean())
        settled = change < tol or change == 0.0
        if settled:
            cand, score, kept = None, None, False
        else:
            cand, score = refit(mined), float(criterion(labels))
            kept = score >= prev_score
        records.append({"round": r, "label_change": change, "criterion": score, "kept": kept, "refit": not settled})
        if callback is not None:
            callback(records[-1])
        if not kept:
            break
        prev, prev_labels, prev_score = cand, labels, score
    return prev, records


def convergence_problems(ucm_runs: Iterable[tuple[list[dict], bool]], mining: MiningConfig) -> list[str]:
    """What a :class:`~gpua.ConvergenceWarning` should say about these UCM runs (empty: nothing).

    Parameters
    ----------
    ucm_runs : iterable of (history, converged)
    mining : MiningConfig
    """
    capped, unconverged = [], []
    for history, converged in ucm_runs:
        capped += [h for h in history if h["sinkhorn_iter"] >= mining.sinkhorn_max_iter and h["marginal_error"] > mining.sinkhorn_tol]
        if not converged and history:
            unconverged.append(history[-1])
    out = []
    if capped:
        worst = max(h["marginal_error"] for h in capped)
        out.append(
            f"Sinkhorn reached sinkhorn_max_iter={mining.sinkhorn_max_iter} above sinkhorn_tol={mining.sinkhorn_tol:g} in "
            f"{len(capped)} UCM round(s) (class-marginal error up to {worst:.2g}); raise sinkhorn_max_iter, or eps "
            "(a smoother plan converges in fewer iterations)"
        )
    if unconverged:
        last = unconverged[-1]["plan_change"]
        if math.isfinite(last):
            moving = f"with the plan still moving (last change {last:.2g} > tol={mining.tol:g})"
        else:  # one round: no earlier plan to compare with
            moving = f"before the plan could be compared with an earlier one (tol={mining.tol:g} needs two rounds)"
        out.append(f"UCM ended after max_outer={mining.max_outer} round{'s' if mining.max_outer != 1 else ''} {moving}; "
                   "raise max_outer, or tol")
    return out


def run_fit(
    config: FitConfig,
    driver: FitDriver,
    *,
    Y: torch.Tensor,
    vfm_mean: torch.Tensor | None,
    vlm_mean: torch.Tensor | None = None,
    widths: tuple[int, int],
    classnames: list[str] | None,
    callback: Callable | None = None,
) -> FitState:
    """UCM -> Procrustes -> refinement -> self-learning rounds on ``driver``'s rows; the fitted state.

    Parameters
    ----------
    config : FitConfig
        From :func:`check_entry`.
    driver : FitDriver
    Y : tensor of shape (n_classes, d_vlm)
        The user's prototypes, L2-normalised, on ``config.device`` (kept as ``text_prototypes_``;
        the driver fits to :func:`gpua.query.target_prototypes` of them).
    vfm_mean : tensor of shape (d_vfm,) or None
        The pool's mean normalised VFM row (``center=True``).
    vlm_mean : tensor of shape (d_vlm,) or None
        The pool's mean normalised VLM row (``center_vlm=True``).
    widths : (int, int)
        ``(d_vfm, d_vlm)``.
    classnames : list of str or None
        Checked already.
    callback : callable, optional
        Called with a dict after each UCM round, refinement evaluation and self-learning round.

    Returns
    -------
    FitState
        ``history`` holds ``pseudo_label_agreement``, ``ucm``, ``ucm_converged``, ``refine``,
        ``pool_augment`` (of the kept round), ``self_learning`` (per round records, empty when
        off), ``orthogonality_error`` and ``timings``; a driver adds its own key after.
    """
    timings: dict[str, float] = {}
    first = _map(driver, config, _mine(driver, config, None, callback, timings), callback, timings)
    runs = [(first.mined.history, first.mined.converged)]
    kept, records = first, []
    if config.self_learning:
        t = time.perf_counter()
        sl_times: dict[str, float] = {}

        def remine(prev: _Round) -> Mined:
            mined = _mine(driver, config, prev.W, callback, sl_times)
            runs.append((mined.history, mined.converged))
            return mined

        kept, records = self_learning_rounds(
            first, first.mined.labels, remine, lambda mined: _map(driver, config, mined, callback, sl_times),
            lambda mined: mined.labels, driver.consistency, config.self_learning, config.self_learning_tol,
            _stage_callback("self-learning round", config.verbose, callback),
        )
        timings["self_learning_s"] = time.perf_counter() - t
    problems = convergence_problems(runs, config.mining)
    if problems:
        warn_user("; ".join(problems) + ".", ConvergenceWarning)
    agreement, radius = driver.finish(kept.W, kept.mined.labels)
    dev = config.device
    history = {
        "pseudo_label_agreement": float(agreement),
        "ucm": kept.mined.history,
        "ucm_converged": kept.mined.converged,
        "refine": kept.curve,
        "pool_augment": kept.augment,
        "self_learning": records,
        "orthogonality_error": orthogonality_error(kept.W),
        "random_state": config.refinement.seed,
        "timings": timings,
    }
    return FitState(
        W=kept.W.to(dev), W0=kept.W0.to(dev), centres=kept.mined.centres.to(dev), text_prototypes=Y.to(dev),
        vfm_mean=None if vfm_mean is None else vfm_mean.to(dev), vlm_mean=None if vlm_mean is None else vlm_mean.to(dev),
        proto_radius=None if radius is None else radius.to(dev),
        pseudo_labels=kept.mined.labels.cpu().numpy(), pseudo_confidence=kept.mined.confidence.cpu().numpy(),
        n_features_vfm=int(widths[0]), n_features_vlm=int(widths[1]), n_classes=int(Y.shape[0]), classnames=classnames,
        history=history,
    )


# --- the label-free criterion of self-learning -------------------------------------------------
def consistency_sample(n: int, max_rows: int = CONSISTENCY_ROWS, random_state: int = 0) -> torch.Tensor:
    """Sorted row ids of a seeded subsample of at most ``max_rows`` of ``n`` rows (all when fewer).

    >>> consistency_sample(5, 3, random_state=0).tolist()
    [0, 1, 4]
    """
    if n <= max_rows:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(int(random_state))
    return torch.randperm(n, generator=gen)[:max_rows].sort().values


def knn_label_consistency(
    sample: torch.Tensor,
    sample_labels: torch.Tensor,
    sample_ids: torch.Tensor,
    chunks: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
    k: int = CONSISTENCY_K,
) -> float:
    r"""Mean fraction of each sampled row's :math:`k` nearest neighbours that share its pseudo-label.

    .. math::
        c(\hat l) = \frac{1}{|S|} \sum_{i \in S} \frac{1}{k} \sum_{j \in \mathcal N_k(i)} [\hat l_j = \hat l_i],

    with :math:`\mathcal N_k(i)` the :math:`k` rows of the whole pool (``i`` itself excluded)
    most cosine-similar to row :math:`i` in the VFM space. The pool is read in chunks and only a
    running top-:math:`k` per sampled row is kept, so :math:`N = 50\,000` costs one pass of
    :math:`|S| \times N` products. Label-free: a pseudo-labelling that cuts across the VFM's
    neighbourhoods scores lower.

    Parameters
    ----------
    sample : tensor of shape (m, d)
        The sampled rows, L2-normalised.
    sample_labels : int tensor of shape (m,)
    sample_ids : int tensor of shape (m,)
        Their row ids in the pool (to exclude each row from its own neighbours).
    chunks : iterable of (start, rows, labels)
        The pool in order: ``rows`` (c, d) L2-normalised on ``sample``'s device, ``labels`` (c,),
        row ids ``start .. start + c - 1``.
    k : int

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import torch
    >>> V = torch.nn.functional.normalize(torch.tensor([[1., 0], [1, .1], [0, 1], [.1, 1]]), dim=1)
    >>> ids = torch.arange(4)
    >>> knn_label_consistency(V, torch.tensor([0, 0, 1, 1]), ids, [(0, V, torch.tensor([0, 0, 1, 1]))], k=1)
    1.0
    >>> knn_label_consistency(V, torch.tensor([0, 1, 0, 1]), ids, [(0, V, torch.tensor([0, 1, 0, 1]))], k=1)
    0.0
    """
    m = sample.shape[0]
    dev = sample.device
    best_v = torch.full((m, 0), float("-inf"), device=dev)
    best_l = torch.zeros((m, 0), dtype=torch.long, device=dev)
    sample_ids = sample_ids.to(dev)
    for start, rows, labels in chunks:
        s = sample @ rows.T
        ids = torch.arange(start, start + rows.shape[0], device=dev)
        s.masked_fill_(sample_ids[:, None] == ids[None, :], float("-inf"))
        top = s.topk(min(k, s.shape[1]), dim=1)
        v = torch.cat([best_v, top.values], 1)
        lab = torch.cat([best_l, labels.to(dev)[top.indices]], 1)
        keep = v.topk(min(k, v.shape[1]), dim=1)
        best_v, best_l = keep.values, lab.gather(1, keep.indices)
    valid = torch.isfinite(best_v)
    agree = (best_l == sample_labels.to(dev)[:, None]) & valid
    return float(agree.sum()) / max(1, int(valid.sum()))


def label_consistency(V: torch.Tensor, labels: torch.Tensor, *, k: int = CONSISTENCY_K, max_rows: int = CONSISTENCY_ROWS,
                      chunk: int = 8192, random_state: int = 0) -> float:
    """:func:`knn_label_consistency` of in-memory rows ``V`` (L2-normalised) on a seeded subsample."""
    idx = consistency_sample(V.shape[0], max_rows, random_state)
    labels = labels.to(V.device)
    chunks = ((s, V[s : s + chunk], labels[s : s + chunk]) for s in range(0, V.shape[0], chunk))
    return knn_label_consistency(V[idx.to(V.device)], labels[idx.to(V.device)], idx, chunks, k)


# --- the in-memory driver ---------------------------------------------------------------------
class ArrayPool:
    """The driver of an in-memory fit: the pool as tensors on the fit's device.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
        Query rows, L2-normalised.
    X : tensor of shape (n_samples, d_vlm)
        VLM image features, L2-normalised (and centred: :func:`gpua.query.centre_rows`).
    Y : tensor of shape (n_classes, d_vlm)
        The prototypes the map is fitted to (:func:`gpua.query.target_prototypes`).
    V : tensor of shape (n_samples, d_vfm) or None
        Normalised VFM rows for the self-learning criterion (None when self-learning is off).
    config : FitConfig
    """

    def __init__(self, Q: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, V: torch.Tensor | None, config: FitConfig):
        self.Q, self.X, self.Y, self.V, self.config = Q, X, Y, V, config
        self.log_v: torch.Tensor | None = None  # the last mining's class potential: the next one starts there
        self._moments = None  # the query's sums for plan_ridge: the query is the same in every mining
        self._cross = None  # Q^T X for the Procrustes completion: the same in every round

    def mine(self, score_map, callback) -> Mined:
        S_rows = self.X if score_map is None else mapped_rows(self.Q, score_map.to(self.Q.device))
        ucm = mine_correspondences(self.Q, S_rows, self.Y, callback=callback, init_log_v=self.log_v, **self.config.mining.ucm_kwargs())
        self.log_v = ucm.log_v
        P, centres = ucm.plan, ucm.centres
        alpha = self.config.mining.plan_ridge
        if alpha is not None:
            if self._moments is None:
                self._moments = query_moments(self.Q)
            P = P / P.sum(1, keepdim=True)
            projection = ridge_projection(self._moments, P.T.to(self.Q.dtype) @ self.Q, P.sum(0, dtype=torch.float64), alpha)
            P = projected_plan(self.Q, projection)
            centres = class_centres(self.Q, P)
        conf, labels = P.max(1)
        return Mined(labels.cpu(), conf.cpu(), centres, ucm.history, ucm.converged, payload=P)

    def procrustes(self, mined: Mined) -> torch.Tensor:
        m = self.config.mining
        return procrustes_from_assignment(self.Q, mined.payload, self.Y, m.assignment, m.procrustes_completion, self.cross)

    def cross(self) -> torch.Tensor:
        """:func:`gpua.procrustes.query_vlm_cross` of the pool (once: the same in every round)."""
        if self._cross is None:
            self._cross = query_vlm_cross(self.Q, self.X)
        return self._cross

    def refine(self, W0, labels, config: RefineConfig, callback):
        augment: dict[str, Any] = {"n_rows": 0}
        W, curve = refine(W0, lambda idx: self.Q[idx], self.Q.shape[0], self.Y, labels, config, callback, augment)
        return W, curve, augment

    def consistency(self, labels: torch.Tensor) -> float:
        return label_consistency(self.V, labels, random_state=self.config.refinement.seed)

    def finish(self, W, labels):
        with torch.no_grad():
            M = mapped_rows(self.Q, W)
            pool_pred = (M @ self.Y.T).argmax(1).cpu()
            radius = neighbourhood_radius(self.Y, M, self.config.csls_k) if self.config.csls_k_used else None
        return float((pool_pred == labels.cpu()).double().mean()), radius


def fit_arrays(params: dict[str, Any], vfm_features, vlm_features, text_prototypes, classnames=None,
               callback: Callable | None = None) -> FitState:
    """The in-memory GPUA fit as a function of its parameters and data (``GPUA.fit`` calls it).

    Parameters
    ----------
    params : dict
        A :class:`gpua.GPUA`'s ``get_params()``.
    vfm_features : array or tensor of shape (n_samples, d_vfm)
    vlm_features : array or tensor of shape (n_samples, d_vlm)
    text_prototypes : array or tensor of shape (n_classes, d_vlm)
    classnames : sequence of str, optional
    callback : callable, optional

    Returns
    -------
    FitState
    """
    check_params(PARAMETERS, params, "GPUA")
    dev = resolve_device(params["device"])
    Z, X, Y = check_fit_arrays(vfm_features, vlm_features, text_prototypes, dev)
    config = check_entry(params, Z.shape[0], Y.shape[0], driver="memory")
    names = check_classnames(classnames, Y.shape[0])
    mean, vlm_mean = pool_mean(Z), pool_mean(X)
    check_not_one_image(Z.shape[0], mean, vlm_mean if config.query == "fused" else None)
    check_distinct_images(Z, X, Y.shape[0])
    if not _estimates_prior(config):
        prepared = _prepared_pool(config, Z, X, Y, mean, vlm_mean)
        del Z, X  # only the query, the normalised rows (and V) live on through the fit
        return _fit_prepared(config, prepared, Y, names, callback)
    # class_prior="estimate" / "zero_shot" (gpua.prior): the pool's class frequencies and
    # class-balanced means from class probabilities, then the fit with them. "estimate" takes the
    # probabilities of a first fit under the uniform prior, "zero_shot" the VLM's zero-shot ones.
    t0 = time.perf_counter()
    if config.mining.class_prior == "estimate":
        uniform = _with_prior(config, None)
        first = _fit_prepared(uniform, _prepared_pool(uniform, Z, X, Y, mean, vlm_mean), Y, names, callback)
        scores = _pool_scores(first, Z, X, config)
        source = {"first_fit_pseudo_label_counts": np.bincount(first.pseudo_labels, minlength=Y.shape[0]).tolist()}
    else:
        scores = zero_shot_cosines(X, Y)
        source = {"zero_shot_counts": torch.bincount(scores.argmax(1).cpu(), minlength=Y.shape[0]).tolist()}
    prior, resp = em_class_prior(torch.softmax(float(params["logit_scale"]) * scores, dim=1))
    mean, vlm_mean = balanced_mean(Z, resp), balanced_mean(X, resp)
    seconds = time.perf_counter() - t0
    estimated = _with_prior(config, prior.cpu().numpy())
    state = _fit_prepared(estimated, _prepared_pool(estimated, Z, X, Y, mean, vlm_mean), Y, names, callback)
    record_prior_estimate(state, {"prior": [float(v) for v in prior.cpu()], **source, "seconds": seconds})
    return state


def record_prior_estimate(state: FitState, estimate: dict) -> None:
    """An estimated class prior into the fit's history: ``class_prior_estimate`` (the prior and the
    counts it was estimated from) and ``timings["class_prior_estimate_s"]`` (``estimate["seconds"]``);
    every driver's fit records its estimate so."""
    state.history["class_prior_estimate"] = {k: v for k, v in estimate.items() if k != "seconds"}
    state.history.setdefault("timings", {})["class_prior_estimate_s"] = estimate.get("seconds", 0.0)


def _estimates_prior(config: FitConfig) -> bool:
    """Whether the fit estimates the class prior (``class_prior`` one of :data:`PRIOR_ESTIMATES`)."""
    return isinstance(config.mining.class_prior, str)


def _with_prior(config: FitConfig, prior) -> FitConfig:
    return replace(config, mining=replace(config.mining, class_prior=prior))


def _pool_scores(state: FitState, Z: torch.Tensor, X: torch.Tensor, config: FitConfig) -> torch.Tensor:
    """Cosine class scores of a fitted state on rows ``Z``, ``X`` (``GPUA.decision_function`` with ``retrieval="cosine"``)."""
    with torch.no_grad():
        Q = build_query(Z, X, config.query, state.vfm_mean, state.vlm_mean)
        return mapped_cosines(Q, state.W.to(Q.device), target_prototypes(state.text_prototypes.to(Q.device), config.center_vlm))


@dataclass
class _PreparedPool:
    """An :class:`ArrayPool` and what the fit's result needs from its preparation."""

    pool: "ArrayPool"
    whiten: torch.Tensor | None
    whiten_s: float
    widths: tuple[int, int]
    vfm_mean: torch.Tensor | None
    vlm_mean: torch.Tensor | None


def _prepared_pool(config: FitConfig, Z, X, Y, mean, vlm_mean) -> _PreparedPool:
    """The query (centred on the means given when its options are on, whitened when asked) as an :class:`ArrayPool`."""
    normalize = torch.nn.functional.normalize
    mean = mean if config.center else None
    vlm_mean = vlm_mean if config.center_vlm else None
    Xc = centre_rows(X, vlm_mean)
    Q = build_query(Z, Xc, config.query, mean)
    V = None
    if config.self_learning:
        V = Q if config.query == "vfm" else build_query(Z, None, "vfm", mean)
    M, t0 = None, time.perf_counter()
    if config.whiten is not None:
        M = whitening_map(Q, whitening_width(config.whiten, Q.shape[0], Y.shape[0], Q.shape[1]), config.whiten_shrink)
        Q = normalize(Q @ M, dim=1)
    pool = ArrayPool(Q, Xc, target_prototypes(Y, config.center_vlm), V, config)
    return _PreparedPool(pool, M, time.perf_counter() - t0, (Z.shape[1], X.shape[1]), mean, vlm_mean)


def _fit_prepared(config: FitConfig, prepared: _PreparedPool, Y, names, callback) -> FitState:
    state = run_fit(config, prepared.pool, Y=torch.nn.functional.normalize(Y, dim=1), vfm_mean=prepared.vfm_mean,
                    vlm_mean=prepared.vlm_mean, widths=prepared.widths, classnames=names, callback=callback)
    return unwhiten(state, prepared.whiten, prepared.whiten_s)


def unwhiten(state: FitState, M: torch.Tensor | None, seconds: float = 0.0) -> FitState:
    """A fit on the whitened rows ``normalize(Q M)`` as a fit on ``Q``: maps ``M W``, centres back in Q's space.

    Predictions are unchanged (:func:`gpua.query.whitening_map`), so the model keeps the shapes,
    the prediction path and the file format of an unwhitened one; ``history["whiten_components"]``
    records :math:`d`, and ``history["timings"]["whiten_s"]`` the ``seconds`` the driver spent
    whitening plus this folding. ``M=None`` (no whitening): ``state``.
    """
    if M is None:
        return state
    t0 = time.perf_counter()
    state.history["whiten_components"] = int(M.shape[1])
    M = M.to(state.W.device)
    back = torch.linalg.pinv(M.double()).to(M.dtype)  # (d, d_q): the whitened centres in Q's coordinates
    folded = replace(state, W=M @ state.W, W0=M @ state.W0,
                     centres=torch.nn.functional.normalize(state.centres.to(M.device) @ back, dim=1))
    folded.history.setdefault("timings", {})["whiten_s"] = seconds + time.perf_counter() - t0
    return folded
