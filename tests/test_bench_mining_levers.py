"""benchmarks/mining_levers.py: its fit pipeline is GPUA's, each lever does what its docstring says, the oracle is an
oracle, and the script's JSON and argument errors (on planted data; nothing is extracted)."""

from __future__ import annotations

import json
import shlex
import sys

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def ml(import_benchmark):
    return import_benchmark("mining_levers")


@pytest.fixture(scope="module")
def small_pool():
    from gpua.synthetic import make_planted

    return make_planted(n_samples=600, n_classes=8, random_state=0).feature_set()


@pytest.fixture(scope="module")
def planted(import_benchmark):
    return import_benchmark("devsets").load_devset("planted", seed=0)


def test_the_prototype_pipeline_is_gpuas_fit(ml, small_pool):
    """prepare + fit_with(plain ArrayPool) is GPUA.fit to the bit: a lever's row differs only by its driver."""
    from gpua import GPUA
    from gpua.fitting import ArrayPool

    params = GPUA(random_state=0, n_steps=30).get_params()
    prep = ml.prepare(params, small_pool)
    ours = ml.fit_with(prep, ArrayPool(*prep.rows()))
    ref = GPUA(random_state=0, n_steps=30).fit(small_pool.vfm_features, small_pool.vlm_features, small_pool.text_prototypes,
                                               classnames=small_pool.classnames)
    assert torch.equal(ours.W_, ref.W_)
    np.testing.assert_array_equal(ours.pseudo_labels_, ref.pseudo_labels_)
    np.testing.assert_array_equal(ours.predict(small_pool.vfm_features, small_pool.vlm_features),
                                  ref.predict(small_pool.vfm_features, small_pool.vlm_features))
    # the classifier rows' query of any split is the pool's own query, row for row
    torch.testing.assert_close(prep.query(small_pool), prep.pool.Q, atol=1e-5, rtol=0)


def test_true_label_oracle_beats_the_mined_labels_on_planted_data(ml, planted):
    gpua = ml.score(planted, "gpua", 0, ml.fit_gpua(planted.pool, 0))
    oracle = ml.score(planted, "true_labels", 0, ml.fit_true_labels(planted.pool, 0))
    assert oracle["oracle"] and not gpua["oracle"]
    assert oracle["pl"] == 1.0 and gpua["pl"] < 0.95
    assert oracle["pool"] > gpua["pool"] + 0.05  # the map fits the true labels far better than the mined ones
    assert oracle["test"] > gpua["test"]


@pytest.mark.parametrize("kind", ["uniform", "confusion"])
def test_image_independent_noise_copies_the_errors_not_the_rows(ml, kind):
    rng = np.random.default_rng(1)
    K, n = 5, 5_000
    labels = rng.integers(0, K, n)
    # systematic pseudo-labels: class 0 read as class 1 on its first 60% of rows, everything else right
    pseudo = labels.copy()
    zeros = np.flatnonzero(labels == 0)
    pseudo[zeros[: int(0.6 * len(zeros))]] = 1
    noisy = ml.image_independent_noise(labels, pseudo, K, kind, seed=0)
    assert noisy.shape == labels.shape and noisy.min() >= 0 and noisy.max() < K
    wrong = noisy != labels
    assert wrong.sum() == (pseudo != labels).sum()  # exactly as many errors
    if kind == "confusion":
        confusion = np.zeros((K, K), int)
        np.add.at(confusion, (labels, noisy), 1)
        expected = np.zeros((K, K), int)
        np.add.at(expected, (labels, pseudo), 1)
        np.testing.assert_array_equal(confusion, expected)  # the same confusions, exactly
    else:
        assert len(np.unique(labels[wrong])) == K and len(np.unique(noisy[wrong])) == K  # spread over every class
    # on other images than the pseudo-labels' errors: many wrong rows are rows the pseudo-labels got right
    assert (wrong & (pseudo == labels)).sum() > 0.3 * wrong.sum()
    np.testing.assert_array_equal(noisy, ml.image_independent_noise(labels, pseudo, K, kind, seed=0))  # seeded
    with pytest.raises(ValueError, match="kind"):
        ml.image_independent_noise(labels, pseudo, K, "gaussian", seed=0)


