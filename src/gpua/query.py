r"""The query :math:`Q` that GPUA's map acts on.

``"vfm"``: :math:`Q = Z`, the VFM features alone (the paper's text). ``"fused"``:
:math:`Q = [Z, X]`, VFM and VLM image features concatenated (the published code's choice, a
learned fusion that needs the VLM features at prediction too). Each part is L2-normalised,
and the concatenation is normalised again.

Centering (VecMap's "center"; the modality-gap correction of Liang et al., 2022): a modality's
normalised rows share a common direction that carries no class information, and it dominates
their cosines. Subtracting the pool mean and renormalising (:func:`centre_rows`) removes it;
:func:`target_prototypes` does the same for the text prototypes with their own mean.

Whitening (VecMap's "whiten"; ``GPUA(whiten=d)``): :func:`whitening_map` rescales the query's
top principal directions on the pool, so that no few directions of large variance dominate
UCM's centres and the map's cosines.
"""

from __future__ import annotations

import torch

from ._errors import GPUAError
from .params import COUNT, NON_NEGATIVE, check_param

__all__ = [
    "QUERY_MODES", "build_query", "centre_rows", "mapped_cosines", "mapped_rows", "pool_mean", "query_width",
    "second_moment_sum", "target_prototypes", "whitening_from_moment", "whitening_map", "whitening_width",
    "zero_shot_cosines",
]

QUERY_MODES = ("vfm", "fused")


def pool_mean(A: torch.Tensor) -> torch.Tensor:
    """Mean of the L2-normalised rows of ``A``, summed in float64 (as the streamed fits sum chunks), float32."""
    return (torch.nn.functional.normalize(A, dim=1).sum(0, dtype=torch.float64) / A.shape[0]).float()


