"""Fit pools: class-balanced k-shot and class-blind."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset, load_dataset, sample_pool


@pytest.fixture(scope="module")
def train():
    return load_dataset("cifar10-mini", split="train")


def test_balanced_16_shot(train):
    pool = sample_pool(train, n_per_class=16, seed=0)
    assert isinstance(pool, ArrayImageDataset)
    assert len(pool) == 160 and np.bincount(pool.labels).tolist() == [16] * 10
    assert pool.classnames == train.classnames
    assert len(set(pool.image_ids)) == 160
    assert pool.image_ids == sorted(pool.image_ids, key=train.image_ids.index)  # dataset order


def test_deterministic_per_seed(train):
    a = sample_pool(train, 4, seed=3).image_ids
    assert a == sample_pool(train, 4, seed=3).image_ids
    assert a != sample_pool(train, 4, seed=4).image_ids
    b = sample_pool(train, 4, seed=3, class_balanced=False).image_ids
    assert b == sample_pool(train, 4, seed=3, class_balanced=False).image_ids


def test_class_blind_pool_has_the_same_size(train):
    pool = sample_pool(train, n_per_class=16, seed=0, class_balanced=False)
    assert len(pool) == 160 and len(set(pool.image_ids)) == 160
    assert np.bincount(pool.labels, minlength=10).tolist() != [16] * 10  # blind: not balanced
    assert len(sample_pool(train, 5, class_balanced=False, size=7)) == 7
    assert len(sample_pool(train, 500, class_balanced=False)) == 1000  # capped at the dataset


def test_short_classes_give_all_they_have(train):
    few = train.subset(np.flatnonzero((train.labels != 3) | (np.arange(1000) % 50 == 0)))
    with pytest.warns(UserWarning, match="'cat' with 2\\); the pool takes all of theirs"):
        pool = sample_pool(few, n_per_class=16)
    counts = np.bincount(pool.labels, minlength=10)
    assert counts[3] == 2 and counts.sum() == 146
    # Was: a benchmark's test subset said "the pool takes all of theirs" too.
    with pytest.warns(UserWarning, match="'cat' with 2\\); the test subset takes all of theirs"):
        sample_pool(few, n_per_class=16, role="the test subset")


def test_unlabeled_data(tmp_path):
    p = tmp_path / "u.npz"
    np.savez(p, images=np.zeros((30, 2, 2, 3), np.uint8))
    ds = load_dataset(p)
    with pytest.raises(GPUAError, match="class_balanced=False"):
        sample_pool(ds)
    with pytest.raises(GPUAError, match="pass size="):
        sample_pool(ds, class_balanced=False)
    assert len(sample_pool(ds, class_balanced=False, size=10)) == 10


def test_bad_arguments(train):
    with pytest.raises(GPUAError, match="n_per_class"):
        sample_pool(train, n_per_class=0)
    with pytest.raises(GPUAError, match="size= is for class_balanced=False"):
        sample_pool(train, size=10)
