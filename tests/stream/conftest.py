"""Fixtures of the streaming tests (helpers live in stream_helpers.py)."""

from __future__ import annotations

import pytest
from stream_helpers import planted_case


@pytest.fixture(scope="session")
def case():
    """Tie-free, well-conditioned planted data: (Z, X, Y, labels), N = 1500, K = 32."""
    return planted_case()
