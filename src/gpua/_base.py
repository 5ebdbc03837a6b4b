"""Shared estimator plumbing: parameters (scikit-learn contract), inputs, save/load."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import __version__
from ._atomic import atomic_path, check_output
from ._backend import as_tensor, resolve_device, to_numpy
from ._errors import GPUAError, ModelFileError, NotFittedError, warn_user
from ._integrity import CHECKSUM_KEY, digest, verify
from ._validation import as_path, check_classnames, check_matrix, is_int
from .query import query_width
from .params import LOGIT_SCALE, DeviceName, ParamsMixin, check_param

__all__ = ["AlignmentEstimator", "FORMAT_VERSION", "ModelSchema", "load_model"]

FORMAT_VERSION = 1
_REGISTRY: dict[str, type] = {}
#: The sizes a :class:`ModelSchema` shape may name (``n_features_query``: estimators with a
#: ``query`` parameter; a subclass may add its own in ``_model_dims``).
SCHEMA_DIMS = ("n_features_vfm", "n_features_vlm", "n_classes", "n_features_query")


@dataclass(frozen=True)
class ModelSchema:
    """What a fitted estimator class keeps in its model file; declared once, as ``_schema``.

    :meth:`AlignmentEstimator.save` writes exactly these attributes and
    :func:`load_model` accepts nothing else: a tensor of another name, of another shape, or a
    state key the class does not declare makes the file invalid.

    Parameters
    ----------
    tensors : dict of str to tuple
        Fitted tensor attribute -> its shape, each entry an int or a size name from
        ``SCHEMA_DIMS`` (``("n_features_query", "n_features_vlm")``).
    optional : tuple of str
        Names of ``tensors`` that may be None after a fit (then absent from the file).
    needed_by : dict of str to str
        Optional tensor -> the boolean parameter under which every fit sets it: a file whose
        parameters set it true but which lacks the tensor is refused (predictions would
        silently change).
    state : dict of str to type
        JSON state attributes saved in the metadata -> their JSON type (``dict``, ``list``,
        ``int``...). They may be absent from older files.
    positive : tuple of str
        Names of ``float`` entries of ``state`` that must be finite and positive when present
        (a scale: NaN or a negative one would turn every probability into NaN or reverse it).
    """

    tensors: Mapping[str, tuple[str | int, ...]] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    needed_by: Mapping[str, str] = field(default_factory=dict)
    state: Mapping[str, type] = field(default_factory=dict)
    positive: tuple[str, ...] = ()

    def __post_init__(self):
        for name, shape in self.tensors.items():
            bad = [d for d in shape if not (isinstance(d, int) or d in SCHEMA_DIMS)]
            if not name.endswith("_") or bad:
                raise TypeError(f"ModelSchema: tensor {name!r} must end in '_' and use sizes from {SCHEMA_DIMS} (got {bad}).")
        if set(self.optional) - set(self.tensors):
            raise TypeError(f"ModelSchema: optional {sorted(set(self.optional) - set(self.tensors))} are not declared tensors.")
        if set(self.needed_by) - set(self.optional):
            raise TypeError(f"ModelSchema: needed_by {sorted(set(self.needed_by) - set(self.optional))} are not optional tensors.")
        if any(self.state.get(name) is not float for name in self.positive):
            raise TypeError(f"ModelSchema: positive {list(self.positive)} must name float state entries.")

    def shape(self, name: str, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The expected shape of tensor ``name`` for the sizes ``dims``."""
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.tensors[name])


