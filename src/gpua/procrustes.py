r"""Orthogonal and semi-orthogonal Procrustes: GPA's closed-form initial map.

.. math::
    W_0 = \arg\min_{W^\top W = I} \| Q W - P Y \|_F = U V^\top,
    \qquad U \Sigma V^\top = \mathrm{SVD}(Q^\top P Y).

:math:`Q` (n_samples, d_in) is the query representation, :math:`P` (n_samples, n_classes) the
soft correspondence (rows summing to one) and :math:`Y` (n_classes, d_out) the text prototypes.
When ``d_in > d_out`` the thin SVD gives a semi-orthogonal map (orthonormal columns,
:math:`W^\top W = I_{d_{out}}`); when ``d_in < d_out``, orthonormal rows (:math:`W W^\top = I`).
For a semi-orthogonal map :math:`U V^\top` maximises :math:`\mathrm{tr}(W^\top Q^\top P Y)`,
which equals the least-squares solution when the queries are whitened
(:math:`Q^\top Q \propto I`); it is the standard closed form and the one GPUA uses.
GPUA applies no pull toward the identity: the published code's blend of the top-left block
with :math:`I` (:func:`identity_pull`, used only by :class:`gpua.reference.ReferenceGPUA`) maps
unrelated dimensions onto each other once the spaces differ.

scipy's ``orthogonal_procrustes`` only handles square maps, hence the thin-SVD solver here.
"""

from __future__ import annotations

import torch

from ._errors import GPUAError

__all__ = [
    "polar_factor",
    "cross_covariance",
    "orthogonal_procrustes",
    "procrustes_from_assignment",
    "orthogonality_error",
    "identity_pull",
]


def polar_factor(M: torch.Tensor) -> torch.Tensor:
    r"""The (semi-)orthogonal factor :math:`U V^\top` of :math:`M = U \Sigma V^\top` (thin SVD).

    It is the (semi-)orthogonal matrix nearest to ``M`` in Frobenius norm.

    Parameters
    ----------
    M : tensor of shape (d_in, d_out)

    Returns
    -------
    W : tensor of shape (d_in, d_out)

    Examples
    --------
    >>> import torch
    >>> W = polar_factor(torch.tensor([[2.0, 0.0], [0.0, -3.0]]))
    >>> W.tolist()
    [[1.0, 0.0], [0.0, -1.0]]
    """
    if M.ndim != 2:
        raise GPUAError(f"M must be a 2-D (d_in, d_out) matrix; got shape {tuple(M.shape)}.")
    if not torch.isfinite(M).all():
        raise GPUAError("M contains NaN or inf (no nearest orthogonal matrix); check the features it was built from.")
    dtype = M.dtype
    U, _, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return (U @ Vh).to(dtype)


def cross_covariance(Q: torch.Tensor, P: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    r""":math:`Q^\top P Y`, accumulated in float64.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_in)
    P : tensor of shape (n_samples, n_classes)
        Soft or one-hot correspondences.
    Y : tensor of shape (n_classes, d_out)

    Returns
    -------
    M : tensor of shape (d_in, d_out), float64
    """
    return Q.double().T @ (P.double() @ Y.double())


def orthogonal_procrustes(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r""":math:`\arg\min_{W^\top W = I} \|A W - B\|_F` for paired rows of ``A`` and ``B``.

    Parameters
    ----------
    A : tensor of shape (n_samples, d_in)
    B : tensor of shape (n_samples, d_out)

    Returns
    -------
    W : tensor of shape (d_in, d_out)
    """
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise GPUAError(f"A and B must be 2-D with the same number of rows; got {tuple(A.shape)} and {tuple(B.shape)}.")
    return polar_factor(A.double().T @ B.double()).to(A.dtype)


def procrustes_from_assignment(
    Q: torch.Tensor, P: torch.Tensor, Y: torch.Tensor, assignment: str = "soft"
) -> torch.Tensor:
    r"""GPA's initial map: orthogonal Procrustes on UCM's correspondences.

    .. math::
        W_0 = U V^\top,\qquad U \Sigma V^\top = \mathrm{SVD}(Q^\top P Y)\ \text{(thin)},

    the maximiser of :math:`\mathrm{tr}(W^\top Q^\top P Y)` over (semi-)orthogonal :math:`W`,
    i.e. of :math:`\sum_{ik} P_{ik}\, (q_i W)^\top y_k`; for square :math:`W` also the minimiser
    of :math:`\|Q W - P Y\|_F` (module docstring). Computed as :func:`polar_factor` of
    :func:`cross_covariance`. No pull toward the identity.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_in)
    P : tensor of shape (n_samples, n_classes)
        UCM's soft assignment (its scale does not change :math:`W_0`).
    Y : tensor of shape (n_classes, d_out)
    assignment : {"soft", "hard"}
        ``"hard"`` replaces each row of ``P`` by the one-hot of its argmax,
        :math:`P_{ik} \leftarrow [k = \arg\max_l P_{il}]` (the published code's choice, target
        row :math:`y_{l_i}`); ``"soft"`` keeps the full transport plan.

    Returns
    -------
    W0 : tensor of shape (d_in, d_out), dtype of ``Q``
    """
    if Q.ndim != 2 or P.ndim != 2 or Y.ndim != 2 or P.shape[0] != Q.shape[0] or P.shape[1] != Y.shape[0]:
        raise GPUAError(
            f"Q (n_samples, d_in), P (n_samples, n_classes) and Y (n_classes, d_out) do not match: got shapes "
            f"{tuple(Q.shape)}, {tuple(P.shape)} and {tuple(Y.shape)}."
        )
    if assignment == "hard":
        P = torch.nn.functional.one_hot(P.argmax(1), P.shape[1]).to(Q.dtype)
    elif assignment != "soft":
        raise GPUAError(f"assignment={assignment!r} is unknown; use 'soft' or 'hard'.")
    return polar_factor(cross_covariance(Q, P, Y)).to(Q.dtype)


def orthogonality_error(W: torch.Tensor) -> float:
    r""":math:`\|W^\top W - I\|_F` (or :math:`\|W W^\top - I\|_F` when ``d_in < d_out``)."""
    G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return float(torch.linalg.matrix_norm(G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)))


def identity_pull(W: torch.Tensor, beta: float) -> torch.Tensor:
    r"""The published code's blend of :math:`W`'s top-left square block with the identity.

    .. math::
        W_{[:m, :m]} \leftarrow (1 - \beta)\, W_{[:m, :m]} + \beta I_m,
        \qquad m = \min(d_{in}, d_{out}),

    other entries unchanged (``beta = 0.9`` there). A leftover from a square image-to-text map:
    with a :math:`[Z, X]` query the block maps VFM dimensions to text dimensions, so the pull is
    arbitrary; kept for :class:`gpua.reference.ReferenceGPUA` only.

    Parameters
    ----------
    W : tensor of shape (d_in, d_out)
    beta : float in [0, 1]

    Returns
    -------
    tensor of shape (d_in, d_out)
        A new tensor.

    Examples
    --------
    >>> import torch
    >>> identity_pull(torch.zeros(3, 2), 0.9).tolist()
    [[0.8999999761581421, 0.0], [0.0, 0.8999999761581421], [0.0, 0.0]]
    """
    if not 0.0 <= float(beta) <= 1.0:
        raise GPUAError(f"beta={beta!r} must lie in [0, 1] (the published code uses 0.9).")
    out = W.clone()
    m = min(W.shape)
    out[:m, :m] = (1.0 - beta) * W[:m, :m] + beta * torch.eye(m, dtype=W.dtype, device=W.device)
    return out
