"""gpua.prior (EM class frequencies, class-balanced mean) and GPUA(class_prior="estimate" / "zero_shot")."""

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError
from gpua.prior import balanced_mean, em_class_prior
from gpua.query import pool_mean
from gpua.synthetic import make_planted


def _posteriors_under_uniform_prior(prior, n=20000, seed=0):
    """Labels drawn from ``prior``; each row's exact class posterior under a uniform prior (1-D Gaussians)."""
    rng = np.random.default_rng(seed)
    K = len(prior)
    y = rng.choice(K, size=n, p=prior)
    x = y * 1.5 + rng.standard_normal(n)
    loglik = -0.5 * (x[:, None] - 1.5 * np.arange(K)[None, :]) ** 2
    p = np.exp(loglik - loglik.max(1, keepdims=True))
    return torch.as_tensor(p / p.sum(1, keepdims=True)), y


@pytest.mark.parametrize("prior", [[0.25, 0.25, 0.25, 0.25], [0.55, 0.25, 0.15, 0.05]])
def test_em_recovers_the_class_frequencies(prior):
    proba, y = _posteriors_under_uniform_prior(np.array(prior))
    est, resp = em_class_prior(proba)
    np.testing.assert_allclose(est.numpy(), prior, atol=0.02)
    assert est.dtype == torch.float64 and abs(float(est.sum()) - 1) < 1e-12
    np.testing.assert_allclose(resp.sum(1).numpy(), 1.0, atol=1e-12)
    if prior[0] != prior[-1]:  # the argmax counts of the uniform-prior posteriors pull toward uniform: EM corrects them
        counts = np.bincount(proba.argmax(1).numpy(), minlength=len(prior)) / len(y)
        assert np.abs(est.numpy() - prior).sum() < 0.5 * np.abs(counts - prior).sum()


def test_em_keeps_an_absent_class_possible():
    proba = torch.tensor([[0.9, 0.1, 1e-9]] * 50 + [[0.1, 0.9, 1e-9]] * 50, dtype=torch.float64)
    est, _ = em_class_prior(proba)
    assert float(est[2]) >= 0.5 / 100 * 0.99 and float(est[2]) < 0.01  # floored at half a row, not zero
    assert torch.all(est > 0)


def test_balanced_mean_is_the_pool_mean_on_a_balanced_pool_and_leaves_out_absent_classes():
    rng = np.random.default_rng(0)
    A = torch.as_tensor(rng.standard_normal((30, 5)), dtype=torch.float32)
    hard = torch.nn.functional.one_hot(torch.arange(30) % 3, 4).double()  # 3 classes of 10 rows, class 3 empty
    np.testing.assert_allclose(balanced_mean(A, hard).numpy(), pool_mean(A).numpy(), atol=1e-6)
    skewed = torch.nn.functional.one_hot(torch.tensor([0] * 27 + [1, 2, 2]), 4).double()
    An = torch.nn.functional.normalize(A, dim=1).double()
    want = (An[:27].mean(0) + An[27] + An[28:].mean(0)) / 3
    np.testing.assert_allclose(balanced_mean(A, skewed).numpy(), want.numpy(), atol=1e-6)


def _long_tailed(seed=0, K=8, ratio=20.0):
    w = ratio ** (-np.arange(K) / (K - 1))
    return make_planted(n_samples=600, n_classes=K, d_vfm=32, d_vlm=24, d_latent=8, class_weights=w, random_state=seed)


