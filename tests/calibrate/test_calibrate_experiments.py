import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import (
    FEDERATED_METHODS,
    ClassStatistics,
    format_table,
    global_standardizer,
    group_accuracy,
    head_tail_classes,
    longtail_indices,
    run_federated,
    run_longtail,
    stratified_split,
)


def test_longtail_profile():
    y = np.repeat(np.arange(10), 100)
    idx = longtail_indices(y, 100, random_state=0)
    counts = np.bincount(y[idx])
    assert counts[0] == 100 and counts[-1] == 1 and np.all(np.diff(counts) <= 0)
    assert np.unique(idx).size == idx.size
    assert np.bincount(y[longtail_indices(y, 10, n_max=50)])[-1] == 5
    shuffled = np.bincount(y[longtail_indices(y, 100, class_order="random", random_state=1)])
    assert sorted(shuffled.tolist()) == sorted(counts.tolist()) and not np.all(np.diff(shuffled) <= 0)
    with pytest.raises(GPUAError, match="class_order"):
        longtail_indices(y, 10, class_order="size")
    with pytest.raises(GPUAError, match="imbalance"):
        longtail_indices(y, 0.5)
    with pytest.raises(GPUAError, match="n_max"):
        longtail_indices(y, 10, n_max=101)


def test_groups_and_accuracy():
    head, tail = head_tail_classes([100, 50, 30, 20, 10, 9, 8, 7, 6, 5])
    assert head.tolist() == [0, 1, 2] and tail.tolist() == [7, 8, 9]
    acc = group_accuracy(np.array([0, 0, 9, 9]), np.array([0, 1, 9, 9]), head, tail)
    assert acc == {"all": 0.75, "head": 0.5, "tail": 1.0}


def test_stratified_split():
    y = np.repeat([0, 1], [10, 30])
    tr, te = stratified_split(y, 0.3, random_state=0)
    assert np.bincount(y[te]).tolist() == [3, 9] and np.intersect1d(tr, te).size == 0
    with pytest.raises(GPUAError, match="test_fraction"):
        stratified_split(y, 1.5)


def test_global_standardizer(rng):
    X = rng.normal(size=(300, 4)) * 3 + 7
    y = rng.integers(0, 3, 300)
    mu, s = global_standardizer(ClassStatistics(3).fit(X, y))
    np.testing.assert_allclose(mu, X.mean(0))
    assert s == pytest.approx(np.sqrt(np.trace(np.cov(X.T, ddof=0)) / 4))


def test_run_longtail_calibration_lifts_the_tail(gaussians):
    rows = run_longtail(
        gaussians["X"], gaussians["y"], gaussians["X_test"], gaussians["y_test"], imbalance_ratios=(50,),
        methods=("plain", "lda", "calibrate", "calibrate+borrow"), random_state=0,
    )
    by = {r["method"]: r for r in rows}
    assert set(by) == {"plain", "lda", "calibrate", "calibrate+borrow"}
    assert by["calibrate"]["n_generated"] > 0 and by["plain"]["n_generated"] == 0
    assert by["calibrate"]["tail"] > by["plain"]["tail"] + 0.1
    assert by["calibrate+borrow"]["tail"] > by["plain"]["tail"] + 0.1
    table = format_table(rows)
    assert "calibrate+borrow" in table and "tail" in table.splitlines()[0]
    with pytest.raises(GPUAError, match="unknown"):
        run_longtail(gaussians["X"], gaussians["y"], gaussians["X_test"], gaussians["y_test"], methods=("smote",))


def test_run_federated_rows(gaussians):
    rows = run_federated(
        gaussians["X"], gaussians["y"], gaussians["X_test"], gaussians["y_test"], n_clients=4, alphas=(0.5,),
        rounds=2, random_state=0,
    )
    assert [r["method"] for r in rows] == list(FEDERATED_METHODS)
    assert all(0 <= r["all"] <= 1 for r in rows)
    assert rows[0]["n_generated"] == 0 and rows[2]["n_generated"] > 0
    assert "alpha" in format_table(rows)


def test_longtail_head_count_is_the_largest_the_profile_allows():
    # One class of a single sample among classes of 40: the head count used to default to the
    # smallest class count, cutting every class to one sample.
    y = np.repeat(np.arange(5), [40, 40, 40, 40, 1])
    counts = np.bincount(y[longtail_indices(y, 10, random_state=0)], minlength=5)
    # floor(n_max * 10 ** (-k / 4)) with n_max = 10, the most the one-sample tail class allows
    assert counts.tolist() == [10, 5, 3, 1, 1]
    # Balanced classes: the head keeps them all, as before.
    y = np.repeat(np.arange(4), 30)
    assert np.bincount(y[longtail_indices(y, 10, random_state=0)]).tolist() == [30, 13, 6, 3]
    # An explicit n_max is checked against what each class can give at its rank, not the smallest count.
    y = np.repeat(np.arange(5), [40, 40, 40, 40, 1])
    assert np.bincount(y[longtail_indices(y, 10, n_max=10)]).tolist() == [10, 5, 3, 1, 1]
    assert np.bincount(y[longtail_indices(y, 10, n_max=19)]).tolist()[-1] == 1  # floor(1.9): still one
    with pytest.raises(GPUAError, match=r"n_max=20 asks class\(es\) \[4\] for \[2\] sample\(s\) but they have \[1\].*10"):
        longtail_indices(y, 10, n_max=20)


