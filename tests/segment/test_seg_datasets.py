"""Dataset readers on tiny fake trees in mmseg layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.segment.datasets import DATASET_PRESETS, load_segmentation_dataset, prompt_name


def _write(tree: Path, rel_img: str, rel_ann: str, raw: np.ndarray, *, palette: bool = False) -> None:
    img = tree / rel_img
    ann = tree / rel_ann
    img.parent.mkdir(parents=True, exist_ok=True)
    ann.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (*raw.shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img)
    lab = Image.fromarray(raw.astype(np.uint8), mode="L")
    if palette:  # VOC masks are palette PNGs: indices are stored, colours only shown
        lab = lab.convert("P")
        lab.putpalette(list(np.random.default_rng(1).integers(0, 255, 768, dtype=np.uint8)))
    lab.save(ann)


RAW = np.array([[0, 1, 2, 255], [3, 0, 1, 2]])


def test_voc(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2012"
    for stem in ("2007_000032", "2007_000039", "2008_000001"):
        _write(root, f"JPEGImages/{stem}.jpg", f"SegmentationClass/{stem}.png", RAW, palette=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000039\n2007_000032\n")
    ds = load_segmentation_dataset("voc", root)
    assert len(ds) == 2 and ds.items[0][0].name == "2007_000039.jpg"  # split-file order
    image, label = ds[0]
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, RAW)  # palette indices, not colours
    assert len(ds.classnames) == 21 and ds.classnames[0] == "background"
    assert "potted plant" in ds.prompt_names and "tv monitor" in ds.prompt_names
    ds20 = load_segmentation_dataset("voc20", root)
    np.testing.assert_array_equal(ds20[0][1], [[255, 0, 1, 255], [2, 255, 0, 1]])
    assert len(ds20.classnames) == 20


def test_pascal_context(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2010"
    _write(root, "JPEGImages/2008_000002.jpg", "SegmentationClassContext/2008_000002.png", RAW)
    (root / "ImageSets/SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    ds59 = load_segmentation_dataset("context59", root)
    np.testing.assert_array_equal(ds59[0][1], [[255, 0, 1, 255], [2, 255, 0, 1]])  # reduce_zero_label
    assert len(ds59.classnames) == 59 and ds59.classnames[0] == "aeroplane"
    ds60 = load_segmentation_dataset("context60", root)
    np.testing.assert_array_equal(ds60[0][1], RAW)
    assert len(ds60.classnames) == 60


def test_ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for stem in ("ADE_val_00000002", "ADE_val_00000001"):
        _write(root, f"images/validation/{stem}.jpg", f"annotations/validation/{stem}.png", RAW)
    ds = load_segmentation_dataset("ade20k", root)  # split "val" -> folder "validation"
    assert [p.name for p, _ in ds.items] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    np.testing.assert_array_equal(ds[0][1], [[255, 0, 1, 255], [2, 255, 0, 1]])
    assert len(ds.classnames) == 150 and ds.classnames[:3] == ["wall", "building", "sky"]
    assert ds.classnames[7] == "bed"  # mmseg's "bed " with its stray space


def test_coco_stuff(tmp_path):
    root = tmp_path / "coco_stuff164k"
    _write(root, "images/val2017/000000000139.jpg", "annotations/val2017/000000000139_labelTrainIds.png", RAW)
    ds = load_segmentation_dataset("coco_stuff", root)
    np.testing.assert_array_equal(ds[0][1], RAW)
    assert len(ds.classnames) == 171 and ds.classnames[-1] == "wood"
    assert prompt_name("wall-brick") == "wall brick" and prompt_name("sky-other") == "sky"


def test_cityscapes_nested_city_folders(tmp_path):
    root = tmp_path / "cityscapes"
    for city, stem in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")):
        _write(
            root,
            f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png",
            f"gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png",
            RAW,
        )
    ds = load_segmentation_dataset("cityscapes", root)
    assert len(ds) == 2 and ds.items[1][1].name == "lindau_000000_000019_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(ds[1][1], RAW)
    assert len(ds.classnames) == 19 and ds.classnames[-1] == "bicycle"


def test_custom_img_dir_ann_dir(tmp_path):
    _write(tmp_path, "img_dir/val/a.jpg", "ann_dir/val/a.png", RAW)
    with pytest.raises(GPUAError, match="classnames"):
        load_segmentation_dataset("custom", tmp_path)
    ds = load_segmentation_dataset("custom", tmp_path, classnames=["w", "x", "y", "z"])
    np.testing.assert_array_equal(ds[0][1], RAW)


def test_every_preset_has_unique_names():
    for name, p in DATASET_PRESETS.items():
        assert len(set(p.classnames)) == len(p.classnames), name


def test_layout_errors(tmp_path):
    with pytest.raises(GPUAError, match="not known"):
        load_segmentation_dataset("kitti", tmp_path)
    with pytest.raises(GPUAError, match="image folder .* does not exist"):
        load_segmentation_dataset("ade20k", tmp_path)
    _write(tmp_path, "JPEGImages/a.jpg", "SegmentationClass/a.png", RAW)
    with pytest.raises(GPUAError, match="split file"):
        load_segmentation_dataset("voc", tmp_path)
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    with pytest.raises(GPUAError, match="1 image/label file"):
        load_segmentation_dataset("voc", tmp_path)


def test_mask_image_size_mismatch_and_colour_masks(tmp_path):
    _write(tmp_path, "img_dir/val/a.jpg", "ann_dir/val/a.png", RAW)
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "ann_dir/val/a.png")
    ds = load_segmentation_dataset("custom", tmp_path, classnames=["x", "y", "z", "w"])
    with pytest.raises(GPUAError, match=r"is 3x4 but its image is 2x4"):
        ds[0]
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "ann_dir/val/a.png")
    with pytest.raises(GPUAError, match="colour image"):
        ds[0]
