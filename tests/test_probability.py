"""gpua.probability and GPUA(proba_scale=...): the scale of predict_proba, chosen on the pool without labels.

Was: ``predict_proba`` was softmax(100 * score) for GPUA as for the VLM's zero-shot, and GPUA's
mapped cosines have class gaps ten times the VLM's: a top probability of 0.999999 or more in
every row of a folder's report, the wrong predictions' included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError, load_model
from gpua.fitting import proba_sample
from gpua.probability import (
    PROBA_SCALE_ROWS, SCALE_GRID, ConfidenceSums, confidence_sums, estimator_confidence_sums, matched_scale, top_probability_sums,
)
from gpua.synthetic import make_planted

FAST = dict(n_steps=20, self_learning=0)


@pytest.fixture(scope="module")
def planted():
    return make_planted(n_samples=700, n_classes=6, d_vfm=24, d_vlm=16, d_latent=6, random_state=3).split(500)


def _zero_shot_mean_top(X, Y, scale=100.0) -> float:
    Xn = torch.nn.functional.normalize(torch.as_tensor(X, dtype=torch.float64), dim=1)
    Yn = torch.nn.functional.normalize(torch.as_tensor(Y, dtype=torch.float64), dim=1)
    return float(torch.softmax(scale * Xn @ Yn.T, dim=1).max(1).values.mean())


# --- the module ---------------------------------------------------------------------------------
def test_top_probability_sums_rise_from_one_over_k_to_the_rows_with_a_single_top():
    g = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.2, 0.0], [0.0, 0.5, 0.4]])
    sums = top_probability_sums(g, SCALE_GRID)
    assert sums.dtype == torch.float64 and sums.shape == SCALE_GRID.shape
    assert bool((sums[1:] >= sums[:-1] - 1e-12).all())  # non-decreasing in the scale
    assert abs(float(sums[0]) - 3 / 3) < 0.01  # scale 0.01: every row near 1/K
    assert abs(float(sums[-1]) - 2.5) < 1e-6  # scale 1e4: 1 for the two clear rows, 1/2 for the tie
    expected = torch.softmax(7.0 * g.double(), dim=1).max(1).values.sum()
    torch.testing.assert_close(top_probability_sums(g, torch.tensor([7.0]))[0], expected)


@pytest.mark.parametrize("factor", [0.5, 3.0, 40.0])
def test_matched_scale_recovers_a_known_scale(factor):
    """Mapped scores that are the zero-shot cosines times ``factor`` match at ``logit_scale / factor``."""
    rng = np.random.default_rng(0)
    z = torch.as_tensor(rng.normal(scale=0.05, size=(300, 7)))
    found = matched_scale(confidence_sums(factor * z, z, 100.0))
    assert found["scale"] == pytest.approx(100.0 / factor, rel=0.01)
    assert found["rows"] == 300
    assert found["zero_shot_mean_top_probability"] == pytest.approx(float(torch.softmax(100 * z, 1).max(1).values.mean()))


def test_matched_scale_of_clients_is_the_one_of_their_rows_together():
    rng = np.random.default_rng(1)
    g, z = (torch.as_tensor(rng.normal(scale=s, size=(90, 5))) for s in (0.4, 0.03))
    parts = [confidence_sums(g[a:b], z[a:b], 100.0) for a, b in ((0, 20), (20, 55), (55, 90))]
    whole = confidence_sums(g, z, 100.0)
    added = parts[0] + parts[1] + parts[2]
    assert isinstance(added, ConfidenceSums) and added.n_rows == 90
    torch.testing.assert_close(added.mapped, whole.mapped)
    assert matched_scale(parts) == pytest.approx(matched_scale(whole))


def test_a_target_the_grid_cannot_reach_gives_its_end():
    tied = torch.zeros(10, 4)  # every row ties: the mean top probability is 1/4 at every scale
    z = torch.as_tensor(np.random.default_rng(2).normal(scale=0.05, size=(10, 4)))
    assert matched_scale(confidence_sums(tied, z, 100.0))["scale"] == pytest.approx(float(SCALE_GRID[-1]))
    flat = torch.full((10, 4), 0.25, dtype=torch.float64)  # zero-shot cosines that tie: target 1/4, reached at once
    assert matched_scale(confidence_sums(torch.eye(4).repeat(3, 1)[:10], flat, 100.0))["scale"] == pytest.approx(float(SCALE_GRID[0]))


def test_scores_that_are_not_finite_are_refused_not_matched_to_the_grids_end():
    g = torch.tensor([[0.3, 0.0], [0.0, 0.2]])
    with pytest.raises(GPUAError, match="not finite.*proba_scale to a number"):
        matched_scale(confidence_sums(g, torch.tensor([[float("nan"), 0.0], [0.0, 0.1]]), 100.0))


# --- GPUA(proba_scale=...) ------------------------------------------------------------------------
def test_the_default_puts_the_pool_on_the_zero_shot_confidence(planted):
    train, test = planted
    model = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert GPUA().proba_scale == "auto"
    record = model.history_["proba_scale"]
    assert record["scale"] == model.proba_scale_ and record["rows"] == len(train.labels)
    assert model.history_["timings"]["proba_scale_s"] >= 0
    target = _zero_shot_mean_top(train.vlm_features, train.text_prototypes)
    assert record["zero_shot_mean_top_probability"] == pytest.approx(target, abs=1e-6)
    P = model.predict_proba(train.vfm_features, train.vlm_features)
    assert float(P.max(1).mean()) == pytest.approx(target, abs=0.01)  # the grid's interpolation, no more
    assert 0 < model.proba_scale_ < 100  # mapped cosines have wider gaps than the VLM's
    S = model.decision_function(test.vfm_features, test.vlm_features)
    Pt = model.predict_proba(test.vfm_features, test.vlm_features)
    np.testing.assert_allclose(Pt, torch.softmax(model.proba_scale_ * torch.as_tensor(S), 1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(Pt.argmax(1), model.predict(test.vfm_features, test.vlm_features))
    np.testing.assert_allclose(Pt.sum(1), 1.0, rtol=1e-5)


def test_none_is_logit_scale_and_a_number_is_itself(planted):
    train, test = planted
    old = GPUA(**FAST, proba_scale=None, logit_scale=50.0).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert old.proba_scale_ is None and "proba_scale" not in old.history_
    S = torch.as_tensor(old.decision_function(test.vfm_features, test.vlm_features))
    np.testing.assert_allclose(old.predict_proba(test.vfm_features, test.vlm_features), torch.softmax(50.0 * S, 1).numpy(), rtol=1e-5, atol=1e-7)
    old.set_params(proba_scale=7.5)  # a number takes effect at once: it needs no fit
    np.testing.assert_allclose(old.predict_proba(test.vfm_features, test.vlm_features), torch.softmax(7.5 * S, 1).numpy(), rtol=1e-5, atol=1e-7)


def test_auto_on_a_model_whose_fit_chose_no_scale_is_refused(planted):
    train, test = planted
    model = GPUA(**FAST, proba_scale=3.0).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model.set_params(proba_scale="auto")
    with pytest.raises(GPUAError, match="proba_scale='auto'.*set a number or None"):
        model.predict_proba(test.vfm_features, test.vlm_features)
    model.set_params(proba_scale=-5.0)
    with pytest.raises(GPUAError, match="proba_scale"):
        model.predict_proba(test.vfm_features, test.vlm_features)


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e5, "calibrated", True])
def test_bad_values_are_refused_at_fit(planted, bad):
    train, _ = planted
    with pytest.raises(GPUAError, match="proba_scale"):
        GPUA(**FAST, proba_scale=bad).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_vlm_rows_too_large_for_float32_give_the_scale_of_the_unscaled_rows():
    """Was: the zero-shot side cast float64 rows of 1e300 to float32 (inf), its target was NaN, and the scale
    was silently the grid's top, 10,000 (the fit itself rescales such rows)."""
    d = make_planted(n_samples=300, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=1)
    plain = GPUA(**FAST).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    big = np.asarray(d.vlm_features, np.float64) * 1e300
    for X in (big, torch.tensor(big)):
        model = GPUA(**FAST).fit(d.vfm_features, X, d.text_prototypes)
        assert model.proba_scale_ == pytest.approx(plain.proba_scale_, rel=1e-4)


