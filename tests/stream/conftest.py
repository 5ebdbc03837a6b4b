"""Fixtures of the streaming tests (helpers live in stream_helpers.py)."""

from __future__ import annotations

import pytest
from stream_helpers import planted_case


@pytest.fixture(scope="session")
def case():
    """Tie-free, well-conditioned planted data: (Z, X, Y, labels), N = 1500, K = 32."""
    return planted_case()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Small matrices: a second BLAS thread only adds contention on the 2-core CI machines.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
