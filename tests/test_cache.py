"""``gpua.cache`` and ``gpua cache``: what the cache folder holds, and removing what no run needs.

Was: no command said what the cache held or removed anything from it; a user's only tool was
``rm -rf`` of a folder that also holds downloads a machine without network cannot fetch again.
The audit of the first version found it removing files gpua never wrote in a folder that was no
cache of gpua's, racing a cut in progress, and hiding temp files; each is a test below.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.cache import cache_entries, clean_cache
from gpua.cli import main
from gpua.encoders._derived import CACHE_TAG, derived_file, record_path
from gpua.encoders._registry import file_fingerprint
from gpua.extract import _OutputLock
from gpua.features import save_features
from gpua.features._io import writing_extraction

ONNX = b"\x08\x07" + b"x" * 998  # an ONNX model's first bytes: field 1 (ir_version), a varint
KEY = "0123456789abcdef"
OLD = time.time() - 3600


def _derive(cache: Path, folder: str, name: str, source: Path) -> Path:
    target = cache / folder / name
    with derived_file(target, [str(source)], [file_fingerprint(source)]) as tmp:
        tmp.write_bytes(ONNX)
    return target


def _features(path: Path, **meta) -> Path:
    """A feature cache as gpua extract writes it (its meta holds the cache key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_extraction():
        save_features(path, vfm_features=np.ones((3, 2)), meta={"cache_key": "k", **meta})
    return path


def _parts(folder: Path, payload: bytes) -> None:
    """A parts folder as gpua extract writes it: a manifest with the cache key, and a part."""
    folder.mkdir()
    (folder / "manifest.json").write_text('{"cache_key": "k"}')
    (folder / "shard-000000.npz").write_bytes(payload)


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


@pytest.fixture
def cache(tmp_path):
    """A tagged cache: a current, a stale and an unrecorded derived file, two feature caches (one
    complete with its parts, one an interrupted run's parts only), a download and strangers."""
    root = tmp_path / "cache"
    kept_src, gone_src = tmp_path / "kept.onnx", tmp_path / "gone.onnx"
    kept_src.write_bytes(b"a")
    gone_src.write_bytes(b"b")
    _derive(root, "onnx", f"kept-{KEY}.onnx", kept_src)
    _derive(root, "onnx", f"gone-{KEY}.onnx", gone_src)
    gone_src.unlink()
    (root / "offline").mkdir()
    old = root / "offline" / f"efficientnet-lite0-{KEY}.onnx"  # an earlier release's: no record
    old.write_bytes(ONNX[:500])
    os.utime(old, (OLD, OLD))
    (root / "offline" / "my-export.onnx").write_bytes(b"z")  # not a name gpua gives: someone else's
    (root / "offline" / f"junk-{KEY}.onnx").write_bytes(b"not onnx")  # gpua's name, not its format
    feats = root / "classify"
    _features(feats / "photos__offline-a__offline-b.npz")
    _parts(feats / "photos__offline-a__offline-b.npz.parts", b"p")
    _parts(feats / "halfway__offline-a__offline-b.npz.parts", b"q" * 10)
    np.savez(feats / "mine.npz", weights=np.zeros(3))  # not features: a user's file
    _features(feats / "train.npz")  # features, but not a cache's name: a user's `gpua extract --out`
    (feats / "stranger.npz.parts").mkdir()
    (feats / "stranger.npz.parts" / "notes.txt").write_text("mine")
    (root / "hf" / "models--x--y").mkdir(parents=True)
    (root / "hf" / "models--x--y" / "model.safetensors").write_bytes(b"w" * 2000)
    (root / "notes.txt").write_text("mine")
    return root


def _by_name(entries):
    return {e.path.name: e for e in entries}


def _removable(cache):
    return sorted(e.path.name for e in cache_entries(cache) if e.removable)


def test_entries_say_kind_state_and_size(cache):
    got = _by_name(cache_entries(cache))
    assert set(got) == {f"kept-{KEY}.onnx", f"gone-{KEY}.onnx", f"efficientnet-lite0-{KEY}.onnx", "my-export.onnx", f"junk-{KEY}.onnx",
                        "photos__offline-a__offline-b.npz", "photos__offline-a__offline-b.npz.parts",
                        "halfway__offline-a__offline-b.npz.parts", "mine.npz", "train.npz",
                        "stranger.npz.parts", "hf", "notes.txt"}
    kept = got[f"kept-{KEY}.onnx"]
    assert (kept.kind, kept.state, kept.bytes) == ("derived", "current", 1000)
    assert (got[f"gone-{KEY}.onnx"].state, got[f"efficientnet-lite0-{KEY}.onnx"].state) == ("stale", "unrecorded")
    photos = got["photos__offline-a__offline-b.npz"]
    assert (photos.kind, photos.state, photos.bytes) == ("features", "complete", photos.path.stat().st_size)
    # parts beside an output are a later extraction's work: their own entry, with their own age
    assert (got["photos__offline-a__offline-b.npz.parts"].state, got["photos__offline-a__offline-b.npz.parts"].bytes) == ("partial", 1 + 18)
    halfway = got["halfway__offline-a__offline-b.npz.parts"]
    assert (halfway.state, halfway.bytes) == ("partial", 10 + 18)
    assert {got[n].kind for n in ("my-export.onnx", f"junk-{KEY}.onnx", "mine.npz", "train.npz", "stranger.npz.parts", "notes.txt")} == {"other"}
    assert (got["hf"].kind, got["hf"].bytes) == ("download", 2000)
    assert _removable(cache) == [f"gone-{KEY}.onnx"]  # unrecorded files go when asked


def test_a_feature_cache_names_the_folder_it_holds(tmp_path, capsys):
    """Was: every feature cache's line said "re-extracted on its next use", and its name gives only the
    folder's base name and a hash (two folders called photos, one cache per class file)."""
    root, photos = tmp_path / "cache", tmp_path / "home" / "photos"
    photos.mkdir(parents=True)
    folder = {"type": "FileImageDataset", "name": "photos", "n_images": 9, "root": str(photos)}
    _features(root / "classify" / "photos-aa-1__offline-a__offline-b.npz", dataset=folder, class_prompts=[["cat"], ["dog"]])
    _features(root / "classify" / "old-bb-1__offline-a__offline-b.npz",
              dataset={**folder, "n_images": 1, "root": str(tmp_path / "gone")}, class_prompts=[["cat"]])
    _features(root / "demo" / "cifar10-mini_test__offline-a__offline-b.npz",
              dataset={"type": "ArrayImageDataset", "name": "cifar10-mini", "split": "test", "n_images": 1000})
    _features(root / "demo" / "bare__offline-a__offline-b.npz")
    got = {e.path.name: e.why for e in cache_entries(root)}
    assert got["photos-aa-1__offline-a__offline-b.npz"] == f"9 images of {str(photos)!r}, 2 classes"
    assert got["old-bb-1__offline-a__offline-b.npz"] == f"1 image of {str(tmp_path / 'gone')!r}, 1 class; the folder is gone"
    assert got["cifar10-mini_test__offline-a__offline-b.npz"] == "1000 images of cifar10-mini test"
    assert got["bare__offline-a__offline-b.npz"] == "its images unrecorded"
    assert main(["cache", "--cache-dir", str(root)]) == 0
    assert f"(9 images of {str(photos)!r}, 2 classes)" in capsys.readouterr().out


def test_clean_removes_stale_derived_files_only_by_default(cache):
    before = sorted(cache.rglob("*"))
    removed, skipped, failed = clean_cache(cache, dry_run=True)
    assert [e.path.name for e in removed] == [f"gone-{KEY}.onnx"] and not skipped and not failed
    assert sorted(cache.rglob("*")) == before  # a dry run removes nothing
    removed, _, _ = clean_cache(cache)
    assert [e.path.name for e in removed] == [f"gone-{KEY}.onnx"]
    assert not (cache / "onnx" / f"gone-{KEY}.onnx").exists() and not record_path(cache / "onnx" / f"gone-{KEY}.onnx").exists()
    assert (cache / "onnx" / f"kept-{KEY}.onnx").is_file() and record_path(cache / "onnx" / f"kept-{KEY}.onnx").is_file()
    assert sorted(cache.rglob("*")) == [p for p in before if "gone-" not in p.name]
    # an earlier release's file, unused since: only when asked (a run that uses one records it)
    removed, _, _ = clean_cache(cache, unrecorded=True)
    assert [e.path.name for e in removed] == [f"efficientnet-lite0-{KEY}.onnx"]


def test_an_old_output_and_a_fresh_interrupted_run_beside_it(cache):
    """Was: the parts beside an output counted with it, by the output's age: --older-than removed
    a re-extraction's fresh parts with the old output."""
    photos = cache / "classify" / "photos__offline-a__offline-b.npz"
    old = time.time() - 60 * 24 * 3600
    os.utime(photos, (old, old))
    removed, _, _ = clean_cache(cache, features=True, older_than_days=30)
    assert sorted(e.path.name for e in removed) == [f"gone-{KEY}.onnx", photos.name]
    assert not photos.exists() and (cache / "classify" / (photos.name + ".parts") / "shard-000000.npz").is_file()


def test_removing_parts_never_removes_an_output(cache):
    """Was: a partial entry's removal also unlinked the output that a resumed run had written
    between the listing and the removal."""
    from gpua.cache import _remove_features

    parts = cache / "classify" / "halfway__offline-a__offline-b.npz.parts"
    entry = _by_name(cache_entries(cache))[parts.name]
    _features(parts.with_name("halfway__offline-a__offline-b.npz"))  # the resumed run finished meanwhile
    assert _remove_features(entry)
    assert not parts.exists() and parts.with_name("halfway__offline-a__offline-b.npz").is_file()


def test_clean_features_by_age_and_never_downloads_or_strangers(cache):
    photos = cache / "classify" / "photos__offline-a__offline-b.npz"
    old = time.time() - 40 * 24 * 3600
    os.utime(photos, (old, old))
    removed, _, _ = clean_cache(cache, features=True, older_than_days=30)
    assert sorted(e.path.name for e in removed) == [f"gone-{KEY}.onnx", photos.name]
    assert not photos.exists()
    assert (cache / "classify" / "halfway__offline-a__offline-b.npz.parts").is_dir()  # written just now
    removed, _, _ = clean_cache(cache, features=True)
    assert sorted(e.path.name for e in removed) == ["halfway__offline-a__offline-b.npz.parts", photos.name + ".parts"]
    for kept in ("hf/models--x--y/model.safetensors", "notes.txt", "classify/mine.npz", "classify/train.npz",
                 "classify/stranger.npz.parts/notes.txt", "offline/my-export.onnx", f"offline/junk-{KEY}.onnx"):
        assert (cache / kept).is_file(), kept


def test_a_folder_gpua_did_not_tag_is_left_alone(tmp_path):
    """Was: any folder passed as the cache was cleaned by name patterns (a user's project with
    folders called onnx/ and classify/ lost its files)."""
    proj = tmp_path / "proj"
    _features(proj / "classify" / "photos__offline-a__offline-b.npz")
    (proj / "onnx").mkdir()
    (proj / "onnx" / f"encoder-{KEY}.onnx").write_bytes(ONNX)
    os.utime(proj / "onnx" / f"encoder-{KEY}.onnx", (OLD, OLD))
    before = sorted(proj.rglob("*"))
    with pytest.raises(GPUAError, match="not tagged as gpua's cache folder"):
        clean_cache(proj, features=True, unrecorded=True)
    assert sorted(proj.rglob("*")) == before
    (proj / CACHE_TAG).touch()  # tagged by hand
    removed = clean_cache(proj, features=True, unrecorded=True)[0]
    assert sorted(e.path.name for e in removed) == [f"encoder-{KEY}.onnx", "photos__offline-a__offline-b.npz"]


def test_clean_leaves_what_a_running_gpua_writes(cache):
    out = cache / "classify" / "photos__offline-a__offline-b.npz"
    with _OutputLock(out):
        assert _by_name(cache_entries(cache))[out.name].state == "busy"
        removed, skipped, _ = clean_cache(cache, features=True, dry_run=True)  # the dry run says what the run would do
        assert sorted(e.path.name for e in skipped) == [out.name, out.name + ".parts"] and out.name not in [e.path.name for e in removed]
        removed, skipped, _ = clean_cache(cache, features=True)
    assert sorted(e.path.name for e in skipped) == [out.name, out.name + ".parts"] and out.is_file()
    assert "halfway__offline-a__offline-b.npz.parts" in [e.path.name for e in removed]
    assert not list((cache / "classify").glob(".*gpua-lock"))  # the holder removed its lock as it finished
    # an unrecorded file minutes old may be an earlier release's cut in progress: kept
    fresh = cache / "offline" / f"fresh-{KEY}.onnx"
    fresh.write_bytes(ONNX)
    assert _by_name(cache_entries(cache))[fresh.name].state == "busy" and fresh.name not in _removable(cache)


def test_a_derived_file_is_recorded_before_it_takes_its_name(tmp_path, monkeypatch):
    """Was: renamed onto its final name, then recorded: a clean in between removed it as
    unrecorded, and the run that cut it then failed to load it."""
    import gpua._atomic as atomic

    seen = []
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".onnx"):
            seen.append(record_path(dst).is_file())
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    source = tmp_path / "m.onnx"
    source.write_bytes(b"m")
    _derive(tmp_path / "cache", "onnx", f"m-{KEY}.onnx", source)
    assert seen == [True]


