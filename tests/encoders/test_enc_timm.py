"""The timm back end on tiny random models with local checkpoints (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder
from tiny_models import REG_ARCH, REG_KW  # reg_ckpt (conftest.py) holds its weights

timm = pytest.importorskip("timm")

def test_vit_with_registers(reg_ckpt, images, contract, patch_layout, grey_rgba):
    enc = create_encoder(f"timm:{REG_ARCH}?checkpoint={reg_ckpt}", **REG_KW)
    assert enc.n_prefix == 5 and enc.patch_size == 7 and enc.embed_dim == 32
    contract(enc, images)
    patch_layout(enc)
    grey_rgba(enc)
    assert enc.encode_patches(images[:1]).shape == (1, 4, 4, 32)
    # Patches are the tokens after the prefix; the embedding is the normed CLS token.
    x = torch.from_numpy(enc.preprocess(images[:1]))
    with torch.no_grad():
        tokens = enc.model.forward_features(x)[0]
    np.testing.assert_allclose(enc.encode_patches(images[:1])[0].reshape(16, 32), tokens[5:].numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(images[:1])[0], tokens[0].numpy(), atol=1e-5)
    meta = enc.metadata()
    assert meta["backend"] == "timm" and meta["prefix_tokens"] == 5 and meta["weights"]["checkpoint"]["bytes"] > 0
    # DINOv2's pretrained_cfg: ImageNet mean/std, bicubic, crop_pct 1.0 -> resize = input size.
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["preprocess"]["resize"] == 28
    with pytest.raises(GPUAError, match="vision-only"):
        enc.encode_text(["a cat"])


def test_cnn_feature_map_and_crop_pct(tmp_path, images):
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    enc = create_encoder(f"timm:test_convnext/{tmp_path / 'w.pth'}")  # ARCH/PATH form
    pp = enc.metadata()["preprocess"]
    assert pp["input_size"] == [160, 160] and pp["resize"] == int(160 / 0.95)  # the model's own crop_pct
    P = enc.encode_patches(images[:2])
    assert P.shape == (2, 160 // enc.patch_size, 160 // enc.patch_size, enc.embed_dim)
    np.testing.assert_allclose(enc.encode_images(images[:2]), enc.encode_images(images[:2], batch_size=1), atol=1e-5)


def test_errors(tmp_path, reg_ckpt):
    with pytest.raises(GPUAError, match="no model 'vit_nonexistent'"):
        create_encoder("timm:vit_nonexistent")
    with pytest.raises(GPUAError, match="does not exist"):
        create_encoder(f"timm:test_vit?checkpoint={tmp_path / 'missing.pth'}")
    with pytest.raises(GPUAError, match="does not fit"):
        create_encoder(f"timm:test_vit?checkpoint={reg_ckpt}")
    with pytest.raises(GPUAError) as e:
        create_encoder("timm:test_vit")  # pretrained weights, not downloadable offline
    assert "Looked in" in str(e.value) and "timm:test_vit/PATH (PATH the weights file, relative or absolute)" in str(e.value)
