import csv
import json

import numpy as np
import pytest

from gpua.cli import main
from gpua.features import save_features


@pytest.fixture
def files(planted, tmp_path):
    train, test = planted
    paths = {}
    for name, part in (("train", train), ("test", test)):
        paths[name] = save_features(tmp_path / f"{name}.npz", vfm_features=part.vfm_features, vlm_features=part.vlm_features,
                                    text_prototypes=part.text_prototypes, labels=part.labels, classnames=part.classnames)
    return paths


def test_fit_evaluate_predict(files, tmp_path, capsys):
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--n-steps", "20", "--param", "eval_every=5"]) == 0
    assert model.exists()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(model), "--test", str(files["test"]), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert res["metrics"]["acc1"] > res["gpua"]["zero_shot_metrics"]["acc1"] + 0.2
    printed = capsys.readouterr().out
    assert "vlm_zero_shot" in printed and "acc1" in printed
    pred = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--features", str(files["test"]), "--out", str(pred)]) == 0
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 1200 and rows[0]["classname"].startswith("class_")
    assert abs(sum(float(r["label"] == r["label"]) for r in rows) - 1200) == 0


def test_compare_table(files, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["compare", "--train", str(files["train"]), "--test", str(files["test"]), "--methods", "zero_shot,procrustes_only,lfa", "--json", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["procrustes_only"]["acc1"] > rows["zero_shot"]["acc1"]


def test_cli_errors_are_clear(files, tmp_path, capsys):
    assert main(["fit", "--train", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "m.gpua")]) == 2
    assert "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", vfm_features=np.ones((3, 2)))
    assert main(["fit", "--train", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "m.gpua")]) == 2
    err = capsys.readouterr().err
    assert "vlm_features" in err and "holds ['vfm_features']" in err
    assert main(["fit", "--train", str(files["train"]), "--out", str(tmp_path / "m.gpua"), "--param", "lam"]) == 2
    assert main(["evaluate", "--model", str(files["train"]), "--test", str(files["test"])]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("fit", "evaluate", "predict", "compare"):
        assert cmd in out