def test_noisy_label_oracles_run_after_the_gpua_row_they_copy(ml, planted):
    out = ml.run_methods(planted, ["noisy_labels_uniform", "noisy_labels_confusion"], 0)
    assert list(out) == ["noisy_labels_uniform", "noisy_labels_confusion"]  # the gpua fit they need is not a row
    gpua_pl = ml.score(planted, "gpua", 0, ml.fit_gpua(planted.pool, 0))["pl"]
    for m, outcome in out.items():
        row = ml.score(planted, m, 0, outcome)
        assert row["oracle"] and row["label_accuracy"] == pytest.approx(gpua_pl)  # exactly as many errors
        assert row["pl"] == row["label_accuracy"]  # the drawn labels are the plan the map is fitted on


def test_true_label_driver_refuses_re_mining(ml, small_pool):
    from gpua import GPUA

    prep = ml.prepare(GPUA(self_learning=0).get_params(), small_pool)
    driver = ml.TrueLabelPool(*prep.rows(), labels=small_pool.labels)
    mined = driver.mine(None, None)
    np.testing.assert_array_equal(mined.labels.numpy(), small_pool.labels)
    assert torch.equal(mined.payload.sum(1), torch.ones(len(small_pool.labels)))
    with pytest.raises(RuntimeError, match="without self-learning"):
        driver.mine(torch.zeros(prep.pool.Q.shape[1], prep.pool.Y.shape[1]), None)


