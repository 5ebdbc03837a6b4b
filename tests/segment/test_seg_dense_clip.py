"""MaskCLIP / SCLIP dense features on tiny randomly initialised CLIPs (no downloads)."""

from __future__ import annotations

import pytest
import torch

from gpua._errors import GPUAError
from gpua.segment.dense_clip import dense_clip_features

pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def oc_model():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


def _hf_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hf_vision():
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(_hf_vision_config()).eval()


@pytest.fixture(scope="module")
def hf_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    torch.manual_seed(0)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=_hf_vision_config().to_dict(), projection_dim=16)
    return CLIPModel(cfg).eval()


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


MODELS = ["oc_model", "hf_vision", "hf_clip"]


def _image_embeds(name, model, px):
    with torch.no_grad():
        if name == "oc_model":
            return model.encode_image(px)
        return model.visual_projection(model.vision_model(pixel_values=px).pooler_output)


def _last_block_input(name, model, px):
    """The real forward pass's input to the last block, caught with a hook."""
    seen = {}
    last = model.visual.transformer.resblocks[-1] if name == "oc_model" else model.vision_model.encoder.layers[-1]

    def hook(module, args):
        seen["x"] = args[0]  # returning None leaves the call's arguments alone

    handle = last.register_forward_pre_hook(hook)
    _image_embeds(name, model, px)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["maskclip", "sclip", "none"])
def test_grid_shape_and_determinism(request, name, method, pixels):
    model = request.getfixturevalue(name)
    a = dense_clip_features(model, pixels, method)
    assert a.shape == (2, 4, 4, 16)
    assert torch.equal(a, dense_clip_features(model, pixels, method))
    # a non-square, non-training size: position embeddings are interpolated, trailing pixels dropped
    b = dense_clip_features(model, torch.randn(1, 3, 44, 61), method)
    assert b.shape == (1, 5, 7, 16) and torch.isfinite(b).all()


@pytest.mark.parametrize("name", MODELS)
def test_none_pooled_output_is_the_model_image_embedding(request, name, pixels):
    model = request.getfixturevalue(name)
    _, pooled = dense_clip_features(model, pixels, "none", return_pooled=True)
    torch.testing.assert_close(pooled, _image_embeds(name, model, pixels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_none_patch_tokens_are_the_models_projected_tokens(request, name, pixels):
    model = request.getfixturevalue(name)
    feats = dense_clip_features(model, pixels, "none")
    with torch.no_grad():
        if name == "oc_model":
            v = model.visual
            v.output_tokens = True
            _, tokens = v(pixels)
            v.output_tokens = False
            want = tokens @ v.proj
        else:
            vm = model.vision_model
            want = model.visual_projection(vm.post_layernorm(vm(pixel_values=pixels).last_hidden_state[:, 1:]))
    torch.testing.assert_close(feats.reshape(2, 16, -1), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_maskclip_is_the_value_path_of_the_last_block(request, name, pixels):
    model = request.getfixturevalue(name)
    x = _last_block_input(name, model, pixels)
    with torch.no_grad():
        if name == "oc_model":
            blk, v = model.visual.transformer.resblocks[-1], model.visual
            d = blk.attn.embed_dim
            val = torch.nn.functional.linear(blk.ln_1(x), blk.attn.in_proj_weight[2 * d :], blk.attn.in_proj_bias[2 * d :])
            want = v.ln_post(blk.attn.out_proj(val)) @ v.proj
        else:
            blk, vm = model.vision_model.encoder.layers[-1], model.vision_model
            val = blk.self_attn.v_proj(blk.layer_norm1(x))
            want = model.visual_projection(vm.post_layernorm(blk.self_attn.out_proj(val)))
    got = dense_clip_features(model, pixels, "maskclip")
    torch.testing.assert_close(got.reshape(2, 16, -1), want[:, 1:], rtol=1e-5, atol=1e-5)


def test_maskclip_token_depends_only_on_its_own_last_block_input(oc_model, pixels):
    """The last block does no mixing: with the body replaced by the identity, changing one
    patch changes exactly that patch's feature."""
    v = oc_model.visual
    saved = v.transformer.resblocks
    v.transformer.resblocks = torch.nn.ModuleList([saved[-1]])  # only the last block
    try:
        a = dense_clip_features(oc_model, pixels[:1], "maskclip")
        px = pixels[:1].clone()
        px[..., :8, :8] += 1.0  # patch (0, 0)
        b = dense_clip_features(oc_model, px, "maskclip")
    finally:
        v.transformer.resblocks = saved
    changed = (a - b).abs().amax(-1)[0] > 1e-6
    assert changed[0, 0] and changed.sum() == 1


def test_sclip_differs_from_maskclip_and_none(oc_model, pixels):
    s = dense_clip_features(oc_model, pixels, "sclip")
    assert not torch.allclose(s, dense_clip_features(oc_model, pixels, "maskclip"))
    assert not torch.allclose(s, dense_clip_features(oc_model, pixels, "none"))


def test_bad_inputs_are_clear_errors(oc_model, pixels):
    with pytest.raises(GPUAError, match="method"):
        dense_clip_features(oc_model, pixels, "gradcam")
    with pytest.raises(GPUAError, match="ViT CLIP"):
        dense_clip_features(torch.nn.Linear(3, 3), pixels)
    with pytest.raises(GPUAError, match="pixel_values"):
        dense_clip_features(oc_model, pixels[0])
    with pytest.raises(GPUAError, match="smaller than one"):
        dense_clip_features(oc_model, torch.randn(1, 3, 5, 32))
