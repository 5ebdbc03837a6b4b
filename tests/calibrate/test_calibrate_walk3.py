"""Third walk through geometric distribution calibration as a user: each test failed before its fix."""

import argparse

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import (
    ClassStatistics,
    DistributionCalibrator,
    FederatedCalibration,
    LinearClassifier,
    ShrinkageLDA,
    client_statistics,
    dirichlet_split,
    fedavg,
    merge_statistics,
)


@pytest.fixture(scope="module")
def sorted_data():
    """4 classes, labels sorted (as a feature file written class by class stores them)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 6)) * 3
    y = np.repeat(np.arange(4), 30)
    return means[y] + rng.normal(size=(120, 6)), y


@pytest.fixture(scope="module")
def server(sorted_data):
    X, y = sorted_data
    split = dirichlet_split(y, 3, 0.5, random_state=0)
    messages = [client_statistics(X[i], y[i], 4) for i in split]
    return FederatedCalibration(4).fit(messages), split, messages


# -- silent wrong results --------------------------------------------------------------------
@pytest.mark.parametrize("make", [ShrinkageLDA, LinearClassifier], ids=["lda", "linear"])
def test_classifiers_are_classifiers_to_scikit_learn(sorted_data, make):
    """scikit-learn took them for regressors' kin (no estimator type): cross_val_score split
    label-sorted data into unstratified folds, each missing classes, and reported
    [0.25, 0.55, nan] for a problem the model solves (scoring failed on the last fold)."""
    from sklearn.base import is_classifier
    from sklearn.model_selection import cross_val_score

    X, y = sorted_data
    assert is_classifier(make())
    scores = cross_val_score(make(), X, y, cv=3, error_score="raise")
    assert np.all(scores > 0.9)
    # and it names its classes (AttributeError: no attribute 'classes_' before)
    from sklearn.model_selection import cross_val_predict

    proba = cross_val_predict(make(), X, y, cv=3, method="predict_proba")
    assert proba.shape == (120, 4) and np.all(proba.argmax(1) == y)
    np.testing.assert_array_equal(make().fit(X, y).classes_, np.arange(4))


@pytest.mark.parametrize("client", [1.5, True, np.float64(1.0)])
def test_augment_refuses_a_client_that_is_not_an_index(server, sorted_data, client):
    """client=1.5 matched no client, so its own prototypes were added to its local samples;
    client=True was taken as client 1. Both generated silently."""
    srv, split, _ = server
    X, y = sorted_data
    with pytest.raises(GPUAError, match=r"client=.* must be an integer in \[0, 2\]"):
        srv.augment(client, X[split[1]], y[split[1]], random_state=0)


# -- bad input: one clear error, not a traceback ----------------------------------------------
@pytest.mark.parametrize("client", ["1", None, -1, 3])
def test_augment_names_a_bad_client(server, sorted_data, client):
    """A string or None raised a TypeError comparing it with 0."""
    srv, split, _ = server
    X, y = sorted_data
    with pytest.raises(GPUAError, match="client="):
        srv.augment(client, X[split[1]], y[split[1]], random_state=0)


def test_federated_server_checks_its_calibrator_and_messages(server):
    """A calibrator that is not a DistributionCalibrator raised AttributeError ('str' object has no
    attribute 'fit_statistics'); one ClassStatistics instead of a list, TypeError (not iterable)."""
    _, _, messages = server
    with pytest.raises(GPUAError, match="calibrator is a str; pass a DistributionCalibrator"):
        FederatedCalibration(4, calibrator="oas").fit(messages)
    with pytest.raises(GPUAError, match=r"messages is one ClassStatistics; pass a list .*\[stats\]"):
        FederatedCalibration(4).fit(messages[0])
    with pytest.raises(GPUAError, match=r"parts is one ClassStatistics"):
        merge_statistics(messages[0])


@pytest.mark.parametrize("n_classes", [4.5, "4", 0, True])
def test_merge_statistics_checks_n_classes(server, n_classes):
    """4.5 raised numpy's TypeError from inside np.zeros; 0 was told to 'pass the larger n_classes'."""
    _, _, messages = server
    with pytest.raises(GPUAError, match=r"n_classes=.* must be None or an int >= 1"):
        merge_statistics(messages, n_classes=n_classes)