def test_one_em_step_from_one_hot_labels_is_lda(ml):
    """The M-step then E-step from hard labels is exactly scikit-learn's LDA posterior (shared covariance, class priors)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(0)
    F = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    y = rng.integers(0, 4, 300)
    F[:, :2] += 2.0 * y[:, None]
    mix = ml.gaussian_mixture_em(torch.tensor(F), torch.nn.functional.one_hot(torch.tensor(y), 4).double(), max_iter=1, reg=0.0)
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(F, y)
    np.testing.assert_allclose(mix.resp.numpy(), lda.predict_proba(F), atol=1e-6)


def test_em_repairs_a_noisy_start_on_shared_covariance_blobs(ml):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 200)
    A = np.diag([3.0, 1.0, 0.3, 0.3])  # anisotropic, shared
    F = rng.normal(size=(600, 4)) @ A + np.array([[0, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 2.5]])[y]
    noisy = np.where(rng.random(600) < 0.3, rng.integers(0, 3, 600), y)
    R0 = 0.6 * torch.nn.functional.one_hot(torch.tensor(noisy), 3).double() + 0.4 / 3
    mix = ml.gaussian_mixture_em(torch.tensor(F), R0)
    assert mix.converged
    assert np.mean(noisy == y) < 0.85 and np.mean(mix.resp.argmax(1).numpy() == y) > 0.95
    post = ml.mixture_log_posterior(torch.tensor(F), mix.means, mix.chol, mix.log_prior)
    torch.testing.assert_close(post.logsumexp(1), torch.zeros(600, dtype=torch.float64))


def test_label_propagation_is_zhous_fixed_point_and_repairs_a_wrong_label(ml):
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = np.repeat([0, 1], 30)
    V = torch.nn.functional.normalize(torch.tensor(centres[y] + 0.15 * rng.normal(size=(60, 3))), dim=1)
    S = ml.knn_graph(V, k=5)
    assert torch.allclose(S, S.T) and float(S.min()) >= 0
    wrong = y.copy()
    wrong[3] = 1  # one row of cluster 0 mislabelled
    P0 = torch.nn.functional.one_hot(torch.tensor(wrong), 2).double()
    P = ml.label_propagation(S, P0, alpha=0.8)
    torch.testing.assert_close(P.sum(1), torch.ones(60, dtype=torch.float64))
    assert float(P.min()) >= 0
    F = P0.clone()
    for _ in range(300):  # F = alpha S F + (1 - alpha) P0, iterated
        F = 0.8 * S @ F + 0.2 * P0
    torch.testing.assert_close(P, F / F.sum(1, keepdim=True))
    assert (P.argmax(1).numpy() == y).all()


def test_cotrain_learns_the_centred_zero_shot_labels(ml, small_pool):
    from gpua.query import centre_rows, pool_mean, target_prototypes

    predict, pseudo, C = ml.cotrain_classifier(small_pool)
    X = torch.as_tensor(small_pool.vlm_features)
    expected = (centre_rows(X, pool_mean(X)) @ target_prototypes(torch.as_tensor(small_pool.text_prototypes), True).T).argmax(1)
    np.testing.assert_array_equal(pseudo, expected.numpy())
    assert C in ml.COTRAIN_CS
    pred = predict(small_pool)
    assert pred.shape == small_pool.labels.shape
    assert np.mean(pred == pseudo) > 0.6  # it learned its training labels
    # the VFM view cleans the VLM's labels on planted data, whose classes are planted in the VFM
    assert np.mean(pred == small_pool.labels) > np.mean(pseudo == small_pool.labels)


def test_kmeans_oracle_geometry_on_planted(ml, planted):
    figures = ml.kmeans_geometry(planted.pool, planted.pool.labels)
    assert set(figures) == set(ml.KMEANS_VIEWS)
    assert all(0 < v <= 1 for v in figures.values())
    # planted classes are planted in the VFM: clusters of Z hold them far better than clusters of the noisy VLM rows
    assert figures["Z"] > figures["X"] + 0.2


def test_main_writes_rows_and_marks_the_oracle(ml, tmp_path, capsys):
    out = tmp_path / "levers.json"
    assert ml.main(["--sets", "planted", "--methods", "gaussian_classifier,true_labels,cotrain", "--no-kmeans",
                    "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "true_labels (ORACLE)" in printed and "| method | test | dev |" in printed
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == ["gaussian_classifier", "true_labels", "cotrain"]
    assert [r["oracle"] for r in data["rows"]] == [False, True, False]
    for r in data["rows"]:
        assert r["set"] == "planted" and r["seed"] == 0
        assert all(0 <= r[f] <= 1 for f in ("test", "dev", "pl", "pool"))
    assert data["mean_over_real_sets"] == {} and data["kmeans_oracle"] == {}
    assert data["oracle_methods"] == ["true_labels", "noisy_labels_uniform", "noisy_labels_confusion"] and "machine" in data


def test_mean_over_real_sets_and_its_table(ml):
    summary = [{"set": s, "method": m, "oracle": False, "seeds": [0], "test": t, "dev": d, "pl": 0.5, "pool": 0.5,
                "fit_seconds": 1.0, **{f"{f}_std": 0.0 for f in ml.FIELDS}}
               for s, m, t, d in (("cifar-dinov2", "gpua", 0.6, 0.6), ("cifar-lite2", "gpua", 0.7, 0.8),
                                  ("cifar-dinov2", "cotrain", 0.5, 0.7), ("cifar-lite2", "cotrain", 0.5, 0.5),
                                  ("planted", "gpua", 0.9, 0.0), ("planted", "cotrain", 0.1, 1.0))]
    means = ml.mean_over_real_sets(summary)
    assert means["gpua"]["dev"] == pytest.approx(0.7) and means["cotrain"]["dev"] == pytest.approx(0.6)  # planted left out
    assert means["gpua"]["n_sets"] == 2
    text = ml.table(summary, means, {"cifar-dinov2": "pool", "cifar-lite2": "pool", "planted": "dev"})
    assert "| cotrain | 60.00 | -10.00 | 50.00 | 2 of 4 |" in text


def test_base_parameters_are_under_every_method(ml, tmp_path, monkeypatch):
    # --base '{"plan_ridge": null}' re-measures a table against the defaults before the plan's
    # projection: the gpua row is then GPUA(plan_ridge=None), and the JSON records the base.
    seen = []
    real = ml.GPUA.fit

    def spy(self, *a, **k):
        seen.append(self.plan_ridge)
        return real(self, *a, **k)

    monkeypatch.setattr(ml.GPUA, "fit", spy)
    monkeypatch.setattr(sys.modules["_levers"], "BASE_PARAMS", {})  # the module is shared by this file's tests
    out = tmp_path / "levers.json"
    assert ml.main(["--sets", "planted", "--methods", "gpua", "--no-kmeans", "--base", '{"plan_ridge": null}', "--json", str(out)]) == 0
    assert seen == [None]
    assert json.loads(out.read_text())["args"]["base"] == {"plan_ridge": None, "random_state": 0}


@pytest.mark.parametrize("argv, message", [
    (["--base", '{"plan_rige": null}'], "did you mean 'plan_ridge'"),
    (["--base", "[1]"], "not a JSON object"),
    (["--base", '{"plan_ridge": 0}'], "plan_ridge=0 must be"),
    (["--methods", "gpua,oracle"], "unknown method"),
    (["--methods", ","], "unknown method"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--sets", "mnist"], "unknown set"),
])
def test_bad_arguments_exit_with_a_usage_error(ml, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ml.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_docstring_commands_parse(ml, monkeypatch):
    class Parsed(Exception):
        pass

    def stop(args):
        raise Parsed

    monkeypatch.setattr(ml, "setup", stop)
    commands = [line.strip() for line in ml.__doc__.splitlines() if line.strip().startswith("python benchmarks/mining_levers.py")]
    assert len(commands) == 3
    for line in commands:
        argv = shlex.split(line.split("#")[0])[2:]
        with pytest.raises(Parsed):
            ml.main(argv)


def test_the_query_graph_lever_spreads_the_plan_over_the_fitted_rows(ml, small_pool, monkeypatch):
    """``knn_propagation_query`` builds its graph on the whitened query the map is fitted on, ``knn_propagation`` on the VFM rows."""
    seen = []

    class Stop(Exception):
        pass

    class Recording(ml.PropagationPool):
        def __init__(self, Q, X, Y, V, config, V_graph, **kw):
            seen.append((Q.cpu().clone(), V_graph.cpu().clone()))
            raise Stop

    monkeypatch.setattr(ml, "PropagationPool", Recording)
    for graph in ("query", "vfm"):
        with pytest.raises(Stop):
            ml.fit_propagation(small_pool, 0, graph=graph)
    (Q, query_graph), (_, vfm_graph) = seen
    assert torch.equal(query_graph, Q)  # the fitted rows themselves
    assert vfm_graph.shape[1] == small_pool.vfm_features.shape[1] != Q.shape[1]


def test_soft_logreg_on_hard_targets_is_sklearns_logistic_regression(ml):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    F = rng.normal(size=(200, 4)) + 1.5 * np.eye(3, 4)[y]
    T = torch.nn.functional.one_hot(torch.tensor(y), 3).double()
    probs = ml.logreg_probs(torch.tensor(F), T, torch.tensor(F), C=0.5)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(F, y).predict_proba(F)
    np.testing.assert_allclose(probs.numpy(), ref, atol=1e-5)


def test_ridge_projection_returns_an_exactly_linear_plan(ml):
    """The in-sample ridge (``ridge_projection``'s relabeling) is sklearn's Ridge, intercept unpenalised: a plan
    linear in the rows comes back (C large), a constant plan comes back at C = 1 (the intercept is not shrunk)."""
    import functools

    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    F = torch.tensor(rng.normal(size=(120, 5)))
    F = (F - F.mean(0)) / F.std(0)  # as CrossFitPool standardises the query
    G = torch.tensor(rng.normal(size=(5, 4)))
    P = 0.25 + 0.02 * F @ (G - G.mean(1, keepdim=True))  # rows sum to one, all positive
    assert float(P.min()) > 0
    torch.testing.assert_close(ml.in_sample_probs(F, P, functools.partial(ml.ridge_probs, C=1e10)), P, atol=1e-8, rtol=0)
    flat = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).expand(120, 4)
    torch.testing.assert_close(ml.in_sample_probs(F, flat), flat, atol=1e-12, rtol=0)
    # C = 1: the scores are sklearn's Ridge(alpha=1) predictions, clipped at 1e-6 and renormalised
    T = torch.nn.functional.one_hot(torch.tensor(rng.integers(0, 4, 120)), 4).double()
    S = np.clip(Ridge(alpha=1.0).fit(F.numpy(), T.numpy()).predict(F.numpy()), 1e-6, None)
    np.testing.assert_allclose(ml.in_sample_probs(F, T).numpy(), S / S.sum(1, keepdims=True), atol=1e-10)


@pytest.mark.parametrize("classifier", ["logreg", "ridge"])
def test_out_of_fold_labels_of_a_row_do_not_depend_on_its_own_target(ml, classifier):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    F = torch.tensor(rng.normal(size=(150, 4)) + 2.0 * np.eye(3, 4)[y])
    P = 0.7 * torch.nn.functional.one_hot(torch.tensor(y), 3).double() + 0.1
    classify = ml.CROSSFIT_CLASSIFIERS[classifier]
    O = ml.out_of_fold_probs(F, P, classify)
    torch.testing.assert_close(O.sum(1), torch.ones(150, dtype=torch.float64))
    for i in (0, 77):
        flipped = P.clone()
        flipped[i] = flipped[i].roll(1)  # another class as row i's target
        O2 = ml.out_of_fold_probs(F, flipped, classify)
        assert torch.equal(O2[i], O[i])  # fitted on the other folds only: to the bit
        assert not torch.equal(O2, O)  # the other folds' rows did learn from it
        assert not torch.equal(ml.in_sample_probs(F, flipped, classify)[i], ml.in_sample_probs(F, P, classify)[i])


def test_out_of_fold_folds_partition_the_rows(ml):
    seen = []

    def record(F_train, T_train, F_test):
        seen.append((F_train[:, 0].long().tolist(), F_test[:, 0].long().tolist()))
        torch.testing.assert_close(T_train.sum(1), torch.ones(len(T_train), dtype=torch.float64))
        return torch.full((len(F_test), 2), 0.5, dtype=torch.float64)

    F = torch.arange(23.0)[:, None]  # the row index as its feature
    ml.out_of_fold_probs(F, torch.rand(23, 2) + 0.1, record, folds=5)
    assert len(seen) == 5
    assert sorted(i for _, test in seen for i in test) == list(range(23))
    assert sorted(len(test) for _, test in seen) == [4, 4, 5, 5, 5]
    for train, test in seen:
        assert sorted(train + test) == list(range(23))


def test_crossfit_levers_run_and_never_read_the_pool_labels(ml, small_pool):
    from types import SimpleNamespace

    ds = SimpleNamespace(name="tiny", pool=small_pool, test=small_pool, dev=None)
    methods = list(ml.CROSSFIT_METHODS)
    assert set(methods) == {"crossfit_logreg", "crossfit_ridge", "ridge_projection"} and set(methods) <= set(ml.METHODS)
    outcomes = ml.run_methods(ds, methods, 0)
    assert list(outcomes) == methods
    for m, outcome in outcomes.items():
        row = ml.score(ds, m, 0, outcome)
        assert not row["oracle"] and all(0 <= row[f] <= 1 for f in ("test", "dev", "pl", "pool", "first_pl_ucm", "first_pl_lever"))
        assert len(row["minings"]) >= 1 and all(0 <= r["labels_changed_by_relabeling"] <= 1 for r in row["minings"])
        assert row["minings"][0]["labels_changed_by_relabeling"] > 0  # the relabeling does relabel
    # the cross-fitted and in-sample ridges are different levers
    assert not np.array_equal(outcomes["crossfit_ridge"].pseudo, outcomes["ridge_projection"].pseudo)
    # shuffled pool labels change the diagnostics only, never the fit
    shuffled = SimpleNamespace(**{k: getattr(small_pool, k) for k in ("vfm_features", "vlm_features", "text_prototypes", "classnames")},
                               labels=np.random.default_rng(0).permutation(small_pool.labels))
    again = ml.fit_crossfit(shuffled, 0, "crossfit_ridge")
    np.testing.assert_array_equal(again.pseudo, outcomes["crossfit_ridge"].pseudo)
    np.testing.assert_array_equal(again.predict(small_pool), outcomes["crossfit_ridge"].predict(small_pool))
