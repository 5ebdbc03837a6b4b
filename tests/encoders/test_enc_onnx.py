"""The ONNX back end on a tiny exported torch module: node selection, graph cutting, caching.

The model is ``tiny_models.TinyTokens``, exported by the ``tiny_onnx`` fixture of ``conftest.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.encoders import create_encoder

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_pooled_output_has_no_patches(tiny_onnx, images):
    path, _, _ = tiny_onnx
    enc = create_encoder(f"onnx:{path}?size=32&resize=32")
    assert enc.embed_dim == 8 and not enc.is_vlm
    E = enc.encode_images(images)
    assert E.shape == (5, 8) and E.dtype == np.float32
    with pytest.raises(GPUAError, match="patch_output"):
        enc.encode_patches(images)
    with pytest.raises(GPUAError, match="vision-only"):
        enc.encode_text(["a cat"])


def test_cut_at_token_node(tiny_onnx, images, contract, patch_layout, grey_rgba, tmp_path):
    path, tokens, _ = tiny_onnx
    enc = create_encoder(f"onnx:{path}?input=pixel_values&output={tokens}&size=32&resize=32", cache_dir=tmp_path)
    assert enc.embed_dim == 16 and enc.patch_size == 8
    contract(enc, images)
    patch_layout(enc)
    grey_rgba(enc)
    assert enc.encode_patches(images[:1]).shape == (1, 4, 4, 16)
    cut = list((tmp_path / "onnx").glob("tiny-*.onnx"))
    assert len(cut) == 1 and enc.model_path == cut[0]
    # Cached: a second encoder reuses the cut graph instead of cutting again.
    mtime = cut[0].stat().st_mtime_ns
    enc2 = create_encoder(f"onnx:{path}", output=tokens, size=32, resize=32, cache_dir=tmp_path)
    assert enc2.model_path == cut[0] and cut[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(enc2.encode_images(images), enc.encode_images(images))
    assert not [p for p in os.listdir(tmp_path / "onnx") if p.endswith(".tmp.onnx")]  # atomic write left nothing
    # Mean pooling of the patch tokens instead of the CLS token.
    mean = create_encoder(f"onnx:{path}", output=tokens, pool="mean", size=32, resize=32, cache_dir=tmp_path)
    np.testing.assert_allclose(mean.encode_images(images[:2]), enc.encode_patches(images[:2]).mean(axis=(1, 2)), atol=1e-5)


def test_feature_map_output_and_preprocess_options(tiny_onnx, images, tmp_path):
    path, _, fmap = tiny_onnx
    enc = create_encoder(f"onnx:{path}?output={fmap}&size=32&resize=40&mean=0.1,0.2,0.3&std=0.5,0.5,0.5&interpolation=bilinear",
                         cache_dir=tmp_path)
    P = enc.encode_patches(images[:2])
    assert P.shape == (2, 4, 4, 16)
    np.testing.assert_allclose(enc.encode_images(images[:2]), P.mean(axis=(1, 2)), atol=1e-5)
    meta = enc.metadata()
    assert meta["preprocess"]["mean"] == [0.1, 0.2, 0.3] and meta["preprocess"]["resize"] == 40
    assert meta["preprocess"]["interpolation"] == "bilinear" and meta["output"] == fmap
    assert meta["weights"]["file"]["bytes"] == os.path.getsize(path)


def test_patch_output_beside_pooled_output(tiny_onnx, images, tmp_path):
    path, tokens, _ = tiny_onnx
    # Patch width (16) differs from the pooled width (8) here: the contract (same d) is enforced
    # when the encoder is built, naming both nodes, not at the first encode_patches.
    with pytest.raises(GPUAError, match=f"patch_output='{tokens}' has width 16 but output='embedding' has width 8"):
        create_encoder(f"onnx:{path}", output="embedding", patch_output=tokens, size=32, resize=32, cache_dir=tmp_path)


def test_errors(tiny_onnx, tmp_path):
    path, _, _ = tiny_onnx
    with pytest.raises(GPUAError, match="does not exist"):
        create_encoder(f"onnx:{tmp_path}/missing.onnx")
    with pytest.raises(GPUAError, match=r"cannot cut.*output \['/no/such/node'\] is no tensor of the graph; name existing node outputs"):
        create_encoder(f"onnx:{path}?output=/no/such/node", cache_dir=tmp_path)
    # was: told to name node outputs; an input= is one of the graph's inputs
    with pytest.raises(GPUAError, match=r"input='nope' is no tensor of the graph: its inputs are \['pixel_values'\]"):
        create_encoder(f"onnx:{path}?input=nope&output=embedding", cache_dir=tmp_path)
    with pytest.raises(GPUAError, match="unknown option"):
        create_encoder(f"onnx:{path}?colour=red")
    with pytest.raises(GPUAError, match="comma-separated"):
        create_encoder(f"onnx:{path}?mean=a,b,c")
