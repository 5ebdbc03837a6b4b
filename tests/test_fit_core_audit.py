"""Audit of the fit core (fitting.py, refinement.py, estimator.py): rollback, early stopping, seeds, folding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpua
from gpua import fitting, refinement
from gpua._errors import GPUAError
from gpua.refinement import RefineConfig, heldout_loss, refine, split_pool
from gpua.synthetic import make_planted


@pytest.fixture(scope="module")
def planted():
    return make_planted(n_samples=200, n_classes=8, random_state=0)


def _fit(data, **params):
    return gpua.GPUA(**params).fit(data.vfm_features, data.vlm_features, data.text_prototypes)


def _config(**overrides):
    base = dict(n_steps=40, batch_size=64, lr=5e-4, weight_decay=5e-4, k=3, margin_scale=2.0, hubness_weight=2.0,
                orthogonality="none", ortho_weight=1.0, noise_std=0.035, dropout=0.05, val_fraction=0.1, eval_every=5,
                patience=50, refine_tol=0.0, pool_augment=0, random_state=0)
    base.update(overrides)
    return RefineConfig(**base)


def _toy(n=120, d=6, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    Y = torch.nn.functional.normalize(torch.randn(K, d, generator=g), dim=1)
    return Q, Y, (Q @ Y.T).argmax(1)


# --- finding: a diverged refinement without held-out rows was fitted silently -----------------
def test_diverged_refinement_without_heldout_rows_raises_naming_lr(planted):
    # Before: W_ full of NaN, no error (self_learning=0), and predictions of NaN scores.
    with pytest.raises(GPUAError, match=r"lr=1e\+06.*val_fraction"):
        _fit(planted, lr=1e6, val_fraction=0.0, self_learning=0)


def test_diverged_refinement_in_self_learning_names_lr_not_the_features(planted):
    # Before: "scores contain NaN or inf; check the input features" from the re-mining's Sinkhorn.
    with pytest.raises(GPUAError, match="refinement diverged") as err:
        _fit(planted, lr=1e6, val_fraction=0.0)
    assert "input features" not in str(err.value)


def test_refine_function_refuses_to_return_a_nan_map():
    Q, Y, labels = _toy(n=40)  # under 50 rows: nothing held out
    with pytest.raises(GPUAError, match="lower lr"):
        refine(torch.eye(6), Q.__getitem__, 40, Y, labels, _config(lr=1e9, n_steps=30, noise_std=0.0, dropout=0.0))


def test_diverging_refinement_with_heldout_rows_keeps_the_best_finite_map():
    Q, Y, labels = _toy()
    W, curve = refine(torch.eye(6), Q.__getitem__, 120, Y, labels, _config(lr=1e9, n_steps=30, patience=2))
    assert torch.isfinite(W).all() and curve[0]["step"] == 0


# --- finding: docstrings that said what the code does not ------------------------------------
def test_W_docstring_does_not_call_the_default_refined_map_orthogonal(planted):
    model = _fit(planted, self_learning=0, n_steps=30)
    assert model.history_["orthogonality_error"] > 1e-3  # the default refinement leaves W free
    doc = " ".join(gpua.GPUA.__doc__.split())
    assert "the (semi-)orthogonal map fitted in the whitened coordinates" not in doc
    assert "refinement leaves :math:`W` free" in doc


def test_reported_agreement_is_the_cosine_one_even_with_csls_and_the_docs_say_so(planted):
    model = _fit(planted, retrieval="csls")
    Z, X = planted.vfm_features, planted.vlm_features
    M = torch.as_tensor(model.transform(Z, X))
    cosine_pred = (M @ gpua.query.target_prototypes(model.text_prototypes_, True).T).argmax(1).numpy()
    assert model.history_["pseudo_label_agreement"] == pytest.approx(float((cosine_pred == model.pseudo_labels_).mean()))
    doc = " ".join(gpua.GPUA.__doc__.split())
    assert "cosine argmax under ``W_`` is its pseudo-label, whatever ``retrieval``" in doc


def test_val_fraction_docstring_says_when_nothing_is_held_out(planted):
    small = make_planted(n_samples=40, n_classes=4, random_state=0)
    assert _fit(small, self_learning=0, n_steps=20).history_["refine"] == []  # val_fraction=0.1, but no curve
    doc = " ".join(gpua.GPUA.__doc__.split())
    assert "fewer than 50 rows" in doc


# --- guards: behaviour checked by the audit and found right ----------------------------------
def test_rolled_back_round_restores_everything_of_the_previous_round(planted, monkeypatch):
    scores = iter([0.5, 0.6, 0.4])  # round 2 lowers the criterion: rolled back after its refit
    monkeypatch.setattr(fitting.ArrayPool, "consistency", lambda self, labels: next(scores))
    params = dict(random_state=0, n_steps=40, pool_augment=2)
    model = _fit(planted, self_learning=3, **params)
    rec = model.history_["self_learning"]
    assert [(r["round"], r["kept"], r["refit"]) for r in rec] == [(0, True, True), (1, True, True), (2, False, True)]
    monkeypatch.undo()
    one = _fit(planted, self_learning=1, **params)
    for name in ("W_", "W0_", "centres_"):
        assert torch.equal(getattr(model, name), getattr(one, name)), name
    np.testing.assert_array_equal(model.pseudo_labels_, one.pseudo_labels_)
    np.testing.assert_array_equal(model.pseudo_confidence_, one.pseudo_confidence_)
    for key in ("ucm", "ucm_converged", "refine", "pool_augment", "pseudo_label_agreement", "orthogonality_error"):
        assert model.history_[key] == one.history_[key], key


def test_settled_round_is_not_refitted_and_keeps_the_previous_one(planted):
    model = _fit(planted, self_learning=6, self_learning_tol=0.5, n_steps=30)
    rec = model.history_["self_learning"]
    settled = rec[-1]
    assert settled["refit"] is False and settled["kept"] is False and settled["criterion"] is None
    assert settled["label_change"] < 0.5
    fewer = _fit(planted, self_learning=settled["round"] - 1, self_learning_tol=0.5, n_steps=30)
    assert torch.equal(model.W_, fewer.W_)
    np.testing.assert_array_equal(model.pseudo_labels_, fewer.pseudo_labels_)


def test_seeds_reproduce_differ_and_leave_global_rng_alone(planted):
    torch.manual_seed(123)
    np.random.seed(7)
    t_state, n_state = torch.get_rng_state().clone(), np.random.get_state()[1].copy()
    a = _fit(planted, random_state=0, pool_augment=2, n_steps=30)
    assert torch.equal(t_state, torch.get_rng_state())
    np.testing.assert_array_equal(n_state, np.random.get_state()[1])
    b = _fit(planted, random_state=0, pool_augment=2, n_steps=30)
    c = _fit(planted, random_state=1, pool_augment=2, n_steps=30)
    assert torch.equal(a.W_, b.W_) and not torch.equal(a.W_, c.W_)


def test_random_state_none_is_reproducible_from_history(planted):
    a = _fit(planted, random_state=None, n_steps=30)
    b = _fit(planted, random_state=a.history_["random_state"], n_steps=30)
    assert torch.equal(a.W_, b.W_)


def test_refitting_one_object_is_a_fresh_fit(planted):
    model = gpua.GPUA(retrieval="csls", n_steps=30)
    model.fit(planted.vfm_features[:120], planted.vlm_features[:120], planted.text_prototypes)
    model.set_params(retrieval="cosine")
    model.fit(planted.vfm_features, planted.vlm_features, planted.text_prototypes)
    fresh = _fit(planted, n_steps=30)
    assert model.proto_radius_ is None and torch.equal(model.W_, fresh.W_)
    assert model.pseudo_labels_.shape == (200,) and model.history_ == {**fresh.history_, "timings": model.history_["timings"]}


@pytest.mark.parametrize("params", [{}, dict(query="vfm"), dict(whiten=None), dict(center=False, whiten=16), dict(refine=False)])
def test_folded_W_predicts_the_pool_as_the_fit_did(planted, params):
    model = _fit(planted, n_steps=30, **params)
    pred = model.predict(planted.vfm_features, planted.vlm_features)
    assert model.history_["pseudo_label_agreement"] == pytest.approx(float((pred == model.pseudo_labels_).mean()))
    assert model.W_.dtype == torch.float32 and model.W_.shape == (model.centres_.shape[1], 32)
    assert model.pseudo_labels_.dtype == np.int64 and model.pseudo_labels_.shape == (200,)


def test_refine_false_keeps_the_procrustes_map(planted):
    model = _fit(planted, refine=False, pool_augment=3)
    assert torch.equal(model.W_, model.W0_)
    assert model.history_["refine"] == [] and model.history_["pool_augment"] == {"n_rows": 0}


def test_early_stopping_returns_the_map_with_the_lowest_heldout_loss():
    Q, Y, labels = _toy()
    flipped = labels.clone()
    flipped[::3] = (flipped[::3] + 1) % 4  # noisy pseudo-labels: the held-out loss turns up at some point
    cfg = _config(lr=5e-2, n_steps=60, patience=100)
    W, curve = refine(torch.eye(6), Q.__getitem__, 120, Y, flipped, cfg)
    _, val_idx, _ = split_pool(120, cfg)
    best = min(c["val_loss"] for c in curve)
    assert heldout_loss(W, Q[val_idx], Y, flipped[val_idx], cfg) == pytest.approx(best, rel=1e-5)


def test_heldout_split_ignores_labels_and_augmentation_never_sees_it(monkeypatch):
    Q, Y, labels = _toy()
    cfg = _config(pool_augment=3, n_steps=5)
    _, val_idx, train_idx = split_pool(120, cfg)
    seen = {}
    real = refinement.synthetic_rows

    def spy(rows, lab, *args, **kwargs):
        seen["rows"] = rows.clone()
        return real(rows, lab, *args, **kwargs)

    monkeypatch.setattr(refinement, "synthetic_rows", spy)
    record = {}
    refine(torch.eye(6), Q.__getitem__, 120, Y, labels, cfg, None, record)
    refine(torch.eye(6), Q.__getitem__, 120, Y, torch.zeros_like(labels), cfg)  # other labels, same split
    assert torch.equal(split_pool(120, cfg)[1], val_idx)
    assert torch.equal(seen["rows"], Q[train_idx]) and record["n_rows"] > 0


def test_csls_k_above_the_classes_and_the_pool(planted):
    model = _fit(planted, retrieval="csls", csls_k=5000, n_steps=20, self_learning=0)
    scores = model.decision_function(planted.vfm_features, planted.vlm_features)
    assert np.isfinite(scores).all() and model.proto_radius_.shape == (8,)


def test_the_largest_int64_seed_is_accepted():
    from gpua.params import SEED, check_param

    check_param("random_state", 2**63 - 1, SEED)  # was refused: float(2**63 - 1) rounds to 2**63
    with pytest.raises(GPUAError, match="random_state"):
        check_param("random_state", 2**63, SEED)


def test_a_whitening_narrower_than_the_classes_is_warned():
    data = make_planted(120, 8, 16, 12, 6, random_state=0)
    with pytest.warns(UserWarning, match="whiten=4 keeps fewer directions than the 8 classes") as caught:
        gpua.GPUA(whiten=4, n_steps=2, self_learning=0).fit(data.vfm_features, data.vlm_features, data.text_prototypes)
    # at the user's line (gpua._errors.warn_user), not inside gpua/estimator.py
    assert [w.filename for w in caught if "whiten=4" in str(w.message)] == [__file__]


def test_a_pool_of_fewer_distinct_images_than_classes_is_refused():
    """Was: 3 photos copied 100 times fitted 8 classes without a word, at chance (the row count passed)."""
    tr = make_planted(n_samples=300, n_classes=8, random_state=0)
    Z, X, Y = tr.vfm_features, tr.vlm_features, tr.text_prototypes
    with pytest.raises(GPUAError, match="has 300 rows but only 3 distinct images .* for 8 classes"):
        gpua.GPUA().fit(np.repeat(Z[:3], 100, 0), np.repeat(X[:3], 100, 0), Y)
    # Distinct in their first columns or not, rows that differ anywhere count as distinct images.
    Z2 = np.repeat(Z[:8], 10, 0)
    Z2[:, -1] += np.arange(80)
    fitting.check_distinct_images(torch.as_tensor(Z2), torch.as_tensor(np.repeat(X[:1], 80, 0)), 8)
    with pytest.raises(GPUAError, match="only 8 distinct images"):
        fitting.check_distinct_images(torch.as_tensor(np.repeat(Z[:8], 10, 0)), torch.as_tensor(np.repeat(X[:1], 80, 0)), 9)
