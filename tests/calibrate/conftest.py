"""Shared fixtures for the calibration tests: small, seeded, fast."""

import numpy as np
import pytest

from gpua.calibrate import make_shape_gaussians


@pytest.fixture(scope="session")
def gaussians():
    """10 classes, d = 16, covariances sharing one shape."""
    return make_shape_gaussians(
        n_classes=10, n_features=16, n_train_per_class=200, n_test_per_class=100, class_sep=4.0, random_state=0
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
