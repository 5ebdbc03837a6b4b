import csv
import json

import numpy as np
import pytest

from gpua.cli import main
from gpua.features import load_features, save_features


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
    # The zero-shot row has its hubness too (was: an empty cell beside the model's)
    zero_shot_line = next(line for line in printed.splitlines() if line.lstrip("| ").startswith("vlm_zero_shot"))
    assert f"{res['gpua']['zero_shot_metrics']['hubness_skewness']:.2f}"[:4] in zero_shot_line, printed
    pred = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--features", str(files["test"]), "--out", str(pred)]) == 0
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 1200 and rows[0]["prediction"].startswith("class_")
    assert rows[0]["prediction"] == rows[0]["top1"] and float(rows[0]["top1_probability"]) >= float(rows[0]["top2_probability"])
    assert list(rows[0])[:3] == ["image", "prediction", "probability"]


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


def _save(path, part, order=None, classnames=True, k=None):
    """The planted test set saved with its classes renumbered by ``order`` (new class j = old order[j])."""
    names = list(part.classnames)
    Y, y, keep = part.text_prototypes, part.labels, np.ones(len(part.labels), bool)
    if k is not None:  # only the first k classes
        keep = y < k
        names, Y = names[:k], Y[:k]
    y = y[keep]
    if order is not None:
        inv = np.argsort(order)
        names, Y, y = [names[o] for o in order], Y[order], inv[y]
    return save_features(path, vfm_features=part.vfm_features[keep], vlm_features=part.vlm_features[keep], text_prototypes=Y,
                         labels=y, classnames=names if classnames else None)


@pytest.fixture
def fitted(files, tmp_path):
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--n-steps", "20", "--no-progress"]) == 0
    return model


