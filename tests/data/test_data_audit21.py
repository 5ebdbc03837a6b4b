"""Session 21's audit of datasets, class names and prompts: each test says what happened before."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import load_dataset


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)


def test_npz_bytes_class_names_and_ids_are_decoded(tmp_path):
    """Was: ``"b'cat'"`` as the class name (and in every prompt), ``"b'x/0.jpg'"`` as the id."""
    p = tmp_path / "bytes.npz"
    np.savez(p, images=_images(2), labels=np.array([0, 1]), classnames=np.array([b"cat", "café".encode()]),
             source_paths=np.array([b"x/0.jpg", b"x/1.jpg"]))
    ds = load_dataset(p)
    assert ds.classnames == ["cat", "café"]
    assert [ds.image_id(i) for i in range(2)] == ["x/0.jpg", "x/1.jpg"]


@pytest.mark.parametrize("names, match", [
    (np.array("cat,dog"), r"classnames is an array of shape \(\)"),  # was: one class per letter
    (np.array([["cat", "dog"]]), r"classnames is an array of shape \(1, 2\)"),
    (np.array([1.0, 2.0]), "classnames has dtype float64, not text"),
    (np.array([b"\xff\xfe"]), "not UTF-8"),
])
def test_npz_class_names_that_are_not_one_text_per_class_are_refused(tmp_path, names, match):
    p = tmp_path / "odd.npz"
    np.savez(p, images=_images(2), labels=np.array([0, 0]), classnames=names)
    with pytest.raises(GPUAError, match=match):
        load_dataset(p)


def test_the_shipped_imagenet_list_pairs_wordnet_folders_without_a_warning(tmp_path, make_image, recwarn):
    """The shipped ImageNet names are in sorted WordNet-id order by construction: no warning there,
    where a user's own plain list for id-named folders now gets one (test_data_audit_ids_links_splits)."""
    from gpua.data.classnames import get_classnames

    names = get_classnames("imagenet")
    for i in range(len(names)):
        (tmp_path / "val" / f"n{i:08d}").mkdir(parents=True)
    make_image(tmp_path / "val" / "n00000000" / "a.png")
    ds = load_dataset(tmp_path / "val", classnames="imagenet")
    assert ds.classnames == names and not [w for w in recwarn if "WordNet" in str(w.message)]


@pytest.mark.parametrize("folders, names", [
    (["Cat", "Dog"], ["cat", "dog"]),
    (["polar bear", "sea lion"], ["polar_bear", "sea_lion"]),
    (["american_bulldog", "Abyssinian"], ["American bulldog", "abyssinian"]),
])
def test_class_folders_match_names_up_to_case_and_underscores(tmp_path, make_image, folders, names):
    """Was: "class folder 'Cat' ... is not in classnames ... move them into one flat folder"."""
    for v, f in enumerate(folders):
        make_image(tmp_path / "d" / f / "a.png", value=10 * v)
    ds = load_dataset(tmp_path / "d", classnames=list(reversed(names)))
    assert ds.classnames == list(reversed(names))  # the user's spelling and order
    by_folder = {ds.image_ids[i].split("/")[0]: ds.classnames[ds.label(i)] for i in range(len(ds))}
    assert by_folder == dict(zip(folders, names))


def test_a_folder_missing_from_names_is_still_named_when_others_match_by_case(tmp_path, make_image):
    for f in ("Cat", "Dog", "Bird"):
        make_image(tmp_path / "d" / f / "a.png")
    with pytest.raises(GPUAError, match="class folder 'Bird' of .* is not in classnames"):
        load_dataset(tmp_path / "d", classnames=["cat", "dog", "fish"])


@pytest.mark.parametrize("names", [["Cat", "cat"], ["sea_lion", "sea lion", "ship"]])
def test_a_list_of_names_that_give_one_prompt_is_refused_up_front(tmp_path, make_image, names):
    """Was: accepted, then refused after the encoders loaded with a message blaming the tokenizer's
    characters (a dict or a file of the same names was refused at once)."""
    make_image(tmp_path / "flat" / "a.png")
    with pytest.raises(GPUAError, match=r"classnames: the class names .* \(entry 0\) and .* \(entry 1\) differ only in case, '_'"):
        load_dataset(tmp_path / "flat", classnames=names)


