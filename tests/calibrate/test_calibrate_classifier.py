import numpy as np
import pytest

from gpua._errors import GPUAError, NotFittedError
from gpua.calibrate import ClassStatistics, LinearClassifier, ShrinkageLDA, balanced_sample_weight, merge_statistics


def _blobs(rng, n=(60, 60, 60), d=5, sep=3.0):
    means = rng.normal(size=(len(n), d)) * sep
    X = np.concatenate([rng.normal(size=(m, d)) + means[k] for k, m in enumerate(n)]).astype(np.float32)
    y = np.repeat(np.arange(len(n)), n)
    return X, y


def _objective(model, X, y, gamma):
    s = X @ model.coef_.T + model.intercept_
    s = s - s.max(1, keepdims=True)
    lp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return -lp[np.arange(len(y)), y].mean() + 0.5 * gamma * (model.coef_**2).sum()


def test_logistic_regression_matches_scikit_learn(rng):
    lm = pytest.importorskip("sklearn.linear_model")
    X, y = _blobs(rng, sep=1.0)
    gamma = 1e-2
    ours = LinearClassifier(weight_decay=gamma).fit(X, y)
    ref = lm.LogisticRegression(C=1 / (gamma * len(y)), tol=1e-10, max_iter=5000).fit(X, y)
    assert _objective(ours, X, y, gamma) == pytest.approx(_objective(ref, X, y, gamma), rel=1e-5)
    assert np.mean(ours.predict(X) == ref.predict(X)) > 0.99
    p = ours.predict_proba(X)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert ours.coef_.shape == (3, 5) and ours.n_classes_ == 3


