"""gpua.data as a demanding user drives it: each slip is one GPUAError naming the file and the fix,
never a wrong label, an image left out unseen, or a traceback from deep inside."""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import load_dataset, read_fashion_mnist, read_idx, sample_pool
from gpua.data.prompts import get_templates


# ------------------------------------------------------------------ CoOp split files
@pytest.fixture
def split_dir(tmp_path, make_image):
    """A folder with images/ (a.png, b.png, c.png, sub/d.png) where split files are written."""
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        make_image(tmp_path / "images" / name)
    return tmp_path


def write_split(folder: Path, splits: dict, name: str = "split_zhou_Mine.json") -> Path:
    p = folder / name
    p.write_text(json.dumps(splits))
    return p


def test_windows_paths_and_float_labels_are_read(split_dir):
    ds = load_dataset(write_split(split_dir, {"train": [["sub\\d.png", 0, "x"], ["a.png", 1.0, "y"]]}), "train")
    assert ds.image_ids == ["sub/d.png", "a.png"] and ds.labels.tolist() == [0, 1]
    assert ds.load_image(0).mode == "RGB"


@pytest.mark.parametrize("entries, missing", [
    ([["a.png", 0, "x"], ["zz.png", 1, "y"]], "'zz.png'"),   # a typo beyond the first image
    ([["a.png", 0, "x"], ["B.PNG", 0, "x"]], "'B.PNG'"),     # another letter case than on disk
    ([["a.png", 0, "x"], ["sub", 0, "x"]], "'sub'"),          # a folder
])
def test_every_listed_image_must_be_a_file(split_dir, entries, missing):
    """Before: only the first image was looked for; the others failed one by one at encoding."""
    p = write_split(split_dir, {"train": entries})
    with pytest.raises(GPUAError, match=rf"split 'train': 1 of its 2 images are not files under .*images'?: {missing}\. "
                                        r"Fix those paths.*pass image_root="):
        load_dataset(p, "train")


def test_an_empty_split_is_refused(split_dir):
    """Before: a dataset of 0 images."""
    p = write_split(split_dir, {"train": [["a.png", 0, "x"]], "val": []})
    with pytest.raises(GPUAError, match=r"split 'val' of split file 'split_zhou_Mine.json' lists no images; the splits "
                                        r"with images are \['train'\]"):
        load_dataset(p, "val")


@pytest.mark.parametrize("entries, said", [
    ([["a.png", 0, "x"], ["a.png", 0, "x"]], r"'a.png' twice \(entry 0 and entry 1\)"),
    ([["a.png", 0, "x"], ["a.png", 1, "y"]], r"'a.png' twice \(entry 0 and entry 1 with the labels 0 and 1\)"),
    ([["./a.png", 0, "x"], ["a.png", 0, "x"]], r"'a.png' twice \(entry 0 and entry 1\)"),
    ([["sub/d.png", 0, "x"], ["sub\\d.png", 0, "x"]], r"'sub/d.png' twice \(entry 0 and entry 1\)"),
])
def test_an_image_listed_twice_is_refused(split_dir, entries, said):
    """Before: the image was counted twice, or carried two labels."""
    with pytest.raises(GPUAError, match=rf"split 'train' lists the image {said}; list each image once"):
        load_dataset(write_split(split_dir, {"train": entries}), "train")


@pytest.mark.parametrize("entry, said", [
    (["a.png", True, "y"], "expected \\[relative_path, label >= 0, classname\\]"),  # before: class 1
    (["a.png", 0, ""], "whose class name is empty"),                                  # before: a class ''
    (["a.png", 0, "  "], "whose class name is empty"),
    (["", 0, "x"], "whose image path is empty"),
    (["a.png", float("inf"), "x"], "expected \\[relative_path"),                     # before: OverflowError
])
def test_malformed_entries(split_dir, entry, said):
    with pytest.raises(GPUAError, match=rf"entry 0 of split 'train' is .*{said}"):
        load_dataset(write_split(split_dir, {"train": [entry, ["b.png", 1, "other"]]}), "train")


