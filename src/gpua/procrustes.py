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

With :math:`K` classes fewer than the widths, :math:`Q^\top P Y` has rank :math:`r \le K - 1`
(the prototypes are centred) and :math:`W_0` is not unique: the SVD's singular vectors of the
zero singular values complete it arbitrarily, following the float rounding of the sum, so the
same pool summed in another order (a streamed or federated fit, another machine) got another
completion, which refinement then carried into other predictions. GPUA completes it from the
pool itself (:func:`completed_polar_factor` with the query-to-VLM cross-covariance
:func:`query_vlm_cross`; :func:`procrustes_map`, ``procrustes_completion="crosscov"``).

scipy's ``orthogonal_procrustes`` only handles square maps, hence the thin-SVD solver here.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._errors import GPUAError

#: How :func:`procrustes_map` completes a map that :math:`Q^\top P Y` leaves free.
COMPLETIONS = ("crosscov", "svd")
#: Singular values below this times the largest count as zero (float rounding of a rank-deficient sum: about 1e-7).
RANK_RTOL = 1e-4

__all__ = [
    "COMPLETIONS",
    "RANK_RTOL",
    "polar_factor",
    "completed_polar_factor",
    "procrustes_map",
    "cross_covariance",
    "query_vlm_cross",
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


def _rank(s: torch.Tensor, rtol: float) -> int:
    """Singular values ``s`` (descending) above ``rtol`` times the largest."""
    return int((s > rtol * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0


def completed_polar_factor(M: torch.Tensor, fillers=(), rtol: float = RANK_RTOL) -> torch.Tensor:
    r"""The polar factor of ``M`` with the null space of ``M`` filled from ``fillers``, in turn.

    With :math:`M = U \Sigma V^\top`, :math:`r` its singular values above ``rtol`` times the
    largest and :math:`m = \min(d_{in}, d_{out})`, every
    :math:`W = U_r V_r^\top + W_c`, :math:`W_c` a partial isometry from the complement of
    :math:`U_r` to that of :math:`V_r`, maximises :math:`\mathrm{tr}(W^\top M)` equally. The
    completion here takes, for each filler :math:`F` in turn,

    .. math::
        W_c \mathrel{+}= \mathrm{polar}_{k}\big(\Pi_U F \Pi_V\big),\qquad
        \Pi_U = I - U_r U_r^\top,\quad \Pi_V = I - V_r V_r^\top,

    with :math:`\mathrm{polar}_k(A) = \sum_{j \le k} a_j b_j^\top` from the top :math:`k`
    singular triplets of :math:`A` (those above ``rtol`` of its largest, at most :math:`m - r`;
    the last filler fills whatever is left), then adds the directions it used to
    :math:`U_r, V_r`. It is the limit :math:`t \to 0^+` of
    :math:`\mathrm{polar}(M + t F)`: the part of :math:`W` that :math:`M` determines is kept
    exactly, and a perturbation of :math:`M` of the size of float rounding no longer moves the
    rest.

    Parameters
    ----------
    M : tensor of shape (d_in, d_out)
    fillers : sequence of tensors of shape (d_in, d_out), or of callables returning one
        Empty: :func:`polar_factor` (the SVD's own completion). A callable is called only when
        its filler is needed (a driver's filler may cost a pass over the pool).
    rtol : float
        Singular values below ``rtol`` times the largest count as zero.

    Returns
    -------
    W : float64 tensor of shape (d_in, d_out)

    Examples
    --------
    >>> import torch
    >>> M = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])   # rank 1 of 2
    >>> F = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -5.0]])
    >>> completed_polar_factor(M, [F]).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]
    """
    if M.ndim != 2:
        raise GPUAError(f"M must be a 2-D (d_in, d_out) matrix; got shape {tuple(M.shape)}.")
    if not torch.isfinite(M).all():
        raise GPUAError("M contains NaN or inf (no nearest orthogonal matrix); check the features it was built from.")
    M = M.double()
    m = min(M.shape)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    r = _rank(s, rtol)
    if r >= m or not len(fillers):
        return U @ Vh
    Ur, Vr = U[:, :r], Vh[:r].T
    W = Ur @ Vr.T
    for i, F in enumerate(fillers):
        A = (F() if callable(F) else F).double().to(M.device)
        if A.shape != M.shape:
            raise GPUAError(f"a filler has shape {tuple(A.shape)}; it must have M's shape {tuple(M.shape)}.")  # pragma: no cover - internal
        A = A - Ur @ (Ur.T @ A)
        A = A - (A @ Vr) @ Vr.T
        Ua, sa, Vha = torch.linalg.svd(A, full_matrices=False)
        k = m - r if i == len(fillers) - 1 else min(m - r, _rank(sa, rtol))
        W = W + Ua[:, :k] @ Vha[:k]
        Ur, Vr, r = torch.cat([Ur, Ua[:, :k]], 1), torch.cat([Vr, Vha[:k].T], 1), r + k
        if r >= m:
            break
    return W


def procrustes_map(M: torch.Tensor, completion: str = "crosscov",
                   cross: torch.Tensor | Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    r"""GPUA's :math:`W_0` from :math:`M = Q^\top P Y`: its polar factor, completed as ``completion`` says.

    ``"crosscov"``: :func:`completed_polar_factor` with the fillers :math:`Q^\top X` (``cross``,
    the pool's query-to-VLM cross-covariance, :func:`query_vlm_cross`: a direction of the query
    goes where the pool's own VLM features send it) and then the rectangular identity (whatever
    :math:`Q^\top X` leaves undetermined: a pool of fewer rows than the query's width). Every
    driver sums the same :math:`M` and :math:`Q^\top X` up to float rounding, so they complete
    the map alike. ``"svd"``: :func:`polar_factor`, the SVD's own completion (gpua's releases up
    to 2026-12-01).

    Parameters
    ----------
    M : tensor of shape (d_in, d_out)
    completion : {"crosscov", "svd"}
    cross : tensor of shape (d_in, d_out), or a callable returning it, optional
        Needed for ``"crosscov"``; a callable is called only when ``M`` leaves part of the map
        free (with as many classes as the widths it does not, and a streamed fit saves the pass).

    Returns
    -------
    W0 : float64 tensor of shape (d_in, d_out)
    """
    if completion == "svd":
        return polar_factor(M.double())
    if completion != "crosscov":
        raise GPUAError(f"procrustes_completion={completion!r} is unknown; use one of {COMPLETIONS}.")
    if cross is None:
        raise GPUAError("procrustes_completion='crosscov' needs the pool's query-to-VLM cross-covariance (cross).")  # pragma: no cover - internal
    eye = torch.eye(M.shape[0], M.shape[1], dtype=torch.float64, device=M.device)
    return completed_polar_factor(M, (cross, eye))


def query_vlm_cross(Q, X: torch.Tensor) -> torch.Tensor:
    r""":math:`Q^\top X`, the pool's query-to-VLM cross-covariance, float64, summed 8,192 rows at a time.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q), or rows that slice into tensors (streamed whitened rows)
    X : tensor of shape (n_samples, d_vlm)
        The VLM image rows UCM compares with the prototypes (normalised, centred).

    Returns
    -------
    C : float64 tensor of shape (d_q, d_vlm)
    """
    out = torch.zeros(Q.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[0], 8192):
        out.addmm_(Q[start:start + 8192].double().T, X[start:start + 8192].double())
    return out


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
    Q: torch.Tensor, P: torch.Tensor, Y: torch.Tensor, assignment: str = "soft", completion: str = "svd",
    cross: torch.Tensor | Callable[[], torch.Tensor] | None = None,
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
    completion : {"svd", "crosscov"}
        How the map is completed where :math:`Q^\top P Y` leaves it free (:func:`procrustes_map`;
        ``"crosscov"`` needs ``cross``). The published method's (``"svd"``) is the default here;
        :class:`gpua.GPUA` passes its ``procrustes_completion``.
    cross : tensor of shape (d_in, d_out), or a callable returning it, optional
        :func:`query_vlm_cross` of the pool.

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
    return procrustes_map(cross_covariance(Q, P, Y), completion, cross).to(Q.dtype)


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
