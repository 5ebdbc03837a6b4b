"""Encoder fixes of audit 21: ONNX files onnxruntime refuses, damaged derived files in gpua's
cache, the centre crop of ``hf:`` models, and ONNX classifier outputs taken for features.

Every model is tiny and made here (``tiny_models.TinyTokens`` through the ``tiny_onnx`` fixture,
small torch modules exported to ONNX, a random DINOv2 saved with ``save_pretrained``); the
offline stand-in's export is made from a stand-in network, without its real weights.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.encoders import create_encoder
from gpua.encoders._derived import derived_state, record_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def _export(module, path, size: int = 32) -> str:
    """``module`` exported to ``path`` (opset 17, input ``pixel_values``, dynamic batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["out"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "out": {0: "batch"}})
    return str(path)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- 1. models onnxruntime refuses

def _restamped(src, dst, *, opset=None, ir=None, op=None):
    model = onnx.load(src)
    if opset is not None:
        next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = opset
    if ir is not None:
        model.ir_version = ir
    if op is not None:
        model.graph.node[0].op_type = op
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("stamp, said", [
    (dict(opset=30), r"\(opset 30, IR version \d+\)"),
    (dict(ir=99), r"\(opset 17, IR version 99\)"),
    (dict(op="FancyOp"), r"\(opset 17, IR version \d+\).*FancyOp"),
])
def test_onnx_file_onnxruntime_refuses_is_a_gpua_error(tiny_onnx, tmp_path, stamp, said):
    """Was: onnxruntime's raw Fail / InvalidGraph traceback from ``InferenceSession`` (only the probe
    run after it was wrapped), with a C++ signature and no advice."""
    path = _restamped(tiny_onnx[0], tmp_path / "new.onnx", **stamp)
    with pytest.raises(GPUAError) as info:
        create_encoder(f"onnx:{path}")
    text = str(info.value)
    assert f"onnxruntime {ort.__version__} cannot load ONNX file {str(path)!r}" in text
    assert "opset_version" in text and "upgrade onnxruntime" in text
    assert "onnxruntime_src" not in text and "[ONNXRuntimeError]" not in text  # the C++ location and code are dropped
    assert re.search(said, text), text


def test_onnx_file_onnxruntime_refuses_cut_at_a_node(tiny_onnx, tmp_path):
    """Was: the same raw traceback for a graph cut at a node; the cut (which parses) is not taken
    for a damaged one: the error names the user's file, and the cut stays."""
    _, tokens, _ = tiny_onnx
    path = _restamped(tiny_onnx[0], tmp_path / "ir.onnx", ir=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "damaged" warning
        with pytest.raises(GPUAError, match=rf"cannot load ONNX file {re.escape(repr(str(path)))} \(opset 17, IR version 99\)"):
            create_encoder(f"onnx:{path}", output=tokens, size=32, resize=32, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "onnx").glob("ir-*.onnx"))) == 1


# --------------------------------------------------------------------------- 2. damaged derived files

def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _forget_size(path) -> None:
    """The record as an earlier release wrote it: without the size the file was written with."""
    record = json.loads(record_path(path).read_text())
    record.pop("bytes", None)
    record_path(path).write_text(json.dumps(record))


@pytest.mark.parametrize("old_record", [False, True], ids=["record", "earlier-release-record"])
def test_damaged_cut_graph_is_cut_again(tiny_onnx, tmp_path, images, old_record):
    """Was: a cut graph truncated in the cache (a disk full, a copy cut short) was used as it was:
    onnxruntime's InvalidProtobuf traceback at every run, while `gpua cache` listed it as current."""
    src_path, tokens, _ = tiny_onnx
    src = tmp_path / "model.onnx"
    shutil.copy2(src_path, src)
    cache = tmp_path / "cache"
    spec = dict(output=tokens, size=32, resize=32, cache_dir=cache)
    enc = create_encoder(f"onnx:{src}", **spec)
    ref, cut = enc.encode_images(images), enc.model_path
    if old_record:
        _forget_size(cut)
    _truncate(cut)
    if not old_record:  # what `gpua cache` lists (and `gpua cache clean` removes)
        state, why = derived_state(cut)
        assert state == "stale" and why.startswith("damaged: it has") and "bytes, not the" in why
    with pytest.warns(UserWarning, match=rf"derived file {re.escape(repr(str(cut)))} is damaged .*made again"):
        again = create_encoder(f"onnx:{src}", **spec)
    assert again.model_path == cut and derived_state(cut)[0] == "current"
    np.testing.assert_array_equal(again.encode_images(images), ref)
    _no_warnings(create_encoder, f"onnx:{src}", **spec)  # made again once: used as it is now


