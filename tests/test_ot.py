import numpy as np
import pytest
import torch

from gpua import GPUAError
from gpua.ot import marginal_error, sinkhorn

SOLVERS = ["torch", "pot"]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("n,k", [(7, 2), (300, 10), (2000, 50)])
def test_marginals_hold_to_relative_1e5(solver, n, k, device):
    g = torch.Generator().manual_seed(n + k)
    S = (torch.randn(n, k, generator=g) * 0.3).to(device)
    res = sinkhorn(S, 0.05, tol=1e-6, max_iter=5000, solver=solver)
    assert res.plan.device.type == device  # same device out as in
    P = res.plan.double().cpu()
    b = torch.full((k,), 1.0 / k, dtype=torch.float64)
    assert marginal_error(P, b) < 1e-5
    np.testing.assert_allclose(P.sum(1).numpy(), 1.0 / n, rtol=1e-5)
    assert (P >= 0).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_user_prior_is_respected(solver, device):
    g = torch.Generator().manual_seed(1)
    S = (torch.randn(500, 4, generator=g) * 0.2).to(device)
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    P = sinkhorn(S, 0.05, b=prior, tol=1e-7, solver=solver).plan.double().cpu()
    np.testing.assert_allclose(P.sum(0).numpy(), prior, rtol=1e-5)


def test_solvers_agree(device):
    g = torch.Generator().manual_seed(2)
    S = (torch.randn(400, 12, generator=g) * 0.3).to(device)
    a = sinkhorn(S, 0.1, tol=1e-8, solver="torch").plan.cpu()
    b = sinkhorn(S, 0.1, tol=1e-8, solver="pot").plan.cpu()
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7, rtol=1e-4)


def test_plan_maximises_score_better_than_uniform():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(200, 5, generator=g)
    P = sinkhorn(S, 0.01).plan
    assert float((P * S).sum()) > float(S.mean())


def test_small_eps_wide_scores_stay_finite(device):
    # Scores spanning 400 eps: exp(-400) underflows without log-domain stabilisation.
    g = torch.Generator().manual_seed(4)
    S = (torch.randn(1000, 20, generator=g) * 4.0).to(device)
    res = sinkhorn(S, 0.01, tol=1e-5, max_iter=3000)
    assert torch.isfinite(res.plan).all()
    # Sinkhorn converges slowly this far from its comfort zone; it must still make progress.
    assert res.marginal_error < 1e-3
    np.testing.assert_allclose(res.plan.double().sum(1).cpu().numpy(), 1e-3, rtol=1e-5)


def test_semi_relaxed_follows_imbalanced_data():
    # 90% of the rows prefer class 0: the balanced plan forces 50/50, the semi-relaxed one
    # moves toward the data.
    S = torch.zeros(1000, 2)
    S[:900, 0] = 1.0
    S[900:, 1] = 1.0
    bal = sinkhorn(S, 0.1).plan.sum(0)
    semi = sinkhorn(S, 0.1, rho=0.1, tol=1e-7).plan.sum(0)
    assert abs(float(bal[0]) - 0.5) < 1e-4
    assert float(semi[0]) > 0.7
    np.testing.assert_allclose(float(semi.sum()), 1.0, rtol=1e-5)


def test_warm_start_converges_faster(device):
    g = torch.Generator().manual_seed(5)
    S = (torch.randn(2000, 30, generator=g) * 0.5).to(device)
    cold = sinkhorn(S, 0.02, tol=1e-6)
    warm = sinkhorn(S, 0.02, tol=1e-6, init_log_v=cold.log_v)
    assert warm.n_iter < cold.n_iter


@pytest.mark.parametrize(
    "kwargs,match",
    [({"eps": 0.0}, "eps"), ({"eps": float("nan")}, "eps"), ({"b": [0.5, 0.5, 0.0]}, "class_prior"),
     ({"b": [1.0, 1.0]}, "class_prior"), ({"solver": "cuda-magic"}, "solver"), ({"rho": -1.0}, "rho")],
)
def test_bad_arguments(kwargs, match):
    S = torch.randn(10, 3)
    kw = {"eps": 0.05, **kwargs}
    eps = kw.pop("eps")
    with pytest.raises(GPUAError, match=match):
        sinkhorn(S, eps, **kw)


def test_nan_scores_refused():
    S = torch.randn(10, 3)
    S[2, 1] = float("nan")
    with pytest.raises(GPUAError, match="NaN"):
        sinkhorn(S, 0.05)
