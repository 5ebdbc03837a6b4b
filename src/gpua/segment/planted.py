"""A planted dense world: images of coloured regions whose right segmentation is known.

Each class has a colour; an image is a Voronoi partition into regions, each region one class,
painted in its class colour plus a per-region colour jitter. Two planted patch encoders see the
image through per-pixel features that depend only on the pixel's colour (so they are
translation-equivariant), average-pooled over their own patch size:

- the VLM stand-in maps class ``k`` to ``Y_k + gap * u`` (the text prototype plus a modality
  gap shared by all image features) plus a *strong* random function of the region's jitter, so
  dense zero-shot ``argmax_k cos(x, Y_k)`` gets whole regions wrong;
- the VFM stand-in maps class ``k`` to a random rotation of ``Y_k`` (plus its own offset) plus a
  *weak* function of the jitter: its clusters are clean, but it lives in another space.

A linear map from VFM to text space therefore exists and the VLM's noisy-but-aligned features
say which cluster is which: the situation GPUA is built for, where patch-level GPUA should beat
dense zero-shot. ``patch_size=1`` gives a per-pixel model, for which sliding-window inference
must equal whole-image inference exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._errors import GPUAError

__all__ = ["PlantedPatchEncoder", "PlantedSegmentationWorld", "make_planted_world", "planted_encoder"]

_DEFAULT_NAMES = ("sky", "grass", "road", "water", "sand", "building", "tree", "snow")
# Corners of the [0.2, 0.8]^3 cube: any two differ by 0.6 in at least one channel, far more than
# the jitter, so the colour -> class assignment below is never ambiguous.
_PALETTE = np.array(
    [[0.2, 0.2, 0.8], [0.2, 0.8, 0.2], [0.8, 0.2, 0.2], [0.2, 0.8, 0.8],
     [0.8, 0.8, 0.2], [0.8, 0.2, 0.8], [0.2, 0.2, 0.2], [0.8, 0.8, 0.8]]
)  # fmt: skip


class PlantedPatchEncoder:
    """Per-pixel planted features, average-pooled over ``patch_size`` x ``patch_size`` patches
    (over ``H // patch_size`` x ``W // patch_size`` cells covering the whole image when the patch
    does not divide its size).

    A pixel of colour ``c`` gets ``s(c) @ centres + (j(c) / jitter) @ noise_map`` where ``s`` is
    a sharp soft assignment to the class colours and ``j = c - s @ colours`` the jitter.

    Parameters
    ----------
    colours : np.ndarray of shape (K, 3)
        Class colours in [0, 1].
    centres : np.ndarray of shape (K, d)
    noise_map : np.ndarray of shape (3, d)
    patch_size : int
    jitter : float
        The per-region jitter amplitude the noise map is scaled by.
    prototypes : np.ndarray of shape (K, d), optional
        Text prototypes; makes this a VLM stand-in with :meth:`encode_text`.
    classnames : sequence of str, optional
        Names :meth:`encode_text` looks for in a prompt.
    name : str
    """

    def __init__(
        self,
        colours: np.ndarray,
        centres: np.ndarray,
        noise_map: np.ndarray,
        patch_size: int,
        *,
        jitter: float,
        prototypes: np.ndarray | None = None,
        classnames: Sequence[str] | None = None,
        name: str = "planted",
    ) -> None:
        self.colours = np.asarray(colours, dtype=np.float64)
        self.centres = np.asarray(centres, dtype=np.float64)
        self.noise_map = np.asarray(noise_map, dtype=np.float64)
        self.patch_size = int(patch_size)
        self.jitter = float(jitter)
        self.prototypes = None if prototypes is None else np.asarray(prototypes, dtype=np.float32)
        self.classnames = list(classnames) if classnames is not None else None
        self.name = name
        self.spec = name  # the encoder-spec string when built by planted_encoder ("planted:vfm")

    @property
    def embed_dim(self) -> int:
        return int(self.centres.shape[1])

    @property
    def is_vlm(self) -> bool:
        return self.prototypes is not None

    def metadata(self) -> dict:
        return {"spec": self.spec, "name": self.name, "embed_dim": self.embed_dim, "patch_size": self.patch_size, "is_vlm": self.is_vlm}

    def pixel_features(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (H, W, d) float64 per-pixel features."""
        c = np.asarray(image, dtype=np.float64) / 255.0
        d2 = ((c[..., None, :] - self.colours) ** 2).sum(-1)  # (H, W, K)
        s = np.exp(-(d2 - d2.min(-1, keepdims=True)) / 0.02)
        s /= s.sum(-1, keepdims=True)
        j = c - s @ self.colours
        return s @ self.centres + (j / self.jitter) @ self.noise_map

    def encode_patches(self, images) -> np.ndarray:
        """Images of one size -> (N, H // p, W // p, d) float32 patch features.

        The grid covers the whole image, as a real encoder's covers its (squash-resized) input:
        ``p`` x ``p`` patches when ``p`` divides the size, else cells of ``H / (H // p)`` by
        ``W / (W // p)`` pixels (area pooling). Dropping the last ``H % p`` rows and ``W % p``
        columns instead would stretch the mask over pixels the grid never saw.
        """
        imgs = _as_image_list(images)
        H, W = imgs[0].shape[:2]
        p = self.patch_size
        if H < p or W < p:
            raise GPUAError(f"images are {H}x{W} pixels, smaller than one {p}x{p} patch; use larger images.")
        h, w = H // p, W // p
        out = np.empty((len(imgs), h, w, self.embed_dim), dtype=np.float32)
        for i, im in enumerate(imgs):
            if im.shape[:2] != (H, W):
                raise GPUAError("images in one encode_patches call must share one size; encode them one by one.")
            out[i] = _area_pool(self.pixel_features(im), h, w)
        return out

    def encode_images(self, images, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, d) float32: the mean patch feature of each image (``batch_size``/``progress`` accepted
        for the :class:`gpua.encoders.Encoder` interface; images are encoded one by one)."""
        return np.stack([self.encode_patches([im]).mean(axis=(0, 1, 2)) for im in _as_image_list(images)])

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(M, d) float32: each prompt's class prototype (the longest class name it contains)."""
        if self.prototypes is None or self.classnames is None:
            raise GPUAError(f"encoder {self.name!r} is a vision-only stand-in; encode text with the VLM one.")
        by_length = sorted(range(len(self.classnames)), key=lambda k: -len(self.classnames[k]))
        rows = []
        for t in texts:
            hit = next((k for k in by_length if re.search(rf"\b{re.escape(self.classnames[k])}\b", t.lower())), None)
            if hit is None:
                raise GPUAError(f"prompt {t!r} names none of the planted classes {self.classnames}.")
            rows.append(self.prototypes[hit])
        return np.stack(rows)


