"""benchmarks/map_levers.py: each lever does what it says on small planted data, and the script's rows, tables and errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def ml(import_benchmark):
    return import_benchmark("map_levers")


@pytest.fixture(scope="module")
def planted():
    """A small planted problem: the pool (as a FeatureSet) and a test split."""
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=900, n_classes=8, random_state=0)
    return d.feature_set(slice(0, 600)), d.feature_set(slice(600, 900))


@pytest.fixture(scope="module")
def prepared(ml, planted):
    """The whitened pool driver of a default fit, and its first mined correspondences and Procrustes map."""
    from gpua import GPUA
    from gpua.fitting import _prepared_pool, check_entry, check_fit_arrays
    from gpua.query import pool_mean

    pool = planted[0]
    params = GPUA(n_steps=40).get_params()
    Z, X, Y = check_fit_arrays(pool.vfm_features, pool.vlm_features, pool.text_prototypes, torch.device("cpu"))
    config = check_entry(params, Z.shape[0], Y.shape[0])
    driver = _prepared_pool(config, Z, X, Y, pool_mean(Z), pool_mean(X)).pool
    mined = driver.mine(None, None)
    W0 = driver.procrustes(mined)
    return driver, config, mined, W0


def test_confidence_weights_and_curriculum_change_the_map(ml, prepared):
    driver, config, mined, W0 = prepared
    w = ml.confidence_weights(mined.confidence)
    assert w.mean().item() == pytest.approx(1.0) and float(w.std()) > 0
    driver.confidence = mined.confidence
    base = driver.refine(W0, mined.labels, config.refinement, None)[0]
    weighted = ml.ConfidenceWeightedPool.refine(driver, W0, mined.labels, config.refinement, None)[0]
    curriculum = ml.CurriculumPool.refine(driver, W0, mined.labels, config.refinement, None)[0]
    assert not torch.allclose(weighted, base) and not torch.allclose(curriculum, base)


def test_confident_half_keeps_the_top_half_of_each_pseudo_class(ml):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (101,), generator=gen)
    conf = torch.rand(101, generator=gen)
    keep = ml.confident_half(labels, conf)
    for k in labels.unique():
        rows = labels == k
        n_k = int(rows.sum())
        assert int(keep[rows].sum()) == -(-n_k // 2)
        assert conf[rows & keep].min().item() >= np.max(conf[rows & ~keep].numpy(), initial=-1.0)


def test_fit_with_pool_is_the_gpua_fit(ml, planted):
    from gpua import GPUA

    pool = planted[0]
    params = {"random_state": 0, "n_steps": 40}
    plain = GPUA(**params).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    ours = ml.fit_with_pool(params, pool)
    assert torch.equal(plain.W_, ours.W_) and np.array_equal(plain.pseudo_labels_, ours.pseudo_labels_)
    ref = ml.fit_with_pool(params, pool, ml.ArrayPool, after=ml.reference_refinement)
    assert torch.equal(ref.W0_, plain.W0_)  # the same rounds, the kept round refined again
    assert not torch.allclose(ref.W_, plain.W_) and ref.history_["refine"] == []  # no held-out rows, no early stopping


def test_seed_average_is_the_mean_of_three_refinements(ml, prepared):
    from gpua.fitting import ArrayPool

    driver, config, mined, W0 = prepared
    avg = ml.SeedAveragePool(driver.Q, driver.X, driver.Y, driver.V, config)
    W, _, _ = avg.refine(W0, mined.labels, config.refinement, None)
    runs = [ArrayPool.refine(avg, W0, mined.labels, replace(config.refinement, random_state=config.refinement.seed + j), None)[0]
            for j in range(3)]
    torch.testing.assert_close(W, torch.stack(runs).mean(0))
    assert not torch.allclose(W, runs[0])


def test_procrustes_self_learning_remines_with_w0(ml, planted, monkeypatch):
    from gpua.fitting import ArrayPool

    seen = []
    original = ArrayPool.mine

    def spy(self, score_map, callback):
        seen.append(score_map)
        return original(self, score_map, callback)

    monkeypatch.setattr(ArrayPool, "mine", spy)
    model = ml.fit_with_pool({"random_state": 0, "n_steps": 40}, planted[0], ml.ProcrustesSelfLearningPool)
    assert seen[0] is None and len(seen) >= 2  # self-learning re-mined at least once
    assert model.history_["self_learning"][1]["label_change"] is not None
    # each re-mining got a Procrustes map: (semi-)orthogonal in the whitened coordinates
    for W in seen[1:]:
        torch.testing.assert_close(W.T @ W, torch.eye(W.shape[1]), atol=1e-4, rtol=0)


def test_prediction_levers(ml, planted):
    from gpua import GPUA
    from gpua.query import centre_rows, target_prototypes

    pool, test = planted
    model = GPUA(random_state=0, n_steps=40).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    scores = ml.zero_shot_ensemble_scores(model, test)
    Yt = target_prototypes(torch.as_tensor(pool.text_prototypes), True)
    zs = centre_rows(torch.as_tensor(test.vlm_features), model.vlm_mean_) @ Yt.T
    torch.testing.assert_close(scores, 0.5 * (torch.as_tensor(model.decision_function(test.vfm_features, test.vlm_features)) + zs))
    bias = ml.balanced_class_bias(model, pool)
    assert bias.shape == (8,) and float(bias.std()) > 0
    protos = ml.reestimated_prototypes(model, pool)
    torch.testing.assert_close(protos.norm(dim=1), torch.ones(8))
    assert not torch.allclose(protos, Yt)
    # the bias moves the pool's predictions towards a uniform class count
    S = torch.as_tensor(model.decision_function(pool.vfm_features, pool.vlm_features))
    before, after = (np.bincount(P.argmax(1).numpy(), minlength=8) for P in (S, S + bias))
    assert np.abs(after - 75).sum() <= np.abs(before - 75).sum()


def test_main_writes_a_row_per_method_on_planted(ml, tmp_path, capsys):
    out = tmp_path / "levers.json"
    methods = ["gpua", "curriculum", "per_class_bias", "prototype_reestimation", "transductive"]
    assert ml.main(["--sets", "planted", "--methods", ",".join(methods), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == methods
    assert all(0 <= r[f] <= 1 for r in data["rows"] for f in ("test", "dev", "pl", "pool"))
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["per_class_bias"]["pl"] == rows["gpua"]["pl"]  # the same fit, re-scored
    assert rows["per_class_bias"]["pool"] != rows["gpua"]["pool"]
    assert rows["transductive"]["pl"] != rows["gpua"]["pl"]  # its fit also saw the test rows
    assert data["mean_dev"] == {} and "machine" in data
    printed = capsys.readouterr().out
    assert "| per_class_bias |" in printed and "planted" in printed


def _fake_run(path: Path, sets, methods, dev) -> Path:
    rows = [{"set": s, "seed": 0, "method": m, "test": 0.5, "dev": dev[m] + i / 100, "pl": 0.4, "pool": 0.6, "fit_seconds": 1.0}
            for i, s in enumerate(sets) for m in methods]
    path.write_text(json.dumps({"args": {"sets": sets, "methods": methods, "seeds": 1}, "rows": rows, "wall_seconds": 10.0}))
    return path


def test_merge_joins_runs_and_takes_the_mean_dev_over_the_real_sets(ml, tmp_path, capsys):
    dev = {"gpua": 0.60, "csls": 0.62}
    a = _fake_run(tmp_path / "a.json", ["cifar-dinov2", "cifar-lite2", "planted"], list(dev), dev)
    b = _fake_run(tmp_path / "b.json", ["fmnist-dinov2", "fmnist-lite2"], list(dev), dev)
    out = tmp_path / "merged.json"
    assert ml.main(["--merge", str(a), str(b), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 10 and data["wall_seconds"] == 20.0
    means = data["mean_dev"]
    assert means["gpua"]["sets"] == ["cifar-dinov2", "cifar-lite2", "fmnist-dinov2", "fmnist-lite2"]  # planted apart
    assert means["gpua"]["dev"] == pytest.approx(np.mean([0.60, 0.61, 0.60, 0.61]))
    assert means["csls"]["vs_gpua"] == pytest.approx(0.02)
    assert "| csls | 4 | 62.50 | +2.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        ml.main(["--merge", str(a), str(a)])
    assert exc.value.code == 2
    assert "more than one file" in capsys.readouterr().err
    # A run on today's defaults does not join one on older ones (a file without "base" predates plan_ridge).
    today = json.loads(b.read_text())
    today["args"]["base"] = {"random_state": 0}
    b.write_text(json.dumps(today))
    with pytest.raises(SystemExit) as exc:
        ml.main(["--merge", str(a), str(b)])
    assert exc.value.code == 2
    assert "different --base parameters" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--base", '{"lamda": 0.5}'], "did you mean 'lam'"),
    (["--methods", "gpua,bogus"], "unknown method(s) ['bogus']"),
    (["--methods", "gpua,gpua"], "each once"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--sets", "mnist"], "unknown set(s) ['mnist']"),
    (["--merge", "/nonexistent/levers.json"], "not a map_levers.py --json file"),
])
def test_bad_arguments_exit_2_with_a_clear_message(ml, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ml.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_first_mining_lam_changes_only_the_first_mining(ml, planted, monkeypatch):
    """The first mining runs at the published lam, the self-learning re-minings at the fit's own;
    the fit's config is the fit's again afterwards (a lever of session 22: new behaviour, not a bug)."""
    from gpua.fitting import ArrayPool

    seen = []
    mine = ArrayPool.mine

    def spy(self, score_map, callback):
        seen.append((score_map is None, self.config.mining.lam))
        return mine(self, score_map, callback)

    monkeypatch.setattr(ArrayPool, "mine", spy)
    model = ml.fit_with_pool({"random_state": 0, "n_steps": 40, "lam": 0.6}, planted[0], ml.FirstMiningLamPool)
    assert seen[0] == (True, ml.PUBLISHED_LAM)
    assert len(seen) > 1 and all(lam == 0.6 for first, lam in seen[1:] if not first)
    assert model.get_params()["lam"] == 0.6


def test_reference_map_and_lam_ensemble_rows(ml, planted, tmp_path):
    """``reference_map`` fits the published map stage on the gpua fit's pseudo-labels (same pl,
    its own predictions); ``lam_ensemble`` sums two fits' scores (new levers, not a bug)."""
    from gpua import GPUA

    pool, test = planted
    model = GPUA(random_state=0, n_steps=40).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    predict = ml.reference_map(model, pool, 0)
    pred = predict(test)
    assert pred.shape == (test.n_samples,) and np.mean(pred == test.labels) > 0.3
    assert not np.array_equal(pred, model.predict(test.vfm_features, test.vlm_features))
    out = tmp_path / "levers.json"
    assert ml.main(["--sets", "planted", "--methods", "gpua,reference_map,lam_ensemble", "--json", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["reference_map"]["pl"] == rows["lam_ensemble"]["pl"] == rows["gpua"]["pl"]
    assert rows["reference_map"]["pool"] != rows["gpua"]["pool"]
