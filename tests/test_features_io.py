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


def test_planted_data_as_a_feature_set(tmp_path):
    """PlantedData.feature_set: the chosen rows (slice, indices or mask) with their labels, every prototype."""
    from gpua.features import FeatureSet, load_features, save_features
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=40, n_classes=4, d_vfm=6, d_vlm=5, d_latent=3, random_state=0)
    mask = d.labels == 2
    for rows, n in ((slice(None), 40), (slice(10, 25), 15), (np.array([3, 1, 7]), 3), (mask, int(mask.sum()))):
        fs = d.feature_set(rows)
        assert isinstance(fs, FeatureSet) and fs.n_samples == n
        np.testing.assert_array_equal(fs.vfm_features, d.vfm_features[rows])
        np.testing.assert_array_equal(fs.vlm_features, d.vlm_features[rows])
        np.testing.assert_array_equal(fs.labels, d.labels[rows])
        np.testing.assert_array_equal(fs.text_prototypes, d.text_prototypes)
        assert list(fs.classnames) == list(d.classnames)
    back = load_features(save_features(tmp_path / "p.npz", d.feature_set(mask)), require=("labels",))
    assert set(back.labels.tolist()) == {2}
