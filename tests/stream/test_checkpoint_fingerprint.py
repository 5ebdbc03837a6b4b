"""A checkpoint resumes only the fit it was written for: other data, even the same rows reordered, is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpua import GPUA, GPUAError
from gpua.stream import ArraySource, ShardedFeatures, fit_streaming, write_shards

from stream_helpers import assert_same_fit, planted_case

FAST = dict(refine=False, max_outer=30)
N = 300


@pytest.fixture(scope="module")
def small():
    """(Z, X, Y, labels): a planted set of N rows and 32 classes (full-rank prototypes: a unique map), fitted in well under a second."""
    return planted_case(n=N)


def _permuted_except_every(n: int, step: int, seed: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` that moves every row except rows 0, step, 2 step, ..."""
    rng = np.random.default_rng(seed)
    moved = np.setdiff1d(np.arange(n), np.arange(0, n, step))
    p = np.arange(n)
    p[moved] = np.roll(moved, 1 + int(rng.integers(len(moved) - 1)))  # a cyclic shift: no moved row stays put
    return p


def _fit_shards(path, ck, **params) -> GPUA:
    return GPUA(**FAST, **params).fit(ShardedFeatures(path), None, None, checkpoint=ck)


@pytest.mark.parametrize("storage", ["npy", "safetensors"])
def test_shards_rewritten_permuted_refuse_the_checkpoint(small, tmp_path, storage):
    Z, X, Y, _ = small
    s, ck = tmp_path / "s", tmp_path / "ck"
    write_shards(s, Z, X, text_prototypes=Y, dtype="float32", storage=storage, rows_per_shard=128)
    _fit_shards(s, ck)
    # Same folder, shard sizes, widths and dtype; the rows in another order.
    p = np.random.default_rng(0).permutation(N)
    write_shards(s, Z[p], X[p], text_prototypes=Y, dtype="float32", storage=storage, rows_per_shard=128, overwrite=True)
    with pytest.raises(GPUAError, match="written by another fit.*other data") as err:
        _fit_shards(s, ck)
    assert "new folder" in str(err.value) and "delete" in str(err.value)


def test_shards_without_recorded_checksums_still_refuse_other_data(small, tmp_path):
    # A set written before the index recorded file checksums: its files are hashed instead.
    Z, X, Y, _ = small

    def write_old_style(Z, X, overwrite=False):
        write_shards(s, Z, X, text_prototypes=Y, dtype="float16", rows_per_shard=128, overwrite=overwrite)
        index = json.loads((s / "index.json").read_text())
        del index["files"], index["checksum"]
        (s / "index.json").write_text(json.dumps(index))

    s, ck = tmp_path / "s", tmp_path / "ck"
    write_old_style(Z, X)
    first = _fit_shards(s, ck)
    assert_same_fit(first, _fit_shards(s, ck))  # the unchanged set resumes
    p = np.random.default_rng(1).permutation(N)
    write_old_style(Z[p], X[p], overwrite=True)
    with pytest.raises(GPUAError, match="another fit"):
        _fit_shards(s, ck)


def test_unchanged_shards_resume_even_rewritten_or_moved(small, tmp_path):
    # The fingerprint follows the content: neither rewriting the same rows (new files, new
    # modification times) nor moving the folder makes it another fit.
    Z, X, Y, _ = small
    s, ck = tmp_path / "s", tmp_path / "ck"
    write_shards(s, Z, X, text_prototypes=Y, dtype="float32", rows_per_shard=128)
    first = _fit_shards(s, ck)
    assert_same_fit(first, _fit_shards(s, ck))
    write_shards(s, Z, X, text_prototypes=Y, dtype="float32", rows_per_shard=128, overwrite=True)
    assert_same_fit(first, _fit_shards(s, ck))
    s.rename(tmp_path / "moved")
    assert_same_fit(first, _fit_shards(tmp_path / "moved", ck))
    # Another sharding of the same rows is another layout: refused rather than guessed at.
    write_shards(tmp_path / "other", Z, X, text_prototypes=Y, dtype="float32", rows_per_shard=100)
    with pytest.raises(GPUAError, match="another fit"):
        _fit_shards(tmp_path / "other", ck)


