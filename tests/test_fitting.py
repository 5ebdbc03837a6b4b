"""The one fit core (gpua.fitting): self-learning rounds, their criterion, convergence warnings,
the fitted state and history shared by the three drivers, verbose lines, shard sets through GPUA.fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gpua.fitting
from gpua import ConvergenceWarning, GPUA, GPUAError
from gpua.fitting import knn_label_consistency, label_consistency

FAST = dict(n_steps=40, eval_every=10)


def _fit(train, **kw):
    return GPUA(**{**FAST, **kw}).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


# --- self-learning rounds ------------------------------------------------------------------------
def test_self_learning_rounds_keep_or_improve_accuracy(planted, tmp_path):
    train, test = planted
    plain = _fit(train, self_learning=0)
    sl = _fit(train, self_learning=3)
    acc = [m.score(test.vfm_features, test.labels, test.vlm_features) for m in (plain, sl)]
    assert acc[1] >= acc[0]
    # Labels score the pseudo-labels here, after the fit; the fit never saw them.
    pseudo = [np.mean(m.pseudo_labels_ == train.labels) for m in (plain, sl)]
    assert pseudo[1] > pseudo[0] + 0.1  # planted: the map's scores are far better correspondences than X Y^T
    rec = sl.history_["self_learning"]
    assert rec[0] == {"round": 0, "label_change": None, "criterion": rec[0]["criterion"], "kept": True, "refit": True}
    assert 1 <= len(rec) - 1 <= 3 and all(0.0 <= r["label_change"] <= 1.0 for r in rec[1:])
    kept = [r for r in rec if r["kept"]]
    assert [r["criterion"] for r in kept] == sorted(r["criterion"] for r in kept)  # a kept round never lowers it
    assert plain.history_["self_learning"] == []
    assert sl.history_["timings"]["self_learning_s"] > 0
    assert GPUA.load(sl.save(tmp_path / "sl.gpua")).history_["self_learning"] == rec  # the record survives a model file


def test_self_learning_stops_when_labels_settle(planted):
    train, _ = planted
    m = _fit(train, self_learning=10, self_learning_tol=0.5)
    rec = m.history_["self_learning"]
    stopped_at = rec[-1]
    assert stopped_at["round"] < 10
    assert (not stopped_at["kept"]) or stopped_at["label_change"] < 0.5


def test_a_settled_round_is_not_refitted(planted, monkeypatch):
    """A round whose re-mined labels barely moved ends the rounds without Procrustes or refinement:
    the previous round's map and labels stay."""
    train, _ = planted
    refits = []
    real_procrustes = gpua.fitting.ArrayPool.procrustes
    monkeypatch.setattr(gpua.fitting.ArrayPool, "procrustes", lambda self, mined: refits.append(mined.labels) or real_procrustes(self, mined))
    m = _fit(train, self_learning=10, self_learning_tol=0.2)
    rec = m.history_["self_learning"]
    last = rec[-1]
    assert last["refit"] is False and last["kept"] is False and last["criterion"] is None and last["label_change"] < 0.2
    assert all(r["refit"] and r["label_change"] >= 0.2 for r in rec[1:-1])
    assert len(refits) == len(rec) - 1  # round 0 and every round but the settled one
    np.testing.assert_array_equal(m.pseudo_labels_, refits[-1].numpy())  # the last refitted round is the one kept


def test_a_worse_round_is_rolled_back(planted, monkeypatch):
    """A round whose pseudo-labels cut across the VFM's neighbourhoods is not kept: the map and
    labels of the round before stay, and the rounds stop."""
    train, test = planted
    plain = _fit(train, self_learning=0)
    real_mine = gpua.fitting.ArrayPool.mine

    def scrambled_round(self, score_map, callback):
        mined = real_mine(self, score_map, callback)
        if score_map is not None:  # a self-learning round gone bad: rows and correspondences shuffled
            perm = torch.randperm(mined.labels.shape[0], generator=torch.Generator().manual_seed(0))
            mined.labels, mined.payload = mined.labels[perm], mined.payload[perm.to(mined.payload.device)]
        return mined

    monkeypatch.setattr(gpua.fitting.ArrayPool, "mine", scrambled_round)
    m = _fit(train, self_learning=3)
    rec = m.history_["self_learning"]
    assert [r["round"] for r in rec] == [0, 1] and rec[1]["kept"] is False
    assert rec[1]["criterion"] < rec[0]["criterion"]
    torch.testing.assert_close(m.W_, plain.W_, atol=0, rtol=0)
    np.testing.assert_array_equal(m.pseudo_labels_, plain.pseudo_labels_)


