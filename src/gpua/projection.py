r"""Ridge projection of UCM's plan: the labelling a linear classifier of the query can hold.

UCM's plan :math:`P` (rows summing to one) comes from entropic OT on the fused score, row by
row; the map GPUA then fits is linear in the query. The projection replaces :math:`P` by its
ridge least-squares fit on the affine functions of the standardised query
:math:`F = (Q - \mathbf 1 \mu^\top) D^{-1}` (:math:`\mu`, :math:`D`: the pool's column means and
standard deviations), clipped and renormalised, so that each row's labelling is the one a
linear function of the whole pool's query gives it:

.. math::
    B = (F^\top F + \alpha I)^{-1} F^\top P,\qquad
    c = \tfrac1N \mathbf 1^\top P,\qquad
    \tilde P_{ik} = \frac{\max(F_i B_k + c_k,\ 10^{-6})}{\sum_l \max(F_i B_l + c_l,\ 10^{-6})}

(the intercept is unpenalised; with centred columns it is the plan's mean row). It is what
Procrustes, refinement and the pseudo-labels then use (``GPUA(plan_ridge=alpha)``; the README's
accuracy section has how it was chosen: it is a least-squares probe trained on the plan and
read back on the same rows, in the spirit of TURTLE's "labellings a linear model generalises").

Everything the fit needs is a function of moments that sum over rows, so a streamed or
federated fit computes it chunk by chunk and client by client with the same functions:
:func:`query_moments` of each chunk (summed), the plan's :math:`P^\top Q` and column sums
(which UCM's last pass sums anyway), :func:`ridge_projection` on the sums, then
:func:`projected_plan` row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PLAN_FLOOR", "PlanProjection", "query_moments", "ridge_projection", "projected_plan"]

#: The floor of a projected score before the rows are renormalised (a least-squares fit can go below 0).
PLAN_FLOOR = 1e-6
#: A query column whose variance over the pool is below this fraction of its mean square is constant.
CONSTANT_RTOL = 1e-10


@dataclass
class PlanProjection:
    r"""The affine map :math:`q \mapsto \max(q^\top B' + c',\ 10^{-6})` (rows renormalised) of :func:`ridge_projection`.

    Attributes
    ----------
    coef : float64 tensor of shape (d_q, n_classes)
        :math:`B' = D^{-1} B` (the standardisation folded in).
    intercept : float64 tensor of shape (n_classes,)
        :math:`c' = c - \mu^\top B'`.
    """

    coef: torch.Tensor
    intercept: torch.Tensor


def query_moments(Q) -> torch.Tensor:
    r"""The rows' augmented second moment :math:`[Q, \mathbf 1]^\top [Q, \mathbf 1]`, float64 of shape (d_q + 1, d_q + 1).

    It holds :math:`Q^\top Q`, :math:`Q^\top \mathbf 1` and :math:`N`; two sets of rows' moments
    add, so a streamed or federated fit sums its chunks' and clients'.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q), or rows that slice into tensors (streamed whitened rows)
    """
    n, d = Q.shape
    out = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=Q.device)
    for start in range(0, n, 8192):
        block = Q[start:start + 8192].double()
        block = torch.cat([block, torch.ones(block.shape[0], 1, dtype=torch.float64, device=block.device)], 1)
        out.addmm_(block.T, block)
    return out


def ridge_projection(moments: torch.Tensor, plan_query: torch.Tensor, plan_mass: torch.Tensor, alpha: float) -> PlanProjection:
    r"""The ridge least-squares fit of a plan on the standardised query, from sums over the rows.

    With :math:`N`, :math:`\mu = \tfrac1N \sum_i q_i` and :math:`Q^\top Q` read from
    ``moments``, :math:`D = \mathrm{diag}(\sigma)` the columns' standard deviations
    (:math:`N - 1` in the denominator; a column constant over the pool, its variance below
    :data:`CONSTANT_RTOL` of its mean square, gets :math:`\sigma = 1` and no coefficient),

    .. math::
        F^\top F = D^{-1}\big(Q^\top Q - N \mu\mu^\top\big) D^{-1},\qquad
        F^\top P = D^{-1}\big(Q^\top P - \mu\, \mathbf 1^\top P\big),

    .. math::
        B = (F^\top F + \alpha I)^{-1} F^\top P,\quad c = \tfrac1N \mathbf 1^\top P,\quad
        B' = D^{-1} B,\quad c' = c - \mu^\top B'.

    Parameters
    ----------
    moments : float64 tensor of shape (d_q + 1, d_q + 1)
        :func:`query_moments` of the pool's query rows.
    plan_query : tensor of shape (n_classes, d_q)
        :math:`P^\top Q`, rows of :math:`P` summing to one.
    plan_mass : tensor of shape (n_classes,)
        :math:`\mathbf 1^\top P`, the plan's column sums (they add up to :math:`N`).
    alpha : float > 0
        The ridge penalty (``GPUA(plan_ridge=...)``).

    Returns
    -------
    PlanProjection
    """
    n = float(moments[-1, -1])
    dev = moments.device
    mu = moments[:-1, -1] / n
    cov = moments[:-1, :-1] - n * torch.outer(mu, mu)
    # A column constant over the pool (to float rounding) carries no signal, only the rounding
    # of its sums, which a tiny sigma would blow up: it gets no coefficient (scikit-learn's
    # StandardScaler leaves such a column unscaled for the same reason).
    constant = cov.diagonal() <= CONSTANT_RTOL * moments.diagonal()[:-1]
    sigma = torch.where(constant, 1.0, cov.diagonal().clamp_min(0.0) / max(n - 1.0, 1.0)).sqrt()
    mass = plan_mass.to(dev, torch.float64)
    FtF = cov / sigma[:, None] / sigma[None, :]
    FtP = (plan_query.to(dev, torch.float64).T - torch.outer(mu, mass)) / sigma[:, None]
    FtF[constant, :] = 0.0
    FtF[:, constant] = 0.0
    FtP[constant] = 0.0
    FtF.diagonal().add_(float(alpha))
    coef = torch.linalg.solve(FtF, FtP) / sigma[:, None]
    return PlanProjection(coef, mass / n - mu @ coef)


def projected_plan(Q, projection: PlanProjection) -> torch.Tensor:
    r""":math:`\tilde P` of rows ``Q``: :math:`\max(Q B' + c',\ 10^{-6})`, rows renormalised to sum to one.

    Parameters
    ----------
    Q : tensor of shape (n_samples, d_q), or rows that multiply a matrix (streamed whitened rows)
    projection : PlanProjection

    Returns
    -------
    tensor of shape (n_samples, n_classes), in ``Q``'s float dtype, rows summing to one
    """
    S = (Q @ projection.coef.to(Q.device, Q.dtype)).add_(projection.intercept.to(Q.device, Q.dtype)).clamp_min_(PLAN_FLOOR)
    return S.div_(S.sum(1, keepdim=True))