def test_arrays_permuted_except_the_sampled_rows_refuse_the_checkpoint(small, tmp_path):
    # The rows every N // 64 apart stay in place (a strided sample of them would not see the change).
    Z, X, Y, _ = small
    ck = tmp_path / "ck"
    fit_streaming(GPUA(**FAST), (Z, X), Y, checkpoint=ck, progress=False)
    p = _permuted_except_every(N, max(1, N // 64))
    assert (p != np.arange(N)).mean() > 0.7
    with pytest.raises(GPUAError, match="written by another fit.*other data"):
        fit_streaming(GPUA(**FAST), (Z[p], X[p]), Y, checkpoint=ck, progress=False)
    # The unchanged arrays (a copy, in another memory layout) still resume.
    again = fit_streaming(GPUA(**FAST), (np.asfortranarray(Z), X.copy()), Y, checkpoint=ck, progress=False)
    assert_same_fit(again, fit_streaming(GPUA(**FAST), (Z, X), Y, progress=False))


@pytest.mark.filterwarnings("error:The given NumPy array is not writable")  # torch, on a read-only memmap: not passed on
def test_array_fingerprint_sees_every_value(small, tmp_path):
    Z, X, _, _ = small
    base = ArraySource(Z, X).fingerprint()
    assert ArraySource(Z.copy(), X.copy()).fingerprint() == base
    assert ArraySource(Z.astype(np.float64), X).fingerprint() == base  # the float32 values a fit reads
    np.save(tmp_path / "Z.npy", Z)
    assert ArraySource(np.load(tmp_path / "Z.npy", mmap_mode="r"), X).fingerprint() == base
    assert ArraySource(Z.astype(np.float16), X).fingerprint() != base  # rounded: other values
    for A_is_Z in (True, False):
        A = (Z if A_is_Z else X).copy()
        A[N - 2, 3] = np.nextafter(A[N - 2, 3], np.float32(np.inf))  # one value, one ulp
        assert ArraySource(*((A, X) if A_is_Z else (Z, A))).fingerprint() != base
    # The same bytes in other shapes are other data.
    assert ArraySource(Z.reshape(N // 2, -1), X.reshape(N // 2, -1)).fingerprint() != base


@pytest.mark.parametrize("bad", [[None] * 4, [b"a", b"b", b"c", b"d"], ["a", "b\0", "c", "d"]])
def test_shard_image_ids_must_be_strings_that_survive_the_file(tmp_path, bad):
    # str() stored None as 'None' and bytes as "b'a'"; numpy drops trailing NULs on reading
    from gpua.stream import write_shards
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=4, n_classes=2, random_state=0)
    with pytest.raises(GPUAError, match="image_ids"):
        write_shards(tmp_path / "s", data.vfm_features, data.vlm_features, image_ids=bad, dtype="float32")


def test_an_estimated_prior_from_another_logit_scale_is_another_fit(small, tmp_path):
    """Was: a class_prior='zero_shot' checkpoint of logit_scale=100 resumed a logit_scale=2 fit with the
    stored prior: the model said logit_scale=2 and held the other fit. With a fixed prior the scale
    shapes prediction only, and the checkpoint still resumes."""
    Z, X, Y, _ = small
    s, ck = tmp_path / "s", tmp_path / "ck"
    write_shards(s, Z, X, text_prototypes=Y, dtype="float32", rows_per_shard=128)
    _fit_shards(s, ck, class_prior="zero_shot", logit_scale=100.0)
    with pytest.raises(GPUAError, match="written by another fit"):
        _fit_shards(s, ck, class_prior="zero_shot", logit_scale=2.0)
    ck2 = tmp_path / "ck2"
    first = _fit_shards(s, ck2, logit_scale=100.0)
    assert_same_fit(first, _fit_shards(s, ck2, logit_scale=2.0))