def test_an_unreadable_photo_gets_its_folders_label_whatever_the_folder_is_called(tmp_path):
    """Was: an empty label for an unreadable photo of a WordNet-id or decomposed-accent (macOS)
    class folder: the folder's name was compared with the class names as spelled."""
    import csv
    import unicodedata

    from gpua.report import write_predictions

    nfd = unicodedata.normalize("NFD", "café")
    ids = ["n02121808/a.jpg", f"{nfd}/b.jpg"]
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    unreadable = [("n02121808/bad.jpg", "broken"), (f"{nfd}/bad.jpg", "broken"), ("Sea_Lion/bad.jpg", "broken"),
                  ("n09999999/bad.jpg", "broken"), ("loose.jpg", "broken")]
    out = tmp_path / "p.csv"
    write_predictions(out, [(ids, proba, np.array([0, 1]))], ["cat", "café", "sea lion"], unreadable=unreadable)
    rows = {r["image"]: r["label"] for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["n02121808/bad.jpg"] == "cat"  # its readable photos' label
    assert rows[f"{nfd}/bad.jpg"] == "café"
    assert rows["Sea_Lion/bad.jpg"] == "sea lion"  # no readable photo: the class its name spells
    assert rows["n09999999/bad.jpg"] == "" and rows["loose.jpg"] == ""


def test_extract_auto_templates_know_a_benchmark_by_its_data_or_classnames_not_a_folder_name(tmp_path, make_image):
    """Was: a folder called ``pets`` took Oxford Pets' one CoOp prompt, and classnames='cifar10' on a
    folder called ``photos`` took the 80 ImageNet templates (``classify`` did neither)."""
    from gpua.data.prompts import CIFAR_TEMPLATES, DATASET_TEMPLATES, OPENAI_IMAGENET_TEMPLATES
    from gpua.extract import _resolve_templates

    for folder in ("pets", "photos"):
        make_image(tmp_path / folder / "a.png")
    pets = load_dataset(tmp_path / "pets", classnames=["cat", "dog"])
    assert _resolve_templates("auto", pets, str(tmp_path / "pets"), ["cat", "dog"]) == list(OPENAI_IMAGENET_TEMPLATES)
    np.savez(tmp_path / "food.npz", images=_images(2))
    food = load_dataset(tmp_path / "food.npz", classnames=["soup", "cake"])
    assert _resolve_templates(None, food, tmp_path / "food.npz", ["soup", "cake"]) == list(OPENAI_IMAGENET_TEMPLATES)
    photos = load_dataset(tmp_path / "photos", classnames="cifar10")
    assert _resolve_templates("auto", photos, str(tmp_path / "photos"), "cifar10") == list(CIFAR_TEMPLATES)
    demo = load_dataset("cifar10-mini", split="test")
    assert _resolve_templates("auto", demo, "cifar10-mini", None) == list(DATASET_TEMPLATES["cifar10"]) == list(CIFAR_TEMPLATES)


def test_a_hashtag_placeholder_mid_line_is_not_a_comment(tmp_path):
    """Was: "template 0 'a photo tagged' has no class-name placeholder" for 'a photo tagged #{} on instagram.'."""
    from gpua.data.prompts import get_templates

    f = tmp_path / "t.txt"
    f.write_text("a photo tagged #{} on instagram.\na photo of a {}. # the plain one\n#{c} of the day\n")
    assert get_templates(f) == ["a photo tagged #{} on instagram.", "a photo of a {}.", "#{} of the day"]  # {c} reads as {}


def test_tilde_paths_from_python_are_the_home_folder(tmp_path, monkeypatch, make_image):
    """Was: classify_folder("~/photos", "~/classes.txt") said "images='~/photos' is not a folder",
    classnames='~/classes.txt' "is neither a file nor a known dataset", and templates='~/t.txt'
    was looked up as a template set's name (the shell expands ~ for the command line only)."""
    from gpua.classify import classify_folder
    from gpua.data.prompts import get_templates

    monkeypatch.setenv("HOME", str(tmp_path))
    for c in ("sky", "grass"):
        for i in range(2):
            make_image(tmp_path / "photos" / c / f"{i}.png", size=(32, 32), value=40 * i + (0 if c == "sky" else 120))
    (tmp_path / "classes.txt").write_text("sky\ngrass\n")
    (tmp_path / "t.txt").write_text("a photo of a {}.\n")
    assert len(load_dataset("~/photos", classnames="~/classes.txt")) == 4
    assert get_templates("~/t.txt") == ["a photo of a {}."]
    res = classify_folder("~/photos", "~/classes.txt", method="zero_shot", vfm="planted:vfm", vlm="planted:vlm",
                          templates="~/t.txt", progress=False, cache_dir="~/cache")
    assert len(res.image_ids) == 4 and (tmp_path / "cache").is_dir()


def test_a_fifo_named_like_an_image_in_a_class_folder_is_skipped_with_a_warning(tmp_path, make_image):
    """Was: listed as an image, and extraction waited forever opening it (Ctrl-C did not stop it)."""
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    make_image(tmp_path / "d" / "cat" / "a.png")
    make_image(tmp_path / "d" / "dog" / "b.png")
    os.mkfifo(tmp_path / "d" / "cat" / "pipe.jpg")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) .* not regular files .*'cat/pipe.jpg'"):
        ds = load_dataset(tmp_path / "d")
    assert sorted(ds.image_ids) == ["cat/a.png", "dog/b.png"]


