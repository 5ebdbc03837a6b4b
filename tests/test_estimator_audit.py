"""Audit of the estimator API and of ``gpua fit / evaluate / predict / compare`` as a demanding user
drives them: each test failed before its fix (stale fitted state, parameters accepted and then not
saved, inputs that raised from deep inside torch, command-line values refused or ignored)."""

import re

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError, load_model
from gpua.baselines import LFAAlternation, VLMZeroShot
from gpua.cli import main
from gpua.features import save_features

FAST = dict(n_steps=2, eval_every=1, self_learning=0)


@pytest.fixture(scope="module")
def small():
    from gpua.synthetic import make_planted

    return make_planted(n_samples=120, n_classes=4, random_state=0).split(80)


@pytest.fixture
def fitted(small):
    train, _ = small
    return GPUA(**FAST).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


# --- 1. silent wrong results ----------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: GPUA(**FAST), LFAAlternation, VLMZeroShot])
def test_refit_forgets_the_previous_fits_provenance(small, tmp_path, make):
    """A refit model must not keep (and save) the provenance_ of the data it was fitted on before."""
    train, test = small
    model = make().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model.provenance_ = {"vfm": "dino", "vlm": "clip", "features": {"path": "train.npz"}}
    model.save(tmp_path / "a.gpua")
    loaded = load_model(tmp_path / "a.gpua")
    assert loaded.provenance_["vfm"] == "dino"  # a load keeps the file's provenance
    loaded.fit(test.vfm_features, test.vlm_features, test.text_prototypes)
    assert getattr(loaded, "provenance_", None) is None
    loaded.save(tmp_path / "b.gpua")
    assert getattr(load_model(tmp_path / "b.gpua"), "provenance_", None) is None


def test_prediction_time_retrieval_is_checked(small):
    """set_params(retrieval='CSLS') after fit silently scored by cosine."""
    train, test = small
    model = GPUA(**FAST, retrieval="csls").fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model.set_params(retrieval="CSLS")
    with pytest.raises(GPUAError, match="retrieval='CSLS'"):
        model.predict(test.vfm_features, test.vlm_features)
    model.set_params(retrieval="cosine")
    assert model.predict(test.vfm_features, test.vlm_features).shape == (40,)


# --- 2. model files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", [list(np.ones(4, np.float32)), [np.int64(1)] * 4, (np.float64(1), 2, 3, 4)])
def test_class_prior_of_numpy_scalars_is_saved(small, tmp_path, prior):
    """A class_prior the fit accepts (a list of numpy scalars) made save() fail after the fit."""
    train, test = small
    model = GPUA(**FAST, class_prior=prior).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    model.save(tmp_path / "m.gpua")
    back = load_model(tmp_path / "m.gpua")
    assert back.class_prior == [float(p) for p in prior]
    np.testing.assert_array_equal(back.predict(test.vfm_features, test.vlm_features), model.predict(test.vfm_features, test.vlm_features))


