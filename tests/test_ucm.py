import numpy as np
import pytest
import torch

from gpua import GPUAError
from gpua.ucm import class_centres, confident_centres, fused_score, mine_correspondences, similarity


def _norm(A):
    return torch.nn.functional.normalize(A, dim=1)


def test_similarity_forms():
    A = _norm(torch.randn(5, 4))
    B = _norm(torch.randn(3, 4))
    torch.testing.assert_close(similarity(A, B, "cosine"), A @ B.T)
    d = torch.cdist(A, B)
    torch.testing.assert_close(similarity(A, B, "neg_euclidean", 0.1), -d / 0.1, atol=1e-4, rtol=1e-4)
    with pytest.raises(GPUAError, match="similarity"):
        similarity(A, B, "dot")


def test_fused_score_weights():
    g = torch.Generator().manual_seed(0)
    Q, C = _norm(torch.randn(6, 5, generator=g)), _norm(torch.randn(3, 5, generator=g))
    X, Y = _norm(torch.randn(6, 4, generator=g)), _norm(torch.randn(3, 4, generator=g))
    torch.testing.assert_close(fused_score(Q, C, X, Y, 0.9), 0.1 * Q @ C.T + 0.9 * X @ Y.T)
    torch.testing.assert_close(fused_score(Q, C, X, Y, 1.0), X @ Y.T)


def test_class_centres_closed_form():
    Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    C = class_centres(Q, P)
    torch.testing.assert_close(C[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(C[1], _norm(torch.tensor([[0.5, 1.0]]))[0])


def test_confident_centres_pick_top_samples():
    X = _norm(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]]))
    Y = torch.eye(2)
    Q = torch.eye(5)  # one-hot queries reveal which samples were picked
    C = confident_centres(Q, X, Y, n_per_class=2)
    assert set(C[0].nonzero().flatten().tolist()) == {0, 1}
    assert set(C[1].nonzero().flatten().tolist()) == {2, 3}


def test_mining_improves_on_zero_shot(planted):
    train, _ = planted
    Q, X, Y = (_norm(torch.as_tensor(a)) for a in (train.vfm_features, train.vlm_features, train.text_prototypes))
    res = mine_correspondences(Q, X, Y, lam=0.9)
    assert res.converged
    np.testing.assert_allclose(res.plan.sum(1).numpy(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(res.plan.sum(0).numpy() / Q.shape[0], 1.0 / Y.shape[0], rtol=1e-4)
    pseudo = res.plan.argmax(1).numpy()
    zs = (X @ Y.T).argmax(1).numpy()
    assert np.mean(pseudo == train.labels) > np.mean(zs == train.labels) + 0.05
    assert res.history[-1]["plan_change"] < 1e-3


def test_confident_centres_break_ties_by_row():
    # A saturated posterior (exactly 1.0 for several rows) must pick the same rows in any order
    # of computation: the smaller row ids, as the streamed fits do.
    X = _norm(torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4))
    C = confident_centres(torch.eye(8), X, torch.eye(2), n_per_class=2)
    assert set(C[0].nonzero().flatten().tolist()) == {0, 1}
    assert set(C[1].nonzero().flatten().tolist()) == {4, 5}


def test_warm_started_mining_needs_fewer_iterations(planted):
    """A self-learning round starts Sinkhorn from the previous mining's class potential."""
    train, _ = planted
    Q, X, Y = (_norm(torch.as_tensor(a)) for a in (train.vfm_features, train.vlm_features, train.text_prototypes))
    kw = dict(lam=0.7, eps=0.02, sinkhorn_tol=1e-6, sinkhorn_max_iter=20000, tol=1e-4)
    cold = mine_correspondences(Q, X, Y, **kw)
    assert cold.log_v is not None and cold.log_v.shape == (Y.shape[0],)
    warm = mine_correspondences(Q, X, Y, init_log_v=cold.log_v, **kw)
    assert warm.history[0]["sinkhorn_iter"] < cold.history[0]["sinkhorn_iter"]
    assert sum(h["sinkhorn_iter"] for h in warm.history) < sum(h["sinkhorn_iter"] for h in cold.history)
    torch.testing.assert_close(warm.plan, cold.plan, atol=1e-3, rtol=0)


def test_bad_lambda():
    Q = _norm(torch.randn(10, 3))
    with pytest.raises(GPUAError, match="lam"):
        mine_correspondences(Q, Q, Q[:2], lam=2.0)
