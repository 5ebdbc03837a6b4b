"""Registry, spec parsing, lazy imports and input handling of gpua.encoders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.encoders import Encoder, ImagePreprocess, cache_dir, create_encoder, list_encoders, parse_spec, register_encoder
from gpua.encoders._preprocess import CLIP_MEAN, CLIP_STD, as_image_list


class _Toy(Encoder):
    """Mean colour per 4x4 cell: a transparent encoder to test the plumbing."""

    backend = "toy"

    def __init__(self, spec="toy:mean", vlm=False):
        super().__init__(spec, ImagePreprocess(input_size=8, resize=8, mean=0.0, std=1.0), 3, patch_size=4)
        self.is_vlm = vlm

    def _patches(self, pixels):
        B = pixels.shape[0]
        return pixels.reshape(B, 3, 2, 4, 2, 4).mean(axis=(3, 5)).transpose(0, 2, 3, 1)

    def _embed(self, pixels):
        return pixels.mean(axis=(2, 3))

    def _encode_text_batch(self, texts):
        return np.asarray([[len(t), t.count("a"), 1.0] for t in texts], np.float32)


def test_list_encoders_names_backends_and_stand_ins():
    names = list_encoders()
    for n in ("open_clip:", "hf:", "transformers:", "timm:", "onnx:", "offline:dinov2-s", "offline:efficientnet-lite2",
              "offline:semantic-lite0"):
        assert n in names
    assert names == sorted(names)


def test_unknown_encoder_lists_known_and_suggests():
    with pytest.raises(GPUAError) as e:
        create_encoder("offline:dinov2-small")
    msg = str(e.value)
    assert "offline:dinov2-s" in msg and "Did you mean" in msg and "open_clip:" in msg
    with pytest.raises(GPUAError, match="no back end"):
        create_encoder("dinov2")
    with pytest.raises(GPUAError, match="names no model"):
        create_encoder("timm:")
    assert isinstance(e.value, ValueError)


def test_parse_spec_options_and_paths(tmp_path):
    assert parse_spec("onnx:/m.onnx?input=x&output=y") == ("onnx", "/m.onnx", {"input": "x", "output": "y"})
    assert parse_spec(" Open_Clip:ViT-B-16/openai ") == ("open_clip", "ViT-B-16/openai", {})
    odd = tmp_path / "a?b.onnx"
    odd.write_bytes(b"")
    assert parse_spec(f"onnx:{odd}") == ("onnx", str(odd), {})  # an existing path keeps its '?'


def test_register_encoder_named_backend_and_decorator():
    register_encoder("toy:mean", lambda device="cpu", cache_dir=None: _Toy(), overwrite=True)

    @register_encoder("toy:", overwrite=True)
    def _toy_backend(body, device="cpu", cache_dir=None, spec=None, vlm="0"):
        return _Toy(spec, vlm=vlm == "1")

    assert isinstance(create_encoder("toy:mean"), _Toy)
    enc = create_encoder("toy:anything?vlm=1")
    assert enc.is_vlm and enc.spec == "toy:anything?vlm=1"
    assert create_encoder(enc) is enc
    with pytest.raises(GPUAError, match="already registered"):
        register_encoder("toy:mean", lambda **k: _Toy())
    with pytest.raises(GPUAError, match="must look like"):
        register_encoder("nocolon", lambda **k: _Toy())


def test_importing_encoders_is_light():
    code = ("import sys, gpua.encoders, gpua.extract; "
            "print([m for m in ('transformers', 'open_clip', 'timm', 'onnxruntime', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("GPUA_CACHE_DIR")
    assert "gpua" in str(cache_dir())


# -- input handling and the Encoder plumbing ---------------------------------------------------
def test_toy_encoder_contract_and_inputs(contract, patch_layout, grey_rgba):
    enc = _Toy()
    imgs = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(5)]
    contract(enc, imgs)
    patch_layout(enc, cell=(1, 0))
    grey_rgba(enc)
    batch = np.stack(imgs)
    np.testing.assert_array_equal(enc.encode_images(batch), enc.encode_images(imgs))  # 4-D array input
    np.testing.assert_array_equal(enc.encode_images(Image.fromarray(imgs[0])), enc.encode_images(imgs[:1]))
    assert enc.encode_images(imgs, progress=True).shape == (5, 3)


def test_input_errors_name_the_argument():
    enc = _Toy()
    with pytest.raises(GPUAError, match="uint8"):
        enc.encode_images([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(GPUAError, match="empty"):
        enc.encode_images([])
    with pytest.raises(GPUAError, match="shape"):
        enc.encode_images([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(GPUAError, match="list of images"):
        enc.encode_images(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(GPUAError, match="batch_size"):
        enc.encode_images([np.zeros((8, 8, 3), np.uint8)], batch_size=0)


def test_vision_only_encode_text_raises():
    with pytest.raises(GPUAError, match="vision-only"):
        _Toy().encode_text(["a photo of a cat."])
    vlm = _Toy(vlm=True)
    assert vlm.encode_text("a cat").shape == (1, 3)  # a lone string is one prompt
    assert vlm.encode_text(["a", "bb", "c"], batch_size=2).shape == (3, 3)
    with pytest.raises(GPUAError, match="not a string"):
        vlm.encode_text(["ok", 3])
    with pytest.raises(GPUAError, match="empty"):
        vlm.encode_text([])


def test_metadata_reports_preprocessing():
    meta = _Toy().metadata()
    assert meta["spec"] == "toy:mean" and meta["embed_dim"] == 3 and meta["patch_size"] == 4
    assert meta["preprocess"]["mean"] == [0.0, 0.0, 0.0] and meta["preprocess"]["input_size"] == [8, 8]


# -- preprocessing ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(37, 53), (64, 48), (10, 10)])
def test_preprocess_matches_torchvision(size):
    T = pytest.importorskip("torchvision.transforms")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    pp = ImagePreprocess(input_size=24, resize=28, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD)
    ref = T.Compose([T.Resize(28, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(24), T.ToTensor(),
                     T.Normalize(CLIP_MEAN, CLIP_STD)])(img).numpy()
    np.testing.assert_allclose(pp([img])[0], ref, atol=1e-5)


def test_preprocess_modes_and_validation():
    img = Image.fromarray(np.full((20, 40, 3), 200, np.uint8))
    sq = ImagePreprocess(input_size=(16, 16), resize=(16, 16), resize_mode="squash", mean=0, std=1)
    assert sq([img]).shape == (1, 3, 16, 16)
    lo = ImagePreprocess(input_size=16, resize_mode="longest", mean=0, std=1, fill=0)
    x = lo([img])[0]
    assert x.shape == (3, 16, 16) and x[:, 0, 0].max() == 0 and np.isclose(x[:, 8, 8], 200 / 255).all()
    pct = ImagePreprocess.from_crop_pct(224, 0.875)
    assert pct.resize == 256 and pct.input_size == (224, 224)
    with pytest.raises(GPUAError, match="resize_mode"):
        ImagePreprocess(input_size=8, resize_mode="zoom")
    with pytest.raises(GPUAError, match="std"):
        ImagePreprocess(input_size=8, std=(0, 1, 1))
    with pytest.raises(GPUAError, match="3 values"):
        ImagePreprocess(input_size=8, mean=(0.1, 0.2))


def test_as_image_list_converts_modes():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black -> composited onto white
    out = as_image_list([rgba, np.zeros((4, 4), np.uint8), Image.new("P", (4, 4))])
    assert [im.mode for im in out] == ["RGB"] * 3
    assert np.asarray(out[0]).min() == 255


def test_an_encoder_object_without_the_interface_is_named():
    """Was (reviewer): passed through, then AttributeError 'metadata' deep inside extraction."""
    from gpua import GPUAError
    from gpua.encoders import create_encoder

    class Duck:
        def encode_images(self, images):
            return images

    with pytest.raises(GPUAError, match=r"encoder Duck has encode_images but no metadata, embed_dim, is_vlm"):
        create_encoder(Duck())


@pytest.mark.parametrize("name", ["w.pth", "w_no_ending"])
def test_a_state_dict_given_to_hf_or_onnx_names_the_specs_that_load_it(tmp_path, monkeypatch, name):
    """Was: hf: said only "takes a folder", onnx: only "could not be read as an ONNX model"."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2)}, name)
    for spec in (f"hf:{name}", f"onnx:{name}"):
        with pytest.raises(GPUAError, match=rf"It is a PyTorch checkpoint .*pass 'timm:ARCH/{name}' or 'open_clip:ARCH/{name}'"):
            create_encoder(spec, cache_dir=tmp_path / "cache")
