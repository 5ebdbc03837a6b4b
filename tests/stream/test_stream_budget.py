"""Memory budgets: parsing, planning, and the error that gives the minimum."""

from __future__ import annotations

import pytest

from gpua import GPUA, GPUAError
from gpua.stream import fit_streaming, minimum_budget, parse_memory, plan_memory


@pytest.mark.parametrize(
    "text, n",
    [("4GB", 4 * 10**9), ("4 GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5gb", 1_500_000_000), (123456, 123456), ("2e9", 2 * 10**9)],
)
def test_parse_memory(text, n):
    assert parse_memory(text) == n


@pytest.mark.parametrize("bad", ["lots", "4 XB", "-1GB", 0, "GB"])
def test_parse_memory_refuses_nonsense(bad):
    with pytest.raises(GPUAError, match="max_memory"):
        parse_memory(bad)


def test_plan_modes_follow_the_budget():
    n, k, d_v, d_t = 1_000_000, 1000, 1280, 512
    big = plan_memory("64GB", n, k, d_v, d_t, d_v, itemsize=2)
    assert big.mode == "float64" and big.keep_previous
    four = plan_memory("4GB", n, k, d_v, d_t, d_v, itemsize=2)
    assert four.mode == "float16" and four.cached_chunks == four.n_chunks  # 2 GB of half tiles fit
    assert four.estimate <= four.budget
    three = plan_memory("3GB", n, k, d_v, d_t, d_v, itemsize=2)
    assert three.mode == "partial" and three.tile_dtype == "float16" and 0 < three.cached_chunks < three.n_chunks
    assert three.estimate <= three.budget
    # Four workers share the chunks: each caches its quarter, all of it fits.
    dist = plan_memory("4GB", n, k, d_v, d_t, d_v, itemsize=2, n_processes=4)
    assert dist.cached_chunks == dist.n_chunks
    small = plan_memory(minimum_budget(n, k, d_v, d_t, d_v, itemsize=2), n, k, d_v, d_t, d_v, itemsize=2)
    assert small.mode == "recompute" and small.chunk_rows == 256
    # Decoded rows and queries are kept between passes only when every tile is cached and they fit too.
    assert big.keep_rows and not four.keep_rows and not three.keep_rows and not small.keep_rows
    at_50k = plan_memory("4GB", 50_000, k, d_v, d_t, d_v, itemsize=2)
    assert at_50k.keep_rows and at_50k.estimate <= at_50k.budget
    assert not plan_memory("4GB", 200_000, k, d_v, d_t, d_v + d_t, itemsize=2).keep_rows  # 200k: tiles first


def test_budget_too_small_gives_the_minimum(case):
    Z, X, Y, _ = case
    # A small fit's need is mostly the process itself: said, not blamed on a few-KB chunk
    with pytest.raises(GPUAError, match=r"too small: .*needs at least .* bytes\): [0-9.]+ MB for the process itself.*; raise max_memory"):
        fit_streaming(GPUA(refine=False), (Z, X), Y, max_memory="100MB", progress=False)
    with pytest.raises(GPUAError, match=r"max_memory=10 \(10 bytes\) is too small"):  # was: "(0.1 MB)"
        fit_streaming(GPUA(refine=False), (Z, X), Y, max_memory=10, progress=False)
    with pytest.raises(GPUAError, match="one chunk of 256 rows") as err:  # where a chunk is the need, it is named
        plan_memory(minimum_budget(10_000, 10, 100_000, 512, 100_000) - 1, 10_000, 10, 100_000, 512, 100_000)
    assert "without whitening" not in str(err.value)
    with pytest.raises(GPUAError, match="refinement's held-out slice.*val_fraction"):
        plan_memory("1GB", 10_000_000, 1000, 1280, 512, 1280, refine=10**10)


def test_freed_memory_goes_back_to_the_os():
    import platform

    from gpua.stream import release_freed_memory

    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_sinkhorn_eta_from_the_convergence_rate():
    from gpua.stream._progress import passes_left

    assert passes_left([1e-1, 1e-2], 1e-5, 100) == 3  # a decade per pass, three more decades
    assert passes_left([1e-6], 1e-5, 100) == 0
    assert passes_left([1e-1, 2e-1], 1e-5, 7) == 7  # not converging: capped
