"""The Python API on inputs an audit found mishandled: tensors at odd scales, parameters changed
after fit, numpy-scalar parameters, protected or odd output paths, duplicate prototypes."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError, load_model, make_method

FAST = dict(n_steps=20, self_learning=0)


def test_tensors_at_extreme_scales_fit_as_arrays_do(small):
    """Rows are rescaled exactly (a power of two) for tensors too: the map the arrays give."""
    train, test = small
    Z, X, Y = train.vfm_features, train.vlm_features, train.text_prototypes
    ref = GPUA(**FAST).fit(Z, X, Y)
    for scale_z, scale_xy in ((1e20, 1.0), (1.0, 1e20), (1e-25, 1.0), (2.0**70, 2.0**-85)):
        Zs, Xs, Ys = (np.asarray(A, dtype=np.float32) * s for A, s in ((Z, scale_z), (X, scale_xy), (Y, scale_xy)))
        model = GPUA(**FAST).fit(torch.tensor(Zs), torch.tensor(Xs), torch.tensor(Ys))
        np.testing.assert_array_equal(model.W_.numpy(), GPUA(**FAST).fit(Zs, Xs, Ys).W_.numpy())
        if np.log2(scale_z).is_integer() and np.log2(scale_xy).is_integer():  # exact scales: the unscaled fit
            np.testing.assert_array_equal(model.W_.numpy(), ref.W_.numpy())
    # float64 tensors beyond float32's range are rescaled, not reported as inf
    big = GPUA(**FAST).fit(torch.tensor(Z, dtype=torch.float64) * 1e300, X, Y)
    assert np.array_equal(big.predict(test.vfm_features, test.vlm_features), ref.predict(test.vfm_features, test.vlm_features))


def test_logit_scale_is_bounded_and_checked_at_predict_proba(small):
    train, test = small
    with pytest.raises(GPUAError, match="logit_scale"):
        GPUA(**FAST, logit_scale=1e40).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model = GPUA(**FAST, logit_scale=1e4, proba_scale=None).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert np.isfinite(model.predict_proba(test.vfm_features, test.vlm_features)).all()
    model.set_params(logit_scale=-5)
    with pytest.raises(GPUAError, match="logit_scale=-5"):
        model.predict_proba(test.vfm_features, test.vlm_features)


@pytest.mark.parametrize("param", ["query", "center_vlm", "csls_k"])
def test_layout_parameters_changed_after_fit_are_refused(small, param, tmp_path):
    train, test = small
    model = GPUA(**FAST, query="fused").fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    before = model.predict(test.vfm_features, test.vlm_features)
    other = {"query": "vfm", "center_vlm": False, "csls_k": 3}[param]
    model.set_params(**{param: other})
    for call in (lambda: model.predict(test.vfm_features, test.vlm_features), lambda: model.save(tmp_path / "m.gpua")):
        with pytest.raises(GPUAError, match=f"{param}=.*changed after fit"):
            call()
    assert not (tmp_path / "m.gpua").exists()
    model.set_params(**{param: GPUA().get_params()[param] if param != "query" else "fused"})
    assert np.array_equal(model.predict(test.vfm_features, test.vlm_features), before)
    # other parameters take effect at the next fit; prediction is unchanged
    model.set_params(lam=0.3, n_steps=5)
    assert np.array_equal(model.predict(test.vfm_features, test.vlm_features), before)


def test_layout_is_remembered_by_a_loaded_model(small, tmp_path):
    train, test = small
    path = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes).save(tmp_path / "m.gpua")
    loaded = GPUA.load(path).set_params(query="vfm")
    with pytest.raises(GPUAError, match="query='vfm' \\(fitted with 'fused'\\)"):
        loaded.predict(test.vfm_features, test.vlm_features)


def test_csls_without_radii_is_a_clear_error(small):
    train, test = small
    model = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes).set_params(retrieval="csls")
    with pytest.raises(GPUAError, match="retrieval='csls' needs"):
        model.predict(test.vfm_features, test.vlm_features)


def test_numpy_scalar_and_tensor_parameters_save(small, tmp_path):
    train, test = small
    prior = torch.full((train.text_prototypes.shape[0],), 1.0 / train.text_prototypes.shape[0])
    model = GPUA(n_steps=np.int64(20), self_learning=np.int64(0), lam=np.float32(0.7), center=np.bool_(True), class_prior=prior)
    model.fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    loaded = GPUA.load(model.save(tmp_path / "m.gpua"))
    assert loaded.n_steps == 20 and isinstance(loaded.n_steps, int) and loaded.lam == pytest.approx(0.7)
    assert np.array_equal(loaded.predict(test.vfm_features, test.vlm_features), model.predict(test.vfm_features, test.vlm_features))


def test_random_state_none_draws_a_fresh_seed_and_bounds_hold(small):
    train, _ = small
    fits = [GPUA(n_steps=20, self_learning=0, random_state=None).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
            for _ in range(2)]
    seeds = [m.history_["random_state"] for m in fits]
    assert seeds[0] != seeds[1]
    assert GPUA(**FAST, random_state=7).fit(train.vfm_features, train.vlm_features, train.text_prototypes).history_["random_state"] == 7
    with pytest.raises(GPUAError, match="random_state"):
        GPUA(**FAST, random_state=2**64).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_unsupported_devices_are_refused(small, device):
    train, _ = small
    with pytest.raises(GPUAError, match=f"device='{device}'.*'cpu' or 'cuda'"):
        GPUA(**FAST, device=device).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_encoders_may_ask_for_mps_where_torch_has_it():
    from gpua._backend import resolve_device

    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():  # pragma: no cover - Apple machines
        assert resolve_device("mps", allow_mps=True).type == "mps"
    else:
        with pytest.raises(GPUAError, match="no MPS device here"):
            resolve_device("mps", allow_mps=True)


def test_make_method_suggests_a_misspelt_parameter():
    with pytest.raises(GPUAError, match="'lamda' is not a parameter of GPUA \\(did you mean 'lam'\\?\\)"):
        make_method("gpua", lamda=0.3)


def test_duplicate_prototypes_are_reported(small):
    train, _ = small
    Y = train.text_prototypes.copy()
    Y[2] = 3.0 * Y[0]  # the same direction
    for Yi in (Y, torch.tensor(Y)):
        with pytest.warns(UserWarning, match="rows 0 and 2 point the same way .*: their classes cannot be told apart, and "
                                             "images fall on either of the two arbitrarily"):
            GPUA(**FAST).fit(train.vfm_features, train.vlm_features, Yi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)  # distinct rows: silent


def test_fit_takes_a_shard_folder_path_and_refuses_other_paths(small, tmp_path):
    from gpua.stream import write_shards

    train, test = small
    write_shards(tmp_path / "s", train.vfm_features, train.vlm_features, text_prototypes=train.text_prototypes, dtype="float32")
    by_path = GPUA(**FAST).fit(str(tmp_path / "s"), None)
    assert by_path.predict(test.vfm_features, test.vlm_features).shape == (test.vfm_features.shape[0],)
    # Was: GPUA().fit(shards), the call the federated fit's message recommends, a TypeError (vlm_features had no default).
    alone = GPUA(**FAST).fit(str(tmp_path / "s"))
    np.testing.assert_array_equal(alone.predict(test.vfm_features, test.vlm_features),
                                  by_path.predict(test.vfm_features, test.vlm_features))
    (tmp_path / "f.npz").write_bytes(b"x")
    for path, what in ((tmp_path / "f.npz", "is a file"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(GPUAError, match=f"{what}; a path given to fit must be a shard set folder"):
            GPUA(**FAST).fit(str(path), None, train.text_prototypes)
        with pytest.raises(GPUAError, match=f"{what}; a path given to fit must be a shard set folder"):
            GPUA(**FAST).fit(str(path))
    with pytest.raises(GPUAError, match=r"vlm_features is None: fit needs the VLM image features .* only a shard set is "
                                        r"fitted without them, GPUA\(\).fit\(shards\)"):
        GPUA(**FAST, query="vfm").fit(train.vfm_features, None, train.text_prototypes)


def test_prediction_given_a_shard_set_or_a_path_says_it_takes_arrays(small, tmp_path):
    """Was: "vfm_features has dtype object" (a shard set) or "has dtype <U2" (its path): fit takes both."""
    from gpua.stream import write_shards

    train, test = small
    shards = write_shards(tmp_path / "s", test.vfm_features, test.vlm_features, labels=test.labels, dtype="float32")
    model = GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    for call in (lambda A: model.predict(A, test.vlm_features), lambda A: model.transform(A, test.vlm_features),
                 lambda A: model.score(A, test.labels, test.vlm_features), lambda A: model.predict(test.vfm_features, A)):
        with pytest.raises(GPUAError, match=r"is a shard set: prediction takes arrays. .*gpua predict --features DIR"):
            call(shards)
        with pytest.raises(GPUAError, match=r"is a path \(.*\): prediction takes arrays. .*load_features"):
            call(str(tmp_path / "s"))
    chunks = [model.predict(z.numpy(), x.numpy()) for _, _, (z, x) in shards.iter_rows(64)]  # the way the message gives
    np.testing.assert_array_equal(np.concatenate(chunks), model.predict(test.vfm_features, test.vlm_features))


def test_read_only_memmap_fits_without_torch_warnings(small, tmp_path):
    train, test = small
    np.save(tmp_path / "z.npy", train.vfm_features)
    Z = np.load(tmp_path / "z.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = GPUA(**FAST).fit(Z, train.vlm_features, train.text_prototypes)
        model.predict(Z, train.vlm_features)


class TestSavePaths:
    @pytest.fixture
    def model(self, small):
        train, _ = small
        return GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)

    def test_folder_and_path_under_a_file_are_clear_errors(self, model, tmp_path):
        (tmp_path / "adir").mkdir()
        (tmp_path / "afile").write_text("keep me")
        with pytest.raises(GPUAError, match="is an existing folder"):
            model.save(tmp_path / "adir")
        with pytest.raises(GPUAError, match="which is a file, not a folder"):
            model.save(tmp_path / "afile" / "m.gpua")
        assert (tmp_path / "afile").read_text() == "keep me"

    def test_read_only_target_is_kept(self, model, tmp_path, monkeypatch):
        target = tmp_path / "protected.gpua"
        model.save(target)  # a model: the one kind of file a save may replace, were it writable
        before = target.read_bytes()
        target.chmod(0o444)
        real_access = os.access
        # root passes os.access whatever the mode: stand in for an ordinary user
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (str(p) == str(target) and mode == os.W_OK) else real_access(p, mode, **kw))
        with pytest.raises(GPUAError, match="is a read-only file"):
            model.save(target)
        assert target.read_bytes() == before

    def test_a_users_file_named_like_a_model_is_kept_and_a_damaged_model_replaced(self, model, tmp_path):
        """Was: the .gpua ending alone made a file a model, so model.save() replaced a user's notes.gpua."""
        notes = tmp_path / "notes.gpua"
        notes.write_text("my notes\n")
        with pytest.raises(GPUAError, match="is named like a model but not one gpua saved, which this command would replace"):
            model.save(notes)
        from gpua._atomic import check_output

        for holds in ("report", "features"):  # nor by a report or features (they never replaced a .gpua file)
            with pytest.raises(GPUAError, match="is named like a model but not one gpua saved"):
                check_output(notes, "--out", holds=holds)
        assert notes.read_text() == "my notes\n"
        damaged, empty = tmp_path / "damaged.gpua", tmp_path / "empty.gpua"
        model.save(damaged)
        damaged.write_bytes(damaged.read_bytes()[:300])  # truncated: its header starts as a model's does
        empty.write_bytes(b"")
        for path in (damaged, empty):
            model.save(path)
            assert load_model(path).n_classes_ == model.n_classes_

    def test_a_model_under_a_feature_name_is_named_as_a_model(self, model, tmp_path):
        """Was: load_features called a model saved as model.npz a corrupt npz archive."""
        from gpua.features import load_features

        for name in ("model.npz", "model.safetensors", "model.gpua"):
            model.save(tmp_path / name)
            with pytest.raises(GPUAError, match="is a gpua model \\(written by model.save or gpua fit\\), not features; pass "
                                                "it where a model goes \\(gpua.load_model, --model\\)"):
                load_features(tmp_path / name)

    def test_tilde_is_expanded(self, model, tmp_path, monkeypatch):
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        out = model.save("~/m.gpua")
        assert out == tmp_path / "m.gpua" and out.is_file() and not (tmp_path / "~").exists()