class AlignmentEstimator(ParamsMixin):
    """Base of every aligner: scikit-learn parameter handling (:class:`~gpua.params.ParamsMixin`), prediction and model files.

    A subclass sets the learned state in ``fit`` and implements :meth:`_scores`
    (cosines of the mapped queries with the prototypes). Learned attributes end in ``_``.
    """

    #: The fitted tensors and JSON state a model file holds (see :class:`ModelSchema`).
    _schema: ModelSchema = ModelSchema()
    #: ``{parameter: value}`` for parameters added after model files were first written: a file
    #: without one was fitted as this value behaves, whatever today's default.
    _params_before_added: dict = {}
    #: Parameters the learned state is laid out for (the query's width, the targets' centring):
    #: prediction reads the state through them, so a change after fit is refused until the next
    #: fit (a change to any other parameter takes effect at the next fit, as in scikit-learn).
    _fitted_layout: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # --- pickling ------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """The attributes, with every learned tensor on the CPU and its device recorded.

        A pickle of CUDA tensors names their device, and torch cannot unpickle it where that
        device is missing; so the learned state travels as CPU tensors (as a model file's does)
        and :meth:`__setstate__` puts it back. ``copy.deepcopy`` and joblib go the same way.
        """
        state = dict(self.__dict__)
        devices = {}
        for name, value in self.__dict__.items():
            moved, device = _tensors_to_cpu(value)
            if device is not None:
                state[name], devices[name] = moved, device
        if devices:
            state[_PICKLED_DEVICES] = devices
        return state

    def __setstate__(self, state: dict) -> None:
        """Restore a pickled estimator: the learned tensors go back to their recorded device.

        When this machine lacks it (a model fitted on CUDA unpickled without a GPU), they stay
        on the CPU, a ``device`` parameter this machine cannot use becomes ``"cpu"`` (as
        :func:`load_model` with ``device="cpu"`` does), and one warning says so.
        """
        state = dict(state)
        devices = state.pop(_PICKLED_DEVICES, None) or {}
        self.__dict__.update(state)
        if not devices:
            return
        missing = None
        targets = {}
        for name, device in devices.items():
            try:
                targets[name] = resolve_device(device)  # load_model's check of a device
            except GPUAError as exc:
                missing = missing or (device, str(exc).rstrip("."))
        if missing is None:
            for name, target in targets.items():
                self.__dict__[name] = _tensors_to(self.__dict__[name], target)
            return
        # all of them stay on the CPU: one device for the whole learned state
        device, why = missing
        try:
            resolve_device(getattr(self, "device", "cpu"))
            now = ""
        except GPUAError:
            self.device = "cpu"
            now = " and its device parameter is now 'cpu'"
        name = type(self).__name__
        warn_user(f"this {name} was pickled with its learned tensors on {device!r}, which this machine cannot use ({why}); "
                  f"they were loaded on the CPU{now}. To move it to a GPU here, save it (model.save(path)) and load it with "
                  f"gpua.load_model(path, device='cuda') or {name}.load(path, device='cuda').")

    # --- fitted state ------------------------------------------------------------------------
    def _record_fit(self) -> None:
        """Remember the :attr:`_fitted_layout` values the learned state was made with (end of a fit or a load).

        The learned state is new, so a ``provenance_`` describing the data of an earlier fit is
        dropped: a refitted model would otherwise save (and check features against) the encoders
        and files of data it no longer was fitted on. Whoever fitted it sets the new one after.
        """
        self._layout_at_fit = {name: getattr(self, name) for name in self._fitted_layout}
        self.__dict__.pop("provenance_", None)

    def __sklearn_is_fitted__(self) -> bool:
        """Whether a fit (or a load) has set the learned state: :func:`sklearn.utils.validation.check_is_fitted` asks this."""
        return hasattr(self, "text_prototypes_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "text_prototypes_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(vfm_features, vlm_features, text_prototypes) first.")
        at_fit = self.__dict__.get("_layout_at_fit", {})
        changed = [f"{k}={getattr(self, k)!r} (fitted with {v!r})" for k, v in at_fit.items() if getattr(self, k) != v]
        if changed:
            raise GPUAError(
                f"{type(self).__name__}: {', '.join(changed)} was changed after fit, and the fitted map is laid out for the "
                "value it was fitted with; set it back with set_params, or fit again."
            )

    @property
    def device_(self) -> torch.device:
        return resolve_device(getattr(self, "device", "cpu"))

    def _tensor(self, A) -> torch.Tensor:
        return as_tensor(A, self.device_)

    def _check_query_inputs(self, vfm_features, vlm_features, *, needs_vfm: bool, needs_vlm: bool):
        self._check_fitted()
        for name, A in (("vfm_features", vfm_features), ("vlm_features", vlm_features)):
            _refuse_stored_features(A, name)
        Z = X = None
        n = None
        if needs_vfm:
            Z = check_matrix(vfm_features, "vfm_features", n_cols=self.n_features_vfm_)
            n = Z.shape[0]
        if needs_vlm:
            if vlm_features is None:
                fix = (
                    "pass them, or fit with query='vfm'."
                    if "query" in self._get_param_names()
                    else f"pass them as the second argument or vlm_features= (a {type(self).__name__} always reads them; "
                    "the first argument, vfm_features, it does not use)."
                )
                raise GPUAError(
                    f"vlm_features is required: this {type(self).__name__} uses the VLM image features at "
                    f"prediction (query='fused' or zero-shot); {fix}"
                )
            if n is not None and n > 1 and _ndim(vlm_features) == 1 and len(vlm_features) == n:
                # one value per image: class labels (predict(X, y), a scikit-learn habit), not one feature row
                raise GPUAError(
                    f"vlm_features has shape {tuple(np.shape(vlm_features))}, one value per image of vfm_features: that "
                    f"looks like class labels, not VLM image features of shape (n_samples, {self.n_features_vlm_}). "
                    "Prediction takes (vfm_features, vlm_features); labels go to score(vfm_features, labels, vlm_features)."
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
        """``softmax(s * scores)``: ``s`` is ``logit_scale`` (CLIP's 100), or GPUA's ``proba_scale``.

        Returns
        -------
        proba : array of shape (n_samples, n_classes), rows summing to one
        """
        return self.proba_from_scores(self._scores(vfm_features, vlm_features))

    def proba_from_scores(self, scores) -> np.ndarray:
        """:meth:`predict_proba` of :meth:`decision_function`'s ``scores``, for a caller that needs both
        (a predictions file ranks by the scores and shows the probabilities) without scoring twice.

        Parameters
        ----------
        scores : array or tensor of shape (n_samples, n_classes)

        Returns
        -------
        proba : array of shape (n_samples, n_classes), rows summing to one
        """
        return to_numpy(torch.softmax(self._proba_scale() * torch.as_tensor(scores), dim=1))

    def _proba_scale(self) -> float:
        """The scale of :meth:`predict_proba`'s softmax: ``logit_scale`` (a subclass may choose its own)."""
        scale = getattr(self, "logit_scale", 100.0)
        check_param("logit_scale", scale, LOGIT_SCALE)  # set_params after fit is not checked by fit
        return float(scale)

    def score(self, vfm_features, labels, vlm_features=None) -> float:
        """Top-1 accuracy against ``labels`` (labels are used here only)."""
        from ._validation import check_labels

        if vlm_features is not None and _ndim(labels) == 2 and _ndim(vlm_features) == 1:
            raise GPUAError(
                "score takes (vfm_features, labels, vlm_features), labels second, as scikit-learn's score(X, y): "
                "here labels is 2-D and vlm_features 1-D; call score(vfm_features, labels, vlm_features)."
            )
        pred = self.predict(vfm_features, vlm_features)
        y = check_labels(labels, pred.shape[0], self.n_classes_)
        return float(np.mean(pred == y))

    # --- persistence ---------------------------------------------------------------------------
    def _model_dims(self) -> dict[str, int]:
        """The sizes the shapes in :attr:`_schema` are written in (a subclass may add its own)."""
        dims = {"n_features_vfm": self.n_features_vfm_, "n_features_vlm": self.n_features_vlm_, "n_classes": self.n_classes_}
        if "query" in self._get_param_names():
            dims["n_features_query"] = query_width(self.query, self.n_features_vfm_, self.n_features_vlm_)
        return dims

    def save(self, path: str | Path) -> Path:
        """Write the fitted model atomically (safetensors arrays + JSON metadata).

        The tensors are those the class declares in :attr:`_schema` (checked finite and of the
        declared shapes), the metadata holds the parameters, the sizes, the class names, the
        declared state, ``provenance_`` when set (a JSON object), and a SHA-256 checksum of all
        of it, verified by :func:`load_model`. An interrupted save leaves any previous file at
        ``path`` intact.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        try:  # load_model refuses a file with invalid parameters: never write one (set_params does not check)
            self._validate_params()
        except GPUAError as exc:
            raise GPUAError(f"this {type(self).__name__} is not saved: {exc} Set a valid value with set_params, then save.") from None
        path = as_path(path)
        schema = self._schema
        dims = self._model_dims()
        tensors = {}
        for name, shape in schema.tensors.items():
            t = getattr(self, name, None)
            if t is None:
                if name in schema.optional:
                    continue
                raise GPUAError(f"this {type(self).__name__} has no {name}; it is not fully fitted, so it cannot be saved.")
            t = torch.as_tensor(t).detach().cpu().float().contiguous()
            want = schema.shape(name, dims)
            if tuple(t.shape) != want or not bool(torch.isfinite(t).all()):
                raise GPUAError(
                    f"{type(self).__name__}.{name} has shape {tuple(t.shape)} (expected {want}) or non-finite values; "
                    "the fit went wrong, so the model is not saved. Re-fit it."
                )
            tensors[name] = t
        params = {k: _json_param(v) for k, v in self.get_params().items()}
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
            "state": {k: getattr(self, k) for k in schema.state if getattr(self, k, None) is not None},
        }
        provenance = getattr(self, "provenance_", None)
        if provenance is not None:
            meta["provenance"] = _check_provenance(provenance, f"{type(self).__name__}.provenance_")
        try:
            meta[CHECKSUM_KEY] = digest(meta, tensors)
            header = json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise GPUAError(f"the model's metadata cannot be written as JSON ({exc}); parameters and provenance_ must be JSON values.") from None
        # A model replaces only a model: over a feature file, a shard set's file or a user's own file it is
        # refused (checked now, after the fit: the command line checks its --out before the work).
        check_output(path.absolute(), "path", kind="file", holds="model")
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"gpua": header})
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> "AlignmentEstimator":
        """Read a model written by :meth:`save` (any aligner class; checked against ``cls``).

        ``device``: where to put the learned tensors and predict (its ``device`` parameter);
        None keeps the device the model was saved with. A model fitted on a GPU loads on a
        machine without one with ``device="cpu"`` (see :func:`load_model`).
        """
        model = load_model(path, device=device)
        if not isinstance(model, cls):
            raise ModelFileError(f"{str(path)!r} holds a {type(model).__name__}, not a {cls.__name__}; load it with gpua.load_model.")
        return model


#: The state key under which :meth:`AlignmentEstimator.__getstate__` records the learned tensors' devices.
_PICKLED_DEVICES = "_pickled_tensor_devices"


def _tensors_to_cpu(value):
    """``(value with its tensors on the CPU, the device of the first that was not there or None)``.

    Tensors directly, or in dicts, lists and tuples (a ``history_``); anything else is kept as is.
    """
    if isinstance(value, torch.Tensor):
        return (value.detach().cpu(), str(value.device)) if value.device.type != "cpu" else (value, None)
    if type(value) is dict:
        items = [(k, *_tensors_to_cpu(v)) for k, v in value.items()]
        device = next((d for _, _, d in items if d is not None), None)
        return ({k: v for k, v, _ in items}, device) if device is not None else (value, None)
    if type(value) in (list, tuple):
        items = [_tensors_to_cpu(v) for v in value]
        device = next((d for _, d in items if d is not None), None)
        return (type(value)(v for v, _ in items), device) if device is not None else (value, None)
    return value, None


def _tensors_to(value, device: torch.device):
    """``value`` with its tensors (directly, or in dicts, lists and tuples) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if type(value) is dict:
        return {k: _tensors_to(v, device) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_tensors_to(v, device) for v in value)
    return value


def _json_param(value):
    """A parameter as its JSON value: numpy scalars and arrays, and tensors, as Python numbers and
    lists; a :class:`torch.device` as its string.

    ``np.arange`` grids give ``np.int64`` values and ``class_prior`` may be a tensor, or a list
    of numpy scalars (``list(counts / counts.sum())``); the parameter checks accept them, so the
    model file must too.

    >>> _json_param(np.int64(3)), _json_param(np.float32(0.5)), _json_param(np.bool_(True)), _json_param(np.arange(2))
    (3, 0.5, True, [0, 1])
    >>> _json_param([np.float32(0.5), np.int64(2)]), _json_param((1, np.float64(2.0)))
    ([0.5, 2], [1, 2.0])
    """
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        return value.tolist()
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_param(v) for v in value]
    return value


def _check_provenance(value, what: str) -> dict:
    """``value`` if it is a JSON object (a dict with string keys, JSON values), else a GPUAError."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise GPUAError(f"{what} must be a JSON object (a dict with string keys), not {type(value).__name__}.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GPUAError(f"{what} must hold JSON values only ({exc}).") from None
    return value


def _other_file_kind(path: Path) -> str:
    """What a file that is not a safetensors file is, from its first bytes ("" when unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a .npz feature file or a torch checkpoint)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a pickled model loads with pickle.load)"
    return ""


