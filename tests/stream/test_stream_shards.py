"""Shard sets: round trips in every dtype and storage, and clear errors for damaged sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpua import GPUAError, ModelFileError
from gpua.stream import ShardedFeatures, ShardWriter, write_shards
from stream_helpers import random_shard_arrays


@pytest.fixture
def arrays():
    return random_shard_arrays(1000, 5)


@pytest.mark.parametrize("storage", ["npy", "safetensors"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip(tmp_path, arrays, storage, dtype):
    Z, X, y, Y = arrays
    write_shards(tmp_path, Z, X, y, rows_per_shard=300, dtype=dtype, storage=storage, text_prototypes=Y, classnames=list("abcde"))
    s = ShardedFeatures(tmp_path)
    assert (s.n_samples, s.n_shards, s.shard_rows, s.dtype) == (1000, 4, [300, 300, 300, 100], dtype)
    assert s.widths == {"vfm_features": 12, "vlm_features": 8} and s.classnames == list("abcde")
    rounded = lambda A: torch.from_numpy(A).to(getattr(torch, dtype)).float()  # noqa: E731
    # A range across three shards, arbitrary rows with repeats, labels, prototypes.
    assert torch.equal(s.read("vfm_features", 250, 950), rounded(Z[250:950]))
    idx = np.array([999, 0, 301, 301, 650, 7])
    assert torch.equal(s.take("vlm_features", idx), rounded(X[idx]))
    np.testing.assert_array_equal(s.labels(), y)
    np.testing.assert_array_equal(s.text_prototypes(), Y)
    assert s.read("vfm_features", 5, 5).shape == (0, 12)
    chunks = list(s.iter_rows(400))
    assert [(a, b) for a, b, _ in chunks] == [(0, 400), (400, 800), (800, 1000)]


def test_writer_appends_batches_of_any_size(tmp_path, arrays):
    Z, X, _, _ = arrays
    with ShardWriter(tmp_path, dtype="float32", rows_per_shard=256) as w:
        for a, b in [(0, 10), (10, 600), (600, 601), (601, 1000)]:
            w.append(Z[a:b], X[a:b])
    assert w.result.shard_rows == [256, 256, 256, 232]
    np.testing.assert_array_equal(w.result.read("vfm_features", 0, 1000).numpy(), Z)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_writer_refuses_inconsistent_batches(tmp_path, arrays):
    Z, X, y, _ = arrays
    with pytest.raises(GPUAError, match="same models"):
        with ShardWriter(tmp_path / "a") as w:
            w.append(Z[:10], X[:10])
            w.append(Z[10:20, :6], X[10:20])
    with pytest.raises(GPUAError, match="every batch or none"):
        with ShardWriter(tmp_path / "b") as w:
            w.append(Z[:10], X[:10], y[:10])
            w.append(Z[10:20], X[10:20])
    with pytest.raises(GPUAError, match="NaN"):
        bad = Z[:10].copy()
        bad[3, 0] = np.inf
        ShardWriter(tmp_path / "c").append(bad, X[:10])
    with pytest.raises(GPUAError, match="dtype"):
        ShardWriter(tmp_path / "d", dtype="int8")


def test_overwrite_is_explicit_and_drops_stale_shards(tmp_path, arrays):
    Z, X, _, _ = arrays
    write_shards(tmp_path, Z, X, rows_per_shard=100)
    with pytest.raises(GPUAError, match="overwrite=True"):
        write_shards(tmp_path, Z, X)
    s = write_shards(tmp_path, Z[:150], X[:150], rows_per_shard=100, overwrite=True)
    assert s.n_samples == 150 and len(list(tmp_path.glob("shard-*"))) == 4  # 2 shards x 2 keys


def test_missing_shard_is_named(tmp_path, arrays):
    Z, X, _, _ = arrays
    write_shards(tmp_path, Z, X, rows_per_shard=300)
    (tmp_path / "shard-000002.vlm_features.npy").unlink()
    with pytest.raises(ModelFileError, match=r"shard 2 .* 'shard-000002.vlm_features.npy' does not exist"):
        ShardedFeatures(tmp_path)
    assert issubclass(ModelFileError, GPUAError) and issubclass(GPUAError, ValueError)


def test_wrong_width_is_named(tmp_path, arrays):
    Z, X, _, _ = arrays
    write_shards(tmp_path, Z, X, rows_per_shard=300, dtype="float16")
    np.save(tmp_path / "shard-000001.vfm_features.npy", Z[300:600, :10].astype(np.float16))
    with pytest.raises(ModelFileError, match=r"shard 1 .*vfm_features has width 10 but the index says 12"):
        ShardedFeatures(tmp_path)


def test_wrong_rows_or_dtype_and_missing_index(tmp_path, arrays):
    Z, X, _, _ = arrays
    write_shards(tmp_path / "a", Z, X, rows_per_shard=300, dtype="float16")
    np.save(tmp_path / "a" / "shard-000000.vlm_features.npy", X[:300])  # float32 instead of float16
    with pytest.raises(ModelFileError, match="stored as float32 but the index says float16"):
        ShardedFeatures(tmp_path / "a")
    write_shards(tmp_path / "b", Z, X, rows_per_shard=300, storage="safetensors")
    index = json.loads((tmp_path / "b" / "index.json").read_text())
    index["shard_rows"][0] = 299
    (tmp_path / "b" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="does not match its checksum"):  # an edited index is noticed
        ShardedFeatures(tmp_path / "b")
    index.pop("checksum")  # as the message advises for an edit on purpose
    index["n_samples"] = 999
    (tmp_path / "b" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="shape"):
        ShardedFeatures(tmp_path / "b")
    (tmp_path / "b" / "index.json").unlink()
    with pytest.raises(ModelFileError, match="no index.json .*did not finish"):
        ShardedFeatures(tmp_path / "b")
    (tmp_path / "c.npz").write_bytes(b"x")  # a feature file given as a set (was: "shard set 'c.npz' has no index.json")
    with pytest.raises(ModelFileError, match=r"c.npz' is a file, not a shard set .*fit a feature file in memory"):
        ShardedFeatures(tmp_path / "c.npz")


def test_shards_pickle_by_path(tmp_path, arrays):
    import pickle

    Z, X, _, _ = arrays
    s = write_shards(tmp_path, Z, X, rows_per_shard=300)
    blob = pickle.dumps(s)
    assert len(blob) < 500  # workers get the path, not the data
    assert torch.equal(pickle.loads(blob).read("vfm_features", 0, 10), s.read("vfm_features", 0, 10))