class _StandInLite(torch.nn.Module):
    """Stands in for EfficientNet-Lite0 (``extract_features``: a stride-32 map of 16 channels)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 32, 32)

    def extract_features(self, x):
        return self.conv(x)


@pytest.mark.parametrize("old_record", [False, True], ids=["record", "earlier-release-record"])
def test_damaged_offline_export_is_exported_again(tmp_path, monkeypatch, old_record):
    """Was: a truncated EfficientNet-Lite export in ``<cache>/offline`` gave "ONNX file
    '.../offline/....onnx' could not be read ...; pass an .onnx model file" to a user who passed
    ``offline:efficientnet-lite0`` (or ``offline:semantic-lite0``), at every run."""
    from gpua.encoders import _offline

    weights = tmp_path / "efficientnet-lite0-1234.pth"
    weights.write_bytes(b"weights")
    monkeypatch.setattr(_offline, "_lite_weights", lambda name: weights)
    monkeypatch.setattr(_offline, "_lite_torch_model", lambda name: _StandInLite().eval())
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    enc = create_encoder("offline:efficientnet-lite0", cache_dir=tmp_path)
    ref, path = enc.encode_images([image]), enc.model_path
    assert path.parent == tmp_path / "offline"
    if old_record:
        _forget_size(path)
    _truncate(path)
    with pytest.warns(UserWarning, match=rf"derived file {re.escape(repr(str(path)))} is damaged .*made again"):
        again = create_encoder("offline:efficientnet-lite0", cache_dir=tmp_path)
    assert again.model_path == path and derived_state(path)[0] == "current"
    np.testing.assert_allclose(again.encode_images([image]), ref, atol=1e-6)


def test_a_fresh_export_that_does_not_load_is_not_exported_twice(tmp_path, monkeypatch):
    """Was: onnxruntime's raw traceback for an export it refused. A new export (not one found in
    the cache) that it refuses is now the GPUAError as it is: not taken for a damaged file,
    warned about and exported a second time."""
    from gpua.encoders import _offline, _onnx

    weights = tmp_path / "efficientnet-lite0-1234.pth"
    weights.write_bytes(b"weights")
    exports = []
    monkeypatch.setattr(_offline, "_lite_weights", lambda name: weights)
    monkeypatch.setattr(_offline, "_lite_torch_model", lambda name: exports.append(name) or _StandInLite().eval())

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model from x.onnx failed:refused here")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(_onnx.OnnxLoadError, match="refused here"):
            create_encoder("offline:efficientnet-lite0", cache_dir=tmp_path)
    assert exports == ["efficientnet-lite0"]


# --------------------------------------------------------------------------- 3. hf: centre crop

def test_hf_processor_crop_starts_where_clip_image_processor_starts_it():
    """Was: the centre crop of a 640x427 photo resized to 335x224 started at column 56
    (torchvision's rounding of 55.5) where CLIPImageProcessor's starts at 55: every pixel one
    column off, a mean absolute difference of 0.048 to 0.5 against the model's own processor."""
    transformers = pytest.importorskip("transformers")
    from gpua.encoders._hf import preprocess_from_processor_dict
    from gpua.encoders._preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess

    proc = transformers.CLIPImageProcessor()
    pp = preprocess_from_processor_dict(proc.to_dict(), ImagePreprocess(224, mean=CLIP_MEAN, std=CLIP_STD))
    assert pp.crop_rounding == "floor" and pp.to_dict()["crop_rounding"] == "floor"  # in the metadata, so in cache keys
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 640)[None, :, None] * np.linspace(0.2, 1, 427)[:, None, None]
    for pixels in (rng.integers(0, 256, (427, 640, 3)), smooth + rng.normal(0, 8, (427, 640, 3))):
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        ref = proc(images=[image], return_tensors="np")["pixel_values"][0]
        assert np.abs(pp.transform_one(image) - ref).mean() < 1e-3