def test_a_stray_huge_label_is_a_quick_error(split_dir):
    """Before: the label check built set(range(max label + 1)): 10**12 filled the memory."""
    p = write_split(split_dir, {"train": [["a.png", 10**12, "x"], ["b.png", 0, "y"]]})
    with pytest.raises(GPUAError, match=r"no image with label 1, .*its labels run up to 1000000000000\); labels must be 0..K-1"):
        load_dataset(p, "train")


@pytest.mark.parametrize("names", [("Cat", "cat"), ("cat ", "cat"), ("american_bulldog", "american bulldog")])
def test_class_names_giving_one_prompt_are_refused(split_dir, names):
    """Before: two classes with the same text prototype, which no fit can tell apart."""
    p = write_split(split_dir, {"train": [["a.png", 0, names[0]], ["b.png", 1, names[1]]]})
    with pytest.raises(GPUAError, match=r"names label 0 .* and label 1 .*differ only in case, '_' versus space.*same prompt"):
        load_dataset(p, "train")


def test_a_split_file_not_in_utf8_says_how_to_save_it(split_dir):
    """Before: "could not be read as JSON ('utf-8' codec can't decode byte 0xe9 ...)", no fix."""
    p = split_dir / "split_zhou_Mine.json"
    p.write_bytes('{"train": [["a.png", 0, "caf\xe9"]]}'.encode("latin-1"))
    with pytest.raises(GPUAError, match=r"is not UTF-8 text: line 1 holds the byte 0xe9.*Save it as UTF-8"):
        load_dataset(p, "train")


# ------------------------------------------------------------------ FGVC-Aircraft and ImageNet layouts
@pytest.fixture
def fgvc(tmp_path, make_image):
    root = tmp_path / "fgvc_aircraft"
    root.mkdir()
    (root / "variants.txt").write_text("707-320\nA300B4\n")
    for i in (1, 2, 3):
        make_image(root / "images" / f"{i}.jpg")
    return root


@pytest.mark.parametrize("lines, said", [
    ("1 707-320\n2 A300B4\n1 A300B4\n", r"images_variant_train.txt lists the image '1.jpg' twice \(line 1 and line 3 with "
                                        r"the labels 0 and 1\)"),
    ("1 707-320\n4 A300B4\n", r"images_variant_train.txt: 1 of its 2 images are not files under .*'4.jpg'"),
    ("\n", r"images_variant_train.txt of .* lists no images; the split 'train' is empty"),
])
def test_fgvc_image_lists(fgvc, lines, said):
    (fgvc / "images_variant_train.txt").write_text(lines)
    with pytest.raises(GPUAError, match=said):
        load_dataset(fgvc, "train")


def test_fgvc_variants_file(fgvc):
    (fgvc / "images_variant_train.txt").write_text("1 707-320\n")
    (fgvc / "variants.txt").write_text("707-320\nA300B4\n707-320\n")
    with pytest.raises(GPUAError, match="names the variant '707-320' twice"):
        load_dataset(fgvc, "train")
    (fgvc / "variants.txt").write_bytes("707-320\ncaf\xe9\n".encode("latin-1"))  # before: UnicodeDecodeError
    with pytest.raises(GPUAError, match=r"variants.txt' is not UTF-8 text: line 2"):
        load_dataset(fgvc, "train")


@pytest.fixture
def imagenet(tmp_path, make_image):
    root = tmp_path / "imagenet"
    make_image(root / "images" / "train" / "n00000001" / "a.JPEG")
    make_image(root / "images" / "train" / "n00000002" / "b.JPEG")
    make_image(root / "images" / "val" / "n00000002" / "c.JPEG")
    (root / "classnames.txt").write_text("n00000001 cat\nn00000002 dog\n")
    return root


def test_imagenet_val_without_a_class_keeps_the_labels(imagenet):
    """Before: val's only folder became class 0 ('cat' in train): every dog labelled cat."""
    with pytest.warns(UserWarning, match=r"no folder for 1 class\(es\) of its sibling split folders \(first: 'n00000001'\)"):
        val = load_dataset(imagenet, "test")
    assert val.classnames == ["cat", "dog"] and val.labels.tolist() == [1]


