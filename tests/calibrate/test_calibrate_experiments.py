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
