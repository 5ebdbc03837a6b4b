"""CoOp layouts: split_zhou_*.json, FGVC-Aircraft, ImageNet."""

from __future__ import annotations

import json

import pytest

from gpua._errors import GPUAError
from gpua.data import FileImageDataset, load_dataset
from gpua.data.classnames import get_classnames


def test_split_file_train_and_test(coop_pets):
    tr = load_dataset(coop_pets / "split_zhou_OxfordPets.json", split="train")
    te = load_dataset(coop_pets, split="test")  # the folder holding the split file works too
    assert isinstance(tr, FileImageDataset)
    assert tr.name == "oxford_pets" and tr.split == "train"
    assert tr.classnames == ["abyssinian", "american_bulldog", "beagle"] == te.classnames
    assert len(tr) == 9 and len(te) == 6
    assert tr.image_id(0) == "abyssinian_0.jpg" and tr.root == coop_pets / "images"
    assert te.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert te.load_image(3).mode == "RGB"


def test_missing_split_lists_splits_present(coop_pets):
    with pytest.raises(GPUAError, match=r"no split 'trainval'.*\['train', 'val', 'test'\]"):
        load_dataset(coop_pets, split="trainval")
    with pytest.raises(GPUAError, match=r"holds the splits \['train', 'val', 'test'\]; pass split="):
        load_dataset(coop_pets)


def test_classnames_must_match_the_split_file(coop_pets):
    ok = load_dataset(coop_pets, "train", ["abyssinian", "american_bulldog", "beagle"])
    assert ok.classnames[1] == "american_bulldog"
    with pytest.raises(GPUAError, match="class 1 is 'american bulldog' in classnames but 'american_bulldog'"):
        load_dataset(coop_pets, "train", ["abyssinian", "american bulldog", "beagle"])
    with pytest.raises(GPUAError, match="2 names but .* 3 classes"):
        load_dataset(coop_pets, "train", ["abyssinian", "american_bulldog"])
    # The shipped 37-class list is checked the same way (the toy file has 3 classes).
    with pytest.raises(GPUAError, match="class 2 is 'american_pit_bull_terrier' in classnames but 'beagle'"):
        load_dataset(coop_pets, "train", "oxford_pets")


def test_explicit_image_root(coop_pets, tmp_path):
    moved = tmp_path / "elsewhere"
    (coop_pets / "images").rename(moved)
    with pytest.raises(GPUAError, match="abyssinian_0.jpg.*pass image_root="):
        load_dataset(coop_pets, "train")
    ds = load_dataset(coop_pets, "train", image_root=moved)
    assert ds.root == moved and ds.load_image(0).size == (6, 5)
    with pytest.raises(GPUAError, match="does not hold"):
        load_dataset(coop_pets, "train", image_root=tmp_path)


def test_coop_image_folder_per_dataset(tmp_path, make_image):
    # EuroSAT's images live in 2750/, not images/.
    root = tmp_path / "eurosat"
    make_image(root / "2750" / "Forest" / "Forest_1.jpg")
    make_image(root / "2750" / "River" / "River_1.jpg")
    split = {"train": [["Forest/Forest_1.jpg", 0, "Forest"], ["River/River_1.jpg", 1, "River"]], "val": [], "test": []}
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    ds = load_dataset(root, "train")
    assert ds.name == "eurosat" and ds.root == root / "2750" and len(ds) == 2


def test_unknown_dataset_name_falls_back_to_images_folder(tmp_path, make_image):
    make_image(tmp_path / "images" / "a.png")
    (tmp_path / "split_zhou_MyThing.json").write_text(json.dumps({"test": [["a.png", 0, "thing"]]}))
    ds = load_dataset(tmp_path / "split_zhou_MyThing.json", "test")
    assert ds.name == "MyThing" and ds.classnames == ["thing"]


