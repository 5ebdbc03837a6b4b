"""Geometric distribution calibration (arXiv 2508.13518; federated "GGEUR", CVPR 2025).

The covariance shape of a class's foundation-model features transfers across classes,
domains and clients. A class with few samples, or a client that sees a biased slice, borrows
it to regenerate a truer distribution, on which a linear classifier is then trained.

Pieces:

* statistics: :class:`ClassStatistics` (streamed per-class n, mean, covariance in float64) and
  :func:`merge_statistics` (exact merge by the law of total covariance);
* shape: :func:`covariance_shape`, :func:`shape_similarity`, :func:`oas_shrinkage`, :func:`oas_factor`;
* generation: :class:`DistributionCalibrator` (own, shrunk or borrowed covariances; fills every
  class to a target count), :func:`sample_around`, :func:`fill_to_target`;
* classifiers: :class:`LinearClassifier` (logistic regression, torch), :class:`ShrinkageLDA`;
* federated: :func:`dirichlet_split`, :func:`domain_split`, :func:`client_statistics`,
  :class:`FederatedCalibration`, :func:`fedavg`;
* experiments: :func:`run_longtail`, :func:`run_federated`, :func:`make_shape_gaussians`.
"""

from ._calibrator import DistributionCalibrator, class_similarity
from ._classifier import LinearClassifier, ShrinkageLDA, balanced_sample_weight
from ._experiments import (
    FEDERATED_METHODS,
    LONGTAIL_METHODS,
    format_table,
    global_standardizer,
    group_accuracy,
    head_tail_classes,
    longtail_indices,
    make_shape_gaussians,
    run_federated,
    run_longtail,
    stratified_split,
)
from ._federated_calibration import FederatedCalibration, client_statistics, dirichlet_split, domain_split, fedavg
from ._sampling import fill_to_target, sample_around
from ._shape import (
    CovarianceShape,
    covariance_shape,
    oas_factor,
    oas_shrinkage,
    psd_factor,
    shape_similarity,
    shape_similarity_matrix,
)
from ._stats import ClassStatistics, merge_statistics

__all__ = [
    "ClassStatistics",
    "merge_statistics",
    "CovarianceShape",
    "covariance_shape",
    "shape_similarity",
    "shape_similarity_matrix",
    "oas_factor",
    "oas_shrinkage",
    "psd_factor",
    "sample_around",
    "fill_to_target",
    "DistributionCalibrator",
    "class_similarity",
    "LinearClassifier",
    "ShrinkageLDA",
    "balanced_sample_weight",
    "dirichlet_split",
    "domain_split",
    "client_statistics",
    "FederatedCalibration",
    "fedavg",
    "LONGTAIL_METHODS",
    "FEDERATED_METHODS",
    "longtail_indices",
    "stratified_split",
    "head_tail_classes",
    "group_accuracy",
    "global_standardizer",
    "make_shape_gaussians",
    "run_longtail",
    "run_federated",
    "format_table",
]
