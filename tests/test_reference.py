"""The published code's method (gpua.reference.ReferenceGPUA): each faithful choice of issue 12 checked."""

import warnings

import numpy as np
import pytest
import torch

from gpua import GPUA, ConvergenceWarning, GPUAError, ReferenceGPUA, VLMZeroShot, list_methods, load_model, make_method
from gpua.hubness import semantic_margins, ths_loss
from gpua.ot import sinkhorn
from gpua.procrustes import identity_pull
from gpua.reference import reference_query
from gpua.refinement import refine
from gpua.synthetic import make_planted
from gpua.ucm import similarity

nrm = torch.nn.functional.normalize


@pytest.fixture(scope="module")
def small():
    """A small planted pair: 10 classes, 300 train rows (400 steps stay quick)."""
    return make_planted(n_samples=600, n_classes=10, random_state=5).split(300)


@pytest.fixture(scope="module")
def fitted(small):
    train, _ = small
    return ReferenceGPUA().fit(train.vfm_features, train.vlm_features, train.text_prototypes)


# -- building blocks with their reference options ---------------------------------------------


def test_query_parts_normalised_not_renormalised(rng):
    Z, X = torch.as_tensor(rng.normal(size=(7, 5)) * 3), torch.as_tensor(rng.normal(size=(7, 4)))
    Q = reference_query(Z, X)
    torch.testing.assert_close(Q.norm(dim=1), torch.full((7,), 2 ** 0.5, dtype=Q.dtype))
    torch.testing.assert_close(Q[:, :5], nrm(Z, dim=1))
    torch.testing.assert_close(Q[:, 5:], nrm(X, dim=1))


def test_neg_euclidean_is_exact_for_any_norm(rng):
    A = torch.as_tensor(rng.normal(size=(6, 3)) * 2)
    B = nrm(torch.as_tensor(rng.normal(size=(4, 3))), dim=1)
    direct = -np.linalg.norm(A.numpy()[:, None] - B.numpy()[None], axis=2) / 0.1
    np.testing.assert_allclose(similarity(A, B, "neg_euclidean", 0.1).numpy(), direct, rtol=1e-6)
    An = nrm(A, dim=1)  # unit rows: -sqrt(2 - 2 cos) / tau, as before
    np.testing.assert_allclose(similarity(An, B, "neg_euclidean", 0.1).numpy(), -np.sqrt(np.clip(2 - 2 * (An @ B.T).numpy(), 0, None)) / 0.1, atol=1e-6)


def _swav_loop(S, eps, n_iter, tol):
    """SwAV's Sinkhorn as the published code writes it (K x B layout)."""
    Qm = torch.exp((S - S.max(dim=1, keepdim=True).values) / eps).T.clone()
    K, B = Qm.shape
    Qm /= Qm.sum()
    it = 0
    for it in range(1, n_iter + 1):
        prev = Qm.clone()
        Qm /= Qm.sum(dim=1, keepdim=True)
        Qm /= K
        Qm /= Qm.sum(dim=0, keepdim=True)
        Qm /= B
        if (Qm - prev).abs().max() < tol:
            break
    return Qm.T, it


@pytest.mark.parametrize("tol", [1e-5, 1e-12])
def test_swav_sinkhorn_matches_the_published_loop(tol):
    g = torch.Generator().manual_seed(0)
    S = torch.randn(300, 7, generator=g) * 5
    res = sinkhorn(S, 0.05, tol=tol, max_iter=50, solver="swav")
    expected, n_iter = _swav_loop(S, 0.05, 50, tol)
    torch.testing.assert_close(res.plan, expected)
    assert res.n_iter == n_iter and res.converged == (n_iter < 50)
    np.testing.assert_allclose(res.plan.sum(1).numpy(), 1 / 300, rtol=1e-5)  # rows exact (last step)
    # The potentials describe the same plan: log P = S / eps + log u + log v.
    logP = S.double() / 0.05 + res.log_u[:, None] + res.log_v[None, :]
    keep = res.plan > 1e-30
    torch.testing.assert_close(logP[keep].exp(), res.plan.double()[keep], rtol=1e-4, atol=0)