def test_the_scale_is_of_csls_scores_under_csls(planted):
    train, _ = planted
    model = GPUA(**FAST, retrieval="csls").fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    P = model.predict_proba(train.vfm_features, train.vlm_features)
    target = _zero_shot_mean_top(train.vlm_features, train.text_prototypes)
    assert float(P.max(1).mean()) == pytest.approx(target, abs=0.01)


def test_a_large_pool_is_sampled_with_the_fits_seed():
    d = make_planted(n_samples=PROBA_SCALE_ROWS + 500, n_classes=5, d_vfm=12, d_vlm=10, d_latent=5, random_state=4)
    model = GPUA(**FAST, n_init_per_class=4, random_state=7).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    assert model.history_["proba_scale"]["rows"] == PROBA_SCALE_ROWS
    idx = proba_sample(len(d.labels), 7).numpy()
    assert len(idx) == PROBA_SCALE_ROWS and (np.diff(idx) > 0).all()
    again = matched_scale(estimator_confidence_sums(model, d.vfm_features[idx], d.vlm_features[idx]))
    assert again["scale"] == pytest.approx(model.proba_scale_, rel=1e-6)


def test_the_scale_survives_a_model_file(planted, tmp_path):
    train, test = planted
    model = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    back = load_model(model.save(tmp_path / "m.gpua"))
    assert back.proba_scale == "auto" and back.proba_scale_ == pytest.approx(model.proba_scale_)
    np.testing.assert_allclose(back.predict_proba(test.vfm_features, test.vlm_features),
                               model.predict_proba(test.vfm_features, test.vlm_features), rtol=1e-6)
    # a fit that chose no scale loads as it was fitted: proba_scale_ None (was: no attribute at all, an AttributeError)
    for given in (None, 5.0):
        fitted = GPUA(**FAST, proba_scale=given).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
        back = load_model(fitted.save(tmp_path / "n.gpua"))
        assert back.proba_scale_ is None and back.proba_scale == given
        np.testing.assert_allclose(back.predict_proba(test.vfm_features, test.vlm_features),
                                   fitted.predict_proba(test.vfm_features, test.vlm_features), rtol=1e-6)


