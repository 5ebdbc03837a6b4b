"""Photos `gpua classify` left out without a row, and rows `gpua benchmark` lost to a concurrent run.

Each test failed before its fix (noted as "was: ...").
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import pytest

from gpua import benchmark as bench_mod
from gpua.classify import classify_folder
from gpua.cli import main

# Their HEIC files are gpua without pillow-heif (with it: tests/data/test_data_heif.py).
pytestmark = pytest.mark.usefixtures("without_heif")

PLANTED = {"vfm": "planted:vfm", "vlm": "planted:vlm", "templates": "simple", "progress": False,
           "overrides": {"n_steps": 10, "self_learning": 0}}
CLI = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache", "--quiet"]
#: Stand-ins for the files phones and cameras write: only their endings matter to the listing.
FAKE = {"IMG_0001.HEIC": b"\x00\x00\x00\x18ftypheic" + bytes(64), "DSC_0002.CR2": b"II*\x00" + bytes(64),
        "DSC_0003.nef": b"MM\x00*" + bytes(64), "pic.jxl": b"\xff\x0a" + bytes(64)}


@pytest.fixture
def mine(photos, monkeypatch):
    """From inside the photos' parent: labelled photos in `mine/` (15 PNGs, 5 classes), a flat copy in `flat/`."""
    shutil.copytree(photos / "photos" / "test", photos / "mine")
    monkeypatch.chdir(photos)
    return photos


def _csv(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def _photo_files(folder: Path) -> set[str]:
    """Every file below ``folder`` with an image or phone/camera photo ending (not hidden), relative, ``/``-separated."""
    from gpua.data import IMAGE_EXTENSIONS
    from gpua.data._loaders import _UNREAD_PHOTO_EXTENSIONS

    ends = set(IMAGE_EXTENSIONS) | set(_UNREAD_PHOTO_EXTENSIONS)
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in ends}


# -- 1. photos of formats gpua does not decode (HEIC/HEIF, raw, JPEG XL) -------------------------
def test_undecoded_photos_of_a_labelled_folder_get_a_row_with_the_reason(mine):
    (mine / "mine" / "sky" / "IMG_0001.HEIC").write_bytes(FAKE["IMG_0001.HEIC"])
    (mine / "mine" / "grass" / "DSC_0002.CR2").write_bytes(FAKE["DSC_0002.CR2"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = classify_folder("mine", "classes.txt", cache_dir="cache", **PLANTED)
    said = [str(w.message) for w in caught if "formats gpua does not" in str(w.message)]
    # was: the listing's warning, twice (the folder is listed twice), and no row
    assert len(said) == 1 and said[0].startswith("2 photo(s) of 'mine' are in formats gpua does not decode (.cr2: 1, .heic: 1")
    reasons = dict(res.unreadable)
    assert set(reasons) == {"sky/IMG_0001.HEIC", "grass/DSC_0002.CR2"}
    assert "HEIC/HEIF" in reasons["sky/IMG_0001.HEIC"] and "convert it to JPEG or PNG" in reasons["sky/IMG_0001.HEIC"]
    assert "camera raw" in reasons["grass/DSC_0002.CR2"]
    n = res.to_csv("out.csv", top_k=2)
    rows = _csv("out.csv")
    assert n == 15 and len(rows) == 17
    by_id = {r["image"]: r for r in rows}
    heic = by_id["sky/IMG_0001.HEIC"]
    assert heic["prediction"] == "" and heic["label"] == "sky" and "HEIC/HEIF" in heic["error"]
    assert by_id["grass/DSC_0002.CR2"]["label"] == "grass"


def test_every_photo_of_the_folder_has_exactly_one_csv_row(mine, capsys):
    """Flat folder: PNGs, phone and camera files (one in a sub-folder), a broken PNG; one row each, and the summary says why."""
    flat = mine / "flat"
    for name, data in FAKE.items():
        (flat / name).write_bytes(data)
    (flat / "iphone").mkdir()
    (flat / "iphone" / "IMG_0009.heif").write_bytes(FAKE["IMG_0001.HEIC"])
    (flat / "broken.png").write_bytes(b"not a png")
    (flat / ".hidden.heic").write_bytes(b"")  # hidden: not a photo, as for the listing
    assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "flat.csv", *CLI]) == 0
    out, err = capsys.readouterr()
    rows = _csv("flat.csv")
    ids = [r["image"] for r in rows]
    # was: the 5 HEIC/raw/JPEG XL files had no row (only a warning on the terminal, printed twice)
    assert sorted(ids) == sorted(_photo_files(flat)) and len(ids) == len(set(ids)) == 15 + 5 + 1
    assert all(r["error"] for r in rows if r["prediction"] == "") and sum(r["prediction"] == "" for r in rows) == 6
    assert by_error(rows, "iphone/IMG_0009.heif").startswith("UnsupportedFormat: .heif is HEIC/HEIF")
    assert "JPEG XL" in by_error(rows, "pic.jxl") and "camera raw" in by_error(rows, "DSC_0003.nef")
    assert "classified 15 of 21 photos" in out
    assert "1 photo(s) could not be read" in out and "'broken.png'" in out
    assert ("5 photo(s) are in formats gpua does not decode and were not classified (.cr2: 1, .heic: 1, .heif: 1, .jxl: 1, "
            ".nef: 1; first: ") in out
    assert "formats gpua does not" not in err  # said once, on stdout