def test_estimate_helps_on_a_long_tailed_pool_and_finds_its_head():
    d = _long_tailed()
    kw = dict(random_state=0, n_steps=100)
    uniform = GPUA(**kw).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    est = GPUA(class_prior="estimate", **kw).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    acc = lambda m: m.score(d.vfm_features, d.labels, d.vlm_features)  # noqa: E731
    assert acc(est) > acc(uniform) + 0.02  # measured: 0.690 -> 0.733
    prior = np.array(est.history_["class_prior_estimate"]["prior"])
    assert prior.shape == (8,) and abs(prior.sum() - 1) < 1e-9
    assert prior[:2].sum() > 1.5 * prior[-2:].sum()  # the two head classes hold 58% of the pool, the two tail ones 5%
    assert sum(est.history_["class_prior_estimate"]["first_fit_pseudo_label_counts"]) == 600
    assert est.history_["timings"]["class_prior_estimate_s"] > 0
    # the second fit is centred on the class-balanced means, which differ from the pool means
    assert float((est.vlm_mean_ - uniform.vlm_mean_).norm()) > 1e-3
    assert est.class_prior == "estimate"  # the parameter is left as given


def test_estimate_on_a_balanced_pool_stays_close_to_the_uniform_fit():
    d = make_planted(n_samples=600, n_classes=8, d_vfm=32, d_vlm=24, d_latent=8, random_state=0)
    kw = dict(random_state=0, n_steps=100)
    acc = [GPUA(class_prior=c, **kw).fit(d.vfm_features, d.vlm_features, d.text_prototypes).score(d.vfm_features, d.labels, d.vlm_features)
           for c in (None, "estimate")]
    assert abs(acc[1] - acc[0]) <= 0.03


@pytest.mark.parametrize("estimate", ["estimate", "zero_shot"])
def test_estimate_model_saves_and_loads(tmp_path, estimate):
    from gpua import load_model

    d = _long_tailed()
    m = GPUA(class_prior=estimate, random_state=0, n_steps=20).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    m.save(tmp_path / "m.gpua")
    back = load_model(tmp_path / "m.gpua")
    np.testing.assert_array_equal(back.predict(d.vfm_features, d.vlm_features), m.predict(d.vfm_features, d.vlm_features))
    assert back.get_params()["class_prior"] == estimate


def test_zero_shot_estimate_takes_the_vlms_probabilities_and_fits_once(monkeypatch):
    """class_prior="zero_shot": EM on softmax(logit_scale cos(x, y)), the zero-shot's own
    probabilities (no first fit), the class-balanced means from them, then one fit."""
    from gpua import VLMZeroShot

    d = _long_tailed()
    Z, X, Y = d.vfm_features, d.vlm_features, d.text_prototypes
    kw = dict(random_state=0, n_steps=100)
    import gpua.fitting

    fits = []
    fit_prepared = gpua.fitting._fit_prepared
    monkeypatch.setattr(gpua.fitting, "_fit_prepared", lambda *a, **k: fits.append(1) or fit_prepared(*a, **k))
    est = GPUA(class_prior="zero_shot", logit_scale=50.0, **kw).fit(Z, X, Y)
    zs = VLMZeroShot().fit(Z, X, Y)
    proba = torch.softmax(50.0 * torch.as_tensor(zs.decision_function(None, X), dtype=torch.float32), dim=1)
    want, resp = em_class_prior(proba)
    history = est.history_["class_prior_estimate"]
    np.testing.assert_allclose(history["prior"], want.numpy(), atol=1e-6)
    assert history["zero_shot_counts"] == np.bincount(zs.predict(None, X), minlength=8).tolist()
    assert "first_fit_pseudo_label_counts" not in history
    np.testing.assert_allclose(est.vlm_mean_.cpu().numpy(), balanced_mean(torch.as_tensor(X), resp).numpy(), atol=1e-6)
    assert len(fits) == 1  # one fit, where "estimate" runs two
    prior = np.array(history["prior"])
    assert prior[:2].sum() > 1.5 * prior[-2:].sum()  # the two head classes hold 58% of the pool, the two tail ones 5%
    assert est.class_prior == "zero_shot"