def test_imagenet_classnames_file(imagenet):
    (imagenet / "classnames.txt").write_text("n00000001 cat\nn00000002 dog\nn00000001 kitten\n")
    with pytest.raises(GPUAError, match=r"line 3 names the folder 'n00000001' 'kitten', but an earlier line 'cat'"):
        load_dataset(imagenet, "train")  # before: the last line won, silently
    (imagenet / "classnames.txt").write_text("n00000001 Cat\nn00000002 cat\n")
    with pytest.raises(GPUAError, match="same prompt"):
        load_dataset(imagenet, "train")
    (imagenet / "classnames.txt").write_bytes("n00000001 caf\xe9\nn00000002 dog\n".encode("latin-1"))
    with pytest.raises(GPUAError, match="is not UTF-8 text: line 1"):  # before: UnicodeDecodeError
        load_dataset(imagenet, "train")


# ------------------------------------------------------------------ image folders
def test_a_split_folder_without_a_class_keeps_the_labels(tmp_path, make_image):
    """root/test without one of root/train's classes: before, the later classes' labels shifted by one."""
    for split, classes in (("train", "abc"), ("test", "ac")):
        for c in classes:
            make_image(tmp_path / split / c / "1.png")
    train = load_dataset(tmp_path, "train")
    with pytest.warns(UserWarning, match=r"test' has no folder for 1 class\(es\).*\(first: 'b'\); they stay classes with no "
                                         "images here"):
        test = load_dataset(tmp_path, "test")
    assert test.classnames == train.classnames == ["a", "b", "c"]
    assert test.labels.tolist() == [0, 2]
    with pytest.warns(UserWarning, match="no folder for 1 class"):
        assert load_dataset(tmp_path, "test", classnames=["c", "b", "a"]).labels.tolist() == [2, 0]


@pytest.mark.filterwarnings("error")
def test_split_folders_copied_from_macos_still_share_their_classes(tmp_path, make_image):
    """The union of the splits' class folders compares names by their composed form: a train
    split with decomposed names (macOS) and a test split with composed ones are the same classes."""
    import unicodedata

    make_image(tmp_path / "train" / unicodedata.normalize("NFD", "café") / "1.png")
    make_image(tmp_path / "train" / "dog" / "2.png")
    make_image(tmp_path / "test" / unicodedata.normalize("NFC", "café") / "3.png")
    make_image(tmp_path / "test" / "dog" / "4.png")
    train, test = load_dataset(tmp_path, "train"), load_dataset(tmp_path, "test")  # no warning: no class is absent
    assert train.classnames == test.classnames == ["café", "dog"] and test.labels.tolist() == [0, 1]


@pytest.mark.parametrize("folders", [("Cat", "cat"), ("american bulldog", "american_bulldog")])
def test_class_folders_giving_one_prompt_are_refused(tmp_path, make_image, folders):
    for f in folders:
        make_image(tmp_path / f / "1.png")
    with pytest.raises(GPUAError, match=rf"class folders '{folders[0]}' and '{folders[1]}' of .* are two classes, which "
                                        "differ only in case"):
        load_dataset(tmp_path)


def test_upper_case_endings_are_images_and_other_image_formats_are_named(tmp_path, make_image):
    make_image(tmp_path / "cat" / "A.PNG")
    make_image(tmp_path / "cat" / "b.JPEG")
    make_image(tmp_path / "dog" / "c.Jpg")
    make_image(tmp_path / "dog" / "icon.ico")  # before: left out without a word
    (tmp_path / "dog" / "tex.TGA").write_bytes(b"\0" * 20)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"left out 2 photo\(s\) .*\(.ico: 1, .tga: 1; first: 'dog/icon.ico'\)"):
        ds = load_dataset(tmp_path)
    assert ds.image_ids == ["cat/A.PNG", "cat/b.JPEG", "dog/c.Jpg"] and ds.labels.tolist() == [0, 0, 1]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names are Unicode there")
