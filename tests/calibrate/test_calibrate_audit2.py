"""Second audit of geometric distribution calibration: each test failed before its fix."""

import warnings

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import (
    ClassStatistics,
    DistributionCalibrator,
    FederatedCalibration,
    LinearClassifier,
    ShrinkageLDA,
    balanced_sample_weight,
    dirichlet_split,
    fedavg,
    make_shape_gaussians,
    oas_factor,
    oas_shrinkage,
    run_federated,
    sample_around,
    shape_similarity,
    shape_similarity_matrix,
)


# -- silent wrong results --------------------------------------------------------------------
def test_lda_without_within_class_spread_is_refused_not_nan(rng):
    """One sample (or identical rows) per class: the pooled covariance is zero; it gave NaN coef_
    and predicted class 0 everywhere, with NaN probabilities."""
    X = rng.normal(size=(3, 4))
    for Xf, yf in ((X, np.array([0, 1, 2])), (np.repeat(X, 4, axis=0), np.repeat([0, 1, 2], 4))):
        for shrinkage in ("oas", None):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no overflow warning on the way to the error
                with pytest.raises(GPUAError, match="within-class"):
                    ShrinkageLDA(shrinkage=shrinkage).fit(Xf, yf)


def test_shape_similarity_stays_within_documented_bound():
    """S(A, B) in [0, m]: rounding in the eigenvector dot products put S(A, A) above m (4e-16 here)."""
    S = np.cov(np.random.default_rng(3).normal(size=(30, 6)).T)
    for m in range(1, 7):
        assert 0.0 <= shape_similarity(S, S, m) <= m
        M = shape_similarity_matrix(np.stack([S, S + 0.1 * np.eye(6)]), m)
        assert M.min() >= 0.0 and M.max() <= m
        np.testing.assert_allclose(M, M.T)
    assert shape_similarity(S, S, 6) == pytest.approx(6.0)


def test_integer_features_keep_their_precision():
    """Integer features beyond float32's 24-bit mantissa lost their spread: 2**25 + {0, 1} became
    one value, so the class variance came out zero."""
    X = (2**25 + np.array([[0, 0], [1, 1], [0, 1], [1, 0]])).astype(np.int64)
    y = np.zeros(4, np.int64)
    stats = ClassStatistics().fit(X, y)
    np.testing.assert_allclose(stats.covariance_[0], np.cov(X.T.astype(np.float64), ddof=0), atol=1e-12)
    np.testing.assert_allclose(stats.mean_[0], X.astype(np.float64).mean(0), rtol=0, atol=1e-9)


# -- bad input: clear errors naming the argument ---------------------------------------------
def test_sample_around_names_non_finite_anchors_and_factor():
    """NaN anchors or factor were reported as scale overflowing float32."""
    with pytest.raises(GPUAError, match="anchors contains NaN"):
        sample_around(np.full((1, 3), np.nan), np.eye(3), 2)
    with pytest.raises(GPUAError, match="factor contains NaN"):
        sample_around(np.zeros((1, 3)), np.full((3, 3), np.inf), 2)


@pytest.mark.parametrize(
    "weights, match",
    [([1.0, 2.0, 3.0], "anchor_weights has 3"), ([-1.0, 2.0], "anchor_weights"), ([0.0, 0.0], "anchor_weights"),
     ([np.nan, 1.0], "anchor_weights")],
)
def test_sample_around_checks_anchor_weights(weights, match):
    """Wrong length / negative weights raised numpy's ValueError; all-zero weights divided 0 by 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(GPUAError, match=match):
            sample_around(np.zeros((2, 3)), np.eye(3), 4, anchor_weights=weights)


def test_sample_around_checks_factor_and_count():
    """A list factor raised AttributeError, a 1-D one IndexError, a float count TypeError."""
    out = sample_around(np.zeros((2, 3)), np.eye(3).tolist(), 4, random_state=0)
    assert out.shape == (4, 3)
    with pytest.raises(GPUAError, match="factor must be a 2-D"):
        sample_around(np.zeros((2, 3)), np.ones(3), 2)
    with pytest.raises(GPUAError, match="n_samples"):
        sample_around(np.zeros((2, 3)), np.eye(3), 2.5)


def test_prototypes_of_another_width_are_named(rng):
    """Prototype anchors of another width ended in numpy's concatenate error."""
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    cal = DistributionCalibrator(random_state=0).fit(X, y)
    with pytest.raises(GPUAError, match="prototypes for class 0"):
        cal.sample(X, y, target=20, prototypes={0: (np.zeros((1, 3)), np.ones(1))})
    with pytest.raises(GPUAError, match="prototypes for class 1"):
        cal.sample(X, y, target=20, prototypes={1: (np.zeros((2, 4)), np.ones(3))})