@pytest.mark.parametrize("bad", ["uniform", "", ["estimate"]])
def test_other_strings_are_refused(bad):
    d = _long_tailed()
    with pytest.raises(GPUAError, match=r"class_prior=.* must be None or one of 'estimate', 'zero_shot' or a list of positive weights, one per class"):
        GPUA(class_prior=bad).fit(d.vfm_features, d.vlm_features, d.text_prototypes)


@pytest.mark.parametrize("driver", ["streamed", "federated"])
def test_streamed_and_federated_fits_refuse_estimate(driver):
    """They estimate with the zero-shot (no first whole fit to score every row with): the
    refusal names what to pass instead."""
    from gpua.stream import fit_federated, fit_streaming

    d = _long_tailed()
    model = GPUA(class_prior="estimate", n_steps=5)
    with pytest.raises(GPUAError, match=rf"class_prior='estimate' needs a first whole fit .* a {driver} fit .* use class_prior='zero_shot'"):
        if driver == "streamed":
            fit_streaming(model, (d.vfm_features, d.vlm_features), d.text_prototypes)
        else:
            fit_federated(model, [(d.vfm_features[i::2], d.vlm_features[i::2]) for i in range(2)], d.text_prototypes)


@pytest.mark.parametrize("as_type", [np.asarray, torch.as_tensor, list])
def test_streamed_and_federated_fits_take_a_prior_array(as_type):
    """A class_prior given as an array or tensor (the estimate refusal compared it with a string:
    "truth value of an array is ambiguous")."""
    from gpua.stream import fit_federated, fit_streaming

    d = _long_tailed()
    prior = as_type([float(v) for v in np.bincount(d.labels, minlength=8) + 1])
    kw = dict(class_prior=prior, n_steps=3, self_learning=0)
    fit_streaming(GPUA(**kw), (d.vfm_features, d.vlm_features), d.text_prototypes, progress=False)
    fit_federated(GPUA(**kw), [(d.vfm_features[i::2], d.vlm_features[i::2]) for i in range(2)], d.text_prototypes)


def _unique_map_long_tailed(K=32):
    """Tie-free and with more classes than VLM dimensions, so that the map is unique (tests/stream/stream_helpers.py)."""
    d = make_planted(1500, K, 40, 20, 16, class_weights=10.0 ** (-np.arange(K) / (K - 1)), modality_gap=6.0, n_hubs=0, random_state=0)
    Y = (d.text_prototypes + 0.15 * np.random.default_rng(1).standard_normal(d.text_prototypes.shape) / np.sqrt(20)).astype(np.float32)
    return d.vfm_features, d.vlm_features, Y


def _assert_same_estimate_and_fit(got, want, Z, X):
    """A chunked or federated zero-shot estimate and fit against GPUA.fit's on every row."""
    np.testing.assert_allclose(got.history_["class_prior_estimate"]["prior"], want.history_["class_prior_estimate"]["prior"], atol=1e-6)
    assert got.history_["class_prior_estimate"]["zero_shot_counts"] == want.history_["class_prior_estimate"]["zero_shot_counts"]
    assert got.history_["class_prior_estimate"]["rows_estimated_from"] == len(Z)
    for name in ("vfm_mean_", "vlm_mean_", "W_"):
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(want, name).numpy(), atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(got.predict(Z, X), want.predict(Z, X))


def test_federated_zero_shot_estimate_equals_the_in_memory_one():
    """fit_federated with class_prior="zero_shot" (it was refused): each EM step sums the clients'
    K responsibilities (no row leaves its client), the same prior, class-balanced means and map as
    GPUA.fit on the pooled rows."""
    from gpua.stream import fit_federated

    Z, X, Y = _unique_map_long_tailed()
    kw = dict(class_prior="zero_shot", random_state=0, refine=False, self_learning=0)
    want = GPUA(**kw).fit(Z, X, Y)
    cut = [0, 400, 1100, len(Z)]  # three clients of unequal size
    got = fit_federated(GPUA(**kw), [(Z[a:b], X[a:b]) for a, b in zip(cut, cut[1:])], Y)
    _assert_same_estimate_and_fit(got, want, Z, X)


