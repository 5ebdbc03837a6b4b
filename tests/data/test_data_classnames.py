"""Shipped class-name lists and class-name files."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from gpua._errors import GPUAError
from gpua.data.classnames import COOP_DATASETS, KNOWN_DATASETS, get_classnames, load_classnames

EXPECTED = {
    "imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102,
    "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101,
    "cifar10": 10, "cifar100": 100, "fashion_mnist": 10,
}


def test_the_11_coop_datasets():
    assert COOP_DATASETS == ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                             "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
    assert set(KNOWN_DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shipped_lists(name):
    names = get_classnames(name)
    assert len(names) == EXPECTED[name] == len(set(names))
    assert all(n and n == n.strip() for n in names)


def test_spot_checks_against_coop_naming():
    assert get_classnames("OxfordPets")[:2] == ["abyssinian", "american_bulldog"]
    assert get_classnames("Caltech101")[:5] == ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert get_classnames("EuroSAT")[0] == "Annual Crop Land"
    assert get_classnames("ucf101")[0] == "Apply_Eye_Makeup"
    assert get_classnames("sun397")[8] == "outdoor apartment_building"
    assert get_classnames("stanford_cars")[0] == "2000 AM General Hummer SUV"
    assert get_classnames("flowers102")[0] == "pink primrose"
    food = get_classnames("food-101")
    assert food.index("cheese_plate") + 1 == food.index("cheesecake")  # Python-sorted folders
    imagenet = get_classnames("ImageNet")
    assert imagenet[0] == "tench" and imagenet[744] == "projectile" and imagenet[836] == "sunglass"
    assert imagenet[657] == "missile" and imagenet[837] == "sunglasses"


def test_returns_a_fresh_list():
    a = get_classnames("cifar10")
    a.append("x")
    assert len(get_classnames("cifar10")) == 10


def test_unknown_dataset():
    with pytest.raises(GPUAError, match="no class-name list .* 'mnist'.*known: imagenet"):
        get_classnames("mnist")


def test_load_text_json_and_index_dict(tmp_path):
    (tmp_path / "c.txt").write_text("\ufeffcat\n\n dog \r\nsea lion\n")
    assert load_classnames(tmp_path / "c.txt") == ["cat", "dog", "sea lion"]
    (tmp_path / "c.json").write_text(json.dumps(["a", "b"]))
    assert load_classnames(tmp_path / "c.json") == ["a", "b"]
    (tmp_path / "cat_to_name.json").write_text(json.dumps({"2": "b", "10": "c", "1": "a"}))
    assert load_classnames(tmp_path / "cat_to_name.json") == ["a", "b", "c"]
    (tmp_path / "inet.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    assert load_classnames(tmp_path / "inet.txt") == ["tench", "goldfish"]


def test_duplicates_and_bad_files(tmp_path):
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(GPUAError, match="dup.txt.*duplicate name 'cat'"):
        load_classnames(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(GPUAError, match="empty"):
        load_classnames(tmp_path / "empty.txt")
    (tmp_path / "bad.json").write_text(json.dumps(["a", 3]))
    with pytest.raises(GPUAError, match="entry 1"):
        load_classnames(tmp_path / "bad.json")
    with pytest.raises(GPUAError, match="does not exist"):
        load_classnames(tmp_path / "missing.txt")


def test_lists_are_declared_package_data():
    """A wheel carries non-Python files only if pyproject's package-data names them."""
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gpua"]
    shipped = [f"data/classnames/{f.name}" for f in resources.files("gpua.data.classnames").iterdir()
               if f.name.endswith(".txt")]
    assert len(shipped) == len(EXPECTED)
    undeclared = [f for f in shipped if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not undeclared, f"add 'data/classnames/*.txt' to [tool.setuptools.package-data] gpua; missing {undeclared[:2]}"


def test_one_format_with_synonyms_and_folder_mapping(tmp_path):
    from gpua.data.classnames import load_class_prompts, parse_class_entries

    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nairplane\nautomobile: car, automobile\nbackground, sky, wall\n\n")
    assert load_classnames(f) == ["airplane", "automobile", "background"]
    names, words = load_class_prompts(f)
    assert words == [["airplane"], ["car", "automobile"], ["background", "sky", "wall"]]
    (tmp_path / "c.json").write_text(json.dumps({"automobile": ["car", "automobile"], "cat": "kitten"}))
    assert load_class_prompts(tmp_path / "c.json") == (["automobile", "cat"], [["car", "automobile"], ["kitten"]])
    with pytest.raises(GPUAError, match="'car' stands for class 0 and class 1"):
        parse_class_entries(["automobile: car", "truck: car, lorry"])
    with pytest.raises(GPUAError, match="no class name"):
        parse_class_entries(["cat", ": kitten"])


def test_match_classes_by_name():
    from gpua.data.classnames import match_classes

    m = match_classes(["cat", "dog", "american_bulldog"], ["American bulldog", "cat", "dog"])
    assert m.by_name and m.reordered and m.index.tolist() == [2, 0, 1]
    assert m.map_labels([0, 1, 2]).tolist() == [2, 0, 1]
    assert match_classes(["a", "b"], ["a", "b"]).index is None
    with pytest.raises(GPUAError, match="only in the data: 'c'; only in the model: 'b'"):
        match_classes(["a", "b"], ["a", "c"])
    with pytest.raises(GPUAError, match="2 classes but the model has 3"):
        match_classes(None, ["a", "b"], n_model=3)
    m = match_classes(None, ["a", "b"], n_model=2)
    assert not m.by_name and m.index is None and "by index" in m.note


def test_flat_folder_and_class_folders_read_the_format(tmp_path):
    """extract refused what fit-seg accepted, and read 'automobile, car' on a flat folder as one class."""
    from PIL import Image

    from gpua.data import load_dataset

    (tmp_path / "classes.txt").write_text("automobile: car, automobile\ncat, kitten\n")
    for folder in ("flat", "labelled/automobile", "labelled/cat"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.png")
    flat = load_dataset(tmp_path / "flat", classnames=tmp_path / "classes.txt")
    assert flat.classnames == ["automobile", "cat"]
    labelled = load_dataset(tmp_path / "labelled", classnames=tmp_path / "classes.txt")
    assert labelled.classnames == ["automobile", "cat"] and [labelled.label(i) for i in range(2)] == [0, 1]
