"""Data-layer findings of an audit: WordNet-id class files, loop links, split-file paths, messages.

Each test says what it pinned ("was: ...").
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest

from gpua._errors import GPUAError
from gpua.data import load_dataset
from gpua.data.classnames import load_class_prompts
from gpua.data.prompts import get_templates

pytest.importorskip("PIL")


def _folder(root: Path, make_image, classes: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``; the class's images get its own grey value (to tell them apart)."""
    for cls, value in classes.items():
        for i in range(2):
            make_image(root / cls / f"{i}.png", value=value + i)
    return root


def _symlinks(tmp_path: Path) -> None:
    try:
        os.symlink(tmp_path, tmp_path / "_probe", target_is_directory=True)
        os.remove(tmp_path / "_probe")
    except (OSError, NotImplementedError):
        pytest.skip("this platform cannot create symlinks")


# ---------------------------------------------------------------- 1. WordNet-id class-name files


@pytest.fixture
def wnid_folder(tmp_path, make_image):
    return _folder(tmp_path / "t14", make_image, {"n02000000": 10, "n01000000": 100, "n03000000": 200})


def test_wordnet_id_lines_name_their_own_folders_in_any_order(tmp_path, wnid_folder):
    """was: the ids were dropped and the names given to the sorted folders, so n01000000 (grass) was 'sky'."""
    (tmp_path / "c.txt").write_text("n02000000 sky\nn01000000 grass\nn03000000 road: road, street\n")
    ds = load_dataset(wnid_folder, classnames=tmp_path / "c.txt")
    assert ds.classnames == ["sky", "grass", "road"]  # the file's order defines the labels
    by_folder = {ds.image_ids[i].split("/")[0]: ds.classnames[ds.label(i)] for i in range(len(ds))}
    assert by_folder == {"n02000000": "sky", "n01000000": "grass", "n03000000": "road"}
    # the prompt words of the file stay aligned with the dataset's classes (what extract compares)
    names, words = load_class_prompts(tmp_path / "c.txt")
    assert names == ds.classnames and words[2] == ["road", "street"]


def test_wordnet_ids_that_disagree_with_the_folders_are_refused(tmp_path, wnid_folder):
    """was: assigned by sorted position, whatever ids the lines gave."""
    cases = {
        "none.txt": ("n09000000 sky\nn08000000 grass\nn07000000 road\n",
                     r"WordNet ids of classnames \(first: 'n09000000'\) name none of the class folders"),
        "some.txt": ("n02000000 sky\nn01000000 grass\nn07000000 road\n",
                     r"classnames has no line for the folder 'n03000000' of .*t14'; add the line"),
        "extra.txt": ("n02000000 sky\nn01000000 grass\nn03000000 road\nn04000000 sand\n",
                      r"names the folder 'n04000000' \('sand'\), which is not a class folder"),
        "twice.txt": ("n02000000 sky\nn01000000 grass\nn02000000 road\n", r"line 1 and line 3 both name the folder 'n02000000'"),
    }
    for name, (lines, message) in cases.items():
        (tmp_path / name).write_text(lines)
        with pytest.raises(GPUAError, match=message):
            load_dataset(wnid_folder, classnames=tmp_path / name)


def test_names_without_ids_still_follow_sorted_wordnet_folders(tmp_path, wnid_folder):
    """Unchanged: plain names (no ids) are given to the id-named folders in sorted order, now with
    a warning that shows the pairing (was: none, and a list in another order scored every photo
    against another class)."""
    with pytest.warns(UserWarning, match=r"paired by sorted-folder position: n01000000 -> 'grass', n02000000 -> 'sky', "
                                         r"n03000000 -> 'road'\. .*'n02121808 cat' lines"):
        ds = load_dataset(wnid_folder, classnames=["grass", "sky", "road"])
    assert ds.classnames[ds.label(0)] == "grass" and ds.image_ids[0].startswith("n01000000/")


# ---------------------------------------------------------------- 2. loop links at the top


def test_a_link_to_the_folder_itself_is_skipped_with_a_warning(tmp_path, make_image):
    """was: read as a class 'self' (no images), or, in a flat folder, 'holds both loose images and class folders'."""
    _symlinks(tmp_path)
    labeled = _folder(tmp_path / "labeled", make_image, {"sky": 10, "grass": 100})
    (labeled / "self").symlink_to(".", target_is_directory=True)
    (labeled / "up").symlink_to("..", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"symlinks lead back to .*'self', 'up'"):
        ds = load_dataset(labeled)
    assert ds.classnames == ["grass", "sky"] and len(ds) == 4
    flat = tmp_path / "flat"
    for i in range(3):
        make_image(flat / f"{i}.png")
    (flat / "self").symlink_to(".", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"symlinks lead back to .*'self'"):
        ds = load_dataset(flat)
    assert len(ds) == 3 and ds.n_classes == 0  # an unlabeled pool