def test_streamed_zero_shot_estimate_equals_the_in_memory_one(tmp_path):
    """fit_streaming with class_prior="zero_shot" (it was refused): the same prior, class-balanced
    means and map as GPUA.fit, chunk by chunk, and resumed from a checkpoint with the prior it had."""
    from gpua.stream import fit_streaming

    Z, X, Y = _unique_map_long_tailed()
    kw = dict(class_prior="zero_shot", random_state=0, n_steps=30)
    want = GPUA(**kw).fit(Z, X, Y)
    got = fit_streaming(GPUA(**kw), (Z, X), Y, chunk_rows=97, progress=False, checkpoint=tmp_path / "ck")
    _assert_same_estimate_and_fit(got, want, Z, X)
    again = fit_streaming(GPUA(**kw), (Z, X), Y, chunk_rows=97, progress=False, checkpoint=tmp_path / "ck")
    assert again.history_["streaming"]["resumed"]
    assert again.history_["class_prior_estimate"]["prior"] == got.history_["class_prior_estimate"]["prior"]
    np.testing.assert_allclose(again.vlm_mean_.numpy(), got.vlm_mean_.numpy(), atol=1e-7)


def test_streamed_zero_shot_estimate_from_a_sample_when_the_budget_is_small(monkeypatch):
    """A pool whose probabilities do not fit half the budget: EM on a seeded sample of its rows,
    close to the estimate from every row (the balanced means still sum every row)."""
    import gpua.stream._fit as stream_fit
    from gpua.stream import fit_streaming

    d = _long_tailed()
    Z, X, Y = d.vfm_features, d.vlm_features, d.text_prototypes
    kw = dict(class_prior="zero_shot", random_state=0, n_steps=10)
    full = fit_streaming(GPUA(**kw), (Z, X), Y, chunk_rows=128, progress=False).history_["class_prior_estimate"]
    monkeypatch.setattr(stream_fit, "prior_rows", lambda budget, k: len(Z) // 2)
    half = fit_streaming(GPUA(**kw), (Z, X), Y, chunk_rows=128, progress=False).history_["class_prior_estimate"]
    assert half["rows_estimated_from"] == len(Z) // 2 and full["rows_estimated_from"] == len(Z)
    assert half["prior"] != full["prior"]
    np.testing.assert_allclose(half["prior"], full["prior"], atol=0.05)
    assert half["zero_shot_counts"] == full["zero_shot_counts"]  # counted over every row


def test_the_prior_sample_fits_in_the_budget_beyond_the_process_itself():
    """Was: half of the whole budget, the process reserve ignored: 958 MB resident under max_memory='700MB' (K = 100)."""
    from gpua.stream._budget import RESERVE_BYTES
    from gpua.stream._fit import _PRIOR_BYTES_PER_CELL, prior_rows

    k = 100
    for budget in (700 * 10**6, 10**9, 4 * 10**9):
        rows = prior_rows(budget, k)
        assert rows * _PRIOR_BYTES_PER_CELL * k <= (budget - RESERVE_BYTES) / 2 + _PRIOR_BYTES_PER_CELL * k
        assert rows > 1024  # above the floor here: the budget, not the floor, sized it
    assert prior_rows(RESERVE_BYTES, k) == 1024  # nothing beyond the reserve: the floor


def test_a_convergence_warning_points_at_the_users_line(recwarn):
    """It pointed inside gpua/fitting.py once class_prior="estimate" added a call between the fit and its warning."""
    import warnings

    from gpua import ConvergenceWarning

    d = _long_tailed()
    warnings.simplefilter("always")
    for prior in (None, "estimate"):
        GPUA(class_prior=prior, max_outer=1, n_steps=5, self_learning=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    caught = [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]
    assert len(caught) >= 2 and all(w.filename == __file__ for w in caught), [w.filename for w in caught]
