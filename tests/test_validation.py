"""Every bad input named in the engine issue gets a clear GPUAError naming the argument."""

import numpy as np
import pytest

from gpua import GPUA, GPUAError
from gpua._validation import check_number
from gpua.features import load_features, save_features


@pytest.fixture
def good(rng):
    Z = rng.standard_normal((40, 8)).astype(np.float32)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    Y = rng.standard_normal((4, 6)).astype(np.float32)
    return Z, X, Y


def _fit(Z, X, Y, **kw):
    return GPUA(n_steps=5, **kw).fit(Z, X, Y, classnames=kw.pop("classnames", None))


def test_row_count_mismatch(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="vfm_features has 39 rows but vlm_features has 40"):
        GPUA().fit(Z[:-1], X, Y)


def test_prototype_width_mismatch(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="text_prototypes has width 5 but vlm_features has width 6"):
        GPUA().fit(Z, X, Y[:, :5])


def test_fewer_than_two_classes(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="at least 2 classes"):
        GPUA().fit(Z, X, Y[:1])


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_anywhere(good, which, bad):
    arrs = [a.copy() for a in good]
    arrs[which][1, 2] = bad
    name = ["vfm_features", "vlm_features", "text_prototypes"][which]
    with pytest.raises(GPUAError, match=f"{name} contains NaN or inf"):
        GPUA().fit(*arrs)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_all_zero_row(good, which):
    arrs = [a.copy() for a in good]
    arrs[which][3] = 0
    with pytest.raises(GPUAError, match="all-zero row"):
        GPUA().fit(*arrs)


def test_not_2d_and_empty(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="must be 2-D"):
        GPUA().fit(Z[0], X, Y)
    with pytest.raises(GPUAError, match="must be 2-D"):
        GPUA().fit(Z[None], X, Y)
    with pytest.raises(GPUAError, match="empty"):
        GPUA().fit(Z[:0], X[:0], Y)


def test_duplicate_classnames(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="duplicate name 'cat'"):
        GPUA().fit(Z, X, Y, classnames=["cat", "dog", "cat", "eel"])


def test_too_few_rows_for_classes(good):
    Z, X, Y = good
    with pytest.raises(GPUAError, match="at least one image per class"):
        GPUA().fit(Z[:3], X[:3], Y)


@pytest.mark.parametrize("param,value", [("query", "both"), ("lam", 1.5), ("eps", -1), ("orthogonality", "x"), ("n_steps", -3), ("similarity", "dot"), ("refine_tol", -0.1), ("refine_tol", 1.0)])
def test_bad_parameters(good, param, value):
    with pytest.raises(GPUAError, match=param):
        GPUA(**{param: value}).fit(*good)


def test_predict_width_mismatch(good):
    m = _fit(*good)
    with pytest.raises(GPUAError, match="vfm_features has width 7 but 8 was expected"):
        m.predict(np.ones((2, 7)))


def test_missing_npz_key_lists_existing(tmp_path, good):
    Z, X, Y = good
    np.savez(tmp_path / "f.npz", vfm_features=Z, text_prototypes=Y)
    with pytest.raises(GPUAError, match=r"no 'vlm_features'.*holds \['vfm_features', 'text_prototypes'\]"):
        load_features(tmp_path / "f.npz", require=("vfm_features", "vlm_features", "text_prototypes"))


def test_positional_npz_keys_refused(tmp_path, good):
    np.savez(tmp_path / "f.npz", *good)
    with pytest.raises(GPUAError, match="positional"):
        load_features(tmp_path / "f.npz")


def test_corrupt_feature_file(tmp_path, good):
    Z, X, Y = good
    p = save_features(tmp_path / "f.npz", vfm_features=Z, vlm_features=X, text_prototypes=Y)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(GPUAError, match="corrupt or truncated"):
        load_features(p)


