"""The open_clip back end on a tiny registered config with a local checkpoint (no download)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder
from tiny_models import TINY  # the tiny_ckpt fixture (conftest.py) registers it as gpua-tiny-vit

open_clip = pytest.importorskip("open_clip")

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
    assert "Looked in" in msg and "local path" in msg and "open_clip:ViT-B-16/PATH (PATH the checkpoint file, relative or absolute)" in msg


# --------------------------------------------------------------------------- dense features

METHODS = ["maskclip", "sclip", "none"]


def _raw_last_block_patches(enc, pixels: torch.Tensor) -> np.ndarray:
    """encode_patches before the dense option: last block's patch tokens, ln_post, projection."""
    visual = enc.model.visual
    with torch.no_grad():
        out = visual.forward_intermediates(pixels, indices=1, normalize_intermediates=True, output_fmt="NLC",
                                           intermediates_only=True)
        tokens = out["image_intermediates"][-1] @ visual.proj
    return tokens.reshape(pixels.shape[0], 4, 4, -1).numpy()


@pytest.mark.parametrize("method", METHODS)
def test_dense_option_equals_dense_clip_features(tiny_ckpt, images, method):
    from gpua.segment.dense_clip import dense_clip_features

    enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?dense={method}")
    assert enc.dense == method and enc.metadata()["dense"] == method
    pixels = torch.from_numpy(enc.preprocess(images))  # the encoder's own preprocessing, exactly
    ref = dense_clip_features(enc.model, pixels, method=method).numpy()
    P = enc.encode_patches(images, batch_size=2)
    assert P.shape == (len(images), 4, 4, 16) and P.dtype == np.float32
    np.testing.assert_allclose(P, ref, atol=1e-5)
    if method == "none":  # the old encode_patches, reproduced
        np.testing.assert_allclose(P, _raw_last_block_patches(enc, pixels), atol=1e-5)


def test_dense_default_is_maskclip_and_images_unchanged(tiny_ckpt, images):
    enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")
    assert enc.dense == "maskclip" and enc.metadata()["dense"] == "maskclip"
    none = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}", dense="none")  # keyword form
    assert none.metadata()["dense"] == "none" and none.metadata() != enc.metadata()
    P, P0 = enc.encode_patches(images[:2]), none.encode_patches(images[:2])
    assert np.abs(P - P0).max() > 1e-3  # the surgery changes the patches...
    np.testing.assert_array_equal(enc.encode_images(images[:2]), none.encode_images(images[:2]))  # ...not the image


def test_dense_bad_values(tiny_ckpt):
    with pytest.raises(GPUAError, match=r"dense='foo'.*must be one of 'maskclip', 'sclip', 'none'"):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?dense=foo")
    with pytest.raises(GPUAError, match=r"dense=3 .*must be one of"):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}", dense=3)
    with pytest.raises(GPUAError, match=r"known: pretrained, force_quick_gelu, dense"):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?desne=sclip")
    assert create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?dense=SCLIP").dense == "sclip"


@pytest.fixture(scope="module")
def attn_pool_ckpt(tiny_ckpt, tmp_path_factory):
    """A tiny ViT with attentional pooling (CoCa-style), which dense_clip_features rejects."""
    d = tmp_path_factory.mktemp("open_clip_attnpool")
    cfg = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 4,
                                  "attn_pooler_heads": 2}}
    (d / "gpua-tiny-vit-attnpool.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "gpua-tiny-vit-attnpool.json")
    torch.manual_seed(0)
    ckpt = d / "attnpool.pt"
    torch.save(open_clip.create_model("gpua-tiny-vit-attnpool").state_dict(), ckpt)
    return str(ckpt)


def test_dense_unsupported_tower(attn_pool_ckpt, images):
    spec = f"open_clip:gpua-tiny-vit-attnpool/{attn_pool_ckpt}"
    for method in ("maskclip", "sclip"):
        with pytest.raises(GPUAError, match=rf"dense='{method}' is not available.*attentional pooling.*dense='none'"):
            create_encoder(spec, dense=method)
    enc = create_encoder(spec)  # the default falls back to "none": the tower's own path
    assert enc.dense == "none" and enc.metadata()["dense"] == "none"
    assert enc.encode_images(images[:1]).shape == (1, 16)
    with pytest.raises(GPUAError, match="attentional pooling"):  # which has no patch features either
        enc.encode_patches(images[:1])


def test_dense_non_vit_tower():
    """A ResNet CLIP has no patch tokens to modify: explicit MaskCLIP/SCLIP is refused, "none" is the default."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from gpua.encoders._open_clip import OpenCLIPEncoder
    from gpua.encoders._preprocess import ImagePreprocess

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=[1, 1, 1, 1], width=8, image_size=32, head_width=8),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1))
    kw = dict(model_name="tiny-rn", pretrained=None, weights={})
    pp = ImagePreprocess(input_size=32, resize=32)
    with pytest.raises(GPUAError, match=r"dense='sclip' is not available.*ModifiedResNet.*dense='none'"):
        OpenCLIPEncoder("open_clip:tiny-rn", model, None, pp, dense="sclip", **kw)
    enc = OpenCLIPEncoder("open_clip:tiny-rn", model, None, pp, **kw)
    assert enc.dense == "none" and enc.metadata()["dense"] == "none"
