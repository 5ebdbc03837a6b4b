"""Readers for semantic segmentation datasets laid out as mmsegmentation expects them.

One reader, :class:`SegmentationDataset`, pairs each image with its label map by relative path
and suffix; each known dataset is a preset of it (folders, suffixes, split file, class names,
``reduce_zero_label``), written down from mmsegmentation's dataset classes:

================  ==============================  =============================================
name              root                            layout (``{split}`` as listed)
================  ==============================  =============================================
``voc``           ``VOCdevkit/VOC2012``           ``JPEGImages/*.jpg``, ``SegmentationClass/*.png``,
                                                  ids in ``ImageSets/Segmentation/{split}.txt``;
                                                  21 classes with background
``voc20``         ``VOCdevkit/VOC2012``           as ``voc``, background ignored (20 classes)
``context59``     ``VOCdevkit/VOC2010``           ``JPEGImages``, ``SegmentationClassContext``,
                                                  ``ImageSets/SegmentationContext/{split}.txt``;
                                                  ``reduce_zero_label`` (0 = background -> 255)
``context60``     ``VOCdevkit/VOC2010``           as ``context59`` with background as class 0
``ade20k``        ``ADEChallengeData2016``        ``images/{validation,training}/*.jpg``,
                                                  ``annotations/.../*.png``; ``reduce_zero_label``
``coco_stuff``    ``coco_stuff164k``              ``images/{val2017,train2017}/*.jpg``,
                                                  ``annotations/.../*_labelTrainIds.png`` (171)
``cityscapes``    ``cityscapes``                  ``leftImg8bit/{split}/<city>/*_leftImg8bit.png``,
                                                  ``gtFine/{split}/<city>/*_gtFine_labelTrainIds.png``
``custom``        any                             ``img_dir/{split}/<stem>.<any image suffix>``,
                                                  ``ann_dir/{split}/<stem>.png``
================  ==============================  =============================================

Label maps are read as stored (palette PNGs give their indices); 255 is the ignore index.

``custom`` reads any image file gpua decodes (``.jpg``, ``.jpeg``, ``.png``... of
:data:`gpua.data.IMAGE_EXTENSIONS`, in any case) where mmsegmentation reads ``.jpg`` only, and
refuses two images of one stem (``a.jpg`` and ``a.png``) rather than picking one;
``img_suffix=".png"`` (``gpua evaluate-seg --img-suffix``) reads one suffix only, as mmseg's
``img_suffix`` does, and ``seg_map_suffix`` (``--gt-suffix``) names the label maps' ending.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .._errors import GPUAError
from .._optional import import_optional

__all__ = [
    "DATASET_PRESETS",
    "SegmentationDataset",
    "load_segmentation_dataset",
    "prompt_name",
    "read_image",
    "read_label",
]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

CONTEXT60_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "table", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth",
    "computer", "cup", "door", "fence", "floor", "flower", "food", "grass", "ground", "keyboard",
    "light", "mountain", "mouse", "curtain", "platform", "sign", "plate", "road", "rock",
    "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree", "truck", "wall", "water",
    "window", "wood",
)  # fmt: skip

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# mmseg spells some classes as one word; prompts read better spelled out.
_PROMPT_NAMES = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "bedclothes": "bed clothes",
    "windowpane": "window pane",
    "ashcan": "trash can",
    "playingfield": "playing field",
    "waterdrops": "water drops",
}


def prompt_name(classname: str) -> str:
    """A class name as it should appear in a text prompt (``"pottedplant"`` -> ``"potted plant"``,
    COCO-Stuff's ``"wall-brick"`` -> ``"wall brick"``)."""
    name = _PROMPT_NAMES.get(classname, classname)
    return name.replace("-other", "").replace("-stuff", "").replace("-", " ").strip()


@dataclass(frozen=True)
class _Preset:
    img_dir: str  # relative to root; "{split}" is replaced
    ann_dir: str
    img_suffix: str | None  # None: any image suffix gpua reads (see SegmentationDataset)
    seg_map_suffix: str
    classnames: tuple[str, ...]
    split_file: str | None = None
    reduce_zero_label: bool = False
    split_names: dict[str, str] = field(default_factory=dict)


DATASET_PRESETS: dict[str, _Preset] = {
    "voc": _Preset("JPEGImages", "SegmentationClass", ".jpg", ".png", VOC_CLASSES,
                   split_file="ImageSets/Segmentation/{split}.txt"),
    "voc20": _Preset("JPEGImages", "SegmentationClass", ".jpg", ".png", VOC_CLASSES[1:],
                     split_file="ImageSets/Segmentation/{split}.txt", reduce_zero_label=True),
    "context59": _Preset("JPEGImages", "SegmentationClassContext", ".jpg", ".png", CONTEXT60_CLASSES[1:],
                         split_file="ImageSets/SegmentationContext/{split}.txt", reduce_zero_label=True),
    "context60": _Preset("JPEGImages", "SegmentationClassContext", ".jpg", ".png", CONTEXT60_CLASSES,
                         split_file="ImageSets/SegmentationContext/{split}.txt"),
    "ade20k": _Preset("images/{split}", "annotations/{split}", ".jpg", ".png", ADE20K_CLASSES,
                      reduce_zero_label=True, split_names={"val": "validation", "train": "training"}),
    "coco_stuff": _Preset("images/{split}", "annotations/{split}", ".jpg", "_labelTrainIds.png",
                          COCO_STUFF_CLASSES, split_names={"val": "val2017", "train": "train2017"}),
    "cityscapes": _Preset("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                          "_gtFine_labelTrainIds.png", CITYSCAPES_CLASSES),
    "custom": _Preset("img_dir/{split}", "ann_dir/{split}", None, ".png", ()),
}  # fmt: skip


def _image_suffixes(img_suffix) -> tuple[str, ...]:
    """``img_suffix`` as a tuple of suffixes: ``None`` is every image suffix gpua decodes."""
    if img_suffix is None:
        from ..data import decoded_extensions

        return decoded_extensions()
    suffixes = (img_suffix,) if isinstance(img_suffix, str) else tuple(img_suffix)
    if not suffixes or not all(isinstance(x, str) and x.strip() for x in suffixes):
        raise GPUAError(f"img_suffix={img_suffix!r}; give the images' ending after the stem, e.g. '.jpg' (None: every "
                        "image suffix).")
    return suffixes


def _walk_files(top: Path) -> Iterator[Path]:
    """Every file below ``top``, symlinked folders followed (a dataset linked into place from
    another disk), each real folder read once (a link back up the tree is not a loop)."""
    from ..data._loaders import _dir_identity

    visited = {_dir_identity(os.fspath(top))} - {None}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        keep = []
        for d in dirnames:
            ident = _dir_identity(os.path.join(dirpath, d))
            if ident is None or ident not in visited:
                keep.append(d)
                visited.add(ident)
        dirnames[:] = keep
        yield from (Path(dirpath) / f for f in filenames)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as a uint8 (H, W, 3) RGB array (see :func:`gpua.data.open_image`)."""
    from ..data import open_image

    return np.asarray(open_image(path))


def read_label(path: str | os.PathLike, *, reduce_zero_label: bool = False, ignore_index: int = 255) -> np.ndarray:
    """A label map file as class indices: palette PNGs give their palette indices, not colours.

    A mask with an EXIF Orientation tag is turned the way it is shown, as :func:`read_image` turns
    its photo (:func:`gpua.data.open_image`): a phone's raw-orientation mask then lines up with
    the upright photo the prediction is made on.

    Parameters
    ----------
    path : path
    reduce_zero_label : bool
        mmseg's convention for datasets whose 0 means "unlabelled": 0 -> ``ignore_index``,
        k -> k - 1 (``ignore_index`` stays).
    ignore_index : int

    Returns
    -------
    np.ndarray of shape (H, W), int64
    """
    from ..data._datasets import _upright

    Image = import_optional("PIL.Image", "reading label maps")
    try:
        with Image.open(path) as im:
            im = _upright(im)  # transposing keeps the mode (a palette stays indices)
            if im.mode in ("RGB", "RGBA"):
                raise GPUAError(
                    f"label map {path} is a colour image; pass class-index masks (palette or "
                    "greyscale PNGs such as mmseg's *_labelTrainIds.png), not colour renderings."
                )
            arr = np.asarray(im)
    except GPUAError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncation and unknown formats as OSError, but a damaged PNG header or chunk
        # as ValueError ("Truncated IHDR chunk") or SyntaxError ("broken PNG file"): a traceback.
        raise GPUAError(f"label map {path} could not be read ({type(exc).__name__}: {exc}); it is truncated, corrupt "
                        "or not a mask: replace it with a PNG mask.") from None
    y = (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)
    if reduce_zero_label:
        y = np.where((y == 0) | (y == ignore_index), ignore_index, y - 1)
    return y


class SegmentationDataset(Sequence):
    """Images and label maps paired by name, in a fixed (sorted or split-file) order.

    Parameters
    ----------
    root : path
        Dataset root (see the module docstring for each preset's root).
    img_dir, ann_dir : str
        Image and label folders relative to ``root``; images are found recursively.
    img_suffix : str, sequence of str or None
        An image ``<rel>/<stem><img_suffix>`` pairs with ``<rel>/<stem><seg_map_suffix>``. Several
        suffixes: an image may end in any of them (the longest that matches ends the stem).
        ``None``: any image suffix gpua decodes (:func:`gpua.data.decoded_extensions`), the
        ``custom`` preset's default. Without a split file, images are found by suffix ignoring
        case (``.JPG`` is a ``.jpg``), hidden files (``._x.jpg``) are left out, and two images of
        one stem (``a.jpg`` and ``a.png``, or ``a.jpg`` and ``a.JPG``) are refused: they would
        share one label map.
    seg_map_suffix : str
        The label maps' ending (``.png``, ``_labelTrainIds.png``).
    classnames : sequence of str
        One name per class index (after ``reduce_zero_label``).
    split_file : path, optional
        A text file of stems (one per line) that selects and orders the images.
    reduce_zero_label : bool
        mmseg's convention for datasets whose 0 means "unlabelled": 0 -> 255, k -> k - 1.
    ignore_index : int

    Attributes
    ----------
    items : list of (Path, Path)
        ``(image, label map)`` paths, in dataset order.
    stems : list of str
        Each image's file name without its image suffix (``a`` for ``img_dir/val/x/a.jpg``,
        ``frankfurt_000000_000294`` for Cityscapes' ``..._leftImg8bit.png``).
    rel_stems : list of str
        Each image's path below the image folder without its suffix (``x/a``), ``/``-separated:
        the split file's line, or what tells apart two images of one file name in two sub-folders.
    img_suffixes : tuple of str
        The suffixes images are found by.

    Raises
    ------
    GPUAError
        A folder or split file that does not exist, no image found (the message names the
        suffixes looked for and, when the folder holds files of another suffix, the
        ``img_suffix`` to pass), two images of one stem, or an image without its label map.

    ``dataset[i]`` is ``(image uint8 (H, W, 3), label int64 (H, W))``; ``dataset.items[i]`` the
    pair of paths.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        img_dir: str,
        ann_dir: str,
        img_suffix: str | Sequence[str] | None,
        seg_map_suffix: str,
        classnames: Sequence[str],
        split_file: str | os.PathLike | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
    ) -> None:
        self.root = Path(root)
        self.img_dir = self.root / img_dir
        self.ann_dir = self.root / ann_dir
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        self.img_suffixes = _image_suffixes(img_suffix)
        if not isinstance(seg_map_suffix, str) or not seg_map_suffix.strip():
            raise GPUAError(f"seg_map_suffix={seg_map_suffix!r}; give the label maps' ending after the image's stem, e.g. '.png'.")
        self.classnames = [str(c).strip() for c in classnames]
        if not self.classnames:
            raise GPUAError("classnames is empty; give the dataset's class names (one per class index).")
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = int(ignore_index)
        if not self.img_dir.is_dir():
            raise GPUAError(f"image folder {self.img_dir} does not exist; check the dataset root and split.")
        if not self.ann_dir.is_dir():
            raise GPUAError(f"label folder {self.ann_dir} does not exist; check the dataset root and split.")
        found = self._pair(Path(split_file) if split_file is not None else None)
        self.items = [(img, ann) for img, ann, _, _ in found]
        self.stems = [stem for _, _, stem, _ in found]
        self.rel_stems = [rel for _, _, _, rel in found]

    def _looked_for(self) -> str:
        """The image suffixes, as a message shows them."""
        if self.img_suffix is None:
            from ..data import decoded_extensions

            return f"image files ({', '.join(decoded_extensions()[:5])}, ...; any case)"
        return f"files ending in {' or '.join(repr(s) for s in self.img_suffixes)} (any case)"

    def _nothing_found(self, others: list[Path]) -> GPUAError:
        """The error for an image folder where no file ends in an image suffix: what was looked
        for, and what the folder holds instead (the ``img_suffix`` to set, when it holds images)."""
        from collections import Counter

        from ..data import decoded_extensions

        head = f"no {self._looked_for()} under {self.img_dir}"
        others = sorted(p for p in others if p.is_file())
        if not others:
            return GPUAError(f"{head}; the folder holds no files: check the dataset root and split.")
        ext = Counter(p.suffix.lower() for p in others if p.suffix.lower() in decoded_extensions()).most_common(1)
        if ext and self.img_suffix is not None:
            return GPUAError(f"{head}; it holds {len(others)} other file(s) (first: {others[0].name}), most ending in "
                             f"{ext[0][0]!r}: check the layout, or set img_suffix={ext[0][0]!r}.")
        return GPUAError(f"{head}; none of its {len(others)} file(s) ends in an image suffix gpua reads (first: "
                         f"{others[0].name}): check the dataset root and split, or convert the images to .png or .jpg "
                         "(img_suffix names another ending, of a format Pillow decodes).")

    def _pair(self, split_file: Path | None) -> list[tuple[Path, Path, str, str]]:
        """``(image, label map, stem, relative stem)`` of every image, in dataset order."""
        if split_file is not None:
            if not split_file.is_file():
                raise GPUAError(f"split file {split_file} does not exist; check the dataset root and split name.")
            from ..data._textfiles import read_text

            # read_text: a split file saved by a Windows editor (UTF-16, or UTF-8 with a byte-order
            # mark) reads as its stems, not as a traceback or a stem that starts with the mark.
            stems = [s.strip() for s in read_text(split_file, "split").splitlines() if s.strip()]
            first_line: dict[str, int] = {}
            for i, stem in enumerate(stems):
                if stem in first_line:  # one image scored twice would weigh its pixels twice in the mIoU
                    raise GPUAError(f"split file {split_file} lists {stem!r} twice (entries {first_line[stem] + 1} and "
                                    f"{i + 1}); remove the repeat, so that each image is scored once.")
                first_line[stem] = i
            found = []
            for stem in stems:
                candidates = [self.img_dir / (stem + s) for s in self.img_suffixes]
                hits = [c for c in candidates if c.is_file()]
                if len(hits) > 1:
                    raise GPUAError(f"{' and '.join(str(h) for h in hits[:2])} are two images of one name {stem!r}, which would "
                                    "share one label map; keep one of them, or set img_suffix to the one to read.")
                found.append((stem, hits[0] if hits else candidates[0], Path(stem).name))
        else:
            # The suffix matches ignoring case (a phone's IMG_1.JPG is a .jpg image), as `--gt`
            # folders match theirs; the longest suffix that matches ends the stem. Hidden files
            # (macOS's ._x.jpg AppleDouble files) are left out, as `--gt` folders and `--images`
            # leave them out: they have no label map and are not images.
            suffixes = sorted({s.lower() for s in self.img_suffixes}, key=len, reverse=True)
            found, others = [], []
            for p in _walk_files(self.img_dir):
                rel = p.relative_to(self.img_dir)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                name = p.name.lower()
                n = next((len(s) for s in suffixes if name.endswith(s) and len(name) > len(s)), 0)
                if not n:
                    others.append(p)
                elif p.is_file():
                    found.append((str(rel)[:-n], p, p.name[:-n]))
            if not found:
                raise self._nothing_found(others)
            found.sort()
            for (a, pa, _), (b, pb, _) in zip(found, found[1:]):
                if a == b:
                    if pa.name.lower() == pb.name.lower():  # img_suffix matches ignoring case: it cannot choose
                        raise GPUAError(f"{pa} and {pb} are two images of one name (their suffixes differ only in case), "
                                        "which would share one label map; keep one of them.")
                    raise GPUAError(f"{pa} and {pb} are two images of one name, which would share one label map; keep one "
                                    "of them, or set img_suffix to the one to read.")
        items, missing = [], []
        for stem, img, name in found:
            ann = self.ann_dir / (stem + self.seg_map_suffix)
            if not img.is_file() or not ann.is_file():
                missing.append(ann if img.is_file() else img)
                continue
            items.append((img, ann, name, Path(stem).as_posix()))
        if missing:
            first = missing[0]
            hint = (f" (label maps are <stem>{self.seg_map_suffix}: set seg_map_suffix if yours end otherwise)"
                    if first.parent == self.ann_dir or self.ann_dir in first.parents else "")
            raise GPUAError(
                f"{len(missing)} image/label file(s) are missing (first: {first}); every listed "
                f"image needs its label map with the same name{hint}."
            )
        if not items:
            raise GPUAError(f"no {self._looked_for()} under {self.img_dir}; check the layout and suffixes.")
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        img_path, ann_path = self.items[i]
        image, label = read_image(img_path), self.load_label(ann_path)
        if image.shape[:2] != label.shape:
            raise GPUAError(
                f"label map {ann_path} is {label.shape[0]}x{label.shape[1]} but its image is "
                f"{image.shape[0]}x{image.shape[1]}; the mask must have the image's size."
            )
        return image, label

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (self[i] for i in range(len(self)))

    def load_label(self, path: str | os.PathLike) -> np.ndarray:
        """One label map with ``reduce_zero_label`` applied, as int64 (H, W)."""
        return read_label(path, reduce_zero_label=self.reduce_zero_label, ignore_index=self.ignore_index)

    @property
    def prompt_names(self) -> list[str]:
        """Class names spelled for text prompts (see :func:`prompt_name`)."""
        return [prompt_name(c) for c in self.classnames]


def load_segmentation_dataset(
    name: str,
    root: str | os.PathLike,
    split: str = "val",
    *,
    classnames: Sequence[str] | None = None,
    **overrides,
) -> SegmentationDataset:
    """Open a dataset by preset name (see the module docstring for the layouts).

    Parameters
    ----------
    name : {"voc", "voc20", "context59", "context60", "ade20k", "coco_stuff", "cityscapes", "custom"}
    root : path
        The dataset root (e.g. ``data/VOCdevkit/VOC2012``).
    split : str
        ``"val"`` or ``"train"`` (mapped to each dataset's own folder names).
    classnames : sequence of str, optional
        Required for ``"custom"``; overrides the preset's names otherwise.
    **overrides
        Any :class:`SegmentationDataset` argument: ``img_suffix=".png"`` (``None``: every image
        suffix, ``"custom"``'s default), ``seg_map_suffix="_mask.png"`` and the like.
    """
    if name not in DATASET_PRESETS:
        raise GPUAError(f"dataset {name!r} is not known; use one of {', '.join(DATASET_PRESETS)}.")
    p = DATASET_PRESETS[name]
    split_dir = p.split_names.get(split, split)
    names = list(classnames) if classnames is not None else list(p.classnames)
    if not names:
        raise GPUAError(f"dataset {name!r} needs classnames=[...] (one per class index).")
    kwargs = dict(
        img_dir=p.img_dir.format(split=split_dir),
        ann_dir=p.ann_dir.format(split=split_dir),
        img_suffix=p.img_suffix,
        seg_map_suffix=p.seg_map_suffix,
        classnames=names,
        split_file=Path(root) / p.split_file.format(split=split) if p.split_file else None,
        reduce_zero_label=p.reduce_zero_label,
    )
    kwargs.update(overrides)
    return SegmentationDataset(root, **kwargs)
