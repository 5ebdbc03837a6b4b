"""Numerical core: wrong numbers, NaN or deep tracebacks an audit found (each test failed before its fix)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.hubness import csls_scores, neighbourhood_radius, semantic_margins, ths_loss
from gpua.metrics import (
    classification_report,
    confusion_matrix,
    k_occurrence,
    mean_per_class_recall,
    robin_hood_index,
    score_summary,
    topk_accuracy,
)
from gpua.ot import sinkhorn
from gpua.procrustes import polar_factor, procrustes_from_assignment
from gpua.query import build_query, whitening_from_moment, whitening_width
from gpua.ucm import confident_centres, mine_correspondences, similarity, top_rows

normalize = torch.nn.functional.normalize


def _scores(n=40, k=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, k))


def _reference_plan(S, eps, b=None):
    import ot

    n, k = S.shape
    b = np.full(k, 1.0 / k) if b is None else np.asarray(b, float) / np.sum(b)
    return ot.sinkhorn(np.full(n, 1.0 / n), b, -S, eps, method="sinkhorn_log", numItermax=50000, stopThr=1e-13)


# --- Sinkhorn ---------------------------------------------------------------------------------


def test_pot_semi_relaxed_solves_the_documented_problem():
    # POT >= 0.9.5 regularises with KL(P | a b^T) by default: another plan once the prior is skewed
    # (class marginals 6e-3 off the torch solver's, the documented <P, S> + eps H(P) - rho KL).
    S = _scores()
    b = np.array([1.0, 2, 3, 4, 10])
    torch_res = sinkhorn(S, 0.05, b=b, rho=0.5, tol=1e-10, max_iter=20000)
    pot_res = sinkhorn(S, 0.05, b=b, rho=0.5, tol=1e-10, max_iter=20000, solver="pot")
    np.testing.assert_allclose(pot_res.plan.numpy(), torch_res.plan.numpy(), atol=1e-6)


def test_pot_semi_relaxed_reports_its_iterations_and_potentials():
    S = _scores()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # POT's own non-convergence warning is now the converged flag
        capped = sinkhorn(S, 0.05, rho=0.5, tol=1e-9, max_iter=5, solver="pot")
    assert capped.n_iter == 5 and not capped.converged  # was n_iter=1 (records, every 10th) and converged=True
    done = sinkhorn(S, 0.05, rho=0.5, tol=1e-9, max_iter=5000, solver="pot")
    assert done.converged and done.n_iter < 5000
    # log P = S / eps + log_u + log_v, as for the other solvers (POT's logu/logv were off by the log marginals)
    log_plan = torch.as_tensor(S) / 0.05 + done.log_u[:, None] + done.log_v[None, :]
    np.testing.assert_allclose(log_plan.exp().numpy(), done.plan.double().numpy(), atol=1e-7)


@pytest.mark.parametrize("solver", ["torch", "pot", "swav"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_scores_far_from_zero_keep_their_plan(solver, as_tensor):
    # The plan does not change when every score moves by a constant; float32 S / eps rounded the
    # differences away (1e4 + N(0, 0.3) at eps 0.05: entries 0.4% off, 3% at 1e5).
    S0 = _scores(30, 5) * 0.3
    expected = sinkhorn(S0, 0.05, solver=solver).plan.double().numpy()
    S = S0 + 1e5
    res = sinkhorn(torch.as_tensor(S) if as_tensor else S, 0.05, solver=solver)
    np.testing.assert_allclose(res.plan.double().numpy(), expected, atol=1e-6 * expected.max())
    log_plan = torch.as_tensor(S) / 0.05 + res.log_u[:, None] + res.log_v[None, :]
    np.testing.assert_allclose(log_plan.exp().numpy(), res.plan.double().numpy(), atol=1e-7)


def test_plan_matches_pot_reference():
    S = _scores(20, 4)
    np.testing.assert_allclose(sinkhorn(S, 0.05).plan.double().numpy(), _reference_plan(S, 0.05), atol=1e-6)


def test_sinkhorn_takes_numpy_scalars():
    S = _scores(20, 4)
    np.testing.assert_array_equal(sinkhorn(S, np.float32(0.25)).plan, sinkhorn(S, float(np.float32(0.25))).plan)
    res = sinkhorn(S, 0.05, init_log_v=np.zeros(4))  # was AttributeError: 'numpy.ndarray' object has no attribute 'to'
    assert res.converged


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=True), "eps"),
        (dict(rho=float("inf")), "rho"),  # was "Sinkhorn diverged ... raise eps"
        (dict(tol=float("nan")), "tol"),  # was 2000 iterations and converged=False
        (dict(tol=-1.0), "tol"),
        (dict(max_iter=None), "max_iter"),  # was TypeError
        (dict(max_iter=2.5), "max_iter"),
        (dict(init_log_v=torch.zeros(3)), "init_log_v"),  # was a RuntimeError on broadcasting
        (dict(init_log_v=torch.full((4,), float("nan"))), "init_log_v"),
    ],
)
def test_sinkhorn_option_errors(kwargs, match):
    eps = kwargs.pop("eps", 0.05)
    with pytest.raises(GPUAError, match=match):
        sinkhorn(_scores(20, 4), eps, **kwargs)


# --- UCM --------------------------------------------------------------------------------------


def _pool(n=12, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g), dim=1), normalize(torch.randn(k, d, generator=g), dim=1)


def test_mining_accepts_float64_tensors():
    X, Y = _pool()
    ref = mine_correspondences(X, X, Y)
    res = mine_correspondences(X.double(), X.double(), Y.double())  # was: float != double in class_centres
    assert res.centres.dtype == torch.float64
    np.testing.assert_allclose(res.plan.numpy(), ref.plan.numpy(), atol=1e-4)


def test_mining_argument_errors():
    X, Y = _pool()
    with pytest.raises(GPUAError, match="max_outer"):
        mine_correspondences(X, X, Y, max_outer=0)  # was a result whose plan is None
    with pytest.raises(GPUAError, match="rows"):
        mine_correspondences(X[:5], X, Y)  # was an IndexError
    with pytest.raises(GPUAError, match="width"):
        mine_correspondences(X, X, Y[:, :4])  # was a RuntimeError in a matmul


def test_similarity_and_centre_errors():
    X, Y = _pool()
    with pytest.raises(GPUAError, match="temperature"):
        similarity(X, X, "neg_euclidean", temperature=0.0)  # was -inf, and NaN on the diagonal
    with pytest.raises(GPUAError, match="width"):
        similarity(X, Y[:, :4])
    with pytest.raises(GPUAError, match="m=0"):
        top_rows(torch.rand(5, 2), torch.arange(5), 0)  # was an IndexError
    with pytest.raises(GPUAError, match="n_per_class"):
        confident_centres(X, X, Y, n_per_class=0)


# --- Procrustes -------------------------------------------------------------------------------


def test_procrustes_errors():
    Q = torch.randn(5, 3)
    with pytest.raises(GPUAError, match="do not match"):
        procrustes_from_assignment(Q, torch.rand(6, 4), torch.randn(4, 2))  # was a RuntimeError in a matmul
    with pytest.raises(GPUAError, match="NaN"):
        polar_factor(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))  # was torch's _LinAlgError


def test_procrustes_matches_scipy():
    from scipy.linalg import orthogonal_procrustes as scipy_procrustes

    from gpua.procrustes import orthogonal_procrustes

    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(orthogonal_procrustes(A, B).numpy(), scipy_procrustes(A.numpy(), B.numpy())[0], atol=1e-12)


# --- THS, CSLS --------------------------------------------------------------------------------


def test_ths_loss_refuses_what_made_it_nan():
    Y = normalize(torch.randn(4, 3), dim=1)
    mapped, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    with pytest.raises(GPUAError, match="k=0"):
        ths_loss(mapped, Y, labels, semantic_margins(Y), k=0)  # was NaN
    with pytest.raises(GPUAError, match="2 classes"):
        ths_loss(mapped, Y[:1], torch.zeros(6, dtype=torch.long), semantic_margins(Y[:1]))  # was NaN
    with pytest.raises(GPUAError, match="integer class indices"):
        ths_loss(mapped, Y, labels.float(), semantic_margins(Y))
    assert ths_loss(mapped, Y, labels.int(), semantic_margins(Y)) == ths_loss(mapped, Y, labels, semantic_margins(Y))
    with pytest.raises(GPUAError, match="k=0"):
        neighbourhood_radius(mapped, Y, k=0)  # was NaN
    with pytest.raises(GPUAError, match="do not match"):
        csls_scores(mapped @ Y.T, torch.zeros(4), torch.zeros(6))


# --- Query ------------------------------------------------------------------------------------


def test_query_errors():
    Z = torch.randn(5, 3)
    with pytest.raises(GPUAError, match="query='fused' needs the VLM features"):
        build_query(Z, None, "fused")  # was AttributeError: 'NoneType' object has no attribute 'norm'
    with pytest.raises(GPUAError, match="query='fused' needs the VLM features"):
        build_query(Z, torch.randn(4, 2), "fused")
    with pytest.raises(GPUAError, match="n_samples"):
        whitening_from_moment(torch.eye(3), 0, 2, 0.0)  # was torch's _LinAlgError
    with pytest.raises(GPUAError, match="n_components"):
        whitening_width("auto2", 10, 2, 5)  # was int()'s ValueError
    with pytest.raises(GPUAError, match="n_components"):
        whitening_width(0, 10, 2, 5)  # was a width of 0


# --- Metrics ----------------------------------------------------------------------------------


def test_nan_scores_are_refused_not_counted_as_hits():
    S = np.array([[np.nan, 1.0], [0.0, np.nan], [1.0, 0.0]])
    y = np.array([0, 1, 1])
    with pytest.raises(GPUAError, match="NaN"):
        topk_accuracy(y, S)  # was acc1 = 2/3: a NaN true score ranked first
    with pytest.raises(GPUAError, match="NaN"):
        score_summary(y, S)
    with pytest.raises(GPUAError, match="NaN"):
        k_occurrence(S, 1)


def test_scores_that_are_not_numbers_are_refused():
    with pytest.raises(GPUAError, match="dtype"):
        topk_accuracy([0, 1], [[1, "a"], [0, 1]])  # was 0.5: strings ranked alphabetically


def test_empty_evaluations_are_refused_not_nan():
    with pytest.raises(GPUAError, match="no rows"):
        topk_accuracy([], np.zeros((0, 3)))
    with pytest.raises(GPUAError, match="empty"):
        mean_per_class_recall([], [])
    with pytest.raises(GPUAError, match="non-empty"):
        robin_hood_index(np.zeros((0, 3)), 1)


def test_duplicate_class_names_do_not_drop_a_class():
    with pytest.raises(GPUAError, match="duplicate"):
        classification_report([0, 0, 1, 2], [0, 1, 1, 2], classnames=["a", "a", "b"])  # was: class 0's row lost
    with pytest.raises(GPUAError, match="one string"):
        classification_report([0, 1, 2], [0, 1, 2], classnames="abc")  # was: three classes 'a', 'b', 'c'


def test_metric_option_errors():
    with pytest.raises(GPUAError, match="n_classes"):
        confusion_matrix([0, 1, 2], [0, 1, 2], n_classes=3.5)  # was truncated to 3
    with pytest.raises(GPUAError, match="k=0"):
        k_occurrence(np.eye(3), 0)  # was all zeros (and robin_hood_index NaN)
    with pytest.raises(GPUAError, match="matrix"):
        k_occurrence(np.ones(3), 1)  # was an IndexError
