r"""The class frequencies of an unlabeled pool, and the pool mean a balanced pool would have.

Two of GPUA's steps assume the pool holds every class about equally: UCM holds the plan's
class masses near a prior (uniform unless ``class_prior`` is given), and ``center`` /
``center_vlm`` subtract the pool's mean row, which a dominant class pulls toward itself, so that
centring removes part of that class's own direction. On a long-tailed folder of photos both cost
accuracy (README, "Imbalanced folders"). ``GPUA(class_prior=...)`` with one of
:data:`PRIOR_ESTIMATES` estimates both from class probabilities of the pool's rows:

* :func:`em_class_prior`: the class frequencies by EM (Saerens, Latinne & Decaestecker, 2002,
  "Adjusting the outputs of a classifier to new a priori probabilities"), the label-shift
  estimate for a classifier whose probabilities assume a uniform prior;
* :func:`balanced_mean`: the mean row with each estimated class weighed the same,

and fits with them. Labels are never used. The probabilities come from

* ``"estimate"``: a first GPUA fit under the uniform prior. Close to right on a balanced pool;
  on a strongly skewed one that fit has already spread the head class over the others, and the
  estimate stays too flat.
* ``"zero_shot"``: the VLM's zero-shot, :math:`\mathrm{softmax}(s \cos(x_i, y_k))` with ``logit_scale``
  :math:`s`, which the pool's composition does not shape (the classifier Saerens et al.'s EM
  assumes). One fit instead of two; but the VLM's own class biases read as imbalance, so on a
  balanced pool the estimate is skewed and the fit loses points: for folders known to be
  strongly long-tailed.
"""

from __future__ import annotations

import torch

__all__ = ["PRIOR_ESTIMATES", "em_class_prior", "prior_responsibilities", "em_prior_update", "balanced_mean", "mean_of_class_means"]

#: The ``class_prior`` strings that estimate the prior from the pool (the probabilities EM starts from:
#: a first fit's under the uniform prior, or the VLM's zero-shot).
PRIOR_ESTIMATES = ("estimate", "zero_shot")


#: EM's cap and tolerance (the largest change of a class's frequency at which it stops).
EM_MAX_ITER, EM_TOL = 1000, 1e-7


def em_class_prior(proba: torch.Tensor, *, max_iter: int = EM_MAX_ITER, tol: float = EM_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Class frequencies of a pool from class probabilities computed under a uniform prior (EM).

    The probabilities :math:`p_{ik}` (softmax of a classifier that assumes every class equally
    likely) are re-weighted by the current estimate :math:`\pi`, and :math:`\pi` becomes the mean
    of the re-weighted rows, until it settles (Saerens et al., 2002):

    .. math::
        r_{ik} = \frac{p_{ik}\,\pi_k}{\sum_l p_{il}\,\pi_l}, \qquad
        \pi_k \leftarrow \max\Big(\frac{1}{N}\sum_i r_{ik},\ \frac{1}{2N}\Big)\ \text{(renormalised)}

    The floor (half a row's mass) keeps every class possible: UCM's prior must be positive.

    Parameters
    ----------
    proba : tensor of shape (n_samples, n_classes)
        Rows summing to one.
    max_iter : int
    tol : float
        Stop when no :math:`\pi_k` moves by more than this.

    Returns
    -------
    prior : float64 tensor of shape (n_classes,)
        Sums to one.
    responsibilities : float64 tensor of shape (n_samples, n_classes)
        :math:`r_{ik}` under ``prior``; rows sum to one.

    Examples
    --------
    >>> import torch
    >>> proba = torch.tensor([[0.8, 0.2]] * 3 + [[0.2, 0.8]])
    >>> [round(v, 2) for v in em_class_prior(proba)[0].tolist()]
    [0.88, 0.12]
    """
    p = proba.to(torch.float64)
    n, k = p.shape
    prior = torch.full((k,), 1.0 / k, dtype=torch.float64, device=p.device)
    for _ in range(max_iter):
        prior, moved = em_prior_update(prior, prior_responsibilities(p, prior).sum(0), n)
        if moved <= tol:
            break
    return prior, prior_responsibilities(p, prior)


def prior_responsibilities(proba: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    r"""The E step of :func:`em_class_prior`: :math:`r_{ik} = p_{ik}\pi_k / \sum_l p_{il}\pi_l`, float64.

    Parameters
    ----------
    proba : tensor of shape (n_samples, n_classes)
    prior : tensor of shape (n_classes,)

    Returns
    -------
    float64 tensor of shape (n_samples, n_classes)
    """
    r = proba.to(torch.float64) * prior.to(device=proba.device, dtype=torch.float64)
    return r / r.sum(1, keepdim=True)


def em_prior_update(prior: torch.Tensor, resp_sum: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    r"""The M step of :func:`em_class_prior` from the responsibilities' column sums (which a pool
    read in chunks, or spread over clients, adds up part by part):
    :math:`\pi_k \leftarrow \max(\sum_i r_{ik} / N,\ 1 / 2N)`, renormalised.

    Returns
    -------
    prior : float64 tensor of shape (n_classes,)
    moved : float
        The largest change of a class's frequency (EM stops when it is below its tolerance).
    """
    new = (resp_sum.to(torch.float64) / n).clamp_min(0.5 / n)
    new = new / new.sum()
    return new, float((new - prior.to(new.device)).abs().max())


def balanced_mean(A: torch.Tensor, responsibilities: torch.Tensor) -> torch.Tensor:
    r"""The mean of the L2-normalised rows of ``A`` with each class weighed the same.

    .. math::
        \mu = \frac{1}{K}\sum_k \frac{\sum_i r_{ik}\,\bar a_i}{\sum_i r_{ik}}, \qquad
        \bar a_i = \frac{a_i}{\lVert a_i \rVert}

    On a balanced pool (:math:`\sum_i r_{ik} = N/K`) it is the pool mean
    (:func:`gpua.query.pool_mean`); on a long-tailed one it is the mean a balanced pool of the
    same classes would have. A class with less than half a row of mass in all is taken to be
    absent and left out of the average (its "mean" would be a few rows' stray weights). Summed in
    float64, returned as float32 (as ``pool_mean``).

    Parameters
    ----------
    A : tensor of shape (n_samples, d)
    responsibilities : tensor of shape (n_samples, n_classes)
        Soft class memberships (:func:`em_class_prior`'s), rows summing to one.

    Returns
    -------
    tensor of shape (d,)

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> r = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    >>> balanced_mean(A, r).tolist()
    [0.5, 0.5]
    """
    An = torch.nn.functional.normalize(A, dim=1).to(torch.float64)
    r = responsibilities.to(device=An.device, dtype=torch.float64)
    return mean_of_class_means(r.T @ An, r.sum(0))


def mean_of_class_means(class_sums: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    r""":func:`balanced_mean` from its sums, :math:`\sum_i r_{ik}\,\bar a_i` and :math:`\sum_i r_{ik}`
    (a pool read in chunks adds them up chunk by chunk): the mean of the classes' means, classes
    with less than half a row of mass left out.

    Parameters
    ----------
    class_sums : tensor of shape (n_classes, d)
    mass : tensor of shape (n_classes,)

    Returns
    -------
    float32 tensor of shape (d,)
    """
    class_sums, mass = class_sums.to(torch.float64), mass.to(torch.float64)
    present = mass >= 0.5
    return (class_sums[present] / mass[present][:, None]).mean(0).float()