def test_swav_sinkhorn_absolute_tolerance_stops_early_with_marginals_off():
    """DESIGN.md section 3: the absolute rule stops a large problem after a few iterations."""
    g = torch.Generator().manual_seed(2)
    Z, C = nrm(torch.randn(30000, 4, generator=g), dim=1), nrm(torch.randn(50, 4, generator=g), dim=1)
    S = 2.0 * Z @ C.T  # unequal clusters: the class marginal needs many iterations
    res = sinkhorn(S, 0.05, tol=1e-5, max_iter=50, solver="swav")
    assert res.converged and res.n_iter <= 3 and res.marginal_error > 0.5
    assert sinkhorn(S, 0.05, tol=1e-5, max_iter=2000).marginal_error < 1e-4  # gpua's relative rule


def test_swav_sinkhorn_caps_at_max_iter_and_refuses_rho():
    g = torch.Generator().manual_seed(1)
    S = torch.randn(200, 5, generator=g) * 10
    res = sinkhorn(S, 0.05, tol=0.0, max_iter=50, solver="swav")  # tol 0 never reached
    assert res.n_iter == 50 and len(res.history) == 50 and not res.converged
    with pytest.raises(GPUAError, match="balanced"):
        sinkhorn(S, 0.05, rho=1.0, solver="swav")


def test_identity_pull_blends_the_square_block_only(rng):
    W = torch.as_tensor(rng.normal(size=(6, 4)))
    out = identity_pull(W, 0.9)
    torch.testing.assert_close(out[:4, :4], 0.1 * W[:4, :4] + 0.9 * torch.eye(4, dtype=W.dtype))
    torch.testing.assert_close(out[4:], W[4:])
    torch.testing.assert_close(identity_pull(W.T, 0.9)[:4, :4], 0.1 * W.T[:4, :4] + 0.9 * torch.eye(4, dtype=W.dtype))
    with pytest.raises(GPUAError, match="beta"):
        identity_pull(W, 1.5)


def _published_ths(mapped, Y, labels, scale=2.0, knn=3, hub_lambda=2.0):
    """The published alignment_loss, written out: cdist, full sort, the positive included."""
    v = nrm(mapped, dim=1)
    D = torch.cdist(v, Y)
    sd, si = torch.sort(D, dim=1)
    hub = torch.bincount(si[:, :knn].reshape(-1), minlength=Y.shape[0]).to(D.dtype) / v.shape[0]
    base = (1.0 - (Y[si[:, :knn]] * Y[labels][:, None]).sum(-1)) / scale
    pos = (v - Y[labels]).norm(dim=-1)[:, None]
    return torch.relu(pos + base + hub_lambda * hub[si[:, :knn]] - sd[:, :knn]).mean()


