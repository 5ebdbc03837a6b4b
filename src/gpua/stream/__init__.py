"""Streaming, bounded-memory and distributed GPUA fits.

* :class:`ShardedFeatures`, :class:`ShardWriter`, :func:`write_shards`: features on disk as
  memory-mapped row shards (npy or safetensors; float16, bfloat16 or float32), with labels and
  image ids. ``gpua extract --out DIR`` (:func:`gpua.extract.extract_features` with a folder
  ``out``) writes them straight from images.
* :func:`fit_streaming`: ``GPUA.fit`` over chunks, within a memory budget, here or on a Dask
  cluster, resumable from a checkpoint folder.
* :func:`fit_federated`: the same fit from clients' aggregated statistics only.
* :func:`plan_memory`, :func:`parse_memory`: how a budget becomes a chunk size and a cache.

Dask is imported only when a cluster is asked for.
"""

from ._budget import MemoryPlan, minimum_budget, parse_memory, plan_memory, release_freed_memory
from ._executor import connect
from ._federated_gpua import fit_federated
from ._fit import as_source, fit_streaming, is_streaming_source, minimum_budget_for
from ._kernels import ArraySource
from ..features import FEATURE_DTYPES, ShardedFeatures, ShardWriter, write_shards

__all__ = [
    "connect",
    "ShardedFeatures",
    "ShardWriter",
    "write_shards",
    "FEATURE_DTYPES",
    "ArraySource",
    "fit_streaming",
    "fit_federated",
    "as_source",
    "is_streaming_source",
    "MemoryPlan",
    "plan_memory",
    "parse_memory",
    "minimum_budget",
    "minimum_budget_for",
    "release_freed_memory",
]
