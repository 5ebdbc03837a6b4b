import numpy as np
import pytest

from gpua._errors import GPUAError, NotFittedError
from gpua.calibrate import (
    ClassStatistics,
    DistributionCalibrator,
    FederatedCalibration,
    client_statistics,
    dirichlet_split,
    domain_split,
    fedavg,
)


def test_dirichlet_split_partitions_and_skews():
    y = np.repeat(np.arange(10), 100)
    for alpha in (0.1, 100.0):
        parts = dirichlet_split(y, 10, alpha, random_state=0)
        allidx = np.concatenate(parts)
        assert np.array_equal(np.sort(allidx), np.arange(1000))  # disjoint and complete
        assert min(p.size for p in parts) >= 2
    skew = lambda parts: np.mean([np.bincount(y[p], minlength=10).max() / p.size for p in parts])  # noqa: E731
    assert skew(dirichlet_split(y, 10, 0.1, random_state=0)) > 0.5
    assert skew(dirichlet_split(y, 10, 100.0, random_state=0)) < 0.3
    a = dirichlet_split(y, 10, 0.5, random_state=3)
    b = dirichlet_split(y, 10, 0.5, random_state=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_domain_splits():
    y = np.tile(np.arange(5), 80)
    dom = np.repeat(np.arange(4), 100)
    parts = domain_split(dom, 8, random_state=0)
    for c, p in enumerate(parts):
        assert np.all(dom[p] == c % 4)
    mixed = dirichlet_split(y, 8, 0.3, domains=dom, random_state=0)
    assert all(np.unique(dom[p]).size == 1 for p in mixed)
    with pytest.raises(GPUAError, match="n_clients=2 is fewer than the 4 domains"):
        dirichlet_split(y, 2, 0.3, domains=dom)
    with pytest.raises(GPUAError, match="min_size"):
        dirichlet_split(np.arange(5) % 2, 5, 0.1, min_size=3, max_tries=5)


def _federation(gaussians, alpha=0.3, share="covariance"):
    X, y = gaussians["X"], gaussians["y"]
    split = dirichlet_split(y, 5, alpha, random_state=1)
    msgs = [client_statistics(X[i], y[i], 10, share=share, n_components=3) for i in split]
    return X, y, split, msgs


def test_server_merge_is_exact(gaussians):
    X, y, split, msgs = _federation(gaussians)
    server = FederatedCalibration(10).fit(msgs)
    pooled = ClassStatistics(10).fit(X, y)
    np.testing.assert_allclose(server.statistics_.covariance_, pooled.covariance_, atol=1e-8)
    assert server.client_counts_.shape == (5, 10) and server.client_counts_.sum() == len(y)


def test_shape_only_messages(gaussians):
    X, y, split, msgs = _federation(gaussians, share="shape")
    c = msgs[0].covariance_
    full = ClassStatistics(10).fit(X[split[0]], y[split[0]]).covariance_
    np.testing.assert_allclose(np.trace(c, axis1=1, axis2=2), np.trace(full, axis1=1, axis2=2), rtol=1e-10)
    server = FederatedCalibration(10).fit(msgs)
    assert server.calibrator_.covariances_.shape == (10, 16, 16)
    with pytest.raises(GPUAError, match="share="):
        client_statistics(X, y, 10, share="mean")


def test_client_augmentation_modes(gaussians):
    X, y, split, msgs = _federation(gaussians, alpha=0.1)
    server = FederatedCalibration(10, calibrator=DistributionCalibrator(borrow=None, random_state=0)).fit(msgs)
    i = split[0]
    local = np.bincount(y[i], minlength=10)
    _, yg = server.augment(0, X[i], y[i], target=int(local.max()), anchors="local")
    filled = local + np.bincount(yg, minlength=10)
    assert np.all(filled[local > 0] == local.max()) and np.all(filled[local == 0] == 0)
    _, yg = server.augment(0, X[i], y[i], target=50, anchors="prototypes")
    filled = local + np.bincount(yg, minlength=10)
    assert np.all(filled >= 50)  # classes the client never saw are generated around prototypes
    with pytest.raises(GPUAError, match="anchors="):
        server.augment(0, X[i], y[i], anchors="global")
    with pytest.raises(GPUAError, match="client=7"):
        server.augment(7, X[i], y[i])


def test_clients_share_nothing_about_a_class(gaussians):
    X, y = gaussians["X"], gaussians["y"]
    keep = y != 4
    msgs = [client_statistics(X[keep][p::2], y[keep][p::2], 10) for p in range(2)]
    with pytest.raises(GPUAError, match=r"no client shared anything about class\(es\) \[4\]"):
        FederatedCalibration(10).fit(msgs)
    server = FederatedCalibration(10, missing="skip").fit(msgs)
    assert server.calibrator_.factors_[4] is None


def test_mismatched_clients(gaussians, rng):
    X, y = gaussians["X"], gaussians["y"]
    a = client_statistics(X[:500], y[:500], 10)
    b = client_statistics(rng.normal(size=(50, 8)), rng.integers(0, 10, 50), 10)
    with pytest.raises(GPUAError, match="different feature widths"):
        FederatedCalibration(10).fit([a, b])
    with pytest.raises(GPUAError, match="expects n_classes=5"):
        FederatedCalibration(5).fit([a])
    with pytest.raises(GPUAError, match="ClassStatistics"):
        FederatedCalibration(10).fit([a, (X, y)])
    with pytest.raises(NotFittedError):
        FederatedCalibration(10).augment(0, X, y)


def test_fedavg_learns_and_checks(gaussians):
    X, y = gaussians["X"], gaussians["y"]
    split = dirichlet_split(y, 4, 10.0, random_state=0)
    model = fedavg([(X[i], y[i]) for i in split], 10, rounds=5, random_state=0)
    assert model.score(gaussians["X_test"], gaussians["y_test"]) > 0.8
    with pytest.raises(GPUAError, match="widths"):
        fedavg([(X[:10], y[:10]), (X[:10, :3], y[:10])], 10, rounds=1)
    with pytest.raises(GPUAError, match="no samples"):
        fedavg([(X[:0], y[:0])], 10)
