import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def planted():
    """A planted train/test pair (zero-shot about 50%, an exact linear map exists)."""
    from gpua.datasets import make_planted

    data = make_planted(n_samples=2400, random_state=3)
    return data.split(1200)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
