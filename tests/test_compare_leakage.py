"""``compare`` says when test rows are rows it fits on (the same images in both files): an optimistic score otherwise unsaid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpua.cli import main
from gpua.features import FeatureSet, save_features
from gpua.report import compare_methods


def _features(part, rows=slice(None)) -> FeatureSet:
    return FeatureSet(vfm_features=part.vfm_features[rows], vlm_features=part.vlm_features[rows],
                      text_prototypes=part.text_prototypes, labels=part.labels[rows], classnames=part.classnames)


def test_test_rows_copied_from_the_pool_are_warned_about(planted):
    train, test = planted
    leaky = FeatureSet(vfm_features=np.vstack([test.vfm_features[:200], train.vfm_features[:5]]),
                       vlm_features=np.vstack([test.vlm_features[:200], train.vlm_features[:5]]),
                       text_prototypes=test.text_prototypes, labels=np.concatenate([test.labels[:200], train.labels[:5]]),
                       classnames=test.classnames)
    # was: scored without a word
    with pytest.warns(UserWarning, match=r"5 row\(s\) of the test features are identical to rows of the training features"):
        compare_methods(_features(train), leaky, ["zero_shot"])


def test_disjoint_files_are_not_warned_about(planted):
    train, test = planted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = compare_methods(_features(train), _features(test, slice(0, 200)), ["zero_shot"])
    assert rows[0]["method"] == "zero_shot"


def test_the_cli_names_both_files(planted, tmp_path, capsys):
    train, test = planted
    save_features(tmp_path / "train.npz", vfm_features=train.vfm_features, vlm_features=train.vlm_features,
                  text_prototypes=train.text_prototypes, labels=train.labels, classnames=train.classnames)
    save_features(tmp_path / "test.npz", vfm_features=train.vfm_features[:50], vlm_features=train.vlm_features[:50],
                  text_prototypes=train.text_prototypes, labels=train.labels[:50], classnames=train.classnames)
    assert main(["compare", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                 "--methods", "zero_shot", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "50 row(s) of --test" in err and "identical to rows of --train" in err and "data leakage" in err


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError("out of memory")])
def test_compare_keeps_the_rows_scored_before_a_method_stops(stop, planted, tmp_path, monkeypatch, capsys):
    """Was: the JSON was written only after every method, so a failing or interrupted third method lost two fits."""
    import json

    import gpua.report as report

    train, test = planted
    paths = [save_features(tmp_path / f"{n}.npz", vfm_features=p.vfm_features, vlm_features=p.vlm_features,
                           text_prototypes=p.text_prototypes, labels=p.labels) for n, p in (("train", train), ("test", test))]
    real = report.make_method

    def failing(name, **kw):
        if name == "gpua":
            raise stop
        return real(name, **kw)

    monkeypatch.setattr(report, "make_method", failing)
    out = tmp_path / "c.json"
    argv = ["compare", "--train", str(paths[0]), "--test", str(paths[1]), "--methods", "zero_shot,procrustes_only,gpua,reference",
            "--no-refine", "--json", str(out)]
    if isinstance(stop, type):
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="out of memory"):
            main(argv)
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved["results"]] == ["zero_shot", "procrustes_only"] and saved["complete"] is False
    assert saved["stopped"] == {"method": "gpua", "error": "KeyboardInterrupt" if isinstance(stop, type) else "out of memory",
                                "not_run": ["reference"]}
    assert "gpua stopped the comparison; the JSON holds the 2 methods scored before it" in capsys.readouterr().err
    monkeypatch.setattr(report, "make_method", real)
    assert main(argv[:6] + ["zero_shot", "--json", str(out)]) == 0 and json.loads(out.read_text())["complete"] is True


def test_compare_refuses_an_empty_json_name(planted, tmp_path, capsys):
    """Was: `--json ""` ran every method, then failed on "path '.' is an existing folder", not naming --json."""
    assert main(["compare", "--train", str(tmp_path / "a.npz"), "--test", str(tmp_path / "b.npz"), "--json", ""]) == 2
    assert "--json '': an empty name; give a file or folder name." in capsys.readouterr().err


def test_compare_writes_the_whole_result_when_the_last_progress_line_fails(planted, tmp_path, monkeypatch):
    """Was (reviewer): an error after the last row (its progress print) raised IndexError from the
    handler, hiding the error, and wrote no JSON."""
    import builtins
    import json

    train, test = planted
    paths = [save_features(tmp_path / f"{n}.npz", vfm_features=p.vfm_features, vlm_features=p.vlm_features,
                           text_prototypes=p.text_prototypes, labels=p.labels) for n, p in (("train", train), ("test", test))]
    real_print = builtins.print

    def failing_print(*args, **kwargs):
        if args and str(args[0]).lstrip().startswith("procrustes_only"):
            raise BrokenPipeError
        return real_print(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", failing_print)
    out = tmp_path / "c.json"
    main(["compare", "--train", str(paths[0]), "--test", str(paths[1]), "--methods", "zero_shot,procrustes_only", "--json", str(out)])
    monkeypatch.setattr(builtins, "print", real_print)
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved["results"]] == ["zero_shot", "procrustes_only"] and saved["complete"] is True


def test_a_methods_warnings_are_kept_with_its_row(planted, monkeypatch):
    """Was: a collapsed LFA's warning was printed, but its row (and `compare --json`) carried no word of it."""
    from gpua.baselines import VLMZeroShot

    fit = VLMZeroShot.fit

    def warning_fit(self, *a, **k):
        warnings.warn("this method collapsed", UserWarning)
        return fit(self, *a, **k)

    monkeypatch.setattr(VLMZeroShot, "fit", warning_fit)
    train, test = planted
    with pytest.warns(UserWarning, match="this method collapsed"):  # still shown
        rows = compare_methods(_features(train), _features(test, slice(0, 200)), ["zero_shot", "procrustes_only"],
                               overrides={"n_steps": 3})
    assert rows[0]["warnings"] == ["this method collapsed"] and "warnings" not in rows[1]
