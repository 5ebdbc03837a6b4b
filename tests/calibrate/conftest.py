"""Shared fixtures for the calibration tests: small, seeded, fast."""

import numpy as np
import pytest
import torch

from gpua.calibrate import make_shape_gaussians


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Small full-batch and SGD steps: threads only add contention on the 2-core CI machines.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def gaussians():
    """10 classes, d = 16, covariances sharing one shape."""
    return make_shape_gaussians(
        n_classes=10, n_features=16, n_train_per_class=200, n_test_per_class=100, class_sep=4.0, random_state=0
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
