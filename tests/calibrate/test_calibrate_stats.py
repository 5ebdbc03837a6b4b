import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpua._errors import GPUAError, NotFittedError
from gpua.calibrate import ClassStatistics, merge_statistics


def _pooled_cov(X, y, k):
    Xk = X[y == k].astype(np.float64)
    return np.cov(Xk.T, ddof=0) if len(Xk) > 1 else np.zeros((X.shape[1], X.shape[1]))


def test_merge_equals_pooled(rng):
    X = rng.normal(size=(600, 7)) * rng.uniform(0.5, 3, 7) + rng.normal(size=7) * 5
    y = rng.integers(0, 4, 600)
    y[y == 3] = np.where(np.arange((y == 3).sum()) % 2, 3, 2)  # keep class 3 rarer
    parts = np.array_split(rng.permutation(600), 5)
    # one part without class 0, one very small part
    parts[1] = parts[1][y[parts[1]] != 0]
    parts[4] = parts[4][:3]
    used = np.concatenate(parts)
    merged = merge_statistics([ClassStatistics(4).fit(X[p], y[p]) for p in parts])
    pooled = ClassStatistics(4).fit(X[used], y[used])
    np.testing.assert_array_equal(merged.count_, pooled.count_)
    np.testing.assert_allclose(merged.mean_, pooled.mean_, atol=1e-10)
    np.testing.assert_allclose(merged.covariance_, pooled.covariance_, atol=1e-8)
    for k in range(4):
        np.testing.assert_allclose(pooled.covariance_[k], _pooled_cov(X[used], y[used], k), atol=1e-8)


def test_law_of_total_covariance_formula(rng):
    """Sigma = sum n_i Sigma_i / n + sum n_i (mu_i - mu)(mu_i - mu)^T / n, written out."""
    parts = [rng.normal(size=(n, 3)) + shift for n, shift in ((50, 0.0), (20, 3.0), (7, -2.0))]
    n = np.array([len(p) for p in parts])
    mus = np.array([p.mean(0) for p in parts])
    sig = np.array([np.cov(p.T, ddof=0) for p in parts])
    mu = n @ mus / n.sum()
    expect = np.einsum("i,ijk->jk", n, sig) / n.sum() + np.einsum("i,ij,ik->jk", n, mus - mu, mus - mu) / n.sum()
    stats = [ClassStatistics(1).fit(p, np.zeros(len(p), int)) for p in parts]
    np.testing.assert_allclose(merge_statistics(stats).covariance_[0], expect, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 5))
def test_merge_any_split_property(seed, n_parts, d):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(n_parts, 80))
    X = rng.normal(size=(n, d)) * 10 + 100
    y = rng.integers(0, 3, n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_parts - 1, n - 1), replace=False)) if n > 1 else []
    parts = np.split(np.arange(n), cuts)
    merged = merge_statistics([ClassStatistics(3).fit(X[p], y[p]) for p in parts])
    pooled = ClassStatistics(3).fit(X, y)
    np.testing.assert_allclose(merged.covariance_, pooled.covariance_, atol=1e-8)
    np.testing.assert_allclose(merged.mean_, pooled.mean_, atol=1e-9)


def test_streaming_equals_fit_and_keeps_precision(rng):
    # A large common offset: a running sum of x x^T would lose most digits here.
    X = 1e6 + rng.normal(size=(2000, 4))
    y = rng.integers(0, 2, 2000)
    s = ClassStatistics()
    for start in range(0, 2000, 37):
        s.partial_fit(X[start : start + 37], y[start : start + 37])
    full = ClassStatistics().fit(X, y)
    np.testing.assert_allclose(s.covariance_, full.covariance_, atol=1e-8)
    np.testing.assert_allclose(s.covariance_[1], np.cov(X[y == 1].T, ddof=0), rtol=1e-8, atol=1e-9)
    assert s.mean_.dtype == np.float64


def test_classes_grow_and_pad(rng):
    s = ClassStatistics().partial_fit(rng.normal(size=(5, 2)), [0, 1, 0, 1, 1])
    s.partial_fit(rng.normal(size=(3, 2)), [3, 3, 0])
    assert s.n_classes_ == 4 and s.count_.tolist() == [3, 3, 0, 2]
    assert np.all(s.covariance_[2] == 0)


def test_covariance_ddof(rng):
    X = rng.normal(size=(10, 3))
    s = ClassStatistics(1).fit(X, np.zeros(10, int))
    np.testing.assert_allclose(s.covariance(ddof=1)[0], np.cov(X.T))


def test_mismatched_dimensions_between_parts(rng):
    a = ClassStatistics(2).fit(rng.normal(size=(10, 3)), rng.integers(0, 2, 10))
    b = ClassStatistics(2).fit(rng.normal(size=(10, 4)), rng.integers(0, 2, 10))
    with pytest.raises(GPUAError, match="different feature widths"):
        merge_statistics([a, b])
    with pytest.raises(GPUAError, match="4 features but earlier batches had 3"):
        a.partial_fit(rng.normal(size=(5, 4)), np.zeros(5, int))


def test_bad_input_messages(rng):
    with pytest.raises(GPUAError, match="y"):
        ClassStatistics(2).fit(rng.normal(size=(5, 3)), [0, 1, 2, 0, 1])  # label out of range
    with pytest.raises(GPUAError, match="NaN"):
        ClassStatistics().fit(np.array([[1.0, np.nan]]), [0])
    with pytest.raises(GPUAError, match="integer class indices"):
        ClassStatistics().fit(rng.normal(size=(2, 3)), [0.0, np.nan])
    with pytest.raises(GPUAError, match="integer class indices"):
        ClassStatistics().fit(rng.normal(size=(2, 3)), ["cat", "dog"])
    with pytest.raises(GPUAError, match="parts is empty"):
        merge_statistics([])
    with pytest.raises(NotFittedError):
        ClassStatistics().covariance_
    with pytest.raises(GPUAError, match="not symmetric"):
        ClassStatistics.from_moments([3], np.zeros((1, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(GPUAError, match="covariance has shape"):
        ClassStatistics.from_moments([3, 4], np.zeros((2, 2)), np.zeros((2, 3, 3)))


def test_from_moments_roundtrip_and_affine(rng):
    X = rng.normal(size=(100, 3))
    y = rng.integers(0, 2, 100)
    s = ClassStatistics(2).fit(X, y)
    r = ClassStatistics.from_moments(s.count_, s.mean_, s.covariance_)
    np.testing.assert_allclose(r.scatter_, s.scatter_)
    mu, scale = np.array([1.0, -2.0, 0.5]), 3.0
    np.testing.assert_allclose(s.affine(mu, scale).covariance_, ClassStatistics(2).fit((X - mu) / scale, y).covariance_, atol=1e-12)


def test_compress_keeps_trace(rng):
    X = rng.normal(size=(200, 6)) * np.arange(1, 7)
    s = ClassStatistics(1).fit(X, np.zeros(200, int))
    c = s.compress(2)
    assert np.trace(c.covariance_[0]) == pytest.approx(np.trace(s.covariance_[0]))
    np.testing.assert_allclose(s.compress(6).covariance_, s.covariance_, atol=1e-10)
