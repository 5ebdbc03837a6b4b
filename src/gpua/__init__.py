"""gpua: Geometry-Preserving Unsupervised Alignment of vision foundation models.

Translate a vision foundation model's features (DINOv2, DINOv3...) into a vision-language
model's text space (CLIP, SigLIP...) with one linear map learned without labels, for zero-shot
classification and open-vocabulary segmentation.
"""

__version__ = "0.1.0"

from ._base import load_model
from ._errors import ConvergenceWarning, GPUAError, MissingDependencyError, ModelFileError, NotFittedError
from .baselines import LFAAlternation, VLMZeroShot, list_methods, make_method
from .estimator import GPUA
from .reference import ReferenceGPUA

__all__ = [
    "GPUA",
    "VLMZeroShot",
    "LFAAlternation",
    "ReferenceGPUA",
    "GPUAError",
    "ConvergenceWarning",
    "ModelFileError",
    "NotFittedError",
    "MissingDependencyError",
    "list_methods",
    "load_model",
    "make_method",
    "__version__",
]
