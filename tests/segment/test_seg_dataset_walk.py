"""Segmentation datasets an audit found read wrongly without a word (each test failed before its fix):
symlinked sub-folders left out, a split file's repeated line scored twice, a Windows-saved split
file, and two images of one file name in two sub-folders scored against one --pred mask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.cli import main
from gpua.segment.datasets import load_segmentation_dataset


def _pair(img_dir, ann_dir, stem, value):
    """One 8x8 image and its label map, every pixel of class ``value``."""
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 40 * value, np.uint8)).save(img_dir / f"{stem}.png")
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(ann_dir / f"{stem}.png")


def test_symlinked_sub_folders_are_read(tmp_path):
    """Cityscapes' city folders linked into place from another disk (rglob did not follow them)."""
    elsewhere = tmp_path / "disk2"
    _pair(elsewhere / "img/bremen", elsewhere / "ann/bremen", "b0", 1)
    root = tmp_path / "ds"
    _pair(root / "img_dir/val/aachen", root / "ann_dir/val/aachen", "a0", 0)
    os.symlink(elsewhere / "img/bremen", root / "img_dir/val/bremen")
    os.symlink(elsewhere / "ann/bremen", root / "ann_dir/val/bremen")
    os.symlink(root / "img_dir/val", root / "img_dir/val/aachen/loop")  # a link back up the tree: read once
    ds = load_segmentation_dataset("custom", root, classnames=["a", "b"])
    assert sorted(ds.rel_stems) == ["aachen/a0", "bremen/b0"]


def test_a_repeated_split_file_line_is_refused(tmp_path):
    root = tmp_path / "voc"
    for stem in ("a", "b"):
        _pair(root / "JPEGImages", root / "SegmentationClass", stem, 0)
    (root / "JPEGImages/a.png").rename(root / "JPEGImages/a.jpg")
    (root / "JPEGImages/b.png").rename(root / "JPEGImages/b.jpg")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    split = root / "ImageSets/Segmentation/val.txt"
    split.write_text("a\nb\na\n")
    with pytest.raises(GPUAError, match=r"lists 'a' twice \(entries 1 and 3\)"):
        load_segmentation_dataset("voc", root)  # was: 3 images, a's pixels weighed twice in the mIoU
    for encoding in ("utf-16", "utf-8-sig"):  # Notepad's "Unicode", and UTF-8 with a byte-order mark
        split.write_text("a\nb\n", encoding=encoding)
        ds = load_segmentation_dataset("voc", root)  # was: UnicodeDecodeError / "missing .../\ufeffa.jpg"
        assert ds.stems == ["a", "b"]


def _nested(tmp_path):
    """A custom dataset of two images named 0001 in two scenes, with different ground truths."""
    root = tmp_path / "custom"
    _pair(root / "img_dir/val/scene1", root / "ann_dir/val/scene1", "0001", 0)
    _pair(root / "img_dir/val/scene2", root / "ann_dir/val/scene2", "0001", 1)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    return root


def _evaluate(tmp_path, root, pred):
    return ["evaluate-seg", "--pred", str(pred), "--dataset", "custom", "--root", str(root), "--classnames",
            str(tmp_path / "classes.txt"), "--json"]


def test_two_images_of_one_name_are_not_scored_against_one_flat_mask(tmp_path, capsys):
    root = _nested(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "0001.png")
    assert main(_evaluate(tmp_path, root, flat)) == 2  # was: both scored against flat/0001.png, mIoU 25
    err = capsys.readouterr().err
    assert "scene1/0001.png" in err and "file name is that of other images" in err


def test_masks_at_the_images_paths_below_the_image_folder_are_scored(tmp_path, capsys):
    root = _nested(tmp_path)
    pred = tmp_path / "pred"
    for scene in ("scene1", "scene2"):
        (pred / scene).mkdir(parents=True)
        (pred / scene / "0001.png").write_bytes((root / "ann_dir/val" / scene / "0001.png").read_bytes())
    assert main(_evaluate(tmp_path, root, pred)) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 2 and scores["mIoU"] == pytest.approx(1.0)