@pytest.mark.parametrize("ddof", [1.5, -1, "1", True])
def test_covariance_checks_ddof(sorted_data, ddof):
    """ddof=1.5 divided by n - 1.5 silently; a string raised numpy's TypeError."""
    X, y = sorted_data
    with pytest.raises(GPUAError, match="ddof="):
        ClassStatistics().fit(X, y).covariance(ddof=ddof)


def test_fedavg_names_clients_that_are_not_pairs(sorted_data):
    """A list of feature arrays (no labels) raised 'too many values to unpack (expected 2)'."""
    X, y = sorted_data
    with pytest.raises(GPUAError, match=r"clients\[0\] is a ndarray; pass \(X_i, y_i\) pairs"):
        fedavg([X], 4, rounds=1)


def test_text_borrowing_names_class_embeddings_and_the_fix(sorted_data):
    """None was told to 'pass an array of shape (n, d)', a wrong row count 'one row per image'."""
    X, y = sorted_data
    cal = DistributionCalibrator(borrow="text", random_state=0)
    with pytest.raises(GPUAError, match=r"borrow='text' needs class_embeddings.*one row per class \(4\)"):
        cal.fit(X, y)
    with pytest.raises(GPUAError, match=r"class_embeddings has 3 rows for 4 classes; give one row per class"):
        cal.fit(X, y, class_embeddings=np.ones((3, 5)))
    assert cal.fit(X, y, class_embeddings=np.eye(4)).similarity_.shape == (4, 4)


@pytest.mark.parametrize("make", [ShrinkageLDA, LinearClassifier], ids=["lda", "linear"])
def test_scoring_a_class_the_model_never_saw_says_so(sorted_data, make):
    """Test labels beyond the fitted classes were told 'labels index the text prototypes'."""
    X, y = sorted_data
    model = make().fit(X[y < 3], y[y < 3])
    with pytest.raises(GPUAError, match=r"y holds values outside \[0, 3\) \(largest: 3\); the model was fitted "
                                        r"for 3 classes: fit it with n_classes=4"):
        model.score(X, y)


# -- CLI ---------------------------------------------------------------------------------------
def _run(argv):
    from gpua.cli.calibrate import add_subcommands

    parser = argparse.ArgumentParser(prog="gpua")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_components_beyond_the_feature_width_names_the_flag(sorted_data, tmp_path):
    """It said 'n_components=100 must be between 1 and the feature width 6', a name the CLI does not have."""
    from gpua.features import save_features

    X, y = sorted_data
    save_features(tmp_path / "f.npz", vfm_features=X, labels=y)
    with pytest.raises(GPUAError, match=r"--components=100 .*--share shape, but the features have width 6"):
        _run(["calibrate", "federated", "--features", str(tmp_path / "f.npz"), "--share", "shape",
              "--components", "100", "--rounds", "1", "--clients", "2"])


# -- prototypes and targets given to sample / augment ------------------------------------------
@pytest.fixture(scope="module")
def fitted(sorted_data):
    X, y = sorted_data
    return DistributionCalibrator(random_state=0).fit(X, y)


@pytest.mark.parametrize("key", [7, -1, "1", 1.0])
def test_prototypes_for_no_class_are_refused(fitted, sorted_data, key):
    """A key that is no class index (7, '1': a class name) was ignored: nothing was generated
    around those anchors, and nothing said so."""
    X, y = sorted_data
    with pytest.raises(GPUAError, match=r"prototypes has key .*; key them by class index 0\.\.3"):
        fitted.sample(X, y, target=40, prototypes={key: (np.zeros((1, 6)), np.ones(1))})


