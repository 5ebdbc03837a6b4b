"""``gpua demo`` walked as a first-time user: its output folder, its feature cache, its flags.

Nothing here extracts real features: ``demo_features`` is replaced by the planted feature files.
"""

from __future__ import annotations

import json

import pytest

from gpua import cli
from gpua import demo as demo_mod
from gpua._errors import GPUAError
from gpua.features import save_features

PLOT = "embedding_before_after.png"  # the plot's fixed name in --out


@pytest.fixture
def fake_features(planted, tmp_path, monkeypatch):
    """The planted train/test sets as the demo's feature files; records each extraction."""
    calls = []
    paths = {}
    for split, d in zip(("train", "test"), planted):
        paths[split] = save_features(tmp_path / f"feat_{split}.npz", d.feature_set())
    monkeypatch.setattr(demo_mod, "demo_features", lambda *a, **k: calls.append(a) or paths)
    return calls


def _run(argv, tmp_path):
    return cli.main(["demo", "--methods", "zero_shot", "--quiet", "--cache-dir", str(tmp_path / "cache"), *argv])


def test_a_users_results_json_in_out_is_not_replaced(fake_features, tmp_path, capsys):
    """``--out .`` beside one's own results.json once replaced it without a word."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "numbers"}')
    assert _run(["--out", str(out), "--no-plot"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "results.json" in err and "did not write" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / "results.json").read_text()) == {"my": "numbers"}
    assert not fake_features  # refused before any extraction


def test_a_users_png_of_the_plot_name_is_not_replaced(fake_features, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / PLOT).write_bytes(b"\x89PNG\r\n\x1a\n my own picture")
    with pytest.raises(GPUAError, match=PLOT):
        demo_mod.run_demo(out, methods=["zero_shot"], progress=False)
    assert (out / PLOT).read_bytes().endswith(b"my own picture") and not fake_features
    # Without the plot that file is not written, so it is no reason to refuse (nor called a left-over plot).
    demo_mod.run_demo(out, methods=["zero_shot"], plot=False, progress=False)
    assert "left from an earlier run" not in capsys.readouterr().out


def test_a_rerun_replaces_its_own_files_and_says_when_the_plot_is_stale(fake_features, tmp_path, capsys):
    out = tmp_path / "new" / "demo"  # missing folders are created
    demo_mod.run_demo(out, methods=["zero_shot"], progress=False)
    assert (out / "results.json").is_file() and (out / PLOT).is_file()
    demo_mod.run_demo(out, methods=["zero_shot", "gpua"], plot=False, progress=False)  # a re-run may replace them
    assert [r["method"] for r in json.loads((out / "results.json").read_text())["runs"][0]["results"]] == ["zero_shot", "gpua"]
    printed = capsys.readouterr().out
    assert f"{out / PLOT} is left from an earlier run" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(["results.json", PLOT])  # no temporary left


@pytest.mark.parametrize("inner", ["", "sub"])
def test_gpua_cache_dir_on_a_file_is_named_as_such(fake_features, tmp_path, monkeypatch, capsys, inner):
    """It used to read "out '<cache>/demo/cifar10-mini_train__...npz' lies under ...": 'out' is not --out."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("GPUA_CACHE_DIR", str(afile / inner) if inner else str(afile))
    assert cli.main(["demo", "--methods", "zero_shot", "--quiet", "--no-plot", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpua demo: error: $GPUA_CACHE_DIR ") and "cifar10-mini" not in err and len(err.strip().splitlines()) == 1
    assert not fake_features and not (tmp_path / "o").exists()


def test_cache_dir_under_a_file_names_the_flag(fake_features, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["demo", "--methods", "zero_shot", "--quiet", "--cache-dir", str(afile / "c"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpua demo: error: --cache-dir ") and "cifar10-mini" not in err


def test_an_unwritable_cache_is_one_line_naming_its_source(fake_features, tmp_path, monkeypatch):
    from gpua import _atomic

    real = _atomic.check_output

    def no_write(path, name, **kw):  # root may write anywhere: stand in for a read-only cache folder
        if str(path).startswith(str(tmp_path / "ro")):
            raise GPUAError(f"{name} {str(path)!r} cannot be written: {str(tmp_path / 'ro')!r} is not writable; choose a folder you can write to.")
        return real(path, name, **kw)

    monkeypatch.setattr(_atomic, "check_output", no_write)
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "ro"))
    with pytest.raises(GPUAError, match=r"^\$GPUA_CACHE_DIR .* cannot be written.*pass --cache-dir") as exc:
        demo_mod.run_demo(tmp_path / "o", methods=["zero_shot"], plot=False, progress=False)
    assert "\n" not in str(exc.value) and not fake_features


def test_empty_methods_is_refused_not_the_default_five(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(demo_mod, "run_demo", lambda *a, **k: seen.append(k))
    assert cli.main(["demo", "--methods", "", "--no-plot"]) == 2
    assert "--methods" in capsys.readouterr().err and not seen


def test_the_table_says_what_its_numbers_are(fake_features, tmp_path, capsys):
    demo_mod.run_demo(tmp_path / "o", methods=["zero_shot"], plot=False, progress=False)
    out = capsys.readouterr().out
    assert "acc1 (%)" in out and "unlabeled train photos, scored on" in out and "test photos" in out
    assert demo_mod.DEMO_VFMS[0] in out and demo_mod.DEMO_VLM in out


def test_a_plot_without_matplotlib_is_refused_before_any_extraction(fake_features, tmp_path, capsys, monkeypatch):
    """Was: the demo extracted and fitted every method, then stopped on the plot's missing matplotlib
    and wrote nothing, not naming --no-plot."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what an environment without matplotlib imports
    assert _run(["--out", str(tmp_path / "d")], tmp_path) == 2
    err = capsys.readouterr().err
    assert "the demo's embedding plot needs matplotlib" in err and "Or skip the plot: --no-plot." in err
    assert not fake_features and not (tmp_path / "d").exists()
    assert _run(["--out", str(tmp_path / "d"), "--no-plot"], tmp_path) == 0 and (tmp_path / "d" / "results.json").is_file()


def test_evaluate_plot_without_matplotlib_names_the_flag(planted, tmp_path, capsys, monkeypatch):
    """Was: "--the confusion-matrix plot needs matplotlib"."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.backend_bases", None)
    feats = save_features(tmp_path / "t.npz", planted[1].feature_set())
    assert cli.main(["evaluate", "--model", str(tmp_path / "m.gpua"), "--test", str(feats), "--plot", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert f"error: --plot {str(tmp_path / 'c.png')!r}: the confusion-matrix plot needs matplotlib" in err and "Or drop --plot." in err


def test_a_demo_setting_that_changes_nothing_is_refused_before_any_extraction(fake_features, tmp_path, capsys):
    """Was: `--param temperature=2` (cosine similarity takes none) was printed in the heading and applied by no method."""
    assert _run(["--out", str(tmp_path / "d"), "--param", "temperature=2", "--methods", "gpua"], tmp_path) == 2
    assert "temperature=2 changes nothing" in capsys.readouterr().err and not fake_features