# ---------------------------------------------------------------- 3, 8, 11. split files


@pytest.fixture
def coop(tmp_path, make_image):
    root = tmp_path / "coop"
    split = {"train": [], "test": []}
    for label, cls in enumerate(["sky", "grass"]):
        for j in range(4):
            make_image(root / "images" / cls / f"{cls}_{j}.png", value=100 * label + j)
            split["train" if j < 2 else "test"].append([f"{cls}/{cls}_{j}.png", label, cls])
    return root, split


def _write(root: Path, split: dict) -> Path:
    path = root / "split_zhou_Mine.json"
    path.write_text(json.dumps(split))
    return path


def test_a_split_file_naming_one_image_relative_and_absolute_is_refused(coop):
    """was: accepted: the repeat was compared as path strings ('sky/sky_2.png' vs '/.../images/sky/sky_2.png')."""
    root, split = coop
    split["test"].append([str(root / "images" / "sky" / "sky_2.png"), 0, "sky"])
    with pytest.raises(GPUAError, match=r"sky_2.png' twice \(entry 0 and entry 4\)"):
        load_dataset(_write(root, split), split="test")
    split["test"][-1] = ["grass/../sky/sky_2.png", 0, "sky"]
    with pytest.raises(GPUAError, match="twice"):
        load_dataset(_write(root, split), split="test")


def test_a_test_image_listed_absolute_in_train_is_leakage(coop):
    """was: no leakage warning: an absolute path in train never equals the relative one in test."""
    root, split = coop
    split["train"].append([str(root / "images" / "sky" / "sky_2.png"), 0, "sky"])
    with pytest.warns(UserWarning, match=r"1 image\(s\) of split 'test' are also in split 'train' \(first: 'sky/sky_2.png'\)"):
        load_dataset(_write(root, split), split="test")


def test_a_split_file_name_in_nfc_and_nfd_is_one_name(coop):
    """was: "calls label 0 both 'café' and 'café'" (the same text, composed and decomposed)."""
    root, split = coop
    for e in split["train"] + split["test"]:
        if e[1] == 0:
            e[2] = unicodedata.normalize("NFC" if e in split["train"] else "NFD", "café")
    ds = load_dataset(_write(root, split), split="test")
    assert ds.classnames == ["caf\u00e9", "grass"]  # the first spelling


def test_a_wrong_first_entry_gets_the_letter_case_hint(coop):
    """was: "the first image ... is not under ...; pass image_root=", without "letter case counts"."""
    root, split = coop
    split["test"][0][0] = "SKY/SKY_2.PNG"
    with pytest.raises(GPUAError, match=r"1 of its 4 images are not files .*'SKY/SKY_2.PNG'.*letter case counts"):
        load_dataset(_write(root, split), split="test")
    for e in split["test"]:  # no entry found: the folder is wrong, or all the paths are
        e[0] = e[0].upper()
    with pytest.raises(GPUAError, match=r"is not under .*\(nor are the next 3\); pass image_root=.*letter case counts"):
        load_dataset(_write(root, split), split="test")


# ---------------------------------------------------------------- 4-7. class-folder messages


def test_a_folder_with_edge_white_space_is_named_as_such(tmp_path, make_image):
    """was: "class folder 'grass ' ... is not in classnames", which no class-name file could fix; then
    refused with the rename; now (session 21) matched, as names are up to case and '_'. A folder no
    name matches is still told that its edge white space cannot be written."""
    root = _folder(tmp_path / "t2", make_image, {"sky ": 10, "grass ": 100})
    (tmp_path / "c.txt").write_text("sky\ngrass\n")
    ds = load_dataset(root, classnames=tmp_path / "c.txt")
    assert {ds.image_ids[i].split("/")[0]: ds.classnames[ds.label(i)] for i in range(len(ds))} == {"sky ": "sky", "grass ": "grass"}
    (tmp_path / "c.txt").write_text("sky\nroad\n")
    with pytest.raises(GPUAError, match=r"'grass ' of .* white space at the start or end .*rename the folder to 'grass'"):
        load_dataset(root, classnames=tmp_path / "c.txt")


