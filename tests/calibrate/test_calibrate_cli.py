import argparse
import json

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.cli.calibrate import add_subcommands
from gpua.features import save_features


def _run(argv):
    parser = argparse.ArgumentParser(prog="gpua")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory, gaussians):
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    P = rng.normal(size=(16, 8))
    protos = rng.normal(size=(10, 8))
    names = [f"class{k}" for k in range(10)]
    for split, X, y in (("train", gaussians["X"], gaussians["y"]), ("test", gaussians["X_test"], gaussians["y_test"])):
        save_features(d / f"{split}.npz", vfm_features=X, vlm_features=X @ P, text_prototypes=protos, labels=y, classnames=names)
    save_features(d / "unlabelled.npz", vfm_features=gaussians["X"], vlm_features=gaussians["X"] @ P, text_prototypes=protos)
    return d


def test_longtail_command(feature_files, tmp_path, capsys):
    out = tmp_path / "lt.json"
    code = _run(["calibrate", "longtail", "--features", str(feature_files / "train.npz"), "--test",
                 str(feature_files / "test.npz"), "--imbalance", "10", "--methods", "plain", "calibrate",
                 "calibrate+borrow-text", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibrate+borrow-text" in printed and "head" in printed
    payload = json.loads(out.read_text())
    assert payload["command"] == "calibrate longtail" and payload["space"] == "vfm"
    assert [r["method"] for r in payload["rows"]] == ["plain", "calibrate", "calibrate+borrow-text"]


def test_federated_command_vlm_space_held_out(feature_files, tmp_path, capsys):
    out = tmp_path / "fl.json"
    code = _run(["calibrate", "federated", "--features", str(feature_files / "train.npz"), "--space", "vlm",
                 "--clients", "3", "--alpha", "0.5", "--rounds", "1", "--share", "shape", "--components", "3",
                 "--methods", "fedavg", "fedavg+calibrate", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["fedavg", "fedavg+calibrate"] and rows[0]["clients"] == 3
    assert "alpha" in capsys.readouterr().out


def test_unlabelled_file_is_a_clear_error(feature_files):
    with pytest.raises(GPUAError, match="'labels'"):
        _run(["calibrate", "longtail", "--features", str(feature_files / "unlabelled.npz")])


def test_through_gpua_main(feature_files, capsys):
    from gpua.cli import main

    assert main(["calibrate", "longtail", "--features", str(feature_files / "unlabelled.npz")]) == 2
    assert "labels" in capsys.readouterr().err
    assert main(["calibrate"]) == 2