def test_temp_files_orphan_records_and_failures(cache, monkeypatch, capsys):
    dead = cache / "onnx" / f".big-{KEY}.onnx.gpua-00000000-{_dead_pid()}-abcd.tmp.onnx"
    from gpua._atomic import _HOST

    dead = dead.with_name(dead.name.replace("00000000", _HOST))
    dead.write_bytes(b"t" * 100)
    orphan = record_path(cache / "onnx" / f"lost-{KEY}.onnx")
    orphan.write_text("{}")
    os.utime(orphan, (OLD, OLD))
    young = record_path(cache / "onnx" / f"coming-{KEY}.onnx")  # written before its file takes its name
    young.write_text("{}")
    got = _by_name(cache_entries(cache))
    assert (got[dead.name].kind, got[dead.name].state) == ("temp", "stale") and got[orphan.name].state == "orphan"
    assert got[young.name].state == "busy" and young.name not in _removable(cache)
    assert {dead.name, orphan.name} <= set(_removable(cache))
    # one file that will not go is said, and the others go all the same
    real = Path.unlink

    def unlink(self, *a, **k):
        if self.name == f"gone-{KEY}.onnx":
            raise PermissionError(1, "Operation not permitted", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["cache", "clean", "--cache-dir", str(cache)]) == 2
    out, err = capsys.readouterr()
    assert f"could not remove onnx/gone-{KEY}.onnx: Operation not permitted" in err
    assert "removed 2 entries" in out and not dead.exists() and not orphan.exists() and young.exists()


