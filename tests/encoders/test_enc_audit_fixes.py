"""Regression tests of the encoder audit: silent wrong results, raw tracebacks, misleading messages.

The tiny models are the other encoder tests' (``tiny_models.py``, and the ``tiny_onnx``,
``tiny_ckpt`` and ``reg_ckpt`` fixtures of ``conftest.py``), so no weights are downloaded.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder, parse_spec

from test_enc_hf import VISION, _save  # the hf tests' tiny vision tower and folder writer
from tiny_models import REG_ARCH, REG_KW, TINY

onnx = pytest.importorskip("onnx")
timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")


# --------------------------------------------------------------------------- 1. hf tokenizer

def _clip_without_tokenizer(folder) -> str:
    """A CLIP saved with save_pretrained but without its tokenizer (config.json + model.safetensors)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=32),
                     vision_config=VISION, projection_dim=16)
    return _save(folder, CLIPModel(cfg))


def test_hf_clip_folder_without_tokenizer_is_refused(tmp_path):
    # transformers builds a 2-token CLIPTokenizer here: every prompt got the same embedding.
    folder = _clip_without_tokenizer(tmp_path / "clip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no preprocessor_config.json: the defaults warning
        with pytest.raises(GPUAError) as e:
            create_encoder(f"hf:{folder}")
    msg = str(e.value)
    assert "tokenizer" in msg and folder in msg and "save_pretrained" in msg and "same embedding" in msg


def _dino_folder(folder) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return _save(folder, Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, mlp_ratio=2)))


def test_hf_vision_only_folder_needs_no_tokenizer(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no preprocessor_config.json: the defaults warning
        assert not create_encoder(f"hf:{_dino_folder(tmp_path)}").is_vlm  # DINO: no text tower, no tokenizer


# --------------------------------------------------------------------------- 2. ONNX external data

def _save_external(model, path, data_name: str) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, location=data_name, size_threshold=0)


def _retrain_data_file(folder, data_name: str = "model.onnx.data") -> None:
    """New weights (same shapes, so the same byte count) in the data file; the .onnx file is untouched."""
    from onnx import numpy_helper

    m = onnx.load(str(folder / "model.onnx"))
    for init in m.graph.initializer:
        init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * 2 + 0.1).astype(np.float32), init.name))
    old = (folder / data_name).stat()
    _save_external(m, folder / "scratch.onnx", data_name + ".new")
    os.replace(folder / (data_name + ".new"), folder / data_name)
    # A later retraining: a later modification time, whatever the file system's clock granularity.
    os.utime(folder / data_name, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    assert (folder / data_name).stat().st_size == old.st_size


@pytest.fixture
def external_onnx(tiny_onnx, tmp_path):
    path, tokens, fmap = tiny_onnx
    folder = tmp_path / "ext"
    folder.mkdir()
    _save_external(onnx.load(path), folder / "model.onnx", "model.onnx.data")
    return folder, tokens, fmap


def test_onnx_external_data_is_in_the_weights_fingerprint(external_onnx, images):
    folder, _, _ = external_onnx
    spec = f"onnx:{folder / 'model.onnx'}"
    a = create_encoder(spec)
    fa, ma = a.encode_images(images[:2]), a.metadata()
    assert ma["weights"]["external_data"][0]["path"] == str((folder / "model.onnx.data").resolve())
    _retrain_data_file(folder)
    b = create_encoder(spec)
    assert not np.allclose(fa, b.encode_images(images[:2]))  # new weights, new features...
    assert b.metadata() != ma  # ... and so a new feature-cache key


def test_onnx_self_contained_metadata_unchanged(tiny_onnx):
    from gpua.encoders._registry import file_fingerprint

    path, _, _ = tiny_onnx
    # No "external_data" entry for a self-contained model; the file's own fingerprint gained
    # "changed" in the third audit (a same-size, same-mtime replacement, test_enc_audit3.py).
    assert create_encoder(f"onnx:{path}").metadata()["weights"] == {"file": file_fingerprint(path)}
    assert set(file_fingerprint(path)) == {"path", "bytes", "mtime_ns", "changed"}


def test_onnx_cut_graph_cache_follows_external_data(external_onnx, images, tmp_path):
    folder, _, fmap = external_onnx
    spec = f"onnx:{folder / 'model.onnx'}?output={fmap}"
    cache = tmp_path / "cache"
    old = create_encoder(spec, cache_dir=cache).encode_images(images[:2])
    _retrain_data_file(folder)
    new = create_encoder(spec, cache_dir=cache).encode_images(images[:2])
    fresh = create_encoder(spec, cache_dir=tmp_path / "fresh").encode_images(images[:2])
    assert not np.allclose(old, new)  # the old cut graph (old weights inside) is not reused
    np.testing.assert_array_equal(new, fresh)
    assert len(list((cache / "onnx").glob("model-*.onnx"))) == 1  # the new cut replaced the old (gpua.encoders._derived)


def test_onnx_missing_external_data_file(external_onnx):
    folder, _, _ = external_onnx
    os.remove(folder / "model.onnx.data")
    with pytest.raises(GPUAError, match="external-data file.*model.onnx.data.*do not exist"):
        create_encoder(f"onnx:{folder / 'model.onnx'}")


# --------------------------------------------------------------------------- 3. options in metadata

def test_timm_keyword_options_are_in_metadata(reg_ckpt):
    spec = f"timm:{REG_ARCH}?checkpoint={reg_ckpt}"
    a = create_encoder(spec, **REG_KW)
    b = create_encoder(spec, global_pool="avg", fc_norm=False, **REG_KW)
    x = [np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)]
    assert not np.allclose(a.encode_images(x), b.encode_images(x))
    assert a.metadata() != b.metadata()
    opts = b.metadata()["options"]
    assert opts == {**REG_KW, "global_pool": "avg", "fc_norm": False} and list(opts) == sorted(opts)
    json.dumps(b.metadata())  # JSON-safe
    # The same options written in the spec string give the same record (numbers parsed).
    query = "&".join(f"{k}={v}" for k, v in REG_KW.items())
    assert create_encoder(f"{spec}&{query}").metadata()["options"] == a.metadata()["options"] == REG_KW


