"""Synthetic data with known ground truth, for tests, demos and benchmarks."""

from ._planted import PlantedData, make_planted

__all__ = ["PlantedData", "make_planted"]
