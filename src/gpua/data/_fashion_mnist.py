"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from its original idx files.

Zalando's 70,000 28x28 grey images of 10 clothing classes, 60,000 ``train`` and 10,000 ``test``,
stored as four gzip-compressed idx files::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Debian and Ubuntu ship them in the package ``dataset-fashion-mnist`` under
``/usr/share/datasets/fashion-mnist/`` (:data:`FASHION_MNIST_DIR`, the default folder); any
folder holding the four files (gzip-compressed or not) works, e.g. a download from
https://github.com/zalandoresearch/fashion-mnist. ``load_dataset("fashion-mnist", split=...)`` makes the images an
:class:`~gpua.data.ArrayImageDataset` (grey, converted to RGB when read) with the class names of
``classnames/fashion_mnist.txt``.

The idx format (LeCun et al.): a big-endian header ``0x00 0x00 <dtype code> <n_dims>``, then
``n_dims`` big-endian uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .._errors import GPUAError

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_SPLITS", "FASHION_MNIST_FILES", "FASHION_MNIST_CLASSES", "read_idx", "read_fashion_mnist"]

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SPLITS = ("train", "test")
FASHION_MNIST_CLASSES = 10
#: split -> (images file, labels file), without the ``.gz`` suffix.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes -> numpy big-endian dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzip-compressed when its name ends in ``.gz``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ndarray
        Shape as the header says, dtype native-endian (uint8 for images and labels).

    Raises
    ------
    GPUAError
        For a missing, truncated or malformed file, naming it.
    """
    p = Path(path)
    if p.is_dir():
        raise GPUAError(f"idx file {str(p)!r} is a folder; pass one idx file (e.g. train-images-idx3-ubyte.gz).")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise GPUAError(f"idx file {str(p)!r} does not exist.") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise GPUAError(f"idx file {str(p)!r} could not be read ({type(exc).__name__}: {exc}); it is truncated or corrupt.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise GPUAError(f"{str(p)!r} is not an idx file (bad magic number {raw[:4].hex() or 'empty'}).")
    n_dims = raw[3]
    head = 4 + 4 * n_dims
    if len(raw) < head:
        raise GPUAError(f"idx file {str(p)!r} is truncated inside its header.")
    shape = struct.unpack(f">{n_dims}I", raw[4:head])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != n_bytes:
        raise GPUAError(
            f"idx file {str(p)!r} holds {len(raw) - head} data bytes but its header {tuple(shape)} needs {n_bytes}; "
            "it is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split.

    :func:`gpua.data.load_dataset` (``"fashion-mnist"``) wraps them in a dataset.

    Parameters
    ----------
    split : {"train", "test"}
    root : str or path-like, optional
        Folder of the four idx files (default :data:`FASHION_MNIST_DIR`).

    Returns
    -------
    images : uint8 array of shape (n, 28, 28)
    labels : int64 array of shape (n,)
        Class indices 0-9 (Zalando's order, ``classnames/fashion_mnist.txt``).

    Raises
    ------
    GPUAError
        For an unknown split, a folder without the files (naming ``apt-get install
        dataset-fashion-mnist``), malformed files, images and labels that disagree, no images,
        labels that are not integers, or a label outside 0-9.
    """
    if not isinstance(split, str) or split not in FASHION_MNIST_FILES:
        raise GPUAError(f"split={split!r}; Fashion-MNIST has the splits {list(FASHION_MNIST_SPLITS)}.")
    folder = FASHION_MNIST_DIR if root is None else Path(root).expanduser()
    if folder.is_file():
        raise GPUAError(f"image_root {str(folder)!r} is a file; pass the folder that holds Fashion-MNIST's four idx files.")
    img_stem, lab_stem = FASHION_MNIST_FILES[split]
    img_path, lab_path = _find(folder, img_stem), _find(folder, lab_stem)
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        hint = (
            "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into "
            f"{FASHION_MNIST_DIR}) or download the four idx files from "
            "https://github.com/zalandoresearch/fashion-mnist and pass their folder as image_root="
        )
        raise GPUAError(f"Fashion-MNIST file {missing}(.gz) is not in {str(folder)!r}; {hint}.")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise GPUAError(f"{str(img_path)!r} holds {images.dtype} of shape {images.shape}; Fashion-MNIST images are (n, 28, 28) uint8.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise GPUAError(
            f"{str(lab_path)!r} holds {labels.shape} labels for {images.shape[0]} images in {str(img_path)!r}; "
            "the files belong to different sets or one is corrupt."
        )
    if labels.dtype.kind not in "iu":
        raise GPUAError(f"{str(lab_path)!r} holds {labels.dtype} labels; Fashion-MNIST's are integer class indices "
                        "(uint8, 0-9): the file is not a labels file.")
    if not images.shape[0]:
        raise GPUAError(f"{str(img_path)!r} holds no images; the file is truncated or not Fashion-MNIST's.")
    if int(labels.min()) < 0 or int(labels.max()) >= FASHION_MNIST_CLASSES:
        # A negative label would read as -1, "unlabeled", downstream.
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise GPUAError(f"{str(lab_path)!r} holds label {bad}; Fashion-MNIST has {FASHION_MNIST_CLASSES} classes (0-9).")
    return images, labels.astype(np.int64)
