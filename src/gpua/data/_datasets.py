"""Image datasets: an ordered list of images with integer labels and class names.

Two kinds share one interface, :class:`ImageDataset`: :class:`FileImageDataset` (image files
under a root folder, decoded on demand) and :class:`ArrayImageDataset` (decoded uint8 arrays,
e.g. the embedded CIFAR-10 demo). Images are decoded one at a time so that a dataset of a million
files costs a list of paths, not a million images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import numpy as np

from .._errors import GPUAError
from .._optional import import_optional
from .._validation import check_classnames

__all__ = [
    "IMAGE_EXTENSIONS",
    "HEIF_EXTENSIONS",
    "decoded_extensions",
    "heif_decoder",
    "UnreadableImageError",
    "ImageDataset",
    "FileImageDataset",
    "ArrayImageDataset",
    "open_image",
    "to_rgb",
    "DECODE_VERSION",
]

#: How image files become pixels (:func:`open_image`, :func:`to_rgb`): part of the feature cache
#: key, bumped when decoding changes so that features of the old pixels are not served again
#: (2: EXIF orientation applied, float images in [0, 1] scaled to [0, 255]; 3: 16-bit images
#: always scaled by 255 / 65535, also when their values are all <= 255; 4: uncompressed TIFFs
#: stored transposed decoded upright, a 16-bit grey PNG's transparent value put on white).
DECODE_VERSION = 4

#: File endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".avif",
)

#: The endings of Apple's HEIC/HEIF photos (an iPhone's default): read as images when the optional
#: ``pillow-heif`` package is installed (``pip install 'gpua[heif]'``, :func:`heif_decoder`).
HEIF_EXTENSIONS: tuple[str, ...] = (".heic", ".heif", ".hif")
_WITH_HEIF = IMAGE_EXTENSIONS + HEIF_EXTENSIONS  # built once: the listing asks once per file

_D = TypeVar("_D", bound="ImageDataset")


@functools.lru_cache(maxsize=1)
def heif_decoder() -> bool:
    """Whether HEIC/HEIF photos are decoded here: ``pillow-heif`` imports, and its Pillow opener is
    registered (once per process). It applies a photo's rotation itself, as :func:`open_image`
    does a JPEG's EXIF Orientation."""
    try:
        import pillow_heif
    except Exception:  # noqa: BLE001 - ImportError, or a wheel whose libheif does not load
        return False
    try:
        pillow_heif.register_heif_opener()
    except Exception:  # noqa: BLE001
        return False
    return True


def decoded_extensions() -> tuple[str, ...]:
    """The endings read as images here: :data:`IMAGE_EXTENSIONS`, and :data:`HEIF_EXTENSIONS`
    when :func:`heif_decoder` says so."""
    return _WITH_HEIF if heif_decoder() else IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from PIL import Image


def _pil() -> Any:
    # Pillow is an optional dependency (extras "encoders", "seg"): class names, templates and
    # .npz bookkeeping work without it; only decoding images needs it.
    return import_optional("PIL.Image", "reading images")


