"""Image folders: labeled, unlabeled, splits, class names, bad layouts."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import FileImageDataset, load_dataset


def test_labeled_folder_sorted_classes_and_files(labeled_folder):
    ds = load_dataset(labeled_folder)
    assert isinstance(ds, FileImageDataset)
    assert ds.classnames == ["bird", "cat", "dog"]
    assert ds.name == "animals" and ds.split is None
    assert len(ds) == 9
    assert ds.image_id(0) == "bird/00.png" and ds.image_id(4) == "cat/00.png"
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0] * 4 + [1] * 2 + [2] * 3
    assert ds.label(8) == 2
    assert ds.load_image(5).mode == "RGB"
    assert ds.path(0) == labeled_folder / "bird" / "00.png"


def test_non_images_hidden_files_and_nested_folders(tmp_path, make_image):
    root = tmp_path / "r"
    make_image(root / "a" / "x.jpg")
    make_image(root / "a" / "deeper" / "y.PNG")
    (root / "a" / "notes.txt").write_text("ignore me")
    make_image(root / "a" / ".hidden.png")
    make_image(root / "b" / "z.webp")
    ds = load_dataset(root)
    # A folder's own files first, then its sub-folders (as torchvision's ImageFolder orders them).
    assert ds.image_ids == ["a/x.jpg", "a/deeper/y.PNG", "b/z.webp"]
    assert ds.labels.tolist() == [0, 0, 1]


def test_unlabeled_flat_folder(tmp_path, make_image):
    for n in ("b.png", "a.jpg", "c.bmp"):
        make_image(tmp_path / "pool" / n)
    ds = load_dataset(tmp_path / "pool", classnames=["cat", "dog"])
    assert ds.image_ids == ["a.jpg", "b.png", "c.bmp"]
    assert ds.labels.tolist() == [-1, -1, -1] and ds.label(0) == -1
    assert ds.classnames == ["cat", "dog"]
    assert load_dataset(tmp_path / "pool").classnames == []


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPUAError, match="holds no images"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(GPUAError, match="holds no images"):
        load_dataset(tmp_path / "empty")


def test_missing_path(tmp_path):
    with pytest.raises(GPUAError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_split_subfolder_and_missing_split_lists_present(tmp_path, make_image):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            make_image(tmp_path / "d" / split / cls / "1.png")
    ds = load_dataset(tmp_path / "d", split="test")
    assert ds.split == "test" and ds.classnames == ["a", "b"] and len(ds) == 2
    with pytest.raises(GPUAError, match=r"no split folder 'val'.*\['test', 'train'\]"):
        load_dataset(tmp_path / "d", split="val")
    # Without split= the split folders must not silently become classes.
    with pytest.raises(GPUAError, match=r"split folders \['test', 'train'\]; give the folder of one .*pass split="):
        load_dataset(tmp_path / "d")


def test_loose_images_beside_class_folders(labeled_folder, make_image):
    make_image(labeled_folder / "stray.png")
    with pytest.raises(GPUAError, match="loose image.*stray.png"):
        load_dataset(labeled_folder)


def test_empty_class_folder_warns_and_stays_a_class(labeled_folder):
    (labeled_folder / "eel").mkdir()
    with pytest.warns(UserWarning, match="'eel'"):
        ds = load_dataset(labeled_folder)
    assert ds.classnames == ["bird", "cat", "dog", "eel"]
    assert not np.any(ds.labels == 3)


def test_user_classnames_reorder_labels(labeled_folder):
    ds = load_dataset(labeled_folder, classnames=["dog", "cat", "bird"])
    assert ds.classnames == ["dog", "cat", "bird"]
    assert ds.labels.tolist() == [2] * 4 + [1] * 2 + [0] * 3  # bird files come first on disk
    assert ds.classnames[ds.label(0)] == "bird"


def test_user_classnames_must_name_the_folders(labeled_folder):
    with pytest.raises(GPUAError, match="class folder 'cat' .* not in classnames"):
        load_dataset(labeled_folder, classnames=["bird", "kitten", "dog"])
    with pytest.raises(GPUAError, match="'fish', which is not a class folder"):
        load_dataset(labeled_folder, classnames=["bird", "cat", "dog", "fish"])


def test_duplicate_user_classnames(labeled_folder):
    with pytest.raises(GPUAError, match="duplicate name 'cat'"):
        load_dataset(labeled_folder, classnames=["cat", "cat", "dog"])


def test_wordnet_folders_take_names_in_sorted_order(tmp_path, make_image):
    for wnid in ("n01443537", "n01440764"):
        make_image(tmp_path / "val" / wnid / "a.JPEG")
    with pytest.warns(UserWarning, match="paired by sorted-folder position: n01440764 -> 'tench'"):
        ds = load_dataset(tmp_path / "val", classnames=["tench", "goldfish"])
    assert ds.image_ids[0].startswith("n01440764/") and ds.classnames[ds.label(0)] == "tench"
    with pytest.raises(GPUAError, match="3 names but .* 2 class folders"):
        load_dataset(tmp_path / "val", classnames=["tench", "goldfish", "shark"])


def test_subset_keeps_kind_and_label_space(labeled_folder):
    ds = load_dataset(labeled_folder)
    sub = ds.subset([8, 0])
    assert isinstance(sub, FileImageDataset)
    assert sub.image_ids == ["dog/02.png", "bird/00.png"]
    assert sub.labels.tolist() == [2, 0] and sub.classnames == ds.classnames
    assert sub.load_image(0).size == (6, 5)
    mask = ds.labels == 1
    assert ds.subset(mask).image_ids == ["cat/00.png", "cat/01.png"]
    assert len(ds.subset([])) == 0
    with pytest.raises(GPUAError, match="outside"):
        ds.subset([9])
    with pytest.raises(GPUAError, match="out of range"):
        ds.image_id(9)


def test_name_override(labeled_folder):
    assert load_dataset(labeled_folder, name="zoo").name == "zoo"


def test_unsupported_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(GPUAError, match="reads folders"):
        load_dataset(tmp_path / "x.csv")