def test_records_of_another_machine_are_neither_checked_nor_evicted(tmp_path):
    """Was: in a cache shared over the network, where one source path holds other files on each
    machine, each machine's cut removed the other's at every turn."""
    source = tmp_path / "m.onnx"
    source.write_bytes(b"one")
    cache = tmp_path / "cache"
    theirs = _derive(cache, "onnx", f"m-{KEY}.onnx", source)
    record = json.loads(record_path(theirs).read_text())
    record["host"], record["machine"] = "other-box", "00000000"
    record_path(theirs).write_text(json.dumps(record))
    source.write_bytes(b"two, here")
    ours = _derive(cache, "onnx", f"m-{'f' * 16}.onnx", source)
    assert theirs.is_file() and ours.is_file()
    assert _by_name(cache_entries(cache))[theirs.name].state == "elsewhere" and theirs.name not in _removable(cache)
    # unused there for over a week (a container that started under another name): stale, and superseded
    week = time.time() - 8 * 24 * 3600
    os.utime(record_path(theirs), (week, week))
    assert _by_name(cache_entries(cache))[theirs.name].state == "stale"
    source.write_bytes(b"three, here")
    _derive(cache, "onnx", f"m-{'e' * 16}.onnx", source)
    assert not theirs.exists() and not ours.exists()


