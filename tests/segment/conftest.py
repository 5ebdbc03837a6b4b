"""Shared fixtures for the segmentation tests."""

from __future__ import annotations

import pytest

from gpua.segment.planted import make_planted_world


@pytest.fixture
def make_estimator():
    """Factory of an unfitted patch-level estimator."""
    from gpua import GPUA

    return lambda: GPUA(query="vfm")


@pytest.fixture(scope="session")
def world():
    return make_planted_world(5, seed=0)

