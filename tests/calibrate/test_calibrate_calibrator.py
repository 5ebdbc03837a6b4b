import warnings

import numpy as np
import pytest

from gpua._errors import GPUAError, NotFittedError
from gpua.calibrate import ClassStatistics, DistributionCalibrator, longtail_indices, oas_shrinkage


def test_fit_resample_balances_and_is_seeded(gaussians):
    idx = longtail_indices(gaussians["y"], 20, random_state=0)
    X, y = gaussians["X"][idx], gaussians["y"][idx]
    Xa, ya = DistributionCalibrator(random_state=3).fit_resample(X, y)
    counts = np.bincount(ya)
    assert np.all(counts == counts.max()) and counts.max() == np.bincount(y).max()
    np.testing.assert_array_equal(Xa[: len(X)], X)  # real samples first, unchanged
    Xb, _ = DistributionCalibrator(random_state=3).fit_resample(X, y)
    np.testing.assert_array_equal(Xa, Xb)
    Xc, yc = DistributionCalibrator(target=250, random_state=3).fit_resample(X, y)
    assert np.all(np.bincount(yc) == 250)


def test_single_sample_class_borrow_or_refuse(rng):
    X = np.concatenate([rng.normal(size=(50, 4)), rng.normal(size=(40, 4)) + 5, [[0.1, 0.1, 0.1, 0.1]]])
    y = np.repeat([0, 1, 2], [50, 40, 1])
    with pytest.raises(GPUAError, match="single_sample='borrow'"):
        DistributionCalibrator(single_sample="raise").fit(X, y)
    for borrow in ("mean", None):
        cal = DistributionCalibrator(borrow=borrow).fit(X, y)
        assert cal.donors_[2].size > 0 and cal.donors_[2][0] == 0  # nearer class 0 than class 1
        assert np.linalg.eigvalsh(cal.covariances_[2]).min() > 0
        Xg, yg = cal.sample(X, y)
        assert np.bincount(yg, minlength=3)[2] == 49
    # with borrow=None only the single-sample class borrows
    cal = DistributionCalibrator(borrow=None).fit(X, y)
    assert cal.donors_[1].size == 0
    np.testing.assert_allclose(cal.covariances_[1], oas_shrinkage(np.cov(X[y == 1].T, ddof=0), 40)[0])


def test_single_sample_class_with_zero_borrow_strength_is_refused(rng):
    # nu = 0 gave the one sample's zero covariance all the weight: every generated sample was the mean
    X = np.concatenate([rng.normal(size=(30, 4)), [[0.1, 0.1, 0.1, 0.1]]])
    y = np.repeat([0, 1], [30, 1])
    with pytest.raises(GPUAError, match=r"borrow_strength=0 .*class\(es\) \[1\].*borrow_strength='auto'"):
        DistributionCalibrator(borrow_strength=0).fit(X, y)
    cal = DistributionCalibrator(borrow_strength=0.5).fit(X, y)  # any weight for the borrowed covariance spreads it
    assert np.linalg.eigvalsh(cal.covariances_[1]).min() > 0
    cal = DistributionCalibrator(borrow_strength=0).fit(X[:30], np.repeat([0, 1], 15))  # no single-sample class: allowed
    assert np.all(cal.own_weight_ == 1.0)


def test_single_sample_with_nobody_to_borrow_from():
    with pytest.raises(GPUAError, match="no class has two or more"):
        DistributionCalibrator().fit(np.eye(3), [0, 1, 2])


def test_missing_class(rng):
    X, y = rng.normal(size=(20, 3)), np.repeat([0, 2], 10)
    with pytest.raises(GPUAError, match=r"\[1\] have no samples"):
        DistributionCalibrator().fit(X, y, n_classes=3)
    cal = DistributionCalibrator().fit_statistics(ClassStatistics(3).fit(X, y), missing="skip")
    assert cal.factors_[1] is None
    assert np.bincount(cal.sample(X, y, target=15)[1], minlength=3).tolist() == [5, 0, 5]


def test_borrowing_recovers_tail_covariance(gaussians):
    """On classes that share a shape, classes with fewer samples than dimensions are estimated
    better with donors than by their own shrunk covariance."""
    idx = longtail_indices(gaussians["y"], 40, random_state=0)
    X, y = gaussians["X"][idx], gaussians["y"][idx]
    truth = gaussians["covariances"]
    tail = np.nonzero(np.bincount(y) < X.shape[1])[0]
    assert tail.size >= 3 and np.bincount(y)[9] == 5
    err = {}
    for borrow in (None, "mean"):
        cal = DistributionCalibrator(borrow=borrow).fit(X, y)
        err[borrow] = np.mean([np.linalg.norm(cal.covariances_[k] - truth[k]) / np.linalg.norm(truth[k]) for k in tail])
    assert err["mean"] < 0.85 * err[None]
    cal = DistributionCalibrator(borrow="mean").fit(X, y)
    assert cal.own_weight_[0] == 1 and cal.donors_[0].size == 0  # the head has no donor
    assert cal.own_weight_[9] == pytest.approx(5 / (5 + 16))
    np.testing.assert_allclose(cal.donor_weights_[9].sum(), 1.0)
    assert np.all(np.bincount(y)[cal.donors_[9]] > 5)