@pytest.mark.parametrize("params, match", [
    ({"self_learning": -1}, r"self_learning=-1 must be an int >= 0"),
    ({"self_learning": 1.5}, r"self_learning=1\.5 must be an int >= 0"),
    ({"self_learning": True}, r"self_learning=True must be an int"),
    ({"self_learning_tol": 1.0}, r"self_learning_tol=1\.0 must be a float in \[0, 1\)"),
    ({"self_learning_tol": -0.1}, r"self_learning_tol=-0\.1 must be a float in \[0, 1\)"),
])
def test_self_learning_settings_that_make_no_sense(planted, params, match):
    train, _ = planted
    with pytest.raises(GPUAError, match=match):
        _fit(train, **params)


def test_knn_label_consistency_is_chunking_free_and_label_free(rng):
    V = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((500, 6)).astype(np.float32)), dim=1)
    labels = (V[:, 0] > 0).long() + 2 * (V[:, 1] > 0).long()  # neighbourhoods agree with these labels
    a = label_consistency(V, labels, chunk=37, max_rows=200)
    b = label_consistency(V, labels, chunk=10_000, max_rows=200)
    assert a == pytest.approx(b, abs=1e-12)
    shuffled = labels[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    assert label_consistency(V, shuffled, max_rows=200) < a - 0.3
    # A row is not its own neighbour.
    one = knn_label_consistency(V[:1], torch.tensor([5]), torch.tensor([0]), [(0, V[:3], torch.tensor([5, 6, 6]))], k=1)
    assert one == 0.0


# --- convergence warnings ----------------------------------------------------------------------
def test_default_fit_does_not_warn(planted):
    train, _ = planted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(train)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_sinkhorn_at_its_cap_warns_once(planted):
    train, _ = planted
    with pytest.warns(ConvergenceWarning, match=r"Sinkhorn reached sinkhorn_max_iter=3 .*raise sinkhorn_max_iter") as caught:
        m = _fit(train, sinkhorn_max_iter=3)
    assert len([w for w in caught if issubclass(w.category, ConvergenceWarning)]) == 1
    iters = [h["sinkhorn_iter"] for h in m.history_["ucm"]]
    assert max(iters) == 3 and all(1 <= i <= 3 for i in iters)  # a relaxed round can settle before the cap


def test_unconverged_ucm_warns(planted):
    from gpua.stream import fit_streaming

    train, _ = planted
    with pytest.warns(ConvergenceWarning, match=r"UCM ended after max_outer=1 round before the plan could be compared "
                                                r"with an earlier one .*raise max_outer") as caught:
        _fit(train, max_outer=1, refine=False)
    assert not any("inf" in str(w.message) for w in caught)  # was "last change inf > tol": no earlier round to compare with
    with pytest.warns(ConvergenceWarning, match=r"UCM ended after max_outer=2 rounds with the plan still moving \(last change "):
        _fit(train, max_outer=2, tol=1e-9, refine=False)
    with pytest.warns(ConvergenceWarning, match=r"raise max_outer"):  # the streamed driver too
        fit_streaming(GPUA(max_outer=1, refine=False), (train.vfm_features, train.vlm_features), train.text_prototypes, progress=False)
    assert issubclass(ConvergenceWarning, UserWarning)


# --- one fitted state, one history, three drivers -----------------------------------------------
def _learned(model) -> set[str]:
    return {k for k in vars(model) if k.endswith("_") and not k.startswith("_")}


def test_three_drivers_set_the_same_attributes_and_history_keys(planted):
    from gpua.stream import fit_federated, fit_streaming

    train, _ = planted
    Z, X, Y = train.vfm_features, train.vlm_features, train.text_prototypes
    mem = _fit(train, self_learning=1)
    streamed = fit_streaming(GPUA(**FAST, self_learning=1), (Z, X), Y, progress=False)
    fed = fit_federated(GPUA(**FAST, self_learning=1), [(Z[:500], X[:500]), (Z[500:], X[500:])], Y, rounds=2)
    assert _learned(mem) == _learned(streamed) == _learned(fed)
    assert set(mem.history_) == set(streamed.history_) - {"streaming"} == set(fed.history_) - {"federated"}
    assert fed.history_["pool_augment"] == {"n_rows": 0}


@pytest.mark.parametrize("driver", ["memory", "streamed", "federated"])
def test_verbose_prints_a_line_per_round(planted, driver, capsys):
    from gpua.stream import fit_federated, fit_streaming

    train, _ = planted
    Z, X, Y = train.vfm_features, train.vlm_features, train.text_prototypes
    for verbose in (False, True):
        model = GPUA(**FAST, self_learning=1, verbose=verbose)
        if driver == "memory":
            model.fit(Z, X, Y)
        elif driver == "streamed":
            fit_streaming(model, (Z, X), Y, progress=False)
        else:
            fit_federated(model, [(Z[:500], X[:500]), (Z[500:], X[500:])], Y, rounds=2)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("[GPUA] ")]
        if not verbose:
            assert lines == []
            continue
        assert any(ln.startswith("[GPUA] UCM round: round=1, plan_change=inf") for ln in lines)
        assert any(ln.startswith("[GPUA] refinement: ") for ln in lines)
        assert any(ln.startswith("[GPUA] self-learning round: round=1, label_change=") for ln in lines)


