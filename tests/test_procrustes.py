import numpy as np
import pytest
import torch

from gpua.procrustes import (
    orthogonal_procrustes,
    orthogonality_error,
    polar_factor,
    procrustes_from_assignment,
)


def _random_isometry(d_in, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    Qm, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g, dtype=torch.float64))
    return Qm if d_in >= d_out else Qm.T


@pytest.mark.parametrize("d_in,d_out", [(16, 16), (40, 12), (12, 40)])
def test_recovers_planted_map(d_in, d_out):
    W = _random_isometry(d_in, d_out, 0)
    g = torch.Generator().manual_seed(1)
    # Whitened queries (A^T A = n I): there the trace-maximising U V^T is also the least-squares
    # solution for a semi-orthogonal map (for a square one any full-rank A would do).
    A, _ = torch.linalg.qr(torch.randn(500, d_in, generator=g, dtype=torch.float64))
    A = A * 500**0.5
    B = A @ W
    W_hat = orthogonal_procrustes(A, B)
    np.testing.assert_allclose(W_hat.numpy(), W.numpy(), atol=1e-5)
    assert orthogonality_error(W_hat) < 1e-5


def test_soft_assignment_target_is_weighted_prototypes():
    W = _random_isometry(24, 8, 2)
    g = torch.Generator().manual_seed(3)
    Y = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    P = torch.softmax(torch.randn(300, 5, generator=g, dtype=torch.float64) * 3, dim=1)
    Q = (P @ Y) @ W.T  # each query maps exactly onto its soft target
    W_hat = procrustes_from_assignment(Q, P, Y, "soft")
    np.testing.assert_allclose((Q @ W_hat).numpy(), (P @ Y).numpy(), atol=1e-5)


def test_hard_assignment_uses_argmax():
    g = torch.Generator().manual_seed(4)
    Q = torch.randn(50, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    P = torch.softmax(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=1)
    onehot = torch.nn.functional.one_hot(P.argmax(1), 3).double()
    torch.testing.assert_close(procrustes_from_assignment(Q, P, Y, "hard"), procrustes_from_assignment(Q, onehot, Y, "soft"))


@pytest.mark.parametrize("d_in,d_out", [(10, 10), (12, 5)])
def test_polar_factor_is_nearest_orthogonal(d_in, d_out):
    """W is the orthogonal factor of M's polar decomposition M = W P (scipy.linalg.polar), so
    W^T M = P is symmetric positive semi-definite: the nearest (semi-)orthogonal matrix to M."""
    import scipy.linalg

    g = torch.Generator().manual_seed(5)
    M = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    W = polar_factor(M)
    U, P = scipy.linalg.polar(M.numpy(), side="right")
    np.testing.assert_allclose(W.numpy(), U, atol=1e-10)
    WtM = (W.T @ M).numpy()
    np.testing.assert_allclose(WtM, WtM.T, atol=1e-10)
    assert np.linalg.eigvalsh((WtM + WtM.T) / 2).min() > -1e-10
    assert orthogonality_error(W) < 1e-10