"""Resumable UCM: the state after each outer round, in one atomically written file.

The state of a streamed UCM after round :math:`r` is small: the centres used in round
:math:`r` and the ones for round :math:`r + 1`, the class potential :math:`g` (its warm start),
the pseudo-labels and confidences, the Procrustes cross-covariance, and the history. A fit
interrupted at any point resumes after its last completed round and ends where an uninterrupted
fit ends: every later round is a function of that state alone, to float rounding. Where the
Procrustes map is not unique (fewer classes than the VLM's width), that rounding can pick another
of the equally good maps: the resumed ``W_`` can then differ from the uninterrupted fit's in the
directions no class pins down (up to O(1) entries; decision scores measured up to 0.1 apart), as
the streamed and in-memory fits can, and the self-learning rounds after it can part from it.

The file is ``<dir>/ucm_state.safetensors`` (tensors, with the JSON part in the metadata),
replaced atomically, so an interruption during a write leaves the previous round's state. A
fingerprint of the data, the prototypes and the parameters that shape UCM guards against
resuming a different fit, and the checkpoint format and gpua version recorded with the state
against resuming one that another gpua computed (its rounds and the remaining ones would not
add up to either version's fit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import __version__
from .._atomic import atomic_path
from .._errors import GPUAError, ModelFileError
from .._integrity import CHECKSUM_KEY, digest, verify

__all__ = ["Checkpoint", "UCM_PARAMS", "ucm_params"]

STATE_NAME = "ucm_state.safetensors"
#: The layout of the state this gpua writes and reads.
# 2: plan_ridge's pending projection (``projected``, ``plan_query``, ``plan_mass``); 3: ``logit_scale``
# in the fingerprint of an estimated prior (a format-2 checkpoint is named as another format, not another fit).
STATE_VERSION = 3
# Estimator parameters that change what UCM computes (refinement ones do not).
UCM_PARAMS = (
    "query", "lam", "eps", "similarity", "temperature", "class_prior", "rho", "plan_ridge", "n_init_per_class",
    "max_outer", "tol", "sinkhorn_tol", "sinkhorn_max_iter", "assignment", "center",
    "center_vlm", "whiten", "whiten_shrink",
)


def ucm_params(params: dict) -> dict:
    """The estimator parameters a checkpoint's state depends on: :data:`UCM_PARAMS`, and
    ``logit_scale`` when the class prior is estimated (``"zero_shot"``, ``"estimate"``: the EM
    reads softmax(logit_scale * scores), and the state stores the prior it found)."""
    out = {p: params[p] for p in UCM_PARAMS}
    if isinstance(params["class_prior"], str):
        out["logit_scale"] = params["logit_scale"]
    return out


def fingerprint(params: dict, data_id: str, Y: torch.Tensor) -> str:
    """SHA-256 of the UCM parameters, the data's identity and the prototypes."""
    h = hashlib.sha256()
    h.update(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in params.items()}, sort_keys=True, default=str).encode())
    h.update(data_id.encode())
    h.update(Y.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class Checkpoint:
    """The checkpoint folder of one fit.

    Parameters
    ----------
    path : str or Path
        Folder (created on the first save).
    fingerprint : str
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path).expanduser()  # as atomic_path expands it when saving (was: saved, never found)
        self.fingerprint = fingerprint
        self.extra: dict[str, torch.Tensor | None] = {}  # saved with every state (e.g. the VFM mean)
        if self.path.exists() and not self.path.is_dir():
            raise GPUAError(f"checkpoint={str(self.path)!r} is a file; pass a folder.")

    @property
    def file(self) -> Path:
        return self.path / STATE_NAME

    def load(self) -> dict | None:
        """The saved state (tensors and ``meta``), or None when there is none.

        Raises
        ------
        GPUAError
            When the state belongs to another fit (other data, prototypes or parameters), or was
            written by another gpua version.
        """
        if not self.file.is_file():
            return None
        from safetensors import safe_open

        where = f"checkpoint {str(self.file)!r}"
        fix = "delete it to start over"
        try:
            with safe_open(str(self.file), framework="pt") as f:
                raw = (f.metadata() or {})["gpua_stream"]
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(raw)
        except Exception as exc:  # safetensors raises its own types on a bad header; KeyError, JSON errors
            raise ModelFileError(f"{where} is corrupt ({type(exc).__name__}: {exc}); {fix}.") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{where} has metadata that is not a JSON object; it is corrupt: {fix}.")
        stored = meta.pop(CHECKSUM_KEY, None)
        verify(stored, digest(meta, tensors) if stored is not None else "", where, fix)
        if meta.get("version") != STATE_VERSION or meta.get("gpua_version") != __version__:
            by = meta.get("gpua_version")
            by = f"gpua {str(by)[:40]}" if by is not None else "a gpua that did not record its version"
            raise GPUAError(
                f"checkpoint {str(self.path)!r} was written by {by} (state format {str(meta.get('version'))[:20]}; this is "
                f"gpua {__version__}, format {STATE_VERSION}), whose rounds may not continue into this one's; "
                "pass a new folder, or delete this one to start over."
            )
        if meta.get("fingerprint") != self.fingerprint:
            raise GPUAError(
                f"checkpoint {str(self.path)!r} was written by another fit (other data, prototypes or UCM parameters); "
                "pass a new folder, or delete this one to start over."
            )
        _check_state(meta, tensors, where, fix)
        return {"meta": meta, **tensors}

    def save(self, meta: dict, **tensors: torch.Tensor | None) -> None:
        """Replace the state atomically."""
        from safetensors.torch import save_file

        meta = {**meta, "fingerprint": self.fingerprint, "version": STATE_VERSION, "gpua_version": __version__}
        # Clones: safetensors refuses two names for one storage (e.g. final centres = next centres).
        data = {k: v.detach().cpu().clone().contiguous() for k, v in {**self.extra, **tensors}.items() if v is not None}
        meta[CHECKSUM_KEY] = digest(meta, data)
        with atomic_path(self.file) as tmp:
            save_file(data, str(tmp), metadata={"gpua_stream": json.dumps(meta)})


#: What a resumed fit reads from a checkpoint: meta keys and their types, and the tensors
#: (those that may be absent: None at save time).
_META = {"round": int, "converged": bool, "done": bool, "history": list, "passes": int}
_TENSORS = ("centres", "centres_final", "g", "cross_covariance")
_OPTIONAL = ("centres_next", "labels", "confidence", "vfm_mean", "vlm_mean", "whiten",
             "class_prior", "zero_shot_counts", "prior_rows",  # these three: class_prior="zero_shot"
             "plan_query", "plan_mass")  # plan_ridge: the final plan's sums, for its projection


def _check_state(meta: dict, tensors: dict, where: str, fix: str) -> None:
    """Every key a resumed fit reads: present, of its type, tensors finite and consistent in size."""
    unknown_meta = sorted(set(meta) - set(_META) - {"fingerprint", "version", "gpua_version", "projected"})
    if unknown_meta:
        raise ModelFileError(f"{where} has unknown metadata keys {unknown_meta}; it is corrupt: {fix}.")
    for key, kind in _META.items():
        v = meta.get(key)
        if not isinstance(v, kind) or (kind is int and (isinstance(v, bool) or v < 0)):
            raise ModelFileError(f"{where} has {key}={str(v)[:40]!r}, not a {kind.__name__}; it is corrupt: {fix}.")
    if "projected" in meta and not isinstance(meta["projected"], bool):
        raise ModelFileError(f"{where} has projected={str(meta['projected'])[:40]!r}, not a bool; it is corrupt: {fix}.")
    unknown = sorted(set(tensors) - set(_TENSORS) - set(_OPTIONAL))
    missing = [k for k in _TENSORS if k not in tensors]
    if meta.get("projected") is False:  # the projection's pass is left to run: it needs the plan's sums
        missing += [k for k in ("plan_query", "plan_mass") if k not in tensors]
    if unknown or missing:
        raise ModelFileError(f"{where} holds tensors {sorted(tensors)} ({'lacking ' + str(missing) if missing else 'unknown ' + str(unknown)}); it is corrupt: {fix}.")
    k = tensors["g"].shape[0] if tensors["g"].ndim == 1 else -1
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{where} holds NaN or inf in {name!r}; it is corrupt: {fix}.")
        if name in ("class_prior", "zero_shot_counts", "plan_mass") and tuple(t.shape) != (k,) or name == "prior_rows" and tuple(t.shape) != (1,):
            raise ModelFileError(f"{where} holds {name!r} of shape {tuple(t.shape)} for {k} classes; it is corrupt: {fix}.")
        if name == "class_prior" and not bool((t > 0).all()):
            raise ModelFileError(f"{where} holds a class_prior that is not positive; it is corrupt: {fix}.")
        if name in ("centres", "centres_final", "centres_next", "plan_query") and (t.ndim != 2 or t.shape[0] != k):
            raise ModelFileError(f"{where} holds {name!r} of shape {tuple(t.shape)} for {k} classes; it is corrupt: {fix}.")