def test_a_comma_folder_points_at_the_name_words_form(tmp_path, make_image):
    """was: only "class folder 'sky, blue' ... is not in classnames", though the file had the line 'sky, blue'."""
    root = _folder(tmp_path / "t13", make_image, {"sky, blue": 10, "grass": 100})
    (tmp_path / "c.txt").write_text("sky, blue\ngrass\n")
    with pytest.raises(GPUAError, match=r"line 'sky, blue' is the class 'sky' .*write the line 'sky, blue: sky, blue'"):
        load_dataset(root, classnames=tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("sky, blue: sky, blue\ngrass\n")  # the form the message gives works
    assert load_dataset(root, classnames=tmp_path / "c.txt").classnames == ["sky, blue", "grass"]


@pytest.mark.parametrize("hidden", [".sky", "@eaDir"])
def test_naming_a_hidden_or_nas_folder_says_it_is_never_a_class(tmp_path, make_image, hidden):
    """was: "create an (empty) folder '.sky' there", though it exists."""
    root = _folder(tmp_path / "t9", make_image, {hidden: 10, "grass": 100})
    with pytest.raises(GPUAError, match=rf"names '{hidden}', a folder of .* never read as a class.*Rename the folder"):
        load_dataset(root, classnames=[hidden, "grass"])


def test_a_case_clash_across_splits_names_each_split_folder(tmp_path, make_image):
    """was: "class folders 'Sky' and 'sky' of 't7/train'", though 'sky' is in t7/test."""
    _folder(tmp_path / "t7" / "train", make_image, {"Sky": 10, "grass": 100})
    _folder(tmp_path / "t7" / "test", make_image, {"sky": 10, "grass": 100})
    with pytest.raises(GPUAError, match=r"'Sky' \(in '.*train'\) and 'sky' \(in '.*test'\) are two classes"):
        load_dataset(tmp_path / "t7", split="train")


# ---------------------------------------------------------------- 9, 10. class-name and template files


def test_names_differing_in_case_with_other_prompts_get_the_true_reason(tmp_path):
    """was: "...so their prompts are the same", though 'Sky: sky' and 'sky: blue sky' prompt differently."""
    (tmp_path / "c.txt").write_text("Sky: sky\nsky: blue sky\ngrass\n")
    with pytest.raises(GPUAError, match="though their prompt words differ, the two would be taken for one class") as e:
        load_class_prompts(tmp_path / "c.txt")
    assert "prompts are the same" not in str(e.value)
    (tmp_path / "same.txt").write_text("Sky\nsky\n")  # same prompts: the reason stays
    with pytest.raises(GPUAError, match="so their prompts are the same"):
        load_class_prompts(tmp_path / "same.txt")


def test_an_f_string_template_line_is_read_like_a_quoted_line(tmp_path):
    """was: the literal prompt "f'a photo of a sky.'," (prefix, quotes and comma included)."""
    (tmp_path / "t.txt").write_text("f'a photo of a {c}.',\nF\"a drawing of a {}.\"\n'itap of a {}.',\n")
    assert get_templates(str(tmp_path / "t.txt")) == ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    (tmp_path / "bad.txt").write_text("f'a photo of a {name}.',\n")  # another variable: refused, as before
    with pytest.raises(GPUAError, match=r"has the placeholder \{name\}"):
        get_templates(str(tmp_path / "bad.txt"))


def test_coops_imagenet_class_file_with_clips_repeated_names_reads_as_the_shipped_names(tmp_path):
    """Was (reviewer): the id-labelled path refused CoOp's classnames.txt, whose CLIP names call two
    pairs of classes alike ("crane" twice), though the ImageNet loader already knew them apart."""
    from gpua.data.classnames import get_classnames, load_class_prompts

    shipped = get_classnames("imagenet")
    clip = ["crane" if n in ("crane bird", "construction crane") else n for n in shipped]
    f = tmp_path / "classnames.txt"
    f.write_text("".join(f"n{k:08d} {n}\n" for k, n in enumerate(clip)))
    assert load_class_prompts(f)[0] == shipped
    f.write_text("".join(f"n{k:08d} {n}\n" for k, n in enumerate(clip[:10] + ["tench"])))  # a repeat of another file
    with pytest.raises(GPUAError, match="duplicate name 'tench'"):
        load_class_prompts(f)
