"""The ONNX back end on a tiny exported torch module: node selection, graph cutting, caching."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


class TinyTokens(torch.nn.Module):
    """8x8 patches of a 32x32 image -> CLS + 16 tokens -> per-token MLP -> LayerNorm -> CLS @ proj."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 8, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 16))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, 16) * 0.1)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.norm = torch.nn.LayerNorm(16)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.norm(t + self.mlp(t))
        return self.proj(t[:, 0])


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(TinyTokens().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}})
    nodes = [o for n in onnx.load(str(path)).graph.node for o in n.output]
    tokens = [o for o in nodes if o.startswith("/norm/")][-1]
    fmap = [o for o in nodes if o.startswith("/conv/")][0]
    return str(path), tokens, fmap


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
    enc = create_encoder(f"onnx:{path}", output="embedding", patch_output=tokens, size=32, resize=32, cache_dir=tmp_path)
    assert enc.embed_dim == 8
    assert enc.encode_images(images[:2]).shape == (2, 8)
    # Patch width differs from the pooled width here: the contract (same d) is enforced.
    with pytest.raises(GPUAError, match="width"):
        enc.encode_patches(images[:2])


def test_errors(tiny_onnx, tmp_path):
    path, _, _ = tiny_onnx
    with pytest.raises(GPUAError, match="does not exist"):
        create_encoder(f"onnx:{tmp_path}/missing.onnx")
    with pytest.raises(GPUAError, match="cannot cut"):
        create_encoder(f"onnx:{path}?output=/no/such/node", cache_dir=tmp_path)
    with pytest.raises(GPUAError, match="unknown option"):
        create_encoder(f"onnx:{path}?colour=red")
    with pytest.raises(GPUAError, match="comma-separated"):
        create_encoder(f"onnx:{path}?mean=a,b,c")