@pytest.mark.parametrize("prototypes, match", [
    ([(np.zeros((1, 6)), np.ones(1))], r"prototypes is a list; pass a mapping"),  # TypeError: unhashable
    ({1: np.zeros((1, 6))}, r"prototypes for class 1 is a ndarray; give a pair \(anchors"),  # IndexError
    ({1: (np.zeros((1, 6)), -np.ones(1))}, r"prototypes for class 1 have weights \[-1.0\]; give finite"),
    ({1: (np.zeros((2, 6)), np.zeros(2))}, r"prototypes for class 1 have weights \[0.0, 0.0\]; give finite"),
])
def test_malformed_prototypes_are_named(fitted, sorted_data, prototypes, match):
    """Negative weights were reported as 'anchor_weights has 31 value(s) for 31 anchors', an argument
    the caller never passed and a count that was right."""
    X, y = sorted_data
    with pytest.raises(GPUAError, match=match):
        fitted.sample(X, y, target=40, prototypes=prototypes)


def test_a_target_beyond_memory_is_refused_up_front(fitted, sorted_data):
    """target=10**12 (a slip of the keyboard) ran a Python loop of 10**10 permutations and then ran
    out of memory, instead of saying what it would take."""
    X, y = sorted_data
    with pytest.raises(GPUAError, match=r"target=1000000000000 would generate .* samples of width 6 \(.* GB\), more "
                                        r"than this machine's memory"):
        fitted.sample(X, y, target=10**12)


# -- experiment runners --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    from gpua.calibrate import make_shape_gaussians

    return make_shape_gaussians(n_classes=4, n_features=6, n_train_per_class=30, n_test_per_class=10, random_state=0)


def test_text_borrowing_asked_for_without_embeddings_is_an_error(small):
    """methods=['calibrate+borrow-text'] without class_embeddings returned [] (the row was skipped
    silently); the default methods still leave it out quietly."""
    from gpua.calibrate import run_longtail

    args = (small["X"], small["y"], small["X_test"], small["y_test"])
    with pytest.raises(GPUAError, match=r"calibrate\+borrow-text needs class_embeddings"):
        run_longtail(*args, imbalance_ratios=[10], methods=["plain", "calibrate+borrow-text"])
    rows = run_longtail(*args, imbalance_ratios=[10])
    assert [r["method"] for r in rows] == ["plain", "reweight", "lda", "calibrate", "calibrate+borrow"]
    rows = run_longtail(*args, imbalance_ratios=[10], class_embeddings=np.eye(4))
    assert rows[-1]["method"] == "calibrate+borrow-text"


def test_runner_class_embeddings_count_is_told_per_class(small):
    """A wrong row count was told 'pass one row per image'."""
    from gpua.calibrate import run_longtail

    with pytest.raises(GPUAError, match=r"class_embeddings has 3 rows for 4 classes; give one row per class"):
        run_longtail(small["X"], small["y"], small["X_test"], small["y_test"], imbalance_ratios=[10],
                     methods=["calibrate+borrow-text"], class_embeddings=np.ones((3, 5)))


def test_runners_take_a_single_method_and_ratio(small):
    """methods='plain' was read letter by letter ("methods ['a', 'i', 'l', 'n', 'p'] are unknown"), and
    imbalance_ratios=10 / alphas=0.5 raised "'int' object is not iterable"."""
    from gpua.calibrate import run_federated, run_longtail

    args = (small["X"], small["y"], small["X_test"], small["y_test"])
    rows = run_longtail(*args, imbalance_ratios=10, methods="plain")
    assert [(r["imbalance"], r["method"]) for r in rows] == [(10.0, "plain")]
    rows = run_federated(*args, n_clients=2, alphas=0.5, methods="fedavg", rounds=1)
    assert [(r["alpha"], r["method"]) for r in rows] == [(0.5, "fedavg")]


def test_group_accuracy_checks_lengths():
    """Predictions of another length raised numpy's broadcast ValueError."""
    from gpua.calibrate import group_accuracy

    with pytest.raises(GPUAError, match=r"y_pred has 3 values for 2 in y_true"):
        group_accuracy(np.array([0, 1]), np.array([0, 1, 2]))


