"""Audit of the streamed fit: equality over parameter combinations, per-worker memory plans, budgets, changed shards."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError
from gpua.stream import ShardedFeatures, fit_streaming, parse_memory, plan_memory, write_shards
from gpua.stream._budget import _TILE_BYTES, RESERVE_BYTES, _fixed_bytes, _row_bytes, rows_per_process
from gpua.stream._fit import make_parts

from stream_helpers import assert_same_fit, planted_case


@pytest.fixture(scope="module")
def small():
    """N = 301 (a prime: no chunk size divides it), K = 16 classes above the VLM width 12 (a unique Procrustes map)."""
    return planted_case(n=301, k=16, d_vfm=24, d_vlm=12, d_latent=8)


# --- the streamed fit equals the in-memory fit ------------------------------------------------
_COMBOS = {
    "defaults-no-refine": dict(refine=False, self_learning=0),
    "vfm-query": dict(refine=False, self_learning=0, query="vfm"),
    "no-centering-no-whitening": dict(refine=False, self_learning=0, center=False, center_vlm=False, whiten=None),
    "center-vfm-only": dict(refine=False, self_learning=0, center=True, center_vlm=False),
    "center-vlm-only": dict(refine=False, self_learning=0, center=False, center_vlm=True),
    "whiten-int": dict(refine=False, self_learning=0, whiten=6),
    "balanced": dict(refine=False, self_learning=0, rho=None),
    "rho-0.5": dict(refine=False, self_learning=0, rho=0.5),
    "class-prior": dict(refine=False, self_learning=0, class_prior=list(range(1, 17))),
    "csls": dict(refine=False, self_learning=0, retrieval="csls"),
    "hard": dict(refine=False, self_learning=0, assignment="hard"),
    "self-learning-unwhitened": dict(refine=False, self_learning=2, whiten=None),
    "refine-self-learning-csls": dict(refine=True, n_steps=30, self_learning=2, retrieval="csls"),
}


@pytest.mark.parametrize("params", list(_COMBOS.values()), ids=list(_COMBOS))
@pytest.mark.parametrize("chunk", [None, 100, 150, 1000], ids=["budget", "last-chunk-1-row", "two-and-1", "n-below-chunk"])
def test_streamed_equals_in_memory_for_every_combination(small, params, chunk):
    Z, X, Y, _ = small
    ref = GPUA(**params).fit(Z, X, Y)
    got = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", progress=False, chunk_rows=chunk)
    assert_same_fit(ref, got)


@pytest.mark.parametrize("chunk", [1, 5, 13])
def test_many_classes_on_tiny_chunks(chunk):
    # K = 64 classes, chunks of fewer rows than classes (and than n_init_per_class = 8).
    Z, X, Y, _ = planted_case(n=301, k=64, d_vfm=24, d_vlm=12, d_latent=8)
    params = dict(refine=False, self_learning=0, rho=None, whiten=None)
    assert_same_fit(GPUA(**params).fit(Z, X, Y), fit_streaming(GPUA(**params), (Z, X), Y, progress=False, chunk_rows=chunk))


# --- a Dask plan counts the chunks its busiest worker owns --------------------------------------
def _worker_peak(plan, n, k, d_v, d_t, d_q, n_processes):
    """Modelled peak of the most loaded worker, from the chunks make_parts really gives it to cache."""
    owners = lambda parts: [p.index % n_processes for p in parts]  # noqa: E731 - DaskExecutor.owners
    parts = make_parts(None, plan, owners, n)
    per_entry = _TILE_BYTES[plan.tile_dtype] + (4 if plan.keep_previous else 0)
    cached = [0] * n_processes
    for p, o in zip(parts, owners(parts)):
        if p.cache:
            cached[o] += (p.stop - p.start) * k * per_entry
    fixed = RESERVE_BYTES + _fixed_bytes(n, k, d_t, d_q)
    return fixed + plan.chunk_rows * _row_bytes(k, d_v, d_t, d_q, 4) + max(cached)


@pytest.mark.parametrize("n_processes", [2, 3])
def test_dask_plan_fits_the_worker_that_owns_the_most_chunks(n_processes):
    # 3 chunks on 2 workers: worker 0 caches chunks 0 and 2, two thirds of the rows, not half.
    n, k, d_v, d_t, d_q = 3 * 8192, 1000, 64, 32, 96
    half = -(-n // n_processes)
    budget = RESERVE_BYTES + _fixed_bytes(n, k, d_t, d_q) + 8192 * _row_bytes(k, d_v, d_t, d_q, 4) + half * k * 12 + 1000
    plan = plan_memory(budget, n, k, d_v, d_t, d_q, n_processes=n_processes, chunk_rows=8192)
    assert plan.estimate <= plan.budget
    assert _worker_peak(plan, n, k, d_v, d_t, d_q, n_processes) <= plan.estimate


def test_rows_per_process():
    assert rows_per_process(301, 100) == 301
    assert rows_per_process(301, 100, 2) == 200  # chunks 0 and 2 on worker 0 (1 and the 1-row 3 on worker 1)
    assert rows_per_process(301, 100, 3) == 101  # chunks 0 and 3 (the 1-row one)
    assert rows_per_process(301, 100, 8) == 100  # more workers than chunks
    assert rows_per_process(3 * 8192, 8192, 2) == 2 * 8192


def test_one_process_plans_are_unchanged():
    # The local plan's decision (every row's tile) is as before; its estimate counts n rows, not n_chunks full chunks.
    plan = plan_memory("2GB", 301, 16, 24, 12, 36, chunk_rows=100)
    assert plan.mode == "float64" and plan.keep_previous and plan.estimate <= plan.budget


# --- budgets --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, n",
    [("4 GiB", 4 * 2**30), ("4gb", 4 * 10**9), ("0.5GB", 5 * 10**8), ("4 GB ", 4 * 10**9), ("4G", 4 * 10**9),
     (".5GB", 5 * 10**8), ("+4GB", 4 * 10**9), (np.int64(4096), 4096), (10**30, 10**30)],
)
def test_budget_strings_accepted(text, n):
    assert parse_memory(text) == n


@pytest.mark.parametrize(
    "bad, match",
    [("-1GB", "must be positive"), ("0.1", "must be positive"), (0.5, "must be positive"), (float("inf"), "not a finite size"),
     ("1e400", "not a finite size"), (float("nan"), "must be positive"), ("4,000", "not a size"), ("4 XB", "not a size"), (True, "not a size")],
)
def test_budget_strings_refused_clearly(bad, match):
    with pytest.raises(GPUAError, match=match):
        parse_memory(bad)


def test_chunk_rows_takes_numpy_integers_and_refuses_bools():
    assert plan_memory("2GB", 301, 16, 24, 12, 36, chunk_rows=np.int64(50)).chunk_rows == 50
    for bad in (True, 0, -3, 50.0):
        with pytest.raises(GPUAError, match="chunk_rows"):
            plan_memory("2GB", 301, 16, 24, 12, 36, chunk_rows=bad)


def test_missing_dask_names_the_package(small, tmp_path, monkeypatch):
    Z, X, Y, _ = small
    shards = write_shards(tmp_path / "s", Z, X, dtype="float32", text_prototypes=Y)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(GPUAError, match=r"dask\[distributed\]"):
        fit_streaming(GPUA(refine=False), shards, progress=False, cluster="local")


# --- shard files that change under a reader ------------------------------------------------------
@pytest.fixture()
def shard_set(small, tmp_path):
    Z, X, Y, lab = small
    return write_shards(tmp_path / "s", Z, X, lab, rows_per_shard=100, dtype="float32", text_prototypes=Y), Z


@pytest.mark.parametrize("storage", ["npy", "safetensors"])
@pytest.mark.parametrize("change", ["removed", "truncated"])
def test_a_file_removed_or_truncated_after_opening_is_named(small, tmp_path, storage, change):
    Z, X, Y, _ = small
    sf = write_shards(tmp_path / "s", Z, X, rows_per_shard=100, dtype="float32", storage=storage)
    sf.read("vfm_features", 0, 301)  # mapped and verified once
    f = tmp_path / "s" / ("shard-000001.vfm_features.npy" if storage == "npy" else "shard-000001.safetensors")
    if change == "removed":
        f.unlink()
    else:
        os.truncate(f, f.stat().st_size - 400)
    for read in (lambda: sf.read("vfm_features", 0, 301), lambda: sf.take("vfm_features", [5, 150, 299])):
        with pytest.raises(GPUAError, match="shard 1 file .* after this reader opened the shard set"):
            read()


def test_a_file_replaced_after_opening_is_not_silently_mixed_in(shard_set, tmp_path):
    sf, Z = shard_set
    np.testing.assert_array_equal(sf.read("vfm_features", 95, 105).numpy(), Z[95:105])
    # Another writer replaces shard 1 with rows of the same shape (a set re-written in place).
    np.save(tmp_path / "s" / "shard-000001.vfm_features.npy", np.ones((100, Z.shape[1]), np.float32))
    with pytest.raises(GPUAError, match="shard 1 file .* replaced after this reader opened"):
        sf.read("vfm_features", 95, 105)


def test_a_new_reader_in_the_same_process_does_not_hash_the_files_again(shard_set, tmp_path, monkeypatch):
    # A Dask worker unpickles a reader per task: each used to hash every shard file it read again.
    sf, Z = shard_set
    import gpua.features._shards as S

    calls = []
    real = S.file_digest
    monkeypatch.setattr(S, "file_digest", lambda f: calls.append(f) or real(f))
    sf.read("vfm_features", 0, 301)
    assert len(calls) == 4  # 301 rows in shards of 100: four files
    again = pickle.loads(pickle.dumps(sf))  # what a worker gets with each task
    np.testing.assert_array_equal(again.read("vfm_features", 0, 301).numpy(), Z)
    assert len(calls) == 4
    # A file changed since is verified again, and its damage caught.
    f = tmp_path / "s" / "shard-000002.vfm_features.npy"
    bad = np.load(f)
    bad[0, 0] += 1.0
    np.save(f, bad)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a later write, whatever the clock's resolution
    with pytest.raises(GPUAError, match="checksum"):
        pickle.loads(pickle.dumps(sf)).read("vfm_features", 0, 301)


def test_labels_and_ids_stay_aligned_across_shard_boundaries(small, tmp_path):
    Z, X, Y, lab = small
    ids = [f"img{i}" for i in range(301)]
    from gpua.stream import ShardWriter

    with ShardWriter(tmp_path / "s", dtype="bfloat16", rows_per_shard=7) as w:
        for a, b in ((0, 1), (1, 6), (6, 50), (50, 51), (51, 301)):  # batches straddling shard ends
            w.append(Z[a:b], X[a:b], lab[a:b], ids[a:b])
    sf = ShardedFeatures(tmp_path / "s")
    rows = torch.from_numpy(Z).to(torch.bfloat16).float()
    for a, b in ((0, 7), (6, 8), (13, 15), (293, 301), (0, 301), (300, 301)):
        assert torch.equal(sf.read("vfm_features", a, b), rows[a:b])
        np.testing.assert_array_equal(sf.read("labels", a, b).numpy(), lab[a:b])
        assert sf.image_ids(a, b) == ids[a:b]
    idx = np.array([300, 0, 6, 7, 7, 150])
    assert torch.equal(sf.take("vfm_features", idx), rows[idx])
    np.testing.assert_array_equal(sf.take("labels", idx).numpy(), lab[idx])


def test_a_set_replaced_between_pickling_and_unpickling_is_refused(tmp_path):
    """A Dask task re-opens the set from its path: a set replaced meanwhile was read as if it were the same."""
    from gpua._errors import ModelFileError

    rng = np.random.default_rng(0)
    write_shards(tmp_path / "s", rng.normal(size=(20, 4)), rng.normal(size=(20, 3)), rows_per_shard=8)
    sent = pickle.dumps(ShardedFeatures(tmp_path / "s"))
    assert pickle.loads(sent).n_samples == 20  # the same set: fine
    write_shards(tmp_path / "s", rng.normal(size=(24, 4)), rng.normal(size=(24, 3)), rows_per_shard=8, overwrite=True)
    with pytest.raises(ModelFileError, match="was replaced after the fit opened it"):
        pickle.loads(sent)