def test_timm_layer_class_option_is_json_safe(reg_ckpt):
    enc = create_encoder(f"timm:{REG_ARCH}?checkpoint={reg_ckpt}", act_layer=torch.nn.ReLU, **REG_KW)
    assert enc.metadata()["options"]["act_layer"] == "torch.nn.modules.activation.ReLU"
    json.dumps(enc.metadata())


def test_extract_tells_timm_keyword_options_apart(reg_ckpt, tmp_path):
    from test_extract import Toy, _dataset, _run  # the extraction tests' toy VLM and dataset

    from gpua.features import load_features

    spec = f"timm:{REG_ARCH}?checkpoint={reg_ckpt}"
    a = create_encoder(spec, **REG_KW)
    b = create_encoder(spec, global_pool="avg", fc_norm=False, **REG_KW)
    ds, out = _dataset(n=4), tmp_path / "f.npz"
    _run(ds, out, a, Toy("toy:vlm", vlm=True))
    _run(ds, out, b, Toy("toy:vlm", vlm=True))  # another encoder: not a cache hit
    imgs = [ds.load_image(i) for i in range(4)]
    np.testing.assert_allclose(load_features(out).vfm_features, b.encode_images(imgs), atol=1e-4)


# --------------------------------------------------------------------------- 4. '+' and '%' in options

def test_spec_options_are_not_url_decoded(reg_ckpt, tmp_path):
    assert parse_spec("timm:m?checkpoint=/w/c++/a%20b.pth&x=a=b&flag&&y=") == (
        "timm", "m", {"checkpoint": "/w/c++/a%20b.pth", "x": "a=b", "flag": "", "y": ""})
    with pytest.raises(GPUAError, match="without a name"):
        parse_spec("timm:m?=3")
    folder = tmp_path / "c++"
    folder.mkdir()
    ckpt = folder / "reg%2B.pth"
    ckpt.write_bytes(open(reg_ckpt, "rb").read())
    enc = create_encoder(f"timm:{REG_ARCH}?checkpoint={ckpt}", **REG_KW)
    assert enc.metadata()["weights"]["checkpoint"]["path"] == str(ckpt.resolve())


# --------------------------------------------------------------------------- 5. raw tracebacks