def centre_rows(A: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    r"""Rows L2-normalised, then centred on ``mean`` and normalised again.

    .. math:: \tilde a_i = \frac{\bar a_i - \mu}{\lVert \bar a_i - \mu \rVert},
        \quad \bar a_i = \frac{a_i}{\lVert a_i \rVert}

    Parameters
    ----------
    A : tensor of shape (n_samples, d)
    mean : tensor of shape (d,) or None
        The pool mean of the normalised rows; None only normalises.

    Returns
    -------
    tensor of shape (n_samples, d)

    Examples
    --------
    >>> import torch
    >>> centre_rows(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([0.5, 0.5])).tolist()
    [[0.7071067690849304, -0.7071067690849304], [-0.7071067690849304, 0.7071067690849304]]
    """
    normalize = torch.nn.functional.normalize
    An = normalize(A, dim=1)
    return An if mean is None else normalize(An - mean.to(An.dtype), dim=1)


def target_prototypes(Y: torch.Tensor, center: bool) -> torch.Tensor:
    r"""The prototypes the map is fitted to and scored against: normalised, centred when ``center``.

    .. math:: \tilde y_k = \mathrm{normalize}\Big(\bar y_k - \frac{1}{K}\sum_l \bar y_l\Big)

    The mean is the prototypes' own (the text modality's), so it needs no pool and the same
    prototypes give the same targets at fit and at prediction.

    Parameters
    ----------
    Y : tensor of shape (n_classes, d_vlm)
    center : bool

    Returns
    -------
    tensor of shape (n_classes, d_vlm)
    """
    Yn = torch.nn.functional.normalize(Y, dim=1)
    return centre_rows(Yn, Yn.mean(0)) if center else Yn


def mapped_rows(Q: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    r"""The query rows mapped into the VLM text space and L2-normalised: :math:`\mathrm{normalize}(Q W)`.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
        Or any rows with ``Q @ W`` (the streamed fit's lazily whitened rows).
    W : tensor of shape (d_q, d_vlm)
        On ``Q``'s device.

    Returns
    -------
    tensor of shape (n_samples, d_vlm)
    """
    return torch.nn.functional.normalize(Q @ W, dim=1)


def mapped_cosines(Q: torch.Tensor, W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    r"""GPUA's class scores: the cosine of each mapped row with each target prototype.

    .. math:: s_{ik} = \cos(q_i W, \tilde y_k) = \frac{(q_i W)^\top \tilde y_k}{\lVert q_i W \rVert}

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
    W : tensor of shape (d_q, d_vlm)
    Y : tensor of shape (n_classes, d_vlm)
        The target prototypes :math:`\tilde y_k` (unit rows, :func:`target_prototypes`); both on ``Q``'s device.

    Returns
    -------
    tensor of shape (n_samples, n_classes)
    """
    return mapped_rows(Q, W) @ Y.T


def zero_shot_cosines(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    r"""The VLM's own zero-shot scores: the cosine of each image feature with each text prototype.

    .. math:: s_{ik} = \cos(x_i, y_k)

    Neither side is centred: these are the scores of :class:`gpua.VLMZeroShot`, which no pool shapes.

    Parameters
    ----------
    X : tensor of shape (n_samples, d_vlm)
    Y : tensor of shape (n_classes, d_vlm)

    Returns
    -------
    tensor of shape (n_samples, n_classes)
    """
    return centre_rows(X, None) @ target_prototypes(Y, False).T


def build_query(
    Z: torch.Tensor,
    X: torch.Tensor | None,
    mode: str,
    mean: torch.Tensor | None = None,
    vlm_mean: torch.Tensor | None = None,
    whiten: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The query :math:`Q` that the map acts on, rows L2-normalised.

    .. math::
        Q = \tilde Z\ (\texttt{"vfm"}),\qquad
        Q = \mathrm{normalize}\big([\tilde Z, \tilde X]\big)\ (\texttt{"fused"}),\qquad
        Q \leftarrow \mathrm{normalize}(Q M)\ \text{when whitened},

    with :math:`\tilde Z`, :math:`\tilde X` the rows of :func:`centre_rows` (normalised, centred
    on ``mean`` / ``vlm_mean`` when given, normalised again).

    Parameters
    ----------
    Z : tensor of shape (n_samples, d_vfm)
    X : tensor of shape (n_samples, d_vlm) or None
        Needed for ``mode="fused"``.
    mode : {"vfm", "fused"}
    mean : tensor of shape (d_vfm,), optional
        Subtracted from the normalised VFM features before renormalising (centering).
    vlm_mean : tensor of shape (d_vlm,), optional
        The same for the VLM features (:func:`centre_rows`).
    whiten : tensor of shape (d_q, d), optional
        The pool's :func:`whitening_map` :math:`M`: the rows become :math:`\mathrm{normalize}(Q M)`.

    Returns
    -------
    Q : tensor of shape (n_samples, d_vfm), (n_samples, d_vfm + d_vlm), or (n_samples, d) when whitened

    Examples
    --------
    >>> import torch
    >>> Q = build_query(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]]), "fused")
    >>> [round(v, 4) for v in Q[0].tolist()]
    [0.4243, 0.5657, 0.0, 0.7071]
    """
    normalize = torch.nn.functional.normalize
    if mode == "fused" and (X is None or X.ndim != 2 or X.shape[0] != Z.shape[0]):
        got = "None" if X is None else f"shape {tuple(X.shape)}"
        raise GPUAError(
            f"query='fused' needs the VLM features X, one row per row of Z ({Z.shape[0]}), but X is {got}; pass them, "
            "or use query='vfm'."
        )
    Zn = centre_rows(Z, mean)
    if mode == "vfm":
        Q = Zn
    elif mode == "fused":
        Q = normalize(torch.cat([Zn, centre_rows(X, vlm_mean)], dim=1), dim=1)
    else:
        raise GPUAError(f"query={mode!r} is unknown; use one of {QUERY_MODES}.")
    return Q if whiten is None else normalize(Q @ whiten.to(Q.device, Q.dtype), dim=1)


def query_width(mode: str, d_vfm: int, d_vlm: int) -> int:
    """Width :math:`d_q` of the query for ``mode`` and the two feature widths."""
    if mode not in QUERY_MODES:
        raise GPUAError(f"query={mode!r} is unknown; use one of {QUERY_MODES}.")
    return d_vfm + (d_vlm if mode == "fused" else 0)


def second_moment_sum(Q: torch.Tensor) -> torch.Tensor:
    r""":math:`Q^\top Q` in float64, summed over row blocks (no (n, d_q) float64 copy).

    A streamed or federated fit sums it over chunks and clients (:func:`gpua.stream.fit_streaming`).

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)

    Returns
    -------
    tensor of shape (d_q, d_q), float64
    """
    gram = torch.zeros(Q.shape[1], Q.shape[1], dtype=torch.float64, device=Q.device)
    for start in range(0, Q.shape[0], 8192):
        block = Q[start:start + 8192].double()
        gram.addmm_(block.T, block)
    return gram


def whitening_width(n_components: int | str, n_samples: int, n_classes: int, d_q: int) -> int:
    r"""The number :math:`d` of whitened directions that ``whiten=n_components`` asks for.

    ``"auto"``: :math:`\min(d_q, n, \max(128, 2K))`: 128 directions where the classes are few
    (chosen on the development sets, README), and never fewer than twice the classes, whose
    centres a narrower projection would merge (at :math:`K = 1000`, 128 directions left 84.5% of
    the pseudo-labels right against 99.8%). An int is clipped to :math:`\min(d_q, n)`.

    Examples
    --------
    >>> whitening_width("auto", 2000, 10, 1664), whitening_width("auto", 50000, 1000, 1792), whitening_width(64, 30, 3, 96)
    (128, 1792, 30)
    """
    if n_components != "auto":
        check_param("n_components", n_components, COUNT)  # "auto2" or 0: a clear error, not int()'s or an empty map
    d = max(128, 2 * int(n_classes)) if n_components == "auto" else int(n_components)
    return min(d, int(n_samples), int(d_q))


def whitening_map(Q: torch.Tensor, n_components: int, shrink: float) -> torch.Tensor:
    r"""The pool's whitening of the query: its top principal directions, each scaled to unit variance (shrunk).

    .. math::
        M = V_d\,\mathrm{diag}\big((\sigma_j^2 + s\,\bar\sigma^2)^{-1/2}\big)_{j \le d},
        \qquad \bar\sigma^2 = \frac1d \sum_{j \le d} \sigma_j^2,

    with :math:`(\sigma_j^2, v_j)` the top :math:`d` eigenpairs of the pool rows' second moment
    :math:`Q^\top Q / n` (not their covariance: no mean is subtracted, so the whitening stays
    linear and a map :math:`W` fitted on :math:`\mathrm{normalize}(Q M)` is the map :math:`M W`
    on :math:`Q`, since a row's scale does not change its cosines after the final
    normalisation; :func:`gpua.fitting.unwhiten`) and :math:`s` = ``shrink``, which
    interpolates between full whitening of the :math:`d` directions (0) and a plain projection
    on them (large). (:math:`10^{-6}\bar\sigma^2` is added under the root, so that a direction of
    no variance stays finite at :math:`s = 0`.)

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
        The pool's query rows (:func:`build_query`).
    n_components : int
        :math:`d`, at most ``min(n_samples, d_q)`` (larger values are clipped to it).
    shrink : float
        :math:`s \ge 0`.

    Returns
    -------
    M : tensor of shape (d_q, d), dtype of ``Q``

    Examples
    --------
    >>> import torch
    >>> Q = torch.nn.functional.normalize(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 1, 1, 1, 1, 0.1]), dim=1)
    >>> M = whitening_map(Q, 3, 0.0)
    >>> tuple(M.shape), torch.allclose((Q @ M).T @ (Q @ M) / 200, torch.eye(3), atol=1e-4)
    ((6, 3), True)
    """
    return whitening_from_moment(second_moment_sum(Q), Q.shape[0], n_components, shrink).to(Q.dtype)


def whitening_from_moment(gram: torch.Tensor, n_samples: int, n_components: int, shrink: float) -> torch.Tensor:
    r""":func:`whitening_map` from the summed second moment :math:`G = Q^\top Q` of ``n_samples`` rows.

    The one place :math:`M` is computed (the in-memory fit through :func:`whitening_map`, the
    streamed and federated fits on :math:`G` summed over chunks or clients):

    .. math::
        M = V_d\,\mathrm{diag}\big((\sigma_j^2 + (s + 10^{-6})\,\bar\sigma^2)^{-1/2}\big),\qquad
        (\sigma_j^2, v_j)_{j \le d} = \text{top eigenpairs of } G / n,

    each :math:`v_j` signed so its largest-magnitude entry is positive (the same map whatever
    order the moment was summed in); a pool with no variance at all is left unscaled.

    Parameters
    ----------
    gram : tensor of shape (d_q, d_q)
        :func:`second_moment_sum` of the pool (summed over chunks or clients).
    n_samples : int
        :math:`n`.
    n_components : int
        :math:`d` (clipped to ``min(n_samples, d_q)``).
    shrink : float
        :math:`s \ge 0`.

    Returns
    -------
    M : float32 tensor of shape (d_q, min(n_components, n_samples, d_q))
    """
    check_param("n_components", n_components, COUNT)
    check_param("shrink", shrink, NON_NEGATIVE)
    check_param("n_samples", n_samples, COUNT)  # 0 rows: a NaN moment that eigh cannot decompose
    d = min(int(n_components), int(n_samples), gram.shape[0])
    second, vectors = torch.linalg.eigh(gram.double() / n_samples)  # ascending
    var, V = second.flip(0)[:d].clamp_min(0.0), vectors.flip(1)[:, :d]
    # Each direction's sign fixed (largest entry positive): the same pool summed in another
    # order (chunks, clients) gives the same map, not one with columns flipped.
    V = V * torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))
    # A floor of 1e-6 mean variance keeps directions of (numerically) no variance finite when
    # shrink = 0; a pool with no variance at all (identical rows, centred away) is left unscaled.
    denominator = var + (shrink + 1e-6) * var.mean()
    scale = torch.where(denominator > 0, denominator.clamp_min(1e-300).rsqrt(), torch.ones_like(denominator))
    return (V * scale).float()