def by_error(rows, image_id):
    return next(r["error"] for r in rows if r["image"] == image_id)


def test_a_folder_of_only_undecoded_photos_says_so(tmp_path):
    from gpua._errors import GPUAError

    (tmp_path / "iphone").mkdir()
    for i in range(3):
        (tmp_path / "iphone" / f"IMG_{i}.HEIC").write_bytes(FAKE["IMG_0001.HEIC"])
    (tmp_path / "classes.txt").write_text("a\nb\n")
    # was: "holds no images; ... Image files end in .jpg, ..." (as if the folder were empty)
    with pytest.raises(GPUAError, match=r"holds no photo gpua decodes: its 3 photo\(s\) are in formats it does not read \(.heic: 3"):
        classify_folder(tmp_path / "iphone", tmp_path / "classes.txt", cache_dir=tmp_path / "cache", **PLANTED)
    from gpua.classify import unlabeled_pool

    with pytest.raises(GPUAError, match=r"^--pool .* holds no photo gpua decodes"), pytest.warns(UserWarning, match="left out 3"):
        unlabeled_pool(tmp_path / "iphone", "--pool")  # was: "holds no images (looked in every sub-folder)"


def test_an_avif_without_a_decoder_says_to_upgrade_pillow(mine, monkeypatch):
    import gpua.classify

    (mine / "mine" / "sky" / "IMG_0005.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(64))
    monkeypatch.setattr(gpua.classify, "_pillow_reads_avif", lambda: False)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        res = classify_folder("mine", "classes.txt", cache_dir="cache", **PLANTED)
    (image_id, error), = res.unreadable
    # was: only "it is truncated, corrupt or not an image", for a photo this Pillow has no decoder for
    assert image_id == "sky/IMG_0005.avif" and "This Pillow cannot decode AVIF at all" in error and "pip install -U pillow" in error
    monkeypatch.setattr(gpua.classify, "_pillow_reads_avif", lambda: True)  # a Pillow with AVIF: the file itself is bad
    assert "AVIF at all" not in gpua.classify._explain_unreadable("x.avif", "UnreadableImageError: ...")


def test_each_undecoded_format_gets_its_own_reason():
    from gpua.classify import _undecoded_reason

    assert "HEIC/HEIF" in _undecoded_reason("a/IMG.hif") and "JPEG XL" in _undecoded_reason("x.JXL")
    assert "camera raw" in _undecoded_reason("DSC.ARW") and "camera raw" in _undecoded_reason("x.dng")
    # another ending the listing may leave out is not called a raw file
    assert _undecoded_reason("logo.psd") == ("UnsupportedFormat: .psd is an image format gpua does not decode; convert it to JPEG "
                                             "or PNG and run again.")


def test_undecoded_photos_are_found_where_the_listing_finds_images(tmp_path):
    """The same folders as the image listing's walk: not hidden ones nor macOS archive leftovers, symlink loops cut,
    a folder reached by two paths read once."""
    from gpua.classify import undecoded_photos
    from gpua.data._loaders import _subdirs, _walk_class_folders

    root = tmp_path / "photos"
    for sub in ("a", "a/deep", "a/.hidden", ".hidden", "__MACOSX", "c"):
        (root / sub).mkdir(parents=True)
        (root / sub / "x.heic").write_bytes(b"")
        (root / sub / "x.png").write_bytes(b"")
    (root / "top.dng").write_bytes(b"")
    (root / "a" / "loop").symlink_to(root / "a")
    (root / "c" / "again").symlink_to(root / "a" / "deep")
    (root / "b").symlink_to(root / "a" / "deep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = [f"{cls}/{f}" for cls, files in _walk_class_folders(root, _subdirs(root)).items() for f in files]
    found = undecoded_photos(root)
    assert found[0] == "top.dng" and found[1:] == [i.replace(".png", ".heic") for i in images]
    assert len(found) == len(set(found)) and not any("hidden" in f or "MACOSX" in f or "loop" in f for f in found)


# -- 2. gpua benchmark: concurrent writers of one results.jsonl ----------------------------------
def _row(writer: int, i: int) -> dict:
    """A row with every key field set, one of its own (`seed`) per writer and index."""
    return {"dataset": "d", "vfm": "v", "vlm": "l", "method": f"m{writer}", "pool": "16-shot", "seed": i, "test_subset": None,
            "data": None, "contents": "c", "prompts": "p", "encoders": "e", "gpua_defaults": "g", "params": {}, "prompt_templates": "auto",
            "metrics": {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}}


@pytest.fixture
def slow_writes(monkeypatch):
    """Each rewrite of the results file takes a little longer (a slow disk): the window in which two
    read-merge-rename cycles interleave, always there, is wide enough to be hit every time."""
    real = bench_mod._write_rows

    def slow(path, rows):
        time.sleep(0.002)
        real(path, rows)

    monkeypatch.setattr(bench_mod, "_write_rows", slow)


def test_two_writers_at_once_lose_no_row(tmp_path, slow_writes):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(_row(9, 0)) + "\n")  # a row from before
    n, errors = 30, []

    def writer(w):
        try:
            for i in range(n):
                bench_mod._add_row(path, _row(w, i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = bench_mod.read_results(path)
    # was: about half the rows lost (each writer renamed its own merge over the other's)
    assert len(rows) == 2 * n + 1
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted([("m9", 0)] + [(f"m{w}", i) for w in range(2) for i in range(n)])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp file left


def _process_writer(path, w, n):
    from gpua import benchmark

    for i in range(n):
        benchmark._add_row(Path(path), _row(w, i))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked processes only")
def test_two_processes_at_once_lose_no_row(tmp_path):
    import multiprocessing

    path = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(str(path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():  # never left behind, whatever happened
            p.terminate()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(bench_mod.read_results(path)) == 80


def test_an_interrupted_write_leaves_the_old_file_whole_and_the_lock_free(tmp_path, monkeypatch):
    import gpua._atomic

    path = tmp_path / "results.jsonl"
    bench_mod._add_row(path, _row(0, 0))
    before = path.read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(gpua._atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            bench_mod._add_row(path, _row(0, 1))
    assert path.read_bytes() == before  # atomic: the old file, whole
    rows, added = bench_mod._add_row(path, _row(0, 1))  # the lock was released: no wait, no error
    assert added and len(rows) == 2


def test_a_lock_not_obtained_in_time_names_its_file(tmp_path):
    from gpua._errors import GPUAError

    path = tmp_path / "results.jsonl"
    with bench_mod._results_lock(path):
        t0 = time.monotonic()
        with pytest.raises(GPUAError, match=r"results\.jsonl\.lock' has been held for over 0.2 s by another gpua benchmark"):
            with bench_mod._results_lock(path, timeout=0.2):
                pass
        assert time.monotonic() - t0 < 5


def test_a_row_another_run_wrote_meanwhile_is_not_added_twice(tmp_path):
    path = tmp_path / "results.jsonl"
    assert bench_mod._add_row(path, _row(0, 0))[1]
    rows, added = bench_mod._add_row(path, {**_row(0, 0), "metrics": {"acc1": 0.25}})
    assert not added and len(rows) == 1 and rows[0]["metrics"]["acc1"] == 0.5
    older = {k: v for k, v in _row(1, 0).items() if k != "params"}  # settings unknown: never the same run
    assert bench_mod._add_row(path, older)[1] and bench_mod._add_row(path, older)[1]


def _bench(d, *extra):  # zero_shot fits nothing: no GPUA parameter to give (one it would not apply is refused)
    return ["benchmark", "--datasets", str(d / "photos"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--methods", "zero_shot",
            "--pool", "2-shot", "--out", str(d / "bench"), "--cache-dir", str(d / "cache"), "--templates", "simple", "--quiet",
            *extra]


@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_the_same_benchmark_twice_at_once_writes_one_row(photos, monkeypatch, capsys):
    d = photos
    real = bench_mod._run_method
    other_ran = []

    def run_method(*a, **k):
        if not other_ran:  # the same command, started beside this one, finishes while this one fits
            other_ran.append(True)
            assert main(_bench(d)) == 0
        return real(*a, **k)

    monkeypatch.setattr(bench_mod, "_run_method", run_method)
    assert main(_bench(d)) == 0
    rows = bench_mod.read_results(d / "bench" / "results.jsonl")
    assert len(rows) == 1  # was: 2 rows of one run, and the table's cell marked "several rows"
    assert "another run wrote this row" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_lines_that_are_not_rows_are_moved_aside_not_dropped(photos, capsys):
    d = photos
    (d / "bench").mkdir()
    jsonl = d / "bench" / "results.jsonl"
    jsonl.write_text('{"dataset": "old", "metrics": {"acc1": 0.1}}\n{"dataset": "oops", "acc1": 0.3,\n[1, 2]\n')
    assert main(_bench(d)) == 0  # was: AttributeError on the line `[1, 2]` (a list has no .get)
    err = capsys.readouterr().err
    assert "line 2 is not a JSON row" in err and "moved to" in err
    rows = bench_mod.read_results(jsonl)
    assert [r["dataset"] for r in rows] == ["old", str(d / "photos")]
    # was: dropped from the file at the first write, with only a warning
    assert (d / "bench" / "results.jsonl.rejected").read_text() == '{"dataset": "oops", "acc1": 0.3,\n[1, 2]\n'


@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_unreadable_benchmark_images_are_said_and_recorded_on_every_run(photos, capsys):
    d = photos
    (d / "photos" / "test" / "sky" / "broken.png").write_bytes(b"not a png")
    assert main(_bench(d)) == 0
    assert "0 pool and 1 test image(s) could not be read and are left out" in capsys.readouterr().out
    argv = _bench(d)
    argv[argv.index("--methods") + 1] = "zero_shot,lambda_1"
    assert main(argv) == 0  # the features are cached now: the extraction says nothing, the run does
    assert "0 pool and 1 test image(s) could not be read" in capsys.readouterr().out
    rows = bench_mod.read_results(d / "bench" / "results.jsonl")
    # was: n_test 15 for a test split of 16 photos, and no word of it on the second run
    assert [r.get("unreadable") for r in rows] == [{"pool": 0, "test": 1}] * 2 and rows[0]["n_test"] == 15