def test_gpua_fit_forwards_streaming_options_for_a_shard_set(planted, tmp_path):
    from gpua.stream import minimum_budget_for, write_shards

    train, _ = planted
    Z, X, Y = train.vfm_features, train.vlm_features, train.text_prototypes
    shards = write_shards(tmp_path / "s", Z, X, dtype="float32", text_prototypes=Y, rows_per_shard=400)
    model = GPUA(refine=False)
    budget = minimum_budget_for(model, len(Z), Y.shape[0], Z.shape[1], X.shape[1]) + 300_000
    model.fit(shards, None, None, max_memory=budget, checkpoint=tmp_path / "ck")
    assert model.history_["streaming"]["budget_bytes"] == budget and model.history_["streaming"]["n_chunks"] > 1
    assert (tmp_path / "ck" / "ucm_state.safetensors").is_file()
    with pytest.raises(GPUAError, match=r"max_memory, checkpoint apply to a shard set .*fit_streaming"):
        GPUA().fit(Z, X, Y, max_memory="1GB", checkpoint=tmp_path / "ck2")


# --- whitening the query -------------------------------------------------------------------------
def test_a_whitened_fit_is_the_fit_on_whitened_rows_folded_into_W(planted):
    """GPUA(whiten=d) = the map fitted on normalize(Q M), stored as M W on Q: the same predictions.

    Not the same W to the last digit: with fewer classes than dimensions the Procrustes factor is
    free outside span(Y), so rounding (the by-hand rows are normalised once more) moves that part
    and, through the cosines' norms, the refinement a little.
    """
    from gpua.query import build_query, whitening_map

    train, test = planted
    Z, X, Y = (torch.as_tensor(a, dtype=torch.float32) for a in (train.vfm_features, train.vlm_features, train.text_prototypes))
    common = dict(center=False, center_vlm=False, self_learning=0)
    model = _fit(train, whiten=16, whiten_shrink=1.0, **common)
    Q = build_query(Z, X, "fused")
    M = whitening_map(Q, 16, 1.0)
    by_hand = GPUA(**FAST, **common, query="vfm", whiten=None).fit(torch.nn.functional.normalize(Q @ M, dim=1), X, Y)
    assert model.W_.shape == (Q.shape[1], Y.shape[1]) and model.centres_.shape == (Y.shape[0], Q.shape[1])
    np.testing.assert_array_equal(model.pseudo_labels_, by_hand.pseudo_labels_)
    Qt = build_query(*(torch.as_tensor(a, dtype=torch.float32) for a in (test.vfm_features, test.vlm_features)), "fused")
    ours = model.predict(test.vfm_features, test.vlm_features)
    assert np.mean(ours == by_hand.predict(torch.nn.functional.normalize(Qt @ M, dim=1), test.vlm_features)) >= 0.99
    plain = _fit(train, whiten=None, **common)
    assert not np.allclose(model.W_, plain.W_, atol=1e-2)  # whitening changed the fit


def test_the_default_whitening_width_follows_the_classes_and_the_query(planted):
    """whiten="auto" (the default): min(d_q, n, max(128, 2K)) directions, recorded in history_."""
    train, _ = planted
    n, d_q, k = len(train.labels), train.vfm_features.shape[1] + train.vlm_features.shape[1], train.text_prototypes.shape[0]
    model = _fit(train, self_learning=0)
    assert model.whiten == "auto" and model.center
    assert model.history_["whiten_components"] == min(d_q, n, max(128, 2 * k))
    assert 0.0 < model.history_["timings"]["whiten_s"] < model.history_["timings"]["ucm_s"] + 60.0
    assert _fit(train, whiten=5, self_learning=0).history_["whiten_components"] == 5
    assert "whiten_components" not in _fit(train, whiten=None, self_learning=0).history_


