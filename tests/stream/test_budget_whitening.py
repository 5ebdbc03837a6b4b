"""The memory plan counts the whitening's d_q x d_q second moment and eigendecomposition.

A wide query (thousands of dimensions) whitened on the pool holds five float64 d_q x d_q
matrices at once (the moment, its scaled copy, the eigenvectors and syevd's workspace): at
d_q = 4000 a fit under max_memory="1GB" planned 0.73 GB and reached 1.22 GB resident. The plan
must count them when the estimator whitens (and only then), and refuse a budget too small for
them, naming the minimum.
"""

from __future__ import annotations

import re

import pytest

from gpua import GPUA, GPUAError
from gpua.stream import minimum_budget, plan_memory
from gpua.stream._budget import _DASK_FAN_IN, RESERVE_BYTES, _fixed_bytes, _map_bytes, _moment_row_bytes, whitening_bytes

# The audited case: N = 1000, K = 10, a 4000-wide VFM query (VLM width 32), float32 rows.
N, K, D_V, D_T = 1000, 10, 4000, 32
D_Q = D_V
G = 8 * D_Q * D_Q  # one float64 d_q x d_q matrix


def test_whitening_bytes_counts_five_matrices_or_the_moment_pass():
    assert whitening_bytes(1000) == 5 * 8 * 1000**2
    # The moment pass holds the running sum and the chunk's own beside the chunk in flight.
    assert whitening_bytes(1000, chunk_bytes=10**9) == 2 * 8 * 1000**2 + 10**9
    # Dask: a worker folds fan_in chunk sums into its running sum; the driver one sum per worker.
    assert whitening_bytes(1000, n_processes=2) == (_DASK_FAN_IN + 2) * 8 * 1000**2
    assert whitening_bytes(1000, n_processes=16) == 17 * 8 * 1000**2


def test_dask_fan_in_is_the_executors():
    from gpua.stream._executor import DaskExecutor

    assert _DASK_FAN_IN == DaskExecutor.fan_in


@pytest.mark.parametrize("budget", ["1GB", "4GB", "64GB"])
def test_no_whitening_plans_as_before(budget):
    args = (budget, N, K, D_V, D_T, D_Q)
    assert plan_memory(*args, whiten=None) == plan_memory(*args)
    assert minimum_budget(*args[1:], whiten=None) == minimum_budget(*args[1:])


@pytest.mark.parametrize("whiten", ["auto", 64, 10**6])
def test_whitening_estimate_covers_its_phase(whiten):
    plan = plan_memory("4GB", N, K, D_V, D_T, D_Q, whiten=whiten)
    fixed = RESERVE_BYTES + _fixed_bytes(N, K, D_T, D_Q)
    assert plan.estimate >= fixed + 5 * G + _map_bytes(whiten, N, K, D_Q)
    assert plan.estimate <= plan.budget
    # The map M (float32, d_q x d) with d = whitening_width: "auto" = max(128, 2K), an int clipped to min(n, d_q).
    d = {"auto": 128, 64: 64, 10**6: N}[whiten]
    assert _map_bytes(whiten, N, K, D_Q) == 4 * D_Q * d
    assert _map_bytes(None, N, K, D_Q) == 0


def test_whitening_minimum_and_refusal_name_the_minimum():
    need = minimum_budget(N, K, D_V, D_T, D_Q, whiten="auto")
    assert need == RESERVE_BYTES + _fixed_bytes(N, K, D_T, D_Q) + _map_bytes("auto", N, K, D_Q) + 5 * G
    assert need - minimum_budget(N, K, D_V, D_T, D_Q) > 4 * G  # the old minimum ignored the whitening
    # The audited budget: accepted unwhitened, refused whitened, with the minimum and the way out.
    assert plan_memory("1GB", N, K, D_V, D_T, D_Q).estimate <= 10**9
    with pytest.raises(GPUAError) as err:
        plan_memory("1GB", N, K, D_V, D_T, D_Q, whiten="auto")
    msg = str(err.value)
    assert re.search(
        r"max_memory='1GB' \(1\.000 GB\) is too small: .*needs at least 1\.275 GB \(%d bytes\): [0-9.]+ MB for the process "
        r"itself, the rest mostly for the whitening's second "
        r"moment and eigendecomposition \(float64 4000 x 4000 matrices, query width 4000\); raise max_memory "
        r"\(--max-memory\) to 1\.275 GB or more, or fit without whitening \(whiten=None\)\." % need,
        msg,
    ), msg
    with pytest.raises(GPUAError, match="whitening"):
        plan_memory(need - 1, N, K, D_V, D_T, D_Q, whiten="auto")
    at_min = plan_memory(need, N, K, D_V, D_T, D_Q, whiten="auto")
    assert at_min.estimate <= at_min.budget == need