def _area_pool(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, d) -> (h, w, d): the mean over each cell of an h x w split of the whole map, cell
    ``i`` spanning rows ``floor(i H / h)`` to ``ceil((i + 1) H / h)`` (torch's
    ``adaptive_avg_pool2d``; plain ``H / h`` x ``W / w`` blocks when they divide the size)."""
    H, W = f.shape[:2]
    if H % h == 0 and W % w == 0:
        return f.reshape(h, H // h, w, W // w, -1).mean(axis=(1, 3))
    y0, y1 = np.arange(h) * H // h, -(-np.arange(1, h + 1) * H // h)
    x0, x1 = np.arange(w) * W // w, -(-np.arange(1, w + 1) * W // w)
    S = np.zeros((H + 1, W + 1, f.shape[-1]))
    S[1:, 1:] = f.cumsum(0).cumsum(1)  # S[y, x]: the sum of f[:y, :x]
    total = S[y1][:, x1] - S[y0][:, x1] - S[y1][:, x0] + S[y0][:, x0]
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :])[..., None]


def _as_image_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    imgs = [np.asarray(im) for im in images]
    for im in imgs:
        if im.ndim != 3 or im.shape[-1] != 3:
            raise GPUAError(f"images must be (H, W, 3) RGB arrays; got shape {im.shape}.")
    if not imgs:
        raise GPUAError("images is empty; pass at least one image.")
    return imgs


@dataclass
class PlantedSegmentationWorld:
    """Class colours, text prototypes and the two planted encoders of one world.

    Attributes
    ----------
    classnames : list of str
    colours : np.ndarray of shape (K, 3)
    prototypes : np.ndarray of shape (K, d_vlm)
        Unit text prototypes ``Y``.
    vfm, vlm : PlantedPatchEncoder
    jitter : float
    """

    classnames: list[str]
    colours: np.ndarray
    prototypes: np.ndarray
    vfm: PlantedPatchEncoder
    vlm: PlantedPatchEncoder
    jitter: float

    def sample(
        self,
        n: int,
        size: tuple[int, int] = (64, 64),
        *,
        regions: tuple[int, int] = (3, 7),
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` images with their label maps.

        Returns
        -------
        images : np.ndarray of shape (n, H, W, 3), uint8
        labels : np.ndarray of shape (n, H, W), int64
        """
        rng = np.random.default_rng(seed)
        H, W = size
        K = len(self.classnames)
        yy, xx = np.mgrid[0:H, 0:W]
        images = np.empty((n, H, W, 3), dtype=np.uint8)
        labels = np.empty((n, H, W), dtype=np.int64)
        for i in range(n):
            m = int(rng.integers(regions[0], regions[1] + 1))
            seeds = rng.uniform(0, 1, (m, 2)) * (H, W)
            owner = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
            cls = rng.integers(0, K, m)
            colour = self.colours[cls] + rng.uniform(-self.jitter, self.jitter, (m, 3))
            images[i] = np.round(np.clip(colour[owner], 0, 1) * 255).astype(np.uint8)
            labels[i] = cls[owner]
        return images, labels


