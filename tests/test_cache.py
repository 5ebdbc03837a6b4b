"""``gpua.cache`` and ``gpua cache``: what the cache folder holds, and removing what no run needs.

Was: no command said what the cache held or removed anything from it; a user's only tool was
``rm -rf`` of a folder that also holds downloads a machine without network cannot fetch again.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.cache import cache_entries, clean_cache
from gpua.cli import main
from gpua.encoders._derived import derived_file, record_path
from gpua.encoders._registry import file_fingerprint
from gpua.extract import _OutputLock


def _derive(cache, folder: str, name: str, source) -> object:
    target = cache / folder / name
    with derived_file(target, [str(source)], [file_fingerprint(source)]) as tmp:
        tmp.write_bytes(b"x" * 1000)
    return target


def _parts(folder, payload: bytes) -> None:
    """A parts folder as gpua extract writes it: a manifest with the cache key, and a part."""
    folder.mkdir()
    (folder / "manifest.json").write_text('{"cache_key": "k"}')
    (folder / "shard-000000.npz").write_bytes(payload)


@pytest.fixture
def cache(tmp_path):
    """A cache with a current, a stale and an unrecorded derived file, two feature caches (one
    complete with its parts, one an interrupted run's parts only), a download and a stranger."""
    root = tmp_path / "cache"
    kept_src, gone_src = tmp_path / "kept.onnx", tmp_path / "gone.onnx"
    kept_src.write_bytes(b"a")
    gone_src.write_bytes(b"b")
    _derive(root, "onnx", "kept-0123456789abcdef.onnx", kept_src)
    _derive(root, "onnx", "gone-0123456789abcdef.onnx", gone_src)
    gone_src.unlink()
    (root / "offline").mkdir()
    (root / "offline" / "efficientnet-lite0-0123456789abcdef.onnx").write_bytes(b"y" * 500)  # an earlier release's: no record
    (root / "offline" / "my-export.onnx").write_bytes(b"z")  # not a name gpua gives: someone else's
    feats = root / "classify"
    feats.mkdir()
    np.savez(feats / "photos.npz", vfm_features=np.zeros((3, 2)))
    _parts(feats / "photos.npz.parts", b"p")
    _parts(feats / "halfway.npz.parts", b"q" * 10)
    np.savez(feats / "mine.npz", weights=np.zeros(3))  # not features: a user's file
    (feats / "stranger.npz.parts").mkdir()
    (feats / "stranger.npz.parts" / "notes.txt").write_text("mine")
    (root / "hf" / "models--x--y").mkdir(parents=True)
    (root / "hf" / "models--x--y" / "model.safetensors").write_bytes(b"w" * 2000)
    (root / "notes.txt").write_text("mine")
    return root


def _by_name(entries):
    return {e.path.name: e for e in entries}


def test_entries_say_kind_state_and_size(cache):
    got = _by_name(cache_entries(cache))
    assert set(got) == {"kept-0123456789abcdef.onnx", "gone-0123456789abcdef.onnx", "efficientnet-lite0-0123456789abcdef.onnx",
                        "my-export.onnx", "photos.npz", "halfway.npz.parts", "mine.npz", "stranger.npz.parts", "hf", "notes.txt"}
    assert (got["kept-0123456789abcdef.onnx"].kind, got["kept-0123456789abcdef.onnx"].state, got["kept-0123456789abcdef.onnx"].bytes) == ("derived", "current", 1000)
    assert (got["gone-0123456789abcdef.onnx"].state, got["efficientnet-lite0-0123456789abcdef.onnx"].state) == ("stale", "unrecorded")
    photos = got["photos.npz"]
    assert (photos.kind, photos.state) == ("features", "complete")
    assert photos.bytes == (cache / "classify" / "photos.npz").stat().st_size + 1 + 18  # with its parts
    assert (got["halfway.npz.parts"].state, got["halfway.npz.parts"].bytes) == ("partial", 10 + 18)
    assert {got[n].kind for n in ("my-export.onnx", "mine.npz", "stranger.npz.parts")} == {"other"}
    assert (got["hf"].kind, got["hf"].bytes) == ("download", 2000)
    assert got["notes.txt"].kind == "other"
    assert sorted(e.path.name for e in cache_entries(cache) if e.removable) == ["efficientnet-lite0-0123456789abcdef.onnx", "gone-0123456789abcdef.onnx"]


def test_clean_removes_stale_derived_files_only_by_default(cache):
    before = sorted(p for p in cache.rglob("*"))
    removed, skipped = clean_cache(cache, dry_run=True)
    assert sorted(e.path.name for e in removed) == ["efficientnet-lite0-0123456789abcdef.onnx", "gone-0123456789abcdef.onnx"] and not skipped
    assert sorted(p for p in cache.rglob("*")) == before  # a dry run removes nothing
    removed, _ = clean_cache(cache)
    assert sorted(e.path.name for e in removed) == ["efficientnet-lite0-0123456789abcdef.onnx", "gone-0123456789abcdef.onnx"]
    assert not (cache / "onnx" / "gone-0123456789abcdef.onnx").exists() and not record_path(cache / "onnx" / "gone-0123456789abcdef.onnx").exists()
    assert (cache / "onnx" / "kept-0123456789abcdef.onnx").is_file() and record_path(cache / "onnx" / "kept-0123456789abcdef.onnx").is_file()
    for kept in ("classify/photos.npz", "classify/photos.npz.parts/shard-000000.npz", "classify/halfway.npz.parts/shard-000000.npz",
                 "hf/models--x--y/model.safetensors", "notes.txt", "offline/my-export.onnx"):
        assert (cache / kept).is_file(), kept


def test_clean_features_by_age_and_never_downloads(cache):
    old = time.time() - 40 * 24 * 3600
    os.utime(cache / "classify" / "photos.npz", (old, old))
    removed, _ = clean_cache(cache, features=True, older_than_days=30)
    assert sorted(e.path.name for e in removed) == ["efficientnet-lite0-0123456789abcdef.onnx", "gone-0123456789abcdef.onnx", "photos.npz"]
    assert not (cache / "classify" / "photos.npz").exists() and not (cache / "classify" / "photos.npz.parts").exists()
    assert (cache / "classify" / "halfway.npz.parts").is_dir()  # written just now
    removed, _ = clean_cache(cache, features=True)
    assert [e.path.name for e in removed] == ["halfway.npz.parts"]
    for kept in ("hf/models--x--y/model.safetensors", "notes.txt", "classify/mine.npz", "classify/stranger.npz.parts/notes.txt"):
        assert (cache / kept).is_file(), kept


def test_clean_leaves_a_feature_cache_a_running_extraction_holds(cache):
    out = cache / "classify" / "photos.npz"
    with _OutputLock(out):
        removed, skipped = clean_cache(cache, features=True)
    assert [e.path.name for e in skipped] == ["photos.npz"] and out.is_file()
    assert "halfway.npz.parts" in [e.path.name for e in removed]
    assert not list((cache / "classify").glob(".*gpua-lock"))  # the holder removed its lock as it finished


def test_bad_settings(cache, tmp_path):
    with pytest.raises(GPUAError, match="features=True"):
        clean_cache(cache, older_than_days=3)
    with pytest.raises(GPUAError, match="older_than_days"):
        clean_cache(cache, features=True, older_than_days=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GPUAError, match="is a file"):
        cache_entries(tmp_path / "file")


def test_cli_lists_and_cleans(cache, capsys):
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"gpua cache: {cache}" in out and "onnx/gone-0123456789abcdef.onnx" in out and "stale" in out and "hf" in out
    assert "of which no run reads 1.5 kB again" in out
    assert main(["cache", "clean", "--cache-dir", str(cache), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove onnx/gone-0123456789abcdef.onnx" in out and (cache / "onnx" / "gone-0123456789abcdef.onnx").is_file()
    assert main(["cache", "clean", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries, 1.5 kB" in out and "feature caches kept" in out
    assert not (cache / "onnx" / "gone-0123456789abcdef.onnx").exists()
    assert main(["cache", "clean", "--cache-dir", str(cache), "--older-than", "1"]) == 2
    assert "add --features" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cache", "clean", "--older-than", "-1", "--features"])
    assert "0 or more" in capsys.readouterr().err


def test_cli_empty_and_missing_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "none"))
    assert main(["cache"]) == 0
    assert "not made yet" in capsys.readouterr().out
    assert main(["cache", "clean"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out