def test_narrow_query_still_names_the_chunk():
    # At d_q = 256 the whitening's matrices (2.6 MB) are not what binds, nor the chunk: the process
    # itself is most of the need, and the message does not send the user after a few MB (it said
    # "for one chunk of 256 rows" and suggested nothing that helps). The minimum grows only by the map M.
    n, k, d = 100_000, 1000, 256
    need = minimum_budget(n, k, d, d, d, whiten="auto")
    assert need == minimum_budget(n, k, d, d, d) + _map_bytes("auto", n, k, d)
    with pytest.raises(GPUAError, match=r"MB for the process itself, the rest mostly for its fixed arrays .*; raise max_memory "
                                         r"\(--max-memory\) to [0-9.]+ [GM]B or more\.$"):
        plan_memory(need - 1, n, k, d, d, d, whiten="auto")


def test_moment_pass_shrinks_the_chunk_to_fit():
    # Few classes, wide rows: the chunk the mining would take (half the free budget) does not fit
    # beside the moment pass's two d_q x d_q sums, where 5 G < free < 8 G.
    n, k, d_q = 200_000, 2, 3000
    g = 8 * d_q * d_q
    fixed = RESERVE_BYTES + _fixed_bytes(n, k, 64, d_q) + _map_bytes("auto", n, k, d_q)
    budget = fixed + 7 * g
    free = plan_memory(budget, n, k, d_q, 64, d_q)
    white = plan_memory(budget, n, k, d_q, 64, d_q, whiten="auto")
    assert 256 <= white.chunk_rows < free.chunk_rows
    assert fixed + 2 * g + white.chunk_rows * _moment_row_bytes(d_q, 64, d_q, 4) <= budget
    assert fixed + 2 * g + free.chunk_rows * _moment_row_bytes(d_q, 64, d_q, 4) > budget
    assert white.estimate <= budget
    # A forced chunk that the moment pass cannot hold is refused, with what it needs.
    with pytest.raises(GPUAError, match=r"chunk_rows=%d needs .* but max_memory=%d is" % (free.chunk_rows, budget)):
        plan_memory(budget, n, k, d_q, 64, d_q, whiten="auto", chunk_rows=free.chunk_rows)
    assert plan_memory(budget, n, k, d_q, 64, d_q, whiten="auto", chunk_rows=white.chunk_rows).chunk_rows == white.chunk_rows


def test_kept_rows_must_fit_beside_the_eigendecomposition():
    # Rows are kept from the moment pass on, so through the eigendecomposition too.
    budget = minimum_budget(N, K, D_V, D_T, D_Q, whiten="auto") + 10**6
    assert plan_memory(budget, N, K, D_V, D_T, D_Q).keep_rows  # room for them unwhitened
    white = plan_memory(budget, N, K, D_V, D_T, D_Q, whiten="auto")
    assert not white.keep_rows and white.estimate <= budget
    roomy = plan_memory("2GB", N, K, D_V, D_T, D_Q, whiten="auto")
    assert roomy.keep_rows and roomy.estimate >= RESERVE_BYTES + 5 * G + N * (D_V + D_T + D_Q) * 4


def test_streamed_fit_refuses_a_budget_too_small_for_its_whitening():
    import numpy as np

    from gpua.stream import fit_streaming, minimum_budget_for

    rng = np.random.default_rng(0)
    n, k, d_v, d_t = 300, 4, 3000, 16
    Z = rng.standard_normal((n, d_v)).astype(np.float32)
    X = rng.standard_normal((n, d_t)).astype(np.float32)
    Y = rng.standard_normal((k, d_t)).astype(np.float32)
    est = GPUA(refine=False, self_learning=0, query="vfm")  # whiten="auto", the default
    need = minimum_budget_for(est, n, k, d_v, d_t)
    assert need == minimum_budget(n, k, d_v, d_t, d_v, whiten="auto", plan_ridge=1.0)
    assert minimum_budget_for(GPUA(refine=False, self_learning=0, query="vfm", whiten=None), n, k, d_v, d_t) < need
    with pytest.raises(GPUAError, match=r"for the whitening's second moment"):  # refused before any pass
        fit_streaming(est, (Z, X), Y, max_memory=need - 1, progress=False)


def test_the_plan_projection_is_in_the_budget():
    # plan_ridge holds the query's (d + 1)^2 float64 moments for the whole fit and solves a
    # d x d system: at K = 1000 and d_q = 1792 (whitened on every direction) about 100 MB more.
    from gpua.stream._budget import _projection_bytes

    n, k, d = 50_000, 1000, 1792
    extra = _projection_bytes(1.0, "auto", n, k, d)
    assert extra == 8 * (4 * (d + 1) ** 2 + 3 * d * k) and _projection_bytes(None, "auto", n, k, d) == 0
    assert _projection_bytes(1.0, "auto", 2000, 10, 1664) == 8 * (4 * 129 ** 2 + 3 * 128 * 10)  # whitened to 128
    need = minimum_budget(n, k, d, 512, d, whiten="auto", plan_ridge=1.0)
    assert need == minimum_budget(n, k, d, 512, d, whiten="auto") + extra
    with pytest.raises(GPUAError, match="too small"):
        plan_memory(need - 1, n, k, d, 512, d, whiten="auto", plan_ridge=1.0)
    assert plan_memory(need, n, k, d, 512, d, whiten="auto", plan_ridge=1.0).estimate <= need
