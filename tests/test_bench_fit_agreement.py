"""benchmarks/fit_agreement.py: the four ways of fitting one folder, the differing predictions counted, the command line (planted data)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def fa(import_benchmark):
    return import_benchmark("fit_agreement")


@pytest.fixture(scope="module")
def small():
    from gpua.synthetic import make_planted

    return make_planted(n_samples=120, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=0)


def test_settings_are_today_and_the_svd_completions(fa, import_benchmark):
    from gpua import GPUA

    sp = import_benchmark("small_pools")
    assert fa.SETTINGS["today"] == {} and GPUA().procrustes_completion == "crosscov"
    assert fa.SETTINGS["svd"] == {"procrustes_completion": "svd"}
    # the earlier defaults, as small_pools measures them, with the completion of their day
    for name in ("relaxed", "whitened", "unwhitened"):
        assert fa.SETTINGS[name] == {"procrustes_completion": "svd", **sp.SETTINGS[name]}
    assert "zero_shot" not in fa.SETTINGS


def test_fits_are_the_in_memory_streamed_rescaled_and_reordered_fits(fa, small):
    from gpua import GPUA
    from gpua.stream import fit_streaming

    Z, X, Y = small.vfm_features, small.vlm_features, small.text_prototypes
    params = {"self_learning": 0, "n_steps": 20}
    got = fa.fits(params, Z, X, Y, draw=2)
    assert set(got) == {"memory", *fa.WAYS} and all(len(p) == len(Z) for p in got.values())
    assert np.array_equal(got["memory"], GPUA(random_state=0, **params).fit(Z, X, Y).predict(Z, X))
    want = fit_streaming(GPUA(random_state=0, **params), (Z, X), Y, chunk_rows=len(Z) // 3 + 7, progress=False).predict(Z, X)
    assert np.array_equal(got["streamed"], want)
    # the reordered fit's predictions come back in the rows' own order
    perm = np.random.default_rng(1002).permutation(len(Z))
    want = GPUA(random_state=0, **params).fit(Z[perm], X[perm], Y).predict(Z, X)
    assert np.array_equal(got["reordered"], want)


def test_summary_sums_the_differing_predictions_per_setting(fa):
    rows = [{"setting": "today", "n_rows": 100, "differ_streamed": 2, "differ_rescaled": 0, "differ_reordered": 5},
            {"setting": "today", "n_rows": 50, "differ_streamed": 1, "differ_rescaled": 3, "differ_reordered": 0},
            {"setting": "relaxed", "n_rows": 10, "differ_streamed": 0, "differ_rescaled": 0, "differ_reordered": 10}]
    summ = fa.summary(rows)
    assert summ["today"]["fits"] == 2 and summ["today"]["predictions"] == 150
    assert summ["today"]["streamed"] == {"differ": 3, "share": pytest.approx(0.02)}
    assert summ["today"]["rescaled"]["share"] == pytest.approx(0.02) and summ["today"]["reordered"]["differ"] == 5
    assert summ["relaxed"]["reordered"]["share"] == 1.0


def test_main_on_planted_writes_rows_whose_counts_match_the_summary(fa, tmp_path, capsys):
    out = tmp_path / "fa.json"
    assert fa.main(["--sets", "planted", "--per-class", "2", "--draws", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "planted" in printed and "streamed" in printed and "share of predictions" in printed
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["machine"]["cores"]
    assert data["settings"] == {"today": {}, "svd": {"procrustes_completion": "svd"}}
    row = next(r for r in data["rows"] if r["setting"] == "today")
    assert row["n_rows"] == 100 and 0 <= row["acc"] <= 1  # 50 planted classes x 2
    assert all(0 <= row[f"differ_{w}"] <= 100 for w in fa.WAYS)
    assert data["summary"]["today"]["streamed"]["differ"] == row["differ_streamed"]


@pytest.mark.parametrize("argv", [["--per-class", "0"], ["--draws", "0"], ["--settings", "zero_shot"], ["--settings", ""],
                                  ["--per-class", "17"]])
def test_bad_arguments_exit_2(fa, argv):
    base = {"--sets": "planted"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(SystemExit) as exc:  # planted has 16 rows per class: 17 cannot be drawn; zero_shot fits nothing to compare
        fa.main([x for kv in base.items() for x in kv])
    assert exc.value.code == 2