def test_load_expands_the_home_folder_as_save_does(fitted, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    fitted.save("~/m.gpua")
    assert (tmp_path / "m.gpua").is_file()
    assert isinstance(load_model("~/m.gpua"), GPUA)
    assert isinstance(GPUA.load("~/m.gpua"), GPUA)


# --- 3. inputs and parameters -------------------------------------------------------------------------
def test_bfloat16_tensors_are_accepted_at_prediction_as_at_fit(small):
    train, test = small
    bf = lambda a: torch.tensor(a).bfloat16()  # noqa: E731
    model = GPUA(**FAST).fit(bf(train.vfm_features), bf(train.vlm_features), bf(train.text_prototypes))
    pred = model.predict(bf(test.vfm_features), bf(test.vlm_features))
    ref = model.predict(bf(test.vfm_features).float().numpy(), bf(test.vlm_features).float().numpy())
    np.testing.assert_array_equal(pred, ref)
    assert model.transform(bf(test.vfm_features), bf(test.vlm_features)).dtype == np.float32
    zs = VLMZeroShot().fit(bf(train.vfm_features), bf(train.vlm_features), bf(train.text_prototypes))
    assert zs.score(None, test.labels, bf(test.vlm_features)) > 0.5


@pytest.mark.parametrize("name", ["n_steps", "lam", "random_state", "logit_scale"])
def test_huge_integers_are_refused_by_name(small, name):
    """An int beyond float's range raised OverflowError from inside the parameter check."""
    train, _ = small
    with pytest.raises(GPUAError, match=f"{name}=1000"):
        GPUA(**{**FAST, name: 10**400}).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_cli_huge_seed_is_one_clear_line(tmp_path, capsys):
    assert main(["fit", "--train", str(tmp_path / "t.npz"), "--out", str(tmp_path / "m.gpua"), "--seed", "1" + "0" * 400]) == 2
    assert "--seed=1000" in capsys.readouterr().err


@pytest.mark.parametrize("pair, value", [("lam=.5", 0.5), ("lam=5e-1", 0.5), ("lam=+0.5", 0.5), ("eps=2.", 2.0),
                                         ("n_steps=010", 10), ("n_steps=1_000", 1000)])
def test_cli_param_reads_numbers_as_python_does(pair, value):
    """``--param lam=.5`` was refused with "lam='.5' must be a float": JSON has no leading dot."""
    from gpua.cli._common import parse_params

    (name, got), = parse_params([pair]).items()
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("pair", ["lam=nan", "lam=inf", "n_steps=5.", "query=VFM"])
def test_cli_param_still_refuses_what_is_not_a_value(pair):
    from gpua.cli._common import parse_params

    with pytest.raises(GPUAError, match="--param"):
        parse_params([pair])


@pytest.mark.parametrize("argv", [["--seed", "1", "--param", "random_state=2"], ["--lam", "0.5", "--param", "lam=0.8"],
                                  ["--no-refine", "--param", "refine=true"], ["--query", "vfm", "--param", "query=fused"]])
def test_cli_flag_and_param_that_disagree_are_refused(tmp_path, capsys, argv):
    """A named flag silently won over a --param setting the same parameter to another value."""
    assert main(["fit", "--train", str(tmp_path / "t.npz"), "--out", str(tmp_path / "m.gpua"), *argv]) == 2
    err = capsys.readouterr().err
    assert "both set" in err and "--param" in err


def test_cli_flag_and_param_that_agree_are_fine():
    from argparse import Namespace

    from gpua.cli._common import estimator_overrides

    args = Namespace(param=["lam=0.5", "refine=false"], query=None, lam=0.5, eps=None, n_steps=None, device=None, seed=None, no_refine=True)
    assert estimator_overrides(args) == {"lam": 0.5, "refine": False}


def test_cli_compare_with_an_empty_method_list_is_refused(small, tmp_path, capsys):
    """``--methods ,`` ran every method (full default fits) instead of none."""
    train, test = small
    paths = [save_features(tmp_path / f"{n}.npz", vfm_features=p.vfm_features, vlm_features=p.vlm_features,
                           text_prototypes=p.text_prototypes, labels=p.labels) for n, p in (("train", train), ("test", test))]
    assert main(["compare", "--train", str(paths[0]), "--test", str(paths[1]), "--methods", " , "]) == 2
    assert "--methods" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [(None, "text_prototypes is None"), ("prototypes", "text_prototypes"),
                                          ([[1.0, 2.0], [3.0]], "text_prototypes")])
def test_a_tensor_beside_bad_arrays_gets_the_arrays_message(bad, message):
    import torch

    from gpua import GPUA
    from gpua._errors import GPUAError

    rng = np.random.default_rng(0)
    Z = torch.as_tensor(rng.normal(size=(20, 5)), dtype=torch.float32)
    X = rng.normal(size=(20, 4))
    with pytest.raises(GPUAError, match=message):  # was: torch's "Could not infer dtype of NoneType" and the like
        GPUA(n_steps=2).fit(Z, X, bad)


def test_the_reference_refit_forgets_the_previous_provenance():
    from gpua import make_method

    rng = np.random.default_rng(0)
    Z, X, Y = rng.normal(size=(40, 6)), rng.normal(size=(40, 5)), rng.normal(size=(4, 5))
    m = make_method("reference", n_steps=2).fit(Z, X, Y)
    m.provenance_ = {"vfm": "old-encoder"}
    m.fit(Z, X, Y)
    assert not hasattr(m, "provenance_")


