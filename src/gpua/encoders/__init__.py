"""Image and text encoders behind one small interface, created from spec strings.

>>> from gpua.encoders import create_encoder, list_encoders
>>> enc = create_encoder("offline:dinov2-s")                       # doctest: +SKIP
>>> enc.encode_images(images).shape                                # doctest: +SKIP
(n_images, 384)

Every encoder has ``encode_images(images) -> (N, d)``, ``encode_patches(images) -> (N, h, w, d)``,
``encode_text(texts) -> (M, d)`` (vision-language models only), ``embed_dim``, ``is_vlm`` and
``metadata()``. Outputs are float32 numpy arrays, not L2-normalised.

Back ends (``list_encoders()``): ``open_clip:``, ``hf:`` / ``transformers:`` (CLIP, SigLIP,
DINOv2, DINOv3), ``timm:``, ``onnx:``, and the offline stand-ins ``offline:dinov2-s``,
``offline:efficientnet-lite0``, ``offline:efficientnet-lite2``, ``offline:semantic-lite0``.
Heavy libraries are imported only when an encoder of that back end is created.
"""

from ._base import Encoder, check_batch_size
from ._preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, as_image_list
from ._registry import cache_dir, create_encoder, list_encoders, parse_spec, register_encoder, registry_entries

__all__ = [
    "Encoder",
    "ImagePreprocess",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "registry_entries",
    "parse_spec",
    "cache_dir",
    "check_batch_size",
    "as_image_list",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
