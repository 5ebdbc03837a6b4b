"""Helpers for the encoder tests: no network, tiny randomly initialised models saved to disk.

Every back end is exercised through the same path a user takes (a spec string naming a local
folder or checkpoint), on models small enough to build in well under a second.
"""

from __future__ import annotations

import os

import numpy as np
import pytest


# Set before any test module imports huggingface_hub, which reads HF_HUB_OFFLINE at import time:
# without it a missing model costs network time-outs instead of an immediate error.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Derived files of the offline stand-ins (the cut DINOv2 graph, MiniLM embeddings of the ImageNet
# names: ~10 s of CPU to rebuild) go to the normal gpua cache ($GPUA_CACHE_DIR or the user cache),
# as in real use: entries are keyed by content and written atomically, so sharing them is safe.
# Tests of the caching itself pass their own cache_dir.


def rand_images(n: int, size: int | tuple[int, int] = 32, seed: int = 0) -> list[np.ndarray]:
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def check_contract(enc, images, *, atol: float = 1e-5) -> None:
    """Shapes, dtype, batch-size invariance and determinism of encode_images / encode_patches."""
    n = len(images)
    E1 = enc.encode_images(images, batch_size=1)
    E4 = enc.encode_images(images, batch_size=4)
    assert E1.shape == (n, enc.embed_dim) and E1.dtype == np.float32
    np.testing.assert_allclose(E1, E4, atol=atol, rtol=1e-4)
    np.testing.assert_array_equal(E4, enc.encode_images(images, batch_size=4))  # deterministic
    P1 = enc.encode_patches(images, batch_size=1)
    P4 = enc.encode_patches(images, batch_size=4)
    assert P1.ndim == 4 and P1.shape[0] == n and P1.shape[-1] == enc.embed_dim and P1.dtype == np.float32
    np.testing.assert_allclose(P1, P4, atol=atol, rtol=1e-4)
    assert np.isfinite(E1).all() and np.isfinite(P1).all()


def check_patch_layout(enc, cell: tuple[int, int] = (1, 2), seed: int = 0) -> None:
    """Perturbing the pixels of one grid cell changes that cell's patch feature the most.

    The image is exactly the network input size, so resizing and cropping are the identity and
    grid cell (r, c) covers pixels [r*p:(r+1)*p, c*p:(c+1)*p].
    """
    H, W = enc.preprocess.input_size
    p = enc.patch_size
    base = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    pert = base.copy()
    r, c = cell
    pert[r * p:(r + 1) * p, c * p:(c + 1) * p] = 255 - pert[r * p:(r + 1) * p, c * p:(c + 1) * p]
    P = enc.encode_patches([base, pert])
    assert P.shape[1:3] == (H // p, W // p)
    change = np.linalg.norm(P[1] - P[0], axis=-1)
    assert np.unravel_index(np.argmax(change), change.shape) == cell


def check_grey_rgba(enc) -> None:
    """Grey, (H, W, 1) and opaque RGBA inputs give the features of the equivalent RGB image."""
    from PIL import Image

    H, W = enc.preprocess.input_size
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=-1)
    ref = enc.encode_images([rgb])
    for variant in (grey, grey[..., None], rgba, Image.fromarray(grey), Image.fromarray(rgba, "RGBA")):
        np.testing.assert_allclose(enc.encode_images([variant]), ref, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """``(path, token node, feature-map node)`` of :class:`tiny_models.TinyTokens` exported to ONNX."""
    pytest.importorskip("onnx")
    from tiny_models import export_tiny_onnx

    return export_tiny_onnx(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """Checkpoint of open_clip's ``gpua-tiny-vit`` (registered, with its QuickGELU twin)."""
    pytest.importorskip("open_clip")
    from tiny_models import save_open_clip_tiny

    return save_open_clip_tiny(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def reg_ckpt(tmp_path_factory):
    """State dict of timm's shrunk ``tiny_models.REG_ARCH`` (create it with ``**REG_KW``)."""
    pytest.importorskip("timm")
    from tiny_models import save_timm_reg_ckpt

    return save_timm_reg_ckpt(tmp_path_factory.mktemp("timm"))


@pytest.fixture
def contract():
    return check_contract


@pytest.fixture
def patch_layout():
    return check_patch_layout


@pytest.fixture
def grey_rgba():
    return check_grey_rgba


@pytest.fixture
def images():
    return rand_images(5)
