import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError, ModelFileError, NotFittedError, VLMZeroShot, load_model
from gpua.procrustes import orthogonality_error

FAST = dict(n_steps=40, eval_every=10)


def _fit(train, **kw):
    return GPUA(**{**FAST, **kw}).fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)


@pytest.mark.parametrize("query", ["fused", "vfm"])
def test_gpua_beats_zero_shot_on_planted_data(planted, query):
    train, test = planted
    zs = VLMZeroShot().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model = _fit(train, query=query)
    acc_zs = zs.score(None, test.labels, test.vlm_features)
    acc = model.score(test.vfm_features, test.labels, test.vlm_features)
    assert acc_zs < 0.7
    assert acc > acc_zs + 0.25
    assert acc > 0.9


def test_fit_uses_no_labels(planted, tmp_path):
    """Fitting from a feature file with its labels, with them permuted, or without them gives the same map."""
    from gpua.cli import main
    from gpua.features import save_features

    train, _ = planted
    base = dict(vfm_features=train.vfm_features, vlm_features=train.vlm_features, text_prototypes=train.text_prototypes,
                classnames=train.classnames)
    shuffled = np.random.default_rng(0).permutation(train.labels)
    assert (shuffled != train.labels).mean() > 0.5
    maps = []
    for name, extra in (("labels", {"labels": train.labels}), ("permuted", {"labels": shuffled}), ("none", {})):
        path = save_features(tmp_path / f"{name}.npz", **base, **extra)
        model = tmp_path / f"{name}.gpua"
        assert main(["fit", "--train", str(path), "--out", str(model), "--n-steps", "40", "--param", "eval_every=10"]) == 0
        maps.append(GPUA.load(model).W_)
    torch.testing.assert_close(maps[1], maps[0], atol=0, rtol=0)
    torch.testing.assert_close(maps[2], maps[0], atol=0, rtol=0)


def test_streamed_fit_uses_no_labels(planted, tmp_path):
    """A shard set that stores labels fits to the same map as one that does not."""
    from gpua.stream import write_shards

    train, _ = planted
    args = (train.vfm_features, train.vlm_features)
    with_labels = write_shards(tmp_path / "a", *args, labels=train.labels, text_prototypes=train.text_prototypes, rows_per_shard=500)
    without = write_shards(tmp_path / "b", *args, text_prototypes=train.text_prototypes, rows_per_shard=500)
    a = GPUA(**FAST).fit(with_labels, None, None)
    b = GPUA(**FAST).fit(without, None, None)
    torch.testing.assert_close(a.W_, b.W_, atol=0, rtol=0)


@pytest.mark.parametrize("query", ["vfm", "fused"])
def test_query_modes_shapes(planted, query):
    train, test = planted
    m = _fit(train, query=query)
    d_q = train.vfm_features.shape[1] + (train.vlm_features.shape[1] if query == "fused" else 0)
    assert tuple(m.W_.shape) == (d_q, train.vlm_features.shape[1])
    T = m.transform(test.vfm_features, test.vlm_features)
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1.0, rtol=1e-5)
    P = m.predict_proba(test.vfm_features, test.vlm_features)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-5)


def test_fused_query_requires_vlm_at_predict(planted):
    train, test = planted
    m = _fit(train, refine=False)
    assert m.query == "fused"
    with pytest.raises(GPUAError, match="vlm_features is required"):
        m.predict(test.vfm_features)


@pytest.mark.parametrize("mode", ["project", "none", "penalty"])
def test_orthogonality_modes(planted, mode):
    train, _ = planted
    # Unwhitened: W_ is then the refined map itself (a whitened W_ = M W is orthogonal in M's coordinates).
    m = _fit(train, orthogonality=mode, n_steps=30, patience=100, whiten=None)
    err = orthogonality_error(m.W_)
    if mode == "project":
        assert err < 1e-4
    assert orthogonality_error(m.W0_) < 1e-4
    assert m.history_["orthogonality_error"] == pytest.approx(err)