def test_borrow_by_text(rng):
    X = np.concatenate([rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) * 3, rng.normal(size=(2, 3))])
    y = np.repeat([0, 1, 2], [30, 30, 2])
    emb = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.1, 1.0, 0]])  # class 2 "reads like" class 1
    cal = DistributionCalibrator(borrow="text", n_donors=1).fit(X, y, class_embeddings=emb)
    assert cal.donors_[2].tolist() == [1]
    with pytest.raises(GPUAError, match="class_embeddings"):
        DistributionCalibrator(borrow="text").fit(X, y)
    with pytest.raises(GPUAError, match="class_embeddings has 2 rows"):
        DistributionCalibrator(borrow="text").fit(X, y, class_embeddings=emb[:2])


def test_non_psd_statistics_clip_or_raise(rng):
    cov = np.stack([np.eye(3), np.diag([1.0, 1.0, -0.5])])
    stats = ClassStatistics.from_moments([100, 100], rng.normal(size=(2, 3)), cov)
    with pytest.warns(RuntimeWarning, match="clipped"):
        cal = DistributionCalibrator(borrow=None, shrinkage=None).fit_statistics(stats)
    L = cal.factors_[1]
    np.testing.assert_allclose(L @ L.T, np.diag([1.0, 1.0, 0.0]), atol=1e-12)
    with pytest.raises(GPUAError, match="class 1 is not positive semi-definite"):
        DistributionCalibrator(borrow=None, shrinkage=None, psd="raise").fit_statistics(stats)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"borrow": "shape"}, "borrow="),
        ({"shrinkage": "lw"}, "shrinkage="),
        ({"single_sample": "skip"}, "single_sample="),
        ({"n_donors": 0}, "n_donors="),
        ({"target": 0}, "target="),
        ({"scale": -1.0}, "scale="),
        ({"borrow_strength": -1.0}, "borrow_strength="),
    ],
)
def test_bad_parameters(kw, match, rng):
    with pytest.raises(GPUAError, match=match):
        DistributionCalibrator(**kw).fit(rng.normal(size=(10, 2)), np.repeat([0, 1], 5))


def test_not_fitted_and_width(rng):
    with pytest.raises(NotFittedError):
        DistributionCalibrator().sample(np.zeros((2, 2)), [0, 1])
    cal = DistributionCalibrator().fit(rng.normal(size=(10, 2)), np.repeat([0, 1], 5))
    with pytest.raises(GPUAError, match="width 3"):
        cal.sample(rng.normal(size=(4, 3)), [0, 1, 0, 1])


@pytest.mark.parametrize("scale", [np.inf, np.nan])
def test_non_finite_scale_is_refused(scale, rng):
    X, y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], [15, 10, 5])
    with pytest.raises(GPUAError, match="scale="):
        DistributionCalibrator(scale=scale).fit_resample(X, y)


def test_overflowing_generation_is_an_error_naming_scale(rng):
    # A finite scale whose samples overflow float32 used to return inf rows (and a numpy warning).
    X, y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], [15, 10, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(GPUAError, match=r"scale=1e\+200"):
            DistributionCalibrator(scale=1e200, random_state=0).fit_resample(X, y)


@pytest.mark.parametrize(
    "kw",
    [
        {"target": True},  # a bool is not a count
        {"target": 20.5},
        {"n_components": 2.5},
        {"n_donors": True},
        {"random_state": -1},
        {"random_state": 1.5},
    ],
    ids=str,
)
def test_integer_parameters_refuse_bools_and_fractions(kw, rng):
    (name,) = kw
    X, y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], [15, 10, 5])
    with pytest.raises(GPUAError, match=f"{name}="):
        DistributionCalibrator(**kw).fit_resample(X, y)


def test_sample_checks_its_overrides(rng):
    X, y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], [15, 10, 5])
    cal = DistributionCalibrator(random_state=0).fit(X, y)
    with pytest.raises(GPUAError, match="target="):
        cal.sample(X, y, target=True)
    with pytest.raises(GPUAError, match="random_state="):
        cal.sample(X, y, random_state=-1)


def test_calibrator_parameter_contract(rng):
    cal = DistributionCalibrator(scale=2.0, random_state=0)
    assert cal.get_params()["scale"] == 2.0 and repr(cal) == "DistributionCalibrator(random_state=0, scale=2.0)"
    assert cal.set_params(scale=0.5).scale == 0.5
    with pytest.raises(GPUAError, match="did you mean 'scale'"):
        cal.set_params(scal=1.0)
    base = pytest.importorskip("sklearn.base")
    X, y = rng.normal(size=(30, 3)), np.repeat([0, 1, 2], [15, 10, 5])
    twin = base.clone(cal)
    assert twin is not cal and twin.get_params() == cal.get_params()
    np.testing.assert_array_equal(twin.fit_resample(X, y)[0], cal.fit_resample(X, y)[0])
