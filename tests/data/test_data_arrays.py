"""npz arrays and the embedded CIFAR-10 demo data."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset, load_dataset

SHARED = Path("/work/shared/data")


def test_demo_train_and_test():
    tr = load_dataset("cifar10-mini", split="train")
    te = load_dataset("CIFAR10-mini", split="test")
    assert isinstance(tr, ArrayImageDataset)
    assert tr.name == "cifar10-mini" and tr.split == "train" and te.split == "test"
    assert len(tr) == len(te) == 1000
    assert tr.classnames == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(tr.labels).tolist() == [100] * 10
    assert tr.image_id(0).startswith("train/airplane/") and te.image_id(0).startswith("test/")
    im = tr.load_image(0)
    assert im.mode == "RGB" and im.size == (32, 32)
    assert not set(tr.image_ids) & set(te.image_ids)


def test_demo_needs_a_split():
    with pytest.raises(GPUAError, match=r"\['train', 'test'\]; pass split="):
        load_dataset("cifar10-mini")
    with pytest.raises(GPUAError, match="no split 'val'"):
        load_dataset("cifar10-mini", split="val")


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder exists only in the dev workspace")
@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_assets_are_byte_identical_copies(split):
    name = f"cifar10_mini_{split}.npz"
    shipped = resources.files("gpua").joinpath("assets", name).read_bytes()
    assert hashlib.sha256(shipped).digest() == hashlib.sha256((SHARED / name).read_bytes()).digest()


def test_npz_file(npz_file):
    ds = load_dataset(npz_file)
    assert ds.name == "arrays" and ds.classnames == ["cat", "dog"]
    assert ds.image_id(2) == "src/2.png" and ds.labels.tolist() == [0, 1, 0, 1, 1, 0]
    a = np.load(npz_file)["images"]
    assert np.array_equal(np.asarray(ds.load_image(3)), a[3])


def test_npz_subset_shares_pixels(npz_file):
    ds = load_dataset(npz_file)
    sub = ds.subset([5, 1]).subset([1])
    assert isinstance(sub, ArrayImageDataset)
    assert sub.image_ids == ["src/1.png"] and sub.labels.tolist() == [1]
    assert np.array_equal(np.asarray(sub.load_image(0)), np.load(npz_file)["images"][1])
    assert sub.array().shape == (1, 4, 5, 3)


def test_npz_without_ids_or_labels_grey(tmp_path):
    p = tmp_path / "grey.npz"
    np.savez(p, images=np.full((3, 4, 6), 9, dtype=np.uint8))  # (3, 4, 4) would read as one RGBA image
    ds = load_dataset(p)
    assert ds.image_ids == ["0", "1", "2"] and ds.labels.tolist() == [-1, -1, -1] and ds.classnames == []
    assert np.all(np.asarray(ds.load_image(1)) == 9) and ds.load_image(1).mode == "RGB"


def test_npz_arrays_not_read_are_named(tmp_path):
    """Was: labels saved as 'label' (or 'targets', 'y') were dropped without a word: an unlabelled set."""
    p = tmp_path / "mine.npz"
    np.savez(p, images=np.zeros((2, 3, 3, 3), np.uint8), label=np.array([0, 1]), classnames=np.array(["a", "b"]))
    with pytest.warns(UserWarning, match=r"'mine.npz' holds \['label'\], which are not read.*save it as 'labels'"):
        ds = load_dataset(p)
    assert ds.labels.tolist() == [-1, -1]
    np.savez(p, images=np.zeros((2, 3, 3, 3), np.uint8), labels=np.array([0, 1]), classnames=np.array(["a", "b"]), extra=np.ones(2))
    with pytest.warns(UserWarning, match=r"holds \['extra'\], which are not read") as caught:
        load_dataset(p)
    assert "save it as 'labels'" not in str(caught[0].message)


def test_npz_errors(tmp_path, npz_file):
    with pytest.raises(GPUAError, match="class 1 is 'wolf' in classnames but 'dog'"):
        load_dataset(npz_file, classnames=["cat", "wolf"])
    with pytest.raises(GPUAError, match="holds one split"):
        load_dataset(npz_file, split="train")
    p = tmp_path / "nolabelsnames.npz"
    np.savez(p, images=np.zeros((2, 3, 3, 3), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(GPUAError, match="labels but no classnames"):
        load_dataset(p)
    assert load_dataset(p, classnames=["a", "b"]).labels.tolist() == [0, 1]
    p = tmp_path / "float.npz"
    np.savez(p, images=np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(GPUAError, match="uint8"):
        load_dataset(p)
    p = tmp_path / "noimages.npz"
    np.savez(p, pixels=np.zeros((2, 3, 3, 3), np.uint8))
    with pytest.raises(GPUAError, match="no 'images' array.*pixels"):
        load_dataset(p)
    p = tmp_path / "broken.npz"
    p.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(GPUAError, match="broken.npz"):
        load_dataset(p)
    p = tmp_path / "badlabels.npz"
    np.savez(p, images=np.zeros((2, 3, 3, 3), np.uint8), labels=np.array([0, 5]), classnames=np.array(["a", "b"]))
    with pytest.raises(GPUAError, match="outside"):
        load_dataset(p)
