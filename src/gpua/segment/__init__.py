"""Open-vocabulary semantic segmentation with patch-level GPUA.

- :mod:`~gpua.segment.dense_clip`: MaskCLIP / SCLIP dense features from an open_clip or
  transformers CLIP (``dense_clip_features``).
- :mod:`~gpua.segment.inference`: fit GPUA on patch tokens of an unlabeled pool
  (``fit_patch_gpua``) and segment with it or with dense VLM zero-shot (``DenseSegmenter``),
  whole-image or by sliding window, with VFM-affinity refinement and background handling.
- :mod:`~gpua.segment.metrics`: mmseg-style mIoU / pixel accuracy (``SegmentationMetric``).
- :mod:`~gpua.segment.datasets`: readers for VOC, PASCAL Context, ADE20K, COCO-Stuff and
  Cityscapes in mmseg layouts (``load_segmentation_dataset``).
- :mod:`~gpua.segment.io`: label PNGs, colour overlays, and encoder specs with the planted
  stand-ins (``make_encoder``).
- :mod:`~gpua.segment.planted`: a planted dense world with a known answer, for tests and demos.

Names are loaded on first use: ``import gpua.segment`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DENSE_METHODS": "dense_clip",
    "dense_clip_features": "dense_clip",
    "DenseSegmenter": "inference",
    "common_grid": "inference",
    "dense_view": "inference",
    "encode_grids": "inference",
    "fit_patch_gpua": "inference",
    "parse_class_prompts": "inference",
    "resample_grid": "inference",
    "sample_patch_features": "inference",
    "sliding_windows": "inference",
    "SegmentationMetric": "metrics",
    "SegmentationScores": "metrics",
    "check_label_map": "metrics",
    "confusion_matrix": "metrics",
    "DATASET_PRESETS": "datasets",
    "SegmentationDataset": "datasets",
    "load_segmentation_dataset": "datasets",
    "prompt_name": "datasets",
    "read_image": "datasets",
    "read_label": "datasets",
    "PlantedPatchEncoder": "planted",
    "PlantedSegmentationWorld": "planted",
    "make_planted_world": "planted",
    "make_encoder": "io",
    "write_label_png": "io",
    "write_overlay_png": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
