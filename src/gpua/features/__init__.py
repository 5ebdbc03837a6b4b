"""Feature containers and their files (npz and safetensors with named keys)."""

from ._io import FEATURE_KEYS, FeatureSet, load_features, save_features

__all__ = ["FEATURE_KEYS", "FeatureSet", "load_features", "save_features"]
