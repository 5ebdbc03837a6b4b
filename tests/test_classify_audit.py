"""`gpua classify` paths an end-to-end audit found wrong (each test failed before its fix)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpua import GPUAError

from gpua.classify import classify_folder

PLANTED = {"vfm": "planted:vfm", "vlm": "planted:vlm", "templates": "simple", "progress": False,
           "overrides": {"n_steps": 10, "self_learning": 0}}


@pytest.fixture
def folders(photos, monkeypatch):
    """From inside the photos' parent: labelled test photos in `mine/`, a flat pool in `more/2023/`."""
    shutil.copytree(photos / "photos" / "test", photos / "mine")
    (photos / "more").mkdir()
    shutil.copytree(photos / "flat", photos / "more" / "2023")
    monkeypatch.chdir(photos)
    return photos


def test_relative_folders_get_their_own_cache_files(folders):
    n_mine = sum(1 for _ in Path("mine").rglob("*.png"))
    res = classify_folder("mine", "classes.txt", pool=".", cache_dir="cache", **PLANTED)
    # was: both cache files named after the working directory, the pool's features overwrote the photos'
    assert res.features != res.pool_features
    assert len(res.image_ids) == n_mine and res.labels is not None
    again = classify_folder(Path("mine"), "classes.txt", cache_dir="cache", **PLANTED)
    assert again.features == res.features  # the folder's own file, found again from a Path


def test_a_path_pool_with_other_sub_folders_is_read_as_unlabeled(folders):
    res = classify_folder("mine", "classes.txt", pool=(folders / "more").resolve(), cache_dir="cache", **PLANTED)
    # was: an absolute Path pool was read as class folders ("class folder '2023' ... is not in classnames")
    assert res.pool_features != res.features and res.labels is not None


@pytest.mark.parametrize("flags, message", [(["--lam", "2"], "--lam=2.0 must be"), (["--eps", "-1"], "--eps=-1.0 must be"),
                                            (["--n-steps", "-5"], "--n-steps=-5 must be")])
def test_estimator_flags_are_checked_before_any_photo_is_encoded(folders, flags, message, monkeypatch, capsys):
    from gpua.cli import main

    monkeypatch.setattr("gpua.classify.classify_folder", lambda *a, **k: pytest.fail("photos were encoded first"))
    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--out", "x.csv", "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", *flags]
    assert main(argv) == 2  # was: every photo encoded, then the error (without the flag's name)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["classify", "predict"])
def test_top_k_below_one_is_refused_while_parsing(command, capsys):
    from gpua.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--top-k", "0"])  # was: refused by the CSV writer, after the whole run
    assert e.value.code == 2 and "argument --top-k: 0 must be 1 or more" in capsys.readouterr().err


def test_trailing_comments_in_a_class_file_are_dropped(tmp_path):
    from gpua.data.classnames import load_class_prompts

    path = tmp_path / "classes.txt"
    path.write_text("# my classes\ncat   # my pet\ndog\nC#\nship  # boats too\n")
    names, prompts = load_class_prompts(path)
    assert names == ["cat", "dog", "C#", "ship"]  # was: 'cat   # my pet' the class and its prompt
    # inside the quotes a line may be wrapped in, ' #' is part of the name (was cut to 'No.')
    path.write_text('"No. #9 bus"\n\'hash # tag\'  # a comment\n"cat" # pet\n')
    names, prompts = load_class_prompts(path)
    assert names == ["No. #9 bus", "hash # tag", "cat"] and prompts[0] == ["No. #9 bus"]


