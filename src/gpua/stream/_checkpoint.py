"""Resumable UCM: the state after each outer round, in one atomically written file.

The state of a streamed UCM after round :math:`r` is small: the centres used in round
:math:`r` and the ones for round :math:`r + 1`, the class potential :math:`g` (its warm start),
the pseudo-labels and confidences, the Procrustes cross-covariance, and the history. A fit
interrupted at any point resumes after its last completed round and ends where an uninterrupted
fit ends: every later round is a function of that state alone.

The file is ``<dir>/ucm_state.safetensors`` (tensors, with the JSON part in the metadata),
replaced atomically, so an interruption during a write leaves the previous round's state. A
fingerprint of the data, the prototypes and the parameters that shape UCM guards against
resuming a different fit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .._atomic import atomic_path
from .._errors import GPUAError, ModelFileError

__all__ = ["Checkpoint", "UCM_PARAMS"]

STATE_NAME = "ucm_state.safetensors"
# Estimator parameters that change what UCM computes (refinement ones do not).
UCM_PARAMS = (
    "query", "lam", "eps", "similarity", "temperature", "class_prior", "rho", "n_init_per_class",
    "max_outer", "tol", "sinkhorn_tol", "sinkhorn_max_iter", "assignment", "center",
)


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
        self.path = Path(path)
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
            When the state belongs to another fit (other data, prototypes or parameters).
        """
        if not self.file.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.file), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["gpua_stream"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own types on a bad header
            raise ModelFileError(f"checkpoint {str(self.file)!r} is corrupt ({type(exc).__name__}: {exc}); delete it to start over.") from None
        if meta.get("fingerprint") != self.fingerprint:
            raise GPUAError(
                f"checkpoint {str(self.path)!r} was written by another fit (other data, prototypes or UCM parameters); "
                "pass a new folder, or delete this one to start over."
            )
        return {"meta": meta, **tensors}

    def save(self, meta: dict, **tensors: torch.Tensor | None) -> None:
        """Replace the state atomically."""
        from safetensors.torch import save_file

        meta = {**meta, "fingerprint": self.fingerprint, "version": 1}
        # Clones: safetensors refuses two names for one storage (e.g. final centres = next centres).
        data = {k: v.detach().cpu().clone().contiguous() for k, v in {**self.extra, **tensors}.items() if v is not None}
        with atomic_path(self.file) as tmp:
            save_file(data, str(tmp), metadata={"gpua_stream": json.dumps(meta)})
