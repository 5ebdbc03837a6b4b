import numpy as np
import pytest
import torch

from gpua import GPUAError
from gpua.procrustes import (
    completed_polar_factor,
    orthogonal_procrustes,
    orthogonality_error,
    polar_factor,
    procrustes_from_assignment,
    procrustes_map,
    query_vlm_cross,
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


# --- the completion of a map the classes leave free (procrustes_map) ---


def _rank_deficient(d_in=12, d_out=9, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d_in, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, d_out, generator=g, dtype=torch.float64)
    F = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    return M, F, g


def test_a_full_rank_map_is_the_polar_factor_and_no_filler_is_read():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(10, 6, generator=g, dtype=torch.float64)

    def never():
        raise AssertionError("a filler was read for a map M fixes alone")

    torch.testing.assert_close(completed_polar_factor(M, (never,)), polar_factor(M))
    torch.testing.assert_close(procrustes_map(M, "crosscov", never), polar_factor(M))


@pytest.mark.parametrize("d_in, d_out", [(12, 9), (9, 12)])
def test_the_completion_keeps_the_objective_and_is_semi_orthogonal(d_in, d_out):
    M, F, _ = _rank_deficient(d_in, d_out)
    W = completed_polar_factor(M, (F,))
    assert orthogonality_error(W) < 1e-10
    # tr(W^T M) is maximal: the same as the SVD's own completion
    assert float((W * M).sum()) == pytest.approx(float((polar_factor(M) * M).sum()), rel=1e-10)
    # on the span M reaches, W is what M says (the SVD's completion differs only off it)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    Ur = U[:, :3]
    torch.testing.assert_close(Ur.T @ W, Ur.T @ polar_factor(M))


def test_a_perturbation_of_rounding_size_moves_the_completed_map_not_the_svd_one():
    """Was: the SVD completed the null space from the sum's last bits, so a streamed fit (another summation
    order) started refinement from another map."""
    M, F, g = _rank_deficient()
    noise = 1e-9 * torch.randn(M.shape, generator=g, dtype=torch.float64)
    a, b = completed_polar_factor(M, (F,)), completed_polar_factor(M + noise, (F,))
    assert float((a - b).abs().max()) < 1e-6
    assert float((polar_factor(M) - polar_factor(M + noise)).abs().max()) > 1e-2


def test_what_the_first_filler_leaves_the_next_one_fills():
    M, F, g = _rank_deficient(12, 9, rank=3)
    thin = torch.randn(12, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 9, generator=g, dtype=torch.float64)  # fills 2 of 6
    eye = torch.eye(12, 9, dtype=torch.float64)
    W = completed_polar_factor(M, (thin, eye))
    assert orthogonality_error(W) < 1e-10  # complete: 3 + 2 + 4 directions
    noise = 1e-9 * torch.randn(M.shape, generator=g, dtype=torch.float64)
    assert float((W - completed_polar_factor(M + noise, (thin, eye))).abs().max()) < 1e-6
    torch.testing.assert_close(procrustes_map(M, "crosscov", thin), W)  # the identity comes after Q^T X


def test_procrustes_map_svd_is_the_polar_factor_and_unknown_completions_are_refused():
    M, F, _ = _rank_deficient()
    torch.testing.assert_close(procrustes_map(M, "svd"), polar_factor(M))
    with pytest.raises(GPUAError, match="procrustes_completion='qr' is unknown"):
        procrustes_map(M, "qr", F)
    with pytest.raises(GPUAError, match="NaN or inf"):
        completed_polar_factor(M * float("nan"), (F,))


def test_query_vlm_cross_is_q_transpose_x_in_blocks():
    g = torch.Generator().manual_seed(2)
    Q, X = torch.randn(9000, 5, generator=g), torch.randn(9000, 4, generator=g)
    torch.testing.assert_close(query_vlm_cross(Q, X), Q.double().T @ X.double())


def test_gpua_parameter_chooses_the_completion_and_the_default_fills_from_the_pool():
    from gpua import GPUA
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=300, n_classes=4, d_vfm=16, d_vlm=12, d_latent=4, random_state=0)
    args = (d.vfm_features, d.vlm_features, d.text_prototypes)
    assert GPUA().procrustes_completion == "crosscov"
    new = GPUA(refine=False, self_learning=0, random_state=0).fit(*args)
    old = GPUA(refine=False, self_learning=0, random_state=0, procrustes_completion="svd").fit(*args)
    assert float((new.W0_ - old.W0_).abs().max()) > 1e-3  # K - 1 = 3 of 12 directions fixed: the rest differs
    # without refinement the completion leaves every prediction as it is (Y^T removes it)
    np.testing.assert_array_equal(new.predict(d.vfm_features, d.vlm_features), old.predict(d.vfm_features, d.vlm_features))
    # rescaled features change only their rounding: the completed fit, refined and self-learning, does not move
    a = GPUA(random_state=0, n_steps=40).fit(*args)
    b = GPUA(random_state=0, n_steps=40).fit(1e-3 * d.vfm_features, 1e-3 * d.vlm_features, d.text_prototypes)
    assert float((a.W_ - b.W_).abs().max()) < 1e-4


def test_a_model_file_saved_before_the_completion_loads_as_fitted(tmp_path):
    from gpua import GPUA, load_model
    from gpua.synthetic import make_planted

    assert GPUA._params_before_added["procrustes_completion"] == "svd"  # fits saved before it completed by the SVD
    d = make_planted(n_samples=200, n_classes=4, d_vfm=16, d_vlm=12, d_latent=4, random_state=0)
    m = GPUA(n_steps=10, self_learning=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    assert load_model(m.save(tmp_path / "m.gpua")).procrustes_completion == "crosscov"
