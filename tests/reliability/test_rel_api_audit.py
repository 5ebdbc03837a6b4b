"""API paths an audit found destructive or silently wrong (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest

from gpua import GPUA, GPUAError, load_model
from gpua.features import load_features, save_features

FAST = dict(n_steps=20, self_learning=0, random_state=0)


@pytest.fixture(scope="module")
def model():
    from gpua.synthetic import make_planted

    train, _ = make_planted(n_samples=240, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=1).split(160)
    return GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


@pytest.mark.parametrize("name", ["train.safetensors", "train.npz", "index.json", "notes.txt"])
def test_save_does_not_replace_a_file_that_is_not_a_model(model, tmp_path, name):
    target = tmp_path / name
    if name.startswith("train"):
        save_features(target, vfm_features=np.ones((3, 12), np.float32))
    else:
        target.write_text('{"format": "gpua-shards"}')
    before = target.read_bytes()
    with pytest.raises(GPUAError, match="which this command would replace with a model; nothing was written|a folder gpua wrote"):
        model.save(target)  # was: the user's feature file (or a shard set's index) replaced by the model
    assert target.read_bytes() == before


def test_save_replaces_a_model(model, tmp_path):
    target = tmp_path / "m.gpua"
    model.save(target)
    model.save(target)  # a model is replaced by a model, as before
    np.testing.assert_array_equal(load_model(target).W_, model.W_)


@pytest.mark.parametrize("name, value", [("lam", 7), ("logit_scale", -5.0), ("retrieval", "bogus")])
def test_save_refuses_parameters_load_would_call_corrupt(model, tmp_path, name, value):
    """set_params does not check (scikit-learn's rule); save wrote the value, and load_model then
    called the file corrupt and told the user to re-fit: the model was lost."""
    import copy

    bad = copy.deepcopy(model).set_params(**{name: value})
    target = tmp_path / "m.gpua"
    model.save(target)
    before = target.read_bytes()
    with pytest.raises(GPUAError, match=f"is not saved: {name}=.*Set a valid value with set_params"):
        bad.save(target)
    assert target.read_bytes() == before
    with pytest.raises(GPUAError, match="is not saved"):
        bad.save(tmp_path / "other.gpua")
    assert not (tmp_path / "other.gpua").exists()
    load_model(target)


def test_feature_files_without_feature_keys_are_refused(model, tmp_path):
    path = tmp_path / "typo.npz"
    np.savez(path, vfm_feature=np.ones((3, 4)), vlm_feature=np.ones((3, 4)))
    with pytest.raises(GPUAError, match=r"holds none of the feature keys .* \(its keys: \['vfm_feature', 'vlm_feature'\]\)"):
        load_features(path)  # was: an empty FeatureSet, and a misleading error later in the fit
    renamed = tmp_path / "model.safetensors"
    model.save(tmp_path / "m.gpua")
    renamed.write_bytes((tmp_path / "m.gpua").read_bytes())
    with pytest.raises(GPUAError, match="is a gpua model .*gpua.load_model"):
        load_features(renamed)
    arrays = tmp_path / "arrays.npz"  # a model's tensors saved by hand: still not features
    np.savez(arrays, W_=np.ones((4, 3), np.float32), text_prototypes_=np.ones((2, 3), np.float32))
    with pytest.raises(GPUAError, match="holds a fitted model's arrays .* gpua.load_model"):
        load_features(arrays)
    mixed = tmp_path / "mixed.npz"
    np.savez(mixed, vfm_features=np.ones((3, 4), np.float32), vlm_feature=np.ones((3, 4), np.float32))
    with pytest.warns(UserWarning, match=r"holds key\(s\) \['vlm_feature'\] that are not read"):
        assert load_features(mixed).vlm_features is None


def test_a_streamed_fit_does_not_put_the_stored_names_on_other_prototypes(tmp_path):
    from gpua.stream import write_shards
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=200, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=2)
    names = ["cat", "dog", "car", "ship"]
    shards = write_shards(tmp_path / "s", d.vfm_features, d.vlm_features, dtype="float32",
                          text_prototypes=d.text_prototypes, classnames=names)
    same = GPUA(**FAST).fit(shards, None, d.text_prototypes)
    assert same.classnames_ == names  # the stored prototypes: their names go with them
    with pytest.warns(UserWarning, match="the shard set's class names are not used"):
        other = GPUA(**FAST).fit(shards, None, d.text_prototypes[::-1].copy())
    assert other.classnames_ is None  # was: ["cat", "dog", "car", "ship"] on prototypes in reverse order
    named = GPUA(**FAST).fit(shards, None, d.text_prototypes[::-1].copy(), classnames=names[::-1])
    assert named.classnames_ == names[::-1]


@pytest.mark.parametrize("callback", [5, "print"])
def test_a_callback_that_cannot_be_called_is_refused_before_the_fit(callback, monkeypatch):
    import gpua.estimator

    def no_fit(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("the fit ran")

    monkeypatch.setattr(gpua.estimator, "fit_arrays", no_fit)
    with pytest.raises(GPUAError, match=r"callback=.* is not callable"):
        GPUA().fit(np.ones((4, 3)), np.ones((4, 3)), np.eye(3)[:2], callback=callback)  # was: TypeError after a UCM round


def test_two_class_decision_function_is_one_column_as_in_scikit_learn():
    pytest.importorskip("sklearn")
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    from gpua.calibrate import LinearClassifier, ShrinkageLDA

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 5)), rng.normal(1.5, 1, (60, 5))])
    y = np.repeat([0, 1], 60)
    for clf in (LinearClassifier(), ShrinkageLDA()):
        clf.fit(X, y)
        s = clf.decision_function(X)
        assert s.shape == (120,)  # was (120, 2): roc_auc scoring gave NaN
        np.testing.assert_array_equal(clf.predict(X), (s > 0).astype(int))
        assert roc_auc_score(y, s) > 0.8
        assert np.all(cross_val_score(clf, X, y, cv=3, scoring="roc_auc") > 0.7)
    three = LinearClassifier().fit(np.vstack([X, rng.normal(-2, 1, (60, 5))]), np.repeat([0, 1, 2], 60))
    assert three.decision_function(X).shape == (120, 3)


@pytest.mark.parametrize("name, value", [("lr", 1e300), ("hubness_weight", 2.0**70), ("margin_scale", 2.0**70),
                                         ("noise_std", 2.0**70)])
def test_training_values_past_any_use_are_refused_by_name(name, value):
    from gpua import ReferenceGPUA

    rng = np.random.default_rng(0)
    Z, X, Y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), rng.normal(size=(2, 4))
    for cls in (GPUA, ReferenceGPUA):
        with pytest.raises(GPUAError, match=rf"{name}=.* must be a float in .*1000000\]"):
            cls(**{name: value}).fit(Z, X, Y)  # was: RuntimeError / OverflowError deep inside torch


def test_the_reference_names_a_pool_of_one_image_as_gpua_does():
    from gpua import ReferenceGPUA

    rng = np.random.default_rng(0)
    Z, X = np.tile(rng.normal(size=(1, 4)), (20, 1)), np.tile(rng.normal(size=(1, 4)), (20, 1))
    with pytest.raises(GPUAError, match=r"20 copies of one image\?"):
        ReferenceGPUA().fit(Z, X, rng.normal(size=(2, 4)))  # was: "scores contain NaN or inf"
