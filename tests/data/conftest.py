"""Tiny generated images for the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (6, 5), value: int = 100) -> Path:
    """Write a small solid image; the format follows the file ending."""
    from PIL import Image  # here, not at the top: the data tests that write no image run without Pillow

    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("P", size, 0)
        im.putpalette([value, 0, 255 - value] * 256)
    else:
        fill = {"L": value, "RGB": (value, 10, 200), "RGBA": (value, 10, 200, 255), "LA": (value, 255)}[mode]
        im = Image.new(mode, size, fill)
    im.save(path)
    return path


@pytest.fixture
def make_image():
    return write_image


@pytest.fixture
def labeled_folder(tmp_path: Path) -> Path:
    """root/<class>/<file>: 3 classes (unsorted creation), 2-4 images each."""
    root = tmp_path / "animals"
    for cls, n in (("dog", 3), ("cat", 2), ("bird", 4)):
        for j in range(n):
            write_image(root / cls / f"{j:02d}.png", value=10 * j)
    return root


@pytest.fixture
def coop_pets(tmp_path: Path) -> Path:
    """A CoOp-style oxford_pets folder: split_zhou_OxfordPets.json + images/."""
    root = tmp_path / "oxford_pets"
    classes = ["abyssinian", "american_bulldog", "beagle"]
    split = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(classes):
        for j in range(6):
            rel = f"{cname}_{j}.jpg"
            write_image(root / "images" / rel, value=40 * label + j)
            which = "train" if j < 3 else ("val" if j == 3 else "test")
            split[which].append([rel, label, cname])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    p = tmp_path / "arrays.npz"
    np.savez(
        p,
        images=rng.integers(0, 256, size=(6, 4, 5, 3), dtype=np.uint8),
        labels=np.array([0, 1, 0, 1, 1, 0]),
        classnames=np.array(["cat", "dog"]),
        source_paths=np.array([f"src/{i}.png" for i in range(6)]),
    )
    return p
