"""Third user-path audit: outputs beside the photos, and a model's record of the rows it was fitted on.

Each test failed before its fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpua.cli import main

ENC = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple", "--n-steps", "5", "--quiet"]


def _classify(images, out, *extra, cache="cache"):
    return main(["classify", "--images", str(images), "--classnames", "classes.txt", "--out", str(out),
                 "--cache-dir", str(cache), *ENC, *extra])


@pytest.fixture
def here(photos, monkeypatch):
    """Inside the photos' parent: a flat folder ``flat/`` and a labelled one ``mine/`` (class sub-folders)."""
    shutil.copytree(photos / "photos" / "test", photos / "mine")
    monkeypatch.chdir(photos)
    return photos


# ---------------------------------------------------------------- Problem A: the output-into-input guard


def test_the_same_classify_command_runs_twice_with_its_outputs_in_the_photo_folder(here, monkeypatch):
    monkeypatch.chdir(here / "flat")  # cd photos && gpua classify --images . --out predictions.csv
    argv = ("--model-out", "model.gpua")
    assert main(["classify", "--images", ".", "--classnames", "../classes.txt", "--out", "predictions.csv",
                 "--cache-dir", "../cache", *ENC, *argv]) == 0
    first = Path("predictions.csv").read_text()
    # was: refused, "--out 'predictions.csv' would overwrite a file inside --images '.'"
    assert main(["classify", "--images", ".", "--classnames", "../classes.txt", "--out", "predictions.csv",
                 "--cache-dir", "../cache", *ENC, *argv]) == 0
    assert Path("predictions.csv").read_text() == first and Path("model.gpua").is_file()


def test_a_model_out_inside_the_photo_folder_can_be_replaced(here):
    assert _classify("flat", "p.csv", "--model-out", "flat/model.gpua") == 0
    assert _classify("flat", "p.csv", "--model-out", "flat/model.gpua") == 0  # was: refused the second time


@pytest.mark.parametrize("victim", ["sky_0.png", "SKY.JPG", "feats.npz", "z.npy", "f.safetensors", "index.json"])
def test_an_output_over_a_file_the_command_could_read_is_still_refused(here, capsys, victim):
    src = here / "flat" / "sky_0.png"
    target = here / "flat" / victim
    if not target.exists():
        target.write_bytes(src.read_bytes())
    before = target.read_bytes()
    assert _classify("flat", f"flat/{victim}") == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--images" in err and "destroy the input" in err, err
    assert target.read_bytes() == before


def test_an_output_through_a_link_onto_an_input_image_is_still_refused(here, capsys):
    link = here / "link.csv"
    link.symlink_to(here / "flat" / "sky_0.png")
    before = (here / "flat" / "sky_0.png").read_bytes()
    assert _classify("flat", link) == 2
    assert "--images" in capsys.readouterr().err
    assert (here / "flat" / "sky_0.png").read_bytes() == before


def test_an_output_creating_a_new_sub_folder_of_a_labelled_folder_is_refused(here, capsys):
    # was: accepted, and the next run failed "class folder 'results' ... is not in classnames"
    assert _classify("mine", "mine/results/pred.csv") == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--images" in err and "'results'" in err and "class" in err, err
    assert not (here / "mine" / "results").exists()
    assert _classify("mine", "mine/.results/pred.csv") == 0  # a hidden folder is not read as a class
    assert _classify("mine", "mine/pred.csv") == 0  # beside the class folders: not a class
    assert _classify("mine", "mine/pred.csv") == 0  # and again
    assert _classify("flat", "flat/results/pred.csv") == 0  # a flat folder has no classes to spoil
    assert _classify("mine", "mine/.results/pred.csv") == 0


# ---------------------------------------------------------------- Problem B: provenance of the fitted rows


def test_a_models_provenance_counts_the_rows_it_was_fitted_on(here):
    from gpua import load_model

    for name in ("a.png", "b.png", "c.jpg"):
        (here / "flat" / name).write_bytes(b"not an image")
    n_files = sum(1 for _ in (here / "flat").iterdir())
    assert _classify("flat", "p.csv", "--model-out", "m.gpua") == 0  # the 3 unreadable files are skipped
    feats = load_model(here / "m.gpua").provenance_["features"]
    assert feats["n_images"] == n_files - 3  # was: the folder's file count, rows skipped included
    assert feats["n_skipped"] == 3
