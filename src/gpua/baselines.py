r"""Baselines and ablations in the same estimator API as :class:`~gpua.GPUA`.

* :class:`VLMZeroShot`: the VLM alone, :math:`\arg\max_k x^\top y_k`.
* :class:`LFAAlternation`: LFA-style hard alternation: pseudo-labels -> Procrustes -> relabel
  with the map -> repeat (no OT, no VFM centres, no ranking loss).
* ``"reference"``: :class:`gpua.reference.ReferenceGPUA`, the published code's method, the
  yardstick for gpua's defaults.
* Ablations of GPUA are parameter settings, named in :data:`METHODS`: Procrustes only
  (``refine=False``), :math:`\lambda = 1` (VLM score only), :math:`\lambda = 0` (VFM centres
  only after initialisation), no hubness term, hard assignment, and the two query modes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Sequence

import torch

from ._base import AlignmentEstimator, ModelSchema, check_fit_arguments
from ._errors import warn_user
from ._validation import check_classnames, check_triplet
from .estimator import GPUA
from .fitting import PARAMETERS
from .params import COUNT, LOGIT_SCALE, DeviceName, Options, check_params
from .refinement import RefineConfig
from .query import QUERY_MODES, build_query, mapped_cosines
from .procrustes import procrustes_from_assignment
from .reference import ReferenceGPUA

__all__ = ["VLMZeroShot", "LFAAlternation", "METHODS", "GPUA_VARIANTS", "OTHER_METHOD_PARAMS", "list_methods", "make_method",
           "unused_overrides", "override_notes"]


class VLMZeroShot(AlignmentEstimator):
    """Zero-shot classification with the VLM's own image features: cosine with the prototypes.

    ``fit`` stores the prototypes; its VFM and VLM features are checked (and their widths
    recorded, as a model file needs them) but take no part in the scores. At prediction the VFM
    features are not used and may be None.

    Parameters
    ----------
    logit_scale : float in (0, 10000], default=100.0
        Scale of :meth:`predict_proba`'s softmax.
    device : str or torch.device, default="cpu"
        Torch device of the prototypes.
    """

    _schema = ModelSchema(tensors={"text_prototypes_": ("n_classes", "n_features_vlm")})
    _parameter_constraints = {"logit_scale": LOGIT_SCALE, "device": DeviceName()}

    def __init__(self, *, logit_scale: float = 100.0, device: str = "cpu"):
        self.logit_scale = logit_scale
        self.device = device

    def fit(self, vfm_features, vlm_features, text_prototypes, classnames=None) -> "VLMZeroShot":
        self._validate_params()
        check_fit_arguments(vlm_features, text_prototypes)
        Z, X, Y = check_triplet(vfm_features, vlm_features, text_prototypes)
        names = check_classnames(classnames, Y.shape[0])
        prototypes = torch.nn.functional.normalize(self._tensor(Y), dim=1)
        # Learned state set only once every check has passed: a refused refit leaves the previous fit whole.
        self.n_features_vfm_, self.n_features_vlm_, self.n_classes_ = Z.shape[1], X.shape[1], Y.shape[0]
        self.classnames_, self.text_prototypes_ = names, prototypes
        self._record_fit()
        return self

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:
        _, X = self._check_query_inputs(None, vlm_features, needs_vfm=False, needs_vlm=True)
        return torch.nn.functional.normalize(self._tensor(X), dim=1) @ self.text_prototypes_.T


class LFAAlternation(AlignmentEstimator):
    r"""LFA-style alternation: hard pseudo-labels and orthogonal Procrustes, repeated.

    Round 0 labels each image by the VLM's zero-shot argmax; each round fits
    :math:`W = \mathrm{polar}(Q^\top Y_{[l]})` and relabels by :math:`\arg\max_k \cos(q W, y_k)`,
    until labels stop changing or ``n_rounds`` is reached.

    Parameters
    ----------
    query : {"vfm", "fused"}, default="vfm"
        The query the map acts on (:func:`gpua.query.build_query`).
    n_rounds : int >= 1, default=10
        Relabel-and-refit rounds at most.
    logit_scale : float in (0, 10000], default=100.0
        Scale of :meth:`predict_proba`'s softmax.
    device : str or torch.device, default="cpu"
        Torch device of the fit.
    """

    _schema = ModelSchema(
        tensors={"W_": ("n_features_query", "n_features_vlm"), "text_prototypes_": ("n_classes", "n_features_vlm")},
        state={"n_rounds_": int},
    )
    _fitted_layout = ("query",)
    _parameter_constraints = {
        "query": Options(QUERY_MODES),
        "n_rounds": COUNT,
        "logit_scale": LOGIT_SCALE,
        "device": DeviceName(),
    }

    def __init__(self, *, query: str = "vfm", n_rounds: int = 10, logit_scale: float = 100.0, device: str = "cpu"):
        self.query = query
        self.n_rounds = n_rounds
        self.logit_scale = logit_scale
        self.device = device

    def fit(self, vfm_features, vlm_features, text_prototypes, classnames=None) -> "LFAAlternation":
        self._validate_params()
        check_fit_arguments(vlm_features, text_prototypes)
        Z, X, Y = check_triplet(vfm_features, vlm_features, text_prototypes)
        names = check_classnames(classnames, Y.shape[0])
        normalize = torch.nn.functional.normalize
        Xt, Yt = normalize(self._tensor(X), dim=1), normalize(self._tensor(Y), dim=1)
        Q = build_query(self._tensor(Z), Xt, self.query)
        labels = (Xt @ Yt.T).argmax(1)
        zero_shot_classes = effective_classes(labels, Yt.shape[0])
        n_rounds = 0
        for r in range(1, self.n_rounds + 1):
            onehot = torch.nn.functional.one_hot(labels, Yt.shape[0]).to(Q.dtype)
            W = procrustes_from_assignment(Q, onehot, Yt, "soft")
            new = (Q @ W @ Yt.T).argmax(1)
            n_rounds = r
            if torch.equal(new, labels):
                break
            labels = new
        final = new  # the last map's labels: its predictions on the pool
        final_classes = effective_classes(final, Yt.shape[0])
        if final_classes < 0.5 * zero_shot_classes:
            counts = torch.bincount(final, minlength=Yt.shape[0])
            top = int(counts.argmax())
            warn_user(
                f"LFAAlternation collapsed: its map puts {int(counts[top])} of {len(final)} pool images in class "
                f"{names[top] if names else top!r} (an effective {final_classes:.1f} classes, against "
                f"{zero_shot_classes:.1f} in the VLM's zero-shot labels); its predictions are unreliable on this pool. "
                "GPUA's class-balanced assignment does not collapse (make_method('gpua')).")
        # Learned state set only once every check has passed: a refused refit leaves the previous fit whole.
        self.n_features_vfm_, self.n_features_vlm_, self.n_classes_ = Z.shape[1], X.shape[1], Y.shape[0]
        self.classnames_, self.n_rounds_ = names, n_rounds
        self.W_, self.text_prototypes_ = W, Yt
        self._record_fit()
        return self

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:
        Z, X = self._check_query_inputs(vfm_features, vlm_features, needs_vfm=True, needs_vlm=self.query == "fused")
        Q = build_query(self._tensor(Z), None if X is None else self._tensor(X), self.query)
        return mapped_cosines(Q, self.W_, self.text_prototypes_)


def effective_classes(labels: torch.Tensor, n_classes: int) -> float:
    r"""The effective number of classes of a labelling: :math:`\exp H(c)`, :math:`c` its class frequencies.

    :math:`K` for a balanced labelling of :math:`K` classes, 1 when every row has one label.

    Parameters
    ----------
    labels : int64 tensor of shape (n_samples,)
    n_classes : int

    Examples
    --------
    >>> import torch
    >>> round(effective_classes(torch.tensor([0, 1, 2, 3]), 4), 6), effective_classes(torch.tensor([2, 2, 2]), 4)
    (4.0, 1.0)
    """
    c = torch.bincount(labels.cpu(), minlength=n_classes).double() / len(labels)
    c = c[c > 0]
    return float(torch.exp(-(c * c.log()).sum()))


#: GPUA parameters that shape its THS refinement alone: a fit without refinement (``refine=False``,
#: ``procrustes_only``) does not apply them (``random_state`` also seeds the self-learning criterion's sample).
REFINEMENT_ONLY = frozenset(f.name for f in fields(RefineConfig)) & frozenset(PARAMETERS) - {"random_state"}

#: The GPUA variants among the named methods: the parameters each one sets itself.
GPUA_VARIANTS: dict[str, dict[str, Any]] = {
    "gpua": {},
    "procrustes_only": {"refine": False},
    "lambda_1": {"lam": 1.0},
    "lambda_0": {"lam": 0.0},
    "no_hubness": {"hubness_weight": 0.0},
    "hard_assignment": {"assignment": "hard"},
    "query_vfm": {"query": "vfm"},
    "query_fused": {"query": "fused"},
}
#: The GPUA parameters the other named methods take from ``overrides`` (the rest they do not use).
OTHER_METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "zero_shot": ("device", "logit_scale"),
    "reference": ("device", "random_state", "logit_scale"),
    "lfa": ("query", "device", "logit_scale"),
}


def _taken(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """The overrides ``kw`` that the non-GPUA method ``name`` takes (:data:`OTHER_METHOD_PARAMS`):
    passed on, not re-listed by hand per method (was: ``logit_scale`` was listed nowhere, so
    ``make_method("zero_shot", logit_scale=50)`` gave probabilities at 100 without a word)."""
    return {k: v for k, v in kw.items() if k in OTHER_METHOD_PARAMS[name]}


def _gpua_variant(fixed: dict[str, Any]) -> Callable[..., AlignmentEstimator]:
    return lambda **kw: GPUA(**{**kw, **fixed})


#: Named methods for tables: name -> (factory, one-line description). ``**overrides`` go to GPUA
#: (the baselines and the reference take only what :data:`OTHER_METHOD_PARAMS` lists; a GPUA
#: variant's own setting wins over an override: :func:`unused_overrides` says which).
METHODS: dict[str, tuple[Callable[..., AlignmentEstimator], str]] = {
    "zero_shot": (lambda **kw: VLMZeroShot(**_taken("zero_shot", kw)), "VLM zero-shot, X Y^T"),
    "gpua": (_gpua_variant(GPUA_VARIANTS["gpua"]), "GPUA, default settings"),
    "reference": (
        lambda **kw: ReferenceGPUA(**{"random_state": 0, **_taken("reference", kw)}),
        "the published code's method (gpua.reference.ReferenceGPUA), the yardstick",
    ),
    "procrustes_only": (_gpua_variant(GPUA_VARIANTS["procrustes_only"]), "UCM + Procrustes, no THS refinement"),
    "lambda_1": (_gpua_variant(GPUA_VARIANTS["lambda_1"]), "UCM on the VLM score only (lambda = 1)"),
    "lambda_0": (_gpua_variant(GPUA_VARIANTS["lambda_0"]), "UCM on the VFM centres only (lambda = 0)"),
    "no_hubness": (_gpua_variant(GPUA_VARIANTS["no_hubness"]), "THS without the hubness term"),
    "hard_assignment": (_gpua_variant(GPUA_VARIANTS["hard_assignment"]), "Procrustes on argmax pseudo-labels"),
    "query_vfm": (_gpua_variant(GPUA_VARIANTS["query_vfm"]), "query = VFM features alone"),
    "query_fused": (_gpua_variant(GPUA_VARIANTS["query_fused"]), "query = [VFM, VLM] features"),
    "lfa": (lambda **kw: LFAAlternation(**_taken("lfa", kw)), "LFA-style hard alternation"),
}


def unused_overrides(name: str, overrides: dict[str, Any]) -> list[str]:
    """The ``overrides`` that method ``name`` would not apply: parameters it does not take, that
    it sets itself to another value (``lambda_1`` keeps ``lam=1``), or that shape a refinement it
    does not run (``procrustes_only``, or ``refine=False`` among the overrides).

    >>> unused_overrides("lambda_1", {"lam": 0.5, "eps": 0.02}), unused_overrides("zero_shot", {"device": "cpu", "rho": 0.1})
    (['lam'], ['rho'])
    >>> unused_overrides("procrustes_only", {"n_steps": 5, "lam": 0.5}), unused_overrides("gpua", {"refine": False, "lr": 1.0})
    (['n_steps'], ['lr'])
    """
    takes = OTHER_METHOD_PARAMS.get(name)
    fixed = GPUA_VARIANTS.get(name, {})
    skips_refinement = takes is None and {**overrides, **fixed}.get("refine", True) is False  # a GPUA variant, not refining
    return [k for k, v in overrides.items() if (takes is not None and k not in takes) or (k in fixed and v != fixed[k])
            or (skips_refinement and k in REFINEMENT_ONLY)]


def override_notes(methods: Sequence[str], overrides: dict[str, Any], option: str = "methods") -> list[str]:
    """Check one set of ``overrides`` given to every method of a comparison; the notes to print.

    A setting that no listed method applies would be claimed by the command and run by none
    (``lambda_1`` keeps ``lam=1``, ``zero_shot`` takes no ``rho``): refused. One that some
    methods leave out gets a note per such method.

    Raises
    ------
    GPUAError
        When no method of ``methods`` applies an override.
    """
    from ._errors import GPUAError

    unused = {m: unused_overrides(m, overrides) for m in methods}
    applied_by_none = [k for k in overrides if all(k in unused[m] for m in methods)]
    if applied_by_none:
        raise GPUAError(f"{', '.join(f'{k}={overrides[k]!r}' for k in applied_by_none)}: none of {option} {','.join(methods)} "
                        "applies it (they take no such parameter, set it themselves, or do not refine); drop it, or add gpua "
                        "(with refinement) to the methods.")
    return [f"note: {m} does not apply {', '.join(f'{k}={overrides[k]!r}' for k in skipped)} (its own setting, or not its "
            "parameter)" for m in methods if (skipped := [k for k in unused[m] if k != "device"])]


def list_methods() -> list[str]:
    """Names accepted by :func:`make_method` (and ``gpua evaluate --methods``)."""
    return list(METHODS)


def make_method(name: str, **overrides: Any) -> AlignmentEstimator:
    """A fresh estimator for a named method; ``overrides`` are GPUA parameters.

    Overrides a method does not use are left out (so that one set can be given to every row of
    a comparison); :func:`unused_overrides` names them, for callers that run one method. The
    baselines and the reference take only :data:`OTHER_METHOD_PARAMS` (``device`` and
    ``logit_scale``; the reference ``random_state``, ``lfa`` ``query``): the reference is the
    published method as published, whatever GPUA settings the overrides hold.
    """
    from ._errors import GPUAError

    if name not in METHODS:
        raise GPUAError(f"method {name!r} is unknown; choose from {list_methods()}.")
    check_params(GPUA._parameter_constraints, overrides, "GPUA")  # a typo gets a suggestion, not a TypeError
    return METHODS[name][0](**overrides)
