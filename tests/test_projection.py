"""gpua.projection: the ridge projection of UCM's plan, from sums over rows, and GPUA(plan_ridge=...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError
from gpua.projection import PLAN_FLOOR, projected_plan, query_moments, ridge_projection


def _rows(n=300, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g)
    labels = torch.arange(n) % k
    Q = torch.nn.functional.normalize(means[labels] + torch.randn(n, d, generator=g), dim=1)
    return Q, labels


def _direct(Q, P, alpha):
    """The projection the textbook way: ridge of P on [standardised Q, 1], intercept free, in float64."""
    Qd = Q.double()
    F = (Qd - Qd.mean(0)) / Qd.std(0)
    A = torch.cat([F, torch.ones(len(F), 1, dtype=torch.float64)], 1)
    reg = torch.eye(A.shape[1], dtype=torch.float64) * alpha
    reg[-1, -1] = 0.0
    S = (A @ torch.linalg.solve(A.T @ A + reg, A.T @ P.double())).clamp_min(PLAN_FLOOR)
    return S / S.sum(1, keepdim=True)


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 50.0])
def test_projection_from_sums_equals_the_ridge_on_the_standardised_query(alpha):
    Q, _ = _rows()
    P = torch.softmax(5 * torch.randn(len(Q), 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    proj = ridge_projection(query_moments(Q), P.T.double() @ Q.double(), P.sum(0).double(), alpha)
    got = projected_plan(Q.double(), proj)
    torch.testing.assert_close(got, _direct(Q, P, alpha), rtol=0, atol=1e-9)
    assert bool((got >= 0).all()) and torch.allclose(got.sum(1), torch.ones(len(Q), dtype=torch.float64))


def test_moments_of_parts_add_up_to_the_whole():
    Q, _ = _rows(n=500)
    whole = query_moments(Q)
    assert whole.shape == (13, 13) and float(whole[-1, -1]) == 500
    torch.testing.assert_close(query_moments(Q[:123]) + query_moments(Q[123:]), whole, rtol=1e-12, atol=1e-9)


def test_projection_corrects_labels_a_linear_function_cannot_hold():
    # Linearly separable classes, a plan with one row in five given another class at random:
    # the least-squares probe trained on the plan labels most of those rows back.
    Q, labels = _rows(n=600, k=4)
    g = torch.Generator().manual_seed(2)
    wrong = torch.rand(len(Q), generator=g) < 0.2
    noisy = torch.where(wrong, (labels + torch.randint(1, 4, (len(Q),), generator=g)) % 4, labels)
    P = torch.nn.functional.one_hot(noisy, 4).double()
    proj = ridge_projection(query_moments(Q), P.T @ Q.double(), P.sum(0), 1.0)
    fixed = projected_plan(Q.double(), proj).argmax(1)
    assert float((noisy == labels).double().mean()) < 0.85
    assert float((fixed == labels).double().mean()) > 0.97


def test_a_constant_column_gets_no_coefficient_and_changes_nothing():
    # Its sums' float32 rounding, divided by a near-zero sigma, once outweighed every other
    # column (the review's planted fit: pseudo-labels 92% right without the column, 14% with it).
    Q, _ = _rows()
    P = torch.softmax(torch.randn(len(Q), 5, generator=torch.Generator().manual_seed(3)), dim=1)
    with_const = torch.cat([Q, torch.full((len(Q), 1), 0.25)], 1)

    def project(Q):
        proj = ridge_projection(query_moments(Q), P.T @ Q, P.sum(0, dtype=torch.float64), 1.0)  # float32 sums, as the fit's
        return proj, projected_plan(Q, proj)

    proj, out = project(with_const)
    assert float(proj.coef[-1].abs().max()) == 0.0
    torch.testing.assert_close(out, project(Q)[1], rtol=0, atol=1e-5)


def test_gpua_plan_ridge_projects_and_none_keeps_the_plan(planted):
    train, test = planted
    kw = dict(n_steps=40, eval_every=10, self_learning=0)
    plain = GPUA(plan_ridge=None, **kw).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    projected = GPUA(**kw).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert GPUA().plan_ridge == 1.0
    # The projection changes the pseudo-labels, and on planted data (linear by construction) it
    # makes them more right, not less.
    assert (plain.pseudo_labels_ != projected.pseudo_labels_).any()
    right = lambda m: float(np.mean(m.pseudo_labels_ == train.labels))  # noqa: E731
    assert right(projected) > right(plain)
    with pytest.raises(GPUAError, match=r"plan_ridge=0 must be None or a float > 0"):
        GPUA(plan_ridge=0).fit(train.vfm_features, train.vlm_features, train.text_prototypes)


def test_a_model_file_without_plan_ridge_loads_as_fitted(planted, tmp_path):
    from gpua import load_model

    assert GPUA._params_before_added["plan_ridge"] is None  # fits saved before plan_ridge ran without it
    train, _ = planted
    m = GPUA(n_steps=10, self_learning=0).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert load_model(m.save(tmp_path / "m.gpua")).plan_ridge == 1.0