def test_malformed_split_files(tmp_path, make_image):
    make_image(tmp_path / "images" / "a.png")
    p = tmp_path / "split_zhou_X.json"
    p.write_text("{not json")
    with pytest.raises(GPUAError, match="could not be read as JSON"):
        load_dataset(p, "train")
    p.write_text(json.dumps({"train": [["a.png", "zero", "a"]]}))
    with pytest.raises(GPUAError, match="entry 0 of split 'train'"):
        load_dataset(p, "train")
    p.write_text(json.dumps({"train": [["a.png", 0, "a"]], "test": [["a.png", 0, "b"]]}))
    with pytest.raises(GPUAError, match="label 0 both 'a' and 'b'"):
        load_dataset(p, "train")
    p.write_text(json.dumps({"train": [["a.png", 1, "b"]]}))
    with pytest.raises(GPUAError, match="no image with label 0"):
        load_dataset(p, "train")
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(GPUAError, match="not a CoOp split file"):
        load_dataset(p, "train")


def test_label_space_spans_all_splits(tmp_path, make_image):
    make_image(tmp_path / "images" / "a.png")
    make_image(tmp_path / "images" / "b.png")
    make_image(tmp_path / "images" / "c.png")
    split = {"train": [["a.png", 0, "a"]], "test": [["c.png", 0, "a"], ["b.png", 1, "b"]]}
    (tmp_path / "split_zhou_Y.json").write_text(json.dumps(split))
    assert load_dataset(tmp_path, "train").classnames == ["a", "b"]


def test_fgvc_aircraft_layout(tmp_path, make_image):
    root = tmp_path / "fgvc_aircraft"
    (root).mkdir()
    (root / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    (root / "images_variant_train.txt").write_text("1000001 F/A-18\n1000002 707-320\n")
    (root / "images_variant_test.txt").write_text("1000003 A300B4\n")
    for i in (1, 2, 3):
        make_image(root / "images" / f"100000{i}.jpg")
    ds = load_dataset(root, "train")
    assert ds.name == "fgvc_aircraft" and ds.classnames == ["707-320", "A300B4", "F/A-18"]
    assert ds.image_ids == ["1000001.jpg", "1000002.jpg"] and ds.labels.tolist() == [2, 0]
    assert ds.load_image(0).mode == "RGB"
    with pytest.raises(GPUAError, match=r"\['test', 'train'\]"):
        load_dataset(root, "val")
    with pytest.raises(GPUAError, match="class 1 is 'A300' in classnames but 'A300B4'"):
        load_dataset(root, "train", ["707-320", "A300", "F/A-18"])
    (root / "images").rename(tmp_path / "imgs")
    with pytest.raises(GPUAError, match="1000001.jpg.*pass image_root="):
        load_dataset(root, "train")
    assert load_dataset(root, "train", image_root=tmp_path / "imgs").root == tmp_path / "imgs"


def test_imagenet_layout_with_clip_duplicate_names(tmp_path, make_image):
    # CoOp's classnames.txt copies CLIP's names, which call two pairs of classes alike.
    clip = get_classnames("imagenet")
    clip[744], clip[836] = "missile", "sunglasses"
    wnids = [f"n{i:08d}" for i in range(1000)]
    root = tmp_path / "imagenet"
    root.mkdir()
    (root / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(wnids, clip)))
    for w in wnids:
        (root / "images" / "val" / w).mkdir(parents=True)
    make_image(root / "images" / "val" / wnids[0] / "x.JPEG")
    make_image(root / "images" / "val" / wnids[744] / "y.JPEG")
    with pytest.warns(UserWarning, match="hold no images"):
        ds = load_dataset(root, "test")  # "test" reads val/, as in CoOp
    assert ds.name == "imagenet" and ds.split == "val"
    assert ds.classnames == get_classnames("imagenet")
    assert [ds.classnames[y] for y in ds.labels] == ["tench", "projectile"]
    with pytest.raises(GPUAError, match=r"no split 'train'.*\['val'\]"):
        load_dataset(root, "train")
    with pytest.warns(UserWarning):
        assert load_dataset(root, "val", "imagenet").classnames[836] == "sunglass"
    with pytest.raises(GPUAError, match="class 0 is 'tinca' in classnames but 'tench' in classnames.txt"):
        load_dataset(root, "val", ["tinca"] + get_classnames("imagenet")[1:])
