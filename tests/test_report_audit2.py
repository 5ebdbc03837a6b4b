"""Result tables, JSON, CSV and plots: a second audit of gpua.report (each test but the last failed before its fix)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.features import FeatureSet
from gpua.report import compare_methods, format_class_report, plot_confusion_matrix, write_json, write_predictions


def _pair(vfm_a="offline:dinov2-s", vfm_b="offline:dinov2-s", vlm_b="offline:semantic-lite0"):
    from gpua.synthetic import make_planted

    d = make_planted(120, 4, 8, 6, 4, random_state=0)

    def fs(vfm, vlm, rows):  # disjoint rows: the same rows would be warned about as leakage
        return FeatureSet(vfm_features=d.vfm_features[rows], vlm_features=d.vlm_features[rows], text_prototypes=d.text_prototypes,
                          labels=d.labels[rows], classnames=["a", "b", "c", "d"], meta={"vfm": {"spec": vfm}, "vlm": {"spec": vlm}})

    return fs(vfm_a, "offline:semantic-lite0", slice(0, 60)), fs(vfm_b, vlm_b, slice(60, None))


@pytest.mark.parametrize("other", [{"vfm_b": "offline:other"}, {"vlm_b": "offline:other-vlm"}])
def test_compare_warns_when_the_test_features_come_from_other_encoders(other):
    train, test = _pair(**other)
    # was: scored without a word, as evaluate / predict / calibrate warn
    with pytest.warns(UserWarning, match=r"offline:other.*but the methods are fitted on the training features, extracted with"):
        compare_methods(train, test, ["zero_shot"])
    train, test = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_methods(train, test, ["zero_shot"])  # the same encoders: no warning


def _report(names):
    from gpua.metrics import classification_report, confusion_matrix

    y, p = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    return (classification_report(y, p, classnames=names),
            {"classnames": names, "rows_true_columns_predicted": confusion_matrix(y, p, len(names)).tolist()})


def test_confusion_table_columns_stay_distinct_when_names_share_their_first_characters():
    names = ["category_1", "category_2", "category_3"]
    text = format_class_report(*_report(names))
    lines = text.splitlines()
    header = lines[lines.index("confusion matrix (rows: true class, columns: predicted)") + 1].split()
    assert len(set(header)) == 3  # was: "category" three times, columns that cannot be told apart
    # each row says which column is its own
    rows = lines[lines.index("confusion matrix (rows: true class, columns: predicted)") + 2:]
    for k, (name, row) in enumerate(zip(names, rows)):
        assert row.split()[:2] == [header[k], name]


def test_class_report_says_why_absent_classes_pull_the_macro_average_down():
    from gpua.metrics import classification_report

    rep = classification_report(np.array([0, 0, 1]), np.array([0, 0, 1]), classnames=["a", "b", "c", "d"])
    text = format_class_report(rep)
    # recall 100% for every class present, macro avg 50%: was printed without a word, next to a
    # mean per-class recall of 100% in evaluate's table
    assert "2 classes have no test images" in text and "mean_per_class_recall" in text
    assert "no test images" not in format_class_report(classification_report([0, 1], [0, 0], classnames=["a", "b"]))


def test_plot_writes_class_names_as_they_are(tmp_path):
    pytest.importorskip("matplotlib")
    names = [r"$\foo$ bar", "$5 or $10", "plain"]
    # was: ValueError (matplotlib read the names as TeX math: unknown symbol \foo)
    out = plot_confusion_matrix(tmp_path / "c.png", {"classnames": names, "rows_true_columns_predicted": np.eye(3, dtype=int).tolist()},
                                title="$x$ test.npz")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    try:
        matplotlib.use("pdf")  # a notebook's inline backend, say
        plot_confusion_matrix(tmp_path / "c.png", {"classnames": ["a", "b"], "rows_true_columns_predicted": [[1, 0], [0, 1]]})
        assert matplotlib.get_backend() == "pdf"  # was: switched to Agg, figures no longer shown
    finally:
        matplotlib.use(before)


def test_write_json_writes_strict_json(tmp_path):
    obj = {"a": float("nan"), "b": [np.float32("inf"), -np.inf], "c": np.float64(0.5), "d": np.bool_(True), "e": {np.int64(3): np.arange(2)}}
    text = write_json(tmp_path / "r.json", obj).read_text()

    def refuse(word):
        raise ValueError(f"{word} is not JSON")

    # was: NaN / Infinity / -Infinity (invalid JSON for strict readers: JavaScript, jq), np.bool_ as the string "True",
    # and a TypeError for a numpy integer key
    back = json.loads(text, parse_constant=refuse)
    from gpua import __version__

    # the first key marks a report gpua wrote (a later run may replace it, and only it)
    assert list(back)[0] == "written_by" and back.pop("written_by") == f"gpua {__version__}"
    assert back == {"a": None, "b": [None, None], "c": 0.5, "d": True, "e": {"3": [0, 1]}}


def test_write_predictions_checks_the_class_names_against_the_columns(tmp_path):
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    # a numpy array of names: was "truth value of an array ... is ambiguous"
    write_predictions(tmp_path / "p.csv", [(["x", "y"], proba, None)], np.array(["cat", "dog"]), top_k=1)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert [r["prediction"] for r in rows] == ["cat", "dog"]
    # was: an IndexError traceback (too few names) or the predictions named from a longer list without a word
    for names in (["cat"], ["cat", "dog", "eel"]):
        with pytest.raises(GPUAError, match="classnames has"):
            write_predictions(tmp_path / "q.csv", [(["x", "y"], proba, None)], names, top_k=1)
        assert not (tmp_path / "q.csv").exists()


def test_predictions_csv_keeps_ids_and_names_exactly(tmp_path):
    """A decision, pinned (passed before): the CSV holds image ids and class names as they are, so
    that it joins back to the images; no formula escaping (a leading ``'`` would change the ids)."""
    ids = ['=HYPERLINK("http://x","y")', "a,b.jpg", "line\nbreak.png", '+1.png', "-2.png", "@3.png"]
    names = ["=1+2", 'say "hi"', "cat, tabby"]
    proba = np.tile([0.7, 0.2, 0.1], (len(ids), 1))
    write_predictions(tmp_path / "p.csv", [(ids, proba, None)], names, top_k=3)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert [r["image"] for r in rows] == ids
    assert [rows[0][f"top{i}"] for i in (1, 2, 3)] == names


def test_benchmark_rows_and_calibrate_json_are_strict_json(tmp_path):
    from gpua.benchmark import _write_rows
    from gpua.report import json_text

    assert json_text({"a": float("inf"), "b": np.float32(0.5), "c": [np.nan]}, indent=None) == '{"a": null, "b": 0.5, "c": [null]}'
    _write_rows(tmp_path / "r.jsonl", [{"metrics": {"acc1": float("nan")}}, {"metrics": {"acc1": 0.5}}])
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    # was: json.dumps wrote NaN, which strict readers (jq, JavaScript) refuse
    assert [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) for line in lines] == [
        {"metrics": {"acc1": None}}, {"metrics": {"acc1": 0.5}}]


