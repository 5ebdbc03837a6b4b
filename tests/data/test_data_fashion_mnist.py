"""Fashion-MNIST from idx files: tiny files written here, and the real ones when installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gpua import GPUAError
from gpua.data import load_dataset
from gpua.data._fashion_mnist import FASHION_MNIST_DIR, read_idx
from gpua.data.classnames import get_classnames
from gpua.data.prompts import get_templates


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An idx file (magic 0x0000 08 <n_dims>, big-endian sizes, uint8 data)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def make_folder(root: Path, n_train: int = 6, n_test: int = 4, compress: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        ext = ".gz" if compress else ""
        write_idx(root / f"{stem}-images-idx3-ubyte{ext}", images, compress)
        write_idx(root / f"{stem}-labels-idx1-ubyte{ext}", labels, compress)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_reads_tiny_idx_files(tmp_path, compress):
    truth = make_folder(tmp_path, compress=compress)
    for split in ("train", "test"):
        ds = load_dataset("fashion-mnist", split=split, image_root=tmp_path)
        images, labels = truth[split]
        assert len(ds) == len(labels) and ds.name == "fashion_mnist" and ds.split == split
        np.testing.assert_array_equal(ds.array(), images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.classnames == get_classnames("fashion_mnist")
        assert ds.image_id(1) == f"{split}/1"
        im = ds.load_image(2)
        assert im.mode == "RGB" and im.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(im)[..., 0], images[2])  # grey copied to each channel


def test_aliases_and_prompts(tmp_path):
    make_folder(tmp_path)
    for alias in ("FashionMNIST", "fashion_mnist", "fmnist"):
        assert len(load_dataset(alias, split="test", image_root=tmp_path)) == 4
    assert get_classnames("fashion-mnist")[0] == "T-shirt/top" and len(get_classnames("fashion-mnist")) == 10
    assert get_templates("fashion-mnist") == ["a photo of a {}."]


def test_subset_keeps_labels(tmp_path):
    truth = make_folder(tmp_path)
    ds = load_dataset("fashion-mnist", split="train", image_root=tmp_path).subset([4, 1])
    np.testing.assert_array_equal(ds.labels, truth["train"][1][[4, 1]])
    assert ds.image_ids == ["train/4", "train/1"]


def test_missing_files_name_the_apt_package(tmp_path):
    with pytest.raises(GPUAError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", split="train", image_root=tmp_path / "nowhere")


def test_unknown_split_lists_the_splits(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(GPUAError, match=r"\['train', 'test'\]"):
        load_dataset("fashion-mnist", split="val", image_root=tmp_path)
    with pytest.raises(GPUAError, match="split="):
        load_dataset("fashion-mnist", image_root=tmp_path)


def test_truncated_file(tmp_path):
    make_folder(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(GPUAError, match="truncated"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)
    p.write_bytes(p.read_bytes()[:20])  # a cut gzip stream
    with pytest.raises(GPUAError, match="t10k-images"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)


def test_bad_magic_and_mismatched_counts(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 8)
    with pytest.raises(GPUAError, match="not an idx file"):
        read_idx(bad)
    make_folder(tmp_path / "f", n_test=4)
    write_idx(tmp_path / "f" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(GPUAError, match="3,.*labels for 4 images"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path / "f")


def test_label_out_of_range(tmp_path):
    make_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10], np.uint8))
    with pytest.raises(GPUAError, match="label 10"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)


def test_folder_of_idx_files_points_to_the_loader(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(GPUAError, match="load_dataset\\('fashion-mnist'"):
        load_dataset(tmp_path)


def test_classnames_must_match(tmp_path):
    make_folder(tmp_path)
    names = get_classnames("fashion_mnist")
    assert load_dataset("fashion-mnist", split="test", image_root=tmp_path, classnames=names).classnames == names
    with pytest.raises(GPUAError, match="class 0"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path, classnames=["shirt"] + names[1:])


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_files():
    test = load_dataset("fashion-mnist", split="test")
    assert len(test) == 10000 and test.array().shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    train_labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(np.bincount(train_labels), np.full(10, 6000))
