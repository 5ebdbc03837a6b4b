"""Datasets, fit pools, class names and prompt templates.

>>> from gpua.data import load_dataset, sample_pool
>>> train = load_dataset("cifar10-mini", split="train")
>>> pool = sample_pool(train, n_per_class=16, seed=0)
>>> len(pool), pool.classnames[:2]
(160, ['airplane', 'automobile'])

Submodules: :mod:`gpua.data.prompts` (templates, text prototypes) and
:mod:`gpua.data.classnames` (class-name lists of the CoOp benchmark, CIFAR and Fashion-MNIST).
"""

from . import classnames, prompts
from ._datasets import (
    HEIF_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ArrayImageDataset,
    FileImageDataset,
    ImageDataset,
    UnreadableImageError,
    decoded_extensions,
    heif_decoder,
    open_image,
    to_rgb,
)
from ._fashion_mnist import FASHION_MNIST_DIR, read_fashion_mnist, read_idx
from ._loaders import DEMO_DATASET, DEMO_SPLITS, load_dataset
from ._pool import sample_pool
from ._registry import COOP_DATASETS, KNOWN_DATASETS, canonical_name, dataset_info

__all__ = [
    "load_dataset",
    "sample_pool",
    "ImageDataset",
    "FileImageDataset",
    "ArrayImageDataset",
    "UnreadableImageError",
    "open_image",
    "to_rgb",
    "IMAGE_EXTENSIONS",
    "HEIF_EXTENSIONS",
    "decoded_extensions",
    "heif_decoder",
    "DEMO_DATASET",
    "DEMO_SPLITS",
    "FASHION_MNIST_DIR",
    "read_fashion_mnist",
    "read_idx",
    "COOP_DATASETS",
    "KNOWN_DATASETS",
    "canonical_name",
    "dataset_info",
    "classnames",
    "prompts",
]
