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
    with pytest.raises(GPUAError, match=r"holds the split folders \['test', 'train'\]; pass split="):
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