def _ndim(A) -> int | None:
    """``A``'s number of axes (arrays, tensors, nested lists), or None when it cannot be told (ragged lists)."""
    if hasattr(A, "ndim") and isinstance(getattr(A, "ndim"), int):
        return A.ndim
    try:
        return int(np.ndim(A))
    except Exception:  # ragged lists and the like: check_matrix says what is wrong with them
        return None


def _refuse_stored_features(A, name: str) -> None:
    """Refuse a shard set or a path where prediction takes arrays (``fit`` takes both: a user passes
    the same object to ``predict``, and its message was "has dtype object")."""
    import os

    if hasattr(A, "iter_rows") and hasattr(A, "n_shards"):  # a gpua.features.ShardedFeatures
        raise GPUAError(
            f"{name} is a shard set: prediction takes arrays. Score a shard set in chunks with `gpua predict --features "
            "DIR` (or `gpua evaluate --test DIR`), or predict each chunk of shards.iter_rows(chunk_rows)."
        )
    if isinstance(A, (str, os.PathLike)):
        raise GPUAError(
            f"{name} is a path ({str(A)!r}): prediction takes arrays. Read a feature file with "
            "gpua.features.load_features(path) and pass its vfm_features and vlm_features, or use `gpua predict`."
        )


def check_fit_arguments(vlm_features, text_prototypes) -> None:
    """Refuse a 1-D ``vlm_features`` or ``text_prototypes`` at fit with the likely cause: class labels.

    A scikit-learn habit (``fit(X, y)``, or an estimator in a ``Pipeline``) puts labels where
    the VLM features or the prototypes go, and the plain "must be 2-D" message would advise
    reshaping them. Neither can be one row at fit (the pool needs an image per class, and there
    are at least two classes), so a 1-D value is always a mistake.
    """
    if text_prototypes is None:
        raise GPUAError(
            "text_prototypes is None: fit needs the class prompts' text embeddings, an array of shape (n_classes, d_vlm). "
            "fit learns without labels: it takes "
            "(vfm_features, vlm_features, text_prototypes), not scikit-learn's (X, y), so it is no Pipeline step."
        )
    for name, A, layout in (
        ("vlm_features", vlm_features, "(n_samples, d_vlm): the VLM image features of the same images, same order"),
        ("text_prototypes", text_prototypes, "(n_classes, d_vlm): one text embedding per class"),
    ):
        if A is not None and _ndim(A) == 1:
            raise GPUAError(
                f"{name} has shape {tuple(np.shape(A))} but must be 2-D, {layout}. fit learns without labels: it takes "
                "(vfm_features, vlm_features, text_prototypes), not scikit-learn's (X, y), so it is no Pipeline step; "
                "class labels go to score(vfm_features, labels, vlm_features)."
            )


