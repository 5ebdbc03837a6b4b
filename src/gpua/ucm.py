r"""Unsupervised correspondence mining (UCM): soft image-to-class assignments without labels.

Alternates two steps from a confident initialisation (:func:`confident_centres`), all in
:func:`mine_correspondences`:

1. **Assignment** (entropic OT, :func:`gpua.ot.sinkhorn`) on the fused score
   (:func:`fused_score`)

   .. math::
       S = (1 - \lambda)\, \mathrm{sim}(Q, C) + \lambda\, \mathrm{sim}(X, Y),

   which (with the default :math:`\lambda > 1/2`) trusts the VLM's zero-shot score
   :math:`X Y^\top` mostly and lets the VFM's cluster structure (its similarity to class
   centres :math:`C`) correct it. With ``sim`` the cosine and :math:`Q = Z` this is the paper's
   :math:`(1 - \lambda) Z C^\top + \lambda X Y^\top`.
2. **Centres** (closed form, :func:`class_centres`)
   :math:`C_k = \sum_i P_{ik} Q_i / \sum_i P_{ik}`, then L2-normalised.

The loop stops when the plan moves less than ``tol``: the fraction of the plan's mass that
moved, :math:`\tfrac{1}{2N} \sum_{ik} |P_{ik} - P^{\text{old}}_{ik}|` with each row of
:math:`P` summing to one (the total-variation distance between successive plans), not after a
per-dataset number of rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._errors import GPUAError
from ._validation import check_number
from .ot import sinkhorn

__all__ = [
    "SIMILARITIES",
    "INIT_LOGIT_SCALE",
    "similarity",
    "fused_score",
    "top_rows",
    "confident_centres",
    "class_centres",
    "UCMResult",
    "mine_correspondences",
]

SIMILARITIES = ("cosine", "neg_euclidean")
#: CLIP's logit scale: :math:`s` of the confident-centre posterior :math:`\mathrm{softmax}(s X Y^\top)`.
INIT_LOGIT_SCALE = 100.0


def similarity(A: torch.Tensor, B: torch.Tensor, kind: str = "cosine", temperature: float = 0.1) -> torch.Tensor:
    r"""Pairwise similarity :math:`\mathrm{sim}(A, B)` of (normally L2-normalised) rows.

    ``"cosine"``: :math:`A B^\top` (the cosine for unit rows). ``"neg_euclidean"``:
    :math:`-\|a - b\|_2 / \tau` (the published code's form, with :math:`\tau` =
    ``temperature``), computed as
    :math:`-\sqrt{\|a\|^2 + \|b\|^2 - 2 a^\top b} / \tau`: exact for rows of any norm too,
    such as the published code's unnormalised :math:`[\hat Z, \hat X]` queries (norm
    :math:`\sqrt 2`) against unit centres (:class:`gpua.reference.ReferenceGPUA`).

    Parameters
    ----------
    A : tensor of shape (n, d)
    B : tensor of shape (m, d)
    kind : {"cosine", "neg_euclidean"}
    temperature : float > 0
        :math:`\tau` of ``"neg_euclidean"`` (ignored for ``"cosine"``).

    Returns
    -------
    tensor of shape (n, m)
    """
    if kind not in SIMILARITIES:
        raise GPUAError(f"similarity={kind!r} is unknown; use one of {SIMILARITIES}.")
    if len(A.shape) != 2 or len(B.shape) != 2 or A.shape[1] != B.shape[1]:  # shape, not ndim: streamed rows are duck-typed
        raise GPUAError(f"similarity needs 2-D rows of one width; got shapes {tuple(A.shape)} and {tuple(B.shape)}.")
    if kind == "neg_euclidean" and not 0.0 < float(temperature) < float("inf"):
        # temperature = 0 made every score -inf, and a zero distance 0 / -0 = NaN.
        raise GPUAError(f"temperature={temperature!r} must be a positive number (the published code uses 0.1).")
    G = A @ B.T
    if kind == "cosine":
        return G
    if kind == "neg_euclidean":
        G.mul_(-2.0).add_((A * A).sum(1)[:, None]).add_((B * B).sum(1)[None, :])  # ||a - b||^2, in place
        return G.clamp_min_(0.0).sqrt_().div_(-temperature)
    raise GPUAError(f"similarity={kind!r} is unknown; use one of {SIMILARITIES}.")


def fused_score(
    Q: torch.Tensor,
    C: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    lam: float,
    kind: str = "cosine",
    temperature: float = 0.1,
) -> torch.Tensor:
    r"""UCM's fused score, the cost of the OT assignment.

    .. math::
        S = (1 - \lambda)\,\mathrm{sim}(Q, C) + \lambda\,\mathrm{sim}(X, Y),

    :math:`\mathrm{sim}` from :func:`similarity`. With :math:`\lambda = 1` the centre term is
    not computed (its weight is zero).

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
        Query features (VFM, or VFM and VLM concatenated), rows L2-normalised.
    C : tensor of shape (n_classes, d_q)
        Class centres in the query space.
    X : tensor of shape (n_samples, d_t)
        VLM image features (in a self-learning round, the mapped queries
        :math:`\mathrm{normalize}(Q W)` in their place).
    Y : tensor of shape (n_classes, d_t)
        Text prototypes.
    lam : float in [0, 1]
        Weight :math:`\lambda` of the VLM term.
    kind : {"cosine", "neg_euclidean"}
    temperature : float > 0
        :math:`\tau` of ``"neg_euclidean"``.

    Returns
    -------
    S : tensor of shape (n_samples, n_classes)
    """
    S = similarity(X, Y, kind, temperature).mul_(lam)
    if lam < 1.0:
        S.add_(similarity(Q, C, kind, temperature), alpha=1.0 - lam)
    return S


def class_centres(Q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    r"""Closed-form centres from the plan, L2-normalised.

    .. math::
        C_k = \mathrm{normalize}\Big(\frac{\sum_i P_{ik} Q_i}{\sum_i P_{ik}}\Big)

    (a class with no mass is divided by the smallest positive float, not by zero).

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
    P : tensor of shape (n_samples, n_classes)

    Returns
    -------
    C : tensor of shape (n_classes, d_q)
    """
    P = P.to(Q.dtype)  # a float32 Sinkhorn plan with float64 (or float16) queries
    C = P.T @ Q / P.sum(0).clamp_min(torch.finfo(P.dtype).tiny)[:, None]
    return torch.nn.functional.normalize(C, dim=1)


def top_rows(vals: torch.Tensor, ids: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per column, the ``m`` largest values, ties broken by the smaller row id.

    :func:`torch.topk` picks arbitrarily among equal values, and a saturated
    :math:`\mathrm{softmax}(100\, X Y^\top)` has many rows at exactly 1.0: a fixed rule makes the
    selection independent of how the rows are chunked (the union of the chunks' candidates,
    selected again with this function, is the global selection).

    Parameters
    ----------
    vals : tensor of shape (n, K)
    ids : int64 tensor of shape (n, K) or (n,)
        Row ids; a 1-D ``ids`` must be ascending (a chunk's rows).
    m : int

    Returns
    -------
    values, ids : tensors of shape (min(m, n), K), by decreasing value then increasing id
    """
    if ids.ndim == 2:
        # Put each column in id order first, so that a stable sort breaks ties by id.
        order = ids.argsort(dim=0)
        vals, ids = vals.gather(0, order), ids.gather(0, order)
    if int(m) < 1:
        raise GPUAError(f"m={m!r} must be at least 1 (the number of rows kept per column).")
    m = min(int(m), vals.shape[0])
    v, pos = vals.topk(m, dim=0)
    tied = ((vals >= v[-1]).sum(0) > m).nonzero().flatten()
    if tied.numel():  # only the columns with ties at the boundary pay for a full stable sort
        tv, tp = vals[:, tied].sort(dim=0, descending=True, stable=True)
        v[:, tied], pos[:, tied] = tv[:m], tp[:m]
    out = ids[pos] if ids.ndim == 1 else ids.gather(0, pos)
    order = out.argsort(dim=0)
    v, out = v.gather(0, order), out.gather(0, order)
    order = v.sort(dim=0, descending=True, stable=True).indices
    return v.gather(0, order), out.gather(0, order)