def test_evaluate_records_test_features_of_other_encoders_in_its_result():
    """The warning went to stderr only; the JSON said the model's VFM as if it were the test features'."""
    from gpua import GPUA
    from gpua.report import evaluate_model

    train, test = _pair(vfm_b="offline:other")
    model = GPUA(n_steps=5, self_learning=0).fit(train.vfm_features, train.vlm_features, train.text_prototypes,
                                                 classnames=train.classnames)
    model.provenance_ = {"vfm": {"spec": "offline:dinov2-s"}, "vlm": {"spec": "offline:semantic-lite0"}}
    with pytest.warns(UserWarning, match="offline:other"):
        res = evaluate_model(model, test)
    assert res["gpua"]["test_encoders_differ"] == {"vfm": {"model": "offline:dinov2-s", "test": "offline:other"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = evaluate_model(model, _pair()[1])
    assert "test_encoders_differ" not in same["gpua"]


def test_compare_json_says_the_encoders_version_and_notes(tmp_path, capsys):
    from gpua import __version__
    from gpua.cli import main
    from gpua.features import save_features

    train, test = _pair()
    for name, fs in (("train", train), ("test", test)):
        save_features(tmp_path / f"{name}.npz", vfm_features=fs.vfm_features, vlm_features=fs.vlm_features,
                      text_prototypes=fs.text_prototypes, labels=fs.labels, classnames=fs.classnames, meta=fs.meta)
    out = tmp_path / "cmp.json"
    assert main(["compare", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--methods",
                 "gpua,lambda_1", "--lam", "0.3", "--n-steps", "5", "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert (data["vfm"], data["vlm"], data["gpua_version"]) == ("offline:dinov2-s", "offline:semantic-lite0", __version__)
    assert data["notes"] == ["lambda_1 does not apply lam=0.3 (its own setting, or not its parameter)"]  # was on stdout only
