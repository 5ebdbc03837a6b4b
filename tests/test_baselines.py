import numpy as np
import pytest

from gpua import GPUAError, LFAAlternation, VLMZeroShot, list_methods, load_model, make_method


def test_zero_shot_is_xyt(planted):
    train, test = planted
    m = VLMZeroShot().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    X = test.vlm_features / np.linalg.norm(test.vlm_features, axis=1, keepdims=True)
    Y = train.text_prototypes / np.linalg.norm(train.text_prototypes, axis=1, keepdims=True)
    np.testing.assert_allclose(m.decision_function(None, test.vlm_features), X @ Y.T, atol=1e-6)
    with pytest.raises(GPUAError, match="vlm_features is required"):
        m.predict(test.vfm_features)


def test_lfa_alternation_improves_and_roundtrips(planted, tmp_path):
    train, test = planted
    m = LFAAlternation(query="vfm").fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert m.n_rounds_ >= 1
    zs = VLMZeroShot().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert m.score(test.vfm_features, test.labels) > zs.score(None, test.labels, test.vlm_features)
    m2 = load_model(m.save(tmp_path / "lfa.gpua"))
    np.testing.assert_array_equal(m2.predict(test.vfm_features), m.predict(test.vfm_features))


def test_lfa_warns_when_it_collapses_and_not_when_it_works(planted):
    """Was: `gpua classify --method lfa` put 176 of 200 photos in one class without a word."""
    import warnings

    rng = np.random.default_rng(0)
    Y = rng.standard_normal((10, 32))
    X = Y[rng.integers(0, 10, 400)] + 2.0 * rng.standard_normal((400, 32))
    Z = rng.standard_normal((400, 8)) + 3 * rng.standard_normal(8)  # a VFM with no class structure, one common direction
    with pytest.warns(UserWarning, match=r"LFAAlternation collapsed: its map puts \d+ of 400 pool images in class"):
        LFAAlternation().fit(Z, X, Y, classnames=[f"c{i}" for i in range(10)])
    train, _ = planted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LFAAlternation(query="vfm").fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_registry():
    names = list_methods()
    for required in ("zero_shot", "gpua", "procrustes_only", "lfa", "lambda_1", "lambda_0", "query_vfm", "query_fused"):
        assert required in names
    assert make_method("lambda_1").lam == 1.0
    assert make_method("procrustes_only", lam=0.5).get_params()["lam"] == 0.5
    with pytest.raises(GPUAError, match="unknown"):
        make_method("magic")