@pytest.mark.parametrize("text, why", [
    ("class\ncat\nship\nairplane\n", "'class' reads as a spreadsheet's column header"),
    ("id,name\n0,cat\n1,ship\n2,airplane\n", "'id,name' reads as a spreadsheet's column header"),
    ("Class Index,Class Name\n0,cat\n1,ship\n", "column header"),
    ("cat,3\nship,5\nairplane,7\n", "field 2 is a number on each"),
    ("0,cat\n1,ship\n2,airplane\n", "field 1 is a number on each"),
    # was: read as the classes '1 ApplyEyeMakeup'..., prompted "a photo of a 1 cat." (UCF101's classInd.txt)
    ("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n", r"every line starts with its number \(line 1: '1 ApplyEyeMakeup'\)"),
    ("0 cat\n1 ship\n", "every line starts with its number"),
    ("1. cat\n2. ship\n", "every line starts with its number"),
    ("- cat\n- ship\n", "every line starts with a bullet"),
])
def test_a_class_file_saved_from_a_spreadsheet_is_refused(tmp_path, text, why):
    """A header row became a class (the balanced fit gave it photos) and an index or count column
    became class names or prompt words ("0,cat": class '0'), without a word."""
    from gpua.data.classnames import load_class_prompts

    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(GPUAError, match=why):
        load_class_prompts(path)


@pytest.mark.parametrize("text, names", [
    ("background, sky, wall\ncat\ndog, puppy\n", ["background", "cat", "dog"]),  # the synonym shorthand
    ("0\n1\n2\n", ["0", "1", "2"]),  # digits are classes (MNIST)
    ("name: name\nlabel: label, tag\n", ["name", "label"]),  # header words as classes, in the name: words form
    ("cat, kitten\ndog, 3 legged dog\n", ["cat", "dog"]),
    ("3 musketeers\n7 dwarfs\n", ["3 musketeers", "7 dwarfs"]),  # numbers, but not an index
    ("1 star: 1 star\n2 stars: 2 stars\n", ["1 star", "2 stars"]),  # classes named by a number: the name: words form
])
def test_class_files_that_only_look_like_spreadsheets_are_read(tmp_path, text, names):
    from gpua.data.classnames import load_class_prompts

    path = tmp_path / "classes.txt"
    path.write_text(text)
    assert load_class_prompts(path)[0] == names


def test_benchmark_reruns_rows_when_the_folder_changes(photos, capsys):
    import json

    from gpua.cli import main

    argv = ["benchmark", "--datasets", str(photos / "photos"), "--vfm", "planted:vfm", "--vlm", "planted:vlm",
            "--methods", "zero_shot", "--pool", "full", "--out", str(photos / "bench"), "--cache-dir", str(photos / "cache"),
            "--templates", "simple", "--quiet"]
    assert main(argv) == 0
    sky = photos / "photos" / "test" / "sky"
    shutil.copy(next(sky.iterdir()), sky / "one_more.png")
    capsys.readouterr()
    assert main(argv) == 0
    assert "already in" not in capsys.readouterr().out  # was: skipped, the row kept its old n_test
    rows = [json.loads(line) for line in (photos / "bench" / "results.jsonl").read_text().splitlines()]
    assert [r["n_test"] for r in rows] == [15, 16] and rows[0]["contents"] != rows[1]["contents"]
    assert main(argv) == 0 and "already in" in capsys.readouterr().out  # unchanged folder: resumed


def test_macos_archive_leftovers_are_not_classes(photos):
    from gpua.data import load_dataset

    leftover = photos / "photos" / "test" / "__MACOSX" / "sky"
    leftover.mkdir(parents=True)
    (leftover / "._x.png").write_bytes(b"Mac OS X  ")
    ds = load_dataset(str(photos / "photos"), split="test")  # was: "class folder '__MACOSX' ... is not in classnames"
    assert "__MACOSX" not in ds.classnames and len(ds.classnames) == 5


def test_a_listed_class_without_a_folder_says_how_to_keep_it(photos):
    from gpua._errors import GPUAError
    from gpua.data import load_dataset

    names = ["sky", "grass", "road", "water", "sand", "truck"]
    with pytest.raises(GPUAError, match=r"'truck', which is not a class folder .*create an \(empty\) folder 'truck'"):
        load_dataset(str(photos / "photos"), split="test", classnames=names)


