"""numpy <-> torch plumbing: compute is torch, on the device the user picks."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._errors import GPUAError

__all__ = ["resolve_device", "as_tensor", "to_numpy"]


def resolve_device(device: str | torch.device | None, *, allow_mps: bool = False) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; "cuda" without a GPU is a clear error.

    ``allow_mps``: Apple's MPS device, for the encoders only (where this torch has it); the fits
    keep their Sinkhorn kernels and sums in float64, which MPS does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GPUAError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type not in (("cpu", "cuda", "mps") if allow_mps else ("cpu", "cuda")):
        if allow_mps:  # an encoder's or a flag's device (an extraction was told about the fits' float64 sums)
            raise GPUAError(f"device={device!r} is not a device gpua runs on: 'cpu' or 'cuda' (the encoders also 'mps'); use "
                            "device='cpu', 'cuda' or 'auto'.")
        raise GPUAError(f"device={device!r}: gpua fits run on 'cpu' or 'cuda' devices (float64 sums); use device='cpu', 'cuda' or 'auto'.")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise GPUAError(f"device={device!r} but this torch has no MPS device here; use device='cpu' (or 'cuda').")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GPUAError(f"device={device!r} but no CUDA GPU is available here; use device='cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GPUAError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s); use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}'.")
    return dev


def as_tensor(A, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Array-like -> tensor on ``device`` (no copy when already there).

    A read-only array (a memory map opened ``mode="r"``) is shared as it is: nothing in gpua
    writes into its inputs, so torch's warning about non-writable arrays is not passed on.
    """
    if isinstance(A, torch.Tensor):
        return A.to(device=device, dtype=dtype)
    A = np.asarray(A)
    if A.flags.writeable:
        return torch.as_tensor(A, dtype=dtype, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(A, dtype=dtype, device=device)


def to_numpy(T: torch.Tensor) -> np.ndarray:
    return T.detach().cpu().numpy()
