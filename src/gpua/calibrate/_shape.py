r"""The geometric shape of a class distribution: eigenpairs of its covariance.

For a class covariance :math:`\Sigma = \sum_j \lambda_j \xi_j \xi_j^\top` with
:math:`\lambda_1 \ge \lambda_2 \ge \dots \ge 0`, the shape is the top-:math:`m` pairs
:math:`\{(\lambda_j, \xi_j)\}_{j \le m}` together with the trace :math:`\sum_j \lambda_j`.
Two shapes are compared by

.. math::
    S(A, B) = \sum_{j=1}^{m} |\xi_j^A \cdot \xi_j^B| \in [0, m],

the absolute value because an eigenvector's sign is arbitrary (arXiv 2508.13518, eq. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._errors import GPUAError, warn_user
from .._validation import as_float64

__all__ = [
    "CovarianceShape",
    "covariance_shape",
    "shape_similarity",
    "shape_similarity_matrix",
    "oas_shrinkage",
    "oas_factor",
    "psd_factor",
]

PSDPolicy = Literal["clip", "raise"]

# Negative eigenvalues smaller than this fraction of the largest one are rounding, clipped
# silently; larger ones mean the matrix was not a covariance, so the user is told.
_NEG_TOL = 1e-8


@dataclass(frozen=True)
class CovarianceShape:
    r"""Top-:math:`m` eigenpairs of a covariance, with its trace.

    Attributes
    ----------
    eigenvalues : array of shape (m,)
        :math:`\lambda_1 \ge \dots \ge \lambda_m \ge 0` (descending, unlike ``numpy.linalg.eigh``).
    eigenvectors : array of shape (d, m)
        Orthonormal columns :math:`\xi_j`.
    trace : float
        :math:`\operatorname{tr}\Sigma`, the sum of all :math:`d` eigenvalues after negative ones
        are clipped to zero (so :math:`\ge \sum_{j\le m}\lambda_j`).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    trace: float

    @property
    def n_features(self) -> int:
        return int(self.eigenvectors.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.eigenvalues.shape[0])

    def covariance(self) -> np.ndarray:
        r"""The covariance this shape stands for, shape (d, d).

        .. math::
            \hat\Sigma = \sum_{j \le m} \lambda_j \xi_j \xi_j^\top
                + \frac{\operatorname{tr}\Sigma - \sum_{j\le m}\lambda_j}{d - m}
                  \Big(I - \sum_{j\le m} \xi_j \xi_j^\top\Big)

        The isotropic remainder keeps the trace, so a shape-only message still carries the
        total variance (it is zero when :math:`m = d`).
        """
        V, lam = self.eigenvectors, self.eigenvalues
        cov = (V * lam) @ V.T
        d, m = V.shape
        if m < d:
            rest = max(self.trace - float(lam.sum()), 0.0) / (d - m)
            cov += rest * (np.eye(d) - V @ V.T)
        return cov


def _check_square(cov, name: str) -> np.ndarray:
    if hasattr(cov, "detach"):
        cov = cov.detach().cpu().numpy()
    C = np.asarray(cov, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] == 0:
        raise GPUAError(f"{name} must be a square (d, d) matrix but has shape {C.shape}.")
    if not np.all(np.isfinite(C)):
        raise GPUAError(f"{name} contains NaN or inf; recompute it from finite features.")
    scale = max(float(np.abs(C).max()), 1e-300)
    if float(np.abs(C - C.T).max()) > 1e-6 * scale:
        raise GPUAError(f"{name} is not symmetric; a covariance is. Pass (C + C.T) / 2 if it is rounding.")
    return (C + C.T) / 2