@pytest.mark.parametrize("bad, shown", [(b"caf\xe9/1.png", r"b'caf\\xe9'"), (b"dog/\xff.png", r"b'dog/\\xff.png'")])
def test_names_that_are_not_utf8_are_refused(tmp_path, make_image, bad, shown):
    """Before: 'caf\\udce9' became a class name (and 'dog/\\udcff.png' an image id) that a prompt, a
    results file or a print fails on later, deep inside."""
    make_image(tmp_path / "cats" / "0.png")
    target = os.fsencode(tmp_path) + b"/" + bad
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        make_image(Path(os.fsdecode(target)))
    except OSError:  # pragma: no cover - a file system that keeps only Unicode names
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(GPUAError, match=rf"the name {shown} in .* is not UTF-8 .*Rename it in UTF-8, e.g. convmv"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------ Fashion-MNIST
def _idx(path: Path, array: np.ndarray, code: int) -> None:
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0D: ">f4"}[code]
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(dtype).tobytes())


@pytest.fixture
def fmnist(tmp_path):
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), 0x08)
    return tmp_path


@pytest.mark.parametrize("labels, code, said", [
    (np.array([0, -1, 2]), 0x09, "holds label -1; Fashion-MNIST has 10 classes"),      # before: -1, "unlabeled"
    (np.array([0.0, 1.5, 2.0]), 0x0D, "holds float32 labels"),                          # before: 1.5 read as 1
])
def test_fashion_mnist_labels_that_are_no_class(fmnist, labels, code, said):
    _idx(fmnist / "t10k-labels-idx1-ubyte.gz", labels, code)
    with pytest.raises(GPUAError, match=said):
        load_dataset("fashion-mnist", "test", image_root=fmnist)


def test_fashion_mnist_slips(fmnist):
    _idx(fmnist / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2]), 0x08)
    with pytest.raises(GPUAError, match=r"split=\['test'\]; Fashion-MNIST has the splits"):  # before: TypeError
        read_fashion_mnist(["test"], fmnist)
    with pytest.raises(GPUAError, match="image_root .* is a file; pass the folder"):
        load_dataset("fashion-mnist", "test", image_root=fmnist / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(GPUAError, match="is a folder; pass one idx file"):
        read_idx(fmnist)
    _idx(fmnist / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)), 0x08)
    _idx(fmnist / "t10k-labels-idx1-ubyte.gz", np.zeros(0), 0x08)
    with pytest.raises(GPUAError, match="holds no images"):  # before: a dataset of 0 images
        load_dataset("fashion-mnist", "test", image_root=fmnist)


# ------------------------------------------------------------------ pools and templates
@pytest.fixture(scope="module")
def train():
    return load_dataset("cifar10-mini", "train")


def test_pool_argument_slips(train):
    with pytest.raises(GPUAError, match="class_balanced must be True or False, got 'no'"):
        sample_pool(train, 2, class_balanced="no")  # before: read as true, a pool balanced with the labels
    with pytest.raises(GPUAError, match="seed must be a non-negative integer or None, got 'a'"):
        sample_pool(train, 2, seed="a")  # before: TypeError from numpy
    with pytest.raises(GPUAError, match="ds is a ndarray; pass a dataset"):
        sample_pool(np.zeros((3, 3)), 2)  # before: AttributeError
    with pytest.raises(GPUAError, match="holds no images"):
        sample_pool(train.subset([]), 2, class_balanced=False)  # before: an empty pool
    with pytest.warns(UserWarning, match="size=5000 is more than the 1000 images"):
        assert len(sample_pool(train, 2, class_balanced=False, size=5000)) == 1000
    assert len(sample_pool(train, 2, seed=None)) == 20


def test_a_folder_of_templates_is_not_called_missing(tmp_path):
    with pytest.raises(GPUAError, match="is a folder; pass a file of templates"):
        get_templates(tmp_path)  # before: "template file ... does not exist."
