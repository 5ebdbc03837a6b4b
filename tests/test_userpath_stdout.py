"""``--out -`` of the prediction CSVs (stdout, never a file named ``-``), and photos saved without a file extension.

Each test failed before its fix (noted as "was: ...").
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import warnings

import pytest

from gpua.cli import main

# Their HEIC files are gpua without pillow-heif (with it: tests/data/test_data_heif.py).
pytestmark = pytest.mark.usefixtures("without_heif")

CLI = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple", "--n-steps", "10", "--cache-dir", "cache", "--quiet"]
PLANTED = {"vfm": "planted:vfm", "vlm": "planted:vlm", "templates": "simple", "progress": False,
           "overrides": {"n_steps": 10, "self_learning": 0}}


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


# -- 1. --out - : the CSV on stdout, everything else on stderr --------------------------------------
@pytest.fixture
def fitted(planted, tmp_path, monkeypatch):
    """A model fitted on the planted train set, and the planted test features; the working folder is tmp_path."""
    from gpua.features import save_features

    train, test = planted
    paths = {}
    for name, part in (("train", train), ("test", test)):
        paths[name] = save_features(tmp_path / f"{name}.npz", vfm_features=part.vfm_features, vlm_features=part.vlm_features,
                                    text_prototypes=part.text_prototypes, labels=part.labels, classnames=part.classnames)
    assert main(["fit", "--train", str(paths["train"]), "--out", str(tmp_path / "m.gpua"), "--n-steps", "5", "--no-progress"]) == 0
    monkeypatch.chdir(tmp_path)
    return tmp_path / "m.gpua", paths["test"]


def test_predict_out_dash_writes_the_csv_to_stdout_alone(fitted, tmp_path, capsys):
    model, test = fitted
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--features", str(test), "--out", str(tmp_path / "p.csv")]) == 0
    in_file = (tmp_path / "p.csv").read_bytes().decode("utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--features", str(test), "--out", "-", "--top-k", "5"]) == 0
    out, err = capsys.readouterr()
    # was: a file named "-" in the working folder, and "wrote 1200 predictions to -" on stdout
    assert not (tmp_path / "-").exists()
    assert out == in_file  # exactly the CSV a file gets, nothing else
    rows = _rows(out)
    assert len(rows) == 1200 and list(rows[0])[:3] == ["image", "prediction", "probability"]
    assert "wrote 1200 predictions to stdout" in err


def test_classify_out_dash_writes_the_csv_to_stdout_alone(photos, monkeypatch, capsys):
    monkeypatch.chdir(photos)
    (photos / "flat" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "-", *CLI]) == 0
    out, err = capsys.readouterr()
    assert not (photos / "-").exists()  # was: a file named "-"
    rows = _rows(out)  # was: stdout held the summary, no CSV
    assert len(rows) == 16 and list(rows[0])[:3] == ["image", "prediction", "probability"]
    assert sum(r["prediction"] == "" for r in rows) == 1 and "HEIC/HEIF" in rows[-1]["error"]
    assert "classified 15 of 16 photos" in err and "wrote stdout" not in err
    assert "the CSV on stdout lists them" in err and "1 photo(s) are in formats gpua does not decode" in err


def test_classify_refuses_model_out_dash(photos, monkeypatch, capsys):
    monkeypatch.chdir(photos)
    code = main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "p.csv", "--model-out", "-", *CLI])
    err = capsys.readouterr().err
    # was: the model saved in a file named "-"
    assert code != 0 and not (photos / "-").exists() and not (photos / "p.csv").exists()
    assert "--model-out -" in err and "stdout" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_file_outputs_refuse_dash(fitted, tmp_path, capsys, command):
    model, test = fitted
    argv = {"fit": ["fit", "--train", str(test), "--out", "-", "--n-steps", "5", "--no-progress"],
            "evaluate": ["evaluate", "--model", str(model), "--test", str(test), "--plot", "-"]}[command]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    # was: a model file (or a plot) named "-" in the working folder
    assert code != 0 and not (tmp_path / "-").exists()
    assert " - : this command writes a file there, not to stdout" in err and len(err.strip().splitlines()) == 1


def test_out_help_says_dash_is_stdout(capsys):
    for cmd in ("predict", "classify"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "'-': write the CSV to stdout" in text, cmd


# -- 2. photos saved without a file extension ---------------------------------------------------------
def _extensionless(folder):
    """In ``folder``: ``IMG_0001`` (a PNG without its ending), ``notes`` (text), a hidden PNG, ``.DS_Store``."""
    shutil.copy(next(iter(sorted(folder.glob("*.png")))), folder / "IMG_0001")
    (folder / "notes").write_text("not a photo\n")
    shutil.copy(next(iter(sorted(folder.glob("*.png")))), folder / ".hidden")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))


def test_classify_gives_an_extensionless_photo_a_row(photos, monkeypatch, capsys):
    monkeypatch.chdir(photos)
    _extensionless(photos / "flat")
    assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "p.csv", *CLI]) == 0
    rows = list(csv.DictReader(open(photos / "p.csv", encoding="utf-8")))
    ids = [r["image"] for r in rows]
    # was: 15 rows, IMG_0001 left out without a word
    assert len(ids) == 16 and "IMG_0001" in ids
    assert next(r for r in rows if r["image"] == "IMG_0001")["prediction"] != ""
    assert not {"notes", ".hidden", ".DS_Store"} & set(ids)
    assert "classified 16 photos" in capsys.readouterr().out


def test_an_output_may_not_replace_an_extensionless_photo(photos, monkeypatch, capsys):
    monkeypatch.chdir(photos)
    _extensionless(photos / "flat")
    before = (photos / "flat" / "IMG_0001").read_bytes()
    code = main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "flat/IMG_0001", *CLI])
    err = capsys.readouterr().err
    # was: allowed (the input check knew photos by their ending), the photo replaced by the CSV
    assert code != 0 and "would overwrite a file inside --images" in err
    assert (photos / "flat" / "IMG_0001").read_bytes() == before
    # nor a user's text file without an ending (was: replaced, "as any non-input file"); a report gpua wrote there may be
    assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "flat/notes", *CLI]) == 2
    assert "is a text file with no ending that is not a report gpua wrote" in capsys.readouterr().err
    assert (photos / "flat" / "notes").read_text() == "not a photo\n"
    for _ in range(2):
        assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "flat/preds", *CLI]) == 0


def test_the_listing_reads_extensionless_photos_in_class_folders_too(photos):
    """The loader's walk (gpua extract, benchmark, classify alike): a labelled folder, and the scan classify counts with."""
    from gpua.classify import _scan_folder
    from gpua.data import load_dataset

    sky = photos / "photos" / "test" / "sky"
    _extensionless(sky)
    ds = load_dataset(photos / "photos" / "test")
    ids = list(ds.image_ids)
    assert any(i.endswith("sky/IMG_0001") for i in ids)  # was: left out
    assert not any(i.endswith(("notes", ".hidden", ".DS_Store")) for i in ids)
    assert len(ds) == 16
    assert _scan_folder(photos / "photos" / "test") == ([], 16)
    flat = load_dataset(photos / "flat")
    _extensionless(photos / "flat")
    assert len(load_dataset(photos / "flat")) == len(flat) + 1
    assert _scan_folder(photos / "flat") == ([], 16)


def test_without_pillow_extensionless_files_are_left_out_without_a_crash(photos, monkeypatch):
    from gpua.data._loaders import _subdirs, _walk_class_folders

    base = photos / "photos" / "test"
    _extensionless(base / "sky")
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = _walk_class_folders(base, _subdirs(base))
    assert "IMG_0001" not in files["sky"] and len(files["sky"]) == 3


def test_segment_lists_extensionless_photos_too(tmp_path):
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    from gpua.cli.segment import _list_images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "IMG_0002", format="JPEG")
    (tmp_path / "notes").write_text("not a photo\n")
    # was: only a.png (fit-seg and segment listed by ending)
    assert [p.name for p in _list_images(str(tmp_path))] == ["IMG_0002", "a.png"]