def test_an_interrupted_classify_keeps_its_work_in_small_parts(folders, monkeypatch):
    import gpua.extract
    from gpua.classify import CLASSIFY_PART_IMAGES

    seen = []
    real = gpua.extract.extract_features
    monkeypatch.setattr(gpua.extract, "extract_features", lambda *a, **k: seen.append(k.get("shard_size")) or real(*a, **k))
    classify_folder("mine", "classes.txt", cache_dir="cache", **PLANTED)
    assert seen == [CLASSIFY_PART_IMAGES] and CLASSIFY_PART_IMAGES <= 256  # was extract's 1,024 (restarted from 0)


def test_unreadable_photos_get_a_csv_row_with_the_error(folders, capsys):
    import csv

    from gpua.cli import main

    (folders / "mine" / "sky" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        res = classify_folder("mine", "classes.txt", cache_dir="cache", **PLANTED)
    assert [i for i, _ in res.unreadable] == ["sky/broken.png"] and "sky/broken.png" not in res.image_ids
    n = res.to_csv("out.csv", top_k=2)
    rows = list(csv.DictReader(open("out.csv", encoding="utf-8")))
    # was: the photo was missing from the CSV, with only a warning on the terminal
    assert n == len(res.image_ids) and len(rows) == n + 1
    broken = rows[-1]
    assert broken["image"] == "sky/broken.png" and broken["prediction"] == "" and broken["error"]
    assert broken["label"] == "sky"  # its class folder says so (was empty)
    assert all(r["error"] == "" and r["prediction"] for r in rows[:-1])
    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--out", "cli.csv", "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 photo(s) could not be read" in out and "'sky/broken.png'" in out and "scores below leave them out" in out


def test_predictions_csv_without_unreadable_images_has_no_error_column(tmp_path):
    import numpy as np

    from gpua.report import write_predictions

    path = tmp_path / "p.csv"
    write_predictions(path, [(["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]]), None)], ["x", "y"], top_k=1)
    assert path.read_text().splitlines()[0] == "image,prediction,probability,top1,top1_probability"


def test_an_empty_method_list_says_so():
    from gpua._errors import GPUAError
    from gpua.classify import check_methods

    with pytest.raises(GPUAError, match="^--methods names no method; choose from"):  # was: "no method are unknown"
        check_methods(["", " "], "--methods")


def test_a_method_that_would_not_apply_a_flag_is_refused_before_encoding(folders, monkeypatch, capsys):
    from gpua.cli import main

    monkeypatch.setattr("gpua.classify.classify_folder", lambda *a, **k: pytest.fail("photos were encoded first"))
    base = ["classify", "--images", "mine", "--classnames", "classes.txt", "--out", "x.csv", "--vfm", "planted:vfm",
            "--vlm", "planted:vlm"]
    # was: lambda_1 kept lam=1 and zero_shot ignored rho, without a word, and the model file said otherwise
    assert main(base + ["--method", "lambda_1", "--lam", "0.5"]) == 2
    assert "does not apply lam=0.5" in capsys.readouterr().err
    assert main(base + ["--method", "zero_shot", "--param", "rho=0.1"]) == 2
    assert "does not apply rho=0.1" in capsys.readouterr().err
    assert main(base + ["--param", "class_prior=[1, 2]"]) == 2  # five classes: was found after every photo was encoded
    assert "class_prior has 2 weight(s) for 5 classes" in capsys.readouterr().err
    assert main(base[:2] + ["classes.txt"] + base[3:]) == 2  # --images a file
    assert "--images 'classes.txt' is not a folder" in capsys.readouterr().err
    assert main(base + ["--cache-dir", "classes.txt"]) == 2
    assert "--cache-dir 'classes.txt' is a file" in capsys.readouterr().err


def test_zero_shot_encodes_no_pool_and_says_nothing_was_fitted(folders, capsys):
    from gpua.cli import main

    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--out", "z.csv", "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--templates", "simple", "--cache-dir", "cache", "--quiet", "--method", "zero_shot",
            "--pool", "more"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "zero-shot: nothing fitted; --pool not used" in out and "features cached in" in out and " and " not in out.split("features cached in")[1]
    assert not any("pool" in p.name for p in (folders / "cache" / "classify").iterdir())  # was: the pool encoded for nothing


def test_one_folder_as_photos_and_as_pool_keeps_two_cache_files(folders):
    a = classify_folder("mine", "classes.txt", cache_dir="cache", **PLANTED)
    b = classify_folder("more/2023", "classes.txt", pool="mine", cache_dir="cache", **PLANTED)
    # was: both roles wrote one file whose keys differ (labels read or not): each run re-encoded the other's
    assert b.pool_features != a.features and a.features.is_file() and b.pool_features.is_file()


def test_too_few_photos_for_the_classes_is_said_before_encoding(folders, monkeypatch):
    from gpua._errors import GPUAError

    few = folders / "few"
    few.mkdir()
    for p in sorted((folders / "more" / "2023").glob("*.png"))[:3]:
        shutil.copy(p, few / p.name)
    monkeypatch.setattr("gpua.extract.extract_features", lambda *a, **k: pytest.fail("photos were encoded first"))
    with pytest.raises(GPUAError, match="holds 3 photo\\(s\\) for 5 classes"):
        classify_folder("few", "classes.txt", cache_dir="cache", **PLANTED)


def test_an_interrupted_classify_says_the_same_command_resumes(folders, monkeypatch, capsys):
    from gpua.cli import main

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("gpua.classify.classify_folder", stop)
    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--out", "x.csv", "--vfm", "planted:vfm", "--vlm", "planted:vlm"]
    assert main(argv) == 130
    assert ("interrupted; the photos are saved in parts of 256 as they are encoded; the same command resumes from the last part "
            "saved (a run stopped before its first 256 starts again)") in capsys.readouterr().err


def test_nas_thumbnails_and_linked_photos_are_not_more_photos(folders):
    from gpua.data import load_dataset

    n = len(load_dataset("mine"))
    thumbs = folders / "mine" / "sky" / "@eaDir" / "sky_0.png"  # a Synology NAS's thumbnail folder
    thumbs.mkdir(parents=True)
    shutil.copy(folders / "mine" / "sky" / "sky_0.png", thumbs / "SYNOPHOTO_THUMB_M.png")
    (folders / "mine" / "grass" / "linked.png").symlink_to(folders / "mine" / "road" / "road_0.png")
    with pytest.warns(UserWarning, match=r"skipped 1 folder\(s\) or image\(s\) .*'grass/linked.png'.* Each image is listed once"):
        ds = load_dataset("mine")  # was: 2 more photos, a road photo also labelled grass
    assert len(ds) == n and not any("@eaDir" in i or "linked" in i for i in ds.image_ids)


def test_an_output_with_an_image_ending_inside_the_photos_is_refused(folders, capsys):
    from gpua.cli import main

    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--vfm", "planted:vfm", "--vlm", "planted:vlm",
            "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache", "--quiet"]
    assert main([*argv, "--out", "mine/sky/preds.JPG"]) == 2  # was: written, then read as a photo by the next run
    assert "would write a file with an image's ending inside --images" in capsys.readouterr().err
    assert not (folders / "mine" / "sky" / "preds.JPG").exists()
    # anywhere: a photo beside the folder was replaced by the CSV
    photo = folders / "other.bmp"
    photo.write_bytes(b"BM my photo")
    assert main([*argv, "--out", str(photo)]) == 2
    assert "ends like an image" in capsys.readouterr().err and photo.read_bytes() == b"BM my photo"
    assert main([*argv, "--out", "out.csv", "--cache-dir", "mine"]) == 2  # was: an error naming 'out' and 'dataset'
    err = capsys.readouterr().err
    assert "--cache-dir 'mine' lies in --images 'mine'" in err and "mine/.gpua-cache" in err


def test_a_report_never_replaces_a_photo_a_script_or_a_class_file(folders, capsys):
    """Was: --out IMG_0001 (a photo saved without an ending, which gpua itself reads as a photo)
    was replaced by the CSV, and so were --out train.py and --out classes2.txt, without a word."""
    from PIL import Image

    from gpua.cli import main

    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--vfm", "planted:vfm", "--vlm", "planted:vlm",
            "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache", "--quiet"]
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folders / "IMG_0001", format="JPEG")
    (folders / "blob").write_bytes(b"\x00\x01 not text")
    (folders / "train.py").write_text("print('mine')\n")
    (folders / "classes2.txt").write_text("sky\ngrass\n")
    (folders / "labels.csv").write_text("file,label,notes\na.jpg,cat,hand-made\n")
    (folders / "settings.json").write_text('{"my": "settings"}')
    for name, what in (("IMG_0001", "is a photo"), ("blob", "is a binary file"), ("train.py", "is a text file ending in '.py'"),
                       ("classes2.txt", "is a text file ending in '.txt'"),
                       # was: any file ending in .csv or .json was taken for a report and replaced
                       ("labels.csv", "is a text file ending in '.csv' that is not a report gpua wrote"),
                       ("settings.json", "is a text file ending in '.json' that is not a report gpua wrote (its JSON reports start "
                                         "with the key 'written_by'; one written before 2026-12-02 has none: delete it by hand)")):
        before = (folders / name).read_bytes()
        assert main([*argv, "--out", name]) == 2
        err = capsys.readouterr().err
        assert f"--out {name!r} {what}" in err and "nothing was written" in err and "delete that file first" in err
        assert (folders / name).read_bytes() == before
    # A report replaces a report: an earlier CSV, one without an ending (it starts with gpua's header), an empty file
    (folders / "empty").write_text("")
    for name in ("old.csv", "old.csv", "preds", "preds", "empty"):
        assert main([*argv, "--out", name]) == 0, capsys.readouterr().err
        assert (folders / name).read_text().startswith("image,prediction,probability")
    (folders / "r").write_text('{\n  "written_by": "gpua 0.1.0",\n  "acc1": 0.5\n}\n')
    assert main(["evaluate", "--model", "m.gpua", "--test", "t.npz", "--json", "r"]) == 2  # no such model: the report is not the refusal
    assert "'r'" not in capsys.readouterr().err
    (folders / "r2").write_text('{"acc1": 0.5}')  # unmarked: a user's JSON, or a report of a gpua before the mark
    assert main(["evaluate", "--model", "m.gpua", "--test", "t.npz", "--json", "r2"]) == 2
    assert "--json 'r2' is a text file with no ending that is not a report gpua wrote" in capsys.readouterr().err


def test_a_cache_setting_that_is_a_file_is_named_as_the_setting(folders, capsys, monkeypatch):
    """$GPUA_CACHE_DIR on a file was reported as "out '.../classify/...npz' lies under ..." (an
    argument the user never gave); only --cache-dir was checked up front."""
    from gpua.cli import main

    important = folders / "important.txt"
    important.write_text("keep me")
    monkeypatch.setenv("GPUA_CACHE_DIR", str(important))
    argv = ["classify", "--images", "mine", "--classnames", "classes.txt", "--vfm", "planted:vfm", "--vlm", "planted:vlm",
            "--templates", "simple", "--out", "out.csv", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"$GPUA_CACHE_DIR {str(important)!r} is a file; set it to a folder, or pass --cache-dir" in err
    assert important.read_text() == "keep me"


def test_too_few_readable_photos_are_said_with_the_unreadable_count(folders):
    from gpua._errors import GPUAError

    few = folders / "few"
    few.mkdir()
    for p in sorted((folders / "more" / "2023").glob("*.png"))[:3]:
        shutil.copy(p, few / p.name)
    for i in range(3):
        (few / f"broken{i}.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="unreadable"), \
            pytest.raises(GPUAError, match=r"holds 3 readable photo\(s\) \(3 could not be read\) for 5 classes.*pool=FOLDER"):
        classify_folder("few", "classes.txt", cache_dir="cache", **PLANTED)  # was: "the unlabeled pool has 3 rows"


def test_other_class_files_keep_their_own_cached_features(folders, monkeypatch):
    """Was: one cache file per folder and encoders, whatever the class names: runs with two class
    files took turns replacing it (every photo encoded again each time), and two side by side read
    each other's file (the second one's predictions made with the first one's text prototypes)."""
    import gpua.extract

    Path("other.txt").write_text("sky\ngrass: grass, green grass\nroad\nwater\nsand\n")  # the same classes, other prompts
    zs = {**PLANTED, "overrides": None, "method": "zero_shot"}
    first = classify_folder("mine", "classes.txt", cache_dir="cache", **zs)
    second = classify_folder("mine", "other.txt", cache_dir="cache", **zs)
    assert first.features != second.features and first.features.is_file()
    monkeypatch.setattr(gpua.extract, "_encode_shard", lambda *a, **k: pytest.fail("photos were encoded again"))
    again = classify_folder("mine", "classes.txt", cache_dir="cache", **zs)
    assert again.features == first.features and again.classnames == first.classnames


@pytest.mark.parametrize("layout", ["labelled", "flat"])
def test_a_symlink_whose_target_is_gone_is_named_as_such(tmp_path, layout):
    """A dangling image link was called 'a symlink loop, or a second path to images read elsewhere'
    in a labelled folder, and left out without a word in a flat one."""
    import numpy as np
    from PIL import Image

    from gpua.data import load_dataset

    folder = tmp_path / "photos"
    where = folder / "cat" if layout == "labelled" else folder
    where.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(where / f"{i}.png")
    (where / "broken.png").symlink_to(where / "moved_away.png")
    with pytest.warns(UserWarning, match=r"left out 1 symlink\(s\) of .* whose target is missing .*'(cat/)?broken.png'") as caught:
        ds = load_dataset(str(folder), classnames=["cat"])
    assert len(ds) == 2
    assert not any("symlinks lead back" in str(w.message) for w in caught)


def test_a_folder_of_dated_sub_folders_gets_the_way_forward(tmp_path):
    """Sub-folders that are dates, not classes, got only "classnames must be the class-folder names"."""
    import numpy as np
    from PIL import Image

    from gpua.data import load_dataset

    for year in ("2023", "2024"):
        (tmp_path / "photos" / year).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / year / "a.png")
    with pytest.raises(GPUAError, match="If they are not classes .* move them into one flat folder"):
        load_dataset(str(tmp_path / "photos"), classnames=["cat", "ship"])
    (tmp_path / "photos" / "cat").mkdir()  # one folder is a class: then it is a typo, not a layout
    with pytest.raises(GPUAError, match="is not in classnames") as e:
        load_dataset(str(tmp_path / "photos"), classnames=["cat", "ship"])
    assert "flat folder" not in str(e.value)


def test_a_pool_of_unreadable_files_is_named_as_the_pool(folders):
    """'none of the 5 images could be read' did not say it was the pool, not the photos."""
    junk = folders / "junk"
    junk.mkdir()
    for i in range(5):
        (junk / f"b{i}.png").write_bytes(b"not a png")
    with pytest.raises(GPUAError, match=r"^pool '.*junk': none of the 5 images could be read"):
        classify_folder("mine", "classes.txt", pool="junk", cache_dir="cache", **PLANTED)


def test_auto_templates_follow_the_classes_not_the_folder_names(folders):
    """Was: `auto` read the folders' names as benchmarks: photos in `flowers/` got Flowers-102's one
    template, a pool in `sun/` SUN397's, and the fit's prototypes were not the zero-shot's."""
    from gpua.classify import _classify_templates
    from gpua.data.prompts import CIFAR_TEMPLATES, OPENAI_IMAGENET_TEMPLATES

    shutil.copytree("mine", "flowers")
    shutil.copytree("more", "sun")
    kw = {**PLANTED, "templates": "auto"}
    res = classify_folder("flowers", "classes.txt", pool="sun", cache_dir="cache", **kw)
    assert res.model.provenance_["templates"] == list(OPENAI_IMAGENET_TEMPLATES)
    from gpua.features import load_features

    assert [load_features(f).meta["templates"] for f in (res.features, res.pool_features)] == [list(OPENAI_IMAGENET_TEMPLATES)] * 2
    assert _classify_templates("auto", "cifar10") == list(CIFAR_TEMPLATES)  # the benchmark --classnames names
    assert _classify_templates("auto", "classes.txt") == list(OPENAI_IMAGENET_TEMPLATES)  # a file, even one named so


def test_a_folder_of_split_folders_says_how_classify_reads_one(folders, capsys):
    """Was: "pass split= one of them", an option `gpua classify` does not have."""
    from gpua.cli import main

    assert main(["classify", "--images", "photos", "--classnames", "classes.txt", "--out", "p.csv", "--vfm", "planted:vfm",
                 "--vlm", "planted:vlm", "--cache-dir", "cache", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds the split folders ['test', 'train']; give the folder of one ('photos/test'), or (with `gpua extract`, or in Python)" in err


def test_cache_names_of_deep_local_model_paths_fit_the_file_system(tmp_path):
    """Was: two local models' paths made a 300-byte cache file name, and classify failed with "File name too long"."""
    from gpua.classify import feature_cache_path

    deep = "hf:/models/" + "experiments_2026_december/" * 6
    a = feature_cache_path("classify", "photos-0123456789-abcd1234", deep + "dino", deep + "clip", tmp_path)
    b = feature_cache_path("classify", "photos-0123456789-abcd1234", deep + "dino", deep + "clip_v2", tmp_path)
    assert a != b and len(a.name.encode()) <= 204 and a.name.startswith("photos-0123456789-abcd1234__hf--models-")
    a.parent.mkdir(parents=True)
    for name in (a.name, f".{a.name}.gpua-lock", f"{a.name}.parts"):  # what extraction writes beside it
        (a.parent / name).touch()
    short = feature_cache_path("classify", "photos", "planted:vfm", "planted:vlm", tmp_path)
    assert short.name == "photos__planted-vfm__planted-vlm.npz"  # short names as before: existing caches stay found


def test_refinement_settings_without_refinement_name_the_cause(folders):
    """Was: "method 'gpua' does not apply lr=0.1 ...; drop it, or use --method gpua" to a gpua run."""
    with pytest.raises(GPUAError, match=r"overrides: lr=0.1 shape\(s\) the THS refinement, which refine=False turns off; drop it, or refine"):
        classify_folder("mine", "classes.txt", cache_dir="cache", **{**PLANTED, "overrides": {"refine": False, "lr": 0.1}})


def test_a_cache_is_tagged_when_features_are_written_there_not_when_a_path_is_asked(folders):
    """The tag `gpua cache clean` needs (a folder other than the default cache is cleaned only
    when gpua tagged it): written by the extraction, not by computing a path (was: any existing
    folder named as a cache was tagged, a new one never)."""
    from gpua.classify import feature_cache_path
    from gpua.encoders._derived import CACHE_TAG

    Path("elsewhere").mkdir()
    feature_cache_path("demo", "x", "a", "b", cache_dir="elsewhere")
    assert not Path("elsewhere", CACHE_TAG).exists()
    classify_folder("mine", "classes.txt", cache_dir="fresh-cache", **PLANTED)
    assert Path("fresh-cache", CACHE_TAG).is_file()


def test_a_clean_between_two_extractions_does_not_fail_the_run(folders, monkeypatch):
    """Was: classify returned the photos' cached features unread, extracted the pool, then read
    them: a `gpua cache clean --features` in between removed them and the run failed after all
    its encoding. Each file is read as soon as it is extracted now."""
    import gpua.extract
    from gpua.cache import clean_cache

    calls = []
    real = gpua.extract.extract_features

    def extract_then_clean(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the pool's extraction starts: a clean runs meanwhile
            clean_cache("cache", features=True)
        return real(*a, **k)

    classify_folder("mine", "classes.txt", pool="more", cache_dir="cache", **PLANTED)  # both cached
    monkeypatch.setattr(gpua.extract, "extract_features", extract_then_clean)
    res = classify_folder("mine", "classes.txt", pool="more", cache_dir="cache", **PLANTED)
    assert len(calls) == 2 and len(res.image_ids) == sum(1 for _ in Path("mine").rglob("*.png"))


def test_messages_a_users_folder_met(folders, capsys):
    """Four messages of a walk with a user's folder: "classified 1 photos"; a class file of one line
    `sky,grass,road` named one class with no hint why; an empty class folder was said to "stay a class",
    though the fit still gives it a share of the photos; a --pool's unreadable photos went unsaid."""
    from gpua.cli import main

    argv = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache",
            "--quiet", "--out", "x.csv"]
    Path("one.txt").write_text("# my classes\nsky,grass,road\n")
    assert main(["classify", "--images", "mine", "--classnames", "one.txt", *argv]) == 2
    err = capsys.readouterr().err
    assert "names 1 class ('sky')" in err and "its one line 'sky,grass,road' is one class" in err and "a line of its own" in err
    shutil.rmtree("mine/sand")
    Path("mine/sand").mkdir()
    assert main(["classify", "--images", "mine", "--classnames", "classes.txt", *argv]) == 0
    err = capsys.readouterr().err
    assert "hold no images (first: 'sand')" in err and "still gives such a class its share of the photos" in err
    Path("solo").mkdir()
    shutil.copy("mine/sky/sky_0.png", "solo/a.png")
    # a pool's unreadable photos were left out of the fit without a word (the images' are rows of the CSV)
    Path("more/2023/broken.png").write_bytes(b"")
    assert main(["classify", "--images", "mine", "--pool", "more", "--classnames", "classes.txt", *argv]) == 0
    err = capsys.readouterr().err
    assert "the pool 'more': 1 of 16 photo(s) could not be read and were left out of the fit (first: '2023/broken.png'" in err
    zero_shot = [a for a in argv if a not in ("--n-steps", "10")]  # zero_shot refines nothing: --n-steps is refused
    assert main(["classify", "--images", "solo", "--classnames", "classes.txt", "--method", "zero_shot", *zero_shot]) == 0
    assert "classified 1 photo into 5 classes" in capsys.readouterr().out


def test_evaluating_a_flat_folders_features_says_what_holds_labels(folders, capsys):
    """`gpua evaluate` on a flat folder's extraction said only "Write it with gpua.features.save_features or
    `gpua extract`": the fix for a command-line user is a folder with class sub-folders."""
    from gpua.cli import main

    planted = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple", "--cache-dir", "cache", "--quiet"]
    assert main(["classify", "--images", "mine", "--classnames", "classes.txt", "--n-steps", "10", "--out", "x.csv",
                 "--model-out", "m.gpua", *planted]) == 0
    assert main(["extract", "--data", "more/2023", "--classnames", "classes.txt", "--out", "flat.npz", *planted[:6],
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", "m.gpua", "--test", "flat.npz"]) == 2
    err = capsys.readouterr().err
    assert "has no 'labels'" in err and "extract a folder with one sub-folder per class" in err


def test_too_few_photos_is_said_in_the_callers_spelling(folders, capsys):
    """Was: one message for both, "(pool= / --pool) ... method='zero_shot' (--method zero_shot)"."""
    from gpua.cli import main

    few = Path("few")
    few.mkdir()
    for p in sorted(Path("more/2023").iterdir())[:2]:
        shutil.copy(p, few / p.name)
    n_classes = sum(1 for line in Path("classes.txt").read_text().splitlines() if line.strip())
    assert n_classes > 2
    with pytest.raises(GPUAError, match=r"holds 2 photo\(s\) for .* classes") as e:
        classify_folder("few", "classes.txt", cache_dir="cache", **PLANTED)
    assert "(pool=FOLDER), or use method='zero_shot'" in str(e.value) and "--" not in str(e.value)
    argv = ["classify", "--images", "few", "--classnames", "classes.txt", "--out", "x.csv", "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--cache-dir", "cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "(--pool FOLDER), or use --method 'zero_shot'" in err and "pool=" not in err and "method=" not in err
