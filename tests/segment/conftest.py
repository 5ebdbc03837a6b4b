"""Shared fixtures for the segmentation tests."""

from __future__ import annotations

import pytest
import torch

from gpua.segment.planted import make_planted_world


@pytest.fixture
def make_estimator():
    """Factory of an unfitted patch-level estimator."""
    from gpua import GPUA

    return lambda: GPUA(query="vfm")


@pytest.fixture(scope="session")
def world():
    return make_planted_world(5, seed=0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests run tiny tensors, where intra-op threads only add spin-waiting (50x slower on a
    busy 2-core machine); restored afterwards so other test folders are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
