"""numpy <-> torch plumbing: compute is torch, on the device the user picks."""

from __future__ import annotations

import numpy as np
import torch

from ._errors import GPUAError

__all__ = ["resolve_device", "as_tensor", "to_numpy"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; "cuda" without a GPU is a clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GPUAError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GPUAError(f"device={device!r} but no CUDA GPU is available here; use device='cpu'.")
    return dev


def as_tensor(A, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Array-like -> tensor on ``device`` (no copy when already there)."""
    if isinstance(A, torch.Tensor):
        return A.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(A), dtype=dtype, device=device)


def to_numpy(T: torch.Tensor) -> np.ndarray:
    return T.detach().cpu().numpy()