@pytest.mark.parametrize("query", ["fused", "vfm"])
def test_a_pool_of_one_image_copied_is_refused(query):
    rng = np.random.default_rng(0)
    z, x = rng.normal(size=(1, 6)), rng.normal(size=(1, 5))
    Z, X = np.repeat(z, 30, axis=0) * rng.uniform(0.5, 2, size=(30, 1)), np.repeat(x, 30, axis=0)  # same directions
    with pytest.raises(GPUAError, match="points the same way"):  # was: fitted, every image predicted class 0
        GPUA(n_steps=2, query=query).fit(Z, X, rng.normal(size=(3, 5)))
    X[0] += 1.0  # one photo differs in the VLM's view: a (poor) fused pool, but not one image
    if query == "fused":
        GPUA(n_steps=2, query=query).fit(Z, X, rng.normal(size=(3, 5)))


def test_a_streamed_pool_of_one_image_copied_is_refused():
    from gpua.stream import fit_federated, fit_streaming

    rng = np.random.default_rng(0)
    Z, X = np.repeat(rng.normal(size=(1, 6)), 30, axis=0), np.repeat(rng.normal(size=(1, 5)), 30, axis=0)
    with pytest.raises(GPUAError, match="points the same way"):
        fit_streaming(GPUA(n_steps=2), (Z, X), rng.normal(size=(3, 5)), max_memory="1GB")
    with pytest.raises(GPUAError, match="points the same way"):
        fit_federated(GPUA(n_steps=2), [(Z[:15], X[:15]), (Z[15:], X[15:])], rng.normal(size=(3, 5)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_latent=0), "d_latent=0 must be an integer in"),  # was: all-NaN features, numpy warnings only
    (dict(class_weights=[1, 1]), "class_weights must be 4 finite non-negative numbers"),  # was: numpy's "a and p must have same size"
    (dict(class_weights=[1, 1, -1, 1]), "class_weights must be 4 finite non-negative numbers"),
    (dict(n_hubs=-1), "n_hubs=-1 must be an integer in"),
    (dict(random_state=-1), "random_state=-1 must be an integer in"),
    (dict(n_samples=100.5), "n_samples=100.5 must be an integer"),
    (dict(dtype=np.int32), "dtype=int32 is not a floating type"),  # was: all-zero features
    (dict(vlm_noise=float("nan")), "vlm_noise=nan must be a finite number"),
])
def test_make_planted_refuses_bad_arguments_naming_them(kwargs, message):
    from gpua.synthetic import make_planted

    args = {"n_samples": 100, "n_classes": 4, **kwargs}
    with pytest.raises(GPUAError, match=re.escape(message)):
        make_planted(**args)


def test_labels_given_as_vlm_features_at_prediction_are_named_as_labels():
    """Was: 'reshape it with .reshape(1, -1) if it is one row', advice that leads to a row-count error."""
    from gpua.synthetic import make_planted

    tr = make_planted(n_samples=200, n_classes=4, random_state=0)
    m = GPUA(refine=False, self_learning=0).fit(tr.vfm_features, tr.vlm_features, tr.text_prototypes)
    for labels in (tr.labels, list(tr.labels), torch.as_tensor(tr.labels)):
        for call in (m.predict, m.decision_function, m.predict_proba):
            with pytest.raises(GPUAError, match=r"vlm_features has shape \(200,\), one value per image of vfm_features: "
                                                r"that looks like class labels"):
                call(tr.vfm_features, labels)
    with pytest.raises(GPUAError, match="reshape it with"):  # one VLM row of another length: still the reshape advice
        m.predict(tr.vfm_features[:1], tr.vlm_features[0])


def test_make_planted_takes_a_numpy_generator():
    from gpua.synthetic import make_planted

    a = make_planted(100, 4, random_state=np.random.default_rng(3))
    b = make_planted(100, 4, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(a.vfm_features, b.vfm_features)
