r"""The scale of GPUA's class probabilities, chosen on the pool without labels.

``predict_proba`` is :math:`\mathrm{softmax}(s \cdot \mathrm{scores})`. CLIP's logit scale
:math:`s = 100` suits a VLM's zero-shot cosines, whose class gaps are a few hundredths; GPUA's
mapped cosines have gaps ten times larger, and at 100 nearly every row's top probability is 1,
the wrong predictions' included. With ``proba_scale="auto"`` (GPUA's default) the fit chooses
the :math:`s` at which GPUA is as confident on its pool as the VLM's zero-shot is there:

.. math::
    \frac1{|S|}\sum_{i \in S} \max_k \mathrm{softmax}(s\, g_i)_k
    = \frac1{|S|}\sum_{i \in S} \max_k \mathrm{softmax}(s_0\, z_i)_k,

with :math:`g_i` the fitted model's class scores of pool row :math:`i` (what
``decision_function`` returns), :math:`z_i` the VLM's zero-shot cosines
:math:`\cos(x_i, y_k)`, :math:`s_0` the ``logit_scale`` (100) and :math:`S` a seeded sample of
at most :data:`PROBA_SCALE_ROWS` pool rows. The left side increases with :math:`s`, so the
equation has one solution; it is read off the mean top probability tabulated on
:data:`SCALE_GRID`. No label enters: the rule puts GPUA's probabilities on the VLM's own
confidence scale, so the two columns of a folder's report read alike. It is not a calibration
against the truth, which no label-free rule can be; the README's "Probabilities" has the
calibration errors it gives on the development sets against the other rules measured.

The tabulated sums add over rows, so a federated fit sums them client by client: each client
sends :func:`confidence_sums` of its own sample, numbers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from ._errors import GPUAError
from .query import zero_shot_cosines

__all__ = [
    "PROBA_SCALE_ROWS", "SCALE_GRID", "ConfidenceSums", "top_probability_sums", "confidence_sums", "matched_scale",
    "estimator_confidence_sums",
]

#: Pool rows the scale is chosen on, at most (a seeded sample beyond: the mean top probability of
#: 2,000 rows has a standard error under 0.01).
PROBA_SCALE_ROWS = 2000
#: The scales the mean top probability is tabulated at: 0.01 to 10,000 (``logit_scale``'s range),
#: 20 per decade (neighbours 12% apart; the solution is interpolated between them).
SCALE_GRID = torch.logspace(-2, 4, 121, dtype=torch.float64)


@dataclass
class ConfidenceSums:
    """Sums over sampled pool rows that :func:`matched_scale` needs; they add over clients.

    Attributes
    ----------
    n_rows : int
    mapped : float64 tensor of shape (len(SCALE_GRID),)
        :math:`\\sum_i \\max_k \\mathrm{softmax}(s\\, g_i)_k` at each grid scale.
    zero_shot : float
        :math:`\\sum_i \\max_k \\mathrm{softmax}(s_0\\, z_i)_k`.
    """

    n_rows: int
    mapped: torch.Tensor
    zero_shot: float

    def __add__(self, other: "ConfidenceSums") -> "ConfidenceSums":
        return ConfidenceSums(self.n_rows + other.n_rows, self.mapped + other.mapped, self.zero_shot + other.zero_shot)


def top_probability_sums(scores: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_i \max_k \mathrm{softmax}(s\, g_i)_k` for each scale :math:`s`.

    The top probability of a row is :math:`1 / \sum_k e^{s (g_{ik} - \max_l g_{il})}`, which needs
    no exponential above 1.

    Parameters
    ----------
    scores : tensor of shape (n_rows, n_classes)
    scales : tensor of shape (n_scales,)

    Returns
    -------
    float64 tensor of shape (n_scales,)

    Examples
    --------
    >>> import torch
    >>> top_probability_sums(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0.0, 1e4])).tolist()
    [1.0, 1.5]
    """
    g = scores.to(torch.float64)
    gaps = g - g.max(1, keepdim=True).values
    return torch.stack([(1.0 / torch.exp(float(s) * gaps).sum(1)).sum() for s in scales])


