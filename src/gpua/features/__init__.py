"""Feature files: single files (npz and safetensors with named keys) and shard sets.

* :func:`load_features`, :func:`save_features`, :class:`FeatureSet`: one file holding the VFM
  and VLM features of the same images, the text prototypes and optional labels, class names
  and image ids.
* :class:`ShardedFeatures`, :class:`ShardWriter`, :func:`write_shards`: the same features as a
  folder of memory-mapped row shards, for pools larger than memory (read by
  :func:`gpua.stream.fit_streaming`).
"""

from ._io import FEATURE_KEYS, FeatureSet, load_features, save_features
from ._shards import (
    FEATURE_DTYPES,
    SHARD_FORMAT,
    ShardedFeatures,
    ShardWriter,
    check_destination,
    check_writer_options,
    recover_shard_set,
    write_shards,
)

__all__ = [
    "FEATURE_KEYS",
    "FeatureSet",
    "load_features",
    "save_features",
    "FEATURE_DTYPES",
    "SHARD_FORMAT",
    "ShardedFeatures",
    "ShardWriter",
    "write_shards",
    "check_destination",
    "check_writer_options",
    "recover_shard_set",
]
