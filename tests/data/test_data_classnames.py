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
    "cifar10": 10, "cifar100": 100,
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
