"""The estimator API walked as a demanding scikit-learn user drives it, on small random data.

The tests under "fixed" each failed before their fix: scikit-learn's ``check_is_fitted`` and
``is_classifier`` raised AttributeError on every gpua estimator, a refused refit of the baselines
left a half-updated model, labels given to fit (``fit(X, y)``, a Pipeline) got advice to reshape
them, ``score``'s argument order was reported as a feature error, a model saved with
``device="cuda"`` could not be loaded on a machine without a GPU, and a feature file given to
``load_model`` was called corrupt. The tests under "guards" pin behaviour that already held.
"""

import copy
import pickle

import numpy as np
import pytest
import torch

import gpua
from gpua import GPUA, GPUAError, ModelFileError, ReferenceGPUA, load_model
from gpua.baselines import LFAAlternation, VLMZeroShot

N, D_VFM, D_VLM, K = 60, 16, 12, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(N, D_VFM)).astype(np.float32)
    X = rng.normal(size=(N, D_VLM)).astype(np.float32)
    Y = rng.normal(size=(K, D_VLM)).astype(np.float32)
    return Z, X, Y


def _fast(name: str):
    """``make_method(name)`` with a short refinement (the fitted numbers are not under test here)."""
    model = gpua.make_method(name)
    params = model.get_params()
    model.set_params(**{k: v for k, v in (("n_steps", 3), ("self_learning", 0)) if k in params})
    return model


ESTIMATORS = [lambda: GPUA(n_steps=3, self_learning=0), lambda: ReferenceGPUA(n_steps=3), LFAAlternation, VLMZeroShot]
ESTIMATOR_IDS = ["GPUA", "ReferenceGPUA", "LFAAlternation", "VLMZeroShot"]


# --- fixed ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", gpua.list_methods())
def test_sklearn_check_is_fitted_and_tags(data, name):
    """check_is_fitted / is_classifier / get_tags raised AttributeError (no __sklearn_tags__) on scikit-learn >= 1.6."""
    validation = pytest.importorskip("sklearn.utils.validation")
    from sklearn.base import is_classifier
    from sklearn.exceptions import NotFittedError as SkNotFitted

    model = _fast(name)
    try:
        from sklearn.utils import get_tags
    except ImportError:  # scikit-learn < 1.6 has no tags API (nor reads __sklearn_tags__)
        get_tags = None
    if get_tags is not None:
        assert get_tags(model).target_tags.required is False
    assert is_classifier(model) is False  # fit takes no labels: not a scikit-learn classifier
    with pytest.raises(SkNotFitted):
        validation.check_is_fitted(model)
    model.fit(*data)
    validation.check_is_fitted(model)
    assert model.__sklearn_is_fitted__()


def test_sklearn_check_is_fitted_on_a_loaded_model(data, tmp_path):
    validation = pytest.importorskip("sklearn.utils.validation")
    path = GPUA(n_steps=3, self_learning=0).fit(*data).save(tmp_path / "m.gpua")
    validation.check_is_fitted(load_model(path))


def test_sklearn_tags_of_the_calibrator():
    """The shared parameter mixin gives the calibrators the tags too."""
    validation = pytest.importorskip("sklearn.utils.validation")
    from sklearn.exceptions import NotFittedError as SkNotFitted

    from gpua.calibrate import DistributionCalibrator

    with pytest.raises(SkNotFitted):
        validation.check_is_fitted(DistributionCalibrator())


@pytest.mark.parametrize("make", ESTIMATORS, ids=ESTIMATOR_IDS)
def test_a_refused_refit_leaves_the_previous_fit_whole(data, make):
    """LFAAlternation and VLMZeroShot wrote the new widths before checking classnames: a refused
    refit left n_features_* of the new data beside W_ of the old, and predict refused the old data."""
    Z, X, Y = data
    model = make().fit(Z, X, Y, classnames=list("abcd"))
    before = model.predict(Z, X)
    rng = np.random.default_rng(1)
    Z2, X2, Y2 = (rng.normal(size=s).astype(np.float32) for s in ((50, 20), (50, 10), (3, 10)))
    with pytest.raises(GPUAError, match="duplicate name"):
        model.fit(Z2, X2, Y2, classnames=["a", "a", "b"])
    assert (model.n_features_vfm_, model.n_features_vlm_, model.n_classes_) == (D_VFM, D_VLM, K)
    assert model.classnames_ == list("abcd")
    np.testing.assert_array_equal(model.predict(Z, X), before)


@pytest.mark.parametrize("make", ESTIMATORS, ids=ESTIMATOR_IDS)
def test_labels_given_to_fit_are_named_as_such(data, make):
    """fit(Z, y) / fit(Z, X, y), the scikit-learn habit, got "reshape it with .reshape(1, -1)"."""
    Z, X, Y = data
    y = np.arange(N) % K
    with pytest.raises(GPUAError, match=r"vlm_features has shape \(60,\).*fit learns without labels") as err:
        make().fit(Z, y, Y)
    assert "reshape" not in str(err.value)
    with pytest.raises(GPUAError, match=r"text_prototypes has shape \(60,\).*labels go to score"):
        make().fit(Z, X, y)
    with pytest.raises(GPUAError, match=r"vlm_features has shape \(60,\)"):
        make().fit(Z, list(y), Y)  # a list, as well as an array