def test_timm_checkpoint_that_is_not_a_state_dict(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    with pytest.raises(GPUAError, match=r"config.json.*could not be read as a state dict.*\.safetensors"):
        create_encoder(f"timm:{REG_ARCH}?checkpoint={cfg}", **REG_KW)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(GPUAError, match="list.pth.*could not be read as a state dict"):
        create_encoder(f"timm:{REG_ARCH}?checkpoint={listed}", **REG_KW)
    training = tmp_path / "training.pth"
    torch.save({"epoch": 3, "weights": {"w": torch.zeros(2)}}, training)
    with pytest.raises(GPUAError, match=r"training.pth.*is not a state dict: entries \['epoch', 'weights'\] are not tensors"):
        create_encoder(f"timm:{REG_ARCH}?checkpoint={training}", **REG_KW)


def test_onnx_size_against_a_static_input(tiny_onnx):
    path, _, _ = tiny_onnx
    with pytest.raises(GPUAError, match="size='64'.*'pixel_values'.*fixed size 32x32"):
        create_encoder(f"onnx:{path}?size=64")
    assert create_encoder(f"onnx:{path}?size=32").preprocess.input_size == (32, 32)


def test_onnx_file_that_is_not_onnx(tmp_path):
    for name, data in (("model.json", b'{"embed_dim": 16}'), ("model.onnx", b"\x00not a protobuf\xff" * 3)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(GPUAError, match=f"{name}' could not be read as an ONNX model"):
            create_encoder(f"onnx:{tmp_path / name}")


def test_onnx_patch_output_width_checked_at_construction(tiny_onnx, images, tmp_path):
    path, tokens, fmap = tiny_onnx
    with pytest.raises(GPUAError, match=f"patch_output='{fmap}' has width 16 but output='embedding' has width 8"):
        create_encoder(f"onnx:{path}?patch_output={fmap}", cache_dir=tmp_path)
    enc = create_encoder(f"onnx:{path}?output={tokens}&patch_output={fmap}", cache_dir=tmp_path)  # same width: fine
    assert enc.encode_patches(images[:1]).shape == (1, 4, 4, 16)


@pytest.mark.parametrize("device", ["gpu", "cudafoo", "cpu:x"])
def test_onnx_refuses_a_device_that_is_not_one(tiny_onnx, device):
    path, _, _ = tiny_onnx
    with pytest.raises(GPUAError, match=f"device='{device}' is not a device; use 'cpu', 'cuda'"):
        create_encoder(f"onnx:{path}", device=device)


# --------------------------------------------------------------------------- 6. wrong local files

def _no_offline_advice(msg: str) -> None:
    assert "HF_HUB_OFFLINE" not in msg and "download" not in msg and "Looked in" not in msg


def test_hf_folder_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(GPUAError) as e:
        create_encoder(f"hf:{tmp_path}")
    msg = str(e.value)
    _no_offline_advice(msg)
    assert str(tmp_path) in msg and "model_type" in msg and "save_pretrained" in msg


def test_hf_folder_without_weights(tmp_path):
    _dino_folder(tmp_path / "dino")
    (tmp_path / "config_only").mkdir()
    os.replace(tmp_path / "dino" / "config.json", tmp_path / "config_only" / "config.json")
    with pytest.raises(GPUAError) as e:
        create_encoder(f"hf:{tmp_path / 'config_only'}")
    _no_offline_advice(str(e.value))
    assert "weights" in str(e.value) and "save_pretrained" in str(e.value)


def test_timm_folder_without_config(tmp_path, reg_ckpt):
    (tmp_path / "pytorch_model.bin").write_bytes(open(reg_ckpt, "rb").read())
    with pytest.raises(GPUAError) as e:
        create_encoder(f"timm:{tmp_path}")
    msg = str(e.value)
    _no_offline_advice(msg)
    assert "config.json" in msg and f"{tmp_path}//path" not in msg and "timm:ARCH/PATH' instead (PATH the weights file, relative or absolute" in msg


def test_open_clip_checkpoint_of_another_architecture(tiny_ckpt, tmp_path):
    deeper = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": 3}}
    (tmp_path / "gpua-tiny-vit-deeper.json").write_text(json.dumps(deeper))
    open_clip.add_model_config(tmp_path / "gpua-tiny-vit-deeper.json")
    with pytest.raises(GPUAError) as e:
        create_encoder(f"open_clip:gpua-tiny-vit-deeper/{tiny_ckpt}")
    msg = str(e.value)
    _no_offline_advice(msg)
    assert "Missing key(s)" in msg and "resblocks.2" in msg and os.path.realpath(tiny_ckpt) in msg
    assert "exact architecture" in msg


def test_hf_checkpoint_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _dino_folder(tmp_path / "dino")
    weights = os.path.join(folder, "model.safetensors")
    sd = load_file(weights)
    gone = next(k for k in sd if "attention" in k and k.endswith("weight"))
    del sd[gone]
    save_file(sd, weights, metadata={"format": "pt"})
    # (named as the model calls it: transformers renames some checkpoint keys on loading)
    with pytest.raises(GPUAError, match=r"1 weight\(s\) of the dinov2 model are not in its checkpoint .*attention.*at random"):
        create_encoder(f"hf:{folder}")  # was: loaded with that weight at random (then: a warning), the command went on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the defaults warning (no preprocessor_config.json) only
        _dino_folder(tmp_path / "whole")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            create_encoder(f"hf:{tmp_path / 'whole'}")
    assert not [w for w in seen if "not in its checkpoint" in str(w.message)]


def test_open_clip_pretrained_is_not_silently_ignored(tiny_ckpt, tmp_path):
    with pytest.raises(GPUAError, match="pretrained='openai' applies to 'open_clip:ARCH' specs"):
        create_encoder(f"open_clip:{tmp_path}?pretrained=openai")  # a folder holds its own weights: was ignored
    with pytest.raises(GPUAError, match="names the weights twice"):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}?pretrained=openai")


def test_open_clip_tokenizer_past_the_text_vocabulary_is_refused_at_load(tmp_path):
    """A config naming no tokenizer gets open_clip's default CLIP one: a 1000-token text tower crashed
    at the first prompt with torch's 'index out of range in self'."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from tiny_models import TINY

    cfg = json.loads(json.dumps(TINY))
    cfg["text_cfg"]["vocab_size"] = 1000
    (tmp_path / "gpua-small-vocab.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "gpua-small-vocab.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("gpua-small-vocab").state_dict(), tmp_path / "small.pt")
    with pytest.raises(GPUAError, match=r"past the text tower's 1000-token embedding table.*hf_tokenizer_name"):
        create_encoder(f"open_clip:gpua-small-vocab//{tmp_path / 'small.pt'}")
