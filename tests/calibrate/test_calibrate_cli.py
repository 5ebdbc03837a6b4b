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


def _projection_prototypes_names():
    """The stand-in VLM projection, text prototypes and class names every feature file here shares."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 8)), rng.normal(size=(10, 8)), [f"class{k}" for k in range(10)]


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory, gaussians):
    d = tmp_path_factory.mktemp("calib")
    P, protos, names = _projection_prototypes_names()
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


def _rows(argv, out):
    assert _run(argv + ["--json", str(out)]) == 0
    return json.loads(out.read_text())["rows"]


@pytest.fixture(scope="module")
def reordered_test(tmp_path_factory, gaussians):
    """The test split stored with its classes in another order (names permuted, labels remapped)."""
    d = tmp_path_factory.mktemp("calib_perm")
    P, protos, names = _projection_prototypes_names()
    perm = np.random.default_rng(1).permutation(10)  # old class k is stored as class perm[k]
    new_names = [None] * 10
    for k in range(10):
        new_names[perm[k]] = names[k]
    Xt = gaussians["X_test"]
    save_features(d / "perm.npz", vfm_features=Xt, vlm_features=Xt @ P, text_prototypes=protos[np.argsort(perm)],
                  labels=perm[gaussians["y_test"]], classnames=new_names)
    other = list(names)
    other[3] = "zebra"
    save_features(d / "other.npz", vfm_features=Xt, vlm_features=Xt @ P, text_prototypes=protos,
                  labels=gaussians["y_test"], classnames=other)
    return d


@pytest.mark.parametrize("command", [
    ["longtail", "--imbalance", "10", "--methods", "plain"],
    ["federated", "--clients", "2", "--alpha", "0.5", "--rounds", "1", "--methods", "centralised"],
], ids=["longtail", "federated"])
def test_test_file_classes_are_matched_by_name(feature_files, reordered_test, tmp_path, command):
    # --test used to compare only the widths: a test file storing the same classes in another
    # order was scored against the wrong classes (20% where the same order gave 100%).
    base = ["calibrate", *command, "--features", str(feature_files / "train.npz"), "--test"]
    same = _rows(base + [str(feature_files / "test.npz")], tmp_path / "same.json")
    perm = _rows(base + [str(reordered_test / "perm.npz")], tmp_path / "perm.json")
    assert same[0]["all"] > 0.5
    assert [r["all"] for r in perm] == [r["all"] for r in same]
    with pytest.raises(GPUAError, match=r"only in --test .*'zebra'.*only in --features .*'class3'"):
        _run(base + [str(reordered_test / "other.npz")])


def test_test_file_from_other_encoders_is_flagged(gaussians, tmp_path):
    X, Xt = gaussians["X"], gaussians["X_test"]
    names = [f"class{k}" for k in range(10)]
    save_features(tmp_path / "a.npz", vfm_features=X, labels=gaussians["y"], classnames=names,
                  meta={"vfm": {"spec": "dinov2:vits14"}})
    save_features(tmp_path / "b.npz", vfm_features=Xt, labels=gaussians["y_test"], classnames=names,
                  meta={"vfm": {"spec": "dinov2:vitl14"}})
    with pytest.warns(UserWarning, match=r"--test .*VFM features of 'dinov2:vitl14'.*'dinov2:vits14'"):
        _run(["calibrate", "longtail", "--features", str(tmp_path / "a.npz"), "--test", str(tmp_path / "b.npz"),
              "--imbalance", "10", "--methods", "plain"])


def test_held_out_fraction_that_leaves_nothing_names_the_flag(feature_files):
    # It used to report "features is empty (shape (0, 16))".
    with pytest.raises(GPUAError, match=r"--test-fraction=0\.999 would hold out every sample .*0 of the 2000 rows.*at most 0\.995"):
        _run(["calibrate", "longtail", "--features", str(feature_files / "train.npz"), "--test-fraction", "0.999"])


def test_negative_labels_name_the_file_and_the_fix(feature_files, gaussians, tmp_path):
    np.savez(tmp_path / "neg.npz", vfm_features=gaussians["X"], labels=gaussians["y"] - 1)
    # It used to say "labels holds values outside [0, 9223372036854775807)".
    with pytest.raises(GPUAError, match=r"--features .*neg\.npz.* labels has negative values \(smallest: -1\); labels must be class indices >= 0"):
        _run(["calibrate", "longtail", "--features", str(tmp_path / "neg.npz")])
    with pytest.raises(GPUAError, match=r"--test .*neg\.npz.* labels has negative values"):
        _run(["calibrate", "federated", "--features", str(feature_files / "train.npz"), "--test", str(tmp_path / "neg.npz")])


def test_imbalance_flag_is_named(feature_files):
    with pytest.raises(GPUAError, match=r"--imbalance=inf must be a finite number >= 1; "):
        _run(["calibrate", "longtail", "--features", str(feature_files / "train.npz"), "--imbalance", "10", "inf"])
