import numpy as np
import pytest

from gpua import GPUAError
from gpua.features import FeatureSet, load_features, save_features


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("float16", [False, True])
def test_roundtrip(tmp_path, rng, suffix, float16):
    Z = rng.standard_normal((10, 5)).astype(np.float32)
    X = rng.standard_normal((10, 3)).astype(np.float32)
    Y = rng.standard_normal((4, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 10)
    path = save_features(tmp_path / f"f{suffix}", vfm_features=Z, vlm_features=X, text_prototypes=Y, labels=labels,
                         classnames=["a", "b", "c", "d"], image_ids=[f"img{i}" for i in range(10)], meta={"src": "t"}, float16=float16)
    fs = load_features(path)
    assert fs.vfm_features.dtype == np.float32
    np.testing.assert_allclose(fs.vfm_features, Z, atol=1e-3 if float16 else 0)
    np.testing.assert_array_equal(fs.labels, labels)
    assert fs.classnames == ["a", "b", "c", "d"]
    assert fs.image_ids[3] == "img3"
    assert fs.meta == {"src": "t"}


def test_plain_npz_by_hand(tmp_path, rng):
    np.savez(tmp_path / "h.npz", vfm_features=rng.standard_normal((5, 4)).astype(np.float16),
             vlm_features=rng.standard_normal((5, 3)), text_prototypes=rng.standard_normal((2, 3)))
    fs = load_features(tmp_path / "h.npz")
    assert fs.n_samples == 5 and fs.vfm_features.dtype == np.float32


def test_label_out_of_range(tmp_path, rng):
    with pytest.raises(GPUAError, match="labels"):
        FeatureSet(vlm_features=rng.standard_normal((3, 2)), text_prototypes=rng.standard_normal((2, 2)), labels=np.array([0, 1, 5])).validate()


def test_bad_suffix(tmp_path):
    with pytest.raises(GPUAError, match=".npz or .safetensors"):
        save_features(tmp_path / "f.txt", vfm_features=np.ones((2, 2)))