def test_in_a_pipeline_the_error_says_fit_is_no_pipeline_step(data):
    pipeline = pytest.importorskip("sklearn.pipeline")
    from sklearn.preprocessing import StandardScaler

    Z, X, _ = data
    y = np.arange(N) % K
    with pytest.raises(GPUAError, match="no Pipeline step"):
        pipeline.make_pipeline(StandardScaler(), GPUA(n_steps=3)).fit(Z, y)
    with pytest.raises(GPUAError, match=r"text_prototypes is None.*\(n_classes, d_vlm\)"):
        pipeline.make_pipeline(StandardScaler(), GPUA(n_steps=3)).fit(Z, X)


def test_score_with_the_arguments_in_another_order(data):
    """score(Z, X, y) was reported as "vlm_features must be 2-D ... reshape it"."""
    Z, X, Y = data
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y)
    y = model.predict(Z, X)
    with pytest.raises(GPUAError, match=r"score takes \(vfm_features, labels, vlm_features\)"):
        model.score(Z, X, y)
    assert model.score(Z, y, X) == 1.0
    assert model.score(Z, list(y), X) == 1.0


@pytest.mark.parametrize("make", [lambda: ReferenceGPUA(n_steps=3), VLMZeroShot], ids=["ReferenceGPUA", "VLMZeroShot"])
def test_missing_vlm_features_advice_fits_the_estimator(data, make):
    """Estimators without a query parameter were told to "fit with query='vfm'"."""
    Z, X, Y = data
    model = make().fit(Z, X, Y)
    with pytest.raises(GPUAError, match="vlm_features is required") as err:
        model.predict(Z)
    assert "query='vfm'" not in str(err.value)
    with pytest.raises(GPUAError, match="fit with query='vfm'"):
        GPUA(n_steps=3, self_learning=0).fit(Z, X, Y).predict(Z)


def _without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("make", [lambda: GPUA(n_steps=3, self_learning=0), VLMZeroShot], ids=["GPUA", "VLMZeroShot"])
def test_a_model_saved_for_cuda_loads_without_a_gpu_with_device(data, tmp_path, monkeypatch, make):
    """A model fitted with device="cuda" could not be loaded on a machine without a GPU at all: the
    error said "use device='cpu'", and neither load_model nor .load took a device."""
    Z, X, Y = data
    model = make().fit(Z, X, Y)
    expected = model.decision_function(Z, X)
    model.set_params(device="cuda")  # as a CUDA fit saves it: the file holds CPU tensors and device="cuda"
    path = model.save(tmp_path / "cuda.gpua")
    _without_cuda(monkeypatch)
    with pytest.raises(ModelFileError, match=r"saved with device='cuda'.*load_model\(path, device='cpu'\)"):
        load_model(path)
    for loaded in (load_model(path, device="cpu"), type(model).load(path, device="cpu"), load_model(path, device="auto")):
        assert loaded.get_params()["device"] in ("cpu", "auto") and loaded.text_prototypes_.device.type == "cpu"
        np.testing.assert_allclose(loaded.decision_function(Z, X), expected, atol=1e-6)
    with pytest.raises(GPUAError, match="no CUDA GPU"):
        load_model(path, device="cuda")
    with pytest.raises(GPUAError, match="device='tpu'"):
        load_model(path, device="tpu")


def test_a_cpu_model_loads_on_a_machine_without_cuda(data, tmp_path, monkeypatch):
    """(A guard.) device="cpu" models never touch CUDA when loaded."""
    Z, X, Y = data
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y)
    path = model.save(tmp_path / "cpu.gpua")
    _without_cuda(monkeypatch)
    np.testing.assert_array_equal(load_model(path).predict(Z, X), model.predict(Z, X))
    np.testing.assert_array_equal(load_model(str(path), device=torch.device("cpu")).predict(Z, X), model.predict(Z, X))


def test_a_file_of_another_kind_is_named(data, tmp_path):
    """A feature .npz given to load_model was reported "corrupt or truncated (SafetensorError: ... header too
    large); re-run `gpua fit`", which sends the user to refit rather than to the file they passed."""
    from gpua.features import save_features

    Z, X, Y = data
    npz = save_features(tmp_path / "train.npz", vfm_features=Z, vlm_features=X, text_prototypes=Y)
    with pytest.raises(ModelFileError, match="it is a zip archive.*pass the .gpua file.*load_features") as err:
        load_model(npz)
    assert "re-run" not in str(err.value) and "header" not in str(err.value)
    np.save(tmp_path / "z.npy", Z)
    with pytest.raises(ModelFileError, match="numpy .npy array"):
        load_model(tmp_path / "z.npy")
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(GPUA()))
    with pytest.raises(ModelFileError, match="Python pickle"):
        GPUA.load(tmp_path / "m.pkl")
    (tmp_path / "junk.gpua").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "junk.gpua")