def test_extract_auto_templates_of_a_coop_benchmark_folder_are_the_benchmarks(coop_pets):
    """Was (in this session's first fix): a folder holding its split_zhou_*.json was taken for a
    user's folder, and got the 80 ImageNet templates instead of Oxford Pets' CoOp prompt."""
    from gpua.data.prompts import DATASET_TEMPLATES
    from gpua.extract import _resolve_templates

    ds = load_dataset(coop_pets, split="test")
    assert _resolve_templates("auto", ds, str(coop_pets), None) == list(DATASET_TEMPLATES["oxford_pets"])


def test_npz_numbered_image_ids_still_load_and_a_bad_dtype_is_said_as_such(tmp_path):
    """Was (in this session's first fix): integer image_ids refused, with a message about Python objects."""
    p = tmp_path / "ids.npz"
    np.savez(p, images=_images(3), labels=np.array([0, 1, 0]), classnames=np.array(["cat", "dog"]), image_ids=np.arange(3))
    assert [load_dataset(p).image_id(i) for i in range(3)] == ["0", "1", "2"]
    np.savez(p, images=_images(3), labels=np.array([0, 1, 0]), classnames=np.array([1.5, 2.5]))
    with pytest.raises(GPUAError, match="classnames has dtype float64, not text") as info:
        load_dataset(p)
    assert "Python objects" not in str(info.value)


def test_an_unreadable_photos_label_is_not_taken_from_a_folder_of_several_classes(tmp_path):
    """Was (in this session's first fix): SUN397-style ids a/abbey/1.jpg, a/airport/2.jpg gave an
    unreadable a/airport/3.jpg the label of the first photo under "a" (abbey)."""
    import csv

    from gpua.report import write_predictions

    out = tmp_path / "p.csv"
    write_predictions(out, [(["a/abbey/1.jpg", "a/airport/2.jpg"], np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]))],
                      ["abbey", "airport"], top_k=1, unreadable=[("a/airport/3.jpg", "broken")])
    rows = {r["image"]: r["label"] for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["a/airport/3.jpg"] == ""


def test_a_split_file_of_another_machines_absolute_paths_is_said_so(tmp_path, make_image):
    """Was: "pass image_root= the folder its paths start from", which failed again: a root joined
    with an absolute path is the absolute path."""
    import json

    make_image(tmp_path / "images" / "cat" / "a.jpg")
    split = {"train": [["/home/someone/data/images/cat/a.jpg", 0, "cat"]], "test": []}
    (tmp_path / "split_zhou_Mine.json").write_text(json.dumps(split))
    for kw in ({}, {"image_root": tmp_path / "images"}):
        with pytest.raises(GPUAError, match=r"lists absolute paths \(first: '/home/someone/data/images/cat/a.jpg'\) that are "
                                            r"not on this machine"):
            load_dataset(tmp_path / "split_zhou_Mine.json", split="train", **kw)