def test_longtail_one_sample_head_class_is_named():
    y = np.repeat(np.arange(5), [1, 40, 40, 40, 40])
    with pytest.raises(GPUAError, match=r"class\(es\) \[0\] have \[1\] sample.*cuts every class to one.*Add samples"):
        longtail_indices(y, 10, random_state=0)


def test_run_longtail_one_sample_class_calibrates(gaussians):
    keep = np.ones(gaussians["y"].size, bool)
    keep[np.nonzero(gaussians["y"] == 9)[0][1:]] = False  # class 9: one training sample
    rows = run_longtail(gaussians["X"][keep], gaussians["y"][keep], gaussians["X_test"], gaussians["y_test"],
                        imbalance_ratios=(10,), methods=("plain", "calibrate+borrow"), random_state=0)
    # head count 10 (1 * 10 for the tail class), not 1: 10+7+5+...+1 training rows
    assert rows[0]["n_train"] > 10 and rows[1]["n_generated"] > 0


def test_longtail_class_without_samples_is_named(gaussians):
    y = np.array([0, 0, 1, 1, 3, 3])
    with pytest.raises(GPUAError, match=r"no sample of class\(es\) \[2\]"):
        longtail_indices(y, 10)
    with pytest.raises(GPUAError, match=r"no sample of class\(es\) \[4\] in y \(of 5 classes\)"):
        longtail_indices(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 10, n_classes=5)
    m = gaussians["y"] != 2  # the test set still has class 2
    with pytest.raises(GPUAError, match=r"no sample of class\(es\) \[2\] in labels"):
        run_longtail(gaussians["X"][m], gaussians["y"][m], gaussians["X_test"], gaussians["y_test"],
                     imbalance_ratios=(10,), methods=("plain",))
    m = gaussians["y"] != 9  # the last class: only the test labels say it exists
    with pytest.raises(GPUAError, match=r"no sample of class\(es\) \[9\] in labels"):
        run_longtail(gaussians["X"][m], gaussians["y"][m], gaussians["X_test"], gaussians["y_test"],
                     imbalance_ratios=(10,), methods=("plain",))


def test_stratified_split_that_leaves_nothing_is_an_error_naming_the_fraction():
    y = np.repeat([0, 1], [40, 40])
    with pytest.raises(GPUAError, match=r"--test-fraction=0\.99 .*class\(es\) \[0, 1\].*0 of the 80 rows.*at most 0\.975"):
        stratified_split(y, 0.99, name="--test-fraction")
    tr, te = stratified_split(y, 0.975)
    assert tr.size == 2 and te.size == 78
    with pytest.raises(GPUAError, match=r"test_fraction=0\.01 holds out no row.*at least 0\.025"):
        stratified_split(y, 0.01)
    assert stratified_split(y, 0.025)[1].size == 2
    with pytest.raises(GPUAError, match=r"test_fraction=0\.6 .*class\(es\) \[2\].*at most 0\.49"):
        stratified_split(np.repeat([0, 1, 2], [40, 40, 1]), 0.6)
    with pytest.raises(GPUAError, match=r"test_fraction=inf must be a number between 0 and 1"):
        stratified_split(y, float("inf"))


def test_imbalance_and_label_messages():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.repeat([0, 1], 10)
    for bad in (float("inf"), 0.5, float("nan")):
        with pytest.raises(GPUAError, match=r"must be a finite number >= 1; ") as err:
            run_longtail(X, y, X, y, imbalance_ratios=(bad,), methods=("plain",))
        assert "inf]" not in str(err.value)
        with pytest.raises(GPUAError, match=r"imbalance=.* must be a finite number >= 1"):
            longtail_indices(y, bad)
    with pytest.raises(GPUAError, match=r"labels has negative values \(smallest: -1\); labels must be class indices >= 0"):
        run_longtail(X, y - 1, X, y, imbalance_ratios=(10,), methods=("plain",))
    with pytest.raises(GPUAError, match=r"test labels has negative values"):
        run_federated(X, y, X, y - 1, n_clients=2, alphas=(0.5,), methods=("centralised",))