def test_a_whitened_model_round_trips_through_its_file(planted, tmp_path):
    train, test = planted
    model = _fit(train, whiten=8)
    again = GPUA.load(model.save(tmp_path / "whitened.safetensors"))
    assert again.whiten == 8 and again.whiten_shrink == 2.0
    np.testing.assert_array_equal(again.predict(test.vfm_features, test.vlm_features), model.predict(test.vfm_features, test.vlm_features))


@pytest.mark.parametrize("params, match", [
    ({"whiten": 0}, r"whiten=0 must be"),
    ({"whiten": 2.5}, r"whiten=2\.5 must be"),
    ({"whiten": "full"}, r"whiten='full' must be None or an int >= 1 or 'auto'"),
    ({"whiten": 8, "whiten_shrink": -1.0}, r"whiten_shrink=-1\.0 must be"),
])
def test_whitening_settings_that_make_no_sense(planted, params, match):
    train, _ = planted
    with pytest.raises(GPUAError, match=match):
        _fit(train, **params)


# --- refine's per-row weights and kept rows (benchmarks/map_levers.py's confidence-weighted and curriculum levers) ---
def _refine_problem(pool_augment: int = 0):
    from gpua.refinement import RefineConfig

    g = torch.Generator().manual_seed(0)
    Q = torch.nn.functional.normalize(torch.randn(120, 6, generator=g), dim=1)
    Y = torch.nn.functional.normalize(torch.randn(4, 5, generator=g), dim=1)
    labels = torch.randint(0, 4, (120,), generator=g)
    cfg = RefineConfig(n_steps=30, batch_size=32, lr=1e-2, weight_decay=0.0, k=2, margin_scale=2.0, hubness_weight=2.0,
                       orthogonality="none", ortho_weight=1.0, noise_std=0.0, dropout=0.0, val_fraction=0.2, eval_every=5,
                       patience=50, refine_tol=0.0, pool_augment=pool_augment, random_state=0)
    W0 = torch.linalg.qr(torch.randn(6, 5, generator=g))[0]
    return W0, Q, Y, labels, cfg


def test_refine_sample_weight_and_rows_kept():
    from gpua.refinement import refine

    W0, Q, Y, labels, cfg = _refine_problem()
    plain, _ = refine(W0, Q.__getitem__, 120, Y, labels, cfg)
    # uniform weights and keeping every row are the plain refinement, to the bit
    assert torch.equal(refine(W0, Q.__getitem__, 120, Y, labels, cfg, sample_weight=torch.full((120,), 3.0))[0], plain)
    assert torch.equal(refine(W0, Q.__getitem__, 120, Y, labels, cfg, rows_kept=torch.ones(120, dtype=torch.bool))[0], plain)
    weights = torch.linspace(0.1, 2.0, 120)
    assert not torch.allclose(refine(W0, Q.__getitem__, 120, Y, labels, cfg, sample_weight=weights)[0], plain)
    # the rows left out never count: relabelling them changes nothing
    kept = torch.arange(120) % 3 != 0
    relabelled = torch.where(kept, labels, (labels + 1) % 4)
    a = refine(W0, Q.__getitem__, 120, Y, labels, cfg, rows_kept=kept)[0]
    assert torch.equal(a, refine(W0, Q.__getitem__, 120, Y, relabelled, cfg, rows_kept=kept)[0])
    assert not torch.equal(a, plain)


@pytest.mark.parametrize("bad, match", [
    (dict(sample_weight=torch.zeros(120)), "positive.*pass rows_kept"),
    (dict(sample_weight=torch.ones(7)), "one per pool row"),
    (dict(sample_weight=-torch.ones(120)), "positive"),
    (dict(sample_weight=torch.full((120,), float("nan"))), "finite"),
    (dict(rows_kept=torch.zeros(120, dtype=torch.bool)), "keeps no training row"),
    (dict(rows_kept=torch.ones(7, dtype=torch.bool)), "boolean mask of the 120"),
    (dict(rows_kept=torch.ones(120)), "boolean mask"),
])
def test_refine_refuses_weights_that_make_no_loss(bad, match):
    from gpua.refinement import refine

    W0, Q, Y, labels, cfg = _refine_problem()
    with pytest.raises(GPUAError, match=match):
        refine(W0, Q.__getitem__, 120, Y, labels, cfg, **bad)


def test_refine_weights_do_not_apply_to_synthetic_rows():
    from gpua.refinement import refine

    W0, Q, Y, labels, cfg = _refine_problem(pool_augment=1)
    with pytest.raises(GPUAError, match="pool_augment=0"):
        refine(W0, Q.__getitem__, 120, Y, labels, cfg, sample_weight=torch.ones(120))
