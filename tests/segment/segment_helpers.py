"""Helpers shared by the segmentation tests (imported by name, as tests/stream/stream_helpers.py)."""

from __future__ import annotations

import numpy as np


def write_scenes(folder, world, n: int, size: tuple[int, int]):
    """``n`` planted test photos (PNG, ``size``) in ``folder/test``, their masks in ``folder/gt``
    and the class file ``folder/classes.txt``; returns ``folder``."""
    from PIL import Image

    test, labels = world.sample(n, size, seed=2)
    for name in ("test", "gt"):
        (folder / name).mkdir()
    for i, (im, lab) in enumerate(zip(test, labels)):
        Image.fromarray(im).save(folder / "test" / f"t{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(folder / "gt" / f"t{i}.png")
    (folder / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return folder