def _acc1(model, test, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", "--model", str(model), "--test", str(test), "--json", str(out)])
    captured = capsys.readouterr()
    return code, (json.loads(out.read_text())["metrics"]["acc1"] if code == 0 else None), captured.err


def test_evaluate_matches_test_classes_to_the_model_by_name(planted, files, fitted, tmp_path, capsys):
    _, test = planted
    code, base, _ = _acc1(fitted, files["test"], tmp_path, capsys)
    assert code == 0 and base > 0.5
    order = np.random.default_rng(0).permutation(10)
    shuffled = _save(tmp_path / "shuffled.npz", test, order)
    code, acc, err = _acc1(fitted, shuffled, tmp_path, capsys)
    assert code == 0 and acc == pytest.approx(base)  # by index this scores about 1/10 of it
    assert json.loads((tmp_path / "r.json").read_text())["gpua"]["classes_matched"] == "by name (reordered)"


def test_evaluate_refuses_other_classes_and_warns_without_names(planted, fitted, tmp_path, capsys):
    _, test = planted
    code, _, err = _acc1(fitted, _save(tmp_path / "five.npz", test, k=5), tmp_path, capsys)
    assert code == 2 and "5 classes" in err and "10" in err and "'class_9'" in err
    renamed = _save(tmp_path / "renamed.npz", test)
    from gpua.features import load_features

    fs = load_features(renamed)
    fs.classnames[3] = "zebra"
    save_features(renamed, fs)
    code, _, err = _acc1(fitted, renamed, tmp_path, capsys)
    assert code == 2 and "'zebra'" in err and "'class_3'" in err and "gpua evaluate: error:" in err
    code, acc, err = _acc1(fitted, _save(tmp_path / "nonames.npz", test, classnames=False), tmp_path, capsys)
    assert code == 0 and acc > 0.5 and "gpua evaluate: warning:" in err and "by index" in err


def test_compare_matches_classes_by_name(planted, files, tmp_path, capsys):
    _, test = planted
    shuffled = _save(tmp_path / "shuffled.npz", test, np.random.default_rng(1).permutation(10))
    accs = []
    for t in (files["test"], shuffled):
        out = tmp_path / "c.json"
        assert main(["compare", "--train", str(files["train"]), "--test", str(t), "--methods", "zero_shot,procrustes_only", "--json", str(out)]) == 0
        accs.append([r["acc1"] for r in json.loads(out.read_text())["results"]])
    assert accs[0] == pytest.approx(accs[1])
    assert main(["compare", "--train", str(files["train"]), "--test", str(_save(tmp_path / "five.npz", test, k=5))]) == 2
    assert main(["compare", "--train", str(files["train"]), "--test", str(files["test"]), "--methods", "gpua,nope"]) == 2
    assert "'nope'" in capsys.readouterr().err


def test_compare_prints_one_unit_and_flags_acc5(planted, tmp_path, capsys):
    train, test = planted
    paths = [_save(tmp_path / f"{n}.npz", part, k=4) for n, part in (("tr", train), ("te", test))]
    assert main(["compare", "--train", str(paths[0]), "--test", str(paths[1]), "--methods", "zero_shot"]) == 0
    out = capsys.readouterr().out
    progress = next(line for line in out.splitlines() if line.strip().startswith("zero_shot") and "%" in line)
    table = next(line for line in out.splitlines() if line.startswith("zero_shot") and "%" not in line)
    assert progress.split("acc1")[1].split("%")[0].strip() == table.split()[1]  # the same number, in percent
    assert "acc1 (%)" in out and "100.00*" in out and "by construction" in out


def test_predict_warns_when_the_file_names_other_classes(planted, fitted, tmp_path, capsys):
    _, test = planted
    shuffled = _save(tmp_path / "shuffled.npz", test, np.random.default_rng(2).permutation(10))
    capsys.readouterr()
    assert main(["predict", "--model", str(fitted), "--features", str(_save(tmp_path / "five.npz", test, k=5)), "--out", str(tmp_path / "p.csv")]) == 0
    assert "warning:" not in capsys.readouterr().err  # some of the model's classes: nothing to say (was: a warning)
    other = save_features(tmp_path / "other.npz", vfm_features=test.vfm_features, vlm_features=test.vlm_features,
                          classnames=[f"thing_{k}" for k in range(10)])
    assert main(["predict", "--model", str(fitted), "--features", str(other), "--out", str(tmp_path / "p.csv")]) == 0
    assert "warning:" in capsys.readouterr().err  # classes the model does not have
    assert main(["predict", "--model", str(fitted), "--features", str(shuffled), "--out", str(tmp_path / "p.csv"), "--top-k", "2"]) == 0
    assert "warning" not in capsys.readouterr().err  # same classes, other order: the model's names are right
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert "top3" not in rows[0] and rows[0]["top2"].startswith("class_")


def test_fit_records_provenance_and_evaluate_names_the_encoders(files, tmp_path, capsys):
    from gpua import load_model
    from gpua.features import load_features

    fs = load_features(files["train"])
    fs.meta = {"vfm": {"spec": "offline:dinov2-s"}, "vlm": {"spec": "offline:semantic-lite0"}, "templates": ["a {}."],
               "cache_key": "abc", "dataset": {"name": "planted", "split": "train"}}
    from gpua.features._io import writing_extraction

    with writing_extraction():  # as gpua extract writes it: the one writer whose cache key stays
        save_features(tmp_path / "train.npz", fs)
    test = load_features(files["test"])
    test.meta = {**fs.meta, "dataset": {"name": "planted", "split": "test"}}
    save_features(tmp_path / "test.npz", test)
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--out", str(model), "--n-steps", "10"]) == 0
    out = capsys.readouterr()
    assert "UCM rounds" in out.err  # progress bars, as the streamed fit shows
    assert "not an accuracy" in out.out
    # the probability column's scale, said where it was chosen (was: only in the model file)
    assert f"probabilities at softmax scale {load_model(model).proba_scale_:.3g}, chosen on the pool without labels" in out.out
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--out", str(tmp_path / "m2.gpua"), "--n-steps", "10",
                 "--param", "proba_scale=none"]) == 0
    assert "softmax scale" not in capsys.readouterr().out  # no scale chosen: CLIP's logit_scale, as before
    prov = load_model(model).provenance_
    assert prov["vfm"] == "offline:dinov2-s" and prov["vlm"] == "offline:semantic-lite0" and prov["templates"] == ["a {}."]
    assert prov["features"]["cache_key"] == "abc" and prov["classnames"] == fs.classnames
    assert main(["evaluate", "--model", str(model), "--test", str(tmp_path / "test.npz"), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert (res["dataset"], res["vfm"], res["vlm"], res["task"]) == ("planted/test", "offline:dinov2-s", "offline:semantic-lite0", "zeroshot_classification")
    assert set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    test.meta["vfm"] = {"spec": "offline:efficientnet-lite2"}
    save_features(tmp_path / "test2.npz", test)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--test", str(tmp_path / "test2.npz")]) == 0
    assert "offline:efficientnet-lite2" in capsys.readouterr().err


def test_evaluate_report_and_plot(files, fitted, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "cm.png"
    assert main(["evaluate", "--model", str(fitted), "--test", str(files["test"]), "--report", "--plot", str(png), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision (%)" in printed and "confusion matrix" in printed and "class_9" in printed
    res = json.loads(out.read_text())
    assert set(res["per_class"]["class_0"]) == {"precision", "recall", "f1-score", "support"}
    C = np.asarray(res["confusion_matrix"]["rows_true_columns_predicted"])
    assert C.shape == (10, 10) and C.sum() == 1200
    assert np.trace(C) / C.sum() == pytest.approx(res["metrics"]["acc1"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_and_predict_read_shard_sets(planted, files, fitted, tmp_path, capsys):
    from gpua.features import write_shards

    _, test = planted
    shards = tmp_path / "test_shards"
    write_shards(shards, test.vfm_features, test.vlm_features, labels=test.labels, text_prototypes=test.text_prototypes,
                 classnames=test.classnames, rows_per_shard=500, dtype="float32")
    r1, r2 = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", "--model", str(fitted), "--test", str(files["test"]), "--json", str(r1)]) == 0
    assert main(["evaluate", "--model", str(fitted), "--test", str(shards), "--json", str(r2)]) == 0
    assert json.loads(r1.read_text())["metrics"] == pytest.approx(json.loads(r2.read_text())["metrics"])
    assert main(["predict", "--model", str(fitted), "--features", str(shards), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 1200


def test_compare_says_which_overrides_a_method_does_not_apply(files, tmp_path, capsys):
    base = ["compare", "--train", str(files["train"]), "--test", str(files["test"])]
    # was: --lam 0.5 and rho applied by neither method, the table unchanged and nothing said
    assert main(base + ["--methods", "lambda_1,zero_shot", "--lam", "0.5", "--param", "rho=0.1"]) == 2
    assert "none of --methods lambda_1,zero_shot applies it" in capsys.readouterr().err
    out = tmp_path / "c.json"
    assert main(base + ["--methods", "zero_shot,gpua,procrustes_only", "--n-steps", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: zero_shot does not apply n_steps=5" in printed and "note: procrustes_only does not apply n_steps=5" in printed
    assert json.loads(out.read_text())["params"] == {"n_steps": 5}
    # was: refinement settings taken, and without effect, where no refinement runs
    assert main(base + ["--methods", "procrustes_only", "--n-steps", "5"]) == 2
    assert "applies it (they take no such parameter, set it themselves, or do not refine)" in capsys.readouterr().err
    assert main(base + ["--methods", "gpua", "--no-refine", "--param", "lr=1000"]) == 2
    assert "lr=1000: a setting of the THS refinement, which --no-refine turns off; drop it, or refine." in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--param", "lr=0.1"], ["--n-steps", "50", "--param", "k=5"]])
def test_fit_refuses_refinement_settings_with_no_refine(files, tmp_path, capsys, extra):
    """Was: `fit --no-refine --param lr=0.1` fitted without the setting (which no refinement ran) and said nothing."""
    assert main(["fit", "--train", str(files["train"]), "--out", str(tmp_path / "m.gpua"), "--no-refine"] + extra) == 2
    err = capsys.readouterr().err
    assert "of the THS refinement, which --no-refine turns off; drop it, or refine." in err and not (tmp_path / "m.gpua").exists()


def test_predict_says_a_top_k_above_the_class_count(files, tmp_path, capsys):
    """Was: --top-k 11 of a 10-class model wrote the top-10 without a word."""
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--no-refine"]) == 0
    capsys.readouterr()
    n_classes = len(load_features(files["train"]).classnames)
    assert main(["predict", "--model", str(model), "--features", str(files["test"]), "--out", str(tmp_path / "p.csv"),
                 "--top-k", str(n_classes + 1)]) == 0
    assert f"--top-k {n_classes + 1} is more than the model's {n_classes} classes" in capsys.readouterr().out


def _predicted(tmp_path, model, features, *extra):
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--features", str(features), "--out", str(out), *extra]) == 0
    return list(csv.DictReader(out.open()))


def test_predict_writes_the_files_labels_named_as_the_models_classes(planted, fitted, tmp_path, capsys):
    """Was: predict on a labelled feature file wrote no label column (classify writes one for a labelled folder)."""
    from gpua.features import write_shards

    _, test = planted
    truth = [test.classnames[int(c)] for c in test.labels]
    capsys.readouterr()
    rows = _predicted(tmp_path, fitted, _save(tmp_path / "test.npz", test))
    printed = capsys.readouterr()
    assert [r["label"] for r in rows] == truth and "warning" not in printed.err
    assert ", label (the file's labels" in printed.out
    # the file's classes in another order: the labels are renumbered, the names still the true ones
    order = np.random.default_rng(2).permutation(10)
    assert [r["label"] for r in _predicted(tmp_path, fitted, _save(tmp_path / "shuffled.npz", test, order))] == truth
    # a shard set, read in chunks
    shards = tmp_path / "shards"
    write_shards(shards, test.vfm_features, test.vlm_features, labels=test.labels, text_prototypes=test.text_prototypes,
                 classnames=test.classnames, rows_per_shard=500, dtype="float32")
    sharded = _predicted(tmp_path, fitted, shards)
    assert [r["label"] for r in sharded] == truth
    assert [r["prediction"] for r in sharded] == [r["prediction"] for r in rows]
    # a file naming no classes: matched by index, said so
    capsys.readouterr()
    assert [r["label"] for r in _predicted(tmp_path, fitted, _save(tmp_path / "anon.npz", test, classnames=False))] == truth
    assert "the label column: " in capsys.readouterr().err


def test_predict_leaves_out_labels_it_cannot_name(planted, fitted, tmp_path, capsys):
    _, test = planted
    capsys.readouterr()
    # five of the model's ten classes, in another order: labelled by name, nothing to warn about
    # (was: no label column, and a warning that "scores would compare unrelated classes")
    five = test.labels < 5
    rows = _predicted(tmp_path, fitted, _save(tmp_path / "five.npz", test, order=[3, 1, 4, 0, 2], k=5))
    assert [r["label"] for r in rows] == [test.classnames[int(c)] for c in test.labels[five]]
    assert "warning" not in capsys.readouterr().err
    # a class the model lacks: said; its rows keep the column only while no row is labelled with it
    names = list(test.classnames)
    names[9] = "frog"
    odd = save_features(tmp_path / "odd.npz", vfm_features=test.vfm_features, vlm_features=test.vlm_features,
                        text_prototypes=test.text_prototypes, labels=test.labels, classnames=names)
    rows = _predicted(tmp_path, fitted, odd)
    err = capsys.readouterr().err
    assert "names 1 class(es) that model" in err and "'frog'" in err and "label column is left out" in err
    assert "label" not in rows[0] and len(rows) == len(test.labels)
    nine = test.labels < 9
    odd9 = save_features(tmp_path / "odd9.npz", vfm_features=test.vfm_features[nine], vlm_features=test.vlm_features[nine],
                         text_prototypes=test.text_prototypes, labels=test.labels[nine], classnames=names)
    rows = _predicted(tmp_path, fitted, odd9)
    err = capsys.readouterr().err
    assert "'frog'" in err and "left out" not in err
    assert [r["label"] for r in rows] == [test.classnames[int(c)] for c in test.labels[nine]]
    # a label beyond the classes of a file naming none: refused for the column, not for the predictions
    y = test.labels.copy()
    y[0] = 10
    bad = save_features(tmp_path / "bad.npz", vfm_features=test.vfm_features, vlm_features=test.vlm_features, labels=y)
    rows = _predicted(tmp_path, fitted, bad)
    err = capsys.readouterr().err
    assert "label" not in rows[0] and len(rows) == len(y)
    assert "outside [0, 10)" in err and "The label column is left out" in err
    # a file without labels: no column, no warning about labels
    plain = save_features(tmp_path / "plain.npz", vfm_features=test.vfm_features, vlm_features=test.vlm_features,
                          text_prototypes=test.text_prototypes, classnames=test.classnames)
    rows = _predicted(tmp_path, fitted, plain)
    printed = capsys.readouterr()
    assert "label" not in rows[0] and "label" not in printed.err and ", label (" not in printed.out


def test_the_fit_summary_says_when_refinement_kept_the_procrustes_map():
    """Was: "6 refinement checkpoints" whether or not any was kept (a GPUA row equal to procrustes_only's looked like a bug)."""
    from gpua.cli._common import refinement_note

    rising = {"refine": [{"step": 0, "val_loss": 1.0}, {"step": 5, "train_loss": 0.9, "val_loss": 1.1}, {"step": 10, "val_loss": 1.2}]}
    assert refinement_note(rising) == "3 refinement checkpoints, the Procrustes map kept: no step lowered the held-out THS loss"
    falling = {"refine": [{"step": 0, "val_loss": 1.0}, {"step": 5, "val_loss": 0.8}, {"step": 10, "val_loss": 0.9}]}
    assert refinement_note(falling) == "3 refinement checkpoints"
    assert refinement_note({"refine": []}) == "0 refinement checkpoints"
