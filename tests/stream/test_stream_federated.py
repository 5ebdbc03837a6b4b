"""Federated GPUA: equal to the centralised fit without refinement, close to it with FedAvg."""

from __future__ import annotations

import pytest
import torch

from gpua import GPUA, GPUAError
from gpua.procrustes import orthogonality_error
from gpua.stream import fit_federated
from stream_helpers import assert_same_fit, reference_fit

CUTS = [0, 350, 1100, 1500]  # three clients of unequal size


def clients_of(Z, X):
    return [(Z[a:b], X[a:b]) for a, b in zip(CUTS[:-1], CUTS[1:])]


@pytest.mark.parametrize("params", [
    dict(refine=False),
    dict(refine=False, center=True, query="fused", retrieval="csls"),
    dict(refine=False, center=True, query="fused", whiten=24),  # clients send the query's second moment
    dict(refine=False, plan_ridge=None),
])
def test_without_refinement_equals_the_centralised_fit(case, params):
    Z, X, Y, _ = case
    fed = fit_federated(GPUA(**params), clients_of(Z, X), Y, max_memory="1GB")
    assert_same_fit(reference_fit(case, **params), fed)


def test_a_map_the_classes_leave_free_equals_the_centralised_one():
    """Was: W_ matched the centralised fit only on the prototypes' span (README: "raw W differs by up to
    2.5"); the rest was the SVD's completion of the clients' summed Q^T P Y. Each client now sends its
    Q^T X once, and the summed completion is the centralised one."""
    from stream_helpers import planted_case

    Z, X, Y, _ = planted_case(1500, 6, 40, 20, 8)  # 6 classes: rank 5 of the 20 columns
    params = dict(refine=False, self_learning=0)
    fed = fit_federated(GPUA(**params), clients_of(Z, X), Y, max_memory="1GB")
    assert_same_fit(GPUA(**params).fit(Z, X, Y), fed)


def test_projected_labels_stay_with_the_clients(case):
    import gpua.stream._kernels as K_
    from gpua.fitting import check_entry
    from gpua.projection import PlanProjection
    from gpua.stream._federated_gpua import FederatedExecutor
    from gpua.stream._kernels import ArraySource, FitSpec, Part

    Z, X, Y, _ = case
    parts = [Part(i, ArraySource(Z[a:b], X[a:b], offset=a), a, b, client=i) for i, (a, b) in enumerate(zip(CUTS[:-1], CUTS[1:]))]
    config = check_entry(GPUA(query="vfm", whiten=None, center=False, center_vlm=False).get_params(), len(Z), len(Y))
    fit = FitSpec.from_config("t", torch.as_tensor(Y), config, len(Z))
    ex = FederatedExecutor(parts)
    g = torch.Generator().manual_seed(0)
    proj = PlanProjection(torch.randn(Z.shape[1], len(Y), generator=g, dtype=torch.float64), torch.ones(len(Y), dtype=torch.float64))
    out = ex.reduce(K_.part_projected_stats, parts, fit, proj, merge=K_.merge_stats)
    assert out["parts"] == {} and sorted(ex.private) == [0, 1, 2]  # the server gets sums; labels stay per client
    assert sum(len(lab) for c in ex.private.values() for lab, _ in c.values()) == len(Z)
    assert float(out["col"].sum()) == pytest.approx(1.0)


def test_with_refinement_stays_close_and_orthogonal(case):
    Z, X, Y, labels = case
    # W0_ of the first round: the same map both ways. Unwhitened, so that W_ itself is the
    # averaged-then-projected map (a whitened W_ = M W is orthogonal only in M's coordinates).
    params = dict(n_steps=30, query="vfm", self_learning=0, whiten=None)
    central = reference_fit(case, **params)
    seen = []
    fed = fit_federated(GPUA(**params), clients_of(Z, X), Y, rounds=3, callback=seen.append)
    assert [e["round"] for e in seen if "mean_orthogonality_error" in e] == [1, 2, 3]
    assert orthogonality_error(fed.W_) < 1e-4  # re-orthogonalised after averaging
    assert float((fed.W0_ - central.W0_).abs().max()) < 1e-5
    gap = abs(fed.score(Z, labels, X) - central.score(Z, labels, X))
    assert gap < 0.03, gap


def test_bad_clients(case):
    Z, X, Y, _ = case
    with pytest.raises(GPUAError, match="clients is empty"):
        fit_federated(GPUA(), [], Y)
    with pytest.raises(GPUAError, match=r"clients\[1\] has widths"):
        fit_federated(GPUA(), [(Z[:500], X[:500]), (Z[500:, :10], X[500:])], Y)
    with pytest.raises(GPUAError, match=r"clients\[0\]: vlm_features has 10 rows"):
        fit_federated(GPUA(), [(Z[:500], X[:10])], Y)
    with pytest.raises(GPUAError, match="rounds"):
        fit_federated(GPUA(), clients_of(Z, X), Y, rounds=0)


def test_pool_augment_runs_on_each_client(case):
    """Each client augments its own rows in its local refinement (statistics never leave it)."""
    Z, X, Y, labels = case
    params = dict(n_steps=30, query="vfm")
    plain = fit_federated(GPUA(**params), clients_of(Z, X), Y, rounds=2)
    aug = fit_federated(GPUA(pool_augment=4, **params), clients_of(Z, X), Y, rounds=2)
    assert not bool((aug.W_ == plain.W_).all())
    assert aug.history_["pool_augment"]["n_rows"] > 0 and plain.history_["pool_augment"] == {"n_rows": 0}
    assert aug.history_["orthogonality_error"] < 1e-4  # of the averaged map, in the whitened coordinates
    assert abs(aug.score(Z, labels, X) - plain.score(Z, labels, X)) < 0.05


def test_self_learning_rounds_run_on_the_clients(case):
    """The server broadcasts the map, each client scores its own rows with it and measures its own
    pseudo-labels' consistency; the rounds are recorded as in the other fits."""
    Z, X, Y, labels = case
    params = dict(refine=False, query="vfm")
    plain = fit_federated(GPUA(self_learning=0, **params), clients_of(Z, X), Y)
    sl = fit_federated(GPUA(self_learning=2, **params), clients_of(Z, X), Y)
    rec = sl.history_["self_learning"]
    assert [r["round"] for r in rec][:2] == [0, 1] and rec[0]["kept"]
    assert sl.score(Z, labels, X) >= plain.score(Z, labels, X) - 0.01
    if any(r["kept"] for r in rec[1:]):
        assert not (sl.pseudo_labels_ == plain.pseudo_labels_).all()
