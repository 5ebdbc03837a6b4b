"""gpua._integrity.streamed_digest: a feature file's checksum checked a block at a time.

Was: the cache check of ``gpua extract`` (every cached ``gpua classify`` run) read a feature file's
every array into memory to check its checksum, then the caller read them all again.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import ModelFileError
from gpua._integrity import CHECKSUM_KEY, digest, streamed_digest
from gpua.features import save_features


def _features(path, float16=False):
    rng = np.random.default_rng(0)
    return save_features(path, vfm_features=rng.normal(size=(40, 8)).astype(np.float32),
                         vlm_features=rng.normal(size=(40, 6)).astype(np.float32), text_prototypes=rng.normal(size=(3, 6)),
                         labels=rng.integers(0, 3, 40), classnames=["a", "b", "c"], image_ids=[f"x{i}" for i in range(40)],
                         meta={"k": [1, "two"]}, float16=float16)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("float16", [False, True])
def test_equals_the_stored_checksum_of_a_saved_file(tmp_path, suffix, float16):
    stored, actual = streamed_digest(_features(tmp_path / f"f{suffix}", float16), "f")
    assert stored is not None and stored == actual


def test_hashes_each_member_as_digest_does(tmp_path):
    """0-d arrays (digest hashes them as ascontiguousarray makes them, 1-d), strings, ints, bools, empty arrays."""
    arrays = {"z": np.arange(12, dtype=np.float32).reshape(3, 4), "meta": np.asarray('{"a": 1}'), "ids": np.asarray(["a", "bcd"]),
              "n": np.asarray(7), "mask": np.array([True, False]), "empty": np.zeros((0, 5), np.float16), "i8": np.arange(3, dtype=np.int8),
              "x": np.ones(2), "x-y": np.zeros(2)}  # "x-y.npy" sorts before "x.npy": the digest sorts by name
    np.savez(tmp_path / "a.npz", **arrays, **{CHECKSUM_KEY: np.asarray(digest(None, arrays))})
    stored, actual = streamed_digest(tmp_path / "a.npz", "a")
    assert stored == actual == digest(None, arrays)
    np.savez(tmp_path / "b.npz", **arrays)  # no checksum: (None, the digest)
    assert streamed_digest(tmp_path / "b.npz", "b") == (None, digest(None, arrays))


def test_an_array_it_cannot_hash_in_blocks_asks_for_a_whole_read(tmp_path):
    np.savez(tmp_path / "f.npz", z=np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    assert streamed_digest(tmp_path / "f.npz", "f") is None
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"z": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(tmp_path / "b.safetensors"))
    assert streamed_digest(tmp_path / "b.safetensors", "b") is None


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_flipped_bit_or_a_truncation_is_found(tmp_path, suffix):
    path = _features(tmp_path / f"f{suffix}")
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[300 if suffix == ".npz" else -20] ^= 0x40  # inside an array's data
    path.write_bytes(bytes(flipped))
    try:
        stored, actual = streamed_digest(path, "f")
    except ModelFileError as exc:  # the npz member's CRC-32
        assert "corrupt" in str(exc)
    else:
        assert stored != actual
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        streamed_digest(path, "f")


def test_the_cache_check_reads_no_array_whole(tmp_path, monkeypatch):
    import gpua.features
    from gpua.extract import _damage

    path = _features(tmp_path / "f.npz")

    def whole(*args, **kwargs):
        raise AssertionError("read whole")

    monkeypatch.setattr(gpua.features, "load_features", whole)
    assert _damage(path) is None
    data = bytearray(path.read_bytes())
    data[-40 - len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert "corrupt" in _damage(path)