def make_planted_world(
    n_classes: int = 5,
    *,
    classnames: Sequence[str] | None = None,
    d_vfm: int = 24,
    d_vlm: int = 16,
    vfm_patch_size: int = 4,
    vlm_patch_size: int = 8,
    gap: float = 1.0,
    vlm_noise: float = 0.8,
    vfm_noise: float = 0.1,
    jitter: float = 0.1,
    seed: int = 0,
) -> PlantedSegmentationWorld:
    """Build a planted world (see the module docstring).

    Parameters
    ----------
    n_classes : int
        At most 8.
    classnames : sequence of str, optional
    d_vfm, d_vlm : int
        Feature widths, ``d_vfm >= d_vlm``.
    vfm_patch_size, vlm_patch_size : int
        Patch sizes; different sizes give the two encoders grids of different sizes.
    gap : float
        Length of the modality-gap offset added to every VLM image feature.
    vlm_noise, vfm_noise : float
        Size of the region-wise noise in each encoder's features.
    jitter : float
        Per-channel colour jitter of a region, in [0, 1] units.
    seed : int
    """
    if not 2 <= n_classes <= len(_PALETTE):
        raise GPUAError(f"n_classes={n_classes}; the planted world supports 2 to {len(_PALETTE)} classes.")
    if d_vfm < d_vlm:
        raise GPUAError(f"d_vfm={d_vfm} < d_vlm={d_vlm}; the VFM must be at least as wide to hold a rotated copy.")
    names = list(classnames) if classnames is not None else list(_DEFAULT_NAMES[:n_classes])
    if len(names) != n_classes:
        raise GPUAError(f"classnames has {len(names)} names for n_classes={n_classes}; give one per class.")
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(n_classes, d_vlm))
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    u = rng.normal(size=d_vlm)
    u /= np.linalg.norm(u)
    vlm_centres = Y + gap * u
    R, _ = np.linalg.qr(rng.normal(size=(d_vfm, d_vfm)))  # random rotation: geometry preserved
    u_v = rng.normal(size=d_vfm)
    vfm_centres = np.pad(Y, ((0, 0), (0, d_vfm - d_vlm))) @ R.T + 0.5 * u_v / np.linalg.norm(u_v)
    colours = _PALETTE[:n_classes]
    vlm = PlantedPatchEncoder(
        colours, vlm_centres, rng.normal(size=(3, d_vlm)) * vlm_noise / np.sqrt(3), vlm_patch_size,
        jitter=jitter, prototypes=Y, classnames=names, name="planted-vlm",
    )  # fmt: skip
    vfm = PlantedPatchEncoder(
        colours, vfm_centres, rng.normal(size=(3, d_vfm)) * vfm_noise / np.sqrt(3), vfm_patch_size,
        jitter=jitter, name="planted-vfm",
    )  # fmt: skip
    return PlantedSegmentationWorld(names, colours, Y.astype(np.float32), vfm, vlm, jitter)


def planted_encoder(role: str, device: str = "cpu", cache_dir=None, spec: str | None = None, **options) -> PlantedPatchEncoder:
    """The encoder spec ``"planted:vfm"`` / ``"planted:vlm"``: an encoder of the default planted world.

    Registered in :mod:`gpua.encoders`, so every command that takes ``--vfm`` / ``--vlm`` accepts
    them: a fast, weight-free stand-in for tests and demos. Its VLM knows only the planted class
    names (``sky``, ``grass``, ``road``, ``water``, ``sand``) and encodes any prompt containing one.
    ``device`` and ``cache_dir`` are accepted and ignored (numpy, no files).
    """
    if role not in ("vfm", "vlm"):
        raise GPUAError(f"encoder 'planted:{role}' is unknown; the planted encoders are 'planted:vfm' and 'planted:vlm'.")
    if options:
        raise GPUAError(f"the planted encoders take no options; got {sorted(options)}.")
    enc = getattr(make_planted_world(), role)
    enc.spec = f"planted:{role}"
    return enc