def test_a_linked_sub_folder_is_read_through(tmp_path):
    big = tmp_path / "big"
    (big / "onnx").mkdir(parents=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "onnx").symlink_to(big / "onnx")
    source = tmp_path / "m.onnx"
    source.write_bytes(b"m")
    _derive(cache, "onnx", f"m-{KEY}.onnx", source)
    got = _by_name(cache_entries(cache))
    assert got[f"m-{KEY}.onnx"].state == "current" and (big / "onnx" / f"m-{KEY}.onnx").is_file()


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
    assert f"gpua cache: {cache}\n" in out and f"onnx/gone-{KEY}.onnx" in out and "stale" in out and "hf" in out
    assert "stale or left over 1.0 kB" in out and "an earlier release's, unused since 500 B (`--unrecorded`)" in out
    assert main(["cache", "clean", "--cache-dir", str(cache), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove onnx/gone-{KEY}.onnx" in out and (cache / "onnx" / f"gone-{KEY}.onnx").is_file()
    assert main(["cache", "clean", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entry, 1.0 kB" in out and "feature caches kept" in out
    assert not (cache / "onnx" / f"gone-{KEY}.onnx").exists()
    assert main(["cache", "clean", "--cache-dir", str(cache), "--older-than", "1"]) == 2
    assert "add --features" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cache", "clean", "--older-than", "-1", "--features"])
    assert "0 or more" in capsys.readouterr().err


def test_cli_empty_missing_and_untagged(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "none"))
    assert main(["cache"]) == 0
    assert "not made yet" in capsys.readouterr().out
    assert main(["cache", "clean"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out
    (tmp_path / "proj" / "onnx").mkdir(parents=True)
    assert main(["cache", "clean", "--cache-dir", str(tmp_path / "proj")]) == 0  # an empty folder: nothing to refuse
    assert "removed 0 entries" in capsys.readouterr().out
    (tmp_path / "proj" / "notes.txt").write_text("mine")  # a project folder given by mistake: refused, not "removed 0"
    assert main(["cache", "clean", "--cache-dir", str(tmp_path / "proj"), "--features"]) == 2
    assert "not tagged as gpua's cache folder" in capsys.readouterr().err
    assert (tmp_path / "proj" / "notes.txt").read_text() == "mine"
    (tmp_path / "proj" / "onnx" / f"old-{KEY}.onnx").write_bytes(ONNX)
    os.utime(tmp_path / "proj" / "onnx" / f"old-{KEY}.onnx", (OLD, OLD))
    assert main(["cache", "--cache-dir", str(tmp_path / "proj")]) == 0
    assert "not tagged as gpua's cache" in capsys.readouterr().out
    assert main(["cache", "clean", "--cache-dir", str(tmp_path / "proj"), "--unrecorded"]) == 2
    assert "not tagged as gpua's cache folder" in capsys.readouterr().err
    assert (tmp_path / "proj" / "onnx" / f"old-{KEY}.onnx").is_file()


def test_a_feature_cache_rewritten_since_listing_stays(cache, monkeypatch):
    """Was: without --older-than, a cache an extraction rewrote between the listing and the
    removal lost its fresh output (nothing compared it with what was listed)."""
    import gpua.cache as cache_module

    photos = cache / "classify" / "photos__offline-a__offline-b.npz"
    listed = cache_module.cache_entries

    def listed_then_rewritten(*a, **k):
        entries = listed(*a, **k)
        later = time.time() + 5
        os.utime(photos, (later, later))
        return entries

    monkeypatch.setattr(cache_module, "cache_entries", listed_then_rewritten)
    removed, skipped, _ = clean_cache(cache, features=True)
    assert photos.is_file() and photos.name in [e.path.name for e in skipped]


def test_a_reused_feature_cache_counts_as_used(tmp_path):
    """Was: a cache's age was the time since it was written; `--older-than 30` removed one reused
    every day (and one a running command had just reused)."""
    from gpua.cache import feature_cache_used

    photos = _features(tmp_path / "c" / "classify" / "photos__offline-a__offline-b.npz")
    os.utime(photos, (OLD, OLD))
    feature_cache_used(photos)
    assert time.time() - photos.stat().st_mtime < 60 and (tmp_path / "c" / CACHE_TAG).is_file()
    assert clean_cache(tmp_path / "c", features=True, older_than_days=30)[0] == []


def test_an_empty_cache_dir_is_refused(capsys, monkeypatch, tmp_path):
    """Was: `--cache-dir ""` (an unset variable) cleaned the default cache."""
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "c"))
    assert main(["cache", "clean", "--cache-dir", "", "--features"]) == 2
    assert "--cache-dir is empty" in capsys.readouterr().err