def test_hf_encoder_crops_as_its_processor_and_keys_say_so(tmp_path):
    """Was: ``hf:`` DINOv2 (BitImageProcessor) cropped one pixel off its processor on an odd
    margin, and the metadata (the feature-cache key) did not tell the two crops apart."""
    pytest.importorskip("transformers")
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             mlp_ratio=2)).save_pretrained(tmp_path)
    proc = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)
    proc.save_pretrained(tmp_path)
    enc = create_encoder(f"hf:{tmp_path}")
    assert enc.metadata()["preprocess"]["crop_rounding"] == "floor"
    wide = np.random.default_rng(1).integers(0, 256, (36, 51, 3), dtype=np.uint8)  # margin 51 - 32 = 19, odd
    ref = proc(images=[wide], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(enc.preprocess([wide]), ref, atol=2e-3)


def test_torchvision_rounding_stays_for_the_other_back_ends():
    """Was: one rounding (torchvision's) for every back end. open_clip and timm keep it, and their
    metadata (and feature-cache keys) keep their old form, without the new field."""
    from gpua.encoders._preprocess import ImagePreprocess, _crop_offsets

    pp = ImagePreprocess(224, resize=256)
    assert pp.crop_rounding == "round" and "crop_rounding" not in pp.to_dict()
    assert _crop_offsets(335, 224, 224, 224) == (56, 0) and _crop_offsets(335, 224, 224, 224, "floor") == (55, 0)
    with pytest.raises(GPUAError, match="crop_rounding='ceil'"):
        ImagePreprocess(224, crop_rounding="ceil")


# --------------------------------------------------------------------------- 4. classifier outputs

class _Classifier(torch.nn.Module):
    """conv -> ReLU -> global mean -> Linear(8, 1000) -> Softmax, as an exported ImageNet classifier."""

    def __init__(self, softmax: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 8, 8)
        self.fc = torch.nn.Linear(8, 1000)
        self.softmax = softmax

    def forward(self, x):
        logits = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return logits.softmax(-1) if self.softmax else logits


class _Normalised(torch.nn.Module):
    """Rows scaled to sum to 1 without a Softmax node: probabilities by their values alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 8, 8)

    def forward(self, x):
        v = torch.relu(self.conv(x)).mean(dim=(2, 3)) + 1e-3
        return v / v.sum(-1, keepdim=True)


def test_onnx_classifier_output_warns(tmp_path, images):
    """Was: an exported classifier's class probabilities (or its 1000 logits) were used as "VFM
    features" without a word."""
    path = _export(_Classifier(), tmp_path / "cls.onnx")
    with pytest.warns(UserWarning, match=r"looks like a classifier's output \(a Softmax node\).*output=.*head's input "
                                         r"'/ReduceMean_output_0' is one"):
        enc = create_encoder(f"onnx:{path}")
    assert enc.embed_dim == 1000  # still usable, as asked
    logits = next(o for n in onnx.load(path).graph.node if n.op_type == "Gemm" for o in n.output)
    with pytest.warns(UserWarning, match=r"a Gemm of width 1000, an ImageNet classifier head's.*'?output=\.\.\.'"):
        create_encoder(f"onnx:{path}", output=logits, cache_dir=tmp_path)
    features = _no_warnings(create_encoder, f"onnx:{path}", output="/ReduceMean_output_0", cache_dir=tmp_path)
    assert features.embed_dim == 8 and features.encode_images(images).shape == (5, 8)
    with pytest.warns(UserWarning, match="each row sums to 1: class probabilities"):
        create_encoder(f"onnx:{_export(_Normalised(), tmp_path / 'norm.onnx')}")


def test_onnx_feature_outputs_do_not_warn(tiny_onnx, tmp_path):
    """Was: logits as a graph's own output used without a word. The warning stays off features: a
    CLIP-style projection (a Gemm of width 8 here, 512-1280 in real models), tokens and maps."""
    path, tokens, fmap = tiny_onnx
    _no_warnings(create_encoder, f"onnx:{path}?size=32&resize=32")
    _no_warnings(create_encoder, f"onnx:{path}", output=tokens, size=32, resize=32, cache_dir=tmp_path)
    _no_warnings(create_encoder, f"onnx:{path}", output=fmap, size=32, resize=32, cache_dir=tmp_path)
    head = _export(_Classifier(softmax=False), tmp_path / "logits.onnx")  # logits as the graph's own output
    with pytest.warns(UserWarning, match="a Gemm of width 1000"):
        create_encoder(f"onnx:{head}")
