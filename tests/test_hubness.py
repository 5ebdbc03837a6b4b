import numpy as np
import pytest
import torch

from gpua.hubness import csls_scores, hub_occupancy, neighbourhood_radius, semantic_margins, ths_loss
from gpua.metrics import robin_hood_index


def test_semantic_margins():
    Y = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), dim=1)
    M = semantic_margins(Y, scale=2.0)
    assert M[0, 0] == pytest.approx(0.0, abs=1e-7)
    assert M[0, 2] == pytest.approx(1.0)
    assert M[0, 1] < M[0, 2]


def test_hub_occupancy():
    sims = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.1], [0.9, 0.2, 0.3]])
    torch.testing.assert_close(hub_occupancy(sims, 1), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(hub_occupancy(sims, 2).sum(), torch.tensor(2.0))


def _full_sort_ths(mapped, Y, labels, margins, k, beta):
    """Reference: the published code's full sort over all K distances."""
    sims = torch.nn.functional.normalize(mapped, dim=1) @ Y.T
    order = sims.argsort(dim=1, descending=True)
    hub = hub_occupancy(sims, k)
    total = 0.0
    for i in range(sims.shape[0]):
        negs = [c for c in order[i].tolist() if c != labels[i]][:k]
        for c in negs:
            total += torch.relu(sims[i, c] - sims[i, labels[i]] + margins[labels[i], c] + beta * hub[c])
    return total / (sims.shape[0] * k)


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_ths_topk_equals_full_sort(beta):
    g = torch.Generator().manual_seed(0)
    mapped = torch.randn(30, 8, generator=g, dtype=torch.float64)
    Y = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 6, (30,), generator=g)
    M = semantic_margins(Y)
    got = ths_loss(mapped, Y, labels, M, k=3, hubness_weight=beta)
    ref = _full_sort_ths(mapped, Y, labels, M, 3, beta)
    torch.testing.assert_close(got, ref)


def test_ths_zero_when_well_separated():
    Y = torch.eye(4, dtype=torch.float64)
    mapped = torch.eye(4, dtype=torch.float64).repeat(5, 1)
    labels = torch.arange(4).repeat(5)
    assert float(ths_loss(mapped, Y, labels, semantic_margins(Y, 4.0), k=2, hubness_weight=0.0)) == 0.0


def test_ths_gradient_pulls_toward_label():
    Y = torch.eye(3, dtype=torch.float64)
    W = torch.nn.Parameter(torch.eye(3, dtype=torch.float64))
    q = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)  # nearer class 1, labelled 0
    opt = torch.optim.SGD([W], lr=0.5)
    for _ in range(30):
        loss = ths_loss(q @ W, Y, torch.tensor([0]), semantic_margins(Y), k=1, hubness_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int((q @ W).argmax()) == 0


def test_csls_reduces_hubness():
    g = torch.Generator().manual_seed(1)
    centre = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(500, 16, generator=g) / 4 + centre, dim=1)
    protos = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
    protos[:3] = torch.nn.functional.normalize(protos[:3] + centre, dim=1)  # three hubs near the queries
    sims = queries @ protos.T
    cs = csls_scores(sims, neighbourhood_radius(queries, protos, 5), neighbourhood_radius(protos, queries, 5))
    assert robin_hood_index(cs.numpy(), 1) < robin_hood_index(sims.numpy(), 1) - 0.1
    np.testing.assert_allclose(neighbourhood_radius(queries, protos, 5, chunk=7).numpy(), neighbourhood_radius(queries, protos, 5).numpy(), rtol=1e-6)