def load_model(path: str | Path, *, device: str | None = None) -> AlignmentEstimator:
    """Load any gpua model file.

    Everything is checked before it is used: the metadata's structure, the parameters (known to
    the estimator class, valid values), the sizes and class names, every tensor (a name the class
    declares, of its declared shape, finite), the state keys, ``provenance_`` (a JSON object) and
    the checksum (files written before checksums existed load without one).

    Parameters
    ----------
    path : str or Path
    device : str, optional
        Torch device of the loaded model (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``): its
        ``device`` parameter is set to it. None (the default) keeps the device the model was
        saved with; a model saved with ``device="cuda"`` then needs a GPU, and loads on a
        machine without one with ``device="cpu"`` (the file holds CPU tensors either way).

    Raises
    ------
    ModelFileError
        For a missing, corrupt, truncated, edited or newer file, naming the file and the fix,
        and for a file whose device this machine does not have (pass ``device``).
    """
    from safetensors import safe_open

    if device is not None:
        device = str(device) if isinstance(device, torch.device) else device
        check_param("device", device, DeviceName())
        resolve_device(device)  # its own clear error (say, device="cuda" on a machine without a GPU)
    path = as_path(path)  # as save() and the writers expand it
    where = f"model file {str(path)!r}"
    if path.is_dir():
        raise ModelFileError(f"{where} is a folder, not a model file; pass the .gpua file `gpua fit` wrote.")
    if not path.is_file():
        raise ModelFileError(f"{where} does not exist; check the path or run `gpua fit` first.")

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{where} {what}; it is corrupt or was edited: re-run `gpua fit` (or the command that wrote it).")

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        kind = _other_file_kind(path)
        if kind:
            raise ModelFileError(
                f"{where} cannot be read as a gpua model (corrupt, or another kind of file): it is {kind}; pass the .gpua "
                "file model.save or `gpua fit` wrote (feature files load with gpua.features.load_features)."
            ) from None
        raise ModelFileError(f"{where} is corrupt or truncated ({type(exc).__name__}: {exc}); re-run `gpua fit`.") from None
    if "gpua" not in md:
        raise ModelFileError(f"{str(path)!r} is a safetensors file but not a gpua model (no gpua metadata).")
    try:
        meta = json.loads(md["gpua"])
    except (ValueError, RecursionError):
        raise bad("has metadata that is not valid JSON") from None
    if not isinstance(meta, dict):
        raise bad(f"has metadata that is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != "gpua":
        raise ModelFileError(f"{str(path)!r} is a safetensors file but not a gpua model.")
    version = meta.get("format_version")
    if not is_int(version) or version < 1:
        raise bad(f"has format_version {version!r}, not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} was written by gpua {meta.get('gpua_version')} (model format {version}); this gpua "
            f"{__version__} reads format {FORMAT_VERSION} and older: upgrade gpua."
        )
    stored = meta.pop(CHECKSUM_KEY, None)
    try:
        actual = digest(meta, tensors) if stored is not None else ""
    except (TypeError, ValueError):
        raise bad("holds metadata that cannot be checked") from None
    verify(stored, actual, where, "re-run `gpua fit` (or the command that wrote it)")
    name = meta.get("estimator")
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFileError(f"{where} holds an unknown estimator {name!r}; it was written by another gpua version or edited.")
    params = meta.get("params")
    if not isinstance(params, dict):
        raise bad(f"has {'no' if params is None else 'malformed'} 'params'")
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise ModelFileError(
            f"{where} sets {unknown}, which are not parameters of {cls.__name__} in gpua {__version__}; "
            "it was written by a newer gpua (upgrade) or edited (re-run `gpua fit`)."
        )
    try:
        model = cls(**{**cls._params_before_added, **params})
        model._validate_params()
    except (GPUAError, TypeError, ValueError) as exc:
        raise bad(f"holds invalid parameters ({exc})") from None
    if device is not None:
        model.device = device  # the caller's device, checked above, in place of the saved one
    try:
        device = model.device_
    except GPUAError as exc:  # a model saved with device="cuda", loaded on a machine without that GPU
        raise ModelFileError(
            f"{where} holds a {cls.__name__} saved with device={model.device!r}, which this machine cannot use ({str(exc).rstrip('.')}); "
            f"load it onto another device: gpua.load_model(path, device='cpu') or {cls.__name__}.load(path, device='cpu') "
            "(on the command line, --device cpu)."
        ) from None
    for key in ("n_features_vfm", "n_features_vlm", "n_classes"):
        if not is_int(meta.get(key)) or meta[key] < 1:
            raise bad(f"has {key}={meta.get(key)!r}, not a positive integer")
    model.n_features_vfm_, model.n_features_vlm_, model.n_classes_ = meta["n_features_vfm"], meta["n_features_vlm"], meta["n_classes"]
    names = meta.get("classnames")
    if names is not None and not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
        raise bad("has class names that are not a list of strings")
    try:
        model.classnames_ = check_classnames(names, model.n_classes_)
    except GPUAError as exc:
        raise bad(f"has inconsistent class names ({exc})") from None
    try:
        dims = model._model_dims()
    except GPUAError as exc:
        raise bad(f"holds invalid parameters ({exc})") from None
    schema = cls._schema
    extra = sorted(set(tensors) - set(schema.tensors))
    if extra:
        raise bad(f"holds tensors {extra} that a {cls.__name__} does not have")
    for tname in schema.tensors:
        if tname not in tensors:
            needed_by = schema.needed_by.get(tname)
            if needed_by is not None and getattr(model, needed_by):
                raise bad(f"lacks the tensor {tname!r}, which every fit with its {needed_by}=True sets")
            if tname in schema.optional:
                setattr(model, tname, None)
                continue
            raise bad(f"lacks the tensor {tname!r}")
        t, want = tensors[tname], schema.shape(tname, dims)
        if not t.is_floating_point() or tuple(t.shape) != want:
            raise bad(f"holds {tname!r} of shape {tuple(t.shape)} ({t.dtype}) where a {cls.__name__} of these sizes has {want}")
        if not bool(torch.isfinite(t).all()):
            raise bad(f"holds NaN or inf in {tname!r}")
        setattr(model, tname, t.float().to(device))
    state = meta.get("state", {})
    if not isinstance(state, dict):
        raise bad("has a malformed 'state'")
    for key, value in state.items():
        kind = schema.state.get(key)
        if kind is None:
            raise bad(f"holds the state {key!r}, which a {cls.__name__} does not have")
        if not isinstance(value, kind):
            raise bad(f"holds the state {key!r} as a {type(value).__name__}, not a {kind.__name__}")
        if key in schema.positive and not (math.isfinite(value) and value > 0):
            raise bad(f"holds the state {key!r} = {value!r}, not a finite positive number")
        setattr(model, key, value)
    for key in set(schema.state) - set(state):  # saved as None (save skips it), or by a release before it: None, as fitted
        setattr(model, key, None)
    model._record_fit()
    if "provenance" in meta:
        try:
            model.provenance_ = _check_provenance(meta["provenance"], "its provenance")
        except GPUAError as exc:
            raise bad(str(exc).rstrip(".")) from None
    return model