class UnreadableImageError(GPUAError):
    """An image file is missing, truncated, corrupt or not an image.

    A :class:`~gpua.GPUAError`; catch this subclass to skip bad files (and count them) while
    letting other input errors through. ``path`` is the file.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        # Keep ``path`` when the error crosses a process boundary (DataLoader workers).
        return (type(self), (str(self), self.path))


# A float image whose values lie in [0, 1] up to this much rounding is read as [0, 1].
_UNIT_RANGE_TOL = 1e-6


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    """A float grey image as uint8: [0, 1] -> [0, 255], [0, 255] kept, other ranges min-max stretched."""
    finite = a[np.isfinite(a)]
    if not finite.size:
        return np.zeros(a.shape, dtype=np.uint8)  # all NaN (or empty): nothing to show
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= -_UNIT_RANGE_TOL and hi <= 1.0 + _UNIT_RANGE_TOL:
        out = a * 255.0  # the usual convention for float images
    elif lo >= 0.0 and hi <= 255.0:
        out = a  # float-typed 8-bit values
    elif hi > lo:
        # Negative, or beyond 8 bits (depth, counts, HDR): no convention to follow, so show the range.
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = a  # one value outside [0, 255]: clipped to 0 or 255 below
    # +inf/-inf saturate to 255/0; NaN becomes 0.
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _int_to_uint8(a: np.ndarray, bits: int | None = None) -> np.ndarray:
    """An integer image as uint8: values up to 255 kept, 16-bit ranges scaled by 255 / 65535,
    wider ones by 255 / max (clipping would turn a 16-bit photo white). ``bits=16``: the image
    is known to be 16-bit, scaled by 255 / 65535 whatever its values."""
    a = np.asarray(a, dtype=np.float64)
    hi = float(np.nanmax(a)) if a.size else 0.0
    if bits == 16:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0 if hi <= 255 else (255.0 / 65535.0 if hi <= 65535 else 255.0 / hi)
    return np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)


def as_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype as uint8, by the rules :func:`to_rgb` applies to image files."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "b":
        return a.astype(np.uint8) * 255
    return _float_to_uint8(a.astype(np.float64)) if a.dtype.kind == "f" else _int_to_uint8(a)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    Grey, palette, CMYK and the like are converted by PIL. Transparent pixels are composited
    onto white: their stored colour is invisible (often black) and should not reach an encoder.
    16-bit and 32-bit grey images are scaled to 8 bits rather than clipped (PIL's plain
    ``convert`` would saturate them); a 16-bit image (mode ``"I;16"``: 16-bit PNG or TIFF) by
    255 / 65535 always, a 32-bit one (mode ``"I"``) only when its values exceed 255. Floating-point grey images (mode ``"F"``, e.g. float
    TIFFs) are read by their range: values in [0, 1] are scaled to [0, 255], values in
    [0, 255] are kept, and any other range is stretched (min to 0, max to 255); NaN becomes 0.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    Image = _pil()
    if image.mode in ("P", "PA") or (image.mode in ("RGB", "L") and "transparency" in image.info):
        # keeps a palette's transparency, or a grey / RGB PNG's transparent colour key (tRNS),
        # which "RGB" would drop
        image = image.convert("RGBA")
    if image.mode == "F":
        image = Image.fromarray(_float_to_uint8(np.asarray(image, dtype=np.float64)))
    elif image.mode.startswith("I;16"):
        # 16 bits by the file's own account (16-bit PNG, TIFF): always 65535 -> 255. Guessing
        # from the values would show a dark frame (max <= 255) at full brightness, and a frame
        # one level brighter almost black.
        values, key = np.asarray(image), image.info.get("transparency")
        image = Image.fromarray(_int_to_uint8(values, bits=16))
        if isinstance(key, int):  # a 16-bit grey PNG's transparent value (tRNS): on white, as an 8-bit one's
            image = Image.merge("LA", (image, Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))))
    elif image.mode == "I":
        image = Image.fromarray(_int_to_uint8(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


# EXIF's Orientation tag (274): 1 is "stored upright"; 2-8 say how to turn the stored pixels.
_EXIF_ORIENTATION = 0x0112


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned the way its EXIF Orientation tag says it is shown (phone photos are
    often stored sideways), or ``image`` itself when it has no such tag or the EXIF is unreadable."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return image  # the common case: no copy
        from PIL import ImageOps  # noqa: PLC0415

        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        # A malformed EXIF block can make Pillow raise almost anything (SyntaxError, KeyError,
        # struct.error, TypeError...); the pixels decoded fine, so keep their stored orientation.
        return image


#: ISO base media ``ftyp`` brands of HEIC/HEIF still images.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def _is_heif_file(path: str) -> bool:
    """Whether ``path`` starts as a HEIC/HEIF file does (``....ftyp<brand>``), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _tiff_layout(image: Image.Image, path: str) -> None:
    """Work around, or refuse, the TIFF layouts Pillow (13.0) decodes wrongly, before
    the pixels are read: each would otherwise reach the encoders as a normal photo.

    - Orientation 5 to 8 (a transposed image) with raw strips: Pillow reports the displayed size,
      and its raw decoder then fills that transposed frame with the stored rows (diagonal
      stripes; every mode but RGB). The stored size is restored, and :func:`_upright` turns it.
    - 16 bits per sample stored as separate planes (Photoshop's "per channel"), raw: each plane
      is read as 8-bit. Refused.
    - 16-bit min-is-white grey, compressed or not: decoded as its negative. Refused.
    """
    if getattr(image, "format", None) != "TIFF":
        return
    tags = image.tag_v2
    bits = tags.get(258, (1,))
    bits = max(bits) if isinstance(bits, tuple) and bits else int(bits or 1)
    raw = bool(image.tile) and all(t[0] == "raw" for t in image.tile)
    stored = getattr(image, "_tile_size", None)
    if raw and tags.get(274) in (5, 6, 7, 8) and stored and tuple(image.size) == tuple(stored)[::-1]:
        image._size = tuple(stored)
    if raw and bits >= 16 and tags.get(284, 1) == 2 and tags.get(277, 1) > 1:
        layout = "16-bit samples stored as separate planes, uncompressed"
    elif bits >= 16 and tags.get(262) == 0:
        layout = "16-bit min-is-white grey"
    else:
        return
    raise UnreadableImageError(
        f"image file {path!r} is a TIFF whose layout ({layout}) Pillow decodes wrongly; re-save it as PNG, or as a "
        "TIFF with interleaved samples (min-is-black for grey), and run again.",
        path,
    )


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully and return it in RGB, turned upright.

    An EXIF Orientation tag (as phones write) is applied, so the pixels are those a viewer
    shows; a file whose EXIF block is malformed is returned as stored. HEIC/HEIF photos are
    decoded when pillow-heif is installed (:func:`heif_decoder`).

    Raises
    ------
    UnreadableImageError
        Naming the file, when it is missing, truncated, corrupt or not an image.
    """
    p = os.fspath(path)
    Image = _pil()
    # pillow-heif's opener, where installed: a photo may be opened with no listing run first in this
    # process (a Dask worker, a split file, an explicit img_suffix, a direct call).
    heif_decoder()
    try:
        with Image.open(p) as im:
            _tiff_layout(im, p)
            im.load()  # decode now: truncation shows here, not later inside a transform
            return to_rgb(_upright(im))
    except UnreadableImageError:
        raise  # _tiff_layout's refusal says why already
    except FileNotFoundError:
        raise UnreadableImageError(f"image file {p!r} does not exist.", p) from None
    except Image.DecompressionBombError as exc:
        # Not a damaged file: more pixels than Pillow's guard against decompression bombs allows
        # (about 179 million; 200-megapixel phone photos exceed it).
        raise UnreadableImageError(
            f"image file {p!r} was not decoded: {exc} It is larger than Pillow's guard against decompression bombs "
            "allows (PIL.Image.MAX_IMAGE_PIXELS, doubled). If it is a genuine photo, downscale it, or raise the guard "
            "in Python before reading: PIL.Image.MAX_IMAGE_PIXELS = None.",
            p,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncation and unknown formats (UnidentifiedImageError) as OSError, bad
        # headers as SyntaxError/ValueError.
        if _is_heif_file(p) and not heif_decoder():  # a HEIC photo under another name (IMG_1234.jpg)
            raise UnreadableImageError(
                f"image file {p!r} is a HEIC/HEIF photo (whatever its name says), which this installation does not "
                "decode: pip install 'gpua[heif]' reads it, or convert it to JPEG or PNG.",
                p,
            ) from exc
        raise UnreadableImageError(
            f"image file {p!r} could not be read ({type(exc).__name__}: {exc}); it is truncated, corrupt or "
            "not an image: replace the file, or remove it.",
            p,
        ) from exc


class ImageDataset:
    """An ordered set of images with labels and class names.

    Attributes
    ----------
    name : str
        The dataset's name (canonical for known benchmarks, e.g. ``"oxford_pets"``).
    split : str or None
        The split it holds (``"train"``, ``"test"``...), if any.
    classnames : list of str
        Class names in label order; may be empty for an unlabeled set.
    labels : ndarray of int64, shape (n_images,)
        Class index per image, ``-1`` where unknown.
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        labels: Sequence[int] | np.ndarray | None,
        classnames: Sequence[str] | None,
        name: str,
        split: str | None = None,
    ):
        ids = [str(i) for i in image_ids]
        n = len(ids)
        names = [] if classnames is None else [str(c) for c in classnames]
        check_classnames(names, len(names))
        if labels is None:
            y = np.full(n, -1, dtype=np.int64)
        else:
            y = np.asarray(labels)
            if y.shape != (n,):
                raise GPUAError(f"labels has shape {y.shape} but there are {n} images; give one label per image.")
            if n and y.dtype.kind not in "iu":
                raise GPUAError(f"labels has dtype {y.dtype}; pass integer class indices (-1 for unknown).")
            y = y.astype(np.int64)
            if n and (y.min() < -1 or y.max() >= len(names)):
                raise GPUAError(
                    f"labels hold values outside [-1, {len(names)}); labels index classnames "
                    f"({len(names)} names), -1 marks an unlabeled image."
                )
        self._ids = ids
        self.labels: np.ndarray = y
        self.classnames: list[str] = names
        self.name = str(name)
        self.split = split

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"{type(self).__name__}(name={self.name!r}{split}, n_images={len(self)}, n_classes={self.n_classes})"

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(classnames)``)."""
        return len(self.classnames)

    @property
    def image_ids(self) -> list[str]:
        """Stable identifiers of the images, in order (a copy)."""
        return list(self._ids)

    def _index(self, i: int) -> int:
        n = len(self._ids)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise GPUAError(f"image index must be an integer, got {i!r}.")
        if not -n <= i < n:
            raise GPUAError(f"image index {i} is out of range for a dataset of {n} images.")
        return int(i) % n

    def image_id(self, i: int) -> str:
        """Identifier of image ``i``: its path relative to the root, or its source id."""
        return self._ids[self._index(i)]

    def label(self, i: int) -> int:
        """Class index of image ``i``, or -1 when unlabeled."""
        return int(self.labels[self._index(i)])

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image.

        Raises
        ------
        UnreadableImageError
            (a :class:`~gpua.GPUAError`) naming the file when it cannot be decoded.
        """
        raise NotImplementedError

    def _take(self: _D, idx: np.ndarray) -> _D:
        raise NotImplementedError

    def subset(self: _D, indices: Sequence[int] | np.ndarray) -> _D:
        """The images at ``indices`` (integers, or a boolean mask), as a dataset of the same kind.

        Class names, name and split are kept, so labels keep their meaning.
        """
        idx = np.asarray(indices)
        n = len(self)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise GPUAError(f"a boolean mask must have shape ({n},), got {idx.shape}.")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise GPUAError(f"indices must be a 1-D array of integers or a boolean mask, got dtype {idx.dtype}, shape {idx.shape}.")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise GPUAError(f"indices hold values outside [0, {n}).")
        return self._take(idx.astype(np.int64) % max(n, 1))