def test_federated_server_checks_n_classes(rng):
    """n_classes=None (or 0) ended in a TypeError comparing it with the messages' class counts."""
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    msg = ClassStatistics(3).fit(X, y)
    for bad in (None, 0, 2.5):
        with pytest.raises(GPUAError, match="n_classes"):
            FederatedCalibration(bad).fit([msg])


def test_fedavg_checks_client_arrays_and_n_classes(rng):
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    with pytest.raises(GPUAError, match=r"clients\[0\]"):
        fedavg([(X[:, 0], y)], 3, rounds=1)  # 1-D features: IndexError before
    with pytest.raises(GPUAError, match="n_classes"):
        fedavg([(X, y)], None, rounds=1)  # TypeError before


def test_dirichlet_split_names_alpha_and_min_size():
    y = np.repeat([0, 1, 2], 10)
    with pytest.raises(GPUAError, match="alpha"):
        dirichlet_split(y, 2, "0.5")  # TypeError before
    with pytest.raises(GPUAError, match="min_size"):
        dirichlet_split(y, 2, 1.0, min_size=-1)
    assert len(dirichlet_split(y, 2, np.inf, random_state=0)) == 2  # documented: inf still splits evenly


def test_run_federated_refuses_a_non_integer_seed_up_front():
    """random_state=None failed with a TypeError (int(None)) after the split and the server fit."""
    d = make_shape_gaussians(n_classes=3, n_features=4, n_train_per_class=20, n_test_per_class=5, random_state=0)
    with pytest.raises(GPUAError, match="random_state"):
        run_federated(d["X"], d["y"], d["X_test"], d["y_test"], n_clients=2, alphas=[0.5], rounds=1,
                      methods=["fedavg+calibrate"], random_state=None)


def test_labels_beyond_n_classes_name_the_fix(rng):
    """The message said labels 'index the text prototypes', which they do not here."""
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    with pytest.raises(GPUAError, match=r"outside \[0, 2\).*pass n_classes=3 or more") as e1:
        ClassStatistics(2).fit(X, y)
    with pytest.raises(GPUAError, match=r"outside \[0, 2\).*pass n_classes=3 or more") as e2:
        LinearClassifier().fit(X, y, n_classes=2)
    for e in (e1, e2):
        assert "text prototypes" not in str(e.value)


def test_calibrator_fit_takes_missing(rng):
    """fit's error told the user to pass missing='skip', which fit did not accept."""
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10)
    with pytest.raises(GPUAError, match="missing='skip'"):
        DistributionCalibrator().fit(X, y, n_classes=4)
    cal = DistributionCalibrator(random_state=0).fit(X, y, n_classes=4, missing="skip")
    assert cal.factors_[3] is None and cal.n_classes_ == 4


def test_oas_checks_its_inputs(rng):
    with pytest.raises(GPUAError, match="X must be 2-D"):
        oas_factor(rng.normal(size=5))  # ValueError (unpacking the shape) before
    with pytest.raises(GPUAError, match="n_samples"):
        oas_shrinkage(np.eye(3), 2.5)


