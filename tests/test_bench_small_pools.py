"""benchmarks/small_pools.py: class-balanced draws, transductive scores, the cell summary, --merge and the command line (planted data)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sp(import_benchmark):
    return import_benchmark("small_pools")


@pytest.fixture(scope="module")
def planted():
    from gpua.synthetic import make_planted

    return make_planted(n_samples=240, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=0)


def test_balanced_subset_draws_each_class_evenly_and_reproducibly(sp):
    labels = np.repeat(np.arange(5), [30, 12, 20, 15, 40])
    a = sp.balanced_subset(labels, 10, 0)
    assert np.array_equal(np.bincount(labels[a]), [10] * 5)
    assert len(set(a)) == len(a) and np.all(np.diff(a) > 0)  # distinct, sorted
    assert np.array_equal(a, sp.balanced_subset(labels, 10, 0))  # the draw is the seed
    assert not np.array_equal(a, sp.balanced_subset(labels, 10, 1))
    # default_rng(draw), classes in order, rng.choice without replacement: the documented recipe
    rng = np.random.default_rng(3)
    want = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 4, replace=False) for c in range(5)]))
    assert np.array_equal(sp.balanced_subset(labels, 4, 3), want)
    with pytest.raises(ValueError, match="class 1 has 12"):
        sp.balanced_subset(labels, 13, 0)


def test_settings_are_valid_gpua_parameter_sets(sp):
    from gpua import GPUA, VLMZeroShot

    assert isinstance(sp.make_model("zero_shot"), VLMZeroShot)
    today, relaxed, white, unwhite = (sp.make_model(s) for s in ("today", "relaxed", "whitened", "unwhitened"))
    assert today.get_params() == GPUA().get_params()
    assert relaxed.get_params() == GPUA(plan_ridge=None).get_params()
    # The older settings are the defaults of their day: none projected the plan.
    assert (white.plan_ridge, white.rho, white.max_outer, white.whiten, white.center) == (None, None, 10, "auto", True)
    assert (unwhite.plan_ridge, unwhite.rho, unwhite.max_outer, unwhite.whiten, unwhite.center) == (None, None, 10, None, False)


def test_fit_and_score_is_the_transductive_accuracy_of_predict(sp, planted):
    from gpua import GPUA

    idx = sp.balanced_subset(planted.labels, 15, 0)
    Z, X, Y, y = planted.vfm_features[idx], planted.vlm_features[idx], planted.text_prototypes, planted.labels[idx]
    got = sp.fit_and_score("whitened", Z, X, Y, y)
    model = GPUA(plan_ridge=None, rho=None, max_outer=10, random_state=0).fit(Z, X, Y)
    assert got["acc"] == pytest.approx(np.mean(model.predict(Z, X) == y))
    # labels only score: the same fit against permuted labels scores the permuted agreement
    perm = np.random.default_rng(0).permutation(len(y))
    again = sp.fit_and_score("whitened", Z, X, Y, y[perm])
    assert again["acc"] == pytest.approx(np.mean(model.predict(Z, X) == y[perm]))


def _rows(accs: dict) -> list[dict]:
    """Rows from {(set, n, setting): [acc per draw]}."""
    return [{"set": s, "per_class": n, "draw": d, "setting": st, "acc": a, "n_rows": 0, "seconds": 0.0}
            for (s, n, st), values in accs.items() for d, a in enumerate(values)]


def test_summary_counts_wins_ties_and_the_mean_difference(sp):
    rows = _rows({
        ("cifar-dinov2", 10, "whitened"): [0.50, 0.60], ("cifar-dinov2", 10, "unwhitened"): [0.50, 0.50],   # +5
        ("cifar-dinov2", 20, "whitened"): [0.40, 0.40], ("cifar-dinov2", 20, "unwhitened"): [0.40, 0.40],   # level
        ("fmnist-lite2", 20, "whitened"): [0.30, 0.30], ("fmnist-lite2", 20, "unwhitened"): [0.33, 0.33],   # -3
        ("fmnist-lite2", 50, "whitened"): [0.70], ("fmnist-lite2", 50, "unwhitened"): [0.60],               # +10
        ("fmnist-lite2", 50, "today"): [0.90],                                                              # no today elsewhere
    })
    summ = sp.summary(rows)
    cell = summ["cells"]["cifar-dinov2"][10]["whitened"]
    assert cell["mean"] == pytest.approx(0.55) and cell["std"] == pytest.approx(np.std([0.5, 0.6], ddof=1)) and cell["n_draws"] == 2
    assert summ["cells"]["fmnist-lite2"][50]["whitened"]["std"] == 0.0  # one draw
    wu = summ["versus"]["whitened - unwhitened"]
    assert (wu["cells"], wu["wins"], wu["ties"], wu["losses"]) == (4, 2, 1, 1)
    assert wu["mean_diff_points"] == pytest.approx((5 + 0 - 3 + 10) / 4)
    # paired by draw: (0, +10), (0, 0), (-3, -3), (+10): 2 ahead, 2 behind of 7
    assert (wu["draws"], wu["draw_wins"], wu["draw_losses"]) == (7, 2, 2)
    assert wu["draw_diff_sd_points"] == pytest.approx(np.std([0, 10, 0, 0, -3, -3, 10], ddof=1))
    tu = summ["versus"]["today - unwhitened"]
    assert (tu["cells"], tu["wins"]) == (1, 1) and tu["mean_diff_points"] == pytest.approx(30)
    # the README statements' restrictions: 20 and 50 per class on every set; the CIFAR sets only
    claim = summ["claims"]["20 and 50 per class, every set"]["whitened - unwhitened"]
    assert (claim["cells"], claim["wins"], claim["ties"]) == (3, 1, 1) and claim["mean_diff_points"] == pytest.approx(7 / 3)
    cifar = summ["claims"]["10, 20 and 50 per class, CIFAR sets"]["whitened - unwhitened"]
    assert (cifar["cells"], cifar["wins"]) == (2, 1)
    assert "today - unwhitened" not in summ["claims"]["10, 20 and 50 per class, CIFAR sets"]  # no CIFAR cell has today


def test_merge_keeps_one_row_per_cell_draw_and_setting(sp):
    a = _rows({("planted", 4, "today"): [0.1, 0.2]})
    b = _rows({("planted", 4, "today"): [0.9], ("planted", 8, "today"): [0.5]})
    merged = sp.merge_rows(a, b)
    assert len(merged) == 3
    by = {(r["per_class"], r["draw"]): r["acc"] for r in merged}
    assert by == {(4, 0): 0.9, (4, 1): 0.2, (8, 0): 0.5}  # the later run's draw 0 replaced the earlier one


def test_main_on_planted_prints_the_table_writes_json_and_merges(sp, tmp_path, capsys):
    first, both = tmp_path / "a.json", tmp_path / "b.json"
    assert sp.main(["--sets", "planted", "--per-class", "3", "--draws", "2", "--settings", "zero_shot,unwhitened", "--json", str(first)]) == 0
    out = capsys.readouterr().out
    assert "planted" in out and "zero_shot" in out and "unwhitened" in out
    data = json.loads(first.read_text())
    assert data["machine"]["cores"] and data["draws"] == 2 and data["per_class"] == [3] and data["complete"] is True
    assert {(r["per_class"], r["draw"], r["setting"]) for r in data["rows"]} == {(3, d, s) for d in (0, 1) for s in ("zero_shot", "unwhitened")}
    assert all(r["n_rows"] == 150 and 0 <= r["acc"] <= 1 for r in data["rows"])  # 50 planted classes x 3
    # the zero-shot floor is VLMZeroShot on the drawn rows
    import devsets

    from gpua import VLMZeroShot

    ds = devsets.load_devset("planted")
    idx = sp.balanced_subset(ds.pool.labels, 3, 1)
    zs = VLMZeroShot().fit(ds.pool.vfm_features[idx], ds.pool.vlm_features[idx], ds.pool.text_prototypes)
    want = np.mean(zs.predict(None, ds.pool.vlm_features[idx]) == ds.pool.labels[idx])
    assert [r["acc"] for r in data["rows"] if r["setting"] == "zero_shot" and r["draw"] == 1] == [pytest.approx(want)]
    # --merge with no new set: the earlier rows, summarised again
    assert sp.main(["--sets", "", "--merge", str(first), "--json", str(both)]) == 0
    merged = json.loads(both.read_text())
    assert len(merged["rows"]) == 4 and merged["summary"]["cells"]["planted"]["3"]["unwhitened"]["n_draws"] == 2


@pytest.mark.parametrize("argv", [["--per-class", "0"], ["--per-class", "a,b"], ["--draws", "0"], ["--settings", "today,best"],
                                  ["--settings", ""], ["--sets", "imagenet"], ["--per-class", "17"]])
def test_bad_arguments_exit_2(sp, argv):
    base = {"--sets": "planted", "--settings": "zero_shot"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(SystemExit) as exc:  # planted has 16 rows per class: 17 cannot be drawn
        sp.main([x for kv in base.items() for x in kv])
    assert exc.value.code == 2


def test_bad_merge_file_exits_2(sp, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        sp.main(["--sets", "", "--merge", str(bad)])
    assert exc.value.code == 2