class FileImageDataset(ImageDataset):
    """Images stored as files under a root folder.

    Parameters
    ----------
    root : str or path-like
        Folder the relative paths start from.
    relpaths : sequence of str
        Image paths relative to ``root`` (``/``-separated); they are the image ids.
    labels, classnames, name, split
        As in :class:`ImageDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        relpaths: Sequence[str],
        labels: Sequence[int] | np.ndarray | None,
        classnames: Sequence[str] | None,
        name: str,
        split: str | None = None,
    ):
        super().__init__(relpaths, labels, classnames, name, split)
        self.root = Path(root)

    def path(self, i: int) -> Path:
        """Absolute location of image ``i``."""
        return self.root / self.image_id(i)

    def load_image(self, i: int) -> Image.Image:
        return open_image(self.path(i))

    def _take(self, idx: np.ndarray) -> "FileImageDataset":
        return FileImageDataset(
            self.root, [self._ids[j] for j in idx], self.labels[idx], self.classnames, self.name, self.split
        )


class ArrayImageDataset(ImageDataset):
    """Decoded images held as a uint8 array.

    Parameters
    ----------
    images : ndarray of uint8, shape (N, H, W, 3), (N, H, W, 4), (N, H, W, 1) or (N, H, W)
        RGB, RGBA or grey pixels.
    labels, classnames, name, split
        As in :class:`ImageDataset`.
    image_ids : sequence of str, optional
        One id per image (e.g. its source path); default ``"0"``, ``"1"``...
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray | None,
        classnames: Sequence[str] | None,
        name: str,
        split: str | None = None,
        image_ids: Sequence[str] | None = None,
        *,
        _rows: np.ndarray | None = None,
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise GPUAError(f"images has dtype {images.dtype}; store 8-bit pixels (uint8, 0-255).")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3, 4))):
            raise GPUAError(
                f"images has shape {images.shape}; expected (N, H, W, 3) RGB, (N, H, W, 4) RGBA or (N, H, W) grey."
            )
        if images.ndim == 3 and images.shape[-1] in (3, 4):
            # One colour image without its batch axis would be read as N grey images 3 or 4 pixels wide.
            raise GPUAError(
                f"images has shape {images.shape}: one {'RGB' if images.shape[-1] == 3 else 'RGBA'} image without a batch axis, "
                f"or {images.shape[0]} grey images {images.shape[-1]} pixels wide? Store a batch: images[None] for one "
                "image, shape (1, H, W, C)."
            )
        # _rows maps this dataset's positions to rows of `images`, so subsets share the pixels
        # instead of copying them.
        rows = np.arange(images.shape[0]) if _rows is None else np.asarray(_rows, dtype=np.int64)
        if image_ids is None:
            image_ids = [str(r) for r in rows]
        if len(image_ids) != rows.shape[0]:
            raise GPUAError(f"image_ids has {len(image_ids)} entries but there are {rows.shape[0]} images.")
        super().__init__(image_ids, labels, classnames, name, split)
        self._images = images
        self._rows = rows

    def load_image(self, i: int) -> Image.Image:
        a = self._images[self._rows[self._index(i)]]
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        # uint8 (H, W) / (H, W, 3) / (H, W, 4) become L / RGB / RGBA.
        return to_rgb(_pil().fromarray(np.ascontiguousarray(a)))

    def array(self) -> np.ndarray:
        """The pixels of this dataset's images, (n_images, H, W[, C]) uint8 (a copy)."""
        return self._images[self._rows]

    def _take(self, idx: np.ndarray) -> "ArrayImageDataset":
        return ArrayImageDataset(
            self._images, self.labels[idx], self.classnames, self.name, self.split,
            [self._ids[j] for j in idx], _rows=self._rows[idx],
        )
