import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import DistributionCalibrator, fill_to_target, psd_factor, sample_around


def _aniso_cov(rng, d=6):
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = np.array([9.0, 4.0, 1.0, 0.25, 0.04, 0.01])[:d]
    return (Q * lam) @ Q.T, Q, lam


def test_generated_covariance_matches_shape(rng):
    C, Q, lam = _aniso_cov(rng)
    anchor = rng.normal(size=(1, 6))
    gen = sample_around(anchor, psd_factor(C), 40_000, random_state=0)
    np.testing.assert_allclose(gen.mean(0), anchor[0], atol=0.05)
    emp = np.cov((gen - anchor).T.astype(np.float64))
    assert np.linalg.norm(emp - C) / np.linalg.norm(C) < 0.03
    # The largest variance lies along the top eigenvector, with its own eigenvalue (the
    # reference code's ascending-order scaling would put lambda_min there).
    var_top = np.var((gen - anchor) @ Q[:, 0])
    assert var_top == pytest.approx(lam[0], rel=0.05)


def test_top_m_factor_spreads_only_along_m_directions(rng):
    C, Q, lam = _aniso_cov(rng)
    gen = sample_around(np.zeros((1, 6)), psd_factor(C, 2), 2000, random_state=1)
    resid = gen - (gen @ Q[:, :2]) @ Q[:, :2].T
    assert np.abs(resid).max() < 1e-4


def test_anchors_used_in_turn(rng):
    anchors = rng.normal(size=(7, 3)) * 100
    gen = sample_around(anchors, np.eye(3) * 1e-3, 23, random_state=0)
    nearest = np.argmin(((gen[:, None] - anchors[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=7)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_fill_to_target_counts_and_seed(rng):
    X = rng.normal(size=(40, 3))
    y = np.repeat([0, 1, 2], [30, 8, 2])
    factors = [np.eye(3)] * 3
    Xg, yg = fill_to_target(X, y, factors, 30, random_state=5)
    assert np.bincount(np.concatenate([y, yg]), minlength=3).tolist() == [30, 30, 30]
    assert Xg.dtype == np.float32
    Xg2, _ = fill_to_target(X, y, factors, 30, random_state=5)
    Xg3, _ = fill_to_target(X, y, factors, 30, random_state=6)
    np.testing.assert_array_equal(Xg, Xg2)
    assert not np.allclose(Xg, Xg3)
    # per-class targets; classes above target get nothing
    _, yg = fill_to_target(X, y, factors, [10, 10, 5], random_state=0)
    assert np.bincount(yg, minlength=3).tolist() == [0, 2, 3]


def test_fill_with_prototypes_reaches_absent_class(rng):
    X = rng.normal(size=(10, 2))
    y = np.zeros(10, int)
    protos = {1: (np.array([[50.0, 50.0], [-50.0, -50.0]]), np.array([3.0, 1.0]))}
    Xg, yg = fill_to_target(X, y, [np.eye(2) * 0.01, np.eye(2) * 0.01], 10, prototypes=protos, random_state=0)
    assert np.bincount(yg).tolist() == [0, 10]
    assert np.all(np.abs(np.abs(Xg) - 50) < 1)  # all around the prototypes


def test_class_without_factor_is_refused(rng):
    with pytest.raises(GPUAError, match="class 1"):
        fill_to_target(rng.normal(size=(4, 2)), np.array([0, 0, 1, 0]), [np.eye(2), None], 4)


def test_factorised_once_per_class(rng, monkeypatch):
    X = rng.normal(size=(300, 5))
    y = rng.integers(0, 3, 300)
    calls = {"n": 0}
    real_eigh = np.linalg.eigh

    def counting(a, *args, **kw):
        calls["n"] += 1
        return real_eigh(a, *args, **kw)

    monkeypatch.setattr(np.linalg, "eigh", counting)
    cal = DistributionCalibrator(borrow=None, random_state=0).fit(X, y)
    assert calls["n"] == 3  # one factorisation per class, at fit
    cal.sample(X, y, target=5000)  # thousands of samples, no further factorisation
    assert calls["n"] == 3


@pytest.mark.parametrize("random_state", [-1, True, 1.5, "0"], ids=repr)
def test_bad_seed_is_an_error_naming_random_state(random_state):
    # numpy's own error for a negative seed ("expected non-negative integer") names no parameter.
    with pytest.raises(GPUAError, match="random_state="):
        sample_around(np.zeros((1, 2)), np.eye(2), 3, random_state=random_state)


@pytest.mark.parametrize("anchors", [np.zeros(3), np.zeros((0, 3)), np.zeros((1, 1, 3))], ids=["1-D", "no rows", "3-D"])
def test_anchors_of_the_wrong_shape_are_an_error_naming_anchors(anchors):
    # A 1-D anchor made numpy's tuple unpacking fail ("not enough values to unpack"), and an
    # empty one divided by zero, neither naming the argument.
    with pytest.raises(GPUAError, match=r"anchors must be .*\(n_anchors, d\).*reshape\(1, -1\)"):
        sample_around(anchors, np.eye(3), 5, random_state=0)