def test_a_model_file_saved_before_the_scale_existed_keeps_logit_scale(planted, tmp_path, monkeypatch):
    """A file without the parameter (and without proba_scale_) was written by a gpua whose predict_proba used logit_scale."""
    train, test = planted
    assert GPUA._params_before_added["proba_scale"] is None
    model = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    del model.proba_scale_
    monkeypatch.setattr(model, "get_params", lambda deep=True: {k: v for k, v in GPUA.get_params(model).items() if k != "proba_scale"})
    back = load_model(model.save(tmp_path / "old.gpua"))
    assert back.proba_scale is None
    S = torch.as_tensor(back.decision_function(test.vfm_features, test.vlm_features))
    np.testing.assert_allclose(back.predict_proba(test.vfm_features, test.vlm_features), torch.softmax(100 * S, 1).numpy(), rtol=1e-5, atol=1e-7)


def test_streamed_and_federated_fits_choose_their_scale_as_the_in_memory_one(planted):
    from gpua.stream import fit_federated, fit_streaming

    train, _ = planted
    Z, X, Y = (np.asarray(a, dtype=np.float32) for a in (train.vfm_features, train.vlm_features, train.text_prototypes))
    memory = GPUA(**FAST).fit(Z, X, Y)
    streamed = fit_streaming(GPUA(**FAST), (Z, X), Y, max_memory="1GB", progress=False)
    assert streamed.history_["proba_scale"]["rows"] == len(Z)
    assert streamed.proba_scale_ == pytest.approx(memory.proba_scale_, rel=1e-3)
    clients = [(Z[:200], X[:200]), (Z[200:], X[200:])]
    fed = fit_federated(GPUA(**FAST), clients, Y, max_memory="1GB")
    assert fed.history_["proba_scale"]["rows"] == len(Z)
    # each client's sums of its own rows, added: the scale of the model on all rows
    again = matched_scale(estimator_confidence_sums(fed, z, x) for z, x in clients)
    assert fed.proba_scale_ == pytest.approx(again["scale"], rel=1e-6)


def test_evaluation_reports_the_calibration_error_of_the_probability_column(planted):
    from gpua.metrics import expected_calibration_error
    from gpua.report import evaluate_model

    train, test = planted
    fs = test.feature_set()
    auto = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=fs.classnames)
    got = evaluate_model(auto, fs)["gpua"]
    assert got["proba_scale"] == auto.proba_scale_
    want = expected_calibration_error(fs.labels, auto.predict_proba(fs.vfm_features, fs.vlm_features))
    assert got["expected_calibration_error"] == pytest.approx(want)
    old = evaluate_model(auto.set_params(proba_scale=None), fs)["gpua"]
    assert old["proba_scale"] == 100.0
    assert got["expected_calibration_error"] < old["expected_calibration_error"]  # saturated at 100


def test_the_benchmark_key_ignores_the_probability_scale():
    """No figure of a ``gpua benchmark`` row reads predict_proba: rows of a release before the
    parameter are still today's, and ``--param proba_scale=...`` is no new row."""
    from gpua.benchmark import _defaults_setting, _param_settings

    assert _param_settings({"proba_scale": 5.0, "lam": 0.5}) == {"lam": 0.5}
    assert "proba_scale" not in _param_settings(GPUA().get_params())
    assert isinstance(_defaults_setting(), str)
