"""Dask: chunk sums on a LocalCluster of worker processes equal the local fit; dead addresses fail fast."""

from __future__ import annotations

import time

import pytest

from gpua import GPUA, GPUAError
from gpua.stream import fit_streaming, write_shards
from stream_helpers import assert_same_fit, planted_case

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    Z, X, Y, _ = planted_case(900, 24, 32, 16, 12, seed=3)
    return write_shards(tmp_path_factory.mktemp("shards") / "s", Z, X, rows_per_shard=200, dtype="float16", text_prototypes=Y)


@pytest.mark.slow
def test_local_cluster_equals_local_fit(shards):
    from distributed import Client, LocalCluster

    params = dict(refine=True, n_steps=5, center=True)
    kw = dict(max_memory="2GB", chunk_rows=256, progress=False)  # 4 chunks over 2 workers
    local = fit_streaming(GPUA(**params), shards, **kw)
    assert local.history_["streaming"]["n_chunks"] == 4
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, Client(lc, set_as_default=False) as client:
        dist = fit_streaming(GPUA(**params), shards, cluster=client, **kw)
        # The workers hold no tiles once the fit is over.
        assert sum(client.run(__import__("gpua.stream._kernels", fromlist=["_STORE"]).__dict__["drop"], "none").values()) == 0
    assert dist.history_["streaming"]["processes"] == 2
    assert_same_fit(local, dist, atol=1e-6)


def test_dead_scheduler_fails_fast(shards):
    t0 = time.perf_counter()
    with pytest.raises(GPUAError, match=r"cluster 'tcp://127.0.0.1:9' did not answer within 1 s"):
        fit_streaming(GPUA(refine=False), shards, cluster="tcp://127.0.0.1:9", connect_timeout=1.0, progress=False)
    assert time.perf_counter() - t0 < 10


def test_arrays_cannot_go_to_a_cluster():
    Z, X, Y, _ = planted_case(300, 8, 16, 8, 6)
    with pytest.raises(GPUAError, match="shared storage"):  # refused before any cluster starts
        fit_streaming(GPUA(refine=False), (Z, X), Y, cluster="local", progress=False)


def test_bad_cluster_argument(shards):
    with pytest.raises(GPUAError, match="not understood"):
        fit_streaming(GPUA(refine=False), shards, cluster=3.5, progress=False)
