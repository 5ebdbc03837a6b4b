"""Parameter handling of the calibration estimators: gpua's contract (:class:`gpua.params.ParamsMixin`).

The estimators here keep their parameters as ``__init__`` attributes of the same name (the
scikit-learn convention), declare each one's admissible values once in
``_parameter_constraints`` (:mod:`gpua.params`), and check them all at fit. What is theirs
alone: the random-state rule (a seed, None or a numpy Generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..params import SEED, AnyOf, Constraint, OptionalOf

__all__ = ["RANDOM_STATE"]


@dataclass(frozen=True)
class _RandomGenerator(Constraint):
    """A :class:`numpy.random.Generator`, used as is (so repeated calls continue its stream)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, np.random.Generator)

    def describe(self) -> str:
        return "a numpy.random.Generator"


#: What :func:`~gpua.calibrate._sampling.as_rng` takes: None, a seed (bools refused; numpy's own
#: error for a negative one names no parameter) or a Generator.
RANDOM_STATE = AnyOf((OptionalOf(SEED), _RandomGenerator()))