def confidence_sums(mapped_scores: torch.Tensor, zero_shot_cosines: torch.Tensor, logit_scale: float) -> ConfidenceSums:
    """The sums of one set of sampled rows (one client's, or the whole pool's sample).

    Parameters
    ----------
    mapped_scores : tensor of shape (n_rows, n_classes)
        The fitted model's class scores of the rows.
    zero_shot_cosines : tensor of shape (n_rows, n_classes)
        The VLM's cosines of the same rows with the prototypes.
    logit_scale : float
        The VLM's scale, :math:`s_0`.

    Returns
    -------
    ConfidenceSums
    """
    zero_shot = top_probability_sums(zero_shot_cosines, torch.tensor([float(logit_scale)], dtype=torch.float64))
    return ConfidenceSums(int(mapped_scores.shape[0]), top_probability_sums(mapped_scores, SCALE_GRID), float(zero_shot[0]))


def matched_scale(sums: ConfidenceSums | Iterable[ConfidenceSums]) -> dict:
    """The scale at which the mapped rows' mean top probability equals the zero-shot one.

    Linear interpolation in :math:`\\log s` between the two grid scales around the target; a
    target outside what the grid reaches gives its nearer end (a pool whose scores tie in every
    row reaches only :math:`1/K`).

    Parameters
    ----------
    sums : ConfidenceSums, or several (added: one per client)

    Returns
    -------
    dict
        ``scale`` (float), ``zero_shot_mean_top_probability``, ``rows``.

    Examples
    --------
    >>> import torch
    >>> g = torch.tensor([[0.3, 0.0], [0.0, 0.2]])
    >>> s = matched_scale(confidence_sums(g, g / 10, 100.0))["scale"]
    >>> round(s, 1)
    10.0
    """
    if not isinstance(sums, ConfidenceSums):
        parts = list(sums)
        sums = parts[0]
        for more in parts[1:]:
            sums = sums + more
    mean_top = sums.mapped / sums.n_rows
    target = sums.zero_shot / sums.n_rows
    if not (math.isfinite(target) and bool(torch.isfinite(mean_top).all())):
        raise GPUAError(
            "proba_scale='auto' could not choose a scale: the pool's class scores or zero-shot cosines are not finite; "
            "check the features for NaN or inf, or set proba_scale to a number."
        )
    above = torch.nonzero(mean_top >= target).flatten()
    log_s = SCALE_GRID.log()
    if above.numel() == 0:  # never as confident as the VLM: the grid's top
        value = log_s[-1]
    elif int(above[0]) == 0:  # as confident at the grid's bottom already
        value = log_s[0]
    else:
        i = int(above[0])
        lo, hi = float(mean_top[i - 1]), float(mean_top[i])
        t = (target - lo) / (hi - lo)
        value = log_s[i - 1] + t * (log_s[i] - log_s[i - 1])
    return {"scale": float(torch.exp(torch.as_tensor(value))), "zero_shot_mean_top_probability": float(target), "rows": int(sums.n_rows)}


def estimator_confidence_sums(estimator, vfm_rows, vlm_rows) -> ConfidenceSums:
    """:func:`confidence_sums` of sampled pool rows under a fitted estimator: its own class scores
    (``decision_function``'s, CSLS included) and the VLM's zero-shot cosines at its ``logit_scale``.

    Parameters
    ----------
    estimator : GPUA
        Fitted (every learned attribute but the scale set).
    vfm_rows : tensor of shape (n_rows, d_vfm)
    vlm_rows : tensor of shape (n_rows, d_vlm)

    Returns
    -------
    ConfidenceSums
    """
    with torch.no_grad():
        scores = estimator._scores(vfm_rows, vlm_rows)
        # checked as prediction checks them: rows too large for float32 come back rescaled, not inf
        _, X = estimator._check_query_inputs(None, vlm_rows, needs_vfm=False, needs_vlm=True)
        X = estimator._tensor(X).to(scores.device, scores.dtype)
        zero_shot = zero_shot_cosines(X, estimator.text_prototypes_.to(scores.device, scores.dtype))
    return confidence_sums(scores, zero_shot, float(estimator.logit_scale))
