import warnings

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import covariance_shape, oas_shrinkage, psd_factor, shape_similarity, shape_similarity_matrix


def _random_cov(rng, d, decay=1.0):
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = np.arange(1, d + 1) ** -decay
    return (Q * lam) @ Q.T, Q, lam


def test_shape_is_descending_and_complete(rng):
    C, Q, lam = _random_cov(rng, 8)
    s = covariance_shape(C)
    np.testing.assert_allclose(s.eigenvalues, lam, rtol=1e-10)
    assert np.all(np.diff(s.eigenvalues) <= 0)
    assert s.trace == pytest.approx(lam.sum())
    np.testing.assert_allclose(s.covariance(), C, atol=1e-12)
    top = covariance_shape(C, 3)
    assert top.n_components == 3 and top.trace == pytest.approx(lam.sum())
    assert np.trace(top.covariance()) == pytest.approx(lam.sum())  # isotropic remainder keeps the trace


def test_non_psd_is_clipped_or_refused(rng):
    C, _, _ = _random_cov(rng, 5)
    bad = C - 0.5 * np.eye(5)  # smallest eigenvalues become negative
    with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
        s = covariance_shape(bad)
    assert s.eigenvalues.min() == 0.0
    with pytest.raises(GPUAError, match="psd='clip'"):
        covariance_shape(bad, psd="raise")
    with pytest.warns(RuntimeWarning):
        L = psd_factor(bad)
    w, V = np.linalg.eigh(bad)
    np.testing.assert_allclose(L @ L.T, (V * np.maximum(w, 0)) @ V.T, atol=1e-12)


def test_rounding_negatives_are_silent():
    low_rank = np.outer(np.ones(5), np.ones(5))  # eigenvalues 5, 0, 0, 0, 0 (rounding may dip below 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = covariance_shape(low_rank)
    assert s.eigenvalues.min() >= 0


def test_bad_covariances():
    with pytest.raises(GPUAError, match="square"):
        covariance_shape(np.zeros((2, 3)))
    with pytest.raises(GPUAError, match="not symmetric"):
        covariance_shape(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(GPUAError, match="NaN"):
        covariance_shape(np.array([[np.nan, 0], [0, 1.0]]))
    with pytest.raises(GPUAError, match="n_components"):
        covariance_shape(np.eye(3), 4)


def test_shape_similarity(rng):
    C, Q, lam = _random_cov(rng, 10)
    assert shape_similarity(C, C) == pytest.approx(5.0)
    flipped = covariance_shape(C)
    flipped = type(flipped)(flipped.eigenvalues, -flipped.eigenvectors, flipped.trace)
    assert shape_similarity(flipped, C) == pytest.approx(5.0)  # eigenvector signs do not matter
    # The same eigenvalues on another, orthogonal set of axes: the top 5 directions share nothing.
    P = np.roll(np.eye(10), 5, axis=1)
    other = (Q @ P * lam) @ (Q @ P).T
    assert shape_similarity(C, other) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(GPUAError, match="width"):
        shape_similarity(C, np.eye(6))
    with pytest.raises(GPUAError, match="n_components"):
        shape_similarity(covariance_shape(C, 2), C, n_components=5)


def test_shape_similarity_matrix(rng):
    covs = np.stack([_random_cov(rng, 6)[0] for _ in range(3)])
    S = shape_similarity_matrix(covs, 3)
    np.testing.assert_allclose(S, S.T)
    np.testing.assert_allclose(np.diag(S), 3.0)
    assert S[0, 1] == pytest.approx(shape_similarity(covs[0], covs[1], 3))


def test_oas_matches_scikit_learn(rng):
    sk = pytest.importorskip("sklearn.covariance")
    for n, d in ((5, 20), (50, 20), (500, 8)):
        X = rng.normal(size=(n, d)) * np.linspace(0.2, 3, d)
        S = np.cov(X.T, ddof=0)
        ours, rho = oas_shrinkage(S, n)
        ref, ref_rho = sk.oas(X)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
        assert rho == pytest.approx(ref_rho)
    assert oas_shrinkage(np.zeros((3, 3)), 1)[1] == 1.0
    with pytest.raises(GPUAError, match="n_samples"):
        oas_shrinkage(np.eye(2), 0)


def test_shrinkage_makes_small_sample_covariance_full_rank(rng):
    X = rng.normal(size=(4, 10))
    S = np.cov(X.T, ddof=0)
    assert np.linalg.matrix_rank(S) < 10
    shrunk, rho = oas_shrinkage(S, 4)
    assert 0 < rho <= 1 and np.linalg.eigvalsh(shrunk).min() > 0


def test_psd_factor_does_not_depend_on_the_eigenbasis(rng):
    """An OAS-shrunk covariance of few samples has many equal eigenvalues, whose eigenvectors LAPACK picks
    differently with another thread count: the factor must not depend on that pick (the calibration
    table did not reproduce)."""
    from scipy.linalg import sqrtm

    X = rng.normal(size=(4, 12))
    S = np.cov(X.T)
    C = 0.6 * S + 0.4 * np.trace(S) / 12 * np.eye(12)  # 9 equal eigenvalues
    L = psd_factor(C)
    np.testing.assert_allclose(L, L.T, atol=1e-12)
    np.testing.assert_allclose(L @ L.T, C, atol=1e-10)
    np.testing.assert_allclose(L, np.real(sqrtm(C)), atol=1e-8)  # unique, whatever basis eigh returned
    # the same covariance written through a rotated basis of its repeated eigenspace gives the same factor
    w, V = np.linalg.eigh(C)
    R, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    V2 = V.copy()
    V2[:, :9] = V[:, :9] @ R
    np.testing.assert_allclose(psd_factor((V2 * w) @ V2.T), L, atol=1e-10)
