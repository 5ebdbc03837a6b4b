"""The demo's pieces that run without extracting real features: method comparison, plot, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from gpua import cli
from gpua import demo as demo_mod
from gpua.features import FeatureSet
from gpua.report import compare_methods


def _feature_set(d) -> FeatureSet:
    return d.feature_set()


def test_compare_methods_returns_the_fitted_estimators(planted):
    train, test = map(_feature_set, planted)
    rows, fitted = compare_methods(train, test, ["zero_shot", "procrustes_only"], return_estimators=True)
    assert [r["method"] for r in rows] == list(fitted) == ["zero_shot", "procrustes_only"]
    for row in rows:
        est = fitted[row["method"]]
        assert est.score(test.vfm_features, test.labels, test.vlm_features) == pytest.approx(row["acc1"])
    assert isinstance(compare_methods(train, test, ["zero_shot"]), list)  # default: rows only


def test_embedding_plot_subsamples_and_writes_png(planted, tmp_path):
    _, test = planted
    out = tmp_path / "plot.png"
    out.write_bytes(b"old")  # replaced atomically, never left half-written
    demo_mod.embedding_plot(out, [("vfm", test.vfm_features), ("vlm", test.vlm_features)], test.labels,
                            test.classnames or [str(i) for i in range(test.text_prototypes.shape[0])],
                            prototypes=test.text_prototypes, max_points=80)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("argv,vfms,methods", [
    ([], demo_mod.DEMO_VFMS, demo_mod.DEMO_METHODS),
    (["--vfm", "all", "--methods", "all"], demo_mod.ALL_DEMO_VFMS, demo_mod.ALL_DEMO_METHODS),
    (["--vfm", "offline:efficientnet-lite2", "--methods", "gpua,lfa"], ("offline:efficientnet-lite2",), ("gpua", "lfa")),
])
def test_demo_command_line(monkeypatch, argv, vfms, methods):
    seen = {}
    monkeypatch.setattr(demo_mod, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert cli.main(["demo", "--no-plot", *argv]) == 0
    assert tuple(seen["vfms"]) == tuple(vfms) and tuple(seen["methods"]) == tuple(methods)
    assert seen["plot"] is False


def test_demo_refuses_an_empty_vfm_and_a_param_no_method_applies(monkeypatch, tmp_path, capsys):
    """Was: --vfm "" ran nothing, exit 0, and replaced results.json with one of no runs; --param rho=0.5 with
    --methods zero_shot was claimed in the table's heading and applied by no method."""
    monkeypatch.setattr(demo_mod, "run_demo", lambda out, **kw: pytest.fail("the demo ran"))
    for argv, message in ((["--vfm", ""], "--vfm names no encoder"), (["--vfm", ","], "--vfm names no encoder"),
                          (["--methods", "zero_shot", "--param", "rho=0.5"], "rho=0.5: none of --methods zero_shot applies it")):
        assert cli.main(["demo", "--no-plot", "--out", str(tmp_path / "d"), *argv]) == 2
        assert message in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(demo_mod, "run_demo", lambda out, **kw: seen.update(kw))
    assert cli.main(["demo", "--no-plot", "--out", str(tmp_path / "d"), "--methods", "zero_shot,gpua", "--param", "rho=0.5"]) == 0
    assert "note: zero_shot does not apply rho=0.5" in capsys.readouterr().out and seen["overrides"] == {"rho": 0.5}


def test_default_demo_is_the_table_the_issue_names():
    assert demo_mod.DEMO_VFMS == ("offline:dinov2-s",)
    assert set(demo_mod.DEMO_METHODS) == {"zero_shot", "gpua", "procrustes_only", "lambda_1", "query_vfm"}
    assert set(demo_mod.ALL_DEMO_VFMS) >= set(demo_mod.DEMO_VFMS) and np.all([m in demo_mod.ALL_DEMO_METHODS for m in demo_mod.DEMO_METHODS])


def test_demo_checks_methods_first_and_says_where_its_features_are(planted, tmp_path, monkeypatch, capsys):
    from gpua.features import save_features

    paths = {}
    for split, part in zip(("train", "test"), planted):
        paths[split] = save_features(tmp_path / f"{split}.npz", _feature_set(part))
    calls = []
    monkeypatch.setattr(demo_mod, "demo_features", lambda *a, **k: calls.append(a) or paths)
    with pytest.raises(Exception, match="'gpau'"):
        demo_mod.run_demo(tmp_path / "out", methods=["zero_shot", "gpau"], plot=False, progress=False)
    assert not calls  # refused before any extraction
    demo_mod.run_demo(tmp_path / "out", methods=["zero_shot"], plot=False, progress=False)
    out = capsys.readouterr().out
    assert f"features: {paths['train']} and {paths['test']}" in out and "cached" in out


def test_demo_cache_paths_are_stable(tmp_path):
    """The demo's feature files keep their names (the README's calibration commands read them)."""
    from gpua.classify import feature_cache_path

    p = feature_cache_path("demo", "cifar10-mini_train", "offline:dinov2-s", "offline:semantic-lite0", tmp_path)
    assert p == tmp_path / "demo" / "cifar10-mini_train__offline-dinov2-s__offline-semantic-lite0.npz"