def confident_centres(
    Q: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, n_per_class: int = 8, logit_scale: float = INIT_LOGIT_SCALE
) -> torch.Tensor:
    r"""Initial centres: for each class, the confidence-weighted mean of its most confident samples.

    .. math::
        \pi = \mathrm{softmax}_k(s\, X Y^\top),\qquad
        C_k = \mathrm{normalize}\Big(\sum_{i \in T_k} \pi_{ik}\, Q_i\Big),

    :math:`T_k` the ``n_per_class`` rows with the largest :math:`\pi_{ik}` and :math:`s` the
    CLIP logit scale (the weighted mean and the weighted sum have the same direction). Each
    class takes its own top rows (a sample may serve several classes), so every class has a
    centre even when the zero-shot argmax never picks it. Ties (a saturated posterior of exactly
    1) go to the smaller row id (:func:`top_rows`), as in the streamed fits.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
        Query rows, L2-normalised.
    X : tensor of shape (n_samples, d_t)
        VLM image features (in a self-learning round, :math:`\mathrm{normalize}(Q W)`).
    Y : tensor of shape (n_classes, d_t)
    n_per_class : int >= 1
    logit_scale : float
        :math:`s` (:data:`INIT_LOGIT_SCALE`).

    Returns
    -------
    C : tensor of shape (n_classes, d_q), rows L2-normalised
    """
    if int(n_per_class) < 1:
        raise GPUAError(f"n_per_class={n_per_class!r} must be at least 1 (samples averaged into each initial centre; try 8).")
    probs = torch.softmax(logit_scale * (X @ Y.T), dim=1)
    top_p, top_i = top_rows(probs, torch.arange(Q.shape[0], device=probs.device), n_per_class)  # (m, K)
    C = torch.einsum("mk,mkd->kd", top_p, Q[top_i])
    return torch.nn.functional.normalize(C, dim=1)


