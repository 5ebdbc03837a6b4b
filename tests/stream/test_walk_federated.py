"""Federated GPUA as a demanding user drives it: odd clients, wrong arguments, repeated fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpua.stream._federated_gpua as federated_module
from gpua import GPUA, GPUAError, make_method
from gpua.stream import _kernels, fit_federated
from stream_helpers import assert_same_fit, planted_case

# Refinement and self-learning off: the fit the README says equals the centralised one.
EXACT = dict(refine=False, self_learning=0)


@pytest.fixture(scope="module")
def small():
    """(Z, X, Y, labels): N = 400, K = 32 > d_vlm = 20 (the Procrustes map is unique)."""
    return planted_case(n=400, k=32)


@pytest.fixture(scope="module")
def central(case):
    """The centralised fit of the session's planted set (N = 1500, K = 32), to compare with to 1e-5."""
    Z, X, Y, _ = case
    return GPUA(**EXACT).fit(Z, X, Y)


def halves(Z, X, cut=150):
    return [(Z[:cut], X[:cut]), (Z[cut:], X[cut:])]


def test_a_fit_leaves_nothing_in_the_process(small):
    """The per-chunk state (kept rows, whitened norms) is freed when the fit returns: it held
    every client's rows, and a later fit could read them under a recycled name."""
    Z, X, Y, _ = small
    before = set(_kernels._STORE)
    fit_federated(GPUA(random_state=0, n_steps=20), halves(Z, X), Y, rounds=2)
    assert set(_kernels._STORE) == before


def test_a_fit_never_reads_an_earlier_fits_rows(small, monkeypatch):
    """Two executors at one address (id() of a freed object is reused) once shared a name in the
    process-wide store, and the second fit mined the first fit's rows."""
    Z, X, Y, _ = small
    Z2, X2, Y2, _ = planted_case(n=400, k=32, seed=5)
    alone = fit_federated(GPUA(**EXACT), halves(Z2, X2), Y2)
    monkeypatch.setattr(federated_module, "id", lambda obj: 7, raising=False)  # every executor at one address
    fit_federated(GPUA(**EXACT), halves(Z, X), Y)
    after = fit_federated(GPUA(**EXACT), halves(Z2, X2), Y2)
    assert_same_fit(alone, after, atol=1e-9)


def test_a_client_without_rows_takes_part_and_changes_nothing(case, central):
    """Before: "clients[0]: vfm_features is empty ... pass at least one row"."""
    Z, X, Y, _ = case
    empty = (Z[:0], X[:0])
    fed = fit_federated(GPUA(**EXACT), [empty, (Z[:500], X[:500]), (torch.zeros(0, 40), torch.zeros(0, 20)), (Z[500:], X[500:])], Y)
    assert_same_fit(central, fed)
    assert fed.history_["federated"]["clients"] == [0, 500, 0, 1000]


def test_a_client_without_rows_changes_no_refined_fit_either(small):
    """The local refinement's seeds follow the clients with rows, so an empty client shifts none."""
    Z, X, Y, _ = small
    params = dict(random_state=0, n_steps=20)
    plain = fit_federated(GPUA(**params), halves(Z, X), Y, rounds=2)
    padded = fit_federated(GPUA(**params), [(Z[:0], X[:0]), *halves(Z, X)], Y, rounds=2)
    assert torch.equal(plain.W_, padded.W_) and np.array_equal(plain.pseudo_labels_, padded.pseudo_labels_)


def test_clients_without_rows_are_still_checked(small):
    Z, X, Y, _ = small
    with pytest.raises(GPUAError, match=r"all 2 clients are empty"):
        fit_federated(GPUA(**EXACT), [(Z[:0], X[:0])] * 2, Y)
    with pytest.raises(GPUAError, match=r"clients\[1\] \(no rows\) has widths .*'vfm_features': 3.* clients\[0\] has"):
        fit_federated(GPUA(**EXACT), [(Z, X), (Z[:0, :3], X[:0])], Y)
    with pytest.raises(GPUAError, match=r"clients\[0\]: vfm_features has 0 rows but vlm_features has 3"):
        fit_federated(GPUA(**EXACT), [(Z[:0], X[:3]), (Z, X)], Y)


