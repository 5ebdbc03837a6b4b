"""Image input handling shared by every back end: RGB conversion, resize, crop, normalise.

One implementation (PIL resampling, torchvision's rounding; Hugging Face's for the crop of
``hf:`` models, see ``crop_rounding``) serves every back end, so that the
preprocessing an encoder reports in :meth:`~gpua.encoders.Encoder.metadata` is exactly the one
it ran. Each back end fills an :class:`ImagePreprocess` from its model's own configuration
(open_clip ``preprocess_cfg``, the Hugging Face image-processor file, timm's ``pretrained_cfg``):
DINO models get ImageNet mean/std, CLIP models CLIP's, never one for the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .._errors import GPUAError
from .._optional import import_optional

__all__ = ["ImagePreprocess", "as_image_list", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_RESIZE_MODES = ("shortest", "squash", "longest")
_CROP_ROUNDINGS = ("round", "floor")
# PIL's integer resample codes, as Hugging Face image-processor files store them.
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise GPUAError(f"{name}={v!r} must be an int or an (height, width) pair.") from None
    if h < 1 or w < 1:
        raise GPUAError(f"{name}={v!r} must be positive.")
    return h, w


def _triple(v: Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        v = (float(v),) * 3
    t = tuple(float(x) for x in v)
    if len(t) == 1:
        t = t * 3
    if len(t) != 3:
        raise GPUAError(f"{name}={v!r} must hold 3 values (one per RGB channel).")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize, centre-crop (or pad) and normalise RGB images into a float32 ``(B, 3, H, W)`` batch.

    Parameters
    ----------
    input_size : int or (int, int)
        The network's input ``(height, width)``.
    resize : int or (int, int), optional
        ``resize_mode="shortest"``: the shortest edge is resized to this (aspect kept), then the
        centre ``input_size`` is cropped (``resize = input_size / crop_pct``, e.g. 256 for 224).
        ``"squash"``: images are resized to exactly this ``(h, w)``, then centre-cropped.
        Default: ``input_size``.
    resize_mode : {"shortest", "squash", "longest"}
        ``"longest"`` resizes the longest edge to ``input_size`` and pads the rest with ``fill``.
    interpolation : str
        PIL resampling filter: "bicubic", "bilinear", "nearest", "lanczos", "box", "hamming".
    mean, std : 3 floats
        Per-channel normalisation applied to pixels scaled to [0, 1].
    fill : int
        Padding value (0-255) for ``resize_mode="longest"``.
    crop_rounding : {"round", "floor"}
        Where the centre crop starts when the resized edge exceeds the crop by an odd number of
        pixels: ``"round"`` (torchvision's ``CenterCrop``, ``round((h - H) / 2)``, as open_clip
        and timm preprocess) or ``"floor"`` (``(h - H) // 2``, as Hugging Face image processors
        crop: ``transformers.image_transforms.center_crop``). One pixel apart, which moves every
        pixel of the crop. Reported by :meth:`to_dict` only when ``"floor"``, so the metadata
        (and feature-cache keys) of the torchvision-rounding back ends stay as they were.
    """

    input_size: tuple[int, int]
    resize: tuple[int, int] | int | None = None
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fill: int = 0
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", _pair(self.input_size, "input_size"))
        if self.crop_rounding not in _CROP_ROUNDINGS:
            raise GPUAError(f"crop_rounding={self.crop_rounding!r} is not one of {_CROP_ROUNDINGS} ('round': torchvision's "
                            "CenterCrop, 'floor': Hugging Face image processors).")
        if self.resize_mode not in _RESIZE_MODES:
            raise GPUAError(f"resize_mode={self.resize_mode!r} is not one of {_RESIZE_MODES}.")
        resize = self.resize if self.resize is not None else self.input_size
        if self.resize_mode == "shortest":
            if not isinstance(resize, (int, np.integer)):
                h, w = _pair(resize, "resize")
                resize = h if h == w else resize
            if not isinstance(resize, (int, np.integer)):
                # Name what the pair came from: without resize= it is the input size, which the
                # user may never have typed (an ONNX graph's fixed input, a non-square size=).
                what = f"resize={resize!r}" if self.resize is not None else f"the input size {resize!r} (resize defaults to it)"
                raise GPUAError(
                    f"resize_mode='shortest' resizes the shortest edge to one int, but {what} is not square; pass "
                    f"resize=<one int> (the centre {self.input_size[0]}x{self.input_size[1]} is then cropped), or "
                    f"resize_mode='squash' to resize every image to exactly {resize[0]}x{resize[1]}."
                )
            resize = int(resize)
        else:
            resize = _pair(resize, "resize")
        object.__setattr__(self, "resize", resize)
        interp = str(self.interpolation).lower()
        if interp not in _INTERPOLATIONS:
            raise GPUAError(f"interpolation={self.interpolation!r} is not one of {_INTERPOLATIONS}.")
        object.__setattr__(self, "interpolation", interp)
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        std = _triple(self.std, "std")
        if min(std) <= 0:
            raise GPUAError(f"std={std} must be positive.")
        object.__setattr__(self, "std", std)

    @classmethod
    def from_crop_pct(cls, input_size: int | Sequence[int], crop_pct: float | None, **kw: Any) -> "ImagePreprocess":
        """The timm / DINO convention: resize the shortest edge to ``size / crop_pct``, crop ``size``."""
        h, w = _pair(input_size, "input_size")
        pct = 1.0 if not crop_pct else float(crop_pct)
        resize = int(np.floor(h / pct)) if h == w else (int(np.floor(h / pct)), int(np.floor(w / pct)))
        if not isinstance(resize, int):
            kw.setdefault("resize_mode", "squash")
        return cls(input_size=(h, w), resize=resize, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (what :meth:`Encoder.metadata` reports)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        if isinstance(self.resize, tuple):
            d["resize"] = list(self.resize)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_rounding == "round":
            # Only a floor crop is reported: the metadata, and so the feature-cache keys, of every
            # encoder that crops as torchvision does stay those of the releases before the field.
            del d["crop_rounding"]
        return d

    # -- the transform -------------------------------------------------------------------------
    def _resample(self):
        Image = import_optional("PIL.Image", "preparing images for an encoder")

        return getattr(Image.Resampling, self.interpolation.upper())

    def transform_one(self, image) -> np.ndarray:
        """One RGB PIL image -> float32 array of shape (3, H, W)."""
        Image = import_optional("PIL.Image", "preparing images for an encoder")

        H, W = self.input_size
        w0, h0 = image.size
        if self.resize_mode == "longest":
            scale = min(H / h0, W / w0)
            nw, nh = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
            image = image.resize((nw, nh), self._resample())
            canvas = Image.new("RGB", (W, H), (self.fill,) * 3)
            canvas.paste(image, ((W - nw) // 2, (H - nh) // 2))
            image = canvas
        else:
            if self.resize_mode == "shortest":
                # torchvision.transforms.Resize(int): short side -> size, long side truncated.
                short, long_ = (w0, h0) if w0 <= h0 else (h0, w0)
                new_short, new_long = self.resize, int(self.resize * long_ / short)  # type: ignore[operator]
                nw, nh = (new_short, new_long) if w0 <= h0 else (new_long, new_short)
            else:
                nh, nw = self.resize  # type: ignore[misc]
            if nw >= W and nh >= H and nw * nh > _HUGE_RESIZE * H * W:
                # An extreme aspect ratio (a 60000 x 1 strip: 15.4M x 256 resized, about 16 GB):
                # resample only the pixels the centre crop keeps, straight from the source.
                top, left = _crop_offsets(nh, nw, H, W, self.crop_rounding)
                sx, sy = w0 / nw, h0 / nh
                image = image.resize((W, H), self._resample(), box=(left * sx, top * sy, (left + W) * sx, (top + H) * sy))
            else:
                if (nw, nh) != (w0, h0):
                    image = image.resize((nw, nh), self._resample())
                if (nh, nw) != (H, W):
                    image = _center_crop(image, H, W, self.fill, self.crop_rounding)
        a = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, images: Any) -> np.ndarray:
        """Images (see :func:`as_image_list`) -> float32 array of shape (B, 3, H, W)."""
        return np.stack([self.transform_one(im) for im in as_image_list(images)])


#: A resize whose result would hold this many times the crop's pixels resamples only the crop
#: (normal photos, a few times the crop, take the exact resize-then-crop path).
_HUGE_RESIZE = 64


def _center_crop(image, H: int, W: int, fill: int, rounding: str = "round"):
    """The centre ``H x W`` of ``image`` (offsets rounded as :func:`_crop_offsets` says); pads
    (centred) when the image is smaller."""
    Image = import_optional("PIL.Image", "preparing images for an encoder")

    w, h = image.size
    if w < W or h < H:
        canvas = Image.new("RGB", (max(w, W), max(h, H)), (fill,) * 3)
        canvas.paste(image, ((max(w, W) - w) // 2, (max(h, H) - h) // 2))
        image, (w, h) = canvas, canvas.size
    top, left = _crop_offsets(h, w, H, W, rounding)
    return image.crop((left, top, left + W, top + H))


def _crop_offsets(h: int, w: int, H: int, W: int, rounding: str = "round") -> tuple[int, int]:
    """``(top, left)`` of the centre ``H x W`` crop of an ``h x w`` image.

    ``rounding="round"``: torchvision's ``CenterCrop`` (``round((h - H) / 2)``, half to even);
    ``"floor"``: Hugging Face's ``center_crop`` (``(h - H) // 2``). They differ by one pixel
    when ``h - H`` is odd (a 640x427 photo resized to 335x224 for a 224 crop: 56 or 55).
    """
    if rounding == "floor":
        return (h - H) // 2, (w - W) // 2
    return int(round((h - H) / 2.0)), int(round((w - W) / 2.0))


def as_image_list(images: Any, name: str = "images") -> list:
    """Normalise the accepted image inputs to a list of RGB PIL images.

    Accepted: a sequence of PIL images or uint8 arrays ``(H, W)``, ``(H, W, 1|3|4)``; a uint8
    array ``(N, H, W, 3|4|1)`` or ``(N, H, W)``; a single PIL image. Grey, palette and RGBA
    images become RGB (transparent pixels composited onto white, see
    :func:`gpua.data.to_rgb`).
    """
    Image = import_optional("PIL.Image", "preparing images for an encoder")

    from ..data import to_rgb

    if isinstance(images, Image.Image):
        images = [images]
    elif hasattr(images, "detach") and hasattr(images, "ndim"):  # a torch tensor: read as its array
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[0] in (1, 3, 4) and images.shape[-1] not in (1, 3, 4):
            # torchvision's read_image gives (C, H, W): read as a batch it would be C grey images
            raise GPUAError(
                f"{name} is one array of shape {images.shape}, which reads as one channels-first image or as "
                f"{images.shape[0]} grey images; pass a list: [a.transpose(1, 2, 0)] for one (C, H, W) image, or "
                "list(a) for grey images."
            )
        if images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (3, 4)):
            images = list(images)
        else:
            raise GPUAError(
                f"{name} is one array of shape {images.shape}; pass a list of images, or a 4-D "
                "(N, H, W, 3) uint8 array for a batch."
            )
    elif isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
        raise GPUAError(f"{name} must be a sequence of PIL images or uint8 arrays, got {type(images).__name__}.")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, Image.Image):
            out.append(to_rgb(im))
            continue
        if hasattr(im, "detach"):
            im = im.detach().cpu().numpy()
        a = np.asarray(im)
        if a.dtype != np.uint8:
            raise GPUAError(
                f"{name}[{i}] has dtype {a.dtype}; pass 8-bit pixels (uint8, 0-255), e.g. "
                "(x * 255).round().astype(np.uint8) for floats in [0, 1]."
            )
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
            raise GPUAError(f"{name}[{i}] has shape {a.shape}; pass (H, W), (H, W, 3) or (H, W, 4) pixels.")
        out.append(to_rgb(Image.fromarray(np.ascontiguousarray(a))))
    if not out:
        raise GPUAError(f"{name} is empty; pass at least one image.")
    return out
