import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: the suite runs as `pytest -n 2` on 2 cores, and the
    tests' small tensors gain nothing from more threads but contention (up to 50x slower on a
    busy machine). Restored at the end of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def planted():
    """A planted train/test pair (zero-shot about 50%, an exact linear map exists)."""
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=2400, random_state=3)
    return data.split(1200)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The torch device a test runs on, as POT parametrises its tests over backends: "cpu"
    always, "cuda" when a GPU is there (skipped otherwise)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
