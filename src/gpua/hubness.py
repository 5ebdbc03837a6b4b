r"""Topology-aware hubness suppression (THS) and hubness-aware retrieval.

THS is GPA's fine-tuning loss (:func:`ths_loss`), a ranking hinge over each sample's nearest
wrong prototypes, on a batch of :math:`N` rows:

.. math::
    \mathcal L = \frac{1}{N k} \sum_{i=1}^{N} \sum_{c \in \mathcal N_k(i)}
        \big[\, d_{i+} + m_{ic} + \beta\, h_c - d_{ic} \,\big]_+ ,
    \qquad m_{ic} = \frac{1 - y_{l_i}^\top y_c}{s},

with :math:`d_{ic} = 1 - \cos(q_i W, y_c)`, :math:`l_i` the pseudo-label, :math:`\mathcal N_k(i)`
the :math:`k` nearest prototypes other than :math:`l_i` (a top-k, not a full sort), the semantic
margin :math:`m_{ic}` (larger for classes whose names are far apart) and the hubness
:math:`h_c`, the fraction of samples whose :math:`k` nearest prototypes include :math:`c`
(recomputed per batch, without gradient): prototypes that attract everything must be beaten by
a wider margin.

CSLS (Conneau et al., 2018) rescores :math:`2\cos(x, y) - r_T(x) - r_S(y)` with the mean
similarity to the :math:`k` nearest neighbours on the other side.
"""

from __future__ import annotations

import torch

from ._errors import GPUAError

__all__ = ["semantic_margins", "hub_occupancy", "ths_loss", "csls_scores", "neighbourhood_radius"]