@pytest.mark.parametrize("estimator, named", [
    (GPUA, "the class GPUA itself"),
    (make_method("zero_shot"), "of type VLMZeroShot"),
    (make_method("reference"), "of type ReferenceGPUA"),
    (make_method("lfa"), "of type LFAAlternation"),
    (object(), "of type object"),
])
def test_only_a_gpua_instance_is_fitted(small, estimator, named):
    """Before: AttributeError, KeyError 'class_prior', or "'batch_fraction' is not a parameter of GPUA"."""
    from gpua.stream import fit_streaming

    Z, X, Y, _ = small
    with pytest.raises(GPUAError, match=f"estimator is {named}.*fit_federated fits a GPUA instance only"):
        fit_federated(estimator, halves(Z, X), Y)
    with pytest.raises(GPUAError, match=f"estimator is {named}.*fit_streaming fits a GPUA instance only"):
        fit_streaming(estimator, Z, Y, vlm_features=X)  # the streamed fit's entry, the same check


def test_the_usual_slips_in_clients(small):
    Z, X, Y, _ = small
    with pytest.raises(GPUAError, match=r"clients is one \(vfm_features, vlm_features\) pair of arrays.*\[\(vfm_features"):
        fit_federated(GPUA(), (Z, X), Y)
    with pytest.raises(GPUAError, match="clients is empty"):
        fit_federated(GPUA(), iter([]), Y)  # before: IndexError
    with pytest.raises(GPUAError, match="clients is of type NoneType"):
        fit_federated(GPUA(), None, Y)
    with pytest.raises(GPUAError, match="clients is of type ndarray"):
        fit_federated(GPUA(), Z, Y)
    with pytest.raises(GPUAError, match=r"clients is a dict; pass its pairs as a list, list\(clients.values\(\)\)"):
        fit_federated(GPUA(), {"a": (Z, X)}, Y)  # was: "clients[0] must be a pair" (the name 'a')


def test_the_budget_error_says_it_is_each_clients(small):
    Z, X, Y, _ = small
    with pytest.raises(GPUAError, match=r"max_memory is the budget of each client \(the largest holds 250 rows\)"):
        fit_federated(GPUA(**EXACT), halves(Z, X), Y, max_memory="2MB")


def test_odd_but_valid_clients_equal_the_centralised_fit(case, central):
    """Clients as float64 arrays, float32 tensors, one row, many small ones: the same sums."""
    Z, X, Y, _ = case
    mixed = [(Z[:1].astype(np.float64), X[:1].astype(np.float64)), (torch.from_numpy(Z[1:500]), torch.from_numpy(X[1:500])),
             *[(Z[s : s + 100], X[s : s + 100]) for s in range(500, 1500, 100)]]
    assert_same_fit(central, fit_federated(GPUA(**EXACT), mixed, Y))


def test_clients_holding_the_same_rows_are_their_union(small):
    """Two clients with the same rows: the centralised fit of the rows twice."""
    Z, X, Y, _ = small
    twice = GPUA(**EXACT).fit(np.vstack([Z, Z]), np.vstack([X, X]), Y)
    assert_same_fit(twice, fit_federated(GPUA(**EXACT), [(Z, X), (Z, X)], Y), atol=5e-5)


def test_a_client_with_nan_is_named(small):
    Z, X, Y, _ = small
    bad = X.copy()
    bad[160, 2] = np.nan
    with pytest.raises(GPUAError, match=r"clients\[1\]: vlm_features contains NaN or inf in 1 row\(s\) \(first: row 10\)"):
        fit_federated(GPUA(**EXACT), halves(Z, bad), Y)


def test_more_classes_than_rows_is_refused(small):
    Z, X, Y, _ = small
    with pytest.raises(GPUAError, match="10 rows but there are 32 classes"):
        fit_federated(GPUA(**EXACT), [(Z[:4], X[:4]), (Z[4:10], X[4:10])], Y)


def test_fitting_again_with_the_same_objects(small):
    """Nothing passed in is changed, and a second fit of the same estimator and clients is the first."""
    Z, X, Y, _ = small
    clients = halves(Z, X)
    copies = [(a.copy(), b.copy()) for a, b in clients]
    Y0 = Y.copy()
    est = GPUA(random_state=0, n_steps=20)
    params = est.get_params()
    first = fit_federated(est, clients, Y, rounds=2)
    W, labels = first.W_.clone(), first.pseudo_labels_.copy()
    second = fit_federated(est, clients, Y, rounds=2)
    assert second is est and est.get_params() == params
    assert torch.equal(W, second.W_) and np.array_equal(labels, second.pseudo_labels_)
    for (a, b), (a0, b0) in zip(clients, copies):
        assert np.array_equal(a, a0) and np.array_equal(b, b0)
    assert np.array_equal(Y, Y0)
