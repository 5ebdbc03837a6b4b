"""Known benchmark datasets: canonical names, aliases and CoOp's on-disk conventions.

One table serves the loaders (split-file names, image folders), the class-name lists and the
prompt templates, so that ``"OxfordPets"``, ``"oxford_pets"`` and ``"pets"`` all mean the same
dataset everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DatasetInfo", "COOP_DATASETS", "KNOWN_DATASETS", "canonical_name", "dataset_info", "split_file_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """What gpua knows about a benchmark dataset.

    Attributes
    ----------
    name : str
        Canonical name (CoOp's folder name in snake case, e.g. ``"oxford_pets"``).
    template : str
        CoOp's hand-written prompt (``CUSTOM_TEMPLATES`` in CoOp's ``trainers/zsclip.py``).
    split_file : str or None
        CoOp's split file name, or None where CoOp reads the dataset's own files.
    image_dir : str
        Folder of the images relative to the split file's folder ("" = that folder itself).
    aliases : tuple of str
        Other spellings accepted wherever a dataset name is.
    """

    name: str
    template: str
    split_file: str | None = None
    image_dir: str = "images"
    aliases: tuple[str, ...] = ()


# Order and names of the 11 datasets of CoOp's few-shot benchmark (Zhou et al., IJCV 2022); the
# image folders are those of CoOp's DATASETS.md and datasets/*.py.
_COOP = (
    DatasetInfo("imagenet", "a photo of a {}.", None, "images", ("ImageNet", "imagenet-1k", "in1k", "ilsvrc2012")),
    DatasetInfo("caltech101", "a photo of a {}.", "split_zhou_Caltech101.json", "101_ObjectCategories",
                ("Caltech101", "caltech-101")),
    DatasetInfo("oxford_pets", "a photo of a {}, a type of pet.", "split_zhou_OxfordPets.json", "images",
                ("OxfordPets", "pets", "oxford-iiit-pet", "oxford_iiit_pet")),
    DatasetInfo("stanford_cars", "a photo of a {}.", "split_zhou_StanfordCars.json", "", ("StanfordCars", "cars")),
    DatasetInfo("oxford_flowers", "a photo of a {}, a type of flower.", "split_zhou_OxfordFlowers.json", "jpg",
                ("OxfordFlowers", "Flowers102", "flowers-102", "flowers")),
    DatasetInfo("food101", "a photo of {}, a type of food.", "split_zhou_Food101.json", "images",
                ("Food101", "food-101", "food")),
    DatasetInfo("fgvc_aircraft", "a photo of a {}, a type of aircraft.", None, "images",
                ("FGVCAircraft", "fgvc-aircraft", "aircraft")),
    DatasetInfo("sun397", "a photo of a {}.", "split_zhou_SUN397.json", "SUN397", ("SUN397", "sun")),
    DatasetInfo("dtd", "{} texture.", "split_zhou_DescribableTextures.json", "images",
                ("DTD", "DescribableTextures", "textures")),
    DatasetInfo("eurosat", "a centered satellite photo of {}.", "split_zhou_EuroSAT.json", "2750", ("EuroSAT",)),
    DatasetInfo("ucf101", "a photo of a person doing {}.", "split_zhou_UCF101.json", "UCF-101-midframes",
                ("UCF101", "ucf-101")),
)
# Not in CoOp's benchmark, but shipped (CIFAR class names from CLIP's data/prompts.md).
_OTHER = (
    DatasetInfo("cifar10", "a photo of a {}.", aliases=("CIFAR10", "cifar-10", "cifar10-mini")),
    DatasetInfo("cifar100", "a photo of a {}.", aliases=("CIFAR100", "cifar-100")),
    # Zalando's class names (github.com/zalandoresearch/fashion-mnist); read by
    # load_dataset("fashion-mnist") from the idx files (gpua.data._fashion_mnist).
    DatasetInfo("fashion_mnist", "a photo of a {}.", aliases=("FashionMNIST", "fashion-mnist", "fmnist")),
)

COOP_DATASETS: tuple[str, ...] = tuple(d.name for d in _COOP)
KNOWN_DATASETS: tuple[str, ...] = COOP_DATASETS + tuple(d.name for d in _OTHER)

_INFO = {d.name: d for d in _COOP + _OTHER}


def _key(name: str) -> str:
    # Case, "_", "-" and spaces are spelling, not meaning: "Oxford-Pets" == "oxford_pets".
    return re.sub(r"[^0-9a-z]", "", name.lower())


_LOOKUP = {_key(alias): d.name for d in _COOP + _OTHER for alias in (d.name, *d.aliases)}


def canonical_name(name: str) -> str | None:
    """The canonical name of a known dataset, or None when ``name`` is not one."""
    return _LOOKUP.get(_key(str(name)))


def dataset_info(name: str) -> DatasetInfo | None:
    """The :class:`DatasetInfo` of a known dataset (any alias), or None."""
    canon = canonical_name(name)
    return None if canon is None else _INFO[canon]


def split_file_info(filename: str) -> DatasetInfo | None:
    """The dataset whose CoOp split file is called ``filename`` (e.g. ``split_zhou_EuroSAT.json``)."""
    for d in _COOP:
        if d.split_file == filename:
            return d
    m = re.fullmatch(r"split_zhou_(.+)\.json", filename)
    return dataset_info(m.group(1)) if m else None