def test_ths_reference_options_match_the_published_loss():
    g = torch.Generator().manual_seed(3)
    mapped = torch.randn(40, 6, generator=g, dtype=torch.float64)
    Y = nrm(torch.randn(8, 6, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(8, (40,), generator=g)
    M = semantic_margins(Y, 2.0)
    got = ths_loss(mapped, Y, labels, M, k=3, hubness_weight=2.0, distance="euclidean", include_positive=True, full_sort=True)
    torch.testing.assert_close(got, _published_ths(mapped, Y, labels))
    topk = ths_loss(mapped, Y, labels, M, k=3, hubness_weight=2.0, distance="euclidean", include_positive=True)
    torch.testing.assert_close(topk, got)  # the sort and the top-k pick the same neighbours
    default = ths_loss(mapped, Y, labels, M, k=3, hubness_weight=2.0)
    assert not torch.isclose(default, got)  # the default (1 - cos, wrong prototypes only) differs
    with pytest.raises(GPUAError, match="distance"):
        ths_loss(mapped, Y, labels, M, distance="manhattan")


# -- the estimator --------------------------------------------------------------------------------


def test_reference_defaults_are_the_published_ones():
    p = ReferenceGPUA().get_params()
    assert (p["lam"], p["temperature"], p["eps"]) == (0.9, 0.1, 0.05)
    assert (p["n_init_per_class"], p["n_rounds"], p["sinkhorn_max_iter"], p["sinkhorn_tol"]) == (8, 3, 50, 1e-5)
    assert (p["identity_pull"], p["n_steps"], p["batch_fraction"]) == (0.9, 400, 0.75)
    assert (p["lr"], p["lr_min"], p["weight_decay"], p["noise_std"], p["dropout"]) == (5e-4, 1e-7, 5e-4, 0.035, 0.05)
    assert (p["k"], p["margin_scale"], p["hubness_weight"]) == (3, 2.0, 2.0)
    cfg = ReferenceGPUA().refine_config()
    assert (cfg.n_steps, cfg.batch_fraction, cfg.lr, cfg.lr_min, cfg.weight_decay) == (400, 0.75, 5e-4, 1e-7, 5e-4)
    assert (cfg.noise_std, cfg.dropout, cfg.k, cfg.margin_scale, cfg.hubness_weight) == (0.035, 0.05, 3, 2.0, 2.0)
    assert (cfg.distance, cfg.include_positive, cfg.full_sort, cfg.val_fraction, cfg.orthogonality) == ("euclidean", True, True, 0.0, "none")


def test_refinement_steps_batches_and_schedule(monkeypatch):
    """Every step runs (no held-out rows, no early stop), on int(0.75 N) distinct rows, cosine to lr_min."""
    seen, schedules = [], []
    real_cosine = torch.optim.lr_scheduler.CosineAnnealingLR

    def spy(opt, T_max, eta_min):
        schedules.append((T_max, eta_min))
        return real_cosine(opt, T_max=T_max, eta_min=eta_min)

    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", spy)
    g = torch.Generator().manual_seed(0)
    Q = nrm(torch.randn(80, 6, generator=g), dim=1)
    Y = nrm(torch.randn(4, 6, generator=g), dim=1)

    def rows(idx):
        seen.append(idx.clone())
        return Q[idx]

    W, curve = refine(torch.eye(6, 6)[:, :6], rows, 80, Y, (Q @ Y.T).argmax(1), ReferenceGPUA(n_steps=7).refine_config())
    assert len(seen) == 7 and curve == []
    assert all(len(s) == 60 and len(set(s.tolist())) == 60 for s in seen)
    assert schedules == [(7, 1e-7)]


def test_three_rounds_of_capped_swav_sinkhorn(fitted):
    hist = fitted.history_["ucm"]
    assert [h["round"] for h in hist] == [1, 2, 3]
    assert all(1 <= h["sinkhorn_iter"] <= 50 for h in hist)
    assert fitted.history_["sinkhorn_capped"] == sum(h["sinkhorn_iter"] == 50 for h in hist)


def test_the_iteration_cap_is_recorded_not_warned(small):
    """The reference caps Sinkhorn on purpose: no ConvergenceWarning (GPUA warns in the same case)."""
    train, _ = small
    data = (train.vfm_features, train.vlm_features, train.text_prototypes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ReferenceGPUA(sinkhorn_tol=1e-12, sinkhorn_max_iter=5, n_steps=0).fit(*data)
    assert m.history_["sinkhorn_capped"] == 3 and all(h["sinkhorn_iter"] == 5 for h in m.history_["ucm"])
    with pytest.warns(ConvergenceWarning, match="sinkhorn_max_iter"):
        GPUA(sinkhorn_max_iter=5, sinkhorn_tol=1e-12, refine=False).fit(*data)


def test_w0_is_hard_procrustes_pulled_toward_identity(small, fitted):
    train, _ = small
    Q = reference_query(torch.as_tensor(train.vfm_features), torch.as_tensor(train.vlm_features)).double()
    Y = nrm(torch.as_tensor(train.text_prototypes), dim=1).double()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(fitted.pseudo_labels_), Y.shape[0]).double()
    M = Q.T @ (onehot @ Y)  # target rows Y[label]
    W0 = fitted.W0_.double()
    m = min(W0.shape)
    assert W0.shape == (train.vfm_features.shape[1] + train.vlm_features.shape[1], Y.shape[1])
    # Undo the pull: block = 0.1 raw + 0.9 I.
    raw = W0.clone()
    raw[:m, :m] = (W0[:m, :m] - 0.9 * torch.eye(m, dtype=W0.dtype)) / 0.1
    # raw is a Procrustes solution of the hard assignment: semi-orthogonal, attaining max tr(W^T M) = ||M||_*.
    torch.testing.assert_close(raw.T @ raw, torch.eye(m, dtype=raw.dtype), atol=2e-4, rtol=0)
    nuclear = torch.linalg.svdvals(M).sum()
    torch.testing.assert_close(torch.trace(raw.T @ M), nuclear, rtol=1e-4, atol=0)
    assert float(torch.trace(W0.T @ M)) < float(nuclear) * 0.9  # the pull moved it off the optimum


def test_no_refinement_keeps_w0():
    d = make_planted(n_samples=200, n_classes=5, random_state=1)
    m = ReferenceGPUA(n_steps=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    torch.testing.assert_close(m.W_, m.W0_)


def test_prediction_is_argmax_cosine(small, fitted):
    _, test = small
    Q = reference_query(torch.as_tensor(test.vfm_features), torch.as_tensor(test.vlm_features))
    scores = nrm(Q @ fitted.W_, dim=1) @ fitted.text_prototypes_.T
    np.testing.assert_array_equal(fitted.predict(test.vfm_features, test.vlm_features), scores.argmax(1).numpy())
    np.testing.assert_allclose(fitted.transform(test.vfm_features, test.vlm_features), nrm(Q @ fitted.W_, dim=1).numpy(), atol=1e-6)
    with pytest.raises(GPUAError, match="vlm_features is required"):
        fitted.predict(test.vfm_features)


def test_beats_zero_shot_on_planted(small, fitted):
    train, test = small
    zs = VLMZeroShot().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    ref = fitted.score(test.vfm_features, test.labels, test.vlm_features)
    assert ref > zs.score(None, test.labels, test.vlm_features) + 0.05


def test_save_load_round_trip(small, fitted, tmp_path):
    _, test = small
    m2 = load_model(fitted.save(tmp_path / "ref.gpua"))
    assert isinstance(m2, ReferenceGPUA) and m2.get_params() == fitted.get_params()
    np.testing.assert_array_equal(m2.predict(test.vfm_features, test.vlm_features), fitted.predict(test.vfm_features, test.vlm_features))
    assert m2.history_["ucm"] == fitted.history_["ucm"]
    torch.testing.assert_close(m2.centres_, fitted.centres_)


def test_registered_as_a_method():
    assert "reference" in list_methods()
    m = make_method("reference", device="cpu", lam=0.5, random_state=3)  # GPUA overrides do not leak into the yardstick
    assert isinstance(m, ReferenceGPUA) and m.lam == 0.9 and m.random_state == 3


@pytest.mark.parametrize("param,value", [("lam", 1.5), ("n_steps", -1), ("batch_fraction", 0.0), ("dropout", 1.0), ("k", 0),
                                         ("sinkhorn_tol", 0.0), ("identity_pull", -0.1), ("n_rounds", 0)])
def test_bad_parameters_name_themselves(small, param, value):
    train, _ = small
    with pytest.raises(GPUAError, match=param):
        ReferenceGPUA(**{param: value}).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_pool_smaller_than_the_classes():
    d = make_planted(n_samples=30, n_classes=5, random_state=0)
    with pytest.raises(GPUAError, match="at least one image per class"):
        ReferenceGPUA().fit(d.vfm_features[:3], d.vlm_features[:3], d.text_prototypes)