@dataclass
class UCMResult:
    """Output of :func:`mine_correspondences`.

    Attributes
    ----------
    plan : tensor of shape (n_samples, n_classes)
        Soft assignment :math:`P`, rows summing to one (:math:`N` times the OT plan).
    centres : tensor of shape (n_classes, d_q)
        When converged, the centres the last plan was scored with; when stopped at
        ``max_outer``, the centres of the last plan (:func:`class_centres`).
    n_outer : int
    converged : bool
    history : list of dict
        Per outer round: plan change, Sinkhorn iterations and marginal error.
    log_v : tensor of shape (n_classes,) or None
        The last Sinkhorn solve's class potential (warm-starts a later mining of the same pool).
    """

    plan: torch.Tensor
    centres: torch.Tensor
    n_outer: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    log_v: torch.Tensor | None = None


def mine_correspondences(
    Q: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    lam: float = 0.9,
    eps: float = 0.05,
    similarity_kind: str = "cosine",
    temperature: float = 0.1,
    class_prior=None,
    rho: float | None = None,
    n_init_per_class: int = 8,
    max_outer: int = 10,
    tol: float = 1e-3,
    sinkhorn_tol: float = 1e-5,
    sinkhorn_max_iter: int = 2000,
    solver: str = "torch",
    callback=None,
    init_log_v: torch.Tensor | None = None,
) -> UCMResult:
    r"""Alternate entropic OT on the fused score with closed-form centres until the plan settles.

    From :math:`C^{(0)}` = :func:`confident_centres`, round :math:`r = 1, 2, \dots` computes

    .. math::
        S^{(r)} &= (1 - \lambda)\,\mathrm{sim}(Q, C^{(r-1)}) + \lambda\,\mathrm{sim}(X, Y),\\
        P^{(r)} &= N \cdot \mathrm{Sinkhorn}_\varepsilon(S^{(r)};\ a = \tfrac1N \mathbf 1,\ b,\ \rho),\\
        C^{(r)}_k &= \mathrm{normalize}\Big(\sum_i P^{(r)}_{ik} Q_i \Big/ \sum_i P^{(r)}_{ik}\Big),

    and stops once :math:`\tfrac{1}{2N} \sum_{ik} |P^{(r)}_{ik} - P^{(r-1)}_{ik}| <` ``tol``
    (or at once when :math:`\lambda = 1`: the centres cannot change the score), or after
    ``max_outer`` rounds. Each Sinkhorn solve starts from the previous one's class potential.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q)
    X : tensor of shape (n_samples, d_t)
    Y : tensor of shape (n_classes, d_t)
        All rows L2-normalised.
    lam : float
        VLM weight :math:`\lambda` of the fused score; 1 ignores the VFM, 0 ignores the VLM
        after initialisation.
    eps : float
        Entropic regularisation :math:`\varepsilon` of the OT problem, in score units.
    similarity_kind, temperature : str, float
        :func:`similarity` of both terms.
    class_prior : array of shape (n_classes,), optional
        Class marginal :math:`b` (default uniform).
    rho : float, optional
        Semi-relaxed class marginal (KL weight :math:`\rho`); ``None`` keeps it exact.
    n_init_per_class : int
        Rows per class of :func:`confident_centres`.
    max_outer, tol : int, float
        At most ``max_outer`` rounds; stop once the plan moves less than ``tol``.
    sinkhorn_tol, sinkhorn_max_iter, solver
        :func:`gpua.ot.sinkhorn`'s ``tol``, ``max_iter`` and ``solver``.
    callback : callable, optional
        Called with each round's history entry.
    init_log_v : tensor of shape (n_classes,), optional
        Class potential the first Sinkhorn solve starts from (a self-learning round passes the
        previous round's: the class marginals it balances are the same, so fewer iterations).

    Returns
    -------
    UCMResult
    """
    if not 0.0 <= lam <= 1.0:
        raise GPUAError(f"lam={lam!r} must lie in [0, 1] (the weight of the VLM term; try 0.9).")
    check_number(max_outer, "max_outer", integer=True, low=1, fix="at least one assignment round, e.g. 10")
    if len(Q.shape) != 2 or len(X.shape) != 2 or len(Y.shape) != 2:
        raise GPUAError(f"Q, X and Y must be 2-D; got shapes {tuple(Q.shape)}, {tuple(X.shape)} and {tuple(Y.shape)}.")
    if Q.shape[0] != X.shape[0]:
        raise GPUAError(f"Q has {Q.shape[0]} rows but X has {X.shape[0]}; both must hold the same images in the same order.")
    if X.shape[1] != Y.shape[1]:
        raise GPUAError(f"X has width {X.shape[1]} but Y has width {Y.shape[1]}; encode the prompts with the images' VLM.")
    C = confident_centres(Q, X, Y, n_init_per_class)
    n = Q.shape[0]
    plan = None
    log_v = init_log_v
    history: list[dict] = []
    converged = False
    r = 0
    for r in range(1, max_outer + 1):
        S = fused_score(Q, C, X, Y, lam, similarity_kind, temperature)
        res = sinkhorn(S, eps, b=class_prior, rho=rho, tol=sinkhorn_tol, max_iter=sinkhorn_max_iter, init_log_v=log_v, solver=solver)
        del S
        new_plan = res.plan.mul_(n)  # rows sum to one
        log_v = res.log_v
        change = float("inf") if plan is None else 0.5 * float((new_plan - plan).abs().sum()) / n
        plan = new_plan
        history.append(
            {"round": r, "plan_change": change, "sinkhorn_iter": res.n_iter, "marginal_error": res.marginal_error}
        )
        if callback is not None:
            callback(history[-1])
        if change < tol or lam == 1.0:  # with lam = 1 the centres cannot change the score
            converged = True
            break
        C = class_centres(Q, plan)
    return UCMResult(plan, C, r, converged, history, log_v)