def semantic_margins(Y: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    r"""THS's semantic margins :math:`m_{lc} = (1 - y_l^\top y_c) / s` for all class pairs.

    Parameters
    ----------
    Y : tensor of shape (n_classes, d_t), rows L2-normalised
    scale : float
        :math:`s` (``margin_scale``).

    Returns
    -------
    tensor of shape (n_classes, n_classes)
    """
    return (1.0 - Y @ Y.T) / scale


def hub_occupancy(sims: torch.Tensor, k: int) -> torch.Tensor:
    r"""THS's hubness :math:`h_c = \frac1N \#\{i : c \in \mathrm{top}_k(s_{i\cdot})\}`.

    The fraction of rows whose ``k`` most similar columns include ``c`` (the positive included;
    ties as :func:`torch.topk` breaks them). :func:`gpua.metrics.k_occurrence` counts the same
    thing, unnormalised, for evaluation.

    Parameters
    ----------
    sims : tensor of shape (n_samples, n_classes)
    k : int
        Clipped to ``n_classes``.

    Returns
    -------
    tensor of shape (n_classes,)
    """
    k = min(k, sims.shape[1])
    top = sims.topk(k, dim=1).indices
    counts = torch.zeros(sims.shape[1], dtype=sims.dtype, device=sims.device)
    counts.scatter_add_(0, top.reshape(-1), torch.ones(top.numel(), dtype=sims.dtype, device=sims.device))
    return counts / sims.shape[0]


def ths_loss(
    mapped: torch.Tensor,
    Y: torch.Tensor,
    labels: torch.Tensor,
    margins: torch.Tensor,
    *,
    k: int = 3,
    hubness_weight: float = 2.0,
    sample_weight: torch.Tensor | None = None,
    distance: str = "cosine",
    include_positive: bool = False,
    full_sort: bool = False,
) -> torch.Tensor:
    r"""The THS ranking loss for one batch (defaults: the module's form).

    .. math::
        \mathcal L = \frac{1}{B k} \sum_{i=1}^{B} \sum_{c \in \mathcal N_k(i)}
            \big[\, d_{i+} + m_{ic} + \beta\, h_c - d_{ic} \,\big]_+ ,
        \qquad d_{ic} = 1 - \cos(q_i W, y_c),\quad d_{i+} = d_{i l_i},

    :math:`B` the batch rows, :math:`\mathcal N_k(i)` the :math:`k` nearest prototypes other
    than the pseudo-label :math:`l_i` (found with a top-k), :math:`m_{ic}` = ``margins[l_i, c]``
    (:func:`semantic_margins`) and :math:`h_c` = :func:`hub_occupancy` of the batch's
    similarities, without gradient. :math:`k` is clipped to :math:`K - 1` (:math:`K` with
    ``include_positive``). With ``sample_weight`` :math:`w` the per-row means are averaged with
    weights :math:`w_i / \sum_j w_j` instead of :math:`1/B`.

    Parameters
    ----------
    mapped : tensor of shape (batch, d_t)
        :math:`Q W` for the batch (normalised here).
    Y : tensor of shape (n_classes, d_t)
        Text prototypes, rows L2-normalised.
    labels : int tensor of shape (batch,)
        Pseudo-labels :math:`l_i`.
    margins : tensor of shape (n_classes, n_classes)
        :func:`semantic_margins`.
    k : int
        Number of nearest wrong prototypes per sample.
    hubness_weight : float
        :math:`\beta`; 0 drops the hubness term.
    sample_weight : tensor of shape (batch,), optional
        Per-sample weights (e.g. pseudo-label confidence).
    distance : {"cosine", "euclidean"}
        :math:`d_{ic} = 1 - \cos(q_i W, y_c)` (default), or the published code's
        :math:`d_{ic} = \|\widehat{q_i W} - y_c\|_2` between the normalised mapped row and the
        prototype (then the neighbours and :math:`h_c` are by that distance too).
    include_positive : bool
        The published code's neighbourhood: :math:`\mathcal N_k(i)` = the :math:`k` nearest
        prototypes *including* the pseudo-label's own, whose hinge is then
        :math:`[\beta h_{l_i}]_+` (margin :math:`m_{ll} = 0`). Default: the :math:`k` nearest
        wrong prototypes.
    full_sort : bool
        Find the neighbours by sorting all :math:`K` distances per sample, as the published code
        does (the same neighbours up to ties, and about 20x slower at K = 1000 than the default
        top-k).

    Returns
    -------
    scalar tensor
    """
    if distance not in ("cosine", "euclidean"):
        raise GPUAError(f"distance={distance!r} is unknown; use 'cosine' or 'euclidean'.")
    if int(k) < 1:
        raise GPUAError(f"k={k!r} must be at least 1 (the number of nearest wrong prototypes per sample; try 3).")
    if Y.shape[0] < 2 and not include_positive:
        # No wrong prototype to rank against: the mean over an empty neighbourhood was NaN.
        raise GPUAError(f"Y has {Y.shape[0]} prototype; the ranking loss needs at least 2 classes.")
    if labels.dtype not in (torch.int64, torch.int32):
        raise GPUAError(f"labels has dtype {labels.dtype}; pass integer class indices (labels.long()).")
    M = torch.nn.functional.normalize(mapped, dim=1)
    # Similarities, larger = nearer: cos, or -d for the Euclidean distance (d_pos + m - d_c = s_c - s_pos + m either way).
    sims = M @ Y.T if distance == "cosine" else -torch.cdist(M, Y)  # (B, K)
    k = min(k, Y.shape[0] if include_positive else Y.shape[0] - 1)
    pos = sims.gather(1, labels[:, None])  # (B, 1)
    # Nearest (wrong) prototypes: mask the positive unless it counts, then a top-k (or the full sort).
    cand = sims if include_positive else sims.scatter(1, labels[:, None], float("-inf"))
    if full_sort:
        ordered, order = cand.sort(dim=1, descending=True)
        neg_sims, neg_idx = ordered[:, :k], order[:, :k]
    else:
        neg_sims, neg_idx = cand.topk(k, dim=1)
    margin = margins[labels[:, None], neg_idx]
    if hubness_weight:
        with torch.no_grad():
            hub = hub_occupancy(sims, k)
        margin = margin + hubness_weight * hub[neg_idx]
    hinge = torch.relu(neg_sims - pos + margin)
    per_sample = hinge.mean(1)
    if sample_weight is not None:
        return (per_sample * sample_weight).sum() / sample_weight.sum()
    return per_sample.mean()


def neighbourhood_radius(A: torch.Tensor, B: torch.Tensor, k: int = 10, chunk: int = 8192) -> torch.Tensor:
    r""":math:`r(a) = \frac1k \sum_{b \in \mathcal N_k(a)} \cos(a, b)` for each row of ``A`` against ``B``.

    CSLS's radius (:func:`csls_scores`): with ``A`` the prototypes and ``B`` the fit pool's
    mapped queries it is :math:`r_S(y)`. Computed in row chunks so the (n_A, n_B) similarity
    never exists whole.

    Parameters
    ----------
    A : tensor of shape (n_A, d), rows L2-normalised
    B : tensor of shape (n_B, d), rows L2-normalised
    k : int
        Clipped to ``n_B``.
    chunk : int
        Rows of ``A`` per product.

    Returns
    -------
    tensor of shape (n_A,)
    """
    if int(k) < 1:
        raise GPUAError(f"k={k!r} must be at least 1 (the neighbours averaged per row; try 10).")
    k = min(k, B.shape[0])
    out = [(A[i : i + chunk] @ B.T).topk(k, dim=1).values.mean(1) for i in range(0, A.shape[0], chunk)]
    return torch.cat(out)


def csls_scores(sims: torch.Tensor, r_query: torch.Tensor, r_proto: torch.Tensor) -> torch.Tensor:
    r"""CSLS retrieval scores (Conneau et al., 2018).

    .. math::
        \mathrm{CSLS}(x_i, y_k) = 2 \cos(x_i, y_k) - r_T(x_i) - r_S(y_k),

    :math:`r_T(x)` the mean cosine of the mapped query :math:`x = \mathrm{normalize}(q W)` to its
    nearest prototypes and :math:`r_S(y)` the mean cosine of a prototype to its nearest mapped
    fit-pool queries (:func:`neighbourhood_radius`).

    Parameters
    ----------
    sims : tensor of shape (n_samples, n_classes)
        Cosine similarities.
    r_query : tensor of shape (n_samples,)
        Each query's mean similarity to its nearest prototypes.
    r_proto : tensor of shape (n_classes,)
        Each prototype's mean similarity to its nearest (fit-pool) queries.

    Returns
    -------
    tensor of shape (n_samples, n_classes)
    """
    if sims.ndim != 2 or r_query.shape != sims.shape[:1] or r_proto.shape != sims.shape[1:]:
        raise GPUAError(
            f"sims (n_samples, n_classes), r_query (n_samples,) and r_proto (n_classes,) do not match: got shapes "
            f"{tuple(sims.shape)}, {tuple(r_query.shape)} and {tuple(r_proto.shape)}."
        )
    return 2.0 * sims - r_query[:, None] - r_proto[None, :]
