"""gpua: Geometry-Preserving Unsupervised Alignment of vision foundation models."""
__version__ = "0.1.0"