def test_procrustes_only_is_semi_orthogonal(planted):
    train, _ = planted
    m = _fit(train, refine=False, whiten=None)
    W = m.W_.double()
    torch.testing.assert_close(W.T @ W, torch.eye(W.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_whitened_map_is_orthogonal_in_the_whitened_coordinates(planted):
    """The default fit whitens the query: W_ = M W with W (semi-)orthogonal, M the pool's whitening."""
    from gpua.query import build_query, whitening_map

    train, _ = planted
    m = _fit(train, refine=False, self_learning=0)
    Q = build_query(torch.as_tensor(train.vfm_features), torch.as_tensor(train.vlm_features), m.query, m.vfm_mean_, m.vlm_mean_)
    M = whitening_map(Q, m.history_["whiten_components"], m.whiten_shrink).double()
    W = torch.linalg.pinv(M) @ m.W_.double()  # M has full column rank: pinv(M) M = I
    torch.testing.assert_close(M @ W, m.W_.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(W.T @ W, torch.eye(W.shape[1], dtype=torch.float64), atol=1e-4, rtol=0)
    assert orthogonality_error(m.W_) > 1.0  # and not orthogonal in the query's own coordinates


def test_early_stopping_keeps_best_validation_map(planted):
    """The kept map's held-out loss is the minimum of the recorded curve (not the last point's)."""
    from gpua.query import build_query, target_prototypes
    from gpua.refinement import RefineConfig, heldout_loss, split_pool

    train, _ = planted
    # refine_tol=0: every decrease resets the patience, so an early stop ends on evaluations that
    # did not improve and the last point of the curve is not its minimum; a large lr overfits
    # the pseudo-labels early, so the stop comes well before n_steps whatever the thread count.
    m = _fit(train, n_steps=200, eval_every=5, patience=2, refine_tol=0.0, lr=1e-2)
    curve = m.history_["refine"]
    vals = [c["val_loss"] for c in curve]
    assert curve[-1]["step"] < 200  # stopped early
    assert vals[-1] > min(vals)
    config = RefineConfig.from_params(m.get_params())
    _, val_idx, _ = split_pool(train.vfm_features.shape[0], config)
    Q = build_query(torch.from_numpy(train.vfm_features), torch.from_numpy(train.vlm_features), m.query, m.vfm_mean_, m.vlm_mean_)
    labels = torch.from_numpy(m.pseudo_labels_)
    kept = heldout_loss(m.W_, Q[val_idx], target_prototypes(m.text_prototypes_, m.center_vlm), labels[val_idx], config)
    assert kept == pytest.approx(min(vals), abs=1e-6)


@pytest.mark.parametrize("tol", [0.0, 0.05])
def test_early_stopping_follows_the_tolerance_rule(planted, tol):
    """Replay the recorded held-out curve: the fit stops exactly where the rule says."""
    train, _ = planted
    patience = 3
    m = _fit(train, n_steps=200, eval_every=5, patience=patience, refine_tol=tol)
    vals = [c["val_loss"] for c in m.history_["refine"]]
    best, bad, stop_at = vals[0], 0, None
    for i, v in enumerate(vals[1:], start=1):
        bad = 0 if v < best - max(1e-6, tol * abs(best)) else bad + 1
        best = min(best, v)
        if bad >= patience:
            stop_at = i
            break
    if m.history_["refine"][-1]["step"] < 200:  # stopped early: exactly at the rule's first stop
        assert stop_at == len(vals) - 1
    else:  # ran out of steps: the rule never fired before the last evaluation
        assert stop_at in (None, len(vals) - 1)


def test_larger_refine_tol_never_steps_more(planted):
    train, _ = planted
    steps = [_fit(train, n_steps=200, eval_every=5, patience=3, refine_tol=t).history_["refine"][-1]["step"] for t in (0.0, 0.2)]
    assert steps[1] <= steps[0]
    assert steps[1] < 200  # a 20% gain per evaluation cannot last


def test_reproducible_with_seed(planted):
    train, test = planted
    a = _fit(train, random_state=7).decision_function(test.vfm_features, test.vlm_features)
    b = _fit(train, random_state=7).decision_function(test.vfm_features, test.vlm_features)
    np.testing.assert_array_equal(a, b)


def test_csls_retrieval(planted):
    train, test = planted
    m = _fit(train, refine=False, retrieval="csls", csls_k=5, query="vfm")
    assert m.proto_radius_.shape == (train.text_prototypes.shape[0],)
    assert m.score(test.vfm_features, test.labels) > 0.9


def test_sklearn_contract(planted):
    from sklearn.base import clone

    m = GPUA(lam=0.7, query="fused")
    params = m.get_params()
    assert params["lam"] == 0.7 and params["query"] == "fused"
    c = clone(m)
    assert c.get_params() == params and c is not m
    assert m.set_params(lam=0.5) is m and m.lam == 0.5
    with pytest.raises(GPUAError, match="not a parameter"):
        m.set_params(lambda_=0.3)
    assert "lam=0.5" in repr(m)
    train, _ = planted
    fitted = _fit(train)
    assert fitted.n_classes_ == train.text_prototypes.shape[0]
    assert not hasattr(GPUA(), "W_")


def test_save_load_roundtrip(planted, tmp_path, device):
    train, test = planted
    m = _fit(train, query="fused", retrieval="csls", device=device)
    assert m.W_.device.type == device and m.proto_radius_.device.type == device
    path = m.save(tmp_path / "model.gpua")
    m2 = GPUA.load(path)
    assert m2.W_.device.type == device
    np.testing.assert_allclose(m2.decision_function(test.vfm_features, test.vlm_features), m.decision_function(test.vfm_features, test.vlm_features), atol=1e-6)
    assert m2.classnames_ == train.classnames
    assert m2.get_params() == m.get_params()
    assert isinstance(load_model(path), GPUA)


def test_save_is_atomic_and_keeps_old_model(planted, tmp_path, monkeypatch):
    train, test = planted
    m = _fit(train, refine=False)
    path = m.save(tmp_path / "model.gpua")
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        with open(a[1], "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        m.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.gpua"]


def test_corrupt_truncated_and_newer_model_files(planted, tmp_path):
    train, _ = planted
    path = _fit(train, refine=False).save(tmp_path / "m.gpua")
    data = path.read_bytes()
    (tmp_path / "trunc.gpua").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.gpua")
    (tmp_path / "junk.gpua").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "junk.gpua")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.gpua")
    # A file from a future format version.
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["gpua"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = 99
    save_file(tensors, str(tmp_path / "new.gpua"), metadata={"gpua": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="upgrade gpua"):
        load_model(tmp_path / "new.gpua")


def test_predict_before_fit():
    with pytest.raises(NotFittedError, match="not fitted"):
        GPUA().predict(np.ones((3, 4)))
    with pytest.raises(NotFittedError):
        GPUA().save("x.gpua")


def test_lambda_extremes_and_hard_assignment_run(planted):
    train, test = planted
    for kw in ({"lam": 1.0}, {"lam": 0.0, "eps": 0.05}, {"assignment": "hard"}, {"similarity": "neg_euclidean", "eps": 0.2}, {"center": True}, {"rho": 1.0}):
        m = _fit(train, refine=False, **kw)
        assert m.score(test.vfm_features, test.labels, test.vlm_features) > 0.5, kw


def test_class_prior_length_checked(planted):
    train, _ = planted
    with pytest.raises(GPUAError, match="class_prior"):
        _fit(train, class_prior=[0.5, 0.5])


# --- pool_augment: calibrated synthetic rows per pseudo-class before refinement ------------------


def test_pool_augment_off_reproduces_the_plain_fit(planted):
    train, test = planted
    plain = _fit(train, query="vfm")
    off = _fit(train, query="vfm", pool_augment=0)
    torch.testing.assert_close(off.W_, plain.W_, atol=0, rtol=0)
    assert off.history_["refine"] == plain.history_["refine"]
    assert off.history_["pool_augment"] == {"n_rows": 0}


def test_pool_augment_adds_rows_per_pseudo_class_to_training_only(planted):
    train, _ = planted
    m = _fit(train, query="vfm", pool_augment=5)
    record = m.history_["pool_augment"]
    k = train.text_prototypes.shape[0]
    # The held-out 10% is drawn as in the plain fit; the classes of the other 90% get 5 rows each.
    n = train.vfm_features.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train_counts = np.bincount(m.pseudo_labels_[perm[int(round(0.1 * n)):].numpy()], minlength=k)
    assert record["per_class"] == [5 if c >= 2 else 0 for c in train_counts]
    assert record["n_rows"] == 5 * int((train_counts >= 2).sum())
    assert all(r is None or 0.0 <= r <= 1.0 for r in record["oas_shrinkage"])
    assert not torch.equal(m.W_, _fit(train, query="vfm").W_)


def test_pool_augment_is_deterministic_with_random_state(planted):
    train, test = planted
    a = _fit(train, pool_augment=8, random_state=3).decision_function(test.vfm_features, test.vlm_features)
    b = _fit(train, pool_augment=8, random_state=3).decision_function(test.vfm_features, test.vlm_features)
    np.testing.assert_array_equal(a, b)


def test_oas_factor_reproduces_the_shrunk_covariance(rng):
    from gpua.calibrate import ClassStatistics, oas_shrinkage
    from gpua.calibrate import oas_factor

    X = rng.standard_normal((12, 30)) @ rng.standard_normal((30, 30))  # n < d: S is rank-deficient
    L, rho = oas_factor(X)
    S = ClassStatistics(1).fit(X, np.zeros(12, np.int64)).covariance_[0]
    shrunk, rho_ref = oas_shrinkage(S, 12)
    assert rho == pytest.approx(rho_ref) and 0.0 < rho < 1.0
    np.testing.assert_allclose(L @ L.T, shrunk, atol=1e-10 * np.abs(shrunk).max())
    with pytest.raises(GPUAError, match="at least 2 rows"):
        oas_factor(X[:1])


@pytest.mark.parametrize("value", [-1, 2.5, "16", True])
def test_pool_augment_bad_values(planted, value):
    train, _ = planted
    with pytest.raises(GPUAError, match="pool_augment"):
        _fit(train, pool_augment=value)


def test_pool_augment_params_and_save_load(planted, tmp_path):
    train, test = planted
    m = _fit(train, query="vfm", pool_augment=4)
    assert m.get_params()["pool_augment"] == 4 and "pool_augment=4" in repr(m)
    m2 = GPUA.load(m.save(tmp_path / "aug.gpua"))
    assert m2.pool_augment == 4 and m2.history_["pool_augment"]["n_rows"] == m.history_["pool_augment"]["n_rows"]
    np.testing.assert_allclose(m2.decision_function(test.vfm_features), m.decision_function(test.vfm_features), atol=1e-6)


def test_pool_augment_is_refused_by_the_streamed_fit(planted):
    from gpua.stream import fit_streaming

    train, _ = planted
    with pytest.raises(GPUAError, match="pool_augment=4: augmenting the pool is in-memory only"):
        fit_streaming(GPUA(pool_augment=4), (train.vfm_features, train.vlm_features), train.text_prototypes, progress=False)


def test_tensor_inputs_are_checked_where_they_are(planted, device, monkeypatch):
    """Torch tensors skip the numpy checks (no copy through the host) and fit to the arrays' map."""
    import gpua.fitting

    train, test = planted
    ref = _fit(train, device=device)

    def host_copy(*a, **k):
        raise AssertionError("tensor inputs went through the numpy checks")

    monkeypatch.setattr(gpua.fitting, "check_triplet", host_copy)
    Z, X, Y = (torch.from_numpy(A).to(device) for A in (train.vfm_features, train.vlm_features, train.text_prototypes))
    got = GPUA(**FAST, device=device).fit(Z, X, Y, classnames=train.classnames)
    torch.testing.assert_close(got.W_, ref.W_, atol=1e-5, rtol=0)
    assert got.W_.device.type == device
    bad = Z.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(GPUAError, match=r"vfm_features contains NaN or inf in 1 row\(s\) \(first: row 3\)"):
        GPUA(**FAST, device=device).fit(bad, X, Y)
    with pytest.raises(GPUAError, match="vlm_features has 10 rows"):
        GPUA(**FAST, device=device).fit(Z, X[:10], Y)
