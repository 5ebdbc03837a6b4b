"""Shard writer audit: an overwrite never loses the old set, and rows or labels that could not be
used are refused when written, not at fit time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpua import GPUAError
from gpua.stream import ShardedFeatures, ShardWriter, write_shards
from stream_helpers import random_shard_arrays


@pytest.fixture
def arrays():
    return random_shard_arrays(500, 10)


def _old_set(path, arrays):
    """A complete float32 set of 300 rows in 3 shards, with labels and prototypes."""
    Z, X, y, Y = arrays
    write_shards(path, Z[:300], X[:300], y[:300], rows_per_shard=100, dtype="float32", text_prototypes=Y)


def _assert_old_set(path, arrays):
    Z, X, y, Y = arrays
    s = ShardedFeatures(path)
    assert s.n_samples == 300 and s.shard_rows == [100, 100, 100]
    np.testing.assert_array_equal(s.read("vfm_features", 0, 300).numpy(), Z[:300])
    np.testing.assert_array_equal(s.read("vlm_features", 0, 300).numpy(), X[:300])
    np.testing.assert_array_equal(s.labels(), y[:300])
    np.testing.assert_array_equal(s.text_prototypes(), Y)


def _hidden_leftovers(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


# -- 1. an overwrite leaves the old set readable until the new one is complete ----------------------


@pytest.mark.parametrize("n_rows", [0, 50, 250])  # no row, a buffered batch, two flushed shards
def test_error_inside_overwrite_keeps_old_set(tmp_path, arrays, n_rows):
    Z, X, y, Y = arrays
    path = tmp_path / "feats"
    _old_set(path, arrays)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(path, overwrite=True, rows_per_shard=100, dtype="float32", text_prototypes=Y) as w:
            if n_rows:
                w.append(Z[200 : 200 + n_rows] * 2, X[200 : 200 + n_rows], y[200 : 200 + n_rows])
            raise RuntimeError("boom")
    _assert_old_set(path, arrays)
    assert _hidden_leftovers(path) == []  # the partial new set was removed


def test_unclosed_overwrite_keeps_old_set(tmp_path, arrays):
    Z, X, y, Y = arrays
    path = tmp_path / "feats"
    _old_set(path, arrays)
    w = ShardWriter(path, overwrite=True, rows_per_shard=100, dtype="float32", text_prototypes=Y)
    w.append(Z[:250] * 2, X[:250], y[:250])  # two shards flushed, never closed
    del w
    _assert_old_set(path, arrays)
    # A later overwrite replaces it (and clears what the abandoned writer left).
    s = write_shards(path, Z[:120], X[:120], rows_per_shard=100, dtype="float32", overwrite=True)
    assert s.n_samples == 120 and ShardedFeatures(path).n_samples == 120
    assert _hidden_leftovers(path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_overwrite_keeps_old_set(tmp_path, arrays):
    Z, X, y, Y = arrays
    path = tmp_path / "feats"
    _old_set(path, arrays)
    np.save(tmp_path / "Z.npy", Z * 2)
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from gpua.stream import ShardWriter
        Z = np.load({str(tmp_path / "Z.npy")!r})
        w = ShardWriter({str(path)!r}, rows_per_shard=100, overwrite=True)  # atomic not asked for
        w.append(Z[:400], Z[:400, :8])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    _assert_old_set(path, arrays)


def test_overwrite_closes_to_the_new_set(tmp_path, arrays):
    Z, X, y, Y = arrays
    path = tmp_path / "feats"
    _old_set(path, arrays)
    with ShardWriter(path, overwrite=True, rows_per_shard=100, dtype="float32") as w:
        w.append(Z[:150], X[:150])
    s = ShardedFeatures(path)
    assert w.result.path == path and s.n_samples == 150 and s.shard_rows == [100, 50]
    np.testing.assert_array_equal(s.read("vfm_features", 0, 150).numpy(), Z[:150])
    assert sorted(p.name for p in path.iterdir()) == [
        "index.json", "shard-000000.vfm_features.npy", "shard-000000.vlm_features.npy",
        "shard-000001.vfm_features.npy", "shard-000001.vlm_features.npy",
    ]  # nothing of the old set (labels, prototypes, third shard) is left
    assert _hidden_leftovers(path) == []
    with pytest.raises(GPUAError, match="overwrite=True"):
        ShardWriter(path)


def test_overwrite_of_a_set_holding_other_files_is_refused_up_front(tmp_path, arrays):
    path = tmp_path / "feats"
    _old_set(path, arrays)
    (path / "notes.txt").write_text("mine")
    with pytest.raises(GPUAError, match="other files"):
        ShardWriter(path, overwrite=True)
    _assert_old_set(path, arrays)
    assert (path / "notes.txt").read_text() == "mine"


def test_writer_puts_back_a_set_hidden_by_a_killed_swap(tmp_path, arrays):
    path = tmp_path / "feats"
    _old_set(path, arrays)
    os.replace(path, tmp_path / ".feats.old")  # killed between the two renames of an atomic swap
    with pytest.raises(GPUAError, match="overwrite=True"):
        ShardWriter(path)  # not a fresh folder beside the hidden set
    _assert_old_set(path, arrays)


# -- 2. float16 storage refuses rows it would turn into inf or zeros ------------------------------


@pytest.mark.filterwarnings("error")  # the cast's RuntimeWarning gives way to the error
@pytest.mark.parametrize(
    "scale, what", [(1e6, "with values too large for float16"), (1e-9, "that become all zeros in float16"),
                    # was stored without a word, a few bits an entry (17 distinct values over a matrix scaled by 1e-6)
                    (1e-5, "whose entries all fall below float16's normal range")],
)
def test_float16_refuses_unstorable_rows(tmp_path, arrays, scale, what):
    Z, X, y, Y = arrays
    Zb = Z.copy()
    Zb[5] *= scale
    with pytest.raises(GPUAError, match=rf"vfm_features has 1 row\(s\) {what} \(first: row 5,.*divide each row.*dtype='float32'"):
        write_shards(tmp_path / "a", Zb, X, y, text_prototypes=Y)  # float16 is the default
    assert not (tmp_path / "a").exists() and _hidden_leftovers(tmp_path / "a") == []
    # The same rows in float32 (or bfloat16, float32's range) are stored as given.
    s = write_shards(tmp_path / "b", Zb, X, y, dtype="float32", text_prototypes=Y)
    np.testing.assert_array_equal(s.read("vfm_features", 0, 500).numpy(), Zb)
    write_shards(tmp_path / "c", Zb, X, y, dtype="bfloat16", text_prototypes=Y)


def test_float16_refusal_names_the_batch_and_writes_nothing_of_it(tmp_path, arrays):
    Z, X, _, _ = arrays
    bad = X[:60].copy()
    bad[7] *= 1e6
    with ShardWriter(tmp_path / "a", rows_per_shard=50) as w:
        w.append(Z[:40], X[:40])
        with pytest.raises(GPUAError, match=r"vlm_features\[40:100\] has 1 row\(s\) with values too large for float16 \(first: row 7,"):
            w.append(Z[40:100], bad)
        assert w.n_written == 0 and not list((tmp_path / ".a.partial").glob("shard-*"))
        w.append(Z[40:100], X[40:100])  # the writer is still usable
    assert w.result.n_samples == 100


# -- 3. labels outside [0, K) are refused when K is known -------------------------------------------


def test_labels_outside_the_prototypes_are_refused(tmp_path, arrays):
    Z, X, y, Y = arrays
    with pytest.raises(GPUAError, match=r"labels holds values outside \[0, 10\) \(largest: 109\)"):
        write_shards(tmp_path / "a", Z, X, y + 100, text_prototypes=Y)
    assert not (tmp_path / "a").exists()
    names = [f"c{i}" for i in range(10)]
    with pytest.raises(GPUAError, match=r"outside \[0, 10\)"):
        with ShardWriter(tmp_path / "b", classnames=names) as w:  # K from the class names alone
            w.append(Z[:20], X[:20], y[:20])
            w.append(Z[20:40], X[20:40], y[20:40] + 10)
    # In range, or with no K to check against, labels are stored as given.
    np.testing.assert_array_equal(write_shards(tmp_path / "c", Z, X, y, text_prototypes=Y).labels(), y)
    np.testing.assert_array_equal(write_shards(tmp_path / "d", Z, X, y + 100).labels(), y + 100)
