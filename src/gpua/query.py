r"""The query :math:`Q` that GPUA's map acts on.

``"vfm"``: :math:`Q = Z`, the VFM features alone (the paper's text). ``"fused"``:
:math:`Q = [Z, X]`, VFM and VLM image features concatenated (the published code's choice, a
learned fusion that needs the VLM features at prediction too). Each part is L2-normalised,
and the concatenation is normalised again.
"""

from __future__ import annotations

import torch

from ._errors import GPUAError

__all__ = ["QUERY_MODES", "build_query", "query_width"]

QUERY_MODES = ("vfm", "fused")


def build_query(Z: torch.Tensor, X: torch.Tensor | None, mode: str, mean: torch.Tensor | None = None) -> torch.Tensor:
    r"""The query :math:`Q` that the map acts on, rows L2-normalised.

    Parameters
    ----------
    Z : tensor of shape (n_samples, d_vfm)
    X : tensor of shape (n_samples, d_vlm) or None
        Needed for ``mode="fused"``.
    mode : {"vfm", "fused"}
    mean : tensor of shape (d_vfm,), optional
        Subtracted from the normalised VFM features before renormalising (centering).

    Returns
    -------
    Q : tensor of shape (n_samples, d_vfm) or (n_samples, d_vfm + d_vlm)

    Examples
    --------
    >>> import torch
    >>> Q = build_query(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]]), "fused")
    >>> [round(v, 4) for v in Q[0].tolist()]
    [0.4243, 0.5657, 0.0, 0.7071]
    """
    normalize = torch.nn.functional.normalize
    Zn = normalize(Z, dim=1)
    if mean is not None:
        Zn = normalize(Zn - mean, dim=1)
    if mode == "vfm":
        return Zn
    if mode == "fused":
        return normalize(torch.cat([Zn, normalize(X, dim=1)], dim=1), dim=1)
    raise GPUAError(f"query={mode!r} is unknown; use one of {QUERY_MODES}.")


def query_width(mode: str, d_vfm: int, d_vlm: int) -> int:
    """Width :math:`d_q` of the query for ``mode`` and the two feature widths."""
    if mode not in QUERY_MODES:
        raise GPUAError(f"query={mode!r} is unknown; use one of {QUERY_MODES}.")
    return d_vfm + (d_vlm if mode == "fused" else 0)