def test_cli_text_borrowing_without_text_prototypes_is_an_error(sorted_data, tmp_path):
    """--methods calibrate+borrow-text on a file without text_prototypes printed an empty table."""
    from gpua.features import save_features

    X, y = sorted_data
    save_features(tmp_path / "f.npz", vfm_features=X, labels=y)
    with pytest.raises(GPUAError, match=r"--methods calibrate\+borrow-text needs text_prototypes .*f\.npz"):
        _run(["calibrate", "longtail", "--features", str(tmp_path / "f.npz"), "--imbalance", "10",
              "--methods", "calibrate+borrow-text"])
    out = tmp_path / "lt.json"
    assert _run(["calibrate", "longtail", "--features", str(tmp_path / "f.npz"), "--imbalance", "10",
                 "--json", str(out)]) == 0  # the default: every method the file allows


# -- fill_to_target, public, took its arrays unchecked -----------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(target=[12, 12]), r"target has shape \(2,\); give one count, or one per class \(3\)"),  # numpy broadcast error
    (dict(target=12.7), r"target=12.7 .*whole number"),  # silently truncated to 12
    (dict(target=-1), r"target=-1 .*>= 0"),
    (dict(y=np.repeat([0, 1, 5], 10)), r"y holds values outside \[0, 3\)"),  # numpy broadcast error
    (dict(y=np.repeat([0, 1, -1], 10)), r"y holds negative values"),  # bincount ValueError
    (dict(y=np.repeat([0, 1], 5)), r"y must have shape \(30,\)"),  # IndexError
    (dict(X="list"), None),  # a list of rows: AttributeError 'list' has no 'shape'
])
def test_fill_to_target_checks_its_arguments(kwargs, match):
    from gpua.calibrate import fill_to_target

    rng = np.random.default_rng(0)
    args = dict(X=rng.normal(size=(30, 4)), y=np.repeat([0, 1, 2], 10), target=12)
    args.update(kwargs)
    if isinstance(args["X"], str):
        args["X"] = rng.normal(size=(30, 4)).tolist()
        X_new, y_new = fill_to_target(args["X"], args["y"], [np.eye(4)] * 3, args["target"], random_state=0)
        assert X_new.shape == (6, 4) and np.bincount(y_new).tolist() == [2, 2, 2]
        return
    with pytest.raises(GPUAError, match=match):
        fill_to_target(args["X"], args["y"], [np.eye(4)] * 3, args["target"], random_state=0)


def test_fill_to_target_takes_max_and_per_class_targets():
    from gpua.calibrate import fill_to_target

    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.repeat([0, 1, 2], [15, 10, 5])
    _, y_new = fill_to_target(X, y, [np.eye(4)] * 3, "max", random_state=0)
    assert np.bincount(y_new, minlength=3).tolist() == [0, 5, 10]
    _, y_new = fill_to_target(X, y, [np.eye(4)] * 3, np.array([15, 12, 5]), random_state=0)
    assert np.bincount(y_new, minlength=3).tolist() == [0, 2, 0]


def test_fit_resample_takes_a_tensor_that_requires_grad():
    """fit succeeded, then np.asarray of the tensor raised "Can't call numpy() on Tensor that requires grad"."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.repeat([0, 1, 2], [15, 10, 5])
    X_aug, y_aug = DistributionCalibrator(random_state=0).fit_resample(torch.tensor(X, requires_grad=True), torch.tensor(y))
    X_ref, y_ref = DistributionCalibrator(random_state=0).fit_resample(X, y)
    np.testing.assert_array_equal(X_aug, X_ref)
    np.testing.assert_array_equal(y_aug, y_ref)
    assert X_aug.dtype == np.float32 and y_aug.dtype == np.int64


def test_more_clients_than_the_data_can_hold_names_the_flag(sorted_data, tmp_path):
    """It said 'could not give every one of 100 clients at least min_size=2 samples in 1000 draws ...;
    lower min_size or n_clients', after 1000 draws, naming an option the CLI does not have."""
    from gpua.features import save_features

    X, y = sorted_data
    save_features(tmp_path / "f.npz", vfm_features=X, labels=y)
    with pytest.raises(GPUAError, match=r"--clients=100 cannot each hold the 2 samples .* 84 rows; pass --clients 42"):
        _run(["calibrate", "federated", "--features", str(tmp_path / "f.npz"), "--clients", "100", "--rounds", "1"])
