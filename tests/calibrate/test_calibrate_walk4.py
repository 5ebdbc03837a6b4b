"""Fourth walk through federated calibration as a user: each test failed before its fix."""

import argparse
import json
import math

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.calibrate import dirichlet_split, fedavg, format_table, run_federated
from gpua.cli.calibrate import add_subcommands
from gpua.features import save_features
from gpua.report import json_text


def _run(argv):
    parser = argparse.ArgumentParser(prog="gpua")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def data(gaussians):
    g = gaussians
    return g["X"], g["y"], g["X_test"], g["y_test"]


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory, gaussians):
    d = tmp_path_factory.mktemp("walk4")
    for split, X, y in (("train", gaussians["X"], gaussians["y"]), ("test", gaussians["X_test"], gaussians["y_test"])):
        save_features(d / f"{split}.npz", vfm_features=X, labels=y, classnames=[f"class{k}" for k in range(10)])
    return d


# -- 1. alpha = inf: the even split, the baseline of a label-skew study ----------------------
def test_run_federated_accepts_inf_alpha_and_says_inf(data):
    """dirichlet_split documents alpha=inf as the even split, but run_federated refused it
    ("must be a finite number in (0, inf)")."""
    X, y, Xt, yt = data
    rows = run_federated(X, y, Xt, yt, n_clients=3, alphas=[0.5, np.inf], methods=["fedavg"], rounds=2)
    assert [r["alpha"] for r in rows] == [0.5, "inf"]
    assert float(rows[1]["alpha"]) == math.inf  # the string reads back as the number
    # strict JSON keeps it (a float inf would be written as null, read as "missing")
    assert json.loads(json_text(rows))[1]["alpha"] == "inf"
    assert " inf " in format_table(rows)
    # the even split is the one dirichlet_split makes at inf (same seed)
    split = dirichlet_split(y, 3, np.inf, random_state=0)
    assert max(len(i) for i in split) - min(len(i) for i in split) <= 10  # 10 classes, one cut each


@pytest.mark.parametrize("alpha", [float("nan"), 0, -1.0, -np.inf, "inf", True])
def test_run_federated_still_refuses_bad_alpha(data, alpha):
    X, y, Xt, yt = data
    with pytest.raises(GPUAError, match=r"alpha=.* must be a number in \(0, inf\]; a Dirichlet concentration"):
        run_federated(X, y, Xt, yt, n_clients=3, alphas=[alpha], methods=["fedavg"], rounds=1)


def test_cli_alpha_inf(feature_files, tmp_path, capsys):
    out = tmp_path / "fl.json"
    f = feature_files
    assert _run(["calibrate", "federated", "--features", str(f / "train.npz"), "--test", str(f / "test.npz"),
                 "--clients", "3", "--alpha", "inf", "--rounds", "1", "--methods", "fedavg", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["alpha"] == "inf"
    table = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("wrote ")]  # the JSON comes first
    assert "inf" in table[2]
    for bad in ("nan", "0", "-1"):
        with pytest.raises(GPUAError, match=r"--alpha=.* must be a number in \(0, inf\]; a Dirichlet concentration"):
            _run(["calibrate", "federated", "--features", str(f / "train.npz"), "--alpha", bad])


def test_cli_alpha_help_mentions_inf(capsys):
    with pytest.raises(SystemExit):
        _run(["calibrate", "federated", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "inf: an even split" in help_text.rsplit("--alpha", 1)[1].split("--methods")[0]


# -- 2. a diverging FedAvg said nothing --------------------------------------------------------
def _clients(data, n=4):
    X, y, _, _ = data
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    return [(X[i], y[i]) for i in dirichlet_split(y, n, 0.5, random_state=0)]


@pytest.mark.parametrize("lr", [1e3, 1e4, 1e6])
def test_fedavg_divergence_is_an_error_naming_lr(data, lr):
    """lr=1e3 gave 15% (chance) and lr=1e4 0.3% accuracy on a problem it solves at 90%: the
    weights blew up but stayed finite, so no NaN check fired."""
    with pytest.raises(GPUAError, match=r"FedAvg diverged.*lr=.*smaller lr"):
        fedavg(_clients(data), 10, rounds=30, lr=lr, weight_decay=1e-3, random_state=0)


@pytest.mark.parametrize("lr", [0.05, 1.0, 10.0])
def test_fedavg_normal_runs_unchanged(data, lr):
    model = fedavg(_clients(data), 10, rounds=30, lr=lr, weight_decay=1e-3, random_state=0)
    assert model.score(*_clients(data, 1)[0]) > 0.8


def test_cli_names_the_lr_flag(feature_files):
    f = feature_files
    with pytest.raises(GPUAError, match=r"FedAvg diverged.*--lr 1e\+06.*smaller --lr"):
        _run(["calibrate", "federated", "--features", str(f / "train.npz"), "--test", str(f / "test.npz"),
              "--clients", "3", "--alpha", "0.5", "--rounds", "3", "--methods", "fedavg", "--lr", "1e6"])


def test_long_tail_counts_say_they_are_after_the_held_out_rows(tmp_path):
    """'class(es) [0, 1] have [1, 1] sample(s)' of a file holding 2 per class: the default
    --test-fraction had held one of each out, which the message did not say."""
    from gpua.synthetic import make_planted

    f = make_planted(n_samples=300, n_classes=5, random_state=0).feature_set()
    idx = np.concatenate([np.flatnonzero(f.labels == k)[:2] for k in range(5)])
    save_features(tmp_path / "two.npz", vfm_features=f.vfm_features[idx], labels=f.labels[idx])
    with pytest.raises(GPUAError, match=r"Counted after --test-fraction 0.3 held out test rows; pass --test FILE"):
        _run(["calibrate", "longtail", "--features", str(tmp_path / "two.npz"), "--imbalance", "10"])


def test_a_dirichlet_split_that_cannot_be_drawn_names_what_the_command_line_can_change():
    with pytest.raises(GPUAError, match=r"use fewer clients or a larger alpha") as e:
        dirichlet_split(np.repeat(np.arange(5), 8), n_clients=10, alpha=1e-6, random_state=0)
    assert "lower min_size or n_clients" not in str(e.value)


def test_a_divergence_from_a_huge_weight_decay_names_it(tmp_path):
    """--weight-decay 1e5 diverged with "pass a smaller --lr (try --lr 0.005)", and so on down a chain of --lr values."""
    from gpua.synthetic import make_planted

    f = make_planted(n_samples=300, n_classes=5, random_state=0).feature_set()
    save_features(tmp_path / "f.npz", vfm_features=f.vfm_features, labels=f.labels)
    run = ["calibrate", "federated", "--features", str(tmp_path / "f.npz"), "--alpha", "0.5", "--methods", "fedavg"]
    with pytest.raises(GPUAError, match=r"--lr x --weight-decay = 5000 .* use a --weight-decay below 20") as e:
        _run([*run, "--weight-decay", "1e5"])
    assert "smaller --lr" not in str(e.value)
    with pytest.raises(GPUAError, match=r"with --lr 10000; use a smaller --lr \(try --lr 0.1\)"):
        _run([*run, "--lr", "1e4"])
