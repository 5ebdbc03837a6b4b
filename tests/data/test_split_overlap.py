"""An image listed in two splits (train and test) is data leakage: loading either split warns, naming it."""

from __future__ import annotations

import json
import os
import sys
import warnings

import pytest

from gpua.data import load_dataset

pytest.importorskip("PIL")


def _overlap_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "also in" in str(w.message)]


def _leaky(coop_pets, *moves) -> None:
    """Add the train entries at ``moves`` (indices) to the test split too."""
    f = coop_pets / "split_zhou_OxfordPets.json"
    split = json.loads(f.read_text())
    for i in moves:
        split["test"].append(list(split["train"][i]))
    f.write_text(json.dumps(split))


def test_an_image_in_train_and_test_of_a_split_file_warns_once_on_either_load(coop_pets):
    _leaky(coop_pets, 0, 4)
    for split, other in (("train", "test"), ("test", "train")):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ds = load_dataset(coop_pets, split=split)  # refused no: a transductive run may do this knowingly
        found = _overlap_warnings(rec)
        assert len(found) == 1, found
        msg = found[0]
        assert f"2 image(s) of split {split!r}" in msg and f"split {other!r}" in msg
        assert "'abyssinian_0.jpg'" in msg and "remove" in msg
        assert rec[[str(w.message) for w in rec].index(msg)].filename == __file__  # points at the caller
        assert len(ds) == (9 if split == "train" else 8)


def test_paths_that_name_one_file_differently_count_as_one(coop_pets):
    f = coop_pets / "split_zhou_OxfordPets.json"
    split = json.loads(f.read_text())
    split["val"].append(["./" + split["train"][1][0], *split["train"][1][1:]])
    f.write_text(json.dumps(split))
    with pytest.warns(UserWarning, match=r"1 image\(s\) of split 'train' are also in split 'val' .*'abyssinian_1.jpg'"):
        load_dataset(coop_pets, split="train")


def test_disjoint_splits_do_not_warn(coop_pets):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for split in ("train", "val", "test"):
            load_dataset(coop_pets, split=split)


def test_an_overlap_between_two_other_splits_is_not_this_loads_concern(coop_pets):
    f = coop_pets / "split_zhou_OxfordPets.json"
    split = json.loads(f.read_text())
    split["test"].append(list(split["val"][0]))
    f.write_text(json.dumps(split))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(coop_pets, split="train")
    with pytest.warns(UserWarning, match="also in split 'val'"):
        load_dataset(coop_pets, split="test")


def _fgvc(tmp_path, make_image):
    root = tmp_path / "fgvc_aircraft"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("707-320\nA300B4\n")
    for i in range(6):
        make_image(root / "images" / f"{1000 + i}.jpg", value=20 * i)
    (root / "images_variant_train.txt").write_text("1000 707-320\n1001 A300B4\n1002 707-320\n1003 A300B4\n")
    (root / "images_variant_test.txt").write_text("1004 707-320\n1005 A300B4\n1001 A300B4\n")
    return root


def test_fgvc_lists_naming_one_image_in_two_splits_warn(tmp_path, make_image):
    root = _fgvc(tmp_path, make_image)
    with pytest.warns(UserWarning, match=r"1 image\(s\) of split 'test' are also in split 'train' .*'1001.jpg'"):
        ds = load_dataset(root, split="test")
    assert len(ds) == 3


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs symlinks")
def test_an_image_folder_whose_test_class_folder_is_the_train_one_warns(tmp_path, make_image):
    root = tmp_path / "photos"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            if split == "test" and cls == "dog":
                continue
            for j in range(2):
                make_image(root / split / cls / f"{split}{j}.png", value=10 * j)
    (root / "test" / "dog").symlink_to(root / "train" / "dog", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"2 image\(s\) of split 'test' are also in split 'train'.*'dog/train0.png'"):
        ds = load_dataset(root, split="test")
    assert len(ds) == 4
    # Folders with the same file names but their own files are independent splits (CIFAR exports).
    (root / "test" / "dog").unlink()
    for j in range(2):
        make_image(root / "test" / "dog" / f"train{j}.png", value=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(root, split="test")
        load_dataset(root, split="train")
