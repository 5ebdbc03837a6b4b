"""Calibration and federated findings of the session-20 user audit (each "Was:" is what the code did before)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from gpua._errors import ConvergenceWarning, GPUAError
from gpua.calibrate import (DistributionCalibrator, FederatedCalibration, LinearClassifier, client_statistics,
                            longtail_indices)
from gpua.cli.calibrate import add_subcommands
from gpua.features import save_features


def _duplicated_class(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.vstack([np.repeat(rng.standard_normal((1, 5)), 4, axis=0), rng.standard_normal((20, 5))])
    return X, np.repeat([0, 1], [4, 20])


def test_a_class_of_copies_of_one_row_borrows_like_a_single_sample():
    """Was: its zero covariance (OAS of zero is zero) generated 16 copies of that row, silently."""
    X, y = _duplicated_class()
    cal = DistributionCalibrator(borrow=None, random_state=0)
    Xa, ya = cal.fit_resample(X, y)
    generated = Xa[len(X):][ya[len(X):] == 0]
    assert len(generated) == 16 and np.abs(generated - X[0]).max() > 0.1
    assert cal.donors_[0].tolist() == [1] and np.trace(cal.covariances_[0]) > 0.5
    with pytest.raises(GPUAError, match=r"class\(es\) \[0\] have a single sample \(or copies of one\)"):
        DistributionCalibrator(single_sample="raise").fit(X, y)
    server = FederatedCalibration(2).fit([client_statistics(X, y, 2)])
    Xg, yg = server.augment(0, X, y, random_state=0)
    assert np.abs(Xg[yg == 0] - X[0]).max() > 0.1
    # rows that differ only by rounding are copies too; two distinct rows are not
    near = X.copy()
    near[1] += 1e-12
    assert DistributionCalibrator(borrow=None).fit(near, y).donors_[0].tolist() == [1]
    two = X.copy()
    two[1] += 0.5
    assert DistributionCalibrator(borrow=None).fit(two, y).donors_[0].size == 0


def test_augment_gives_each_client_its_own_stream_of_a_seeded_calibrator():
    """Was: a calibrator with random_state=0 gave every client the same noise and anchor draws:
    each generated row of client 0 minus client 1's was exactly a difference of their anchors."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], [12, 4])
    clients = [(rng.standard_normal((16, 4)) + 3 * c, y) for c in range(2)]
    server = FederatedCalibration(2, calibrator=DistributionCalibrator(borrow=None, random_state=0))
    server.fit([client_statistics(Xc, yc, 2) for Xc, yc in clients])
    (g0, y0), (g1, y1) = (server.augment(c, *clients[c]) for c in range(2))
    assert y0.tolist() == y1.tolist() == [1] * 8
    anchor_gaps = clients[0][0][y == 1] - clients[1][0][y == 1]  # (4, d): one per shared anchor index
    same_draws = [np.abs(anchor_gaps - (a - b)).max(axis=1).min() < 1e-5 for a, b in zip(g0, g1)]
    assert not any(same_draws)
    np.testing.assert_array_equal(server.augment(0, *clients[0])[0], g0)  # still reproducible
    # an explicit random_state is taken as given, for every client alike
    np.testing.assert_array_equal(server.augment(0, *clients[0], random_state=5)[0], server.augment(1, *clients[0], random_state=5)[0])


def test_an_empty_client_sends_zero_statistics():
    """Was: client_statistics refused a client without rows, which dirichlet_split(min_size=0) makes
    and fit_federated / fedavg accept; dropping it renumbered the clients after it."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), np.tile(np.arange(4), 10)
    empty = client_statistics(X[:0], y[:0], 4)
    assert empty.count_.tolist() == [0, 0, 0, 0] and empty.mean_.shape == (4, 6)
    assert client_statistics(X[:0], y[:0], 4, share="shape", n_components=2).count_.sum() == 0
    merged = FederatedCalibration(4).fit([client_statistics(X, y, 4), empty]).statistics_
    alone = FederatedCalibration(4).fit([client_statistics(X, y, 4)]).statistics_
    np.testing.assert_allclose(merged.covariance_, alone.covariance_)
    with pytest.raises(GPUAError, match="share"):
        client_statistics(X[:0], y[:0], 4, share="all")


def test_an_imbalance_the_data_cannot_follow_is_said():
    """Was: the tail was clamped to one sample each, and the row reported the ratio asked."""
    y = np.repeat(np.arange(5), 8)
    with pytest.warns(UserWarning, match=r"imbalance 1e\+09 asks the tail class\(es\) for less than one .* ratio is 8"):
        idx = longtail_indices(y, 1e9, random_state=0)
    assert np.bincount(y[idx]).tolist() == [8, 1, 1, 1, 1]


def test_linear_classifier_says_when_it_stops_at_max_iter(gaussians):
    """Was: it stopped at max_iter without a word (scikit-learn warns)."""
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        clf = LinearClassifier(max_iter=3).fit(gaussians["X"], gaussians["y"])
    assert clf.n_iter_ == 3


def test_longtail_names_a_class_without_training_rows(tmp_path, gaussians, capsys):
    """Was: its class count came from the labels alone, so the last class (no row) was dropped
    and the text prototypes blamed ("text_prototypes has 10 rows for a different class count")."""
    X, y = gaussians["X"], gaussians["y"]
    keep = y != 9
    names = [f"class{k}" for k in range(10)]
    protos = np.random.default_rng(0).standard_normal((10, 8))
    save_features(tmp_path / "train.npz", vfm_features=X[keep], labels=y[keep], classnames=names, text_prototypes=protos)
    save_features(tmp_path / "test.npz", vfm_features=gaussians["X_test"], labels=gaussians["y_test"], classnames=names,
                  text_prototypes=protos)
    parser = argparse.ArgumentParser(prog="gpua")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", "longtail", "--features", str(tmp_path / "train.npz"), "--test",
                              str(tmp_path / "test.npz"), "--imbalance", "10"])
    with pytest.raises(GPUAError, match=r"has no training row of class\(es\) 'class9' \(9\)"):
        args.func(args)
    assert "different class count" not in capsys.readouterr().out


def test_benchmark_demo_paths_follow_the_cache_setting(tmp_path, monkeypatch):
    """Was: federated_gpua.py and pool_augment.py read ~/.cache/gpua whatever $GPUA_CACHE_DIR said,
    and a missing file ended in a traceback."""
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path))
    import _harness

    path = _harness.demo_features("train")
    assert path.parent == tmp_path / "demo" and path.name.startswith("cifar10-mini_train__offline-dinov2-s")
    with pytest.raises(SystemExit, match="run `gpua demo` first"):
        _harness.load_feature_files(path)


def test_tables_say_their_accuracies_are_percent():
    """Was: headers 'all head tail' over 35.0 while the JSON held 0.35: the scale was a guess."""
    from gpua.calibrate import format_table

    table = format_table([{"imbalance": 10.0, "method": "plain", "all": 0.35, "head": 0.5, "tail": 0.2, "n_train": 3}])
    assert table.splitlines()[0].split() == ["imbalance", "method", "all", "(%)", "head", "(%)", "tail", "(%)", "n_train"]
    assert "35.0" in table
