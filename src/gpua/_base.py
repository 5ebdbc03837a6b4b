"""Shared estimator plumbing: parameters (scikit-learn contract), inputs, save/load."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._atomic import atomic_path
from ._backend import as_tensor, resolve_device, to_numpy
from ._errors import GPUAError, ModelFileError, NotFittedError
from ._validation import check_matrix
from .params import check_params, suggest_name

__all__ = ["AlignmentEstimator", "FORMAT_VERSION", "load_model"]

FORMAT_VERSION = 1
_REGISTRY: dict[str, type] = {}


class AlignmentEstimator:
    """Base of every aligner: scikit-learn parameter handling, prediction and model files.

    A subclass sets the learned state in ``fit`` and implements :meth:`_scores`
    (cosines of the mapped queries with the prototypes). Learned attributes end in ``_``.
    """

    _tensor_attrs: tuple[str, ...] = ()
    #: ``{parameter: gpua.params.Constraint}``: each parameter's admissible values, declared once.
    _parameter_constraints: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # --- scikit-learn parameter contract ---------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> "AlignmentEstimator":
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise GPUAError(f"{key!r} is not a parameter of {type(self).__name__}{suggest_name(key, valid)}; valid parameters: {valid}.")
            setattr(self, key, value)
        return self

    def _validate_params(self) -> None:
        """Check every parameter against :attr:`_parameter_constraints` (called at fit)."""
        check_params(self._parameter_constraints, self.get_params(), type(self).__name__)

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for k, v in self.get_params().items():
            d = defaults.get(k, inspect.Parameter.empty)
            same = v is d or (not isinstance(v, np.ndarray) and not isinstance(d, np.ndarray) and v == d)
            if not same:
                changed.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # --- fitted state ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "text_prototypes_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(vfm_features, vlm_features, text_prototypes) first.")

    @property
    def device_(self) -> torch.device:
        return resolve_device(getattr(self, "device", "cpu"))

    def _tensor(self, A) -> torch.Tensor:
        return as_tensor(A, self.device_)

    def _check_query_inputs(self, vfm_features, vlm_features, *, needs_vfm: bool, needs_vlm: bool):
        self._check_fitted()
        Z = X = None
        n = None
        if needs_vfm:
            Z = check_matrix(vfm_features, "vfm_features", n_cols=self.n_features_vfm_)
            n = Z.shape[0]
        if needs_vlm:
            if vlm_features is None:
                raise GPUAError(
                    f"vlm_features is required: this {type(self).__name__} uses the VLM image features at "
                    "prediction (query='fused' or zero-shot); pass them, or fit with query='vfm'."
                )
            X = check_matrix(vlm_features, "vlm_features", n_rows=n, n_cols=self.n_features_vlm_)
        return Z, X

    def _scores(self, vfm_features, vlm_features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- prediction ----------------------------------------------------------------------------
    def decision_function(self, vfm_features=None, vlm_features=None) -> np.ndarray:
        """Class scores (cosine, or CSLS when ``retrieval='csls'``).

        Returns
        -------
        scores : array of shape (n_samples, n_classes)
        """
        return to_numpy(self._scores(vfm_features, vlm_features))

    def predict(self, vfm_features=None, vlm_features=None) -> np.ndarray:
        """Class index per sample: :math:`\\arg\\max_k` of :meth:`decision_function`.

        Returns
        -------
        labels : int array of shape (n_samples,)
        """
        return to_numpy(self._scores(vfm_features, vlm_features).argmax(1))

    def predict_proba(self, vfm_features=None, vlm_features=None) -> np.ndarray:
        """``softmax(logit_scale * scores)`` (CLIP's logit scale, 100 by default).

        Returns
        -------
        proba : array of shape (n_samples, n_classes), rows summing to one
        """
        scale = float(getattr(self, "logit_scale", 100.0))
        return to_numpy(torch.softmax(scale * self._scores(vfm_features, vlm_features), dim=1))

    def score(self, vfm_features, labels, vlm_features=None) -> float:
        """Top-1 accuracy against ``labels`` (labels are used here only)."""
        from ._validation import check_labels

        pred = self.predict(vfm_features, vlm_features)
        y = check_labels(labels, pred.shape[0], self.n_classes_)
        return float(np.mean(pred == y))

    # --- persistence ---------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the fitted model atomically (safetensors arrays + JSON metadata).

        An interrupted save leaves any previous file at ``path`` intact.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        tensors = {
            name: getattr(self, name).detach().cpu().contiguous()
            for name in self._tensor_attrs
            if getattr(self, name, None) is not None
        }
        params = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.get_params().items()}
        meta = {
            "format": "gpua",
            "format_version": FORMAT_VERSION,
            "gpua_version": __version__,
            "estimator": type(self).__name__,
            "params": params,
            "n_features_vfm": self.n_features_vfm_,
            "n_features_vlm": self.n_features_vlm_,
            "n_classes": self.n_classes_,
            "classnames": self.classnames_,
            "state": self._extra_state(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"gpua": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AlignmentEstimator":
        """Read a model written by :meth:`save` (any aligner class; checked against ``cls``)."""
        model = load_model(path)
        if not isinstance(model, cls):
            raise ModelFileError(f"{str(path)!r} holds a {type(model).__name__}, not a {cls.__name__}; load it with gpua.load_model.")
        return model


def load_model(path: str | Path) -> AlignmentEstimator:
    """Load any gpua model file; corrupt, truncated or newer files give a :class:`ModelFileError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist; check the path or run `gpua fit` first.")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(md["gpua"])
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelFileError(f"model file {str(path)!r} is corrupt or truncated ({type(exc).__name__}: {exc}); re-run `gpua fit`.") from None
    if meta.get("format") != "gpua":
        raise ModelFileError(f"{str(path)!r} is a safetensors file but not a gpua model.")
    version = int(meta.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} was written by gpua {meta.get('gpua_version')} (model format {version}); this gpua "
            f"{__version__} reads format {FORMAT_VERSION} and older: upgrade gpua."
        )
    cls = _REGISTRY.get(meta.get("estimator", ""))
    if cls is None:
        raise ModelFileError(f"{str(path)!r} holds an unknown estimator {meta.get('estimator')!r}.")
    model = cls(**meta["params"])
    for name, t in tensors.items():
        setattr(model, name, t.to(model.device_))
    model.n_features_vfm_ = meta["n_features_vfm"]
    model.n_features_vlm_ = meta["n_features_vlm"]
    model.n_classes_ = meta["n_classes"]
    model.classnames_ = meta["classnames"]
    for k, v in meta.get("state", {}).items():
        setattr(model, k, v)
    missing = [n for n in ("text_prototypes_",) if not hasattr(model, n)]
    if missing:
        raise ModelFileError(f"{str(path)!r} lacks {missing}; it is corrupt, re-run `gpua fit`.")
    return model