def test_lda_fit_statistics_names_a_wrong_argument(rng):
    with pytest.raises(GPUAError, match="statistics"):
        ShrinkageLDA().fit_statistics(rng.normal(size=(3, 3)))  # AttributeError before


# -- docstrings ------------------------------------------------------------------------------
def test_balanced_weight_formula_as_documented():
    """The docstring's K is the number of classes present (every present class weighs n / K)."""
    y = np.array([0, 0, 2])
    w = balanced_sample_weight(y, 3)
    assert w[y == 0].sum() == pytest.approx(w[y == 2].sum()) == pytest.approx(y.size / 2)
    assert "present" in balanced_sample_weight.__doc__


# -- CLI: numeric flags named as typed, before any file is read --------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [(["longtail", "--seed", "-1"], "--seed"), (["longtail", "--donors", "0"], "--donors"),
     (["longtail", "--weight-decay", "-1"], "--weight-decay"), (["federated", "--clients", "0"], "--clients"),
     (["federated", "--alpha", "0.5", "0"], "--alpha"), (["federated", "--components", "0"], "--components"),
     (["federated", "--rounds", "0"], "--rounds"), (["federated", "--local-epochs", "0"], "--local-epochs"),
     (["federated", "--lr", "0"], "--lr"), (["federated", "--seed", "-3"], "--seed")],
)
def test_cli_numeric_flags_are_named(argv, flag, tmp_path):
    """They were reported by the library's names (random_state, n_donors, n_clients...), after reading the files."""
    import argparse

    from gpua.cli.calibrate import add_subcommands

    parser = argparse.ArgumentParser(prog="gpua")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", argv[0], "--features", str(tmp_path / "absent.npz"), *argv[1:]])
    with pytest.raises(GPUAError, match=f"^{flag}="):
        args.func(args)


def test_affine_refuses_non_finite_shift_and_scale(rng):
    """A NaN shift gave NaN means silently; scale=inf gave zero covariances and means."""
    stats = ClassStatistics(3).fit(rng.normal(size=(30, 4)), np.repeat([0, 1, 2], 10))
    with pytest.raises(GPUAError, match="shift"):
        stats.affine(np.array([np.nan, 0, 0, 0]), 1.0)
    with pytest.raises(GPUAError, match="scale"):
        stats.affine(0.0, np.inf)


def test_tail_classes_without_test_samples_are_said(gaussians):
    from gpua.calibrate import run_longtail

    g = gaussians
    keep = g["y_test"] < 9  # the tail at index order is classes 7, 8, 9: one without test samples
    with pytest.warns(UserWarning, match=r"1 of the 3 tail class\(es\) have no test sample \(first: class 9\), so the tail "
                                         r"accuracy averages over the others only"):
        run_longtail(g["X"], g["y"], g["X_test"][keep], g["y_test"][keep], imbalance_ratios=[10], methods=["plain"])
    keep = g["y_test"] < 7  # none of them
    with pytest.warns(UserWarning, match=r"3 of the 3 tail class\(es\) .* so the tail accuracy is NaN"):
        rows = run_longtail(g["X"], g["y"], g["X_test"][keep], g["y_test"][keep], imbalance_ratios=[10], methods=["plain"])
    assert np.isnan(rows[0]["tail"])  # was: NaN without a word


def test_shape_similarity_refuses_a_covariance_without_that_many_directions():
    from gpua.calibrate import shape_similarity, shape_similarity_matrix

    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 8))
    real = np.cov(A.T)
    with pytest.raises(GPUAError, match=r"b has 0 direction\(s\) of variance, fewer than n_components=5"):
        shape_similarity(real, np.zeros((8, 8)))  # was: 1.46, from arbitrary eigenvectors
    two = np.cov(A[:3].T)  # three samples: two directions
    with pytest.raises(GPUAError, match=r"covariances\[1\] has 2 direction"):
        shape_similarity_matrix(np.stack([real, two]))
    assert 0 < shape_similarity(real, two, n_components=2) <= 2
