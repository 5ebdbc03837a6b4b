"""Data-loading paths an audit found wrong (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.data import load_dataset
from gpua.data.prompts import resolve_templates


@pytest.mark.parametrize("first_line", ["{} in the wild.", "{c}, a type of pet.", "  {} seen from above."])
def test_a_text_template_file_may_start_with_its_placeholder(tmp_path, first_line):
    path = tmp_path / "templates.txt"
    path.write_text(f"{first_line}\na photo of a {{}}.\n")
    expected = first_line.strip().replace("{c}", "{}")  # {c} is read as {}
    assert resolve_templates(str(path)) == [expected, "a photo of a {}."]  # was: "is not valid JSON"


def test_json_in_a_text_file_is_still_json(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text('["a photo of a {}.", "a drawing of a {}."]')
    assert resolve_templates(str(path)) == ["a photo of a {}.", "a drawing of a {}."]


def test_flat_split_folders_are_not_read_as_two_classes(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / f"{i}.png")
    with pytest.raises(GPUAError, match=r"holds the split folders \['test', 'train'\]; give the folder of one .*, or \(with `gpua extract`, or in Python\) pass split= one of them"):
        load_dataset(str(tmp_path))  # was: classes ['test', 'train'], labels 0 and 1
    ds = load_dataset(str(tmp_path), split="train")
    assert len(ds) == 2 and ds.n_classes == 0  # an unlabeled pool


@pytest.mark.parametrize("channels", [3, 4])
def test_one_colour_image_without_its_batch_axis_is_refused(tmp_path, channels):
    path = tmp_path / "one.npz"
    np.savez(path, images=np.zeros((64, 48, channels), np.uint8))
    with pytest.raises(GPUAError, match=r"without a batch axis.*images\[None\]"):
        load_dataset(str(path))  # was: 64 grey images 48 x 3 pixels
    np.savez(path, images=np.zeros((5, 48, 40), np.uint8))  # grey images stay accepted
    assert len(load_dataset(str(path))) == 5


def _class_folder(folder, n=2):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")


def test_a_class_folder_linked_to_another_is_refused(tmp_path):
    _class_folder(tmp_path / "cat")
    _class_folder(tmp_path / "dog")
    (tmp_path / "kitty").symlink_to(tmp_path / "cat")
    with pytest.raises(GPUAError, match="class folders 'cat' and 'kitty' .* are one folder"):
        load_dataset(str(tmp_path))  # was: cat's images listed twice, labelled cat and kitty


@pytest.mark.parametrize("splits", [("testing", "training"), ("train2017", "val2017")])
def test_split_folders_of_other_names_are_not_read_as_classes(tmp_path, splits):
    for s in splits:
        _class_folder(tmp_path / s / "cat")
    with pytest.raises(GPUAError, match="holds the split folders"):
        load_dataset(str(tmp_path))  # was: classes ['testing', 'training'], every image labelled by its split
    assert len(load_dataset(str(tmp_path), split=splits[0])) == 2


def test_split_folders_beside_another_folder_are_named_in_a_warning(tmp_path):
    for s in ("train", "test", "extra"):
        _class_folder(tmp_path / s / "cat")
    with pytest.warns(UserWarning, match=r"folders named like splits \('test', 'train'\) beside 1 other"):
        ds = load_dataset(str(tmp_path))  # was: classes ['extra', 'test', 'train'] without a word
    assert ds.classnames == ["extra", "test", "train"]


def test_one_channels_first_image_is_not_read_as_grey_images():
    torch = pytest.importorskip("torch")
    from gpua.encoders._preprocess import as_image_list

    chw = np.zeros((3, 16, 12), np.uint8)
    for images in (chw, torch.from_numpy(chw)):  # torchvision.io.read_image's (C, H, W)
        with pytest.raises(GPUAError, match=r"channels-first image or as 3 grey images.*transpose\(1, 2, 0\)"):
            as_image_list(images)  # was: three grey 16x12 images, three feature rows for one photo
    assert len(as_image_list(chw.transpose(1, 2, 0)[None])) == 1
    assert len(as_image_list(np.zeros((5, 16, 12), np.uint8))) == 5  # five grey images: not ambiguous


def test_fgvc_trainval_holding_train_and_val_is_not_leakage(tmp_path, make_image):
    import warnings

    root = tmp_path / "fgvc_aircraft"
    root.mkdir()
    (root / "variants.txt").write_text("707-320\nA300B4\n")
    (root / "images_variant_train.txt").write_text("1000001 707-320\n")
    (root / "images_variant_val.txt").write_text("1000002 A300B4\n")
    (root / "images_variant_trainval.txt").write_text("1000001 707-320\n1000002 A300B4\n")  # the official layout
    (root / "images_variant_test.txt").write_text("1000002 A300B4\n")  # real leakage
    for i in (1, 2):
        make_image(root / "images" / f"100000{i}.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(root, "train")  # was: "data leakage" on every load of the official layout
    for split in ("val", "trainval"):
        with pytest.warns(UserWarning, match=r"also in split 'test' .* leakage") as caught:
            load_dataset(root, split)  # 1000002 is also in test: that one is named
        assert len(caught) == 1


def test_split_file_names_in_another_unicode_form_match(tmp_path, make_image):
    import unicodedata

    root = tmp_path / "fgvc_aircraft"
    root.mkdir()
    (root / "variants.txt").write_text("Cessna 172\nBeagl\u00e9\n")
    (root / "images_variant_train.txt").write_text("1000001 Beagl\u00e9\n")
    make_image(root / "images" / "1000001.jpg")
    nfd = unicodedata.normalize("NFD", "Beagl\u00e9")
    ds = load_dataset(root, "train", ["Cessna 172", nfd])  # was: "class 1 is 'Beaglé' in classnames but 'Beaglé'"
    assert ds.labels.tolist() == [1]


def test_template_files_drop_trailing_comments_and_template_strings_are_named(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}.  # the default\n'a sketch of a {}.',  # CLIP\n#{} of the day\n")
    assert resolve_templates(str(path)) == ["a photo of a {}.", "a sketch of a {}.", "#{} of the day"]
    with pytest.raises(GPUAError, match="is a template, not a file or a template set's name; pass a list"):
        resolve_templates("a photo of a {}.")  # was: "template file ... does not exist"
    bracket = tmp_path / "bracket.txt"
    bracket.write_text("[{}] photo\n")
    with pytest.raises(GPUAError, match="begin it with a '# ...' comment line"):
        resolve_templates(str(bracket))
    bracket.write_text("# templates\n[{}] photo\n")
    assert resolve_templates(str(bracket)) == ["[{}] photo"]


def test_a_dict_of_classnames_is_read_as_the_same_object_in_a_file():
    from gpua.data.classnames import resolve_class_prompts
    from gpua.data.prompts import build_text_prototypes

    assert resolve_class_prompts({"automobile": "car, automobile", "cat": ["cat", "Cat"]}) == (
        ["automobile", "cat"], [["car", "automobile"], ["cat"]])  # was: the word "car, automobile"
    with pytest.raises(GPUAError, match="a word may belong to one class only"):
        resolve_class_prompts({"cat": ["Cat"], "kitty": ["cat"]})  # was: accepted

    def encode(prompts):  # one direction per word: the prototype of a class shows which words it read
        vocab = ["car", "automobile", "cat", "x"]
        return np.array([[float(w in p.split()) for w in vocab] for p in prompts]) + 1e-3

    Y = build_text_prototypes(encode, {"automobile": ["car", "automobile"], "cat": ["cat"]}, ["a {}"])
    assert Y[0, 0] > 0.5 and Y[0, 1] > 0.5  # was: the words dropped, only "automobile" prompted


def test_transparent_colour_keys_are_composited_onto_white(tmp_path):
    from gpua.data import to_rgb

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.png", transparency=0)
    out = np.asarray(to_rgb(Image.open(tmp_path / "rgb.png")))
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [255, 255, 255]  # was: black
    assert np.asarray(to_rgb(Image.open(tmp_path / "grey.png")))[0, 0].tolist() == [255, 255, 255]


def test_images_with_other_endings_are_named_when_left_out(tmp_path):
    _class_folder(tmp_path / "cat")
    (tmp_path / "cat" / "0.png").rename(tmp_path / "cat" / "tweet.jpg_large")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"left out 1 file\(s\) .* hold images .* \(first: 'cat/tweet.jpg_large'\)"):
        ds = load_dataset(str(tmp_path))  # was: left out without a word
    assert len(ds) == 1