def test_balanced_weights(rng):
    y = np.repeat([0, 1, 2], [90, 9, 1])
    w = balanced_sample_weight(y, 3)
    assert [w[y == k].sum() for k in range(3)] == pytest.approx([100 / 3] * 3)
    X, y = _blobs(rng, n=(200, 10), sep=0.7)
    plain = LinearClassifier().fit(X, y)
    rew = LinearClassifier(class_weight="balanced").fit(X, y)
    assert (rew.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()


def test_sgd_warm_start(rng):
    X, y = _blobs(rng)
    full = LinearClassifier(weight_decay=1e-3).fit(X, y)
    sgd = LinearClassifier(solver="sgd", epochs=1, lr=1e-3, random_state=0)
    sgd.fit(X, y, coef_init=full.coef_, intercept_init=full.intercept_)
    np.testing.assert_allclose(sgd.coef_, full.coef_, atol=0.05)  # small steps from the optimum stay there
    cold = LinearClassifier(solver="sgd", epochs=5, lr=0.05, random_state=0).fit(X, y)
    assert cold.score(X, y) > 0.9


def test_classifier_bad_input(rng):
    X, y = _blobs(rng)
    with pytest.raises(GPUAError, match="solver="):
        LinearClassifier(solver="adam").fit(X, y)
    with pytest.raises(GPUAError, match="sample_weight"):
        LinearClassifier().fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(GPUAError, match=r"at least 2 classes: give labels of two classes or more, or pass fit\(\.\.\., n_classes=K\)"):
        LinearClassifier().fit(X, np.zeros(len(y), int))
    with pytest.raises(GPUAError, match="y must hold integer class indices"):  # regression targets, not classes
        LinearClassifier().fit(X, rng.random(len(y)))
    with pytest.raises(GPUAError, match="y must hold integer class indices"):
        ShrinkageLDA().fit(X, y + 0.5)
    with pytest.raises(GPUAError, match="coef_init"):
        LinearClassifier().fit(X, y, coef_init=np.zeros((2, 5)))
    with pytest.raises(NotFittedError):
        LinearClassifier().predict(X)
    model = LinearClassifier().fit(X, y)
    with pytest.raises(GPUAError, match="width"):
        model.predict(X[:, :3])


def test_lda_from_statistics_equals_lda_from_data(rng):
    X, y = _blobs(rng, n=(80, 30, 10), d=6, sep=1.5)
    direct = ShrinkageLDA().fit(X, y)
    parts = np.array_split(rng.permutation(len(y)), 4)
    merged = ShrinkageLDA().fit_statistics(merge_statistics([ClassStatistics(3).fit(X[p], y[p]) for p in parts]))
    np.testing.assert_allclose(merged.coef_, direct.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(merged.intercept_, direct.intercept_, rtol=1e-8, atol=1e-10)
    assert direct.score(X, y) > 0.8
    uni = ShrinkageLDA(priors="uniform").fit(X, y)
    assert (uni.predict(X) == 2).sum() >= (direct.predict(X) == 2).sum()


def test_lda_unshrunk_matches_scikit_learn(rng):
    da = pytest.importorskip("sklearn.discriminant_analysis")
    X, y = _blobs(rng, n=(50, 40, 30), d=4, sep=1.0)
    ours = ShrinkageLDA(shrinkage=None).fit(X, y)
    ref = da.LinearDiscriminantAnalysis(solver="lsqr").fit(X, y)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_lda_bad_options(rng):
    X, y = _blobs(rng)
    with pytest.raises(GPUAError, match="priors="):
        ShrinkageLDA(priors="flat").fit(X, y)
    with pytest.raises(GPUAError, match="at least 2 classes"):
        ShrinkageLDA().fit(X[y == 0], y[y == 0])


def test_diverged_sgd_fit_is_an_error_naming_lr(rng):
    # A step far too large for the feature scale overflows the weights to inf / NaN, which
    # used to come back as coef_ (predicting class 0 everywhere, NaN probabilities).
    X, y = _blobs(rng)
    with pytest.raises(GPUAError, match=r"diverged.*lr=1e\+30.*smaller lr"):
        LinearClassifier(solver="sgd", lr=1e30, random_state=0).fit(100 * X, y)
    model = LinearClassifier(solver="sgd", epochs=5, lr=0.05, random_state=0).fit(X, y)
    assert np.all(np.isfinite(model.coef_)) and model.score(X, y) > 0.9


def test_sgd_batch_of_zero_weight_samples_adds_only_the_penalty(rng):
    # Batches of one: the zero-weight sample's batch was 0 / 0 = NaN (now reported as divergence).
    X, y = _blobs(rng, n=(5, 5))
    w = np.r_[0.0, np.ones(9)]
    model = LinearClassifier(solver="sgd", batch_size=1, lr=0.01, random_state=0).fit(X, y, sample_weight=w)
    assert np.all(np.isfinite(model.coef_))


@pytest.mark.parametrize("cls", [LinearClassifier, ShrinkageLDA])
def test_scikit_learn_parameter_contract(cls):
    model = cls()
    params = model.get_params()
    assert set(params) == set(cls._parameter_constraints)
    assert model.set_params(**params) is model
    with pytest.raises(GPUAError, match="not a parameter"):
        model.set_params(no_such_parameter=1)
    base = pytest.importorskip("sklearn.base")
    assert base.clone(model).get_params() == params


@pytest.mark.parametrize(
    "kw",
    [
        {"device": "mps"},  # parsed by torch, but not a device this package computes on
        {"device": "cuda:99"},  # past the last GPU (or no GPU at all)
        {"random_state": -1},
        {"max_iter": True},
        {"epochs": 2.5},
    ],
    ids=str,
)
def test_classifier_bad_parameters_name_themselves(kw, rng):
    X, y = _blobs(rng, n=(5, 5))
    (name,) = kw
    with pytest.raises(GPUAError, match=f"{name}="):
        LinearClassifier(solver="sgd", **kw).fit(X, y)


@pytest.mark.parametrize("n_classes", [2.5, True], ids=repr)
def test_n_classes_must_be_an_int(n_classes, rng):
    # int(2.5) used to fit 2 classes silently; True was taken as 1.
    X, y = _blobs(rng, n=(5, 5))
    with pytest.raises(GPUAError, match="n_classes="):
        LinearClassifier().fit(X, y, n_classes=n_classes)
    with pytest.raises(GPUAError, match="n_classes="):
        ClassStatistics(n_classes).fit(X, y)