# --- guards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", gpua.list_methods())
def test_every_method_shapes_probabilities_and_copies(data, name):
    Z, X, Y = data
    model = _fast(name).fit(Z, X, Y)
    pred, proba, scores = model.predict(Z, X), model.predict_proba(Z, X), model.decision_function(Z, X)
    assert pred.shape == (N,) and pred.dtype.kind == "i"
    assert proba.shape == scores.shape == (N, K)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred, scores.argmax(1))
    assert model.score(Z, pred, X) == 1.0
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(twin.predict(Z, X), pred)
    unfitted = pickle.loads(pickle.dumps(_fast(name)))
    with pytest.raises(gpua.NotFittedError, match=r"call fit\("):
        unfitted.predict(Z, X)


@pytest.mark.parametrize("name", gpua.list_methods())
def test_clone_copies_parameters_and_no_fitted_state(data, name):
    base = pytest.importorskip("sklearn.base")
    model = _fast(name).fit(*data)
    twin = base.clone(model)
    assert twin.get_params() == model.get_params() and repr(twin) == repr(model)
    assert not any(k.endswith("_") for k in vars(twin))


def test_inputs_are_never_written_and_other_layouts_agree(data):
    Z, X, Y = data
    ro = [A.copy() for A in (Z, X, Y)]
    for A in ro:
        A.flags.writeable = False
    model = GPUA(n_steps=3, self_learning=0).fit(*ro)
    pred = model.predict(Z, X)
    np.testing.assert_array_equal(model.predict(*ro[:2]), pred)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(Z), np.asfortranarray(X)), pred)
    np.testing.assert_array_equal(model.predict(np.repeat(Z, 2, axis=1)[:, ::2], X), pred)  # not contiguous
    np.testing.assert_array_equal(model.predict(Z.tolist(), X.tolist()), pred)
    np.testing.assert_array_equal(model.predict(torch.from_numpy(Z), torch.from_numpy(X)), pred)
    np.testing.assert_array_equal(model.predict(Z.astype(np.float64), X.astype(np.float64)), pred)
    for A, B in zip(ro, (Z, X, Y)):
        np.testing.assert_array_equal(A, B)


def test_same_seed_same_map_and_seeds_that_are_not_ints_are_refused(data):
    a, b = (GPUA(n_steps=10, self_learning=1).fit(*data) for _ in range(2))
    assert torch.equal(a.W_, b.W_)
    assert isinstance(GPUA(n_steps=3, self_learning=0, random_state=None).fit(*data).history_["random_state"], int)
    with pytest.raises(GPUAError, match="random_state=Generator.*must be None or an int"):
        GPUA(random_state=np.random.default_rng(0)).fit(*data)


def test_the_command_line_loads_a_cuda_model_with_device_cpu(data, tmp_path, monkeypatch, capsys):
    """`gpua predict`/`evaluate` had no --device, so a model fitted on a GPU could not be used on
    a machine without one from the command line."""
    from gpua.cli import main
    from gpua.features import save_features

    Z, X, Y = data
    labels = np.arange(N) % K
    feats = save_features(tmp_path / "f.npz", vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=labels,
                          classnames=[f"c{k}" for k in range(K)])
    model = GPUA(n_steps=3, self_learning=0).fit(Z, X, Y, classnames=[f"c{k}" for k in range(K)]).set_params(device="cuda")
    path = model.save(tmp_path / "cuda.gpua")
    _without_cuda(monkeypatch)
    assert main(["predict", "--model", str(path), "--features", str(feats), "--out", str(tmp_path / "p.csv")]) == 2
    assert "--device cpu" in capsys.readouterr().err
    assert main(["predict", "--model", str(path), "--features", str(feats), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    assert main(["evaluate", "--model", str(path), "--test", str(feats), "--device", "cpu"]) == 0
    assert main(["predict", "--model", str(path), "--features", str(feats), "--out", str(tmp_path / "q.csv"), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()


def test_a_torch_device_is_a_device(data, tmp_path):
    """``GPUA(device=torch.device("cpu"))``, as torch code writes it, was refused as "not a device
    string"; it fits, clones, and its model file stores the device's string."""
    from sklearn.base import clone

    Z, X, Y = data
    model = GPUA(n_steps=3, self_learning=0, device=torch.device("cpu")).fit(Z, X, Y)
    assert clone(model).get_params()["device"] == torch.device("cpu")
    loaded = load_model(model.save(tmp_path / "m.gpua"))
    assert loaded.get_params()["device"] == "cpu"
    np.testing.assert_array_equal(loaded.predict(Z, X), model.predict(Z, X))
    with pytest.raises(GPUAError, match="or a torch.device"):
        GPUA(device=3).fit(Z, X, Y)
