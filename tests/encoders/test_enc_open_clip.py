"""The open_clip back end on a tiny registered config with a local checkpoint (no download)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder

open_clip = pytest.importorskip("open_clip")

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """Register ``gpua-tiny-vit`` (and a QuickGELU twin) and save random weights for it."""
    d = tmp_path_factory.mktemp("open_clip")
    (d / "gpua-tiny-vit.json").write_text(json.dumps(TINY))
    (d / "gpua-tiny-vit-quickgelu.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(d / "gpua-tiny-vit.json")
    open_clip.add_model_config(d / "gpua-tiny-vit-quickgelu.json")
    torch.manual_seed(0)
    model = open_clip.create_model("gpua-tiny-vit")
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return str(ckpt)


def test_contract_text_and_metadata(tiny_ckpt, images, contract, patch_layout, grey_rgba):
    enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")  # ARCH//abs/path: the tag is a path
    assert enc.is_vlm and enc.embed_dim == 16 and enc.patch_size == 8
    contract(enc, images)
    patch_layout(enc)
    grey_rgba(enc)
    assert enc.encode_patches(images[:1]).shape == (1, 4, 4, 16)
    T = enc.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert T.shape == (2, 16) and T.dtype == np.float32
    meta = enc.metadata()
    assert meta["model"] == "gpua-tiny-vit" and meta["pretrained"] == tiny_ckpt
    assert meta["quick_gelu"] is False and meta["weights"]["checkpoint"]["bytes"] > 0
    assert meta["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_matches_open_clip_encode(tiny_ckpt, images):
    enc = create_encoder(f"open_clip:gpua-tiny-vit?pretrained={tiny_ckpt}")
    model, _, preprocess = open_clip.create_model_and_transforms("gpua-tiny-vit", pretrained=tiny_ckpt)
    from PIL import Image

    pil = [Image.fromarray(im) for im in images[:2]]
    with torch.no_grad():
        ref_img = model.eval().encode_image(torch.stack([preprocess(p) for p in pil])).numpy()
        ref_txt = model.encode_text(open_clip.get_tokenizer("gpua-tiny-vit")(["a photo of a cat."])).numpy()
    np.testing.assert_allclose(enc.encode_images(pil), ref_img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_text(["a photo of a cat."]), ref_txt, atol=1e-5)


def test_quickgelu_recorded(tiny_ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = create_encoder(f"open_clip:gpua-tiny-vit-quickgelu/{tiny_ckpt}")
    assert enc.metadata()["quick_gelu"] is True and enc.metadata()["model"] == "gpua-tiny-vit-quickgelu"


def test_local_dir_with_preprocess_cfg(tiny_ckpt, tmp_path, images):
    """A saved hub layout: open_clip_config.json (model + preprocess) and the weights."""
    cfg = {"model_cfg": TINY, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "squash"}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(open(tiny_ckpt, "rb").read())
    enc = create_encoder(f"open_clip:{tmp_path}")
    pp = enc.metadata()["preprocess"]
    assert pp["mean"] == [0.5] * 3 and pp["std"] == [0.25] * 3 and pp["resize_mode"] == "squash"
    assert enc.encode_images(images[:2]).shape == (2, 16)


def test_errors(tiny_ckpt):
    with pytest.raises(GPUAError, match="no architecture 'ViT-B-99'"):
        create_encoder("open_clip:ViT-B-99/openai")
    with pytest.raises(GPUAError, match="names no weights.*openai"):
        create_encoder("open_clip:ViT-B-16")
    with pytest.raises(GPUAError, match="neither a known open_clip tag"):
        create_encoder("open_clip:ViT-B-16/not-a-tag")
    with pytest.raises(GPUAError, match="unknown option"):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?colour=red")


def test_missing_weights_offline_says_where_and_how():
    with pytest.raises(GPUAError) as e:
        create_encoder("open_clip:ViT-B-16/openai")
    msg = str(e.value)
    assert "Looked in" in msg and "local path" in msg and "open_clip:ViT-B-16//path/to" in msg
