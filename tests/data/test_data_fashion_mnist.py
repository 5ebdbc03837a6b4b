"""Fashion-MNIST from idx files: tiny files written here, and the real ones when installed."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from gpua import GPUAError
from gpua.data import load_dataset
from gpua.data import FASHION_MNIST_DIR, read_fashion_mnist, read_idx
from gpua.data.classnames import get_classnames
from gpua.data.prompts import get_templates


@pytest.mark.parametrize("compress", [True, False])
def test_reads_tiny_idx_files(tmp_path, idx_files, compress):
    truth = idx_files.make_folder(tmp_path, compress=compress)
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


def test_aliases_and_prompts(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    for alias in ("FashionMNIST", "fashion_mnist", "fmnist"):
        assert len(load_dataset(alias, split="test", image_root=tmp_path)) == 4
    assert get_classnames("fashion-mnist")[0] == "T-shirt/top" and len(get_classnames("fashion-mnist")) == 10
    assert get_templates("fashion-mnist") == ["a photo of a {}."]


def test_subset_keeps_labels(tmp_path, idx_files):
    truth = idx_files.make_folder(tmp_path)
    ds = load_dataset("fashion-mnist", split="train", image_root=tmp_path).subset([4, 1])
    np.testing.assert_array_equal(ds.labels, truth["train"][1][[4, 1]])
    assert ds.image_ids == ["train/4", "train/1"]


def test_missing_files_name_the_apt_package(tmp_path, idx_files):
    with pytest.raises(GPUAError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", split="train", image_root=tmp_path / "nowhere")


def test_unknown_split_lists_the_splits(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    with pytest.raises(GPUAError, match=r"\['train', 'test'\]"):
        load_dataset("fashion-mnist", split="val", image_root=tmp_path)
    with pytest.raises(GPUAError, match="split="):
        load_dataset("fashion-mnist", image_root=tmp_path)


def test_truncated_file(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(GPUAError, match="truncated"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)
    p.write_bytes(p.read_bytes()[:20])  # a cut gzip stream
    with pytest.raises(GPUAError, match="t10k-images"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)


def test_bad_magic_and_mismatched_counts(tmp_path, idx_files):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 8)
    with pytest.raises(GPUAError, match="not an idx file"):
        read_idx(bad)
    idx_files.make_folder(tmp_path / "f", n_test=4)
    idx_files.write_idx(tmp_path / "f" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(GPUAError, match="3,.*labels for 4 images"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path / "f")


def test_label_out_of_range(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    idx_files.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10], np.uint8))
    with pytest.raises(GPUAError, match="label 10"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path)


def test_folder_of_idx_files_points_to_the_loader(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    with pytest.raises(GPUAError, match="load_dataset\\('fashion-mnist'"):
        load_dataset(tmp_path)


def test_classnames_must_match(tmp_path, idx_files):
    idx_files.make_folder(tmp_path)
    names = get_classnames("fashion_mnist")
    assert load_dataset("fashion-mnist", split="test", image_root=tmp_path, classnames=names).classnames == names
    with pytest.raises(GPUAError, match="class 0"):
        load_dataset("fashion-mnist", split="test", image_root=tmp_path, classnames=["jumper"] + names[1:])


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_files():
    test = load_dataset("fashion-mnist", split="test")
    assert len(test) == 10000 and test.array().shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    train_labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(np.bincount(train_labels), np.full(10, 6000))


def test_read_fashion_mnist_arrays(tmp_path, idx_files):
    truth = idx_files.make_folder(tmp_path, compress=False)
    images, labels = read_fashion_mnist("train", tmp_path)
    np.testing.assert_array_equal(images, truth["train"][0])
    assert labels.dtype == np.int64 and labels.tolist() == truth["train"][1].tolist()
    with pytest.raises(GPUAError, match="splits"):
        read_fashion_mnist("val", tmp_path)