def _clipped_eigh(C: np.ndarray, name: str, psd: PSDPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs in descending order with negative eigenvalues clipped to zero (or refused)."""
    if psd not in ("clip", "raise"):
        raise GPUAError(f"psd={psd!r} is not an option; use 'clip' or 'raise'.")
    lam, V = np.linalg.eigh(C)
    lam, V = lam[::-1], V[:, ::-1]  # eigh is ascending; the shape is read from the top
    top = max(float(np.abs(lam).max()), 1e-300)
    if lam[-1] < -_NEG_TOL * top:
        msg = (
            f"{name} is not positive semi-definite (smallest eigenvalue {lam[-1]:.3g}, largest "
            f"{lam[0]:.3g})"
        )
        if psd == "raise":
            raise GPUAError(msg + "; pass psd='clip' to set negative eigenvalues to zero, or recompute it.")
        warn_user(msg + "; negative eigenvalues were clipped to zero.", RuntimeWarning)
    return np.maximum(lam, 0.0), np.ascontiguousarray(V)


def covariance_shape(
    cov, n_components: int | None = None, *, psd: PSDPolicy = "clip", name: str = "covariance"
) -> CovarianceShape:
    r"""Top eigenpairs of a covariance (descending), with negative eigenvalues clipped: its shape.

    .. math::
        \Sigma = \sum_{j=1}^{d} \lambda_j \xi_j \xi_j^\top,\quad
        \lambda_1 \ge \dots \ge \lambda_d,\qquad
        \text{shape} = \big(\{(\max(\lambda_j, 0), \xi_j)\}_{j \le m},\ \textstyle\sum_j \max(\lambda_j, 0)\big)

    Parameters
    ----------
    cov : array of shape (d, d)
        Symmetric covariance.
    n_components : int, optional
        :math:`m`; all :math:`d` when omitted.
    psd : {"clip", "raise"}
        A covariance with a clearly negative eigenvalue (summed from inconsistent parts, or
        edited by hand) is clipped to the nearest PSD matrix with a ``RuntimeWarning``, or refused.
    name : str
        Argument name used in error messages.

    Returns
    -------
    CovarianceShape
    """
    C = _check_square(cov, name)
    d = C.shape[0]
    m = d if n_components is None else int(n_components)
    if not 1 <= m <= d:
        raise GPUAError(f"n_components={n_components} must be between 1 and the feature width {d}.")
    lam, V = _clipped_eigh(C, name, psd)
    return CovarianceShape(eigenvalues=lam[:m].copy(), eigenvectors=V[:, :m].copy(), trace=float(lam.sum()))


def psd_factor(cov, n_components: int | None = None, *, psd: PSDPolicy = "clip", name: str = "covariance") -> np.ndarray:
    r"""The symmetric square root :math:`L = \sum_{j \le m} \sqrt{\lambda_j}\, \xi_j \xi_j^\top`, shape (d, d).

    :math:`L L^\top = \sum_{j \le m} \lambda_j \xi_j \xi_j^\top` is the covariance (exactly when
    :math:`m = d`), so :math:`x + L\varepsilon`, :math:`\varepsilon \sim N(0, I_d)`, has that
    covariance around :math:`x`. Computed once per class and reused for every sample.

    Why not :math:`[\sqrt{\lambda_1}\xi_1, \dots]` (d x m): where eigenvalues repeat (an OAS-shrunk
    covariance of n < d samples has d - n + 1 equal ones), the eigenvectors of that eigenspace are
    any orthonormal basis of it, and LAPACK picks a different one with a different thread count;
    the draws then differ while their distribution does not. :math:`V f(\Lambda) V^\top` is the same
    whatever basis was picked, so the samples are reproducible to rounding (1e-15).

    Parameters
    ----------
    cov : array of shape (d, d)
        Symmetric covariance :math:`\Sigma`.
    n_components : int, optional
        :math:`m`; all :math:`d` when omitted.
    psd, name
        As in :func:`covariance_shape`.

    Returns
    -------
    L : float64 array of shape (d, d)
    """
    shape = covariance_shape(cov, n_components, psd=psd, name=name)
    V = shape.eigenvectors
    return (V * np.sqrt(shape.eigenvalues)) @ V.T


def _as_shape(a, n_components: int, name: str) -> CovarianceShape:
    if isinstance(a, CovarianceShape):
        if a.n_components < n_components:
            raise GPUAError(
                f"{name} holds {a.n_components} eigenpairs but n_components={n_components}; "
                "compute the shape with more components or lower n_components."
            )
        return a
    return covariance_shape(a, n_components, name=name)


def _check_has_shape(shape: CovarianceShape, n_components: int, name: str) -> None:
    """Refuse a covariance with fewer than ``n_components`` directions of variance: the eigenvectors past its
    rank are any basis of the null space (a zero covariance, from one sample or identical ones, has no shape at
    all), and a score from them would be a number without meaning."""
    lam = shape.eigenvalues[:n_components]
    rank = int(np.sum(lam > 1e-12 * max(float(shape.trace), np.finfo(np.float64).tiny)))
    if rank < n_components:
        raise GPUAError(f"{name} has {rank} direction(s) of variance, fewer than n_components={n_components} (a covariance of "
                        "fewer samples than that, or of identical samples), so its shape is not defined there; lower "
                        "n_components, or compare classes with more distinct samples.")


def shape_similarity(a, b, n_components: int = 5) -> float:
    r"""Shape similarity :math:`S(A, B) = \sum_{j \le m} |\xi_j^A \cdot \xi_j^B|`, in :math:`[0, m]`.

    Parameters
    ----------
    a, b : CovarianceShape or array of shape (d, d)
        Two shapes, or two covariances.
    n_components : int
        :math:`m` (about 5 in the paper: the leading directions carry the transferable shape;
        lower ones are mostly noise).

    Notes
    -----
    Eigenvectors of (nearly) equal eigenvalues can rotate freely within their eigenspace, so
    :math:`S` is unstable where :math:`\lambda_j \approx \lambda_{j+1}`; the score compares
    orderings as well as directions.
    """
    A = _as_shape(a, n_components, "a")
    B = _as_shape(b, n_components, "b")
    if A.n_features != B.n_features:
        raise GPUAError(f"a has width {A.n_features} but b has width {B.n_features}; compare shapes of one feature space.")
    for name, shape in (("a", A), ("b", B)):
        _check_has_shape(shape, n_components, name)
    dots = np.einsum("dj,dj->j", A.eigenvectors[:, :n_components], B.eigenvectors[:, :n_components])
    # |cos| <= 1 for unit vectors; rounding can exceed it by an ulp, and S then exceeds m.
    return float(np.minimum(np.abs(dots), 1.0).sum())


def shape_similarity_matrix(covariances, n_components: int = 5) -> np.ndarray:
    """Pairwise :func:`shape_similarity` of ``K`` covariances (K, d, d) -> (K, K)."""
    covs = np.asarray(covariances, dtype=np.float64)
    if covs.ndim != 3:
        raise GPUAError(f"covariances must have shape (K, d, d) but has shape {covs.shape}.")
    shapes = [covariance_shape(c, n_components, name=f"covariances[{i}]") for i, c in enumerate(covs)]
    for i, shape in enumerate(shapes):
        _check_has_shape(shape, n_components, f"covariances[{i}]")
    V = np.stack([shape.eigenvectors for shape in shapes])
    return np.minimum(np.abs(np.einsum("adj,bdj->abj", V, V)), 1.0).sum(axis=-1)  # in [0, m], as shape_similarity


def oas_shrinkage(cov, n_samples: int) -> tuple[np.ndarray, float]:
    r"""Oracle Approximating Shrinkage (Chen, Wiesel, Eldar & Hero 2010) of a sample covariance.

    .. math::
        \hat\Sigma = (1 - \rho) S + \rho \frac{\operatorname{tr} S}{d} I,\qquad
        \rho = \min\!\left(1, \frac{\overline{S^2} + \mu^2}{(n + 1)(\overline{S^2} - \mu^2 / d)}\right)

    with :math:`\mu = \operatorname{tr} S / d` and :math:`\overline{S^2}` the mean squared entry,
    the form scikit-learn's ``oas`` uses (eq. 23 of the paper without its :math:`2/d` terms);
    :math:`\rho = 1` when the denominator is not positive, and :math:`\rho = 0` when :math:`d = 1`.

    Why OAS and not Ledoit-Wolf: LW's optimal intensity needs fourth moments of the samples,
    OAS needs only :math:`S` and :math:`n`, exactly what federated clients share; and under
    a Gaussian model it has lower error than LW when :math:`n < d`, the tail-class case.

    Parameters
    ----------
    cov : array of shape (d, d)
        Population (``ddof=0``) sample covariance :math:`S`.
    n_samples : int
        Number of samples :math:`n` behind it.

    Returns
    -------
    shrunk : array of shape (d, d)
    rho : float
        Shrinkage intensity in [0, 1].
    """
    S = _check_square(cov, "cov")
    if not (isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, (bool, np.bool_)) and n_samples >= 1):
        raise GPUAError(f"n_samples={n_samples!r} must be an integer >= 1: the number of samples behind the covariance.")
    d = S.shape[0]
    if d == 1:
        return S.copy(), 0.0
    alpha = float(np.mean(S**2))
    mu = float(np.trace(S)) / d
    num = alpha + mu**2
    den = (n_samples + 1) * (alpha - mu**2 / d)
    rho = 1.0 if den <= 0 else min(num / den, 1.0)
    shrunk = (1.0 - rho) * S
    shrunk.flat[:: d + 1] += rho * mu
    return shrunk, rho


def oas_factor(X: np.ndarray) -> tuple[np.ndarray, float]:
    r"""A factor of the OAS-shrunk covariance of the rows ``X``, without an eigendecomposition.

    With :math:`D` the centred rows, :math:`S = D^\top D / n`, :math:`\mu = \operatorname{tr} S / d`
    and :math:`\rho` the OAS intensity (:func:`oas_shrinkage`),

    .. math::
        \hat\Sigma = (1 - \rho) S + \rho \mu I = L L^\top,\qquad
        L = \Big[\sqrt{(1 - \rho)/n}\, D^\top,\ \sqrt{\rho \mu}\, I_d\Big].

    :func:`gpua.calibrate.sample_around` takes any :math:`L` with :math:`L L^\top = \hat\Sigma`, so
    this draws from the same Gaussian as :func:`gpua.calibrate.psd_factor` of the shrunk
    covariance; it avoids that factor's :math:`O(d^3)` eigendecomposition (5 to 10 s per class at
    the fused query's :math:`d = 1664` on a 2-core machine, against 0.2 s here).

    Parameters
    ----------
    X : array of shape (n, d)
        Rows of one class, :math:`n \ge 2`.

    Returns
    -------
    L : float64 array of shape (d, n + d)
    rho : float
        The shrinkage intensity :math:`\rho \in [0, 1]`.
    """
    D = as_float64(X, "X")  # finite, 2-D, kept in float64
    n, d = D.shape
    if n < 2:
        raise GPUAError(f"X has {n} row(s); a covariance needs at least 2 rows of the class.")
    D = D - D.mean(0)
    S = D.T @ D / n  # the population covariance, as ClassStatistics.covariance_
    _, rho = oas_shrinkage(S, n)
    mu = float(np.trace(S)) / d
    return np.hstack([math.sqrt((1.0 - rho) / n) * D.T, math.sqrt(rho * mu) * np.eye(d)]), float(rho)