_NAMES = ("vfm_features", "vlm_features", "text_prototypes")


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("kind", ["scipy_csr", "scipy_coo_array", "torch_coo", "torch_csr"])
def test_sparse_input_names_the_densifying_call(good, which, kind):
    # numpy wraps a scipy sparse matrix in a 0-d object array: the message used to be about dtype object
    import warnings

    import scipy.sparse as sp
    import torch

    args = list(good)
    A = args[which]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "sparse CSR support is in beta"
        args[which] = {"scipy_csr": lambda: sp.csr_matrix(A), "scipy_coo_array": lambda: sp.coo_array(A),
                       "torch_coo": lambda: torch.from_numpy(A).to_sparse(),
                       "torch_csr": lambda: torch.from_numpy(A).to_sparse_csr()}[kind]()
    fix = "toarray()" if kind.startswith("scipy") else "to_dense()"
    with pytest.raises(GPUAError, match=rf"{_NAMES[which]} is a .*sparse.*pass {_NAMES[which]}\.{fix.replace('(', '[(]').replace(')', '[)]')}"):
        _fit(*args)


def test_sparse_input_at_predict(good):
    import scipy.sparse as sp

    Z, X, Y = good
    model = _fit(Z, X, Y)
    with pytest.raises(GPUAError, match=r"vfm_features is a scipy sparse matrix .*vfm_features\.toarray"):
        model.predict(sp.csr_matrix(Z), X)


def test_in_range_is_the_one_test_behind_check_number_and_interval():
    from gpua._validation import INT64_MAX, in_range
    from gpua.params import Interval

    cases = [(3, dict(integer=True, low=1)), (0, dict(integer=True, low=0, low_open=True)), (np.int8(5), dict(integer=True)),
             (True, dict(integer=True)), (2.0, dict(integer=True)), (INT64_MAX + 1, dict(integer=True)),
             (-INT64_MAX, dict(integer=True)), (0.5, dict(low=0, high=1)), (1.0, dict(low=0, high=1, high_open=True)),
             (float("nan"), {}), (float("inf"), {}), (10**400, {}), (np.float32(2.5), dict(low=2.5)), ("1", {})]
    expect = [True, False, True, False, False, False, True, True, False, False, False, False, True, False]
    assert [in_range(v, **kw) for v, kw in cases] == expect
    for (v, kw), want in zip(cases, expect):
        closed = {(False, False): "both", (False, True): "left", (True, False): "right", (True, True): "neither"}[
            (kw.get("low_open", False), kw.get("high_open", False))]
        interval = Interval(int if kw.get("integer") else float, kw.get("low"), kw.get("high"), closed)
        assert interval.accepts(v) == want, (v, kw)
        if not kw.get("high_open"):
            try:
                check_number(v, "x", integer=kw.get("integer", False), low=kw.get("low"), high=kw.get("high"),
                             low_open=kw.get("low_open", False))
                accepted = True
            except GPUAError:
                accepted = False
            assert accepted == want, (v, kw)


def test_check_number_names_a_64_bit_overflow():
    with pytest.raises(GPUAError, match=r"x=9223372036854775808 must be an integer in \[0, inf\) \(it is beyond a 64-bit integer\); a seed"):
        check_number(2**63, "x", integer=True, low=0, fix="a seed")
    assert check_number(2**63 - 1, "x", integer=True, low=0) == 2**63 - 1


def test_labels_given_where_class_names_go_are_said_to_be_unused(planted):
    """Was: GPUA().fit(Z, X, Y, y) said only "classnames must hold strings but holds ['int']"."""
    train, _ = planted
    with pytest.raises(GPUAError, match="if these are labels, leave them out: the fit is unsupervised"):
        GPUA().fit(train.vfm_features, train.vlm_features, train.text_prototypes, train.labels)
    with pytest.raises(GPUAError, match=r"holds \['NoneType'\]; pass one name") as e:
        GPUA().fit(train.vfm_features, train.vlm_features, train.text_prototypes, [None] * len(train.classnames))
    assert "labels" not in str(e.value)
